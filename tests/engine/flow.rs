//! The upstream contract, the claim order, wake-ups, concurrency and roll-ups.

use crate::common::*;
use serde_json::json;
use sqlx::Row;
use std::collections::HashMap;
use std::time::Duration;
use uuid::Uuid;

#[tokio::test]
async fn upstream_insert_in_plain_sql_is_processed() {
    let db = TestDb::new().await;
    // Exactly the two statements of the README, nothing else set.
    let order = insert_order(&db.pool, "HIGH").await;
    let item = insert_item(&db.pool, order, "TICKET", r#"{"subject":"printer on fire"}"#).await;
    let priority: String = sqlx::query_scalar("SELECT priority::text FROM work_items WHERE id = $1")
        .bind(item)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(priority, "HIGH", "priority is copied from the order");
    assert_eq!(order_status(&db.pool, order).await, "PENDING");

    let engine = db.engine("[routes]\nTICKET = \"echo\"\n").await;
    wait_for_status(&db.pool, item, "COMPLETED").await;
    stop(engine).await;

    let result: serde_json::Value =
        sqlx::query_scalar("SELECT result FROM work_items WHERE id = $1").bind(item).fetch_one(&db.pool).await.unwrap();
    assert_eq!(result, json!({"echo": {"subject": "printer on fire"}}));
    assert_eq!(attempts(&db.pool, item).await, vec![(1, "COMPLETED".into(), None)]);
    assert_eq!(order_status(&db.pool, order).await, "COMPLETED");
    let processed: bool = sqlx::query_scalar("SELECT processed_at IS NOT NULL FROM work_items WHERE id = $1")
        .bind(item)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(processed);
    let (decision, approver, version): (String, String, String) = sqlx::query_as(
        "SELECT decision::text, approver_id, policy_version FROM approval_events WHERE work_item_id = $1",
    )
    .bind(item)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        (decision.as_str(), approver.as_str(), version.as_str()),
        ("APPROVED", "policy:approve_all", "approve_all/1")
    );
}

