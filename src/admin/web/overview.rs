//! `/`: the overview of the queue (or the sign-in form): counts, the activity charts of every
//! replica (`?range=hour|day`), what is in flight; `?refresh=SECONDS` reloads it on its own.

use super::charts::{self, Range};
use super::sign_in::sign_in_page;
use super::*;

/// Shortest auto-refresh period the page accepts, and the one its link offers.
const MIN_REFRESH_SECONDS: u32 = 5;
const OFFERED_REFRESH_SECONDS: u32 = 30;

pub(super) async fn home(
    State(state): State<AdminState>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let Some(signed) = signed_in(&state, &headers) else {
        return page(StatusCode::OK, sign_in_page(&state, None));
    };
    let range = Range::parse(query.get("range").map(String::as_str));
    let refresh = match query.get("refresh").filter(|v| !v.is_empty()).map(|v| v.parse::<u32>()) {
        None => None,
        Some(Ok(seconds)) if seconds >= MIN_REFRESH_SECONDS => Some(seconds),
        Some(_) => {
            return error_page(
                &signed,
                api::ApiError::bad_request(format!("refresh: a number of seconds, at least {MIN_REFRESH_SECONDS}")),
            );
        }
    };
    let activity = db::activity::last_day(&state.ops).await;
    match (actions::overview(&state.ops).await, activity) {
        (Ok(overview), Ok((minutes, now))) => {
            let charts = Charts { range, refresh, minutes: &minutes, now };
            page(
                StatusCode::OK,
                layout_refreshing(
                    "Overview",
                    Some(&signed.session),
                    signed.flash.clone(),
                    overview_body(&state, &overview, Some(&charts)),
                    refresh,
                ),
            )
        }
        (Err(e), _) | (_, Err(e)) => error_page(&signed, e.into()),
    }
}

/// What the overview's charts are drawn from, and how.
pub(super) struct Charts<'a> {
    range: Range,
    refresh: Option<u32>,
    minutes: &'a [db::activity::Minute],
    now: DateTime<Utc>,
}

fn charts_section(c: &Charts) -> Markup {
    let link = |range: &str, refresh: Option<u32>| match refresh {
        Some(seconds) => format!("/?range={range}&refresh={seconds}"),
        None => format!("/?range={range}"),
    };
    let here = if c.range == Range::Day { "day" } else { "hour" };
    html! {
        h2 { "Activity, every replica" }
        p.legend {
            @if c.range == Range::Hour { strong { "last hour" } } @else { a href=(link("hour", c.refresh)) { "last hour" } }
            " · "
            @if c.range == Range::Day { strong { "last day" } } @else { a href=(link("day", c.refresh)) { "last day" } }
            " · "
            @match c.refresh {
                Some(seconds) => { "reloads every " (seconds) " s (" a href=(link(here, None)) { "stop" } ")" },
                None => a href=(link(here, Some(OFFERED_REFRESH_SECONDS))) { "reload every " (OFFERED_REFRESH_SECONDS) " s" },
            }
        }
        div.charts { (charts::all(c.minutes, c.now, c.range)) }
    }
}

