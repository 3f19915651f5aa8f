//! Budgets (migration 0028): made, raised, reset and removed by operators (audited, each in
//! one transaction that also lets the items it stopped run again), read by the dispatcher
//! at every claim while any budget exists, and the claimed items of an exhausted scope
//! parked: back to QUEUED until the period ends (`wait`) or to AWAITING_APPROVAL (`hold`),
//! their claim undone, no attempt spent. The spend is added by the cost entries' trigger.

use super::OpsError;
use super::audit::audit;
use crate::policy::budgets::{NewBudget, Scope};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

/// A budget as the surfaces show it; `spent` is the current period's (zero once a period
/// has rolled over without spend).
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct BudgetRow {
    pub id: Uuid,
    pub name: String,
    pub tenant_id: Option<Uuid>,
    pub workflow_id: Option<String>,
    pub work_order_id: Option<Uuid>,
    pub amount: String,
    pub currency: String,
    pub period: String,
    pub time_zone: String,
    pub on_exhausted: String,
    pub connectors: Vec<String>,
    pub spent: String,
    /// Spent as a share of the amount, in percent (for display; the decision is exact).
    pub percent: f64,
    pub exhausted: bool,
    /// When the current period ends (`None` for a total budget).
    pub period_end: Option<DateTime<Utc>>,
    /// Items it stopped that still wait or are held.
    pub waiting: i64,
    pub updated_at: DateTime<Utc>,
}

impl BudgetRow {
    pub fn scope(&self) -> String {
        match (&self.tenant_id, &self.workflow_id, &self.work_order_id) {
            (Some(t), ..) => format!("tenant:{t}"),
            (_, Some(w), _) => format!("workflow:{w}"),
            (.., Some(o)) => format!("order:{o}"),
            _ => "?".into(),
        }
    }
}

const SELECT: &str = "
    SELECT b.id, b.name, b.tenant_id, b.workflow_id, b.work_order_id, b.amount::text AS amount, b.currency,
           b.period, b.time_zone, b.on_exhausted, b.connectors,
           (CASE WHEN cur THEN b.spent ELSE 0 END)::text AS spent,
           round(100 * CASE WHEN cur THEN b.spent ELSE 0 END / b.amount, 2)::float8 AS percent,
           cur AND b.exhausted_at IS NOT NULL AS exhausted,
           CASE WHEN b.period <> 'total' THEN orderly_budget_period_end(b.period, b.time_zone, now()) END AS period_end,
           (SELECT count(*) FROM budget_waits w JOIN work_items i ON i.id = w.work_item_id
            WHERE w.budget_id = b.id AND i.status IN ('QUEUED', 'AWAITING_APPROVAL')) AS waiting,
           b.updated_at
    FROM budgets b, LATERAL (SELECT b.period_start = orderly_budget_period_start(b.period, b.time_zone, now()) AS cur) c
    WHERE $1::text IS NULL OR b.name = $1
    ORDER BY b.name";

/// Empty on a Citus cluster: budgets are refused there, and any copied from one PostgreSQL are
/// not applied (docs/distributed.md).
pub async fn list(pool: &PgPool) -> Result<Vec<BudgetRow>, sqlx::Error> {
    if super::distributed::topology(pool).await? == super::distributed::Topology::Distributed {
        return Ok(Vec::new());
    }
    sqlx::query_as(SELECT).bind(None::<&str>).fetch_all(pool).await
}

pub async fn get(pool: &PgPool, name: &str) -> Result<BudgetRow, OpsError> {
    sqlx::query_as(SELECT)
        .bind(name)
        .fetch_optional(pool)
        .await?
        .ok_or_else(|| OpsError::Missing(format!("no budget named {name:?}")))
}

fn invalid(message: String) -> OpsError {
    OpsError::Invalid { code: "BUDGET_INVALID", message }
}

