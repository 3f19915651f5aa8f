//! The notifications outbox (migration 0013): claim what is due, then record each delivery's
//! outcome. Written by the SLA sweeper; delivered by `sla::notifier` on every replica.
//!
//! A claim takes rows with `FOR NO KEY UPDATE SKIP LOCKED` and a lease (`locked_until`), and
//! counts the attempt when it claims, so a delivery cut by kill -9 is counted and taken up
//! again by any notifier once the lease has passed, under the same id. Connectors are paced:
//! a connector whose `next_send_at` is in the future is skipped, and a paced connector
//! (Slack) gives at most one notification per claim and has its `next_send_at` advanced by
//! its interval, under a row lock, so replicas claiming at once never send to it together.
//! The outcome statements after a failure are fenced by the attempt count: a notifier whose
//! lease was taken over writes nothing over the newer claim's outcome.
//!
//! An incident's events (a PagerDuty connector's notifications of one `dedup_key`: its
//! trigger, then its acknowledge, then its resolve; migration 0024) go out in that order: an
//! acknowledge is not claimed while its trigger is PENDING, a resolve while its trigger or its
//! acknowledge is, whatever their retries.
//!
//! On a Citus cluster the claim is `db::distributed::notifications::claim` (tenant by
//! tenant); a claimed notification then carries its tenant, and every outcome statement here
//! names it, so that it runs on the tenant's node.

use super::distributed::BindTenant;
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgPool, Row};
use std::time::Duration;
use uuid::Uuid;

/// A claimed notification with its connector.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub id: Uuid,
    /// Its tenant on a Citus cluster (db::distributed::notifications); None on one PostgreSQL.
    pub tenant: Option<Uuid>,
    pub kind: String,
    pub payload: Value,
    pub rule_id: Option<Uuid>,
    pub level: Option<i32>,
    /// The escalations it tells about (one escalation: its page is linked).
    pub escalation_ids: Vec<Uuid>,
    /// The incident key of a PagerDuty connector's notification (migration 0024).
    pub dedup_key: Option<String>,
    /// Deliveries so far, this one included.
    pub attempts: i32,
    pub created_at: DateTime<Utc>,
    pub connector_id: Uuid,
    pub connector_name: String,
    /// `connectors.type`: `API`, `SLACK`, `EMAIL`, `PAGERDUTY`, `TELEGRAM`, `DATABASE`.
    pub connector_type: String,
    /// The connector's `config`; holds secrets, never log it.
    pub config: Value,
}

