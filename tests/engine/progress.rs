//! What a run reports while it runs (docs/agents.md): progress from a command (lines on
//! `ORDERLY_PROGRESS_FD`) and from an HTTP agent (its envelope's callback, on the admin
//! server, scoped to the attempt), throttled and fenced; a command's stderr as the attempt's
//! log and its CPU time and peak memory as compute entries.

use crate::api;
use crate::common::*;
use serde_json::{Value, json};
use sqlx::PgPool;
use std::time::Duration;
use uuid::Uuid;

async fn progress(pool: &PgPool, item: Uuid) -> Option<(f64, Option<String>, i32)> {
    sqlx::query_as("SELECT percent::float8, message, attempt FROM run_progress WHERE work_item_id = $1")
        .bind(item)
        .fetch_optional(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_command_reports_progress_on_its_descriptor_logs_on_stderr_and_its_compute() {
    let db = TestDb::new().await;
    let dir = std::env::temp_dir().join(format!("orderly-progress-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("agent.sh");
    let go = dir.join("go");
    // Progress lines to the descriptor (through /proc, so any shell can), a bad line, a
    // percent of 250, stderr lines with levels, some CPU, and a wait for the test's go.
    std::fs::write(
        &script,
        format!(
            r#"P=/proc/self/fd/$ORDERLY_PROGRESS_FD
echo '{{"percent": 30, "message": "reading"}}' > $P
echo 'not json' > $P
echo "WARN: slow disk" >&2
echo "hello from stderr" >&2
i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done
while [ ! -e {go} ]; do sleep 0.05; done
echo '{{"percent": 250, "message": "done"}}' > $P
sleep 1.3
echo '{{"ok": true}}'
"#,
            go = go.display()
        ),
    )
    .unwrap();
    let config = format!(
        "[agents.script]\nkind = \"command\"\nprogram = \"/bin/sh\"\nargs = [{:?}]\ntimeout = \"30s\"\n[routes]\nTICKET = \"script\"\n",
        script.display().to_string()
    );
    let order = insert_order(&db.pool, "MEDIUM").await;
    let item = insert_item(&db.pool, order, "TICKET", "{}").await;
    let engine = db.engine(&config).await;
    wait_until("30% reported", Duration::from_secs(15), || async {
        progress(&db.pool, item).await == Some((30.0, Some("reading".into()), 1))
    })
    .await;
    // Shown while it runs.
    let shown = crate::cli::text(&crate::cli::orderly(&db.url, &["items", "show", &item.to_string()]));
    assert!(shown.contains("progress: 30% reading (attempt 1"), "{shown}");
    std::fs::write(&go, "").unwrap();
    wait_until("100% (250 clamped)", Duration::from_secs(15), || async {
        progress(&db.pool, item).await.is_some_and(|p| p.0 == 100.0)
    })
    .await;
    wait_for_status(&db.pool, item, "COMPLETED").await;
    stop(engine).await;
    std::fs::remove_dir_all(&dir).ok();

    let logs: Vec<(String, String)> =
        sqlx::query_as("SELECT level, message FROM run_logs WHERE work_item_id = $1 ORDER BY line")
            .bind(item)
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert!(logs.contains(&("WARN".into(), "WARN: slow disk".into())), "{logs:?}");
    assert!(logs.contains(&("INFO".into(), "hello from stderr".into())), "{logs:?}");
    assert!(
        logs.iter().any(|(l, m)| l == "WARN" && m.starts_with("progress line ignored") && m.contains("not json")),
        "{logs:?}"
    );
    let compute: Vec<(String, f64)> = sqlx::query_as(
        "SELECT unit, quantity::float8 FROM cost_entries WHERE work_item_id = $1 AND cost_type = 'compute' ORDER BY unit",
    )
    .bind(item)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(compute.iter().map(|c| c.0.as_str()).collect::<Vec<_>>(), ["cpu_second", "peak_memory_mib"]);
    assert!(compute[0].1 > 0.0, "the loop used CPU: {compute:?}");
    assert!(compute[1].1 > 0.0, "the shell has a resident set: {compute:?}");
}

#[tokio::test]
async fn an_http_agent_reports_through_its_attempts_callback_until_the_attempt_ends() {
    let db = TestDb::new().await;
    let seen: std::sync::Arc<std::sync::Mutex<Option<Value>>> = Default::default();
    let keep = seen.clone();
    let agent = TestAgent::start(move |envelope| {
        *keep.lock().unwrap() = Some(envelope["progress"].clone());
        let callback = envelope["progress"].clone();
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            for (percent, message) in [(10, "started"), (40, "half")] {
                let _ = client
                    .post(callback["url"].as_str().unwrap())
                    .bearer_auth(callback["token"].as_str().unwrap())
                    .header("content-type", "application/json")
                    .body(json!({"percent": percent, "message": message}).to_string())
                    .send()
                    .await;
            }
        });
        let (answer, _) = ok_json(json!({"ok": true}));
        (answer, Duration::from_millis(2500))
    })
    .await;
    let config = format!("{}[routes]\nTICKET = \"slow\"\n", agent.config("slow", "10s"));
    let order = insert_order(&db.pool, "MEDIUM").await;
    let item = insert_item(&db.pool, order, "TICKET", "{}").await;
    let engine = db.engine(&config).await;
    // Two reports within a second: the second is written at the end of the item's second.
    wait_until("40% reported", Duration::from_secs(10), || async {
        progress(&db.pool, item).await == Some((40.0, Some("half".into()), 1))
    })
    .await;
    let app = api::app(&db, "");
    let (_, body) = api::get(&app, &format!("/api/v1/items/{item}")).await;
    assert_eq!(body["progress"]["percent"], json!(40.0), "{body}");
    let callback = seen.lock().unwrap().clone().unwrap();
    let url = callback["url"].as_str().unwrap().to_owned();
    let token = callback["token"].as_str().unwrap().to_owned();
    let client = reqwest::Client::new();
    let post = |token: String, body: Value| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let r = client.post(&url).bearer_auth(token).body(body.to_string()).send().await.unwrap();
            let status = r.status().as_u16();
            (status, serde_json::from_str::<Value>(&r.text().await.unwrap()).unwrap_or(Value::Null))
        }
    };
    // Forged, or another attempt's: 401. Not a progress: 400.
    let mut forged = token.clone();
    forged.replace_range(forged.len() - 3.., "AAA");
    assert_eq!(post(forged, json!({"percent": 50})).await.0, 401);
    assert_eq!(post(String::new(), json!({"percent": 50})).await.0, 401);
    assert_eq!(post(token.clone(), json!({"percent": "lots"})).await.0, 400);
    let (status, body) = post(token.clone(), json!({"percent": 250})).await;
    assert_eq!((status, body["percent"].clone()), (200, json!(100.0)), "{body}");
    wait_for_status(&db.pool, item, "COMPLETED").await;
    // The attempt has ended: its token is refused.
    let (status, body) = post(token, json!({"percent": 99})).await;
    assert_eq!(status, 409, "{body}");
    stop(engine).await;
    assert!(progress(&db.pool, item).await.is_some_and(|p| p.0 == 100.0), "the last report while it ran is kept");
}