#[tokio::test]
async fn operators_add_item_types_without_recompiling() {
    let db = TestDb::new().await;
    sqlx::raw_sql("ALTER TYPE work_item_type ADD VALUE 'CONTRACT'").execute(&db.pool).await.unwrap();
    let order = insert_order(&db.pool, "LOW").await;
    let item = insert_item(&db.pool, order, "CONTRACT", r#"{"party":"ACME"}"#).await;
    let engine = db.engine("[routes]\nCONTRACT = \"echo\"\n").await;
    wait_for_status(&db.pool, item, "COMPLETED").await;
    stop(engine).await;
}

#[tokio::test]
async fn claims_follow_priority_then_age() {
    let db = TestDb::new().await;
    let mut expected = Vec::new();
    // Interleaved inserts; each priority gets three items, oldest first within it.
    let mut by_priority: HashMap<&str, Vec<Uuid>> = HashMap::new();
    for round in 0..3 {
        for priority in ["LOW", "URGENT", "MEDIUM", "HIGH"] {
            let order = insert_order(&db.pool, priority).await;
            let item = insert_item(&db.pool, order, "TICKET", &format!(r#"{{"round":{round}}}"#)).await;
            by_priority.entry(priority).or_default().push(item);
        }
    }
    for priority in ["URGENT", "HIGH", "MEDIUM", "LOW"] {
        expected.extend(by_priority[priority].iter().copied());
    }
    let engine = db.engine("[worker]\nconcurrency = 1\nclaim_batch = 1\n[routes]\nTICKET = \"echo\"\n").await;
    wait_quiet(&db.pool).await;
    stop(engine).await;
    let order: Vec<Uuid> = sqlx::query_scalar("SELECT work_item_id FROM attempts ORDER BY started_at, completed_at")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(order, expected);
}

#[tokio::test]
async fn an_insert_wakes_an_idle_engine_through_notify() {
    let db = TestDb::new().await;
    // A minute-long poll: only the NOTIFY can explain a pickup within the deadline below.
    let engine = db.engine("[worker]\npoll_interval = \"60s\"\n[routes]\nTICKET = \"echo\"\n").await;
    wait_listening(&db).await;
    // Let the dispatcher settle into its wait after the start-up claim.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let order = insert_order(&db.pool, "MEDIUM").await;
    let item = insert_item(&db.pool, order, "TICKET", "{}").await;
    wait_until("the new item to complete without a poll", Duration::from_secs(10), || async {
        item_status(&db.pool, item).await == "COMPLETED"
    })
    .await;
    stop(engine).await;
}

/// The trigger sends a NOTIFY only while a daemon waits for work, that is while some session
/// holds the wake lock (as a daemon's listener does after a short claim), and only for an item
/// that is due now: no daemon waiting (none runs, or all work through a backlog) means no
/// NOTIFY, so the upstream's commit takes no database-wide lock.
#[tokio::test]
async fn an_insert_notifies_only_while_a_daemon_holds_the_wake_lock() {
    let db = TestDb::new().await;
    let mut listener = sqlx::postgres::PgListener::connect_with(&db.pool).await.unwrap();
    listener.listen(orderly::db::WORK_CHANNEL).await.unwrap();
    let order = insert_order(&db.pool, "MEDIUM").await;
    let quiet = async |listener: &mut sqlx::postgres::PgListener, what: &str| {
        let got = tokio::time::timeout(Duration::from_millis(300), listener.recv()).await;
        assert!(got.is_err(), "a NOTIFY {what}");
    };

    insert_item(&db.pool, order, "TICKET", "{}").await;
    quiet(&mut listener, "with no daemon waiting").await;

    let mut holder = db.pool.acquire().await.unwrap();
    assert!(orderly::db::try_hold_wake_lock(&mut *holder).await.unwrap(), "the wake lock is free");
    insert_item(&db.pool, order, "TICKET", "{}").await;
    let got = tokio::time::timeout(Duration::from_secs(5), listener.recv()).await;
    assert!(matches!(got, Ok(Ok(_))), "no NOTIFY while a daemon waits: {got:?}");
    sqlx::query("INSERT INTO work_items (work_order_id, type, content, run_at) VALUES ($1, 'TICKET', '{}', now() + interval '1 hour')")
        .bind(order)
        .execute(&db.pool)
        .await
        .unwrap();
    quiet(&mut listener, "for an item that is not due").await;

    orderly::db::release_wake_lock(&mut *holder).await.unwrap();
    insert_item(&db.pool, order, "TICKET", "{}").await;
    quiet(&mut listener, "once the daemon stopped waiting").await;
}

#[tokio::test]
async fn a_steady_stream_is_picked_up_without_waiting_for_the_poll() {
    let db = TestDb::new().await;
    // A minute-long poll again. Under a steady stream most INSERTs send no NOTIFY (their
    // trigger sees items still queued); one that commits just after a claim's snapshot must
    // be found by the dispatcher's own re-checks, or it and every INSERT after it wait for
    // the poll.
    let engine = db.engine("[worker]\npoll_interval = \"60s\"\n[routes]\nTICKET = \"echo\"\n").await;
    wait_listening(&db).await;
    let upstreams: Vec<_> = (0..4)
        .map(|_| {
            let pool = db.pool.clone();
            tokio::spawn(async move {
                for n in 0..100u64 {
                    // An upstream that does other work in its transaction after the INSERT:
                    // the trigger decides about the NOTIFY well before the commit.
                    let order = insert_order(&pool, "MEDIUM").await;
                    let mut tx = pool.begin().await.unwrap();
                    sqlx::query(
                        "INSERT INTO work_items (work_order_id, type, content)
                         SELECT $1, 'TICKET', '{}' FROM generate_series(1, 10)",
                    )
                    .bind(order)
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                    tokio::time::sleep(Duration::from_millis(1 + n % 7)).await;
                    tx.commit().await.unwrap();
                }
            })
        })
        .collect();
    for upstream in upstreams {
        upstream.await.unwrap();
    }
    wait_until("all 4,000 streamed items to complete well before the poll", Duration::from_secs(30), || async {
        count(&db.pool, "SELECT count(*) FROM work_items WHERE status = 'COMPLETED'").await == 4000
    })
    .await;
    stop(engine).await;
}

#[tokio::test]
async fn two_engines_never_execute_the_same_item() {
    let db = TestDb::new().await;
    let agent = TestAgent::start(|_| ok_json(json!({"ok": true}))).await;
    let config = format!(
        "{}[worker]\nconcurrency = 8\nclaim_batch = 4\n[routes]\nTICKET = \"worker\"\n",
        agent.config("worker", "5s")
    );
    let mut items = Vec::new();
    for _ in 0..20 {
        let order = insert_order(&db.pool, "MEDIUM").await;
        for n in 0..15 {
            items.push(insert_item(&db.pool, order, "TICKET", &format!(r#"{{"n":{n}}}"#)).await);
        }
    }
    let (a, b) = tokio::join!(db.engine(&config), db.engine(&config));
    wait_quiet(&db.pool).await;
    let (claimed_a, claimed_b) =
        (orderly::worker::Metrics::get(&a.metrics.claimed), orderly::worker::Metrics::get(&b.metrics.claimed));
    tokio::join!(stop(a), stop(b));
    assert_eq!(claimed_a + claimed_b, items.len() as u64);
    for item in &items {
        assert_eq!(agent.executions_of(*item), 1, "item {item} executed once");
    }
    assert_eq!(count(&db.pool, "SELECT count(*) FROM attempts").await, items.len() as i64);
    assert_eq!(
        count(&db.pool, "SELECT count(*) FROM work_items WHERE status = 'COMPLETED' AND attempt = 1").await,
        items.len() as i64
    );
    assert_eq!(count(&db.pool, "SELECT count(*) FROM work_orders WHERE status = 'COMPLETED'").await, 20);
}

/// The roll-up's precedence, item statuses set by hand and the order recomputed
/// (`db::queue::roll_up`): anything unfinished or held keeps the order PROCESSING, else a
/// failed item makes it FAILED, else it is COMPLETED; however many items it has, and
/// whichever comes first in the index.
#[tokio::test]
async fn the_roll_up_ranks_held_over_failed_over_completed() {
    let db = TestDb::new().await;
    let cases: [(&[&str], &str); 8] = [
        (&["COMPLETED"], "COMPLETED"),
        (&["COMPLETED", "COMPLETED", "COMPLETED"], "COMPLETED"),
        (&["COMPLETED", "FAILED"], "FAILED"),
        (&["FAILED", "FAILED"], "FAILED"),
        (&["COMPLETED", "AWAITING_APPROVAL"], "PROCESSING"),
        (&["FAILED", "AWAITING_APPROVAL", "COMPLETED"], "PROCESSING"),
        (&["FAILED", "QUEUED"], "PROCESSING"),
        (&["AWAITING_APPROVAL", "FAILED", "PROCESSING"], "PROCESSING"),
    ];
    let mut orders = Vec::new();
    for (statuses, _) in &cases {
        let order = insert_order(&db.pool, "MEDIUM").await;
        for status in *statuses {
            let item = insert_item(&db.pool, order, "TICKET", "{}").await;
            sqlx::query(
                "UPDATE work_items SET status = $2::work_item_status,
                        lease_expires_at = CASE WHEN $2 = 'PROCESSING' THEN now() + interval '1 hour' END
                 WHERE id = $1",
            )
            .bind(item)
            .bind(*status)
            .execute(&db.pool)
            .await
            .unwrap();
        }
        orders.push(order);
    }
    orderly::db::rollup::roll_up(&db.pool, &orders).await.unwrap();
    for ((statuses, expected), order) in cases.iter().zip(&orders) {
        assert_eq!(&order_status(&db.pool, *order).await, expected, "an order of {statuses:?}");
    }
}

#[tokio::test]
async fn orders_roll_up_from_their_items() {
    let db = TestDb::new().await;
    let all_good = insert_order(&db.pool, "MEDIUM").await;
    for _ in 0..3 {
        insert_item(&db.pool, all_good, "TICKET", "{}").await;
    }
    let one_bad = insert_order(&db.pool, "MEDIUM").await;
    insert_item(&db.pool, one_bad, "TICKET", "{}").await;
    let bad = insert_item(&db.pool, one_bad, "INVOICE", "{}").await; // no route
    insert_item(&db.pool, one_bad, "TICKET", "{}").await;
    assert_eq!(order_status(&db.pool, all_good).await, "PENDING");

    let engine = db.engine("[routes]\nTICKET = \"echo\"\n").await;
    wait_quiet(&db.pool).await;
    stop(engine).await;
    assert_eq!(order_status(&db.pool, all_good).await, "COMPLETED");
    assert_eq!(order_status(&db.pool, one_bad).await, "FAILED");
    assert_eq!(dead_letter(&db.pool, bad).await.unwrap().0, "NO_ROUTE");
}

/// The roll-up after commit is exact under concurrency: two engines with four completers
/// each, writing batches of two, finish 300 small orders whose items end in different ways
/// (completed, dead-lettered) at the same moments; every order's status then equals what
/// an aggregate over its items says.
#[tokio::test]
async fn concurrent_completions_roll_every_order_up_exactly() {
    let db = TestDb::new().await;
    let mut orders = Vec::new();
    for n in 0..300 {
        let order = insert_order(&db.pool, "MEDIUM").await;
        for k in 0..(2 + n % 4) {
            // About one order in seven has an item that fails for good.
            let content = if (n * 7 + k) % 23 == 0 { "not json" } else { "{}" };
            insert_item(&db.pool, order, "TICKET", content).await;
        }
        orders.push(order);
    }
    let config = "[worker]\ncompleters = 4\ncompleter_batch = 2\nconcurrency = 16\n[routes]\nTICKET = \"echo\"\n";
    let (a, b) = (db.engine(config).await, db.engine(config).await);
    wait_quiet(&db.pool).await;
    stop(a).await;
    stop(b).await;
    let wrong = count(
        &db.pool,
        "SELECT count(*) FROM work_orders o WHERE o.status::text <> (
             SELECT CASE WHEN bool_or(i.status IN ('QUEUED', 'PROCESSING', 'AWAITING_APPROVAL')) THEN 'PROCESSING'
                         WHEN bool_or(i.status = 'FAILED') THEN 'FAILED' ELSE 'COMPLETED' END
             FROM work_items i WHERE i.work_order_id = o.id)",
    )
    .await;
    assert_eq!(wrong, 0, "orders whose status disagrees with their items");
    assert!(count(&db.pool, "SELECT count(*) FROM work_orders WHERE status = 'FAILED'").await > 0);
    assert!(count(&db.pool, "SELECT count(*) FROM work_orders WHERE status = 'COMPLETED'").await > 0);
}

/// An order left unmarked while its item runs (its status written by hand here; in the
/// engine, a claim that met the order locked and whose roll-up then failed) is marked
/// PROCESSING by the leader's healing read.
#[tokio::test]
async fn an_order_not_processing_while_its_item_runs_is_healed() {
    let db = TestDb::new().await;
    let order = insert_order(&db.pool, "MEDIUM").await;
    insert_item(&db.pool, order, "TICKET", "{}").await;
    let claimed = claim_up_to(&db.pool, 10).await;
    assert_eq!(claimed.len(), 1);
    sqlx::query("UPDATE work_orders SET status = 'COMPLETED' WHERE id = $1")
        .bind(order)
        .execute(&db.pool)
        .await
        .unwrap();
    let healed = orderly::db::rollup::heal_roll_ups(&db.pool, 500).await.unwrap();
    assert_eq!(healed, vec![order]);
    assert_eq!(order_status(&db.pool, order).await, "PROCESSING");
}

/// Items finished by hand (or by an older release, which rolled up after its commit and could
/// die in between) leave an order PROCESSING with every item finished; the leader's rescuer
/// heals it on its next sweep.
#[tokio::test]
async fn an_order_left_behind_by_a_dead_writer_is_rolled_up_by_the_leader() {
    let db = TestDb::new().await;
    let order = insert_order(&db.pool, "MEDIUM").await;
    for _ in 0..3 {
        insert_item(&db.pool, order, "TICKET", "{}").await;
    }
    // The items finished without a roll-up.
    sqlx::query("UPDATE work_orders SET status = 'PROCESSING' WHERE id = $1")
        .bind(order)
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query(
        "UPDATE work_items SET status = 'COMPLETED', attempt = 1, processed_at = now() WHERE work_order_id = $1",
    )
    .bind(order)
    .execute(&db.pool)
    .await
    .unwrap();
    let engine = db.engine("[worker]\nrescue_interval = \"100ms\"\n").await;
    wait_until("the leader to roll the order up", Duration::from_secs(20), || async {
        order_status(&db.pool, order).await == "COMPLETED"
    })
    .await;
    stop(engine).await;
}

/// An upstream transaction that is still adding items to an order holds a key-share lock on
/// the order row (the foreign key). The roll-up of the order's finished items does not wait
/// for it (a wait would hold up the completer for as long as the upstream's transaction),
/// and the item it adds, once committed, is run and rolled up like any other.
#[tokio::test]
async fn an_open_upstream_transaction_does_not_hold_up_the_roll_up() {
    let db = TestDb::new().await;
    let order = insert_order(&db.pool, "MEDIUM").await;
    let first = insert_item(&db.pool, order, "TICKET", "{}").await;
    let mut upstream = db.pool.begin().await.unwrap();
    let second: Uuid = sqlx::query_scalar(
        "INSERT INTO work_items (work_order_id, type, content) VALUES ($1, 'TICKET', '{}') RETURNING id",
    )
    .bind(order)
    .fetch_one(&mut *upstream)
    .await
    .unwrap();
    let engine = db.engine("[routes]\nTICKET = \"echo\"\n").await;
    wait_for_status(&db.pool, first, "COMPLETED").await;
    wait_until("the order to roll up while the upstream's transaction is open", Duration::from_secs(10), || async {
        order_status(&db.pool, order).await == "COMPLETED"
    })
    .await;
    upstream.commit().await.unwrap();
    wait_for_status(&db.pool, second, "COMPLETED").await;
    wait_for_order(&db.pool, order, "COMPLETED").await;
    stop(engine).await;
}

/// Claims up to `limit` items with the engine's claim statement, as a writer named
/// "test-writer" with a one-minute lease.
async fn claim_up_to(pool: &sqlx::PgPool, limit: i64) -> Vec<orderly::db::claim::ClaimedItem> {
    orderly::db::claim::claim(pool, "test-writer", limit, Duration::from_secs(60), 1 << 20).await.unwrap()
}

/// A transaction holding the order's row lock, as a writer rolling it up does, until it ends.
async fn hold_order(pool: &sqlx::PgPool, order: Uuid) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut holder = pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM work_orders WHERE id = $1 FOR NO KEY UPDATE")
        .bind(order)
        .execute(&mut *holder)
        .await
        .unwrap();
    holder
}

/// A completion that finishes an item of an order.
fn finished(item: &orderly::db::claim::ClaimedItem) -> orderly::model::Completion {
    use orderly::model::{AttemptStatus, Completion, NextState};
    Completion {
        item_id: item.id,
        order_id: item.work_order_id,
        tenant_id: item.tenant_id,
        item_type: item.item_type.clone(),
        attempt: item.attempt,
        attempt_id: Uuid::new_v4(),
        attempts_used: item.attempt,
        agent: "echo".into(),
        worker_id: "test-writer".into(),
        started_at: item.claimed_at,
        duration_ms: 1,
        input: json!({}),
        attempt_status: AttemptStatus::Completed,
        output: Some(json!({})),
        usage: None,
        report: Default::default(),
        error: None,
        evals: vec![],
        approval: None,
        next: NextState::Completed,
        review: None,
    }
}

/// Two writers finish the last two items of one order at the same moment. Each recomputes
/// the order inside its own transaction; if the second did so while the first was still
/// uncommitted, each would see the other's item unfinished and leave the order PROCESSING
/// for good. A writer locks the order before its item writes (db::rollup::lock_orders), so
/// the second waits for the first's commit and then sees both items finished.
#[tokio::test]
async fn two_writers_finishing_an_orders_last_items_roll_it_up_exactly() {
    let db = TestDb::new().await;
    let order = insert_order(&db.pool, "MEDIUM").await;
    insert_item(&db.pool, order, "TICKET", "{}").await;
    insert_item(&db.pool, order, "TICKET", "{}").await;
    let claimed = claim_up_to(&db.pool, 10).await;
    assert_eq!(claimed.len(), 2);
    assert!(claimed.iter().all(|c| !c.order_unmarked), "the claim marks the order itself");
    assert_eq!(order_status(&db.pool, order).await, "PROCESSING");

    // The first writer holds its transaction two seconds before its commit.
    let pool = db.pool.clone();
    let first_item = finished(&claimed[0]);
    let first = tokio::spawn(async move {
        let mut tx = pool.begin().await.unwrap();
        let report = orderly::db::queue::complete_in(&mut tx, &[first_item]).await.unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
        tx.commit().await.unwrap();
        report
    });
    wait_until("the first writer to hold the order", Duration::from_secs(10), || async {
        sqlx::query("SELECT 1 FROM work_orders WHERE id = $1 FOR SHARE NOWAIT")
            .bind(order)
            .execute(&db.pool)
            .await
            .is_err()
    })
    .await;
    let second = orderly::db::queue::complete_batch(&db.pool, &[finished(&claimed[1])]).await.unwrap();
    assert!(first.is_finished(), "the second writer did not wait for the first's commit");
    let first = first.await.unwrap();
    assert_eq!(first.written.len() + second.written.len(), 2);
    assert!(first.rolled_up.is_empty(), "the first writer saw an unfinished item: {:?}", first.rolled_up);
    assert_eq!(second.rolled_up, vec![order], "the second writer saw both items finished");
    assert_eq!(order_status(&db.pool, order).await, "COMPLETED");
}

/// The claim never waits for an order's lock: an order another transaction holds is claimed
/// from without being marked PROCESSING, reported as unmarked, and rolled up once the holder
/// commits (the dispatcher does it; here by hand).
#[tokio::test]
async fn a_claim_reports_an_order_it_could_not_mark() {
    let db = TestDb::new().await;
    let order = insert_order(&db.pool, "MEDIUM").await;
    insert_item(&db.pool, order, "TICKET", "{}").await;
    let holder = hold_order(&db.pool, order).await;
    let claimed = claim_up_to(&db.pool, 10).await;
    assert_eq!(claimed.len(), 1, "the claim waited for the order's lock or skipped the item");
    assert!(claimed[0].order_unmarked);
    assert_eq!(order_status(&db.pool, order).await, "PENDING");
    let pool = db.pool.clone();
    let roll_up = tokio::spawn(async move { orderly::db::rollup::roll_up(&pool, &[order]).await.unwrap() });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!roll_up.is_finished(), "the roll-up did not wait for the holder");
    holder.commit().await.unwrap();
    assert_eq!(roll_up.await.unwrap(), vec![order]);
    assert_eq!(order_status(&db.pool, order).await, "PROCESSING");
}

/// The claim returns each item's order: from the row it marks PROCESSING when it is the
/// order's first claim, read from the table otherwise. Both give the same fields.
#[tokio::test]
async fn a_claim_returns_the_order_whether_it_marks_it_or_not() {
    let db = TestDb::new().await;
    let order: Uuid = sqlx::query_scalar(
        "INSERT INTO work_orders (workflow_id, tenant_id, created_by, priority, metadata)
         VALUES ('invoices', gen_random_uuid(), gen_random_uuid(), 'HIGH', '{\"batch\": 7}') RETURNING id",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    insert_item(&db.pool, order, "TICKET", "{}").await;
    insert_item(&db.pool, order, "TICKET", "{}").await;
    let first = claim_up_to(&db.pool, 1).await;
    assert_eq!(order_status(&db.pool, order).await, "PROCESSING", "the first claim marks the order");
    let second = claim_up_to(&db.pool, 1).await;
    let (tenant, created_by): (Uuid, Uuid) =
        sqlx::query_as("SELECT tenant_id, created_by FROM work_orders WHERE id = $1")
            .bind(order)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    for item in first.iter().chain(&second) {
        assert_eq!(item.work_order_id, order);
        assert_eq!(item.workflow_id, "invoices");
        assert_eq!((item.tenant_id, item.created_by), (tenant, created_by));
        assert_eq!(item.order_priority.as_str(), "HIGH");
        assert_eq!(serde_json::from_str::<serde_json::Value>(&item.order_metadata).unwrap(), json!({"batch": 7}));
        assert!(!item.order_unmarked);
    }
    assert_eq!(first.len() + second.len(), 2);
}

/// The same through a running engine: the dispatcher rolls up an order its claim could not
/// mark as soon as the holder lets go, while the item is still running (here an agent that
/// runs for a minute, so no completion can be what marks it).
#[tokio::test]
async fn an_order_held_during_the_claim_is_marked_once_released() {
    let db = TestDb::new().await;
    let order = insert_order(&db.pool, "MEDIUM").await;
    let holder = hold_order(&db.pool, order).await;
    let item = insert_item(&db.pool, order, "TICKET", "{}").await;
    let engine = db
        .engine(
            "[agents.slow]\nkind = \"command\"\nprogram = \"sleep\"\nargs = [\"60\"]\ntimeout = \"2m\"\n\
             [worker]\nshutdown_grace = \"1s\"\n[routes]\nTICKET = \"slow\"\n",
        )
        .await;
    wait_for_status(&db.pool, item, "PROCESSING").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(order_status(&db.pool, order).await, "PENDING", "the claim waited for the held order");
    holder.commit().await.unwrap();
    wait_for_order(&db.pool, order, "PROCESSING").await;
    assert_eq!(item_status(&db.pool, item).await, "PROCESSING", "the item is still running");
    stop(engine).await;
}

#[tokio::test]
async fn an_order_with_a_live_item_stays_processing() {
    let db = TestDb::new().await;
    let order = insert_order(&db.pool, "MEDIUM").await;
    let done = insert_item(&db.pool, order, "TICKET", "{}").await;
    let later: Uuid = sqlx::query_scalar(
        "INSERT INTO work_items (work_order_id, type, content, run_at) VALUES ($1, 'TICKET', '{}', now() + interval '1 hour') RETURNING id",
    )
    .bind(order)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let engine = db.engine("[routes]\nTICKET = \"echo\"\n").await;
    wait_for_status(&db.pool, done, "COMPLETED").await;
    stop(engine).await;
    assert_eq!(item_status(&db.pool, later).await, "QUEUED");
    assert_eq!(order_status(&db.pool, order).await, "PROCESSING");
}

#[tokio::test]
async fn clean_shutdown_leaves_nothing_in_flight() {
    let db = TestDb::new().await;
    let agent = TestAgent::start(|_| ((200, vec![], "{}".into()), Duration::from_millis(50))).await;
    let config = format!("{}[worker]\nconcurrency = 4\n[routes]\nTICKET = \"slow\"\n", agent.config("slow", "5s"));
    let order = insert_order(&db.pool, "MEDIUM").await;
    for _ in 0..40 {
        insert_item(&db.pool, order, "TICKET", "{}").await;
    }
    let engine = db.engine(&config).await;
    wait_until("some progress", Duration::from_secs(10), || async {
        count(&db.pool, "SELECT count(*) FROM attempts").await >= 4
    })
    .await;
    stop(engine).await;
    assert_eq!(count(&db.pool, "SELECT count(*) FROM work_items WHERE status = 'PROCESSING'").await, 0);
    assert_eq!(count(&db.pool, "SELECT count(*) FROM attempts WHERE status = 'STARTED'").await, 0);
}

#[tokio::test]
async fn shutdown_past_grace_releases_items_without_spending_attempts() {
    let db = TestDb::new().await;
    let agent = TestAgent::start(|_| ((200, vec![], "{}".into()), Duration::from_secs(30))).await;
    let config = format!(
        "{}[worker]\nshutdown_grace = \"200ms\"\n[retry]\nmax_attempts = 1\n[routes]\nTICKET = \"stuck\"\n",
        agent.config("stuck", "60s")
    );
    let order = insert_order(&db.pool, "MEDIUM").await;
    let item = insert_item(&db.pool, order, "TICKET", "{}").await;
    let engine = db.engine(&config).await;
    wait_until("the agent to be called", Duration::from_secs(10), || async { agent.executions_of(item) == 1 }).await;
    stop(engine).await;
    assert_eq!(item_status(&db.pool, item).await, "QUEUED");
    assert_eq!(attempts(&db.pool, item).await, vec![(1, "INTERRUPTED".into(), Some("INTERRUPTED".into()))]);
    // The interrupted attempt did not count: with max_attempts = 1 the item may run again.
    let (attempt, base): (i32, i32) = sqlx::query_as("SELECT attempt, attempt_base FROM work_items WHERE id = $1")
        .bind(item)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(attempt - base, 0);
}

#[tokio::test]
async fn rows_orderly_writes_get_time_ordered_ids() {
    let db = TestDb::new().await;
    // The SQL default: version 7, RFC 9562 variant, the database clock's milliseconds first.
    let row = sqlx::query(
        "SELECT a, b, (extract(epoch FROM clock_timestamp()) * 1000)::bigint AS now_ms
         FROM (SELECT orderly_uuid_v7() AS a) x, LATERAL (SELECT pg_sleep(0.002), orderly_uuid_v7() AS b) y",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let (a, b): (Uuid, Uuid) = (row.get("a"), row.get("b"));
    let now_ms: i64 = row.get("now_ms");
    for id in [a, b] {
        assert_eq!(id.get_version_num(), 7, "{id}");
        assert_eq!(id.get_variant(), uuid::Variant::RFC4122, "{id}");
        let (secs, nanos) = id.get_timestamp().expect("v7 carries a timestamp").to_unix();
        let ms = secs as i64 * 1000 + nanos as i64 / 1_000_000;
        assert!((now_ms - ms).abs() < 5_000, "{id} is {ms} ms, the database clock {now_ms}");
    }
    assert!(a < b, "later ids sort after earlier ones: {a} then {b}");

    // What the engine writes: attempt ids (made in the engine) and approval ids (the
    // default), in the order they were written.
    let engine = db.engine("[routes]\nTICKET = \"echo\"\n").await;
    let order = insert_order(&db.pool, "MEDIUM").await;
    let first = insert_item(&db.pool, order, "TICKET", "{}").await;
    wait_for_status(&db.pool, first, "COMPLETED").await;
    let second = insert_item(&db.pool, order, "TICKET", "{}").await;
    wait_for_status(&db.pool, second, "COMPLETED").await;
    stop(engine).await;
    for sql in [
        "SELECT id FROM attempts WHERE work_item_id = ANY($1) ORDER BY completed_at",
        "SELECT id FROM approval_events WHERE work_item_id = ANY($1) ORDER BY \"timestamp\"",
    ] {
        let ids: Vec<Uuid> = sqlx::query_scalar(sql).bind(vec![first, second]).fetch_all(&db.pool).await.unwrap();
        assert_eq!(ids.len(), 2, "{sql}");
        assert!(ids.iter().all(|id| id.get_version_num() == 7), "{sql}: {ids:?}");
        assert!(ids[0] < ids[1], "{sql}: {ids:?}");
    }
}

#[tokio::test]
async fn upstream_items_get_time_ordered_ids_unless_the_upstream_chose_one() {
    let db = TestDb::new().await;
    let order = insert_order(&db.pool, "MEDIUM").await;
    let now_ms: i64 = sqlx::query_scalar("SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    // The README's INSERT, a multi-row INSERT, and an explicit DEFAULT: the database makes a
    // v7 id, the database clock's millisecond first.
    let single = insert_item(&db.pool, order, "TICKET", "{}").await;
    let batch: Vec<Uuid> = sqlx::query_scalar(
        "INSERT INTO work_items (work_order_id, type, content)
         SELECT $1, 'TICKET', '{}' FROM generate_series(1, 50) RETURNING id",
    )
    .bind(order)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let explicit_default: Uuid = sqlx::query_scalar(
        "INSERT INTO work_items (id, work_order_id, type, content) VALUES (DEFAULT, $1, 'TICKET', '{}') RETURNING id",
    )
    .bind(order)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let made: Vec<Uuid> = [single, explicit_default].into_iter().chain(batch.iter().copied()).collect();
    for id in &made {
        assert_eq!(id.get_version_num(), 7, "{id}");
        let (secs, nanos) = id.get_timestamp().expect("v7 carries a timestamp").to_unix();
        let ms = secs as i64 * 1000 + nanos as i64 / 1_000_000;
        assert!((ms - now_ms).abs() < 5_000, "{id} is {ms} ms, the database clock {now_ms}");
    }
    assert!(single < explicit_default, "a later INSERT sorts after an earlier one: {single} then {explicit_default}");
    assert_eq!(made.iter().collect::<std::collections::HashSet<_>>().len(), made.len(), "ids are unique");

    // An upstream that picks its own id keeps it, and the item runs under it.
    let chosen = Uuid::new_v4();
    let kept: Uuid = sqlx::query_scalar(
        "INSERT INTO work_items (id, work_order_id, type, content) VALUES ($1, $2, 'TICKET', '{}') RETURNING id",
    )
    .bind(chosen)
    .bind(order)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(kept, chosen);
    let engine = db.engine("[routes]\nTICKET = \"echo\"\n").await;
    wait_for_status(&db.pool, chosen, "COMPLETED").await;
    wait_for_status(&db.pool, single, "COMPLETED").await;
    stop(engine).await;
    assert_eq!(attempts(&db.pool, chosen).await, vec![(1, "COMPLETED".into(), None)]);
}

/// An order whose items were all cancelled is CANCELLED (no work was done); cancelled and
/// completed items together roll up COMPLETED; a failed item still makes it FAILED.
#[tokio::test]
async fn an_order_of_cancelled_items_is_cancelled_not_completed() {
    use orderly::db::items::{Target, cancel};
    let db = TestDb::new().await;
    // Items delayed an hour: nothing runs them before the cancel.
    let delayed = |order: Uuid| {
        let pool = db.pool.clone();
        async move {
            sqlx::query_scalar::<_, Uuid>(
                "INSERT INTO work_items (work_order_id, type, content, run_at) VALUES ($1, 'TICKET', '{}', now() + interval '1 hour') RETURNING id",
            )
            .bind(order)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    let all_cancelled = insert_order(&db.pool, "MEDIUM").await;
    delayed(all_cancelled).await;
    delayed(all_cancelled).await;
    cancel(&db.pool, Target::Order(all_cancelled), "oncall", Some("not needed")).await.unwrap();
    assert_eq!(order_status(&db.pool, all_cancelled).await, "CANCELLED");

    let mixed = insert_order(&db.pool, "MEDIUM").await;
    let keep = insert_item(&db.pool, mixed, "TICKET", "{}").await;
    let drop_it = delayed(mixed).await;
    cancel(&db.pool, Target::Item(drop_it), "oncall", None).await.unwrap();
    let engine = db.engine("[routes]\nTICKET = \"echo\"\n").await;
    wait_for_status(&db.pool, keep, "COMPLETED").await;
    wait_for_order(&db.pool, mixed, "COMPLETED").await;
    stop(engine).await;

    // A cancelled order is finished work for the pruner too (it takes CANCELLED orders).
    let finished: i64 =
        sqlx::query_scalar("SELECT count(*) FROM work_orders WHERE status IN ('COMPLETED', 'CANCELLED')")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(finished, 2);
}
