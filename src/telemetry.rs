//! Logging: `tracing`, pretty on a terminal, JSON under systemd or in a container.
//! `RUST_LOG`, when set, overrides `log.level`.

use crate::config::{LogFormat, LogSettings};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tracing_subscriber::EnvFilter;

pub fn init(settings: &LogSettings) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&settings.level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match settings.format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
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
