//! Statements of the leader-only maintenance services: rescue and pruning (the election's
//! are in `db::leader`).

use super::queue::{CompleteReport, complete_in};
use crate::model::Completion;
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

/// A PROCESSING item whose lease has expired: its worker is gone or cut off.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ExpiredItem {
    pub id: Uuid,
    pub work_order_id: Uuid,
    pub tenant_id: Uuid,
    /// The order's workflow: its template's step may set the item's attempt budget.
    pub workflow_id: String,
    pub item_type: String,
    pub attempt: i32,
    pub attempt_base: i32,
    pub max_attempts: Option<i32>,
    pub rescues: i32,
    pub locked_by: Option<String>,
    pub claimed_at: Option<DateTime<Utc>>,
    pub lease_expires_at: DateTime<Utc>,
    pub now: DateTime<Utc>,
}

/// Locks up to `limit` expired leases, lets `decide` turn them into completions (LOST
/// attempts), and writes those with the completer's fenced statement, in one transaction.
/// `decide` may read elsewhere (the routing catalog) while the rows stay locked.
/// Rows are locked from the SELECT to the commit, so a late heartbeat cannot renew a lease
/// that is being rescued, and replicas never rescue the same item twice. The orders of the
/// items it dead-letters are rolled up in the same transaction (see `complete_in`).
pub async fn rescue_expired<F>(
    pool: &PgPool,
    limit: i64,
    decide: F,
) -> Result<(Vec<Completion>, CompleteReport), sqlx::Error>
where
    F: AsyncFnOnce(&[ExpiredItem]) -> Vec<Completion>,
{
    let mut tx = pool.begin().await?;
    let expired: Vec<ExpiredItem> = sqlx::query_as(
        "SELECT w.id, w.work_order_id, o.tenant_id, o.workflow_id, w.type::text AS item_type, w.attempt, w.attempt_base,
                w.max_attempts, w.rescues, w.locked_by, w.claimed_at, w.lease_expires_at, now() AS now
         FROM work_items w JOIN work_orders o ON o.id = w.work_order_id
         WHERE w.status = 'PROCESSING' AND w.lease_expires_at < now()
         ORDER BY w.lease_expires_at
         LIMIT $1
         FOR UPDATE OF w SKIP LOCKED",
    )
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;
    let completions = decide(&expired).await;
    let report = complete_in(&mut tx, &completions).await?;
    if !report.written.is_empty() {
        // Rescued items are runnable at once: wake every replica (delivered at commit).
        sqlx::query("SELECT pg_notify($1, '')").bind(super::WORK_CHANNEL).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok((completions, report))
}

/// What one pruning batch deleted.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct PruneBatch {
    /// Orders locked as candidates.
    pub candidates: usize,
    pub orders: Vec<Uuid>,
    pub items: usize,
}

