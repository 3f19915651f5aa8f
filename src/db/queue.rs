//! The hot path's statements after the claim (`super::claim`): the claimed items' context, lease
//! renewal and the batched, fenced completion.

use crate::model::{Completion, NextState};
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgPool;
use std::time::Duration;
use uuid::Uuid;

/// A memory document attached to an item, for the envelope's context.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct MemDoc {
    pub work_item_id: Uuid,
    pub doc_type: String,
    pub content: String,
    /// JSON text, parsed by the runner (see [`ClaimedItem::order_metadata`]).
    pub metadata: String,
}

/// The memory documents of a batch of claimed items (one statement per claim batch).
pub async fn mem_docs(pool: &PgPool, item_ids: &[Uuid]) -> Result<Vec<MemDoc>, sqlx::Error> {
    sqlx::query_as(
        "SELECT work_item_id, type::text AS doc_type, content, metadata::text AS metadata FROM mem_docs
         WHERE work_item_id = ANY($1) ORDER BY created_at",
    )
    .bind(item_ids)
    .fetch_all(pool)
    .await
}

/// The lease renewal statement (see [`renew_leases`]); public so the plan test can EXPLAIN it.
/// By primary key, never through the partial index of leased rows (see [`COMPLETE_SQL`]).
/// The rows are locked once, in a materialized CTE: as `w.id IN (SELECT … FOR UPDATE SKIP
/// LOCKED)` the locking subquery was the inner side of a nested loop, run again for every
/// renewed row, so a renewal cost O(n²) in the items in flight (5,000 in flight: over 30 s,
/// holding the row locks the completers wait for, longer than the lease).
pub const RENEW_SQL: &str = "WITH locked AS MATERIALIZED (
             SELECT w.id, w.attempt FROM work_items w
             JOIN unnest($1::uuid[], $2::int[]) AS u(id, attempt) ON w.id = u.id
             WHERE w.attempt = u.attempt AND w.status::text = 'PROCESSING'
             FOR UPDATE OF w SKIP LOCKED
         )
         UPDATE work_items w SET lease_expires_at = now() + $3 * interval '1 millisecond'
         FROM locked l
         WHERE w.id = l.id AND w.attempt = l.attempt AND w.status::text = 'PROCESSING'
         RETURNING w.id";

/// Of the given (id, attempt) pairs, those still current and PROCESSING (no lock taken).
pub async fn still_current(pool: &PgPool, ids: &[Uuid], attempts: &[i32]) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT w.id FROM work_items w JOIN unnest($1::uuid[], $2::int[]) AS u(id, attempt) ON u.id = w.id
         WHERE w.id = ANY ($1::uuid[]) AND w.attempt = u.attempt AND w.status::text = 'PROCESSING'",
    )
    .bind(ids)
    .bind(attempts)
    .fetch_all(pool)
    .await
}

/// Extends the leases of items this worker still holds at the given attempts. Returns the
/// ids renewed. Rows locked by another transaction (the completer writing their result, or
/// the rescuer taking them) are skipped rather than waited for: waiting would let a batch
/// renewal and a batch completion lock rows in opposite orders and deadlock.
pub async fn renew_leases(
    pool: &PgPool,
    ids: &[Uuid],
    attempts: &[i32],
    lease: Duration,
) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar(RENEW_SQL).bind(ids).bind(attempts).bind(lease.as_millis() as f64).fetch_all(pool).await
}

