//! Leases, fencing, rescue and leadership, driven directly (run_once) on a real database.

use crate::common::*;
use orderly::db;
use orderly::db::distributed::Topology;
use orderly::maintenance::rescuer::{RescueReport, Rescuer};
use orderly::model::{AttemptStatus, Completion, NextState};
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// Claims like a worker that then vanishes, and lets its lease expire.
async fn claim_and_vanish(db: &TestDb, worker: &str) -> db::claim::ClaimedItem {
    let claimed = db::claim::claim(&db.pool, worker, 1, Duration::from_secs(30), 1 << 20).await.unwrap();
    assert_eq!(claimed.len(), 1);
    sqlx::query("UPDATE work_items SET lease_expires_at = now() - interval '1 second' WHERE id = $1")
        .bind(claimed[0].id)
        .execute(&db.pool)
        .await
        .unwrap();
    claimed.into_iter().next().unwrap()
}

fn rescuer(db: &TestDb, toml: &str) -> Rescuer {
    let settings = Arc::new(db.settings(toml));
    let catalog = Arc::new(orderly::policy::catalog::Catalog::new(db.pool.clone(), settings.clone()));
    Rescuer {
        pool: db.pool.clone(),
        catalog,
        settings,
        worker_id: "test-leader".into(),
        metrics: Default::default(),
        sweeps_since_heal: Default::default(),
        topology: Topology::Single,
    }
}

#[tokio::test]
async fn expired_leases_are_rescued_with_a_lost_attempt() {
    let db = TestDb::new().await;
    let order = insert_order(&db.pool, "MEDIUM").await;
    let item = insert_item(&db.pool, order, "TICKET", "{}").await;
    let gone = claim_and_vanish(&db, "crashed-worker").await;
    assert_eq!(gone.id, item);
    let report = rescuer(&db, "").run_once().await.unwrap();
    assert_eq!(report, RescueReport { requeued: 1, dead_lettered: 0, orders_healed: 0 });
    assert_eq!(item_status(&db.pool, item).await, "QUEUED");
    assert_eq!(attempts(&db.pool, item).await, vec![(1, "LOST".into(), Some("WORKER_LOST".into()))]);
    let (rescues, lease): (i32, Option<chrono::DateTime<chrono::Utc>>) =
        sqlx::query_as("SELECT rescues, lease_expires_at FROM work_items WHERE id = $1")
            .bind(item)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!((rescues, lease), (1, None));
    // A lease that has not expired is left alone.
    sqlx::query("UPDATE work_items SET run_at = now() WHERE id = $1").bind(item).execute(&db.pool).await.unwrap();
    let live = db::claim::claim(&db.pool, "live-worker", 1, Duration::from_secs(30), 1 << 20).await.unwrap();
    assert_eq!(live.len(), 1);
    let report = rescuer(&db, "").run_once().await.unwrap();
    assert_eq!(report, RescueReport::default());
}

#[tokio::test]
async fn an_item_that_keeps_killing_its_worker_is_dead_lettered_as_a_crash_loop() {
    let db = TestDb::new().await;
    let order = insert_order(&db.pool, "MEDIUM").await;
    let item = insert_item(&db.pool, order, "TICKET", "{}").await;
    let rescuer = rescuer(&db, "[worker]\nmax_rescues = 3\n[retry]\nmax_attempts = 10\n");
    for round in 1..=3 {
        sqlx::query("UPDATE work_items SET run_at = now() WHERE id = $1").bind(item).execute(&db.pool).await.unwrap();
        claim_and_vanish(&db, &format!("worker-{round}")).await;
        rescuer.run_once().await.unwrap();
    }
    assert_eq!(item_status(&db.pool, item).await, "FAILED");
    assert_eq!(dead_letter(&db.pool, item).await, Some(("WORKER_LOST".into(), "CRASH_LOOP".into(), 3)));
    let statuses: Vec<String> = attempts(&db.pool, item).await.into_iter().map(|a| a.1).collect();
    assert_eq!(statuses, vec!["LOST", "LOST", "LOST"]);
    assert_eq!(order_status(&db.pool, order).await, "FAILED");
}

