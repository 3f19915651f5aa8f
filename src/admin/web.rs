//! The web page at `/`: server-rendered HTML, no JavaScript. An overview of the queue; the
//! open dead letters grouped by error code, each with its attempts, errors, payload and
//! content, an edit-and-replay form, discard, and "replay / discard all N matching"; the
//! approvals inbox; the escalations with acknowledge and resolve; one item with why it waits,
//! and cancel.
//!
//! HTML is written with `maud`: every `(value)` spliced into a template is escaped at
//! compile time (raw markup needs an explicit `PreEscaped`, used nowhere here), so a payload
//! holding `<script>` is shown as text.
//!
//! Sign-in takes a token of `[[admin.tokens]]` and starts a session (see [`super::auth`]):
//! an `HttpOnly; SameSite=Strict` cookie, only its hash kept here. Every action is a POST
//! answered by a redirect (303) to a page that shows what it did. A POST is refused (403)
//! unless the browser says it comes from this origin (`Sec-Fetch-Site: same-origin`, or, from
//! a browser that does not send it, an `Origin` naming the `Host`), and unless it carries the
//! session's form token. Pages are sent with a Content-Security-Policy that allows no script
//! at all, only this server's stylesheet, and forms posting only here.

use super::AdminState;
use super::api::{self, Overview};
use super::auth::{self, COOKIE, Flash, Session};
use crate::actions;
use crate::config::TokenScope;
use crate::db::{self, OpsError};
use crate::model::{Decision, ItemStatus};
use axum::extract::{Form, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use maud::{DOCTYPE, Markup, html};
use serde_json::Value;
use std::collections::HashMap;
use uuid::Uuid;

/// The Content-Security-Policy of every page: no script, no frame, styles and images from
/// here only, forms posting here only.
pub const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
                       frame-ancestors 'none'; base-uri 'none'";

/// Letters shown per error code on the grouped page (the group's own page shows more); each
/// is read with its attempts, evals and approvals.
const LETTERS_PER_GROUP: i64 = 5;
/// Letters shown on one error code's page.
const LETTERS_PER_CODE: i64 = 50;
/// Longest output or payload shown inline, in characters.
const SHOWN_CHARS: usize = 4096;

const STYLE: &str = include_str!("style.css");

pub fn routes() -> axum::Router<AdminState> {
    axum::Router::new()
        .route("/", get(home))
        .route("/login", post(login))
        .route("/logout", post(logout))
        .route("/items", get(items))
        .route("/items/{id}", get(item))
        .route("/items/{id}/cancel", post(cancel))
        .route("/dead-letters", get(dead_letters))
        .route("/dead-letters/bulk", post(bulk))
        .route("/dead-letters/{id}", get(dead_letter))
        .route("/dead-letters/{id}/replay", post(replay))
        .route("/dead-letters/{id}/discard", post(discard))
        .route("/approvals", get(approvals))
        .route("/approvals/{id}/{decision}", post(decide))
        .route("/escalations", get(escalations))
        .route("/schedules", get(schedules))
        .route("/escalations/{id}/{action}", post(escalation_action))
        .layer(axum::middleware::from_fn(security_headers))
        .route("/assets/style.css", get(style))
}

async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

async fn style() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        STYLE,
    )
}

/// A page as an HTML response.
fn page(status: StatusCode, markup: Markup) -> Response {
    (status, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], markup.into_string()).into_response()
}

/// The session cookie's value in the request, if any.
fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_owned())
        .filter(|v| !v.is_empty())
}

/// A signed-in request: the session and its cookie value.
struct Signed {
    session: Session,
    cookie: String,
    flash: Option<Flash>,
}

fn signed_in(state: &AdminState, headers: &HeaderMap) -> Option<Signed> {
    let cookie = cookie(headers)?;
    let session = state.sessions.get(&cookie)?;
    let flash = state.sessions.take_flash(&cookie);
    Some(Signed { session, cookie, flash })
}