/// The batched, fenced completion statement (see [`complete_batch`]); public so the plan
/// test can EXPLAIN it. Parameters: the 37 column arrays of `Columns`, in order. Rows are
/// found by primary key only: `status::text` matches no partial index, so stale statistics
/// cannot send the planner through the leased index instead.
pub const COMPLETE_SQL: &str = r#"
WITH done AS (
    UPDATE work_items w SET
        status = u.status::work_item_status,
        result = CASE WHEN u.status IN ('COMPLETED', 'AWAITING_APPROVAL') THEN u.output ELSE w.result END,
        processed_at = CASE WHEN u.status IN ('COMPLETED', 'FAILED') THEN now() ELSE NULL END,
        run_at = CASE WHEN u.status = 'QUEUED' THEN now() + u.delay_ms * interval '1 millisecond'
                      ELSE w.run_at END,
        attempt_base = CASE WHEN u.base_add < 0 THEN w.attempt ELSE w.attempt_base + u.base_add END,
        review_pending = coalesce(u.review_pending, w.review_pending),
        rescues = w.rescues + CASE WHEN u.attempt_status = 'LOST' THEN 1 ELSE 0 END,
        lease_expires_at = NULL,
        locked_by = NULL,
        last_error = u.error,
        last_error_code = u.error_code
    FROM unnest($1::uuid[], $2::int[], $3::text[], $4::jsonb[], $5::bigint[], $6::int[],
                $7::text[], $8::text[], $11::text[], $9::uuid[], $37::bool[])
         AS u(id, attempt, status, output, delay_ms, base_add, error, error_code, attempt_status,
              attempt_id, review_pending)
    WHERE w.id = u.id AND w.attempt = u.attempt AND w.status::text = 'PROCESSING'
    RETURNING w.id, w.work_order_id, w.attempt, u.attempt_id, w.has_dependents
), attempts_written AS (
    INSERT INTO attempts (id, work_item_id, attempt_number, agent_id, status, input, output,
                          error, error_code, worker_id, usage, started_at, completed_at, duration_ms)
    SELECT a.attempt_id, a.id, a.attempt, a.agent, a.status::attempt_status, a.input, a.output,
           a.error, a.error_code, a.worker, a.usage, a.started_at, now(), a.duration_ms
    FROM unnest($1::uuid[], $2::int[], $9::uuid[], $10::text[], $11::text[], $12::jsonb[],
                $4::jsonb[], $7::text[], $8::text[], $13::text[], $14::jsonb[],
                $15::timestamptz[], $16::int[])
         AS a(id, attempt, attempt_id, agent, status, input, output, error, error_code, worker,
              usage, started_at, duration_ms)
    WHERE a.attempt_id IN (SELECT attempt_id FROM done)
), evals_written AS (
    INSERT INTO eval_results (work_item_id, attempt_id, evaluation_type, score, metrics, passed)
    SELECT e.item_id, e.attempt_id, e.kind, round(e.score::numeric, 2), e.metrics, e.passed
    FROM unnest($17::uuid[], $18::uuid[], $19::text[], $20::float8[], $21::jsonb[], $22::bool[])
         AS e(item_id, attempt_id, kind, score, metrics, passed)
    WHERE e.attempt_id IN (SELECT attempt_id FROM done)
), approvals_written AS (
    INSERT INTO approval_events (work_item_id, attempt_id, approver_id, decision, reason,
                                 policy_version, source)
    SELECT p.item_id, p.attempt_id, p.approver, p.decision::approval_decision, p.reason,
           p.policy, 'POLICY'
    FROM unnest($23::uuid[], $24::uuid[], $25::text[], $26::text[], $27::text[], $28::text[])
         AS p(item_id, attempt_id, approver, decision, reason, policy)
    WHERE p.attempt_id IN (SELECT attempt_id FROM done)
), dead_written AS (
    INSERT INTO dead_letters (work_item_id, source, event_type, payload, error, error_code,
                              reason, retry_count)
    SELECT d.item_id, d.source, d.event_type,
           jsonb_build_object('work_item_id', d.item_id, 'work_order_id', done.work_order_id,
                              'type', d.event_type, 'attempt', done.attempt,
                              'error_code', d.error_code, 'agent', d.source),
           d.error, d.error_code, d.reason::dead_letter_reason, d.retries
    FROM unnest($29::uuid[], $30::text[], $31::text[], $32::text[], $33::text[], $34::text[],
                $35::int[], $36::uuid[])
         AS d(item_id, source, event_type, error, error_code, reason, retries, attempt_id)
    JOIN done ON done.attempt_id = d.attempt_id
)
SELECT id, work_order_id, attempt, has_dependents FROM done
"#;

/// What a completion batch did.
#[derive(Debug, Default, Clone)]
pub struct CompleteReport {
    /// Results written, as (item, attempt).
    pub written: Vec<(Uuid, i32)>,
    /// Results whose attempt was no longer current, as (item, attempt): nothing of theirs
    /// was written.
    pub stale: Vec<(Uuid, i32)>,
    /// Orders whose status the batch changed (their last live item finished).
    pub rolled_up: Vec<Uuid>,
    /// Dependents the batch released or cancelled (db::dependencies::settle).
    pub settled: Vec<super::dependencies::SettledItem>,
}

/// Writes a batch of finished executions in one transaction: the fenced item updates, one
/// attempt row each, eval results, approval events, dead letters, and the roll-up of the
/// orders whose items it finished.
/// Every write of an item is conditional on `(id, attempt)` still being current and the
/// item still PROCESSING; stale results are reported, not written. Side records follow their
/// own attempt, so a stale result and a fresh one for the same item can share a batch.
pub async fn complete_batch(pool: &PgPool, batch: &[Completion]) -> Result<CompleteReport, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let report = complete_in(&mut tx, batch).await?;
    tx.commit().await?;
    Ok(report)
}

