//! The JSON API under `/api/v1`, for scripts and on-call tooling. Every request carries
//! `Authorization: Bearer TOKEN` (see [`super::auth`]): without a valid token, 401; a `read`
//! token on an action, 403. Errors are JSON `{"error": CODE, "message": "…"}`: 400 for a
//! malformed request, 404, 409 when the thing is no longer in a state the action applies to
//! (another operator got there first), 422 when the input is refused (content the item's
//! step cannot use, a missing reason), 503 when the database cannot be reached.
//!
//! Every action goes through `actions` or `db`, in one transaction, and writes `audit_logs`
//! with the token's name. Listings are paged newest first by `(created_at, id)`
//! (`next_cursor`; `limit` at most [`MAX_PAGE`]), except the approvals inbox, oldest first.
//! Reads and actions use the admin server's own small pool with PostgreSQL's default
//! planner settings (`AdminState::ops`), never the engine's.

use super::AdminState;
use super::auth::Identity;
use crate::actions::{self, Bulk};
use crate::config::TokenScope;
use crate::db::{self, OpsError};
use crate::model::{Decision, ItemStatus, NextState};
use axum::Json;
use axum::body::Bytes;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::collections::HashMap;
use uuid::Uuid;

/// Largest page of a listing.
pub const MAX_PAGE: i64 = 500;
/// The page size when `limit` is not given.
pub const DEFAULT_PAGE: i64 = 50;

pub fn routes() -> axum::Router<AdminState> {
    axum::Router::new()
        .route("/api/v1/status", get(status))
        .route("/api/v1/items", get(items))
        .route("/api/v1/items/{id}", get(item))
        .route("/api/v1/items/{id}/cancel", post(cancel_item))
        .route("/api/v1/orders/{id}/cancel", post(cancel_order))
        .route("/api/v1/dead-letters", get(dead_letters))
        .route("/api/v1/dead-letters/bulk-replay", post(bulk_replay))
        .route("/api/v1/dead-letters/bulk-discard", post(bulk_discard))
        .route("/api/v1/dead-letters/{id}", get(dead_letter))
        .route("/api/v1/dead-letters/{id}/replay", post(replay))
        .route("/api/v1/dead-letters/{id}/discard", post(discard))
        .route("/api/v1/approvals", get(approvals))
        .route("/api/v1/approvals/{id}/approve", post(approve))
        .route("/api/v1/approvals/{id}/reject", post(reject))
        .route("/api/v1/escalations", get(escalations))
        .route("/api/v1/schedules", get(schedules))
        .route("/api/v1/escalations/{id}", get(escalation))
        .route("/api/v1/escalations/{id}/ack", post(acknowledge))
        .route("/api/v1/escalations/{id}/resolve", post(resolve))
        .route("/api/v1", any(unknown))
        .route("/api/v1/{*rest}", any(unknown))
}

/// An error answer: status, a stable code and a message.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Seconds for a `Retry-After` header (429).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: message.into(), retry_after: None }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(json!({ "error": self.code, "message": self.message }))).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"orderly\""));
        }
        if let Some(seconds) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response
    }
}

/// The client's address, when the request came through the admin server (not in tests
/// that call the router directly).
pub fn client_ip(extensions: &axum::http::Extensions) -> Option<std::net::IpAddr> {
    extensions.get::<axum::extract::ConnectInfo<std::net::SocketAddr>>().map(|c| c.0.ip())
}

/// 429 for a client address that failed to authenticate too often lately.
pub fn too_many_failures(wait: std::time::Duration) -> ApiError {
    let seconds = wait.as_secs().max(1);
    ApiError {
        retry_after: Some(seconds),
        ..ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_failures",
            format!("too many failed authentications from this address; try again in {seconds} s"),
        )
    }
}

impl From<OpsError> for ApiError {
    fn from(e: OpsError) -> ApiError {
        match e {
            OpsError::NotFound { .. } => ApiError::new(StatusCode::NOT_FOUND, "not_found", e.to_string()),
            OpsError::Conflict(message) => ApiError::new(StatusCode::CONFLICT, "conflict", message),
            OpsError::Invalid { code, message } => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, message),
            OpsError::Unavailable(_) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e.to_string()),
            OpsError::Db(e) => e.into(),
        }
    }
}