pub(super) fn overview_body(state: &AdminState, o: &Overview, charts: Option<&Charts>) -> Markup {
    let states: Vec<&str> = ItemStatus::ALL.iter().map(|s| s.as_str()).collect();
    html! {
        h1 { "Overview" }
        section.tiles {
            div.tile { span.n { (o.by_state.get("QUEUED").copied().unwrap_or(0)) } span.l { "queued" } }
            div.tile { span.n { (o.by_state.get("PROCESSING").copied().unwrap_or(0)) } span.l { "processing" } }
            div.tile {
                span.n { (o.oldest_queued_seconds.map(age).unwrap_or_else(|| "–".to_owned())) }
                span.l { "oldest runnable item waiting" }
            }
            a.tile.warn[o.open_dead_letters > 0] href="/dead-letters" {
                span.n { (o.open_dead_letters) } span.l { "open dead letters" }
            }
            a.tile.warn[o.awaiting_approval > 0] href="/approvals" {
                span.n { (o.awaiting_approval) } span.l { "awaiting approval" }
            }
            a.tile.warn[o.escalations_open > 0] href="/escalations" {
                span.n { (o.escalations_open) } span.l { "open escalations" }
                @if o.escalations_acknowledged > 0 { span.l { (o.escalations_acknowledged) " acknowledged" } }
            }
        }
        @if let Some(charts) = charts { (charts_section(charts)) }
        h2 { "Items by type and state" }
        @if o.by_type.is_empty() {
            p { "No work items." }
        } @else {
            table {
                thead { tr { th { "type" } @for s in &states { th.num { (s) } } } }
                tbody {
                    @for (item_type, counts) in &o.by_type {
                        tr {
                            td { (item_type) }
                            @for s in &states {
                                td.num {
                                    @match counts.get(*s) {
                                        Some(n) => a href=(format!("/items?type={}&state={s}", q(item_type))) { (n) },
                                        None => span.zero { "0" },
                                    }
                                }
                            }
                        }
                    }
                    tr.total {
                        td { "all" }
                        @for s in &states { td.num { (o.by_state.get(*s).copied().unwrap_or(0)) } }
                    }
                }
            }
        }
        p { (o.scheduled) " queued item(s) wait for a future run time (retries, delayed items); "
            (o.waiting_for_dependencies) " wait for their dependencies." }
        @if !o.agents.is_empty() {
            h2 { "Agents with limits" }
            table #agents {
                thead { tr { th { "agent" } th { "circuit" } th { "paused until" } th.num { "failures in a row" } th.num { "in flight" } th.num { "waiting" } th { "rate booked until" } } }
                tbody {
                    @for a in &o.agents {
                        tr {
                            td { code { (a.agent) } }
                            td {
                                @if a.circuit == "open" { span.state.FAILED { "open" } " until " (a.circuit_open_until.map(ts).unwrap_or_default()) }
                                @else { (a.circuit) }
                            }
                            td { (a.paused_until.map(ts).unwrap_or_else(|| "–".to_owned())) }
                            td.num { (a.consecutive_failures) }
                            td.num { (a.in_flight) }
                            td.num { (a.waiting) }
                            td { (a.rate_booked_until.map(ts).unwrap_or_else(|| "–".to_owned())) }
                        }
                    }
                }
            }
        }
        h2 { "In flight (up to 20)" }
        @if o.in_flight.is_empty() {
            p { "Nothing is running." }
        } @else {
            table {
                thead { tr { th { "item" } th { "type" } th.num { "attempt" } th { "progress" } th { "lease" } th { "worker" } } }
                tbody {
                    @for i in &o.in_flight {
                        tr {
                            td { a href=(format!("/items/{}", i.id)) { code { (short(i.id)) } } }
                            td { (i.item_type) }
                            td.num { (i.attempt) }
                            td.progress {
                                @if let Some(percent) = i.percent {
                                    progress max="100" value=(percent) { (percent) "%" }
                                    " " (format!("{percent:.0}%"))
                                    @if let Some(m) = &i.progress_message { br; small { (m) } }
                                } @else { "–" }
                            }
                            td {
                                @match i.lease_remaining_ms {
                                    Some(ms) if ms >= 0 => { "expires in " (age(ms as f64 / 1000.0)) }
                                    Some(ms) => span.bad { "EXPIRED " (age(-ms as f64 / 1000.0)) " ago" },
                                    None => "–",
                                }
                            }
                            td { (i.locked_by.as_deref().unwrap_or("?")) }
                        }
                    }
                }
            }
        }
        p.hint {
            "Process " (state.worker_id) (if state.leadership.is_leader() { " (leader)" } else { "" }) " · "
            @match &o.leadership {
                Some(l) if l.live => { "led by " (l.holder) " since " (l.since.format("%Y-%m-%d %H:%M:%S UTC")) " (epoch " (l.epoch) ")" }
                Some(l) => span.bad { "no leader: the lease of " (l.holder) " expired at " (l.expires_at.format("%Y-%m-%d %H:%M:%S UTC")) },
                None => "no replica has led yet",
            }
            " · orderly " (env!("CARGO_PKG_VERSION"))
        }
        h2 { "Replicas alive (" (o.replicas.len()) ")" }
        @if o.replicas.is_empty() { p { "No replica has reported in the last 30 seconds." } } @else {
            table.replicas {
                thead { tr { th { "worker" } th { "version" } th { "started" } th { "last seen" } } }
                tbody {
                    @for r in &o.replicas {
                        tr {
                            td { code { (r.worker_id) } @if o.leadership.as_ref().is_some_and(|l| l.live && l.holder == r.worker_id) { " (leader)" } }
                            td { (r.version) } td { (ts(r.started_at)) } td { (ts(r.last_seen)) br; small { (ago(r.last_seen)) } }
                        }
                    }
                }
            }
        }
    }
}
