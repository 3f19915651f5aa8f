//! Claims runnable items, never more than the free slots, and starts a runner for each.
//! Wakes on NOTIFY (through the listener), on a freed slot when full, and polls as a fallback.

use super::liveness::Beat;
use super::runner::{self, RunContext, Stop};
use super::{InFlight, Lease, Metrics};
use crate::db;
use crate::model::Completion;
use crate::panic::CatchUnwind;
use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// After a claim that found work but less than it asked for, the next look comes this soon;
/// each empty look after that doubles the wait, up to `worker.poll_interval`.
const QUICK_RECHECK: Duration = Duration::from_millis(5);

/// How long a saturated dispatcher waits for half a claim's worth of free slots before it
/// claims what is free.
const COALESCE: Duration = Duration::from_millis(2);

pub struct Dispatcher {
    /// The engine's pool: one claim statement per batch.
    pub pool: PgPool,
    /// What every runner shares: agents, the routing catalog, settings, this worker's id.
    pub ctx: Arc<RunContext>,
    /// One permit per execution slot (`worker.concurrency`): a claim never asks for more
    /// items than there are free permits, so nothing claimed waits for a slot.
    pub slots: Arc<Semaphore>,
    /// One permit per evaluation run (`worker.evaluator_concurrency`): an evaluation run
    /// takes one before it lets its execution slot go, so judges never hold agents' slots
    /// and at most `concurrency` evaluation runs wait for one.
    pub evaluator_slots: Arc<Semaphore>,
    /// Woken by the listener (NOTIFY) and by the completer when a retry becomes runnable.
    pub wake: Arc<Notify>,
    /// Whether this dispatcher waits for work (its last claim came back short): the listener
    /// then holds the wake lock, so that INSERTs send a NOTIFY (`super::listener`).
    pub waiting: tokio::sync::watch::Sender<bool>,
    /// Leases this process holds, for the heartbeat and the completer.
    pub in_flight: InFlight,
    pub metrics: Arc<Metrics>,
    /// Where runners hand their results to the completers.
    pub completions: mpsc::Sender<Completion>,
    /// The runners, so shutdown can wait for them.
    pub tasks: TaskTracker,
    /// Stop claiming (first phase of shutdown).
    pub stop: CancellationToken,
    /// Liveness (`super::liveness`): busy from the top of each round, idle while it waits.
    pub beat: Beat,
    /// Parks the claimed items of exhausted budgets.
    pub budgets: super::budgets::BudgetGate,
    /// Parks the claimed items their agents' limits or pauses hold back.
    pub limits: super::limits::LimitGate,
    /// Whether the next claim takes turns among tenants (`super::turns`).
    pub turns: std::sync::Mutex<super::turns::Turns>,
    /// The tenants a claim walks in distributed mode (`super::tenant_ring`).
    pub ring: super::tenant_ring::TenantRing,
}

impl Dispatcher {
    pub async fn run(self) {
        let settings = self.ctx.settings.clone();
        let mut error_delay = Duration::from_millis(50);
        let mut recheck = settings.worker.poll_interval;
        loop {
            if self.stop.is_cancelled() {
                break;
            }
            self.beat.busy();
            crate::failpoint::hit("dispatcher");
            if crate::failpoint::armed("dispatcher_hang") {
                // Wedged on purpose: alive, busy, claiming nothing (until shutdown).
                self.stop.cancelled().await;
                break;
            }
            let free = self.slots.available_permits();
            if free == 0 {
                // Full: wait for a runner to finish, then claim at once.
                self.beat.idle();
                tokio::select! {
                    _ = self.stop.cancelled() => break,
                    permit = self.slots.acquire() => drop(permit),
                }
                // Saturated: let more runners finish (up to COALESCE) so the next claim is a
                // batch rather than the one slot that freed first; each claim is a statement
                // and a commit whatever its size.
                let enough = (settings.worker.claim_batch.min(settings.worker.concurrency) / 2).max(1) as u32;
                if let Ok(Ok(permits)) = tokio::time::timeout(COALESCE, self.slots.acquire_many(enough)).await {
                    drop(permits);
                }
                continue;
            }
            let want = free.min(settings.worker.claim_batch);
            match self.claim_and_start(want).await {
                Ok(got) => {
                    // Work is arriving: look again soon, and keep looking, less and less
                    // often, after the queue seems empty. An INSERT whose trigger saw items
                    // still queued sends no NOTIFY (the queue looked busy) and may commit
                    // just after this claim's snapshot; without these looks it would wait
                    // for the poll, and so would every INSERT after it (the queue is then
                    // no longer empty, so they send no NOTIFY either).
                    let poll = settings.worker.poll_interval;
                    recheck = if got > 0 { QUICK_RECHECK.min(poll) } else { (recheck * 2).min(poll) };
                    self.metrics.ready.store(true, std::sync::atomic::Ordering::Relaxed);
                    error_delay = Duration::from_millis(50);
                    self.waiting.send_if_modified(|waiting| std::mem::replace(waiting, got < want) != (got < want));
                    if got == want {
                        continue; // there may be more ready
                    }
                }
                Err(e) => {
                    if db::is_connection_error(&e) {
                        self.metrics.ready.store(false, std::sync::atomic::Ordering::Relaxed);
                    }
                    crate::telemetry::warn_limited("claim", "claim failed", &e);
                    self.beat.idle(); // a database outage is waited out, not a wedge
                    tokio::select! {
                        _ = self.stop.cancelled() => break,
                        _ = tokio::time::sleep(error_delay) => {}
                    }
                    error_delay = (error_delay * 2).min(settings.worker.poll_interval.max(Duration::from_secs(1)));
                    continue;
                }
            }
            self.beat.idle();
            tokio::select! {
                _ = self.stop.cancelled() => break,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(recheck) => {}
            }
        }
        tracing::debug!("dispatcher stopped claiming");
    }

