//! This replica's activity, minute by minute, into `orderly_activity` (db::activity): every
//! ten `worker.poll_interval`s (10 s by default, 1 s at least) the recorder adds what the process's counters moved since its
//! last record (items completed, attempts failed, dead letters, claims and their queue wait
//! by bucket). The overview draws the charts of every replica from those rows. A record that
//! fails is kept and added to the next one; the last is written at shutdown.

use super::Metrics;
use crate::db;
use crate::db::activity::Delta;
use sqlx::PgPool;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How often rows older than two days are deleted.
const FORGET_EVERY: Duration = Duration::from_secs(600);

/// The counters a record is the difference of.
#[derive(Debug, Clone, Default, PartialEq)]
struct Totals {
    completed: u64,
    failed: u64,
    dead_lettered: u64,
    claimed: u64,
    wait_buckets: Vec<u64>,
}

impl Totals {
    fn read(metrics: &Metrics) -> Totals {
        let dead_lettered = metrics.dead_lettered.load(Ordering::Relaxed);
        Totals {
            completed: metrics.completed.load(Ordering::Relaxed),
            failed: metrics.retried.load(Ordering::Relaxed) + dead_lettered,
            dead_lettered,
            claimed: metrics.claimed.load(Ordering::Relaxed),
            wait_buckets: metrics.queue_wait_seconds.bucket_totals(),
        }
    }

    fn since(&self, before: &Totals) -> Delta {
        let d = |now: u64, then: u64| now.saturating_sub(then) as i64;
        Delta {
            completed: d(self.completed, before.completed),
            failed: d(self.failed, before.failed),
            dead_lettered: d(self.dead_lettered, before.dead_lettered),
            claimed: d(self.claimed, before.claimed),
            wait_buckets: self
                .wait_buckets
                .iter()
                .enumerate()
                .map(|(i, n)| d(*n, before.wait_buckets.get(i).copied().unwrap_or(0)))
                .collect(),
        }
    }
}

/// How often the recorder writes, from the poll interval.
pub fn interval(poll: Duration) -> Duration {
    (poll * 10).clamp(Duration::from_secs(1), Duration::from_secs(10))
}

pub async fn run(pool: PgPool, worker_id: String, metrics: Arc<Metrics>, interval: Duration, stop: CancellationToken) {
    let mut recorded =
        Totals { wait_buckets: vec![0; crate::metrics::QUEUE_WAIT_BUCKETS.len() + 1], ..Totals::default() };
    let mut forgotten = Instant::now();
    loop {
        let stopping = tokio::select! {
            _ = stop.cancelled() => true,
            _ = tokio::time::sleep(interval) => false,
        };
        let now = Totals::read(&metrics);
        let delta = now.since(&recorded);
        if !delta.is_empty() {
            match db::activity::record(&pool, &worker_id, &delta).await {
                Ok(()) => recorded = now,
                Err(e) => crate::telemetry::warn_limited("activity", "recording this replica's activity failed", &e),
            }
        }
        if forgotten.elapsed() >= FORGET_EVERY {
            forgotten = Instant::now();
            if let Err(e) = db::activity::forget_old(&pool).await {
                crate::telemetry::warn_limited("activity", "deleting old activity failed", &e);
            }
        }
        if stopping {
            return;
        }
    }
}
