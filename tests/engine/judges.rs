//! Agents as evaluators and the revise loop (docs/review.md): a scripted writer and a scripted
//! judge on 127.0.0.1. The output is recorded before it is judged, a judge's failure is
//! retried on the kept output (the writer does not run again), a rejection sends the output
//! back with the judge's reasons, and a person may send it back with a comment.

use crate::common::*;
use orderly::db::OpsError;
use orderly::model::{Decision, NextState};
use serde_json::{Value, json};
use sqlx::Row;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use uuid::Uuid;

/// The writer: answers `{"draft": N}` where N is the revision it was asked for (0 first),
/// and `"fixed": true` once a person's comment is in its feedback.
async fn writer() -> TestAgent {
    TestAgent::start(|envelope| {
        let revision = envelope["review"]["revision"].as_i64().unwrap_or(0);
        let by_person =
            envelope["review"]["feedback"].as_array().is_some_and(|f| f.iter().any(|x| x.get("person").is_some()));
        ok_json(
            json!({ "draft": revision, "fixed": by_person, "subject": envelope["work_item"]["content"]["subject"] }),
        )
    })
    .await
}

fn judge_answer(score: f64, reason: String) -> (Answer, Duration) {
    ok_json(
        json!({ "score": score, "reasons": [reason], "usage": {"model": "judge-small", "input_tokens": 100, "output_tokens": 10} }),
    )
}

async fn template(db: &TestDb, revise: Value) {
    insert_template(
        &db.pool,
        "judged",
        json!({"steps": {"TICKET": {
            "agent": "writer",
            "evaluators": [{"name": "critic", "version": "3", "agent": "judge", "criteria": "Is it polite?"}],
            "approval": {"combine": "min", "pass_at": 0.8, "fail_below": 0.5},
            "revise": revise,
        }}}),
    )
    .await;
}

fn config(writer: &TestAgent, judge: &TestAgent, judge_timeout: &str) -> String {
    format!(
        "{}{}[retry]\nmax_attempts = 5\n[prices.judge-small]\ninput_per_million = \"1.00\"\noutput_per_million = \"2.00\"\ncurrency = \"USD\"\n",
        writer.config("writer", "5s"),
        judge.config("judge", judge_timeout)
    )
}

/// (agent, status, error_code) of each attempt of an item, in order.
async fn attempt_rows(db: &TestDb, item: Uuid) -> Vec<(String, String, Option<String>)> {
    sqlx::query(
        "SELECT agent_id, status::text, error_code FROM attempts WHERE work_item_id = $1 ORDER BY attempt_number",
    )
    .bind(item)
    .fetch_all(&db.pool)
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .collect()
}

fn of(agent: &TestAgent, item: Uuid) -> Vec<Value> {
    agent.received.lock().unwrap().iter().filter(|r| r.item_id == item).map(|r| r.envelope.clone()).collect()
}

