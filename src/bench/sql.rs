//! Statements used only by `orderly bench` to drive and observe a scratch database.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

pub async fn durability_settings(pool: &PgPool) -> Result<(String, String), sqlx::Error> {
    let fsync: String = sqlx::query_scalar("SELECT current_setting('fsync')").fetch_one(pool).await?;
    let sync: String = sqlx::query_scalar("SELECT current_setting('synchronous_commit')").fetch_one(pool).await?;
    Ok((fsync, sync))
}

/// One order with `n` TICKET items, as an upstream inserts it (one multi-row INSERT), with
/// the given priority (NULL: the default), `delayed` of its items delayed by up to 1 s and
/// `failing` of them marked to fail their first attempt (`"fail_once": true`, for the bench's
/// echo agent).
pub async fn insert_order_with_items(
    pool: &PgPool,
    n: usize,
    priority: Option<&str>,
    (delayed, failing): (f64, f64),
    tenant: Option<Uuid>,
) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    let order: Uuid = sqlx::query_scalar(
        "INSERT INTO work_orders (workflow_id, tenant_id, created_by, priority)
         VALUES ('bench', coalesce($2, gen_random_uuid()), gen_random_uuid(), coalesce($1::priority, 'MEDIUM'))
         RETURNING id",
    )
    .bind(priority)
    .bind(tenant)
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO work_items (work_order_id, type, content, run_at)
         SELECT $1, 'TICKET',
                CASE WHEN random() < $4 THEN '{\"fail_once\":true,\"n\":' ELSE '{\"n\":' END || g || '}',
                CASE WHEN random() < $3 THEN now() + random() * interval '1 second' ELSE now() END
         FROM generate_series(1, $2) g",
    )
    .bind(order)
    .bind(n as i32)
    .bind(delayed)
    .bind(failing)
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

/// One order of `n` items and the edges among them ((dependent, dependency) by position), in
/// one transaction, edges inserted in the order given.
pub async fn insert_graph_order(pool: &PgPool, n: usize, edges: &[(usize, usize)]) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    let ids: Vec<Uuid> = sqlx::query_scalar(
        "WITH o AS (INSERT INTO work_orders (workflow_id, tenant_id, created_by)
                    VALUES ('bench', gen_random_uuid(), gen_random_uuid()) RETURNING id),
              i AS (INSERT INTO work_items (work_order_id, type, content)
                    SELECT o.id, 'TICKET', '{\"n\":' || g || '}' FROM o, generate_series(0, $1 - 1) g
                    RETURNING id, content)
         SELECT id FROM i ORDER BY (content::jsonb->>'n')::int",
    )
    .bind(n as i32)
    .fetch_all(&mut *tx)
    .await?;
    let (dependents, dependencies): (Vec<Uuid>, Vec<Uuid>) = edges.iter().map(|(a, b)| (ids[*a], ids[*b])).unzip();
    sqlx::query(
        "INSERT INTO work_item_dependencies (work_item_id, depends_on_id)
         SELECT * FROM unnest($1::uuid[], $2::uuid[])",
    )
    .bind(&dependents)
    .bind(&dependencies)
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

/// For every item with dependencies: milliseconds from the finish of its last dependency to
/// the start of its first attempt (the release-to-start latency).
pub async fn release_latencies(pool: &PgPool) -> Result<Vec<f64>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT (extract(epoch FROM (SELECT min(a.started_at) FROM attempts a WHERE a.work_item_id = d.item) - d.released)
                 * 1000)::float8
         FROM (SELECT e.work_item_id AS item, max(p.processed_at) AS released
               FROM work_item_dependencies e JOIN work_items p ON p.id = e.depends_on_id
               GROUP BY e.work_item_id) d",
    )
    .fetch_all(pool)
    .await
}

/// `orders` orders of `per_order` items in ONE transaction, the rows of different orders
/// interleaved (a nightly bulk load written row by row across its orders).
pub async fn insert_bulk_interleaved(pool: &PgPool, orders: usize, per_order: usize) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    let ids: Vec<Uuid> = sqlx::query_scalar(
        "INSERT INTO work_orders (workflow_id, tenant_id, created_by)
         SELECT 'bench', gen_random_uuid(), gen_random_uuid() FROM generate_series(1, $1) RETURNING id",
    )
    .bind(orders as i32)
    .fetch_all(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO work_items (work_order_id, type, content)
         SELECT ($1::uuid[])[1 + g % $2], 'TICKET', '{\"n\":' || g || '}' FROM generate_series(0, $3 - 1) g",
    )
    .bind(&ids)
    .bind(orders as i32)
    .bind((orders * per_order) as i32)
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

