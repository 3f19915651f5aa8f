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

/// (d) SIGSTOP past the lease, then SIGCONT: late results are rejected as stale and every
/// item still has exactly one success.
#[tokio::test]
async fn a_paused_daemon_cannot_complete_what_was_rescued() {
    let db = TestDb::new().await;
    let agent = ledger_agent().await;
    let config = write_config(&agent, "");
    let ids = enqueue_mixed(&db, if long_mode() { 3_000 } else { 600 }, 300).await;
    let paused = Daemon::start(&db, &config);
    wait_until("the first daemon to hold items", Duration::from_secs(10), || {
        let (db, pid) = (&db, paused.pid());
        async move { held_by(db, pid).await >= 8 }
    })
    .await;
    paused.signal(Signal::SIGSTOP);
    let other = Daemon::start(&db, &config);
    // Past the 2s lease: the leader (the other daemon) rescues the paused daemon's items.
    wait_until("the paused daemon's items to be rescued", Duration::from_secs(20), || {
        let (db, pid) = (&db, paused.pid());
        async move { held_by(db, pid).await == 0 }
    })
    .await;
    paused.signal(Signal::SIGCONT);
    quiesce(&db, Duration::from_secs(120)).await;
    let log = paused.log_text();
    assert!(paused.terminate().await);
    assert!(other.terminate().await);
    let verdict = oracle(&db, &ids, &agent).await;
    assert!(verdict.lost_attempts > 0, "the pause was long enough to be rescued");
    let stale = log.matches("stale result rejected").count() + log.matches("execution abandoned").count();
    println!("paused daemon: {stale} late results rejected or abandoned");
    verdict.assert_holds("SIGSTOP past the lease, SIGCONT", "1 pause", CONCURRENCY);
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
