//! `orderly dead-letters list | show | replay | discard`.

use super::{actor, connect};
use crate::actions;
use crate::cli::DeadLetterCommand;
use crate::config::Settings;
use crate::db;
use crate::model::DeadLetterReason;
use crate::policy::catalog::Catalog;
use anyhow::Context;
use std::sync::Arc;

pub async fn run(settings: &Settings, command: DeadLetterCommand) -> anyhow::Result<()> {
    let pool = connect(settings).await?;
    match command {
        DeadLetterCommand::List(crate::cli::ListArgs { all, limit, json }) => {
            let rows = db::dead_letters::list(&pool, all, limit).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
                return Ok(());
            }
            if rows.is_empty() {
                println!("no dead letters");
            }
            for row in rows {
                println!(
                    "{}  item {}  {:<14} {:<18} {:<24} tries {:<3} {}{}",
                    row.id,
                    row.work_item_id.map_or("-".to_owned(), |i| i.to_string()),
                    row.event_type,
                    row.reason.map(describe_reason).unwrap_or("?"),
                    row.error_code.as_deref().unwrap_or("-"),
                    row.retry_count,
                    row.created_at.format("%Y-%m-%d %H:%M:%S"),
                    row.resolution.map(|r| format!("  [{r}]")).unwrap_or_default(),
                );
            }
        }
        DeadLetterCommand::Show { id, json } => {
            // A letter's id, or an item's (its open letter, else its newest).
            let detail = match db::dead_letters::get(&pool, id).await {
                Err(db::OpsError::NotFound { .. }) => match db::dead_letters::of_item(&pool, id).await? {
                    Some(letter) => db::dead_letters::get(&pool, letter).await?,
                    None => anyhow::bail!("{id} is neither a dead letter nor an item with one"),
                },
                other => other?,
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&detail)?);
                return Ok(());
            }
            let d = &detail.dead_letter;
            println!("dead letter {}", d.id);
            println!("  kind:        {}", d.reason.map(describe_reason).unwrap_or("?"));
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
            super::print_attempts(&detail.attempts);
            println!("\neval results:");
            for e in &detail.eval_results {
                println!("  {} passed={} score={} {}", e.evaluation_type, e.passed, e.score, e.metrics);
            }
            println!("\napprovals:");
            for a in &detail.approvals {
                println!("  {} by {} ({})", a.decision, a.approver_id, a.policy_version);
            }
            println!("\npayload:\n{}", serde_json::to_string_pretty(&detail.payload)?);
        }
        DeadLetterCommand::BulkReplay(args) => bulk(&pool, args, crate::actions::Bulk::Replay).await?,
        DeadLetterCommand::BulkDiscard { filter, reason } => {
            bulk(&pool, filter, crate::actions::Bulk::Discard { reason }).await?
        }
        DeadLetterCommand::Replay { id, content, actor: who } => {
            let limit = settings.limits.max_content_bytes;
            let content = match content {
                Some(path) => {
                    // Refuse what is over the limit before reading it.
                    let size = std::fs::metadata(&path).with_context(|| format!("reading {}", path.display()))?.len();
                    if let Err(e) = crate::policy::content::check_size(size.try_into().unwrap_or(usize::MAX), limit) {
                        anyhow::bail!("content refused: {} ({}); nothing was replayed", e.message, e.code);
                    }
                    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
                    Some(String::from_utf8(bytes).map_err(|_| {
                        anyhow::anyhow!("content refused: {} is not UTF-8 text; nothing was replayed", path.display())
                    })?)
                }
                None => None,
            };
            let shared = Arc::new(settings.clone());
            let catalog = Catalog::new(pool.clone(), shared.clone());
            let replayed = actions::replay_dead_letter(&pool, &catalog, &shared, id, content.as_deref(), &actor(who))
                .await
                .map_err(|e| match e {
                    db::OpsError::Invalid { code, message } => {
                        anyhow::anyhow!("{message} ({code}); nothing was replayed")
                    }
                    other => other.into(),
                })?;
            println!(
                "replayed: work item {} is QUEUED with a fresh attempt budget{}",
                replayed.work_item_id,
                if replayed.content_replaced { " and the new content" } else { "" }
            );
            if let Some(warning) = replayed.warning {
                println!("warning: {warning}");
            }
        }
        DeadLetterCommand::Discard { id, reason, actor: who } => {
            let item = crate::actions::discard_dead_letter(&pool, id, &actor(who), Some(&reason)).await?;
            println!("discarded: work item {item} stays FAILED");
        }
    }
    Ok(())
}

fn describe_reason(reason: DeadLetterReason) -> &'static str {
    match reason {
        DeadLetterReason::Permanent => "permanent error",
        DeadLetterReason::RetriesExhausted => "retries exhausted",
        DeadLetterReason::CrashLoop => "crash loop",
    }
}

/// `bulk-replay` and `bulk-discard`: the same action as the API's, on the letters the filter
/// takes (one is required, or `--all`).
async fn bulk(pool: &sqlx::PgPool, args: crate::cli::BulkArgs, action: crate::actions::Bulk) -> anyhow::Result<()> {
    let crate::cli::BulkArgs { error_code, item_type, older_than, newer_than, all, limit, actor: who } = args;
    if !all && error_code.is_none() && item_type.is_none() && older_than.is_none() && newer_than.is_none() {
        anyhow::bail!(
            "give --error-code, --type, --older-than or --newer-than, or --all to take every open dead letter"
        );
    }
    let filter = db::dead_letters::Filter {
        open: Some(true),
        error_code,
        item_type,
        older_than_secs: older_than.map(|d| std::time::Duration::from(d).as_secs_f64()),
        newer_than_secs: newer_than.map(|d| std::time::Duration::from(d).as_secs_f64()),
    };
    let report = crate::actions::bulk_dead_letters(pool, &filter, limit, &action, &actor(who)).await?;
    println!(
        "{} {} of {} matching open dead letter(s); {} still open",
        if report.action == "replay" { "replayed" } else { "discarded" },
        report.done.len(),
        report.matched,
        report.left
    );
    for failed in &report.failed {
        println!("  not done: {} ({})", failed.id, failed.error);
    }
    Ok(())
}