/// Finished history: `n` COMPLETED items (100 per order) with one attempt and one approval each.
pub async fn prefill_history(pool: &PgPool, n: i64) -> Result<(), sqlx::Error> {
    let mut done = 0;
    while done < n {
        let chunk = (n - done).min(100_000);
        sqlx::query(
            "WITH o AS (
                 INSERT INTO work_orders (workflow_id, tenant_id, created_by, status)
                 SELECT 'history', gen_random_uuid(), gen_random_uuid(), 'COMPLETED'
                 FROM generate_series(1, ceil($1 / 100.0)::int) RETURNING id
             ), numbered AS (SELECT id, row_number() OVER () AS k FROM o),
             i AS (
                 INSERT INTO work_items (work_order_id, type, content, status, result, processed_at, attempt)
                 SELECT numbered.id, 'TICKET', '{}', 'COMPLETED', '{\"echo\":{}}', now(), 1
                 FROM generate_series(0, $1 - 1) g JOIN numbered ON numbered.k = g / 100 + 1
                 RETURNING id
             ), a AS (
                 INSERT INTO attempts (work_item_id, attempt_number, agent_id, status, input, output, completed_at, duration_ms)
                 SELECT id, 1, 'echo', 'COMPLETED', '{}', '{\"echo\":{}}', now(), 1 FROM i
             )
             INSERT INTO approval_events (work_item_id, approver_id, decision, policy_version)
             SELECT id, 'policy:approve_all', 'APPROVED', 'approve_all/1' FROM i",
        )
        .bind(chunk)
        .execute(pool)
        .await?;
        done += chunk;
    }
    // History in a running system is old and already vacuumed: settle it the same way, so
    // the measurement is not an autovacuum of a million fresh rows.
    sqlx::query("VACUUM (ANALYZE)").execute(pool).await?;
    Ok(())
}

/// Whether any item is unfinished (QUEUED or PROCESSING), through the partial indexes.
pub async fn any_live(pool: &PgPool) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM work_items WHERE status = 'QUEUED')
             OR EXISTS (SELECT 1 FROM work_items WHERE status = 'PROCESSING')",
    )
    .fetch_one(pool)
    .await
}

/// When the last attempt was recorded (database clock).
pub async fn last_completion(pool: &PgPool) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    sqlx::query_scalar("SELECT max(completed_at) FROM attempts").fetch_one(pool).await
}

/// Cumulative database counters, read before and after a phase.
#[derive(Debug, Clone, Copy, sqlx::FromRow)]
pub struct DbCounters {
    /// Committed transactions in this database.
    pub transactions: i64,
    /// Rows inserted, updated and deleted in this database.
    pub rows_written: i64,
    /// Position in the write-ahead log (bytes). Cluster-wide: other databases' writes count.
    pub wal_bytes: i64,
}

/// The counters, after this connection has published its own pending statistics (the
/// caller waits for other connections to close: theirs are published then).
pub async fn flushed_counters(pool: &PgPool) -> Result<DbCounters, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    // Takes effect at the end of this statement's transaction, before the next one reads.
    sqlx::query("SELECT pg_stat_force_next_flush()").execute(&mut *conn).await?;
    sqlx::query_as(
        "SELECT xact_commit AS transactions, tup_inserted + tup_updated + tup_deleted AS rows_written,
                (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint AS wal_bytes
         FROM pg_stat_database WHERE datname = current_database()",
    )
    .fetch_one(&mut *conn)
    .await
}

/// Client connections to this database other than the caller's.
pub async fn other_connections(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity
         WHERE datname = current_database() AND backend_type = 'client backend' AND pid <> pg_backend_pid()",
    )
    .fetch_one(pool)
    .await
}

/// Whether a daemon on this database waits for work with its wake lock held (it has
/// LISTENed, drained the queue, and INSERTs now send it a NOTIFY).
pub async fn anyone_listening(pool: &PgPool) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_locks l JOIN pg_database d ON d.oid = l.database
                        WHERE d.datname = current_database() AND l.locktype = 'advisory' AND l.granted
                          AND l.mode = 'ExclusiveLock' AND l.objsubid = 1
                          AND l.classid = ($1 >> 32)::oid AND l.objid = ($1 & 4294967295)::oid)",
    )
    .bind(crate::db::WAKE_LOCK)
    .fetch_one(pool)
    .await
}

pub async fn now(pool: &PgPool) -> Result<DateTime<Utc>, sqlx::Error> {
    crate::db::now(pool).await
}

