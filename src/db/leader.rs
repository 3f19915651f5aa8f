//! Statements of the leader election: one lease row (`orderly_leader`, migration 0018) that
//! expires on the database clock. See `maintenance::leader` for the loop that runs them.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use std::time::Duration;

/// The lease row as it stands.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, serde::Serialize)]
pub struct Lease {
    /// The worker id of the replica that holds (or last held) the lease.
    pub holder: String,
    pub epoch: i64,
    /// When the holder's term began.
    pub since: DateTime<Utc>,
    pub renewed_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// Whether `expires_at` is still ahead of the database clock.
    pub live: bool,
}

/// Renews the lease when `holder` holds it and it has not expired, or takes it (next epoch)
/// when it has expired or never existed; returns the lease when `holder` holds it afterwards,
/// `None` when another replica holds a live lease. One statement: two replicas racing for an
/// expired lease serialize on the row, and the second finds it live and not its own.
pub async fn campaign(conn: &mut PgConnection, holder: &str, lease: Duration) -> Result<Option<Lease>, sqlx::Error> {
    sqlx::query_as(
        "INSERT INTO orderly_leader AS l (holder, epoch, since, renewed_at, expires_at)
         VALUES ($1, 1, now(), now(), now() + $2::interval)
         ON CONFLICT (id) DO UPDATE
            SET epoch = CASE WHEN l.holder = EXCLUDED.holder AND l.expires_at > now() THEN l.epoch ELSE l.epoch + 1 END,
                since = CASE WHEN l.holder = EXCLUDED.holder AND l.expires_at > now() THEN l.since ELSE now() END,
                holder = EXCLUDED.holder,
                renewed_at = now(),
                expires_at = EXCLUDED.expires_at
          WHERE (l.holder = EXCLUDED.holder AND l.expires_at > now()) OR l.expires_at <= now()
         RETURNING holder, epoch, since, renewed_at, expires_at, true AS live",
    )
    .bind(holder)
    .bind(interval(lease))
    .fetch_optional(conn)
    .await
}

/// Whether `holder` still holds the lease of `epoch`, unexpired on the database clock: the
/// check every leader-only round makes before it acts.
pub async fn holds(pool: &PgPool, holder: &str, epoch: i64) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM orderly_leader WHERE holder = $1 AND epoch = $2 AND expires_at > now())",
    )
    .bind(holder)
    .bind(epoch)
    .fetch_one(pool)
    .await
}

/// Gives the lease up at once (a clean shutdown), so another replica takes over on its next
/// try rather than after the lease runs out.
pub async fn resign(conn: &mut PgConnection, holder: &str, epoch: i64) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE orderly_leader SET expires_at = now() WHERE holder = $1 AND epoch = $2 AND expires_at > now()")
        .bind(holder)
        .bind(epoch)
        .execute(conn)
        .await
        .map(|_| ())
}

/// The lease row, if any replica ever led this database.
pub async fn current(db: impl sqlx::PgExecutor<'_>) -> Result<Option<Lease>, sqlx::Error> {
    sqlx::query_as(
        "SELECT holder, epoch, since, renewed_at, expires_at, expires_at > now() AS live FROM orderly_leader",
    )
    .fetch_optional(db)
    .await
}

/// A duration as an interval literal PostgreSQL parses exactly (microseconds).
fn interval(d: Duration) -> String {
    format!("{} microseconds", d.as_micros())
}

/// Records that this replica is alive (every election round, on every replica); the leader
/// also removes replicas not seen for an hour.
pub async fn heartbeat(conn: &mut PgConnection, worker_id: &str, leading: bool) -> Result<(), sqlx::Error> {
    sqlx::query(
        "WITH seen AS (
             INSERT INTO orderly_replicas (worker_id, version) VALUES ($1, $2)
             ON CONFLICT (worker_id) DO UPDATE SET last_seen = now())
         DELETE FROM orderly_replicas WHERE $3 AND last_seen < now() - interval '1 hour'",
    )
    .bind(worker_id)
    .bind(env!("CARGO_PKG_VERSION"))
    .bind(leading)
    .execute(conn)
    .await
    .map(|_| ())
}

/// Removes this replica (a clean shutdown).
pub async fn leave(conn: &mut PgConnection, worker_id: &str) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM orderly_replicas WHERE worker_id = $1").bind(worker_id).execute(conn).await.map(|_| ())
}

/// A replica that is alive.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, serde::Serialize)]
pub struct Replica {
    pub worker_id: String,
    pub version: String,
    pub started_at: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
}

/// The replicas seen within `within` (on the database clock), oldest first.
pub async fn replicas(db: impl sqlx::PgExecutor<'_>, within: Duration) -> Result<Vec<Replica>, sqlx::Error> {
    sqlx::query_as(
        "SELECT worker_id, version, started_at, last_seen FROM orderly_replicas
         WHERE last_seen > now() - $1::interval ORDER BY started_at",
    )
    .bind(interval(within))
    .fetch_all(db)
    .await
}
