//! The scenarios of the fault-injection suite. Each prints its figures and asserts the oracle.

use crate::common::*;
use crate::harness::*;
use nix::sys::signal::Signal;
use std::time::{Duration, Instant};

const CONCURRENCY: i64 = 16;

/// (a) kill -9 of a daemon at random moments, repeatedly, with three daemons.
#[tokio::test]
async fn kill_9_at_random_moments_loses_nothing() {
    let (items, kills, max_ms, gap) =
        if long_mode() { (10_000, 30, 200, 300..1200) } else { (1_500, 5, 100, 150..600) };
    let db = TestDb::new().await;
    let agent = ledger_agent().await;
    let config = write_config(&agent, "");
    let ids = enqueue_mixed(&db, items, max_ms).await;
    let mut daemons: Vec<Daemon> = (0..3).map(|_| Daemon::start(&db, &config)).collect();
    let mut recoveries = Vec::new();
    for _ in 0..kills {
        tokio::time::sleep(Duration::from_millis(fastrand::u64(gap.clone()))).await;
        let victim = daemons.swap_remove(fastrand::usize(..daemons.len()));
        let pid = victim.pid();
        let held = held_by(&db, pid).await;
        victim.kill9();
        let killed_at = Instant::now();
        daemons.push(Daemon::start(&db, &config));
        if held > 0 {
            wait_until("the killed worker's items to be rescued", Duration::from_secs(30), || {
                let db = &db;
                async move { held_by(db, pid).await == 0 }
            })
            .await;
            recoveries.push(killed_at.elapsed().as_secs_f64());
        }
    }
    quiesce(&db, Duration::from_secs(180)).await;
    for d in daemons {
        assert!(d.terminate().await, "daemon exits 0 on SIGTERM");
    }
    let verdict = oracle(&db, &ids, &agent).await;
    recoveries.sort_by(f64::total_cmp);
    println!(
        "RECOVERY| kill -9 | {} kills with work in flight | p50 {:.2}s | p99 {:.2}s | max {:.2}s | lease 2s, sweep 0.5s |",
        recoveries.len(),
        percentile(&recoveries, 0.5),
        percentile(&recoveries, 0.99),
        recoveries.last().copied().unwrap_or(f64::NAN)
    );
    verdict.assert_holds("kill -9 of 1 of 3 daemons", &format!("{kills} kills"), kills as i64 * CONCURRENCY);
}

/// A dependency graph (fan-out, fan-in, chain in every order) under kill -9 of one of three
/// daemons and a PostgreSQL restart: every dependent runs when its dependencies allow, never
/// twice, never early, never stuck (the oracle's dependency checks).
#[tokio::test]
async fn dependencies_hold_under_kill_9_and_a_postgres_restart() {
    let (orders, kills) = if long_mode() { (250, 10) } else { (50, 3) };
    let db = TestDb::new().await;
    let agent = ledger_agent().await;
    let config = write_config(&agent, "");
    let ids = enqueue_graph(&db, orders, 40).await;
    let mut daemons: Vec<Daemon> = (0..3).map(|_| Daemon::start(&db, &config)).collect();
    for k in 0..kills {
        tokio::time::sleep(Duration::from_millis(fastrand::u64(300..900))).await;
        if k == kills / 2 {
            restart_postgres("immediate");
        }
        let victim = daemons.swap_remove(fastrand::usize(..daemons.len()));
        victim.kill9();
        daemons.push(Daemon::start(&db, &config));
    }
    quiesce(&db, Duration::from_secs(180)).await;
    for d in daemons {
        assert!(d.terminate().await, "daemon exits 0 on SIGTERM");
    }
    let verdict = oracle(&db, &ids, &agent).await;
    let (held, ran): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE status = 'QUEUED'), count(*) FILTER (WHERE status = 'COMPLETED') FROM work_items",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    println!("dependencies: {ran} completed, {held} held by a dead-lettered dependency");
    assert!(ran > (orders as i64) * 5, "the graph ran: {ran} completed");
    verdict.assert_holds(
        "dependency graph, kill -9 and a restart",
        &format!("{kills} kills, 1 restart"),
        (kills as i64 + 2) * CONCURRENCY,
    );
}

