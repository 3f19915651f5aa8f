//! What an operator can do to the queue beyond what `db` does in one statement, shared by
//! every surface (the CLI now, the admin API later): decisions that apply the same rules as
//! the engine (`rules`).

use crate::config::Settings;
use crate::db;
use crate::model::{Budget, Decision, NextState};
use crate::rules::catalog::{Catalog, RouteError};
use crate::rules::decision::{Backoff, Outcome, next_state};
use sqlx::PgPool;
use std::sync::Arc;
use uuid::Uuid;

/// What a human decision on a held item does to it: approved, it is COMPLETED; rejected,
/// the same rule as the policy's own rejection (a retry after the backoff while the budget
/// lasts, else a dead letter). Writes it all (see `db::approvals::record_human_decision`).
pub async fn decide_held(
    pool: &PgPool,
    settings: &Arc<Settings>,
    item_id: Uuid,
    decision: Decision,
    actor: &str,
    reason: Option<&str>,
) -> Result<NextState, db::OpsError> {
    let item = db::approvals::held_item(pool, item_id).await?;
    // The budget as the runner computes it: the item's own, the template step's, the config's.
    let step = match Catalog::new(pool.clone(), settings.clone()).resolve(&item.workflow_id, &item.item_type).await {
        Ok(step) => step.max_attempts,
        // The template is read to size the budget only; without a valid step, the defaults.
        Err(RouteError::Invalid { .. }) => None,
        Err(e @ RouteError::Unavailable { .. }) => return Err(db::OpsError::Unavailable(e.to_string())),
    };
    let max = Budget::ceiling(item.max_attempts, step, settings.retry.max_attempts);
    let budget = Budget { used: item.attempt - item.attempt_base, max };
    let backoff = Backoff { base: settings.retry.backoff_base, max: settings.retry.backoff_max };
    let (_, next) = next_state(&Outcome::Succeeded(decision), budget, backoff, fastrand::f64());
    let human = db::approvals::HumanDecision { decision, next, actor, reason, attempts_used: budget.used };
    db::approvals::record_human_decision(pool, &item, &human).await?;
    Ok(human.next)
}
