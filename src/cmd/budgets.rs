//! `orderly budgets list | create | raise | reset | remove` (actions::budgets).

use super::{actor, connect};
use crate::actions::budgets::{self, BudgetRequest};
use crate::cli::BudgetCommand;
use crate::config::Settings;
use crate::db;
use crate::db::budgets::BudgetRow;

fn line(b: &BudgetRow) -> String {
    let state = if b.exhausted { "EXHAUSTED" } else { "ok" };
    let period = match (&b.period_end, b.period.as_str()) {
        (Some(end), period) => format!("{period} until {}", end.format("%Y-%m-%d %H:%M UTC")),
        (None, period) => period.to_owned(),
    };
    format!(
        "{:<24} {:<48} {} of {} {} ({:.1}%) {period}, on exhaustion {}: {state}, {} item(s) stopped",
        b.name,
        b.scope(),
        b.spent,
        b.amount,
        b.currency,
        b.percent,
        b.on_exhausted,
        b.waiting
    )
}

pub async fn run(settings: &Settings, command: BudgetCommand) -> anyhow::Result<()> {
    let pool = connect(settings).await?;
    let row = match command {
        BudgetCommand::List { json } => {
            let rows = db::budgets::list(&pool).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else if rows.is_empty() {
                println!("no budgets: `orderly budgets create NAME --scope tenant:UUID --amount 100 --currency USD`");
            }
            for b in rows.iter().filter(|_| !json) {
                println!("{}", line(b));
            }
            return Ok(());
        }
        BudgetCommand::Create {
            name,
            scope,
            amount,
            currency,
            period,
            time_zone,
            on_exhausted,
            connectors,
            actor: who,
        } => {
            let request = BudgetRequest {
                name,
                scope,
                amount,
                currency,
                period: Some(period),
                time_zone: Some(time_zone),
                on_exhausted: Some(on_exhausted),
                connectors,
            };
            budgets::create(&pool, &request, &actor(who)).await?
        }
        BudgetCommand::Raise { name, amount, actor: who } => {
            budgets::set_amount(&pool, &name, &amount, &actor(who)).await?
        }
        BudgetCommand::Reset { name, actor: who } => budgets::reset(&pool, &name, &actor(who)).await?,
        BudgetCommand::Remove { name, actor: who } => {
            budgets::remove(&pool, &name, &actor(who)).await?;
            println!("removed budget {name}; the items it stopped run again");
            return Ok(());
        }
    };
    println!("{}", line(&row));
    Ok(())
}
