//! Statements of schedules (migration 0021): the leader's materialization of due slots, and
//! the operators' reads and actions. A slot's order is made by `orderly_schedule_slot`
//! (SECURITY DEFINER: the daemon's role cannot INSERT orders itself), which does nothing when
//! the slot's order already exists (the unique key on `(schedule_id, slot_at)`).

use super::OpsError;
use super::audit::audit;
use chrono::{DateTime, NaiveTime, Utc};
use serde::Serialize;
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

/// A schedule as the scheduler and the operators read it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Schedule {
    pub id: Uuid,
    pub name: String,
    pub enabled: bool,
    pub cron: Option<String>,
    pub frequency: Option<String>,
    pub interval: Option<i32>,
    pub time: Option<NaiveTime>,
    pub days: Option<Vec<i32>>,
    pub date: Option<i32>,
    pub starts_at: DateTime<Utc>,
    pub timezone: String,
    pub workflow_id: String,
    pub tenant_id: Uuid,
    pub catch_up: String,
    pub catch_up_limit: i32,
    pub overlap: String,
    pub last_run: Option<DateTime<Utc>>,
    pub next_run: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
}

impl Schedule {
    /// Its *when*, for [`crate::calendar::Calendar::new`].
    pub fn spec(&self) -> crate::calendar::Spec {
        crate::calendar::Spec {
            cron: self.cron.clone(),
            frequency: self.frequency.clone(),
            interval: self.interval,
            time: self.time,
            days: self.days.clone(),
            date: self.date,
            starts_at: self.starts_at,
            timezone: self.timezone.clone(),
        }
    }
}

const COLUMNS: &str = "id, name, enabled, cron, frequency::text AS frequency, \"interval\", \"time\", days, \"date\",
     starts_at, timezone, workflow_id, tenant_id, catch_up::text AS catch_up, catch_up_limit,
     overlap::text AS overlap, last_run, next_run, last_error";

/// The database clock.
pub async fn now(tx: &mut Transaction<'_, Postgres>) -> Result<DateTime<Utc>, sqlx::Error> {
    sqlx::query_scalar("SELECT now()").fetch_one(&mut **tx).await
}

/// Locks up to `limit` enabled schedules that need the scheduler: due (`next_run` passed) or
/// not computed yet (`next_run` NULL without an error), through the partial index on
/// `next_run`. `SKIP LOCKED`: a schedule another transaction holds (an operator's run-now)
/// is taken on the next round.
pub async fn lock_due(tx: &mut Transaction<'_, Postgres>, limit: i64) -> Result<Vec<Schedule>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM schedules
         WHERE enabled AND (next_run <= now() OR (next_run IS NULL AND last_error IS NULL))
         ORDER BY next_run NULLS FIRST LIMIT $1 FOR UPDATE SKIP LOCKED"
    )))
    .bind(limit)
    .fetch_all(&mut **tx)
    .await
}

/// Seconds from now to the earliest `next_run` of the enabled schedules, on the database
/// clock (negative when one is due; the scheduler sleeps until it).
pub async fn seconds_to_next_run(pool: &PgPool) -> Result<Option<f64>, sqlx::Error> {
    sqlx::query_scalar("SELECT extract(epoch FROM min(next_run) - now())::float8 FROM schedules WHERE enabled")
        .fetch_one(pool)
        .await
}

/// Makes the order of `slot` (and its items) unless it exists; its id when made now.
pub async fn make_slot(
    tx: &mut Transaction<'_, Postgres>,
    schedule: Uuid,
    slot: DateTime<Utc>,
) -> Result<Option<Uuid>, sqlx::Error> {
    sqlx::query_scalar("SELECT orderly_schedule_slot($1, $2)").bind(schedule).bind(slot).fetch_one(&mut **tx).await
}

/// Makes the orders of many slots in one statement (`schedules[i]`'s slot `slots[i]`); for
/// each, its order's id when made now, `None` when it existed.
pub async fn make_slots(
    tx: &mut Transaction<'_, Postgres>,
    schedules: &[Uuid],
    slots: &[DateTime<Utc>],
) -> Result<Vec<Option<Uuid>>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT orderly_schedule_slot(s, t) FROM unnest($1::uuid[], $2::timestamptz[]) WITH ORDINALITY AS u(s, t, n)
         ORDER BY n",
    )
    .bind(schedules)
    .bind(slots)
    .fetch_all(&mut **tx)
    .await
}