/// Inserts one item in its own transaction; returns the item and the database time just
/// before COMMIT was sent.
pub async fn timed_single_insert(conn: &mut sqlx::PgConnection) -> Result<(Uuid, DateTime<Utc>), sqlx::Error> {
    use sqlx::Connection;
    let mut tx = conn.begin().await?;
    let order: Uuid = sqlx::query_scalar(
        "INSERT INTO work_orders (workflow_id, tenant_id, created_by) VALUES ('pickup', gen_random_uuid(), gen_random_uuid()) RETURNING id",
    )
    .fetch_one(&mut *tx)
    .await?;
    let inserted: (Uuid, DateTime<Utc>) = sqlx::query_as(
        "INSERT INTO work_items (work_order_id, type, content) VALUES ($1, 'TICKET', '{}') RETURNING id, clock_timestamp() AS t",
    )
    .bind(order)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(inserted)
}

/// Milliseconds from each insert to its attempt's start (the claim, on the database clock).
pub async fn pickup_latencies(pool: &PgPool, samples: &[(Uuid, DateTime<Utc>)]) -> Result<Vec<f64>, sqlx::Error> {
    let ids: Vec<Uuid> = samples.iter().map(|s| s.0).collect();
    let started: std::collections::HashMap<Uuid, DateTime<Utc>> =
        sqlx::query_as("SELECT work_item_id, started_at FROM attempts WHERE work_item_id = ANY($1)")
            .bind(&ids)
            .fetch_all(pool)
            .await?
            .into_iter()
            .collect();
    Ok(samples
        .iter()
        .filter_map(|(id, inserted)| {
            started.get(id).map(|s| (*s - *inserted).num_microseconds().unwrap_or(0) as f64 / 1000.0)
        })
        .collect())
}

/// Milliseconds from INSERT to recorded completion for items created since `since`.
pub async fn end_to_end_since(pool: &PgPool, since: DateTime<Utc>) -> Result<Vec<f64>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT (extract(epoch FROM a.completed_at - i.created_at) * 1000)::float8
         FROM work_items i JOIN attempts a ON a.work_item_id = i.id
         WHERE i.created_at >= $1 AND a.status = 'COMPLETED'",
    )
    .bind(since)
    .fetch_all(pool)
    .await
}

/// The table an upstream's INSERT is compared with: `work_items`' columns, defaults and
/// constraints, its foreign key and the seed's indexes, without orderly's trigger and
/// queue indexes; and one order for both tables' rows. Returns the order.
pub async fn create_plain_copy(pool: &PgPool) -> Result<Uuid, sqlx::Error> {
    sqlx::raw_sql(
        "CREATE TABLE work_items_plain (LIKE work_items INCLUDING DEFAULTS INCLUDING CONSTRAINTS);
         ALTER TABLE work_items_plain ALTER COLUMN priority SET DEFAULT 'MEDIUM',
           ALTER COLUMN id SET DEFAULT gen_random_uuid(),
           ADD PRIMARY KEY (id),
           ADD FOREIGN KEY (work_order_id) REFERENCES work_orders(id) ON DELETE CASCADE;
         CREATE INDEX ON work_items_plain (work_order_id, status, type);",
    )
    .execute(pool)
    .await?;
    sqlx::query_scalar(
        "INSERT INTO work_orders (workflow_id, tenant_id, created_by) VALUES ('first-insert', gen_random_uuid(), gen_random_uuid()) RETURNING id",
    )
    .fetch_one(pool)
    .await
}

/// Which table [`first_insert_ms`] writes to.
#[derive(Debug, Clone, Copy)]
pub enum InsertTarget {
    WorkItems,
    PlainCopy,
}

/// Opens a connection to `url`, then times (wall clock, milliseconds) its first statement: a
/// single-row INSERT of an item into `order`, sent as a simple query as psql would, in its
/// own transaction (so the commit is included). The connection is closed afterwards.
pub async fn first_insert_ms(url: &str, target: InsertTarget, order: Uuid) -> Result<f64, sqlx::Error> {
    use sqlx::Connection;
    let table = match target {
        InsertTarget::WorkItems => "work_items",
        InsertTarget::PlainCopy => "work_items_plain",
    };
    let mut conn = sqlx::PgConnection::connect(url).await?;
    let sql = format!("INSERT INTO {table} (work_order_id, type, content) VALUES ('{order}', 'TICKET', '{{}}')");
    let started = std::time::Instant::now();
    // The table comes from the enum and the order is a uuid: nothing from outside.
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut conn).await?;
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    conn.close().await?;
    Ok(ms)
}
