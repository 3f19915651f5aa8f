//! (d) Leadership under a frozen leader: SIGSTOP of the leader, SIGSTOP of a follower, and a
//! network path to PostgreSQL that stops passing bytes (a partition with no FIN). The leader
//! lease (`worker.leader_lease`, 2 s here) runs out on the database clock, another replica
//! takes over and rescues, and the frozen one, once it runs again, acts as leader only if the
//! database says so.

use crate::common::*;
use crate::harness::*;
use nix::sys::signal::Signal;
use std::time::{Duration, Instant};

/// The fault config's `worker.leader_lease`.
const LEADER_LEASE: Duration = Duration::from_secs(2);

/// The items the frozen process `pid` holds once its last statements have landed: what the
/// fault can make run twice (its `worker.concurrency` executions, plus finished ones whose
/// results it had not written yet).
async fn held_at_the_fault(db: &TestDb, pid: i32) -> i64 {
    tokio::time::sleep(Duration::from_millis(300)).await;
    held_by(db, pid).await
}

/// How many items a daemon should hold.
enum Held {
    AtLeast(i64),
    Exactly(i64),
}

/// Waits until the daemon `pid` holds as many items as `held` says.
async fn wait_held(db: &TestDb, pid: i32, held: Held, what: &str, deadline: Duration) {
    wait_until(what, deadline, || async {
        let n = held_by(db, pid).await;
        match held {
            Held::AtLeast(min) => n >= min,
            Held::Exactly(want) => n == want,
        }
    })
    .await;
}

/// Starts the first daemon, waits until it leads and holds `min_held` items.
async fn leader_with_work(db: &TestDb, config: &std::path::Path, min_held: i64) -> Daemon {
    let leader = Daemon::start(db, config);
    wait_leader(db, leader.pid(), "the first daemon to lead", Duration::from_secs(15)).await;
    wait_held(db, leader.pid(), Held::AtLeast(min_held), "the leader to hold items", Duration::from_secs(15)).await;
    leader
}

/// SIGSTOP of the leader while it holds items: the other daemon takes the lease within the
/// lease plus a renewal interval, rescues the frozen leader's items, and after SIGCONT every
/// late result of the old leader is rejected and it does not lead again on its own say-so.
#[tokio::test]
async fn a_paused_leader_hands_over_and_cannot_complete_what_was_rescued() {
    let db = TestDb::new().await;
    let agent = ledger_agent().await;
    let config = write_config(&agent, "");
    let ids = enqueue_mixed(&db, if long_mode() { 3_000 } else { 600 }, 300).await;
    let paused = leader_with_work(&db, &config, 8).await;
    let other = Daemon::start(&db, &config);
    wait_held(&db, other.pid(), Held::AtLeast(1), "the second daemon to run", Duration::from_secs(15)).await;
    let epoch = leader_epoch(&db).await;
    paused.signal(Signal::SIGSTOP);
    let stopped = Instant::now();
    let held = held_at_the_fault(&db, paused.pid()).await;
    let takeover = wait_leader(&db, other.pid(), "the other daemon to take the lead", Duration::from_secs(20)).await;
    assert!(leader_epoch(&db).await > epoch, "the takeover began a new epoch");
    wait_held(&db, paused.pid(), Held::Exactly(0), "the paused leader's items to be rescued", Duration::from_secs(20))
        .await;
    let rescued = stopped.elapsed();
    paused.signal(Signal::SIGCONT);
    quiesce(&db, Duration::from_secs(120)).await;
    assert_eq!(leader_pid(&db).await, Some(other.pid()), "the woken daemon did not take the lead back");
    let lost = paused.log_events("leadership lost");
    let log = paused.log_text();
    assert!(paused.terminate().await);
    assert!(other.terminate().await);
    assert!(!lost.is_empty(), "the woken leader logs that it lost the lead\n{log}");
    println!(
        "TAKEOVER| SIGSTOP of the leader | lease {LEADER_LEASE:?} | new leader after {:.2}s | its items rescued after {:.2}s | woken leader: {} |",
        takeover.as_secs_f64(),
        rescued.as_secs_f64(),
        lost[0]["fields"]["reason"].as_str().or(lost[0]["reason"].as_str()).unwrap_or("?")
    );
    let verdict = oracle(&db, &ids, &agent).await;
    assert!(verdict.lost_attempts > 0, "the pause was long enough to be rescued");
    verdict.assert_holds("SIGSTOP of the leader past both leases, SIGCONT", "1 pause", held);
}

