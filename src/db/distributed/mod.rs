//! Distributed mode (docs/distributed.md): orderly's tables on a Citus cluster, distributed
//! by tenant. `orderly migrate --distributed` ([`distribute`]) turns a migrated coordinator
//! database into the distributed schema (`distribute.sql`); the statements here are the
//! ones only distributed mode runs: the list of tenants with queued work that a claim
//! chooses from, and the claim that names one tenant, routed to the node holding its shards.
//! [`engine`] holds the writes after the claim (completion, renewal, rescue, roll-ups),
//! [`prune`] the pruner, [`notifications`] the outbox's claim, each one tenant per
//! statement.

use super::claim::{ClaimedItem, claimed_and_started};
use sqlx::PgPool;
use std::time::Duration;
use uuid::Uuid;

/// The distributed schema, applied after the migrations (see the file's own comments).
pub mod engine;
pub mod notifications;
pub mod prune;

pub use engine::Answered;

const DISTRIBUTE_SQL: &str = include_str!("../distribute.sql");

/// The engine's session settings on a Citus coordinator: those of one PostgreSQL
/// ([`super::ENGINE_PLANNER_SETTINGS`]) but with a plan made for each execution. Citus routes
/// a statement by the tenant's value, which a generic plan does not have: every routed
/// statement then fails with "could not create distributed plan".
pub const ENGINE_PLANNER_SETTINGS: [(&str, &str); 4] =
    [("enable_seqscan", "off"), ("enable_bitmapscan", "off"), ("plan_cache_mode", "force_custom_plan"), ("jit", "off")];

/// Binds the tenant as a statement's last parameter when there is one: the statements whose
/// cluster form names a tenant (`AND tenant_id = $n`), and whose single-node form has no such
/// parameter.
pub(crate) trait BindTenant {
    fn bind_tenant(self, tenant: Option<Uuid>) -> Self;
}

impl<'q> BindTenant for sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    fn bind_tenant(self, tenant: Option<Uuid>) -> Self {
        match tenant {
            Some(tenant) => self.bind(tenant),
            None => self,
        }
    }
}

impl<'q, O> BindTenant for sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments> {
    fn bind_tenant(self, tenant: Option<Uuid>) -> Self {
        match tenant {
            Some(tenant) => self.bind(tenant),
            None => self,
        }
    }
}

impl<'q, O> BindTenant for sqlx::query::QueryScalar<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments> {
    fn bind_tenant(self, tenant: Option<Uuid>) -> Self {
        match tenant {
            Some(tenant) => self.bind(tenant),
            None => self,
        }
    }
}

/// A statement written once for both layouts (the on-call actions in db::dead_letters,
/// db::approvals and db::items). In `sql`, `{t:ALIAS}` stands for ` AND ALIAS.tenant_id =
/// $n`, `{tc}` for `tenant_id, ` (an INSERT's column list or conflict target), `{tv}` for
/// `$n, ` (its values) and `{j:A.B}` for ` AND A.tenant_id = B.tenant_id` (a join), where
/// `$n` is the tenant's parameter, bound last ([`BindTenant`]); on one PostgreSQL (`tenant`
/// None) each is empty.
pub(crate) fn scoped(sql: &str, tenant: Option<Uuid>, n: usize) -> sqlx::AssertSqlSafe<String> {
    sqlx::AssertSqlSafe(expand(sql, tenant.is_some(), Some(n)))
}

/// A read across every tenant written once for both layouts: `{j:A.B}` joins on the tenant
/// on a cluster (Citus joins distributed tables only on it), as in [`scoped`].
pub(crate) fn joined(sql: &str, topology: Topology) -> sqlx::AssertSqlSafe<String> {
    sqlx::AssertSqlSafe(expand(sql, topology == Topology::Distributed, None))
}

