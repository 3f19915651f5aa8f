//! The SLA clocks' statements (db::sla): per clock, firing a rule's due levels and resolving
//! what the clock no longer runs for. Each comes in two forms from one text: for one
//! PostgreSQL, and for a Citus cluster (docs/distributed.md), where every table is also read
//! by the tenant (`$8` when firing, `$2` when resolving) so that the statement runs on the
//! node holding that tenant's shards, and the escalation it writes carries the tenant.

use super::Rule;
use serde::Serialize;
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

/// `single` on one PostgreSQL; `("$n")` on a cluster: the filter that names the tenant.
macro_rules! tenant_of {
    (single, $alias:literal) => {
        ""
    };
    (($param:literal), $alias:literal) => {
        concat!(" AND ", $alias, ".tenant_id = ", $param)
    };
}

/// Builds one clock's firing statement around its candidate query. Candidates expose
/// `subject_id, work_item_id, work_order_id, tenant_id, item_type, priority, started_at`
/// and already apply the rule's selectors. A level is due when `started_at + after` has
/// passed on the database clock; it fires unless it already did, or any escalation of this
/// rule for the subject was acknowledged or resolved (acknowledging stops the chain). The
/// unique key makes a level fire once whichever replica gets there first.
///
/// Parameters: $1 rule id, $2 item type, $3 priority, $4 tenant, $5 workflow (NULL = any),
/// $6 most escalations fired by this statement, $7 the rule's smallest threshold (ms); on a
/// cluster $8 the tenant swept.
macro_rules! fire_sql {
    ($mode:tt, $tenant_column:literal, $($candidates:expr),+) => {
        concat!(
            "WITH cand AS (",
            $($candidates),+,
            "), due AS (
    SELECT c.*, l.level, c.started_at + l.after AS due_at
    FROM cand c JOIN sla_levels l ON l.rule_id = $1 AND c.started_at + l.after <= now()
    WHERE NOT EXISTS (SELECT 1 FROM escalations e
                      WHERE e.rule_id = $1 AND e.subject_id = c.subject_id AND e.level = l.level",
            tenant_of!($mode, "e"),
            ")
      AND NOT EXISTS (SELECT 1 FROM escalations e
                      WHERE e.rule_id = $1 AND e.subject_id = c.subject_id AND e.status <> 'OPEN'",
            tenant_of!($mode, "e"),
            ")
    ORDER BY due_at
    LIMIT $6
), fired AS (
    INSERT INTO escalations (",
            $tenant_column,
            "rule_id, level, subject_id, work_item_id, work_order_id, reason, due_at)
    SELECT ",
            $tenant_column,
            "$1, d.level, d.subject_id, d.work_item_id, d.work_order_id,
           'level ' || d.level || ' of rule ' || (SELECT name FROM sla_rules WHERE id = $1), d.due_at
    FROM due d
    ON CONFLICT (",
            $tenant_column,
            "rule_id, subject_id, level) DO NOTHING
    RETURNING id, level, subject_id
)
SELECT f.id, f.level, d.work_item_id, d.work_order_id, d.tenant_id, d.item_type, d.priority,
       extract(epoch FROM now() - d.due_at)::float8 AS late_by_seconds
FROM fired f JOIN due d ON d.subject_id = f.subject_id AND d.level = f.level"
        )
    };
}

/// The selectors every candidate query applies (`w` the item, `o` its order).
macro_rules! selectors {
    () => {
        " AND ($2::work_item_type IS NULL OR w.type = $2::work_item_type)
          AND ($3::priority IS NULL OR w.priority = $3::priority)
          AND ($4::uuid IS NULL OR o.tenant_id = $4)
          AND ($5::text IS NULL OR o.workflow_id = $5)"
    };
}

/// TIME_TO_START: runnable items never claimed (the partial index of QUEUED items). An
/// item waiting for its dependencies is not runnable: its clock starts when they are met
/// (their release sets its run_at).
macro_rules! time_to_start {
    ($mode:tt, $tenant_column:literal) => {
        fire_sql!(
            $mode,
            $tenant_column,
            "SELECT w.id AS subject_id, w.id AS work_item_id, w.work_order_id, o.tenant_id,
            w.type::text AS item_type, w.priority::text AS priority, w.run_at AS started_at
     FROM work_items w JOIN work_orders o ON o.id = w.work_order_id",
            tenant_of!($mode, "o"),
            " WHERE w.status = 'QUEUED' AND w.deps_pending = 0 AND w.attempt = 0
       AND w.run_at <= now() - $7 * interval '1 millisecond'",
            tenant_of!($mode, "w"),
            selectors!()
        )
    };
}

/// TIME_TO_FINISH: items not terminal yet, through the partial indexes of unfinished
/// states (QUEUED runnable or waiting for dependencies, PROCESSING, AWAITING_APPROVAL),
/// never the history.
macro_rules! time_to_finish {
    ($mode:tt, $tenant_column:literal) => {
        fire_sql!(
            $mode,
            $tenant_column,
            "SELECT w.id AS subject_id, w.id AS work_item_id, w.work_order_id, o.tenant_id,
            w.type::text AS item_type, w.priority::text AS priority, w.created_at AS started_at
     FROM (SELECT * FROM work_items WHERE status = 'QUEUED' AND deps_pending = 0",
            tenant_of!($mode, "work_items"),
            " UNION ALL SELECT * FROM work_items WHERE status = 'QUEUED' AND deps_pending > 0",
            tenant_of!($mode, "work_items"),
            " UNION ALL SELECT * FROM work_items WHERE status = 'PROCESSING'",
            tenant_of!($mode, "work_items"),
            " UNION ALL SELECT * FROM work_items WHERE status = 'AWAITING_APPROVAL'",
            tenant_of!($mode, "work_items"),
            ") w
     JOIN work_orders o ON o.id = w.work_order_id",
            tenant_of!($mode, "o"),
            " WHERE w.created_at <= now() - $7 * interval '1 millisecond'",
            selectors!()
        )
    };
}

/// TIME_AWAITING_APPROVAL: held items, timed from the policy's ESCALATED decision. The
/// subject is that decision (the hold), not the item: an item rejected, retried and held
/// again is a new hold and starts a new chain.
macro_rules! time_awaiting_approval {
    ($mode:tt, $tenant_column:literal) => {
        fire_sql!(
            $mode,
            $tenant_column,
            "SELECT * FROM (
        SELECT hold.id AS subject_id, w.id AS work_item_id, w.work_order_id, o.tenant_id,
               w.type::text AS item_type, w.priority::text AS priority, hold.\"timestamp\" AS started_at
        FROM work_items w JOIN work_orders o ON o.id = w.work_order_id",
            tenant_of!($mode, "o"),
            " CROSS JOIN LATERAL (SELECT a.id, a.\"timestamp\" FROM approval_events a
                            WHERE a.work_item_id = w.id AND a.decision = 'ESCALATED'",
            tenant_of!($mode, "a"),
            " ORDER BY a.\"timestamp\" DESC, a.id DESC LIMIT 1) hold
        WHERE w.status = 'AWAITING_APPROVAL'",
            tenant_of!($mode, "w"),
            selectors!(),
            ") held WHERE held.started_at <= now() - $7 * interval '1 millisecond'"
        )
    };
}

/// DEAD_LETTER_OPEN: open dead letters (their partial unique index), timed from creation;
/// the subject is the letter, so a replayed item that fails again starts a new chain.
macro_rules! dead_letter_open {
    ($mode:tt, $tenant_column:literal) => {
        fire_sql!(
            $mode,
            $tenant_column,
            "SELECT d.id AS subject_id, w.id AS work_item_id, w.work_order_id, o.tenant_id,
            w.type::text AS item_type, w.priority::text AS priority, d.created_at AS started_at
     FROM dead_letters d JOIN work_items w ON w.id = d.work_item_id",
            tenant_of!($mode, "w"),
            " JOIN work_orders o ON o.id = w.work_order_id",
            tenant_of!($mode, "o"),
            " WHERE d.processed_at IS NULL AND d.created_at <= now() - $7 * interval '1 millisecond'",
            tenant_of!($mode, "d"),
            selectors!()
        )
    };
}

pub const FIRE_TIME_TO_START_SQL: &str = time_to_start!(single, "");
pub const FIRE_TIME_TO_FINISH_SQL: &str = time_to_finish!(single, "");
pub const FIRE_TIME_AWAITING_APPROVAL_SQL: &str = time_awaiting_approval!(single, "");
pub const FIRE_DEAD_LETTER_OPEN_SQL: &str = dead_letter_open!(single, "");

/// On a cluster: the same, for one tenant (`$8`).
pub const FIRE_TIME_TO_START_TENANT_SQL: &str = time_to_start!(("$8"), "tenant_id, ");
pub const FIRE_TIME_TO_FINISH_TENANT_SQL: &str = time_to_finish!(("$8"), "tenant_id, ");
pub const FIRE_TIME_AWAITING_APPROVAL_TENANT_SQL: &str = time_awaiting_approval!(("$8"), "tenant_id, ");
pub const FIRE_DEAD_LETTER_OPEN_TENANT_SQL: &str = dead_letter_open!(("$8"), "tenant_id, ");

/// An escalation fired by a sweep.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Fired {
    pub id: Uuid,
    pub level: i32,
    pub work_item_id: Uuid,
    pub work_order_id: Uuid,
    pub tenant_id: Uuid,
    pub item_type: String,
    pub priority: String,
    pub late_by_seconds: f64,
}

/// The firing statement of a clock (by its database label), on one PostgreSQL or, with a
/// tenant, on a cluster.
pub fn fire_sql(clock: &str, tenant: Option<Uuid>) -> Option<&'static str> {
    Some(match (clock, tenant.is_some()) {
        ("TIME_TO_START", false) => FIRE_TIME_TO_START_SQL,
        ("TIME_TO_FINISH", false) => FIRE_TIME_TO_FINISH_SQL,
        ("TIME_AWAITING_APPROVAL", false) => FIRE_TIME_AWAITING_APPROVAL_SQL,
        ("DEAD_LETTER_OPEN", false) => FIRE_DEAD_LETTER_OPEN_SQL,
        ("TIME_TO_START", true) => FIRE_TIME_TO_START_TENANT_SQL,
        ("TIME_TO_FINISH", true) => FIRE_TIME_TO_FINISH_TENANT_SQL,
        ("TIME_AWAITING_APPROVAL", true) => FIRE_TIME_AWAITING_APPROVAL_TENANT_SQL,
        ("DEAD_LETTER_OPEN", true) => FIRE_DEAD_LETTER_OPEN_TENANT_SQL,
        _ => return None,
    })
}

/// Fires the rule's due levels (at most `limit` escalations) inside the caller's transaction;
/// on a cluster, `tenant`'s only. Run it on the engine's connections (`connect_engine`): with
/// the planner's defaults and statistics taken before a breach, the look-ups of already fired
/// levels became a materialized scan per candidate (10,000 late items: 5 s a sweep, against
/// milliseconds through the unique index).
pub async fn fire(
    tx: &mut Transaction<'_, Postgres>,
    rule: &Rule,
    limit: i64,
    tenant: Option<Uuid>,
) -> Result<Vec<Fired>, sqlx::Error> {
    let Some(sql) = fire_sql(&rule.clock, tenant) else { return Ok(vec![]) };
    let Some(min_after_ms) = min_after_ms(rule) else { return Ok(vec![]) };
    let mut query = sqlx::query_as(sql)
        .bind(rule.id)
        .bind(&rule.item_type)
        .bind(&rule.priority)
        .bind(rule.tenant_id)
        .bind(&rule.workflow_id)
        .bind(limit)
        .bind(min_after_ms);
    if let Some(tenant) = tenant {
        query = query.bind(tenant);
    }
    query.fetch_all(&mut **tx).await
}

/// The rule's smallest threshold in milliseconds (None without levels).
fn min_after_ms(rule: &Rule) -> Option<f64> {
    let ms = rule.levels.iter().map(|l| l.after_seconds * 1000.0).fold(f64::INFINITY, f64::min);
    ms.is_finite().then_some(ms)
}

/// Resolves the rule's unresolved escalations whose subject reached the state its clock
/// waits for. Parameters: $1 rule id; on a cluster $2 the tenant. Reads the rule's
/// unresolved escalations only.
macro_rules! resolve_sql {
    ($mode:tt, $($done:expr),+) => {
        concat!(
            "UPDATE escalations e SET status = 'RESOLVED', resolved_at = now(), resolved_by = 'orderly',
                    resolution = 'the SLA clock stopped'
             WHERE e.rule_id = $1 AND e.status <> 'RESOLVED'",
            tenant_of!($mode, "e"),
            " AND ",
            $($done),+,
            " RETURNING e.id, e.level, e.work_item_id, e.work_order_id"
        )
    };
}

macro_rules! resolve_time_to_start {
    ($mode:tt) => {
        resolve_sql!(
            $mode,
            "NOT EXISTS (SELECT 1 FROM work_items w WHERE w.id = e.work_item_id AND w.status = 'QUEUED' AND w.attempt = 0",
            tenant_of!($mode, "w"),
            ")"
        )
    };
}
macro_rules! resolve_time_to_finish {
    ($mode:tt) => {
        resolve_sql!(
            $mode,
            "NOT EXISTS (SELECT 1 FROM work_items w WHERE w.id = e.work_item_id
                 AND w.status IN ('QUEUED', 'PROCESSING', 'AWAITING_APPROVAL')",
            tenant_of!($mode, "w"),
            ")"
        )
    };
}
/// A hold ends when the item leaves AWAITING_APPROVAL, or when a newer hold replaced it.
macro_rules! resolve_time_awaiting_approval {
    ($mode:tt) => {
        resolve_sql!(
            $mode,
            "NOT EXISTS (SELECT 1 FROM work_items w WHERE w.id = e.work_item_id AND w.status = 'AWAITING_APPROVAL'",
            tenant_of!($mode, "w"),
            " AND e.subject_id = (SELECT a.id FROM approval_events a
                                     WHERE a.work_item_id = w.id AND a.decision = 'ESCALATED'",
            tenant_of!($mode, "a"),
            " ORDER BY a.\"timestamp\" DESC, a.id DESC LIMIT 1))"
        )
    };
}
macro_rules! resolve_dead_letter_open {
    ($mode:tt) => {
        resolve_sql!(
            $mode,
            "NOT EXISTS (SELECT 1 FROM dead_letters d WHERE d.id = e.subject_id AND d.processed_at IS NULL",
            tenant_of!($mode, "d"),
            ")"
        )
    };
}

pub const RESOLVE_TIME_TO_START_SQL: &str = resolve_time_to_start!(single);
pub const RESOLVE_TIME_TO_FINISH_SQL: &str = resolve_time_to_finish!(single);
pub const RESOLVE_TIME_AWAITING_APPROVAL_SQL: &str = resolve_time_awaiting_approval!(single);
pub const RESOLVE_DEAD_LETTER_OPEN_SQL: &str = resolve_dead_letter_open!(single);

/// On a cluster: the same, for one tenant (`$2`).
pub const RESOLVE_TIME_TO_START_TENANT_SQL: &str = resolve_time_to_start!(("$2"));
pub const RESOLVE_TIME_TO_FINISH_TENANT_SQL: &str = resolve_time_to_finish!(("$2"));
pub const RESOLVE_TIME_AWAITING_APPROVAL_TENANT_SQL: &str = resolve_time_awaiting_approval!(("$2"));
pub const RESOLVE_DEAD_LETTER_OPEN_TENANT_SQL: &str = resolve_dead_letter_open!(("$2"));

/// An escalation the sweeper resolved.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Resolved {
    pub id: Uuid,
    pub level: i32,
    pub work_item_id: Uuid,
    pub work_order_id: Uuid,
}

/// Resolves what the rule's clock no longer runs for, inside the caller's transaction; on a
/// cluster, `tenant`'s escalations only.
pub async fn resolve_stopped(
    tx: &mut Transaction<'_, Postgres>,
    rule: &Rule,
    tenant: Option<Uuid>,
) -> Result<Vec<Resolved>, sqlx::Error> {
    let sql = match (rule.clock.as_str(), tenant.is_some()) {
        ("TIME_TO_START", false) => RESOLVE_TIME_TO_START_SQL,
        ("TIME_TO_FINISH", false) => RESOLVE_TIME_TO_FINISH_SQL,
        ("TIME_AWAITING_APPROVAL", false) => RESOLVE_TIME_AWAITING_APPROVAL_SQL,
        ("DEAD_LETTER_OPEN", false) => RESOLVE_DEAD_LETTER_OPEN_SQL,
        ("TIME_TO_START", true) => RESOLVE_TIME_TO_START_TENANT_SQL,
        ("TIME_TO_FINISH", true) => RESOLVE_TIME_TO_FINISH_TENANT_SQL,
        ("TIME_AWAITING_APPROVAL", true) => RESOLVE_TIME_AWAITING_APPROVAL_TENANT_SQL,
        ("DEAD_LETTER_OPEN", true) => RESOLVE_DEAD_LETTER_OPEN_TENANT_SQL,
        _ => return Ok(vec![]),
    };
    let mut query = sqlx::query_as(sql).bind(rule.id);
    if let Some(tenant) = tenant {
        query = query.bind(tenant);
    }
    query.fetch_all(&mut **tx).await
}

/// On a cluster: the tenants a sweep of `rule` visits, read across every shard. Those with a
/// subject the rule's clock may be running for past its smallest threshold (which fires what
/// is due among them), and those with an escalation of the rule not resolved yet (which may
/// resolve). A rule with a tenant selector visits that tenant only.
pub async fn tenants_to_sweep(pool: &PgPool, rule: &Rule) -> Result<Vec<Uuid>, sqlx::Error> {
    let subjects = match rule.clock.as_str() {
        "TIME_TO_START" => {
            "SELECT tenant_id FROM work_items WHERE status = 'QUEUED' AND deps_pending = 0 AND attempt = 0
               AND run_at <= now() - $3 * interval '1 millisecond'"
        }
        "TIME_TO_FINISH" => {
            "SELECT tenant_id FROM work_items WHERE status IN ('QUEUED', 'PROCESSING', 'AWAITING_APPROVAL')
               AND created_at <= now() - $3 * interval '1 millisecond'"
        }
        "TIME_AWAITING_APPROVAL" => "SELECT tenant_id FROM work_items WHERE status = 'AWAITING_APPROVAL'",
        "DEAD_LETTER_OPEN" => {
            "SELECT tenant_id FROM dead_letters WHERE processed_at IS NULL
               AND created_at <= now() - $3 * interval '1 millisecond'"
        }
        _ => return Ok(vec![]),
    };
    let sql = format!(
        "SELECT DISTINCT tenant_id FROM (
             {subjects}
             UNION ALL SELECT tenant_id FROM escalations WHERE rule_id = $1 AND status <> 'RESOLVED'
         ) t WHERE $2::uuid IS NULL OR tenant_id = $2 ORDER BY tenant_id"
    );
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .bind(rule.id)
        .bind(rule.tenant_id)
        .bind(min_after_ms(rule).unwrap_or(0.0))
        .fetch_all(pool)
        .await
}
