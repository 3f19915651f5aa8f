//! `/escalations`: the unresolved escalations, with acknowledge and resolve.

use super::*;

pub(super) async fn escalations(State(state): State<AdminState>, Viewer(signed): Viewer) -> Response {
    let rows = match db::sla::escalations(&state.ops, false, 200).await {
        Ok(rows) => rows,
        Err(e) => return error_page(&signed, e.into()),
    };
    let operate = signed.session.identity.may_operate();
    let body = html! {
        h1 { "Escalations" }
        @if rows.is_empty() { p { "No unresolved escalation." } } @else {
            table.escalations {
                thead { tr { th { "rule" } th.num { "level" } th { "status" } th { "item" } th { "due" } th { "reason" } th { "" } } }
                tbody {
                    @for e in &rows {
                        tr id=(format!("escalation-{}", e.id)) {
                            td { (e.rule) br; small { (e.clock) } }
                            td.num { (e.level) }
                            td {
                                span class=(format!("state {}", e.status)) { (e.status) }
                                @if let Some(by) = &e.acknowledged_by { br; small { "by " (by) } }
                            }
                            td { a href=(format!("/items/{}", e.work_item_id)) { code { (short(e.work_item_id)) } } }
                            td { (ts(e.due_at)) }
                            td { (e.reason) }
                            td {
                                @if operate {
                                    @if e.status == "OPEN" {
                                        form.inline method="post" action=(format!("/escalations/{}/ack", e.id)) {
                                            (hidden(&signed.session, "/escalations"))
                                            button type="submit" { "Acknowledge" }
                                        }
                                    }
                                    form.inline method="post" action=(format!("/escalations/{}/resolve", e.id)) {
                                        (hidden(&signed.session, "/escalations"))
                                        button type="submit" { "Resolve" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    page(StatusCode::OK, layout("Escalations", Some(&signed.session), signed.flash.clone(), body))
}

pub(super) async fn escalation_action(
    State(state): State<AdminState>,
    Path((id, action)): Path<(String, String)>,
    OperatorForm { signed, form }: OperatorForm,
) -> Response {
    let (action, verb) = match action.as_str() {
        "ack" => (db::sla::Action::Acknowledge, "Acknowledged"),
        "resolve" => (db::sla::Action::Resolve, "Resolved"),
        _ => return error_page(&signed, api::ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such action")),
    };
    let Ok(id) = id.parse::<Uuid>() else {
        return error_page(&signed, api::ApiError::bad_request("not an escalation id"));
    };
    let reason = form.get("reason").map(String::as_str);
    let result = actions::act_on_escalation(&state.ops, id, action, &signed.session.identity.name, reason)
        .await
        .map(|()| format!("{verb} escalation {}.", short(id)));
    done(&state, &signed, said(result, None), &back(&form, "/escalations"))
}
