//! The overview's charts: every replica's activity (db::activity) per minute over the last
//! hour or per hour over the last day, as server-rendered SVG (no script; presentation
//! attributes only, which the page's CSP allows): items completed, attempts failed, dead
//! letters, and the queue wait's p50 and p99 estimated from the merged histogram buckets.

use super::*;
use crate::db::activity::Minute;
use crate::metrics::QUEUE_WAIT_BUCKETS;
use chrono::{DurationRound, TimeDelta};

/// The time range a chart covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Range {
    /// The last hour, per minute.
    Hour,
    /// The last day, per hour.
    Day,
}

impl Range {
    pub(super) fn parse(value: Option<&str>) -> Range {
        if value == Some("day") { Range::Day } else { Range::Hour }
    }

    fn step(self) -> TimeDelta {
        match self {
            Range::Hour => TimeDelta::minutes(1),
            Range::Day => TimeDelta::hours(1),
        }
    }

    fn points(self) -> usize {
        match self {
            Range::Hour => 60,
            Range::Day => 24,
        }
    }

    fn per(self) -> &'static str {
        match self {
            Range::Hour => "minute",
            Range::Day => "hour",
        }
    }
}

/// One bucket of time, every replica together.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct Point {
    pub at: DateTime<Utc>,
    pub completed: i64,
    pub failed: i64,
    pub dead_lettered: i64,
    pub wait_buckets: Vec<i64>,
}

impl Point {
    /// The queue wait's `q` quantile in seconds (None without claims), interpolated within
    /// its bucket as Prometheus' `histogram_quantile` does.
    pub fn wait_quantile(&self, q: f64) -> Option<f64> {
        quantile(&self.wait_buckets, q)
    }
}

pub(super) fn quantile(buckets: &[i64], q: f64) -> Option<f64> {
    let total: i64 = buckets.iter().sum();
    if total <= 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut before = 0.0;
    for (i, count) in buckets.iter().enumerate() {
        let count = *count as f64;
        if count > 0.0 && before + count >= rank {
            let lower = if i == 0 { 0.0 } else { QUEUE_WAIT_BUCKETS[i - 1] };
            // Past the largest bound nothing is known but the bound.
            let Some(upper) = QUEUE_WAIT_BUCKETS.get(i).copied() else { return Some(lower) };
            return Some(lower + (upper - lower) * ((rank - before) / count).clamp(0.0, 1.0));
        }
        before += count;
    }
    QUEUE_WAIT_BUCKETS.last().copied()
}

/// The replicas' minutes summed into the range's buckets, oldest first, ending at `now`'s.
pub(super) fn series(minutes: &[Minute], now: DateTime<Utc>, range: Range) -> Vec<Point> {
    let step = range.step();
    let last = now.duration_trunc(step).unwrap_or(now);
    let first = last - step * (range.points() as i32 - 1);
    let mut points: Vec<Point> = (0..range.points())
        .map(|i| Point {
            at: first + step * i as i32,
            wait_buckets: vec![0; QUEUE_WAIT_BUCKETS.len() + 1],
            ..Point::default()
        })
        .collect();
    for m in minutes {
        if m.minute < first {
            continue;
        }
        let index = ((m.minute - first).num_seconds() / step.num_seconds()) as usize;
        let Some(p) = points.get_mut(index) else { continue };
        p.completed += m.completed;
        p.failed += m.failed;
        p.dead_lettered += m.dead_lettered;
        for (sum, n) in p.wait_buckets.iter_mut().zip(&m.wait_buckets) {
            *sum += n;
        }
    }
    points
}

const W: f64 = 600.0;
const H: f64 = 110.0;
const LEFT: f64 = 48.0;
const BOTTOM: f64 = 18.0;
const TOP: f64 = 8.0;

fn axis_label(at: DateTime<Utc>, range: Range) -> String {
    match range {
        Range::Hour => at.format("%H:%M").to_string(),
        Range::Day => at.format("%d %H:00").to_string(),
    }
}