/// Whether a POST comes from a page of this server: the browser's own `Sec-Fetch-Site`
/// when it sends one, else its `Origin` against the `Host` it was sent to. A request with
/// neither is refused.
pub fn same_origin(headers: &HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site") {
        return site.as_bytes() == b"same-origin";
    }
    let (Some(origin), Some(host)) = (headers.get(header::ORIGIN), headers.get(header::HOST)) else {
        return false;
    };
    let (Ok(origin), Ok(host)) = (origin.to_str(), host.to_str()) else { return false };
    // The scheme this server is reached by: plain HTTP, or HTTPS behind a proxy that says so.
    let scheme = match headers.get("x-forwarded-proto") {
        Some(proto) if proto.as_bytes().eq_ignore_ascii_case(b"https") => "https",
        _ => "http",
    };
    match origin.split_once("://") {
        Some((origin_scheme, authority)) => {
            origin_scheme.eq_ignore_ascii_case(scheme) && authority.eq_ignore_ascii_case(host)
        }
        None => false,
    }
}

fn refused(status: StatusCode, message: &str) -> Response {
    page(
        status,
        layout(
            "Refused",
            None,
            None,
            html! {
                h1 { "Refused" }
                p.flash.error { (message) }
                p { a href="/" { "Back to the overview" } }
            },
        ),
    )
}

/// The checks of every POST but the sign-in: same origin, signed in, the session's form
/// token, and (for actions) the operate scope.
/// A POST refused before it did anything.
struct Refusal(StatusCode, String);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        refused(self.0, &self.1)
    }
}

fn guard(state: &AdminState, headers: &HeaderMap, form: &HashMap<String, String>) -> Result<Signed, Refusal> {
    if !same_origin(headers) {
        return Err(Refusal(StatusCode::FORBIDDEN, "cross-site request refused".to_owned()));
    }
    let Some(signed) = signed_in(state, headers) else {
        return Err(Refusal(StatusCode::UNAUTHORIZED, "your session has ended: sign in again".to_owned()));
    };
    let given = form.get("csrf").map(String::as_str).unwrap_or("");
    if !auth::same_form_token(given, &signed.session.csrf) {
        return Err(Refusal(
            StatusCode::FORBIDDEN,
            "this form is stale or not from this session: reload the page".to_owned(),
        ));
    }
    if let Some(flash) = &signed.flash {
        // Not shown by this request: keep it for the next page.
        state.sessions.set_flash(&signed.cookie, flash.clone());
    }
    Ok(signed)
}

fn guard_operate(state: &AdminState, headers: &HeaderMap, form: &HashMap<String, String>) -> Result<Signed, Refusal> {
    let signed = guard(state, headers, form)?;
    if signed.session.identity.scope != TokenScope::Operate {
        return Err(Refusal(
            StatusCode::FORBIDDEN,
            format!("token `{}` has the read scope; this action needs operate", signed.session.identity.name),
        ));
    }
    Ok(signed)
}

/// Where to go after an action: the form's `back` when it is a path of this server. Parsed
/// as a browser would parse it (tabs and line breaks dropped, `\` read as `/`) against an
/// origin of our own, and kept only when it stays on that origin; what goes into `Location` is
/// the parser's serialization (percent-encoded), never the raw text.
fn back(form: &HashMap<String, String>, default: &str) -> String {
    let Ok(base) = url::Url::parse("http://orderly.invalid/") else { return default.to_owned() };
    form.get("back")
        .filter(|path| path.starts_with('/'))
        .and_then(|path| base.join(path).ok())
        .filter(|url| url.origin() == base.origin())
        .map(|url| match url.query() {
            Some(query) => format!("{}?{query}", url.path()),
            None => url.path().to_owned(),
        })
        .unwrap_or_else(|| default.to_owned())
}

/// Records the outcome for the next page and redirects there (POST, then redirect).
fn done(state: &AdminState, signed: &Signed, result: Result<String, String>, to: &str) -> Response {
    let flash = match result {
        Ok(text) => Flash { ok: true, text },
        Err(text) => Flash { ok: false, text },
    };
    state.sessions.set_flash(&signed.cookie, flash);
    Redirect::to(to).into_response()
}

fn describe(e: &OpsError) -> String {
    match e {
        OpsError::Db(e) => format!("database error: {}", db::describe_error(e)),
        other => other.to_string(),
    }
}

fn error_page(signed: &Signed, e: api::ApiError) -> Response {
    page(
        e.status,
        layout(
            "Error",
            Some(&signed.session),
            None,
            html! {
                h1 { "Error" }
                p.flash.error { (e.message) }
                p { a href="/" { "Back to the overview" } }
            },
        ),
    )
}