#[tokio::test]
async fn a_judge_scores_the_recorded_output_and_the_second_revision_passes() {
    let db = TestDb::new().await;
    template(&db, json!({"max": 3})).await;
    let writer = writer().await;
    let judge = TestAgent::start(|envelope| {
        let draft = envelope["evaluate"]["output"]["draft"].as_i64().unwrap_or(-1);
        if draft >= 2 {
            judge_answer(0.9, "polite enough".into())
        } else {
            judge_answer(0.3, format!("draft {draft} is curt"))
        }
    })
    .await;
    let order = insert_order_with_workflow(&db.pool, "judged").await;
    let item = insert_item(&db.pool, order, "TICKET", r#"{"subject":"refund"}"#).await;
    let engine = db.engine(&config(&writer, &judge, "5s")).await;
    wait_for_status(&db.pool, item, "COMPLETED").await;
    stop(engine).await;

    let result: Value =
        sqlx::query_scalar("SELECT result FROM work_items WHERE id = $1").bind(item).fetch_one(&db.pool).await.unwrap();
    assert_eq!(result["draft"], 2, "the approved output is the second revision's");
    // The writer ran three times (the first draft, two revisions), each output judged once.
    let asked = of(&writer, item);
    assert_eq!(asked.len(), 3);
    assert!(asked[0].get("review").is_none(), "a first run has no review: {}", asked[0]);
    assert_eq!(asked[1]["review"]["revision"], 1);
    assert_eq!(asked[1]["review"]["max_revisions"], 3);
    assert_eq!(asked[1]["review"]["previous_output"]["draft"], 0);
    let feedback = &asked[1]["review"]["feedback"][0];
    assert_eq!(feedback["evaluator"], "critic");
    assert_eq!(feedback["passed"], false);
    assert_eq!(feedback["reasons"], json!(["draft 0 is curt"]));
    assert_eq!(asked[2]["review"]["revision"], 2);
    assert_eq!(asked[2]["review"]["previous_output"]["draft"], 1);
    let judged = of(&judge, item);
    assert_eq!(judged.len(), 3);
    assert_eq!(
        judged[0]["evaluate"],
        json!({"evaluator": "critic", "version": "3", "criteria": "Is it polite?",
                                             "output": asked_output(&asked[0])})
    );
    assert_eq!(judged[0]["work_item"]["content"]["subject"], "refund", "the judge sees the item too");

    // Attempt by attempt: each output recorded, then judged by an evaluation attempt under
    // the judge's name; the rejected ones say they were sent back.
    let rows = attempt_rows(&db, item).await;
    let expected: Vec<(String, String, Option<String>)> = [
        ("writer", "COMPLETED", None),
        ("judge", "FAILED", Some("APPROVAL_REJECTED")),
        ("writer", "COMPLETED", None),
        ("judge", "FAILED", Some("APPROVAL_REJECTED")),
        ("writer", "COMPLETED", None),
        ("judge", "COMPLETED", None),
    ]
    .iter()
    .map(|(a, s, e)| (a.to_string(), s.to_string(), e.map(str::to_owned)))
    .collect();
    assert_eq!(rows, expected);
    let evaluates: Vec<Value> = sqlx::query_scalar(
        "SELECT input FROM attempts WHERE work_item_id = $1 AND agent_id = 'judge' ORDER BY attempt_number",
    )
    .bind(item)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let first_output: Uuid = sqlx::query_scalar(
        "SELECT id FROM attempts WHERE work_item_id = $1 AND agent_id = 'writer' ORDER BY attempt_number LIMIT 1",
    )
    .bind(item)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(evaluates[0]["evaluates"], json!(first_output));
    let writer_inputs: Vec<Value> = sqlx::query_scalar(
        "SELECT input FROM attempts WHERE work_item_id = $1 AND agent_id = 'writer' ORDER BY attempt_number",
    )
    .bind(item)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(writer_inputs[2]["review"]["revision"], 2, "each revision is recorded on its attempt");

    let evals: Vec<(String, f64, bool, Value)> = sqlx::query_as(
        "SELECT evaluation_type, score::float8, passed, metrics FROM eval_results WHERE work_item_id = $1 ORDER BY created_at",
    )
    .bind(item)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(evals.iter().map(|e| e.1).collect::<Vec<_>>(), [0.3, 0.3, 0.9]);
    assert!(evals.iter().all(|e| e.0 == "critic" && e.3["version"] == "3" && e.3["agent"] == "judge"));
    let decisions: Vec<(String, String)> = sqlx::query_as(
        "SELECT decision::text, reason FROM approval_events WHERE work_item_id = $1 ORDER BY \"timestamp\"",
    )
    .bind(item)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(decisions.len(), 3);
    assert_eq!(decisions[0].0, "REJECTED");
    assert!(decisions[0].1.contains("sent back for revision 1 of 3"), "{}", decisions[0].1);
    assert!(decisions[1].1.contains("sent back for revision 2 of 3"), "{}", decisions[1].1);
    assert_eq!(decisions[2].0, "APPROVED");
    // The judges' usage is costed on their own attempts, under the judge.
    let judge_costs = count(
        &db.pool,
        "SELECT count(*) FROM cost_entries c JOIN attempts a ON a.id = c.attempt_id WHERE a.agent_id = 'judge'",
    )
    .await;
    assert!(judge_costs >= 3, "each judging attempt has its cost entries: {judge_costs}");
}

/// The first output, as the judge should have seen it.
fn asked_output(first_request: &Value) -> Value {
    json!({"draft": 0, "fixed": false, "subject": first_request["work_item"]["content"]["subject"]})
}

#[tokio::test]
async fn revisions_run_out_then_a_person_decides_and_may_send_it_back_with_a_comment() {
    let db = TestDb::new().await;
    template(&db, json!({"max": 2, "then": "human"})).await;
    let writer = writer().await;
    let judge = TestAgent::start(|envelope| {
        if envelope["evaluate"]["output"]["fixed"] == true {
            judge_answer(0.95, "mentions the refund".into())
        } else {
            judge_answer(0.2, "does not mention the refund".into())
        }
    })
    .await;
    let order = insert_order_with_workflow(&db.pool, "judged").await;
    let item = insert_item(&db.pool, order, "TICKET", r#"{"subject":"refund"}"#).await;
    let engine = db.engine(&config(&writer, &judge, "5s")).await;
    wait_for_status(&db.pool, item, "AWAITING_APPROVAL").await;
    assert_eq!(of(&writer, item).len(), 3, "the first run and two revisions");
    let held = orderly::db::approvals::inbox(&db.pool, None, 10).await.unwrap();
    let reason = held[0].policy_reason.clone().unwrap();
    assert!(reason.contains("still rejected after 2 revisions: a person decides"), "{reason}");
    assert_eq!(held[0].evals[0].evaluation_type, "critic");
    assert_eq!(held[0].evals[0].metrics["reasons"], json!(["does not mention the refund"]));
    let listed = crate::cli::text(&crate::cli::orderly(&db.url, &["approvals", "list"]));
    assert!(listed.contains("critic 0.20 failed: does not mention the refund"), "{listed}");

    // Rules every surface shares: a revise needs a reason, and only a rejection revises.
    let settings = std::sync::Arc::new(db.settings(""));
    let decide = |decision, reason, revise| {
        let settings = settings.clone();
        let pool = db.pool.clone();
        async move { orderly::actions::decide_held(&pool, &settings, None, item, decision, "dana", reason, revise).await }
    };
    assert!(matches!(
        decide(Decision::Rejected, None, true).await,
        Err(OpsError::Invalid { code: "REASON_REQUIRED", .. })
    ));
    assert!(matches!(
        decide(Decision::Approved, Some("ok"), true).await,
        Err(OpsError::Invalid { code: "REVISE_INVALID", .. })
    ));
    let next = decide(Decision::Rejected, Some("Mention the refund."), true).await.unwrap();
    assert_eq!(next, NextState::Revise);
    wait_for_status(&db.pool, item, "COMPLETED").await;
    stop(engine).await;
    let asked = of(&writer, item);
    assert_eq!(asked.len(), 4);
    assert_eq!(asked[3]["review"]["revision"], 3, "a person's revise counts as one more revision");
    assert_eq!(asked[3]["review"]["feedback"], json!([{"person": "dana", "comment": "Mention the refund."}]));
    assert_eq!(asked[3]["review"]["previous_output"]["draft"], 2);
    let human: (String, String) = sqlx::query_as(
        "SELECT decision::text, reason FROM approval_events WHERE work_item_id = $1 AND source = 'HUMAN'",
    )
    .bind(item)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(human, ("REJECTED".into(), "Mention the refund.".into()));
    assert_eq!(count(&db.pool, "SELECT count(*) FROM audit_logs WHERE action = 'approval.reject_revise'").await, 1);
}

#[tokio::test]
async fn revisions_run_out_then_the_item_is_dead_lettered_and_assertions_can_ask_for_revisions() {
    let db = TestDb::new().await;
    // No judge: a built-in assertion the writer never satisfies, revised inline.
    insert_template(
        &db.pool,
        "asserted",
        json!({"steps": {"TICKET": {"agent": "writer",
            "evaluators": [{"name": "has_total", "pointer": "/total", "exists": true}],
            "approval": "require_passing_evals", "revise": {"max": 1}}}}),
    )
    .await;
    let writer = writer().await;
    let order = insert_order_with_workflow(&db.pool, "asserted").await;
    let item = insert_item(&db.pool, order, "TICKET", r#"{"subject":"x"}"#).await;
    let engine = db.engine(&writer.config("writer", "5s")).await;
    wait_for_status(&db.pool, item, "FAILED").await;
    stop(engine).await;
    let asked = of(&writer, item);
    assert_eq!(asked.len(), 2, "one run and one revision, then no more");
    assert_eq!(asked[1]["review"]["feedback"][0]["evaluator"], "has_total");
    let (code, reason, _) = dead_letter(&db.pool, item).await.unwrap();
    assert_eq!((code.as_str(), reason.as_str()), ("APPROVAL_REJECTED", "RETRIES_EXHAUSTED"));
    let last: String = sqlx::query_scalar("SELECT last_error FROM work_items WHERE id = $1")
        .bind(item)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(last.contains("still rejected after 1 revisions"), "{last}");
}

#[tokio::test]
async fn a_failing_judge_is_retried_on_the_kept_output_and_a_broken_one_dead_letters_for_replay() {
    let db = TestDb::new().await;
    template(&db, json!({"max": 1})).await;
    let writer = writer().await;
    let calls: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let fixed = Arc::new(AtomicBool::new(false));
    let judge = {
        let (calls, fixed) = (calls.clone(), fixed.clone());
        TestAgent::start(move |envelope| {
            let mode = envelope["work_item"]["content"]["subject"].as_str().unwrap_or("").to_owned();
            let n = {
                let mut calls = calls.lock().unwrap();
                let n = calls.entry(mode.clone()).or_default();
                *n += 1;
                *n
            };
            match (mode.as_str(), n) {
                ("flaky", 1 | 2) => ((500, vec![], "overloaded".into()), Duration::ZERO),
                ("flaky", 3) => ok_json(json!({"verdict": "good"})),
                ("slow", 1) => ((200, vec![], json!({"score": 1.0}).to_string()), Duration::from_secs(3)),
                ("broken", _) if !fixed.load(Ordering::SeqCst) => {
                    ((400, vec![], "bad judge request".into()), Duration::ZERO)
                }
                _ => judge_answer(0.9, "fine".into()),
            }
        })
        .await
    };
    let order = insert_order_with_workflow(&db.pool, "judged").await;
    let flaky = insert_item(&db.pool, order, "TICKET", r#"{"subject":"flaky"}"#).await;
    let slow = insert_item(&db.pool, order, "TICKET", r#"{"subject":"slow"}"#).await;
    let broken = insert_item(&db.pool, order, "TICKET", r#"{"subject":"broken"}"#).await;
    let engine = db.engine(&config(&writer, &judge, "500ms")).await;
    wait_for_status(&db.pool, flaky, "COMPLETED").await;
    wait_for_status(&db.pool, slow, "COMPLETED").await;
    wait_for_status(&db.pool, broken, "FAILED").await;

    // The writer ran once for each: its output was kept while the judge failed.
    for item in [flaky, slow, broken] {
        assert_eq!(writer.executions_of(item), 1, "the writer is not run again for a judge's failure");
    }
    let codes: Vec<Option<String>> = attempt_rows(&db, flaky).await.into_iter().map(|r| r.2).collect();
    assert_eq!(
        codes,
        [None, Some("EVALUATOR_FAILED".into()), Some("EVALUATOR_FAILED".into()), Some("EVALUATOR_FAILED".into()), None]
    );
    let messages: Vec<String> = sqlx::query_scalar(
        "SELECT error FROM attempts WHERE work_item_id = $1 AND error IS NOT NULL ORDER BY attempt_number",
    )
    .bind(flaky)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert!(messages[0].contains("evaluator `critic` (agent `judge`)"), "{}", messages[0]);
    assert!(messages[2].contains("without a `score`"), "the garbled answer says so: {}", messages[2]);
    let slow_error: String =
        sqlx::query_scalar("SELECT error FROM attempts WHERE work_item_id = $1 AND error_code = 'EVALUATOR_FAILED'")
            .bind(slow)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert!(slow_error.contains("did not answer within 500ms"), "{slow_error}");

    // A judge that refuses for good: dead-lettered at once, the output kept for a replay.
    let (code, reason, _) = dead_letter(&db.pool, broken).await.unwrap();
    assert_eq!((code.as_str(), reason.as_str()), ("EVALUATOR_FAILED", "PERMANENT"));
    let kept: (String, Value) = sqlx::query_as("SELECT stage, output FROM item_reviews WHERE work_item_id = $1")
        .bind(broken)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(kept.0, "EVALUATE");
    assert_eq!(kept.1["subject"], "broken");
    fixed.store(true, Ordering::SeqCst);
    let dead: Uuid = sqlx::query_scalar("SELECT id FROM dead_letters WHERE work_item_id = $1")
        .bind(broken)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let catalog = orderly::policy::catalog::Catalog::new(db.pool.clone(), std::sync::Arc::new(db.settings("")));
    orderly::actions::replay_dead_letter(&db.pool, &catalog, &db.settings(""), dead, None, "erin").await.unwrap();
    wait_for_status(&db.pool, broken, "COMPLETED").await;
    stop(engine).await;
    assert_eq!(writer.executions_of(broken), 1, "the replay evaluated the kept output; the writer did not run again");
}

/// Reject with revise on the API and the command line: the same rules (a reason is
/// required), the item queued with the held output and the reason as feedback.
#[tokio::test]
async fn reject_with_revise_on_the_api_and_the_command_line() {
    let db = TestDb::new().await;
    let app = crate::api::app(&db, "[routes]\nTICKET = \"echo\"\n");
    let item = crate::api::held(&db).await;
    let path = format!("/api/v1/approvals/{item}/reject");
    let (status, body) = crate::api::post(&app, &path, json!({"revise": true})).await;
    assert_eq!((status, body["error"].as_str()), (422, Some("REASON_REQUIRED")), "{body}");
    let (status, body) = crate::api::post(&app, &path, json!({"reason": "say sorry first", "revise": true})).await;
    assert_eq!((status, body["item"]["status"].as_str()), (200, Some("QUEUED")), "{body}");
    let (stage, output, feedback, revision): (String, Value, Value, i32) =
        sqlx::query_as("SELECT stage, output, feedback, revision FROM item_reviews WHERE work_item_id = $1")
            .bind(item)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!((stage.as_str(), revision), ("REVISE", 1));
    assert_eq!(output, json!({"answer": "<b>yes</b>"}), "the held output goes back");
    assert_eq!(feedback, json!([{"person": "alice", "comment": "say sorry first"}]));
    let (pending, fresh): (bool, bool) =
        sqlx::query_as("SELECT review_pending, attempt_base = attempt FROM work_items WHERE id = $1")
            .bind(item)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert!(pending && fresh, "the claim will read the review, and the revision has a fresh budget");

    let other = crate::api::held(&db).await;
    let out = crate::cli::orderly(&db.url, &["reject", &other.to_string(), "--revise"]);
    assert!(!out.status.success(), "a revise needs a reason: {}", crate::cli::text(&out));
    assert!(crate::cli::text(&out).contains("needs a reason"), "{}", crate::cli::text(&out));
    let out = crate::cli::orderly(
        &db.url,
        &["reject", &other.to_string(), "--revise", "--reason", "shorter please", "--actor", "carol"],
    );
    assert!(out.status.success(), "{}", crate::cli::text(&out));
    assert!(crate::cli::text(&out).contains("its agent revises the output"), "{}", crate::cli::text(&out));

    // The engine runs the revision: the agent receives the comment and the held output.
    let agent = writer().await;
    let engine = db.engine(&format!("{}[routes]\nTICKET = \"writer\"\n", agent.config("writer", "5s"))).await;
    wait_for_status(&db.pool, other, "COMPLETED").await;
    wait_for_status(&db.pool, item, "COMPLETED").await;
    stop(engine).await;
    let asked = of(&agent, other);
    assert_eq!(asked.len(), 1);
    assert_eq!(asked[0]["review"]["feedback"], json!([{"person": "carol", "comment": "shorter please"}]));
    assert_eq!(asked[0]["review"]["previous_output"], json!({"answer": "<b>yes</b>"}));
    let settled: Option<String> = sqlx::query_scalar("SELECT stage FROM item_reviews WHERE work_item_id = $1")
        .bind(other)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(settled, None, "the revision's decision settled the review");
}

/// A judge is an agent like any other: its `max_in_flight` holds for evaluation runs (the
/// judge's own count), and its 429 with Retry-After pauses it on every replica.
#[tokio::test]
async fn a_judge_keeps_its_agents_limits_and_its_retry_after_pauses_it() {
    let db = TestDb::new().await;
    template(&db, json!({"max": 1})).await;
    let writer = writer().await;
    let refused_once = Arc::new(AtomicBool::new(false));
    let judge = {
        let refused_once = refused_once.clone();
        TestAgent::start(move |envelope| {
            if envelope["work_item"]["content"]["subject"] == "busy" && !refused_once.swap(true, Ordering::SeqCst) {
                return ((429, vec![("retry-after", "1".into())], "slow down".into()), Duration::ZERO);
            }
            ((200, vec![], json!({"score": 0.9, "reasons": ["fine"]}).to_string()), Duration::from_millis(100))
        })
        .await
    };
    let order = insert_order_with_workflow(&db.pool, "judged").await;
    let busy = insert_item(&db.pool, order, "TICKET", r#"{"subject":"busy"}"#).await;
    let mut items = vec![busy];
    for n in 0..10 {
        items.push(insert_item(&db.pool, order, "TICKET", &json!({"subject": format!("t{n}")}).to_string()).await);
    }
    let toml = format!(
        "{}{}max_in_flight = 1\n[worker]\nconcurrency = 16\nevaluator_concurrency = 8\n",
        writer.config("writer", "5s"),
        judge.config("judge", "5s")
    );
    let engine = db.engine(&toml).await;
    for item in &items {
        wait_for_status(&db.pool, *item, "COMPLETED").await;
    }
    stop(engine).await;
    let peak = judge.open.lock().unwrap().1;
    assert_eq!(peak, 1, "the judge never had more than its max_in_flight open");
    let refused: (String, String) = sqlx::query_as(
        "SELECT agent_id, error FROM attempts WHERE work_item_id = $1 AND error_code = 'EVALUATOR_FAILED'",
    )
    .bind(busy)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(refused.0, "judge");
    assert!(refused.1.contains("AGENT_RATE_LIMITED"), "{}", refused.1);
    let paused: bool = sqlx::query_scalar("SELECT paused_until IS NOT NULL FROM agent_state WHERE agent = 'judge'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(paused, "the judge's Retry-After paused the judge agent");
}
