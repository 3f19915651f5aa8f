//! Every SQL statement orderly runs, one named function each. Nothing outside `db` touches
//! SQL. Enum columns are bound as text and cast in SQL, so `model` stays free of sqlx; read
//! back, they are selected as text too (`status::text AS status`) and decoded into the
//! model's label enums by the `Decode` impls below. Rows are mapped by
//! `#[derive(sqlx::FromRow)]` structs (by column name) or tuples (by position).

pub mod activity;
pub mod approvals;
mod audit;
pub mod budgets;
pub mod catalog;
pub mod claim;
pub mod costs;
pub mod dead_letters;
pub mod dependencies;
pub mod distributed;
pub mod gauges;
pub mod items;
pub mod leader;
pub mod limits;
pub mod maintenance;
pub mod notifications;
pub mod orders;
pub mod queue;
pub mod reviews;
pub mod roles;
pub mod rollup;
pub mod runs;
pub mod schedules;
pub mod sla;

use crate::model::{AttemptStatus, DeadLetterReason, Decision, ItemStatus, OrderStatus, Priority};
use sqlx::migrate::MigrateDatabase;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgTypeInfo, PgValueRef};
use sqlx::{PgPool, Postgres};
use std::str::FromStr;

pub use sqlx::Error as DbError;

/// Why an operator's statement did nothing. `NotFound` and `Conflict` are the operator's to
/// fix; `Unavailable` and `Db` may pass on a retry.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error("{what} {id} not found")]
    NotFound { what: &'static str, id: uuid::Uuid },
    /// Something named (a budget) does not exist.
    #[error("{0}")]
    Missing(String),
    #[error("{0}")]
    Conflict(String),
    /// The operator's input is refused (content the item's step cannot use, a missing
    /// reason): nothing was changed. `code` is stable (an error code such as
    /// `CONTENT_INVALID_JSON`, or `REASON_REQUIRED`).
    #[error("{message}")]
    Invalid { code: &'static str, message: String },
    /// A read the decision needs failed for now (the database is restarting, say).
    #[error("{0}; nothing was changed, try again")]
    Unavailable(String),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// Decodes the model's label enums from text columns (an enum column cast `::text` in the
/// statement), parsed with their `FromStr` (the database spelling), without an allocation.
/// A label this build does not know is a decode error of that column. Decode only: values
/// are still bound with `as_str()` and cast in SQL.
macro_rules! text_labels {
    ($($label:ty),+ $(,)?) => {$(
        impl sqlx::Type<Postgres> for $label {
            fn type_info() -> PgTypeInfo {
                <&str as sqlx::Type<Postgres>>::type_info()
            }
            fn compatible(ty: &PgTypeInfo) -> bool {
                <&str as sqlx::Type<Postgres>>::compatible(ty)
            }
        }
        impl<'r> sqlx::Decode<'r, Postgres> for $label {
            fn decode(value: PgValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
                Ok(<&str as sqlx::Decode<'r, Postgres>>::decode(value)?.parse()?)
            }
        }
    )+};
}

text_labels!(ItemStatus, OrderStatus, AttemptStatus, Priority, Decision, DeadLetterReason);

/// The channel the NOTIFY trigger on `work_items` signals (migrations/0002).
pub const WORK_CHANNEL: &str = "orderly_work";

/// The advisory-lock key a daemon holds while it waits for work (migrations/0015): an INSERT
/// of a runnable item that cannot take it shared sends a NOTIFY. "ordwake" in ASCII.
pub const WAKE_LOCK: i64 = 0x006f_7264_7761_6b65;

/// Tries to take the wake lock on this session (tagged `orderly listener`, so that
/// `pg_stat_activity` shows which session listens: its last statement is LISTEN or this) (the LISTEN connection); true when taken.
pub async fn try_hold_wake_lock<'c, E>(conn: E) -> Result<bool, sqlx::Error>
where
    E: sqlx::Executor<'c, Database = sqlx::Postgres>,
{
    sqlx::query_scalar("SELECT pg_try_advisory_lock($1) /* orderly listener */").bind(WAKE_LOCK).fetch_one(conn).await
}

/// Lets the wake lock go (a daemon that is working through a backlog needs no NOTIFY);
/// tagged like [`try_hold_wake_lock`].
pub async fn release_wake_lock<'c, E>(conn: E) -> Result<(), sqlx::Error>
where
    E: sqlx::Executor<'c, Database = sqlx::Postgres>,
{
    sqlx::query_scalar::<_, bool>("SELECT pg_advisory_unlock($1) /* orderly listener */")
        .bind(WAKE_LOCK)
        .fetch_one(conn)
        .await
        .map(|_| ())
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Planner settings of the engine's connections (sent at connect, no extra round trip).
///
/// Every statement the engine runs finds its rows through a key or a partial index, by
/// design (docs/guarantees.md). The planner does not know that: with statistics taken while the
/// queue was empty (a quiet period; autovacuum behind, or off) it expects a handful of
/// queued rows, and a claim with `LIMIT 256` then reads every queued row through a bitmap
/// scan and sorts them, and the order lookups scan all of `work_orders`: each batch costs
/// O(backlog). Turning these off only prices those plans out; a statement that has no
/// index path still runs. With the plans pinned that way, each prepared statement is planned
/// once per connection (`force_generic_plan`) instead of for every batch: planning the
/// completion's 35 array parameters each time was about 3% of the database's CPU.
/// JIT is off: a statement over a small table without an index path (the budgets, the
/// paused agents) carries the disabled scan's huge estimated cost, which crossed
/// `jit_above_cost` and had PostgreSQL compile it with LLVM on every run, about 300 ms of
/// CPU each time (found by the agent limits' waker taking 300 ms to wake two items).
/// Operators' commands keep the defaults.
pub const ENGINE_PLANNER_SETTINGS: [(&str, &str); 4] = [
    ("enable_seqscan", "off"),
    ("enable_bitmapscan", "off"),
    ("plan_cache_mode", "force_generic_plan"),
    ("jit", "off"),
];

/// What a pool needs, in the db layer's own terms (the configuration fills it in).
#[derive(Debug, Clone, Copy)]
pub struct PoolOptions<'a> {
    pub url: &'a str,
    pub max_connections: u32,
    pub acquire_timeout: std::time::Duration,
    /// `idle_in_transaction_session_timeout` of every connection (zero: off).
    pub idle_in_transaction_timeout: std::time::Duration,
}

/// Opens the pool described by the settings (operators' commands). One connection is tried
/// first, so that a database that refuses connections is said at once rather than after the
/// pool's `acquire_timeout` of retries.
pub async fn connect(settings: &PoolOptions<'_>) -> Result<PgPool, DbError> {
    let options = PgConnectOptions::from_str(settings.url)?;
    sqlx::Connection::close(<sqlx::PgConnection as sqlx::Connection>::connect_with(&options).await?).await?;
    open(settings, options).await
}

/// Opens the engine's pool: [`connect`] with [`ENGINE_PLANNER_SETTINGS`], or on a Citus
/// cluster ([`distributed::Topology`]) with [`distributed::ENGINE_PLANNER_SETTINGS`].
pub async fn connect_engine(settings: &PoolOptions<'_>) -> Result<PgPool, DbError> {
    let pool = open(settings, PgConnectOptions::from_str(settings.url)?.options(ENGINE_PLANNER_SETTINGS)).await?;
    if distributed::topology(&pool).await? == distributed::Topology::Distributed {
        pool.close().await;
        let options = PgConnectOptions::from_str(settings.url)?.options(distributed::ENGINE_PLANNER_SETTINGS);
        return open(settings, options).await;
    }
    Ok(pool)
}

/// The admin server's pool for operators' reads and actions (`admin::AdminState::ops`):
/// PostgreSQL's default planner settings, connections opened on first use and closed after a
/// minute idle, `application_name = 'orderly-admin'`.
pub fn connect_lazy(settings: &PoolOptions<'_>) -> Result<PgPool, DbError> {
    let options =
        session_settings(settings, PgConnectOptions::from_str(settings.url)?).application_name("orderly-admin");
    Ok(PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .min_connections(0)
        .acquire_timeout(settings.acquire_timeout)
        .idle_timeout(std::time::Duration::from_secs(60))
        .connect_lazy_with(options))
}

/// The session settings every connection of the daemon carries (sent at connect).
pub fn session_settings(settings: &PoolOptions<'_>, options: PgConnectOptions) -> PgConnectOptions {
    let ms = settings.idle_in_transaction_timeout.as_millis().to_string();
    options.options([("idle_in_transaction_session_timeout", ms.as_str())])
}

async fn open(settings: &PoolOptions<'_>, options: PgConnectOptions) -> Result<PgPool, DbError> {
    let options = session_settings(settings, options).application_name("orderly");
    PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .acquire_timeout(settings.acquire_timeout)
        .connect_with(options)
        .await
}

/// Creates the database named in `url` if it does not exist. Several replicas may run this
/// at once (`orderly migrate`, or `orderly run` with `migrate_on_start`, as they start):
/// exactly one creates it, the others return `false`.
pub async fn ensure_database(url: &str) -> Result<bool, DbError> {
    if Postgres::database_exists(url).await? {
        return Ok(false);
    }
    match Postgres::create_database(url).await {
        Ok(()) => Ok(true),
        // Another replica created it between the check and the create: 42P04 if its create
        // had committed when ours started, 23505 (pg_database_datname_index) if both were
        // under way at once.
        Err(sqlx::Error::Database(e)) if matches!(e.code().as_deref(), Some("42P04") | Some("23505")) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Drops the database named in `url` (demo and bench scratch databases).
pub async fn drop_database(url: &str) -> Result<(), DbError> {
    if Postgres::database_exists(url).await? {
        Postgres::force_drop_database(url).await?;
    }
    Ok(())
}

/// Applies pending migrations (idempotent; serialized across replicas by an advisory lock).
/// A database that is already current is left alone, without the lock and without creating
/// anything, so that a role without DDL rights (`orderly roles`: the daemon) can start with
/// `migrate_on_start` once the owner has migrated.
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    if migration_status(pool).await.is_ok_and(|status| status.current()) {
        return Ok(());
    }
    MIGRATOR.run(pool).await
}

/// Applies the migrations up to and including `version`, no further: a database as an
/// earlier release left it (the upgrade test migrates in place from there).
pub async fn migrate_to(pool: &PgPool, version: i64) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run_to(version, pool).await
}

/// The newest migration this build carries (`/readyz` compares it with the database's).
pub fn newest_migration() -> Option<i64> {
    MIGRATOR.iter().map(|m| m.version).max()
}

/// How the database's schema compares with the migrations this binary carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationStatus {
    /// Migrations this binary knows.
    pub known: usize,
    /// Those of them applied successfully.
    pub applied: usize,
    /// Versions this binary knows that are missing or failed (`orderly migrate` applies them).
    pub pending: Vec<i64>,
    /// Applied versions this binary does not know (a newer orderly migrated the database).
    pub newer: Vec<i64>,
    /// Applied versions whose SQL differs from this binary's (a migration edited after it
    /// was applied: the migrator refuses to run).
    pub modified: Vec<i64>,
}

impl MigrationStatus {
    /// Nothing to apply and nothing the migrator would refuse.
    pub fn current(&self) -> bool {
        self.pending.is_empty() && self.modified.is_empty()
    }
}

/// Reads `_sqlx_migrations` (`orderly health`). A database never migrated has every version
/// pending.
pub async fn migration_status(pool: &PgPool) -> Result<MigrationStatus, DbError> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL").fetch_one(pool).await?;
    let rows: Vec<(i64, Vec<u8>)> = if exists {
        sqlx::query_as("SELECT version, checksum FROM _sqlx_migrations WHERE success ORDER BY version")
            .fetch_all(pool)
            .await?
    } else {
        Vec::new()
    };
    let applied: std::collections::HashMap<i64, Vec<u8>> = rows.into_iter().collect();
    let known: Vec<_> = MIGRATOR.iter().filter(|m| m.migration_type.is_up_migration()).collect();
    let mut newer: Vec<i64> = applied.keys().copied().filter(|v| !known.iter().any(|m| m.version == *v)).collect();
    newer.sort_unstable();
    Ok(MigrationStatus {
        known: known.len(),
        applied: known.iter().filter(|m| applied.contains_key(&m.version)).count(),
        pending: known.iter().filter(|m| !applied.contains_key(&m.version)).map(|m| m.version).collect(),
        newer,
        modified: known
            .iter()
            .filter(|m| applied.get(&m.version).is_some_and(|sum| sum.as_slice() != &*m.checksum))
            .map(|m| m.version)
            .collect(),
    })
}

/// The database clock: every time decision uses it, never the host's.
pub async fn now(pool: &PgPool) -> Result<chrono::DateTime<chrono::Utc>, DbError> {
    sqlx::query_scalar("SELECT now()").fetch_one(pool).await
}

/// True when the error means the database is unreachable (as opposed to a bad statement).
pub fn is_connection_error(e: &DbError) -> bool {
    matches!(e, DbError::Io(_) | DbError::PoolTimedOut | DbError::PoolClosed | DbError::Tls(_) | DbError::Protocol(_))
        || matches!(e, DbError::Database(d) if d.code().is_some_and(|c| c.starts_with("57P") || c.starts_with("08")))
}

/// A database error as an operator reads it: PostgreSQL's message, its detail and SQLSTATE,
/// without the server's internal source position.
pub fn describe_error(error: &DbError) -> String {
    match error {
        DbError::Database(d) => {
            let detail = d.try_downcast_ref::<sqlx::postgres::PgDatabaseError>().and_then(|p| p.detail());
            match (detail, d.code()) {
                (Some(detail), Some(code)) => format!("{} ({detail}; SQLSTATE {code})", d.message()),
                (None, Some(code)) => format!("{} (SQLSTATE {code})", d.message()),
                (_, None) => d.message().to_owned(),
            }
        }
        other => other.to_string(),
    }
}

/// True when the database refused the statement because of a value in it, so that running
/// it again with the same values fails the same way: data exceptions (class 22: characters
/// `text` or `jsonb` cannot hold, numbers out of range), integrity violations (23), program
/// limits (54: nesting too deep, a value too large), and values the driver cannot encode or
/// decode. Everything else (connection lost, restart, timeouts, conflicts) may pass on retry.
pub fn is_refusal(e: &DbError) -> bool {
    match e {
        DbError::Encode(_) | DbError::Decode(_) | DbError::ColumnDecode { .. } => true,
        DbError::Database(d) => {
            d.code().is_some_and(|c| c.starts_with("22") || c.starts_with("23") || c.starts_with("54"))
        }
        _ => false,
    }
}

/// Serialization failures and deadlocks: the transaction can simply be run again.
pub fn is_retryable_conflict(e: &DbError) -> bool {
    matches!(e, DbError::Database(d) if matches!(d.code().as_deref(), Some("40001") | Some("40P01")))
}
