//! The subcommands, one file each: what an operator types, printed for humans (or JSON with
//! `--json`). They parse arguments and format output; the work goes through `actions` (what
//! an operator can do, shared with the admin API) or `db`.

pub mod bench;
pub mod check_config;
pub mod dead_letters;
pub mod decide;
pub mod demo;
pub mod enqueue;
pub mod escalations;
pub mod migrate;
pub mod status;

use crate::config::{Settings, redact_url};
use crate::db;
use sqlx::PgPool;

/// Connects, explaining how to fix an unreachable database.
pub async fn connect(settings: &Settings) -> anyhow::Result<PgPool> {
    db::connect(&settings.database).await.map_err(|e| unreachable_hint(&settings.database.url, e))
}

/// Turns a connection failure into a message that says what to do.
pub fn unreachable_hint(url: &str, e: sqlx::Error) -> anyhow::Error {
    anyhow::anyhow!(
        "cannot reach PostgreSQL at {}: {e}\n\
         Start PostgreSQL (e.g. `pg_ctlcluster 15 main start` or `systemctl start postgresql`), \
         or point orderly at it with DATABASE_URL=postgres://USER@HOST:PORT/DB",
        redact_url(url)
    )
}

/// Who did it: `--actor`, else `$USER`, else `cli`.
pub fn actor(given: Option<String>) -> String {
    given.or_else(|| std::env::var("USER").ok()).unwrap_or_else(|| "cli".into())
}
