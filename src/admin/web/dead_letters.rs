//! `/dead-letters`: the open letters grouped by error code; one letter with replay (as is or
//! with edited content), discard and the bulk actions per code.

use super::items::attempts_table;
use super::*;

pub(super) async fn dead_letters(
    State(state): State<AdminState>,
    Viewer(signed): Viewer,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    // `error_code` is the API's name for it.
    let code = query.get("code").or(query.get("error_code")).map(|c| c.trim().to_owned()).filter(|c| !c.is_empty());
    let groups = match db::dead_letters::open_by_code(&state.ops).await {
        Ok(groups) => groups,
        Err(e) => return error_page(&signed, e.into()),
    };
    let here = match &code {
        Some(code) => format!("/dead-letters?code={}", q(code)),
        None => "/dead-letters".to_owned(),
    };
    let shown: Vec<_> = groups.iter().filter(|(c, _, _)| code.is_none() || c.as_deref() == code.as_deref()).collect();
    let per_group = if code.is_some() { LETTERS_PER_CODE } else { LETTERS_PER_GROUP };
    let mut sections = Vec::new();
    for (group_code, count, oldest) in shown {
        let filter =
            db::dead_letters::Filter { open: Some(true), error_code: group_code.clone(), ..Default::default() };
        let rows = match db::dead_letters::list_filtered(&state.ops, &filter, None, per_group).await {
            Ok(rows) => rows,
            Err(e) => return error_page(&signed, e.into()),
        };
        // A letter without an error code is not taken by a code filter: listed, not bulk-acted.
        let rows: Vec<_> = rows.into_iter().filter(|r| r.error_code == *group_code).collect();
        let mut details = Vec::new();
        for row in &rows {
            match db::dead_letters::get(&state.ops, row.id).await {
                Ok(detail) => details.push(detail),
                Err(OpsError::NotFound { .. }) => {}
                Err(e) => return error_page(&signed, e.into()),
            }
        }
        sections.push((group_code.clone(), *count, *oldest, details));
    }
    let operate = signed.session.identity.may_operate();
    let max_content = state.settings.limits.max_content_bytes;
    let body = html! {
        h1 { "Dead letters" @if let Some(code) = &code { " · " code { (code) } } }
        @if groups.is_empty() { p { "No open dead letter." } }
        @if code.is_some() { p { a href="/dead-letters" { "← every error code" } } }
        @if code.is_none() && !groups.is_empty() {
            table.groups {
                thead { tr { th { "error code" } th.num { "open" } th { "oldest" } } }
                tbody { @for (c, n, oldest) in &groups {
                    tr {
                        td { @match c { Some(c) => a href=(format!("/dead-letters?code={}", q(c))) { code { (c) } }, None => "(none)" } }
                        td.num { (n) }
                        td { (ts(*oldest)) br; small { (ago(*oldest)) } }
                    }
                } }
            }
        }
        @if operate && sections.iter().any(|(_, _, _, d)| !d.is_empty()) {
            // Each letter's checkbox belongs to this form (its `form` attribute).
            form.bulk #picked method="post" action="/dead-letters/picked" {
                (hidden(&signed.session, &here))
                "The letters ticked: "
                button type="submit" name="action" value="replay" { "Replay" }
                " "
                input type="text" name="reason" placeholder="reason (to discard)";
                button.danger type="submit" name="action" value="discard" { "Discard" }
            }
        }
        @for (group_code, count, _, details) in &sections {
            section.group id=(format!("code-{}", group_code.as_deref().unwrap_or("none"))) {
                h2 { code { (group_code.as_deref().unwrap_or("(no code)")) } " · " (count) " open" }
                @if let (Some(c), true) = (group_code, operate) {
                    div.bulk {
                        form.inline method="post" action="/dead-letters/bulk" {
                            (hidden(&signed.session, &here))
                            input type="hidden" name="action" value="replay";
                            input type="hidden" name="error_code" value=(c);
                            input type="hidden" name="limit" value=(count);
                            button type="submit" { "Replay all " (count) " matching" }
                        }
                        form.inline method="post" action="/dead-letters/bulk" {
                            (hidden(&signed.session, &here))
                            input type="hidden" name="action" value="discard";
                            input type="hidden" name="error_code" value=(c);
                            input type="hidden" name="limit" value=(count);
                            input type="text" name="reason" placeholder="reason (required)" required;
                            button.danger type="submit" { "Discard all " (count) " matching" }
                        }
                    }
                }
                @for d in details { (letter(d, &signed.session, operate, max_content, &here, false, None)) }
                @if (details.len() as i64) < *count {
                    @if let Some(c) = group_code {
                        p { a href=(format!("/dead-letters?code={}", q(c))) { "Showing " (details.len()) " of " (count) ": open this code's page" } }
                    }
                }
            }
        }
    };
    page(StatusCode::OK, layout("Dead letters", Some(&signed.session), signed.flash.clone(), body))
}

