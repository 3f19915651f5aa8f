//! The scheduler: the leader turns due schedule slots into work orders. It sleeps until the
//! earliest `next_run` (at most `schedules.poll_interval`, so that a schedule added or edited
//! by SQL is seen), then locks the due schedules (`SKIP LOCKED`), decides which slots to make
//! by the catch-up and overlap policies, makes each through `orderly_schedule_slot` (a slot
//! whose order exists is left alone: the unique key on the order's schedule and slot), and
//! records `last_run` and `next_run`, all in one transaction per batch. A leader killed
//! between the order and `next_run` leaves nothing half done; a new leader, a replica racing
//! it, or `orderly schedules run-now` can never make a slot's order twice.

use crate::calendar::Calendar;
use crate::config::Settings;
use crate::db;
use crate::db::schedules::Schedule;
use crate::leadership::Leadership;
use crate::metrics::Metrics;
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How late a slot may be made under the catch-up policy NONE: a slot older than this when
/// the scheduler sees it (the daemons were down) is skipped.
pub const ON_TIME: Duration = Duration::from_secs(60);

/// Most slots counted for one schedule in one round (a per-second cron down for a year).
const MAX_SLOTS_WALKED: usize = 1_000_000;

pub struct Scheduler {
    pub pool: PgPool,
    pub settings: Arc<Settings>,
    pub metrics: Arc<Metrics>,
}

/// What one round did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Orders made.
    pub materialized: usize,
    /// Slots not made by the catch-up or overlap policy.
    pub skipped: usize,
    /// Schedules whose first `next_run` was computed (new or edited).
    pub computed: usize,
    /// Schedules whose calendar cannot be built (reported on the row).
    pub invalid: usize,
    /// Schedules locked this round; a full batch means more may be waiting.
    pub locked: usize,
}

