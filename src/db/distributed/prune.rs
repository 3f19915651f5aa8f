//! The pruner in distributed mode: [`crate::db::maintenance::prune_finished`] tenant by
//! tenant. The tenants with orders past retention are read across the shards (no lock);
//! each tenant's batch is then one transaction on that tenant's node, with the same locks and
//! checks as on one PostgreSQL. The items are deleted a thousand at a time before their
//! orders: every deleted item runs its records trigger's routed statements, which hold
//! memory until their statement ends (docs/distributed.md, "Limits").

use crate::db::maintenance::{PruneBatch, items_keeping_order};
use sqlx::PgPool;
use uuid::Uuid;

/// Items deleted per statement.
const ITEMS_PER_DELETE: usize = 1000;

/// $1 retention (ms), $2 limit, $3 the tenant.
const CANDIDATES_SQL: &str = concat!(
    "SELECT o.id FROM work_orders o
     WHERE o.tenant_id = $3 AND o.created_at < now() - $1 * interval '1 millisecond'
       AND o.status IN ('COMPLETED', 'FAILED', 'CANCELLED') AND o.updated_at < now() - $1 * interval '1 millisecond'
       AND NOT EXISTS (",
    items_keeping_order!(
        "i.tenant_id = $3 AND",
        "d.tenant_id = $3 AND",
        "e.tenant_id = $3 AND",
        "c.tenant_id = $3 AND"
    ),
    ")
     ORDER BY o.created_at
     LIMIT $2
     FOR UPDATE OF o SKIP LOCKED"
);

/// Of the locked candidates ($2), those still finished past retention ($1) whose every item
/// this transaction locked ($3), for the tenant $4.
const QUALIFIED_SQL: &str = concat!(
    "SELECT o.id FROM work_orders o
     WHERE o.tenant_id = $4 AND o.id = ANY($2)
       AND o.status IN ('COMPLETED', 'FAILED', 'CANCELLED') AND o.updated_at < now() - $1 * interval '1 millisecond'
       AND NOT EXISTS (SELECT 1 FROM work_items i WHERE i.tenant_id = $4 AND i.work_order_id = o.id AND i.id <> ALL ($3))
       AND NOT EXISTS (",
    items_keeping_order!("i.tenant_id = $4 AND", "d.tenant_id = $4 AND", "e.tenant_id = $4 AND", "c.tenant_id = $4 AND"),
    ")"
);

/// Every tenant with an order finished more than `retention_ms` ago (all of them: a tenant
/// whose old orders must all be kept must not hide the others behind a limit).
pub async fn tenants(pool: &PgPool, retention_ms: f64) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT DISTINCT tenant_id FROM work_orders
         WHERE status IN ('COMPLETED', 'FAILED', 'CANCELLED') AND updated_at < now() - $1 * interval '1 millisecond'",
    )
    .bind(retention_ms)
    .fetch_all(pool)
    .await
}

/// One tenant's batch: up to `limit` of its finished orders past retention, deleted with
/// everything they own, in one transaction, recorded in `audit_logs`.
pub async fn prune_tenant(
    pool: &PgPool,
    tenant: Uuid,
    retention_ms: f64,
    limit: i64,
) -> Result<PruneBatch, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let candidates: Vec<Uuid> =
        sqlx::query_scalar(CANDIDATES_SQL).bind(retention_ms).bind(limit).bind(tenant).fetch_all(&mut *tx).await?;
    if candidates.is_empty() {
        return Ok(PruneBatch::default());
    }
    let locked: Vec<(Uuid, Uuid)> = sqlx::query_as(
        "SELECT id, work_order_id FROM work_items WHERE tenant_id = $2 AND work_order_id = ANY($1) FOR UPDATE SKIP LOCKED",
    )
    .bind(&candidates)
    .bind(tenant)
    .fetch_all(&mut *tx)
    .await?;
    let locked_ids: Vec<Uuid> = locked.iter().map(|(id, _)| *id).collect();
    // Decided after every lock was granted, as the single-node DELETE decides: nothing can
    // change these orders or their items before the commit.
    let orders: Vec<Uuid> = sqlx::query_scalar(QUALIFIED_SQL)
        .bind(retention_ms)
        .bind(&candidates)
        .bind(&locked_ids)
        .bind(tenant)
        .fetch_all(&mut *tx)
        .await?;
    let items: Vec<Uuid> = locked.iter().filter(|(_, order)| orders.contains(order)).map(|(id, _)| *id).collect();
    for chunk in items.chunks(ITEMS_PER_DELETE) {
        sqlx::query("DELETE FROM work_items WHERE tenant_id = $1 AND id = ANY($2)")
            .bind(tenant)
            .bind(chunk)
            .execute(&mut *tx)
            .await?;
    }
    if !orders.is_empty() {
        sqlx::query("DELETE FROM work_orders WHERE tenant_id = $1 AND id = ANY($2)")
            .bind(tenant)
            .bind(&orders)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO audit_logs (user_id, action, resource_type, details)
             VALUES ('orderly:pruner', 'pruner.delete', 'work_orders',
                     jsonb_build_object('orders', $1::int, 'items', $2::int, 'retention_ms', $3::float8,
                                        'tenant_id', $5::uuid, 'work_order_ids', to_jsonb($4::uuid[])))",
        )
        .bind(orders.len() as i32)
        .bind(items.len() as i32)
        .bind(retention_ms)
        .bind(&orders)
        .bind(tenant)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(PruneBatch { candidates: candidates.len(), orders, items: items.len() })
}
