//! `/api/v1/dead-letters`: listing, one letter, replay (with edited content), discard, and the
//! bulk actions by filter.

use super::*;

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

pub(super) async fn dead_letters(
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

pub(super) async fn dead_letter(State(state): State<AdminState>, _: Reader, Path(id): Path<String>) -> ApiResult {
    Ok(Json(json!(db::dead_letters::get(&state.ops, parse_id(&id)?).await?)))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ReplayBody {
    /// The item's new content: a string is stored as it is; any other JSON value as its JSON
    /// text.
    content: Option<Value>,
}

pub(super) async fn replay(
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

pub(super) async fn discard(
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
pub(super) struct BulkBody {
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

pub(super) async fn bulk(state: &AdminState, who: &Identity, bytes: &Bytes, discard: bool) -> ApiResult {
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

pub(super) async fn bulk_replay(State(state): State<AdminState>, Operator(who): Operator, bytes: Bytes) -> ApiResult {
    bulk(&state, &who, &bytes, false).await
}

pub(super) async fn bulk_discard(State(state): State<AdminState>, Operator(who): Operator, bytes: Bytes) -> ApiResult {
    bulk(&state, &who, &bytes, true).await
}
