//! Dependencies between work items (migration 0023, docs/dependencies.md): settling the
//! edges of finished items inside the writer's transaction, the dependencies' results for
//! the envelope, and what on-call reads (an item's edges, an order's graph, why an item waits).

use crate::model::ItemStatus;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

/// What settling did to one dependent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// Its last unmet dependency was met: it is claimable now.
    Released,
    /// A BLOCKS dependency will never complete: it was CANCELLED (DEPENDENCY_FAILED).
    Cancelled,
}

/// One dependent changed by [`settle`].
#[derive(Debug, Clone)]
pub struct SettledItem {
    pub work_item_id: Uuid,
    pub work_order_id: Uuid,
    pub became: Settled,
}

/// Settles the edges that name `finished` as a dependency, by their status now (the
/// semantics table of docs/dependencies.md), transitively through cancelled dependents.
/// Must run in the transaction that finished them, after the statement that did, and before
/// the orders are locked (db::rollup): the caller rolls up the orders of cancelled items.
pub async fn settle(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    finished: &[Uuid],
    actor: &str,
) -> Result<Vec<SettledItem>, sqlx::Error> {
    if finished.is_empty() {
        return Ok(Vec::new());
    }
    let rows: Vec<(Uuid, Uuid, String)> =
        sqlx::query_as("SELECT work_item_id, work_order_id, became FROM orderly_settle_dependencies($1, $2)")
            .bind(finished)
            .bind(actor)
            .fetch_all(&mut **tx)
            .await?;
    Ok(rows
        .into_iter()
        .map(|(work_item_id, work_order_id, became)| SettledItem {
            work_item_id,
            work_order_id,
            became: if became == "CANCELLED" { Settled::Cancelled } else { Settled::Released },
        })
        .collect())
}

/// One dependency's outcome, for its dependent's envelope.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Input {
    pub work_item_id: Uuid,
    pub depends_on_id: Uuid,
    pub kind: String,
    pub item_type: String,
    pub status: ItemStatus,
    /// Its result as JSON text; None when it has none or when it did not fit the budget.
    pub result: Option<String>,
    pub result_bytes: Option<i32>,
    /// The result was left out: the dependencies' results before it filled the budget.
    pub omitted: bool,
}

/// The dependencies of the given items with their results, oldest edge first, each item's
/// results together at most `max_bytes` (a result that would pass it is omitted, marked).
pub async fn inputs(pool: &PgPool, items: &[Uuid], max_bytes: i64) -> Result<Vec<Input>, sqlx::Error> {
    sqlx::query_as(
        "WITH e AS (
             SELECT d.work_item_id, d.depends_on_id, d.kind::text AS kind, d.created_at, p.type::text AS item_type,
                    p.status::text AS status, p.result, octet_length(p.result::text) AS result_bytes
             FROM work_item_dependencies d JOIN work_items p ON p.id = d.depends_on_id
             WHERE d.work_item_id = ANY ($1)
         ), s AS (
             SELECT e.*, sum(coalesce(result_bytes, 0)) OVER (PARTITION BY work_item_id
                                                              ORDER BY created_at, depends_on_id) AS running
             FROM e
         )
         SELECT work_item_id, depends_on_id, kind, item_type, status,
                CASE WHEN running <= $2 THEN result::text END AS result, result_bytes,
                result IS NOT NULL AND running > $2 AS omitted
         FROM s ORDER BY work_item_id, created_at, depends_on_id",
    )
    .bind(items)
    .bind(max_bytes)
    .fetch_all(pool)
    .await
}

/// One edge as on-call reads it, from either end.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Edge {
    /// The item at the other end.
    pub work_item_id: Uuid,
    pub work_order_id: Uuid,
    #[sqlx(rename = "item_type")]
    #[serde(rename = "type")]
    pub item_type: String,
    pub status: ItemStatus,
    pub kind: String,
    /// The edge no longer holds its dependent back.
    pub satisfied: bool,
    /// The item at the other end is dead-lettered and its letter open (its id).
    pub dead_letter_id: Option<Uuid>,
}

/// An item's dependencies and dependents.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Edges {
    pub dependencies: Vec<Edge>,
    pub dependents: Vec<Edge>,
}

