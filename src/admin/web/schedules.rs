//! `/schedules`: every schedule with its next runs and the orders of its last slots.

use super::*;

pub(super) async fn schedules(State(state): State<AdminState>, Viewer(signed): Viewer) -> Response {
    let schedules = match db::schedules::list(&state.ops).await {
        Ok(rows) => rows,
        Err(e) => return error_page(&signed, e.into()),
    };
    let mut views = Vec::new();
    for schedule in schedules {
        match actions::schedules::schedule_view(&state.ops, schedule, 3).await {
            Ok(view) => views.push(view),
            Err(e) => return error_page(&signed, e.into()),
        }
    }
    let body = html! {
        h1 { "Schedules" }
        @if views.is_empty() { p { "No schedule. Schedules are rows of the schedules table (docs/schedules.md)." } } @else {
            table.schedules {
                thead { tr { th { "name" } th { "when" } th { "next runs (its zone · UTC)" } th { "last slots" } } }
                tbody {
                    @for view in &views {
                        @let s = &view.schedule;
                        tr id=(format!("schedule-{}", s.id)) {
                            td { (s.name) @if !s.enabled { br; span.state { "paused" } } }
                            td { (view.when) br; small { (s.timezone) } }
                            td {
                                @if let Some(error) = &s.last_error { span.bad { "cannot run: " (error) } }
                                @for next in &view.next_runs {
                                    (next.local) " · " small { (next.utc) } br;
                                }
                            }
                            td {
                                @for o in &view.recent_orders {
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