/// The claim statement ([`claim`]): `$1` batch, `$2` lease in seconds, `$3` paced connector
/// types, `$4` their intervals in seconds. It reads notifications through the partial index
/// of PENDING ones and connectors by key (no table scan, which the engine's planner settings
/// would price out of reach and then JIT-compile on every call); an incident's earlier
/// events through their unique key (`notifications_dedup_key`).
pub const CLAIM_SQL: &str = "WITH due AS (
        SELECT DISTINCT n.connector_id FROM notifications n
        WHERE n.status = 'PENDING' AND n.next_attempt_at <= now()
          AND (n.locked_until IS NULL OR n.locked_until <= now())
    ),
    paced AS (
        SELECT c.id AS connector_id, p.seconds, n.id
        FROM due
        JOIN connectors c ON c.id = due.connector_id
        JOIN unnest($3::text[], $4::float8[]) AS p(type, seconds) ON p.type = c.type::text
        CROSS JOIN LATERAL (
            SELECT n.id FROM notifications n
            WHERE n.connector_id = c.id AND n.status = 'PENDING' AND n.next_attempt_at <= now()
              AND (n.locked_until IS NULL OR n.locked_until <= now())
              AND (n.dedup_key IS NULL OR n.kind = 'FIRED' OR NOT EXISTS (
                  SELECT 1 FROM notifications earlier
                  WHERE earlier.connector_id = n.connector_id AND earlier.dedup_key = n.dedup_key
                    AND earlier.status = 'PENDING'
                    AND (earlier.kind = 'FIRED' OR (earlier.kind = 'ACKNOWLEDGED' AND n.kind = 'RESOLVED'))))
            ORDER BY n.next_attempt_at, n.id
            LIMIT 1
            FOR NO KEY UPDATE SKIP LOCKED
        ) n
        WHERE c.next_send_at <= now()
        ORDER BY c.next_send_at
        LIMIT $1
        FOR NO KEY UPDATE OF c SKIP LOCKED
    ),
    unpaced AS (
        SELECT n.id
        FROM notifications n
        JOIN connectors c ON c.id = n.connector_id
        WHERE n.status = 'PENDING' AND n.next_attempt_at <= now()
          AND (n.locked_until IS NULL OR n.locked_until <= now())
          AND c.next_send_at <= now()
          AND NOT c.type::text = ANY($3::text[])
          AND (n.dedup_key IS NULL OR n.kind = 'FIRED' OR NOT EXISTS (
              SELECT 1 FROM notifications earlier
              WHERE earlier.connector_id = n.connector_id AND earlier.dedup_key = n.dedup_key
                AND earlier.status = 'PENDING'
                AND (earlier.kind = 'FIRED' OR (earlier.kind = 'ACKNOWLEDGED' AND n.kind = 'RESOLVED'))))
        ORDER BY n.next_attempt_at, n.id
        LIMIT $1
        FOR NO KEY UPDATE OF n SKIP LOCKED
    ),
    paced_connectors AS (
        UPDATE connectors c SET next_send_at = now() + make_interval(secs => paced.seconds)
        FROM paced WHERE c.id = paced.connector_id
    )
    UPDATE notifications n
    SET locked_until = now() + make_interval(secs => $2), attempts = n.attempts + 1
    FROM connectors c
    WHERE c.id = n.connector_id AND n.id IN (SELECT id FROM paced UNION ALL SELECT id FROM unpaced)
    RETURNING n.id, n.kind, n.payload, n.rule_id, n.level, n.escalation_ids, n.dedup_key, n.attempts, n.created_at,
              c.id AS connector_id, c.name AS connector_name, c.type::text AS connector_type, c.config";

/// Claims up to `batch` due notifications (PENDING, `next_attempt_at` passed, not under a
/// live lease) of connectors whose `next_send_at` has passed, for `lease`, counting the
/// attempt. `pacing` names the paced connector types with their minimum interval: each such
/// connector gives at most one notification per claim (the oldest due), and its
/// `next_send_at` moves to now + interval. Other connectors give any number, oldest due
/// first; the two groups have `batch` each.
pub async fn claim(
    pool: &PgPool,
    batch: i64,
    lease: Duration,
    pacing: &[(&str, Duration)],
) -> Result<Vec<Claimed>, sqlx::Error> {
    let paced_types: Vec<&str> = pacing.iter().map(|(kind, _)| *kind).collect();
    let paced_seconds: Vec<f64> = pacing.iter().map(|(_, interval)| interval.as_secs_f64()).collect();
    let rows = sqlx::query(CLAIM_SQL)
        .bind(batch)
        .bind(lease.as_secs_f64())
        .bind(&paced_types)
        .bind(&paced_seconds)
        .fetch_all(pool)
        .await?;
    let mut claimed = rows.iter().map(|r| decode(r, false)).collect::<Result<Vec<_>, sqlx::Error>>()?;
    // Oldest first (ids are time-ordered), whichever group they came from.
    claimed.sort_by_key(|c| c.id);
    Ok(claimed)
}

/// A claimed row (the claim's RETURNING list; `tenant`: a cluster's, with the tenant's
/// column and without the connector's type, which the caller fills in: an enum's text is not
/// an immutable function, and Citus refuses those in RETURNING).
pub(crate) fn decode(r: &sqlx::postgres::PgRow, tenant: bool) -> Result<Claimed, sqlx::Error> {
    Ok(Claimed {
        id: r.try_get("id")?,
        tenant: if tenant { Some(r.try_get("tenant_id")?) } else { None },
        kind: r.try_get("kind")?,
        payload: r.try_get("payload")?,
        rule_id: r.try_get("rule_id")?,
        level: r.try_get("level")?,
        escalation_ids: r.try_get("escalation_ids")?,
        dedup_key: r.try_get("dedup_key")?,
        attempts: r.try_get("attempts")?,
        created_at: r.try_get("created_at")?,
        connector_id: r.try_get("connector_id")?,
        connector_name: r.try_get("connector_name")?,
        connector_type: if tenant { String::new() } else { r.try_get("connector_type")? },
        config: r.try_get("config")?,
    })
}

