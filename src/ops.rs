//! Operators' commands: migrate, enqueue, status, dead letters, approve and reject,
//! check-config. They print
//! for humans (or JSON with --json) and go through `db` like everything else.

use crate::agent::Registry;
use crate::cli::{DeadLetterCommand, DecisionArgs, EnqueueArgs};
use crate::config::{Settings, redact_url};
use crate::db::{self, ops};
use crate::model::{Decision, NextState};
use crate::worker::catalog::{Catalog, RouteError};
use crate::worker::decision::{Backoff, Budget, Outcome, next_state};
use anyhow::{Context, bail};
use sqlx::PgPool;
use std::fmt::Write as _;
use std::sync::Arc;
use uuid::Uuid;

/// Connects, explaining how to fix an unreachable database.
pub async fn connect(settings: &Settings) -> anyhow::Result<PgPool> {
    db::connect(&settings.database).await.map_err(|e| unreachable_hint(&settings.database.url, e))
}

/// Turns a connection failure into a message that says what to do.
pub fn unreachable_hint(url: &str, e: sqlx::Error) -> anyhow::Error {
    anyhow::anyhow!(
        "cannot reach PostgreSQL at {}: {e}\n\
         Start PostgreSQL (e.g. `pg_ctlcluster 15 main start` or `systemctl start postgresql`), \
         or point orderly at it with DATABASE_URL=postgres://USER@HOST:PORT/DB",
        redact_url(url)
    )
}

pub async fn migrate(settings: &Settings) -> anyhow::Result<()> {
    let created =
        db::ensure_database(&settings.database.url).await.map_err(|e| unreachable_hint(&settings.database.url, e))?;
    let pool = connect(settings).await?;
    db::migrate(&pool).await.context("applying migrations")?;
    println!(
        "{} {}: migrations applied",
        if created { "created" } else { "database" },
        redact_url(&settings.database.url)
    );
    Ok(())
}

pub fn check_config(settings: &Settings, registry: &Registry) -> anyhow::Result<()> {
    registry.build(settings)?;
    print!("{}", settings.redacted_toml());
    Ok(())
}

pub async fn enqueue(settings: &Settings, args: EnqueueArgs) -> anyhow::Result<()> {
    let order = match &args.file {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            serde_json::from_str::<ops::NewOrder>(&text).with_context(|| format!("parsing {}", path.display()))?
        }
        None => {
            if args.item.is_empty() {
                bail!("give at least one --item TYPE=CONTENT, or --file ORDER.json");
            }
            let items = args
                .item
                .iter()
                .map(|spec| {
                    let (item_type, content) =
                        spec.split_once('=').with_context(|| format!("--item `{spec}` is not TYPE=CONTENT"))?;
                    Ok(ops::NewItem {
                        item_type: item_type.trim().to_owned(),
                        content: serde_json::Value::String(content.to_owned()),
                    })
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            ops::NewOrder {
                workflow_id: args.workflow.clone(),
                tenant_id: args.tenant.unwrap_or_else(Uuid::new_v4),
                created_by: args.created_by.unwrap_or_else(Uuid::new_v4),
                priority: Some(args.priority.to_ascii_uppercase()),
                metadata: None,
                items,
            }
        }
    };
    if order.items.is_empty() {
        bail!("the order has no items");
    }
    let pool = connect(settings).await?;
    let (order_id, items) = ops::enqueue(&pool, &order).await.context("enqueueing")?;
    println!("work order {order_id}");
    for (id, item) in items.iter().zip(&order.items) {
        println!("  work item {id} {}", item.item_type);
    }
    Ok(())
}

pub async fn status(settings: &Settings, json: bool) -> anyhow::Result<()> {
    let pool = connect(settings).await?;
    let status = ops::queue_status(&pool, 20).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(());
    }
    let mut out = String::new();
    writeln!(out, "{:<18} {:<16} {:>10}", "STATUS", "TYPE", "ITEMS")?;
    for row in &status.counts {
        writeln!(out, "{:<18} {:<16} {:>10}", row.status, row.item_type, row.count)?;
    }
    if status.counts.is_empty() {
        writeln!(out, "(no work items)")?;
    }
    match status.oldest_queued_seconds {
        Some(age) => writeln!(out, "\noldest runnable item queued {age:.1}s ago")?,
        None => writeln!(out, "\nnothing runnable is waiting")?,
    }
    writeln!(out, "scheduled for retry: {}", status.scheduled)?;
    writeln!(out, "open dead letters: {}", status.open_dead_letters)?;
    writeln!(out, "in flight: {}", status.in_flight.len())?;
    for item in &status.in_flight {
        writeln!(
            out,
            "  {} {:<14} attempt {:<3} rescues {:<2} lease {} by {}",
            item.id,
            item.item_type,
            item.attempt,
            item.rescues,
            match item.lease_remaining_ms {
                Some(ms) if ms >= 0 => format!("expires in {:.1}s", ms as f64 / 1000.0),
                Some(ms) => format!("EXPIRED {:.1}s ago", -ms as f64 / 1000.0),
                None => "none".into(),
            },
            item.locked_by.as_deref().unwrap_or("?")
        )?;
    }
    print!("{out}");
    Ok(())
}