fn ts(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// A time as JSON gives it (RFC 3339), shown as [`ts`] does.
fn ts_text(text: &str) -> String {
    DateTime::parse_from_rfc3339(text).map(|t| ts(t.with_timezone(&Utc))).unwrap_or_else(|_| text.to_owned())
}

fn age(seconds: f64) -> String {
    humantime::format_duration(std::time::Duration::from_secs(seconds.max(0.0) as u64)).to_string()
}

/// A query-string value, percent-encoded.
fn q(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

/// An id as the page shows it in tables, links and messages: its last 8 hex digits, which
/// are random in every id orderly makes (the first ones of a time-ordered id are its
/// millisecond timestamp, the same for everything made in the same minute). The full id is
/// on the item's own page and in every link.
fn short(id: Uuid) -> String {
    let hex = id.simple().to_string();
    format!("…{}", &hex[hex.len() - 8..])
}

/// JSON as indented text, cut at [`SHOWN_CHARS`].
fn json_text(value: &Value) -> String {
    cut(&serde_json::to_string_pretty(value).unwrap_or_default())
}

fn cut(text: &str) -> String {
    crate::model::printable(text, SHOWN_CHARS)
}

fn s<'a>(value: &'a Value, key: &str) -> &'a str {
    value[key].as_str().unwrap_or("")
}

fn layout(title: &str, session: Option<&Session>, flash: Option<Flash>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · orderly" }
                link rel="stylesheet" href="/assets/style.css";
            }
            body {
                header {
                    a.brand href="/" { "orderly" }
                    @if let Some(session) = session {
                        nav {
                            a href="/" { "Overview" }
                            a href="/dead-letters" { "Dead letters" }
                            a href="/approvals" { "Approvals" }
                            a href="/escalations" { "Escalations" }
                            a href="/schedules" { "Schedules" }
                            a href="/items" { "Items" }
                        }
                        form.signout method="post" action="/logout" {
                            span.who { (session.identity.name) " · " (session.identity.scope.as_str()) }
                            input type="hidden" name="csrf" value=(session.csrf);
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                @if let Some(flash) = flash {
                    p class=(if flash.ok { "flash ok" } else { "flash error" }) role="status" { (flash.text) }
                }
                main { (body) }
            }
        }
    }
}

fn sign_in_page(state: &AdminState, message: Option<&str>) -> Markup {
    layout(
        "Sign in",
        None,
        None,
        html! {
            h1 { "Sign in" }
            @if let Some(message) = message { p.flash.error role="alert" { (message) } }
            @if state.tokens.is_empty() {
                p.flash.error {
                    "No token is configured: add an [[admin.tokens]] entry (orderly admin-token NAME prints one) and restart."
                }
            }
            form.signin method="post" action="/login" {
                label for="token" { "Token" }
                input #token type="password" name="token" autocomplete="off" required autofocus;
                button type="submit" { "Sign in" }
            }
            p.hint { "A token of [[admin.tokens]] (read: look; operate: also act). The session lasts 8 hours." }
        },
    )
}

async fn home(State(state): State<AdminState>, headers: HeaderMap) -> Response {
    let Some(signed) = signed_in(&state, &headers) else {
        return page(StatusCode::OK, sign_in_page(&state, None));
    };
    match api::overview(&state.ops).await {
        Ok(overview) => page(
            StatusCode::OK,
            layout("Overview", Some(&signed.session), signed.flash.clone(), overview_body(&state, &overview)),
        ),
        Err(e) => error_page(&signed, e.into()),
    }
}

fn overview_body(state: &AdminState, o: &Overview) -> Markup {
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
        p { (o.scheduled) " queued item(s) wait for a future run time (retries, delayed items)." }
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
    }
}

