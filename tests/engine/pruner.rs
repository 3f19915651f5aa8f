//! The pruner: finished work orders past retention go, with everything they own; anything
//! live, recent or waiting for an operator stays.

use crate::common::*;
use orderly::db;
use orderly::db::distributed::Topology;
use orderly::maintenance::pruner::{PruneReport, Pruner};
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// Makes the orders (and their finished items) look as if they finished two days ago.
async fn age(pool: &PgPool, orders: &[Uuid]) {
    sqlx::query(
        "UPDATE work_orders SET created_at = now() - interval '3 days', updated_at = now() - interval '2 days'
         WHERE id = ANY($1)",
    )
    .bind(orders)
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(
        "UPDATE work_items SET created_at = now() - interval '3 days', processed_at = now() - interval '2 days'
         WHERE work_order_id = ANY($1) AND processed_at IS NOT NULL",
    )
    .bind(orders)
    .execute(pool)
    .await
    .unwrap();
}

/// Rows anywhere that belong to the order: the order, its items and their records.
async fn rows_of(pool: &PgPool, order: Uuid) -> i64 {
    sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM work_orders WHERE id = $1)
              + (SELECT count(*) FROM work_items WHERE work_order_id = $1)
              + (SELECT count(*) FROM attempts a JOIN work_items i ON i.id = a.work_item_id WHERE i.work_order_id = $1)
              + (SELECT count(*) FROM approval_events p JOIN work_items i ON i.id = p.work_item_id WHERE i.work_order_id = $1)
              + (SELECT count(*) FROM mem_docs m JOIN work_items i ON i.id = m.work_item_id WHERE i.work_order_id = $1)
              + (SELECT count(*) FROM dead_letters d JOIN work_items i ON i.id = d.work_item_id WHERE i.work_order_id = $1)",
    )
    .bind(order)
    .fetch_one(pool)
    .await
    .unwrap()
}

