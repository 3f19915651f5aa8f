//! Tenants take turns (docs/limits.md): a tenant's few items do not wait behind another
//! tenant's backlog. The same run with `worker.tenant_turns = false` shows what the turns
//! change: the few items then wait until the backlog is nearly gone.

use crate::common::*;
use std::time::Duration;
use uuid::Uuid;

async fn tenant_order(db: &TestDb, tenant: Uuid, items: i64) -> Uuid {
    let order: Uuid = sqlx::query_scalar(
        "INSERT INTO work_orders (workflow_id, tenant_id, created_by) VALUES ('default', $1, gen_random_uuid()) RETURNING id",
    )
    .bind(tenant)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO work_items (work_order_id, type, content) SELECT $1, 'TICKET', '{}' FROM generate_series(1, $2)",
    )
    .bind(order)
    .bind(items)
    .execute(&db.pool)
    .await
    .unwrap();
    order
}

/// Runs a 3,000-item backlog of tenant A, adds five items of tenant B once A's items are
/// running, and returns how many of A's items were still queued when B's five had finished.
async fn backlog_left_when_the_newcomer_finished(turns: bool) -> i64 {
    let db = TestDb::new().await;
    let agent = TestAgent::start(|_| ((200, vec![], "{}".into()), Duration::from_millis(2))).await;
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    for _ in 0..30 {
        tenant_order(&db, a, 100).await;
    }
    let toml = format!(
        "{}[routes]\nTICKET = \"agent\"\n[worker]\nconcurrency = 8\ntenant_turns = {turns}\n",
        agent.config("agent", "5s")
    );
    let engine = db.engine(&toml).await;
    wait_until("A's items to be running", Duration::from_secs(30), || async {
        count(&db.pool, "SELECT count(*) FROM work_items WHERE status = 'COMPLETED'").await >= 200
    })
    .await;
    // One item at a time, as a newcomer's work arrives: each must get its turn.
    for _ in 0..5 {
        let order = tenant_order(&db, b, 1).await;
        wait_for_order(&db.pool, order, "COMPLETED").await;
    }
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM work_items WHERE tenant_id = $1 AND status = 'QUEUED'")
        .bind(a)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    stop(engine).await;
    left
}

#[tokio::test]
async fn a_tenants_few_items_do_not_wait_behind_another_tenants_backlog() {
    let with_turns = backlog_left_when_the_newcomer_finished(true).await;
    let oldest_first = backlog_left_when_the_newcomer_finished(false).await;
    println!("A's items still queued when B's five had finished: {with_turns} with turns, {oldest_first} oldest first");
    assert!(with_turns >= 1_500, "with turns, B's items ran long before A's backlog drained: {with_turns} left");
    assert!(oldest_first < 300, "oldest first, B's items waited for A's backlog: {oldest_first} left");
}