/// An outcome statement for notification `$1`: on a cluster also by its tenant, the
/// statement's last parameter (`$n`), so that it runs on the tenant's node only.
fn keyed(sql: &'static str, tenant: Option<Uuid>, n: usize) -> sqlx::AssertSqlSafe<String> {
    sqlx::AssertSqlSafe(match tenant {
        None => sql.to_string(),
        Some(_) => format!("{sql} AND tenant_id = ${n}"),
    })
}

/// Marks a notification delivered. Not fenced by the attempt: a delivery that succeeded
/// after its lease was taken over still happened (the newer one is then a duplicate with
/// the same id). False when it was no longer PENDING.
pub async fn mark_delivered(pool: &PgPool, id: Uuid, tenant: Option<Uuid>) -> Result<bool, sqlx::Error> {
    let sql =
        "UPDATE notifications SET status = 'DELIVERED', delivered_at = now(), locked_until = NULL, last_error = NULL
         WHERE id = $1 AND status = 'PENDING'";
    let query = sqlx::query(keyed(sql, tenant, 2)).bind(id);
    let done = query.bind_tenant(tenant).execute(pool).await?;
    Ok(done.rows_affected() == 1)
}

/// Schedules the next delivery `delay` from now on the database clock, with the error of
/// this one. False when the claim of `attempts` is no longer the current one.
pub async fn schedule_retry(
    pool: &PgPool,
    (id, tenant): (Uuid, Option<Uuid>),
    attempts: i32,
    delay: Duration,
    error: &str,
) -> Result<bool, sqlx::Error> {
    let sql = "UPDATE notifications
         SET next_attempt_at = now() + make_interval(secs => $3), last_error = $4, locked_until = NULL
         WHERE id = $1 AND attempts = $2 AND status = 'PENDING'";
    let query = sqlx::query(keyed(sql, tenant, 5)).bind(id).bind(attempts).bind(delay.as_secs_f64()).bind(error);
    let done = query.bind_tenant(tenant).execute(pool).await?;
    Ok(done.rows_affected() == 1)
}

/// Gives a notification up: FAILED, with the error that decided it. Fenced like
/// [`schedule_retry`].
pub async fn mark_failed(
    pool: &PgPool,
    (id, tenant): (Uuid, Option<Uuid>),
    attempts: i32,
    error: &str,
) -> Result<bool, sqlx::Error> {
    let sql = "UPDATE notifications SET status = 'FAILED', last_error = $3, locked_until = NULL
         WHERE id = $1 AND attempts = $2 AND status = 'PENDING'";
    let query = sqlx::query(keyed(sql, tenant, 4)).bind(id).bind(attempts).bind(error);
    let done = query.bind_tenant(tenant).execute(pool).await?;
    Ok(done.rows_affected() == 1)
}

/// Hands back a claim that was never delivered (its lease ran out before its turn): the
/// attempt is not counted and the notification is due again at once.
pub async fn release(pool: &PgPool, (id, tenant): (Uuid, Option<Uuid>), attempts: i32) -> Result<bool, sqlx::Error> {
    let sql = "UPDATE notifications SET locked_until = NULL, attempts = attempts - 1
         WHERE id = $1 AND attempts = $2 AND status = 'PENDING'";
    let query = sqlx::query(keyed(sql, tenant, 3)).bind(id).bind(attempts);
    let done = query.bind_tenant(tenant).execute(pool).await?;
    Ok(done.rows_affected() == 1)
}

/// Holds every notification of a connector for `delay` (a rate limit the receiver asked
/// for with 429): its `next_send_at` moves to now + delay unless it is already later.
pub async fn defer_connector(pool: &PgPool, connector_id: Uuid, delay: Duration) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE connectors SET next_send_at = greatest(next_send_at, now() + make_interval(secs => $2))
         WHERE id = $1",
    )
    .bind(connector_id)
    .bind(delay.as_secs_f64())
    .execute(pool)
    .await?;
    Ok(())
}
