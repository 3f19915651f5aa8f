//! The subcommands, one file each: what an operator types, printed for humans (or JSON with
//! `--json`). They parse arguments and format output; the work goes through `actions` (what
//! an operator can do, shared with the admin API) or `db`.

pub mod admin_token;
pub mod budgets;
pub mod cancel;
pub mod check_config;
pub mod costs;
pub mod dead_letters;
pub mod decide;
pub mod enqueue;
pub mod escalations;
pub mod health;
pub mod items;
pub mod migrate;
pub mod roles;
pub mod schedules;
pub mod status;

use crate::config::Settings;
use crate::db;
use crate::net::redact_url;
use sqlx::PgPool;

/// Connects, explaining how to fix an unreachable database (`orderly migrate`, `orderly
/// roles`: a database that may not be migrated yet).
pub async fn connect_unmigrated(settings: &Settings) -> anyhow::Result<PgPool> {
    db::connect(&settings.database.pool()).await.map_err(|e| unreachable_hint(&settings.database.url, e))
}

/// Connects to a migrated database: one that orderly never migrated is said once, with what
/// to run, instead of the first statement's error about a missing table.
pub async fn connect(settings: &Settings) -> anyhow::Result<PgPool> {
    let pool = connect_unmigrated(settings).await?;
    let mut conn = pool.acquire().await?;
    if db::gauges::applied_migration(&mut conn).await?.is_none() {
        anyhow::bail!(
            "the database at {} has no orderly tables: run `orderly migrate` first",
            redact_url(&settings.database.url)
        );
    }
    drop(conn);
    Ok(pool)
}

/// Turns a failure to connect into a message that names the cause and the next step.
pub fn unreachable_hint(url: &str, e: sqlx::Error) -> anyhow::Error {
    let shown = redact_url(url);
    let code = match &e {
        sqlx::Error::Database(d) => d.code().map(|c| c.into_owned()),
        _ => None,
    };
    match code.as_deref() {
        Some("3D000") => anyhow::anyhow!(
            "the database at {shown} does not exist: run `orderly migrate` to create it and apply the migrations, \
             or point DATABASE_URL at the right database"
        ),
        Some(c) if c.starts_with("28") => anyhow::anyhow!(
            "PostgreSQL at {shown} refused the login ({}): check the user and password in DATABASE_URL \
             and the server's pg_hba.conf",
            db::describe_error(&e)
        ),
        Some(_) => anyhow::anyhow!("PostgreSQL at {shown} refused the connection: {}", db::describe_error(&e)),
        None => anyhow::anyhow!(
            "cannot reach PostgreSQL at {shown}: {}\n\
             Start PostgreSQL (e.g. `pg_ctlcluster 15 main start` or `systemctl start postgresql`), \
             or point orderly at it with DATABASE_URL=postgres://USER@HOST:PORT/DB",
            db::describe_error(&e)
        ),
    }
}

/// Who did it: `--actor`, else `$USER`, else `cli`.
pub fn actor(given: Option<String>) -> String {
    given.or_else(|| std::env::var("USER").ok()).unwrap_or_else(|| "cli".into())
}

/// An item's attempts, one line each (`items show`, `dead-letters show`).
pub fn print_attempts(attempts: &[db::items::AttemptRow]) {
    for a in attempts {
        println!(
            "  #{} {} agent={} {}ms {} {}",
            a.number,
            a.status,
            a.agent,
            a.duration_ms.map_or("?".to_owned(), |ms| ms.to_string()),
            a.error_code.as_deref().unwrap_or(""),
            a.error.as_deref().unwrap_or("")
        );
    }
}