/// One dead letter: the summary, and in a disclosure its item, attempts, payload and the
/// forms.
pub(super) fn letter(
    d: &db::dead_letters::DeadLetterDetail,
    session: &Session,
    operate: bool,
    max_content: usize,
    back: &str,
    open: bool,
    draft: Option<&str>,
) -> Markup {
    let l = &d.dead_letter;
    let item = d.item.as_ref();
    let content = item.and_then(|i| i.content.as_deref());
    // A refused edit comes back as the operator left it.
    let editable = draft.or(content);
    let is_open = l.processed_at.is_none();
    html! {
        details.letter open[open] id=(format!("letter-{}", l.id)) {
            summary {
                @if operate && is_open && !open {
                    input type="checkbox" form="picked" name=(format!("pick-{}", l.id)) value="1"
                        aria-label=(format!("dead letter {}", short(l.id)));
                    " "
                }
                code { (short(l.id)) } " "
                span.type { (l.event_type) } " "
                (l.reason.map(|r| r.as_str()).unwrap_or("?")) " · "
                (l.retry_count) " tries · " (ts(l.created_at)) " (" (ago(l.created_at)) ")"
                @if let Some(resolution) = &l.resolution { " · " strong { (resolution) } }
                span.err { (cut(&l.error)) }
            }
            div.body {
                p {
                    "Dead letter " a href=(format!("/dead-letters/{}", l.id)) { code { (l.id) } }
                    @if let Some(item_id) = l.work_item_id { " · item " a href=(format!("/items/{item_id}")) { code { (item_id) } } }
                    " · agent " (l.source)
                }
                (attempts_table(&d.attempts))
                h3 { "Payload" }
                pre.payload { (json_text(&d.payload)) }
                h3 { "Content" }
                @match content {
                    Some(c) => pre.content { (cut(c)) },
                    None => p { "Not shown (larger than 64 KiB, or the item is gone)." },
                }
                @if operate && is_open {
                    div.actions {
                        form.inline method="post" action=(format!("/dead-letters/{}/replay", l.id)) {
                            (hidden(session, back))
                            button type="submit" { "Replay as is" }
                        }
                        form.inline method="post" action=(format!("/dead-letters/{}/discard", l.id)) {
                            (hidden(session, back))
                            input type="text" name="reason" placeholder="reason (required)" required;
                            button.danger type="submit" { "Discard" }
                        }
                    }
                    @if let Some(c) = editable {
                        form.edit method="post" action=(format!("/dead-letters/{}/replay", l.id)) {
                            (hidden(session, back))
                            input type="hidden" name="edit" value="1";
                            label for=(format!("content-{}", l.id)) { "Edit the content, then replay (at most " (max_content) " bytes)" }
                            textarea id=(format!("content-{}", l.id)) name="content" rows="8" spellcheck="false" { "\n" (c) }
                            button type="submit" { "Replay with this content" }
                        }
                    }
                }
            }
        }
    }
}

pub(super) async fn dead_letter(
    State(state): State<AdminState>,
    Viewer(signed): Viewer,
    Path(id): Path<String>,
) -> Response {
    let Ok(id) = id.parse::<Uuid>() else {
        return error_page(&signed, api::ApiError::bad_request(format!("`{id}` is not a dead letter id")));
    };
    letter_page(&state, &signed, id, None, signed.flash.clone(), StatusCode::OK).await
}

/// One letter's page; `draft` is an edit to show instead of the stored content (a refused
/// replay's), with `flash` saying why it was refused.
async fn letter_page(
    state: &AdminState,
    signed: &Signed,
    id: Uuid,
    draft: Option<&str>,
    flash: Option<Flash>,
    status: StatusCode,
) -> Response {
    let detail = match db::dead_letters::get(&state.ops, id).await {
        Ok(detail) => detail,
        Err(e) => return error_page(signed, e.into()),
    };
    let here = format!("/dead-letters/{id}");
    let operate = signed.session.identity.may_operate();
    let max = state.settings.limits.max_content_bytes;
    let body = html! {
        h1 { "Dead letter " code { (short(id)) } }
        p { a href="/dead-letters" { "← every dead letter" } }
        (letter(&detail, &signed.session, operate, max, &here, true, draft))
    };
    page(status, layout("Dead letter", Some(&signed.session), flash, body))
}

