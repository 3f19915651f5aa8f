//! Operators' statements: enqueue, status, dead letters (list, show, replay, discard), and
//! human approval decisions on held items.

use crate::model::{Decision, ErrorCode, NextState};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Value, json};
use sqlx::{PgPool, Row};
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// A read the decision needs failed for now (the database is restarting, say).
    #[error("{0}; nothing was changed, try again")]
    Unavailable(String),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// A work order to enqueue, as an upstream would INSERT it.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewOrder {
    pub workflow_id: String,
    pub tenant_id: Uuid,
    pub created_by: Uuid,
    #[serde(default)]
    pub priority: Option<String>,
    #[serde(default)]
    pub metadata: Option<Value>,
    pub items: Vec<NewItem>,
}

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewItem {
    #[serde(rename = "type")]
    pub item_type: String,
    /// Text as stored; a JSON value here is stored as its JSON text.
    pub content: Value,
}

/// Enqueues an order and its items with the same two INSERTs an upstream uses.
pub async fn enqueue(pool: &PgPool, order: &NewOrder) -> Result<(Uuid, Vec<Uuid>), sqlx::Error> {
    let mut tx = pool.begin().await?;
    let order_id: Uuid = sqlx::query_scalar(
        "INSERT INTO work_orders (workflow_id, tenant_id, created_by, priority, metadata)
         VALUES ($1, $2, $3, COALESCE($4::priority, 'MEDIUM'), COALESCE($5, '{}'::jsonb))
         RETURNING id",
    )
    .bind(&order.workflow_id)
    .bind(order.tenant_id)
    .bind(order.created_by)
    .bind(&order.priority)
    .bind(&order.metadata)
    .fetch_one(&mut *tx)
    .await?;
    let types: Vec<&str> = order.items.iter().map(|i| i.item_type.as_str()).collect();
    let contents: Vec<String> = order
        .items
        .iter()
        .map(|i| match &i.content {
            Value::String(text) => text.clone(),
            other => other.to_string(),
        })
        .collect();
    let item_ids: Vec<Uuid> = sqlx::query_scalar(
        "INSERT INTO work_items (work_order_id, type, content)
         SELECT $1, t::work_item_type, c FROM unnest($2::text[], $3::text[]) WITH ORDINALITY AS x(t, c, n)
         ORDER BY n RETURNING id",
    )
    .bind(order_id)
    .bind(&types)
    .bind(&contents)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok((order_id, item_ids))
}

