//! Logging: `tracing` to stderr, pretty on a terminal, JSON under systemd or in a container
//! (`log.format = "auto"`, the default, decides by whether stderr is a terminal).
//! `RUST_LOG`, when set, overrides `log.level`.
//!
//! The JSON shape is a contract (docs/operations.md, "Logs"): one object per line with
//! `timestamp`, `level`, `target`, the event's fields at the top level (`message`, `error`,
//! `work_item.id`, …), and `span` holding the fields of the span the event happened in (the
//! `item` span: `work_item.id`, `work_order.id`, `attempt`, `agent`).

use crate::config::{LogFormat, LogSettings};
use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tracing_subscriber::EnvFilter;

pub fn init(settings: &LogSettings) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&settings.level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match resolve(settings.format, std::io::stderr().is_terminal()) {
        LogFormat::Pretty => builder.try_init(),
        _ => builder.json().flatten_event(true).with_current_span(true).with_span_list(false).try_init(),
    };
}

/// The format `auto` stands for: pretty on a terminal, JSON anywhere else.
pub fn resolve(format: LogFormat, stderr_is_terminal: bool) -> LogFormat {
    match format {
        LogFormat::Auto if stderr_is_terminal => LogFormat::Pretty,
        LogFormat::Auto => LogFormat::Json,
        chosen => chosen,
    }
}

/// Each kind of recurring error is logged at most once per this interval.
const LIMIT_INTERVAL: Duration = Duration::from_secs(10);

/// Per kind: when it was last logged, and how many were suppressed since.
static LIMITED: Mutex<Option<HashMap<&'static str, (Instant, u64)>>> = Mutex::new(None);

/// Logs a warning of the given kind at a bounded rate, counting what it suppressed, so a
/// database outage does not flood the logs. The error goes in the `error` field.
pub fn warn_limited(kind: &'static str, message: &str, error: &dyn std::fmt::Display) {
    let mut guard = LIMITED.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let seen = guard.get_or_insert_with(HashMap::new);
    let now = Instant::now();
    let suppressed = match seen.get_mut(kind) {
        Some((last, count)) if now.duration_since(*last) < LIMIT_INTERVAL => {
            *count += 1;
            return;
        }
        Some((last, count)) => {
            let suppressed = *count;
            *last = now;
            *count = 0;
            suppressed
        }
        None => {
            seen.insert(kind, (now, 0));
            0
        }
    };
    drop(guard);
    tracing::warn!(kind, suppressed, error = %error, "{message}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_is_pretty_on_a_terminal_and_json_elsewhere() {
        assert_eq!(resolve(LogFormat::Auto, true), LogFormat::Pretty);
        assert_eq!(resolve(LogFormat::Auto, false), LogFormat::Json);
        assert_eq!(resolve(LogFormat::Json, true), LogFormat::Json);
        assert_eq!(resolve(LogFormat::Pretty, false), LogFormat::Pretty);
    }
}
