//! The writer after a run. Receives finished executions, writes them in batches (one
//! transaction each, fenced per item), retries on database errors without losing a result,
//! counts stale writes, and releases the in-flight entries. `worker.completers` of them share
//! the results channel; each item's result goes to exactly one of them.

use super::{InFlight, Metrics};
use crate::db;
use crate::model::{Completion, NextState};
use backon::{BackoffBuilder, ExponentialBuilder};
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Mutex, mpsc};

pub struct Completer {
    pub pool: PgPool,
    pub in_flight: InFlight,
    pub metrics: Arc<Metrics>,
    pub batch_size: usize,
    /// Wakes the dispatcher when a retry written here becomes runnable, so retries run on
    /// time however long `worker.poll_interval` is (no NOTIFY fires for them).
    pub wake: Arc<tokio::sync::Notify>,
}

impl Completer {
    /// Runs until every sender is gone and the queue is drained. Several completers share
    /// one receiver: each takes what is waiting (up to a batch) and writes it while the next
    /// completer gathers the following batch.
    pub async fn run(self, rx: Arc<Mutex<mpsc::Receiver<Completion>>>) {
        let mut batch = Vec::with_capacity(self.batch_size);
        loop {
            let got = rx.lock().await.recv_many(&mut batch, self.batch_size).await;
            if got == 0 {
                break;
            }
            self.write(&batch).await;
            batch.clear();
        }
        tracing::debug!("completer drained");
    }

    /// Writes one batch, retrying until the database takes it. A result written late is
    /// still fenced: if its lease was rescued meanwhile, it is stale and changes nothing.
    pub async fn write(&self, batch: &[Completion]) {
        let mut backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(20))
            .with_max_delay(Duration::from_secs(5))
            .with_jitter()
            .without_max_times()
            .build();
        let report = loop {
            match db::queue::complete_batch(&self.pool, batch).await {
                Ok(report) => break report,
                Err(e) => {
                    let delay = if db::is_retryable_conflict(&e) {
                        Duration::ZERO
                    } else {
                        backoff.next().unwrap_or(Duration::from_secs(5))
                    };
                    crate::telemetry::warn_limited(
                        "complete",
                        &format!("writing {} results failed (retrying): {e}", batch.len()),
                    );
                    tokio::time::sleep(delay).await;
                }
            }
        };
        Metrics::add(&self.metrics.completer_batches, 1);
        // One wake-up per distinct retry time (to 10ms) in this batch, in one task: a retry
        // that is not the batch's earliest must not wait for the poll either.
        let mut wake_at: Vec<u64> = batch
            .iter()
            .filter(|c| !report.stale.contains(&c.item_id))
            .filter_map(|c| match c.next {
                NextState::Retry { delay_ms } => Some(delay_ms.max(0) as u64),
                NextState::Released => Some(0),
                _ => None,
            })
            .map(|ms| ms.div_ceil(10) * 10)
            .collect();
        wake_at.sort_unstable();
        wake_at.dedup();
        if !wake_at.is_empty() {
            let wake = self.wake.clone();
            tokio::spawn(async move {
                let start = tokio::time::Instant::now();
                for ms in wake_at {
                    tokio::time::sleep_until(start + Duration::from_millis(ms)).await;
                    wake.notify_one();
                }
            });
        }
        for done in batch {
            if report.stale.contains(&done.item_id) {
                Metrics::add(&self.metrics.stale_writes, 1);
                tracing::warn!(work_item.id = %done.item_id, attempt = done.attempt, "stale result rejected: attempt no longer current");
            } else {
                let counter = match done.next {
                    NextState::Completed => &self.metrics.completed,
                    NextState::AwaitingApproval => &self.metrics.awaiting_approval,
                    NextState::Retry { .. } => &self.metrics.retried,
                    NextState::Released => &self.metrics.released,
                    NextState::DeadLetter { .. } => &self.metrics.dead_lettered,
                };
                Metrics::add(counter, 1);
                if let Some(error) = &done.error {
                    tracing::debug!(work_item.id = %done.item_id, attempt = done.attempt, agent = %done.agent,
                        error.code = %error.code, error = %error.message, "attempt failed");
                }
            }
            self.in_flight.remove(&done.item_id);
        }
    }
}
