//! Evaluation and approval in the pipeline: eval_results per evaluator and attempt, one
//! policy decision per attempt, and what each decision does to the item.

use crate::cli::{orderly, text};
use crate::common::*;
use orderly::db::OpsError;
use orderly::model::{Decision, NextState};
use serde_json::json;

async fn add_ticket_schema(db: &TestDb) {
    let schema = json!({
        "type": "object",
        "required": ["echo"],
        "properties": {"echo": {"type": "object", "required": ["subject"],
                                "properties": {"subject": {"type": "string"}}}}
    });
    sqlx::query("INSERT INTO schemas (name, version, document_type, schema_definition) VALUES ('ticket-output', '1', 'TICKET', $1)")
        .bind(schema)
        .execute(&db.pool)
        .await
        .unwrap();
}

async fn add_template(db: &TestDb, name: &str, policy: &str) {
    insert_template(&db.pool, name, json!({"steps": {"TICKET": {"agent": "echo", "approval": policy}}})).await;
}

#[tokio::test]
async fn schema_evaluation_is_recorded_and_the_default_policy_approves() {
    let db = TestDb::new().await;
    add_ticket_schema(&db).await;
    let order = insert_order(&db.pool, "MEDIUM").await;
    let valid = insert_item(&db.pool, order, "TICKET", r#"{"subject":"printer"}"#).await;
    let invalid = insert_item(&db.pool, order, "TICKET", r#"{"subject":42}"#).await;
    let engine = db.engine("[routes]\nTICKET = \"echo\"\n").await;
    wait_quiet(&db.pool).await;
    stop(engine).await;
    for (item, passed) in [(valid, true), (invalid, false)] {
        assert_eq!(item_status(&db.pool, item).await, "COMPLETED", "approve_all completes even failed evals");
        let (kind, score, ok, metrics): (String, f64, bool, serde_json::Value) = sqlx::query_as(
            "SELECT evaluation_type, score::float8, passed, metrics FROM eval_results WHERE work_item_id = $1",
        )
        .bind(item)
        .fetch_one(&db.pool)
        .await
        .unwrap();
        assert_eq!(kind, "json_schema");
        assert_eq!(ok, passed);
        assert_eq!(score, if passed { 1.0 } else { 0.0 });
        assert_eq!(metrics["schema"], "ticket-output");
        assert_eq!(metrics["error_count"], if passed { 0 } else { 1 });
    }
    assert_eq!(count(&db.pool, "SELECT count(*) FROM approval_events WHERE decision = 'APPROVED'").await, 2);
}

#[tokio::test]
async fn rejection_fails_the_attempt_and_dead_letters_after_retries() {
    let db = TestDb::new().await;
    add_ticket_schema(&db).await;
    add_template(&db, "strict", "require_passing_evals").await;
    let order = insert_order_with_workflow(&db.pool, "strict").await;
    let good = insert_item(&db.pool, order, "TICKET", r#"{"subject":"ok"}"#).await;
    let bad = insert_item(&db.pool, order, "TICKET", r#"{"subject":false}"#).await;
    let engine = db.engine("[retry]\nmax_attempts = 2\n").await;
    wait_quiet(&db.pool).await;
    stop(engine).await;
    assert_eq!(item_status(&db.pool, good).await, "COMPLETED");
    assert_eq!(dead_letter(&db.pool, bad).await, Some(("APPROVAL_REJECTED".into(), "RETRIES_EXHAUSTED".into(), 2)));
    // One eval and one decision per attempt, each attempt FAILED with the rejection.
    assert_eq!(
        attempts(&db.pool, bad).await,
        vec![
            (1, "FAILED".into(), Some("APPROVAL_REJECTED".into())),
            (2, "FAILED".into(), Some("APPROVAL_REJECTED".into()))
        ]
    );
    let per_attempt: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT (SELECT count(*) FROM eval_results e WHERE e.attempt_id = a.id),
                (SELECT count(*) FROM approval_events p WHERE p.attempt_id = a.id AND p.decision = 'REJECTED')
         FROM attempts a WHERE a.work_item_id = $1",
    )
    .bind(bad)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(per_attempt, vec![(1, 1), (1, 1)]);
}

/// An order under a template that escalates failed evals, and a TICKET item whose output
/// fails the schema: the policy will hold it for a human.
async fn item_to_escalate(db: &TestDb) -> (uuid::Uuid, uuid::Uuid) {
    add_ticket_schema(db).await;
    add_template(db, "careful", "escalate_on_failure").await;
    let order = insert_order_with_workflow(&db.pool, "careful").await;
    (order, insert_item(&db.pool, order, "TICKET", r#"{"no_subject":true}"#).await)
}

/// [`item_to_escalate`], run by an engine until it is held, the engine then stopped.
async fn held_item(db: &TestDb) -> (uuid::Uuid, uuid::Uuid) {
    let (order, item) = item_to_escalate(db).await;
    let engine = db.engine("").await;
    wait_for_status(&db.pool, item, "AWAITING_APPROVAL").await;
    stop(engine).await;
    (order, item)
}

#[tokio::test]
async fn escalation_holds_the_item_for_a_human() {
    let db = TestDb::new().await;
    let (order, item) = held_item(&db).await;
    assert_eq!(attempts(&db.pool, item).await, vec![(1, "COMPLETED".into(), None)]);
    let decision: String = sqlx::query_scalar("SELECT decision::text FROM approval_events WHERE work_item_id = $1")
        .bind(item)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(decision, "ESCALATED");
    assert_eq!(order_status(&db.pool, order).await, "PROCESSING", "a held item keeps its order open");
    let held: serde_json::Value =
        sqlx::query_scalar("SELECT result FROM work_items WHERE id = $1").bind(item).fetch_one(&db.pool).await.unwrap();
    assert_eq!(held["echo"]["no_subject"], true, "the output waits with the item");
}

#[tokio::test]
async fn side_records_are_unique_per_attempt() {
    let db = TestDb::new().await;
    add_ticket_schema(&db).await;
    let order = insert_order(&db.pool, "MEDIUM").await;
    let item = insert_item(&db.pool, order, "TICKET", r#"{"subject":"x"}"#).await;
    let engine = db.engine("[routes]\nTICKET = \"echo\"\n").await;
    wait_for_status(&db.pool, item, "COMPLETED").await;
    stop(engine).await;
    let duplicate_eval = sqlx::query(
        "INSERT INTO eval_results (work_item_id, attempt_id, evaluation_type, score, metrics, passed)
         SELECT work_item_id, attempt_id, evaluation_type, score, metrics, passed FROM eval_results",
    )
    .execute(&db.pool)
    .await;
    assert!(duplicate_eval.is_err(), "one eval per evaluator and attempt");
    let duplicate_decision = sqlx::query(
        "INSERT INTO approval_events (work_item_id, attempt_id, approver_id, decision, policy_version)
         SELECT work_item_id, attempt_id, approver_id, decision, policy_version FROM approval_events",
    )
    .execute(&db.pool)
    .await;
    assert!(duplicate_decision.is_err(), "one policy decision per attempt");
}

/// The seed's ON DELETE CASCADE from work items to their attempts, evals and decisions holds
/// (migration 0008 keeps it with a statement trigger, not foreign keys): for items deleted
/// directly and for items deleted through their order, and only for those.
#[tokio::test]
async fn deleting_items_or_orders_deletes_their_records() {
    let db = TestDb::new().await;
    add_ticket_schema(&db).await;
    let orders = [insert_order(&db.pool, "MEDIUM").await, insert_order(&db.pool, "MEDIUM").await];
    let mut items = Vec::new();
    for order in orders {
        for _ in 0..3 {
            items.push(insert_item(&db.pool, order, "TICKET", r#"{"subject":"printer"}"#).await);
        }
    }
    let engine = db.engine("[routes]\nTICKET = \"echo\"\n").await;
    wait_quiet(&db.pool).await;
    stop(engine).await;
    let records = |ids: Vec<uuid::Uuid>| {
        let pool = db.pool.clone();
        async move {
            let mut counts = Vec::new();
            for table in ["attempts", "approval_events", "eval_results"] {
                let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                    "SELECT count(*) FROM {table} WHERE work_item_id = ANY($1)"
                )))
                .bind(&ids)
                .fetch_one(&pool)
                .await
                .unwrap();
                counts.push(n);
            }
            counts
        }
    };
    assert_eq!(records(items.clone()).await, [6, 6, 6], "each item has one attempt, eval and decision");

    // One item deleted by key, then the first order with its other items.
    sqlx::query("DELETE FROM work_items WHERE id = $1").bind(items[5]).execute(&db.pool).await.unwrap();
    assert_eq!(records(vec![items[5]]).await, [0, 0, 0]);
    sqlx::query("DELETE FROM work_orders WHERE id = $1").bind(orders[0]).execute(&db.pool).await.unwrap();
    assert_eq!(records(items[..3].to_vec()).await, [0, 0, 0]);
    assert_eq!(records(items[3..5].to_vec()).await, [2, 2, 2], "other items keep their records");
    assert_eq!(count(&db.pool, "SELECT count(*) FROM attempts").await, 2, "nothing else is left");
}

async fn approvals(db: &TestDb, item: uuid::Uuid) -> Vec<(i32, String, String, String)> {
    sqlx::query_as(
        "SELECT a.attempt_number, p.decision::text, p.source::text, p.approver_id
         FROM approval_events p JOIN attempts a ON a.id = p.attempt_id
         WHERE p.work_item_id = $1 ORDER BY a.attempt_number, p.\"timestamp\"",
    )
    .bind(item)
    .fetch_all(&db.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_human_approves_a_held_item_once() {
    let db = TestDb::new().await;
    let (order, item) = held_item(&db).await;

    let settings = std::sync::Arc::new(db.settings(""));
    let next = orderly::actions::decide_held(
        &db.pool,
        &settings,
        None,
        item,
        Decision::Approved,
        "dana",
        Some("looks right"),
        false,
    )
    .await
    .unwrap();
    assert_eq!(next, NextState::Completed);
    assert_eq!(item_status(&db.pool, item).await, "COMPLETED");
    assert_eq!(order_status(&db.pool, order).await, "COMPLETED", "the order rolls up");
    assert_eq!(attempts(&db.pool, item).await, vec![(1, "COMPLETED".into(), None)]);
    assert_eq!(
        approvals(&db, item).await,
        vec![
            (1, "ESCALATED".into(), "POLICY".into(), "policy:escalate_on_failure".into()),
            (1, "APPROVED".into(), "HUMAN".into(), "dana".into())
        ]
    );
    let (version, reason): (String, String) = sqlx::query_as(
        "SELECT policy_version, reason FROM approval_events WHERE work_item_id = $1 AND source = 'HUMAN'",
    )
    .bind(item)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!((version.as_str(), reason.as_str()), ("escalate_on_failure/1", "looks right"));
    let audited =
        count(&db.pool, "SELECT count(*) FROM audit_logs WHERE action = 'approval.approve' AND user_id = 'dana'").await;
    assert_eq!(audited, 1);

    // A second decision, and a decision on something not held, are refused and change nothing.
    let again =
        orderly::actions::decide_held(&db.pool, &settings, None, item, Decision::Rejected, "erin", None, false).await;
    assert!(matches!(again, Err(OpsError::Conflict(_))), "{again:?}");
    let unknown = orderly::actions::decide_held(
        &db.pool,
        &settings,
        None,
        uuid::Uuid::new_v4(),
        Decision::Approved,
        "erin",
        None,
        false,
    )
    .await;
    assert!(matches!(unknown, Err(OpsError::NotFound { .. })), "{unknown:?}");
    assert_eq!(approvals(&db, item).await.len(), 2);
}

#[tokio::test]
async fn a_human_rejection_retries_then_dead_letters() {
    let db = TestDb::new().await;
    let (order, item) = item_to_escalate(&db).await;
    let config = "[retry]\nmax_attempts = 2\n";
    let settings = std::sync::Arc::new(db.settings(config));
    let engine = db.engine(config).await;
    wait_for_status(&db.pool, item, "AWAITING_APPROVAL").await;

    // First rejection: the attempt fails, the item runs again after the backoff (and the
    // same output is held again).
    let next = orderly::actions::decide_held(
        &db.pool,
        &settings,
        None,
        item,
        Decision::Rejected,
        "dana",
        Some("wrong customer"),
        false,
    )
    .await;
    assert!(matches!(next, Ok(NextState::Retry { .. })), "{next:?}");
    wait_until("the second attempt to be held", std::time::Duration::from_secs(20), || async {
        attempts(&db.pool, item).await.len() == 2 && item_status(&db.pool, item).await == "AWAITING_APPROVAL"
    })
    .await;

    // Second rejection: the budget is spent, the item is dead-lettered.
    let next =
        orderly::actions::decide_held(&db.pool, &settings, None, item, Decision::Rejected, "dana", None, false).await;
    assert!(matches!(next, Ok(NextState::DeadLetter { .. })), "{next:?}");
    stop(engine).await;
    assert_eq!(item_status(&db.pool, item).await, "FAILED");
    assert_eq!(order_status(&db.pool, order).await, "FAILED");
    assert_eq!(
        attempts(&db.pool, item).await,
        vec![
            (1, "FAILED".into(), Some("APPROVAL_REJECTED".into())),
            (2, "FAILED".into(), Some("APPROVAL_REJECTED".into()))
        ],
        "a rejected attempt is FAILED, as the policy's own rejection records it"
    );
    assert_eq!(dead_letter(&db.pool, item).await, Some(("APPROVAL_REJECTED".into(), "RETRIES_EXHAUSTED".into(), 2)));
    let error: String = sqlx::query_scalar("SELECT error FROM attempts WHERE work_item_id = $1 AND attempt_number = 1")
        .bind(item)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(error, "rejected by dana: wrong customer");
    let decisions: Vec<String> = approvals(&db, item).await.into_iter().map(|a| format!("{}:{}", a.0, a.1)).collect();
    assert_eq!(decisions, ["1:ESCALATED", "1:REJECTED", "2:ESCALATED", "2:REJECTED"]);
}

#[tokio::test]
async fn approve_and_reject_on_the_command_line() {
    let db = TestDb::new().await;
    let (_, item) = held_item(&db).await;

    let id = item.to_string();
    let out = orderly(&db.url, &["approve", &id, "--actor", "frank", "--reason", "checked by hand"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains(&format!("approved: work item {id} is COMPLETED")), "{}", text(&out));
    assert_eq!(item_status(&db.pool, item).await, "COMPLETED");

    let out = orderly(&db.url, &["reject", &id]);
    assert!(!out.status.success(), "a decided item cannot be decided again");
    assert!(text(&out).contains("not AWAITING_APPROVAL"), "{}", text(&out));
    let out = orderly(&db.url, &["reject", &uuid::Uuid::new_v4().to_string()]);
    assert!(!out.status.success());
    assert!(text(&out).contains("not found"), "{}", text(&out));
}

/// Built-in assertions as evaluators and a thresholds policy: the mean of three checks passes
/// at 0.9, fails below 0.5, and sends what lies between to a person, with the score and
/// which check failed in the approval event and on the approvals inbox.
#[tokio::test]
async fn assertions_and_thresholds_pass_reject_and_send_the_grey_zone_to_a_person() {
    let db = TestDb::new().await;
    insert_template(
        &db.pool,
        "graded",
        json!({"steps": {"TICKET": {"agent": "echo", "max_attempts": 2,
            "evaluators": [
                {"name": "has_total", "pointer": "/echo/total", "exists": true},
                {"name": "paid", "version": "2", "pointer": "/echo/status", "equals": "paid"},
                {"name": "short_note", "pointer": "/echo/note", "max_length": 20}
            ],
            "approval": {"combine": "mean", "pass_at": 0.9, "fail_below": 0.5}}}}),
    )
    .await;
    let order = insert_order_with_workflow(&db.pool, "graded").await;
    let passes = insert_item(&db.pool, order, "TICKET", r#"{"total": 12, "status": "paid", "note": "ok"}"#).await;
    let grey = insert_item(&db.pool, order, "TICKET", r#"{"total": 12, "status": "due", "note": "ok"}"#).await;
    let fails = insert_item(&db.pool, order, "TICKET", r#"{"status": "due"}"#).await;
    let engine = db.engine("[routes]\nTICKET = \"echo\"\n").await;
    wait_for_status(&db.pool, passes, "COMPLETED").await;
    wait_for_status(&db.pool, grey, "AWAITING_APPROVAL").await;
    wait_for_status(&db.pool, fails, "FAILED").await;
    stop(engine).await;

    let decisions = |item| {
        let pool = db.pool.clone();
        async move {
            sqlx::query_as::<_, (String, String, String, String)>(
                "SELECT decision::text, approver_id, policy_version, coalesce(reason, '') FROM approval_events
                 WHERE work_item_id = $1 ORDER BY timestamp",
            )
            .bind(item)
            .fetch_all(&pool)
            .await
            .unwrap()
        }
    };
    let passed = decisions(passes).await;
    assert_eq!(passed.len(), 1);
    assert_eq!(
        (passed[0].0.as_str(), passed[0].1.as_str(), passed[0].2.as_str()),
        ("APPROVED", "policy:thresholds", "thresholds/1")
    );
    assert!(passed[0].3.contains("score 1.00") && passed[0].3.contains("at or above pass_at 0.90"), "{}", passed[0].3);

    let held = decisions(grey).await;
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].0, "ESCALATED");
    let reason = &held[0].3;
    assert!(reason.contains("score 0.67 (mean of has_total 1.00, paid 0.00 failed, short_note 1.00)"), "{reason}");
    assert!(reason.contains("a person decides"), "{reason}");

    let rejected = decisions(fails).await;
    assert_eq!(rejected.iter().map(|d| d.0.as_str()).collect::<Vec<_>>(), ["REJECTED", "REJECTED"], "each attempt");
    assert!(
        rejected[0].3.contains("score 0.00") && rejected[0].3.contains("below fail_below 0.50"),
        "{}",
        rejected[0].3
    );
    assert_eq!(dead_letter(&db.pool, fails).await.map(|d| d.0), Some("APPROVAL_REJECTED".to_owned()));

    // Each assertion is its own eval row, with its version and what it checked.
    let evals: Vec<(String, bool, serde_json::Value)> = sqlx::query_as(
        "SELECT evaluation_type, passed, metrics FROM eval_results WHERE work_item_id = $1 ORDER BY evaluation_type",
    )
    .bind(grey)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        evals.iter().map(|e| (e.0.as_str(), e.1)).collect::<Vec<_>>(),
        [("has_total", true), ("paid", false), ("short_note", true)]
    );
    assert_eq!(evals[1].2["version"], "2");
    assert_eq!(evals[1].2["check"], "/echo/status equals \"paid\"");
    let missing: serde_json::Value = sqlx::query_scalar(
        "SELECT metrics FROM eval_results WHERE work_item_id = $1 AND evaluation_type = 'short_note' LIMIT 1",
    )
    .bind(fails)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(missing["check"], "/echo/note length at most 20: nothing at /echo/note");

    // The person deciding sees the score and the failed check.
    let inbox = text(&orderly(&db.url, &["approvals", "list"]));
    println!("{inbox}");
    assert!(inbox.contains(&grey.to_string()) && inbox.contains("score 0.67 (mean of"), "{inbox}");
}