fn expand(sql: &str, cluster: bool, n: Option<usize>) -> String {
    let mut out = String::with_capacity(sql.len() + 64);
    let mut rest = sql;
    // Only these markers are read; any other brace (a JSON path, an empty array) stays.
    while let Some(at) = ["{t:", "{tc}", "{tv}", "{j:"].iter().filter_map(|m| rest.find(m)).min() {
        out.push_str(&rest[..at]);
        let end = at + rest[at..].find('}').expect("a marker ends with }");
        let marker = &rest[at + 1..end];
        if cluster {
            let n = || n.expect("a tenant's marker in a statement that names no tenant");
            match marker {
                "tc" => out.push_str("tenant_id, "),
                "tv" => out.push_str(&format!("${}, ", n())),
                join if join.starts_with("j:") => {
                    let (a, b) = join[2..].split_once('.').expect("a join marker is {j:A.B}");
                    out.push_str(&format!(" AND {a}.tenant_id = {b}.tenant_id"));
                }
                alias => out.push_str(&format!(" AND {}.tenant_id = ${}", &alias[2..], n())),
            }
        }
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

/// Where an on-call action on one row runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Placement {
    /// One PostgreSQL: the statements as written.
    Single,
    /// A Citus cluster: the row's tenant, whose node every statement names.
    Tenant(Uuid),
    /// A Citus cluster without that row.
    Missing,
}

impl Placement {
    /// The tenant to name, or None on one PostgreSQL; `missing` when the row is not there.
    pub(crate) fn tenant<E>(self, missing: impl FnOnce() -> E) -> Result<Option<Uuid>, E> {
        match self {
            Placement::Single => Ok(None),
            Placement::Tenant(tenant) => Ok(Some(tenant)),
            Placement::Missing => Err(missing()),
        }
    }
}

/// The rows an on-call action starts from, by id.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Row {
    Item,
    Order,
    DeadLetter,
}

/// Where the row `id` lives: on a cluster, its tenant, read across the shards (the action's
/// statements then run on that tenant's node only).
pub(crate) async fn placement(pool: &PgPool, row: Row, id: Uuid) -> Result<Placement, sqlx::Error> {
    if topology(pool).await? == Topology::Single {
        return Ok(Placement::Single);
    }
    let sql = match row {
        Row::Item => "SELECT tenant_id FROM work_items WHERE id = $1",
        Row::Order => "SELECT tenant_id FROM work_orders WHERE id = $1",
        Row::DeadLetter => "SELECT tenant_id FROM dead_letters WHERE id = $1",
    };
    let tenant: Option<Uuid> = sqlx::query_scalar(sql).bind(id).fetch_optional(pool).await?;
    Ok(tenant.map_or(Placement::Missing, Placement::Tenant))
}

/// How a database is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topology {
    /// One PostgreSQL (the default).
    Single,
    /// A Citus coordinator with orderly's tables distributed by tenant.
    Distributed,
}

/// Whether `work_orders` is a Citus distributed table here. A database without Citus is
/// [`Topology::Single`].
pub async fn topology(pool: &PgPool) -> Result<Topology, sqlx::Error> {
    let distributed: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus')
            AND to_regclass('pg_dist_partition') IS NOT NULL
            AND EXISTS (SELECT 1 FROM pg_catalog.pg_class c
                        JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                        WHERE n.nspname = 'public' AND c.relname = 'work_orders')",
    )
    .fetch_one(pool)
    .await?;
    if !distributed {
        return Ok(Topology::Single);
    }
    // pg_dist_partition exists only with Citus: read it in a second statement.
    let partitioned: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_dist_partition
                        WHERE logicalrelid = 'work_orders'::regclass AND partmethod = 'h')",
    )
    .fetch_one(pool)
    .await?;
    Ok(if partitioned { Topology::Distributed } else { Topology::Single })
}

