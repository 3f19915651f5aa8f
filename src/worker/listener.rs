//! LISTEN on the work channel and wake the dispatcher. NOTIFY is a hint, the table is the
//! truth: after any reconnect the dispatcher is woken to catch up by polling.
//!
//! `Metrics::listening` says whether the LISTEN connection is up (`/readyz`): set once LISTEN
//! succeeded, cleared as soon as the connection is lost and whenever this task ends. A lost
//! connection is re-established here (not by `PgListener`'s own reconnect inside `try_recv`),
//! so the flag turns true again as soon as LISTEN is back, whether or not a notification
//! arrives.

use crate::db;
use backon::{BackoffBuilder, ExponentialBuilder};
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub async fn run(pool: PgPool, wake: Arc<Notify>, metrics: Arc<crate::metrics::Metrics>, stop: CancellationToken) {
    let listening = Listening(&metrics.listening);
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
        listening.set(true);
        tracing::debug!(channel = db::WORK_CHANNEL, "listening");
        wake.notify_one();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                message = listener.try_recv() => match message {
                    Ok(Some(_)) => wake.notify_one(),
                    // The connection dropped: LISTEN again on a new one (the outer loop).
                    Ok(None) => {
                        listening.set(false);
                        tracing::warn!("work notification connection lost; reconnecting");
                        wake.notify_one();
                        break;
                    }
                    Err(e) => {
                        listening.set(false);
                        tracing::warn!(error = %e, "work notification listener failed");
                        break;
                    }
                }
            }
        }
    }
}

/// The `listening` flag, cleared when the task ends (a stop, or a panic unwinding it).
struct Listening<'a>(&'a AtomicBool);

impl Listening<'_> {
    fn set(&self, up: bool) {
        self.0.store(up, Ordering::Relaxed);
    }
}

impl Drop for Listening<'_> {
    fn drop(&mut self) {
        self.set(false);
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
