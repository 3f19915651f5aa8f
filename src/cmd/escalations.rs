//! `orderly escalations list | show | ack | resolve` and `orderly sla list | check`.

use super::{actor, connect};
use crate::cli::{EscalationCommand, SlaCommand};
use crate::config::Settings;
use crate::db;
use crate::db::sla::Action;
use std::collections::BTreeSet;

pub async fn run(settings: &Settings, command: EscalationCommand) -> anyhow::Result<()> {
    let pool = connect(settings).await?;
    match command {
        EscalationCommand::List(crate::cli::ListArgs { all, limit, json }) => {
            let rows = db::sla::escalations(&pool, all, limit).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
                return Ok(());
            }
            if rows.is_empty() {
                println!("no escalations");
            }
            for e in rows {
                println!(
                    "{}  {:<12} level {:<2} {:<24} item {}  due {}",
                    e.id,
                    e.status,
                    e.level,
                    e.rule,
                    e.work_item_id,
                    e.due_at.format("%Y-%m-%d %H:%M:%S")
                );
            }
        }
        EscalationCommand::Show { id, json } => {
            let (e, notifications) = db::sla::escalation(&pool, id).await?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &serde_json::json!({ "escalation": e, "notifications": notifications })
                    )?
                );
                return Ok(());
            }
            println!("escalation {}", e.id);
            println!("  rule:        {} ({}), level {}", e.rule, e.clock, e.level);
            println!("  status:      {}", e.status);
            println!("  work item:   {} (order {})", e.work_item_id, e.work_order_id);
            println!("  due at:      {}", e.due_at);
            if let Some(at) = e.acknowledged_at {
                println!("  acknowledged {at} by {}", e.acknowledged_by.as_deref().unwrap_or("?"));
            }
            if let Some(at) = e.resolved_at {
                println!(
                    "  resolved     {at} by {}: {}",
                    e.resolved_by.as_deref().unwrap_or("?"),
                    e.resolution.as_deref().unwrap_or("")
                );
            }
            println!("\nnotifications:");
            for n in notifications {
                println!(
                    "  {} {} to {}: {} after {} attempt(s){}",
                    n.id,
                    n.kind,
                    n.connector,
                    n.status,
                    n.attempts,
                    n.last_error.map(|e| format!(" ({e})")).unwrap_or_default()
                );
            }
        }
        EscalationCommand::Ack { id, reason, actor: who } => {
            crate::actions::act_on_escalation(&pool, id, Action::Acknowledge, &actor(who), reason.as_deref()).await?;
            println!("acknowledged: escalation {id}; the rule's later levels will not fire for this item");
        }
        EscalationCommand::Resolve { id, reason, actor: who } => {
            crate::actions::act_on_escalation(&pool, id, Action::Resolve, &actor(who), reason.as_deref()).await?;
            println!("resolved: escalation {id}");
        }
    }
    Ok(())
}

pub async fn sla(settings: &Settings, command: SlaCommand) -> anyhow::Result<()> {
    let pool = connect(settings).await?;
    let rules = db::sla::rules(&pool, false).await?;
    let names: Vec<String> = rules.iter().flat_map(|r| r.levels.iter().flat_map(|l| l.connectors.clone())).collect();
    let active: BTreeSet<String> =
        db::sla::connectors_named(&pool, &names).await?.into_iter().map(|(_, name, _)| name).collect();
    match command {
        SlaCommand::List { json } => {
            if json {
                println!("{}", serde_json::to_string_pretty(&rules)?);
                return Ok(());
            }
            if rules.is_empty() {
                println!("no SLA rules: INSERT INTO sla_rules and sla_levels (see docs/sla.md)");
            }
            for r in &rules {
                let any = |v: Option<String>| v.unwrap_or_else(|| "any".into());
                println!(
                    "{} ({}{}): type {}, priority {}, tenant {}, workflow {}",
                    r.name,
                    r.clock,
                    if r.is_active { "" } else { ", inactive" },
                    any(r.item_type.clone()),
                    any(r.priority.clone()),
                    any(r.tenant_id.map(|t| t.to_string())),
                    any(r.workflow_id.clone())
                );
                for l in &r.levels {
                    println!("  level {} after {}s -> {}", l.level, l.after_seconds, l.connectors.join(", "));
                }
            }
        }
        SlaCommand::Check => {
            let mut blocking = 0;
            for r in rules.iter().filter(|r| r.is_active) {
                for p in crate::sla::rules::check(r, &active) {
                    blocking += usize::from(p.blocking);
                    println!("{}: rule `{}` {}", if p.blocking { "error" } else { "warning" }, p.rule, p.message);
                }
            }
            if blocking > 0 {
                anyhow::bail!("{blocking} problem(s) keep rules from firing");
            }
            println!("{} active rule(s) checked", rules.iter().filter(|r| r.is_active).count());
        }
        SlaCommand::Sweep => {
            let sweeper = crate::sla::sweeper::Sweeper {
                pool: pool.clone(),
                settings: std::sync::Arc::new(settings.clone()),
                metrics: Default::default(),
                topology: crate::db::distributed::topology(&pool).await?,
            };
            let started = std::time::Instant::now();
            let report = sweeper.run_once().await?;
            println!(
                "swept in {:.1} ms: {} escalation(s) fired, {} resolved, {} notification(s) queued or merged",
                started.elapsed().as_secs_f64() * 1000.0,
                report.fired,
                report.resolved,
                report.notifications
            );
            for p in report.problems {
                println!("{}: rule `{}` {}", if p.blocking { "error" } else { "warning" }, p.rule, p.message);
            }
        }
    }
    Ok(())
}
