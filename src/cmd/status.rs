//! `orderly status`: counts by status and type, the oldest runnable item, what is in flight.

use super::connect;
use crate::config::Settings;
use crate::db;
use std::fmt::Write as _;

pub async fn run(settings: &Settings, json: bool) -> anyhow::Result<()> {
    let pool = connect(settings).await?;
    let status = db::orders::queue_status(&pool, 20).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(());
    }
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
