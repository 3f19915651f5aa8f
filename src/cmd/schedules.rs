//! `orderly schedules list | show | next | run-now | pause | resume | check`.

use super::{actor, connect};
use crate::actions::schedules::{schedule_view as view, schedule_when as when};
use crate::calendar::{Calendar, local};
use crate::cli::ScheduleCommand;
use crate::config::Settings;
use crate::db;
use crate::db::schedules::Schedule;
use chrono::Utc;

pub async fn run(settings: &Settings, command: ScheduleCommand) -> anyhow::Result<()> {
    let pool = connect(settings).await?;
    match command {
        ScheduleCommand::List { json } => {
            let schedules = db::schedules::list(&pool).await?;
            if json {
                let mut rows = Vec::new();
                for s in schedules {
                    rows.push(view(&pool, s, 3).await?);
                }
                println!("{}", serde_json::to_string_pretty(&rows)?);
                return Ok(());
            }
            if schedules.is_empty() {
                println!("no schedules: INSERT INTO schedules (see docs/schedules.md)");
            }
            for s in &schedules {
                let state = if !s.enabled {
                    "paused".to_owned()
                } else if let Some(error) = &s.last_error {
                    format!("CANNOT RUN: {error}")
                } else {
                    match (s.next_run, Calendar::new(&s.spec())) {
                        (Some(next), Ok(calendar)) => {
                            format!("next {} ({})", local(next, calendar.zone()), next.to_rfc3339())
                        }
                        _ => "next run not computed yet".to_owned(),
                    }
                };
                println!("{:<32} {:<28} {state}", s.name, when(s));
            }
        }
        ScheduleCommand::Show { name, json } => {
            let shown = view(&pool, find(&pool, &name).await?, 3).await?;
            let s = &shown.schedule;
            if json {
                println!("{}", serde_json::to_string_pretty(&shown)?);
                return Ok(());
            }
            println!("{}: {} in {}{}", s.name, shown.when, s.timezone, if s.enabled { "" } else { " (paused)" });
            println!("  makes: workflow {} for tenant {}", s.workflow_id, s.tenant_id);
            println!("  catch-up {} (limit {}), overlap {}", s.catch_up, s.catch_up_limit, s.overlap);
            if let Some(error) = &s.last_error {
                println!("  CANNOT RUN: {error}");
            }
            println!("  last run: {}", s.last_run.map_or("never".to_owned(), |t| t.to_rfc3339()));
            for next in &shown.next_runs {
                println!("  next: {} ({})", next.local, next.utc);
            }
            for o in &shown.recent_orders {
                println!("  slot {}  order {}  {}", o.slot_at.to_rfc3339(), o.work_order_id, o.status);
            }
        }
        ScheduleCommand::Next { name, count } => {
            let s = find(&pool, &name).await?;
            let calendar = Calendar::new(&s.spec())?;
            for slot in calendar
                .upcoming(s.next_run.map_or(Utc::now(), |n| n - chrono::Duration::microseconds(1)), count.into())?
            {
                println!("{}  {}", local(slot, calendar.zone()), slot.to_rfc3339());
            }
        }
        ScheduleCommand::RunNow { name, actor: who } => {
            let (slot, made) = db::schedules::run_now(&pool, &name, &actor(who)).await?;
            match made {
                Some(order) => println!("schedule {name}: made work order {order} for slot {}", slot.to_rfc3339()),
                None => println!("schedule {name}: the slot {} already has its order; nothing made", slot.to_rfc3339()),
            }
        }
        ScheduleCommand::Pause { name, actor: who } => {
            let changed = db::schedules::set_enabled(&pool, &name, false, &actor(who)).await?;
            println!("schedule {name}: {}", if changed { "paused" } else { "was already paused" });
        }
        ScheduleCommand::Resume { name, actor: who } => {
            let changed = db::schedules::set_enabled(&pool, &name, true, &actor(who)).await?;
            println!(
                "schedule {name}: {}",
                if changed { "resumed from its next slot after now" } else { "was not paused" }
            );
        }
        ScheduleCommand::Check => {
            let mut bad = 0;
            for s in db::schedules::list(&pool).await? {
                match Calendar::new(&s.spec()) {
                    Ok(calendar) => match calendar.next_after(Utc::now()) {
                        Ok(Some(next)) => println!("ok   {:<32} next {}", s.name, local(next, calendar.zone())),
                        Ok(None) => {
                            bad += 1;
                            println!("FAIL {:<32} no run within five years", s.name);
                        }
                        Err(e) => {
                            bad += 1;
                            println!("FAIL {:<32} {e}", s.name);
                        }
                    },
                    Err(e) => {
                        bad += 1;
                        println!("FAIL {:<32} {e}", s.name);
                    }
                }
            }
            if bad > 0 {
                anyhow::bail!("{bad} schedule(s) cannot run");
            }
        }
    }
    Ok(())
}

async fn find(pool: &sqlx::PgPool, name: &str) -> anyhow::Result<Schedule> {
    db::schedules::by_name(pool, name).await?.ok_or_else(|| anyhow::anyhow!("no schedule named {name:?}"))
}
