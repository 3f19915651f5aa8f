//! The rescuer (leader only): items whose lease expired go back to QUEUED with their attempt
//! recorded as LOST, or, when the budget or `worker.max_rescues` is spent, to FAILED with a
//! dead letter (RETRIES_EXHAUSTED or CRASH_LOOP).

use crate::config::Settings;
use crate::db;
use crate::db::maintenance::ExpiredItem;
use crate::model::{AttemptStatus, Budget, Completion, DeadLetterReason, ErrorCode, ErrorInfo, NextState};
use crate::policy::catalog::{Catalog, RouteError};
use serde_json::json;
use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Most items rescued per transaction.
const BATCH: i64 = 500;

/// Sweeps between two reads of `work_orders` for orders a dead writer left PROCESSING (5 min
/// at the default `rescue_interval`). Orders' statuses are not indexed (their changes are
/// heap-only updates), so that read covers the table; it also runs on the first sweep of a
/// new leader and after any sweep that rescued something, when a writer is known to have died.
const HEAL_EVERY_SWEEPS: u32 = 60;

#[derive(Debug, Default, Clone, PartialEq)]
pub struct RescueReport {
    pub requeued: usize,
    pub dead_lettered: usize,
    /// Orders whose roll-up a dead writer left undone, rolled up (see `db::rollup::heal_roll_ups`).
    pub orders_healed: usize,
}

pub struct Rescuer {
    pub pool: PgPool,
    /// Workflow steps may set an item's attempt budget; the rescuer honours it as the runner does.
    pub catalog: Arc<Catalog>,
    pub settings: Arc<Settings>,
    pub worker_id: String,
    /// Rescues, their LOST attempts and their dead letters are counted here.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Sweeps since the last healing read (see [`HEAL_EVERY_SWEEPS`]); 0 heals at once.
    pub sweeps_since_heal: std::sync::atomic::AtomicU32,
    /// One PostgreSQL or a Citus cluster (`db::distributed`): which statements rescue.
    pub topology: db::distributed::Topology,
}

impl Rescuer {
    pub async fn run(self, leadership: crate::leadership::Leadership, stop: CancellationToken) {
        super::every_interval_while_leading(self.settings.worker.rescue_interval, leadership, stop, || async {
            match self.run_once().await {
                Ok(report) => {
                    if report.requeued + report.dead_lettered > 0 {
                        tracing::warn!(
                            requeued = report.requeued,
                            dead_lettered = report.dead_lettered,
                            "rescued expired leases"
                        );
                    }
                    if report.orders_healed > 0 {
                        // Usually a writer's own roll-up, a moment after its commit, that the
                        // healing read happened to see first; after a crash, the crash's.
                        tracing::info!(orders = report.orders_healed, "rolled up orders whose items had all finished");
                    }
                }
                Err(e) => crate::telemetry::warn_limited("rescue", "rescue failed", &e),
            }
        })
        .await
    }

    /// One sweep: rescues every expired lease, in batches.
    pub async fn run_once(&self) -> Result<RescueReport, sqlx::Error> {
        let mut report = RescueReport::default();
        loop {
            let (done, written) = match self.topology {
                db::distributed::Topology::Single => {
                    db::maintenance::rescue_expired(&self.pool, BATCH, async |expired| self.decide(expired).await)
                        .await?
                }
                db::distributed::Topology::Distributed => {
                    let (mut done, mut written) = (Vec::new(), db::queue::CompleteReport::default());
                    for tenant in db::distributed::engine::expired_tenants(&self.pool, BATCH).await? {
                        let (d, w) =
                            db::distributed::engine::rescue_tenant(&self.pool, tenant, BATCH, async |expired| {
                                self.decide(expired).await
                            })
                            .await?;
                        done.extend(d);
                        written.stale.extend(w.stale);
                    }
                    (done, written)
                }
            };
            for c in done.iter().filter(|c| !written.stale.contains(&(c.item_id, c.attempt))) {
                self.metrics.rescue_written(c);
                match c.next {
                    NextState::DeadLetter { .. } => report.dead_lettered += 1,
                    _ => report.requeued += 1,
                }
            }
            if (done.len() as i64) < BATCH {
                // The roll-up's safety net: every engine writer rolls up in the transaction
                // that finishes items, so this finds only orders whose items were changed
                // by hand (or by an older release that rolled up after its commit).
                use std::sync::atomic::Ordering::Relaxed;
                let rescued = report.requeued + report.dead_lettered > 0;
                if rescued || self.sweeps_since_heal.load(Relaxed).is_multiple_of(HEAL_EVERY_SWEEPS) {
                    report.orders_healed = match self.topology {
                        db::distributed::Topology::Single => db::rollup::heal_roll_ups(&self.pool, BATCH).await?,
                        db::distributed::Topology::Distributed => {
                            db::distributed::engine::heal_roll_ups(&self.pool, BATCH).await?
                        }
                    }
                    .len();
                    self.sweeps_since_heal.store(0, Relaxed);
                }
                self.sweeps_since_heal.fetch_add(1, Relaxed);
                return Ok(report);
            }
        }
    }