#[derive(Debug, Clone, Serialize)]
pub struct StatusCount {
    pub status: String,
    pub item_type: String,
    pub count: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct InFlight {
    pub id: Uuid,
    pub item_type: String,
    pub attempt: i32,
    pub locked_by: Option<String>,
    pub lease_expires_at: Option<DateTime<Utc>>,
    pub lease_remaining_ms: Option<i64>,
    pub rescues: i32,
}

#[derive(Debug, Clone, Serialize)]
pub struct QueueStatus {
    pub counts: Vec<StatusCount>,
    /// Seconds the oldest runnable QUEUED item has waited (database clock).
    pub oldest_queued_seconds: Option<f64>,
    /// QUEUED items waiting for a future run time (retries).
    pub scheduled: i64,
    pub in_flight: Vec<InFlight>,
    pub open_dead_letters: i64,
}

pub async fn queue_status(pool: &PgPool, in_flight_limit: i64) -> Result<QueueStatus, sqlx::Error> {
    let counts = sqlx::query(
        "SELECT status::text AS status, type::text AS item_type, count(*) AS n
         FROM work_items GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .fetch_all(pool)
    .await?
    .iter()
    .map(|r| {
        Ok(StatusCount { status: r.try_get("status")?, item_type: r.try_get("item_type")?, count: r.try_get("n")? })
    })
    .collect::<Result<Vec<_>, sqlx::Error>>()?;
    let row = sqlx::query(
        "SELECT (SELECT extract(epoch FROM now() - min(run_at))::float8 FROM work_items
                  WHERE status = 'QUEUED' AND run_at <= now()) AS oldest,
                (SELECT count(*) FROM work_items WHERE status = 'QUEUED' AND run_at > now()) AS scheduled,
                (SELECT count(*) FROM dead_letters WHERE processed_at IS NULL) AS dead",
    )
    .fetch_one(pool)
    .await?;
    let in_flight = sqlx::query(
        "SELECT id, type::text AS item_type, attempt, locked_by, lease_expires_at, rescues,
                (extract(epoch FROM lease_expires_at - now()) * 1000)::bigint AS remaining
         FROM work_items WHERE status = 'PROCESSING' ORDER BY lease_expires_at LIMIT $1",
    )
    .bind(in_flight_limit)
    .fetch_all(pool)
    .await?
    .iter()
    .map(|r| {
        Ok(InFlight {
            id: r.try_get("id")?,
            item_type: r.try_get("item_type")?,
            attempt: r.try_get("attempt")?,
            locked_by: r.try_get("locked_by")?,
            lease_expires_at: r.try_get("lease_expires_at")?,
            lease_remaining_ms: r.try_get("remaining")?,
            rescues: r.try_get("rescues")?,
        })
    })
    .collect::<Result<Vec<_>, sqlx::Error>>()?;
    Ok(QueueStatus {
        counts,
        oldest_queued_seconds: row.try_get("oldest")?,
        scheduled: row.try_get("scheduled")?,
        in_flight,
        open_dead_letters: row.try_get("dead")?,
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct DeadLetterSummary {
    pub id: Uuid,
    pub work_item_id: Option<Uuid>,
    pub event_type: String,
    pub source: String,
    pub error_code: Option<String>,
    pub reason: Option<String>,
    pub retry_count: i32,
    pub error: String,
    pub created_at: DateTime<Utc>,
    pub processed_at: Option<DateTime<Utc>>,
    pub resolution: Option<String>,
}

fn summary(r: &sqlx::postgres::PgRow) -> Result<DeadLetterSummary, sqlx::Error> {
    Ok(DeadLetterSummary {
        id: r.try_get("id")?,
        work_item_id: r.try_get("work_item_id")?,
        event_type: r.try_get("event_type")?,
        source: r.try_get("source")?,
        error_code: r.try_get("error_code")?,
        reason: r.try_get("reason")?,
        retry_count: r.try_get("retry_count")?,
        error: r.try_get("error")?,
        created_at: r.try_get("created_at")?,
        processed_at: r.try_get("processed_at")?,
        resolution: r.try_get("resolution")?,
    })
}

const DEAD_LETTER_COLUMNS: &str = "id, work_item_id, event_type, source, error_code, reason::text AS reason,
    retry_count, error, created_at, processed_at, resolution";

/// Open dead letters (or all with `include_processed`), newest first.
pub async fn dead_letters(
    pool: &PgPool,
    include_processed: bool,
    limit: i64,
) -> Result<Vec<DeadLetterSummary>, sqlx::Error> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters
         WHERE $1 OR processed_at IS NULL ORDER BY created_at DESC LIMIT $2"
    )))
    .bind(include_processed)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    rows.iter().map(summary).collect()
}

/// A dead letter with everything an on-call engineer needs to decide.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetterDetail {
    pub dead_letter: DeadLetterSummary,
    pub payload: Value,
    pub item: Option<Value>,
    pub attempts: Vec<Value>,
    pub eval_results: Vec<Value>,
    pub approvals: Vec<Value>,
}

