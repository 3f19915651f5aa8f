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

mod budgets;
mod dead_letters;
mod decisions;
mod items;
mod progress;

pub use dead_letters::letter_filter;
pub use decisions::{cost_query, describe_next};
pub use items::item_filter;

/// Largest page of a listing.
pub const MAX_PAGE: i64 = 500;

/// The page size when `limit` is not given.
pub const DEFAULT_PAGE: i64 = 50;

pub fn routes() -> axum::Router<AdminState> {
    axum::Router::new()
        .route("/api/v1/status", get(status))
        .route("/api/v1/items", get(items::items))
        .route("/api/v1/items/{id}", get(items::item))
        .route("/api/v1/items/{id}/cancel", post(items::cancel_item))
        .route("/api/v1/orders/{id}", get(items::order))
        .route("/api/v1/orders/{id}/cancel", post(items::cancel_order))
        .route("/api/v1/dead-letters", get(dead_letters::dead_letters))
        .route("/api/v1/dead-letters/bulk-replay", post(dead_letters::bulk_replay))
        .route("/api/v1/dead-letters/bulk-discard", post(dead_letters::bulk_discard))
        .route("/api/v1/dead-letters/{id}", get(dead_letters::dead_letter))
        .route("/api/v1/dead-letters/{id}/replay", post(dead_letters::replay))
        .route("/api/v1/dead-letters/{id}/discard", post(dead_letters::discard))
        .route("/api/v1/approvals", get(decisions::approvals))
        .route("/api/v1/approvals/{id}/approve", post(decisions::approve))
        .route("/api/v1/approvals/{id}/reject", post(decisions::reject))
        .route("/api/v1/escalations", get(decisions::escalations))
        .route("/api/v1/schedules", get(decisions::schedules))
        .route("/api/v1/costs", get(decisions::costs))
        .route("/api/v1/progress", post(progress::report))
        .route("/api/v1/budgets", get(budgets::list).post(budgets::create))
        .route("/api/v1/budgets/{name}", get(budgets::one).delete(budgets::remove))
        .route("/api/v1/budgets/{name}/amount", post(budgets::amount))
        .route("/api/v1/budgets/{name}/reset", post(budgets::reset))
        .route("/api/v1/escalations/{id}", get(decisions::escalation))
        .route("/api/v1/escalations/{id}/ack", post(decisions::acknowledge))
        .route("/api/v1/escalations/{id}/resolve", post(decisions::resolve))
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
            OpsError::NotFound { .. } | OpsError::Missing(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "not_found", e.to_string())
            }
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

#[cfg(test)]
mod tests;
