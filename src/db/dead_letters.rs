//! Dead letters: list, show, replay (a fresh budget, optionally new content) and discard, each
//! audited in its own transaction.

use super::OpsError;
use super::audit::audit;
use super::distributed::{BindTenant, Row, placement, scoped};
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
    pub item: Option<LetterItem>,
    pub attempts: Vec<super::items::AttemptRow>,
    pub eval_results: Vec<super::items::EvalRow>,
    pub approvals: Vec<super::items::ApprovalRow>,
}

/// A dead letter's row: its summary and its payload.
#[derive(sqlx::FromRow)]
struct DeadLetterRow {
    #[sqlx(flatten)]
    summary: DeadLetterSummary,
    payload: Value,
}

/// The dead letter of an item: its open one, else its newest (`None`: it has none).
pub async fn of_item(pool: &PgPool, item_id: Uuid) -> Result<Option<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT id FROM dead_letters WHERE work_item_id = $1 ORDER BY processed_at IS NULL DESC, created_at DESC LIMIT 1",
    )
    .bind(item_id)
    .fetch_optional(pool)
    .await
}

/// The item of a dead letter, as the letter's page shows it (content up to 64 KiB inline).
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct LetterItem {
    pub id: Uuid,
    pub work_order_id: Uuid,
    #[serde(rename = "type")]
    pub item_type: String,
    pub status: String,
    pub priority: String,
    pub attempt: i32,
    pub attempt_base: i32,
    pub rescues: i32,
    pub run_at: Option<chrono::DateTime<chrono::Utc>>,
    pub last_error_code: Option<String>,
    pub last_error: Option<String>,
    pub content_bytes: i32,
    pub content: Option<String>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub processed_at: Option<chrono::DateTime<chrono::Utc>>,
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
    let item: Option<LetterItem> = sqlx::query_as(
        "SELECT id, work_order_id, type::text AS item_type, status::text AS status, priority::text AS priority,
                attempt, attempt_base, rescues, CASE WHEN isfinite(run_at) THEN run_at END AS run_at,
                last_error_code, last_error, octet_length(content) AS content_bytes,
                CASE WHEN octet_length(content) <= 65536 THEN content END AS content,
                created_at, processed_at
         FROM work_items WHERE id = $1",
    )
    .bind(item_id)
    .fetch_optional(pool)
    .await?;
    let super::items::Records { attempts, eval_results, approvals } = match item_id {
        Some(item_id) => super::items::records(pool, item_id).await?,
        None => super::items::Records::default(),
    };
    Ok(DeadLetterDetail { dead_letter, payload, item, attempts, eval_results, approvals })
}

