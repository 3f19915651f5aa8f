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

static LIMITED: Mutex<Option<HashMap<&'static str, (Instant, u64)>>> = Mutex::new(None);

/// Logs a warning of the given kind at a bounded rate, counting what it suppressed, so a
/// database outage does not flood the logs.
pub fn warn_limited(kind: &'static str, message: &str) {
    let mut guard = LIMITED.lock().unwrap();
    let seen = guard.get_or_insert_with(HashMap::new);
    let entry = seen.entry(kind).or_insert((Instant::now() - LIMIT_INTERVAL * 2, 0));
    if entry.0.elapsed() >= LIMIT_INTERVAL {
        let suppressed = entry.1;
        *entry = (Instant::now(), 0);
        drop(guard);
        tracing::warn!(kind, suppressed, "{message}");
    } else {
        entry.1 += 1;
    }
}
