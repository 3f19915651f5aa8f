//! The fault suite against a Citus cluster (docs/distributed.md): daemons killed with
//! kill -9, a worker node restarted and the coordinator restarted, both in immediate mode,
//! while three daemons work through the items of eight tenants; then the oracle, written for
//! the distributed schema (every join names the tenant). Runs when `ORDERLY_CITUS_URL` is
//! set and the cluster's nodes run on this machine (`CitusDb::restart_node`).

use crate::citus::CitusDb;
use crate::common::TestAgent;
use crate::harness::*;
use serde_json::json;
use sqlx::PgPool;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// `orders` orders of 20 items for each tenant, with the mixed outcomes of
/// [`enqueue_mixed`]: 90% ok, 7% always retryable, 3% permanent.
async fn enqueue_tenants(pool: &PgPool, tenants: &[Uuid], orders: usize, max_ms: u64) -> Vec<Uuid> {
    let mut ids = Vec::new();
    for (t, tenant) in tenants.iter().enumerate() {
        for o in 0..orders {
            let order: Uuid = sqlx::query_scalar(
                "INSERT INTO work_orders (workflow_id, tenant_id, created_by, priority)
                 VALUES ('default', $1, gen_random_uuid(), $2::priority) RETURNING id",
            )
            .bind(tenant)
            .bind(["LOW", "MEDIUM", "HIGH", "URGENT"][(t + o) % 4])
            .fetch_one(pool)
            .await
            .unwrap();
            let contents: Vec<String> = (0..20)
                .map(|i| {
                    let outcome = match fastrand::u8(0..100) {
                        0..=89 => "ok",
                        90..=96 => "retry",
                        _ => "fatal",
                    };
                    json!({"n": (t * orders + o) * 20 + i, "ms": fastrand::u64(0..=max_ms), "outcome": outcome})
                        .to_string()
                })
                .collect();
            let mut made: Vec<Uuid> = sqlx::query_scalar(
                "INSERT INTO work_items (work_order_id, tenant_id, type, content)
                 SELECT $1, $2, 'TICKET', c::jsonb FROM unnest($3::text[]) c RETURNING id",
            )
            .bind(order)
            .bind(tenant)
            .bind(&contents)
            .fetch_all(pool)
            .await
            .unwrap();
            ids.append(&mut made);
        }
    }
    ids
}

/// Items in flight (PROCESSING: running, or finished and not yet written), of one daemon
/// (`pid`) or of all: what a fault can cost at most.
async fn in_flight(pool: &PgPool, pid: Option<i32>) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM work_items WHERE status = 'PROCESSING' AND locked_by LIKE $1")
        .bind(pid.map_or("%".to_owned(), |pid| format!("%-{pid}-%")))
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn live(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM work_items WHERE status IN ('QUEUED', 'PROCESSING')")
        .fetch_one(pool)
        .await
        .unwrap_or(i64::MAX)
}

/// The oracle of `harness::oracle`, each check written with the tenant in every join.
async fn oracle(pool: &PgPool, inserted: &[Uuid], agent: &TestAgent) -> Verdict {
    let scalar = |sql: &'static str| async move { sqlx::query_scalar::<_, i64>(sql).fetch_one(pool).await.unwrap() };
    let present: i64 = sqlx::query_scalar("SELECT count(*) FROM work_items WHERE id = ANY($1)")
        .bind(inserted)
        .fetch_one(pool)
        .await
        .unwrap();
    let mut v = Verdict {
        items: inserted.len(),
        lost: inserted.len() as i64 - present,
        stuck: scalar(
            "SELECT count(*) FROM work_items WHERE status = 'PROCESSING'
                OR (status = 'QUEUED' AND run_at <= now() - interval '5 seconds')",
        )
        .await,
        misnumbered: scalar(
            "SELECT count(*) FROM work_items w
             LEFT JOIN (SELECT tenant_id, work_item_id, count(*) AS n, min(attempt_number) AS lo,
                               max(attempt_number) AS hi
                        FROM attempts GROUP BY 1, 2) a ON a.tenant_id = w.tenant_id AND a.work_item_id = w.id
             WHERE coalesce(a.n, 0) <> w.attempt OR a.lo < 1 OR a.hi > w.attempt",
        )
        .await,
        open_attempts: scalar("SELECT count(*) FROM attempts WHERE status = 'STARTED'").await,
        completed_without_one_success: scalar(
            "SELECT count(*) FROM work_items w
             LEFT JOIN (SELECT tenant_id, work_item_id, count(*) AS n FROM attempts WHERE status = 'COMPLETED'
                        GROUP BY 1, 2) a ON a.tenant_id = w.tenant_id AND a.work_item_id = w.id
             WHERE (w.status = 'COMPLETED') <> (coalesce(a.n, 0) = 1)",
        )
        .await,
        failed_without_one_letter: scalar(
            "SELECT count(*) FROM work_items w
             LEFT JOIN (SELECT tenant_id, work_item_id, count(*) AS n FROM dead_letters WHERE processed_at IS NULL
                        GROUP BY 1, 2) d ON d.tenant_id = w.tenant_id AND d.work_item_id = w.id
             WHERE w.status = 'FAILED' AND coalesce(d.n, 0) <> 1",
        )
        .await,
        letters_without_failure: scalar(
            "SELECT count(*) FROM dead_letters d JOIN work_items w ON w.tenant_id = d.tenant_id AND w.id = d.work_item_id
             WHERE d.processed_at IS NULL AND w.status <> 'FAILED'",
        )
        .await,
        lost_attempts: scalar("SELECT count(*) FROM attempts WHERE status = 'LOST'").await,
        misrolled_orders: scalar(
            "SELECT count(*) FROM work_orders o
             JOIN (SELECT tenant_id, work_order_id,
                          CASE WHEN bool_or(status IN ('QUEUED', 'PROCESSING', 'AWAITING_APPROVAL')) THEN 'PROCESSING'
                               WHEN bool_or(status = 'FAILED') THEN 'FAILED'
                               WHEN NOT bool_or(status = 'COMPLETED') AND bool_or(status = 'CANCELLED') THEN 'CANCELLED'
                               ELSE 'COMPLETED' END AS rolled
                   FROM work_items GROUP BY 1, 2) i ON i.tenant_id = o.tenant_id AND i.work_order_id = o.id
             WHERE o.status::text <> i.rolled",
        )
        .await,
        ..Verdict::default()
    };
    (v.duplicates, v.concurrent_duplicates) = ledger_duplicates(pool, agent).await;
    v
}

