//! The writer after a run. Receives finished executions, writes them in batches (one
//! transaction each, fenced per item and attempt), retries on transient database errors
//! without losing a result, counts stale writes, and releases the in-flight entries.
//! `worker.completers` of them share the results channel; each result goes to exactly one.
//!
//! A result the database refuses (a value `text` or `jsonb` cannot hold, a number out of
//! range: anything that would fail the same way again) never holds up the others: the batch
//! is split until the offender stands alone, and that one is written as a failed attempt with
//! a `RESULT_REFUSED` dead letter that says what was refused.

use super::liveness::Beat;
use super::{InFlight, Metrics};
use crate::db;
use crate::model::{AttemptStatus, Completion, DeadLetterReason, ErrorCode, ErrorInfo, NextState};
use backon::{BackoffBuilder, ExponentialBuilder};
use sqlx::PgPool;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Mutex, mpsc};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// How long a completer waits for more results to fill a batch (see [`Completer::gather`]).
const LINGER: Duration = Duration::from_millis(2);

pub struct Completer {
    /// The engine's pool: each batch is one transaction on one of its connections.
    pub pool: PgPool,
    /// Leases this process holds; an entry leaves once its result is written.
    pub in_flight: InFlight,
    pub metrics: Arc<Metrics>,
    /// Most results written in one transaction.
    pub batch_size: usize,
    /// Wakes the dispatcher when a retry written here becomes runnable, so retries run on
    /// time however long `worker.poll_interval` is (no NOTIFY fires for them).
    pub wake: Arc<tokio::sync::Notify>,
    /// Fired when shutdown has run out of time: stop retrying transient failures and leave
    /// what is unwritten to the rescuer (the items stay PROCESSING under a lease that
    /// expires), so a database outage cannot hold the process past its bound.
    pub abandon: CancellationToken,
    /// The agents, for their limits: what a batch saw of a limited agent (failures for its
    /// circuit, a Retry-After pause) is written after the batch (`db::limits::record`).
    pub agents: crate::agent::Agents,
    /// Told after a batch that finished executions of a limited agent (`super::limits::waker`).
    pub limits_nudge: Arc<super::limits::Nudge>,
    /// Liveness (`super::liveness`): busy from the start of a batch until it is written, so a
    /// completer retrying one batch for longer than `worker.stall_timeout` counts as wedged.
    pub beat: Beat,
    /// One PostgreSQL or a Citus cluster (`db::distributed`): which statements write.
    pub topology: db::distributed::Topology,
}

/// Why a batch was not written.
enum WriteError {
    /// The database refused a value in the batch; the same batch would fail again.
    Refused(sqlx::Error),
    /// Shutdown ran out of time while the database was unavailable.
    Abandoned,
}

impl Completer {
    /// Runs until every sender is gone and the queue is drained. Several completers share
    /// one receiver: each takes what is waiting (up to a batch) and writes it while the next
    /// completer gathers the following batch.
    pub async fn run(self, rx: Arc<Mutex<mpsc::Receiver<Completion>>>) {
        let mut batch = Vec::with_capacity(self.batch_size);
        loop {
            let got = self.gather(&rx, &mut batch).await;
            if got == 0 {
                break;
            }
            crate::failpoint::hit("completer");
            self.beat.busy();
            self.write(&mut batch).await;
            self.beat.idle();
            batch.clear();
        }
        tracing::debug!("completer drained");
    }

