//! The engine's writes after the claim, in distributed mode: the same fenced completion,
//! lease renewal, rescue and order roll-up as the single-node statements (`super::super::
//! queue`, `rollup`, `maintenance`), one tenant per statement so that Citus routes each to
//! the node holding that tenant's shards. A batch of several tenants is one transaction
//! (Citus commits it on every node it touched with two-phase commit).
//!
//! Citus plans a statement that names one tenant as one task, but refuses in an UPDATE a
//! function that is not immutable over a column (`CASE`, `now() + column`): the times such a
//! statement writes are computed from the transaction's `now()` before it ([`Clock`]), and
//! enum values are bound as typed arrays rather than cast per row. Chains of data-modifying
//! CTEs are planned through the coordinator, so each write is a statement of its own.

use crate::db::maintenance::ExpiredItem;
use crate::db::queue::CompleteReport;
use crate::db::rollup::order_status_from_items;
use crate::model::{Completion, NextState};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sqlx::{PgPool, Postgres, Transaction};
use std::collections::{BTreeMap, HashSet};
use std::time::Duration;
use uuid::Uuid;

/// The transaction's `now()`, read once: what every row of the batch writes as its time.
struct Clock(DateTime<Utc>);

impl Clock {
    async fn read(tx: &mut Transaction<'_, Postgres>) -> Result<Clock, sqlx::Error> {
        Ok(Clock(sqlx::query_scalar("SELECT now()").fetch_one(&mut **tx).await?))
    }
    fn after_ms(&self, ms: i64) -> DateTime<Utc> {
        self.0 + chrono::Duration::milliseconds(ms)
    }
}

/// The completion's item update for one tenant ($1); the rest are the batch's column arrays.
const UPDATE_ITEMS_SQL: &str = "
UPDATE work_items w SET
    status = u.status,
    result = CASE WHEN u.status IN ('COMPLETED', 'AWAITING_APPROVAL') THEN u.output ELSE w.result END,
    processed_at = u.processed_at,
    run_at = coalesce(u.run_at, w.run_at),
    attempt_base = CASE WHEN u.base_add < 0 THEN w.attempt ELSE w.attempt_base + u.base_add END,
    review_pending = coalesce(u.review_pending, w.review_pending),
    rescues = w.rescues + u.lost,
    lease_expires_at = NULL,
    locked_by = NULL,
    last_error = u.error,
    last_error_code = u.error_code
FROM unnest($2::uuid[], $3::int[], $4::text[]::work_item_status[], $5::jsonb[], $6::timestamptz[],
            $7::timestamptz[], $8::int[], $9::bool[], $10::int[], $11::text[], $12::text[])
     AS u(id, attempt, status, output, processed_at, run_at, base_add, review_pending, lost, error, error_code)
WHERE w.tenant_id = $1 AND w.id = u.id AND w.attempt = u.attempt AND w.status = 'PROCESSING'
RETURNING w.id, w.work_order_id, w.attempt";

const INSERT_ATTEMPTS_SQL: &str = "
INSERT INTO attempts (tenant_id, id, work_item_id, attempt_number, agent_id, status, input, output,
                      error, error_code, worker_id, usage, started_at, completed_at, duration_ms)
SELECT $1, a.attempt_id, a.id, a.attempt, a.agent, a.status, a.input, a.output, a.error, a.error_code,
       a.worker, a.usage, a.started_at, $15, a.duration_ms
FROM unnest($2::uuid[], $3::int[], $4::uuid[], $5::text[], $6::text[]::attempt_status[], $7::jsonb[],
            $8::jsonb[], $9::text[], $10::text[], $11::text[], $12::jsonb[], $13::timestamptz[], $14::int[])
     AS a(id, attempt, attempt_id, agent, status, input, output, error, error_code, worker, usage,
          started_at, duration_ms)";

const INSERT_EVALS_SQL: &str = "
INSERT INTO eval_results (tenant_id, work_item_id, attempt_id, evaluation_type, score, metrics, passed)
SELECT $1, e.item_id, e.attempt_id, e.kind, round(e.score::numeric, 2), e.metrics, e.passed
FROM unnest($2::uuid[], $3::uuid[], $4::text[], $5::float8[], $6::jsonb[], $7::bool[])
     AS e(item_id, attempt_id, kind, score, metrics, passed)";

