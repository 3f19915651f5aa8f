//! Limits kept under other keys than an agent's (docs/limits.md): a tenant's cap and a
//! template step's limits hold across engines, checked by the agent's own ledger.

use crate::common::*;
use crate::limits::Ledger;
use serde_json::json;
use std::time::Duration;
use uuid::Uuid;

fn tenant(n: u8) -> Uuid {
    Uuid::from_u128(0xa000 + n as u128)
}

/// One order of `n` items of `item_type` for `tenant`, in one statement.
async fn tenant_items(db: &TestDb, tenant: Uuid, priority: &str, item_type: &str, n: i32) -> Uuid {
    sqlx::query_scalar(
        "WITH o AS (INSERT INTO work_orders (workflow_id, tenant_id, created_by, priority)
                    VALUES ('default', $1, gen_random_uuid(), $2::priority) RETURNING id),
              i AS (INSERT INTO work_items (work_order_id, type, content)
                    SELECT o.id, $3::work_item_type, '{}' FROM o, generate_series(1, $4))
         SELECT id FROM o",
    )
    .bind(tenant)
    .bind(priority)
    .bind(item_type)
    .bind(n)
    .fetch_one(&db.pool)
    .await
    .unwrap()
}

/// A tenant's `max_in_flight` holds across three engines (checked by the agent's own count of
/// open requests), and another tenant's items run beside it, not behind it.
#[tokio::test]
async fn a_tenants_cap_holds_across_engines_and_others_run_beside_it() {
    let db = TestDb::new().await;
    let (capped, other) = (tenant(1), tenant(2));
    let agent = Ledger::start(Duration::from_millis(40), |_| (200, None)).await;
    let capped_order = tenant_items(&db, capped, "MEDIUM", "TICKET", 40).await;
    let other_order = tenant_items(&db, other, "MEDIUM", "INVOICE", 40).await;
    let config = format!(
        "{}[tenants.\"{capped}\"]\nmax_in_flight = 2\n",
        agent.config("", 16).replace("[routes]\n", "[routes]\nINVOICE = \"echo\"\n")
    );
    let engines = [db.engine(&config).await, db.engine(&config).await, db.engine(&config).await];
    wait_until("an item that says it waits for its tenant's cap", Duration::from_secs(10), || async {
        let parked: Vec<Uuid> = sqlx::query_scalar("SELECT work_item_id FROM agent_waits WHERE woken_at IS NULL")
            .fetch_all(&db.pool)
            .await
            .unwrap();
        for id in parked {
            let item = orderly::db::items::get(&db.pool, id).await.unwrap().item;
            let says = item.agent_wait.unwrap_or_default();
            if item.tenant_wait && says.contains(&format!("a free slot of tenant {capped}")) {
                return true;
            }
        }
        false
    })
    .await;
    wait_for_order(&db.pool, other_order, "COMPLETED").await;
    let capped_done =
        count(&db.pool, "SELECT count(*) FROM work_items WHERE type = 'TICKET' AND status = 'COMPLETED'").await;
    assert!(capped_done < 40, "the other tenant finished first ({capped_done} of the capped tenant's 40 done)");
    wait_until("the capped tenant's items", Duration::from_secs(30), || async {
        order_status(&db.pool, capped_order).await == "COMPLETED"
    })
    .await;
    for engine in engines {
        stop(engine).await;
    }
    let peak = agent.open.lock().unwrap().1;
    println!("tenant cap 2 across three engines at concurrency 16: peak {peak} open at the agent");
    assert!(peak <= 2, "never more than the cap: {peak}");
    assert_eq!(agent.starts().len(), 40, "no attempt spent waiting");
    let waited: Option<String> =
        sqlx::query_scalar("SELECT min(reason) FROM agent_waits").fetch_one(&db.pool).await.unwrap();
    assert!(waited.is_none(), "nothing left waiting: {waited:?}");
}

/// A template step's `limits` hold beside its agent's (the agent has none here), and an item
/// parked by them says why.
#[tokio::test]
async fn a_template_steps_limits_hold_across_engines() {
    let db = TestDb::new().await;
    let agent = Ledger::start(Duration::from_millis(40), |_| (200, None)).await;
    insert_template(
        &db.pool,
        "slow-lane",
        json!({"steps": {"TICKET": {"agent": "limited", "limits": {"max_in_flight": 3}}}}),
    )
    .await;
    let order = insert_order_with_workflow(&db.pool, "slow-lane").await;
    sqlx::query(
        "INSERT INTO work_items (work_order_id, type, content) SELECT $1, 'TICKET', '{}' FROM generate_series(1, 30)",
    )
    .bind(order)
    .execute(&db.pool)
    .await
    .unwrap();
    let config = agent.config("", 16);
    let engines = [db.engine(&config).await, db.engine(&config).await];
    wait_until("an item waiting for the step's slot", Duration::from_secs(10), || async {
        count(&db.pool, "SELECT count(*) FROM agent_waits WHERE agent = 'step:slow-lane/TICKET'").await > 0
    })
    .await;
    wait_for_order(&db.pool, order, "COMPLETED").await;
    for engine in engines {
        stop(engine).await;
    }
    let peak = agent.open.lock().unwrap().1;
    println!("step limit 3 across two engines at concurrency 16: peak {peak}");
    assert!(peak <= 3, "never more than the step's limit: {peak}");
    assert_eq!(agent.starts().len(), 30);
}

/// A step's limits are checked like the rest of the template: a bad one is a clear error.
#[tokio::test]
async fn a_steps_bad_limits_dead_letter_with_the_reason() {
    let db = TestDb::new().await;
    insert_template(
        &db.pool,
        "bad-limits",
        json!({"steps": {"TICKET": {"agent": "echo", "limits": {"rate": "fast"}}}}),
    )
    .await;
    let order = insert_order_with_workflow(&db.pool, "bad-limits").await;
    let item = insert_item(&db.pool, order, "TICKET", "{}").await;
    let engine = db.engine("[routes]\nTICKET = \"echo\"\n").await;
    wait_for_status(&db.pool, item, "FAILED").await;
    stop(engine).await;
    let (code, _, _) = dead_letter(&db.pool, item).await.expect("dead-lettered");
    assert_eq!(code, "WORKFLOW_INVALID");
    let error: String = sqlx::query_scalar("SELECT last_error FROM work_items WHERE id = $1")
        .bind(item)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(error.contains("step TICKET: limits.rate"), "{error}");
}