/// Counts what is left of orders already deleted: their items' ids are all that is known.
async fn orphans(pool: &PgPool, items: &[Uuid]) -> i64 {
    sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM work_items WHERE id = ANY($1))
              + (SELECT count(*) FROM attempts WHERE work_item_id = ANY($1))
              + (SELECT count(*) FROM approval_events WHERE work_item_id = ANY($1))
              + (SELECT count(*) FROM mem_docs WHERE work_item_id = ANY($1))
              + (SELECT count(*) FROM dead_letters WHERE work_item_id = ANY($1))",
    )
    .bind(items)
    .fetch_one(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn the_pruner_deletes_finished_orders_past_retention_and_nothing_else() {
    let db = TestDb::new().await;
    // Finished long ago, with a mem_doc: goes.
    let old_done = insert_order(&db.pool, "MEDIUM").await;
    let done_items =
        [insert_item(&db.pool, old_done, "TICKET", "{}").await, insert_item(&db.pool, old_done, "TICKET", "{}").await];
    sqlx::query("INSERT INTO mem_docs (work_item_id, type, content) VALUES ($1, 'KNOWLEDGE', 'kept until pruned')")
        .bind(done_items[0])
        .execute(&db.pool)
        .await
        .unwrap();
    // Failed long ago, its dead letter discarded: goes, letter included.
    let old_discarded = insert_order(&db.pool, "MEDIUM").await;
    let discarded_item = insert_item(&db.pool, old_discarded, "INVOICE", "{}").await;
    // Failed long ago, its dead letter still open: stays for the operator.
    let old_open_letter = insert_order(&db.pool, "MEDIUM").await;
    let open_item = insert_item(&db.pool, old_open_letter, "INVOICE", "{}").await;
    // Finished recently: stays.
    let fresh_done = insert_order(&db.pool, "MEDIUM").await;
    let fresh_item = insert_item(&db.pool, fresh_done, "TICKET", "{}").await;
    // Finished long ago, then given a new item that has not run yet: stays.
    let old_reused = insert_order(&db.pool, "MEDIUM").await;
    let reused_item = insert_item(&db.pool, old_reused, "TICKET", "{}").await;

    // INVOICE has no route: dead-lettered at once.
    let engine = db.engine("[routes]\nTICKET = \"echo\"\n").await;
    for item in done_items.iter().chain([&fresh_item, &reused_item]) {
        wait_for_status(&db.pool, *item, "COMPLETED").await;
    }
    wait_for_status(&db.pool, discarded_item, "FAILED").await;
    wait_for_status(&db.pool, open_item, "FAILED").await;
    wait_quiet(&db.pool).await;
    stop(engine).await;
    let letter: Uuid = sqlx::query_scalar("SELECT id FROM dead_letters WHERE work_item_id = $1")
        .bind(discarded_item)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    db::dead_letters::discard(&db.pool, letter, "carol", None).await.unwrap();
    let new_item = insert_item(&db.pool, old_reused, "TICKET", "{}").await;
    age(&db.pool, &[old_done, old_discarded, old_open_letter, old_reused]).await;
    assert_eq!(order_status(&db.pool, old_reused).await, "COMPLETED", "an INSERT alone does not roll the order up");

    // Off by default: nothing happens.
    let off = Pruner { pool: db.pool.clone(), settings: Arc::new(db.settings("")), topology: Topology::Single };
    assert_eq!(off.run_once().await.unwrap(), PruneReport::default());
    assert_eq!(rows_of(&db.pool, old_done).await, 1 + 2 + 2 + 2 + 1);

    // Batches of one: the sweep goes on until a short batch.
    let pruner = Pruner {
        pool: db.pool.clone(),
        settings: Arc::new(db.settings("[pruner]\nretention = \"1d\"\nbatch = 1\n")),
        topology: Topology::Single,
    };
    assert_eq!(pruner.run_once().await.unwrap(), PruneReport { orders: 2, items: 3 });
    assert_eq!(rows_of(&db.pool, old_done).await, 0);
    assert_eq!(rows_of(&db.pool, old_discarded).await, 0);
    let gone: Vec<Uuid> = done_items.iter().copied().chain([discarded_item]).collect();
    assert_eq!(orphans(&db.pool, &gone).await, 0, "no record of a pruned item is left behind");

    assert_eq!(dead_letter(&db.pool, open_item).await.map(|l| l.0), Some("NO_ROUTE".into()));
    assert_eq!(item_status(&db.pool, fresh_item).await, "COMPLETED");
    assert_eq!(item_status(&db.pool, reused_item).await, "COMPLETED");
    assert_eq!(item_status(&db.pool, new_item).await, "QUEUED");
    assert_eq!(rows_of(&db.pool, old_open_letter).await, 1 + 1 + 1 + 1, "order, item, attempt, letter");

    let (batches, orders): (i64, i64) = sqlx::query_as(
        "SELECT count(*), sum((details->>'orders')::int) FROM audit_logs
         WHERE action = 'pruner.delete' AND user_id = 'orderly:pruner'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!((batches, orders), (2, 2), "one audit row per batch, naming its orders");
    assert_eq!(pruner.run_once().await.unwrap(), PruneReport::default(), "a second sweep finds nothing");
}

#[tokio::test]
async fn the_leader_prunes_on_its_interval() {
    let db = TestDb::new().await;
    let order = insert_order(&db.pool, "MEDIUM").await;
    let item = insert_item(&db.pool, order, "TICKET", "{}").await;
    let engine = db.engine("[routes]\nTICKET = \"echo\"\n").await;
    wait_for_status(&db.pool, item, "COMPLETED").await;
    wait_quiet(&db.pool).await;
    stop(engine).await;
    age(&db.pool, &[order]).await;

    let engine = db.engine("[routes]\nTICKET = \"echo\"\n[pruner]\nretention = \"1h\"\ninterval = \"100ms\"\n").await;
    wait_until("the leader to prune the order", Duration::from_secs(20), || async {
        rows_of(&db.pool, order).await == 0
    })
    .await;
    stop(engine).await;
}
