//! LISTEN on the work channel and wake the dispatcher. NOTIFY is a hint, the table is the
//! truth: after any reconnect the dispatcher is woken to catch up by polling.
//!
//! The same connection holds the wake lock (`db::WAKE_LOCK`) while the dispatcher says it
//! waits for work (`waiting`): only then do INSERTs send a NOTIFY. The lock is taken with a
//! try (another replica may hold it, or INSERTs hold it shared until their commits), retried
//! with a backoff, and each time it is taken the dispatcher is woken once: an INSERT that
//! committed without a NOTIFY just before is then claimed. A lost connection lets it go.
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

pub async fn run(
    pool: PgPool,
    wake: Arc<Notify>,
    mut waiting: tokio::sync::watch::Receiver<bool>,
    metrics: Arc<crate::metrics::Metrics>,
    stop: CancellationToken,
) {
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
        let mut lock = WakeLock::default();
        loop {
            let want = *waiting.borrow_and_update();
            if let Err(e) = lock.follow(want, &mut listener, &wake).await {
                listening.set(false);
                tracing::warn!(error = %e, "work notification connection failed; reconnecting");
                wake.notify_one();
                break;
            }
            let retry_at = lock.next_try(want);
            tokio::select! {
                _ = stop.cancelled() => return,
                changed = waiting.changed() => if changed.is_err() { return },
                _ = async { tokio::time::sleep_until(retry_at.unwrap()).await }, if retry_at.is_some() => {}
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

/// First and longest pause between tries for the wake lock while another session holds it.
const WAKE_RETRY_MIN: Duration = Duration::from_millis(5);
const WAKE_RETRY_MAX: Duration = Duration::from_secs(1);

/// The wake lock on the LISTEN session (a new session holds none), and when to try again.
#[derive(Default)]
struct WakeLock {
    held: bool,
    /// When a refused try may be repeated, and the pause after the next refusal.
    retry: Option<(tokio::time::Instant, Duration)>,
}

impl WakeLock {
    /// Takes the lock when the dispatcher waits (waking it once on success: INSERTs that
    /// committed before sent no NOTIFY), lets it go when it does not. Errors are the
    /// connection's.
    async fn follow(&mut self, want: bool, listener: &mut PgListener, wake: &Notify) -> Result<(), sqlx::Error> {
        let now = tokio::time::Instant::now();
        if want && !self.held && self.retry.is_none_or(|(at, _)| at <= now) {
            if db::try_hold_wake_lock(&mut *listener).await? {
                self.held = true;
                self.retry = None;
                wake.notify_one();
            } else {
                let pause = self.retry.map_or(WAKE_RETRY_MIN, |(_, pause)| pause);
                self.retry = Some((now + pause, (pause * 2).min(WAKE_RETRY_MAX)));
            }
        } else if !want {
            if self.held {
                db::release_wake_lock(&mut *listener).await?;
                self.held = false;
            }
            self.retry = None;
        }
        Ok(())
    }

    /// When to try for the lock again, if the dispatcher waits and a try was refused.
    fn next_try(&self, want: bool) -> Option<tokio::time::Instant> {
        self.retry.filter(|_| want && !self.held).map(|(at, _)| at)
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