async fn login(
    State(state): State<AdminState>,
    extensions: axum::http::Extensions,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    if !same_origin(&headers) {
        return refused(StatusCode::FORBIDDEN, "cross-site request refused");
    }
    let client = api::client_ip(&extensions);
    if let Some(wait) = client.and_then(|ip| state.failed_auth.blocked(ip)) {
        let mut response = page(
            StatusCode::TOO_MANY_REQUESTS,
            sign_in_page(&state, Some("Too many failed sign-ins from this address; wait a minute.")),
        );
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(wait.as_secs().max(1)));
        return response;
    }
    let token = form.get("token").map(String::as_str).unwrap_or("");
    let Some(identity) = state.tokens.verify(token) else {
        let failures = client.map(|ip| state.failed_auth.failed(ip));
        tracing::warn!(client = ?client, failures = ?failures, "admin web sign-in refused: unknown token");
        return page(StatusCode::UNAUTHORIZED, sign_in_page(&state, Some("That token is not valid.")));
    };
    tracing::info!(token = %identity.name, client = ?client, "admin web sign-in");
    let value = state.sessions.create(identity);
    let secure = headers.get("x-forwarded-proto").is_some_and(|p| p.as_bytes().eq_ignore_ascii_case(b"https"));
    let cookie = format!(
        "{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        auth::SESSION_TTL.as_secs(),
        if secure { "; Secure" } else { "" }
    );
    let mut response = Redirect::to("/").into_response();
    response.headers_mut().insert(header::SET_COOKIE, HeaderValue::from_str(&cookie).expect("cookie is ASCII"));
    response
}

async fn logout(
    State(state): State<AdminState>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let signed = match guard(&state, &headers, &form) {
        Ok(signed) => signed,
        Err(refusal) => return refusal.into_response(),
    };
    state.sessions.remove(&signed.cookie);
    let mut response = Redirect::to("/").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"))
            .expect("cookie is ASCII"),
    );
    response
}

/// A GET page that needs a session: redirects to the sign-in otherwise.
macro_rules! signed_or_sign_in {
    ($state:expr, $headers:expr) => {
        match signed_in(&$state, &$headers) {
            Some(signed) => signed,
            None => return Redirect::to("/").into_response(),
        }
    };
}

/// Hidden fields every action form carries: the form token and where to come back to.
fn hidden(session: &Session, back: &str) -> Markup {
    html! {
        input type="hidden" name="csrf" value=(session.csrf);
        input type="hidden" name="back" value=(back);
    }
}

async fn items(
    State(state): State<AdminState>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let signed = signed_or_sign_in!(state, headers);
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
                            td { (ts(r.created_at)) }
                        }
                    }
                }
            }
            @if let Some(next) = next {
                p { a href=(format!("/items?state={}&type={}&cursor={next}", q(&state_value), q(&type_value))) { "Older items →" } }
            }
        }
    };
    page(StatusCode::OK, layout("Items", Some(&signed.session), signed.flash.clone(), body))
}

async fn item(State(state): State<AdminState>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let signed = signed_or_sign_in!(state, headers);
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
            dt { "type" } dd { (i.item_type) " · priority " (i.priority) }
            dt { "order" } dd { code { (i.work_order_id) } " (" (i.order_status) ") · workflow " (i.workflow_id) }
            dt { "route" } dd {
                @if let Some(agent) = view.route["agent"].as_str() { "agent " (agent) " · content " (s(&view.route, "content")) }
                @else { span.bad { (s(&view.route, "error")) } }
            }
            dt { "attempts" } dd { (i.attempt) " (" (i.attempt - i.attempt_base) " counted in the budget) · rescues " (i.rescues) }
            dt { "created" } dd { (ts(i.created_at)) }
            @if let Some(at) = i.processed_at { dt { "finished" } dd { (ts(at)) } }
            @if let Some(code) = &i.last_error_code { dt { "last error" } dd { (code) ": " (i.last_error.as_deref().unwrap_or("")) } }
        }
        @if live && operate {
            form.inline method="post" action=(format!("/items/{id}/cancel")) {
                (hidden(&signed.session, &here))
                input type="text" name="reason" placeholder="reason (optional)";
                button.danger type="submit" { "Cancel item" }
            }
        }
        h2 { "Content (" (i.content_bytes) " bytes)" }
        @match &i.content { Some(c) => pre { (cut(c)) }, None => p { "Too large to show." } }
        @if let Some(result) = &i.result { h2 { "Result" } pre { (json_text(result)) } }
        (attempts_table(&view.detail.attempts))
        @if !view.detail.eval_results.is_empty() {
            h2 { "Eval results" }
            ul { @for e in &view.detail.eval_results { li { (s(e, "evaluation_type")) " passed=" (e["passed"].to_string()) " score=" (e["score"].to_string()) " " code { (cut(&e["metrics"].to_string())) } } } }
        }
        @if !view.detail.approvals.is_empty() {
            h2 { "Approvals" }
            ul { @for a in &view.detail.approvals { li { (s(a, "decision")) " by " (s(a, "approver_id")) " (" (s(a, "source")) ") " (s(a, "reason")) } } }
        }
        @if !view.detail.escalations.is_empty() {
            h2 { "Escalations" }
            ul { @for e in &view.detail.escalations { li { (s(e, "rule")) " level " (e["level"].to_string()) ": " (s(e, "status")) } } }
        }
        @if !view.detail.dead_letters.is_empty() {
            h2 { "Dead letters" }
            ul { @for d in &view.detail.dead_letters {
                li { a href=(format!("/dead-letters/{}", s(d, "id"))) { code { (s(d, "id")) } } " " (s(d, "error_code")) " "
                     (if d["open"] == Value::Bool(true) { "open".to_owned() } else { s(d, "resolution").to_owned() }) }
            } }
        }
    };
    page(StatusCode::OK, layout("Item", Some(&signed.session), signed.flash.clone(), body))
}

