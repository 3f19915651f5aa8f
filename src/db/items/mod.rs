//! Work items as operators look them up (a filtered, paged listing and one item with
//! everything recorded about it) and cancel them ([`cancel`]).

use super::OpsError;

mod cancel;
use super::distributed::{BindTenant, Row, placement, scoped};
use crate::model::ItemStatus;
pub use cancel::{Cancelled, Target, cancel};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

/// Which items a listing takes; every field narrows it.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Filter {
    pub status: Option<ItemStatus>,
    /// The item type, as the database spells it.
    pub item_type: Option<String>,
    pub work_order_id: Option<Uuid>,
    pub tenant_id: Option<Uuid>,
    /// Created at or after.
    pub created_since: Option<DateTime<Utc>>,
    /// Created before.
    pub created_until: Option<DateTime<Utc>>,
}

/// A row of the listing.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct ItemSummary {
    pub id: Uuid,
    pub work_order_id: Uuid,
    #[serde(rename = "type")]
    pub item_type: String,
    pub status: ItemStatus,
    pub priority: String,
    pub attempt: i32,
    pub tenant_id: Uuid,
    pub workflow_id: String,
    /// `None` when `run_at` is not a finite time (`run_at_infinite`).
    pub run_at: Option<DateTime<Utc>>,
    pub run_at_infinite: bool,
    pub last_error_code: Option<String>,
    pub created_at: DateTime<Utc>,
    pub processed_at: Option<DateTime<Utc>>,
}

/// `run_at` is read through `isfinite`: `'infinity'` is a value PostgreSQL stores and
/// chrono cannot hold.
const SUMMARY_COLUMNS: &str = "w.id, w.work_order_id, w.type::text AS item_type, w.status::text AS status,
    w.priority::text AS priority, w.attempt, o.tenant_id, o.workflow_id,
    CASE WHEN isfinite(w.run_at) THEN w.run_at END AS run_at, NOT isfinite(w.run_at) AS run_at_infinite,
    w.last_error_code, w.created_at, w.processed_at";