fn restart_postgres(mode: &str) {
    let version = std::fs::read_dir("/etc/postgresql")
        .expect("a Debian PostgreSQL cluster")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .next()
        .expect("a PostgreSQL version directory");
    let status = std::process::Command::new("pg_ctlcluster")
        .args(["--skip-systemctl-redirect", &version, "main", "restart", "-m", mode])
        .status()
        .expect("pg_ctlcluster runs");
    assert!(status.success(), "PostgreSQL restarted ({mode})");
}

/// (b) PostgreSQL restarts mid-run, fast and immediate.
#[tokio::test]
async fn postgres_restarts_mid_run_lose_nothing() {
    let (items, modes): (usize, &[&str]) =
        if long_mode() { (5_000, &["fast", "immediate", "fast", "immediate"]) } else { (800, &["fast", "immediate"]) };
    let db = TestDb::new().await;
    let agent = ledger_agent().await;
    let config = write_config(&agent, "");
    let ids = enqueue_mixed(&db, items, 40).await;
    let daemons: Vec<Daemon> = (0..2).map(|_| Daemon::start(&db, &config)).collect();
    let mut restarts = 0;
    for mode in modes {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        restart_postgres(mode);
        restarts += 1;
    }
    quiesce(&db, Duration::from_secs(180)).await;
    for d in daemons {
        let log = d.log_text();
        assert!(d.terminate().await, "daemon survived the restarts and exits 0\n{log}");
    }
    let verdict = oracle(&db, &ids, &agent).await;
    verdict.assert_holds(
        "PostgreSQL restart (fast, immediate)",
        &format!("{restarts} restarts"),
        restarts * 2 * CONCURRENCY,
    );
}

/// (c) pg_terminate_backend of every daemon connection, the LISTEN one included: a new item
/// still starts within a second (polling is set to a minute, so only LISTEN explains it).
#[tokio::test]
async fn terminated_backends_reconnect_and_listen_again() {
    let db = TestDb::new().await;
    let agent = ledger_agent().await;
    let config = write_config(&agent, "");
    let text =
        std::fs::read_to_string(&config).unwrap().replace("poll_interval = \"200ms\"", "poll_interval = \"60s\"");
    std::fs::write(&config, text).unwrap();
    let ids = enqueue_mixed(&db, 300, 20).await;
    let daemon = Daemon::start(&db, &config);
    tokio::time::sleep(Duration::from_millis(800)).await;
    let mut all_ids = ids.clone();
    for round in 0..3 {
        let killed: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = current_database() AND application_name = 'orderly') t",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
        assert!(killed > 0, "round {round}: the daemon had connections to kill");
        // Give the daemon a moment to notice and re-LISTEN, then measure a fresh pickup.
        wait_listening(&db).await;
        quiesce(&db, Duration::from_secs(60)).await;
        let order = insert_order(&db.pool, "URGENT").await;
        let item = insert_item(&db.pool, order, "TICKET", r#"{"n": -1, "ms": 0, "outcome": "ok"}"#).await;
        all_ids.push(item);
        let inserted = Instant::now();
        wait_until("the new item to start", Duration::from_secs(1), || async { agent.executions_of(item) > 0 }).await;
        println!("round {round}: new item started {:?} after INSERT", inserted.elapsed());
    }
    quiesce(&db, Duration::from_secs(60)).await;
    assert!(daemon.terminate().await);
    oracle(&db, &all_ids, &agent).await.assert_holds(
        "pg_terminate_backend, LISTEN included",
        "3 rounds",
        3 * CONCURRENCY,
    );
}