const INSERT_APPROVALS_SQL: &str = "
INSERT INTO approval_events (tenant_id, work_item_id, attempt_id, approver_id, decision, reason, policy_version, source)
SELECT $1, p.item_id, p.attempt_id, p.approver, p.decision, p.reason, p.policy, 'POLICY'
FROM unnest($2::uuid[], $3::uuid[], $4::text[], $5::text[]::approval_decision[], $6::text[], $7::text[])
     AS p(item_id, attempt_id, approver, decision, reason, policy)";

const INSERT_DEAD_LETTERS_SQL: &str = "
INSERT INTO dead_letters (tenant_id, work_item_id, source, event_type, payload, error, error_code, reason, retry_count)
SELECT $1, d.item_id, d.source, d.event_type, d.payload, d.error, d.error_code, d.reason, d.retries
FROM unnest($2::uuid[], $3::text[], $4::text[], $5::jsonb[], $6::text[], $7::text[],
            $8::text[]::dead_letter_reason[], $9::int[])
     AS d(item_id, source, event_type, payload, error, error_code, reason, retries)";

/// Locks one tenant's orders in id order ([`crate::db::rollup::lock_orders`]).
const LOCK_ORDERS_SQL: &str =
    "SELECT id FROM work_orders WHERE tenant_id = $1 AND id = ANY($2) ORDER BY id FOR NO KEY UPDATE";

/// Recomputes one tenant's locked orders ([`crate::db::rollup::ROLL_UP_SQL`], by key).
const ROLL_UP_SQL: &str = concat!(
    "WITH r AS MATERIALIZED (
         SELECT o.id, o.status AS was, ",
    order_status_from_items!("i.tenant_id = $1 AND"),
    " AS status FROM work_orders o WHERE o.tenant_id = $1 AND o.id = ANY($2))
     UPDATE work_orders o SET status = r.status, updated_at = $3
     FROM r WHERE o.tenant_id = $1 AND o.id = r.id AND r.was <> r.status
     RETURNING o.id"
);

/// Writes a batch of finished executions in one transaction (the distributed
/// [`crate::db::queue::complete_batch`]).
pub async fn complete_batch(pool: &PgPool, batch: &[Completion]) -> Result<CompleteReport, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let report = complete_in(&mut tx, batch).await?;
    tx.commit().await?;
    Ok(report)
}

/// [`complete_batch`] inside the caller's transaction (the rescuer's): tenant by tenant, in
/// tenant order, the fenced item update, then the side records of the items it wrote, then
/// the roll-up of the orders it finished.
pub async fn complete_in(
    tx: &mut Transaction<'_, Postgres>,
    batch: &[Completion],
) -> Result<CompleteReport, sqlx::Error> {
    let mut report = CompleteReport::default();
    if batch.is_empty() {
        return Ok(report);
    }
    let clock = Clock::read(tx).await?;
    let mut by_tenant: BTreeMap<Uuid, Vec<&Completion>> = BTreeMap::new();
    for done in batch {
        by_tenant.entry(done.tenant_id).or_default().push(done);
    }
    for (tenant, group) in by_tenant {
        let written = update_items(tx, tenant, &group, &clock).await?;
        let keys: HashSet<(Uuid, i32)> = written.iter().map(|(id, _, n)| (*id, *n)).collect();
        let kept: Vec<&Completion> = group.iter().copied().filter(|c| keys.contains(&(c.item_id, c.attempt))).collect();
        insert_records(tx, tenant, &kept, &clock).await?;
        // What the written attempts reported beside their results: costs, logs, artifacts.
        if kept.iter().any(|c| !c.report.is_empty()) {
            let attempts: HashSet<Uuid> = kept.iter().map(|c| c.attempt_id).collect();
            crate::db::costs::record(tx, kept.iter().copied(), &attempts, Some(tenant)).await?;
            crate::db::runs::record(tx, kept.iter().copied(), &attempts, Some(tenant)).await?;
        }
        let mut finishing: Vec<Uuid> = kept
            .iter()
            .filter(|c| matches!(c.next, NextState::Completed | NextState::DeadLetter { .. }))
            .map(|c| c.order_id)
            .collect();
        finishing.sort_unstable();
        finishing.dedup();
        report.rolled_up.extend(roll_up_in(tx, tenant, &finishing, &clock).await?);
        report.written.extend(keys);
    }
    let written: HashSet<(Uuid, i32)> = report.written.iter().copied().collect();
    report.stale = batch.iter().map(|c| (c.item_id, c.attempt)).filter(|key| !written.contains(key)).collect();
    Ok(report)
}