fn attempts_table(attempts: &[Value]) -> Markup {
    html! {
        h2 { "Attempts" }
        @if attempts.is_empty() { p { "None recorded yet." } } @else {
            table.attempts {
                thead { tr { th.num { "#" } th { "status" } th { "agent" } th { "error" } th.num { "ms" } th { "started" } } }
                tbody {
                    @for a in attempts {
                        tr {
                            td.num { (a["number"].to_string()) }
                            td { (s(a, "status")) }
                            td { (s(a, "agent")) }
                            td { @if !s(a, "error_code").is_empty() { code { (s(a, "error_code")) } " " } (cut(s(a, "error"))) }
                            td.num { (a["duration_ms"].to_string()) }
                            td { (ts_text(s(a, "started_at"))) }
                        }
                    }
                }
            }
        }
    }
}

async fn cancel(
    State(state): State<AdminState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let signed = match guard_operate(&state, &headers, &form) {
        Ok(signed) => signed,
        Err(refusal) => return refusal.into_response(),
    };
    let Ok(id) = id.parse::<Uuid>() else { return error_page(&signed, api::ApiError::bad_request("not an item id")) };
    let reason = match actions::reason(form.get("reason").map(String::as_str)) {
        Ok(reason) => reason,
        Err(e) => return error_page(&signed, e.into()),
    };
    let result = db::items::cancel(&state.ops, db::items::Target::Item(id), &signed.session.identity.name, reason)
        .await
        .map(|done| match done.first().and_then(|c| c.interrupted_attempt) {
            Some(n) => format!("Cancelled item {}: its running attempt {n} was interrupted.", short(id)),
            None => format!("Cancelled item {}.", short(id)),
        })
        .map_err(|e| describe(&e));
    done(&state, &signed, result, &back(&form, &format!("/items/{id}")))
}