impl From<sqlx::Error> for ApiError {
    /// A value the database refuses (a NUL character, a date or interval out of range: class
    /// 22) is the caller's to fix: 400. A database that cannot serve right now (a lost
    /// connection, one refusing connections, out of resources, shutting down) is 503. Only
    /// what is left is a 500, logged as an error.
    fn from(e: sqlx::Error) -> ApiError {
        let sqlstate = e.as_database_error().and_then(|d| d.code()).map(|c| c.into_owned());
        if sqlstate.as_deref().is_some_and(|c| c.starts_with("22")) {
            tracing::info!(error = %db::describe_error(&e), "admin request refused by the database: a value in it");
            return ApiError::bad_request(format!("the database refused a value: {}", db::describe_error(&e)));
        }
        let unavailable =
            sqlstate.as_deref().is_some_and(|c| c.starts_with("53") || c == "55000" || c == "55006" || c == "57014");
        if unavailable || db::is_connection_error(&e) || db::is_retryable_conflict(&e) {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                format!("the database is unavailable ({}); nothing was changed, try again", db::describe_error(&e)),
            )
        } else {
            tracing::error!(error = %db::describe_error(&e), "admin API statement failed");
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", db::describe_error(&e))
        }
    }
}

type ApiResult = Result<Json<Value>, ApiError>;

/// The bearer token's identity (401 without a valid one). Failures are counted and logged by
/// client address; an address past the limit gets 429 without its token being checked.
fn bearer(parts: &Parts, state: &AdminState) -> Result<Identity, ApiError> {
    let client = client_ip(&parts.extensions);
    if let Some(wait) = client.and_then(|ip| state.failed_auth.blocked(ip)) {
        return Err(too_many_failures(wait));
    }
    let unauthorized = |message: &str| {
        let failures = client.map(|ip| state.failed_auth.failed(ip));
        tracing::warn!(client = ?client, failures = ?failures, reason = message, "admin API authentication failed");
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    };
    let header = parts
        .headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| unauthorized("missing `Authorization: Bearer TOKEN`"))?;
    let value = header.to_str().map_err(|_| unauthorized("the Authorization header is not text"))?;
    let token = match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() => token.trim(),
        _ => return Err(unauthorized("expected `Authorization: Bearer TOKEN`")),
    };
    state.tokens.verify(token).ok_or_else(|| unauthorized("the token is not valid"))
}

/// Any valid token: the GET routes.
pub struct Reader(pub Identity);

/// A token with the `operate` scope: every action (403 for a `read` token).
pub struct Operator(pub Identity);

impl FromRequestParts<AdminState> for Reader {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AdminState) -> Result<Self, Self::Rejection> {
        bearer(parts, state).map(Reader)
    }
}

impl FromRequestParts<AdminState> for Operator {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AdminState) -> Result<Self, Self::Rejection> {
        let identity = bearer(parts, state)?;
        if identity.scope != TokenScope::Operate {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("token `{}` has the read scope; this action needs operate", identity.name),
            ));
        }
        Ok(Operator(identity))
    }
}

async fn unknown(_: Reader) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such route under /api/v1 (docs/operations.md lists the routes)",
    )
}

fn parse_id(text: &str) -> Result<Uuid, ApiError> {
    text.parse().map_err(|_| ApiError::bad_request(format!("`{text}` is not a UUID")))
}

/// A JSON body (an empty body is `{}`), with unknown fields refused.
fn body<T: DeserializeOwned + Default>(bytes: &Bytes) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(bytes).map_err(|e| ApiError::bad_request(format!("the body is not the expected JSON: {e}")))
}

/// Query parameters, refusing any this route does not know (a typo would otherwise widen a
/// filter silently).
fn params(query: HashMap<String, String>, known: &[&str]) -> Result<HashMap<String, String>, ApiError> {
    if let Some(unknown) = query.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(ApiError::bad_request(format!(
            "unknown parameter `{unknown}`; this route takes {}",
            known.join(", ")
        )));
    }
    Ok(query.into_iter().filter(|(_, v)| !v.is_empty()).collect())
}

fn page_limit(query: &HashMap<String, String>) -> Result<i64, ApiError> {
    match query.get("limit") {
        None => Ok(DEFAULT_PAGE),
        Some(text) => match text.parse::<i64>() {
            Ok(n) if n >= 1 => Ok(n.min(MAX_PAGE)),
            _ => Err(ApiError::bad_request(format!(
                "limit must be a whole number from 1 (at most {MAX_PAGE} are given)"
            ))),
        },
    }
}