/// (e) SIGTERM during load: no duplicates, nothing for the rescuer, exit 0.
#[tokio::test]
async fn sigterm_under_load_is_clean() {
    let db = TestDb::new().await;
    let agent = ledger_agent().await;
    let config = write_config(&agent, "");
    let ids = enqueue_mixed(&db, if long_mode() { 4_000 } else { 800 }, 100).await;
    let first = Daemon::start(&db, &config);
    let second = Daemon::start(&db, &config);
    wait_until("load", Duration::from_secs(10), || async { agent.received.lock().unwrap().len() > 100 }).await;
    assert!(first.terminate().await, "exit 0 on SIGTERM");
    assert_eq!(
        count(&db.pool, "SELECT count(*) FROM work_items WHERE status = 'PROCESSING' AND lease_expires_at IS NOT NULL AND locked_by IS NULL").await,
        0
    );
    let replacement = Daemon::start(&db, &config);
    quiesce(&db, Duration::from_secs(120)).await;
    assert!(second.terminate().await);
    assert!(replacement.terminate().await);
    let verdict = oracle(&db, &ids, &agent).await;
    assert_eq!(verdict.lost_attempts, 0, "a clean stop leaves nothing to rescue");
    verdict.assert_holds("SIGTERM under load", "1 stop", 0);
}

/// (f) A command agent that ignores SIGTERM and spawns grandchildren: after timeouts, no
/// process of it survives.
#[tokio::test]
async fn stubborn_commands_leave_no_survivors() {
    let db = TestDb::new().await;
    let agent = ledger_agent().await;
    let dir = std::env::temp_dir().join(format!("orderly-stubborn-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let script = format!(
        "trap '' TERM; (trap '' TERM; sleep 600) & echo $! >> {d}/pids; sleep 600 & echo $! >> {d}/pids; echo $$ >> {d}/pids; wait",
        d = dir.display()
    );
    let extra = format!(
        "[agents.stubborn]\nkind = \"command\"\nprogram = \"/bin/sh\"\nargs = [\"-c\", {script:?}]\ntimeout = \"300ms\"\n"
    );
    let config = write_config(&agent, &extra);
    let text = std::fs::read_to_string(&config).unwrap().replace("TICKET = \"ledger\"", "TICKET = \"stubborn\"");
    std::fs::write(&config, text).unwrap();
    let order = insert_order(&db.pool, "MEDIUM").await;
    let mut ids = Vec::new();
    for _ in 0..20 {
        ids.push(insert_item(&db.pool, order, "TICKET", "{}").await);
    }
    let daemons: Vec<Daemon> = (0..2).map(|_| Daemon::start(&db, &config)).collect();
    quiesce(&db, Duration::from_secs(60)).await;
    for d in daemons {
        assert!(d.terminate().await);
    }
    let pids: Vec<i32> =
        std::fs::read_to_string(dir.join("pids")).unwrap().lines().filter_map(|l| l.trim().parse().ok()).collect();
    assert_eq!(pids.len(), 20 * 4 * 3, "three processes per execution, four attempts per item");
    let alive = |pid: &i32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| !s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'))
            .unwrap_or(false)
    };
    wait_until("no survivors", Duration::from_secs(5), || {
        let survivors = pids.iter().filter(|p| alive(p)).count();
        async move { survivors == 0 }
    })
    .await;
    assert_eq!(count(&db.pool, "SELECT count(*) FROM attempts WHERE status = 'TIMEOUT'").await, 80);
    std::fs::remove_dir_all(dir).ok();
}

