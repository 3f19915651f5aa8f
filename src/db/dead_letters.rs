//! Dead letters: list, show, replay (a fresh budget, optionally new content) and discard, each
//! audited in its own transaction.

use super::OpsError;
use super::audit::audit;
use crate::model::DeadLetterReason;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct DeadLetterSummary {
    pub id: Uuid,
    pub work_item_id: Option<Uuid>,
    pub event_type: String,
    pub source: String,
    pub error_code: Option<String>,
    pub reason: Option<DeadLetterReason>,
    pub retry_count: i32,
    pub error: String,
    pub created_at: DateTime<Utc>,
    pub processed_at: Option<DateTime<Utc>>,
    pub resolution: Option<String>,
}

const DEAD_LETTER_COLUMNS: &str = "id, work_item_id, event_type, source, error_code, reason::text AS reason,
    retry_count, error, created_at, processed_at, resolution";

/// Open dead letters (or all with `include_processed`), newest first.
pub async fn list(pool: &PgPool, include_processed: bool, limit: i64) -> Result<Vec<DeadLetterSummary>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters
         WHERE $1 OR processed_at IS NULL ORDER BY created_at DESC LIMIT $2"
    )))
    .bind(include_processed)
    .bind(limit)
    .fetch_all(pool)
    .await
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

/// A dead letter's row: its summary and its payload.
#[derive(sqlx::FromRow)]
struct DeadLetterRow {
    #[sqlx(flatten)]
    summary: DeadLetterSummary,
    payload: Value,
}

pub async fn get(pool: &PgPool, id: Uuid) -> Result<DeadLetterDetail, OpsError> {
    let DeadLetterRow { summary: dead_letter, payload } = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {DEAD_LETTER_COLUMNS}, payload FROM dead_letters WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(pool)
    .await?
    .ok_or_else(|| OpsError::NotFound { what: "dead letter", id })?;
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
pub async fn replay(pool: &PgPool, id: Uuid, content: Option<&str>, actor: &str) -> Result<Uuid, OpsError> {
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
pub async fn discard(pool: &PgPool, id: Uuid, actor: &str, reason: Option<&str>) -> Result<Uuid, OpsError> {
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

async fn open_dead_letter(tx: &mut sqlx::Transaction<'_, sqlx::Postgres>, id: Uuid) -> Result<Uuid, OpsError> {
    let (item, processed): (Option<Uuid>, Option<DateTime<Utc>>) =
        sqlx::query_as("SELECT work_item_id, processed_at FROM dead_letters WHERE id = $1 FOR UPDATE")
            .bind(id)
            .fetch_optional(&mut **tx)
            .await?
            .ok_or_else(|| OpsError::NotFound { what: "dead letter", id })?;
    if processed.is_some() {
        return Err(OpsError::Conflict(format!("dead letter {id} was already processed")));
    }
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