async fn dead_letters(
    State(state): State<AdminState>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let signed = signed_or_sign_in!(state, headers);
    let code = query.get("code").map(|c| c.trim().to_owned()).filter(|c| !c.is_empty());
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
                        td { (ts(*oldest)) }
                    }
                } }
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
                @for d in details { (letter(d, &signed.session, operate, max_content, &here, false)) }
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
fn letter(
    d: &db::dead_letters::DeadLetterDetail,
    session: &Session,
    operate: bool,
    max_content: usize,
    back: &str,
    open: bool,
) -> Markup {
    let l = &d.dead_letter;
    let item = d.item.as_ref();
    let content = item.and_then(|i| i["content"].as_str());
    let is_open = l.processed_at.is_none();
    html! {
        details.letter open[open] id=(format!("letter-{}", l.id)) {
            summary {
                code { (short(l.id)) } " "
                span.type { (l.event_type) } " "
                (l.reason.map(|r| r.as_str()).unwrap_or("?")) " · "
                (l.retry_count) " tries · " (ts(l.created_at))
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
                    @if let Some(c) = content {
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

async fn dead_letter(State(state): State<AdminState>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let signed = signed_or_sign_in!(state, headers);
    let Ok(id) = id.parse::<Uuid>() else {
        return error_page(&signed, api::ApiError::bad_request(format!("`{id}` is not a dead letter id")));
    };
    let detail = match db::dead_letters::get(&state.ops, id).await {
        Ok(detail) => detail,
        Err(e) => return error_page(&signed, e.into()),
    };
    let here = format!("/dead-letters/{id}");
    let body = html! {
        h1 { "Dead letter " code { (short(id)) } }
        p { a href="/dead-letters" { "← every dead letter" } }
        (letter(&detail, &signed.session, signed.session.identity.may_operate(), state.settings.limits.max_content_bytes, &here, true))
    };
    page(StatusCode::OK, layout("Dead letter", Some(&signed.session), signed.flash.clone(), body))
}

async fn replay(
    State(state): State<AdminState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let signed = match guard_operate(&state, &headers, &form) {
        Ok(signed) => signed,
        Err(refusal) => return refusal.into_response(),
    };
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
    })
    .map_err(|e| format!("Not replayed: {}", describe(&e)));
    let to = match &result {
        Ok(_) => back(&form, "/dead-letters"),
        Err(_) => format!("/dead-letters/{id}"),
    };
    done(&state, &signed, result, &to)
}

async fn discard(
    State(state): State<AdminState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let signed = match guard_operate(&state, &headers, &form) {
        Ok(signed) => signed,
        Err(refusal) => return refusal.into_response(),
    };
    let Ok(id) = id.parse::<Uuid>() else {
        return error_page(&signed, api::ApiError::bad_request("not a dead letter id"));
    };
    let reason = match actions::reason(form.get("reason").map(String::as_str)) {
        Ok(reason) => reason,
        Err(e) => return error_page(&signed, e.into()),
    };
    let result = match reason {
        None => Err(describe(&actions::reason_required())),
        Some(reason) => db::dead_letters::discard(&state.ops, id, &signed.session.identity.name, Some(reason))
            .await
            .map(|item| format!("Discarded dead letter {}: item {} stays FAILED.", short(id), short(item)))
            .map_err(|e| describe(&e)),
    };
    let result = result.map_err(|e| format!("Not discarded: {e}"));
    done(&state, &signed, result, &back(&form, "/dead-letters"))
}

async fn bulk(
    State(state): State<AdminState>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let signed = match guard_operate(&state, &headers, &form) {
        Ok(signed) => signed,
        Err(refusal) => return refusal.into_response(),
    };
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
    let result = actions::bulk_dead_letters(&state.ops, &filter, limit, &action, &signed.session.identity.name)
        .await
        .map(|r| {
            let verb = if r.action == "replay" { "Replayed" } else { "Discarded" };
            let mut text = format!("{verb} {} of {} matching dead letter(s)", r.done.len(), r.matched);
            if !r.failed.is_empty() {
                text.push_str(&format!("; {} could not be: {}", r.failed.len(), r.failed[0].error));
            }
            text.push_str(&format!("; {} still open.", r.left));
            text
        })
        .map_err(|e| describe(&e));
    done(&state, &signed, result, &back(&form, "/dead-letters"))
}

async fn approvals(State(state): State<AdminState>, headers: HeaderMap) -> Response {
    let signed = signed_or_sign_in!(state, headers);
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
                    @if let Some(since) = h.held_since { " · held since " (ts(since)) }
                }
                @if let Some(reason) = &h.policy_reason { p { "Policy: " (reason) } }
                @if let Some(evals) = h.evals.as_array() {
                    ul.evals { @for e in evals {
                        li { (s(e, "evaluation_type")) ": " @if e["passed"] == Value::Bool(true) { "passed" } @else { span.bad { "failed" } }
                             " " code { (cut(&e["metrics"].to_string())) } }
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
                    }
                }
            }
        }
    };
    page(StatusCode::OK, layout("Approvals", Some(&signed.session), signed.flash.clone(), body))
}

