//! Results the database refuses, reads that fail for a while, panicking agents: one item's
//! trouble never holds up another, a transient failure is never made permanent, and the
//! engine still drains on shutdown.

use crate::common::*;
use orderly::agent::{Agent, AgentError, AgentRequest, AgentSpec, BoxFuture, Executor, Registry};
use orderly::daemon::Engine;
use orderly::model::ConfigError;
use orderly::model::ErrorCode;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// A plug-in that answers what the item's content asks for: the hostile answers an agent
/// (HTTP or plug-in) can give.
struct Hostile;

impl Executor for Hostile {
    fn execute<'a>(&'a self, request: &'a AgentRequest) -> BoxFuture<'a, Result<Value, AgentError>> {
        Box::pin(async move {
            match request.work_item.content["mode"].as_str().unwrap_or_default() {
                "nul_value" => Ok(json!({ "s": "before\u{0}after" })),
                "nul_key" => Ok(json!({ "k\u{0}ey": 1 })),
                "huge" => Ok(json!({ "blob": "x".repeat(200_000) })),
                "panic" => panic!("the plug-in has a bug"),
                "nul_error" => Err(AgentError::permanent(ErrorCode::AgentError, "broken\u{0}message")),
                _ => Ok(json!({ "ok": true })),
            }
        })
    }
}

fn hostile_factory(_spec: &AgentSpec<'_>) -> Result<Agent, ConfigError> {
    Ok(Agent { executor: Arc::new(Hostile), timeout: Duration::from_secs(10) })
}

async fn engine(db: &TestDb, toml: &str) -> Engine {
    let mut registry = Registry::builtin();
    registry.register("hostile", hostile_factory);
    Engine::start(db.settings(toml), &registry, None).await.expect("engine starts")
}

