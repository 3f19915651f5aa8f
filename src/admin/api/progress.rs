//! `POST /api/v1/progress`: an HTTP agent's progress callback. Authorized by the attempt's
//! own token (from its envelope, checked with the key every replica shares), not by an admin
//! token; refused once that attempt is no longer the item's running one. Accepted reports go
//! to the throttled progress writer (`worker::progress`).

use super::*;
use crate::agent::ProgressUpdate;
use crate::policy::progress::{Progress, verify};

pub(super) async fn report(State(state): State<AdminState>, headers: axum::http::HeaderMap, bytes: Bytes) -> ApiResult {
    let unauthorized =
        || ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "a progress token from the envelope is required");
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(unauthorized)?;
    let key = state.progress.key().await?;
    let (item, attempt) = verify(key, token).ok_or_else(unauthorized)?;
    let body: Value =
        serde_json::from_slice(&bytes).map_err(|e| ApiError::bad_request(format!("the body is not JSON: {e}")))?;
    let progress = Progress::from_json(&body).ok_or_else(|| {
        ApiError::bad_request("expected {\"percent\": a number (clamped to 0..100), \"message\": optional text}")
    })?;
    if !db::runs::attempt_running(&state.ops, item, attempt).await? {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "attempt_ended",
            format!("attempt {attempt} of work item {item} is not running: its progress is no longer taken"),
        ));
    }
    let percent = progress.percent;
    let queued = state.progress.sink.try_send(ProgressUpdate { item, attempt, progress }).is_ok();
    Ok(Json(json!({ "work_item_id": item, "attempt": attempt, "percent": percent, "accepted": queued })))
}