/// One page of the items `filter` takes, newest first (`created_at`, then `id`), after
/// `cursor`. Without an index on `created_at` (the hot table keeps its indexes few, migration
/// 0004), an unfiltered listing reads the table; the order, status and tenant filters narrow
/// it through their indexes.
pub async fn list(
    pool: &PgPool,
    filter: &Filter,
    cursor: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> Result<Vec<ItemSummary>, sqlx::Error> {
    // On a Citus cluster the join is on the tenant too, and the limit is written in (a
    // multi-shard statement cannot take it as a parameter).
    let layout = super::distributed::topology(pool).await?;
    let sql = format!(
        "SELECT {SUMMARY_COLUMNS} FROM work_items w JOIN work_orders o ON o.id = w.work_order_id{{j:o.w}}
         WHERE ($1::text IS NULL OR w.status = $1::work_item_status)
           AND ($2::text IS NULL OR lower(w.type::text) = lower($2))
           AND ($3::uuid IS NULL OR w.work_order_id = $3)
           AND ($4::uuid IS NULL OR o.tenant_id = $4)
           AND ($5::timestamptz IS NULL OR w.created_at >= $5)
           AND ($6::timestamptz IS NULL OR w.created_at < $6)
           AND ($7::timestamptz IS NULL OR (w.created_at, w.id) < ($7, $8))
         ORDER BY w.created_at DESC, w.id DESC LIMIT {}",
        limit.max(0)
    );
    sqlx::query_as(super::distributed::joined(&sql, layout))
        .bind(filter.status.map(|s| s.as_str()))
        .bind(filter.item_type.as_deref())
        .bind(filter.work_order_id)
        .bind(filter.tenant_id)
        .bind(filter.created_since)
        .bind(filter.created_until)
        .bind(cursor.map(|c| c.0))
        .bind(cursor.map(|c| c.1))
        .fetch_all(pool)
        .await
}

/// The item's own row, as the detail view needs it (times on the database clock).
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct ItemRow {
    pub id: Uuid,
    pub work_order_id: Uuid,
    #[serde(rename = "type")]
    pub item_type: String,
    pub status: ItemStatus,
    pub priority: String,
    pub attempt: i32,
    pub attempt_base: i32,
    pub max_attempts: Option<i32>,
    pub rescues: i32,
    pub run_at: Option<DateTime<Utc>>,
    pub run_at_infinite: bool,
    pub lease_expires_at: Option<DateTime<Utc>>,
    pub locked_by: Option<String>,
    pub claimed_at: Option<DateTime<Utc>>,
    pub last_error_code: Option<String>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub processed_at: Option<DateTime<Utc>>,
    pub content_bytes: i32,
    /// The content, up to 64 KiB (`None` above).
    pub content: Option<String>,
    pub result: Option<Value>,
    pub workflow_id: String,
    pub tenant_id: Uuid,
    pub order_status: String,
    /// When the policy last held it for a human (the newest ESCALATED decision).
    pub held_since: Option<DateTime<Utc>>,
    /// What an exhausted spending budget does to it, if one stops it (`db::budgets`).
    pub budget_wait: Option<String>,
    /// Which limit it waits for, if one does (`db::limits`): an agent's, a template step's
    /// or a tenant's.
    pub agent_wait: Option<String>,
    /// That limit is its tenant's cap.
    pub tenant_wait: bool,
    /// The database clock when this was read.
    pub now: DateTime<Utc>,
}

/// An item with every record about it.
#[derive(Debug, Clone, Serialize)]
pub struct ItemDetail {
    pub item: ItemRow,
    pub attempts: Vec<AttemptRow>,
    pub eval_results: Vec<EvalRow>,
    pub approvals: Vec<ApprovalRow>,
    pub escalations: Vec<super::sla::Escalation>,
    /// Every dead letter of the item, newest first (at most one is open).
    pub dead_letters: Vec<LetterRow>,
    /// What it waits for and what waits for it (the first 200 of each).
    pub dependencies: super::dependencies::Edges,
    /// What its agents logged (the last 200 lines) and the artifacts they named.
    pub logs: Vec<super::runs::LogRow>,
    pub artifacts: Vec<super::runs::ArtifactRow>,
    /// The last progress its running attempt reported (kept after it ends).
    pub progress: Option<super::runs::ProgressRow>,
}

/// Largest content the detail view carries inline.
pub const CONTENT_SHOWN_BYTES: i32 = 65_536;

pub async fn get(pool: &PgPool, id: Uuid) -> Result<ItemDetail, OpsError> {
    // On a Citus cluster the item's tenant is read first: its joins then run on its node.
    let tenant = placement(pool, Row::Item, id).await?.tenant(|| OpsError::NotFound { what: "work item", id })?;
    let item: ItemRow = sqlx::query_as(scoped(
        "SELECT w.id, w.work_order_id, w.type::text AS item_type, w.status::text AS status,
                w.priority::text AS priority, w.attempt, w.attempt_base, w.max_attempts, w.rescues,
                CASE WHEN isfinite(w.run_at) THEN w.run_at END AS run_at,
                NOT isfinite(w.run_at) AS run_at_infinite,
                w.lease_expires_at, w.locked_by, w.claimed_at, w.last_error_code, w.last_error,
                w.created_at, w.processed_at, octet_length(w.content) AS content_bytes,
                CASE WHEN octet_length(w.content) <= $2 THEN w.content END AS content, w.result,
                o.workflow_id, o.tenant_id, o.status::text AS order_status,
                (SELECT max(a.\"timestamp\") FROM approval_events a
                 WHERE a.work_item_id = w.id{t:a} AND a.decision = 'ESCALATED') AS held_since,
                (SELECT 'budget ' || b.name || ' is exhausted (' || b.spent || ' of ' || b.amount || ' ' || b.currency
                        || CASE b.period WHEN 'total' THEN '' ELSE ' this ' || b.period END || '): '
                        || CASE WHEN bw.held THEN 'held until someone approves it (runs anyway) or rejects it (waits)'
                                WHEN b.period = 'total' THEN 'waits until an operator raises, resets or removes it'
                                ELSE 'waits for the next ' || b.period || ' or an operator raising, resetting or removing it'
                           END
                 FROM budget_waits bw JOIN budgets b ON b.id = bw.budget_id
                 WHERE bw.work_item_id = w.id{t:bw} AND NOT bw.allowed AND (bw.held OR w.run_at > now())) AS budget_wait,
                (SELECT CASE a.reason
                          WHEN 'in_flight' THEN 'waiting for a free slot of ' || k.what
                               || ' (max_in_flight across every replica); it runs when one frees'
                          WHEN 'rate' THEN 'waiting for its turn in ' || k.what || '''s rate: it starts at '
                               || to_char(w.run_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.MS') || ' UTC'
                          WHEN 'paused' THEN k.what || ' asked to be left alone (Retry-After) until '
                               || to_char(w.run_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') || ' UTC'
                          ELSE k.what || '''s circuit is open (repeated failures) until '
                               || to_char(w.run_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') || ' UTC' END
                 FROM agent_waits a,
                      LATERAL (SELECT CASE WHEN a.agent LIKE 'tenant:%' THEN 'tenant ' || substr(a.agent, 8)
                                           WHEN a.agent LIKE 'step:%' THEN 'template step ' || substr(a.agent, 6)
                                           ELSE 'agent ' || a.agent END AS what) k
                 WHERE a.work_item_id = w.id{t:a} AND a.woken_at IS NULL
                   AND w.status = 'QUEUED' AND w.run_at > now()) AS agent_wait,
                EXISTS (SELECT 1 FROM agent_waits a WHERE a.work_item_id = w.id{t:a} AND a.woken_at IS NULL
                          AND a.agent LIKE 'tenant:%') AS tenant_wait,
                now() AS now
         FROM work_items w JOIN work_orders o ON o.id = w.work_order_id{t:o} WHERE w.id = $1{t:w}",
        tenant,
        3,
    ))
    .bind(id)
    .bind(CONTENT_SHOWN_BYTES)
    .bind_tenant(tenant)
    .fetch_optional(pool)
    .await?
    .ok_or(OpsError::NotFound { what: "work item", id })?;
    let Records { attempts, eval_results, approvals } = records(pool, id).await?;
    let escalations = super::sla::of_item(pool, id).await?;
    let dead_letters = sqlx::query_as(
        "SELECT id, error_code, reason::text AS reason, error, retry_count, created_at, processed_at,
                resolution::text AS resolution, processed_at IS NULL AS open
         FROM dead_letters WHERE work_item_id = $1 ORDER BY created_at DESC",
    )
    .bind(id)
    .fetch_all(pool)
    .await?;
    // A cluster has no dependency edges (refused there).
    let dependencies = match tenant {
        None => super::dependencies::of_item(pool, id, 200).await?,
        Some(_) => Default::default(),
    };
    let (logs, artifacts) = super::runs::of_item(pool, id, 200).await?;
    let progress = super::runs::progress_of(pool, id).await?;
    Ok(ItemDetail {
        item,
        attempts,
        eval_results,
        approvals,
        escalations,
        dead_letters,
        dependencies,
        logs,
        artifacts,
        progress,
    })
}

/// The order's status now (after a cancellation rolled it up).
pub async fn order_status(pool: &PgPool, id: Uuid) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT status::text FROM work_orders WHERE id = $1").bind(id).fetch_optional(pool).await
}

/// One attempt, as operators read it (the item's page, its dead letter, the API).
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct AttemptRow {
    pub number: i32,
    pub status: String,
    pub agent: String,
    pub error_code: Option<String>,
    pub error: Option<String>,
    pub started_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    pub duration_ms: Option<i32>,
    pub worker: Option<String>,
    pub output: Option<Value>,
}

/// One eval result.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct EvalRow {
    pub evaluation_type: String,
    pub score: f64,
    pub passed: bool,
    pub metrics: Value,
    pub attempt_id: Option<Uuid>,
    pub created_at: DateTime<Utc>,
}

/// One approval decision.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct ApprovalRow {
    pub decision: String,
    pub approver_id: String,
    pub policy_version: String,
    pub reason: Option<String>,
    pub source: String,
    pub attempt_id: Option<Uuid>,
    pub timestamp: DateTime<Utc>,
}

