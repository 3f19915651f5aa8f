//! Cancelling work items (db::items). In one transaction, with the items locked: QUEUED and
//! AWAITING_APPROVAL items become CANCELLED; a PROCESSING item becomes CANCELLED too, and its
//! running attempt is recorded at once as INTERRUPTED with the error code CANCELLED. Every
//! later write of that execution is fenced out: the completer writes only items still
//! PROCESSING at the same attempt, so the agent's result, when it comes, is rejected as stale
//! (counted in `orderly_stale_writes_total`), and the heartbeat, finding the item no longer
//! PROCESSING, stops the execution within a third of the lease. The orders roll up as after
//! any write. On a Citus cluster the item's or order's tenant is read first, and every
//! statement names it.

use crate::db::OpsError;
use crate::db::audit::audit;
use crate::db::distributed::{BindTenant, Row, placement, scoped};
use crate::model::{ErrorCode, ItemStatus};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

/// One item a cancellation changed.
#[derive(Debug, Clone, Serialize)]
pub struct Cancelled {
    pub work_item_id: Uuid,
    pub work_order_id: Uuid,
    /// The status it had.
    pub was: ItemStatus,
    /// The attempt that was running and is now recorded as INTERRUPTED (CANCELLED).
    pub interrupted_attempt: Option<i32>,
}

/// What to cancel: one item, or every live item of an order.
#[derive(Debug, Clone, Copy)]
pub enum Target {
    Item(Uuid),
    Order(Uuid),
}

#[derive(sqlx::FromRow)]
struct LiveRow {
    id: Uuid,
    work_order_id: Uuid,
    status: ItemStatus,
    attempt: i32,
    locked_by: Option<String>,
    claimed_at: Option<DateTime<Utc>>,
}

