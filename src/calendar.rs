//! When a schedule's slots fall: pure time arithmetic, no I/O. The scheduler
//! (`maintenance::scheduler`) asks a [`Calendar`] for the slot after an instant; the
//! operators' commands ask it for the next few.
//!
//! A schedule says *when* in one of two forms, always in an IANA time zone:
//! - a cron expression, 5 fields (minute hour day-of-month month day-of-week) or 6 with
//!   seconds first, parsed and walked by `croner` on the zone's wall clock;
//! - the seeds' calendar form: DAILY at a time, WEEKLY on days (0 = Sunday) at a time,
//!   MONTHLY on a day of the month at a time (past a shorter month's end: its last day), or
//!   INTERVAL every N minutes from a start instant (absolute time: DST does not move it).
//!
//! Wall-clock times that do not exist (the hour skipped when clocks spring forward) run at
//! the first instant after the gap (02:30 on that day runs at 03:00); wall-clock times that
//! happen twice (clocks fall back) run once, at the first. Every instant is in UTC at the
//! edges ([`chrono::DateTime<Utc>`], as the database hands it over).

use chrono::{DateTime, Utc};
use jiff::civil;
use jiff::tz::{AmbiguousOffset, TimeZone};
use jiff::{Timestamp, Zoned};
use std::str::FromStr;

/// The calendar form's frequencies (the `schedule_frequency` type).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frequency {
    Daily,
    Weekly,
    Monthly,
    Interval,
}

impl FromStr for Frequency {
    type Err = CalendarError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "DAILY" => Ok(Frequency::Daily),
            "WEEKLY" => Ok(Frequency::Weekly),
            "MONTHLY" => Ok(Frequency::Monthly),
            "INTERVAL" => Ok(Frequency::Interval),
            other => Err(CalendarError::Invalid(format!("unknown frequency {other:?}"))),
        }
    }
}

/// A schedule's *when*, as the row holds it.
#[derive(Debug, Clone, Default)]
pub struct Spec {
    pub cron: Option<String>,
    pub frequency: Option<String>,
    /// INTERVAL: minutes.
    pub interval: Option<i32>,
    /// DAILY, WEEKLY, MONTHLY: the wall-clock time.
    pub time: Option<chrono::NaiveTime>,
    /// WEEKLY: 0 = Sunday .. 6 = Saturday.
    pub days: Option<Vec<i32>>,
    /// MONTHLY: the day of the month.
    pub date: Option<i32>,
    /// INTERVAL: the first slot.
    pub starts_at: DateTime<Utc>,
    pub timezone: String,
}

/// Why a schedule has no calendar: reported on the schedule (`last_error`) and by
/// `orderly schedules check`, never fatal to the loop.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CalendarError {
    #[error("unknown time zone {0:?}")]
    TimeZone(String),
    #[error("cron expression {expression:?}: {reason}")]
    Cron { expression: String, reason: String },
    #[error("{0}")]
    Invalid(String),
}

#[derive(Debug, Clone)]
enum When {
    Cron(Box<croner::Cron>),
    Daily { time: civil::Time },
    Weekly { days: Vec<jiff::civil::Weekday>, time: civil::Time },
    Monthly { day: i8, time: civil::Time },
    Interval { every: i64, start: Timestamp },
}

/// A schedule's slots in its time zone.
#[derive(Debug, Clone)]
pub struct Calendar {
    when: When,
    tz: TimeZone,
}

/// The longest a search for the next slot looks ahead: a cron that matches nothing sooner
/// (`0 0 30 2 *`) has no next slot.
const HORIZON_DAYS: i32 = 366 * 5;

