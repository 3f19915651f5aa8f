//! SLA statements: the active rules with their chains, firing a rule's due levels (one
//! statement per clock, each reading only the items its clock can still be running for),
//! resolving escalations whose subject reached the awaited state, grouping their
//! notifications into the outbox, on-call's acknowledge and resolve, and the incident events
//! (PagerDuty's acknowledge and resolve) that follow them.

use super::OpsError;
use super::audit::audit;
use chrono::{DateTime, Utc};
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

/// Builds one clock's firing statement around its candidate query. Candidates expose
/// `subject_id, work_item_id, work_order_id, tenant_id, item_type, priority, started_at`
/// and already apply the rule's selectors. A level is due when `started_at + after` has
/// passed on the database clock; it fires unless it already did, or any escalation of this
/// rule for the subject was acknowledged or resolved (acknowledging stops the chain). The
/// unique key makes a level fire once whichever replica gets there first.
///
/// Parameters: $1 rule id, $2 item type, $3 priority, $4 tenant, $5 workflow (NULL = any),
/// $6 most escalations fired by this statement, $7 the rule's smallest threshold (ms).
macro_rules! fire_sql {
    ($($candidates:expr),+) => {
        concat!(
            "WITH cand AS (",
            $($candidates),+,
            "), due AS (
    SELECT c.*, l.level, c.started_at + l.after AS due_at
    FROM cand c JOIN sla_levels l ON l.rule_id = $1 AND c.started_at + l.after <= now()
    WHERE NOT EXISTS (SELECT 1 FROM escalations e
                      WHERE e.rule_id = $1 AND e.subject_id = c.subject_id AND e.level = l.level)
      AND NOT EXISTS (SELECT 1 FROM escalations e
                      WHERE e.rule_id = $1 AND e.subject_id = c.subject_id AND e.status <> 'OPEN')
    ORDER BY due_at
    LIMIT $6
), fired AS (
    INSERT INTO escalations (rule_id, level, subject_id, work_item_id, work_order_id, reason, due_at)
    SELECT $1, d.level, d.subject_id, d.work_item_id, d.work_order_id,
           'level ' || d.level || ' of rule ' || (SELECT name FROM sla_rules WHERE id = $1), d.due_at
    FROM due d
    ON CONFLICT (rule_id, subject_id, level) DO NOTHING
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
pub const FIRE_TIME_TO_START_SQL: &str = fire_sql!(
    "SELECT w.id AS subject_id, w.id AS work_item_id, w.work_order_id, o.tenant_id,
            w.type::text AS item_type, w.priority::text AS priority, w.run_at AS started_at
     FROM work_items w JOIN work_orders o ON o.id = w.work_order_id
     WHERE w.status = 'QUEUED' AND w.deps_pending = 0 AND w.attempt = 0
       AND w.run_at <= now() - $7 * interval '1 millisecond'",
    selectors!()
);

/// TIME_TO_FINISH: items not terminal yet, through the partial indexes of unfinished
/// states (QUEUED runnable or waiting for dependencies, PROCESSING, AWAITING_APPROVAL),
/// never the history.
pub const FIRE_TIME_TO_FINISH_SQL: &str = fire_sql!(
    "SELECT w.id AS subject_id, w.id AS work_item_id, w.work_order_id, o.tenant_id,
            w.type::text AS item_type, w.priority::text AS priority, w.created_at AS started_at
     FROM (SELECT * FROM work_items WHERE status = 'QUEUED' AND deps_pending = 0
           UNION ALL SELECT * FROM work_items WHERE status = 'QUEUED' AND deps_pending > 0
           UNION ALL SELECT * FROM work_items WHERE status = 'PROCESSING'
           UNION ALL SELECT * FROM work_items WHERE status = 'AWAITING_APPROVAL') w
     JOIN work_orders o ON o.id = w.work_order_id
     WHERE w.created_at <= now() - $7 * interval '1 millisecond'",
    selectors!()
);

/// TIME_AWAITING_APPROVAL: held items, timed from the policy's ESCALATED decision. The
/// subject is that decision (the hold), not the item: an item rejected, retried and held
/// again is a new hold and starts a new chain.
pub const FIRE_TIME_AWAITING_APPROVAL_SQL: &str = fire_sql!(
    "SELECT * FROM (
        SELECT hold.id AS subject_id, w.id AS work_item_id, w.work_order_id, o.tenant_id,
               w.type::text AS item_type, w.priority::text AS priority, hold.\"timestamp\" AS started_at
        FROM work_items w JOIN work_orders o ON o.id = w.work_order_id
        CROSS JOIN LATERAL (SELECT a.id, a.\"timestamp\" FROM approval_events a
                            WHERE a.work_item_id = w.id AND a.decision = 'ESCALATED'
                            ORDER BY a.\"timestamp\" DESC, a.id DESC LIMIT 1) hold
        WHERE w.status = 'AWAITING_APPROVAL'",
    selectors!(),
    ") held WHERE held.started_at <= now() - $7 * interval '1 millisecond'"
);

/// DEAD_LETTER_OPEN: open dead letters (their partial unique index), timed from creation;
/// the subject is the letter, so a replayed item that fails again starts a new chain.
pub const FIRE_DEAD_LETTER_OPEN_SQL: &str = fire_sql!(
    "SELECT d.id AS subject_id, w.id AS work_item_id, w.work_order_id, o.tenant_id,
            w.type::text AS item_type, w.priority::text AS priority, d.created_at AS started_at
     FROM dead_letters d JOIN work_items w ON w.id = d.work_item_id
     JOIN work_orders o ON o.id = w.work_order_id
     WHERE d.processed_at IS NULL AND d.created_at <= now() - $7 * interval '1 millisecond'",
    selectors!()
);

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

/// The firing statement of a clock (by its database label).
pub fn fire_sql(clock: &str) -> Option<&'static str> {
    match clock {
        "TIME_TO_START" => Some(FIRE_TIME_TO_START_SQL),
        "TIME_TO_FINISH" => Some(FIRE_TIME_TO_FINISH_SQL),
        "TIME_AWAITING_APPROVAL" => Some(FIRE_TIME_AWAITING_APPROVAL_SQL),
        "DEAD_LETTER_OPEN" => Some(FIRE_DEAD_LETTER_OPEN_SQL),
        _ => None,
    }
}

/// Fires the rule's due levels (at most `limit` escalations) inside the caller's transaction.
/// Run it on the engine's connections (`connect_engine`): with the planner's defaults and
/// statistics taken before a breach, the look-ups of already fired levels became a
/// materialized scan per candidate (10,000 late items: 5 s a sweep, against milliseconds
/// through the unique index).
pub async fn fire(tx: &mut Transaction<'_, Postgres>, rule: &Rule, limit: i64) -> Result<Vec<Fired>, sqlx::Error> {
    let Some(sql) = fire_sql(&rule.clock) else { return Ok(vec![]) };
    let min_after_ms = rule.levels.iter().map(|l| l.after_seconds * 1000.0).fold(f64::INFINITY, f64::min);
    if !min_after_ms.is_finite() {
        return Ok(vec![]);
    }
    sqlx::query_as(sql)
        .bind(rule.id)
        .bind(&rule.item_type)
        .bind(&rule.priority)
        .bind(rule.tenant_id)
        .bind(&rule.workflow_id)
        .bind(limit)
        .bind(min_after_ms)
        .fetch_all(&mut **tx)
        .await
}

/// Resolves the rule's unresolved escalations whose subject reached the state its clock
/// waits for. Parameters: $1 rule id. Reads the rule's unresolved escalations only.
macro_rules! resolve_sql {
    ($done:literal) => {
        concat!(
            "UPDATE escalations e SET status = 'RESOLVED', resolved_at = now(), resolved_by = 'orderly',
                    resolution = 'the SLA clock stopped'
             WHERE e.rule_id = $1 AND e.status <> 'RESOLVED' AND ",
            $done,
            " RETURNING e.id, e.level, e.work_item_id, e.work_order_id"
        )
    };
}

pub const RESOLVE_TIME_TO_START_SQL: &str = resolve_sql!(
    "NOT EXISTS (SELECT 1 FROM work_items w WHERE w.id = e.work_item_id AND w.status = 'QUEUED' AND w.attempt = 0)"
);
pub const RESOLVE_TIME_TO_FINISH_SQL: &str = resolve_sql!(
    "NOT EXISTS (SELECT 1 FROM work_items w WHERE w.id = e.work_item_id
                 AND w.status IN ('QUEUED', 'PROCESSING', 'AWAITING_APPROVAL'))"
);
/// A hold ends when the item leaves AWAITING_APPROVAL, or when a newer hold replaced it.
pub const RESOLVE_TIME_AWAITING_APPROVAL_SQL: &str = resolve_sql!(
    "NOT EXISTS (SELECT 1 FROM work_items w WHERE w.id = e.work_item_id AND w.status = 'AWAITING_APPROVAL'
                 AND e.subject_id = (SELECT a.id FROM approval_events a
                                     WHERE a.work_item_id = w.id AND a.decision = 'ESCALATED'
                                     ORDER BY a.\"timestamp\" DESC, a.id DESC LIMIT 1))"
);
pub const RESOLVE_DEAD_LETTER_OPEN_SQL: &str =
    resolve_sql!("NOT EXISTS (SELECT 1 FROM dead_letters d WHERE d.id = e.subject_id AND d.processed_at IS NULL)");

/// An escalation the sweeper resolved.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Resolved {
    pub id: Uuid,
    pub level: i32,
    pub work_item_id: Uuid,
    pub work_order_id: Uuid,
}

/// Resolves what the rule's clock no longer runs for, inside the caller's transaction.
pub async fn resolve_stopped(tx: &mut Transaction<'_, Postgres>, rule: &Rule) -> Result<Vec<Resolved>, sqlx::Error> {
    let sql = match rule.clock.as_str() {
        "TIME_TO_START" => RESOLVE_TIME_TO_START_SQL,
        "TIME_TO_FINISH" => RESOLVE_TIME_TO_FINISH_SQL,
        "TIME_AWAITING_APPROVAL" => RESOLVE_TIME_AWAITING_APPROVAL_SQL,
        "DEAD_LETTER_OPEN" => RESOLVE_DEAD_LETTER_OPEN_SQL,
        _ => return Ok(vec![]),
    };
    sqlx::query_as(sql).bind(rule.id).fetch_all(&mut **tx).await
}

/// Where a group's notification goes: a connector, and whether it follows the escalations as
/// an incident (PagerDuty: its notifications carry a `dedup_key`, and acknowledging or
/// resolving the group queues the incident's acknowledge or resolve; migration 0024).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recipient {
    pub connector: Uuid,
    pub incident: bool,
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
    let candidate: Option<Uuid> = sqlx::query_scalar(
        "SELECT id FROM notifications
         WHERE connector_id = $1 AND rule_id = $2 AND level IS NOT DISTINCT FROM $3
           AND kind = $4 AND status = 'PENDING' AND attempts = 0 AND (dedup_key IS NOT NULL) = $5
         ORDER BY created_at DESC LIMIT 1
         FOR UPDATE SKIP LOCKED",
    )
    .bind(recipient.connector)
    .bind(rule)
    .bind(level)
    .bind(kind)
    .bind(recipient.incident)
    .fetch_optional(&mut **tx)
    .await?;
    if let Some(candidate) = candidate {
        let merged: Option<Uuid> = sqlx::query_scalar(
            "UPDATE notifications n
             SET escalation_ids = n.escalation_ids || $2,
                 payload = jsonb_set(n.payload, '{count}', to_jsonb((n.payload->>'count')::bigint + $3))
             WHERE n.id = $1
               AND NOT EXISTS (SELECT 1 FROM notifications later
                               WHERE later.connector_id = n.connector_id AND later.dedup_key = n.dedup_key
                                 AND later.kind <> 'FIRED')
             RETURNING n.id",
        )
        .bind(candidate)
        .bind(escalations)
        .bind(escalations.len() as i64)
        .fetch_optional(&mut **tx)
        .await?;
        if let Some(id) = merged {
            return Ok(id);
        }
    }
    sqlx::query_scalar(
        "WITH new AS (SELECT orderly_uuid_v7() AS id)
         INSERT INTO notifications (id, connector_id, rule_id, level, kind, escalation_ids, payload, dedup_key)
         SELECT new.id, $1, $2, $3, $4, $5, $6,
                CASE WHEN $7::boolean
                     THEN 'orderly:' || $2::uuid::text || ':L' || coalesce($3::int::text, '-') || ':' || new.id::text
                END
         FROM new
         RETURNING id",
    )
    .bind(recipient.connector)
    .bind(rule)
    .bind(level)
    .bind(kind)
    .bind(escalations)
    .bind(payload)
    .bind(recipient.incident)
    .fetch_one(&mut **tx)
    .await
}

/// Queues, inside the caller's transaction, the acknowledge or resolve of every incident
/// (a PagerDuty trigger) that one of `changed` belongs to, once the whole incident is
/// acknowledged (none OPEN) or resolved: `orderly_incident_events` (migration 0024), which
/// locks the incidents first so that two transactions changing one incident at once cannot
/// both miss it. Call it after acknowledging or resolving `changed`. Returns how many events
/// it queued.
pub async fn incident_events(tx: &mut Transaction<'_, Postgres>, changed: &[Uuid]) -> Result<i32, sqlx::Error> {
    if changed.is_empty() {
        return Ok(0);
    }
    sqlx::query_scalar("SELECT orderly_incident_events($1)").bind(changed).fetch_one(&mut **tx).await
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
    let mut tx = pool.begin().await?;
    let status: Option<String> = sqlx::query_scalar("SELECT status::text FROM escalations WHERE id = $1 FOR UPDATE")
        .bind(id)
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
    sqlx::query(sql).bind(id).bind(actor).bind(reason).execute(&mut *tx).await?;
    audit(&mut tx, actor, verb, ("escalation", id), json!({ "reason": reason })).await?;
    incident_events(&mut tx, &[id]).await?;
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