/// A cursor is opaque to clients: base64url of `MICROS:ID`.
pub fn encode_cursor(at: DateTime<Utc>, id: Uuid) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{}:{id}", at.timestamp_micros()))
}

pub fn decode_cursor(text: &str) -> Result<(DateTime<Utc>, Uuid), ApiError> {
    let bad = || ApiError::bad_request("cursor is not one this API gave");
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text).map_err(|_| bad())?;
    let raw = String::from_utf8(raw).map_err(|_| bad())?;
    let (micros, id) = raw.split_once(':').ok_or_else(bad)?;
    let at = DateTime::from_timestamp_micros(micros.parse().map_err(|_| bad())?).ok_or_else(bad)?;
    Ok((at, id.parse().map_err(|_| bad())?))
}

fn cursor(query: &HashMap<String, String>) -> Result<Option<(DateTime<Utc>, Uuid)>, ApiError> {
    query.get("cursor").map(|c| decode_cursor(c)).transpose()
}

fn uuid_param(query: &HashMap<String, String>, name: &str) -> Result<Option<Uuid>, ApiError> {
    query
        .get(name)
        .map(|v| v.parse().map_err(|_| ApiError::bad_request(format!("{name}: `{v}` is not a UUID"))))
        .transpose()
}

fn time_param(query: &HashMap<String, String>, name: &str) -> Result<Option<DateTime<Utc>>, ApiError> {
    query
        .get(name)
        .map(|v| {
            DateTime::parse_from_rfc3339(v).map(|t| t.with_timezone(&Utc)).map_err(|_| {
                ApiError::bad_request(format!("{name}: `{v}` is not an RFC 3339 time such as 2025-01-31T12:00:00Z"))
            })
        })
        .transpose()
}

/// A duration in seconds from `"90s"`, `"2h"`, `"7d"`.
pub fn duration_secs(name: &str, value: &str) -> Result<f64, ApiError> {
    humantime::parse_duration(value).map(|d| d.as_secs_f64()).map_err(|_| {
        ApiError::bad_request(format!("{name}: `{value}` is not a duration such as \"30m\", \"2h\" or \"7d\""))
    })
}

/// A page of rows and the cursor of the next one (rows were read with `limit + 1`).
fn page<T: serde::Serialize>(
    mut rows: Vec<T>,
    limit: i64,
    key: impl Fn(&T) -> (DateTime<Utc>, Uuid),
) -> (Vec<T>, Option<String>) {
    let more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    let next = if more { rows.last().map(key).map(|(at, id)| encode_cursor(at, id)) } else { None };
    (rows, next)
}

async fn status(State(state): State<AdminState>, _: Reader) -> ApiResult {
    let overview = actions::overview(&state.ops).await?;
    let mut value = serde_json::to_value(overview).map_err(|e| ApiError::bad_request(e.to_string()))?;
    value["worker_id"] = json!(state.worker_id);
    value["leader"] = json!(state.leadership.is_leader());
    value["version"] = json!(env!("CARGO_PKG_VERSION"));
    Ok(Json(value))
}

/// The item filter of a query string (the API's and the web page's).
pub fn item_filter(query: &HashMap<String, String>) -> Result<db::items::Filter, ApiError> {
    let status = query
        .get("state")
        .map(|s| {
            s.to_ascii_uppercase().parse::<ItemStatus>().map_err(|_| {
                let all: Vec<&str> = ItemStatus::ALL.iter().map(|s| s.as_str()).collect();
                ApiError::bad_request(format!("state: `{s}` is not one of {}", all.join(", ")))
            })
        })
        .transpose()?;
    Ok(db::items::Filter {
        status,
        item_type: query.get("type").cloned(),
        work_order_id: uuid_param(query, "order")?,
        tenant_id: uuid_param(query, "tenant")?,
        created_since: time_param(query, "created_since")?,
        created_until: time_param(query, "created_until")?,
    })
}

