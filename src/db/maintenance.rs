//! Statements of the leader-only maintenance services: leader election and rescue.

use super::queue::{CompleteReport, complete_in};
use crate::model::Completion;
use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool, Row};
use uuid::Uuid;

/// The advisory-lock key of the leader (one per database): "orderly" in ASCII.
pub const LEADER_LOCK: i64 = 0x006f_7264_6572_6c79;

/// Tries to take the leader lock on this session; it is held until the session ends.
pub async fn try_lead(conn: &mut PgConnection) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT pg_try_advisory_lock($1)").bind(LEADER_LOCK).fetch_one(conn).await
}

/// Checks that the session holding the lock is still alive.
pub async fn ping(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT 1").execute(conn).await.map(|_| ())
}

/// A PROCESSING item whose lease has expired: its worker is gone or cut off.
#[derive(Debug, Clone)]
pub struct ExpiredItem {
    pub id: Uuid,
    pub work_order_id: Uuid,
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
/// Rows are locked from the SELECT to the commit, so a late heartbeat cannot renew a lease
/// that is being rescued, and replicas never rescue the same item twice.
pub async fn rescue_expired<F>(
    pool: &PgPool,
    limit: i64,
    decide: F,
) -> Result<(Vec<Completion>, CompleteReport), sqlx::Error>
where
    F: FnOnce(&[ExpiredItem]) -> Vec<Completion>,
{
    let mut tx = pool.begin().await?;
    let rows = sqlx::query(
        "SELECT id, work_order_id, type::text AS item_type, attempt, attempt_base, max_attempts,
                rescues, locked_by, claimed_at, lease_expires_at, now() AS now
         FROM work_items
         WHERE status = 'PROCESSING' AND lease_expires_at < now()
         ORDER BY lease_expires_at
         LIMIT $1
         FOR UPDATE SKIP LOCKED",
    )
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;
    let expired = rows
        .iter()
        .map(|r| {
            Ok(ExpiredItem {
                id: r.try_get("id")?,
                work_order_id: r.try_get("work_order_id")?,
                item_type: r.try_get("item_type")?,
                attempt: r.try_get("attempt")?,
                attempt_base: r.try_get("attempt_base")?,
                max_attempts: r.try_get("max_attempts")?,
                rescues: r.try_get("rescues")?,
                locked_by: r.try_get("locked_by")?,
                claimed_at: r.try_get("claimed_at")?,
                lease_expires_at: r.try_get("lease_expires_at")?,
                now: r.try_get("now")?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    let completions = decide(&expired);
    let report = complete_in(&mut tx, &completions).await?;
    if !report.written.is_empty() {
        // Rescued items are runnable at once: wake every replica (delivered at commit).
        sqlx::query("SELECT pg_notify($1, '')").bind(super::WORK_CHANNEL).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok((completions, report))
}
