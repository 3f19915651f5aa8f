//! SLA statements: the active rules with their chains, firing a rule's due levels (one
//! statement per clock, each reading only the items its clock can still be running for),
//! resolving escalations whose subject reached the awaited state, grouping their
//! notifications into the outbox, on-call's acknowledge and resolve, and the incident events
//! (PagerDuty's acknowledge and resolve) that follow them. The clocks' statements are in
//! [`clocks`]; on a Citus cluster the sweeper's writes name a tenant (`tenant: Some`), and a
//! tenant's escalations are grouped into notifications of that tenant.

use super::OpsError;
use super::audit::audit;

mod clocks;
use chrono::{DateTime, Utc};
pub use clocks::*;
use serde::Serialize;
use serde_json::{Value, json};
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

/// One level of a rule's chain.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Level {
    pub level: i32,
    /// The level's threshold on the rule's clock, in seconds.
    pub after_seconds: f64,
    pub connectors: Vec<String>,
}

/// A rule as the sweeper applies it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Rule {
    pub id: Uuid,
    pub name: String,
    pub is_active: bool,
    pub clock: String,
    pub item_type: Option<String>,
    pub priority: Option<String>,
    pub tenant_id: Option<Uuid>,
    pub workflow_id: Option<String>,
    #[sqlx(json)]
    pub levels: Vec<Level>,
}

/// Every rule with its levels in order (`active_only`: what the sweeper applies).
pub async fn rules(pool: &PgPool, active_only: bool) -> Result<Vec<Rule>, sqlx::Error> {
    sqlx::query_as(
        "SELECT r.id, r.name, r.is_active, r.clock::text AS clock, r.item_type::text AS item_type,
                r.priority::text AS priority, r.tenant_id, r.workflow_id,
                coalesce((SELECT jsonb_agg(jsonb_build_object(
                                     'level', l.level,
                                     'after_seconds', extract(epoch FROM l.after)::float8,
                                     'connectors', to_jsonb(l.connectors)) ORDER BY l.level)
                          FROM sla_levels l WHERE l.rule_id = r.id), '[]'::jsonb) AS levels
         FROM sla_rules r WHERE r.is_active OR NOT $1 ORDER BY r.name",
    )
    .bind(active_only)
    .fetch_all(pool)
    .await
}

/// Active connectors by name (the rule's levels name them).
pub async fn connectors_named(pool: &PgPool, names: &[String]) -> Result<Vec<(Uuid, String, String)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, name, type::text FROM connectors WHERE name = ANY($1) AND status = 'ACTIVE' ORDER BY name",
    )
    .bind(names)
    .fetch_all(pool)
    .await
}

/// Where a group's notification goes: a connector, and whether it follows the escalations as
/// an incident (PagerDuty: its notifications carry a `dedup_key`, and acknowledging or
/// resolving the group queues the incident's acknowledge or resolve; migration 0024).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recipient {
    pub connector: Uuid,
    pub incident: bool,
    /// On a Citus cluster, the tenant whose escalations these are: the message is that
    /// tenant's, on its node. None on one PostgreSQL.
    pub tenant: Option<Uuid>,
}

