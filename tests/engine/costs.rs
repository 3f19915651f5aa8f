//! Cost entries (docs/costs.md): what an agent reports in `usage`, priced by the
//! configuration's table in exact decimals, written with the attempt, reported by
//! `orderly costs`.

use crate::common::*;
use serde_json::{Value, json};

#[tokio::test]
async fn reported_usage_becomes_exact_cost_entries_and_a_report() {
    let db = TestDb::new().await;
    // Tokens of a priced model, a stated amount, and garbage that must not fail anything.
    let agent = TestAgent::start(|envelope| {
        let usage = match envelope["work_item"]["content"]["kind"].as_str() {
            Some("tokens") => json!({"model": "small", "input_tokens": 1200, "output_tokens": 300}),
            Some("stated") => json!({"amount": "0.0123", "currency": "usd"}),
            _ => json!({"input_tokens": -1, "amount": "lots"}),
        };
        ok_json(json!({"answer": 42, "usage": usage}))
    })
    .await;
    let config = format!(
        "{}[routes]\nTICKET = \"paid\"\n[prices.small]\ninput_per_million = \"2.50\"\noutput_per_million = \"10\"\ncurrency = \"USD\"\n",
        agent.config("paid", "5s")
    );
    let order = insert_order(&db.pool, "MEDIUM").await;
    let mut items = Vec::new();
    for kind in ["tokens", "tokens", "stated", "garbage"] {
        items.push(insert_item(&db.pool, order, "TICKET", &json!({"kind": kind}).to_string()).await);
    }
    let engine = db.engine(&config).await;
    wait_for_order(&db.pool, order, "COMPLETED").await;
    stop(engine).await;

    type Entry = (String, String, String, String, String, Option<String>, Option<String>);
    let rows: Vec<Entry> = sqlx::query_as(
        "SELECT cost_type::text, unit, quantity::text, input_quantity::text, output_quantity::text,
                trim(trailing '0' from amount::text), currency::text
         FROM cost_entries WHERE work_item_id = $1",
    )
    .bind(items[0])
    .fetch_all(&db.pool)
    .await
    .unwrap();
    // One entry per attempt and cost type: 1200 × 2.50 + 300 × 10 per million, exactly.
    assert_eq!(
        rows,
        vec![(
            "api_tokens".into(),
            "token".into(),
            "1500".into(),
            "1200".into(),
            "300".into(),
            Some("0.006".into()),
            Some("USD".into())
        )]
    );
    let garbage: i64 = sqlx::query_scalar("SELECT count(*) FROM cost_entries WHERE work_item_id = $1")
        .bind(items[3])
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(garbage, 0, "a usage report that makes no sense records nothing, and fails nothing");
    let warned: Vec<String> =
        sqlx::query_scalar("SELECT message FROM run_logs WHERE work_item_id = $1 AND level = 'WARN'")
            .bind(items[3])
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert!(
        warned.iter().any(|w| w.starts_with("usage.input_tokens ignored: -1"))
            && warned.iter().any(|w| w.starts_with("usage.amount ignored: \"lots\"")),
        "what was ignored is recorded in the attempt's log: {warned:?}"
    );

    // 2 × (0.003 + 0.003) + 0.0123, exactly.
    let out = crate::cli::orderly(&db.url, &["costs", "--by", "tenant", "--since", "1h", "--json"]);
    assert!(out.status.success(), "{}", crate::cli::text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let total: Vec<&str> = report.as_array().unwrap().iter().filter_map(|l| l["amount"].as_str()).collect();
    assert_eq!(report.as_array().unwrap().len(), 1, "{report}");
    assert_eq!(total[0].trim_end_matches('0'), "0.0243", "{report}");
    assert_eq!(report[0]["attempts"], json!(3));
    let by_model = crate::cli::text(&crate::cli::orderly(&db.url, &["costs", "--by", "model"]));
    assert!(by_model.contains("small") && by_model.contains("(none)"), "{by_model}");

    // The API and the page say the same, with the spend per day.
    let app = crate::api::app(&db, &config);
    let (status, body) = crate::api::get(&app, "/api/v1/costs?by=agent&since=1h").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["lines"][0]["key"], json!("paid"));
    assert_eq!(body["lines"][0]["amount"].as_str().unwrap().trim_end_matches('0'), "0.0243");
    assert_eq!(body["per_day"].as_array().unwrap().len(), 1, "{body}");
    assert_eq!(body["per_day"][0]["currency"], json!("USD"));
    let (status, _) = crate::api::get(&app, "/api/v1/costs?by=planet").await;
    assert_eq!(status, 400);
    let (status, _) = crate::api::get(&app, "/api/v1/costs?since=forever").await;
    assert_eq!(status, 400);
    let cookie = crate::web::sign_in(&app, crate::api::READ).await;
    let page = crate::web::get(&app, "/costs?by=model&since=1h", &cookie).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("Spend per day, USD, last 30 days"), "{}", page.body);
    assert!(page.body.contains("<code>small</code>") && page.body.contains("<svg"), "{}", page.body);
}

