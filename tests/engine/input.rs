//! Bad input inserted straight into the tables: no crash, the queue keeps flowing, and each
//! bad item ends with a stable error code and a dead letter at once.

use crate::common::*;

#[tokio::test]
async fn garbage_inserted_by_sql_becomes_stable_errors_and_the_queue_flows() {
    let db = TestDb::new().await;
    // An operator added a type but no route for it.
    sqlx::raw_sql("ALTER TYPE work_item_type ADD VALUE 'CONTRACT'").execute(&db.pool).await.unwrap();
    let order = insert_order(&db.pool, "MEDIUM").await;
    let five_mib = format!("{{\"blob\":\"{}\"}}", "x".repeat(5 * 1024 * 1024));
    let corpus: Vec<(&str, &str, String, Option<&str>)> = vec![
        ("empty", "TICKET", String::new(), Some("CONTENT_EMPTY")),
        ("whitespace", "TICKET", "  \n\t ".into(), Some("CONTENT_EMPTY")),
        ("five MiB", "TICKET", five_mib, Some("CONTENT_TOO_LARGE")),
        ("invalid JSON", "TICKET", "{\"subject\": ".into(), Some("CONTENT_INVALID_JSON")),
        ("plain text", "TICKET", "printer on fire".into(), Some("CONTENT_INVALID_JSON")),
        ("unrouted type", "CONTRACT", "{}".into(), Some("NO_ROUTE")),
        ("SQL as text", "TICKET", "'); DROP TABLE work_items; --".into(), Some("CONTENT_INVALID_JSON")),
        ("SQL inside JSON", "TICKET", r#"{"subject":"'); DROP TABLE work_items; --"}"#.into(), None),
        ("control characters as text", "TICKET", "\u{1}\u{7}\u{1b}[31m".into(), Some("CONTENT_INVALID_JSON")),
        ("control characters in JSON", "TICKET", r#"{"s":"\u0001\u0007\u001b[31m"}"#.into(), None),
        ("nested 100 deep", "TICKET", format!("{}{}", "[".repeat(100), "]".repeat(100)), None),
        // Nesting beyond 128 levels is refused (it would risk the parser's stack).
        (
            "nested 10,000 deep",
            "TICKET",
            format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)),
            Some("CONTENT_INVALID_JSON"),
        ),
    ];
    let mut items = Vec::new();
    for (label, item_type, content, code) in &corpus {
        items.push((*label, insert_item(&db.pool, order, item_type, content).await, *code));
    }
    // A type the database does not know is refused at INSERT: nothing half-enqueued.
    let refused = sqlx::query("INSERT INTO work_items (work_order_id, type, content) VALUES ($1, 'NOT_A_TYPE', '{}')")
        .bind(order)
        .execute(&db.pool)
        .await;
    assert!(refused.is_err(), "an unknown enum label is rejected by PostgreSQL");

    let engine = db.engine("[routes]\nTICKET = \"echo\"\n").await;
    // Good work enqueued after the garbage still flows.
    let later = insert_order(&db.pool, "LOW").await;
    let mut good = Vec::new();
    for n in 0..25 {
        good.push(insert_item(&db.pool, later, "TICKET", &format!(r#"{{"n":{n}}}"#)).await);
    }
    wait_quiet(&db.pool).await;
    stop(engine).await;

    for (label, item, code) in items {
        match code {
            None => assert_eq!(item_status(&db.pool, item).await, "COMPLETED", "{label}"),
            Some(code) => {
                assert_eq!(item_status(&db.pool, item).await, "FAILED", "{label}");
                let (got, reason, tries) =
                    dead_letter(&db.pool, item).await.unwrap_or_else(|| panic!("{label}: dead letter"));
                assert_eq!((got.as_str(), reason.as_str(), tries), (code, "PERMANENT", 1), "{label}");
                assert_eq!(attempts(&db.pool, item).await.len(), 1, "{label}: dead-lettered at once");
            }
        }
    }
    for item in good {
        assert_eq!(item_status(&db.pool, item).await, "COMPLETED");
    }
    assert_eq!(count(&db.pool, "SELECT count(*) FROM work_items").await, corpus.len() as i64 + 25, "nothing lost");
}

#[tokio::test]
async fn text_steps_pass_content_that_is_not_json() {
    let db = TestDb::new().await;
    insert_template(&db.pool, "plain", serde_json::json!({"steps": {"TICKET": {"agent": "echo", "content": "text"}}}))
        .await;
    let order = insert_order_with_workflow(&db.pool, "plain").await;
    let item = insert_item(&db.pool, order, "TICKET", "printer on fire").await;
    let engine = db.engine("").await;
    wait_for_status(&db.pool, item, "COMPLETED").await;
    stop(engine).await;
    let result: serde_json::Value =
        sqlx::query_scalar("SELECT result FROM work_items WHERE id = $1").bind(item).fetch_one(&db.pool).await.unwrap();
    assert_eq!(result["echo"], "printer on fire");
}

#[tokio::test]
async fn workflow_templates_override_routes_timeouts_and_attempts() {
    let db = TestDb::new().await;
    insert_template(
        &db.pool,
        "strict",
        serde_json::json!({"steps": {"TICKET": {"agent": "broken", "max_attempts": 2}}}),
    )
    .await;
    insert_template(&db.pool, "broken-template", serde_json::json!({"steps": {"TICKET": {"agnet": "echo"}}})).await;
    let config =
        "[agents.broken]\nkind = \"fail\"\nretryable = true\n[retry]\nmax_attempts = 5\n[routes]\nTICKET = \"echo\"\n";
    let strict = insert_order_with_workflow(&db.pool, "strict").await;
    let via_template = insert_item(&db.pool, strict, "TICKET", "{}").await;
    let plain = insert_order(&db.pool, "MEDIUM").await;
    let via_route = insert_item(&db.pool, plain, "TICKET", "{}").await;
    let bad = insert_order_with_workflow(&db.pool, "broken-template").await;
    let via_bad_template = insert_item(&db.pool, bad, "TICKET", "{}").await;
    let engine = db.engine(config).await;
    wait_quiet(&db.pool).await;
    stop(engine).await;
    assert_eq!(item_status(&db.pool, via_route).await, "COMPLETED");
    assert_eq!(dead_letter(&db.pool, via_template).await, Some(("AGENT_ERROR".into(), "RETRIES_EXHAUSTED".into(), 2)));
    assert_eq!(dead_letter(&db.pool, via_bad_template).await.unwrap().0, "WORKFLOW_INVALID");
}

#[tokio::test]
async fn mem_docs_reach_the_agent_as_context() {
    let db = TestDb::new().await;
    let agent = TestAgent::start(|envelope| ok_json(envelope["context"].clone())).await;
    let config = format!("{}[routes]\nTICKET = \"ctx\"\n", agent.config("ctx", "5s"));
    let order = insert_order(&db.pool, "MEDIUM").await;
    let item = insert_item(&db.pool, order, "TICKET", "{}").await;
    sqlx::query("INSERT INTO mem_docs (work_item_id, type, content) VALUES ($1, 'KNOWLEDGE', 'printers burn')")
        .bind(item)
        .execute(&db.pool)
        .await
        .unwrap();
    let engine = db.engine(&config).await;
    wait_for_status(&db.pool, item, "COMPLETED").await;
    stop(engine).await;
    let result: serde_json::Value =
        sqlx::query_scalar("SELECT result FROM work_items WHERE id = $1").bind(item).fetch_one(&db.pool).await.unwrap();
    assert_eq!(result["mem_docs"][0]["content"], "printers burn");
    assert_eq!(result["mem_docs"][0]["type"], "KNOWLEDGE");
}

/// Rows the engine could not move are refused at the INSERT (or UPDATE) that writes them,
/// instead of wedging a claim later: an attempt counter at the top of its range would make
/// every claim of its batch overflow, a PROCESSING row without a lease would never be rescued.
#[tokio::test]
async fn rows_the_engine_could_not_move_are_refused_at_insert() {
    let db = TestDb::new().await;
    let order = insert_order(&db.pool, "MEDIUM").await;
    for (what, columns, values) in [
        ("attempt at the top of its range", "attempt", "2147483647"),
        ("negative attempt", "attempt", "-1"),
        ("attempt base past the attempt", "attempt_base", "3"),
        ("negative rescues", "rescues", "-1"),
        ("PROCESSING without a lease", "status", "'PROCESSING'"),
        ("zero max_attempts", "max_attempts", "0"),
    ] {
        let sql = format!(
            "INSERT INTO work_items (work_order_id, type, content, {columns}) VALUES ($1, 'TICKET', '{{}}', {values})"
        );
        let refused = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(order).execute(&db.pool).await;
        let err = refused.expect_err(what);
        assert!(err.to_string().contains("check constraint"), "{what}: {err}");
    }
    let good = insert_item(&db.pool, order, "TICKET", "{}").await;
    let refused =
        sqlx::query("UPDATE work_items SET attempt = 2147483647 WHERE id = $1").bind(good).execute(&db.pool).await;
    assert!(refused.is_err(), "an UPDATE is checked too");
    let engine = db.engine("[routes]\nTICKET = \"echo\"\n").await;
    wait_for_status(&db.pool, good, "COMPLETED").await;
    stop(engine).await;
}