const EDGE_COLUMNS: &str = "w.id AS work_item_id, w.work_order_id, w.type::text AS item_type,
    w.status::text AS status, d.kind::text AS kind,
    d.satisfied_at IS NOT NULL AS satisfied,
    (SELECT l.id FROM dead_letters l WHERE l.work_item_id = w.id AND l.processed_at IS NULL) AS dead_letter_id";

/// Both ends of an item's edges (at most `limit` each).
pub async fn of_item(pool: &PgPool, id: Uuid, limit: i64) -> Result<Edges, sqlx::Error> {
    Ok(Edges {
        dependencies: ends(pool, id, limit, "depends_on_id", "work_item_id").await?,
        dependents: ends(pool, id, limit, "work_item_id", "depends_on_id").await?,
    })
}

/// The items at the `other` end of the edges whose `own` end is `id`.
async fn ends(pool: &PgPool, id: Uuid, limit: i64, other: &str, own: &str) -> Result<Vec<Edge>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {EDGE_COLUMNS} FROM work_item_dependencies d JOIN work_items w ON w.id = d.{other}
         WHERE d.{own} = $1 ORDER BY d.created_at, w.id LIMIT $2"
    )))
    .bind(id)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Why a QUEUED item is not claimed, from its unmet edges ([`Edges::dependencies`]).
/// None when nothing holds it back.
pub fn waiting_reason(status: ItemStatus, edges: &Edges) -> Option<String> {
    if status != ItemStatus::Queued {
        return None;
    }
    let unmet: Vec<&Edge> = edges.dependencies.iter().filter(|e| !e.satisfied && e.kind != "RELATED").collect();
    if unmet.is_empty() {
        return None;
    }
    if let Some(letter) = unmet.iter().find_map(|e| e.dead_letter_id.filter(|_| e.kind == "BLOCKS")) {
        return Some(format!("blocked by dead letter {letter}"));
    }
    let listed: Vec<String> = unmet.iter().map(|e| format!("{} ({})", e.work_item_id, e.status)).collect();
    Some(format!(
        "waiting for {} dependenc{}: {}",
        unmet.len(),
        if unmet.len() == 1 { "y" } else { "ies" },
        listed.join(", ")
    ))
}

/// One node of an order's graph.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Node {
    pub id: Uuid,
    #[sqlx(rename = "item_type")]
    #[serde(rename = "type")]
    pub item_type: String,
    pub status: ItemStatus,
    pub created_at: DateTime<Utc>,
    /// Waiting for dependencies (QUEUED with unmet edges).
    pub waiting: bool,
}

/// An order's items and the edges among them (edges to other orders are left out), at most
/// `limit` items; `truncated` when the order has more.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Graph {
    pub nodes: Vec<Node>,
    /// (dependent, dependency, kind)
    pub edges: Vec<(Uuid, Uuid, String)>,
    pub truncated: bool,
}

pub async fn of_order(pool: &PgPool, order: Uuid, limit: i64) -> Result<Graph, sqlx::Error> {
    // The limit is written in: on a Citus cluster a multi-shard statement cannot take it as a
    // parameter.
    let mut nodes: Vec<Node> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT id, type::text AS item_type, status::text AS status, created_at,
                status = 'QUEUED' AND deps_pending > 0 AS waiting
         FROM work_items WHERE work_order_id = $1 ORDER BY created_at, id LIMIT {}",
        limit.max(0) + 1
    )))
    .bind(order)
    .fetch_all(pool)
    .await?;
    let truncated = nodes.len() as i64 > limit;
    nodes.truncate(limit as usize);
    // A cluster has no dependency edges (refused there).
    if super::distributed::topology(pool).await? == super::distributed::Topology::Distributed {
        return Ok(Graph { nodes, edges: Vec::new(), truncated });
    }
    let ids: Vec<Uuid> = nodes.iter().map(|n| n.id).collect();
    let edges = sqlx::query_as(
        "SELECT d.work_item_id, d.depends_on_id, d.kind::text FROM work_item_dependencies d
         WHERE d.work_item_id = ANY ($1) AND d.depends_on_id = ANY ($1)",
    )
    .bind(&ids)
    .fetch_all(pool)
    .await?;
    Ok(Graph { nodes, edges, truncated })
}