fn number(n: f64) -> String {
    if n >= 10_000.0 { format!("{:.0}k", n / 1000.0) } else { format!("{n:.0}") }
}

/// The axes of a chart: the top and bottom values on the left, the first and last times
/// below.
fn axes(points: &[Point], range: Range, top: &str, bottom: &str) -> Markup {
    html! {
        line x1=(LEFT) y1=(TOP) x2=(LEFT) y2=(H - BOTTOM) stroke="#c7ced6" {}
        line x1=(LEFT) y1=(H - BOTTOM) x2=(W) y2=(H - BOTTOM) stroke="#c7ced6" {}
        text x=(LEFT - 4.0) y=(TOP + 8.0) font-size="10" text-anchor="end" fill="#5f6b7a" { (top) }
        text x=(LEFT - 4.0) y=(H - BOTTOM) font-size="10" text-anchor="end" fill="#5f6b7a" { (bottom) }
        @if let (Some(first), Some(last)) = (points.first(), points.last()) {
            text x=(LEFT) y=(H - 4.0) font-size="10" fill="#5f6b7a" { (axis_label(first.at, range)) }
            text x=(W) y=(H - 4.0) font-size="10" text-anchor="end" fill="#5f6b7a" { (axis_label(last.at, range)) }
        }
    }
}

/// Bars of one count per point.
pub(super) fn bars(title: &str, points: &[Point], range: Range, value: fn(&Point) -> i64, fill: &str) -> Markup {
    let max = points.iter().map(value).max().unwrap_or(0).max(1) as f64;
    let total: i64 = points.iter().map(value).sum();
    let slot = (W - LEFT) / points.len().max(1) as f64;
    let plot = H - BOTTOM - TOP;
    html! {
        figure.chart {
            figcaption { (title) " per " (range.per()) ": " (total) " in all" }
            svg xmlns="http://www.w3.org/2000/svg" width=(W) height=(H) viewBox=(format!("0 0 {W} {H}"))
                role="img" aria-label=(format!("{title} per {}, {total} in all", range.per())) {
                (axes(points, range, &number(max), "0"))
                @for (i, p) in points.iter().enumerate() {
                    @let v = value(p);
                    @if v > 0 {
                        @let h = (v as f64 / max * plot).max(1.0);
                        rect x=(format!("{:.1}", LEFT + i as f64 * slot + 1.0)) y=(format!("{:.1}", H - BOTTOM - h))
                            width=(format!("{:.1}", (slot - 2.0).max(1.0))) height=(format!("{h:.1}")) fill=(fill) {
                            title { (axis_label(p.at, range)) ": " (v) }
                        }
                    }
                }
            }
        }
    }
}

fn seconds(s: f64) -> String {
    if s < 1.0 {
        format!("{:.0} ms", s * 1000.0)
    } else if s < 120.0 {
        format!("{s:.1} s")
    } else {
        format!("{:.0} min", s / 60.0)
    }
}