/// The items of order `o` that keep it from being pruned: not finished, finished within the
/// retention (`$1`, milliseconds), with an open dead letter (waiting for replay or
/// discard), or with an unfinished dependent (in any order: its envelope will carry this
/// item's result). An order may be pruned when this finds nothing.
/// With four filters (`i.`, `d.`, `e.` and `c.` conditions, each ending in `AND`), every
/// table it reads names one tenant: the distributed pruner (`super::distributed::prune`).
macro_rules! items_keeping_order {
    () => {
        items_keeping_order!("", "", "", "")
    };
    ($i:literal, $d:literal, $e:literal, $c:literal) => {
        concat!(
            "SELECT 1 FROM work_items i
         WHERE ",
            $i,
            " i.work_order_id = o.id
           AND (i.status NOT IN ('COMPLETED', 'FAILED', 'CANCELLED')
                OR coalesce(i.processed_at, i.created_at) >= now() - $1 * interval '1 millisecond'
                OR EXISTS (SELECT 1 FROM dead_letters d WHERE ",
            $d,
            " d.work_item_id = i.id AND d.processed_at IS NULL)
                OR (i.has_dependents AND EXISTS (
                        SELECT 1 FROM work_item_dependencies e JOIN work_items c ON ",
            $c,
            " c.id = e.work_item_id
                        WHERE ",
            $e,
            " e.depends_on_id = i.id AND c.status IN ('QUEUED', 'PROCESSING', 'AWAITING_APPROVAL'))))"
        )
    };
}
pub(crate) use items_keeping_order;

/// The pruner's candidates (see [`prune_finished`]); public so the plan test can EXPLAIN it.
/// Parameters: $1 retention (ms), $2 limit.
///
/// Oldest first by `created_at` (its index; an order that finished before the cut-off was
/// created before it). An order's status and `updated_at` are in no index, so that their
/// changes stay heap-only updates (migration 0014): a sweep steps over the old orders that are
/// still open, which are few next to the history it deletes.
pub const PRUNE_CANDIDATES_SQL: &str = concat!(
    "SELECT o.id FROM work_orders o
     WHERE o.created_at < now() - $1 * interval '1 millisecond'
       AND o.status IN ('COMPLETED', 'FAILED', 'CANCELLED') AND o.updated_at < now() - $1 * interval '1 millisecond'
       AND NOT EXISTS (",
    items_keeping_order!(),
    ")
     ORDER BY o.created_at
     LIMIT $2
     FOR UPDATE OF o SKIP LOCKED"
);

/// Deletes up to `limit` finished work orders that finished more than `retention` ago, with
/// everything they own (the foreign keys and the delete trigger of migration 0008 cascade),
/// in one transaction, and records the batch in `audit_logs`.
///
/// Locking, so that nothing live is ever deleted: the candidate orders are locked first
/// (`FOR UPDATE SKIP LOCKED`; an upstream adding an item to one holds a key-share lock and
/// makes it skipped), then their items (`SKIP LOCKED` again: an item being written is not
/// finished business). The DELETE is a later statement, so under READ COMMITTED it sees
/// everything committed before those locks, and it checks again, requiring as well that
/// every item of the order is one this transaction locked. Nothing can change a locked
/// order's items until the commit.
pub async fn prune_finished(
    pool: &PgPool,
    retention: std::time::Duration,
    limit: i64,
) -> Result<PruneBatch, sqlx::Error> {
    let retention_ms = retention.as_millis() as f64;
    let mut tx = pool.begin().await?;
    let candidates: Vec<Uuid> =
        sqlx::query_scalar(PRUNE_CANDIDATES_SQL).bind(retention_ms).bind(limit).fetch_all(&mut *tx).await?;
    if candidates.is_empty() {
        return Ok(PruneBatch::default());
    }
    let locked: Vec<(Uuid, Uuid)> =
        sqlx::query_as("SELECT id, work_order_id FROM work_items WHERE work_order_id = ANY($1) FOR UPDATE SKIP LOCKED")
            .bind(&candidates)
            .fetch_all(&mut *tx)
            .await?;
    let locked_ids: Vec<Uuid> = locked.iter().map(|(id, _)| *id).collect();
    let orders: Vec<Uuid> = sqlx::query_scalar(concat!(
        "DELETE FROM work_orders o
         WHERE o.id = ANY($2)
           AND o.status IN ('COMPLETED', 'FAILED', 'CANCELLED') AND o.updated_at < now() - $1 * interval '1 millisecond'
           AND NOT EXISTS (SELECT 1 FROM work_items i WHERE i.work_order_id = o.id AND i.id <> ALL ($3))
           AND NOT EXISTS (",
        items_keeping_order!(),
        ")
         RETURNING o.id"
    ))
    .bind(retention_ms)
    .bind(&candidates)
    .bind(&locked_ids)
    .fetch_all(&mut *tx)
    .await?;
    let items = locked.iter().filter(|(_, order)| orders.contains(order)).count();
    if !orders.is_empty() {
        sqlx::query(
            "INSERT INTO audit_logs (user_id, action, resource_type, details)
             VALUES ('orderly:pruner', 'pruner.delete', 'work_orders',
                     jsonb_build_object('orders', $1::int, 'items', $2::int, 'retention_ms', $3::float8,
                                        'work_order_ids', to_jsonb($4::uuid[])))",
        )
        .bind(orders.len() as i32)
        .bind(items as i32)
        .bind(retention_ms)
        .bind(&orders)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(PruneBatch { candidates: candidates.len(), orders, items })
}