/// Adds a group of escalations to the outbox for one connector: merged into that
/// connector's undelivered, never-attempted message for the same rule, level and kind when
/// there is one (so a backlog breaching over several sweeps is still one message), else a
/// new message. `payload` is the group's message; when merged, counts add up and the
/// sample keeps the first ones.
///
/// An incident's trigger gets its `dedup_key` here (`orderly:{rule}:L{level}:{notification}`),
/// the same for its acknowledge and resolve. It takes new escalations only until one of those
/// is queued: the candidate is locked before that is checked, by a statement of its own, so
/// [`incident_events`] (which takes the same lock) either sees the merged escalations or has
/// committed its event before the check.
pub async fn enqueue_notification(
    tx: &mut Transaction<'_, Postgres>,
    recipient: Recipient,
    rule: Uuid,
    level: Option<i32>,
    kind: &str,
    escalations: &[Uuid],
    payload: &Value,
) -> Result<Uuid, sqlx::Error> {
    let tenant = recipient.tenant;
    let (candidate_sql, merge_sql, insert_sql) = match tenant {
        None => (CANDIDATE_SQL, MERGE_SQL, INSERT_SQL),
        Some(_) => (CANDIDATE_TENANT_SQL, MERGE_TENANT_SQL, INSERT_TENANT_SQL),
    };
    let mut query = sqlx::query_scalar(candidate_sql)
        .bind(recipient.connector)
        .bind(rule)
        .bind(level)
        .bind(kind)
        .bind(recipient.incident);
    if let Some(tenant) = tenant {
        query = query.bind(tenant);
    }
    let candidate: Option<Uuid> = query.fetch_optional(&mut **tx).await?;
    if let Some(candidate) = candidate {
        let mut query = sqlx::query_scalar(merge_sql).bind(candidate).bind(escalations).bind(escalations.len() as i64);
        if let Some(tenant) = tenant {
            query = query.bind(tenant);
        }
        let merged: Option<Uuid> = query.fetch_optional(&mut **tx).await?;
        if let Some(id) = merged {
            return Ok(id);
        }
    }
    // The id is made first, in a statement of its own: on a cluster an INSERT's rows must not
    // come from a volatile function in the same statement.
    let id: Uuid = sqlx::query_scalar("SELECT orderly_uuid_v7()").fetch_one(&mut **tx).await?;
    let mut query = sqlx::query_scalar(insert_sql)
        .bind(id)
        .bind(recipient.connector)
        .bind(rule)
        .bind(level)
        .bind(kind)
        .bind(escalations)
        .bind(payload)
        .bind(recipient.incident);
    if let Some(tenant) = tenant {
        query = query.bind(tenant);
    }
    query.fetch_one(&mut **tx).await
}

/// `single` on one PostgreSQL; `("$n")` on a cluster: the outbox row's tenant.
macro_rules! outbox_tenant {
    (single, $alias:literal) => {
        ""
    };
    (($param:literal), $alias:literal) => {
        concat!(" AND ", $alias, ".tenant_id = ", $param)
    };
}

/// The connector's undelivered, never-attempted message of the same rule, level and kind
/// ($1 connector, $2 rule, $3 level, $4 kind, $5 incident; on a cluster $6 the tenant).
macro_rules! candidate_sql {
    ($mode:tt) => {
        concat!(
            "SELECT id FROM notifications n
             WHERE connector_id = $1 AND rule_id = $2 AND level IS NOT DISTINCT FROM $3
               AND kind = $4 AND status = 'PENDING' AND attempts = 0 AND (dedup_key IS NOT NULL) = $5",
            outbox_tenant!($mode, "n"),
            " ORDER BY created_at DESC LIMIT 1
             FOR UPDATE SKIP LOCKED"
        )
    };
}
const CANDIDATE_SQL: &str = candidate_sql!(single);
const CANDIDATE_TENANT_SQL: &str = candidate_sql!(("$6"));

/// Merges a group into the candidate ($1), unless its incident was acknowledged or resolved
/// ($2 escalations, $3 their count; on a cluster $4 the tenant).
macro_rules! merge_sql {
    ($mode:tt) => {
        concat!(
            "UPDATE notifications n
             SET escalation_ids = n.escalation_ids || $2,
                 payload = jsonb_set(n.payload, '{count}', to_jsonb((n.payload->>'count')::bigint + $3))
             WHERE n.id = $1",
            outbox_tenant!($mode, "n"),
            " AND NOT EXISTS (SELECT 1 FROM notifications later
                               WHERE later.connector_id = n.connector_id AND later.dedup_key = n.dedup_key
                                 AND later.kind <> 'FIRED'",
            outbox_tenant!($mode, "later"),
            ") RETURNING n.id"
        )
    };
}
const MERGE_SQL: &str = merge_sql!(single);
const MERGE_TENANT_SQL: &str = merge_sql!(("$4"));