/// One dead letter of the item.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct LetterRow {
    pub id: Uuid,
    pub error_code: Option<String>,
    pub reason: Option<String>,
    pub error: Option<String>,
    pub retry_count: Option<i32>,
    pub created_at: DateTime<Utc>,
    pub processed_at: Option<DateTime<Utc>>,
    pub resolution: Option<String>,
    pub open: bool,
}

/// An item's attempts, eval results and approval events, in order.
#[derive(Default)]
pub(crate) struct Records {
    pub attempts: Vec<AttemptRow>,
    pub eval_results: Vec<EvalRow>,
    pub approvals: Vec<ApprovalRow>,
}

/// The records an operator reads beside an item (its detail and its dead letter's).
pub(crate) async fn records(pool: &PgPool, item_id: Uuid) -> Result<Records, sqlx::Error> {
    let attempts = sqlx::query_as(
        "SELECT attempt_number AS number, status::text AS status, agent_id AS agent, error_code, error,
                started_at, completed_at, duration_ms, worker_id AS worker, output
         FROM attempts WHERE work_item_id = $1 ORDER BY attempt_number",
    )
    .bind(item_id)
    .fetch_all(pool)
    .await?;
    let eval_results = sqlx::query_as(
        "SELECT evaluation_type, score::float8 AS score, passed, metrics, attempt_id, created_at
         FROM eval_results WHERE work_item_id = $1 ORDER BY created_at",
    )
    .bind(item_id)
    .fetch_all(pool)
    .await?;
    let approvals = sqlx::query_as(
        "SELECT decision::text AS decision, approver_id, policy_version, reason, source::text AS source,
                attempt_id, \"timestamp\"
         FROM approval_events WHERE work_item_id = $1 ORDER BY \"timestamp\"",
    )
    .bind(item_id)
    .fetch_all(pool)
    .await?;
    Ok(Records { attempts, eval_results, approvals })
}