impl Calendar {
    pub fn new(spec: &Spec) -> Result<Calendar, CalendarError> {
        let tz = TimeZone::get(&spec.timezone).map_err(|_| CalendarError::TimeZone(spec.timezone.clone()))?;
        let time = || -> Result<civil::Time, CalendarError> {
            let t = spec.time.ok_or_else(|| CalendarError::Invalid("the calendar form needs a time".into()))?;
            use chrono::Timelike;
            civil::Time::new(t.hour() as i8, t.minute() as i8, t.second() as i8, 0)
                .map_err(|e| CalendarError::Invalid(format!("time: {e}")))
        };
        let when = match (&spec.cron, &spec.frequency) {
            (Some(expression), None) => {
                let cron = croner::parser::CronParser::builder()
                    .seconds(croner::parser::Seconds::Optional)
                    .build()
                    .parse(expression)
                    .map_err(|e| CalendarError::Cron { expression: expression.clone(), reason: e.to_string() })?;
                When::Cron(Box::new(cron))
            }
            (None, Some(frequency)) => match frequency.parse::<Frequency>()? {
                Frequency::Daily => When::Daily { time: time()? },
                Frequency::Weekly => {
                    let days = spec.days.as_deref().unwrap_or_default();
                    if days.is_empty() {
                        return Err(CalendarError::Invalid("WEEKLY needs days".into()));
                    }
                    let days =
                        days.iter()
                            .map(|d| match d {
                                0..=6 => Ok(jiff::civil::Weekday::from_sunday_zero_offset(*d as i8)
                                    .expect("0..=6 is a weekday")),
                                _ => Err(CalendarError::Invalid(format!("day {d} is not 0 (Sunday) to 6"))),
                            })
                            .collect::<Result<Vec<_>, _>>()?;
                    When::Weekly { days, time: time()? }
                }
                Frequency::Monthly => match spec.date {
                    Some(day @ 1..=31) => When::Monthly { day: day as i8, time: time()? },
                    other => {
                        return Err(CalendarError::Invalid(format!("MONTHLY needs a date 1 to 31, not {other:?}")));
                    }
                },
                Frequency::Interval => match spec.interval {
                    Some(minutes) if minutes > 0 => {
                        When::Interval { every: i64::from(minutes) * 60, start: to_jiff(spec.starts_at)? }
                    }
                    other => {
                        return Err(CalendarError::Invalid(format!("INTERVAL needs minutes above 0, not {other:?}")));
                    }
                },
            },
            _ => return Err(CalendarError::Invalid("give either a cron expression or a frequency".into())),
        };
        Ok(Calendar { when, tz })
    }

    /// The first slot strictly after `after`, or `None` when none comes within five years.
    pub fn next_after(&self, after: DateTime<Utc>) -> Result<Option<DateTime<Utc>>, CalendarError> {
        let after = to_jiff(after)?;
        let next = match &self.when {
            When::Interval { every, start } => {
                if after < *start {
                    Some(*start)
                } else {
                    let elapsed = after.as_second() - start.as_second();
                    let steps = elapsed / every + 1;
                    Timestamp::from_second(start.as_second() + steps * every).ok()
                }
            }
            When::Cron(cron) => {
                let from = after.to_zoned(self.tz.clone());
                match cron.find_next_occurrence(&from, false) {
                    Ok(next) => Some(next.timestamp()).filter(|t| days_between(after, *t) <= HORIZON_DAYS),
                    Err(croner::errors::CronError::TimeSearchLimitExceeded) => None,
                    Err(e) => return Err(CalendarError::Invalid(format!("cron: {e}"))),
                }
            }
            When::Daily { time } => self.first_day(after, |_| true, *time),
            When::Weekly { days, time } => self.first_day(after, |d| days.contains(&d.weekday()), *time),
            When::Monthly { day, time } => self.first_month(after, *day, *time),
        };
        next.map(from_jiff).transpose()
    }

    /// The next `count` slots after `after`.
    pub fn upcoming(&self, after: DateTime<Utc>, count: usize) -> Result<Vec<DateTime<Utc>>, CalendarError> {
        let mut slots = Vec::with_capacity(count);
        let mut at = after;
        while slots.len() < count {
            match self.next_after(at)? {
                Some(next) => {
                    slots.push(next);
                    at = next;
                }
                None => break,
            }
        }
        Ok(slots)
    }

    /// The time zone's name.
    pub fn zone(&self) -> &TimeZone {
        &self.tz
    }

    /// The first day from `after`'s local date on that `matches`, whose `time` resolves to an
    /// instant after `after`.
    fn first_day(
        &self,
        after: Timestamp,
        matches: impl Fn(civil::Date) -> bool,
        time: civil::Time,
    ) -> Option<Timestamp> {
        let start = after.to_zoned(self.tz.clone()).date();
        (0..HORIZON_DAYS)
            .filter_map(|n| start.checked_add(jiff::Span::new().days(n)).ok())
            .filter(|date| matches(*date))
            .map(|date| self.resolve(date.to_datetime(time)))
            .find(|t| *t > after)
    }

    /// The first month from `after`'s local month whose `day` (or its last day) at `time`
    /// resolves to an instant after `after`.
    fn first_month(&self, after: Timestamp, day: i8, time: civil::Time) -> Option<Timestamp> {
        let start = after.to_zoned(self.tz.clone()).date().first_of_month();
        (0..(HORIZON_DAYS / 28))
            .filter_map(|n| start.checked_add(jiff::Span::new().months(n)).ok())
            .filter_map(|month| month.with().day(day.min(month.days_in_month())).build().ok())
            .map(|date| self.resolve(date.to_datetime(time)))
            .find(|t| *t > after)
    }