/// Creates a budget. Its spend starts at what the scope already spent in the current period
/// (for a total budget: ever), from the cost entries.
pub async fn create(pool: &PgPool, new: &NewBudget, actor: &str) -> Result<BudgetRow, OpsError> {
    let (tenant, workflow, order) = match &new.scope {
        Scope::Tenant(t) => (Some(*t), None, None),
        Scope::Workflow(w) => (None, Some(w.as_str()), None),
        Scope::Order(o) => (None, None, Some(*o)),
    };
    let mut tx = pool.begin().await?;
    // What the scope already spent this period, read first: the insert's trigger enables the
    // cost entries' budget trigger (migration 0033), which it cannot while this session's
    // statement still reads cost_entries.
    // A total budget's period starts at '-infinity', which chrono cannot hold: NULL here.
    let spent: Result<(String, Option<DateTime<Utc>>), sqlx::Error> = sqlx::query_as(
        "SELECT coalesce(sum(c.amount), 0)::text, CASE WHEN isfinite(p.start) THEN p.start END
         FROM (SELECT orderly_budget_period_start($4, $5, now()) AS start) p
         LEFT JOIN cost_entries c ON c.currency = $6 AND c.created_at >= p.start
              AND (c.tenant_id = $1 OR c.workflow_id = $2 OR c.work_order_id = $3)
         GROUP BY p.start",
    )
    .bind(tenant)
    .bind(workflow)
    .bind(order)
    .bind(new.period.as_str())
    .bind(&new.time_zone)
    .bind(&new.currency)
    .fetch_one(&mut *tx)
    .await;
    let (spent, start) = match spent {
        Ok(found) => found,
        Err(sqlx::Error::Database(e)) if e.code().is_some_and(|c| c == "22023") => {
            return Err(invalid(e.message().to_owned()));
        }
        Err(e) => return Err(e.into()),
    };
    let inserted: Result<Uuid, sqlx::Error> = sqlx::query_scalar(
        "INSERT INTO budgets (name, tenant_id, workflow_id, work_order_id, currency, amount, period, time_zone,
                              on_exhausted, connectors, spent, period_start, notified_percent, exhausted_at)
         VALUES ($1, $2, $3, $4, $5, $6::numeric, $7, $8, $9, $10, $11::numeric,
                 coalesce($12::timestamptz, '-infinity'),
                 CASE WHEN $11::numeric >= $6::numeric THEN 100 WHEN $11::numeric >= 0.8 * $6::numeric THEN 80 ELSE 0 END,
                 CASE WHEN $11::numeric >= $6::numeric THEN now() END)
         RETURNING id",
    )
    .bind(&new.name)
    .bind(tenant)
    .bind(workflow)
    .bind(order)
    .bind(&new.currency)
    .bind(&new.amount)
    .bind(new.period.as_str())
    .bind(&new.time_zone)
    .bind(new.on_exhausted.as_str())
    .bind(&new.connectors)
    .bind(&spent)
    .bind(start)
    .fetch_one(&mut *tx)
    .await;
    let id = match inserted {
        Ok(id) => id,
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
            return Err(OpsError::Conflict(format!("a budget named {:?} exists already", new.name)));
        }
        // An unknown time zone (22023) or a value the table's checks refuse.
        Err(sqlx::Error::Database(e)) if e.code().is_some_and(|c| c == "22023" || c.starts_with("23")) => {
            return Err(invalid(e.message().to_owned()));
        }
        Err(e) => return Err(e.into()),
    };
    let details = json!({"scope": new.scope.label(), "amount": new.amount, "currency": new.currency,
                         "period": new.period.as_str(), "time_zone": new.time_zone,
                         "on_exhausted": new.on_exhausted.as_str(), "connectors": new.connectors});
    audit(&mut tx, actor, "budget.create", ("budget", id), details).await?;
    tx.commit().await?;
    get(pool, &new.name).await
}

/// What an operator changes on a budget.
#[derive(Debug, Clone, Copy)]
pub enum Change<'a> {
    /// A new amount (raised or lowered).
    Amount(&'a str),
    /// The current period's spend back to zero.
    Reset,
    /// Gone, with what it stopped let go.
    Remove,
}

