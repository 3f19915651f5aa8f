//! The JSON API under /api/v1, in process (`tower::ServiceExt::oneshot` on the admin router
//! over a test database): every route without a token (401), with a read token on an action
//! (403), unknown ids (404), decisions already taken (409), refused input (422), listings
//! with filters and cursors, waiting reasons, replay with edited content checked as the
//! route would, bulk actions, approvals, escalations, and cancelling a running item through
//! a running engine's server.

use crate::common::*;
use axum::body::Body;
use axum::http::{Method, Request};
use orderly::admin::AdminState;
use orderly::admin::auth::sha256_hex;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceExt;
use uuid::Uuid;

pub const OPERATE: &str = "orderly_test-operate-token";
pub const READ: &str = "orderly_test-read-token";

/// `[[admin.tokens]]`: alice may operate, bob may read.
pub fn tokens_toml() -> String {
    format!(
        "[[admin.tokens]]\nname = \"alice\"\nsha256 = \"{}\"\nscope = \"operate\"\n\
         [[admin.tokens]]\nname = \"bob\"\nsha256 = \"{}\"\nscope = \"read\"\n",
        sha256_hex(OPERATE),
        sha256_hex(READ)
    )
}

/// The admin router over `db`, without an engine.
pub fn app(db: &TestDb, toml: &str) -> axum::Router {
    let mut settings = db.settings(&format!("{}{toml}", tokens_toml()));
    // The page's tests name this host (tests/engine/web.rs).
    settings.admin.allowed_hosts.push("orderly.test".to_owned());
    let settings = Arc::new(settings);
    orderly::admin::router(AdminState::standalone(db.pool.clone(), db.pool.clone(), settings))
}

/// One request: status and JSON body (`Null` when the body is not JSON).
pub async fn call(
    app: &axum::Router,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = Request::builder().method(method).uri(path);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let body = match body {
        Some(value) => {
            request = request.header("content-type", "application/json");
            Body::from(value.to_string())
        }
        None => Body::empty(),
    };
    let response = app.clone().oneshot(request.body(body).unwrap()).await.unwrap();
    let status = response.status().as_u16();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

pub async fn get(app: &axum::Router, path: &str) -> (u16, Value) {
    call(app, Method::GET, path, Some(READ), None).await
}

pub async fn post(app: &axum::Router, path: &str, body: Value) -> (u16, Value) {
    call(app, Method::POST, path, Some(OPERATE), Some(body)).await
}

/// A FAILED item with an open dead letter, written as the completer would (no engine):
/// one FAILED attempt, the letter with `code`, its payload. Returns (item, letter).
pub async fn dead_lettered(db: &TestDb, item_type: &str, content: &str, code: &str, error: &str) -> (Uuid, Uuid) {
    let order = insert_order(&db.pool, "MEDIUM").await;
    let item = insert_item(&db.pool, order, item_type, content).await;
    sqlx::query(
        "UPDATE work_items SET status = 'FAILED', attempt = 1, processed_at = now(), last_error = $2,
                last_error_code = $3 WHERE id = $1",
    )
    .bind(item)
    .bind(error)
    .bind(code)
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO attempts (work_item_id, attempt_number, agent_id, status, input, error, error_code, worker_id,
                               completed_at, duration_ms)
         VALUES ($1, 1, 'echo', 'FAILED', '{}', $2, $3, 'test-worker', now(), 3)",
    )
    .bind(item)
    .bind(error)
    .bind(code)
    .execute(&db.pool)
    .await
    .unwrap();
    let letter: Uuid = sqlx::query_scalar(
        "INSERT INTO dead_letters (work_item_id, source, event_type, payload, error, error_code, reason, retry_count)
         VALUES ($1, 'echo', $2, jsonb_build_object('work_item_id', $1, 'work_order_id', $3::uuid, 'type', $2,
                                                    'attempt', 1, 'error_code', $4, 'agent', 'echo'),
                 $5, $4, 'PERMANENT', 1)
         RETURNING id",
    )
    .bind(item)
    .bind(item_type)
    .bind(order)
    .bind(code)
    .bind(error)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    (item, letter)
}

/// An item held in AWAITING_APPROVAL as the policy holds one: a COMPLETED attempt with an
/// output, a failed eval and the POLICY's ESCALATED decision.
pub async fn held(db: &TestDb) -> Uuid {
    let order = insert_order(&db.pool, "HIGH").await;
    let item = insert_item(&db.pool, order, "TICKET", r#"{"subject":"refund"}"#).await;
    sqlx::query(
        "UPDATE work_items SET status = 'AWAITING_APPROVAL', attempt = 1, result = '{\"answer\": \"<b>yes</b>\"}'
         WHERE id = $1",
    )
    .bind(item)
    .execute(&db.pool)
    .await
    .unwrap();
    let attempt: Uuid = sqlx::query_scalar(
        "INSERT INTO attempts (work_item_id, attempt_number, agent_id, status, input, output, worker_id, completed_at)
         VALUES ($1, 1, 'echo', 'COMPLETED', '{}', '{\"answer\": \"<b>yes</b>\"}', 'test-worker', now()) RETURNING id",
    )
    .bind(item)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO eval_results (work_item_id, attempt_id, evaluation_type, score, metrics, passed)
         VALUES ($1, $2, 'json_schema', 0, '{\"errors\": [\"subject is required\"]}', false)",
    )
    .bind(item)
    .bind(attempt)
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO approval_events (work_item_id, attempt_id, approver_id, decision, reason, policy_version, source)
         VALUES ($1, $2, 'policy:escalate_on_failure', 'ESCALATED', 'json_schema failed', 'escalate_on_failure/1', 'POLICY')",
    )
    .bind(item)
    .bind(attempt)
    .execute(&db.pool)
    .await
    .unwrap();
    item
}