/// Waits until `done` of the items are finished, at most `deadline`.
async fn until_finished(pool: &PgPool, total: usize, done: f64, deadline: Duration) {
    let start = Instant::now();
    while (live(pool).await as f64) > total as f64 * (1.0 - done) {
        assert!(start.elapsed() < deadline, "fewer than {done} of the items finished after {deadline:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn kill_9_a_worker_node_restart_and_a_coordinator_restart_lose_nothing_on_citus() {
    let Some(db) = CitusDb::distributed("kill_9_a_worker_node_restart_and_a_coordinator_restart").await else {
        return;
    };
    let agent = ledger_agent().await;
    let config = write_config(&agent, "");
    let tenants: Vec<Uuid> = (0..8).map(|_| Uuid::new_v4()).collect();
    let ids = enqueue_tenants(&db.pool, &tenants, 8, 40).await;
    let mut daemons: Vec<Daemon> = (0..3).map(|_| Daemon::start_with(&db.url, &config, &[])).collect();
    // Each fault may cost at most the executions in flight when it strikes (a killed
    // daemon's; every daemon's for a node restart): their results are lost or refused as
    // stale once the rescuer has taken the items back.
    let (mut faults, mut explained) = (Vec::new(), 0);

    until_finished(&db.pool, ids.len(), 0.15, Duration::from_secs(120)).await;
    let victim = daemons.swap_remove(0);
    explained += in_flight(&db.pool, Some(victim.pid())).await;
    victim.kill9();
    daemons.push(Daemon::start_with(&db.url, &config, &[]));
    faults.push("kill -9 of a daemon".to_owned());

    until_finished(&db.pool, ids.len(), 0.35, Duration::from_secs(120)).await;
    explained += in_flight(&db.pool, None).await;
    let started = Instant::now();
    db.restart_node(1);
    faults.push(format!("worker node 1 restarted (immediate, {:.1} s)", started.elapsed().as_secs_f64()));

    until_finished(&db.pool, ids.len(), 0.55, Duration::from_secs(120)).await;
    explained += in_flight(&db.pool, None).await;
    let started = Instant::now();
    db.restart_node(0);
    faults.push(format!("coordinator restarted (immediate, {:.1} s)", started.elapsed().as_secs_f64()));

    until_finished(&db.pool, ids.len(), 0.7, Duration::from_secs(120)).await;
    let victim = daemons.swap_remove(1);
    explained += in_flight(&db.pool, Some(victim.pid())).await;
    victim.kill9();
    faults.push("kill -9 of a daemon".to_owned());

    let start = Instant::now();
    while live(&db.pool).await > 0 {
        assert!(start.elapsed() < Duration::from_secs(240), "not quiet after 240 s: {} live", live(&db.pool).await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for d in daemons {
        assert!(d.terminate().await, "daemon exits 0 on SIGTERM");
    }
    let verdict = oracle(&db.pool, &ids, &agent).await;
    verdict.assert_holds("Citus: 3 daemons, 8 tenants", &faults.join(", "), explained);
}
