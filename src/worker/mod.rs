//! The hot path. The dispatcher claims items (never more than free slots), a runner task
//! executes each one, review evaluates and approves, decision picks the next state, and the
//! completer, the only writer after a run, records results in batched, fenced transactions.
//! The heartbeat renews leases of what is in flight; the listener turns NOTIFY into wake-ups.

pub mod activity;
pub mod budgets;
pub mod completer;
pub mod dispatcher;
pub mod envelope;
pub mod evaluation;
pub mod heartbeat;
pub mod limits;
pub mod listener;
pub mod liveness;
pub mod progress;
pub mod review;
pub mod runner;
pub mod tenant_ring;
pub mod turns;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use uuid::Uuid;

/// The process's counters, shared with the rescuer, the SLA sweeper and the admin server.
pub use crate::metrics::Metrics;

/// One execution in flight in this process.
#[derive(Debug, Clone)]
pub struct Lease {
    pub attempt: i32,
    /// The item's tenant: in distributed mode the renewal names it.
    pub tenant: Uuid,
    /// When the lease was last confirmed by the database (local monotonic clock: only used
    /// to decide that *we* can no longer vouch for it).
    pub confirmed_at: Instant,
    pub stop: runner::Stop,
}

/// The executions this process holds leases for. Entries are added by the dispatcher and
/// removed once the completer has written the result (or the lease was lost).
#[derive(Debug, Default, Clone)]
pub struct InFlight {
    inner: Arc<Mutex<HashMap<Uuid, Lease>>>,
    /// Executions finished and handed to the completers, not yet written.
    handed: Arc<Mutex<std::collections::HashSet<(Uuid, i32)>>>,
    /// Told when a handed-over entry leaves while someone waits in [`InFlight::written`].
    removed: Arc<tokio::sync::Notify>,
    /// How many wait in [`InFlight::written`].
    waiting: Arc<std::sync::atomic::AtomicUsize>,
}

impl std::fmt::Debug for runner::Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Stop")
    }
}

impl InFlight {
    pub fn insert(&self, id: Uuid, lease: Lease) {
        self.inner.lock().unwrap().insert(id, lease);
    }
    /// Forgets the lease of `attempt`. A later attempt of the same item (claimed again by
    /// this process after a rescue) keeps its own entry: a stale result must not drop it.
    pub fn remove(&self, id: &Uuid, attempt: i32) {
        {
            let mut inner = self.inner.lock().unwrap();
            if inner.get(id).is_some_and(|lease| lease.attempt == attempt) {
                inner.remove(id);
            }
        }
        let was_handed = self.handed.lock().unwrap().remove(&(*id, attempt));
        if was_handed && self.waiting.load(std::sync::atomic::Ordering::Relaxed) > 0 {
            self.removed.notify_waiters();
        }
    }
    /// The execution has finished and its result is on its way to a completer.
    pub fn handed_over(&self, id: Uuid, attempt: i32) {
        self.handed.lock().unwrap().insert((id, attempt));
    }
    /// Waits until every result handed over before this call is written (or dropped), at
    /// most `limit`: whether they all were. The budget gate reads spend only after this.
    pub async fn written(&self, limit: std::time::Duration) -> bool {
        let pending: Vec<(Uuid, i32)> = self.handed.lock().unwrap().iter().copied().collect();
        if pending.is_empty() {
            return true;
        }
        let deadline = tokio::time::Instant::now() + limit;
        struct Waiting<'a>(&'a std::sync::atomic::AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        self.waiting.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let _waiting = Waiting(&self.waiting);
        loop {
            let removed = self.removed.notified();
            {
                let handed = self.handed.lock().unwrap();
                if !pending.iter().any(|key| handed.contains(key)) {
                    return true;
                }
            }
            tokio::select! {
                _ = removed => {}
                _ = tokio::time::sleep_until(deadline) => return false,
            }
        }
    }
    pub fn len(&self) -> usize {
        self.inner.lock().unwrap().len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn snapshot(&self) -> Vec<(Uuid, Lease)> {
        self.inner.lock().unwrap().iter().map(|(k, v)| (*k, v.clone())).collect()
    }
    pub fn confirm(&self, ids: &[Uuid], at: Instant) {
        let mut inner = self.inner.lock().unwrap();
        for id in ids {
            if let Some(lease) = inner.get_mut(id) {
                lease.confirmed_at = at;
            }
        }
    }
    /// Interrupts every execution (shutdown past its grace period).
    pub fn interrupt_all(&self) {
        for lease in self.inner.lock().unwrap().values() {
            lease.stop.interrupt.cancel();
        }
    }
}