/// (g) An engine task that panics (failpoints in the dispatcher, a completer, the heartbeat)
/// makes its daemon drain what it can and exit non-zero promptly, naming the task. A healthy
/// daemon then completes every item, those the dead ones held included (rescued after their
/// lease: the dead completer's results were never written).
#[tokio::test]
async fn a_dying_engine_task_exits_non_zero_and_loses_nothing() {
    let db = TestDb::new().await;
    let agent = ledger_agent().await;
    let config = write_config(&agent, "");
    let mut ids = Vec::new();
    let mut left_to_rescue = 0;
    for task in ["dispatcher", "completer", "heartbeat"] {
        ids.extend(enqueue_ok(&db.pool, 60, 50..=200, |_| "default".into()).await);
        // No backtrace: symbolizing one takes the panicking daemon long enough to claim more.
        let env = [("ORDERLY_FAILPOINTS", task), ("RUST_BACKTRACE", "0")];
        let mut daemon = Daemon::start_with(&db.url, &config, &env);
        let status = daemon.wait_exit(Duration::from_secs(30)).await;
        let took = daemon.age();
        let log = daemon.log_text();
        let status = status.unwrap_or_else(|| panic!("{task}: still running 30 s after its task panicked\n{log}"));
        assert!(!status.success(), "{task}: exits non-zero, got {status}\n{log}");
        let named = daemon.log_events("engine task panicked").iter().any(|event| event["task"] == task);
        assert!(named, "{task}: the log names the task that panicked\n{log}");
        let held = held_by(&db, daemon.pid()).await;
        if task == "completer" {
            assert!(held > 0, "the dead completer's batch was never written: its items wait for the rescuer");
        }
        left_to_rescue += held;
        println!(
            "failpoint {task}: {status} {:.2}s after start; {held} items left PROCESSING for the rescuer",
            took.as_secs_f64()
        );
    }
    let healthy = Daemon::start(&db, &config);
    let started = Instant::now();
    quiesce(&db, Duration::from_secs(60)).await;
    println!("healthy daemon: every item finished {:.2}s after its start", started.elapsed().as_secs_f64());
    assert!(healthy.terminate().await, "the healthy daemon exits 0 on SIGTERM");
    let unfinished: i64 =
        sqlx::query_scalar("SELECT count(*) FROM work_items WHERE id = ANY($1) AND status <> 'COMPLETED'")
            .bind(&ids)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(unfinished, 0, "every item completed");
    let verdict = oracle(&db, &ids, &agent).await;
    assert_eq!(verdict.lost_attempts, left_to_rescue, "each item the dead daemons held was rescued once");
    // Every duplicate is an item whose result the dead completers never wrote.
    verdict.assert_holds("engine task panics (dispatcher, completer, heartbeat)", "3 failpoints", left_to_rescue);
}

/// (h) SIGHUP with items in flight is logged and ignored (its default action would kill the
/// process and orphan the runs); SIGTERM then drains: exit 0, each item executed once.
#[tokio::test]
async fn sighup_is_ignored_and_sigterm_still_drains() {
    let db = TestDb::new().await;
    let agent = ledger_agent().await;
    let config = write_config(&agent, "");
    edit_config(&config, "level = \"warn,sqlx=error\"", "level = \"info,sqlx=error\"");
    let ids = enqueue_ok(&db.pool, CONCURRENCY as usize, 2500..=3000, |_| "default".into()).await;
    let mut daemon = Daemon::start(&db, &config);
    wait_until("every item in flight", Duration::from_secs(10), || {
        let (db, pid) = (&db, daemon.pid());
        let received = agent.received.lock().unwrap().len();
        async move { received == CONCURRENCY as usize && held_by(db, pid).await == CONCURRENCY }
    })
    .await;
    daemon.signal(Signal::SIGHUP);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let log = daemon.log_text();
    assert!(daemon.running(), "alive 1 s after SIGHUP\n{log}");
    assert_eq!(
        daemon.log_events("SIGHUP ignored: the configuration is read at start; restart to apply changes").len(),
        1,
        "{log}"
    );
    let in_flight = held_by(&db, daemon.pid()).await;
    assert_eq!(in_flight, CONCURRENCY, "SIGHUP interrupted nothing");
    let stopping = Instant::now();
    assert!(daemon.terminate().await, "exit 0 on SIGTERM after SIGHUP");
    println!(
        "SIGTERM with {in_flight} items in flight: drained and exited 0 in {:.2}s",
        stopping.elapsed().as_secs_f64()
    );
    assert_eq!(count(&db.pool, "SELECT count(*) FROM work_items WHERE status = 'COMPLETED'").await, CONCURRENCY);
    assert_eq!(count(&db.pool, "SELECT count(*) FROM attempts").await, CONCURRENCY, "one attempt each");
    assert_eq!(agent.received.lock().unwrap().len(), CONCURRENCY as usize, "each item executed exactly once");
    let verdict = oracle(&db, &ids, &agent).await;
    assert_eq!(verdict.lost_attempts, 0);
    verdict.assert_holds("SIGHUP then SIGTERM, items in flight", "1 SIGHUP, 1 stop", 0);
}