async fn update_items(
    tx: &mut Transaction<'_, Postgres>,
    tenant: Uuid,
    group: &[&Completion],
    clock: &Clock,
) -> Result<Vec<(Uuid, Uuid, i32)>, sqlx::Error> {
    let finished = |c: &Completion| matches!(c.next, NextState::Completed | NextState::DeadLetter { .. });
    let run_at = |c: &Completion| match c.next {
        NextState::Retry { delay_ms } | NextState::Released { delay_ms } => Some(clock.after_ms(delay_ms)),
        _ => None,
    };
    let base_add = |c: &Completion| match c.next {
        NextState::Released { .. } | NextState::Evaluate => 1,
        NextState::Revise => -1,
        _ => 0,
    };
    sqlx::query_as(UPDATE_ITEMS_SQL)
        .bind(tenant)
        .bind(group.iter().map(|c| c.item_id).collect::<Vec<_>>())
        .bind(group.iter().map(|c| c.attempt).collect::<Vec<_>>())
        .bind(group.iter().map(|c| c.next.item_status().as_str()).collect::<Vec<_>>())
        .bind(group.iter().map(|c| c.output.as_ref()).collect::<Vec<_>>())
        .bind(group.iter().map(|c| finished(c).then_some(clock.0)).collect::<Vec<_>>())
        .bind(group.iter().map(|c| run_at(c)).collect::<Vec<_>>())
        .bind(group.iter().map(|c| base_add(c)).collect::<Vec<_>>())
        .bind(
            group
                .iter()
                .map(|c| c.review.as_ref().map(|r| !matches!(r, crate::model::ReviewWrite::Settled)))
                .collect::<Vec<_>>(),
        )
        .bind(
            group.iter().map(|c| i32::from(c.attempt_status == crate::model::AttemptStatus::Lost)).collect::<Vec<_>>(),
        )
        .bind(group.iter().map(|c| c.error.as_ref().map(|e| e.message.as_str())).collect::<Vec<_>>())
        .bind(group.iter().map(|c| c.error.as_ref().map(|e| e.code.as_str())).collect::<Vec<_>>())
        .fetch_all(&mut **tx)
        .await
}

