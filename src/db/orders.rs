//! Work orders and their items as operators see them: enqueue (the upstream's two INSERTs) and
//! the queue's status.

use crate::model::ItemStatus;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

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
/// The item types the database knows (`work_item_type`'s values, in their order).
pub async fn item_types(pool: &PgPool) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT unnest(enum_range(NULL::work_item_type))::text").fetch_all(pool).await
}

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
    // The items' ids are made first, so that they come back in the items' order on a Citus
    // cluster too (where the rows are inserted on the tenant's node), and the items name
    // their tenant (which a cluster needs to place them; one PostgreSQL takes it from the
    // order anyway).
    let item_ids: Vec<Uuid> = sqlx::query_scalar("SELECT orderly_uuid_v7() FROM generate_series(1, $1)")
        .bind(order.items.len() as i32)
        .fetch_all(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO work_items (id, work_order_id, tenant_id, type, content)
         SELECT i, $2, $3, t::work_item_type, c FROM unnest($1::uuid[], $4::text[], $5::text[]) AS x(i, t, c)",
    )
    .bind(&item_ids)
    .bind(order_id)
    .bind(order.tenant_id)
    .bind(&types)
    .bind(&contents)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok((order_id, item_ids))
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct StatusCount {
    pub status: ItemStatus,
    pub item_type: String,
    pub count: i64,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct InFlight {
    pub id: Uuid,
    pub item_type: String,
    pub attempt: i32,
    pub locked_by: Option<String>,
    pub lease_expires_at: Option<DateTime<Utc>>,
    pub lease_remaining_ms: Option<i64>,
    pub rescues: i32,
    /// What the running attempt last said about its progress.
    pub percent: Option<f64>,
    pub progress_message: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct QueueStatus {
    pub counts: Vec<StatusCount>,
    /// Seconds the oldest runnable QUEUED item has waited (database clock).
    pub oldest_queued_seconds: Option<f64>,
    /// QUEUED items waiting for a future run time (retries).
    pub scheduled: i64,
    /// QUEUED items waiting for their dependencies.
    pub waiting: i64,
    pub in_flight: Vec<InFlight>,
    pub open_dead_letters: i64,
}

pub async fn queue_status(pool: &PgPool, in_flight_limit: i64) -> Result<QueueStatus, sqlx::Error> {
    let counts: Vec<StatusCount> = sqlx::query_as(
        "SELECT status::text AS status, type::text AS item_type, count(*) AS count
         FROM work_items GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .fetch_all(pool)
    .await?;
    let (oldest_queued_seconds, scheduled, waiting, open_dead_letters): (Option<f64>, i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT extract(epoch FROM now() - min(run_at))::float8 FROM work_items
                  WHERE status = 'QUEUED' AND deps_pending = 0 AND run_at <= now()) AS oldest,
                (SELECT count(*) FROM work_items WHERE status = 'QUEUED' AND deps_pending = 0 AND run_at > now()) AS scheduled,
                (SELECT count(*) FROM work_items WHERE status = 'QUEUED' AND deps_pending > 0) AS waiting,
                (SELECT count(*) FROM dead_letters WHERE processed_at IS NULL) AS dead",
    )
    .fetch_one(pool)
    .await?;
    // On a Citus cluster the progress is joined on the tenant too (a join of two distributed
    // tables must be on the tenant), and the limit is written in (a multi-shard statement
    // cannot take it as a parameter).
    let distributed = super::distributed::topology(pool).await? == super::distributed::Topology::Distributed;
    let (tenant_join, limit) = match distributed {
        false => ("", "$1".to_string()),
        true => (" AND p.tenant_id = w.tenant_id", in_flight_limit.max(0).to_string()),
    };
    let sql = format!(
        "SELECT w.id, w.type::text AS item_type, w.attempt, w.locked_by, w.lease_expires_at, w.rescues,
                (extract(epoch FROM w.lease_expires_at - now()) * 1000)::bigint AS lease_remaining_ms,
                p.percent::float8 AS percent, p.message AS progress_message
         FROM work_items w LEFT JOIN run_progress p ON p.work_item_id = w.id AND p.attempt = w.attempt{tenant_join}
         WHERE w.status = 'PROCESSING' ORDER BY w.lease_expires_at LIMIT {limit}"
    );
    let query = sqlx::query_as(sqlx::AssertSqlSafe(sql));
    let in_flight: Vec<InFlight> =
        if distributed { query } else { query.bind(in_flight_limit) }.fetch_all(pool).await?;
    Ok(QueueStatus { counts, oldest_queued_seconds, scheduled, waiting, in_flight, open_dead_letters })
}

/// One work order as operators see it, with its items' counts by status.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct OrderRow {
    pub id: Uuid,
    pub status: String,
    pub workflow_id: String,
    pub tenant_id: Uuid,
    pub created_by: Uuid,
    pub priority: String,
    pub metadata: Value,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// status → count of its items.
    #[sqlx(json)]
    pub items_by_status: std::collections::BTreeMap<String, i64>,
}

/// On a Citus cluster the order's tenant is read first, and its items counted on its node.
pub async fn get(pool: &PgPool, id: Uuid) -> Result<Option<OrderRow>, sqlx::Error> {
    use super::distributed::{BindTenant, Placement, Row, placement, scoped};
    let tenant = match placement(pool, Row::Order, id).await? {
        Placement::Single => None,
        Placement::Tenant(tenant) => Some(tenant),
        Placement::Missing => return Ok(None),
    };
    sqlx::query_as(scoped(
        "SELECT o.id, o.status::text AS status, o.workflow_id, o.tenant_id, o.created_by, o.priority::text AS priority,
                o.metadata, o.created_at, o.updated_at,
                (SELECT coalesce(jsonb_object_agg(s.status, s.n), '{}') FROM
                   (SELECT i.status::text AS status, count(*) AS n FROM work_items i
                     WHERE i.work_order_id = o.id{t:i} GROUP BY i.status) s)
                  AS items_by_status
         FROM work_orders o WHERE o.id = $1{t:o}",
        tenant,
        2,
    ))
    .bind(id)
    .bind_tenant(tenant)
    .fetch_optional(pool)
    .await
}
