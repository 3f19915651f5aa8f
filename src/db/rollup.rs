//! The order roll-up: an order's status recomputed from its items, under the order's row
//! lock, in the transaction of the writer that finished its items (docs/states.md, "Who
//! writes an order's status"); and the leader's safety net for orders no writer corrected.

use sqlx::PgPool;
use uuid::Uuid;

/// An order's status from its items (docs/states.md), as a SQL expression over `o.id`:
/// PROCESSING while any item is unfinished, else FAILED if any failed, else CANCELLED if
/// none completed and some were cancelled, else COMPLETED. Each
/// branch is a probe of the composite index (work_order_id, status, type) that stops at the
/// first match, so the cost is the same for an order of one item or of a million: never an
/// aggregate over the order's items.
///
/// Every probe bounds `status` in the index condition. QUEUED and PROCESSING are the first
/// two values of `work_item_status` (a plan test checks the order), so `status <=
/// 'PROCESSING'` is one range of the index; AWAITING_APPROVAL is probed on its own. Written as
/// `status IN (...)` the three took a descent each, or the planner kept only `work_order_id`
/// in the index condition and filtered on `status`, which walks every COMPLETED entry of a
/// finished order before it can answer: a cost that grows with the order.
/// `OFFSET 0` keeps each probe per order: without it the planner may turn an EXISTS into a
/// hashed subplan that reads every unfinished (or failed) item of the whole table once per
/// statement, which it prefers while its statistics say the table is small (seen on a fresh
/// database; the plan test checks it).
/// With a filter (`"i.tenant_id = $1 AND"`), every probe names one tenant: the distributed
/// roll-up (`super::distributed::engine`).
macro_rules! order_status_from_items {
    () => {
        order_status_from_items!("")
    };
    ($i:literal) => {
        concat!(
            "CASE WHEN EXISTS (SELECT 1 FROM work_items i WHERE ",
            $i,
            " i.work_order_id = o.id
                           AND i.status <= 'PROCESSING' OFFSET 0)
                OR EXISTS (SELECT 1 FROM work_items i WHERE ",
            $i,
            " i.work_order_id = o.id
                           AND i.status = 'AWAITING_APPROVAL' OFFSET 0) THEN 'PROCESSING'
              WHEN EXISTS (SELECT 1 FROM work_items i WHERE ",
            $i,
            " i.work_order_id = o.id AND i.status = 'FAILED' OFFSET 0)
                   THEN 'FAILED'
              WHEN NOT EXISTS (SELECT 1 FROM work_items i WHERE ",
            $i,
            " i.work_order_id = o.id AND i.status = 'COMPLETED' OFFSET 0)
                   AND EXISTS (SELECT 1 FROM work_items i WHERE ",
            $i,
            " i.work_order_id = o.id AND i.status = 'CANCELLED' OFFSET 0)
                   THEN 'CANCELLED'
              ELSE 'COMPLETED' END::work_order_status"
        )
    };
}
pub(crate) use order_status_from_items;

/// The order roll-up (see [`roll_up_locked`]); public so the plan test can EXPLAIN it.
/// `$1`: the row versions [`LOCK_ORDERS_SQL`] locked, as text. Orders are read through those
/// versions (a TID scan: the lock keeps them in place) and their status by index probes: the
/// cost is the batch's orders, never the table's and never the orders' sizes. The statuses
/// are computed once per order (`MATERIALIZED`: inlined, the planner evaluated the probes
/// twice, once to filter and once to set). Returns the orders whose status changed.
pub const ROLL_UP_SQL: &str = concat!(
    "WITH r AS MATERIALIZED (
         SELECT o.ctid AS row_version, o.status AS was, ",
    order_status_from_items!(),
    " AS status FROM work_orders o WHERE o.ctid = ANY ($1::text[]::tid[]))
     UPDATE work_orders o SET status = r.status, updated_at = now()
     FROM r WHERE o.ctid = r.row_version AND r.was <> r.status
     RETURNING o.id"
);

/// PROCESSING orders whose items are all finished (see [`heal_roll_ups`]).
pub const STRANDED_ORDERS_SQL: &str = concat!(
    "SELECT o.id FROM work_orders o WHERE o.status = 'PROCESSING' AND 'PROCESSING' <> ",
    order_status_from_items!(),
    " LIMIT $1"
);

/// Orders that are not PROCESSING although one of their items runs (see [`heal_roll_ups`]):
/// found through the partial index of leased items, so the cost is the items in flight.
pub const UNMARKED_ORDERS_SQL: &str =
    "SELECT DISTINCT o.id FROM work_items i JOIN work_orders o ON o.id = i.work_order_id
     WHERE i.status = 'PROCESSING' AND i.lease_expires_at IS NOT NULL AND o.status <> 'PROCESSING'
     LIMIT $1";

/// Locks orders in id order (see [`lock_orders`]).
/// `FOR NO KEY UPDATE`, the lock an UPDATE of the status takes: it does not wait for the
/// key-share locks of upstream transactions still adding items to the order.
pub const LOCK_ORDERS_SQL: &str = "SELECT ctid::text FROM work_orders WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE";

/// Orders this transaction has locked ([`lock_orders`]): the row versions it holds, which no
/// other transaction can replace before the commit. Only [`roll_up_locked`] reads them, so a
/// roll-up cannot be written without the lock that keeps it exact.
#[derive(Debug, Default)]
pub struct LockedOrders(Vec<String>);

/// Takes the orders' row locks, in id order (two writers never deadlock on them), inside the
/// caller's transaction: the step before [`roll_up_locked`] in every writer that moves items
/// into or out of the finished states (docs/states.md, "Who writes an order's status").
///
/// The rule that keeps the roll-up exact: such a writer, after its item writes and in the
/// same transaction, locks the orders of those items, keeps the locks to its commit and
/// recomputes the orders under them. Of two writers of one order's items, the one that
/// takes the lock second recomputes after the first has committed (the lock is held until
/// then, and the recomputation is a statement of its own, whose snapshot is taken after the
/// lock was granted), so it sees the first's items and its own: no status is written from
/// a view that misses a committed change, and no commit can slip in between a
/// recomputation and its commit. Writers lock their items first and the orders last, and
/// take no item lock once they hold an order's, so the two kinds of lock never wait in a
/// cycle; the order lock is held only for the recomputation and the commit.
///
/// The claim needs no lock to stay exact (QUEUED to PROCESSING leaves an order's status
/// as it was, PROCESSING); what it does to the order is described at [`super::claim::CLAIM_SQL`].
pub async fn lock_orders(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    orders: &[Uuid],
) -> Result<LockedOrders, sqlx::Error> {
    if orders.is_empty() {
        return Ok(LockedOrders::default());
    }
    sqlx::query_scalar(LOCK_ORDERS_SQL).bind(orders).fetch_all(&mut **tx).await.map(LockedOrders)
}

/// Recomputes the status of orders this transaction has locked ([`lock_orders`]) and whose
/// items it has written; returns those whose status changed.
pub async fn roll_up_locked(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    orders: &LockedOrders,
) -> Result<Vec<Uuid>, sqlx::Error> {
    if orders.0.is_empty() {
        return Ok(vec![]);
    }
    sqlx::query_scalar(ROLL_UP_SQL).bind(&orders.0).fetch_all(&mut **tx).await
}

/// Locks and recomputes orders in a transaction of its own, for a change whose writer did
/// not roll up: an upstream INSERT into a finished order, a claim that found its order
/// locked (see [`super::claim::CLAIM_SQL`]), a writer that died or an item changed by hand
/// ([`heal_roll_ups`]). Exact for the same reason as [`lock_orders`]: the recomputation
/// starts after the locks are granted, and every writer that could change the orders'
/// statuses needs those locks first. Returns the orders whose status changed.
pub async fn roll_up(pool: &PgPool, orders: &[Uuid]) -> Result<Vec<Uuid>, sqlx::Error> {
    if orders.is_empty() {
        return Ok(vec![]);
    }
    let mut orders = orders.to_vec();
    orders.sort_unstable();
    orders.dedup();
    let mut tx = pool.begin().await?;
    let locked = lock_orders(&mut tx, &orders).await?;
    let changed = roll_up_locked(&mut tx, &locked).await?;
    tx.commit().await?;
    Ok(changed)
}

/// The leader's safety net, for orders whose status no writer corrected: PROCESSING orders
/// whose items are all finished (items changed by hand, or by a writer that does not follow
/// [`lock_orders`]), and orders not PROCESSING while one of their items runs (the
/// dispatcher's roll-up of an order its claim could not mark failed, say), rolled up
/// `limit` at a time until none is left. An order's status is in no index (its changes are
/// heap-only updates, migration 0014), so the first kind reads `work_orders` through; the
/// leader calls this rarely (see `maintenance::rescuer`), and probes only the PROCESSING
/// orders' items.
pub async fn heal_roll_ups(pool: &PgPool, limit: i64) -> Result<Vec<Uuid>, sqlx::Error> {
    let mut healed = Vec::new();
    loop {
        let mut stranded: Vec<Uuid> = sqlx::query_scalar(STRANDED_ORDERS_SQL).bind(limit).fetch_all(pool).await?;
        let unmarked: Vec<Uuid> = sqlx::query_scalar(UNMARKED_ORDERS_SQL).bind(limit).fetch_all(pool).await?;
        let full = stranded.len() as i64 == limit || unmarked.len() as i64 == limit;
        stranded.extend(unmarked);
        let rolled = roll_up(pool, &stranded).await?;
        // Fewer than a round's worth, or none of them changed (their items moved meanwhile).
        if !full || rolled.is_empty() {
            healed.extend(rolled);
            return Ok(healed);
        }
        healed.extend(rolled);
    }
}
