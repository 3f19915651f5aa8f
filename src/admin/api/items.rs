//! `/api/v1/items` and `/api/v1/orders`: items by state, type, order and tenant; one item with
//! its records, its dependencies and why it waits; one order with its graph; cancelling an
//! item or an order.

use super::*;

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

pub(super) async fn items(
    State(state): State<AdminState>,
    _: Reader,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult {
    let query =
        params(query, &["state", "type", "order", "tenant", "created_since", "created_until", "limit", "cursor"])?;
    let filter = item_filter(&query)?;
    let limit = page_limit(&query)?;
    let rows = db::items::list(&state.ops, &filter, cursor(&query)?, limit + 1).await?;
    let (rows, next) = page(rows, limit, |r| (r.created_at, r.id));
    Ok(Json(json!({ "items": rows, "next_cursor": next, "limit": limit })))
}

/// One order: its row, its items' counts by status and its dependency graph (items and the
/// edges among them, the first 1,000 items).
pub(super) async fn order(State(state): State<AdminState>, _: Reader, Path(id): Path<String>) -> ApiResult {
    let id = parse_id(&id)?;
    let order = db::orders::get(&state.ops, id).await?.ok_or(OpsError::NotFound { what: "work order", id })?;
    let graph = db::dependencies::of_order(&state.ops, id, 1000).await?;
    Ok(Json(json!({ "order": order, "graph": graph })))
}

pub(super) async fn item(State(state): State<AdminState>, _: Reader, Path(id): Path<String>) -> ApiResult {
    let view = actions::item_view(&state.ops, &state.catalog, parse_id(&id)?).await?;
    Ok(Json(json!(view)))
}

pub(super) async fn cancel(state: &AdminState, target: db::items::Target, who: &Identity, bytes: &Bytes) -> ApiResult {
    let request: ReasonBody = body(bytes)?;
    let cancelled = actions::cancel(&state.ops, target, &who.name, request.reason()).await?;
    let order = cancelled.first().map(|c| c.work_order_id);
    let order_status = match order {
        Some(order) => db::items::order_status(&state.ops, order).await?,
        None => None,
    };
    Ok(Json(json!({ "cancelled": cancelled, "work_order_id": order, "order_status": order_status })))
}

pub(super) async fn cancel_item(
    State(state): State<AdminState>,
    Operator(who): Operator,
    Path(id): Path<String>,
    bytes: Bytes,
) -> ApiResult {
    cancel(&state, db::items::Target::Item(parse_id(&id)?), &who, &bytes).await
}

pub(super) async fn cancel_order(
    State(state): State<AdminState>,
    Operator(who): Operator,
    Path(id): Path<String>,
    bytes: Bytes,
) -> ApiResult {
    cancel(&state, db::items::Target::Order(parse_id(&id)?), &who, &bytes).await
}