/// The attempt row of every written execution, and its evaluations, approval and dead letter.
async fn insert_records(
    tx: &mut Transaction<'_, Postgres>,
    tenant: Uuid,
    kept: &[&Completion],
    clock: &Clock,
) -> Result<(), sqlx::Error> {
    if kept.is_empty() {
        return Ok(());
    }
    sqlx::query(INSERT_ATTEMPTS_SQL)
        .bind(tenant)
        .bind(kept.iter().map(|c| c.item_id).collect::<Vec<_>>())
        .bind(kept.iter().map(|c| c.attempt).collect::<Vec<_>>())
        .bind(kept.iter().map(|c| c.attempt_id).collect::<Vec<_>>())
        .bind(kept.iter().map(|c| c.agent.as_str()).collect::<Vec<_>>())
        .bind(kept.iter().map(|c| c.attempt_status.as_str()).collect::<Vec<_>>())
        .bind(kept.iter().map(|c| &c.input).collect::<Vec<_>>())
        .bind(kept.iter().map(|c| c.output.as_ref()).collect::<Vec<_>>())
        .bind(kept.iter().map(|c| c.error.as_ref().map(|e| e.message.as_str())).collect::<Vec<_>>())
        .bind(kept.iter().map(|c| c.error.as_ref().map(|e| e.code.as_str())).collect::<Vec<_>>())
        .bind(kept.iter().map(|c| c.worker_id.as_str()).collect::<Vec<_>>())
        .bind(kept.iter().map(|c| c.usage.as_ref()).collect::<Vec<_>>())
        .bind(kept.iter().map(|c| c.started_at).collect::<Vec<_>>())
        .bind(kept.iter().map(|c| c.duration_ms).collect::<Vec<_>>())
        .bind(clock.0)
        .execute(&mut **tx)
        .await?;
    let evals: Vec<(&Completion, &crate::model::EvalRecord)> =
        kept.iter().flat_map(|c| c.evals.iter().map(move |e| (*c, e))).collect();
    if !evals.is_empty() {
        sqlx::query(INSERT_EVALS_SQL)
            .bind(tenant)
            .bind(evals.iter().map(|(c, _)| c.item_id).collect::<Vec<_>>())
            .bind(evals.iter().map(|(c, _)| c.attempt_id).collect::<Vec<_>>())
            .bind(evals.iter().map(|(_, e)| e.evaluation_type.as_str()).collect::<Vec<_>>())
            .bind(evals.iter().map(|(_, e)| e.score.clamp(0.0, 1.0)).collect::<Vec<_>>())
            .bind(evals.iter().map(|(_, e)| &e.metrics).collect::<Vec<_>>())
            .bind(evals.iter().map(|(_, e)| e.passed).collect::<Vec<_>>())
            .execute(&mut **tx)
            .await?;
    }
    let approvals: Vec<(&Completion, &crate::model::ApprovalRecord)> =
        kept.iter().filter_map(|c| c.approval.as_ref().map(|a| (*c, a))).collect();
    if !approvals.is_empty() {
        sqlx::query(INSERT_APPROVALS_SQL)
            .bind(tenant)
            .bind(approvals.iter().map(|(c, _)| c.item_id).collect::<Vec<_>>())
            .bind(approvals.iter().map(|(c, _)| c.attempt_id).collect::<Vec<_>>())
            .bind(approvals.iter().map(|(_, a)| a.approver_id.as_str()).collect::<Vec<_>>())
            .bind(approvals.iter().map(|(_, a)| a.decision.as_str()).collect::<Vec<_>>())
            .bind(approvals.iter().map(|(_, a)| a.reason.as_deref()).collect::<Vec<_>>())
            .bind(approvals.iter().map(|(_, a)| a.policy_version.as_str()).collect::<Vec<_>>())
            .execute(&mut **tx)
            .await?;
    }
    let dead: Vec<(&Completion, crate::model::DeadLetterReason)> = kept
        .iter()
        .filter_map(|c| match c.next {
            NextState::DeadLetter { reason } => Some((*c, reason)),
            _ => None,
        })
        .collect();
    if !dead.is_empty() {
        // What a replay needs (the item; its content stays in work_items) and what an
        // operator reads first: the single-node payload, built here.
        let payload = |c: &Completion| -> Value {
            json!({ "work_item_id": c.item_id, "work_order_id": c.order_id, "type": c.item_type,
                    "attempt": c.attempt, "error_code": c.error.as_ref().map(|e| e.code.as_str()),
                    "agent": c.agent })
        };
        sqlx::query(INSERT_DEAD_LETTERS_SQL)
            .bind(tenant)
            .bind(dead.iter().map(|(c, _)| c.item_id).collect::<Vec<_>>())
            .bind(dead.iter().map(|(c, _)| c.agent.as_str()).collect::<Vec<_>>())
            .bind(dead.iter().map(|(c, _)| c.item_type.as_str()).collect::<Vec<_>>())
            .bind(dead.iter().map(|(c, _)| payload(c)).collect::<Vec<_>>())
            .bind(dead.iter().map(|(c, _)| c.error.as_ref().map_or("", |e| e.message.as_str())).collect::<Vec<_>>())
            .bind(dead.iter().map(|(c, _)| c.error.as_ref().map(|e| e.code.as_str())).collect::<Vec<_>>())
            .bind(dead.iter().map(|(_, reason)| reason.as_str()).collect::<Vec<_>>())
            .bind(dead.iter().map(|(c, _)| c.attempts_used).collect::<Vec<_>>())
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

/// Locks and recomputes one tenant's orders inside the caller's transaction (the rule of
/// [`crate::db::rollup::lock_orders`]: after the item writes, orders in id order).
async fn roll_up_in(
    tx: &mut Transaction<'_, Postgres>,
    tenant: Uuid,
    orders: &[Uuid],
    clock: &Clock,
) -> Result<Vec<Uuid>, sqlx::Error> {
    if orders.is_empty() {
        return Ok(vec![]);
    }
    let locked: Vec<Uuid> = sqlx::query_scalar(LOCK_ORDERS_SQL).bind(tenant).bind(orders).fetch_all(&mut **tx).await?;
    sqlx::query_scalar(ROLL_UP_SQL).bind(tenant).bind(&locked).bind(clock.0).fetch_all(&mut **tx).await
}

/// Locks and recomputes one tenant's orders inside the caller's transaction, on the
/// database clock (on-call's actions on a cluster: db::dead_letters::roll_up_orders).
pub(crate) async fn roll_up_tenant(
    tx: &mut Transaction<'_, Postgres>,
    tenant: Uuid,
    orders: &[Uuid],
) -> Result<Vec<Uuid>, sqlx::Error> {
    if orders.is_empty() {
        return Ok(vec![]);
    }
    let clock = Clock::read(tx).await?;
    roll_up_in(tx, tenant, orders, &clock).await
}

/// Locks and recomputes orders in a transaction of its own (the distributed
/// [`crate::db::rollup::roll_up`]: orders a claim could not mark), given as (tenant, order).
pub async fn roll_up(pool: &PgPool, orders: &[(Uuid, Uuid)]) -> Result<Vec<Uuid>, sqlx::Error> {
    let mut by_tenant: BTreeMap<Uuid, Vec<Uuid>> = BTreeMap::new();
    for (tenant, order) in orders {
        by_tenant.entry(*tenant).or_default().push(*order);
    }
    let mut tx = pool.begin().await?;
    let clock = Clock::read(&mut tx).await?;
    let mut changed = Vec::new();
    for (tenant, mut orders) in by_tenant {
        orders.sort_unstable();
        orders.dedup();
        changed.extend(roll_up_in(&mut tx, tenant, &orders, &clock).await?);
    }
    tx.commit().await?;
    Ok(changed)
}

/// Lease renewal for one tenant ([`crate::db::queue::RENEW_SQL`]): rows locked by another
/// transaction are skipped, not waited for.
const RENEW_SQL: &str = "WITH locked AS MATERIALIZED (
        SELECT w.id, w.attempt FROM work_items w
        JOIN unnest($2::uuid[], $3::int[]) AS u(id, attempt) ON w.id = u.id
        WHERE w.tenant_id = $1 AND w.attempt = u.attempt AND w.status = 'PROCESSING'
        FOR UPDATE OF w SKIP LOCKED
    )
    UPDATE work_items w SET lease_expires_at = now() + $4 * interval '1 millisecond'
    FROM locked l
    WHERE w.tenant_id = $1 AND w.id = l.id AND w.attempt = l.attempt
    RETURNING w.id";

/// What a question asked of every tenant's node found: the items it answered for, the items
/// of the tenants whose node could not answer, and the first error met.
#[derive(Debug, Default)]
pub struct Answered {
    pub known: Vec<Uuid>,
    pub unknown: Vec<Uuid>,
    pub error: Option<sqlx::Error>,
}

impl Answered {
    fn add(&mut self, ids: Vec<Uuid>, answer: Result<Vec<Uuid>, sqlx::Error>) {
        match answer {
            Ok(found) => self.known.extend(found),
            Err(e) => {
                self.unknown.extend(ids);
                self.error.get_or_insert(e);
            }
        }
    }
}

/// Extends the leases this worker holds, given as (tenant, item, attempt): one routed
/// statement per tenant, so that a node that does not answer costs only its own tenants'
/// renewals. `known`: the ids renewed.
pub async fn renew_leases(pool: &PgPool, held: &[(Uuid, Uuid, i32)], lease: Duration) -> Answered {
    let mut answered = Answered::default();
    for (tenant, (ids, attempts)) in by_tenant(held) {
        let renewed = sqlx::query_scalar::<_, Uuid>(RENEW_SQL)
            .bind(tenant)
            .bind(&ids)
            .bind(attempts)
            .bind(lease.as_millis() as f64)
            .fetch_all(pool)
            .await;
        answered.add(ids, renewed);
    }
    answered
}

/// Of the given (tenant, item, attempt), the items still current and PROCESSING (`known`),
/// tenant by tenant.
pub async fn still_current(pool: &PgPool, held: &[(Uuid, Uuid, i32)]) -> Answered {
    let mut answered = Answered::default();
    for (tenant, (ids, attempts)) in by_tenant(held) {
        let current = sqlx::query_scalar::<_, Uuid>(
            "SELECT w.id FROM work_items w JOIN unnest($2::uuid[], $3::int[]) AS u(id, attempt) ON u.id = w.id
             WHERE w.tenant_id = $1 AND w.attempt = u.attempt AND w.status = 'PROCESSING'",
        )
        .bind(tenant)
        .bind(&ids)
        .bind(attempts)
        .fetch_all(pool)
        .await;
        answered.add(ids, current);
    }
    answered
}

fn by_tenant(held: &[(Uuid, Uuid, i32)]) -> BTreeMap<Uuid, (Vec<Uuid>, Vec<i32>)> {
    let mut groups: BTreeMap<Uuid, (Vec<Uuid>, Vec<i32>)> = BTreeMap::new();
    for (tenant, id, attempt) in held {
        let group = groups.entry(*tenant).or_default();
        group.0.push(*id);
        group.1.push(*attempt);
    }
    groups
}

/// Tenants with expired leases, read across the shards without a lock: the rescuer then
/// rescues each with [`rescue_tenant`], so that one tenant's rescue is one node's work.
/// The limit is written into the statement: Citus cannot plan a multi-shard `LIMIT $1`.
pub async fn expired_tenants(pool: &PgPool, limit: i64) -> Result<Vec<Uuid>, sqlx::Error> {
    let sql = format!(
        "SELECT DISTINCT tenant_id FROM work_items WHERE status = 'PROCESSING' AND lease_expires_at < now() LIMIT {limit}"
    );
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).fetch_all(pool).await
}