/// An OPEN escalation of a TIME_TO_FINISH rule for `item`.
pub async fn escalation(db: &TestDb, item: Uuid) -> Uuid {
    let rule: Uuid = sqlx::query_scalar(
        "INSERT INTO sla_rules (name, clock) VALUES ('finish within 1h ' || gen_random_uuid(), 'TIME_TO_FINISH') RETURNING id",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    sqlx::query_scalar(
        "INSERT INTO escalations (rule_id, level, subject_id, work_item_id, work_order_id, reason, due_at)
         SELECT $1, 1, w.id, w.id, w.work_order_id, 'level 1 of rule finish within 1h', now() - interval '5 minutes'
         FROM work_items w WHERE w.id = $2 RETURNING id",
    )
    .bind(rule)
    .bind(item)
    .fetch_one(&db.pool)
    .await
    .unwrap()
}

pub async fn audit_count(db: &TestDb, user: &str, action: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM audit_logs WHERE user_id = $1 AND action = $2")
        .bind(user)
        .bind(action)
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn every_route_needs_a_token_and_actions_need_the_operate_scope() {
    let db = TestDb::new().await;
    let app = app(&db, "");
    let id = Uuid::new_v4();
    let reads = [
        "/api/v1/status".to_owned(),
        "/api/v1/items".to_owned(),
        format!("/api/v1/items/{id}"),
        "/api/v1/dead-letters".to_owned(),
        format!("/api/v1/dead-letters/{id}"),
        "/api/v1/approvals".to_owned(),
        "/api/v1/escalations".to_owned(),
        format!("/api/v1/escalations/{id}"),
    ];
    let actions = [
        format!("/api/v1/items/{id}/cancel"),
        format!("/api/v1/orders/{id}/cancel"),
        format!("/api/v1/dead-letters/{id}/replay"),
        format!("/api/v1/dead-letters/{id}/discard"),
        "/api/v1/dead-letters/bulk-replay".to_owned(),
        "/api/v1/dead-letters/bulk-discard".to_owned(),
        format!("/api/v1/approvals/{id}/approve"),
        format!("/api/v1/approvals/{id}/reject"),
        format!("/api/v1/escalations/{id}/ack"),
        format!("/api/v1/escalations/{id}/resolve"),
    ];
    for path in reads.iter().chain(&actions) {
        let method = if reads.contains(path) { Method::GET } else { Method::POST };
        for token in [None, Some("orderly_wrong"), Some(&sha256_hex(OPERATE) as &str)] {
            let (status, body) = call(&app, method.clone(), path, token, None).await;
            assert_eq!(status, 401, "{method} {path} with {token:?}: {body}");
            assert_eq!(body["error"], "unauthorized", "{body}");
        }
        let response = app
            .clone()
            .oneshot(
                Request::builder()
                    .method(method.clone())
                    .uri(path)
                    .header("authorization", format!("Basic {OPERATE}"))
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.status(), 401, "{path}: only Bearer");
        assert!(response.headers()["www-authenticate"].to_str().unwrap().starts_with("Bearer"));
    }
    for path in &reads {
        let (status, body) = get(&app, path).await;
        let expected = if path.contains(&id.to_string()) { 404 } else { 200 };
        assert_eq!(status, expected, "GET {path} with the read token: {body}");
    }
    for path in &actions {
        let (status, body) = call(&app, Method::POST, path, Some(READ), Some(json!({"reason": "x"}))).await;
        assert_eq!(status, 403, "POST {path} with the read token: {body}");
        assert!(body["message"].as_str().unwrap().contains("bob"), "{body}");
    }
    // The operate token reaches the action: unknown ids are 404.
    for path in actions.iter().filter(|p| p.contains(&id.to_string())) {
        let body = if path.ends_with("/replay") { json!({}) } else { json!({"reason": "x"}) };
        let (status, body) = post(&app, path, body).await;
        assert_eq!(status, 404, "POST {path}: {body}");
    }
    let (status, _) = get(&app, "/api/v1/nope").await;
    assert_eq!(status, 404);
    let (status, _) = call(&app, Method::GET, "/api/v1/nope", None, None).await;
    assert_eq!(status, 401, "unknown routes under /api/v1 need a token too");
    let (status, body) = get(&app, "/api/v1/items/not-a-uuid").await;
    assert_eq!((status, body["error"].as_str()), (400, Some("bad_request")));
    // The probes and metrics stay open.
    let (status, _) = call(&app, Method::GET, "/healthz", None, None).await;
    assert_eq!(status, 200);

    // No tokens configured: everyone is refused.
    let settings = Arc::new(db.settings(""));
    let closed = orderly::admin::router(AdminState::standalone(db.pool.clone(), db.pool.clone(), settings));
    assert_eq!(get(&closed, "/api/v1/status").await.0, 401);
}

#[tokio::test]
async fn items_are_filtered_paged_and_explained() {
    let db = TestDb::new().await;
    let app = app(&db, "[routes]\nTICKET = \"echo\"\n");
    let order = insert_order(&db.pool, "MEDIUM").await;
    let runnable = insert_item(&db.pool, order, "TICKET", "{}").await;
    let scheduled = insert_item(&db.pool, order, "TICKET", "{}").await;
    let retrying = insert_item(&db.pool, order, "TICKET", "{}").await;
    let never = insert_item(&db.pool, order, "TICKET", "{}").await;
    let unrouted = insert_item(&db.pool, order, "INVOICE", "{}").await;
    let running = insert_item(&db.pool, order, "TICKET", "{}").await;
    let other_order = insert_order(&db.pool, "LOW").await;
    let elsewhere = insert_item(&db.pool, other_order, "STATUS_REPORT", "{}").await;
    let held = held(&db).await;
    for (sql, id) in [
        ("UPDATE work_items SET run_at = now() - interval '90 seconds' WHERE id = $1", runnable),
        ("UPDATE work_items SET run_at = now() + interval '1 hour' WHERE id = $1", scheduled),
        (
            "UPDATE work_items SET run_at = now() + interval '20 seconds', attempt = 2, attempt_base = 0,
                    last_error_code = 'AGENT_UNAVAILABLE' WHERE id = $1",
            retrying,
        ),
        ("UPDATE work_items SET run_at = 'infinity' WHERE id = $1", never),
        (
            "UPDATE work_items SET status = 'PROCESSING', attempt = 1, locked_by = 'host-1-abcdef',
                    claimed_at = now(), lease_expires_at = now() + interval '30 seconds' WHERE id = $1",
            running,
        ),
    ] {
        sqlx::query(sql).bind(id).execute(&db.pool).await.unwrap();
    }

    let reason = |body: &Value| body["waiting_reason"]["kind"].as_str().unwrap().to_owned();
    for (id, kind, says) in [
        (runnable, "runnable", "waiting for a free worker"),
        (scheduled, "scheduled", "run_at is"),
        (retrying, "backoff", "AGENT_UNAVAILABLE"),
        (never, "never", "infinity"),
        (unrouted, "no_route", "NO_ROUTE"),
        (running, "claimed", "host-1-abcdef"),
        (held, "held", "held for approval since"),
    ] {
        let (status, body) = get(&app, &format!("/api/v1/items/{id}")).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(reason(&body), kind, "{body}");
        let detail = body["waiting_reason"]["detail"].as_str().unwrap();
        assert!(detail.contains(says), "{kind}: {detail}");
        assert_eq!(body["item"]["id"], id.to_string());
    }
    let (_, body) = get(&app, &format!("/api/v1/items/{running}")).await;
    assert_eq!(body["waiting_reason"]["worker"], "host-1-abcdef");
    assert!(body["waiting_reason"]["until"].is_string(), "the lease's end: {body}");
    let (_, body) = get(&app, &format!("/api/v1/items/{never}")).await;
    assert_eq!((body["item"]["run_at"].clone(), body["item"]["run_at_infinite"].clone()), (Value::Null, json!(true)));
    let (_, body) = get(&app, &format!("/api/v1/items/{held}")).await;
    assert_eq!(body["attempts"].as_array().unwrap().len(), 1);
    assert_eq!(body["eval_results"][0]["passed"], false);
    assert_eq!(body["approvals"][0]["decision"], "ESCALATED");
    assert_eq!(body["route"]["agent"], "echo");
    let (_, body) = get(&app, &format!("/api/v1/items/{unrouted}")).await;
    assert_eq!(body["route"]["error_code"], "NO_ROUTE");

    // Filters.
    let ids = |body: &Value| -> Vec<String> {
        body["items"].as_array().unwrap().iter().map(|i| i["id"].as_str().unwrap().to_owned()).collect()
    };
    let (_, body) = get(&app, "/api/v1/items?state=processing").await;
    assert_eq!(ids(&body), vec![running.to_string()]);
    let (_, body) = get(&app, "/api/v1/items?type=INVOICE").await;
    assert_eq!(ids(&body), vec![unrouted.to_string()]);
    let (_, body) = get(&app, &format!("/api/v1/items?order={other_order}")).await;
    assert_eq!(ids(&body), vec![elsewhere.to_string()]);
    let tenant: Uuid = sqlx::query_scalar("SELECT tenant_id FROM work_orders WHERE id = $1")
        .bind(other_order)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let (_, body) = get(&app, &format!("/api/v1/items?tenant={tenant}")).await;
    assert_eq!(ids(&body), vec![elsewhere.to_string()]);
    let (_, body) =
        get(&app, "/api/v1/items?created_since=2000-01-01T00:00:00Z&created_until=2001-01-01T00:00:00Z").await;
    assert!(ids(&body).is_empty());
    let (_, body) = get(&app, "/api/v1/items?created_since=2000-01-01T00:00:00Z&state=QUEUED").await;
    assert_eq!(ids(&body).len(), 6, "{body}");
    for bad in ["state=SLEEPING", "order=12", "created_since=yesterday", "limit=0", "cursor=zz", "statte=QUEUED"] {
        let (status, body) = get(&app, &format!("/api/v1/items?{bad}")).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }

    // Pages of 3, newest first, every item once.
    let mut seen = Vec::new();
    let mut path = "/api/v1/items?limit=3".to_owned();
    loop {
        let (status, body) = get(&app, &path).await;
        assert_eq!(status, 200, "{body}");
        assert!(body["items"].as_array().unwrap().len() <= 3);
        seen.extend(ids(&body));
        match body["next_cursor"].as_str() {
            Some(next) => path = format!("/api/v1/items?limit=3&cursor={next}"),
            None => break,
        }
    }
    let mut all: Vec<(chrono::DateTime<chrono::Utc>, Uuid)> =
        sqlx::query_as("SELECT created_at, id FROM work_items").fetch_all(&db.pool).await.unwrap();
    all.sort();
    all.reverse();
    assert_eq!(seen, all.iter().map(|(_, id)| id.to_string()).collect::<Vec<_>>(), "newest first, no gaps, no repeats");
    let (_, body) = get(&app, "/api/v1/items?limit=100000").await;
    assert_eq!(body["limit"], 500, "the page size is capped");

    let (status, body) = get(&app, "/api/v1/status").await;
    assert_eq!(status, 200);
    assert_eq!(body["by_state"]["QUEUED"], 6);
    assert_eq!(body["by_state"]["PROCESSING"], 1);
    assert_eq!(body["awaiting_approval"], 1);
    assert_eq!(body["by_type"]["INVOICE"]["QUEUED"], 1);
    assert_eq!(body["in_flight"][0]["id"], running.to_string());
}

#[tokio::test]
async fn replay_checks_edited_content_as_the_route_would_and_conflicts_say_who() {
    let db = TestDb::new().await;
    insert_template(&db.pool, "plain", json!({"steps": {"TICKET": {"agent": "echo", "content": "text"}}})).await;
    let app = app(&db, "[limits]\nmax_content_bytes = 1000\n[routes]\nTICKET = \"echo\"\n");
    let (item, letter) =
        dead_lettered(&db, "TICKET", "{broken", "CONTENT_INVALID_JSON", "content is not valid JSON").await;
    let (_, other) = dead_lettered(&db, "TICKET", "{broken", "CONTENT_INVALID_JSON", "content is not valid JSON").await;
    let (_, unrouted) = dead_lettered(&db, "INVOICE", "{}", "NO_ROUTE", "no route for item type INVOICE").await;

    let (status, body) = get(&app, "/api/v1/dead-letters").await;
    assert_eq!((status, body["total"].as_i64()), (200, Some(3)), "{body}");
    let (_, body) = get(&app, "/api/v1/dead-letters?error_code=NO_ROUTE").await;
    assert_eq!(body["dead_letters"][0]["id"], unrouted.to_string());
    let (_, body) = get(&app, "/api/v1/dead-letters?type=TICKET&newer_than=1h").await;
    assert_eq!(body["total"], 2);
    let (_, body) = get(&app, "/api/v1/dead-letters?older_than=1h").await;
    assert_eq!(body["total"], 0);
    let (_, body) = get(&app, "/api/v1/dead-letters?limit=2").await;
    let next = body["next_cursor"].as_str().expect("a second page").to_owned();
    let (_, body) = get(&app, &format!("/api/v1/dead-letters?limit=2&cursor={next}")).await;
    assert_eq!(body["dead_letters"].as_array().unwrap().len(), 1);
    assert_eq!(get(&app, "/api/v1/dead-letters?older_than=soon").await.0, 400);
    let (status, body) = get(&app, &format!("/api/v1/dead-letters/{letter}")).await;
    assert_eq!(status, 200);
    assert_eq!(body["dead_letter"]["error_code"], "CONTENT_INVALID_JSON");
    assert_eq!(body["attempts"][0]["error_code"], "CONTENT_INVALID_JSON");
    assert_eq!(body["item"]["content"], "{broken");

    // Content the item's JSON step would fail on at once is refused, and nothing changes.
    let too_big = format!("{{\"pad\": \"{}\"}}", "x".repeat(1000));
    for (content, code) in [
        (json!("{not json"), "CONTENT_INVALID_JSON"),
        (json!(""), "CONTENT_EMPTY"),
        (json!("  \n "), "CONTENT_EMPTY"),
        (json!(too_big), "CONTENT_TOO_LARGE"),
    ] {
        let (status, body) =
            post(&app, &format!("/api/v1/dead-letters/{letter}/replay"), json!({"content": content})).await;
        assert_eq!(status, 422, "{content}: {body}");
        assert_eq!(body["error"], code, "{body}");
        assert!(body["message"].as_str().unwrap().starts_with("content refused: "), "{body}");
    }
    assert_eq!(item_status(&db.pool, item).await, "FAILED");
    assert!(dead_letter(&db.pool, item).await.is_some(), "still open");
    let (status, body) = post(&app, &format!("/api/v1/dead-letters/{letter}/replay"), json!({"contnet": "{}"})).await;
    assert_eq!(status, 400, "unknown fields are refused: {body}");

    // A JSON value is stored as its JSON text.
    let (status, body) =
        post(&app, &format!("/api/v1/dead-letters/{letter}/replay"), json!({"content": {"fixed": true}})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["work_item_id"].as_str(), body["content_replaced"].as_bool()),
        (Some(&*item.to_string()), Some(true))
    );
    assert_eq!(item_status(&db.pool, item).await, "QUEUED");
    let content: String = sqlx::query_scalar("SELECT content FROM work_items WHERE id = $1")
        .bind(item)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(content, r#"{"fixed":true}"#);
    let (status, body) = post(&app, &format!("/api/v1/dead-letters/{letter}/replay"), json!({})).await;
    assert_eq!(status, 409, "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("already REPLAYED by alice at "), "{message}");
    let (status, body) = post(&app, &format!("/api/v1/dead-letters/{letter}/discard"), json!({"reason": "late"})).await;
    assert_eq!(status, 409, "{body}");

    // Discarding needs a reason.
    for body in [json!({}), json!({"reason": "  "})] {
        let (status, answer) = post(&app, &format!("/api/v1/dead-letters/{other}/discard"), body).await;
        assert_eq!((status, answer["error"].as_str()), (422, Some("REASON_REQUIRED")), "{answer}");
    }
    // Two operators on one letter at once: one wins, the other is told.
    let path = format!("/api/v1/dead-letters/{other}/discard");
    let replay_path = format!("/api/v1/dead-letters/{other}/replay");
    let (a, b) = tokio::join!(post(&app, &path, json!({"reason": "duplicate"})), post(&app, &replay_path, json!({})));
    let mut statuses = [a.0, b.0];
    statuses.sort();
    assert_eq!(statuses, [200, 409], "{a:?} {b:?}");
    let loser = if a.0 == 409 { &a.1 } else { &b.1 };
    assert!(loser["message"].as_str().unwrap().contains("by alice"), "{loser}");

    // No route: the replay goes ahead and says what will happen.
    let (status, body) = post(&app, &format!("/api/v1/dead-letters/{unrouted}/replay"), json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["warning"].as_str().unwrap().contains("NO_ROUTE"), "{body}");

    // A text step takes any non-empty text.
    let order = insert_order_with_workflow(&db.pool, "plain").await;
    let text_item = insert_item(&db.pool, order, "TICKET", "").await;
    sqlx::query("UPDATE work_items SET status = 'FAILED', attempt = 1, processed_at = now() WHERE id = $1")
        .bind(text_item)
        .execute(&db.pool)
        .await
        .unwrap();
    let text_letter: Uuid = sqlx::query_scalar(
        "INSERT INTO dead_letters (work_item_id, source, event_type, payload, error, error_code, reason)
         VALUES ($1, 'echo', 'TICKET', '{}', 'content is empty', 'CONTENT_EMPTY', 'PERMANENT') RETURNING id",
    )
    .bind(text_item)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let (status, body) =
        post(&app, &format!("/api/v1/dead-letters/{text_letter}/replay"), json!({"content": ""})).await;
    assert_eq!((status, body["error"].as_str()), (422, Some("CONTENT_EMPTY")));
    let (status, body) =
        post(&app, &format!("/api/v1/dead-letters/{text_letter}/replay"), json!({"content": "{not json, but text"}))
            .await;
    assert_eq!(status, 200, "a text step takes text: {body}");

    let discard_won = a.0 == 200;
    assert_eq!(audit_count(&db, "alice", "dead_letter.replay").await, 3 + i64::from(!discard_won));
    assert_eq!(audit_count(&db, "alice", "dead_letter.discard").await, i64::from(discard_won));
}

#[tokio::test]
async fn bulk_actions_rerun_the_filter_cap_the_count_and_report() {
    let db = TestDb::new().await;
    let app = app(&db, "[routes]\nTICKET = \"echo\"\n");
    for _ in 0..5 {
        dead_lettered(&db, "TICKET", "{broken", "CONTENT_INVALID_JSON", "content is not valid JSON").await;
    }
    for _ in 0..2 {
        dead_lettered(&db, "INVOICE", "{}", "NO_ROUTE", "no route").await;
    }
    let (status, body) =
        post(&app, "/api/v1/dead-letters/bulk-replay", json!({"error_code": "CONTENT_INVALID_JSON", "limit": 2})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!((body["matched"].as_i64(), body["limit"].as_i64(), body["left"].as_i64()), (Some(5), Some(2), Some(3)));
    assert_eq!(body["done"].as_array().unwrap().len(), 2);
    assert_eq!(count(&db.pool, "SELECT count(*) FROM work_items WHERE status = 'QUEUED'").await, 2);

    let (status, body) = post(&app, "/api/v1/dead-letters/bulk-discard", json!({"reason": "noise"})).await;
    assert_eq!((status, body["error"].as_str()), (422, Some("FILTER_REQUIRED")), "{body}");
    let (status, body) = post(&app, "/api/v1/dead-letters/bulk-discard", json!({"type": "INVOICE"})).await;
    assert_eq!((status, body["error"].as_str()), (422, Some("REASON_REQUIRED")), "{body}");
    let (status, body) =
        post(&app, "/api/v1/dead-letters/bulk-discard", json!({"type": "INVOICE", "reason": "retired type"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!((body["matched"].as_i64(), body["left"].as_i64()), (Some(2), Some(0)));
    let (status, body) = post(&app, "/api/v1/dead-letters/bulk-replay", json!({"all": true, "limit": 100000})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!((body["done"].as_array().unwrap().len(), body["limit"].as_i64()), (3, Some(1000)), "capped: {body}");
    let (status, body) = post(&app, "/api/v1/dead-letters/bulk-replay", json!({"all": true})).await;
    assert_eq!((status, body["matched"].as_i64()), (200, Some(0)), "nothing left: {body}");
    let (status, _) = post(&app, "/api/v1/dead-letters/bulk-replay", json!({"error_code": "X", "reason": "r"})).await;
    assert_eq!(status, 400);
    let (status, _) =
        call(&app, Method::POST, "/api/v1/dead-letters/bulk-replay", Some(READ), Some(json!({"all": true}))).await;
    assert_eq!(status, 403);

    assert_eq!(audit_count(&db, "alice", "dead_letter.replay").await, 5);
    assert_eq!(audit_count(&db, "alice", "dead_letter.discard").await, 2);
    assert_eq!(audit_count(&db, "alice", "dead_letter.bulk_replay").await, 3);
    assert_eq!(audit_count(&db, "alice", "dead_letter.bulk_discard").await, 1);
}

#[tokio::test]
async fn approvals_and_escalations_are_decided_once() {
    let db = TestDb::new().await;
    let app = app(&db, "[routes]\nTICKET = \"echo\"\n");
    let first = held(&db).await;
    let second = held(&db).await;
    let (status, body) = get(&app, "/api/v1/approvals").await;
    assert_eq!(status, 200, "{body}");
    let inbox = body["approvals"].as_array().unwrap();
    assert_eq!(inbox.len(), 2);
    assert_eq!(inbox[0]["id"], first.to_string(), "oldest first");
    assert_eq!(inbox[0]["policy_reason"], "json_schema failed");
    assert_eq!(inbox[0]["evals"][0]["passed"], false);
    assert_eq!(inbox[0]["output"]["answer"], "<b>yes</b>");
    let (_, body) = get(&app, "/api/v1/approvals?limit=1").await;
    let next = body["next_cursor"].as_str().unwrap().to_owned();
    let (_, body) = get(&app, &format!("/api/v1/approvals?limit=1&cursor={next}")).await;
    assert_eq!(body["approvals"][0]["id"], second.to_string());

    let (status, body) = post(&app, &format!("/api/v1/approvals/{first}/approve"), json!({"reason": "fine"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["item"]["status"], "COMPLETED");
    assert_eq!(item_status(&db.pool, first).await, "COMPLETED");
    let (status, body) = post(&app, &format!("/api/v1/approvals/{first}/reject"), json!({})).await;
    assert_eq!(status, 409, "{body}");
    let (status, body) = post(&app, &format!("/api/v1/approvals/{second}/reject"), json!({"reason": "wrong"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["item"]["status"], "QUEUED", "retried while the budget lasts: {body}");
    let approver: String =
        sqlx::query_scalar("SELECT approver_id FROM approval_events WHERE work_item_id = $1 AND source = 'HUMAN'")
            .bind(second)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(approver, "alice");
    assert_eq!(audit_count(&db, "alice", "approval.approve").await, 1);
    assert_eq!(audit_count(&db, "alice", "approval.reject").await, 1);

    let item = insert_item(&db.pool, insert_order(&db.pool, "MEDIUM").await, "TICKET", "{}").await;
    let esc = escalation(&db, item).await;
    let (status, body) = get(&app, "/api/v1/escalations").await;
    assert_eq!(status, 200);
    assert_eq!(body["escalations"][0]["id"], esc.to_string());
    let (status, body) = get(&app, &format!("/api/v1/escalations/{esc}")).await;
    assert_eq!((status, body["escalation"]["status"].as_str()), (200, Some("OPEN")));
    let (status, body) = post(&app, &format!("/api/v1/escalations/{esc}/ack"), json!({"reason": "on it"})).await;
    assert_eq!((status, body["escalation"]["acknowledged_by"].as_str()), (200, Some("alice")), "{body}");
    let (status, body) = post(&app, &format!("/api/v1/escalations/{esc}/ack"), json!({})).await;
    assert_eq!(status, 409, "{body}");
    let (status, body) = post(&app, &format!("/api/v1/escalations/{esc}/resolve"), json!({})).await;
    assert_eq!((status, body["escalation"]["status"].as_str()), (200, Some("RESOLVED")));
    let (status, _) = post(&app, &format!("/api/v1/escalations/{esc}/resolve"), json!({})).await;
    assert_eq!(status, 409);
    let (_, body) = get(&app, "/api/v1/escalations").await;
    assert!(body["escalations"].as_array().unwrap().is_empty());
    let (_, body) = get(&app, "/api/v1/escalations?all=true").await;
    assert_eq!(body["escalations"].as_array().unwrap().len(), 1);
    assert_eq!(audit_count(&db, "alice", "escalation.acknowledge").await, 1);
    assert_eq!(audit_count(&db, "alice", "escalation.resolve").await, 1);
}

/// A running item cancelled through the engine's own admin server: CANCELLED at once, its
/// attempt recorded as interrupted, and the agent's answer, when it comes, changes nothing.
#[tokio::test]
async fn cancelling_a_running_item_fences_out_its_result_and_the_order_rolls_up() {
    let db = TestDb::new().await;
    let agent = TestAgent::start(|_| ok_json(json!({"done": true})).0.pipe_delay(Duration::from_millis(2500))).await;
    let engine = db
        .engine(&format!(
            "{}{}[worker]\nlease = \"3s\"\n[routes]\nTICKET = \"slow\"\n",
            tokens_toml(),
            agent.config("slow", "10s")
        ))
        .await;
    let base = format!("http://{}", engine.admin_addr().unwrap());
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let send = |path: String, token: &'static str, body: Value| {
        let request = client
            .post(format!("{base}{path}"))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body.to_string());
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (status, serde_json::from_str::<Value>(&response.text().await.unwrap()).unwrap_or(Value::Null))
        }
    };
    let order = insert_order(&db.pool, "MEDIUM").await;
    let running = insert_item(&db.pool, order, "TICKET", "{}").await;
    // Delayed in its INSERT: a later UPDATE could lose the race with the running engine's claim.
    let later: Uuid = sqlx::query_scalar(
        "INSERT INTO work_items (work_order_id, type, content, run_at)
         VALUES ($1, 'TICKET', '{}', now() + interval '1 hour') RETURNING id",
    )
    .bind(order)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    wait_for_status(&db.pool, running, "PROCESSING").await;
    let (status, body) = send(format!("/api/v1/items/{running}/cancel"), READ, json!({})).await;
    assert_eq!(status, 403, "{body}");
    let (status, body) =
        send(format!("/api/v1/items/{running}/cancel"), OPERATE, json!({"reason": "customer withdrew"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["cancelled"][0]["was"], "PROCESSING");
    assert_eq!(body["cancelled"][0]["interrupted_attempt"], 1);
    assert_eq!(item_status(&db.pool, running).await, "CANCELLED");
    assert_eq!(attempts(&db.pool, running).await, vec![(1, "INTERRUPTED".into(), Some("CANCELLED".into()))]);
    assert_eq!(order_status(&db.pool, order).await, "PROCESSING", "another item is still queued");

    // The agent answers after 2.5 s; the heartbeat (every 1 s) may stop the run first. Either
    // way nothing of that execution is written.
    wait_until("the agent to have been called", Duration::from_secs(10), || async {
        agent.executions_of(running) == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(3000)).await;
    assert_eq!(item_status(&db.pool, running).await, "CANCELLED");
    assert_eq!(attempts(&db.pool, running).await.len(), 1, "no attempt row from the stale result");
    let metrics = client.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .map_or(0.0, |v| v.parse().unwrap())
    };
    assert!(
        value("orderly_stale_writes_total") + value("orderly_leases_lost_total") >= 1.0,
        "the execution was fenced out (stale write or lost lease): {metrics}"
    );

    let (status, body) = send(format!("/api/v1/items/{running}/cancel"), OPERATE, json!({})).await;
    assert_eq!(status, 409, "{body}");
    assert!(body["message"].as_str().unwrap().contains("CANCELLED"), "{body}");
    let (status, body) = send(format!("/api/v1/orders/{order}/cancel"), OPERATE, json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["cancelled"][0]["work_item_id"], later.to_string());
    assert_eq!(body["cancelled"][0]["was"], "QUEUED");
    assert_eq!(body["order_status"], "CANCELLED", "every item cancelled, none completed: {body}");
    let (status, _) = send(format!("/api/v1/orders/{order}/cancel"), OPERATE, json!({})).await;
    assert_eq!(status, 409, "nothing left to cancel");
    let (status, _) = send(format!("/api/v1/orders/{}/cancel", Uuid::new_v4()), OPERATE, json!({})).await;
    assert_eq!(status, 404);
    stop(engine).await;
    assert_eq!(audit_count(&db, "alice", "work_item.cancel").await, 2);
    assert_eq!(audit_count(&db, "alice", "work_order.cancel").await, 1);
}

/// Held items and the CLI: `orderly cancel`.
#[tokio::test]
async fn held_items_cancel_and_the_cli_cancels_too() {
    let db = TestDb::new().await;
    let app = app(&db, "[routes]\nTICKET = \"echo\"\n");
    let item = held(&db).await;
    let (status, body) = post(&app, &format!("/api/v1/items/{item}/cancel"), json!({})).await;
    assert_eq!((status, body["cancelled"][0]["was"].as_str()), (200, Some("AWAITING_APPROVAL")), "{body}");
    assert_eq!(item_status(&db.pool, item).await, "CANCELLED");
    assert_eq!(attempts(&db.pool, item).await.len(), 1, "the held attempt stays as it was");

    let order = insert_order(&db.pool, "MEDIUM").await;
    let queued = insert_item(&db.pool, order, "TICKET", "{}").await;
    let out = crate::cli::orderly(&db.url, &["cancel", &queued.to_string(), "--actor", "carol", "--reason", "dup"]);
    assert!(out.status.success(), "{}", crate::cli::text(&out));
    assert!(crate::cli::text(&out).contains("cancelled: work item"), "{}", crate::cli::text(&out));
    assert_eq!(item_status(&db.pool, queued).await, "CANCELLED");
    let out = crate::cli::orderly(&db.url, &["cancel", &queued.to_string()]);
    assert!(!out.status.success());
    assert!(crate::cli::text(&out).contains("is CANCELLED"), "{}", crate::cli::text(&out));
    let order = insert_order(&db.pool, "MEDIUM").await;
    insert_item(&db.pool, order, "TICKET", "{}").await;
    insert_item(&db.pool, order, "TICKET", "{}").await;
    let out = crate::cli::orderly(&db.url, &["cancel", "--order", &order.to_string(), "--actor", "carol"]);
    assert!(out.status.success(), "{}", crate::cli::text(&out));
    assert!(crate::cli::text(&out).contains(&format!("work order {order} is CANCELLED")), "{}", crate::cli::text(&out));
    let out = crate::cli::orderly(&db.url, &["cancel"]);
    assert_eq!(out.status.code(), Some(2), "an item or --order is required");
    assert_eq!(audit_count(&db, "carol", "work_item.cancel").await, 3);
}

/// `orderly admin-token` prints a token and the entry holding its SHA-256, which loads.
#[tokio::test]
async fn admin_token_prints_a_token_and_an_entry_that_loads() {
    let out =
        crate::cli::orderly("postgres://postgres@127.0.0.1:1/x", &["admin-token", "oncall", "--scope", "operate"]);
    let shown = crate::cli::text(&out);
    assert!(out.status.success(), "{shown}");
    let token = shown.split("keep it secret): ").nth(1).unwrap().lines().next().unwrap().trim();
    assert!(token.starts_with("orderly_") && token.len() == 72, "{shown}");
    let entry = &shown[shown.find("[[admin.tokens]]").unwrap()..shown.find("scope = \"operate\"").unwrap() + 17];
    assert!(entry.contains(&sha256_hex(token)), "{shown}");
    let settings = orderly::config::Settings::from_toml_over_defaults(entry).unwrap();
    let tokens = orderly::admin::auth::Tokens::new(&settings.admin.tokens);
    assert_eq!(tokens.verify(token).map(|i| i.name), Some("oncall".to_owned()));
    let out = crate::cli::orderly("postgres://postgres@127.0.0.1:1/x", &["admin-token", "two words"]);
    assert!(!out.status.success() && crate::cli::text(&out).contains("must be 1 to 64 characters"));
}

/// `pipe_delay`: an answer with a delay.
trait PipeDelay {
    fn pipe_delay(self, delay: Duration) -> (Answer, Duration);
}

impl PipeDelay for Answer {
    fn pipe_delay(self, delay: Duration) -> (Answer, Duration) {
        (self, delay)
    }
}

/// Input the database cannot hold or compute with is the caller's to fix (400), never a 500:
/// a NUL character in a filter, a reason, a bulk filter or replayed text content; an age past
/// any date; a forged cursor with an absurd timestamp.
#[tokio::test]
async fn values_the_database_refuses_are_400s_not_500s() {
    let db = TestDb::new().await;
    let app = app(&db, "");
    let (_, letter) = dead_lettered(&db, "TICKET", "{}", "AGENT_ERROR", "no").await;
    let forged = {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(format!("9223372036854775807:{}", Uuid::new_v4()).as_bytes())
    };
    for path in [
        "/api/v1/items?type=%00".to_owned(),
        "/api/v1/items?tenant=%00".to_owned(),
        "/api/v1/dead-letters?error_code=A%00B".to_owned(),
        "/api/v1/dead-letters?older_than=200000000y".to_owned(),
        format!("/api/v1/items?cursor={forged}"),
        format!("/api/v1/dead-letters?cursor={forged}"),
    ] {
        let (status, body) = get(&app, &path).await;
        assert!((400..500).contains(&status), "GET {path}: {status} {body}");
    }
    for (path, body) in [
        (format!("/api/v1/dead-letters/{letter}/discard"), json!({"reason": "bad\u{0}reason"})),
        ("/api/v1/dead-letters/bulk-discard".to_owned(), json!({"error_code": "X\u{0}", "reason": "r"})),
        ("/api/v1/dead-letters/bulk-replay".to_owned(), json!({"older_than": "200000000y"})),
        (format!("/api/v1/dead-letters/{letter}/replay"), json!({"content": "text\u{0}"})),
    ] {
        let (status, answer) = post(&app, &path, body.clone()).await;
        assert!((400..500).contains(&status), "POST {path} {body}: {status} {answer}");
    }
    // Nothing was changed by any of them.
    let open: i64 = sqlx::query_scalar("SELECT count(*) FROM dead_letters WHERE processed_at IS NULL")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(open, 1);
}
