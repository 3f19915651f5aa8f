//! Leader-only services beside the hot path. One replica is elected through a PostgreSQL
//! advisory lock; its rescuer returns expired leases to the queue and its pruner deletes
//! finished work orders past their retention. Each service has the same
//! shape: `run(shutdown)` on a jittered interval, and `run_once()` that tests call.

pub mod leader;
pub mod pruner;
pub mod rescuer;

use std::future::Future;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The loop of every leader-only service: after each jittered `interval` (80–120%), runs
/// `sweep` if this replica leads, until `stop`.
pub async fn every_interval_while_leading<F, Fut>(
    interval: Duration,
    leading: watch::Receiver<bool>,
    stop: CancellationToken,
    mut sweep: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(interval.mul_f64(0.8 + 0.4 * fastrand::f64())) => {}
        }
        if *leading.borrow() {
            sweep().await;
        }
    }
}
