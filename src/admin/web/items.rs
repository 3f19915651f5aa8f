//! `/items`, `/items/ID` and `/orders/ID`: items by state and type, one item with its
//! records, its dependencies and why it waits, one order with its dependency graph, and cancel.

use super::*;

pub(super) async fn items(
    State(state): State<AdminState>,
    Viewer(signed): Viewer,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let mut query: HashMap<String, String> = query.into_iter().filter(|(_, v)| !v.trim().is_empty()).collect();
    if let Some(id) = query.remove("id") {
        return match id.trim().parse::<Uuid>() {
            Ok(id) => Redirect::to(&format!("/items/{id}")).into_response(),
            Err(_) => error_page(&signed, api::ApiError::bad_request(format!("`{id}` is not an item id"))),
        };
    }
    let filter = match api::item_filter(&query) {
        Ok(filter) => filter,
        Err(e) => return error_page(&signed, e),
    };
    let cursor = match query.get("cursor").map(|c| api::decode_cursor(c)).transpose() {
        Ok(cursor) => cursor,
        Err(e) => return error_page(&signed, e),
    };
    let limit = 50;
    let mut rows = match db::items::list(&state.ops, &filter, cursor, limit + 1).await {
        Ok(rows) => rows,
        Err(e) => return error_page(&signed, e.into()),
    };
    let more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    let next = more.then(|| rows.last().map(|r| api::encode_cursor(r.created_at, r.id))).flatten();
    let state_value = filter.status.map(|s| s.as_str().to_owned()).unwrap_or_default();
    let type_value = filter.item_type.clone().unwrap_or_default();
    let body = html! {
        h1 { "Items" }
        form.filters method="get" action="/items" {
            label { "id " input type="text" name="id" placeholder="item id" size="38"; }
            button type="submit" { "Open" }
        }
        form.filters method="get" action="/items" {
            label { "state "
                select name="state" {
                    option value="" { "any" }
                    @for s in ItemStatus::ALL { option value=(s.as_str()) selected[state_value == s.as_str()] { (s.as_str()) } }
                }
            }
            label { "type " input type="text" name="type" value=(type_value) size="14"; }
            label { "order " input type="text" name="order" value=(query.get("order").map(String::as_str).unwrap_or("")) size="38"; }
            label { "tenant " input type="text" name="tenant" value=(query.get("tenant").map(String::as_str).unwrap_or("")) size="38"; }
            label { "created since " input type="text" name="created_since" placeholder="RFC 3339" value=(query.get("created_since").map(String::as_str).unwrap_or("")) size="22"; }
            button type="submit" { "Filter" }
        }
        @if rows.is_empty() { p { "No item matches." } } @else {
            table {
                thead { tr { th { "item" } th { "type" } th { "state" } th.num { "attempt" } th { "last error" } th { "created" } } }
                tbody {
                    @for r in &rows {
                        tr {
                            td { a href=(format!("/items/{}", r.id)) { code { (short(r.id)) } } }
                            td { (r.item_type) }
                            td { span class=(format!("state {}", r.status.as_str())) { (r.status.as_str()) } }
                            td.num { (r.attempt) }
                            td { (r.last_error_code.as_deref().unwrap_or("")) }
                            td { (ts(r.created_at)) br; small { (ago(r.created_at)) } }
                        }
                    }
                }
            }
            @if let Some(next) = next {
                @let kept: String = ["order", "tenant", "created_since", "created_until"].iter()
                    .filter_map(|k| query.get(*k).map(|v| format!("&{k}={}", q(v)))).collect();
                p { a href=(format!("/items?state={}&type={}{kept}&cursor={next}", q(&state_value), q(&type_value))) { "Older items →" } }
            }
        }
    };
    page(StatusCode::OK, layout("Items", Some(&signed.session), signed.flash.clone(), body))
}