/// Re-queues a dead-lettered item with a fresh attempt budget (optionally new content),
/// marks the dead letter REPLAYED, reopens the order and writes the audit log; wakes the
/// workers. All in one transaction.
pub async fn replay(pool: &PgPool, id: Uuid, content: Option<&str>, actor: &str) -> Result<Uuid, OpsError> {
    let tenant =
        placement(pool, Row::DeadLetter, id).await?.tenant(|| OpsError::NotFound { what: "dead letter", id })?;
    let mut tx = pool.begin().await?;
    let item_id: Uuid = open_dead_letter(&mut tx, id, tenant).await?;
    let order: Option<Uuid> = sqlx::query_scalar(scoped(
        "UPDATE work_items w SET status = 'QUEUED', run_at = now(), attempt_base = attempt,
                content = COALESCE($2, content), last_error = NULL, last_error_code = NULL,
                processed_at = NULL, rescues = 0
         WHERE w.id = $1{t:w} AND w.status = 'FAILED'
         RETURNING w.work_order_id",
        tenant,
        3,
    ))
    .bind(item_id)
    .bind(content)
    .bind_tenant(tenant)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(order) = order else {
        return Err(OpsError::Conflict(format!("work item {item_id} is not FAILED; nothing to replay")));
    };
    resolve(&mut tx, id, "REPLAYED", tenant).await?;
    // Reopened: PROCESSING again. The order last, kept to the commit (db::rollup::lock_orders).
    roll_up_orders(&mut tx, &[order], tenant).await?;
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

/// Locks and recomputes `orders` inside the caller's transaction, on one PostgreSQL or on
/// the tenant's node of a cluster.
pub(crate) async fn roll_up_orders(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    orders: &[Uuid],
    tenant: Option<Uuid>,
) -> Result<(), sqlx::Error> {
    match tenant {
        None => {
            let locked = super::rollup::lock_orders(tx, orders).await?;
            super::rollup::roll_up_locked(tx, &locked).await?;
        }
        Some(tenant) => {
            super::distributed::engine::roll_up_tenant(tx, tenant, orders).await?;
        }
    }
    Ok(())
}

/// Marks a dead letter DISCARDED (the item stays FAILED) and writes the audit log.
pub async fn discard(pool: &PgPool, id: Uuid, actor: &str, reason: Option<&str>) -> Result<Uuid, OpsError> {
    let tenant =
        placement(pool, Row::DeadLetter, id).await?.tenant(|| OpsError::NotFound { what: "dead letter", id })?;
    let mut tx = pool.begin().await?;
    let item_id = open_dead_letter(&mut tx, id, tenant).await?;
    resolve(&mut tx, id, "DISCARDED", tenant).await?;
    // The item will never complete: what BLOCKS on it is cancelled (transitively, audited).
    // A cluster has no dependency edges (refused there).
    let mut orders: Vec<Uuid> = match tenant {
        None => super::dependencies::settle(&mut tx, &[item_id], actor)
            .await?
            .into_iter()
            .filter(|s| s.became == super::dependencies::Settled::Cancelled)
            .map(|s| s.work_order_id)
            .collect(),
        Some(_) => Vec::new(),
    };
    orders.sort_unstable();
    orders.dedup();
    roll_up_orders(&mut tx, &orders, tenant).await?;
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

async fn open_dead_letter(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    id: Uuid,
    tenant: Option<Uuid>,
) -> Result<Uuid, OpsError> {
    let (item, processed, resolution): (Option<Uuid>, Option<DateTime<Utc>>, Option<String>) = sqlx::query_as(scoped(
        "SELECT d.work_item_id, d.processed_at, d.resolution FROM dead_letters d WHERE d.id = $1{t:d} FOR UPDATE",
        tenant,
        2,
    ))
    .bind(id)
    .bind_tenant(tenant)
    .fetch_optional(&mut **tx)
    .await?
    .ok_or_else(|| OpsError::NotFound { what: "dead letter", id })?;
    if let Some(at) = processed {
        // Who closed it, from the audit log of the action that did.
        let by: Option<String> = sqlx::query_scalar(
            "SELECT user_id FROM audit_logs
             WHERE resource_type = 'dead_letter' AND resource_id = $1
               AND action IN ('dead_letter.replay', 'dead_letter.discard')
             ORDER BY created_at DESC LIMIT 1",
        )
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?
        .flatten();
        return Err(OpsError::Conflict(format!(
            "dead letter {id} was already {}{} at {}",
            resolution.as_deref().unwrap_or("processed"),
            by.map(|who| format!(" by {who}")).unwrap_or_default(),
            at.format("%Y-%m-%d %H:%M:%S UTC")
        )));
    }
    item.ok_or_else(|| OpsError::Conflict(format!("dead letter {id} names no work item")))
}

async fn resolve(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    id: Uuid,
    resolution: &str,
    tenant: Option<Uuid>,
) -> Result<(), sqlx::Error> {
    sqlx::query(scoped(
        "UPDATE dead_letters d SET processed_at = now(), resolution = $2 WHERE d.id = $1{t:d}",
        tenant,
        3,
    ))
    .bind(id)
    .bind(resolution)
    .bind_tenant(tenant)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Which dead letters a listing or a bulk action takes. Every field narrows it; `None` takes
/// any.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Filter {
    /// `Some(true)`: open letters only; `Some(false)`: closed (replayed or discarded) only.
    pub open: Option<bool>,
    pub error_code: Option<String>,
    /// The item type (`event_type`).
    pub item_type: Option<String>,
    /// Created at least this many seconds ago.
    pub older_than_secs: Option<f64>,
    /// Created at most this many seconds ago.
    pub newer_than_secs: Option<f64>,
}

/// Where a page of a listing starts: after the row with this `(created_at, id)` (newest first).
pub type Cursor = (DateTime<Utc>, Uuid);

/// The WHERE clause of [`Filter`]; parameters $1 to $5.
const FILTER_SQL: &str = "($1::bool IS NULL OR (processed_at IS NULL) = $1)
    AND ($2::text IS NULL OR error_code = $2)
    AND ($3::text IS NULL OR lower(event_type) = lower($3))
    AND ($4::float8 IS NULL OR created_at <= now() - $4 * interval '1 second')
    AND ($5::float8 IS NULL OR created_at >= now() - $5 * interval '1 second')";

fn bind_filter<'q, O>(
    query: sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments>,
    filter: &'q Filter,
) -> sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments> {
    query
        .bind(filter.open)
        .bind(filter.error_code.as_deref())
        .bind(filter.item_type.as_deref())
        .bind(filter.older_than_secs)
        .bind(filter.newer_than_secs)
}

/// One page of the letters `filter` takes, newest first, after `cursor`.
pub async fn list_filtered(
    pool: &PgPool,
    filter: &Filter,
    cursor: Option<Cursor>,
    limit: i64,
) -> Result<Vec<DeadLetterSummary>, sqlx::Error> {
    let sql = format!(
        "SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters
         WHERE {FILTER_SQL} AND ($6::timestamptz IS NULL OR (created_at, id) < ($6, $7))
         ORDER BY created_at DESC, id DESC LIMIT $8"
    );
    bind_filter(sqlx::query_as(sqlx::AssertSqlSafe(sql)), filter)
        .bind(cursor.map(|c| c.0))
        .bind(cursor.map(|c| c.1))
        .bind(limit)
        .fetch_all(pool)
        .await
}

/// How many letters `filter` takes.
pub async fn count_filtered(pool: &PgPool, filter: &Filter) -> Result<i64, sqlx::Error> {
    let sql = format!("SELECT count(*) FROM dead_letters WHERE {FILTER_SQL}");
    let (count,): (i64,) = bind_filter(sqlx::query_as(sqlx::AssertSqlSafe(sql)), filter).fetch_one(pool).await?;
    Ok(count)
}

/// The open letters `filter` takes, oldest first, at most `limit`: what a bulk action works
/// through (each letter then in its own transaction).
pub async fn open_ids(pool: &PgPool, filter: &Filter, limit: i64) -> Result<Vec<Uuid>, sqlx::Error> {
    let open_only = Filter { open: Some(true), ..filter.clone() };
    let sql = format!("SELECT id FROM dead_letters WHERE {FILTER_SQL} ORDER BY created_at, id LIMIT $6");
    let rows: Vec<(Uuid,)> =
        bind_filter(sqlx::query_as(sqlx::AssertSqlSafe(sql)), &open_only).bind(limit).fetch_all(pool).await?;
    Ok(rows.into_iter().map(|(id,)| id).collect())
}

/// Open letters by error code: (error code, count, oldest created_at), the most first.
pub async fn open_by_code(pool: &PgPool) -> Result<Vec<(Option<String>, i64, DateTime<Utc>)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT error_code, count(*), min(created_at) FROM dead_letters WHERE processed_at IS NULL
         GROUP BY error_code ORDER BY count(*) DESC, error_code",
    )
    .fetch_all(pool)
    .await
}