/// Why [`distribute`] refused.
#[derive(Debug, thiserror::Error)]
pub enum DistributeError {
    #[error("the database has no Citus extension (CREATE EXTENSION citus on the coordinator and every worker first)")]
    NoCitus,
    #[error("the Citus cluster has no worker nodes (SELECT citus_add_node(...) on the coordinator first)")]
    NoWorkers,
    #[error("orderly's tables are already distributed")]
    AlreadyDistributed,
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// Distributes orderly's tables over the Citus cluster, in one transaction (see
/// `distribute.sql`). Rows already present are given their tenant and moved to the shards.
pub async fn distribute(pool: &PgPool) -> Result<(), DistributeError> {
    let citus: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus')")
        .fetch_one(pool)
        .await?;
    if !citus {
        return Err(DistributeError::NoCitus);
    }
    if topology(pool).await? == Topology::Distributed {
        return Err(DistributeError::AlreadyDistributed);
    }
    let workers: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_dist_node WHERE noderole = 'primary' AND groupid <> 0")
            .fetch_one(pool)
            .await?;
    if workers == 0 {
        return Err(DistributeError::NoWorkers);
    }
    let mut tx = pool.begin().await?;
    // One statement at a time: Citus propagates some DDL (CREATE FUNCTION) with the text of
    // the query it came in, which must then be that statement alone.
    for statement in statements(DISTRIBUTE_SQL) {
        sqlx::raw_sql(sqlx::AssertSqlSafe(statement)).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// The statements of a SQL script: split at each `;` that ends a line outside a
/// dollar-quoted body and outside a quoted string. Comments are dropped with the blank text.
fn statements(script: &str) -> Vec<String> {
    let (mut out, mut current) = (Vec::new(), String::new());
    let mut dollar: Option<String> = None;
    let mut quoted = false;
    for line in script.lines() {
        if dollar.is_none() && !quoted && line.trim_start().starts_with("--") {
            continue;
        }
        let mut rest = line;
        while !rest.is_empty() {
            match &dollar {
                Some(tag) => match rest.find(tag.as_str()) {
                    Some(at) => {
                        rest = &rest[at + tag.len()..];
                        dollar = None;
                    }
                    None => rest = "",
                },
                None => {
                    let quote = rest.find('\'');
                    let open = rest.find('$').and_then(|at| {
                        let tail = &rest[at + 1..];
                        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))?;
                        (tail.as_bytes()[end] == b'$').then(|| (at, rest[at..at + end + 2].to_string()))
                    });
                    match (quote, open) {
                        (Some(q), Some((d, _))) if q < d || quoted => {
                            quoted = !quoted;
                            rest = &rest[q + 1..];
                        }
                        (Some(q), None) => {
                            quoted = !quoted;
                            rest = &rest[q + 1..];
                        }
                        (_, Some((d, tag))) if !quoted => {
                            rest = &rest[d + tag.len()..];
                            dollar = Some(tag);
                        }
                        _ => rest = "",
                    }
                }
            }
        }
        current.push_str(line);
        current.push('\n');
        if dollar.is_none() && !quoted && line.trim_end().ends_with(';') {
            out.push(std::mem::take(&mut current));
        }
    }
    if !current.trim().is_empty() {
        out.push(current);
    }
    out
}

/// Up to `limit` tenants listed as having queued items (`orderly_tenants`), longest listed
/// first. One statement over every shard: a claimer reads it once per round, not per claim.
/// The limit is written into the statement: Citus cannot plan a multi-shard `LIMIT $1`.
pub async fn listed_tenants(pool: &PgPool, limit: i64) -> Result<Vec<Uuid>, sqlx::Error> {
    let sql = format!("SELECT tenant_id FROM orderly_tenants ORDER BY since, tenant_id LIMIT {limit}");
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).fetch_all(pool).await
}

/// Removes `tenant` from the list if it has no queued item left, unless an upstream or a
/// retry is making one queued right now (it then stays). Runs on the node that holds the
/// tenant's shards (a Citus distributed function). Whether it was removed.
pub async fn forget_tenant(pool: &PgPool, tenant: Uuid) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT orderly_forget_tenant($1)").bind(tenant).fetch_one(pool).await
}

