//! The `orderly` binary as operators use it: real processes, real signals.

use crate::common::*;
use std::process::{Command, Output, Stdio};

pub fn orderly(db_url: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_orderly"))
        .args(args)
        .env("DATABASE_URL", db_url)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("orderly runs")
}

pub fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

#[tokio::test]
async fn check_config_names_bad_keys_and_redacts_secrets() {
    let dir = tempdir();
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[worker]\nconcurency = 4\n").unwrap();
    let out = orderly("postgres://u:pw@localhost/x", &["--config", bad.to_str().unwrap(), "check-config"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("concurency"), "{}", text(&out));

    let good = dir.join("good.toml");
    std::fs::write(
        &good,
        "[agents.triage]\nkind = \"http\"\nurl = \"https://agents.example/triage\"\nheaders = { Authorization = \"Bearer topsecret\" }\n[routes]\nTICKET = \"triage\"\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_orderly"))
        .args(["--config", good.to_str().unwrap(), "check-config"])
        .env("DATABASE_URL", "postgres://u:hunter2@localhost/x")
        .env("ORDERLY__WORKER__CONCURRENCY", "7")
        .env("ORDERLY__ROUTES__Ticket_v2", "triage")
        .output()
        .unwrap();
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    assert!(!shown.contains("hunter2") && !shown.contains("topsecret"), "{shown}");
    assert!(shown.contains("concurrency = 7"), "environment layers over the file: {shown}");
    assert!(shown.contains("TICKET = \"triage\""), "{shown}");
    assert!(shown.contains("Ticket_v2 = \"triage\""), "route keys from the environment keep their case: {shown}");

    let out = Command::new(env!("CARGO_BIN_EXE_orderly"))
        .args(["check-config"])
        .env("ORDERLY__WORKER__POLL_INTERVAL", "often")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(text(&out).contains("poll_interval"), "{}", text(&out));

    let out = Command::new(env!("CARGO_BIN_EXE_orderly"))
        .args(["check-config"])
        .env("ORDERLY__WORKER__LEASE", "100000000000y")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(text(&out).contains("worker.lease"), "{}", text(&out));
}

#[tokio::test]
async fn migrate_creates_the_database_and_is_idempotent() {
    let name = format!("orderly_cli_{}", uuid::Uuid::new_v4().simple());
    let mut url = reqwest::Url::parse(&base_url()).unwrap();
    url.set_path(&format!("/{name}"));
    let url = url.to_string();
    for _ in 0..2 {
        let out = orderly(&url, &["migrate"]);
        assert!(out.status.success(), "{}", text(&out));
    }
    orderly::db::drop_database(&url).await.unwrap();
}

/// Replicas creating the same database at once: PostgreSQL answers the losers with 42P04 or,
/// when the creates overlap, 23505 on pg_database_datname_index; both mean it exists.
#[tokio::test]
async fn concurrent_creates_of_one_database_all_succeed_once() {
    let name = format!("orderly_race_{}", uuid::Uuid::new_v4().simple());
    let mut url = reqwest::Url::parse(&base_url()).unwrap();
    url.set_path(&format!("/{name}"));
    let url = url.to_string();
    let tasks: Vec<_> = (0..6)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { orderly::db::ensure_database(&url).await })
        })
        .collect();
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.unwrap());
    }
    orderly::db::drop_database(&url).await.unwrap();
    let created = results.iter().filter(|r| matches!(r, Ok(true))).count();
    assert!(results.iter().all(Result::is_ok), "no replica fails: {results:?}");
    assert_eq!(created, 1, "exactly one replica created it");
}

#[tokio::test]
async fn an_unreachable_database_is_explained() {
    let out = orderly("postgres://postgres@127.0.0.1:1/orderly", &["status"]);
    assert!(!out.status.success());
    let shown = text(&out);
    assert!(shown.contains("cannot reach PostgreSQL at postgres://postgres@127.0.0.1:1/orderly"), "{shown}");
    assert!(shown.contains("DATABASE_URL"), "{shown}");
    // The refusal itself, at once (as `orderly run` says it), not the pool giving up after
    // its acquire timeout of retries.
    assert!(shown.contains("Connection refused") && !shown.contains("pool timed out"), "{shown}");
}