pub(super) async fn replay(
    State(state): State<AdminState>,
    Path(id): Path<String>,
    OperatorForm { signed, form }: OperatorForm,
) -> Response {
    let Ok(id) = id.parse::<Uuid>() else {
        return error_page(&signed, api::ApiError::bad_request("not a dead letter id"));
    };
    // A textarea submits line breaks as CRLF whatever was shown: back to LF.
    let content = form.get("edit").and(form.get("content")).map(|c| c.replace("\r\n", "\n"));
    let result = actions::replay_dead_letter(
        &state.ops,
        &state.catalog,
        &state.settings,
        id,
        content.as_deref(),
        &signed.session.identity.name,
    )
    .await
    .map(|r| {
        format!(
            "Replayed dead letter {}: item {} is queued{}.{}",
            short(id),
            short(r.work_item_id),
            if r.content_replaced { " with the new content" } else { "" },
            r.warning.map(|w| format!(" Warning: {w}")).unwrap_or_default()
        )
    });
    match (result, content) {
        // Refused content: the page again, at once, with the operator's edit in the box.
        (Err(e @ OpsError::Invalid { .. }), Some(draft)) => {
            let flash = said(Err(e), Some("Not replayed"));
            letter_page(&state, &signed, id, Some(&draft), Some(flash), StatusCode::UNPROCESSABLE_ENTITY).await
        }
        (Ok(text), _) => done(&state, &signed, said(Ok(text), None), &back(&form, "/dead-letters")),
        (Err(e), _) => done(&state, &signed, said(Err(e), Some("Not replayed")), &format!("/dead-letters/{id}")),
    }
}

pub(super) async fn discard(
    State(state): State<AdminState>,
    Path(id): Path<String>,
    OperatorForm { signed, form }: OperatorForm,
) -> Response {
    let Ok(id) = id.parse::<Uuid>() else {
        return error_page(&signed, api::ApiError::bad_request("not a dead letter id"));
    };
    let reason = form.get("reason").map(String::as_str);
    let result = actions::discard_dead_letter(&state.ops, id, &signed.session.identity.name, reason)
        .await
        .map(|item| format!("Discarded dead letter {}: item {} stays FAILED.", short(id), short(item)));
    done(&state, &signed, said(result, Some("Not discarded")), &back(&form, "/dead-letters"))
}

/// `POST /dead-letters/picked`: replay (as is) or discard (with the reason) the letters ticked
/// (`pick-ID`), each through the one action path in its own transaction.
pub(super) async fn picked(State(state): State<AdminState>, OperatorForm { signed, form }: OperatorForm) -> Response {
    let replay = match form.get("action").map(String::as_str) {
        Some("replay") => true,
        Some("discard") => false,
        _ => return error_page(&signed, api::ApiError::bad_request("action: replay or discard")),
    };
    let mut ids: Vec<Uuid> =
        form.keys().filter_map(|k| k.strip_prefix("pick-")).filter_map(|id| id.parse().ok()).collect();
    ids.sort_unstable();
    if ids.is_empty() {
        let flash = said(Err(OpsError::Conflict("no dead letter was ticked".into())), None);
        return done(&state, &signed, flash, &back(&form, "/dead-letters"));
    }
    let actor = signed.session.identity.name.clone();
    let reason = form.get("reason").map(String::as_str).filter(|r| !r.trim().is_empty());
    let (mut acted, mut refused) = (0, Vec::new());
    for id in &ids {
        let result = if replay {
            actions::replay_dead_letter(&state.ops, &state.catalog, &state.settings, *id, None, &actor)
                .await
                .map(|_| ())
        } else {
            actions::discard_dead_letter(&state.ops, *id, &actor, reason).await.map(|_| ())
        };
        match result {
            Ok(()) => acted += 1,
            Err(e) => refused.push(format!("{}: {}", short(*id), describe(&e))),
        }
    }
    let verb = if replay { "Replayed" } else { "Discarded" };
    let text = if refused.is_empty() {
        format!("{verb} {acted} dead letter(s).")
    } else {
        format!("{verb} {acted} of {} dead letter(s); not: {}", ids.len(), refused.join("; "))
    };
    done(&state, &signed, Flash { ok: refused.is_empty(), text }, &back(&form, "/dead-letters"))
}

pub(super) async fn bulk(State(state): State<AdminState>, OperatorForm { signed, form }: OperatorForm) -> Response {
    let get = |k: &str| form.get(k).map(String::as_str);
    let filter = match api::letter_filter(Some("open"), get("error_code"), get("type"), None, None) {
        Ok(filter) => filter,
        Err(e) => return error_page(&signed, e),
    };
    if filter.error_code.is_none() {
        return error_page(&signed, api::ApiError::bad_request("a bulk action from this page names an error code"));
    }
    let limit = get("limit").and_then(|l| l.parse::<i64>().ok()).filter(|l| *l >= 1);
    let action = match get("action") {
        Some("replay") => actions::Bulk::Replay,
        Some("discard") => actions::Bulk::Discard { reason: get("reason").unwrap_or("").trim().to_owned() },
        _ => return error_page(&signed, api::ApiError::bad_request("action must be replay or discard")),
    };
    let result =
        actions::bulk_dead_letters(&state.ops, &filter, limit, &action, &signed.session.identity.name).await.map(|r| {
            let verb = if r.action == "replay" { "Replayed" } else { "Discarded" };
            let mut text = format!("{verb} {} of {} matching dead letter(s)", r.done.len(), r.matched);
            if !r.failed.is_empty() {
                text.push_str(&format!("; {} could not be: {}", r.failed.len(), r.failed[0].error));
            }
            text.push_str(&format!("; {} still open.", r.left));
            text
        });
    done(&state, &signed, said(result, None), &back(&form, "/dead-letters"))
}
