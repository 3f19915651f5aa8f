//! `orderly roles`: create or update the least-privilege roles, their grants and the
//! row-level security policies in the configured database (`db::roles`), or print the SQL.

use crate::config::Settings;
use crate::db::roles::{self, Roles};
use crate::net::redact_url;

pub async fn run(settings: &Settings, prefix: &str, print: bool) -> anyhow::Result<()> {
    let roles = Roles::new(prefix).map_err(|e| anyhow::anyhow!(e))?;
    if print {
        for statement in roles.statements() {
            println!("{statement};");
        }
        return Ok(());
    }
    let pool = super::connect_unmigrated(settings).await?;
    // Row-level security on a Citus cluster needs policies Citus can push to the shards (no
    // subquery), and the roles on every node: not built yet (docs/distributed.md).
    if crate::db::distributed::topology(&pool).await? == crate::db::distributed::Topology::Distributed {
        anyhow::bail!(
            "the least-privilege roles are not supported in distributed mode yet (docs/distributed.md): {} is a \
             Citus cluster",
            redact_url(&settings.database.url)
        );
    }
    roles::apply(&pool, &roles).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot set up the roles in {}: {} (run it as a superuser, after `orderly migrate`)",
            redact_url(&settings.database.url),
            crate::db::describe_error(&e)
        )
    })?;
    println!(
        "roles ready in {}: {} (owns the schema; runs migrations), {} (orderly run), {} (upstream INSERTs, \
         own tenant via SET orderly.tenant_id), {} (operators' commands)",
        redact_url(&settings.database.url),
        roles.owner,
        roles.daemon,
        roles.producer,
        roles.oncall
    );
    println!("they have no password: set one with ALTER ROLE … PASSWORD, or use your pg_hba.conf's method");
    Ok(())
}