/// A plug-in that reports through its request's reporter, then fails: its progress, log line
/// and the failed attempt's record are all kept.
struct Reporting;

impl orderly::agent::Executor for Reporting {
    fn execute<'a>(
        &'a self,
        request: &'a orderly::agent::AgentRequest,
    ) -> orderly::agent::BoxFuture<'a, Result<Value, orderly::agent::AgentError>> {
        Box::pin(async move {
            request.report.progress(55.0, Some("plug-in at work"));
            request.report.log("warning", "a plug-in's own log line");
            tokio::time::sleep(Duration::from_millis(1500)).await;
            Err(orderly::agent::AgentError::permanent(orderly::model::ErrorCode::AgentError, "gave up"))
        })
    }
}

#[tokio::test]
async fn a_plug_in_reports_through_its_request() {
    let db = TestDb::new().await;
    let mut registry = orderly::agent::Registry::builtin();
    registry.register("reporting", |_spec| {
        Ok(orderly::agent::Agent { executor: std::sync::Arc::new(Reporting), timeout: Duration::from_secs(10) })
    });
    let config = "[agents.plug]\nkind = \"reporting\"\n[routes]\nTICKET = \"plug\"\n";
    let order = insert_order(&db.pool, "MEDIUM").await;
    let item = insert_item(&db.pool, order, "TICKET", "{}").await;
    let engine = orderly::daemon::Engine::start(db.settings(config), &registry, None).await.unwrap();
    wait_until("55% reported", Duration::from_secs(10), || async {
        progress(&db.pool, item).await == Some((55.0, Some("plug-in at work".into()), 1))
    })
    .await;
    wait_for_status(&db.pool, item, "FAILED").await;
    stop(engine).await;
    let logs: Vec<(String, String)> = sqlx::query_as("SELECT level, message FROM run_logs WHERE work_item_id = $1")
        .bind(item)
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(logs, [("WARN".to_owned(), "a plug-in's own log line".to_owned())]);
}