/// What a replay with new content must satisfy: the letter's item, its type and its order's
/// workflow (the route decides whether the content must be JSON).
#[derive(Debug, Clone)]
pub struct ReplayTarget {
    pub work_item_id: Uuid,
    pub item_type: String,
    pub workflow_id: String,
}

/// The item a dead letter would replay, if the letter exists and names one.
pub async fn replay_target(pool: &PgPool, id: Uuid) -> Result<ReplayTarget, OpsError> {
    let tenant =
        placement(pool, Row::DeadLetter, id).await?.tenant(|| OpsError::NotFound { what: "dead letter", id })?;
    let row: Option<(Option<Uuid>, Option<String>, Option<String>)> = sqlx::query_as(scoped(
        "SELECT w.id, w.type::text, o.workflow_id
         FROM dead_letters d LEFT JOIN work_items w ON w.id = d.work_item_id{t:w}
              LEFT JOIN work_orders o ON o.id = w.work_order_id{t:o}
         WHERE d.id = $1{t:d}",
        tenant,
        2,
    ))
    .bind(id)
    .bind_tenant(tenant)
    .fetch_optional(pool)
    .await?;
    match row {
        None => Err(OpsError::NotFound { what: "dead letter", id }),
        Some((Some(work_item_id), Some(item_type), Some(workflow_id))) => {
            Ok(ReplayTarget { work_item_id, item_type, workflow_id })
        }
        Some(_) => Err(OpsError::Conflict(format!("dead letter {id} names no work item"))),
    }
}

/// The audit row of a bulk action (each letter's own replay or discard is audited too): the
/// filter, what was done and what was left.
pub async fn audit_bulk(pool: &PgPool, actor: &str, action: &str, details: Value) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO audit_logs (user_id, action, resource_type, resource_id, details)
         VALUES ($1, $2, 'dead_letter', NULL, $3)",
    )
    .bind(actor)
    .bind(action)
    .bind(details)
    .execute(pool)
    .await?;
    Ok(())
}
