//! The admin server's statements (src/admin): the readiness probe's reads and the gauges
//! the leader refreshes.

use crate::model::ItemStatus;
use sqlx::{PgConnection, PgPool};

/// The database answers at all (the readiness probe's first read).
pub async fn ping(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT 1").execute(conn).await.map(|_| ())
}

/// The newest migration applied successfully, `None` when none is (no `_sqlx_migrations`
/// table yet: the database was never migrated).
pub async fn applied_migration(conn: &mut PgConnection) -> Result<Option<i64>, sqlx::Error> {
    match sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations WHERE success").fetch_one(conn).await {
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P01") => Ok(None),
        other => other,
    }
}

/// Live items by status and type, with the age of the oldest runnable QUEUED item of each
/// type. Public so the plan test can EXPLAIN it.
///
/// Cost: each branch names one status with `status = '…'` (and QUEUED items with or
/// without unmet dependencies), which is the predicate of a partial index
/// (`idx_work_items_ready`, `idx_work_items_waiting`, `idx_work_items_leased`,
/// `idx_work_items_held`), and the engine's connections price sequential and bitmap scans
/// out (`ENGINE_PLANNER_SETTINGS`), so the statement walks exactly the live rows of the
/// three statuses: the backlog, what is in flight and what waits for a human. COMPLETED and
/// FAILED rows, the history, which is most of the table, are never read, and neither are
/// they counted: their totals are the counters `orderly_items_finished_total`. The plan
/// test `admin::gauge_statements_read_only_the_partial_indexes` holds this.
pub const QUEUE_DEPTH_SQL: &str = r#"
SELECT 'QUEUED' AS status, item_type, sum(count)::bigint AS count, max(oldest_seconds) AS oldest_seconds FROM (
    SELECT type::text AS item_type, count(*) AS count,
           extract(epoch FROM now() - min(run_at) FILTER (WHERE run_at <= now()))::float8 AS oldest_seconds
    FROM work_items WHERE status = 'QUEUED' AND deps_pending = 0 GROUP BY type
    UNION ALL
    SELECT type::text, count(*), NULL FROM work_items WHERE status = 'QUEUED' AND deps_pending > 0 GROUP BY type
) queued GROUP BY item_type
UNION ALL
SELECT 'PROCESSING', type::text, count(*), NULL FROM work_items WHERE status = 'PROCESSING' GROUP BY type
UNION ALL
SELECT 'AWAITING_APPROVAL', type::text, count(*), NULL FROM work_items WHERE status = 'AWAITING_APPROVAL' GROUP BY type
"#;

/// Open dead letters: the partial unique index `dead_letters_open_item` holds exactly them
/// (an index-only scan); replayed and discarded letters are not read.
pub const OPEN_DEAD_LETTERS_SQL: &str = "SELECT count(*) FROM dead_letters WHERE processed_at IS NULL";

/// One row of [`QUEUE_DEPTH_SQL`].
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct Depth {
    pub status: ItemStatus,
    pub item_type: String,
    pub count: i64,
    /// QUEUED rows only: seconds the oldest runnable item of this type has waited; `None`
    /// when all of them wait for a future `run_at`.
    pub oldest_seconds: Option<f64>,
}

/// The leader's gauges: live items by status and type, and the open dead letters.
pub async fn gauges(pool: &PgPool) -> Result<(Vec<Depth>, i64), sqlx::Error> {
    let depth = sqlx::query_as(QUEUE_DEPTH_SQL).fetch_all(pool).await?;
    let open_dead_letters = sqlx::query_scalar(OPEN_DEAD_LETTERS_SQL).fetch_one(pool).await?;
    Ok((depth, open_dead_letters))
}