#[tokio::test]
async fn stale_runner_cannot_complete_after_rescue() {
    let db = TestDb::new().await;
    let order = insert_order(&db.pool, "MEDIUM").await;
    let item = insert_item(&db.pool, order, "TICKET", "{}").await;
    let gone = claim_and_vanish(&db, "paused-worker").await;
    rescuer(&db, "").run_once().await.unwrap();
    // Another worker claims attempt 2 and is running it.
    sqlx::query("UPDATE work_items SET run_at = now() WHERE id = $1").bind(item).execute(&db.pool).await.unwrap();
    let current = db::claim::claim(&db.pool, "new-worker", 1, Duration::from_secs(30), 1 << 20).await.unwrap();
    assert_eq!(current[0].attempt, 2);

    // The paused worker wakes up and reports success for attempt 1.
    let late = Completion {
        item_id: item,
        order_id: order,
        tenant_id: gone.tenant_id,
        item_type: "TICKET".into(),
        attempt: gone.attempt,
        attempt_id: Uuid::new_v4(),
        attempts_used: 1,
        agent: "echo".into(),
        worker_id: "paused-worker".into(),
        started_at: gone.claimed_at,
        duration_ms: 5,
        input: serde_json::json!({}),
        attempt_status: AttemptStatus::Completed,
        output: Some(serde_json::json!({"late": true})),
        usage: None,
        report: Default::default(),
        error: None,
        evals: vec![],
        approval: None,
        next: NextState::Completed,
        review: None,
    };
    let report = db::queue::complete_batch(&db.pool, &[late]).await.unwrap();
    assert_eq!(report.stale, vec![(item, gone.attempt)]);
    assert!(report.written.is_empty());
    assert_eq!(item_status(&db.pool, item).await, "PROCESSING", "the current attempt still owns the item");
    assert_eq!(attempts(&db.pool, item).await.len(), 1, "only the LOST attempt is recorded");
    assert_eq!(count(&db.pool, "SELECT count(*) FROM approval_events").await, 0);
}