    /// The claimed items' mem_docs and, for those with dependencies, the dependencies'
    /// results: one statement each per claim batch, the second only when needed.
    async fn contexts(
        &self,
        items: &[db::claim::ClaimedItem],
        ids: &[uuid::Uuid],
    ) -> Result<HashMap<uuid::Uuid, runner::ItemContext>, sqlx::Error> {
        let mut contexts: HashMap<uuid::Uuid, runner::ItemContext> = HashMap::new();
        for doc in db::queue::mem_docs(&self.pool, ids).await? {
            contexts.entry(doc.work_item_id).or_default().mem_docs.push(doc);
        }
        let waited: Vec<uuid::Uuid> = items.iter().filter(|i| i.has_dependencies).map(|i| i.id).collect();
        if !waited.is_empty() {
            let budget = self.ctx.settings.limits.max_dependency_bytes as i64;
            for input in db::dependencies::inputs(&self.pool, &waited, budget).await? {
                contexts.entry(input.work_item_id).or_default().dependencies.push(input);
            }
        }
        Ok(contexts)
    }

    async fn claim_and_start(&self, want: usize) -> Result<usize, sqlx::Error> {
        let settings = &self.ctx.settings;
        let now = Instant::now();
        let distributed = self.ctx.topology == db::distributed::Topology::Distributed;
        let kind = if settings.worker.tenant_turns && !distributed {
            self.turns.lock().unwrap().next(now)
        } else {
            super::turns::Claim::Oldest
        };
        let (worker, lease, max_content) =
            (&self.ctx.worker_id, settings.worker.lease, settings.limits.max_content_bytes as i32);
        let mut items = match &kind {
            _ if distributed => {
                let ask = super::tenant_ring::Ask { worker, want, lease, max_content };
                self.ring.claim(&self.pool, ask).await?
            }
            super::turns::Claim::Oldest => {
                db::claim::claim(&self.pool, worker, want as i64, lease, max_content).await?
            }
            super::turns::Claim::Turns { after, crowd } => {
                let turn = db::claim::Turn {
                    after: *after,
                    max_tenants: super::turns::Turns::max_tenants(want),
                    crowd: crowd.clone(),
                    share: super::turns::SHARE,
                };
                db::claim::claim_turns(&self.pool, worker, want as i64, lease, max_content, &turn).await?
            }
        };
        if settings.worker.tenant_turns && !distributed {
            self.turns.lock().unwrap().claimed(&kind, want, &items, now);
        }
        // What the turn left (the crowd's part, and the shares of tenants with fewer items
        // than their share): the oldest take it, so a turn costs the crowd nothing.
        if matches!(kind, super::turns::Claim::Turns { .. }) && items.len() < want {
            let rest = (want - items.len()) as i64;
            items.extend(db::claim::claim(&self.pool, worker, rest, lease, max_content).await?);
        }
        if items.is_empty() {
            return Ok(0);
        }
        let mut unmarked: Vec<_> =
            items.iter().filter(|i| i.order_unmarked).map(|i| (i.tenant_id, i.work_order_id)).collect();
        if !unmarked.is_empty() {
            // Orders another writer held during the claim (see db::claim::CLAIM_SQL): rolled
            // up once that writer commits, without holding up this batch. A failure leaves
            // the order to the leader's healing read (db::rollup::heal_roll_ups).
            unmarked.sort_unstable();
            unmarked.dedup();
            let pool = self.pool.clone();
            tokio::spawn(async move {
                let rolled = if distributed {
                    db::distributed::engine::roll_up(&pool, &unmarked).await
                } else {
                    db::rollup::roll_up(&pool, &unmarked.iter().map(|(_, order)| *order).collect::<Vec<_>>()).await
                };
                if let Err(e) = rolled {
                    crate::telemetry::warn_limited("roll_up", "rolling up claimed orders failed", &e);
                }
            });
        }
        Metrics::add(&self.metrics.claimed, items.len() as u64);
        Metrics::add(&self.metrics.claim_batches, 1);
        for item in &items {
            // Both times are the database's (run_at as written, claimed_at the claim's now()).
            let waited = (item.claimed_at - item.run_at).num_microseconds().unwrap_or(i64::MAX) as f64 / 1e6;
            self.metrics.claimed_item(&item.item_type, item.priority, waited);
        }
        // A failure here must not strand claimed items, nor run them without their context
        // (or past a budget): each runner then releases its item to be run again after a
        // backoff.
        // Parked items count as claimed: the queue had them, so the next claim comes at once.
        let got = items.len();
        let mut admitted = self.budgets.admit(&self.pool, &self.in_flight, &mut items).await;
        // The pending reviews first: an evaluation run is held to its judges' limits.
        let mut reviews: HashMap<uuid::Uuid, db::reviews::PendingReview> = HashMap::new();
        let reviewed: Vec<uuid::Uuid> = items.iter().filter(|i| i.review_pending).map(|i| i.id).collect();
        if admitted.is_ok() && !reviewed.is_empty() {
            match db::reviews::pending(&self.pool, &reviewed).await {
                Ok(found) => reviews.extend(found.into_iter().map(|r| (r.work_item_id, r))),
                Err(e) => admitted = Err(e),
            }
        }
        let judging: std::collections::HashSet<uuid::Uuid> =
            reviews.values().filter(|r| r.stage == db::reviews::Stage::Evaluate).map(|r| r.work_item_id).collect();
        if admitted.is_ok() {
            admitted = match self.limits.admit(&self.ctx, &self.pool, &mut items, &judging).await {
                // Look again when the first parked item's turn comes (no NOTIFY tells).
                Ok(Some(after)) => {
                    let wake = self.wake.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(after).await;
                        wake.notify_one();
                    });
                    Ok(())
                }
                Ok(None) => Ok(()),
                Err(e) => Err(e),
            };
        }
        let ids: Vec<_> = items.iter().map(|i| i.id).collect();
        let contexts = match admitted {
            Ok(()) => self.contexts(&items, &ids).await,
            Err(e) => Err(e),
        };
        let mut contexts: Option<HashMap<uuid::Uuid, runner::ItemContext>> = match contexts {
            Ok(mut contexts) => {
                for (id, review) in reviews {
                    contexts.entry(id).or_default().review = Some(review);
                }
                Some(contexts)
            }
            Err(e) => {
                crate::telemetry::warn_limited(
                    "mem_docs",
                    "cannot read budgets, agent limits, mem_docs or dependencies; releasing the claimed items",
                    &e,
                );
                None
            }
        };
        for item in items {
            let permit = self.slots.clone().try_acquire_owned().expect("claimed no more than the free slots");
            let stop = Stop::default();
            let attempt = item.attempt;
            self.in_flight.insert(
                item.id,
                Lease { attempt, tenant: item.tenant_id, confirmed_at: Instant::now(), stop: stop.clone() },
            );
            let ctx = self.ctx.clone();
            let completions = self.completions.clone();
            let in_flight = self.in_flight.clone();
            let metrics = self.metrics.clone();
            let item_context = contexts.as_mut().map(|c| c.remove(&item.id).unwrap_or_default());
            let evaluation = item_context
                .as_ref()
                .and_then(|c| c.review.as_ref())
                .is_some_and(|r| r.stage == db::reviews::Stage::Evaluate);
            let evaluator_slots = self.evaluator_slots.clone();
            // Every line of the item's life carries these (the agent is known once routed).
            let span = tracing::info_span!("item", work_item.id = %item.id, work_order.id = %item.work_order_id,
                attempt, agent = tracing::field::Empty);
            self.tasks.spawn(tracing::Instrument::instrument(
                async move {
                    let id = item.id;
                    // An evaluation run trades its execution slot for an evaluator's.
                    let mut permit = Some(permit);
                    let _evaluator = if evaluation {
                        let judge = evaluator_slots.acquire_owned().await.ok();
                        permit = None;
                        judge
                    } else {
                        None
                    };
                    // Boxed: the task itself stays small, so spawning it copies a few words
                    // rather than the whole run (such copies took about 5% of the daemon's CPU).
                    let run = Box::pin(runner::run(&ctx, item, item_context, stop));
                    match CatchUnwind(run).await {
                        Ok(Some(done)) => {
                            // The slot frees once the result is handed over; the lease stays
                            // in flight (and renewed) until the completer has written it.
                            in_flight.handed_over(id, attempt);
                            let _ = completions.send(done).await;
                        }
                        Ok(None) => {
                            Metrics::add(&metrics.leases_lost, 1);
                            in_flight.remove(&id, attempt);
                        }
                        Err(panic) => {
                            // A bug outside the agent: the lease is let go, so the rescuer takes
                            // the item back when it expires (bounded by worker.max_rescues).
                            tracing::error!(panic = %panic,
                            "runner panicked; the item will be rescued when its lease expires");
                            in_flight.remove(&id, attempt);
                        }
                    }
                    drop(permit);
                },
                span,
            ));
        }
        Ok(got)
    }
}
