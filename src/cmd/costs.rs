//! `orderly costs`: what the attempts cost since a time ago, grouped by tenant, agent,
//! workflow or model (db::costs), in text or JSON.

use super::connect;
use crate::config::Settings;
use crate::db;
use crate::db::costs::By;
use std::time::Duration;

pub async fn run(settings: &Settings, by: By, since: Duration, json: bool) -> anyhow::Result<()> {
    let pool = connect(settings).await?;
    let since = chrono::Utc::now() - chrono::TimeDelta::from_std(since)?;
    let lines = db::costs::report(&pool, by, since).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&lines)?);
        return Ok(());
    }
    if lines.is_empty() {
        println!("no cost entries since {}", since.format("%Y-%m-%d %H:%M UTC"));
    }
    for line in &lines {
        let amount = match (&line.amount, &line.currency) {
            (Some(amount), Some(currency)) => format!("{amount} {currency}"),
            _ => "(no price)".to_owned(),
        };
        println!("{:<40} {:>24}  {} entries, {} attempts", line.key, amount, line.entries, line.attempts);
    }
    Ok(())
}