/// The distributed [`crate::db::maintenance::rescue_expired`] for one tenant: its expired
/// items locked, decided and written in one transaction.
pub async fn rescue_tenant<F>(
    pool: &PgPool,
    tenant: Uuid,
    limit: i64,
    decide: F,
) -> Result<(Vec<Completion>, CompleteReport), sqlx::Error>
where
    F: AsyncFnOnce(&[ExpiredItem]) -> Vec<Completion>,
{
    let mut tx = pool.begin().await?;
    let expired: Vec<ExpiredItem> = sqlx::query_as(
        "SELECT w.id, w.work_order_id, w.tenant_id, o.workflow_id, w.type::text AS item_type, w.attempt,
                w.attempt_base, w.max_attempts, w.rescues, w.locked_by, w.claimed_at, w.lease_expires_at, now() AS now
         FROM work_items w JOIN work_orders o ON o.tenant_id = w.tenant_id AND o.id = w.work_order_id
         WHERE w.tenant_id = $1 AND o.tenant_id = $1 AND w.status = 'PROCESSING' AND w.lease_expires_at < now()
         ORDER BY w.lease_expires_at
         LIMIT $2
         FOR UPDATE OF w SKIP LOCKED",
    )
    .bind(tenant)
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;
    let completions = decide(&expired).await;
    let report = complete_in(&mut tx, &completions).await?;
    tx.commit().await?;
    Ok((completions, report))
}