/// Changes a budget in one transaction (the row locked, so a completer's spend waits for it),
/// audited; when it is no longer exhausted, the items it stopped run again at once.
pub async fn change(pool: &PgPool, name: &str, change: Change<'_>, actor: &str) -> Result<Option<BudgetRow>, OpsError> {
    let mut tx = pool.begin().await?;
    let found: Option<(Uuid, String)> =
        sqlx::query_as("SELECT id, amount::text FROM budgets WHERE name = $1 FOR NO KEY UPDATE")
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?;
    let Some((id, was)) = found else {
        return Err(OpsError::Missing(format!("no budget named {name:?}")));
    };
    let (action, details) = match change {
        Change::Amount(amount) => {
            sqlx::query("UPDATE budgets SET amount = $2::numeric, updated_at = now() WHERE id = $1")
                .bind(id)
                .bind(amount)
                .execute(&mut *tx)
                .await?;
            ("budget.amount", json!({"from": was, "to": amount}))
        }
        Change::Reset => {
            sqlx::query("UPDATE budgets SET spent = 0, updated_at = now() WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            ("budget.reset", json!({"amount": was}))
        }
        Change::Remove => ("budget.remove", json!({"amount": was})),
    };
    // Exhaustion and the notified threshold follow the (current period's) spend.
    sqlx::query(
        "UPDATE budgets SET
             exhausted_at = CASE WHEN spent >= amount THEN coalesce(exhausted_at, now()) END,
             notified_percent = CASE WHEN spent >= amount THEN 100 WHEN spent >= 0.8 * amount THEN least(notified_percent, 80)
                                     ELSE 0 END
         WHERE id = $1",
    )
    .bind(id)
    .execute(&mut *tx)
    .await?;
    let released: i64 = sqlx::query_scalar(
        "WITH gone AS (
             DELETE FROM budget_waits w USING budgets b
             WHERE w.budget_id = $1 AND b.id = w.budget_id AND ($2 OR b.exhausted_at IS NULL
                   OR b.period_start <> orderly_budget_period_start(b.period, b.time_zone, now()))
             RETURNING w.work_item_id
         ), ran AS (
             UPDATE work_items i SET status = 'QUEUED', run_at = now()
             FROM gone WHERE i.id = gone.work_item_id AND i.status IN ('QUEUED', 'AWAITING_APPROVAL')
               AND i.lease_expires_at IS NULL
             RETURNING 1
         )
         SELECT count(*) FROM ran",
    )
    .bind(id)
    .bind(matches!(change, Change::Remove))
    .fetch_one(&mut *tx)
    .await?;
    if let Change::Remove = change {
        sqlx::query("DELETE FROM budgets WHERE id = $1").bind(id).execute(&mut *tx).await?;
    }
    let mut details = details;
    details["released"] = json!(released);
    audit(&mut tx, actor, action, ("budget", id), details).await?;
    tx.commit().await?;
    match change {
        Change::Remove => Ok(None),
        _ => get(pool, name).await.map(Some),
    }
}

/// Whether any budget exists (the dispatcher checks budgets at its claims only then).
pub async fn any(pool: &PgPool) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM budgets)").fetch_one(pool).await
}

/// An exhausted budget over one of a claim's scopes.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Exhausted {
    pub id: Uuid,
    pub tenant_id: Option<Uuid>,
    pub workflow_id: Option<String>,
    pub work_order_id: Option<Uuid>,
    pub hold: bool,
}

impl Exhausted {
    pub fn covers(&self, tenant: Uuid, workflow: &str, order: Uuid) -> bool {
        self.tenant_id == Some(tenant)
            || self.workflow_id.as_deref() == Some(workflow)
            || self.work_order_id == Some(order)
    }
}

/// The budgets exhausted in their current period among these scopes, by name.
pub async fn exhausted(
    pool: &PgPool,
    tenants: &[Uuid],
    workflows: &[&str],
    orders: &[Uuid],
) -> Result<Vec<Exhausted>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, tenant_id, workflow_id, work_order_id, on_exhausted = 'hold' AS hold FROM budgets
         WHERE exhausted_at IS NOT NULL AND period_start = orderly_budget_period_start(period, time_zone, now())
           AND (tenant_id = ANY ($1) OR workflow_id = ANY ($2) OR work_order_id = ANY ($3))
         ORDER BY name",
    )
    .bind(tenants)
    .bind(workflows)
    .bind(orders)
    .fetch_all(pool)
    .await
}

