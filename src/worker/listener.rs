//! LISTEN on the work channel and wake the dispatcher. NOTIFY is a hint, the table is the
//! truth: after any reconnect the dispatcher is woken to catch up by polling.

use crate::db;
use backon::{BackoffBuilder, ExponentialBuilder};
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub async fn run(pool: PgPool, wake: Arc<Notify>, stop: CancellationToken) {
    let mut backoff = reconnect_backoff();
    while !stop.is_cancelled() {
        let listener = async {
            let mut listener = PgListener::connect_with(&pool).await?;
            listener.listen(db::WORK_CHANNEL).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        let mut listener = tokio::select! {
            _ = stop.cancelled() => return,
            result = listener => match result {
                Ok(listener) => listener,
                Err(e) => {
                    let delay = backoff.next().unwrap_or(Duration::from_secs(5));
                    tracing::warn!(error = %e, retry_in = ?delay, "cannot listen for work notifications");
                    tokio::select! { _ = stop.cancelled() => return, _ = tokio::time::sleep(delay) => continue }
                }
            }
        };
        backoff = reconnect_backoff();
        tracing::debug!(channel = db::WORK_CHANNEL, "listening");
        wake.notify_one();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                message = listener.try_recv() => match message {
                    Ok(Some(_)) => wake.notify_one(),
                    // The connection dropped; the next try_recv reconnects and re-LISTENs.
                    Ok(None) => {
                        tracing::warn!("work notification connection lost; reconnecting");
                        wake.notify_one();
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "work notification listener failed");
                        break;
                    }
                }
            }
        }
    }
}

fn reconnect_backoff() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .without_max_times()
        .build()
}