/// The queue wait's p50 and p99 per point, on a log scale from 1 ms.
pub(super) fn wait_lines(points: &[Point], range: Range) -> Markup {
    let p50: Vec<Option<f64>> = points.iter().map(|p| p.wait_quantile(0.5)).collect();
    let p99: Vec<Option<f64>> = points.iter().map(|p| p.wait_quantile(0.99)).collect();
    let floor = 0.001_f64;
    let top = p99.iter().flatten().copied().fold(0.01_f64, f64::max);
    let (lo, hi) = (floor.log10(), top.log10());
    let plot = H - BOTTOM - TOP;
    let slot = (W - LEFT) / points.len().max(1) as f64;
    let y = |s: f64| H - BOTTOM - (s.max(floor).log10() - lo) / (hi - lo).max(1e-9) * plot;
    let path = |values: &[Option<f64>]| {
        values
            .iter()
            .enumerate()
            .filter_map(|(i, v)| v.map(|v| format!("{:.1},{:.1}", LEFT + (i as f64 + 0.5) * slot, y(v))))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let latest = |values: &[Option<f64>]| values.iter().rev().flatten().next().map(|s| seconds(*s));
    html! {
        figure.chart {
            figcaption {
                "Queue wait per " (range.per()) ": p50 "
                (latest(&p50).unwrap_or_else(|| "–".into())) ", p99 " (latest(&p99).unwrap_or_else(|| "–".into()))
                " (latest)"
            }
            svg xmlns="http://www.w3.org/2000/svg" width=(W) height=(H) viewBox=(format!("0 0 {W} {H}"))
                role="img" aria-label=(format!("queue wait p50 and p99 per {}", range.per())) {
                (axes(points, range, &seconds(top), "1 ms"))
                polyline points=(path(&p99)) fill="none" stroke="#b3261e" stroke-width="1.5" { title { "p99" } }
                polyline points=(path(&p50)) fill="none" stroke="#1a56b0" stroke-width="1.5" { title { "p50" } }
                // A dot per point: a minute alone (no neighbour to join) still shows.
                @for (values, colour) in [(&p99, "#b3261e"), (&p50, "#1a56b0")] {
                    @for (i, v) in values.iter().enumerate() {
                        @if let Some(v) = v {
                            circle cx=(format!("{:.1}", LEFT + (i as f64 + 0.5) * slot)) cy=(format!("{:.1}", y(*v))) r="2" fill=(colour) {
                                title { (axis_label(points[i].at, range)) ": " (seconds(*v)) }
                            }
                        }
                    }
                }
            }
            p.legend { span.p50 { "— p50" } " " span.p99 { "— p99" } " (log scale)" }
        }
    }
}

/// One currency's spend per UTC day (the last `days` days, today last): bars whose heights
/// are drawn from the amounts (a float is fine for a pixel), whose labels are the exact text.
pub(super) fn spend_per_day(
    currency: &str,
    days: &[(DateTime<Utc>, String)],
    today: DateTime<Utc>,
    count: usize,
) -> Markup {
    let today = today.duration_trunc(TimeDelta::days(1)).unwrap_or(today);
    let first = today - TimeDelta::days(count as i64 - 1);
    let mut slots: Vec<Option<&str>> = vec![None; count];
    for (day, amount) in days {
        let index = (*day - first).num_days();
        if (0..count as i64).contains(&index) {
            slots[index as usize] = Some(amount.as_str());
        }
    }
    let value = |a: Option<&str>| a.and_then(|a| a.parse::<f64>().ok()).unwrap_or(0.0);
    let max = slots.iter().map(|a| value(*a)).fold(0.0_f64, f64::max);
    let slot = (W - LEFT) / count.max(1) as f64;
    let plot = H - BOTTOM - TOP;
    let label = |i: usize| (first + TimeDelta::days(i as i64)).format("%m-%d").to_string();
    html! {
        figure.chart {
            figcaption { "Spend per day, " (currency) ", last " (count) " days" }
            svg xmlns="http://www.w3.org/2000/svg" width=(W) height=(H) viewBox=(format!("0 0 {W} {H}"))
                role="img" aria-label=(format!("spend per day in {currency}")) {
                line x1=(LEFT) y1=(TOP) x2=(LEFT) y2=(H - BOTTOM) stroke="#c7ced6" {}
                line x1=(LEFT) y1=(H - BOTTOM) x2=(W) y2=(H - BOTTOM) stroke="#c7ced6" {}
                text x=(LEFT - 4.0) y=(TOP + 8.0) font-size="10" text-anchor="end" fill="#5f6b7a" { (format!("{max:.2}")) }
                text x=(LEFT - 4.0) y=(H - BOTTOM) font-size="10" text-anchor="end" fill="#5f6b7a" { "0" }
                @for (i, amount) in slots.iter().enumerate() {
                    @if let Some(amount) = amount {
                        @let h = if max > 0.0 { (value(Some(amount)) / max * plot).max(1.0) } else { 1.0 };
                        rect x=(format!("{:.1}", LEFT + i as f64 * slot + 1.0)) y=(format!("{:.1}", H - BOTTOM - h))
                            width=(format!("{:.1}", (slot - 2.0).max(1.0))) height=(format!("{h:.1}")) fill="#1a56b0" {
                            title { (label(i)) ": " (amount) " " (currency) }
                        }
                    }
                }
                text x=(LEFT) y=(H - 4.0) font-size="10" fill="#5f6b7a" { (label(0)) }
                text x=(W) y=(H - 4.0) font-size="10" text-anchor="end" fill="#5f6b7a" { (label(count - 1)) }
            }
        }
    }
}

/// The four charts of a range.
pub(super) fn all(minutes: &[Minute], now: DateTime<Utc>, range: Range) -> Markup {
    let points = series(minutes, now, range);
    html! {
        (bars("Items completed", &points, range, |p| p.completed, "#1e7a3e"))
        (bars("Attempts failed", &points, range, |p| p.failed, "#8a5a00"))
        (bars("Dead letters", &points, range, |p| p.dead_lettered, "#b3261e"))
        (wait_lines(&points, range))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minute(at: DateTime<Utc>, completed: i64, wait: &[(usize, i64)]) -> Minute {
        let mut wait_buckets = vec![0; QUEUE_WAIT_BUCKETS.len() + 1];
        for (i, n) in wait {
            wait_buckets[*i] = *n;
        }
        Minute { minute: at, completed, failed: 1, dead_lettered: 0, claimed: completed, wait_buckets }
    }

    #[test]
    fn quantiles_interpolate_within_a_bucket() {
        // 100 claims between 1 ms and 5 ms (bucket 1): p50 is half-way.
        let mut buckets = vec![0; QUEUE_WAIT_BUCKETS.len() + 1];
        buckets[1] = 100;
        assert!((quantile(&buckets, 0.5).unwrap() - 0.003).abs() < 1e-9);
        // One slow claim past the largest bound: p99 of 100 stays in bucket 1, p100 is the bound.
        buckets[1] = 99;
        *buckets.last_mut().unwrap() = 1;
        assert!(quantile(&buckets, 0.99).unwrap() <= 0.005);
        assert_eq!(quantile(&buckets, 1.0), Some(86_400.0));
        assert_eq!(quantile(&[0; 3], 0.5), None);
    }

    #[test]
    fn replicas_are_summed_into_minutes_and_hours() {
        let now: DateTime<Utc> = "2026-12-07T10:30:20Z".parse().unwrap();
        let at = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
        let minutes = vec![
            minute(at("2026-12-07T10:30:00Z"), 5, &[(1, 5)]),
            minute(at("2026-12-07T10:30:00Z"), 7, &[(2, 7)]), // a second replica
            minute(at("2026-12-07T10:00:00Z"), 3, &[]),
            minute(at("2026-12-07T09:00:00Z"), 11, &[]), // more than an hour ago
        ];
        let hour = series(&minutes, now, Range::Hour);
        assert_eq!(hour.len(), 60);
        assert_eq!(hour.last().unwrap().at, at("2026-12-07T10:30:00Z"));
        assert_eq!(hour.last().unwrap().completed, 12);
        assert_eq!(hour.last().unwrap().wait_buckets[1..3], [5, 7]);
        assert_eq!(hour.iter().map(|p| p.completed).sum::<i64>(), 15);
        let day = series(&minutes, now, Range::Day);
        assert_eq!(day.len(), 24);
        assert_eq!(day.last().unwrap().completed, 15);
        assert_eq!(day[22].completed, 11);
        let svg = all(&minutes, now, Range::Hour).into_string();
        assert_eq!(svg.matches("<svg").count(), 4);
        assert!(svg.contains("Items completed per minute: 15 in all"), "{svg}");
    }
}