pub(super) async fn item(State(state): State<AdminState>, Viewer(signed): Viewer, Path(id): Path<String>) -> Response {
    let Ok(id) = id.parse::<Uuid>() else {
        return error_page(&signed, api::ApiError::bad_request(format!("`{id}` is not an item id")));
    };
    let view = match actions::item_view(&state.ops, &state.catalog, id).await {
        Ok(view) => view,
        Err(e) => return error_page(&signed, e.into()),
    };
    let i = &view.detail.item;
    let here = format!("/items/{id}");
    let live = matches!(i.status, ItemStatus::Queued | ItemStatus::Processing | ItemStatus::AwaitingApproval);
    let operate = signed.session.identity.may_operate();
    let body = html! {
        h1 { "Item " code { (i.id) } }
        dl.facts {
            dt { "state" } dd { span class=(format!("state {}", i.status.as_str())) { (i.status.as_str()) } }
            dt { "why" } dd.why { (view.waiting_reason.detail) }
            @if let Some(p) = &view.detail.progress {
                dt { "progress" } dd.progress {
                    progress max="100" value=(p.percent) { (p.percent) "%" }
                    " " (p.percent) "% " (p.message.as_deref().unwrap_or("")) " "
                    small { "attempt " (p.attempt) ", " (ts(p.updated_at)) }
                }
            }
            dt { "type" } dd { (i.item_type) " · priority " (i.priority) }
            dt { "order" } dd {
                a href=(format!("/orders/{}", i.work_order_id)) { code { (i.work_order_id) } }
                " (" (i.order_status) ") · workflow " (i.workflow_id)
            }
            dt { "route" } dd {
                @if let Some(agent) = &view.route.agent { "agent " (agent) " · content " (view.route.content.as_deref().unwrap_or("")) }
                @else { span.bad { (view.route.error.as_deref().unwrap_or("")) } }
            }
            dt { "attempts" } dd { (i.attempt) " (" (i.attempt - i.attempt_base) " counted in the budget) · rescues " (i.rescues) }
            dt { "created" } dd { (ts(i.created_at)) " (" (ago(i.created_at)) ")" }
            @if let Some(at) = i.processed_at { dt { "finished" } dd { (ts(at)) " (" (ago(at)) ")" } }
            @if let Some(code) = &i.last_error_code { dt { "last error" } dd { (code) ": " (i.last_error.as_deref().unwrap_or("")) } }
        }
        @if i.status == ItemStatus::AwaitingApproval && operate {
            section.decide {
                h2 { "Held for a decision" }
                p { "The output below waits for a human. Approve completes the item; reject fails this attempt (a retry while the budget lasts, else a dead letter)." }
                @for (verb, label) in [("approve", "Approve"), ("reject", "Reject")] {
                    form.inline method="post" action=(format!("/approvals/{id}/{verb}")) {
                        (hidden(&signed.session, &here))
                        input type="text" name="reason" placeholder="reason (optional)";
                        button type="submit" { (label) }
                    }
                }
            }
        }
        @if live && operate {
            form.inline method="post" action=(format!("/items/{id}/cancel")) {
                (hidden(&signed.session, &here))
                input type="text" name="reason" placeholder="reason (optional)";
                button.danger type="submit" { "Cancel item" }
            }
        }
        (edges_tables(&view.detail.dependencies))
        h2 { "Content (" (i.content_bytes) " bytes)" }
        @match &i.content { Some(c) => pre { (cut(c)) }, None => p { "Too large to show." } }
        @if let Some(result) = &i.result { h2 { "Result" } pre { (json_text(result)) } }
        (attempts_table(&view.detail.attempts))
        @if !view.detail.logs.is_empty() {
            h2 { "Log" }
            pre.log {
                @for l in &view.detail.logs {
                    "#" (l.attempt_number.unwrap_or(0)) " " (l.level) " "
                    @if let Some(at) = l.logged_at { (at.format("%H:%M:%S%.3f").to_string()) " " }
                    (l.message) "\n"
                }
            }
        }
        @if !view.detail.artifacts.is_empty() {
            h2 { "Artifacts" }
            ul {
                @for a in &view.detail.artifacts {
                    li {
                        "#" (a.attempt_number.unwrap_or(0)) " "
                        @match &a.url { Some(url) => a href=(url) rel="noreferrer" { (a.name) }, None => (a.name) }
                        @if let Some(kind) = &a.kind { " · " (kind) }
                        @if let Some(size) = a.size_bytes { " · " (size) " bytes" }
                    }
                }
            }
        }
        @if !view.detail.eval_results.is_empty() {
            h2 { "Eval results" }
            ul { @for e in &view.detail.eval_results { li { (e.evaluation_type) " passed=" (e.passed) " score=" (e.score) " " code { (cut(&e.metrics.to_string())) } } } }
        }
        @if !view.detail.approvals.is_empty() {
            h2 { "Approvals" }
            ul { @for a in &view.detail.approvals { li { (a.decision) " by " (a.approver_id) " (" (a.source) ") " (a.reason.as_deref().unwrap_or("")) } } }
        }
        @if !view.detail.escalations.is_empty() {
            h2 { "Escalations" }
            ul { @for e in &view.detail.escalations { li { (e.rule) " level " (e.level) ": " (e.status) } } }
        }
        @if !view.detail.dead_letters.is_empty() {
            h2 { "Dead letters" }
            ul { @for d in &view.detail.dead_letters {
                li { a href=(format!("/dead-letters/{}", d.id)) { code title=(d.id) { (short(d.id)) } } " " (d.error_code.as_deref().unwrap_or("")) " "
                     (if d.open { "open" } else { d.resolution.as_deref().unwrap_or("") }) }
            } }
        }
    };
    page(StatusCode::OK, layout("Item", Some(&signed.session), signed.flash.clone(), body))
}

