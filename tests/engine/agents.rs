//! Agent protocol: HTTP status classes, Retry-After, retry run times, timeouts that really
//! stop the work, and the command kind's exit convention.

use crate::common::*;
use serde_json::json;
use std::time::Duration;

/// Seconds between the attempt's completion and the item's next run time (database clock).
async fn retry_delay_seconds(db: &TestDb, item: uuid::Uuid) -> f64 {
    sqlx::query_scalar(
        "SELECT extract(epoch FROM i.run_at - a.completed_at)::float8
         FROM work_items i JOIN attempts a ON a.work_item_id = i.id AND a.attempt_number = i.attempt
         WHERE i.id = $1",
    )
    .bind(item)
    .fetch_one(&db.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn http_status_classes_decide_retry_or_dead_letter() {
    let db = TestDb::new().await;
    let agent = TestAgent::start(|envelope| {
        let mode = envelope["work_item"]["content"]["mode"].as_str().unwrap_or("ok").to_owned();
        let answer = match mode.as_str() {
            "400" => (400, vec![], "bad request".into()),
            "404" => (404, vec![], "nope".into()),
            "500" => (500, vec![], "boom".into()),
            "503" => (503, vec![], "later".into()),
            "garbage" => (200, vec![], "<html>not json</html>".into()),
            "redirect" => (302, vec![("location", "http://127.0.0.1:1/".into())], String::new()),
            _ => (200, vec![], r#"{"fine":true}"#.into()),
        };
        (answer, Duration::ZERO)
    })
    .await;
    let config = format!("{}[retry]\nmax_attempts = 2\n[routes]\nTICKET = \"remote\"\n", agent.config("remote", "5s"));
    let order = insert_order(&db.pool, "MEDIUM").await;
    let mut items = Vec::new();
    for mode in ["ok", "400", "404", "500", "503", "garbage", "redirect"] {
        items.push((mode, insert_item(&db.pool, order, "TICKET", &json!({ "mode": mode }).to_string()).await));
    }
    let engine = db.engine(&config).await;
    wait_quiet(&db.pool).await;
    stop(engine).await;

    for (mode, item) in items {
        let expected: (&str, Option<(&str, &str, i32)>) = match mode {
            "ok" => ("COMPLETED", None),
            "400" | "404" => ("FAILED", Some(("AGENT_REJECTED", "PERMANENT", 1))),
            "500" | "503" => ("FAILED", Some(("AGENT_UNAVAILABLE", "RETRIES_EXHAUSTED", 2))),
            "garbage" => ("FAILED", Some(("AGENT_BAD_OUTPUT", "PERMANENT", 1))),
            "redirect" => ("FAILED", Some(("AGENT_REDIRECT_REFUSED", "PERMANENT", 1))),
            _ => unreachable!(),
        };
        assert_eq!(item_status(&db.pool, item).await, expected.0, "{mode}");
        let letter = dead_letter(&db.pool, item).await;
        assert_eq!(letter.as_ref().map(|(c, r, n)| (c.as_str(), r.as_str(), *n)), expected.1, "{mode}");
        let executions = expected.1.map_or(1, |(_, _, n)| n as usize);
        assert_eq!(agent.executions_of(item), executions, "{mode}");
        assert_eq!(attempts(&db.pool, item).await.len(), executions, "{mode}");
        let mut numbers: Vec<i64> =
            agent.received.lock().unwrap().iter().filter(|r| r.item_id == item).map(|r| r.attempt).collect();
        numbers.sort_unstable();
        assert_eq!(numbers, (1..=executions as i64).collect::<Vec<_>>(), "{mode}: attempt numbers in the envelope");
    }
    // Every request carried the work item id as its idempotency key.
    for received in agent.received.lock().unwrap().iter() {
        assert_eq!(received.idempotency_key.as_deref(), Some(received.item_id.to_string().as_str()));
        assert!(received.envelope["work_order"]["id"].is_string());
        assert!(received.envelope["context"]["mem_docs"].is_array());
    }
}

/// Runs one item against an agent that answers `status` with `Retry-After: retry_after`,
/// until its first attempt is recorded; returns the item.
async fn first_attempt_against(db: &TestDb, status: u16, retry_after: &'static str, retry: &str) -> uuid::Uuid {
    let agent =
        TestAgent::start(move |_| ((status, vec![("retry-after", retry_after.into())], "".into()), Duration::ZERO))
            .await;
    let config =
        format!("{}[retry]\nmax_attempts = 3\n{retry}[routes]\nTICKET = \"remote\"\n", agent.config("remote", "5s"));
    let order = insert_order(&db.pool, "MEDIUM").await;
    let item = insert_item(&db.pool, order, "TICKET", "{}").await;
    let engine = db.engine(&config).await;
    wait_until("the first attempt", Duration::from_secs(10), || async { attempts(&db.pool, item).await.len() == 1 })
        .await;
    stop(engine).await;
    item
}

#[tokio::test]
async fn rate_limits_honour_retry_after_on_the_database_clock() {
    let db = TestDb::new().await;
    let item = first_attempt_against(&db, 429, "7", "backoff_base = \"50ms\"\nbackoff_max = \"1m\"\n").await;
    assert_eq!(item_status(&db.pool, item).await, "QUEUED");
    assert_eq!(attempts(&db.pool, item).await[0].2.as_deref(), Some("AGENT_RATE_LIMITED"));
    let delay = retry_delay_seconds(&db, item).await;
    assert!((6.9..=7.1).contains(&delay), "Retry-After 7s honoured, got {delay}");
}

#[tokio::test]
async fn retry_after_is_clamped_to_backoff_max() {
    let db = TestDb::new().await;
    let item = first_attempt_against(&db, 503, "86400", "backoff_max = \"30s\"\n").await;
    let delay = retry_delay_seconds(&db, item).await;
    assert!((29.9..=30.1).contains(&delay), "clamped to 30s, got {delay}");
}

#[tokio::test]
async fn retries_back_off_exponentially_then_dead_letter() {
    let db = TestDb::new().await;
    let config = "[agents.flaky]\nkind = \"fail\"\nretryable = true\nmessage = \"try later\"\n\
                  [retry]\nmax_attempts = 3\nbackoff_base = \"2s\"\nbackoff_max = \"1m\"\n[routes]\nTICKET = \"flaky\"\n";
    let order = insert_order(&db.pool, "MEDIUM").await;
    let item = insert_item(&db.pool, order, "TICKET", "{}").await;
    let engine = db.engine(config).await;
    // Attempt n waits 2s * 2^(n-1) with jitter in [50%, 100%]; fast-forward each wait.
    for (n, low, high) in [(1, 1.0, 2.0), (2, 2.0, 4.0)] {
        wait_until("a failed attempt", Duration::from_secs(10), || async { attempts(&db.pool, item).await.len() == n })
            .await;
        wait_for_status(&db.pool, item, "QUEUED").await;
        let delay = retry_delay_seconds(&db, item).await;
        assert!((low - 0.01..=high + 0.01).contains(&delay), "attempt {n}: delay {delay} outside [{low}, {high}]");
        sqlx::query("UPDATE work_items SET run_at = now() WHERE id = $1").bind(item).execute(&db.pool).await.unwrap();
    }
    wait_for_status(&db.pool, item, "FAILED").await;
    stop(engine).await;
    assert_eq!(dead_letter(&db.pool, item).await, Some(("AGENT_ERROR".into(), "RETRIES_EXHAUSTED".into(), 3)));
    let numbers: Vec<i32> = attempts(&db.pool, item).await.iter().map(|a| a.0).collect();
    assert_eq!(numbers, vec![1, 2, 3]);
}

#[tokio::test]
async fn http_timeouts_drop_the_request_and_retry() {
    let db = TestDb::new().await;
    let agent = TestAgent::start(|_| ((200, vec![], "{}".into()), Duration::from_secs(30))).await;
    let config = format!("{}[retry]\nmax_attempts = 2\n[routes]\nTICKET = \"slow\"\n", agent.config("slow", "300ms"));
    let order = insert_order(&db.pool, "MEDIUM").await;
    let item = insert_item(&db.pool, order, "TICKET", "{}").await;
    let engine = db.engine(&config).await;
    wait_for_status(&db.pool, item, "FAILED").await;
    stop(engine).await;
    let tries = attempts(&db.pool, item).await;
    assert_eq!(tries.len(), 2);
    assert!(tries.iter().all(|(_, status, code)| status == "TIMEOUT" && code.as_deref() == Some("AGENT_TIMEOUT")));
    assert_eq!(dead_letter(&db.pool, item).await.unwrap().1, "RETRIES_EXHAUSTED");
}

fn process_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // A zombie has stopped running; only its parent's bookkeeping is left.
        Ok(stat) => !stat.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'),
        Err(_) => false,
    }
}

#[tokio::test]
async fn command_timeouts_kill_the_whole_process_group() {
    let db = TestDb::new().await;
    let dir = std::env::temp_dir().join(format!("orderly-kill-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let pids = dir.join("pids");
    // Ignores SIGTERM, starts a grandchild, records both pids, then hangs.
    let script = format!(
        "trap '' TERM; sleep 600 & echo $! >> {p}; echo $$ >> {p}; while true; do sleep 1; done",
        p = pids.display()
    );
    let config = format!(
        "[agents.stubborn]\nkind = \"command\"\nprogram = \"/bin/sh\"\nargs = [\"-c\", {script:?}]\ntimeout = \"500ms\"\n\
         [retry]\nmax_attempts = 1\n[routes]\nTICKET = \"stubborn\"\n"
    );
    let order = insert_order(&db.pool, "MEDIUM").await;
    let item = insert_item(&db.pool, order, "TICKET", "{}").await;
    let engine = db.engine(&config).await;
    wait_for_status(&db.pool, item, "FAILED").await;
    stop(engine).await;
    assert_eq!(attempts(&db.pool, item).await[0].1, "TIMEOUT");
    let recorded: Vec<i32> =
        std::fs::read_to_string(&pids).unwrap().lines().map(|l| l.trim().parse().unwrap()).collect();
    assert_eq!(recorded.len(), 2, "the script recorded its own pid and its child's");
    wait_until("every process of the group to be gone", Duration::from_secs(5), || {
        let alive: Vec<i32> = recorded.iter().copied().filter(|pid| process_alive(*pid)).collect();
        async move { alive.is_empty() }
    })
    .await;
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test]
async fn command_exit_codes_follow_the_convention() {
    let db = TestDb::new().await;
    let config = r#"
[agents.script]
kind = "command"
program = "/bin/sh"
args = ["-c", "read -r line; case \"$line\" in *retry*) echo busy >&2; exit 75;; *fatal*) echo broken >&2; exit 3;; *garbage*) echo not-json;; *) echo \"{\\\"seen\\\": $(echo \"$line\" | wc -c)}\";; esac"]
timeout = "10s"
[retry]
max_attempts = 2
[routes]
TICKET = "script"
"#;
    let order = insert_order(&db.pool, "MEDIUM").await;
    let ok = insert_item(&db.pool, order, "TICKET", r#"{"mode":"ok"}"#).await;
    let retry = insert_item(&db.pool, order, "TICKET", r#"{"mode":"retry"}"#).await;
    let fatal = insert_item(&db.pool, order, "TICKET", r#"{"mode":"fatal"}"#).await;
    let garbage = insert_item(&db.pool, order, "TICKET", r#"{"mode":"garbage"}"#).await;
    let engine = db.engine(config).await;
    wait_quiet(&db.pool).await;
    stop(engine).await;
    assert_eq!(item_status(&db.pool, ok).await, "COMPLETED");
    let seen: serde_json::Value =
        sqlx::query_scalar("SELECT result FROM work_items WHERE id = $1").bind(ok).fetch_one(&db.pool).await.unwrap();
    assert!(seen["seen"].as_i64().unwrap() > 50, "the envelope arrived on stdin: {seen}");
    assert_eq!(dead_letter(&db.pool, retry).await, Some(("COMMAND_RETRYABLE".into(), "RETRIES_EXHAUSTED".into(), 2)));
    assert_eq!(dead_letter(&db.pool, fatal).await, Some(("COMMAND_FAILED".into(), "PERMANENT".into(), 1)));
    assert_eq!(dead_letter(&db.pool, garbage).await, Some(("AGENT_BAD_OUTPUT".into(), "PERMANENT".into(), 1)));
    let error: String = sqlx::query_scalar("SELECT error FROM attempts WHERE work_item_id = $1")
        .bind(fatal)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(error.contains("broken"), "stderr is kept in the error: {error}");
}

#[tokio::test]
async fn private_addresses_are_refused_unless_allowed() {
    let db = TestDb::new().await;
    let agent = TestAgent::start(|_| ok_json(json!({}))).await;
    let config =
        format!("[agents.internal]\nkind = \"http\"\nurl = \"{}\"\n[routes]\nTICKET = \"internal\"\n", agent.url);
    let order = insert_order(&db.pool, "MEDIUM").await;
    let item = insert_item(&db.pool, order, "TICKET", "{}").await;
    let engine = db.engine(&config).await;
    wait_for_status(&db.pool, item, "FAILED").await;
    stop(engine).await;
    assert_eq!(dead_letter(&db.pool, item).await.unwrap().0, "AGENT_ADDRESS_REFUSED");
    assert_eq!(agent.executions_of(item), 0);
}