pub async fn dead_letters(settings: &Settings, command: DeadLetterCommand) -> anyhow::Result<()> {
    let pool = connect(settings).await?;
    let actor = |given: Option<String>| given.or_else(|| std::env::var("USER").ok()).unwrap_or_else(|| "cli".into());
    match command {
        DeadLetterCommand::List { all, limit, json } => {
            let rows = ops::dead_letters(&pool, all, limit).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
                return Ok(());
            }
            if rows.is_empty() {
                println!("no dead letters");
            }
            for row in rows {
                println!(
                    "{}  {:<14} {:<18} {:<24} tries {:<3} {}{}",
                    row.id,
                    row.event_type,
                    row.reason.as_deref().map(describe_reason).unwrap_or("?"),
                    row.error_code.as_deref().unwrap_or("-"),
                    row.retry_count,
                    row.created_at.format("%Y-%m-%d %H:%M:%S"),
                    row.resolution.map(|r| format!("  [{r}]")).unwrap_or_default(),
                );
            }
        }
        DeadLetterCommand::Show { id, json } => {
            let detail = ops::dead_letter(&pool, id).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&detail)?);
                return Ok(());
            }
            let d = &detail.dead_letter;
            println!("dead letter {}", d.id);
            println!("  kind:        {}", d.reason.as_deref().map(describe_reason).unwrap_or("?"));
            println!("  error code:  {}", d.error_code.as_deref().unwrap_or("-"));
            println!("  error:       {}", d.error);
            println!("  attempts:    {}", d.retry_count);
            println!("  agent:       {}", d.source);
            println!("  created:     {}", d.created_at);
            if let Some(resolution) = &d.resolution {
                println!(
                    "  resolution:  {resolution} at {}",
                    d.processed_at.map(|t| t.to_string()).unwrap_or_default()
                );
            }
            println!("\nitem:\n{}", serde_json::to_string_pretty(&detail.item)?);
            println!("\nattempts:");
            for a in &detail.attempts {
                println!(
                    "  #{} {} agent={} {}ms {} {}",
                    a["number"],
                    a["status"].as_str().unwrap_or("?"),
                    a["agent"].as_str().unwrap_or("?"),
                    a["duration_ms"],
                    a["error_code"].as_str().unwrap_or(""),
                    a["error"].as_str().unwrap_or("")
                );
            }
            println!("\neval results:");
            for e in &detail.eval_results {
                println!(
                    "  {} passed={} score={} {}",
                    e["evaluation_type"].as_str().unwrap_or("?"),
                    e["passed"],
                    e["score"],
                    e["metrics"]
                );
            }
            println!("\napprovals:");
            for a in &detail.approvals {
                println!(
                    "  {} by {} ({})",
                    a["decision"].as_str().unwrap_or("?"),
                    a["approver_id"].as_str().unwrap_or("?"),
                    a["policy_version"].as_str().unwrap_or("?")
                );
            }
            println!("\npayload:\n{}", serde_json::to_string_pretty(&detail.payload)?);
        }
        DeadLetterCommand::Replay { id, content, actor: who } => {
            let content = match content {
                Some(path) => {
                    Some(std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?)
                }
                None => None,
            };
            let item = ops::replay_dead_letter(&pool, id, content.as_deref(), &actor(who)).await?;
            println!("replayed: work item {item} is QUEUED with a fresh attempt budget");
        }
        DeadLetterCommand::Discard { id, reason, actor: who } => {
            let item = ops::discard_dead_letter(&pool, id, &actor(who), reason.as_deref()).await?;
            println!("discarded: work item {item} stays FAILED");
        }
    }
    Ok(())
}