    /// The instant of a wall-clock time: the first of two when the clock falls back, the first
    /// instant after the gap when the time does not exist.
    fn resolve(&self, wall: civil::DateTime) -> Timestamp {
        let ambiguous = self.tz.to_ambiguous_timestamp(wall);
        match ambiguous.offset() {
            AmbiguousOffset::Unambiguous { offset } | AmbiguousOffset::Fold { before: offset, .. } => {
                offset.to_timestamp(wall).unwrap_or(Timestamp::MAX)
            }
            AmbiguousOffset::Gap { before, .. } => {
                // Read with the offset in force before the gap, the wall time lands after the
                // transition; the transition itself is the gap's end.
                let past = before.to_timestamp(wall).unwrap_or(Timestamp::MAX);
                self.tz.preceding(past).next().map_or(past, |transition| transition.timestamp())
            }
        }
    }
}

fn days_between(a: Timestamp, b: Timestamp) -> i32 {
    ((b.as_second() - a.as_second()) / 86_400) as i32
}

fn to_jiff(t: DateTime<Utc>) -> Result<Timestamp, CalendarError> {
    Timestamp::from_microsecond(t.timestamp_micros()).map_err(|e| CalendarError::Invalid(format!("instant: {e}")))
}

fn from_jiff(t: Timestamp) -> Result<DateTime<Utc>, CalendarError> {
    DateTime::from_timestamp_micros(t.as_microsecond())
        .ok_or_else(|| CalendarError::Invalid(format!("instant {t} is out of range")))
}

