//! The replicas' minute-by-minute activity (migration 0025): written by each daemon's
//! recorder (`worker::activity`), read for the overview's charts.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

/// What one replica did since its last record.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Delta {
    pub completed: i64,
    pub failed: i64,
    pub dead_lettered: i64,
    pub claimed: i64,
    /// Claims per queue-wait bucket (`metrics::QUEUE_WAIT_BUCKETS`, then one past the last).
    pub wait_buckets: Vec<i64>,
}

impl Delta {
    pub fn is_empty(&self) -> bool {
        self.completed == 0
            && self.failed == 0
            && self.dead_lettered == 0
            && self.claimed == 0
            && self.wait_buckets.iter().all(|n| *n == 0)
    }
}

/// Adds `delta` to this replica's row of the current minute (database clock).
pub async fn record(pool: &PgPool, worker_id: &str, delta: &Delta) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO orderly_activity (minute, worker_id, completed, failed, dead_lettered, claimed, wait_buckets)
         VALUES (date_trunc('minute', now()), $1, $2, $3, $4, $5, $6)
         ON CONFLICT (minute, worker_id) DO UPDATE SET
             completed = orderly_activity.completed + EXCLUDED.completed,
             failed = orderly_activity.failed + EXCLUDED.failed,
             dead_lettered = orderly_activity.dead_lettered + EXCLUDED.dead_lettered,
             claimed = orderly_activity.claimed + EXCLUDED.claimed,
             wait_buckets = ARRAY(SELECT coalesce(a, 0) + coalesce(b, 0)
                                  FROM unnest(orderly_activity.wait_buckets, EXCLUDED.wait_buckets) AS u(a, b))",
    )
    .bind(worker_id)
    .bind(delta.completed)
    .bind(delta.failed)
    .bind(delta.dead_lettered)
    .bind(delta.claimed)
    .bind(&delta.wait_buckets)
    .execute(pool)
    .await
    .map(|_| ())
}

/// Deletes the rows older than two days (any replica's: a replica that is gone leaves its own).
pub async fn forget_old(pool: &PgPool) -> Result<u64, sqlx::Error> {
    sqlx::query("DELETE FROM orderly_activity WHERE minute < now() - interval '2 days'")
        .execute(pool)
        .await
        .map(|r| r.rows_affected())
}

/// One minute of one replica.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Minute {
    pub minute: DateTime<Utc>,
    pub completed: i64,
    pub failed: i64,
    pub dead_lettered: i64,
    pub claimed: i64,
    pub wait_buckets: Vec<i64>,
}

/// Every replica's minutes of the last day, oldest first, and the database clock.
pub async fn last_day(pool: &PgPool) -> Result<(Vec<Minute>, DateTime<Utc>), sqlx::Error> {
    let now: DateTime<Utc> = sqlx::query_scalar("SELECT now()").fetch_one(pool).await?;
    let rows = sqlx::query_as(
        "SELECT minute, completed, failed, dead_lettered, claimed, wait_buckets FROM orderly_activity
         WHERE minute > now() - interval '1 day' ORDER BY minute",
    )
    .fetch_all(pool)
    .await?;
    Ok((rows, now))
}