#[tokio::test]
async fn enqueue_run_status_and_dead_letters_from_the_command_line() {
    let db = TestDb::new().await;
    let dir = tempdir();
    let config = dir.join("orderly.toml");
    std::fs::write(&config, "[worker]\npoll_interval = \"100ms\"\n[routes]\nTICKET = \"echo\"\n").unwrap();
    let cfg = config.to_str().unwrap();

    let out = orderly(
        &db.url,
        &[
            "--config",
            cfg,
            "enqueue",
            "--priority",
            "high",
            "--item",
            r#"TICKET={"subject":"a"}"#,
            "--item",
            "INVOICE={}",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let order_file = dir.join("order.json");
    std::fs::write(
        &order_file,
        r#"{"workflow_id":"default","tenant_id":"7f0c1c9e-6d1b-4f7e-9a51-0f2f3a4b5c6d","created_by":"7f0c1c9e-6d1b-4f7e-9a51-0f2f3a4b5c6e","items":[{"type":"TICKET","content":{"subject":"b"}}]}"#,
    )
    .unwrap();
    let out = orderly(&db.url, &["--config", cfg, "enqueue", "--file", order_file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let out = orderly(&db.url, &["status"]);
    assert!(text(&out).contains("QUEUED"), "{}", text(&out));

    let mut daemon = Command::new(env!("CARGO_BIN_EXE_orderly"))
        .args(["--config", cfg, "run"])
        .env("DATABASE_URL", &db.url)
        .env("ORDERLY__ADMIN__LISTEN", "127.0.0.1:0")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_quiet(&db.pool).await;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(daemon.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = tokio::task::spawn_blocking(move || daemon.wait()).await.unwrap().unwrap();
    assert!(status.success(), "SIGTERM exits 0, got {status}");
    assert_eq!(count(&db.pool, "SELECT count(*) FROM work_items WHERE status = 'COMPLETED'").await, 2);

    let out = orderly(&db.url, &["dead-letters", "list"]);
    let listed = text(&out);
    assert!(listed.contains("NO_ROUTE") && listed.contains("permanent error"), "{listed}");
    let id = listed.split_whitespace().next().unwrap().to_owned();
    let out = orderly(&db.url, &["dead-letters", "show", &id]);
    let shown = text(&out);
    assert!(shown.contains("no route for item type INVOICE") && shown.contains("attempts:"), "{shown}");
    let out = orderly(&db.url, &["dead-letters", "discard", &id, "--actor", "oncall"]);
    assert!(!out.status.success(), "a discard needs a reason on the CLI too");
    let out = orderly(&db.url, &["dead-letters", "discard", &id, "--actor", "oncall", "--reason", "   "]);
    assert!(!out.status.success() && text(&out).contains("a reason is required"), "{}", text(&out));
    let out = orderly(&db.url, &["dead-letters", "discard", &id, "--actor", "oncall", "--reason", "known bad input"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = orderly(&db.url, &["dead-letters", "replay", &id]);
    assert!(!out.status.success(), "a discarded letter cannot be replayed");
    assert_eq!(count(&db.pool, "SELECT count(*) FROM audit_logs WHERE user_id = 'oncall'").await, 1);
}

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("orderly-test-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `orderly bench` at a small size: the daemon it starts processes every item, the report
/// carries what was measured, and the scratch database is dropped afterwards.
#[tokio::test]
async fn bench_runs_the_daemon_and_reports_what_it_measured() {
    let out = orderly(
        &base_url(),
        &["bench", "--items", "300", "--items-per-order", "30", "--pickup-samples", "5", "--json"],
    );
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap_or_default()).unwrap();
    assert_eq!(report["items"], 300);
    assert_eq!(report["synchronous_commit"], "on", "the bench reports the durability it ran with");
    assert!(report["processing_items_per_s"].as_f64().unwrap() > 0.0, "{report}");
    assert_eq!(report["pickup_ms"]["samples"], 5);
    assert!(report["end_to_end_ms"]["samples"].as_u64().unwrap() > 0, "{report}");
    assert!(report["daemon_peak_rss_mib"].as_f64().unwrap() > 0.0, "{report}");
    // Two item updates, an attempt and an approval per item: a few hundred bytes at least.
    assert!(report["db_wal_bytes_per_item"].as_f64().unwrap() > 200.0, "{report}");
    // The same four rows, plus two status changes for each of the 10 orders: 4.07 per item.
    // Counters read while a connection still held unpublished statistics came out near 2.
    let rows = report["db_rows_written_per_item"].as_f64().unwrap();
    assert!((4.0..4.2).contains(&rows), "rows written per item: {rows}");
    let pool = sqlx::PgPool::connect(&base_url()).await.unwrap();
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_database WHERE datname = 'orderly_bench'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(left, 0, "the scratch database is dropped");
}

/// `orderly bench --shape retried`: about a tenth of the items fail their first attempt (the
/// echo agent's `fail_once_key`) and complete on their second; every item completes, and the
/// failed attempts are recorded beside the completed ones.
#[tokio::test]
async fn bench_retried_shape_fails_a_tenth_once_and_completes_every_item() {
    let name = format!("orderly_bench_test_{}", uuid::Uuid::new_v4().simple());
    let out = orderly(
        &base_url(),
        &["bench", "--items", "1000", "--shape", "retried", "--throughput-only", "--keep", "--database-name", &name],
    );
    assert!(out.status.success(), "{}", text(&out));
    let mut url = reqwest::Url::parse(&base_url()).unwrap();
    url.set_path(&format!("/{name}"));
    let url = url.to_string();
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let (completed, failed_once, failed_attempts, completed_attempts): (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM work_items WHERE status = 'COMPLETED'),
                (SELECT count(*) FROM work_items WHERE content::jsonb ? 'fail_once'),
                (SELECT count(*) FROM attempts WHERE status = 'FAILED' AND attempt_number = 1),
                (SELECT count(*) FROM attempts WHERE status = 'COMPLETED')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    pool.close().await;
    orderly::db::drop_database(&url).await.unwrap();
    assert_eq!(completed, 1000);
    assert_eq!(completed_attempts, 1000);
    assert!((40..=200).contains(&failed_once), "about a tenth marked to fail once: {failed_once}");
    assert_eq!(failed_attempts, failed_once, "each marked item failed its first attempt, and only those");
}

/// `orderly bench --agent-latency`: every item goes through the bench's own `http` agent,
/// the report says so and derives the ideal throughput from the latency, and the scratch
/// database it was given by name is dropped.
#[tokio::test]
async fn bench_with_an_agent_latency_sends_every_item_to_its_http_agent() {
    let name = format!("orderly_bench_test_{}", uuid::Uuid::new_v4().simple());
    let out = orderly(
        &base_url(),
        &[
            "bench",
            "--items",
            "200",
            "--items-per-order",
            "20",
            "--concurrency",
            "50",
            "--agent-latency",
            "20ms",
            "--throughput-only",
            "--json",
            "--database-name",
            &name,
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap_or_default()).unwrap();
    assert_eq!(report["agent"], "http", "{report}");
    assert_eq!(report["agent_latency_ms"], 20.0, "{report}");
    assert_eq!(report["ideal_items_per_s"], 2500.0, "50 slots / 20 ms: {report}");
    assert_eq!(report["agent_requests"], 200, "one request per item: {report}");
    let peak = report["agent_peak_in_flight"].as_u64().unwrap();
    assert!((1..=50).contains(&peak), "never more requests at once than slots: {report}");
    assert!(report["ratio_to_ideal"].as_f64().unwrap() > 0.0, "{report}");
    let pool = sqlx::PgPool::connect(&base_url()).await.unwrap();
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_database WHERE datname = $1")
        .bind(&name)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(left, 0, "the named scratch database is dropped");

    // The bench drops the database it is given: only orderly_bench and its extensions.
    for refused in ["orderly", "postgres", "orderly_bench-x", "Orderly_bench"] {
        let out = orderly(&base_url(), &["bench", "--database-name", refused]);
        assert_eq!(out.status.code(), Some(2), "--database-name {refused} is refused: {}", text(&out));
    }
    let out = orderly(&base_url(), &["bench", "--agent-latency", "0s"]);
    assert_eq!(out.status.code(), Some(2), "a latency of zero is refused: {}", text(&out));
}

/// The soft and hard limits of open files of a process, from /proc.
fn open_files_limits(pid: u32) -> Option<(String, String)> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let mut fields = line["Max open files".len()..].split_whitespace();
    Some((fields.next()?.to_owned(), fields.next()?.to_owned()))
}

/// `orderly run` started under a low soft limit of open files (as systemd's 1,024) raises it
/// to the hard limit: an execution of an `http` agent in flight holds a socket.
#[tokio::test]
async fn orderly_run_raises_its_open_files_limit_to_the_hard_limit() {
    let db = TestDb::new().await;
    let (_, hard) = open_files_limits(std::process::id()).unwrap();
    let mut daemon = Command::new("bash")
        .args(["-c", "ulimit -S -n 64 && exec \"$0\" \"$@\"", env!("CARGO_BIN_EXE_orderly"), "run"])
        .env("DATABASE_URL", &db.url)
        .env("ORDERLY__ADMIN__LISTEN", "127.0.0.1:0")
        .env_remove("ORDERLY_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = daemon.id();
    // The daemon raises it first thing; by the time it LISTENs it has long been done.
    let start = std::time::Instant::now();
    while start.elapsed() < std::time::Duration::from_secs(20)
        && count(
            &db.pool,
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'orderly' AND (query ILIKE 'LISTEN%' OR query LIKE '%orderly listener%')",
        )
        .await
            == 0
    {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let seen = open_files_limits(pid);
    let raised = seen.as_ref().is_some_and(|(soft, hard_now)| soft == hard_now);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = tokio::task::spawn_blocking(move || daemon.wait()).await.unwrap().unwrap();
    assert!(raised, "the soft limit was not raised to the hard limit ({hard}): {seen:?}");
    assert_eq!(seen.map(|(_, h)| h), Some(hard), "the hard limit is left as it was");
    assert!(status.success(), "SIGTERM exits 0, got {status}");
}

/// `orderly demo` end to end at a small size: real agents, the summary, and its SLA part
/// (escalations fired by a slow agent, delivered to the demo's own webhook).
#[tokio::test]
async fn the_demo_runs_and_shows_its_sla() {
    let out = orderly(&base_url(), &["demo", "--orders", "40"]);
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    assert!(shown.contains("orderly demo summary"), "{shown}");
    assert!(shown.contains("SLA \"status reports finish quickly\""), "{shown}");
    assert!(shown.contains("messages received by the on-call webhook"), "{shown}");
    assert!(shown.contains("schedule \"demo heartbeat\"") && shown.contains("orders made"), "{shown}");
    assert!(shown.contains("spend per agent") && shown.contains("extractor") && shown.contains("USD"), "{shown}");
    let kept: i64 = shown
        .lines()
        .find_map(|l| l.trim().strip_prefix("progress reports kept: "))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    assert!(kept > 0, "the extractor reports progress: {shown}");
    // The judged tickets: every one is accounted for as passed, revised or held.
    let judged: Vec<i64> = shown
        .lines()
        .find_map(|l| l.trim().strip_prefix("passed at once "))
        .map(|l| l.split(|c: char| !c.is_ascii_digit()).filter_map(|n| n.parse().ok()).collect())
        .unwrap_or_default();
    assert_eq!(judged.len(), 3, "{shown}");
    assert!(judged.iter().sum::<i64>() > 0, "the judge judged tickets: {shown}");
}

/// A reader that stops reading (`| head -1`) ends the command quietly, as SIGPIPE would, never
/// with a panic.
#[tokio::test]
async fn output_into_a_closed_pipe_ends_quietly() {
    let db = TestDb::new().await;
    // More output than a pipe holds (64 KiB), so the writer meets the closed pipe.
    let order = insert_order(&db.pool, "MEDIUM").await;
    sqlx::query("INSERT INTO work_items (work_order_id, type, content) SELECT $1, 'INVOICE', '{}' FROM generate_series(1, 1000)")
        .bind(order)
        .execute(&db.pool)
        .await
        .unwrap();
    let engine = db.engine("").await;
    wait_quiet(&db.pool).await;
    stop(engine).await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_orderly"))
        .args(["dead-letters", "list", "--limit", "1000", "--json"])
        .env("DATABASE_URL", &db.url)
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Read one line, then close the pipe.
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 16];
    std::io::Read::read_exact(&mut stdout, &mut first).unwrap();
    drop(stdout);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "no panic: {stderr}");
    assert_ne!(out.status.code(), Some(101), "{stderr}");
}

/// The CLI at parity with the API and the page: `items show`, `approvals list`, `status
/// --json` in the API's shape, `dead-letters show` by item id, the item id in
/// `dead-letters list`; an unmigrated database and an unknown item type say what to do.
#[tokio::test]
async fn the_cli_shows_what_the_api_and_the_page_show() {
    let db = TestDb::new().await;
    let (item, letter) = crate::api::dead_lettered(&db, "TICKET", "{}", "AGENT_ERROR", "no").await;
    let held = crate::api::held(&db).await;
    let out = orderly(&db.url, &["items", "show", &item.to_string()]);
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    assert!(
        shown.contains("status FAILED") && shown.contains("waiting:") && shown.contains(&letter.to_string()),
        "{shown}"
    );
    let out = orderly(&db.url, &["items", "show", &item.to_string(), "--json"]);
    let json: serde_json::Value = serde_json::from_str(&text(&out)).unwrap();
    assert_eq!(json["item"]["id"], item.to_string());
    assert!(json["waiting_reason"]["kind"].is_string());
    let out = orderly(&db.url, &["approvals", "list"]);
    assert!(text(&out).contains(&held.to_string()) && text(&out).contains("failed: json_schema"), "{}", text(&out));
    let out = orderly(&db.url, &["status", "--json"]);
    let status: serde_json::Value = serde_json::from_str(&text(&out)).unwrap();
    let app = crate::api::app(&db, "");
    let (_, api) = crate::api::get(&app, "/api/v1/status").await;
    for key in ["by_state", "by_type", "open_dead_letters", "awaiting_approval", "escalations_open", "leadership"] {
        assert_eq!(status[key], api[key], "{key}: the CLI and the API agree");
    }
    let out = orderly(&db.url, &["dead-letters", "list"]);
    assert!(text(&out).contains(&format!("item {item}")), "{}", text(&out));
    let out = orderly(&db.url, &["dead-letters", "show", &item.to_string()]);
    assert!(out.status.success() && text(&out).contains(&format!("dead letter {letter}")), "{}", text(&out));
    let out = orderly(&db.url, &["enqueue", "--item", "SPACESHIP={}"]);
    assert!(!out.status.success() && text(&out).contains("TICKET"), "names the known types: {}", text(&out));
    // A database orderly never migrated.
    let mut bare = reqwest::Url::parse(&db.url).unwrap();
    let name = format!("orderly_bare_{}", uuid::Uuid::new_v4().simple());
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&db.pool).await.unwrap();
    bare.set_path(&format!("/{name}"));
    let out = orderly(bare.as_str(), &["status"]);
    let said = text(&out);
    assert!(!out.status.success() && said.contains("run `orderly migrate`"), "{said}");
    assert_eq!(said.matches("error").count(), 1, "said once: {said}");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE {name}"))).execute(&db.pool).await.unwrap();
}

/// Bulk replay and discard by filter from the command line, as the API's: a filter (or
/// `--all`) is required, a discard needs a reason, each letter is audited.
#[tokio::test]
async fn dead_letters_are_replayed_and_discarded_in_bulk_by_filter() {
    let db = TestDb::new().await;
    let (_, first) = crate::api::dead_lettered(&db, "TICKET", "{}", "AGENT_ERROR", "no").await;
    let (_, second) = crate::api::dead_lettered(&db, "INVOICE", "{}", "AGENT_REJECTED", "no").await;
    let out = orderly(&db.url, &["dead-letters", "bulk-replay"]);
    assert!(!out.status.success() && text(&out).contains("--all"), "{}", text(&out));
    let out =
        orderly(&db.url, &["dead-letters", "bulk-discard", "--error-code", "AGENT_REJECTED", "--reason", "known"]);
    assert!(out.status.success() && text(&out).contains("discarded 1 of 1"), "{}", text(&out));
    let out = orderly(&db.url, &["dead-letters", "bulk-replay", "--all", "--actor", "carol"]);
    assert!(out.status.success() && text(&out).contains("replayed 1 of 1"), "{}", text(&out));
    let resolutions: Vec<(uuid::Uuid, Option<String>)> =
        sqlx::query_as("SELECT id, resolution::text FROM dead_letters ORDER BY created_at")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert!(resolutions.contains(&(first, Some("REPLAYED".into()))), "{resolutions:?}");
    assert!(resolutions.contains(&(second, Some("DISCARDED".into()))), "{resolutions:?}");
}