fn edges_tables(edges: &db::dependencies::Edges) -> Markup {
    html! {
        @for (title, list) in [("Depends on", &edges.dependencies), ("Dependents", &edges.dependents)] {
            @if !list.is_empty() {
                h2 { (title) }
                table.edges {
                    thead { tr { th { "item" } th { "type" } th { "state" } th { "kind" } th { "edge" } } }
                    tbody {
                        @for e in list {
                            tr {
                                td { a href=(format!("/items/{}", e.work_item_id)) { code title=(e.work_item_id) { (short(e.work_item_id)) } } }
                                td { (e.item_type) }
                                td {
                                    span class=(format!("state {}", e.status.as_str())) { (e.status.as_str()) }
                                    @if let Some(letter) = e.dead_letter_id {
                                        " " a href=(format!("/dead-letters/{letter}")) { "dead letter " (short(letter)) }
                                    }
                                }
                                td { (e.kind) }
                                td { @if e.kind == "RELATED" { "recorded" } @else if e.satisfied { "met" } @else { "waiting" } }
                            }
                        }
                    }
                }
            }
        }
    }
}

pub(super) async fn order(State(state): State<AdminState>, Viewer(signed): Viewer, Path(id): Path<String>) -> Response {
    let Ok(id) = id.parse::<Uuid>() else {
        return error_page(&signed, api::ApiError::bad_request(format!("`{id}` is not an order id")));
    };
    let order = match db::orders::get(&state.ops, id).await {
        Ok(Some(order)) => order,
        Ok(None) => return error_page(&signed, OpsError::NotFound { what: "work order", id }.into()),
        Err(e) => return error_page(&signed, OpsError::from(e).into()),
    };
    let graph = match db::dependencies::of_order(&state.ops, id, 5000).await {
        Ok(graph) => graph,
        Err(e) => return error_page(&signed, OpsError::from(e).into()),
    };
    let here = format!("/orders/{id}");
    let live = ["QUEUED", "PROCESSING", "AWAITING_APPROVAL"].iter().any(|s| order.items_by_status.contains_key(*s));
    let body = html! {
        h1 { "Order " code { (order.id) } }
        dl.facts {
            dt { "state" } dd { span class=(format!("state {}", order.status)) { (order.status) } }
            dt { "workflow" } dd { (order.workflow_id) " · priority " (order.priority) }
            dt { "tenant" } dd { code { (order.tenant_id) } " · created by " code { (order.created_by) } }
            dt { "items" } dd {
                @for (status, n) in &order.items_by_status {
                    a href=(format!("/items?order={id}&state={status}")) { (n) " " (status) } " "
                }
            }
            dt { "created" } dd { (ts(order.created_at)) " · updated " (ts(order.updated_at)) " (" (ago(order.updated_at)) ")" }
        }
        @if live && signed.session.identity.may_operate() {
            form.inline method="post" action=(format!("/orders/{id}/cancel")) {
                (hidden(&signed.session, &here))
                input type="text" name="reason" placeholder="reason (optional)";
                button.danger type="submit" { "Cancel every unfinished item" }
            }
        }
        h2 { "Dependencies" }
        @if graph.edges.is_empty() {
            p { "No dependencies between this order's items." }
        } @else {
            p.legend { "Left to right: an item runs after those it points from. Solid: BLOCKS, dashed: SOFT, dotted: RELATED; a dashed box waits for its dependencies." }
            (super::graph::svg(id, &graph))
        }
        p { a href=(format!("/items?order={id}")) { "The order's items →" } }
    };
    page(StatusCode::OK, layout("Order", Some(&signed.session), signed.flash.clone(), body))
}