/// The claim in distributed mode: [`super::claim::CLAIM_SQL`] for one tenant, every table
/// filtered by it so that Citus routes the whole statement to one shard group.
/// Parameters: those of the single-node claim, then $5 the tenant.
pub const CLAIM_TENANT_SQL: &str = concat!(
    r#"
WITH next AS (
    SELECT ctid FROM work_items
    WHERE tenant_id = $5 AND status = 'QUEUED' AND deps_pending = 0 AND run_at <= now()
    ORDER BY priority DESC, run_at
    LIMIT $1
    FOR UPDATE SKIP LOCKED
"#,
    claimed_and_started!("w.tenant_id = $5 AND", "o.tenant_id = $5 AND", "s.tenant_id = $5 AND")
);

/// Claims up to `limit` runnable items of one tenant ([`CLAIM_TENANT_SQL`]).
pub async fn claim_tenant(
    pool: &PgPool,
    worker_id: &str,
    limit: i64,
    lease: Duration,
    max_content_bytes: i32,
    tenant: Uuid,
) -> Result<Vec<ClaimedItem>, sqlx::Error> {
    sqlx::query_as(CLAIM_TENANT_SQL)
        .bind(limit)
        .bind(lease.as_millis() as f64)
        .bind(worker_id)
        .bind(max_content_bytes)
        .bind(tenant)
        .fetch_all(pool)
        .await
}

/// The engine's loops that do not run on a Citus cluster yet, by task name: their statements
/// read or lock across tenants (the agent-limits waker).
/// Empty on one PostgreSQL.
pub fn loops_off(topology: Topology) -> &'static [&'static str] {
    match topology {
        Topology::Single => &[],
        Topology::Distributed => &["limits_waker"],
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_scoped_statement_names_the_tenant_only_on_a_cluster() {
        let sql = "INSERT INTO t ({tc}a) SELECT {tv}x.a FROM x JOIN y ON y.id = x.id{t:y}{j:y.x} WHERE x.id = $1{t:x} AND x.p = '{}'";
        assert_eq!(
            super::scoped(sql, None, 2).0,
            "INSERT INTO t (a) SELECT x.a FROM x JOIN y ON y.id = x.id WHERE x.id = $1 AND x.p = '{}'"
        );
        assert_eq!(
            super::scoped(sql, Some(uuid::Uuid::nil()), 2).0,
            "INSERT INTO t (tenant_id, a) SELECT $2, x.a FROM x JOIN y ON y.id = x.id AND y.tenant_id = $2 \
             AND y.tenant_id = x.tenant_id WHERE x.id = $1 AND x.tenant_id = $2 AND x.p = '{}'"
        );
        assert_eq!(
            super::joined("SELECT 1 FROM x JOIN y ON y.id = x.id{j:y.x}", super::Topology::Single).0,
            "SELECT 1 FROM x JOIN y ON y.id = x.id"
        );
        assert_eq!(
            super::joined("SELECT 1 FROM x JOIN y ON y.id = x.id{j:y.x}", super::Topology::Distributed).0,
            "SELECT 1 FROM x JOIN y ON y.id = x.id AND y.tenant_id = x.tenant_id"
        );
    }

    #[test]
    fn a_script_splits_at_line_ends_outside_bodies_and_strings() {
        let script = "-- a comment;\nSET x = 1;\nCREATE FUNCTION f() RETURNS int AS $f$\nBEGIN\n  RETURN 1;\nEND\n$f$;\n\
                      INSERT INTO t VALUES ('a;\nb;');\nDO $$ BEGIN PERFORM 1; END $$;\n";
        let got = super::statements(script);
        assert_eq!(got.len(), 4, "{got:?}");
        assert!(got[1].starts_with("CREATE FUNCTION") && got[1].trim_end().ends_with("$f$;"));
        assert!(got[2].contains("'a;\nb;'"));
        assert!(got[3].starts_with("DO $$"));
        // Every top-level statement of the script starts a line of its own.
        let starts = super::DISTRIBUTE_SQL
            .lines()
            .filter(|l| ["SET ", "CREATE ", "DROP ", "SELECT ", "DO ", "INSERT "].iter().any(|s| l.starts_with(s)))
            .count();
        assert_eq!(super::statements(super::DISTRIBUTE_SQL).len(), starts);
    }
}
