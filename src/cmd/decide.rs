//! `orderly approve` and `orderly reject`: a human decision on an item held in
//! AWAITING_APPROVAL.

use super::{actor, connect};
use crate::actions::decide_held;
use crate::cli::DecisionArgs;
use crate::config::Settings;
use crate::model::{Decision, NextState};
use std::sync::Arc;

pub async fn run(settings: &Settings, decision: Decision, args: DecisionArgs) -> anyhow::Result<()> {
    let pool = connect(settings).await?;
    let actor = actor(args.actor);
    let settings = Arc::new(settings.clone());
    let reason = args.reason.as_deref();
    let next = decide_held(&pool, &settings, None, args.item, decision, &actor, reason, args.revise).await?;
    let verb = if decision == Decision::Approved { "approved" } else { "rejected" };
    let outcome = match next {
        NextState::Completed => "is COMPLETED".to_owned(),
        NextState::Retry { delay_ms } => format!("is QUEUED for another attempt in {:.1}s", delay_ms as f64 / 1000.0),
        NextState::DeadLetter { .. } => "is FAILED: its attempts are spent, see `orderly dead-letters list`".to_owned(),
        NextState::Revise => "is QUEUED: its agent revises the output with the reason as feedback".to_owned(),
        other => format!("is {}", other.item_status().as_str()),
    };
    println!("{verb}: work item {} {outcome}", args.item);
    Ok(())
}
