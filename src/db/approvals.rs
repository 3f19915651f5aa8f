//! Human decisions on items held in AWAITING_APPROVAL.

use super::OpsError;
use super::audit::audit;
use super::distributed::{BindTenant, Row, joined, placement, scoped, topology};
use crate::model::{Decision, ErrorCode, ItemStatus, NextState};
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

/// An item waiting in AWAITING_APPROVAL, as a human decision needs it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct HeldItem {
    pub id: Uuid,
    pub work_order_id: Uuid,
    pub workflow_id: String,
    pub item_type: String,
    /// The held attempt: the decision is for this one only.
    pub attempt: i32,
    pub attempt_base: i32,
    pub max_attempts: Option<i32>,
    /// Its tenant on a Citus cluster, whose node the decision is written on; None on one
    /// PostgreSQL.
    #[sqlx(default)]
    pub tenant: Option<Uuid>,
}

/// [`HeldItem`] with the status it must have.
#[derive(sqlx::FromRow)]
struct HeldRow {
    #[sqlx(flatten)]
    item: HeldItem,
    status: ItemStatus,
}

/// The item, if it is waiting for a human decision.
pub async fn held_item(pool: &PgPool, id: Uuid) -> Result<HeldItem, OpsError> {
    let tenant = placement(pool, Row::Item, id).await?.tenant(|| OpsError::NotFound { what: "work item", id })?;
    let row: HeldRow = sqlx::query_as(scoped(
        "SELECT i.id, i.work_order_id, o.workflow_id, i.type::text AS item_type, i.status::text AS status,
                i.attempt, i.attempt_base, i.max_attempts
         FROM work_items i JOIN work_orders o ON o.id = i.work_order_id{t:o} WHERE i.id = $1{t:i}",
        tenant,
        2,
    ))
    .bind(id)
    .bind_tenant(tenant)
    .fetch_optional(pool)
    .await?
    .ok_or_else(|| OpsError::NotFound { what: "work item", id })?;
    if row.status != ItemStatus::AwaitingApproval {
        return Err(OpsError::Conflict(format!("work item {id} is {}, not AWAITING_APPROVAL", row.status)));
    }
    Ok(HeldItem { tenant, ..row.item })
}

/// A human's decision on a held item, and what it does to the item.
#[derive(Debug, Clone)]
pub struct HumanDecision<'a> {
    pub decision: Decision,
    pub next: NextState,
    pub actor: &'a str,
    pub reason: Option<&'a str>,
    /// Attempts counted against the item's budget (for a dead letter's retry count).
    pub attempts_used: i32,
}