async fn decide(
    State(state): State<AdminState>,
    headers: HeaderMap,
    Path((id, decision)): Path<(String, String)>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let signed = match guard_operate(&state, &headers, &form) {
        Ok(signed) => signed,
        Err(refusal) => return refusal.into_response(),
    };
    let decision = match decision.as_str() {
        "approve" => Decision::Approved,
        "reject" => Decision::Rejected,
        _ => return error_page(&signed, api::ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such action")),
    };
    let Ok(id) = id.parse::<Uuid>() else { return error_page(&signed, api::ApiError::bad_request("not an item id")) };
    let reason = match actions::reason(form.get("reason").map(String::as_str)) {
        Ok(reason) => reason,
        Err(e) => return error_page(&signed, e.into()),
    };
    let result = actions::decide_held(
        &state.ops,
        &state.settings,
        Some(&state.metrics),
        id,
        decision,
        &signed.session.identity.name,
        reason,
    )
    .await
    .map(|next| {
        let verb = if decision == Decision::Approved { "Approved" } else { "Rejected" };
        format!("{verb} item {}: it is {}.", short(id), next.item_status().as_str())
    })
    .map_err(|e| describe(&e));
    done(&state, &signed, result, &back(&form, "/approvals"))
}

async fn schedules(State(state): State<AdminState>, headers: HeaderMap) -> Response {
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

async fn escalations(State(state): State<AdminState>, headers: HeaderMap) -> Response {
    let signed = signed_or_sign_in!(state, headers);
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

async fn escalation_action(
    State(state): State<AdminState>,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let signed = match guard_operate(&state, &headers, &form) {
        Ok(signed) => signed,
        Err(refusal) => return refusal.into_response(),
    };
    let (action, verb) = match action.as_str() {
        "ack" => (db::sla::Action::Acknowledge, "Acknowledged"),
        "resolve" => (db::sla::Action::Resolve, "Resolved"),
        _ => return error_page(&signed, api::ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such action")),
    };
    let Ok(id) = id.parse::<Uuid>() else {
        return error_page(&signed, api::ApiError::bad_request("not an escalation id"));
    };
    let reason = match actions::reason(form.get("reason").map(String::as_str)) {
        Ok(reason) => reason,
        Err(e) => return error_page(&signed, e.into()),
    };
    let result = db::sla::act(&state.ops, id, action, &signed.session.identity.name, reason)
        .await
        .map(|()| format!("{verb} escalation {}.", short(id)))
        .map_err(|e| describe(&e));
    done(&state, &signed, result, &back(&form, "/escalations"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(*k, v.parse().unwrap());
        }
        map
    }

    #[test]
    fn posts_must_come_from_this_origin() {
        assert!(same_origin(&headers(&[("sec-fetch-site", "same-origin")])));
        assert!(!same_origin(&headers(&[("sec-fetch-site", "cross-site"), ("origin", "http://h:1"), ("host", "h:1")])));
        assert!(!same_origin(&headers(&[("sec-fetch-site", "same-site")])));
        assert!(!same_origin(&headers(&[("sec-fetch-site", "none")])));
        assert!(same_origin(&headers(&[("origin", "http://127.0.0.1:9187"), ("host", "127.0.0.1:9187")])));
        assert!(!same_origin(&headers(&[("origin", "http://evil.example"), ("host", "127.0.0.1:9187")])));
        assert!(
            !same_origin(&headers(&[("origin", "https://127.0.0.1:9187"), ("host", "127.0.0.1:9187")])),
            "another scheme is another origin"
        );
        assert!(same_origin(&headers(&[
            ("origin", "https://orderly.internal"),
            ("host", "orderly.internal"),
            ("x-forwarded-proto", "https")
        ])));
        assert!(!same_origin(&headers(&[("origin", "null"), ("host", "127.0.0.1:9187")])));
        assert!(!same_origin(&headers(&[("host", "127.0.0.1:9187")])), "neither header: refused");
    }

    #[test]
    fn short_ids_of_ids_made_together_differ() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        assert_ne!(short(a), short(b));
        assert!(a.simple().to_string().ends_with(short(a).trim_start_matches('…')));
    }

    #[test]
    fn redirects_stay_on_this_server() {
        let form = |b: &str| HashMap::from([("back".to_owned(), b.to_owned())]);
        assert_eq!(back(&form("/approvals"), "/"), "/approvals");
        assert_eq!(back(&form("/items?state=FAILED&type=TICKET"), "/"), "/items?state=FAILED&type=TICKET");
        for bad in [
            "//evil.example/",
            "https://evil.example/",
            "/\\evil.example",
            "approvals",
            "/\t/evil.example/",
            "/\n/evil.example/",
            "/\r\n/evil.example",
        ] {
            assert_eq!(back(&form(bad), "/x"), "/x", "{bad:?}");
        }
        // A line break elsewhere cannot reach the Location header: it is dropped.
        assert_eq!(back(&form("/approvals\r\nSet-Cookie: x=1"), "/"), "/approvalsSet-Cookie:%20x=1");
    }

    #[test]
    fn templates_escape_what_they_show() {
        let text = "<script>alert(1)</script>";
        let markup = html! { pre { (text) } };
        assert_eq!(markup.into_string(), "<pre>&lt;script&gt;alert(1)&lt;/script&gt;</pre>");
    }
}
