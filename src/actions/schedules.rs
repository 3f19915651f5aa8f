//! What operators see of a schedule (the CLI, the API and the page): its *when* in words, its
//! next runs in its zone and in UTC, the orders of its last slots.

use crate::db;
use serde::Serialize;
use sqlx::PgPool;

/// The schedule's *when* in a few words.
pub fn schedule_when(s: &db::schedules::Schedule) -> String {
    match (&s.cron, s.frequency.as_deref()) {
        (Some(cron), _) => format!("cron {cron}"),
        (None, Some("INTERVAL")) => format!("every {} min", s.interval.unwrap_or_default()),
        (None, Some("WEEKLY")) => format!(
            "weekly on {:?} at {}",
            s.days.clone().unwrap_or_default(),
            s.time.map_or("?".to_owned(), |t| t.to_string())
        ),
        (None, Some("MONTHLY")) => {
            format!(
                "monthly on day {} at {}",
                s.date.unwrap_or_default(),
                s.time.map_or("?".to_owned(), |t| t.to_string())
            )
        }
        (None, Some(f)) => format!("{} at {}", f.to_lowercase(), s.time.map_or("?".to_owned(), |t| t.to_string())),
        (None, None) => "?".to_owned(),
    }
}

/// A schedule with its next runs and the orders of its last slots: what `orderly schedules
/// show`, the API and the page show.
#[derive(Debug, Clone, Serialize)]
pub struct ScheduleView {
    #[serde(flatten)]
    pub schedule: db::schedules::Schedule,
    pub when: String,
    pub next_runs: Vec<NextRun>,
    pub recent_orders: Vec<db::schedules::SlotOrder>,
}

/// One coming run, in the schedule's zone and in UTC.
#[derive(Debug, Clone, Serialize)]
pub struct NextRun {
    pub local: String,
    pub utc: String,
}

/// `schedule` with its next `count` runs (none while paused or unable to run) and the orders
/// of its last `count` slots.
pub async fn schedule_view(
    pool: &PgPool,
    schedule: db::schedules::Schedule,
    count: usize,
) -> Result<ScheduleView, sqlx::Error> {
    let next_runs = match crate::calendar::Calendar::new(&schedule.spec()) {
        Ok(calendar) if schedule.enabled && schedule.last_error.is_none() => {
            let from = schedule.next_run.map_or(chrono::Utc::now(), |n| n - chrono::Duration::microseconds(1));
            calendar
                .upcoming(from, count)
                .unwrap_or_default()
                .into_iter()
                .map(|t| NextRun { local: crate::calendar::local(t, calendar.zone()), utc: t.to_rfc3339() })
                .collect()
        }
        _ => vec![],
    };
    let recent_orders = db::schedules::recent_orders(pool, schedule.id, count as i64).await?;
    Ok(ScheduleView { when: schedule_when(&schedule), schedule, next_runs, recent_orders })
}