/// The orders a batch may finish (items going to COMPLETED or FAILED), sorted: the orders
/// [`complete_in`] rolls up, of those it wrote. Retries, releases and held results leave their orders' statuses
/// as they were (an unfinished item stays unfinished), so they lock nothing.
pub fn finishing_orders(batch: &[Completion]) -> Vec<Uuid> {
    let mut orders: Vec<Uuid> = batch
        .iter()
        .filter(|c| matches!(c.next, NextState::Completed | NextState::DeadLetter { .. }))
        .map(|c| c.order_id)
        .collect();
    orders.sort_unstable();
    orders.dedup();
    orders
}

/// [`complete_batch`] inside the caller's transaction (the rescuer's). After the writes, locks
/// and recomputes the orders of the items it finished ([`super::rollup::lock_orders`]).
pub async fn complete_in(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    batch: &[Completion],
) -> Result<CompleteReport, sqlx::Error> {
    if batch.is_empty() {
        return Ok(CompleteReport::default());
    }
    let done: Vec<(Uuid, Uuid, i32, bool)> = write_completions(tx, batch).await?;
    let written: std::collections::HashSet<(Uuid, i32)> = done.iter().map(|(id, _, n, _)| (*id, *n)).collect();
    let touched: std::collections::HashSet<Uuid> = done.iter().map(|(_, order, _, _)| *order).collect();
    // Items this batch finished that others depend on: their edges are settled in this
    // transaction, a statement after the one that finished them (migration 0023).
    let finishing: std::collections::HashSet<(Uuid, i32)> = batch
        .iter()
        .filter(|c| matches!(c.next, NextState::Completed | NextState::DeadLetter { .. }))
        .map(|c| (c.item_id, c.attempt))
        .collect();
    let with_dependents: Vec<Uuid> = done
        .iter()
        .filter(|(id, _, n, has_dependents)| *has_dependents && finishing.contains(&(*id, *n)))
        .map(|(id, ..)| *id)
        .collect();
    let settled = super::dependencies::settle(tx, &with_dependents, "orderly").await?;
    if batch.iter().any(|c| c.review.is_some()) {
        super::reviews::record(tx, batch, &written).await?;
    }
    // What the written attempts reported beside their results: costs, logs, artifacts.
    if batch.iter().any(|c| !c.report.is_empty()) {
        let attempts: std::collections::HashSet<Uuid> =
            batch.iter().filter(|c| written.contains(&(c.item_id, c.attempt))).map(|c| c.attempt_id).collect();
        super::costs::record(tx, batch, &attempts, None).await?;
        super::runs::record(tx, batch, &attempts, None).await?;
    }
    let mut to_roll: Vec<Uuid> = finishing_orders(batch).into_iter().filter(|order| touched.contains(order)).collect();
    to_roll.extend(
        settled.iter().filter(|s| s.became == super::dependencies::Settled::Cancelled).map(|s| s.work_order_id),
    );
    to_roll.sort_unstable();
    to_roll.dedup();
    let locked = super::rollup::lock_orders(tx, &to_roll).await?;
    let rolled_up = super::rollup::roll_up_locked(tx, &locked).await?;
    let stale = batch.iter().map(|c| (c.item_id, c.attempt)).filter(|key| !written.contains(key)).collect();
    Ok(CompleteReport { written: written.into_iter().collect(), stale, rolled_up, settled })
}

/// The completion statement's parameters, written once: each line is a field of
/// [`Columns`] (one array, bound in this order as `$1`, `$2`, …) with its element type and the
/// PostgreSQL array type [`COMPLETE_PARAM_TYPES`] lists for PREPARE (the plan test).
macro_rules! completion_columns {
    ($first:ident: $first_ty:ty => $first_sql:literal $(, $field:ident: $ty:ty => $sql:literal)* $(,)?) => {
        /// Column arrays of a completion batch, bound as `unnest` parameters.
        #[derive(Default)]
        struct Columns<'a> {
            $first: Vec<$first_ty>,
            $($field: Vec<$ty>,)*
        }

        /// Parameter types of [`COMPLETE_SQL`], for PREPARE.
        pub const COMPLETE_PARAM_TYPES: &str = concat!($first_sql, "[]" $(, ", ", $sql, "[]")*);

        impl<'a> Columns<'a> {
            /// Binds every column, in order.
            fn bind<'q>(
                &'q self,
                query: sqlx::query::QueryAs<'q, sqlx::Postgres, (Uuid, Uuid, i32, bool), sqlx::postgres::PgArguments>,
            ) -> sqlx::query::QueryAs<'q, sqlx::Postgres, (Uuid, Uuid, i32, bool), sqlx::postgres::PgArguments> {
                query.bind(&self.$first)$(.bind(&self.$field))*
            }
        }
    };
}