    async fn decide(&self, expired: &[ExpiredItem]) -> Vec<Completion> {
        let retry = &self.settings.retry;
        // Each (workflow, type) once; the catalog caches across sweeps.
        let mut steps: HashMap<(&str, &str), Option<Option<i32>>> = HashMap::new();
        for item in expired {
            let key = (item.workflow_id.as_str(), item.item_type.as_str());
            if let std::collections::hash_map::Entry::Vacant(slot) = steps.entry(key) {
                let step = match self.catalog.resolve(key.0, key.1).await {
                    Ok(step) => Some(step.max_attempts),
                    Err(RouteError::Invalid { .. }) => Some(None),
                    // Unknown for now: the budget cannot be judged, so it is not held against
                    // the item (a crash loop still is).
                    Err(RouteError::Unavailable { .. }) => None,
                };
                slot.insert(step);
            }
        }
        expired
            .iter()
            .map(|item| {
                let step = steps[&(item.workflow_id.as_str(), item.item_type.as_str())];
                let max = match step {
                    Some(step_max) => Budget::ceiling(item.max_attempts, step_max, retry.max_attempts),
                    None => item.max_attempts.unwrap_or(i32::MAX),
                };
                let budget = Budget { used: item.attempt - item.attempt_base, max };
                let next = rescue_next(budget, item.rescues + 1, self.settings.worker.max_rescues);
                let started_at = item.claimed_at.unwrap_or(item.lease_expires_at);
                Completion {
                    item_id: item.id,
                    order_id: item.work_order_id,
                    tenant_id: item.tenant_id,
                    item_type: item.item_type.clone(),
                    attempt: item.attempt,
                    attempt_id: Uuid::now_v7(),
                    attempts_used: budget.used,
                    agent: crate::metrics::RESCUER_AGENT.into(),
                    worker_id: self.worker_id.clone(),
                    started_at,
                    duration_ms: (item.now - started_at).num_milliseconds().clamp(0, i32::MAX as i64) as i32,
                    input: json!({ "rescued_from": item.locked_by, "lease_expired_at": item.lease_expires_at }),
                    attempt_status: AttemptStatus::Lost,
                    output: None,
                    usage: None,
                    report: Default::default(),
                    error: Some(ErrorInfo {
                        code: ErrorCode::WorkerLost,
                        message: format!(
                            "worker {} stopped renewing its lease (expired {}); rescue {} of {}",
                            item.locked_by.as_deref().unwrap_or("?"),
                            item.lease_expires_at,
                            item.rescues + 1,
                            self.settings.worker.max_rescues
                        ),
                    }),
                    evals: vec![],
                    approval: None,
                    next,
                    review: None,
                }
            })
            .collect()
    }
}

/// What a rescue does to an item: a crash loop (too many rescues) and an exhausted budget
/// are dead-lettered; anything else is runnable again at once (the worker vanished; the
/// item is not known to be at fault, and `max_rescues` bounds the case where it is).
pub fn rescue_next(budget: Budget, rescues: i32, max_rescues: i32) -> NextState {
    if rescues >= max_rescues {
        NextState::DeadLetter { reason: DeadLetterReason::CrashLoop }
    } else if budget.exhausted() {
        NextState::DeadLetter { reason: DeadLetterReason::RetriesExhausted }
    } else {
        NextState::Retry { delay_ms: 0 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rescues_retry_until_a_crash_loop_or_an_exhausted_budget() {
        let fresh = Budget { used: 1, max: 5 };
        assert!(matches!(rescue_next(fresh, 1, 3), NextState::Retry { delay_ms: 0 }));
        assert!(matches!(rescue_next(fresh, 2, 3), NextState::Retry { delay_ms: 0 }));
        assert_eq!(rescue_next(fresh, 3, 3), NextState::DeadLetter { reason: DeadLetterReason::CrashLoop });
        let spent = Budget { used: 5, max: 5 };
        assert_eq!(rescue_next(spent, 1, 3), NextState::DeadLetter { reason: DeadLetterReason::RetriesExhausted });
    }
}
