//! `/schedules`: every schedule with its next runs and the orders of its last slots.

use super::*;

pub(super) async fn schedules(State(state): State<AdminState>, headers: HeaderMap) -> Response {
    let signed = signed_or_sign_in!(state, headers);
    let schedules = match db::schedules::list(&state.ops).await {
        Ok(rows) => rows,
        Err(e) => return error_page(&signed, e.into()),
    };
    let mut recent = Vec::new();
    for s in &schedules {
        match db::schedules::recent_orders(&state.ops, s.id, 3).await {
            Ok(orders) => recent.push(orders),
            Err(e) => return error_page(&signed, e.into()),
        }
    }
    let body = html! {
        h1 { "Schedules" }
        @if schedules.is_empty() { p { "No schedule. Schedules are rows of the schedules table (docs/schedules.md)." } } @else {
            table.schedules {
                thead { tr { th { "name" } th { "when" } th { "next runs (its zone · UTC)" } th { "last slots" } } }
                tbody {
                    @for (s, orders) in schedules.iter().zip(&recent) {
                        @let view = actions::schedule_view(s, 3);
                        tr id=(format!("schedule-{}", s.id)) {
                            td { (s.name) @if !s.enabled { br; span.state { "paused" } } }
                            td { (actions::schedule_when(s)) br; small { (s.timezone) } }
                            td {
                                @if let Some(error) = &s.last_error { span.bad { "cannot run: " (error) } }
                                @for next in view["next_runs"].as_array().into_iter().flatten() {
                                    (next["local"].as_str().unwrap_or("")) " · " small { (next["utc"].as_str().unwrap_or("")) } br;
                                }
                            }
                            td {
                                @for o in orders {
                                    (o.slot_at.format("%Y-%m-%d %H:%M:%S UTC")) " "
                                    a href=(format!("/items?order={}", o.work_order_id)) { code title=(o.work_order_id) { (short(o.work_order_id)) } }
                                    " " span class=(format!("state {}", o.status)) { (o.status) } br;
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    page(StatusCode::OK, layout("Schedules", Some(&signed.session), signed.flash.clone(), body))
}