/// SIGSTOP of a follower: the leader keeps its lease (same epoch) and rescues the follower's
/// items; late results are rejected after SIGCONT.
#[tokio::test]
async fn a_paused_follower_is_rescued_by_the_leader_that_keeps_its_lease() {
    let db = TestDb::new().await;
    let agent = ledger_agent().await;
    let config = write_config(&agent, "");
    let ids = enqueue_mixed(&db, if long_mode() { 3_000 } else { 600 }, 300).await;
    let leader = leader_with_work(&db, &config, 1).await;
    let epoch = leader_epoch(&db).await;
    let paused = Daemon::start(&db, &config);
    wait_held(&db, paused.pid(), Held::AtLeast(8), "the follower to hold items", Duration::from_secs(15)).await;
    paused.signal(Signal::SIGSTOP);
    let held = held_at_the_fault(&db, paused.pid()).await;
    wait_held(
        &db,
        paused.pid(),
        Held::Exactly(0),
        "the paused follower's items to be rescued",
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(leader_pid(&db).await, Some(leader.pid()), "the leader kept the lead");
    assert_eq!(leader_epoch(&db).await, epoch, "in the same epoch");
    paused.signal(Signal::SIGCONT);
    quiesce(&db, Duration::from_secs(120)).await;
    let log = paused.log_text();
    assert!(paused.terminate().await);
    assert!(leader.terminate().await);
    let verdict = oracle(&db, &ids, &agent).await;
    assert!(verdict.lost_attempts > 0, "the pause was long enough to be rescued");
    let stale = log.matches("stale result rejected").count() + log.matches("execution abandoned").count();
    println!("paused follower: {stale} late results rejected or abandoned");
    verdict.assert_holds("SIGSTOP of a follower past the lease, SIGCONT", "1 pause", held);
}

/// The leader's every connection goes through a proxy that stops passing bytes (no FIN, no
/// RST: the sessions stay open on the server). The lease runs out on the database clock, the
/// other daemon takes over and rescues; the cut-off leader steps down on its own clock. When
/// the path comes back, its late results are rejected.
#[tokio::test]
async fn a_partitioned_leader_loses_the_lead_within_the_lease() {
    let db = TestDb::new().await;
    let agent = ledger_agent().await;
    let config = write_config(&agent, "");
    let ids = enqueue_mixed(&db, if long_mode() { 3_000 } else { 600 }, 300).await;
    let upstream = {
        let url = reqwest::Url::parse(&db.url).unwrap();
        format!("{}:{}", url.host_str().unwrap(), url.port().unwrap_or(5432))
    };
    let proxy = Proxy::start(&upstream).await;
    let cut_off = Daemon::start_with(&proxy.url(&db.url), &config, &[]);
    wait_leader(&db, cut_off.pid(), "the proxied daemon to lead", Duration::from_secs(15)).await;
    wait_held(&db, cut_off.pid(), Held::AtLeast(8), "the proxied leader to hold items", Duration::from_secs(15)).await;
    let other = Daemon::start(&db, &config);
    wait_held(&db, other.pid(), Held::AtLeast(1), "the second daemon to run", Duration::from_secs(15)).await;
    proxy.pause();
    let held = held_at_the_fault(&db, cut_off.pid()).await;
    let takeover = wait_leader(&db, other.pid(), "the other daemon to take the lead", Duration::from_secs(20)).await;
    wait_until("the cut-off leader to step down on its own clock", Duration::from_secs(20), || {
        let lost = cut_off.log_events("leadership lost");
        async move { !lost.is_empty() }
    })
    .await;
    wait_held(
        &db,
        cut_off.pid(),
        Held::Exactly(0),
        "the cut-off leader's items to be rescued",
        Duration::from_secs(20),
    )
    .await;
    proxy.resume();
    quiesce(&db, Duration::from_secs(120)).await;
    assert_eq!(leader_pid(&db).await, Some(other.pid()), "the reconnected daemon did not take the lead back");
    let lost = cut_off.log_events("leadership lost");
    assert!(cut_off.terminate().await);
    assert!(other.terminate().await);
    println!(
        "TAKEOVER| partition of the leader | lease {LEADER_LEASE:?} | new leader after {:.2}s | cut-off leader: {} |",
        takeover.as_secs_f64(),
        lost[0]["fields"]["reason"].as_str().or(lost[0]["reason"].as_str()).unwrap_or("?")
    );
    let verdict = oracle(&db, &ids, &agent).await;
    assert!(verdict.lost_attempts > 0, "the partition was long enough to be rescued");
    verdict.assert_holds("the leader's network path frozen, then restored", "1 partition", held);
}

/// A schedule due every second, two daemons, the leader killed with -9 again and again (at
/// whatever moment, slot times included): every slot from the first order to the last has
/// exactly one order, none twice, none missing (catch-up ALL covers the takeovers).
#[tokio::test]
async fn schedule_slots_survive_leader_kills_exactly_once() {
    let db = TestDb::new().await;
    let agent = ledger_agent().await;
    let config = write_config(&agent, "[schedules]\npoll_interval = \"200ms\"\n");
    sqlx::query(
        "INSERT INTO schedules (name, cron, timezone, tenant_id, created_by, items, catch_up, catch_up_limit)
         VALUES ('every second', '* * * * * *', 'UTC', gen_random_uuid(), gen_random_uuid(),
                 '[{\"type\": \"TICKET\", \"content\": {\"n\": 0, \"ms\": 0, \"outcome\": \"ok\"}}]', 'ALL', 1000)",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let mut daemons: Vec<Daemon> = (0..2).map(|_| Daemon::start(&db, &config)).collect();
    let slots = |db: &TestDb| {
        let pool = db.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM work_orders WHERE schedule_id IS NOT NULL")
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    wait_until("the first slots", Duration::from_secs(20), || {
        let counted = slots(&db);
        async move { counted.await > 2 }
    })
    .await;
    let kills = if long_mode() { 10 } else { 4 };
    for _ in 0..kills {
        let Some(pid) = leader_pid(&db).await else {
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        };
        let index = daemons.iter().position(|d| d.pid() == pid).expect("the leader is one of ours");
        let victim = daemons.swap_remove(index);
        tokio::time::sleep(Duration::from_millis(fastrand::u64(0..1000))).await;
        victim.kill9();
        daemons.push(Daemon::start(&db, &config));
        wait_until("a new leader", Duration::from_secs(20), || {
            let db = &db;
            async move { leader_pid(db).await.is_some_and(|p| p != pid) }
        })
        .await;
    }
    // Let the last leader catch up, then stop everyone and look at the slots.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for d in daemons {
        assert!(d.terminate().await);
    }
    let (made, first, last, distinct): (i64, chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>, i64) =
        sqlx::query_as(
            "SELECT count(*), min(slot_at), max(slot_at), count(DISTINCT slot_at) FROM work_orders WHERE schedule_id IS NOT NULL",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let expected = (last - first).num_seconds() + 1;
    println!(
        "SCHEDULE| every second, {kills} leader kills | {made} orders for {expected} slots ({first} .. {last}) | {distinct} distinct |"
    );
    assert_eq!(made, distinct, "no slot has two orders");
    assert_eq!(made, expected, "no slot between the first and the last is missing");
}
