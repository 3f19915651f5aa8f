//! Budgets (docs/costs.md): a scope's items stop once its spend reaches the limit, waiting
//! or held, with no attempt spent; 80% and 100% are told once each through a connector; an
//! operator raises, resets or removes it from the CLI, the API or the page, and the items
//! run. Three engines overshoot by at most what was running.

use crate::api::{self, OPERATE};
use crate::common::*;
use serde_json::{Value, json};
use sqlx::PgPool;
use std::time::Duration;
use uuid::Uuid;

/// An agent every call of which costs exactly 1 USD.
async fn one_dollar_agent(delay: Duration) -> TestAgent {
    TestAgent::start(move |_| {
        let (answer, _) = ok_json(json!({"answer": 1, "usage": {"amount": "1", "currency": "USD"}}));
        (answer, delay)
    })
    .await
}

fn config(agent: &TestAgent, concurrency: usize) -> String {
    format!("{}[routes]\nTICKET = \"paid\"\n[worker]\nconcurrency = {concurrency}\n", agent.config("paid", "5s"))
}

async fn tenant_of(pool: &PgPool, order: Uuid) -> Uuid {
    sqlx::query_scalar("SELECT tenant_id FROM work_orders WHERE id = $1").bind(order).fetch_one(pool).await.unwrap()
}

async fn statuses(pool: &PgPool, order: Uuid) -> Vec<(String, i64)> {
    sqlx::query_as("SELECT status::text, count(*) FROM work_items WHERE work_order_id = $1 GROUP BY 1 ORDER BY 1")
        .bind(order)
        .fetch_all(pool)
        .await
        .unwrap()
}

async fn spent(pool: &PgPool, name: &str) -> String {
    sqlx::query_scalar("SELECT spent::text FROM budgets WHERE name = $1").bind(name).fetch_one(pool).await.unwrap()
}

fn cli_ok(db: &TestDb, args: &[&str]) -> String {
    let out = crate::cli::orderly(&db.url, args);
    let text = crate::cli::text(&out);
    assert!(out.status.success(), "orderly {args:?}: {text}");
    text
}