pub(super) async fn cancel_order(
    State(state): State<AdminState>,
    Path(id): Path<String>,
    OperatorForm { signed, form }: OperatorForm,
) -> Response {
    let Ok(id) = id.parse::<Uuid>() else { return error_page(&signed, api::ApiError::bad_request("not an order id")) };
    let reason = form.get("reason").map(String::as_str);
    let result = actions::cancel(&state.ops, db::items::Target::Order(id), &signed.session.identity.name, reason)
        .await
        .map(|done| format!("Cancelled {} item(s) of order {}.", done.len(), short(id)));
    done(&state, &signed, said(result, None), &back(&form, &format!("/orders/{id}")))
}

pub(super) fn attempts_table(attempts: &[db::items::AttemptRow]) -> Markup {
    html! {
        h2 { "Attempts" }
        @if attempts.is_empty() { p { "None recorded yet." } } @else {
            table.attempts {
                thead { tr { th.num { "#" } th { "status" } th { "agent" } th { "error" } th.num { "ms" } th { "started" } } }
                tbody {
                    @for a in attempts {
                        tr {
                            td.num { (a.number) }
                            td { (a.status) }
                            td { (a.agent) }
                            td { @if let Some(code) = &a.error_code { code { (code) } " " } (cut(a.error.as_deref().unwrap_or(""))) }
                            td.num { (a.duration_ms.map_or(String::new(), |ms| ms.to_string())) }
                            td { (ts(a.started_at)) }
                        }
                    }
                }
            }
        }
    }
}

pub(super) async fn cancel(
    State(state): State<AdminState>,
    Path(id): Path<String>,
    OperatorForm { signed, form }: OperatorForm,
) -> Response {
    let Ok(id) = id.parse::<Uuid>() else { return error_page(&signed, api::ApiError::bad_request("not an item id")) };
    let reason = form.get("reason").map(String::as_str);
    let result = actions::cancel(&state.ops, db::items::Target::Item(id), &signed.session.identity.name, reason)
        .await
        .map(|done| {
            let also = match done.len() {
                1 => String::new(),
                n => format!(" {} item(s) that waited on it were cancelled with it (DEPENDENCY_FAILED).", n - 1),
            };
            match done.first().and_then(|c| c.interrupted_attempt) {
                Some(n) => format!("Cancelled item {}: its running attempt {n} was interrupted.{also}", short(id)),
                None => format!("Cancelled item {}.{also}", short(id)),
            }
        });
    done(&state, &signed, said(result, None), &back(&form, &format!("/items/{id}")))
}