/// Records what the scheduler decided for many schedules, in one statement: the last slot
/// each handled, the next one, and an error when it could not compute one (then `next_run`
/// stays NULL and the schedule waits for an edit). The checks trigger clears `next_run` only
/// when *when* changes, which this never does.
pub async fn record_all(
    tx: &mut Transaction<'_, Postgres>,
    schedules: &[Uuid],
    last_runs: &[Option<DateTime<Utc>>],
    next_runs: &[Option<DateTime<Utc>>],
    errors: &[Option<String>],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE schedules s SET last_run = coalesce(u.last_run, s.last_run), next_run = u.next_run, last_error = u.error
         FROM unnest($1::uuid[], $2::timestamptz[], $3::timestamptz[], $4::text[]) AS u(id, last_run, next_run, error)
         WHERE s.id = u.id",
    )
    .bind(schedules)
    .bind(last_runs)
    .bind(next_runs)
    .bind(errors)
    .execute(&mut **tx)
    .await
    .map(|_| ())
}

/// Whether the order of the schedule's latest slot before `slot` is still unfinished (the
/// overlap policy SKIP), through the unique index on `(schedule_id, slot_at)`.
pub async fn previous_unfinished(
    tx: &mut Transaction<'_, Postgres>,
    schedule: Uuid,
    slot: DateTime<Utc>,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT coalesce((SELECT status IN ('PENDING', 'PROCESSING') FROM work_orders
                          WHERE schedule_id = $1 AND slot_at < $2 ORDER BY slot_at DESC LIMIT 1), false)",
    )
    .bind(schedule)
    .bind(slot)
    .fetch_one(&mut **tx)
    .await
}

/// Every schedule, by name.
pub async fn list(pool: &PgPool) -> Result<Vec<Schedule>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} FROM schedules ORDER BY name"))).fetch_all(pool).await
}

/// One schedule by name.
pub async fn by_name(pool: &PgPool, name: &str) -> Result<Option<Schedule>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} FROM schedules WHERE name = $1")))
        .bind(name)
        .fetch_optional(pool)
        .await
}

/// An order a schedule made.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct SlotOrder {
    pub slot_at: DateTime<Utc>,
    pub work_order_id: Uuid,
    pub status: String,
}

/// The orders of a schedule's last `limit` slots, newest first.
pub async fn recent_orders(pool: &PgPool, schedule: Uuid, limit: i64) -> Result<Vec<SlotOrder>, sqlx::Error> {
    sqlx::query_as(
        "SELECT slot_at, id AS work_order_id, status::text AS status FROM work_orders
         WHERE schedule_id = $1 ORDER BY slot_at DESC LIMIT $2",
    )
    .bind(schedule)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Pauses or resumes a schedule, audited; resuming computes the next slot from now (no
/// catch-up for the paused time). Returns whether anything changed.
pub async fn set_enabled(pool: &PgPool, name: &str, enabled: bool, actor: &str) -> Result<bool, OpsError> {
    let mut tx = pool.begin().await?;
    let id: Option<Uuid> = sqlx::query_scalar("SELECT id FROM schedules WHERE name = $1 FOR UPDATE")
        .bind(name)
        .fetch_optional(&mut *tx)
        .await?;
    let Some(id) = id else { return Err(OpsError::Conflict(format!("no schedule named {name:?}"))) };
    let changed = sqlx::query("UPDATE schedules SET enabled = $2 WHERE id = $1 AND enabled <> $2")
        .bind(id)
        .bind(enabled)
        .execute(&mut *tx)
        .await?
        .rows_affected()
        > 0;
    if changed {
        let action = if enabled { "schedule.resume" } else { "schedule.pause" };
        audit(&mut tx, actor, action, ("schedule", id), serde_json::json!({ "name": name })).await?;
    }
    tx.commit().await?;
    Ok(changed)
}

/// `run-now`: makes the order of the current minute's slot (the database clock, truncated to
/// the minute), audited. Two run-nows in the same minute, on any replica, make one order.
pub async fn run_now(pool: &PgPool, name: &str, actor: &str) -> Result<(DateTime<Utc>, Option<Uuid>), OpsError> {
    let mut tx = pool.begin().await?;
    let row: Option<(Uuid, DateTime<Utc>)> =
        sqlx::query_as("SELECT id, date_trunc('minute', now()) FROM schedules WHERE name = $1")
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?;
    let Some((id, slot)) = row else { return Err(OpsError::Conflict(format!("no schedule named {name:?}"))) };
    let made = make_slot(&mut tx, id, slot).await?;
    audit(
        &mut tx,
        actor,
        "schedule.run_now",
        ("schedule", id),
        serde_json::json!({ "name": name, "slot": slot, "work_order_id": made }),
    )
    .await?;
    tx.commit().await?;
    Ok((slot, made))
}