completion_columns! {
    id: Uuid => "uuid",
    attempt: i32 => "int",
    status: &'static str => "text",
    output: Option<&'a Value> => "jsonb",
    delay_ms: i64 => "bigint",
    base_add: i32 => "int",
    error: Option<&'a str> => "text",
    error_code: Option<&'static str> => "text",
    attempt_id: Uuid => "uuid",
    agent: &'a str => "text",
    attempt_status: &'static str => "text",
    input: &'a Value => "jsonb",
    worker: &'a str => "text",
    usage: Option<&'a Value> => "jsonb",
    started_at: DateTime<Utc> => "timestamptz",
    duration_ms: i32 => "int",
    ev_item: Uuid => "uuid",
    ev_attempt: Uuid => "uuid",
    ev_type: &'a str => "text",
    ev_score: f64 => "float8",
    ev_metrics: &'a Value => "jsonb",
    ev_passed: bool => "bool",
    ap_item: Uuid => "uuid",
    ap_attempt: Uuid => "uuid",
    ap_approver: &'a str => "text",
    ap_decision: &'static str => "text",
    ap_reason: Option<&'a str> => "text",
    ap_policy: &'a str => "text",
    dl_item: Uuid => "uuid",
    dl_source: &'a str => "text",
    dl_type: &'a str => "text",
    dl_error: &'a str => "text",
    dl_code: Option<&'static str> => "text",
    dl_reason: &'static str => "text",
    dl_retries: i32 => "int",
    dl_attempt: Uuid => "uuid",
    review_pending: Option<bool> => "bool",
}

impl<'a> Columns<'a> {
    /// Borrows every value from the batch: nothing is copied before sqlx encodes it.
    fn from_batch(batch: &'a [Completion]) -> Columns<'a> {
        let mut c = Columns::default();
        for done in batch {
            c.id.push(done.item_id);
            c.attempt.push(done.attempt);
            c.status.push(done.next.item_status().as_str());
            c.output.push(done.output.as_ref());
            c.delay_ms.push(match done.next {
                NextState::Retry { delay_ms } | NextState::Released { delay_ms } => delay_ms,
                _ => 0,
            });
            // How the attempt budget moves: a release and a hand-over to the evaluators are
            // not counted (+1 to the base); a revision starts a fresh budget (-1: the base
            // becomes this attempt).
            c.base_add.push(match done.next {
                NextState::Released { .. } | NextState::Evaluate => 1,
                NextState::Revise => -1,
                _ => 0,
            });
            c.review_pending.push(done.review.as_ref().map(|r| !matches!(r, crate::model::ReviewWrite::Settled)));
            c.error.push(done.error.as_ref().map(|e| e.message.as_str()));
            c.error_code.push(done.error.as_ref().map(|e| e.code.as_str()));
            c.attempt_id.push(done.attempt_id);
            c.agent.push(&done.agent);
            c.attempt_status.push(done.attempt_status.as_str());
            c.input.push(&done.input);
            c.worker.push(&done.worker_id);
            c.usage.push(done.usage.as_ref());
            c.started_at.push(done.started_at);
            c.duration_ms.push(done.duration_ms);
            for eval in &done.evals {
                c.ev_item.push(done.item_id);
                c.ev_attempt.push(done.attempt_id);
                c.ev_type.push(&eval.evaluation_type);
                c.ev_score.push(eval.score.clamp(0.0, 1.0));
                c.ev_metrics.push(&eval.metrics);
                c.ev_passed.push(eval.passed);
            }
            if let Some(approval) = &done.approval {
                c.ap_item.push(done.item_id);
                c.ap_attempt.push(done.attempt_id);
                c.ap_approver.push(&approval.approver_id);
                c.ap_decision.push(approval.decision.as_str());
                c.ap_reason.push(approval.reason.as_deref());
                c.ap_policy.push(&approval.policy_version);
            }
            if let NextState::DeadLetter { reason } = done.next {
                c.dl_item.push(done.item_id);
                c.dl_source.push(&done.agent);
                c.dl_type.push(&done.item_type);
                c.dl_error.push(done.error.as_ref().map_or("", |e| e.message.as_str()));
                c.dl_code.push(done.error.as_ref().map(|e| e.code.as_str()));
                c.dl_reason.push(reason.as_str());
                c.dl_retries.push(done.attempts_used);
                c.dl_attempt.push(done.attempt_id);
            }
        }
        c
    }
}

async fn write_completions(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    batch: &[Completion],
) -> Result<Vec<(Uuid, Uuid, i32, bool)>, sqlx::Error> {
    let c = Columns::from_batch(batch);
    // One statement: the fenced UPDATE decides which items are current (`done`); every
    // side record is inserted only for those. The dead-letter payload carries what a replay
    // needs (the item id; content stays in work_items) plus what an operator reads first.
    c.bind(sqlx::query_as(COMPLETE_SQL)).fetch_all(&mut **tx).await
}
