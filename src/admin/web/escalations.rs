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
                            td { a href=(format!("/escalations/{}", e.id)) { (e.rule) } br; small { (e.clock) } }
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

/// `/escalations/ID`: one escalation, its subject (the item, or the dead letter of a
/// dead-letter clock) and the notifications sent for it.
pub(super) async fn escalation(
    State(state): State<AdminState>,
    Viewer(signed): Viewer,
    Path(id): Path<String>,
) -> Response {
    let Ok(id) = id.parse::<Uuid>() else {
        return error_page(&signed, api::ApiError::bad_request(format!("`{id}` is not an escalation id")));
    };
    let (e, notifications) = match db::sla::escalation(&state.ops, id).await {
        Ok(found) => found,
        Err(err) => return error_page(&signed, err.into()),
    };
    let subject = if e.clock == "DEAD_LETTER_OPEN" {
        (format!("/dead-letters/{}", e.subject_id), "dead letter")
    } else {
        (format!("/items/{}", e.work_item_id), "item")
    };
    let body = html! {
        h1 { "Escalation " code { (e.id) } }
        dl.facts {
            dt { "rule" } dd { (e.rule) " (" (e.clock) ") · level " (e.level) }
            dt { "state" } dd { span class=(format!("state {}", e.status)) { (e.status) } }
            dt { "subject" } dd { (subject.1) " " a href=(subject.0) { code { (e.subject_id) } } }
            dt { "item" } dd { a href=(format!("/items/{}", e.work_item_id)) { code { (e.work_item_id) } } }
            dt { "due" } dd { (ts(e.due_at)) }
            dt { "reason" } dd { (e.reason) }
            @if let Some(by) = &e.acknowledged_by { dt { "acknowledged" } dd { (by) } }
            @if let Some(by) = &e.resolved_by { dt { "resolved" } dd { (by) " " (e.resolution.as_deref().unwrap_or("")) } }
        }
        h2 { "Notifications" }
        @if notifications.is_empty() { p { "None sent." } } @else {
            table {
                thead { tr { th { "kind" } th { "connector" } th { "status" } th.num { "attempts" } th { "delivered" } th { "last error" } } }
                tbody {
                    @for n in &notifications {
                        tr {
                            td { (n.kind) } td { (n.connector) } td { (n.status) } td.num { (n.attempts) }
                            td { (n.delivered_at.map(ts).unwrap_or_default()) }
                            td { (n.last_error.as_deref().unwrap_or("")) }
                        }
                    }
                }
            }
        }
    };
    page(StatusCode::OK, layout("Escalation", Some(&signed.session), signed.flash.clone(), body))
}