/// The dead letter's error message of an item.
async fn dead_letter_error(db: &TestDb, id: Uuid) -> String {
    sqlx::query_scalar("SELECT error FROM dead_letters WHERE work_item_id = $1")
        .bind(id)
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn refused_results_are_isolated_and_the_rest_of_each_batch_is_written() {
    let db = TestDb::new().await;
    sqlx::raw_sql("ALTER TYPE work_item_type ADD VALUE 'CONTRACT'").execute(&db.pool).await.unwrap();
    let order = insert_order(&db.pool, "MEDIUM").await;
    // (label, type, content, expected final status, expected dead-letter code)
    let corpus: Vec<(&str, &str, String, &str, Option<&str>)> = vec![
        // Valid JSON the daemon parses, whose echo `jsonb` cannot hold.
        ("NUL escape through echo", "TICKET", r#"{"s":"a\u0000b"}"#.into(), "FAILED", Some("RESULT_REFUSED")),
        ("NUL escape in a key", "TICKET", r#"{"a\u0000":1}"#.into(), "FAILED", Some("RESULT_REFUSED")),
        ("lone surrogate", "TICKET", r#"{"s":"\ud800"}"#.into(), "FAILED", Some("CONTENT_INVALID_JSON")),
        ("number past f64", "TICKET", r#"{"n":1e400}"#.into(), "FAILED", Some("CONTENT_INVALID_JSON")),
        ("30-digit integer", "TICKET", r#"{"n":123456789012345678901234567890}"#.into(), "COMPLETED", None),
        ("nested 120 deep", "TICKET", format!("{}{}", "[".repeat(120), "]".repeat(120)), "COMPLETED", None),
        ("plug-in NUL value", "CONTRACT", r#"{"mode":"nul_value"}"#.into(), "FAILED", Some("RESULT_REFUSED")),
        ("plug-in NUL key", "CONTRACT", r#"{"mode":"nul_key"}"#.into(), "FAILED", Some("RESULT_REFUSED")),
        ("plug-in oversized output", "CONTRACT", r#"{"mode":"huge"}"#.into(), "FAILED", Some("OUTPUT_TOO_LARGE")),
        ("plug-in panic", "CONTRACT", r#"{"mode":"panic"}"#.into(), "FAILED", Some("AGENT_PANICKED")),
        ("plug-in NUL in its error", "CONTRACT", r#"{"mode":"nul_error"}"#.into(), "FAILED", Some("AGENT_ERROR")),
    ];
    // Bad items among good ones, all waiting before the engine starts, so they share claim
    // and completion batches.
    let mut bad = Vec::new();
    let mut good = Vec::new();
    for round in 0..3 {
        for (label, item_type, content, status, code) in &corpus {
            bad.push((*label, insert_item(&db.pool, order, item_type, content).await, *status, *code));
            for n in 0..10 {
                let content = format!(r#"{{"round":{round},"n":{n}}}"#);
                good.push(insert_item(&db.pool, order, if n % 2 == 0 { "TICKET" } else { "CONTRACT" }, &content).await);
            }
        }
    }
    // An order whose metadata `jsonb` holds but no JSON parser of f64 can: its item fails
    // alone, the claim of its batch does not.
    let odd_order: Uuid = sqlx::query_scalar(
        "INSERT INTO work_orders (workflow_id, tenant_id, created_by, metadata)
         VALUES ('default', gen_random_uuid(), gen_random_uuid(), '{\"n\": 1e400}') RETURNING id",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let odd_item = insert_item(&db.pool, odd_order, "TICKET", "{}").await;
    let good_in_odd_batch = insert_item(&db.pool, order, "TICKET", "{}").await;

    let engine = engine(
        &db,
        "[agents.plugin]\nkind = \"hostile\"\n[routes]\nTICKET = \"echo\"\nCONTRACT = \"plugin\"\n\
         [limits]\nmax_output_bytes = 65536\n[retry]\nmax_attempts = 2\n",
    )
    .await;
    wait_quiet(&db.pool).await;
    // Shutdown drains: it must finish, well within the grace period plus its bound.
    tokio::time::timeout(Duration::from_secs(45), stop(engine)).await.expect("the engine drains on shutdown");

    for id in good.iter().chain([&good_in_odd_batch]) {
        assert_eq!(item_status(&db.pool, *id).await, "COMPLETED");
    }
    for (label, id, status, code) in bad {
        assert_eq!(item_status(&db.pool, id).await, status, "{label}");
        let letter = dead_letter(&db.pool, id).await;
        assert_eq!(letter.as_ref().map(|(c, _, _)| c.as_str()), code, "{label}");
        if code == Some("RESULT_REFUSED") {
            let attempts = attempts(&db.pool, id).await;
            assert_eq!(attempts.len(), 1, "{label}: a refusal is not retried");
            assert_eq!(attempts[0].1, "FAILED", "{label}");
            let error = dead_letter_error(&db, id).await;
            assert!(error.contains("refused") && error.contains("22P05"), "{label}: {error}");
            assert_eq!(letter.unwrap().1, "PERMANENT", "{label}");
        }
        if label == "plug-in NUL in its error" {
            let error = dead_letter_error(&db, id).await;
            assert_eq!(error, "broken\u{FFFD}message", "{label}");
        }
        if label == "plug-in panic" {
            let tries = attempts(&db.pool, id).await;
            assert_eq!(tries.len(), 2, "a panic fails the attempt and is retried within the budget");
        }
    }
    assert_eq!(item_status(&db.pool, odd_item).await, "FAILED");
    assert_eq!(dead_letter(&db.pool, odd_item).await.unwrap().0, "CONTEXT_INVALID");
}

#[tokio::test]
async fn a_stale_and_a_fresh_result_for_one_item_share_a_batch_without_mixing() {
    use orderly::model::{
        ApprovalRecord, AttemptStatus, Completion, DeadLetterReason, Decision, ErrorInfo, EvalRecord, NextState,
    };
    let db = TestDb::new().await;
    let order = insert_order(&db.pool, "MEDIUM").await;
    let item = insert_item(&db.pool, order, "TICKET", "{}").await;
    // The item was claimed twice: attempt 1's lease was rescued and attempt 2 holds it now.
    sqlx::query(
        "UPDATE work_items SET status = 'PROCESSING', attempt = 2, claimed_at = now(),
                lease_expires_at = now() + interval '1 minute', locked_by = 'w' WHERE id = $1",
    )
    .bind(item)
    .execute(&db.pool)
    .await
    .unwrap();
    let result = |attempt: i32, next: NextState| Completion {
        item_id: item,
        order_id: order,
        tenant_id: Uuid::nil(),
        item_type: "TICKET".into(),
        attempt,
        attempt_id: Uuid::now_v7(),
        attempts_used: attempt,
        agent: "echo".into(),
        worker_id: "w".into(),
        started_at: chrono::Utc::now(),
        duration_ms: 1,
        input: json!({}),
        attempt_status: if next == NextState::Completed { AttemptStatus::Completed } else { AttemptStatus::Failed },
        output: Some(json!({ "attempt": attempt })),
        usage: None,
        report: Default::default(),
        error: (next != NextState::Completed)
            .then(|| ErrorInfo { code: ErrorCode::AgentError, message: "late failure".into() }),
        evals: vec![EvalRecord { evaluation_type: "json_schema".into(), score: 1.0, passed: true, metrics: json!({}) }],
        approval: Some(ApprovalRecord {
            approver_id: "policy:approve_all".into(),
            decision: Decision::Approved,
            reason: None,
            policy_version: "approve_all/1".into(),
        }),
        next,
        review: None,
    };
    let stale = result(1, NextState::DeadLetter { reason: DeadLetterReason::Permanent });
    let fresh = result(2, NextState::Completed);
    let report = orderly::db::queue::complete_batch(&db.pool, &[stale.clone(), fresh.clone()]).await.unwrap();
    assert_eq!(report.stale, vec![(item, 1)]);
    assert_eq!(report.written, vec![(item, 2)]);
    assert_eq!(item_status(&db.pool, item).await, "COMPLETED");
    let ids = |sql: &'static str| {
        let pool = db.pool.clone();
        async move { sqlx::query_scalar::<_, Uuid>(sql).bind(item).fetch_all(&pool).await.unwrap() }
    };
    assert_eq!(ids("SELECT id FROM attempts WHERE work_item_id = $1").await, vec![fresh.attempt_id]);
    assert_eq!(ids("SELECT attempt_id FROM eval_results WHERE work_item_id = $1").await, vec![fresh.attempt_id]);
    assert_eq!(ids("SELECT attempt_id FROM approval_events WHERE work_item_id = $1").await, vec![fresh.attempt_id]);
    assert!(ids("SELECT id FROM dead_letters WHERE work_item_id = $1").await.is_empty(), "the stale dead letter");
}

/// Renames a table away and back: every read of it fails meanwhile with an error that is
/// not about any value (undefined table), as a read during a restart or a pool timeout does.
async fn hide_table(db: &TestDb, table: &str, hidden: bool) {
    let (from, to) = if hidden {
        (table.to_owned(), format!("{table}_hidden"))
    } else {
        (format!("{table}_hidden"), table.to_owned())
    };
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("ALTER TABLE {from} RENAME TO {to}"))).execute(&db.pool).await.unwrap();
}

#[tokio::test]
async fn failed_reads_before_a_run_defer_it_and_never_dead_letter_it() {
    let db = TestDb::new().await;
    insert_template(&db.pool, "routed", json!({"steps": {"TICKET": {"agent": "echo"}}})).await;
    for table in ["workflow_templates", "schemas", "mem_docs"] {
        let order = insert_order_with_workflow(&db.pool, "routed").await;
        hide_table(&db, table, true).await;
        let item = insert_item(&db.pool, order, "TICKET", r#"{"subject":"x"}"#).await;
        let engine = db.engine("").await;
        // At least one run is deferred while the table is away...
        wait_until(&format!("a deferral while {table} is unreadable"), Duration::from_secs(20), || async {
            attempts(&db.pool, item).await.iter().any(|a| a.2.as_deref() == Some("DATABASE_UNAVAILABLE"))
        })
        .await;
        assert_eq!(dead_letter(&db.pool, item).await, None, "{table}: never dead-lettered for it");
        hide_table(&db, table, false).await;
        // ...and the item completes once it is back, with none of the deferrals counted.
        wait_for_status(&db.pool, item, "COMPLETED").await;
        stop(engine).await;
        let tries = attempts(&db.pool, item).await;
        assert!(
            tries[..tries.len() - 1]
                .iter()
                .all(|a| a.1 == "INTERRUPTED" && a.2.as_deref() == Some("DATABASE_UNAVAILABLE")),
            "{table}: {tries:?}"
        );
        assert_eq!(tries.last().unwrap().1, "COMPLETED", "{table}");
    }
}