impl Scheduler {
    /// Rounds while this replica leads, until `stop`: at once again after a full batch, else
    /// after the time to the earliest `next_run`, at most `schedules.poll_interval`.
    pub async fn run(self, leadership: Leadership, stop: CancellationToken) {
        let poll = self.settings.schedules.poll_interval;
        loop {
            let mut pause = poll;
            if leadership.confirm().await.is_some() {
                match self.run_once().await {
                    Ok(report) if report.locked as i64 >= self.settings.schedules.batch => pause = Duration::ZERO,
                    Ok(_) => pause = self.until_next(poll).await,
                    Err(e) => crate::telemetry::warn_limited("scheduler", "schedule round failed", &e),
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// The time to the earliest `next_run` on the database clock, within `0..=poll`.
    async fn until_next(&self, poll: Duration) -> Duration {
        match db::schedules::seconds_to_next_run(&self.pool).await {
            Ok(Some(seconds)) if seconds.is_finite() => Duration::from_secs_f64(seconds.clamp(0.0, poll.as_secs_f64())),
            _ => poll,
        }
    }

    /// One round over at most `schedules.batch` schedules (tests call it directly). The
    /// slots of schedules that overlap freely are made in one statement, and every schedule's
    /// `last_run` and `next_run` recorded in another; a schedule whose overlap policy is SKIP
    /// has its slots made one by one, each after the check of the one before.
    pub async fn run_once(&self) -> Result<Report, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let now = db::schedules::now(&mut tx).await?;
        let due = db::schedules::lock_due(&mut tx, self.settings.schedules.batch).await?;
        let mut round = Round { report: Report { locked: due.len(), ..Report::default() }, ..Round::default() };
        for schedule in &due {
            self.plan(&mut tx, schedule, now, &mut round).await?;
        }
        let made = db::schedules::make_slots(&mut tx, &round.make_ids, &round.make_slots).await?;
        for (slot, order) in round.make_slots.iter().zip(&made) {
            if order.is_some() {
                self.materialized(&mut round.report, now, *slot);
            }
        }
        db::schedules::record_all(&mut tx, &round.ids, &round.last_runs, &round.next_runs, &round.errors).await?;
        tx.commit().await?;
        let report = round.report;
        if report.materialized + report.skipped > 0 {
            tracing::info!(materialized = report.materialized, skipped = report.skipped, "schedule slots handled");
        }
        Ok(report)
    }

    fn materialized(&self, report: &mut Report, now: DateTime<Utc>, slot: DateTime<Utc>) {
        report.materialized += 1;
        self.metrics.schedule_slots.add("materialized", 1);
        let late = (now - slot).to_std().unwrap_or(Duration::ZERO);
        self.metrics.schedule_late_seconds.observe((), late.as_secs_f64());
    }

    /// Decides one schedule's slots (made at once when its overlap policy is SKIP, else
    /// queued for the round's one statement) and its record.
    async fn plan(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        schedule: &Schedule,
        now: DateTime<Utc>,
        round: &mut Round,
    ) -> Result<(), sqlx::Error> {
        let calendar = match Calendar::new(&schedule.spec()) {
            Ok(calendar) => calendar,
            Err(e) => {
                self.invalid(schedule, &e.to_string(), round);
                return Ok(());
            }
        };
        let Some(first) = schedule.next_run else {
            // New or edited: the first slot after now (never one in the past).
            let from = schedule.last_run.map_or(now, |last| last.max(now));
            match calendar.next_after(from) {
                Ok(next) => {
                    round.report.computed += 1;
                    round.record(schedule.id, None, next, None);
                }
                Err(e) => self.invalid(schedule, &e.to_string(), round),
            }
            return Ok(());
        };
        let (due, total) = match due_slots(&calendar, first, now, keep(schedule)) {
            Ok(found) => found,
            Err(e) => {
                self.invalid(schedule, &e.to_string(), round);
                return Ok(());
            }
        };
        let chosen: Vec<DateTime<Utc>> = match schedule.catch_up.as_str() {
            "NONE" => due.last().copied().filter(|slot| now - *slot <= on_time()).into_iter().collect(),
            "LATEST" => due.last().copied().into_iter().collect(),
            _ => due.clone(),
        };
        let mut skipped = total - chosen.len();
        for slot in &chosen {
            if schedule.overlap == "SKIP" {
                if db::schedules::previous_unfinished(tx, schedule.id, *slot).await? {
                    skipped += 1;
                } else if db::schedules::make_slot(tx, schedule.id, *slot).await?.is_some() {
                    self.materialized(&mut round.report, now, *slot);
                }
            } else {
                round.make_ids.push(schedule.id);
                round.make_slots.push(*slot);
            }
        }
        if skipped > 0 {
            round.report.skipped += skipped;
            self.metrics.schedule_slots.add("skipped", skipped as u64);
            tracing::info!(schedule = %schedule.name, skipped, catch_up = %schedule.catch_up,
                overlap = %schedule.overlap, "schedule slots skipped by policy");
        }
        match calendar.next_after(now) {
            Ok(next) => round.record(schedule.id, due.last().copied(), next, None),
            Err(e) => self.invalid(schedule, &e.to_string(), round),
        }
        Ok(())
    }

    fn invalid(&self, schedule: &Schedule, error: &str, round: &mut Round) {
        round.report.invalid += 1;
        tracing::warn!(schedule = %schedule.name, error, "schedule cannot run; fix it (orderly schedules check)");
        round.record(schedule.id, None, None, Some(error.to_owned()));
    }
}

/// What a round writes at its end, column by column (one statement each).
#[derive(Default)]
struct Round {
    report: Report,
    make_ids: Vec<uuid::Uuid>,
    make_slots: Vec<DateTime<Utc>>,
    ids: Vec<uuid::Uuid>,
    last_runs: Vec<Option<DateTime<Utc>>>,
    next_runs: Vec<Option<DateTime<Utc>>>,
    errors: Vec<Option<String>>,
}

impl Round {
    fn record(
        &mut self,
        id: uuid::Uuid,
        last: Option<DateTime<Utc>>,
        next: Option<DateTime<Utc>>,
        error: Option<String>,
    ) {
        self.ids.push(id);
        self.last_runs.push(last);
        self.next_runs.push(next);
        self.errors.push(error);
    }
}

fn on_time() -> chrono::Duration {
    chrono::Duration::from_std(ON_TIME).unwrap_or_default()
}

/// How many of the latest due slots a schedule's catch-up policy can use.
fn keep(schedule: &Schedule) -> usize {
    match schedule.catch_up.as_str() {
        "ALL" => schedule.catch_up_limit.max(1) as usize,
        _ => 1,
    }
}

/// The due slots from `first` (the stored `next_run`) up to `now`: the latest `keep` of them,
/// oldest first, and how many there were in all.
pub fn due_slots(
    calendar: &Calendar,
    first: DateTime<Utc>,
    now: DateTime<Utc>,
    keep: usize,
) -> Result<(Vec<DateTime<Utc>>, usize), crate::calendar::CalendarError> {
    let mut latest = std::collections::VecDeque::with_capacity(keep);
    let mut total = 0;
    let mut slot = Some(first);
    while let Some(at) = slot.filter(|at| *at <= now) {
        total += 1;
        if latest.len() == keep {
            latest.pop_front();
        }
        latest.push_back(at);
        if total >= MAX_SLOTS_WALKED {
            break;
        }
        slot = calendar.next_after(at)?;
    }
    Ok((latest.into(), total))
}