/// An instant as the schedule's zone reads it (RFC 3339 with the offset), for operators.
pub fn local(t: DateTime<Utc>, zone: &TimeZone) -> String {
    match to_jiff(t) {
        Ok(ts) => {
            let zoned: Zoned = ts.to_zoned(zone.clone());
            zoned.strftime("%Y-%m-%dT%H:%M:%S%:z").to_string()
        }
        Err(_) => t.to_rfc3339(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc)
    }

    fn daily(time: &str, zone: &str) -> Calendar {
        Calendar::new(&Spec {
            frequency: Some("DAILY".into()),
            time: Some(chrono::NaiveTime::parse_from_str(time, "%H:%M").unwrap()),
            timezone: zone.into(),
            ..Spec::default()
        })
        .unwrap()
    }

    fn cron(expression: &str, zone: &str) -> Calendar {
        Calendar::new(&Spec { cron: Some(expression.into()), timezone: zone.into(), ..Spec::default() }).unwrap()
    }

    fn slots(calendar: &Calendar, after: &str, n: usize) -> Vec<String> {
        calendar.upcoming(utc(after), n).unwrap().iter().map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string()).collect()
    }

    // The expected instants below were written by hand from the tz rules, not computed:
    // Europe/Berlin springs forward on 2026-03-29 at 01:00 UTC (02:00 CET becomes 03:00 CEST)
    // and falls back on 2026-10-25 at 01:00 UTC (03:00 CEST becomes 02:00 CET);
    // America/New_York springs forward on 2026-03-08 at 07:00 UTC (02:00 EST becomes 03:00
    // EDT) and falls back on 2026-11-01 at 06:00 UTC (02:00 EDT becomes 01:00 EST).
    const DST_TABLE: &[(&str, &str, &str, [&str; 3])] = &[
        // (zone, wall time, after, the next three slots)
        (
            "Europe/Berlin",
            "02:30",
            "2026-03-27T12:00:00Z",
            ["2026-03-28T01:30:00Z", "2026-03-29T01:00:00Z", "2026-03-30T00:30:00Z"],
        ),
        (
            "Europe/Berlin",
            "02:30",
            "2026-10-23T12:00:00Z",
            ["2026-10-24T00:30:00Z", "2026-10-25T00:30:00Z", "2026-10-26T01:30:00Z"],
        ),
        (
            "Europe/Berlin",
            "01:30",
            "2026-10-24T12:00:00Z",
            ["2026-10-24T23:30:00Z", "2026-10-26T00:30:00Z", "2026-10-27T00:30:00Z"],
        ),
        (
            "America/New_York",
            "02:30",
            "2026-03-06T12:00:00Z",
            ["2026-03-07T07:30:00Z", "2026-03-08T07:00:00Z", "2026-03-09T06:30:00Z"],
        ),
        (
            "America/New_York",
            "01:30",
            "2026-10-31T00:00:00Z",
            ["2026-10-31T05:30:00Z", "2026-11-01T05:30:00Z", "2026-11-02T06:30:00Z"],
        ),
    ];

    #[test]
    fn daily_slots_across_both_dst_changes_in_two_zones() {
        for (zone, time, after, expected) in DST_TABLE {
            assert_eq!(slots(&daily(time, zone), after, 3), expected.to_vec(), "DAILY {time} in {zone} after {after}");
        }
    }

    #[test]
    fn cron_slots_across_both_dst_changes_in_two_zones() {
        for (zone, time, after, expected) in DST_TABLE {
            let (hour, minute) = time.split_once(':').unwrap();
            let expression = format!(
                "{} {} * * *",
                minute.trim_start_matches('0').parse::<u32>().unwrap_or(0),
                hour.parse::<u32>().unwrap()
            );
            assert_eq!(
                slots(&cron(&expression, zone), after, 3),
                expected.to_vec(),
                "cron {expression} in {zone} after {after}"
            );
        }
    }

    #[test]
    fn cron_with_seconds_and_five_fields() {
        assert_eq!(
            slots(&cron("*/20 * * * * *", "UTC"), "2026-01-01T00:00:05Z", 3),
            ["2026-01-01T00:00:20Z", "2026-01-01T00:00:40Z", "2026-01-01T00:01:00Z"]
        );
        assert_eq!(
            slots(&cron("0 9 * * 1-5", "UTC"), "2026-01-02T10:00:00Z", 2),
            ["2026-01-05T09:00:00Z", "2026-01-06T09:00:00Z"]
        );
    }

    #[test]
    fn interval_stays_on_absolute_time_across_dst() {
        let calendar = Calendar::new(&Spec {
            frequency: Some("INTERVAL".into()),
            interval: Some(60),
            starts_at: utc("2026-03-28T23:00:00Z"),
            timezone: "Europe/Berlin".into(),
            ..Spec::default()
        })
        .unwrap();
        assert_eq!(
            slots(&calendar, "2026-03-29T00:10:00Z", 3),
            ["2026-03-29T01:00:00Z", "2026-03-29T02:00:00Z", "2026-03-29T03:00:00Z"]
        );
        assert_eq!(slots(&calendar, "2026-03-01T00:00:00Z", 1), ["2026-03-28T23:00:00Z"], "nothing before the start");
    }

    #[test]
    fn monthly_on_day_31_takes_the_last_day_of_shorter_months_and_leap_days_count() {
        let monthly = |date: i32| {
            Calendar::new(&Spec {
                frequency: Some("MONTHLY".into()),
                date: Some(date),
                time: Some(chrono::NaiveTime::from_hms_opt(9, 0, 0).unwrap()),
                timezone: "UTC".into(),
                ..Spec::default()
            })
            .unwrap()
        };
        assert_eq!(
            slots(&monthly(31), "2026-01-01T00:00:00Z", 4),
            ["2026-01-31T09:00:00Z", "2026-02-28T09:00:00Z", "2026-03-31T09:00:00Z", "2026-04-30T09:00:00Z"]
        );
        assert_eq!(slots(&monthly(29), "2028-02-01T00:00:00Z", 2), ["2028-02-29T09:00:00Z", "2028-03-29T09:00:00Z"]);
        assert_eq!(slots(&monthly(29), "2027-02-01T00:00:00Z", 1), ["2027-02-28T09:00:00Z"]);
    }

    #[test]
    fn weekly_on_chosen_days_in_the_zone() {
        let calendar = Calendar::new(&Spec {
            frequency: Some("WEEKLY".into()),
            days: Some(vec![1, 5]),
            time: Some(chrono::NaiveTime::from_hms_opt(9, 0, 0).unwrap()),
            timezone: "Europe/Berlin".into(),
            ..Spec::default()
        })
        .unwrap();
        // Thursday 2026-03-26 (CET) → Friday 27th 09:00 CET, Monday 30th 09:00 CEST.
        assert_eq!(slots(&calendar, "2026-03-26T12:00:00Z", 2), ["2026-03-27T08:00:00Z", "2026-03-30T07:00:00Z"]);
    }

    #[test]
    fn what_cannot_work_is_an_error_not_a_panic() {
        let bad_zone = Spec { cron: Some("* * * * *".into()), timezone: "Mars/Olympus".into(), ..Spec::default() };
        assert!(matches!(Calendar::new(&bad_zone), Err(CalendarError::TimeZone(_))));
        let bad_cron = Spec { cron: Some("61 * * * *".into()), timezone: "UTC".into(), ..Spec::default() };
        assert!(matches!(Calendar::new(&bad_cron), Err(CalendarError::Cron { .. })));
        let never = cron("0 0 30 2 *", "UTC");
        assert_eq!(never.next_after(utc("2026-01-01T00:00:00Z")), Ok(None), "February 30th never comes");
    }
}