pub async fn dead_letter(pool: &PgPool, id: Uuid) -> Result<DeadLetterDetail, OpsError> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {DEAD_LETTER_COLUMNS}, payload FROM dead_letters WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(pool)
    .await?
    .ok_or_else(|| OpsError::NotFound(format!("dead letter {id}")))?;
    let dead_letter = summary(&row)?;
    let payload: Value = row.try_get("payload")?;
    let item_id = dead_letter.work_item_id;
    let item: Option<Value> = sqlx::query_scalar(
        "SELECT jsonb_build_object('id', id, 'work_order_id', work_order_id, 'type', type,
                'status', status, 'priority', priority, 'attempt', attempt,
                'attempt_base', attempt_base, 'rescues', rescues, 'run_at', run_at,
                'last_error_code', last_error_code, 'last_error', last_error,
                'content_bytes', octet_length(content),
                'content', CASE WHEN octet_length(content) <= 65536 THEN content END,
                'created_at', created_at, 'processed_at', processed_at)
         FROM work_items WHERE id = $1",
    )
    .bind(item_id)
    .fetch_optional(pool)
    .await?;
    let attempts: Vec<Value> = sqlx::query_scalar(
        "SELECT jsonb_build_object('number', attempt_number, 'status', status, 'agent', agent_id,
                'error_code', error_code, 'error', error, 'started_at', started_at,
                'duration_ms', duration_ms, 'worker', worker_id, 'output', output)
         FROM attempts WHERE work_item_id = $1 ORDER BY attempt_number",
    )
    .bind(item_id)
    .fetch_all(pool)
    .await?;
    let eval_results: Vec<Value> = sqlx::query_scalar(
        "SELECT jsonb_build_object('evaluation_type', evaluation_type, 'score', score,
                'passed', passed, 'metrics', metrics, 'attempt_id', attempt_id)
         FROM eval_results WHERE work_item_id = $1 ORDER BY created_at",
    )
    .bind(item_id)
    .fetch_all(pool)
    .await?;
    let approvals: Vec<Value> = sqlx::query_scalar(
        "SELECT jsonb_build_object('decision', decision, 'approver_id', approver_id,
                'policy_version', policy_version, 'reason', reason, 'source', source,
                'timestamp', \"timestamp\")
         FROM approval_events WHERE work_item_id = $1 ORDER BY \"timestamp\"",
    )
    .bind(item_id)
    .fetch_all(pool)
    .await?;
    Ok(DeadLetterDetail { dead_letter, payload, item, attempts, eval_results, approvals })
}

/// Re-queues a dead-lettered item with a fresh attempt budget (optionally new content),
/// marks the dead letter REPLAYED, reopens the order and writes the audit log; wakes the
/// workers. All in one transaction.
pub async fn replay_dead_letter(pool: &PgPool, id: Uuid, content: Option<&str>, actor: &str) -> Result<Uuid, OpsError> {
    let mut tx = pool.begin().await?;
    let item_id: Uuid = open_dead_letter(&mut tx, id).await?;
    let requeued = sqlx::query(
        "UPDATE work_items SET status = 'QUEUED', run_at = now(), attempt_base = attempt,
                content = COALESCE($2, content), last_error = NULL, last_error_code = NULL,
                processed_at = NULL, rescues = 0
         WHERE id = $1 AND status = 'FAILED'",
    )
    .bind(item_id)
    .bind(content)
    .execute(&mut *tx)
    .await?;
    if requeued.rows_affected() != 1 {
        return Err(OpsError::Conflict(format!("work item {item_id} is not FAILED; nothing to replay")));
    }
    resolve(&mut tx, id, "REPLAYED").await?;
    sqlx::query(
        "UPDATE work_orders SET status = 'PROCESSING', updated_at = now()
         WHERE id = (SELECT work_order_id FROM work_items WHERE id = $1) AND status <> 'PROCESSING'",
    )
    .bind(item_id)
    .execute(&mut *tx)
    .await?;
    audit(
        &mut tx,
        actor,
        "dead_letter.replay",
        ("dead_letter", id),
        json!({ "work_item_id": item_id, "content_replaced": content.is_some() }),
    )
    .await?;
    sqlx::query("SELECT pg_notify($1, '')").bind(super::WORK_CHANNEL).execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(item_id)
}

/// Marks a dead letter DISCARDED (the item stays FAILED) and writes the audit log.
pub async fn discard_dead_letter(pool: &PgPool, id: Uuid, actor: &str, reason: Option<&str>) -> Result<Uuid, OpsError> {
    let mut tx = pool.begin().await?;
    let item_id = open_dead_letter(&mut tx, id).await?;
    resolve(&mut tx, id, "DISCARDED").await?;
    audit(
        &mut tx,
        actor,
        "dead_letter.discard",
        ("dead_letter", id),
        json!({ "work_item_id": item_id, "reason": reason }),
    )
    .await?;
    tx.commit().await?;
    Ok(item_id)
}

/// An item waiting in AWAITING_APPROVAL, as a human decision needs it.
#[derive(Debug, Clone)]
pub struct HeldItem {
    pub id: Uuid,
    pub work_order_id: Uuid,
    pub workflow_id: String,
    pub item_type: String,
    /// The held attempt: the decision is for this one only.
    pub attempt: i32,
    pub attempt_base: i32,
    pub max_attempts: Option<i32>,
}

