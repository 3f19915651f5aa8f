//! The `llm` agent kind (docs/agents.md, "llm") against a fake OpenAI-compatible server on
//! 127.0.0.1: the prompt it is sent, the reply as the item's result, its tokens as a cost
//! entry, and how each failure of a model server ends.

use crate::common::*;
use serde_json::{Value, json};
use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use uuid::Uuid;

/// One request the fake model server received.
#[derive(Debug, Clone)]
struct Seen {
    authorization: Option<String>,
    body: Value,
    scenario: &'static str,
}

/// What the fake server does, chosen by `"scenario":"NAME"` in the user message (the item's
/// content, as the default prompt sends it); anything else is `ok`.
const SCENARIOS: [&str; 8] =
    ["rate_limited", "server_error", "malformed", "prose", "slow", "truncated", "refused", "ok"];

struct FakeModel {
    /// The base URL to configure (`…/v1`).
    base_url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl FakeModel {
    async fn start() -> FakeModel {
        use axum::extract::State;
        use axum::http::{HeaderMap, StatusCode};
        type Shared = (Arc<Mutex<Vec<Seen>>>, Arc<Mutex<HashMap<&'static str, usize>>>);
        async fn completions(
            State((seen, counts)): State<Shared>,
            headers: HeaderMap,
            body: String,
        ) -> (StatusCode, HeaderMap, String) {
            let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
            let user = body["messages"].as_array().and_then(|m| m.last()).and_then(|m| m["content"].as_str());
            let scenario = SCENARIOS
                .into_iter()
                .find(|s| user.is_some_and(|u| u.contains(&format!(r#""scenario":"{s}""#))))
                .unwrap_or("ok");
            let authorization = headers.get("authorization").and_then(|v| v.to_str().ok()).map(str::to_owned);
            seen.lock().unwrap().push(Seen { authorization, body: body.clone(), scenario });
            let call = {
                let mut counts = counts.lock().unwrap();
                let n = counts.entry(scenario).or_default();
                *n += 1;
                *n
            };
            let model = body["model"].as_str().unwrap_or("?").to_owned();
            let reply = |message: Value, finish: &str| {
                json!({"id": "chatcmpl-1", "object": "chat.completion", "model": model,
                       "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                       "usage": {"prompt_tokens": 120, "completion_tokens": 30, "total_tokens": 150}})
                .to_string()
            };
            let answer = json!({"role": "assistant", "content": r#"{"answer": "filed", "usage": "mine"}"#});
            let mut out = HeaderMap::new();
            let (status, text) = match (scenario, call) {
                ("rate_limited", 1) => {
                    out.insert("retry-after", "1".parse().unwrap());
                    (429, r#"{"error": {"message": "slow down"}}"#.to_owned())
                }
                ("server_error", 1) => (500, r#"{"error": {"message": "overloaded"}}"#.to_owned()),
                ("malformed", 1) => (200, "{\"choices\": [".to_owned()),
                ("prose", 1) => (200, reply(json!({"role": "assistant", "content": "Sure! It is filed."}), "stop")),
                ("truncated", _) => {
                    (200, reply(json!({"role": "assistant", "content": "{\"answer\": \"fi"}), "length"))
                }
                ("refused", _) => (
                    200,
                    reply(json!({"role": "assistant", "content": null, "refusal": "I cannot help with that."}), "stop"),
                ),
                ("slow", _) => {
                    tokio::time::sleep(Duration::from_secs(10)).await;
                    (200, reply(answer, "stop"))
                }
                _ => (200, reply(answer, "stop")),
            };
            (StatusCode::from_u16(status).unwrap(), out, text)
        }
        let seen: Arc<Mutex<Vec<Seen>>> = Default::default();
        let shared: Shared = (seen.clone(), Default::default());
        let app =
            axum::Router::new().route("/v1/chat/completions", axum::routing::post(completions)).with_state(shared);
        FakeModel { base_url: format!("{}/v1", serve(app).await), seen }
    }

    /// An `llm` agent named `model` on this server, with a price for its model.
    fn config(&self, extra: &str) -> String {
        format!(
            "[agents.model]\nkind = \"llm\"\nbase_url = \"{}\"\nmodel = \"tiny-model\"\napi_key = \"sk-test-123\"\n\
             allow_private = true\n{extra}\n\
             [prices.tiny-model]\ninput_per_million = \"2\"\noutput_per_million = \"10\"\ncurrency = \"USD\"\n",
            self.base_url
        )
    }

    fn calls(&self, scenario: &str) -> usize {
        self.seen.lock().unwrap().iter().filter(|s| s.scenario == scenario).count()
    }
}

async fn insert_order_with_metadata(pool: &PgPool, workflow: &str, metadata: Value) -> Uuid {
    sqlx::query_scalar(
        "INSERT INTO work_orders (workflow_id, tenant_id, created_by, metadata)
         VALUES ($1, gen_random_uuid(), gen_random_uuid(), $2) RETURNING id",
    )
    .bind(workflow)
    .bind(metadata)
    .fetch_one(pool)
    .await
    .unwrap()
}

async fn scenario_item(pool: &PgPool, order: Uuid, scenario: &str) -> Uuid {
    insert_item(pool, order, "TICKET", &json!({"scenario": scenario, "text": "printer"}).to_string()).await
}

/// (quantity, input, output, amount) of the item's token cost entries, by attempt.
async fn token_costs(pool: &PgPool, item: Uuid) -> Vec<(String, String, String, String)> {
    sqlx::query_as(
        "SELECT c.quantity::text, c.input_quantity::text, c.output_quantity::text,
                trim(trailing '0' from c.amount::text)
         FROM cost_entries c JOIN attempts a ON a.id = c.attempt_id
         WHERE c.work_item_id = $1 AND c.cost_type = 'api_tokens' AND c.model = 'tiny-model' AND c.currency = 'USD'
         ORDER BY a.attempt_number",
    )
    .bind(item)
    .fetch_all(pool)
    .await
    .unwrap()
}

async fn attempt_errors(pool: &PgPool, item: Uuid) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT error FROM attempts WHERE work_item_id = $1 AND error IS NOT NULL ORDER BY attempt_number",
    )
    .bind(item)
    .fetch_all(pool)
    .await
    .unwrap()
}

/// 120 input tokens at 2 and 30 output tokens at 10 per million.
fn one_call() -> (String, String, String, String) {
    ("150".into(), "120".into(), "30".into(), "0.00054".into())
}

#[tokio::test]
async fn llm_sends_the_filled_prompt_and_completes_with_the_models_json_and_its_cost() {
    let db = TestDb::new().await;
    let model = FakeModel::start().await;
    let schema = json!({"type": "object", "required": ["answer"], "properties": {"answer": {"type": "string"}}});
    sqlx::query(
        "INSERT INTO schemas (name, version, document_type, schema_definition) VALUES ('triage', '1', 'TICKET', $1)",
    )
    .bind(&schema)
    .execute(&db.pool)
    .await
    .unwrap();
    let llm = json!({"system": "You triage tickets for {{metadata.team}}.",
                     "user": "Customer {{content.customer.name}} ({{item.type}}) writes: {{content.text}}",
                     "temperature": 0.2, "max_tokens": 400});
    insert_template(&db.pool, "triage", json!({"steps": {"TICKET": {"agent": "model", "llm": llm}}})).await;
    let order = insert_order_with_metadata(&db.pool, "triage", json!({"team": "billing"})).await;
    let content = json!({"customer": {"name": "Ada"}, "text": "I was charged twice"});
    let item = insert_item(&db.pool, order, "TICKET", &content.to_string()).await;
    let engine = db.engine(&model.config("temperature = 0.9\ntimeout = \"5s\"")).await;
    wait_for_status(&db.pool, item, "COMPLETED").await;
    stop(engine).await;

    let seen = model.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].authorization.as_deref(), Some("Bearer sk-test-123"));
    assert_eq!(
        seen[0].body,
        json!({
            "model": "tiny-model",
            "messages": [
                {"role": "system", "content": "You triage tickets for billing.\n\nAnswer with a JSON object."},
                {"role": "user", "content": "Customer Ada (TICKET) writes: I was charged twice"}
            ],
            "response_format": {"type": "json_schema", "json_schema": {"name": "output", "schema": schema}},
            "temperature": 0.2,
            "max_tokens": 400
        })
    );
    let result: Value =
        sqlx::query_scalar("SELECT result FROM work_items WHERE id = $1").bind(item).fetch_one(&db.pool).await.unwrap();
    assert_eq!(
        result,
        json!({"answer": "filed", "usage": {"model": "tiny-model", "input_tokens": 120, "output_tokens": 30}}),
        "the model's JSON, its own `usage` replaced by the call's"
    );
    assert_eq!(token_costs(&db.pool, item).await, vec![one_call()]);
    let passed: bool = sqlx::query_scalar("SELECT passed FROM eval_results WHERE work_item_id = $1")
        .bind(item)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(passed, "the output passed the schema it was asked for");
}

#[tokio::test]
async fn llm_retries_rate_limits_server_errors_and_bad_replies_until_they_succeed() {
    let db = TestDb::new().await;
    let model = FakeModel::start().await;
    let config = model.config("[retry]\nmax_attempts = 3\n[routes]\nTICKET = \"model\"\n");
    let order = insert_order(&db.pool, "MEDIUM").await;
    let mut items = Vec::new();
    for (scenario, code) in [
        ("rate_limited", "AGENT_RATE_LIMITED"),
        ("server_error", "AGENT_UNAVAILABLE"),
        ("malformed", "AGENT_BAD_OUTPUT"),
        ("prose", "AGENT_BAD_OUTPUT"),
    ] {
        items.push((scenario, code, scenario_item(&db.pool, order, scenario).await));
    }
    let engine = db.engine(&config).await;
    wait_for_order(&db.pool, order, "COMPLETED").await;
    stop(engine).await;

    for (scenario, code, item) in items {
        let expected = vec![(1, "FAILED".to_owned(), Some(code.to_owned())), (2, "COMPLETED".to_owned(), None)];
        assert_eq!(attempts(&db.pool, item).await, expected, "{scenario}");
        assert_eq!(model.calls(scenario), 2, "{scenario}");
        let result: Value = sqlx::query_scalar("SELECT result FROM work_items WHERE id = $1")
            .bind(item)
            .fetch_one(&db.pool)
            .await
            .unwrap();
        assert_eq!(result["answer"], "filed", "{scenario}");
        // A reply whose text was not JSON still cost its tokens; the others cost nothing.
        let costs = if scenario == "prose" { vec![one_call(), one_call()] } else { vec![one_call()] };
        assert_eq!(token_costs(&db.pool, item).await, costs, "{scenario}");
    }
    let errors = attempt_errors(&db.pool, order_item(&db.pool, order, "rate_limited").await).await;
    assert_eq!(errors, vec!["the model server answered 429 Too Many Requests: slow down"]);
    let errors = attempt_errors(&db.pool, order_item(&db.pool, order, "prose").await).await;
    assert!(errors[0].starts_with("the model answered text that is not JSON"), "{errors:?}");
    // Every call carried the key, and no error kept it.
    assert!(model.seen.lock().unwrap().iter().all(|s| s.authorization.as_deref() == Some("Bearer sk-test-123")));
    assert_eq!(count(&db.pool, "SELECT count(*) FROM attempts WHERE error LIKE '%sk-test-123%'").await, 0);
}

async fn order_item(pool: &PgPool, order: Uuid, scenario: &str) -> Uuid {
    sqlx::query_scalar("SELECT id FROM work_items WHERE work_order_id = $1 AND content::jsonb ->> 'scenario' = $2")
        .bind(order)
        .bind(scenario)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn llm_truncated_refused_and_bad_prompts_are_dead_lettered_at_once() {
    let db = TestDb::new().await;
    let model = FakeModel::start().await;
    let config = model.config("max_tokens = 64\n[retry]\nmax_attempts = 3\n[routes]\nTICKET = \"model\"\n");
    let bad = json!({"user": "Summarise {{content.text}} for {{customer}}"});
    insert_template(&db.pool, "bad-prompt", json!({"steps": {"TICKET": {"agent": "model", "llm": bad}}})).await;
    let order = insert_order(&db.pool, "MEDIUM").await;
    let truncated = scenario_item(&db.pool, order, "truncated").await;
    let refused = scenario_item(&db.pool, order, "refused").await;
    let bad_order = insert_order_with_workflow(&db.pool, "bad-prompt").await;
    let bad = scenario_item(&db.pool, bad_order, "ok").await;
    let engine = db.engine(&config).await;
    wait_quiet(&db.pool).await;
    stop(engine).await;

    for (item, code) in [(truncated, "LLM_TRUNCATED"), (refused, "LLM_REFUSED"), (bad, "PROMPT_INVALID")] {
        assert_eq!(item_status(&db.pool, item).await, "FAILED", "{code}");
        assert_eq!(dead_letter(&db.pool, item).await, Some((code.into(), "PERMANENT".into(), 1)), "{code}");
    }
    assert_eq!(
        attempt_errors(&db.pool, truncated).await,
        vec![
            "the reply was cut at max_tokens (64) before it was complete; raise the step's llm.max_tokens or the agent's max_tokens"
        ]
    );
    assert_eq!(attempt_errors(&db.pool, refused).await, vec!["the model refused: I cannot help with that."]);
    assert_eq!(
        attempt_errors(&db.pool, bad).await,
        vec!["workflow template `bad-prompt` step TICKET: llm.user: unknown variable `{{customer}}`"]
    );
    assert_eq!(
        (model.calls("truncated"), model.calls("refused"), model.calls("ok")),
        (1, 1, 0),
        "no call for a bad prompt"
    );
    let truncated_call = model.seen.lock().unwrap().iter().find(|s| s.scenario == "truncated").unwrap().body.clone();
    assert_eq!(truncated_call["max_tokens"], 64, "the agent's default");
    // The cut and the refused reply still cost their tokens.
    assert_eq!(token_costs(&db.pool, truncated).await, vec![one_call()]);
    assert_eq!(token_costs(&db.pool, refused).await, vec![one_call()]);
}

#[tokio::test]
async fn llm_slow_replies_time_out() {
    let db = TestDb::new().await;
    let model = FakeModel::start().await;
    let config = model.config("timeout = \"400ms\"\n[retry]\nmax_attempts = 2\n[routes]\nTICKET = \"model\"\n");
    let order = insert_order(&db.pool, "MEDIUM").await;
    let item = scenario_item(&db.pool, order, "slow").await;
    let engine = db.engine(&config).await;
    wait_for_status(&db.pool, item, "FAILED").await;
    stop(engine).await;
    let expected: Vec<_> = (1..=2).map(|n| (n, "TIMEOUT".to_owned(), Some("AGENT_TIMEOUT".to_owned()))).collect();
    assert_eq!(attempts(&db.pool, item).await, expected);
    assert_eq!(dead_letter(&db.pool, item).await, Some(("AGENT_TIMEOUT".into(), "RETRIES_EXHAUSTED".into(), 2)));
    assert_eq!(model.calls("slow"), 2);
}

/// The `llm` kind on both sides of the review loop: a writer model and a judge model on one
/// fake server (told apart by the model name). The judge gets the built-in judge prompt with
/// the criteria and the output; the first draft is judged too short, and the revision's
/// prompt carries the previous output and the judge's reasons.
#[tokio::test]
async fn an_llm_judge_sends_an_llm_writers_draft_back_and_the_revision_passes() {
    use axum::http::StatusCode;
    let seen: Arc<Mutex<Vec<Value>>> = Default::default();
    let app = {
        let seen = seen.clone();
        axum::Router::new().route(
            "/v1/chat/completions",
            axum::routing::post(move |body: String| {
                let seen = seen.clone();
                async move {
                    let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
                    seen.lock().unwrap().push(body.clone());
                    let prompt = body["messages"].to_string();
                    let content = if body["model"] == "judge-m" {
                        if prompt.contains("draft one") {
                            json!({"score": 0.2, "passed": false, "reasons": ["too short"]})
                        } else {
                            json!({"score": 0.9, "passed": true, "reasons": ["complete"]})
                        }
                    } else if prompt.contains("too short") {
                        json!({"text": "draft two, longer"})
                    } else {
                        json!({"text": "draft one"})
                    };
                    let reply = json!({"model": body["model"], "choices": [{"index": 0, "finish_reason": "stop",
                        "message": {"role": "assistant", "content": content.to_string()}}],
                        "usage": {"prompt_tokens": 50, "completion_tokens": 10}});
                    (StatusCode::OK, reply.to_string())
                }
            }),
        )
    };
    let base = format!("{}/v1", serve(app).await);
    let db = TestDb::new().await;
    insert_template(
        &db.pool,
        "llm-judged",
        json!({"steps": {"TICKET": {"agent": "writer",
            "llm": {"system": "You write replies.", "user": "Reply to: {{content.text}}"},
            "evaluators": [{"name": "complete", "agent": "judge", "criteria": "The reply is complete."}],
            "approval": {"combine": "min", "pass_at": 0.8, "fail_below": 0.5},
            "revise": {"max": 2}}}}),
    )
    .await;
    let agent = |name: &str, model: &str| {
        format!(
            "[agents.{name}]\nkind = \"llm\"\nbase_url = \"{base}\"\nmodel = \"{model}\"\napi_key = \"sk-x\"\nallow_private = true\n"
        )
    };
    let order = insert_order_with_workflow(&db.pool, "llm-judged").await;
    let item = insert_item(&db.pool, order, "TICKET", r#"{"text": "my invoice is wrong"}"#).await;
    let engine = db.engine(&format!("{}{}", agent("writer", "writer-m"), agent("judge", "judge-m"))).await;
    wait_for_status(&db.pool, item, "COMPLETED").await;
    stop(engine).await;
    let result: Value =
        sqlx::query_scalar("SELECT result FROM work_items WHERE id = $1").bind(item).fetch_one(&db.pool).await.unwrap();
    assert_eq!(result["text"], "draft two, longer");
    let seen = seen.lock().unwrap().clone();
    let models: Vec<&str> = seen.iter().map(|b| b["model"].as_str().unwrap()).collect();
    assert_eq!(models, ["writer-m", "judge-m", "writer-m", "judge-m"]);
    let judge_prompt = seen[1]["messages"].to_string();
    assert!(judge_prompt.contains("The reply is complete.") && judge_prompt.contains("draft one"), "{judge_prompt}");
    let revision_prompt = seen[2]["messages"].to_string();
    assert!(revision_prompt.contains("Reply to: my invoice is wrong"), "{revision_prompt}");
    assert!(revision_prompt.contains("too short") && revision_prompt.contains("draft one"), "{revision_prompt}");
    let scores: Vec<f64> = sqlx::query_scalar(
        "SELECT score::float8 FROM eval_results WHERE work_item_id = $1 AND evaluation_type = 'complete' ORDER BY created_at",
    )
    .bind(item)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(scores, [0.2, 0.9]);
}
