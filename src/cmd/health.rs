//! `orderly health`: can this configuration run? Connects to the database and checks that
//! every migration this binary carries is applied; exits 0 when so, 1 otherwise, with one line
//! saying why. For container HEALTHCHECKs and deployment scripts, until the admin HTTP API
//! (`/readyz`) exists. It checks the database and the schema, not a running daemon's loops
//! (under systemd, the watchdog does that: docs/operations.md).

use crate::config::Settings;
use crate::db;
use crate::net::redact_url;
use std::time::Duration;

pub async fn run(settings: &Settings, timeout: Duration) -> anyhow::Result<()> {
    let shown = redact_url(&settings.database.url);
    let check = async {
        // One connection, no more: a health check must not crowd the daemon's pool.
        let mut options = settings.database.pool();
        options.max_connections = 1;
        options.acquire_timeout = options.acquire_timeout.min(timeout);
        let pool = db::connect(&options).await.map_err(|e| super::unreachable_hint(&settings.database.url, e))?;
        let status = db::migration_status(&pool).await?;
        pool.close().await;
        anyhow::Ok(status)
    };
    let status = tokio::time::timeout(timeout, check)
        .await
        .map_err(|_| {
            anyhow::anyhow!("unhealthy: {shown} did not answer within {}", humantime::format_duration(timeout))
        })?
        .map_err(|e| anyhow::anyhow!("unhealthy: {e:#}"))?;
    if !status.pending.is_empty() {
        anyhow::bail!(
            "unhealthy: {shown} lacks {} of {} migrations (versions {:?}): run `orderly migrate`, \
             or start `orderly run` with database.migrate_on_start",
            status.pending.len(),
            status.known,
            status.pending
        );
    }
    if !status.modified.is_empty() {
        anyhow::bail!(
            "unhealthy: {shown} has migrations {:?} applied with a different text than this binary's: \
             they were edited after they were applied",
            status.modified
        );
    }
    let newer = if status.newer.is_empty() {
        String::new()
    } else {
        format!(" ({} newer ones from a later orderly)", status.newer.len())
    };
    println!("healthy: {shown} reachable, {} migrations applied{newer}", status.applied);
    Ok(())
}
