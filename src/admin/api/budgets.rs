//! Budgets: list and read (readers), create, set the amount, reset and remove (operators),
//! through `actions::budgets` like the CLI and the page.

use super::*;
use crate::actions::budgets::{self, BudgetRequest};

pub(super) async fn list(State(state): State<AdminState>, _: Reader) -> ApiResult {
    Ok(Json(json!({ "budgets": db::budgets::list(&state.ops).await? })))
}

pub(super) async fn one(State(state): State<AdminState>, _: Reader, Path(name): Path<String>) -> ApiResult {
    Ok(Json(json!(db::budgets::get(&state.ops, &name).await?)))
}

pub(super) async fn create(State(state): State<AdminState>, Operator(who): Operator, bytes: Bytes) -> ApiResult {
    let request: BudgetRequest = body(&bytes)?;
    Ok(Json(json!(budgets::create(&state.ops, &request, &who.name).await?)))
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AmountBody {
    amount: String,
}

pub(super) async fn amount(
    State(state): State<AdminState>,
    Operator(who): Operator,
    Path(name): Path<String>,
    bytes: Bytes,
) -> ApiResult {
    let request: AmountBody = body(&bytes)?;
    Ok(Json(json!(budgets::set_amount(&state.ops, &name, &request.amount, &who.name).await?)))
}

pub(super) async fn reset(
    State(state): State<AdminState>,
    Operator(who): Operator,
    Path(name): Path<String>,
) -> ApiResult {
    Ok(Json(json!(budgets::reset(&state.ops, &name, &who.name).await?)))
}

pub(super) async fn remove(
    State(state): State<AdminState>,
    Operator(who): Operator,
    Path(name): Path<String>,
) -> ApiResult {
    budgets::remove(&state.ops, &name, &who.name).await?;
    Ok(Json(json!({ "removed": name })))
}
