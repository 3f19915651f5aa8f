//! `orderly status`: counts by status and type, the oldest runnable item, what is in flight,
//! approvals and escalations waiting, who leads. `--json` prints the same object as
//! `GET /api/v1/status` (without the serving process's own fields).

use super::connect;
use crate::config::Settings;
use crate::db;
use std::fmt::Write as _;

pub async fn run(settings: &Settings, json: bool) -> anyhow::Result<()> {
    let pool = connect(settings).await?;
    let overview = crate::actions::overview(&pool).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&overview)?);
        return Ok(());
    }
    let status = db::orders::queue_status(&pool, 20).await?;
    let mut out = String::new();
    writeln!(out, "{:<18} {:<16} {:>10}", "STATUS", "TYPE", "ITEMS")?;
    for row in &status.counts {
        writeln!(out, "{:<18} {:<16} {:>10}", row.status.as_str(), row.item_type, row.count)?;
    }
    if status.counts.is_empty() {
        writeln!(out, "(no work items)")?;
    }
    match status.oldest_queued_seconds {
        Some(age) => writeln!(out, "\noldest runnable item queued {age:.1}s ago")?,
        None => writeln!(out, "\nnothing runnable is waiting")?,
    }
    writeln!(out, "scheduled for retry: {}", status.scheduled)?;
    writeln!(out, "waiting for dependencies: {}", status.waiting)?;
    writeln!(out, "open dead letters: {}", status.open_dead_letters)?;
    writeln!(out, "awaiting approval: {}", overview.awaiting_approval)?;
    writeln!(
        out,
        "escalations: {} open, {} acknowledged",
        overview.escalations_open, overview.escalations_acknowledged
    )?;
    match &overview.leadership {
        Some(l) if l.live => writeln!(out, "leader: {} since {} (epoch {})", l.holder, l.since, l.epoch)?,
        Some(l) => writeln!(out, "leader: none (the lease of {} expired at {})", l.holder, l.expires_at)?,
        None => writeln!(out, "leader: no replica has led yet")?,
    }
    writeln!(out, "replicas alive: {}", overview.replicas.len())?;
    for r in &overview.replicas {
        writeln!(out, "  {} (orderly {}, started {})", r.worker_id, r.version, r.started_at)?;
    }
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
