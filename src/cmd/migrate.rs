//! `orderly migrate`: create the database if it is missing, apply the migrations; with
//! `--distributed`, then distribute the tables over a Citus cluster (`db::distributed`).

use super::unreachable_hint;
use crate::cli::MigrateArgs;
use crate::config::Settings;
use crate::db;
use crate::net::redact_url;
use anyhow::Context;

pub async fn run(settings: &Settings, args: &MigrateArgs) -> anyhow::Result<()> {
    let created =
        db::ensure_database(&settings.database.url).await.map_err(|e| unreachable_hint(&settings.database.url, e))?;
    let pool = super::connect_unmigrated(settings).await?;
    db::migrate(&pool).await.context("applying migrations")?;
    println!(
        "{} {}: migrations applied",
        if created { "created" } else { "database" },
        redact_url(&settings.database.url)
    );
    if args.distributed {
        db::distributed::distribute(&pool).await.context("distributing the tables")?;
        println!("{}: tables distributed by tenant", redact_url(&settings.database.url));
    }
    Ok(())
}