/// The distributed [`crate::db::rollup::heal_roll_ups`]: PROCESSING orders whose items are
/// all finished, and orders not PROCESSING while one of their items runs, found across the
/// shards (each probe joined on the tenant, so Citus runs it on every shard at once), then
/// rolled up tenant by tenant ([`roll_up`]). The limit is written into the statements: Citus
/// cannot plan a multi-shard `LIMIT $1`.
pub async fn heal_roll_ups(pool: &PgPool, limit: i64) -> Result<Vec<Uuid>, sqlx::Error> {
    let stranded_sql = format!(
        "{}{limit}",
        concat!(
            "SELECT o.tenant_id, o.id FROM work_orders o WHERE o.status = 'PROCESSING' AND 'PROCESSING' <> ",
            order_status_from_items!("i.tenant_id = o.tenant_id AND"),
            " LIMIT "
        )
    );
    let unmarked_sql = format!(
        "SELECT DISTINCT o.tenant_id, o.id FROM work_items i
         JOIN work_orders o ON o.tenant_id = i.tenant_id AND o.id = i.work_order_id
         WHERE i.status = 'PROCESSING' AND i.lease_expires_at IS NOT NULL AND o.status <> 'PROCESSING'
         LIMIT {limit}"
    );
    let mut healed = Vec::new();
    loop {
        let mut found: Vec<(Uuid, Uuid)> =
            sqlx::query_as(sqlx::AssertSqlSafe(stranded_sql.clone())).fetch_all(pool).await?;
        let unmarked: Vec<(Uuid, Uuid)> =
            sqlx::query_as(sqlx::AssertSqlSafe(unmarked_sql.clone())).fetch_all(pool).await?;
        let full = found.len() as i64 == limit || unmarked.len() as i64 == limit;
        found.extend(unmarked);
        let rolled = if found.is_empty() { vec![] } else { roll_up(pool, &found).await? };
        // Fewer than a round's worth, or none of them changed (their items moved meanwhile).
        let done = !full || rolled.is_empty();
        healed.extend(rolled);
        if done {
            return Ok(healed);
        }
    }
}