/// (i) PostgreSQL restarts while items routed only by workflow templates (no [routes]) are
/// claimed. The first restart cuts off template reads that are waiting (the test holds a
/// lock on `workflow_templates`, and templates are first needed all along the run, so the
/// catalog's cache keeps missing); the second comes a second later. A failed template read
/// defers the run (DATABASE_UNAVAILABLE, not counted); it is never WORKFLOW_INVALID, NO_ROUTE
/// or an agent error, and nothing is dead-lettered.
#[tokio::test]
async fn postgres_restart_during_template_routing_loses_nothing() {
    let (items, templates): (usize, usize) = if long_mode() { (10_000, 250) } else { (2_000, 50) };
    let db = TestDb::new().await;
    let agent = ledger_agent().await;
    let config = write_config(&agent, "");
    edit_config(&config, "[routes]\nTICKET = \"ledger\"\n", "");
    let mut workflows = Vec::new();
    for k in 0..templates {
        let name = format!("fault-wf-{k}");
        let id: uuid::Uuid = sqlx::query_scalar(
            "INSERT INTO workflow_templates (name, document_type, workflow_definition)
             VALUES ($1, 'TICKET', $2) RETURNING id",
        )
        .bind(&name)
        .bind(serde_json::json!({"steps": {"TICKET": {"agent": "ledger"}}}))
        .fetch_one(&db.pool)
        .await
        .unwrap();
        // The catalog matches a template by name or by id.
        workflows.push(if k % 2 == 0 { name } else { id.to_string() });
    }
    // Order k runs template k·templates/orders: a template is first needed every ~40 items.
    let orders = items.div_ceil(20);
    let ids = enqueue_ok(&db.pool, items, 0..=80, |k| workflows[k * templates / orders].clone()).await;
    let daemons: Vec<Daemon> = (0..2).map(|_| Daemon::start(&db, &config)).collect();
    wait_until("work under way", Duration::from_secs(15), || async { agent.received.lock().unwrap().len() > 100 })
        .await;

    let mut lock = db.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE workflow_templates IN ACCESS EXCLUSIVE MODE").execute(&mut *lock).await.unwrap();
    let waiting = || async {
        count(
            &db.pool,
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'orderly'
               AND wait_event_type = 'Lock' AND query ILIKE '%workflow_templates%'",
        )
        .await
    };
    wait_until("a template read waiting", Duration::from_secs(10), || async { waiting().await > 0 }).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (blocked, live) = (waiting().await, live_items(&db).await);
    restart_postgres("fast");
    drop(lock); // its connection went with the restart
    println!("restart 1 (fast): {blocked} template reads waiting, {live} items live");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let live = live_items(&db).await;
    restart_postgres("immediate");
    println!("restart 2 (immediate): {live} items live");

    quiesce(&db, Duration::from_secs(120)).await;
    let mut deferred_template_reads = 0;
    for d in daemons {
        deferred_template_reads += d
            .log_events("the database was unavailable while preparing the run; released, not counted")
            .iter()
            .filter(|event| event["error"].as_str().is_some_and(|e| e.contains("workflow template")))
            .count();
        let log = d.log_text();
        assert!(d.terminate().await, "daemon survived the restarts and exits 0\n{log}");
    }
    let codes: Vec<(Option<String>, i64)> =
        sqlx::query_as("SELECT error_code, count(*) FROM attempts GROUP BY 1 ORDER BY 1")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    println!("attempts by error code: {codes:?}; template reads deferred by the restart: {deferred_template_reads}");
    assert!(deferred_template_reads > 0, "the first restart cut off template reads");
    let unfinished: i64 =
        sqlx::query_scalar("SELECT count(*) FROM work_items WHERE id = ANY($1) AND status <> 'COMPLETED'")
            .bind(&ids)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(unfinished, 0, "every item completed");
    assert_eq!(count(&db.pool, "SELECT count(*) FROM dead_letters").await, 0, "no dead letters");
    assert_eq!(
        count(
            &db.pool,
            "SELECT count(*) FROM attempts
             WHERE error_code IN ('AGENT_ERROR', 'WORKFLOW_INVALID', 'NO_ROUTE', 'UNKNOWN_AGENT')"
        )
        .await,
        0,
        "a restart is never a routing or agent error"
    );
    let verdict = oracle(&db, &ids, &agent).await;
    verdict.assert_holds("PostgreSQL restart during template routing", "2 restarts", 2 * 2 * CONCURRENCY);
}