#[test]
fn a_price_must_be_a_decimal_string_and_a_currency_code() {
    for (toml, key) in [
        (
            "[prices.m]\ninput_per_million = \"2,50\"\noutput_per_million = \"1\"\ncurrency = \"USD\"\n",
            "prices.m.input_per_million",
        ),
        (
            "[prices.m]\ninput_per_million = \"2.5\"\noutput_per_million = \"-1\"\ncurrency = \"USD\"\n",
            "prices.m.output_per_million",
        ),
        (
            "[prices.m]\ninput_per_million = \"2.5\"\noutput_per_million = \"1\"\ncurrency = \"dollars\"\n",
            "prices.m.currency",
        ),
    ] {
        let e = orderly::config::Settings::from_toml_over_defaults(toml).unwrap_err().to_string();
        assert!(e.contains(key), "{e}");
    }
}

/// What an agent logs and the artifacts it names are kept with the attempt, bounded: ten
/// thousand lines become 200 and a marker, a URL's credentials are dropped, and the item's
/// page, API and `orderly items logs` show them.
#[tokio::test]
async fn an_agents_logs_and_artifacts_are_kept_bounded_and_shown() {
    let db = TestDb::new().await;
    let agent = TestAgent::start(|envelope| {
        let lines: Vec<Value> = match envelope["work_item"]["content"]["lines"].as_u64() {
            Some(n) => (0..n).map(|i| json!(format!("step {i}"))).collect(),
            None => vec![json!({"level": "warn", "time": "2026-12-07T10:00:00Z", "message": "slow upstream"})],
        };
        ok_json(json!({"answer": 1, "logs": lines,
                       "artifacts": [{"name": "summary.pdf", "type": "application/pdf", "size": 1200,
                                      "url": "https://alice:s3cret@files.example/summary.pdf"}]}))
    })
    .await;
    let config = format!("{}[routes]\nTICKET = \"a\"\n", agent.config("a", "5s"));
    let order = insert_order(&db.pool, "MEDIUM").await;
    let chatty = insert_item(&db.pool, order, "TICKET", r#"{"lines": 10000}"#).await;
    let quiet = insert_item(&db.pool, order, "TICKET", "{}").await;
    let engine = db.engine(&config).await;
    wait_for_order(&db.pool, order, "COMPLETED").await;
    stop(engine).await;

    let lines: i64 = sqlx::query_scalar("SELECT count(*) FROM run_logs WHERE work_item_id = $1")
        .bind(chatty)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(lines, 201, "200 lines and the marker");
    let secrets: i64 = sqlx::query_scalar("SELECT count(*) FROM run_artifacts WHERE url LIKE '%s3cret%'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(secrets, 0, "no credentials kept");

    let out = crate::cli::orderly(&db.url, &["items", "logs", &quiet.to_string()]);
    let text = crate::cli::text(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("#1 WARN  2026-12-07 10:00:00.000 slow upstream"), "{text}");
    assert!(
        text.contains("artifact #1 summary.pdf application/pdf 1200 bytes https://files.example/summary.pdf"),
        "{text}"
    );
    let chatty_text = crate::cli::text(&crate::cli::orderly(&db.url, &["items", "logs", &chatty.to_string()]));
    assert!(chatty_text.contains("log cut: 9800 more line(s) left out"), "{chatty_text}");

    let app = crate::api::app(&db, &config);
    let (status, body) = crate::api::get(&app, &format!("/api/v1/items/{quiet}")).await;
    assert_eq!(status, 200);
    assert_eq!(body["logs"][0]["message"], json!("slow upstream"));
    assert_eq!(body["artifacts"][0]["url"], json!("https://files.example/summary.pdf"));
    let cookie = crate::web::sign_in(&app, crate::api::READ).await;
    let page = crate::web::get(&app, &format!("/items/{quiet}"), &cookie).await;
    assert!(page.body.contains("slow upstream") && page.body.contains("summary.pdf"), "{}", page.body);
}

/// A call that fails may still have cost money: the usage in a 5xx answer's JSON body counts.
#[tokio::test]
async fn a_failed_call_costs_what_its_error_body_reports() {
    let db = TestDb::new().await;
    let agent = TestAgent::start(|_| {
        (
            (503, vec![], json!({"error": "overloaded", "usage": {"amount": "0.25", "currency": "USD"}}).to_string()),
            std::time::Duration::ZERO,
        )
    })
    .await;
    let config = format!("{}[routes]\nTICKET = \"paid\"\n[retry]\nmax_attempts = 2\n", agent.config("paid", "5s"));
    let order = insert_order(&db.pool, "MEDIUM").await;
    let item = insert_item(&db.pool, order, "TICKET", "{}").await;
    let engine = db.engine(&config).await;
    wait_for_status(&db.pool, item, "FAILED").await;
    stop(engine).await;
    let spent: Option<String> =
        sqlx::query_scalar("SELECT sum(amount)::text FROM cost_entries WHERE work_item_id = $1")
            .bind(item)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(spent.as_deref(), Some("0.50"), "two failed attempts, 0.25 each");
}
