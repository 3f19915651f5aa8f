//! Budgets as every surface takes them (the CLI, the JSON API, the page): the operator's
//! text checked into a `policy::budgets::NewBudget` or an amount, then written by
//! `db::budgets`. A refusal is `OpsError::Invalid` with code `BUDGET_INVALID`.

use crate::db;
use crate::db::OpsError;
use crate::db::budgets::{BudgetRow, Change};
use crate::policy::budgets::{self, NewBudget, Scope};
use sqlx::PgPool;

/// A budget as an operator asks for it, all text.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BudgetRequest {
    pub name: String,
    pub scope: String,
    pub amount: String,
    pub currency: String,
    #[serde(default)]
    pub period: Option<String>,
    #[serde(default)]
    pub time_zone: Option<String>,
    #[serde(default)]
    pub on_exhausted: Option<String>,
    #[serde(default)]
    pub connectors: Vec<String>,
}

fn invalid(message: String) -> OpsError {
    OpsError::Invalid { code: "BUDGET_INVALID", message }
}

/// Checks a request; every problem is named.
pub fn check(request: &BudgetRequest) -> Result<NewBudget, OpsError> {
    let time_zone = request.time_zone.as_deref().map(str::trim).filter(|z| !z.is_empty()).unwrap_or("UTC");
    if time_zone.len() > 64 || time_zone.chars().any(char::is_control) {
        return Err(invalid(format!("time zone {time_zone:?} is not a time zone name")));
    }
    let connectors: Vec<String> =
        request.connectors.iter().map(|c| c.trim().to_owned()).filter(|c| !c.is_empty()).collect();
    if connectors.len() > 20 || connectors.iter().any(|c| c.len() > 255) {
        return Err(invalid("at most 20 connectors, each name at most 255 bytes".into()));
    }
    Ok(NewBudget {
        name: budgets::name(&request.name).map_err(invalid)?,
        scope: Scope::parse(&request.scope).map_err(invalid)?,
        amount: budgets::amount(&request.amount).map_err(invalid)?,
        currency: budgets::currency(&request.currency).map_err(invalid)?,
        period: request.period.as_deref().unwrap_or("total").parse().map_err(|e| invalid(format!("period: {e}")))?,
        time_zone: time_zone.to_owned(),
        on_exhausted: request
            .on_exhausted
            .as_deref()
            .unwrap_or("wait")
            .parse()
            .map_err(|e| invalid(format!("on_exhausted: {e}")))?,
        connectors,
    })
}

pub async fn create(pool: &PgPool, request: &BudgetRequest, actor: &str) -> Result<BudgetRow, OpsError> {
    let new = check(request)?;
    db::budgets::create(pool, &new, actor).await
}

/// Sets a budget's amount (raised or lowered).
pub async fn set_amount(pool: &PgPool, name: &str, amount: &str, actor: &str) -> Result<BudgetRow, OpsError> {
    let amount = budgets::amount(amount).map_err(invalid)?;
    let row = db::budgets::change(pool, name, Change::Amount(&amount), actor).await?;
    row.ok_or_else(|| invalid(format!("budget {name:?} vanished")))
}

pub async fn reset(pool: &PgPool, name: &str, actor: &str) -> Result<BudgetRow, OpsError> {
    let row = db::budgets::change(pool, name, Change::Reset, actor).await?;
    row.ok_or_else(|| invalid(format!("budget {name:?} vanished")))
}

pub async fn remove(pool: &PgPool, name: &str, actor: &str) -> Result<(), OpsError> {
    db::budgets::change(pool, name, Change::Remove, actor).await.map(|_| ())
}
