//! Human decisions on items held in AWAITING_APPROVAL: approve, reject, and reject with
//! revise (the output goes back to its agent with the person's comment, docs/review.md).

use crate::config::Settings;
use crate::db;
use crate::model::{Budget, Decision, NextState};
use crate::policy::catalog::{Catalog, RouteError};
use crate::policy::decision::{Backoff, Outcome, next_state};
use sqlx::PgPool;
use std::sync::Arc;
use uuid::Uuid;

/// What a human decision on a held item does to it: approved, it is COMPLETED; rejected,
/// the same rule as the policy's own rejection (a retry after the backoff while the budget
/// lasts, else a dead letter). An item an exhausted spending budget holds before it ran is
/// let run once (approved) or left waiting (rejected), see `db::budgets::decide_hold`. Writes it all (see `db::approvals::record_human_decision`),
/// and counts it in `metrics` when it runs inside a daemon (the API and the page).
/// `revise`: a rejection that sends the output back to its agent with the reason as the
/// feedback (a revision, with a fresh attempt budget; docs/review.md); it needs a reason.
#[allow(clippy::too_many_arguments)]
pub async fn decide_held(
    pool: &PgPool,
    settings: &Arc<Settings>,
    metrics: Option<&crate::metrics::Metrics>,
    item_id: Uuid,
    decision: Decision,
    actor: &str,
    reason: Option<&str>,
    revise: bool,
) -> Result<NextState, db::OpsError> {
    let reason = super::reason(reason)?;
    if revise && decision != Decision::Rejected {
        return Err(db::OpsError::Invalid {
            code: "REVISE_INVALID",
            message: "only a rejection can send an item back for revision".into(),
        });
    }
    if revise && reason.is_none() {
        return Err(db::OpsError::Invalid {
            code: "REASON_REQUIRED",
            message: "a rejection with revise needs a reason: it is the feedback the agent receives".into(),
        });
    }
    if db::budgets::holds(pool, item_id).await? {
        if revise {
            return Err(db::OpsError::Conflict(format!(
                "work item {item_id} is held by a budget before it ran: there is no output to revise"
            )));
        }
        // Held before it ran by an exhausted budget: run it anyway, or let it wait.
        return db::budgets::decide_hold(pool, item_id, decision == Decision::Approved, actor, reason).await;
    }
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
    let (_, next) = if revise {
        (crate::model::AttemptStatus::Failed, NextState::Revise)
    } else {
        next_state(&Outcome::Succeeded(decision), budget, backoff, fastrand::f64())
    };
    let human = db::approvals::HumanDecision { decision, next, actor, reason, attempts_used: budget.used };
    db::approvals::record_human_decision(pool, &item, &human).await?;
    if let Some(metrics) = metrics {
        metrics.approval_decided(decision, crate::metrics::SOURCE_HUMAN);
    }
    Ok(human.next)
}
