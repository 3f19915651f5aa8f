//! `/approvals`: the items held for a human, with approve and reject.

use super::*;

pub(super) async fn approvals(State(state): State<AdminState>, Viewer(signed): Viewer) -> Response {
    let rows = match db::approvals::inbox(&state.ops, None, 100).await {
        Ok(rows) => rows,
        Err(e) => return error_page(&signed, e.into()),
    };
    let operate = signed.session.identity.may_operate();
    let body = html! {
        h1 { "Approvals" }
        @if rows.is_empty() { p { "Nothing is waiting for approval." } }
        @for h in &rows {
            article.held id=(format!("held-{}", h.id)) {
                h2 {
                    a href=(format!("/items/{}", h.id)) { code { (short(h.id)) } } " "
                    span.type { (h.item_type) } " · attempt " (h.attempt)
                    @if let Some(since) = h.held_since { " · held since " (ts(since)) " (" (ago(since)) ")" }
                }
                @if let Some(reason) = &h.policy_reason { p { "Policy: " (reason) } }
                @if !h.evals.is_empty() {
                    ul.evals { @for e in &h.evals {
                        li { (e.evaluation_type) " " (format!("{:.2}", e.score)) ": "
                             @if e.passed { "passed" } @else { span.bad { "failed" } }
                             " " code { (cut(&e.metrics.to_string())) } }
                    } }
                }
                h3 { "Output" }
                pre { (h.output.as_ref().map(json_text).unwrap_or_default()) }
                @if operate {
                    div.actions {
                        form.inline method="post" action=(format!("/approvals/{}/approve", h.id)) {
                            (hidden(&signed.session, "/approvals"))
                            input type="text" name="reason" placeholder="reason (optional)";
                            button type="submit" { "Approve" }
                        }
                        form.inline method="post" action=(format!("/approvals/{}/reject", h.id)) {
                            (hidden(&signed.session, "/approvals"))
                            input type="text" name="reason" placeholder="reason (optional)";
                            button.danger type="submit" { "Reject" }
                        }
                        form.inline method="post" action=(format!("/approvals/{}/revise", h.id)) {
                            (hidden(&signed.session, "/approvals"))
                            input type="text" name="reason" required placeholder="what to change (sent to the agent)";
                            button type="submit" { "Reject and revise" }
                        }
                    }
                }
            }
        }
    };
    page(StatusCode::OK, layout("Approvals", Some(&signed.session), signed.flash.clone(), body))
}

pub(super) async fn decide(
    State(state): State<AdminState>,
    Path((id, decision)): Path<(String, String)>,
    OperatorForm { signed, form }: OperatorForm,
) -> Response {
    let (decision, revise) = match decision.as_str() {
        "approve" => (Decision::Approved, false),
        "reject" => (Decision::Rejected, false),
        "revise" => (Decision::Rejected, true),
        _ => return error_page(&signed, api::ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such action")),
    };
    let Ok(id) = id.parse::<Uuid>() else { return error_page(&signed, api::ApiError::bad_request("not an item id")) };
    let reason = form.get("reason").map(String::as_str);
    let result = actions::decide_held(
        &state.ops,
        &state.settings,
        Some(&state.metrics),
        id,
        decision,
        &signed.session.identity.name,
        reason,
        revise,
    )
    .await
    .map(|next| {
        let verb = match (decision, revise) {
            (Decision::Approved, _) => "Approved",
            (_, true) => "Sent back for revision:",
            _ => "Rejected",
        };
        format!("{verb} item {}: it is {}.", short(id), next.item_status().as_str())
    });
    done(&state, &signed, said(result, None), &back(&form, "/approvals"))
}