async fn live_items(db: &TestDb) -> i64 {
    count(&db.pool, "SELECT count(*) FROM work_items WHERE status IN ('QUEUED', 'PROCESSING')").await
}

/// (j) First start of four replicas at once on a database that does not exist yet (the
/// default `migrate_on_start` creates it and migrates): one creates it, all run, none fails
/// on CREATE DATABASE or the migrations; the items complete and each replica exits 0.
#[tokio::test]
async fn four_replicas_first_start_on_a_missing_database() {
    let scratch = ScratchDb::fresh();
    assert!(!scratch.exists().await);
    let agent = ledger_agent().await;
    let config = write_config(&agent, "");
    edit_config(&config, "migrate_on_start = false", "migrate_on_start = true");
    let started = Instant::now();
    let mut daemons: Vec<Daemon> = (0..4).map(|_| Daemon::start_with(&scratch.url, &config, &[])).collect();
    // Each replica LISTENs once its engine is up, after the migrations.
    let pool = loop {
        if let Ok(pool) = sqlx::PgPool::connect(&scratch.url).await {
            break pool;
        }
        for d in &mut daemons {
            assert!(d.running(), "a replica exited during the first start\n{}", d.log_text());
        }
        assert!(started.elapsed() < Duration::from_secs(20), "the database was not created within 20 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    loop {
        for d in &mut daemons {
            assert!(d.running(), "a replica exited during the first start\n{}", d.log_text());
        }
        let listening = count(
            &pool,
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'orderly' AND (query ILIKE 'LISTEN%' OR query LIKE '%orderly listener%')",
        )
        .await;
        if listening == 4 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "{listening} of 4 replicas listening after 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let up = started.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    for d in &mut daemons {
        assert!(d.running(), "every replica still runs\n{}", d.log_text());
    }
    let migrations = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations")).unwrap().count() as i64;
    assert_eq!(count(&pool, "SELECT count(*) FROM _sqlx_migrations WHERE success").await, migrations);
    let ids = enqueue_ok(&pool, 200, 0..=20, |_| "default".into()).await;
    let enqueued = Instant::now();
    quiesce_pool(&pool, Duration::from_secs(30)).await;
    println!(
        "4 replicas up {:.2}s after a simultaneous start on a missing database; 200 items done in {:.2}s",
        up.as_secs_f64(),
        enqueued.elapsed().as_secs_f64()
    );
    let completed: i64 =
        sqlx::query_scalar("SELECT count(*) FROM work_items WHERE id = ANY($1) AND status = 'COMPLETED'")
            .bind(&ids)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(completed, 200);
    for d in daemons {
        let errors: Vec<_> = d
            .log_text()
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(|event| event["level"] == "ERROR")
            .collect();
        assert!(errors.is_empty(), "no errors logged: {errors:?}");
        assert!(d.terminate().await, "each replica exits 0 on SIGTERM");
    }
    pool.close().await;
    // `scratch` drops the database.
}