/// Undoes the claims of items an exhausted budget stops, `(item, attempt, budget, hold)`:
/// QUEUED until the budget's period ends, or AWAITING_APPROVAL; the attempt number back to
/// what it was (no agent ran, no attempt row is written). An item a person let run past the
/// budget (`allowed`) is not parked, once. Returns the items parked.
pub async fn park(pool: &PgPool, parks: &[(Uuid, i32, Uuid, bool)]) -> Result<Vec<Uuid>, sqlx::Error> {
    let ids: Vec<Uuid> = parks.iter().map(|p| p.0).collect();
    let attempts: Vec<i32> = parks.iter().map(|p| p.1).collect();
    let budgets: Vec<Uuid> = parks.iter().map(|p| p.2).collect();
    let holds: Vec<bool> = parks.iter().map(|p| p.3).collect();
    sqlx::query_scalar(
        "WITH p AS (
             SELECT * FROM unnest($1::uuid[], $2::int[], $3::uuid[], $4::bool[]) AS p(id, attempt, budget, hold)
         ), allowed AS (
             DELETE FROM budget_waits w USING p WHERE w.work_item_id = p.id AND w.allowed RETURNING w.work_item_id
         ), parked AS (
             UPDATE work_items i
             SET status = CASE WHEN p.hold THEN 'AWAITING_APPROVAL' ELSE 'QUEUED' END::work_item_status,
                 attempt = i.attempt - 1,
                 run_at = CASE WHEN p.hold THEN i.run_at ELSE orderly_budget_period_end(b.period, b.time_zone, now()) END,
                 lease_expires_at = NULL, locked_by = NULL, claimed_at = NULL
             FROM p JOIN budgets b ON b.id = p.budget
             WHERE i.id = p.id AND i.attempt = p.attempt AND i.status = 'PROCESSING'
               AND p.id NOT IN (SELECT work_item_id FROM allowed)
             RETURNING i.id, p.budget, p.hold
         )
         INSERT INTO budget_waits AS w (work_item_id, budget_id, held) SELECT id, budget, hold FROM parked
         ON CONFLICT (work_item_id) DO UPDATE SET budget_id = excluded.budget_id, held = excluded.held,
                                                  allowed = false, since = now()
         RETURNING w.work_item_id",
    )
    .bind(&ids)
    .bind(&attempts)
    .bind(&budgets)
    .bind(&holds)
    .fetch_all(pool)
    .await
}

/// A person's decision on an item a budget holds: approved, it runs once past the budget
/// (QUEUED now, let through at its next claim); rejected, it waits like a `wait` budget's
/// items. Audited; a decision on an item no longer held is a conflict.
pub async fn decide_hold(
    pool: &PgPool,
    item: Uuid,
    approve: bool,
    actor: &str,
    reason: Option<&str>,
) -> Result<crate::model::NextState, OpsError> {
    let mut tx = pool.begin().await?;
    let run_at: Option<Option<DateTime<Utc>>> = sqlx::query_scalar(
        "WITH w AS (
             UPDATE budget_waits w SET held = false, allowed = $2, since = now()
             FROM budgets b, work_items i
             WHERE w.work_item_id = $1 AND w.held AND b.id = w.budget_id AND i.id = w.work_item_id
               AND i.status = 'AWAITING_APPROVAL'
             RETURNING w.work_item_id, CASE WHEN $2 THEN now()
                                            ELSE orderly_budget_period_end(b.period, b.time_zone, now()) END AS run_at
         )
         UPDATE work_items i SET status = 'QUEUED', run_at = w.run_at FROM w WHERE i.id = w.work_item_id
         RETURNING CASE WHEN isfinite(i.run_at) THEN i.run_at END",
    )
    .bind(item)
    .bind(approve)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(run_at) = run_at else {
        return Err(OpsError::Conflict(format!("work item {item} is no longer held by a budget")));
    };
    let action = if approve { "work_item.budget_allow" } else { "work_item.budget_wait" };
    audit(&mut tx, actor, action, ("work_item", item), json!({"reason": reason})).await?;
    tx.commit().await?;
    let delay_ms = run_at.map_or(i64::MAX, |t| (t - Utc::now()).num_milliseconds().max(0));
    Ok(crate::model::NextState::Released { delay_ms })
}

/// Whether a budget holds this item (an AWAITING_APPROVAL item without output to decide on).
pub async fn holds(pool: &PgPool, item: Uuid) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM budget_waits WHERE work_item_id = $1 AND held)")
        .bind(item)
        .fetch_one(pool)
        .await
}