/// Writes a human decision on `item`'s held attempt in one transaction: the `HUMAN`
/// approval event, the item's next state (COMPLETED; or, rejected, QUEUED for a retry or
/// FAILED with a dead letter, the attempt then marked FAILED with `APPROVAL_REJECTED` as the
/// policy's own rejection would have been), the order's roll-up and an audit row. The item
/// is locked and must still be held at the same attempt, so two operators deciding at once
/// get one decision and one conflict.
pub async fn record_human_decision(pool: &PgPool, item: &HeldItem, human: &HumanDecision<'_>) -> Result<(), OpsError> {
    let tenant = item.tenant;
    let mut tx = pool.begin().await?;
    let (attempt_id, agent, policy_version): (Uuid, String, Option<String>) = sqlx::query_as(scoped(
        "SELECT a.id AS attempt_id, a.agent_id,
                (SELECT p.policy_version FROM approval_events p
                 WHERE p.work_item_id = i.id{t:p} AND p.attempt_id = a.id AND p.source = 'POLICY') AS policy_version
         FROM work_items i JOIN attempts a ON a.work_item_id = i.id{t:a} AND a.attempt_number = i.attempt
         WHERE i.id = $1{t:i} AND i.attempt = $2 AND i.status = 'AWAITING_APPROVAL'
         FOR UPDATE OF i",
        tenant,
        3,
    ))
    .bind(item.id)
    .bind(item.attempt)
    .bind_tenant(tenant)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(|| OpsError::Conflict(format!("work item {} is no longer awaiting approval", item.id)))?;
    // The decision's time, read once: Citus refuses a non-immutable function inside a CASE.
    let now: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("SELECT now()").fetch_one(&mut *tx).await?;
    sqlx::query(scoped(
        "INSERT INTO approval_events ({tc}work_item_id, attempt_id, approver_id, decision, reason, policy_version, source)
         VALUES ({tv}$1, $2, $3, $4::approval_decision, $5, $6, 'HUMAN')",
        tenant,
        7,
    ))
    .bind(item.id)
    .bind(attempt_id)
    .bind(human.actor)
    .bind(human.decision.as_str())
    .bind(human.reason)
    .bind(policy_version.as_deref().unwrap_or("human"))
    .bind_tenant(tenant)
    .execute(&mut *tx)
    .await?;
    let revise = matches!(human.next, NextState::Revise);
    let error = (human.decision == Decision::Rejected).then(|| {
        format!(
            "rejected by {}{}{}",
            human.actor,
            human.reason.map(|r| format!(": {r}")).unwrap_or_default(),
            if revise { " (sent back for revision)" } else { "" }
        )
    });
    if let Some(message) = &error {
        sqlx::query(scoped(
            "UPDATE attempts a SET status = 'FAILED', error = $2, error_code = $3 WHERE a.id = $1{t:a}",
            tenant,
            4,
        ))
        .bind(attempt_id)
        .bind(message)
        .bind(ErrorCode::ApprovalRejected.as_str())
        .bind_tenant(tenant)
        .execute(&mut *tx)
        .await?;
    }
    let delay_ms = match human.next {
        NextState::Retry { delay_ms } => delay_ms,
        _ => 0,
    };
    let status = human.next.item_status();
    let processed_at = matches!(status, ItemStatus::Completed | ItemStatus::Failed).then_some(now);
    let run_at = (status == ItemStatus::Queued).then(|| now + chrono::Duration::milliseconds(delay_ms));
    sqlx::query(scoped(
        "UPDATE work_items w SET status = $2::work_item_status, processed_at = $3, run_at = coalesce($4, run_at),
                last_error = $5, last_error_code = $6,
                attempt_base = CASE WHEN $7 THEN attempt ELSE attempt_base END,
                review_pending = review_pending OR $7
         WHERE w.id = $1{t:w}",
        tenant,
        8,
    ))
    .bind(item.id)
    .bind(status.as_str())
    .bind(processed_at)
    .bind(run_at)
    .bind(error.as_deref())
    .bind(error.as_ref().map(|_| ErrorCode::ApprovalRejected.as_str()))
    .bind(revise)
    .bind_tenant(tenant)
    .execute(&mut *tx)
    .await?;
    if revise {
        // The person's comment is the feedback; the held output goes back with it.
        sqlx::query(scoped(
            "INSERT INTO item_reviews AS r ({tc}work_item_id, stage, output, output_attempt_id, revision, feedback,
                                            updated_at)
             SELECT {tv}w.id, 'REVISE', coalesce(w.result, 'null'), $2, 1, $3, $4 FROM work_items w WHERE w.id = $1{t:w}
             ON CONFLICT ({tc}work_item_id) DO UPDATE SET stage = 'REVISE', output = EXCLUDED.output,
                 output_attempt_id = EXCLUDED.output_attempt_id, revision = r.revision + 1,
                 feedback = EXCLUDED.feedback, updated_at = EXCLUDED.updated_at",
            tenant,
            5,
        ))
        .bind(item.id)
        .bind(attempt_id)
        .bind(json!([{ "person": human.actor, "comment": human.reason }]))
        .bind(now)
        .bind_tenant(tenant)
        .execute(&mut *tx)
        .await?;
    }
    if let NextState::DeadLetter { reason } = human.next {
        sqlx::query(scoped(
            "INSERT INTO dead_letters ({tc}work_item_id, source, event_type, payload, error, error_code, reason, retry_count)
             VALUES ({tv}$1, $2, $3, jsonb_build_object('work_item_id', $1, 'work_order_id', $4::uuid, 'type', $3,
                                                    'attempt', $5::int, 'error_code', $6, 'agent', $2),
                     $7, $6, $8::dead_letter_reason, $9)",
            tenant,
            10,
        ))
        .bind(item.id)
        .bind(&agent)
        .bind(&item.item_type)
        .bind(item.work_order_id)
        .bind(item.attempt)
        .bind(ErrorCode::ApprovalRejected.as_str())
        .bind(error.as_deref().unwrap_or_default())
        .bind(reason.as_str())
        .bind(human.attempts_used)
        .bind_tenant(tenant)
        .execute(&mut *tx)
        .await?;
    }
    let action = match (human.decision, revise) {
        (Decision::Approved, _) => "approval.approve",
        (_, true) => "approval.reject_revise",
        _ => "approval.reject",
    };
    audit(
        &mut tx,
        human.actor,
        action,
        ("work_item", item.id),
        json!({ "attempt": item.attempt, "reason": human.reason, "status": human.next.item_status().as_str() }),
    )
    .await?;
    // Approved (or dead-lettered): what waits on the item is settled, then the orders last,
    // kept to the commit (see db::rollup::lock_orders).
    let mut orders = vec![item.work_order_id];
    // A cluster has no dependency edges (refused there): nothing waits on the item.
    if tenant.is_none() && matches!(human.next, NextState::Completed | NextState::DeadLetter { .. }) {
        for settled in super::dependencies::settle(&mut tx, &[item.id], human.actor).await? {
            if settled.became == super::dependencies::Settled::Cancelled {
                orders.push(settled.work_order_id);
            }
        }
        orders.sort_unstable();
        orders.dedup();
    }
    super::dead_letters::roll_up_orders(&mut tx, &orders, tenant).await?;
    tx.commit().await?;
    Ok(())
}