#[tokio::test]
async fn an_exhausted_budget_stops_its_scope_until_an_operator_raises_or_resets_it() {
    let db = TestDb::new().await;
    let agent = one_dollar_agent(Duration::ZERO).await;
    // Told at 80% and 100%, once each: a Slack-shaped hook on 127.0.0.1.
    let hook = TestAgent::start(|_| ok_json(json!({"ok": true}))).await;
    crate::notify::insert_connector(&db.pool, "spend", "SLACK", json!({"url": hook.url, "allow_private": true})).await;
    let order = insert_order(&db.pool, "MEDIUM").await;
    let tenant = tenant_of(&db.pool, order).await;
    // Another tenant's order, which the budget does not cover.
    let other: Uuid = sqlx::query_scalar(
        "INSERT INTO work_orders (workflow_id, priority, status, tenant_id, created_by)
         VALUES ('wf-other', 'MEDIUM', 'PENDING', gen_random_uuid(), gen_random_uuid()) RETURNING id",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let scope = format!("tenant:{tenant}");
    let made = cli_ok(
        &db,
        &[
            "budgets",
            "create",
            "team-a",
            "--scope",
            &scope,
            "--amount",
            "5",
            "--currency",
            "usd",
            "--connector",
            "spend",
        ],
    );
    assert!(made.contains("team-a") && made.contains("0 of 5 USD"), "{made}");
    // Refused with clear words, nothing made.
    for (args, says) in [
        (vec!["--amount=-3", "--currency", "USD"], "positive decimal"),
        (vec!["--amount", "3", "--currency", "dollars"], "three letters"),
        (vec!["--amount", "3", "--currency", "USD", "--period", "week"], "period"),
        (vec!["--amount", "3", "--currency", "USD", "--time-zone", "Mars/Olympus"], "time zone"),
    ] {
        let mut all = vec!["budgets", "create", "bad", "--scope", &scope];
        all.extend(args);
        let out = crate::cli::orderly(&db.url, &all);
        assert!(!out.status.success() && crate::cli::text(&out).contains(says), "{all:?}: {}", crate::cli::text(&out));
    }
    let dup = crate::cli::orderly(
        &db.url,
        &["budgets", "create", "team-a", "--scope", &scope, "--amount", "1", "--currency", "USD"],
    );
    assert!(crate::cli::text(&dup).contains("exists already"), "{}", crate::cli::text(&dup));

    let mut items = Vec::new();
    for i in 0..9 {
        items.push(insert_item(&db.pool, order, "TICKET", &json!({"n": i}).to_string()).await);
    }
    let free = insert_item(&db.pool, other, "TICKET", "{}").await;
    // One at a time: the spend is committed before the next claim reads it, so no overshoot.
    let engine = db.engine(&config(&agent, 1)).await;
    wait_for_status(&db.pool, free, "COMPLETED").await;
    wait_until("five paid items and four stopped", Duration::from_secs(20), || async {
        statuses(&db.pool, order).await == vec![("COMPLETED".into(), 5), ("QUEUED".into(), 4)]
            && count(&db.pool, "SELECT count(*) FROM budget_waits").await == 4
    })
    .await;
    assert_eq!(spent(&db.pool, "team-a").await, "5");
    // No attempt spent on the stopped items: no attempt row, attempt number 0.
    let stopped: Vec<(Uuid, i32, i64)> = sqlx::query_as(
        "SELECT w.id, w.attempt, (SELECT count(*) FROM attempts a WHERE a.work_item_id = w.id)
         FROM work_items w WHERE w.work_order_id = $1 AND w.status = 'QUEUED'",
    )
    .bind(order)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert!(stopped.iter().all(|(_, attempt, rows)| *attempt == 0 && *rows == 0), "{stopped:?}");
    assert_eq!(agent.received.lock().unwrap().len(), 6, "five of the tenant's items and the other tenant's one");
    // Why it waits, on every surface.
    let shown = cli_ok(&db, &["items", "show", &stopped[0].0.to_string()]);
    assert!(shown.contains("budget team-a is exhausted (5 of 5 USD)") && shown.contains("(budget)"), "{shown}");
    let list = cli_ok(&db, &["budgets", "list"]);
    assert!(list.contains("EXHAUSTED") && list.contains("4 item(s) stopped"), "{list}");
    // 80% and 100%, one message each.
    wait_until("two budget messages", Duration::from_secs(15), || async { hook.received.lock().unwrap().len() >= 2 })
        .await;
    let texts: Vec<String> = hook.received.lock().unwrap().iter().map(|r| r.envelope.to_string()).collect();
    assert_eq!(texts.len(), 2, "{texts:?}");
    assert!(texts.iter().any(|t| t.contains("budget \\\"team-a\\\" at 80%")), "{texts:?}");
    assert!(texts.iter().any(|t| t.contains("budget \\\"team-a\\\" exhausted: 5 of 5 USD")), "{texts:?}");

    // Raised through the API: two more run, then it is exhausted again.
    let app = api::app(&db, "");
    let (status, body) = api::post(&app, "/api/v1/budgets/team-a/amount", json!({"amount": "7"})).await;
    assert_eq!(status, 200, "{body}");
    wait_until("two more paid", Duration::from_secs(20), || async {
        statuses(&db.pool, order).await == vec![("COMPLETED".into(), 7), ("QUEUED".into(), 2)]
    })
    .await;
    let (_, body) = api::get(&app, "/api/v1/budgets/team-a").await;
    assert_eq!((body["spent"].as_str(), body["exhausted"].as_bool()), (Some("7"), Some(true)), "{body}");
    let (status, _) = api::post(&app, "/api/v1/budgets/team-a/amount", json!({"amount": "zero"})).await;
    assert_eq!(status, 422);
    let (status, _) = api::post(&app, "/api/v1/budgets/nobody/reset", json!({})).await;
    assert_eq!(status, 404);
    let (status, _) =
        api::call(&app, axum::http::Method::POST, "/api/v1/budgets/team-a/reset", Some(api::READ), None).await;
    assert_eq!(status, 403, "a reader cannot reset a budget");

    // Reset from the page: the rest run.
    let cookie = crate::web::sign_in(&app, OPERATE).await;
    let page = crate::web::get(&app, "/costs", &cookie).await;
    assert!(page.body.contains("id=\"budget-team-a\"") && page.body.contains("exhausted: wait"), "{}", page.body);
    let after = crate::web::submit(&app, &cookie, "/budgets/team-a/reset", &[("back", "/costs")]).await;
    assert!(after.body.contains("Budget team-a: 0 of 7 USD spent"), "{}", after.body);
    wait_for_order(&db.pool, order, "COMPLETED").await;
    stop(engine).await;
    let audited: Vec<String> =
        sqlx::query_scalar("SELECT action FROM audit_logs WHERE resource_type = 'budget' ORDER BY created_at")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(audited, ["budget.create", "budget.amount", "budget.reset"]);
    assert_eq!(agent.received.lock().unwrap().len(), 10, "each item ran once");
    assert_eq!(count(&db.pool, "SELECT count(*) FROM attempts WHERE status <> 'COMPLETED'").await, 0);
}

#[tokio::test]
async fn a_hold_budget_holds_items_for_a_person_who_lets_one_run_and_another_wait() {
    let db = TestDb::new().await;
    let agent = one_dollar_agent(Duration::ZERO).await;
    let order = insert_order(&db.pool, "MEDIUM").await;
    let app = api::app(&db, "");
    let (status, body) = api::post(
        &app,
        "/api/v1/budgets",
        json!({"name": "this-order", "scope": format!("order:{order}"), "amount": "1", "currency": "USD",
               "period": "day", "time_zone": "Europe/Paris", "on_exhausted": "hold"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["period_end"].is_string(), "{body}");
    let (status, body) = api::post(&app, "/api/v1/budgets", json!({"name": "x", "scope": "team:1"})).await;
    assert_eq!(status, 422, "{body}");
    let (status, _) = api::post(&app, "/api/v1/budgets", json!({"name": "x", "colour": "red"})).await;
    assert_eq!(status, 400, "unknown fields are refused");

    let items: Vec<Uuid> = {
        let mut v = Vec::new();
        for i in 0..3 {
            v.push(insert_item(&db.pool, order, "TICKET", &json!({"n": i}).to_string()).await);
        }
        v
    };
    let engine = db.engine(&config(&agent, 1)).await;
    wait_until("one paid, two held", Duration::from_secs(20), || async {
        statuses(&db.pool, order).await == vec![("AWAITING_APPROVAL".into(), 2), ("COMPLETED".into(), 1)]
    })
    .await;
    let (_, inbox) = api::get(&app, "/api/v1/approvals").await;
    let held: Vec<&Value> = inbox["approvals"].as_array().unwrap().iter().collect();
    assert_eq!(held.len(), 2, "{inbox}");
    assert!(held[0]["policy_reason"].as_str().unwrap().contains("budget this-order is exhausted"), "{inbox}");
    let (first, second): (Uuid, Uuid) =
        (held[0]["id"].as_str().unwrap().parse().unwrap(), held[1]["id"].as_str().unwrap().parse().unwrap());
    // Approved: it runs once past the budget. Rejected: it waits for the next day.
    let (status, body) = api::post(&app, &format!("/api/v1/approvals/{first}/approve"), json!({})).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) =
        api::post(&app, &format!("/api/v1/approvals/{second}/reject"), json!({"reason": "not today"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["item"]["status"], "QUEUED");
    wait_for_status(&db.pool, first, "COMPLETED").await;
    let waiting = cli_ok(&db, &["items", "show", &second.to_string()]);
    assert!(waiting.contains("waits for the next day"), "{waiting}");
    assert_eq!(item_status(&db.pool, second).await, "QUEUED");
    assert_eq!(spent(&db.pool, "this-order").await, "2", "the approved item's spend counts");
    let (status, _) = api::post(&app, &format!("/api/v1/approvals/{second}/approve"), json!({})).await;
    assert_eq!(status, 409, "no longer held");
    // Removing the budget lets the waiting one run.
    cli_ok(&db, &["budgets", "remove", "this-order"]);
    wait_for_order(&db.pool, order, "COMPLETED").await;
    stop(engine).await;
    assert!(items.iter().all(|id| agent.executions_of(*id) == 1));
}

/// Three engines at concurrency 8 against one budget of 100, items costing 1 each. The gate
/// reads the spend once its own process's finished results are written, so what runs past
/// the budget is what was running when it ran out: at most 3 × 8. The overshoot is printed;
/// the test also checks that no item started after the exhaustion was recorded (a second of
/// slack for the commit), and that the rest were stopped without reaching the agent.
#[tokio::test]
async fn three_engines_overshoot_a_budget_by_at_most_what_was_running() {
    let db = TestDb::new().await;
    let agent = one_dollar_agent(Duration::from_millis(20)).await;
    let order = insert_order(&db.pool, "MEDIUM").await;
    let tenant = tenant_of(&db.pool, order).await;
    sqlx::query(
        "INSERT INTO work_items (work_order_id, type, content) SELECT $1, 'TICKET', '{}' FROM generate_series(1, 600)",
    )
    .bind(order)
    .execute(&db.pool)
    .await
    .unwrap();
    cli_ok(
        &db,
        &[
            "budgets",
            "create",
            "hundred",
            "--scope",
            &format!("tenant:{tenant}"),
            "--amount",
            "100",
            "--currency",
            "USD",
        ],
    );
    let config = config(&agent, 8);
    let engines = vec![db.engine(&config).await, db.engine(&config).await, db.engine(&config).await];
    wait_until("the budget spent and the rest stopped", Duration::from_secs(60), || async {
        let waiting = count(&db.pool, "SELECT count(*) FROM budget_waits").await;
        let running = count(&db.pool, "SELECT count(*) FROM work_items WHERE status = 'PROCESSING'").await;
        let completed = count(&db.pool, "SELECT count(*) FROM work_items WHERE status = 'COMPLETED'").await;
        running == 0 && waiting + completed == 600 && completed >= 100
    })
    .await;
    for engine in engines {
        stop(engine).await;
    }
    let completed = count(&db.pool, "SELECT count(*) FROM work_items WHERE status = 'COMPLETED'").await;
    let spent: String = spent(&db.pool, "hundred").await;
    let calls = agent.received.lock().unwrap().len() as i64;
    let late: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM attempts a, budgets b
         WHERE b.name = 'hundred' AND a.started_at > b.exhausted_at + interval '1 second'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    println!(
        "three engines at concurrency 8: budget 100, spent {spent}, {completed} items ran ({} over)",
        completed - 100
    );
    assert_eq!(spent, completed.to_string(), "every completed item's cost counted");
    assert_eq!(calls, completed, "no stopped item reached the agent");
    assert!(completed < 600, "the budget stopped nothing");
    assert_eq!(late, 0, "items started after the budget was recorded exhausted");
    assert!(completed <= 100 + 3 * 8, "overshoot {} is more than three engines can have running", completed - 100);
}
