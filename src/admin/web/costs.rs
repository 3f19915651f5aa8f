//! `/costs`: what the attempts cost since a time ago, grouped (`?by=`, `?since=`, the API's
//! names), and the priced spend per day over the last 30 days as SVG bars per currency.

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
    let (lines, days) =
        match (db::costs::report(&state.ops, by, since).await, db::costs::per_day(&state.ops, DAYS as i32).await) {
            (Ok(lines), Ok(days)) => (lines, days),
            (Err(e), _) | (_, Err(e)) => return error_page(&signed, OpsError::from(e).into()),
        };
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
