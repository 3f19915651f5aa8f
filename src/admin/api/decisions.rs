//! The approvals inbox with approve and reject, the escalations with acknowledge and
//! resolve, and the schedules.

use super::*;

pub(super) async fn approvals(
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

/// A decision's body: the reason, and for a rejection whether to send the output back to
/// its agent with the reason as the feedback.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DecisionBody {
    reason: Option<String>,
    #[serde(default)]
    revise: bool,
}

/// A human decision through the API: what the item became.
pub fn describe_next(next: NextState) -> Value {
    match next {
        NextState::Retry { delay_ms } => json!({ "status": "QUEUED", "retry_in_ms": delay_ms }),
        other => json!({ "status": other.item_status().as_str() }),
    }
}

pub(super) async fn decide(
    state: &AdminState,
    who: &Identity,
    id: &str,
    decision: Decision,
    bytes: &Bytes,
) -> ApiResult {
    let id = parse_id(id)?;
    let request: DecisionBody = body(bytes)?;
    let next = actions::decide_held(
        &state.ops,
        &state.settings,
        Some(&state.metrics),
        id,
        decision,
        &who.name,
        request.reason.as_deref(),
        request.revise,
    )
    .await?;
    Ok(Json(json!({ "work_item_id": id, "decision": decision.as_str(), "item": describe_next(next) })))
}

pub(super) async fn approve(
    State(state): State<AdminState>,
    Operator(who): Operator,
    Path(id): Path<String>,
    bytes: Bytes,
) -> ApiResult {
    decide(&state, &who, &id, Decision::Approved, &bytes).await
}

pub(super) async fn reject(
    State(state): State<AdminState>,
    Operator(who): Operator,
    Path(id): Path<String>,
    bytes: Bytes,
) -> ApiResult {
    decide(&state, &who, &id, Decision::Rejected, &bytes).await
}

/// Every schedule with its next three runs (in its zone and in UTC) and the orders of its
/// last three slots.
pub(super) async fn schedules(State(state): State<AdminState>, _: Reader) -> ApiResult {
    let mut rows = Vec::new();
    for schedule in db::schedules::list(&state.ops).await? {
        rows.push(actions::schedules::schedule_view(&state.ops, schedule, 3).await?);
    }
    Ok(Json(json!({ "schedules": rows })))
}

/// Spend since `since` (default 7d) grouped `by` tenant, agent, workflow or model, and the
/// priced spend per UTC day over the last 30 days (docs/costs.md).
pub(super) async fn costs(
    State(state): State<AdminState>,
    _: Reader,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult {
    let query = params(query, &["by", "since"])?;
    let (by, since) = cost_query(&query)?;
    let lines = db::costs::report(&state.ops, by, since).await?;
    let days = db::costs::per_day(&state.ops, 30).await?;
    Ok(Json(json!({ "lines": lines, "per_day": days })))
}

/// `by` and `since` of a costs request (the API's and the page's).
pub fn cost_query(query: &HashMap<String, String>) -> Result<(db::costs::By, DateTime<Utc>), ApiError> {
    let by = match query.get("by").map(String::as_str) {
        None | Some("") => db::costs::By::Tenant,
        Some(value) => db::costs::By::parse(value).ok_or_else(|| {
            ApiError::bad_request(format!("by: `{value}` is not one of tenant, agent, workflow, model"))
        })?,
    };
    let secs =
        duration_secs("since", query.get("since").map(String::as_str).filter(|s| !s.is_empty()).unwrap_or("7d"))?;
    let since = chrono::TimeDelta::try_milliseconds((secs * 1000.0) as i64)
        .and_then(|d| Utc::now().checked_sub_signed(d))
        .ok_or_else(|| ApiError::bad_request("since: too far back"))?;
    Ok((by, since))
}

pub(super) async fn escalations(
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

pub(super) async fn escalation(State(state): State<AdminState>, _: Reader, Path(id): Path<String>) -> ApiResult {
    let (escalation, notifications) = db::sla::escalation(&state.ops, parse_id(&id)?).await?;
    Ok(Json(json!({ "escalation": escalation, "notifications": notifications })))
}

pub(super) async fn act(
    state: &AdminState,
    who: &Identity,
    id: &str,
    action: db::sla::Action,
    bytes: &Bytes,
) -> ApiResult {
    let id = parse_id(id)?;
    let request: ReasonBody = body(bytes)?;
    actions::act_on_escalation(&state.ops, id, action, &who.name, request.reason()).await?;
    let (escalation, _) = db::sla::escalation(&state.ops, id).await?;
    Ok(Json(json!({ "escalation": escalation })))
}

pub(super) async fn acknowledge(
    State(state): State<AdminState>,
    Operator(who): Operator,
    Path(id): Path<String>,
    bytes: Bytes,
) -> ApiResult {
    act(&state, &who, &id, db::sla::Action::Acknowledge, &bytes).await
}

pub(super) async fn resolve(
    State(state): State<AdminState>,
    Operator(who): Operator,
    Path(id): Path<String>,
    bytes: Bytes,
) -> ApiResult {
    act(&state, &who, &id, db::sla::Action::Resolve, &bytes).await
}