/// An item in the approvals inbox: what the policy held, and why.
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow)]
pub struct Held {
    pub id: Uuid,
    pub work_order_id: Uuid,
    #[serde(rename = "type")]
    pub item_type: String,
    pub priority: String,
    /// The held attempt (a decision applies to it only).
    pub attempt: i32,
    pub tenant_id: Uuid,
    pub workflow_id: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
    /// When the policy held it (its ESCALATED decision).
    pub held_since: Option<chrono::DateTime<chrono::Utc>>,
    pub policy_reason: Option<String>,
    /// The held attempt's output.
    pub output: Option<serde_json::Value>,
    /// The held attempt's eval results.
    #[sqlx(json)]
    pub evals: Vec<HeldEval>,
}

/// One eval result of a held attempt.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct HeldEval {
    pub evaluation_type: String,
    pub passed: bool,
    pub score: f64,
    pub metrics: serde_json::Value,
}

/// Items waiting in AWAITING_APPROVAL, oldest first, after `cursor` (`created_at`, `id`);
/// read through the partial index of held items.
pub async fn inbox(
    pool: &PgPool,
    cursor: Option<(chrono::DateTime<chrono::Utc>, Uuid)>,
    limit: i64,
) -> Result<Vec<Held>, sqlx::Error> {
    // On a Citus cluster every join is on the tenant too, and the limit is written in (a
    // multi-shard statement cannot take it as a parameter).
    let layout = topology(pool).await?;
    let sql = INBOX_SQL.replace("{limit}", &limit.max(0).to_string());
    sqlx::query_as(joined(&sql, layout)).bind(cursor.map(|c| c.0)).bind(cursor.map(|c| c.1)).fetch_all(pool).await
}

/// [`inbox`]'s read: `$1`, `$2` the cursor.
const INBOX_SQL: &str =
    "SELECT w.id, w.work_order_id, w.type::text AS item_type, w.priority::text AS priority, w.attempt,
                o.tenant_id, o.workflow_id, w.created_at, coalesce(p.\"timestamp\", bw.since) AS held_since,
                coalesce(p.reason, 'budget ' || b.name || ' is exhausted (' || b.spent || ' of ' || b.amount || ' '
                         || b.currency || '): approve to run it anyway, reject to let it wait') AS policy_reason,
                w.result AS output,
                coalesce((SELECT jsonb_agg(jsonb_build_object('evaluation_type', e.evaluation_type,
                                                              'passed', e.passed, 'score', e.score,
                                                              'metrics', e.metrics) ORDER BY e.evaluation_type)
                          FROM eval_results e WHERE e.attempt_id = a.id{j:e.a}), '[]'::jsonb) AS evals
         FROM work_items w JOIN work_orders o ON o.id = w.work_order_id{j:o.w}
         LEFT JOIN attempts a ON a.work_item_id = w.id{j:a.w} AND a.attempt_number = w.attempt
         LEFT JOIN approval_events p ON p.work_item_id = w.id{j:p.w} AND p.attempt_id = a.id AND p.source = 'POLICY'
         LEFT JOIN budget_waits bw ON bw.work_item_id = w.id{j:bw.w} AND bw.held
         LEFT JOIN budgets b ON b.id = bw.budget_id
         WHERE w.status = 'AWAITING_APPROVAL' AND ($1::timestamptz IS NULL OR (w.created_at, w.id) > ($1, $2))
         ORDER BY w.created_at, w.id LIMIT {limit}";
