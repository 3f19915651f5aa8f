//! Liveness of the engine's loops, for the systemd watchdog (and later `/readyz`): a loop that
//! is still running but no longer makes progress (wedged) must stop the pings, so the service
//! manager kills and restarts the process, as it would a dead one.
//!
//! Each watched loop holds a [`Beat`]. It calls [`Beat::busy`] when it starts a step that
//! should finish soon (the dispatcher: each claim round; a completer: each batch, with every
//! retry of that batch) and [`Beat::idle`] when it waits for something that may legitimately
//! take long (a NOTIFY, a free slot, the next result). A beat busy for longer than
//! `worker.stall_timeout` counts as wedged. Waiting is never wedged: an idle queue or a slow
//! agent is not a fault of the loop.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Why the engine is not healthy, for the log (and the watchdog's silence).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unhealthy(pub String);

/// The engine's health, cloneable so that a watchdog task can read it while the engine runs.
#[derive(Clone, Debug)]
pub struct Health {
    origin: Instant,
    stall_timeout: Duration,
    beats: Arc<Mutex<Vec<Named>>>,
    /// Fired when an engine task panicked or ended on its own.
    failed: CancellationToken,
}

/// A loop's name and its beat's start time.
type Named = (&'static str, Arc<AtomicU64>);

/// One loop's progress marker: when its current step started (ms since the engine's origin,
/// plus one), or 0 while it waits.
#[derive(Clone, Debug)]
pub struct Beat {
    origin: Instant,
    since: Arc<AtomicU64>,
}

impl Health {
    pub fn new(stall_timeout: Duration, failed: CancellationToken) -> Health {
        Health { origin: Instant::now(), stall_timeout, beats: Arc::default(), failed }
    }

    /// A new beat for a loop named `name` (several loops may share a name: the completers).
    pub fn beat(&self, name: &'static str) -> Beat {
        let since = Arc::new(AtomicU64::new(0));
        self.beats.lock().unwrap_or_else(|p| p.into_inner()).push((name, since.clone()));
        Beat { origin: self.origin, since }
    }

    /// `Ok` while no engine task failed and no loop has been busy with one step for longer
    /// than the stall timeout; otherwise why not, for the log.
    pub fn check(&self) -> Result<(), Unhealthy> {
        if self.failed.is_cancelled() {
            return Err(Unhealthy("an engine task died".into()));
        }
        let now = self.origin.elapsed().as_millis() as u64 + 1;
        let beats = self.beats.lock().unwrap_or_else(|p| p.into_inner());
        for (name, since) in beats.iter() {
            let since = since.load(Ordering::Relaxed);
            if since != 0 {
                let busy = Duration::from_millis(now.saturating_sub(since));
                if busy > self.stall_timeout {
                    return Err(Unhealthy(format!(
                        "the {name} has been stuck in one step for {} (worker.stall_timeout = {})",
                        humantime::format_duration(Duration::from_secs(busy.as_secs())),
                        humantime::format_duration(self.stall_timeout)
                    )));
                }
            }
        }
        Ok(())
    }

    pub fn healthy(&self) -> bool {
        self.check().is_ok()
    }
}

impl Beat {
    /// A step starts now (each call restarts the clock).
    pub fn busy(&self) {
        self.since.store(self.origin.elapsed().as_millis() as u64 + 1, Ordering::Relaxed);
    }

    /// The loop waits; it cannot be wedged until its next [`Beat::busy`].
    pub fn idle(&self) {
        self.since.store(0, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loop_busy_past_the_stall_timeout_is_unhealthy_and_waiting_is_not() {
        let failed = CancellationToken::new();
        let health = Health::new(Duration::from_millis(50), failed.clone());
        let dispatcher = health.beat("dispatcher");
        assert!(health.healthy(), "a new loop is idle");
        dispatcher.busy();
        assert!(health.healthy());
        std::thread::sleep(Duration::from_millis(80));
        let why = health.check().unwrap_err();
        assert!(why.0.contains("dispatcher"), "{why}");
        dispatcher.idle();
        assert!(health.healthy(), "waiting is never wedged");
        dispatcher.busy();
        assert!(health.healthy(), "each step restarts the clock");
        failed.cancel();
        assert!(!health.healthy(), "a dead task is unhealthy");
    }
}
