//! The shape of every leader-only service (rescuer, pruner, SLA sweeper): a jittered
//! interval, work only while this replica leads, a clean stop.

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