/// A new message ($1 its id, $2 connector, $3 rule, $4 level, $5 kind, $6 escalations,
/// $7 payload, $8 incident; on a cluster $9 the tenant).
macro_rules! insert_sql {
    ($column:literal, $value:literal) => {
        concat!(
            "INSERT INTO notifications (",
            $column,
            "id, connector_id, rule_id, level, kind, escalation_ids, payload, dedup_key)
         VALUES (",
            $value,
            "$1, $2, $3, $4, $5, $6, $7,
                CASE WHEN $8::boolean
                     THEN 'orderly:' || $3::uuid::text || ':L' || coalesce($4::int::text, '-') || ':' || $1::uuid::text
                END)
         RETURNING id"
        )
    };
}
const INSERT_SQL: &str = insert_sql!("", "");
const INSERT_TENANT_SQL: &str = insert_sql!("tenant_id, ", "$9, ");

/// Queues, inside the caller's transaction, the acknowledge or resolve of every incident
/// (a PagerDuty trigger) that one of `changed` belongs to, once the whole incident is
/// acknowledged (none OPEN) or resolved: `orderly_incident_events` (migration 0024), which
/// locks the incidents first so that two transactions changing one incident at once cannot
/// both miss it. Call it after acknowledging or resolving `changed`. Returns how many events
/// it queued.
///
/// On a cluster `tenant` names the tenant of `changed` (an incident is one tenant's):
/// `orderly_incident_events_of`, a distributed function run on the tenant's node
/// (distribute.sql).
pub async fn incident_events(
    tx: &mut Transaction<'_, Postgres>,
    changed: &[Uuid],
    tenant: Option<Uuid>,
) -> Result<i32, sqlx::Error> {
    if changed.is_empty() {
        return Ok(0);
    }
    match tenant {
        None => sqlx::query_scalar("SELECT orderly_incident_events($1)").bind(changed).fetch_one(&mut **tx).await,
        Some(tenant) => {
            sqlx::query_scalar("SELECT orderly_incident_events_of($1, $2)")
                .bind(tenant)
                .bind(changed)
                .fetch_one(&mut **tx)
                .await
        }
    }
}

/// An escalation as on-call sees it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Escalation {
    pub id: Uuid,
    pub rule: String,
    pub clock: String,
    pub level: i32,
    pub status: String,
    pub work_item_id: Uuid,
    pub work_order_id: Uuid,
    pub subject_id: Uuid,
    pub reason: String,
    pub due_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub acknowledged_at: Option<DateTime<Utc>>,
    pub acknowledged_by: Option<String>,
    pub resolved_at: Option<DateTime<Utc>>,
    pub resolved_by: Option<String>,
    pub resolution: Option<String>,
}

const ESCALATION_COLUMNS: &str = "e.id, r.name AS rule, r.clock::text AS clock, e.level, e.status::text AS status,
    e.work_item_id, e.work_order_id, e.subject_id, e.reason, e.due_at, e.created_at, e.acknowledged_at,
    e.acknowledged_by, e.resolved_at, e.resolved_by, e.resolution";

/// Unresolved escalations (or all with `include_resolved`), newest first.
pub async fn escalations(pool: &PgPool, include_resolved: bool, limit: i64) -> Result<Vec<Escalation>, sqlx::Error> {
    let sql = format!(
        "SELECT {ESCALATION_COLUMNS} FROM escalations e JOIN sla_rules r ON r.id = e.rule_id
         WHERE e.status <> 'RESOLVED' OR $1 ORDER BY e.created_at DESC, e.level DESC LIMIT $2"
    );
    sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(include_resolved).bind(limit).fetch_all(pool).await
}

/// The escalations of one item, oldest first (its page, `orderly items show`).
pub async fn of_item(pool: &PgPool, item: Uuid) -> Result<Vec<Escalation>, sqlx::Error> {
    let sql = format!(
        "SELECT {ESCALATION_COLUMNS} FROM escalations e JOIN sla_rules r ON r.id = e.rule_id
         WHERE e.work_item_id = $1 ORDER BY e.created_at, e.level"
    );
    sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(item).fetch_all(pool).await
}

/// One escalation with the notifications sent for it.
/// A notification sent (or being sent) for an escalation.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct SentNotification {
    pub id: Uuid,
    pub connector: String,
    pub kind: String,
    pub status: String,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub delivered_at: Option<DateTime<Utc>>,
}