/// What a human decision on a held item does to it: approved, it is COMPLETED; rejected,
/// the same rule as the policy's own rejection (a retry after the backoff while the budget
/// lasts, else a dead letter). Writes it all (see `db::ops::record_human_decision`).
pub async fn decide_held(
    pool: &PgPool,
    settings: &Arc<Settings>,
    item_id: Uuid,
    decision: Decision,
    actor: &str,
    reason: Option<&str>,
) -> Result<NextState, ops::OpsError> {
    let item = ops::held_item(pool, item_id).await?;
    // The budget as the runner computes it: the item's own, the template step's, the config's.
    let step = match Catalog::new(pool.clone(), settings.clone()).resolve(&item.workflow_id, &item.item_type).await {
        Ok(step) => step.max_attempts,
        // The template is read to size the budget only; without a valid step, the defaults.
        Err(RouteError::Invalid { .. }) => None,
        Err(e @ RouteError::Unavailable { .. }) => return Err(ops::OpsError::Unavailable(e.to_string())),
    };
    let max = Budget::ceiling(item.max_attempts, step, settings.retry.max_attempts);
    let budget = Budget { used: item.attempt - item.attempt_base, max };
    let backoff = Backoff { base: settings.retry.backoff_base, max: settings.retry.backoff_max };
    let (_, next) = next_state(&Outcome::Succeeded(decision), budget, backoff, fastrand::f64());
    let human = ops::HumanDecision { decision, next, actor, reason, attempts_used: budget.used };
    ops::record_human_decision(pool, &item, &human).await?;
    Ok(human.next)
}

pub async fn decide(settings: &Settings, decision: Decision, args: DecisionArgs) -> anyhow::Result<()> {
    let pool = connect(settings).await?;
    let actor = args.actor.or_else(|| std::env::var("USER").ok()).unwrap_or_else(|| "cli".into());
    let settings = Arc::new(settings.clone());
    let next = decide_held(&pool, &settings, args.item, decision, &actor, args.reason.as_deref()).await?;
    let verb = if decision == Decision::Approved { "approved" } else { "rejected" };
    let outcome = match next {
        NextState::Completed => "is COMPLETED".to_owned(),
        NextState::Retry { delay_ms } => format!("is QUEUED for another attempt in {:.1}s", delay_ms as f64 / 1000.0),
        NextState::DeadLetter { .. } => "is FAILED: its attempts are spent, see `orderly dead-letters list`".to_owned(),
        other => format!("is {}", other.item_status().as_str()),
    };
    println!("{verb}: work item {} {outcome}", args.item);
    Ok(())
}

fn describe_reason(reason: &str) -> &'static str {
    match reason {
        "PERMANENT" => "permanent error",
        "RETRIES_EXHAUSTED" => "retries exhausted",
        "CRASH_LOOP" => "crash loop",
        _ => "unknown",
    }
}