/// Cancels an item (it must be QUEUED, PROCESSING or AWAITING_APPROVAL) or every such item of
/// an order (at least one must be), in one transaction: see the module note. Audited per
/// item (`work_item.cancel`) and, for an order, once more (`work_order.cancel`).
pub async fn cancel(
    pool: &PgPool,
    target: Target,
    actor: &str,
    reason: Option<&str>,
) -> Result<Vec<Cancelled>, OpsError> {
    let tenant = match target {
        Target::Item(id) => {
            placement(pool, Row::Item, id).await?.tenant(|| OpsError::NotFound { what: "work item", id })
        }
        Target::Order(id) => {
            placement(pool, Row::Order, id).await?.tenant(|| OpsError::NotFound { what: "work order", id })
        }
    }?;
    let mut tx = pool.begin().await?;
    // Lock the items first, in id order, then decide; the orders are locked last, for the
    // roll-up (as every writer that finishes items does, see db::rollup::lock_orders).
    let rows: Vec<LiveRow> = match target {
        Target::Item(id) => {
            sqlx::query_as(scoped(
                "SELECT w.id, w.work_order_id, w.status::text AS status, w.attempt, w.locked_by, w.claimed_at
                 FROM work_items w WHERE w.id = $1{t:w} FOR UPDATE",
                tenant,
                2,
            ))
            .bind(id)
            .bind_tenant(tenant)
            .fetch_all(&mut *tx)
            .await?
        }
        Target::Order(order) => {
            let exists: Option<i32> =
                sqlx::query_scalar(scoped("SELECT 1 FROM work_orders o WHERE o.id = $1{t:o}", tenant, 2))
                    .bind(order)
                    .bind_tenant(tenant)
                    .fetch_optional(&mut *tx)
                    .await?;
            if exists.is_none() {
                return Err(OpsError::NotFound { what: "work order", id: order });
            }
            sqlx::query_as(scoped(
                "SELECT w.id, w.work_order_id, w.status::text AS status, w.attempt, w.locked_by, w.claimed_at
                 FROM work_items w WHERE w.work_order_id = $1{t:w}
                   AND w.status IN ('QUEUED', 'PROCESSING', 'AWAITING_APPROVAL')
                 ORDER BY w.id FOR UPDATE",
                tenant,
                2,
            ))
            .bind(order)
            .bind_tenant(tenant)
            .fetch_all(&mut *tx)
            .await?
        }
    };
    let live: Vec<&LiveRow> = rows
        .iter()
        .filter(|r| matches!(r.status, ItemStatus::Queued | ItemStatus::Processing | ItemStatus::AwaitingApproval))
        .collect();
    match (target, rows.first()) {
        (Target::Item(id), None) => return Err(OpsError::NotFound { what: "work item", id }),
        (Target::Item(id), Some(row)) if live.is_empty() => {
            return Err(OpsError::Conflict(format!(
                "work item {id} is {}; only QUEUED, PROCESSING and AWAITING_APPROVAL items can be cancelled",
                row.status
            )));
        }
        (Target::Order(id), _) if live.is_empty() => {
            return Err(OpsError::Conflict(format!(
                "work order {id} has no QUEUED, PROCESSING or AWAITING_APPROVAL item"
            )));
        }
        _ => {}
    }
    let message = format!("cancelled by {actor}{}", reason.map(|r| format!(": {r}")).unwrap_or_default());
    // The cancellation's time, read once: Citus refuses a non-immutable function over a
    // column in a write.
    let now: DateTime<Utc> = sqlx::query_scalar("SELECT now()").fetch_one(&mut *tx).await?;
    let mut done = Vec::with_capacity(live.len());
    for row in &live {
        let interrupted = if row.status == ItemStatus::Processing {
            // The running attempt's row, written now: its own result will be stale.
            let started = row.claimed_at.unwrap_or(now);
            let duration_ms = (now - started).num_milliseconds().clamp(0, i64::from(i32::MAX)) as i32;
            sqlx::query(scoped(
                "INSERT INTO attempts ({tc}work_item_id, attempt_number, agent_id, status, input, error, error_code,
                                       worker_id, started_at, completed_at, duration_ms)
                 VALUES ({tv}$1, $2, 'operator', 'INTERRUPTED', jsonb_build_object('cancelled_by', $3::text), $4, $5,
                         $6, $7, $8, $9)
                 ON CONFLICT ({tc}work_item_id, attempt_number) DO NOTHING",
                tenant,
                10,
            ))
            .bind(row.id)
            .bind(row.attempt)
            .bind(actor)
            .bind(&message)
            .bind(ErrorCode::Cancelled.as_str())
            .bind(&row.locked_by)
            .bind(started)
            .bind(now)
            .bind(duration_ms)
            .bind_tenant(tenant)
            .execute(&mut *tx)
            .await?;
            Some(row.attempt)
        } else {
            None
        };
        // Fenced on the attempt read under the lock.
        sqlx::query(scoped(
            "UPDATE work_items w SET status = 'CANCELLED', processed_at = $5, lease_expires_at = NULL,
                    locked_by = NULL, last_error = $3, last_error_code = $4
             WHERE w.id = $1{t:w} AND w.attempt = $2",
            tenant,
            6,
        ))
        .bind(row.id)
        .bind(row.attempt)
        .bind(&message)
        .bind(ErrorCode::Cancelled.as_str())
        .bind(now)
        .bind_tenant(tenant)
        .execute(&mut *tx)
        .await?;
        audit(
            &mut tx,
            actor,
            "work_item.cancel",
            ("work_item", row.id),
            json!({ "was": row.status.as_str(), "interrupted_attempt": interrupted, "reason": reason }),
        )
        .await?;
        done.push(Cancelled {
            work_item_id: row.id,
            work_order_id: row.work_order_id,
            was: row.status,
            interrupted_attempt: interrupted,
        });
    }
    // What waited on the cancelled items: SOFT dependents released, BLOCKS ones cancelled in
    // turn (transitively, audited by the function), before the orders are locked.
    // A cluster has no dependency edges (refused there).
    let ids: Vec<Uuid> = done.iter().map(|c| c.work_item_id).collect();
    let settled = match tenant {
        None => crate::db::dependencies::settle(&mut tx, &ids, actor).await?,
        Some(_) => Vec::new(),
    };
    for item in settled {
        if item.became == crate::db::dependencies::Settled::Cancelled {
            done.push(Cancelled {
                work_item_id: item.work_item_id,
                work_order_id: item.work_order_id,
                was: ItemStatus::Queued,
                interrupted_attempt: None,
            });
        }
    }
    let mut orders: Vec<Uuid> = done.iter().map(|c| c.work_order_id).collect();
    orders.sort_unstable();
    orders.dedup();
    if let Target::Order(order) = target {
        audit(
            &mut tx,
            actor,
            "work_order.cancel",
            ("work_order", order),
            json!({ "items": done.iter().map(|c| c.work_item_id).collect::<Vec<_>>(), "reason": reason }),
        )
        .await?;
    }
    // Locked last and kept to the commit (see db::rollup::lock_orders).
    crate::db::dead_letters::roll_up_orders(&mut tx, &orders, tenant).await?;
    tx.commit().await?;
    Ok(done)
}