pub async fn escalation(pool: &PgPool, id: Uuid) -> Result<(Escalation, Vec<SentNotification>), OpsError> {
    let sql =
        format!("SELECT {ESCALATION_COLUMNS} FROM escalations e JOIN sla_rules r ON r.id = e.rule_id WHERE e.id = $1");
    let escalation: Escalation = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(pool)
        .await?
        .ok_or(OpsError::NotFound { what: "escalation", id })?;
    let notifications = sqlx::query_as(
        "SELECT n.id, c.name AS connector, n.kind, n.status::text AS status, n.attempts, n.last_error, n.delivered_at
         FROM notifications n JOIN connectors c ON c.id = n.connector_id
         WHERE $1 = ANY (n.escalation_ids) ORDER BY n.created_at",
    )
    .bind(id)
    .fetch_all(pool)
    .await?;
    Ok((escalation, notifications))
}

/// On-call's action on an escalation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Stops the chain's later levels for this subject; the escalation stays until resolved.
    Acknowledge,
    /// Closes it by hand.
    Resolve,
}

/// Acknowledges or resolves an escalation, audited, in one transaction. A resolved one
/// cannot be acted on again; acknowledging twice is a conflict. When that completes an
/// incident's acknowledgement or resolution (a PagerDuty connector was told), the incident's
/// event is queued in the same transaction ([`incident_events`]).
pub async fn act(pool: &PgPool, id: Uuid, action: Action, actor: &str, reason: Option<&str>) -> Result<(), OpsError> {
    // On a Citus cluster the escalation's tenant is read first (across the shards), so that
    // the lock and the writes below run on its node only.
    let tenant: Option<Uuid> = match super::distributed::topology(pool).await? {
        super::distributed::Topology::Single => None,
        super::distributed::Topology::Distributed => Some(
            sqlx::query_scalar("SELECT tenant_id FROM escalations WHERE id = $1")
                .bind(id)
                .fetch_optional(pool)
                .await?
                .ok_or(OpsError::NotFound { what: "escalation", id })?,
        ),
    };
    let mut tx = pool.begin().await?;
    let status: Option<String> = match tenant {
        None => sqlx::query_scalar("SELECT status::text FROM escalations WHERE id = $1 FOR UPDATE").bind(id),
        Some(tenant) => {
            sqlx::query_scalar("SELECT status::text FROM escalations WHERE id = $1 AND tenant_id = $2 FOR UPDATE")
                .bind(id)
                .bind(tenant)
        }
    }
    .fetch_optional(&mut *tx)
    .await?;
    let status = status.ok_or(OpsError::NotFound { what: "escalation", id })?;
    match (action, status.as_str()) {
        (_, "RESOLVED") => return Err(OpsError::Conflict(format!("escalation {id} is already resolved"))),
        (Action::Acknowledge, "ACKNOWLEDGED") => {
            return Err(OpsError::Conflict(format!("escalation {id} is already acknowledged")));
        }
        _ => {}
    }
    let (sql, verb) = match action {
        Action::Acknowledge => (
            "UPDATE escalations SET status = 'ACKNOWLEDGED', acknowledged_at = now(), acknowledged_by = $2,
                    resolution = coalesce($3, resolution) WHERE id = $1",
            "escalation.acknowledge",
        ),
        Action::Resolve => (
            "UPDATE escalations SET status = 'RESOLVED', resolved_at = now(), resolved_by = $2,
                    resolution = coalesce($3, 'resolved by hand') WHERE id = $1",
            "escalation.resolve",
        ),
    };
    match tenant {
        None => sqlx::query(sql).bind(id).bind(actor).bind(reason),
        Some(tenant) => sqlx::query(sqlx::AssertSqlSafe(format!("{sql} AND tenant_id = $4")))
            .bind(id)
            .bind(actor)
            .bind(reason)
            .bind(tenant),
    }
    .execute(&mut *tx)
    .await?;
    audit(&mut tx, actor, verb, ("escalation", id), json!({ "reason": reason })).await?;
    incident_events(&mut tx, &[id], tenant).await?;
    tx.commit().await?;
    Ok(())
}

/// Unresolved escalations by status (OPEN, ACKNOWLEDGED), through the partial index.
pub async fn unresolved_counts(pool: &PgPool) -> Result<Vec<(String, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT status::text, count(*) FROM escalations WHERE status <> 'RESOLVED' GROUP BY status ORDER BY status",
    )
    .fetch_all(pool)
    .await
}