#[tokio::test]
async fn one_leader_at_a_time_and_a_new_one_when_it_stops() {
    let db = TestDb::new().await;
    let a = db.engine("").await;
    let b = db.engine("").await;
    let leaders = |a: &orderly::daemon::Engine, b: &orderly::daemon::Engine| {
        (a.leadership.is_leader() as u8) + (b.leadership.is_leader() as u8)
    };
    wait_until("a leader", Duration::from_secs(10), || {
        let n = leaders(&a, &b);
        async move { n == 1 }
    })
    .await;
    for _ in 0..10 {
        assert!(leaders(&a, &b) <= 1, "never two leaders");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (leader, follower) = if a.leadership.is_leader() { (a, b) } else { (b, a) };
    stop(leader).await;
    wait_until("the follower to take over", Duration::from_secs(10), || {
        let leading = follower.leadership.is_leader();
        async move { leading }
    })
    .await;
    stop(follower).await;
}

#[tokio::test]
async fn a_worker_whose_lease_is_taken_stops_the_work() {
    let db = TestDb::new().await;
    let agent = TestAgent::start(|_| ((200, vec![], "{}".into()), Duration::from_secs(30))).await;
    let config = format!("{}[worker]\nlease = \"1s\"\n[routes]\nTICKET = \"slow\"\n", agent.config("slow", "60s"));
    let order = insert_order(&db.pool, "MEDIUM").await;
    let item = insert_item(&db.pool, order, "TICKET", "{}").await;
    let engine = db.engine(&config).await;
    wait_until("the agent call", Duration::from_secs(10), || async { agent.executions_of(item) == 1 }).await;
    // Someone else takes the item over (as a rescue would): the heartbeat must notice.
    sqlx::query("UPDATE work_items SET attempt = attempt + 1, locked_by = 'other' WHERE id = $1")
        .bind(item)
        .execute(&db.pool)
        .await
        .unwrap();
    wait_until("the execution to be abandoned", Duration::from_secs(10), || {
        let lost = orderly::worker::Metrics::get(&engine.metrics.leases_lost);
        async move { lost == 1 }
    })
    .await;
    assert_eq!(engine.in_flight(), 0);
    stop(engine).await;
    assert_eq!(count(&db.pool, "SELECT count(*) FROM attempts").await, 0, "nothing written by the worker that lost");
}

/// One heartbeat round (`worker::heartbeat::run_once`): a lease still ours is renewed; a row
/// another transaction holds locked (a completion being written) is skipped, neither renewed
/// nor stopped, and renewed by the next round; an execution whose attempt was taken over is
/// stopped. The statement locks the rows once, however many are in flight (tests/engine/plans.rs).
#[tokio::test]
async fn a_heartbeat_round_renews_skips_locked_rows_and_stops_what_was_taken() {
    use orderly::worker::{InFlight, Lease, heartbeat, runner::Stop};
    let db = TestDb::new().await;
    let order = insert_order(&db.pool, "MEDIUM").await;
    for _ in 0..3 {
        insert_item(&db.pool, order, "TICKET", "{}").await;
    }
    let claimed = db::claim::claim(&db.pool, "test-worker", 3, Duration::from_secs(30), 1 << 20).await.unwrap();
    assert_eq!(claimed.len(), 3);
    let in_flight = InFlight::default();
    let mut stops = Vec::new();
    for item in &claimed {
        let stop = Stop::default();
        in_flight.insert(
            item.id,
            Lease {
                attempt: item.attempt,
                tenant: item.tenant_id,
                confirmed_at: std::time::Instant::now(),
                stop: stop.clone(),
            },
        );
        stops.push(stop);
    }
    let (ours, locked, taken) = (claimed[0].id, claimed[1].id, claimed[2].id);
    sqlx::query("UPDATE work_items SET lease_expires_at = now() + interval '1 second' WHERE id = ANY($1)")
        .bind(vec![ours, locked, taken])
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query("UPDATE work_items SET attempt = attempt + 1, locked_by = 'other' WHERE id = $1")
        .bind(taken)
        .execute(&db.pool)
        .await
        .unwrap();
    let mut holder = db.pool.begin().await.unwrap();
    sqlx::query("SELECT id FROM work_items WHERE id = $1 FOR UPDATE").bind(locked).execute(&mut *holder).await.unwrap();

    let lease_left = |id: Uuid| {
        let pool = db.pool.clone();
        async move {
            sqlx::query_scalar::<_, f64>(
                "SELECT extract(epoch FROM lease_expires_at - now())::float8 FROM work_items WHERE id = $1",
            )
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    let stopped = heartbeat::run_once(&db.pool, &in_flight, Duration::from_secs(30), Topology::Single).await;
    assert_eq!(stopped, 1, "only the execution whose attempt was taken over stops");
    assert!(stops[2].lease_lost.is_cancelled());
    assert!(!stops[0].lease_lost.is_cancelled() && !stops[1].lease_lost.is_cancelled());
    assert!(lease_left(ours).await > 20.0, "our lease is renewed to the full 30 s");
    holder.rollback().await.unwrap();
    assert!(lease_left(locked).await < 2.0, "a row locked elsewhere is skipped, not waited for");

    let stopped = heartbeat::run_once(&db.pool, &in_flight, Duration::from_secs(30), Topology::Single).await;
    assert_eq!(stopped, 0, "the taken execution is already stopped");
    assert!(lease_left(locked).await > 20.0, "renewed once its lock is released");
}

/// The lease is the truth: when another holder has the lease row (as after this replica froze
/// and was taken over), the replica's own term does not let it run a leader-only round, and
/// it steps down within the lease.
#[tokio::test]
async fn a_leader_whose_lease_was_taken_acts_no_more() {
    let db = TestDb::new().await;
    let engine = db.engine("[worker]\nleader_lease = \"2s\"\nrescue_interval = \"200ms\"\n").await;
    wait_until("the engine to lead", Duration::from_secs(10), || {
        let leading = engine.leadership.is_leader();
        async move { leading }
    })
    .await;
    assert!(engine.leadership.confirm().await.is_some(), "the database confirms a fresh term");
    // Another replica holds the lease for an hour.
    sqlx::query(
        "UPDATE orderly_leader SET holder = 'elsewhere-1-abcdef', epoch = epoch + 1, since = now(),
                expires_at = now() + interval '1 hour'",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    assert!(engine.leadership.confirm().await.is_none(), "the database no longer confirms the term");
    wait_until("the engine to step down", Duration::from_secs(10), || {
        let leading = engine.leadership.is_leader();
        async move { !leading }
    })
    .await;
    // An expired PROCESSING item appears (inserted and marked in one transaction, so no
    // claim sees it QUEUED): only a leader may rescue it.
    let order = insert_order(&db.pool, "MEDIUM").await;
    let item = insert_expired_lease(&db.pool, order).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(item_status(&db.pool, item).await, "PROCESSING", "no rescue by a replica that does not lead");
    // The lease runs out: this replica takes it (a new epoch) and rescues.
    sqlx::query("UPDATE orderly_leader SET expires_at = now()").execute(&db.pool).await.unwrap();
    wait_until("the rescue after the takeover", Duration::from_secs(10), || {
        let pool = db.pool.clone();
        async move { item_status(&pool, item).await != "PROCESSING" }
    })
    .await;
    let (holder, epoch): (String, i64) =
        sqlx::query_as("SELECT holder, epoch FROM orderly_leader").fetch_one(&db.pool).await.unwrap();
    assert_eq!(holder, engine.worker_id);
    assert_eq!(epoch, 3, "first term, the other holder's, this replica's second");
    stop(engine).await;
}

/// Every replica reports itself alive through its election loop, and a clean shutdown removes
/// it: the overview (the page, the status API, `orderly status`) lists who runs.
#[tokio::test]
async fn the_replicas_alive_are_listed_and_a_stopped_one_leaves() {
    let db = TestDb::new().await;
    let a = db.engine("[worker]\nleader_lease = \"1s\"\n").await;
    let b = db.engine("[worker]\nleader_lease = \"1s\"\n").await;
    let (a_id, b_id) = (a.worker_id.clone(), b.worker_id.clone());
    wait_until("both replicas to report", Duration::from_secs(10), || async {
        let o = orderly::actions::overview(&db.pool).await.unwrap();
        o.replicas.iter().any(|r| r.worker_id == a_id) && o.replicas.iter().any(|r| r.worker_id == b_id)
    })
    .await;
    stop(b).await;
    let o = orderly::actions::overview(&db.pool).await.unwrap();
    let ids: Vec<&str> = o.replicas.iter().map(|r| r.worker_id.as_str()).collect();
    assert_eq!(ids, vec![a_id.as_str()], "the stopped replica left at once");
    stop(a).await;
}
