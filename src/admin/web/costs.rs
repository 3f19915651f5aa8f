//! `/costs`: what the attempts cost since a time ago, grouped (`?by=`, `?since=`, the API's
//! names), the priced spend per day over the last 30 days as SVG bars per currency, and the
//! budgets with their spend, which an operator raises or resets here
//! (`POST /budgets/NAME/amount|reset`, through `actions::budgets`).

use super::charts;
use super::*;

const DAYS: usize = 30;

pub(super) async fn costs(
    State(state): State<AdminState>,
    Viewer(signed): Viewer,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let (by, since) = match api::cost_query(&query) {
        Ok(q) => q,
        Err(e) => return error_page(&signed, e),
    };
    let (lines, days, budgets) = match (
        db::costs::report(&state.ops, by, since).await,
        db::costs::per_day(&state.ops, DAYS as i32).await,
        db::budgets::list(&state.ops).await,
    ) {
        (Ok(lines), Ok(days), Ok(budgets)) => (lines, days, budgets),
        (Err(e), ..) | (_, Err(e), _) | (.., Err(e)) => return error_page(&signed, OpsError::from(e).into()),
    };
    let operate = signed.session.identity.may_operate();
    let mut currencies: Vec<&str> = days.iter().map(|d| d.currency.as_str()).collect();
    currencies.dedup();
    let since_text = query.get("since").map(String::as_str).filter(|s| !s.is_empty()).unwrap_or("7d");
    let by_text = query.get("by").map(String::as_str).filter(|s| !s.is_empty()).unwrap_or("tenant");
    let body = html! {
        h1 { "Costs" }
        p.legend {
            "Since " (since_text) ", by "
            @for (i, b) in ["tenant", "agent", "workflow", "model"].iter().enumerate() {
                @if i > 0 { " · " }
                @if *b == by_text { strong { (b) } } @else { a href=(format!("/costs?by={b}&since={}", q(since_text))) { (b) } }
            }
        }
        @if lines.is_empty() { p { "No cost entries in this time." } } @else {
            table {
                thead { tr { th { (by_text) } th.num { "amount" } th { "currency" } th.num { "entries" } th.num { "attempts" } } }
                tbody {
                    @for l in &lines {
                        tr {
                            td { code { (l.key) } }
                            td.num { (l.amount.as_deref().unwrap_or("–")) }
                            td { (l.currency.as_deref().unwrap_or("no price")) }
                            td.num { (l.entries) }
                            td.num { (l.attempts) }
                        }
                    }
                }
            }
        }
        h2 { "Budgets" }
        @if budgets.is_empty() {
            p { "No budgets. Make one with " code { "orderly budgets create" } " or " code { "POST /api/v1/budgets" } "." }
        } @else {
            table #budgets {
                thead { tr { th { "budget" } th { "scope" } th.num { "spent" } th.num { "of" } th { "period" } th { "state" } th.num { "items stopped" } @if operate { th { "" } } } }
                tbody {
                    @for b in &budgets {
                        tr id=(format!("budget-{}", b.name)) {
                            td { code { (b.name) } }
                            td { code { (b.scope()) } }
                            td.num { (b.spent) " " (b.currency) br; small { (format!("{:.1}%", b.percent)) } }
                            td.num { (b.amount) " " (b.currency) }
                            td { (b.period) @if let Some(end) = b.period_end { br; small { "until " (ts(end)) } } }
                            td { @if b.exhausted { span.state.FAILED { "exhausted: " (b.on_exhausted) } } @else { span.state.COMPLETED { "ok" } } }
                            td.num { (b.waiting) }
                            @if operate {
                                td {
                                    form.inline method="post" action=(format!("/budgets/{}/amount", b.name)) {
                                        (hidden(&signed.session, "/costs"))
                                        input type="text" name="amount" size="8" value=(b.amount) aria-label="new amount";
                                        button type="submit" { "Set amount" }
                                    }
                                    form.inline method="post" action=(format!("/budgets/{}/reset", b.name)) {
                                        (hidden(&signed.session, "/costs"))
                                        button type="submit" { "Reset spend" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        div.charts {
            @for currency in &currencies {
                @let series: Vec<(DateTime<Utc>, String)> =
                    days.iter().filter(|d| d.currency == *currency).map(|d| (d.day, d.amount.clone())).collect();
                (charts::spend_per_day(currency, &series, Utc::now(), DAYS))
            }
        }
    };
    page(StatusCode::OK, layout("Costs", Some(&signed.session), signed.flash.clone(), body))
}

/// `POST /budgets/NAME/amount` (`amount`) and `POST /budgets/NAME/reset`.
pub(super) async fn budget_action(
    State(state): State<AdminState>,
    Path((name, action)): Path<(String, String)>,
    OperatorForm { signed, form }: OperatorForm,
) -> Response {
    let actor = signed.session.identity.name.clone();
    let result = match action.as_str() {
        "amount" => {
            let amount = form.get("amount").map(String::as_str).unwrap_or("");
            actions::budgets::set_amount(&state.ops, &name, amount, &actor).await
        }
        "reset" => actions::budgets::reset(&state.ops, &name, &actor).await,
        _ => return error_page(&signed, api::ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such action")),
    }
    .map(|b| {
        format!(
            "Budget {}: {} of {} {} spent; {} item(s) still stopped.",
            b.name, b.spent, b.amount, b.currency, b.waiting
        )
    });
    done(&state, &signed, said(result, None), &back(&form, "/costs"))
}