    /// Takes what is waiting, up to a batch. When that is less than a batch and more results
    /// are on their way (this process holds more unwritten executions than it took), waits
    /// up to [`LINGER`] for them: under load a batch then fills instead of going out with the
    /// few results that had arrived, and every batch costs a transaction, a round of order
    /// locks and a commit. Idle, nothing is on its way and nothing waits.
    async fn gather(&self, rx: &Mutex<mpsc::Receiver<Completion>>, batch: &mut Vec<Completion>) -> usize {
        let mut rx = rx.lock().await;
        if rx.recv_many(batch, self.batch_size).await == 0 {
            return 0;
        }
        let deadline = tokio::time::Instant::now() + LINGER;
        while batch.len() < self.batch_size && self.in_flight.len() > batch.len() {
            let room = self.batch_size - batch.len();
            match tokio::time::timeout_at(deadline, rx.recv_many(batch, room)).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        batch.len()
    }

    /// Writes one batch, retrying transient failures until the database takes it and
    /// isolating refused results. A result written late is still fenced: if its lease was
    /// rescued meanwhile, it is stale and changes nothing.
    pub async fn write(&self, batch: &mut [Completion]) {
        let outcome = self.store(batch).await;
        Metrics::add(&self.metrics.completer_batches, 1);
        let is_written = |c: &Completion| {
            !outcome.stale.contains(&(c.item_id, c.attempt)) && !outcome.unwritten.contains(&(c.item_id, c.attempt))
        };
        // One wake-up per distinct retry time (to 10ms) in this batch, in one task: a retry
        // that is not the batch's earliest must not wait for the poll either.
        let mut wake_at: Vec<u64> = batch
            .iter()
            .filter(|c| is_written(c))
            .filter_map(|c| match c.next {
                NextState::Retry { delay_ms } | NextState::Released { delay_ms } => Some(delay_ms.max(0) as u64),
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
        self.record_agents(batch.iter().filter(|c| is_written(c))).await;
        for done in batch.iter() {
            let key = (done.item_id, done.attempt);
            if outcome.stale.contains(&key) {
                Metrics::add(&self.metrics.stale_writes, 1);
                tracing::warn!(work_item.id = %done.item_id, attempt = done.attempt, "stale result rejected: attempt no longer current");
            } else if outcome.unwritten.contains(&key) {
                // Left for the rescuer: the entry goes, so the heartbeat stops renewing it.
                tracing::error!(work_item.id = %done.item_id, attempt = done.attempt,
                    "result not written; the item will be rescued when its lease expires");
            } else {
                // Counted once the batch is written: attempts, outcomes, evals, approvals.
                self.metrics.result_written(done);
                if matches!(done.next, NextState::DeadLetter { .. }) {
                    tracing::warn!(work_item.id = %done.item_id, work_order.id = %done.order_id, attempt = done.attempt,
                        agent = %done.agent, error.code = %done.error.as_ref().map_or("", |e| e.code.as_str()),
                        "item dead-lettered");
                }
                if let Some(error) = &done.error {
                    tracing::debug!(work_item.id = %done.item_id, attempt = done.attempt, agent = %done.agent,
                        error.code = %error.code, error = %error.message, "attempt failed");
                }
            }
            self.in_flight.remove(&done.item_id, done.attempt);
        }
    }

    /// What the batch saw of each agent that has limits or asked for a pause: written so
    /// every replica's next claim sees it. A failure to write it is logged, never retried
    /// against the results (they are written already).
    async fn record_agents<'a>(&self, written: impl Iterator<Item = &'a Completion>) {
        let mut seen: std::collections::BTreeMap<&str, db::limits::Seen> = std::collections::BTreeMap::new();
        for done in written {
            let limit = self.agents.limit(&done.agent);
            if limit.is_none() && done.report.agent_pause_ms.is_none() {
                continue;
            }
            let s = seen.entry(done.agent.as_str()).or_default();
            match done.error.as_ref().map(|e| e.code) {
                None => {
                    s.succeeded = true;
                    s.failures = 0;
                }
                Some(ErrorCode::AgentTimeout | ErrorCode::AgentUnavailable | ErrorCode::AgentConnection) => {
                    s.failures += 1
                }
                Some(_) => {}
            }
            if let Some(ms) = done.report.agent_pause_ms {
                s.pause_ms = Some(s.pause_ms.unwrap_or(0).max(ms));
            }
        }
        self.limits_nudge.completed(!seen.is_empty());
        for (agent, s) in &seen {
            let limit = self.agents.limit(agent).copied().unwrap_or_default();
            if let Err(e) = db::limits::record(&self.pool, agent, &limit, s).await {
                crate::telemetry::warn_limited("limits_record", "recording an agent's outcomes failed", &e);
            }
        }
    }

    /// Stores the batch, splitting it in halves on a refusal until each refused result
    /// stands alone; that one is replaced by its [`refused`] record. Results that could not
    /// be written at all are reported as unwritten.
    async fn store(&self, batch: &mut [Completion]) -> Stored {
        match self.write_retrying(batch).await {
            Ok(stale) => Stored { stale, unwritten: HashSet::new() },
            Err(WriteError::Abandoned) => Stored { stale: HashSet::new(), unwritten: keys(batch) },
            Err(WriteError::Refused(e)) if batch.len() == 1 => {
                let original = batch[0].clone();
                batch[0] = refused(original, &e);
                tracing::error!(work_item.id = %batch[0].item_id, attempt = batch[0].attempt, error = %e,
                    "the database refused this result; recording the attempt as failed with RESULT_REFUSED");
                match self.write_retrying(batch).await {
                    Ok(stale) => Stored { stale, unwritten: HashSet::new() },
                    Err(WriteError::Refused(e)) => {
                        tracing::error!(work_item.id = %batch[0].item_id, error = %e,
                            "the database refused even the failure record of this item");
                        Stored { stale: HashSet::new(), unwritten: keys(batch) }
                    }
                    Err(WriteError::Abandoned) => Stored { stale: HashSet::new(), unwritten: keys(batch) },
                }
            }
            Err(WriteError::Refused(_)) => {
                let (left, right) = batch.split_at_mut(batch.len() / 2);
                let mut stored = Box::pin(self.store(left)).await;
                let other = Box::pin(self.store(right)).await;
                stored.stale.extend(other.stale);
                stored.unwritten.extend(other.unwritten);
                stored
            }
        }
    }

    /// One batch in one transaction, retried with backoff while the failure is transient.
    async fn write_retrying(&self, batch: &[Completion]) -> Result<HashSet<(Uuid, i32)>, WriteError> {
        let mut backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(20))
            .with_max_delay(Duration::from_secs(5))
            .with_jitter()
            .without_max_times()
            .build();
        loop {
            let written = match self.topology {
                db::distributed::Topology::Single => db::queue::complete_batch(&self.pool, batch).await,
                db::distributed::Topology::Distributed => {
                    db::distributed::engine::complete_batch(&self.pool, batch).await
                }
            };
            match written {
                Ok(report) => {
                    // Dependents this batch released are runnable now: this process claims
                    // them without waiting for its NOTIFY to come back (other replicas get it).
                    if report.settled.iter().any(|s| s.became == db::dependencies::Settled::Released) {
                        self.wake.notify_one();
                    }
                    return Ok(report.stale.into_iter().collect());
                }
                Err(e) if db::is_refusal(&e) => return Err(WriteError::Refused(e)),
                Err(e) => {
                    let delay = if db::is_retryable_conflict(&e) {
                        Duration::ZERO
                    } else {
                        backoff.next().unwrap_or(Duration::from_secs(5))
                    };
                    crate::telemetry::warn_limited("complete", "writing results failed; retrying", &e);
                    tokio::select! {
                        _ = self.abandon.cancelled() => return Err(WriteError::Abandoned),
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }
}

/// What [`Completer::store`] did, by (item, attempt).
struct Stored {
    stale: HashSet<(Uuid, i32)>,
    unwritten: HashSet<(Uuid, i32)>,
}

fn keys(batch: &[Completion]) -> HashSet<(Uuid, i32)> {
    batch.iter().map(|c| (c.item_id, c.attempt)).collect()
}

/// The record of a result the database refused: a failed attempt without the refused
/// values, and a permanent dead letter (retrying would produce the same result), whose
/// message names what the database said.
pub fn refused(original: Completion, error: &sqlx::Error) -> Completion {
    let was = original.error.as_ref().map(|e| format!(" (the attempt had failed with {}: {})", e.code, e.message));
    let message = format!(
        "the database refused to store this attempt's result: {}{}; the output is not kept, and retrying would produce it again",
        db::describe_error(error),
        was.unwrap_or_default()
    );
    Completion {
        input: serde_json::json!({ "agent": original.agent, "refused": true }),
        attempt_status: AttemptStatus::Failed,
        output: None,
        usage: None,
        report: Default::default(),
        error: Some(ErrorInfo { code: ErrorCode::ResultRefused, message: crate::model::printable(&message, 2000) }),
        evals: vec![],
        approval: None,
        next: NextState::DeadLetter { reason: DeadLetterReason::Permanent },
        review: None,
        ..original
    }
}