/// The item, if it is waiting for a human decision.
pub async fn held_item(pool: &PgPool, id: Uuid) -> Result<HeldItem, OpsError> {
    let row = sqlx::query(
        "SELECT i.id, i.work_order_id, o.workflow_id, i.type::text AS item_type, i.status::text AS status,
                i.attempt, i.attempt_base, i.max_attempts
         FROM work_items i JOIN work_orders o ON o.id = i.work_order_id WHERE i.id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?
    .ok_or_else(|| OpsError::NotFound(format!("work item {id}")))?;
    let status: String = row.try_get("status")?;
    if status != "AWAITING_APPROVAL" {
        return Err(OpsError::Conflict(format!("work item {id} is {status}, not AWAITING_APPROVAL")));
    }
    Ok(HeldItem {
        id,
        work_order_id: row.try_get("work_order_id")?,
        workflow_id: row.try_get("workflow_id")?,
        item_type: row.try_get("item_type")?,
        attempt: row.try_get("attempt")?,
        attempt_base: row.try_get("attempt_base")?,
        max_attempts: row.try_get("max_attempts")?,
    })
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
    let mut tx = pool.begin().await?;
    let row = sqlx::query(
        "SELECT a.id AS attempt_id, a.agent_id,
                (SELECT p.policy_version FROM approval_events p
                 WHERE p.work_item_id = i.id AND p.attempt_id = a.id AND p.source = 'POLICY') AS policy_version
         FROM work_items i JOIN attempts a ON a.work_item_id = i.id AND a.attempt_number = i.attempt
         WHERE i.id = $1 AND i.attempt = $2 AND i.status = 'AWAITING_APPROVAL'
         FOR UPDATE OF i",
    )
    .bind(item.id)
    .bind(item.attempt)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(|| OpsError::Conflict(format!("work item {} is no longer awaiting approval", item.id)))?;
    let attempt_id: Uuid = row.try_get("attempt_id")?;
    let agent: String = row.try_get("agent_id")?;
    let policy_version: Option<String> = row.try_get("policy_version")?;
    sqlx::query(
        "INSERT INTO approval_events (work_item_id, attempt_id, approver_id, decision, reason, policy_version, source)
         VALUES ($1, $2, $3, $4::approval_decision, $5, $6, 'HUMAN')",
    )
    .bind(item.id)
    .bind(attempt_id)
    .bind(human.actor)
    .bind(human.decision.as_str())
    .bind(human.reason)
    .bind(policy_version.as_deref().unwrap_or("human"))
    .execute(&mut *tx)
    .await?;
    let error = (human.decision == Decision::Rejected)
        .then(|| format!("rejected by {}{}", human.actor, human.reason.map(|r| format!(": {r}")).unwrap_or_default()));
    if let Some(message) = &error {
        sqlx::query("UPDATE attempts SET status = 'FAILED', error = $2, error_code = $3 WHERE id = $1")
            .bind(attempt_id)
            .bind(message)
            .bind(ErrorCode::ApprovalRejected.as_str())
            .execute(&mut *tx)
            .await?;
    }
    let delay_ms = match human.next {
        NextState::Retry { delay_ms } => delay_ms,
        _ => 0,
    };
    sqlx::query(
        "UPDATE work_items SET status = $2::work_item_status,
                processed_at = CASE WHEN $2 IN ('COMPLETED', 'FAILED') THEN now() END,
                run_at = CASE WHEN $2 = 'QUEUED' THEN now() + $3 * interval '1 millisecond' ELSE run_at END,
                last_error = $4, last_error_code = $5
         WHERE id = $1",
    )
    .bind(item.id)
    .bind(human.next.item_status().as_str())
    .bind(delay_ms as f64)
    .bind(error.as_deref())
    .bind(error.as_ref().map(|_| ErrorCode::ApprovalRejected.as_str()))
    .execute(&mut *tx)
    .await?;
    if let NextState::DeadLetter { reason } = human.next {
        sqlx::query(
            "INSERT INTO dead_letters (work_item_id, source, event_type, payload, error, error_code, reason, retry_count)
             VALUES ($1, $2, $3, jsonb_build_object('work_item_id', $1, 'work_order_id', $4::uuid, 'type', $3,
                                                    'attempt', $5::int, 'error_code', $6, 'agent', $2),
                     $7, $6, $8::dead_letter_reason, $9)",
        )
        .bind(item.id)
        .bind(&agent)
        .bind(&item.item_type)
        .bind(item.work_order_id)
        .bind(item.attempt)
        .bind(ErrorCode::ApprovalRejected.as_str())
        .bind(error.as_deref().unwrap_or_default())
        .bind(reason.as_str())
        .bind(human.attempts_used)
        .execute(&mut *tx)
        .await?;
    }
    super::queue::roll_up_orders(&mut tx, &[item.work_order_id]).await?;
    let action = if human.decision == Decision::Approved { "approval.approve" } else { "approval.reject" };
    audit(
        &mut tx,
        human.actor,
        action,
        ("work_item", item.id),
        json!({ "attempt": item.attempt, "reason": human.reason, "status": human.next.item_status().as_str() }),
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

async fn open_dead_letter(tx: &mut sqlx::Transaction<'_, sqlx::Postgres>, id: Uuid) -> Result<Uuid, OpsError> {
    let row = sqlx::query("SELECT work_item_id, processed_at FROM dead_letters WHERE id = $1 FOR UPDATE")
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?
        .ok_or_else(|| OpsError::NotFound(format!("dead letter {id}")))?;
    let processed: Option<DateTime<Utc>> = row.try_get("processed_at")?;
    if processed.is_some() {
        return Err(OpsError::Conflict(format!("dead letter {id} was already processed")));
    }
    let item: Option<Uuid> = row.try_get("work_item_id")?;
    item.ok_or_else(|| OpsError::Conflict(format!("dead letter {id} names no work item")))
}

async fn resolve(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    id: Uuid,
    resolution: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE dead_letters SET processed_at = now(), resolution = $2 WHERE id = $1")
        .bind(id)
        .bind(resolution)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn audit(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    actor: &str,
    action: &str,
    resource: (&str, Uuid),
    details: Value,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO audit_logs (user_id, action, resource_type, resource_id, details)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(actor)
    .bind(action)
    .bind(resource.0)
    .bind(resource.1)
    .bind(details)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The demo's catalog: a JSON Schema for INVOICE outputs and two workflow templates.
pub async fn seed_demo_catalog(
    pool: &PgPool,
    invoice_schema: Value,
    invoice_review: Value,
    legacy_reports: Value,
) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("INSERT INTO schemas (name, version, document_type, schema_definition) VALUES ('invoice-extraction', '1', 'INVOICE', $1)")
        .bind(invoice_schema)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO workflow_templates (name, description, document_type, workflow_definition)
         VALUES ('invoice-review', 'invoices must pass their schema', 'INVOICE', $1),
                ('legacy-reports', 'reports through the legacy agent', 'STATUS_REPORT', $2)",
    )
    .bind(invoice_review)
    .bind(legacy_reports)
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

/// Inserts an order and its items exactly as an upstream would (two plain INSERTs).
pub async fn insert_order_sql(
    pool: &PgPool,
    workflow: &str,
    priority: &str,
    items: &[(&str, String)],
) -> Result<Uuid, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let order: Uuid = sqlx::query_scalar(
        "INSERT INTO work_orders (workflow_id, tenant_id, created_by, priority)
         VALUES ($1, gen_random_uuid(), gen_random_uuid(), $2::priority) RETURNING id",
    )
    .bind(workflow)
    .bind(priority)
    .fetch_one(&mut *tx)
    .await?;
    for (item_type, content) in items {
        sqlx::query("INSERT INTO work_items (work_order_id, type, content) VALUES ($1, $2::work_item_type, $3)")
            .bind(order)
            .bind(item_type)
            .bind(content)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(order)
}

#[derive(Debug, Default)]
pub struct DemoProgress {
    pub completed: i64,
    pub failed: i64,
    pub awaiting: i64,
    pub queued_now: i64,
    pub retrying: i64,
    pub running: i64,
}

pub async fn demo_progress(pool: &PgPool) -> Result<DemoProgress, sqlx::Error> {
    let r = sqlx::query(
        "SELECT count(*) FILTER (WHERE status = 'COMPLETED') AS completed,
                count(*) FILTER (WHERE status = 'FAILED') AS failed,
                count(*) FILTER (WHERE status = 'AWAITING_APPROVAL') AS awaiting,
                count(*) FILTER (WHERE status = 'QUEUED' AND attempt = 0) AS queued_now,
                count(*) FILTER (WHERE status = 'QUEUED' AND attempt > 0) AS retrying,
                count(*) FILTER (WHERE status = 'PROCESSING') AS running
         FROM work_items",
    )
    .fetch_one(pool)
    .await?;
    Ok(DemoProgress {
        completed: r.try_get("completed")?,
        failed: r.try_get("failed")?,
        awaiting: r.try_get("awaiting")?,
        queued_now: r.try_get("queued_now")?,
        retrying: r.try_get("retrying")?,
        running: r.try_get("running")?,
    })
}

#[derive(Debug, Default)]
pub struct DemoSummary {
    pub items: i64,
    pub orders: i64,
    pub completed: i64,
    pub awaiting: i64,
    pub retried: i64,
    pub dead_lettered: i64,
    pub attempts: i64,
    pub evals_passed: i64,
    pub evals_failed: i64,
    pub approved: i64,
    pub rejected: i64,
    pub orders_completed: i64,
    pub orders_failed: i64,
    pub dead_letter_codes: Vec<(String, String, i64)>,
    pub attempt_outcomes: Vec<(String, Option<String>, i64)>,
}

pub async fn demo_summary(pool: &PgPool) -> Result<DemoSummary, sqlx::Error> {
    let r = sqlx::query(
        "SELECT (SELECT count(*) FROM work_items) AS items,
                (SELECT count(*) FROM work_orders) AS orders,
                (SELECT count(*) FROM work_items WHERE status = 'COMPLETED') AS completed,
                (SELECT count(*) FROM work_items WHERE status = 'AWAITING_APPROVAL') AS awaiting,
                (SELECT count(*) FROM work_items WHERE attempt > 1) AS retried,
                (SELECT count(*) FROM dead_letters) AS dead,
                (SELECT count(*) FROM attempts) AS attempts,
                (SELECT count(*) FROM eval_results WHERE passed) AS evals_passed,
                (SELECT count(*) FROM eval_results WHERE NOT passed) AS evals_failed,
                (SELECT count(*) FROM approval_events WHERE decision = 'APPROVED') AS approved,
                (SELECT count(*) FROM approval_events WHERE decision = 'REJECTED') AS rejected,
                (SELECT count(*) FROM work_orders WHERE status = 'COMPLETED') AS orders_completed,
                (SELECT count(*) FROM work_orders WHERE status = 'FAILED') AS orders_failed",
    )
    .fetch_one(pool)
    .await?;
    let dead_letter_codes = sqlx::query(
        "SELECT coalesce(error_code, '?') AS code, reason::text AS reason, count(*) AS n FROM dead_letters GROUP BY 1, 2 ORDER BY 3 DESC",
    )
    .fetch_all(pool)
    .await?
    .iter()
    .map(|r| Ok((r.try_get("code")?, r.try_get("reason")?, r.try_get("n")?)))
    .collect::<Result<Vec<_>, sqlx::Error>>()?;
    let attempt_outcomes = sqlx::query(
        "SELECT status::text AS status, error_code, count(*) AS n FROM attempts GROUP BY 1, 2 ORDER BY 1, 3 DESC",
    )
    .fetch_all(pool)
    .await?
    .iter()
    .map(|r| Ok((r.try_get("status")?, r.try_get("error_code")?, r.try_get("n")?)))
    .collect::<Result<Vec<_>, sqlx::Error>>()?;
    Ok(DemoSummary {
        items: r.try_get("items")?,
        orders: r.try_get("orders")?,
        completed: r.try_get("completed")?,
        awaiting: r.try_get("awaiting")?,
        retried: r.try_get("retried")?,
        dead_lettered: r.try_get("dead")?,
        attempts: r.try_get("attempts")?,
        evals_passed: r.try_get("evals_passed")?,
        evals_failed: r.try_get("evals_failed")?,
        approved: r.try_get("approved")?,
        rejected: r.try_get("rejected")?,
        orders_completed: r.try_get("orders_completed")?,
        orders_failed: r.try_get("orders_failed")?,
        dead_letter_codes,
        attempt_outcomes,
    })
}
