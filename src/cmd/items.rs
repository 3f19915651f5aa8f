//! `orderly items show ID` and `orderly approvals list`: the same views as the API's, in text
//! or JSON.

use super::connect;
use crate::actions;
use crate::cli::{ApprovalCommand, ItemCommand};
use crate::config::Settings;
use crate::db;
use crate::policy::catalog::Catalog;
use std::sync::Arc;

pub async fn run(settings: &Settings, command: ItemCommand) -> anyhow::Result<()> {
    let pool = connect(settings).await?;
    match command {
        ItemCommand::Show { id, json } => {
            let catalog = Catalog::new(pool.clone(), Arc::new(settings.clone()));
            let view = actions::item_view(&pool, &catalog, id).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&view)?);
                return Ok(());
            }
            let i = &view.detail.item;
            println!("item {} ({}) of order {}", i.id, i.item_type, i.work_order_id);
            println!("  status {}  priority {}  attempt {}", i.status, i.priority, i.attempt);
            println!("  waiting: {} ({})", view.waiting_reason.detail, view.waiting_reason.kind);
            if let Some(p) = &view.detail.progress {
                let current = if p.attempt == i.attempt && i.status == crate::model::ItemStatus::Processing {
                    ""
                } else {
                    ", last reported"
                };
                println!(
                    "  progress: {}%{} (attempt {}, {}{current})",
                    p.percent,
                    p.message.as_deref().map(|m| format!(" {m}")).unwrap_or_default(),
                    p.attempt,
                    p.updated_at.format("%Y-%m-%d %H:%M:%S UTC")
                );
            }
            match (view.route.agent.as_deref(), view.route.error.as_deref()) {
                (Some(agent), _) => println!("  route: agent {agent}"),
                (None, Some(error)) => println!("  route: cannot route: {error}"),
                _ => {}
            }
            if let Some(code) = &i.last_error_code {
                println!("  last error: {code} {}", i.last_error.as_deref().unwrap_or(""));
            }
            let edges = &view.detail.dependencies;
            for (title, list) in [("depends on", &edges.dependencies), ("dependents", &edges.dependents)] {
                if !list.is_empty() {
                    println!("{title}:");
                }
                for e in list {
                    let met = if e.satisfied {
                        "met"
                    } else if e.kind == "RELATED" {
                        ""
                    } else {
                        "unmet"
                    };
                    println!("  {} {:<14} {:<17} {:<7} {met}", e.work_item_id, e.item_type, e.status, e.kind);
                }
            }
            println!("attempts:");
            super::print_attempts(&view.detail.attempts);
            for e in &view.detail.eval_results {
                println!("eval {} passed={} score={}", e.evaluation_type, e.passed, e.score);
            }
            for a in &view.detail.approvals {
                println!(
                    "approval {} by {} ({}) {}",
                    a.decision,
                    a.approver_id,
                    a.source,
                    a.reason.as_deref().unwrap_or("")
                );
            }
            for e in &view.detail.escalations {
                println!("escalation {} level {} of {}: {}", e.id, e.level, e.rule, e.status);
            }
            if !view.detail.logs.is_empty() {
                println!("log: {} line(s), `orderly items logs {}` prints them", view.detail.logs.len(), i.id);
            }
            for a in &view.detail.artifacts {
                println!("artifact {} {} {}", a.name, a.kind.as_deref().unwrap_or(""), a.url.as_deref().unwrap_or(""));
            }
            for d in &view.detail.dead_letters {
                let state = if d.open { "open" } else { d.resolution.as_deref().unwrap_or("closed") };
                println!("dead letter {} {} {state}", d.id, d.error_code.as_deref().unwrap_or(""));
            }
        }
        ItemCommand::Logs { id, json } => {
            let (logs, artifacts) = db::runs::of_item(&pool, id, 200).await?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({ "logs": logs, "artifacts": artifacts }))?
                );
                return Ok(());
            }
            if logs.is_empty() && artifacts.is_empty() {
                println!("no log lines or artifacts recorded for item {id}");
            }
            for l in &logs {
                let at = l.logged_at.map(|t| t.format("%Y-%m-%d %H:%M:%S%.3f ").to_string()).unwrap_or_default();
                println!("#{} {:<5} {at}{}", l.attempt_number.unwrap_or(0), l.level, l.message);
            }
            for a in &artifacts {
                println!(
                    "artifact #{} {} {} {} {}",
                    a.attempt_number.unwrap_or(0),
                    a.name,
                    a.kind.as_deref().unwrap_or("-"),
                    a.size_bytes.map(|s| format!("{s} bytes")).unwrap_or_default(),
                    a.url.as_deref().unwrap_or("")
                );
            }
        }
    }
    Ok(())
}

/// An eval's reasons as one line: a judge's reasons, an assertion's check, a schema's errors.
fn eval_reasons(metrics: &serde_json::Value) -> String {
    let list = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .map(|a| a.iter().map(|r| r.as_str().map_or_else(|| r.to_string(), str::to_owned)).collect())
            .unwrap_or_default()
    };
    let said = match (metrics.get("reasons"), metrics.get("check"), metrics.get("errors")) {
        (Some(r), _, _) => list(r),
        (None, Some(c), _) => vec![c.as_str().unwrap_or_default().to_owned()],
        (None, None, Some(e)) => list(e),
        _ => vec![],
    };
    if said.is_empty() { String::new() } else { format!(": {}", said.join("; ")) }
}

pub async fn approvals(settings: &Settings, command: ApprovalCommand) -> anyhow::Result<()> {
    let pool = connect(settings).await?;
    match command {
        ApprovalCommand::List { limit, json } => {
            let held = db::approvals::inbox(&pool, None, limit.clamp(1, 1000)).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&held)?);
                return Ok(());
            }
            if held.is_empty() {
                println!("no items awaiting approval");
            }
            for h in &held {
                let failed: Vec<&str> =
                    h.evals.iter().filter(|e| !e.passed).map(|e| e.evaluation_type.as_str()).collect();
                println!(
                    "{}  {:<14} attempt {:<2} held since {}  {}{}",
                    h.id,
                    h.item_type,
                    h.attempt,
                    h.held_since.map_or("?".to_owned(), |t| t.format("%Y-%m-%d %H:%M:%S").to_string()),
                    h.policy_reason.as_deref().unwrap_or(""),
                    if failed.is_empty() { String::new() } else { format!(" (failed: {})", failed.join(", ")) }
                );
                for e in &h.evals {
                    println!(
                        "    {} {:.2} {}{}",
                        e.evaluation_type,
                        e.score,
                        if e.passed { "passed" } else { "failed" },
                        eval_reasons(&e.metrics)
                    );
                }
            }
        }
    }
    Ok(())
}
