//! `/`: the overview of the queue (or the sign-in form).

use super::sign_in::sign_in_page;
use super::*;

pub(super) async fn home(State(state): State<AdminState>, headers: HeaderMap) -> Response {
    let Some(signed) = signed_in(&state, &headers) else {
        return page(StatusCode::OK, sign_in_page(&state, None));
    };
    match actions::overview(&state.ops).await {
        Ok(overview) => page(
            StatusCode::OK,
            layout("Overview", Some(&signed.session), signed.flash.clone(), overview_body(&state, &overview)),
        ),
        Err(e) => error_page(&signed, e.into()),
    }
}

pub(super) fn overview_body(state: &AdminState, o: &Overview) -> Markup {
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
        h2 { "In flight (up to 20)" }
        @if o.in_flight.is_empty() {
            p { "Nothing is running." }
        } @else {
            table {
                thead { tr { th { "item" } th { "type" } th.num { "attempt" } th { "lease" } th { "worker" } } }
                tbody {
                    @for i in &o.in_flight {
                        tr {
                            td { a href=(format!("/items/{}", i.id)) { code { (short(i.id)) } } }
                            td { (i.item_type) }
                            td.num { (i.attempt) }
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
                            td { (r.version) } td { (ts(r.started_at)) } td { (ts(r.last_seen)) }
                        }
                    }
                }
            }
        }
    }
}
