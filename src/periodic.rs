//! The shape of every leader-only service (rescuer, pruner, SLA sweeper): a jittered
//! interval, work only while this replica leads (confirmed with the database before each
//! round, see [`crate::leadership`]), a clean stop.

use crate::leadership::Leadership;
use std::future::Future;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The loop of every leader-only service: after each jittered `interval` (80–120%), runs
/// `sweep` if this replica leads and the database confirms it, until `stop`.
pub async fn every_interval_while_leading<F, Fut>(
    interval: Duration,
    leadership: Leadership,
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
        if leadership.confirm().await.is_some() {
            sweep().await;
        }
    }
}