async fn items(State(state): State<AdminState>, _: Reader, Query(query): Query<HashMap<String, String>>) -> ApiResult {
    let query =
        params(query, &["state", "type", "order", "tenant", "created_since", "created_until", "limit", "cursor"])?;
    let filter = item_filter(&query)?;
    let limit = page_limit(&query)?;
    let rows = db::items::list(&state.ops, &filter, cursor(&query)?, limit + 1).await?;
    let (rows, next) = page(rows, limit, |r| (r.created_at, r.id));
    Ok(Json(json!({ "items": rows, "next_cursor": next, "limit": limit })))
}

async fn item(State(state): State<AdminState>, _: Reader, Path(id): Path<String>) -> ApiResult {
    let view = actions::item_view(&state.ops, &state.catalog, parse_id(&id)?).await?;
    Ok(Json(json!(view)))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReasonBody {
    reason: Option<String>,
}

impl ReasonBody {
    /// The reason as given; `actions` checks it, as for every surface.
    fn reason(&self) -> Option<&str> {
        self.reason.as_deref()
    }
}

async fn cancel(state: &AdminState, target: db::items::Target, who: &Identity, bytes: &Bytes) -> ApiResult {
    let request: ReasonBody = body(bytes)?;
    let cancelled = actions::cancel(&state.ops, target, &who.name, request.reason()).await?;
    let order = cancelled.first().map(|c| c.work_order_id);
    let order_status = match order {
        Some(order) => db::items::order_status(&state.ops, order).await?,
        None => None,
    };
    Ok(Json(json!({ "cancelled": cancelled, "work_order_id": order, "order_status": order_status })))
}

async fn cancel_item(
    State(state): State<AdminState>,
    Operator(who): Operator,
    Path(id): Path<String>,
    bytes: Bytes,
) -> ApiResult {
    cancel(&state, db::items::Target::Item(parse_id(&id)?), &who, &bytes).await
}

async fn cancel_order(
    State(state): State<AdminState>,
    Operator(who): Operator,
    Path(id): Path<String>,
    bytes: Bytes,
) -> ApiResult {
    cancel(&state, db::items::Target::Order(parse_id(&id)?), &who, &bytes).await
}

/// The dead-letter filter of a query string or a bulk body's fields.
pub fn letter_filter(
    state: Option<&str>,
    error_code: Option<&str>,
    item_type: Option<&str>,
    older_than: Option<&str>,
    newer_than: Option<&str>,
) -> Result<db::dead_letters::Filter, ApiError> {
    let open = match state.unwrap_or("open") {
        "open" => Some(true),
        "closed" => Some(false),
        "all" => None,
        other => return Err(ApiError::bad_request(format!("state: `{other}` is not open, closed or all"))),
    };
    let nonempty = |v: Option<&str>| v.map(str::trim).filter(|v| !v.is_empty()).map(str::to_owned);
    Ok(db::dead_letters::Filter {
        open,
        error_code: nonempty(error_code),
        item_type: nonempty(item_type),
        older_than_secs: nonempty(older_than).map(|v| duration_secs("older_than", &v)).transpose()?,
        newer_than_secs: nonempty(newer_than).map(|v| duration_secs("newer_than", &v)).transpose()?,
    })
}

async fn dead_letters(
    State(state): State<AdminState>,
    _: Reader,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult {
    let query = params(query, &["state", "error_code", "type", "older_than", "newer_than", "limit", "cursor"])?;
    let get = |k: &str| query.get(k).map(String::as_str);
    let filter = letter_filter(get("state"), get("error_code"), get("type"), get("older_than"), get("newer_than"))?;
    let limit = page_limit(&query)?;
    let rows = db::dead_letters::list_filtered(&state.ops, &filter, cursor(&query)?, limit + 1).await?;
    let total = db::dead_letters::count_filtered(&state.ops, &filter).await?;
    let (rows, next) = page(rows, limit, |r| (r.created_at, r.id));
    Ok(Json(json!({ "dead_letters": rows, "total": total, "next_cursor": next, "limit": limit })))
}

async fn dead_letter(State(state): State<AdminState>, _: Reader, Path(id): Path<String>) -> ApiResult {
    Ok(Json(json!(db::dead_letters::get(&state.ops, parse_id(&id)?).await?)))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplayBody {
    /// The item's new content: a string is stored as it is; any other JSON value as its JSON
    /// text.
    content: Option<Value>,
}

async fn replay(
    State(state): State<AdminState>,
    Operator(who): Operator,
    Path(id): Path<String>,
    bytes: Bytes,
) -> ApiResult {
    let request: ReplayBody = body(&bytes)?;
    let content = request.content.map(|c| match c {
        Value::String(text) => text,
        other => other.to_string(),
    });
    let replayed = actions::replay_dead_letter(
        &state.ops,
        &state.catalog,
        &state.settings,
        parse_id(&id)?,
        content.as_deref(),
        &who.name,
    )
    .await?;
    Ok(Json(json!(replayed)))
}

async fn discard(
    State(state): State<AdminState>,
    Operator(who): Operator,
    Path(id): Path<String>,
    bytes: Bytes,
) -> ApiResult {
    let id = parse_id(&id)?;
    let request: ReasonBody = body(&bytes)?;
    let item = actions::discard_dead_letter(&state.ops, id, &who.name, request.reason()).await?;
    Ok(Json(json!({ "dead_letter_id": id, "work_item_id": item, "discarded": true })))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct BulkBody {
    error_code: Option<String>,
    #[serde(rename = "type")]
    item_type: Option<String>,
    older_than: Option<String>,
    newer_than: Option<String>,
    /// Act on at most this many (capped at `actions::BULK_MAX`).
    limit: Option<i64>,
    /// Required when no other field narrows the filter: every open letter.
    #[serde(default)]
    all: bool,
    reason: Option<String>,
}

async fn bulk(state: &AdminState, who: &Identity, bytes: &Bytes, discard: bool) -> ApiResult {
    let request: BulkBody = body(bytes)?;
    let filter = letter_filter(
        Some("open"),
        request.error_code.as_deref(),
        request.item_type.as_deref(),
        request.older_than.as_deref(),
        request.newer_than.as_deref(),
    )?;
    let narrowed = filter.error_code.is_some()
        || filter.item_type.is_some()
        || filter.older_than_secs.is_some()
        || filter.newer_than_secs.is_some();
    if !narrowed && !request.all {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "FILTER_REQUIRED",
            "give error_code, type, older_than or newer_than, or \"all\": true to take every open dead letter",
        ));
    }
    if request.limit.is_some_and(|l| l < 1) {
        return Err(ApiError::bad_request("limit must be at least 1"));
    }
    let action = if discard {
        Bulk::Discard { reason: request.reason.clone().unwrap_or_default().trim().to_owned() }
    } else {
        if request.reason.is_some() {
            return Err(ApiError::bad_request("a bulk replay takes no reason"));
        }
        Bulk::Replay
    };
    let report = actions::bulk_dead_letters(&state.ops, &filter, request.limit, &action, &who.name).await?;
    Ok(Json(json!(report)))
}

async fn bulk_replay(State(state): State<AdminState>, Operator(who): Operator, bytes: Bytes) -> ApiResult {
    bulk(&state, &who, &bytes, false).await
}

async fn bulk_discard(State(state): State<AdminState>, Operator(who): Operator, bytes: Bytes) -> ApiResult {
    bulk(&state, &who, &bytes, true).await
}

async fn approvals(
    State(state): State<AdminState>,
    _: Reader,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult {
    let query = params(query, &["limit", "cursor"])?;
    let limit = page_limit(&query)?;
    let rows = db::approvals::inbox(&state.ops, cursor(&query)?, limit + 1).await?;
    let (rows, next) = page(rows, limit, |r| (r.created_at, r.id));
    Ok(Json(json!({ "approvals": rows, "next_cursor": next, "limit": limit })))
}

/// A human decision through the API: what the item became.
pub fn describe_next(next: NextState) -> Value {
    match next {
        NextState::Retry { delay_ms } => json!({ "status": "QUEUED", "retry_in_ms": delay_ms }),
        other => json!({ "status": other.item_status().as_str() }),
    }
}

async fn decide(state: &AdminState, who: &Identity, id: &str, decision: Decision, bytes: &Bytes) -> ApiResult {
    let id = parse_id(id)?;
    let request: ReasonBody = body(bytes)?;
    let next = actions::decide_held(
        &state.ops,
        &state.settings,
        Some(&state.metrics),
        id,
        decision,
        &who.name,
        request.reason(),
    )
    .await?;
    Ok(Json(json!({ "work_item_id": id, "decision": decision.as_str(), "item": describe_next(next) })))
}

async fn approve(
    State(state): State<AdminState>,
    Operator(who): Operator,
    Path(id): Path<String>,
    bytes: Bytes,
) -> ApiResult {
    decide(&state, &who, &id, Decision::Approved, &bytes).await
}

async fn reject(
    State(state): State<AdminState>,
    Operator(who): Operator,
    Path(id): Path<String>,
    bytes: Bytes,
) -> ApiResult {
    decide(&state, &who, &id, Decision::Rejected, &bytes).await
}

/// Every schedule with its next three runs (in its zone and in UTC) and the orders of its
/// last three slots.
async fn schedules(State(state): State<AdminState>, _: Reader) -> ApiResult {
    let mut rows = Vec::new();
    for schedule in db::schedules::list(&state.ops).await? {
        let mut row = actions::schedule_view(&schedule, 3);
        row["recent_orders"] = json!(db::schedules::recent_orders(&state.ops, schedule.id, 3).await?);
        rows.push(row);
    }
    Ok(Json(json!({ "schedules": rows })))
}

async fn escalations(
    State(state): State<AdminState>,
    _: Reader,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult {
    let query = params(query, &["all", "limit"])?;
    let all = match query.get("all").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => return Err(ApiError::bad_request(format!("all: `{other}` is not true or false"))),
    };
    let limit = page_limit(&query)?;
    let rows = db::sla::escalations(&state.ops, all, limit).await?;
    Ok(Json(json!({ "escalations": rows, "limit": limit })))
}

async fn escalation(State(state): State<AdminState>, _: Reader, Path(id): Path<String>) -> ApiResult {
    let (escalation, notifications) = db::sla::escalation(&state.ops, parse_id(&id)?).await?;
    Ok(Json(json!({ "escalation": escalation, "notifications": notifications })))
}

async fn act(state: &AdminState, who: &Identity, id: &str, action: db::sla::Action, bytes: &Bytes) -> ApiResult {
    let id = parse_id(id)?;
    let request: ReasonBody = body(bytes)?;
    actions::act_on_escalation(&state.ops, id, action, &who.name, request.reason()).await?;
    let (escalation, _) = db::sla::escalation(&state.ops, id).await?;
    Ok(Json(json!({ "escalation": escalation })))
}

async fn acknowledge(
    State(state): State<AdminState>,
    Operator(who): Operator,
    Path(id): Path<String>,
    bytes: Bytes,
) -> ApiResult {
    act(&state, &who, &id, db::sla::Action::Acknowledge, &bytes).await
}

async fn resolve(
    State(state): State<AdminState>,
    Operator(who): Operator,
    Path(id): Path<String>,
    bytes: Bytes,
) -> ApiResult {
    act(&state, &who, &id, db::sla::Action::Resolve, &bytes).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_garbage() {
        let at = DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap();
        let id = Uuid::new_v4();
        assert_eq!(decode_cursor(&encode_cursor(at, id)).unwrap(), (at, id));
        for bad in ["", "x", "MTIz", &base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("12:nope")] {
            assert_eq!(decode_cursor(bad).unwrap_err().status, StatusCode::BAD_REQUEST, "{bad}");
        }
    }

    #[test]
    fn filters_are_parsed_strictly() {
        let q = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let f = item_filter(&q(&[("state", "queued"), ("type", "TICKET")])).unwrap();
        assert_eq!((f.status, f.item_type.as_deref()), (Some(ItemStatus::Queued), Some("TICKET")));
        assert!(item_filter(&q(&[("state", "sleeping")])).unwrap_err().message.contains("QUEUED"));
        assert!(item_filter(&q(&[("order", "12")])).is_err());
        assert!(item_filter(&q(&[("created_since", "yesterday")])).is_err());
        assert!(params(q(&[("stat", "QUEUED")]), &["state"]).unwrap_err().message.contains("`stat`"));
        assert_eq!(page_limit(&q(&[("limit", "100000")])).unwrap(), MAX_PAGE);
        assert!(page_limit(&q(&[("limit", "0")])).is_err());
        let f = letter_filter(None, Some("NO_ROUTE"), None, Some("1h"), None).unwrap();
        assert_eq!((f.open, f.older_than_secs), (Some(true), Some(3600.0)));
        assert!(letter_filter(Some("maybe"), None, None, None, None).is_err());
        assert!(letter_filter(None, None, None, Some("soon"), None).is_err());
    }
}
