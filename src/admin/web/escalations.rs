//! `/escalations`: the unresolved escalations, with acknowledge and resolve, one at a time,
//! every level of an item at once, or the rows ticked.

use super::*;

pub(super) async fn escalations(State(state): State<AdminState>, Viewer(signed): Viewer) -> Response {
    let rows = match db::sla::escalations(&state.ops, false, 200).await {
        Ok(rows) => rows,
        Err(e) => return error_page(&signed, e.into()),
    };
    let operate = signed.session.identity.may_operate();
    // Open escalations per item: an item with several gets "acknowledge all N".
    let mut open_of_item: HashMap<Uuid, usize> = HashMap::new();
    for e in rows.iter().filter(|e| e.status == "OPEN") {
        *open_of_item.entry(e.work_item_id).or_default() += 1;
    }
    let body = html! {
        h1 { "Escalations" }
        @if rows.is_empty() { p { "No unresolved escalation." } } @else {
            @if operate {
                // The row checkboxes belong to this form (their `form` attribute): a table row
                // cannot hold a form of its own around its other buttons.
                form.bulk #bulk method="post" action="/escalations/bulk" {
                    (hidden(&signed.session, "/escalations"))
                    "The rows ticked: "
                    button type="submit" name="action" value="ack" { "Acknowledge" }
                    " "
                    button type="submit" name="action" value="resolve" { "Resolve" }
                }
            }
            table.escalations {
                thead { tr { @if operate { th { "" } } th { "rule" } th.num { "level" } th { "status" } th { "item" } th { "due" } th { "reason" } th { "" } } }
                tbody {
                    @for e in &rows {
                        tr id=(format!("escalation-{}", e.id)) {
                            @if operate {
                                td { input type="checkbox" form="bulk" name=(format!("pick-{}", e.id)) value="1" aria-label=(format!("escalation {}", short(e.id))); }
                            }
                            td { a href=(format!("/escalations/{}", e.id)) { (e.rule) } br; small { (e.clock) } }
                            td.num { (e.level) }
                            td {
                                span class=(format!("state {}", e.status)) { (e.status) }
                                @if let Some(by) = &e.acknowledged_by { br; small { "by " (by) } }
                            }
                            td { a href=(format!("/items/{}", e.work_item_id)) { code { (short(e.work_item_id)) } } }
                            td { (ts(e.due_at)) br; small { (ago(e.due_at)) } }
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
                                    @if e.status == "OPEN" && open_of_item.get(&e.work_item_id).copied().unwrap_or(0) > 1 {
                                        form.inline method="post" action="/escalations/bulk" {
                                            (hidden(&signed.session, "/escalations"))
                                            input type="hidden" name="item" value=(e.work_item_id);
                                            button type="submit" name="action" value="ack" {
                                                "Acknowledge all " (open_of_item[&e.work_item_id]) " of this item"
                                            }
                                        }
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

/// `POST /escalations/bulk`: `action` (ack or resolve) on the rows ticked (`pick-ID`), or on
/// every open escalation of `item`. Each goes through the one action path, in its own
/// transaction; the page says how many were done and why any was not.
pub(super) async fn bulk(State(state): State<AdminState>, OperatorForm { signed, form }: OperatorForm) -> Response {
    let (action, verb) = match form.get("action").map(String::as_str) {
        Some("ack") => (db::sla::Action::Acknowledge, "Acknowledged"),
        Some("resolve") => (db::sla::Action::Resolve, "Resolved"),
        _ => return error_page(&signed, api::ApiError::bad_request("action: ack or resolve")),
    };
    let mut ids: Vec<Uuid> =
        form.keys().filter_map(|k| k.strip_prefix("pick-")).filter_map(|id| id.parse().ok()).collect();
    if let Some(item) = form.get("item") {
        let Ok(item) = item.parse::<Uuid>() else {
            return error_page(&signed, api::ApiError::bad_request("item: not an item id"));
        };
        match db::sla::of_item(&state.ops, item).await {
            Ok(rows) => ids.extend(
                rows.iter()
                    .filter(|e| {
                        if action == db::sla::Action::Acknowledge { e.status == "OPEN" } else { e.status != "RESOLVED" }
                    })
                    .map(|e| e.id),
            ),
            Err(e) => return error_page(&signed, OpsError::from(e).into()),
        }
    }
    ids.sort_unstable();
    ids.dedup();
    if ids.is_empty() {
        return done(
            &state,
            &signed,
            said(Err(OpsError::Conflict("no escalation was ticked".into())), None),
            "/escalations",
        );
    }
    let reason = form.get("reason").map(String::as_str);
    let (mut acted, mut refused) = (0, Vec::new());
    for id in &ids {
        match actions::act_on_escalation(&state.ops, *id, action, &signed.session.identity.name, reason).await {
            Ok(()) => acted += 1,
            Err(e) => refused.push(format!("{}: {}", short(*id), describe(&e))),
        }
    }
    let text = if refused.is_empty() {
        format!("{verb} {acted} escalation(s).")
    } else {
        format!("{verb} {acted} of {} escalation(s); not: {}", ids.len(), refused.join("; "))
    };
    done(&state, &signed, Flash { ok: refused.is_empty(), text }, &back(&form, "/escalations"))
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
            dt { "due" } dd { (ts(e.due_at)) " (" (ago(e.due_at)) ")" }
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
