//! The hot statements keep their index plans as the table grows (docs/guarantees.md): a regression
//! to a sequential scan of work_items makes each batch cost O(table) and fails here.

use crate::common::*;
use orderly::db::ENGINE_PLANNER_SETTINGS;
use orderly::db::claim::{CLAIM_SQL, CLAIM_TURNS_SQL};
use orderly::db::maintenance::PRUNE_CANDIDATES_SQL;
use orderly::db::queue::{COMPLETE_PARAM_TYPES, COMPLETE_SQL, RENEW_SQL};
use orderly::db::rollup::{LOCK_ORDERS_SQL, ROLL_UP_SQL, STRANDED_ORDERS_SQL, UNMARKED_ORDERS_SQL};
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};
use std::str::FromStr;

async fn explain(db: &TestDb, prepare: String, execute: String) -> String {
    let mut conn = db.pool.acquire().await.unwrap();
    // The worst case: the generic plan PostgreSQL switches to for a prepared statement.
    explain_on(&mut conn, "force_generic_plan", prepare, execute).await
}

async fn explain_on(conn: &mut PgConnection, plan_cache_mode: &str, prepare: String, execute: String) -> String {
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("SET plan_cache_mode = {plan_cache_mode}")))
        .execute(&mut *conn)
        .await
        .unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(prepare)).execute(&mut *conn).await.unwrap();
    let lines: Vec<String> =
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("EXPLAIN {execute}"))).fetch_all(&mut *conn).await.unwrap();
    lines.join("\n")
}

/// A connection as the engine opens it (`db::connect_engine`).
async fn engine_connection(db: &TestDb) -> PgConnection {
    let options = PgConnectOptions::from_str(&db.url).unwrap().options(ENGINE_PLANNER_SETTINGS);
    PgConnection::connect_with(&options).await.unwrap()
}

fn uuid_array(ids: &[uuid::Uuid]) -> String {
    format!("ARRAY['{}']::uuid[]", ids.iter().map(|i| i.to_string()).collect::<Vec<_>>().join("','"))
}

/// The roll-up's parameter for these orders: their current row versions, as the lock
/// statement returns them.
async fn row_versions(pool: &sqlx::PgPool, ids: &[uuid::Uuid]) -> String {
    let versions: Vec<String> = sqlx::query_scalar("SELECT ctid::text FROM work_orders WHERE id = ANY($1)")
        .bind(ids)
        .fetch_all(pool)
        .await
        .unwrap();
    format!("ARRAY['{}']::text[]", versions.join("','"))
}

/// A burst after a quiet period: statistics taken while the tables were empty, then a
/// backlog of 40,000 items. With the planner's defaults the claim's custom plan (the one
/// a statement gets for its first executions, with `LIMIT 256` known) reads every queued row
/// through a bitmap scan and sorts them, and the order lookups scan all of work_orders, for
/// every batch. The engine's connections must keep index plans in that state.
#[tokio::test]
async fn engine_plans_hold_on_statistics_of_an_empty_queue() {
    let db = TestDb::new().await;
    sqlx::raw_sql(
        "ANALYZE work_items; ANALYZE work_orders;
         INSERT INTO work_orders (workflow_id, tenant_id, created_by)
           SELECT 'plan', gen_random_uuid(), gen_random_uuid() FROM generate_series(1, 400);
         INSERT INTO work_items (work_order_id, type, content)
           SELECT o.id, 'TICKET', '{}' FROM work_orders o, generate_series(1, 100);",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let mut conn = engine_connection(&db).await;
    // The engine's own mode (generic plans), and custom plans, which know `LIMIT 256`.
    for mode in ["force_generic_plan", "force_custom_plan"] {
        let claim = explain_on(
            &mut conn,
            mode,
            format!("PREPARE claim_{mode}(bigint, float8, text, int) AS {CLAIM_SQL}"),
            format!("EXECUTE claim_{mode}(256, 30000, 'plan-test', 1048576)"),
        )
        .await;
        assert!(
            claim.contains("Index Scan using idx_work_items_ready"),
            "{mode}: claim walks the ready index:\n{claim}"
        );
        assert!(!claim.contains("Sort"), "{mode}: claim sorts the backlog instead of reading it in order:\n{claim}");
        assert!(!claim.contains("Bitmap"), "{mode}: claim reads the backlog through a bitmap:\n{claim}");
        assert!(!claim.contains("Seq Scan"), "{mode}: claim scans a table:\n{claim}");
        let turns = explain_on(
            &mut conn,
            mode,
            format!("PREPARE turns_{mode}(bigint, float8, text, int, int, uuid[], uuid[], int) AS {CLAIM_TURNS_SQL}"),
            format!(
                "EXECUTE turns_{mode}(256, 30000, 'plan-test', 1048576, 32, '{{{}}}', '{{{}}}', 8)",
                uuid::Uuid::nil(),
                uuid::Uuid::max()
            ),
        )
        .await;
        assert!(
            turns.contains("idx_work_items_ready_tenant"),
            "{mode}: the turns claim steps through the tenant index:\n{turns}"
        );
        assert!(!turns.contains("Bitmap"), "{mode}: the turns claim reads the backlog through a bitmap:\n{turns}");
        assert!(!turns.contains("Seq Scan"), "{mode}: the turns claim scans a table:\n{turns}");
    }

    let orders: Vec<uuid::Uuid> =
        sqlx::query_scalar("SELECT id FROM work_orders LIMIT 3").fetch_all(&db.pool).await.unwrap();
    // Locking a batch's orders, then rolling them up: by key, never a scan of work_orders.
    let versions = row_versions(&db.pool, &orders).await;
    for (name, sql, types, args) in
        [("lock_orders", LOCK_ORDERS_SQL, "uuid[]", uuid_array(&orders)), ("roll_up", ROLL_UP_SQL, "text[]", versions)]
    {
        let plan = explain_on(
            &mut conn,
            "force_custom_plan",
            format!("PREPARE {name}({types}) AS {sql}"),
            format!("EXECUTE {name}({args})"),
        )
        .await;
        assert!(!plan.contains("Seq Scan"), "{name} scans a table:\n{plan}");
    }
}

/// A history of finished items (two per order) and statistics taken over it alone.
async fn finished_history(db: &TestDb, items: i64) {
    sqlx::query(
        "INSERT INTO work_orders (workflow_id, tenant_id, created_by)
           SELECT 'plan', gen_random_uuid(), gen_random_uuid() FROM generate_series(1, 20000)",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO work_items (work_order_id, type, content, status)
           SELECT o.id, 'TICKET', '{}', 'COMPLETED'
           FROM (SELECT id, row_number() OVER () AS k FROM work_orders) o
           JOIN generate_series(1, $1) g ON o.k = g % 20000 + 1",
    )
    .bind(items)
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::raw_sql("ANALYZE").execute(&db.pool).await.unwrap();
}

#[tokio::test]
async fn hot_statements_use_indexes_not_table_scans() {
    let db = TestDb::new().await;
    finished_history(&db, 40000).await;
    // Statistics taken while nothing was queued or running (a quiet night, a settled history)
    // say both partial indexes are empty; no hot statement may trust that.
    sqlx::raw_sql(
        "UPDATE work_items SET status = 'QUEUED' WHERE id IN (
             SELECT id FROM work_items ORDER BY id LIMIT 20000);
         UPDATE work_items SET status = 'PROCESSING', attempt = 1, lease_expires_at = now() + interval '1 minute' WHERE id IN (
             SELECT id FROM work_items WHERE status = 'QUEUED' LIMIT 1000);",
    )
    .execute(&db.pool)
    .await
    .unwrap();

    let claim = explain(
        &db,
        format!("PREPARE claim(bigint, float8, text, int) AS {CLAIM_SQL}"),
        "EXECUTE claim(128, 30000, 'plan-test', 1048576)".into(),
    )
    .await;
    assert!(claim.contains("idx_work_items_ready"), "claim uses the ready index:\n{claim}");
    // The update goes to the locked rows by ctid, never back through the ready index (with
    // statistics that think it empty, the planner walked it filtering on ctid: 74,272 rows
    // removed per 128 claimed over a million finished items).
    assert!(claim.contains("Tid Scan on work_items w"), "claim updates the rows it locked by ctid:\n{claim}");
    assert_eq!(claim.matches("idx_work_items_ready").count(), 1, "claim walks the ready index twice:\n{claim}");
    assert!(!claim.contains("Seq Scan on work_items"), "claim scans work_items:\n{claim}");
    let turns = explain(
        &db,
        format!("PREPARE turns(bigint, float8, text, int, int, uuid[], uuid[], int) AS {CLAIM_TURNS_SQL}"),
        format!(
            "EXECUTE turns(128, 30000, 'plan-test', 1048576, 32, '{{{}}}', '{{{}}}', 8)",
            uuid::Uuid::nil(),
            uuid::Uuid::max()
        ),
    )
    .await;
    assert!(turns.contains("idx_work_items_ready_tenant"), "the turns claim uses the tenant index:\n{turns}");
    assert!(turns.contains("Tid Scan on work_items"), "the turns claim locks the rows it picked by ctid:\n{turns}");
    assert!(!turns.contains("Seq Scan on work_items"), "the turns claim scans work_items:\n{turns}");

    let ids: Vec<uuid::Uuid> = sqlx::query_scalar("SELECT id FROM work_items WHERE status = 'PROCESSING' LIMIT 3")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    let id_array = uuid_array(&ids);
    let mut args = vec![id_array.clone(), "ARRAY[1,1,1]".into()];
    args.extend(std::iter::repeat_n("'{}'".to_owned(), COMPLETE_PARAM_TYPES.split(", ").count() - 2));
    let complete = explain(
        &db,
        format!("PREPARE complete({COMPLETE_PARAM_TYPES}) AS {COMPLETE_SQL}"),
        format!("EXECUTE complete({})", args.join(", ")),
    )
    .await;
    assert!(!complete.contains("Seq Scan on work_items"), "completion scans work_items:\n{complete}");
    let renew = explain(
        &db,
        format!("PREPARE renew(uuid[], int[], float8) AS {RENEW_SQL}"),
        format!("EXECUTE renew({id_array}, ARRAY[1,1,1], 30000)"),
    )
    .await;
    assert!(!renew.contains("Seq Scan"), "lease renewal scans a table:\n{renew}");
    assert!(!renew.contains("idx_work_items_leased"), "lease renewal walks the leased index:\n{renew}");
    // The rows are locked once, in the CTE: a locking subquery on the inner side of a join is
    // run again for every renewed row (O(n²) in the items in flight).
    let (cte, lock) = (renew.find("CTE locked"), renew.find("LockRows"));
    assert!(cte.is_some() && lock > cte, "lease renewal locks outside its CTE:\n{renew}");
    assert_eq!(renew.matches("LockRows").count(), 1, "lease renewal locks twice:\n{renew}");
    assert!(!renew.contains("Subquery Scan") && !renew.contains("SubPlan"), "a subquery per row:\n{renew}");
    let orders: Vec<uuid::Uuid> =
        sqlx::query_scalar("SELECT id FROM work_orders LIMIT 3").fetch_all(&db.pool).await.unwrap();
    let versions = row_versions(&db.pool, &orders).await;
    let roll_up =
        explain(&db, format!("PREPARE roll_up(text[]) AS {ROLL_UP_SQL}"), format!("EXECUTE roll_up({versions})")).await;
    assert!(!roll_up.contains("Seq Scan"), "the roll-up scans a table:\n{roll_up}");
    // Probes that stop at the first matching item, never an aggregate over an order's items:
    // the cost of an item must not grow with the size of its order.
    let plan = &roll_up;
    assert!(!plan.contains("Aggregate"), "the roll-up aggregates an order's items:\n{plan}");
    assert!(plan.contains("idx_work_items_composite"), "the roll-up probes the composite index:\n{plan}");
    // Per order, never one pass over every unfinished item of the table.
    assert!(!plan.contains("hashed SubPlan"), "the roll-up hashes the table's items:\n{plan}");
    // Each probe bounds the status in its index condition: filtered instead, a probe walks
    // every finished item of the order before it answers.
    let conditions: Vec<&str> = plan.lines().filter(|l| l.contains("Index Cond: ((work_order_id =")).collect();
    assert!(conditions.len() >= 2, "the probes of the composite index:\n{plan}");
    assert!(conditions.iter().all(|c| c.contains("status")), "a probe filters on status:\n{plan}");
    assert!(!plan.lines().any(|l| l.contains("Filter: (status")), "a probe filters on status:\n{plan}");
    assert_eq!(plan.matches("SubPlan").count(), 5, "each probe once per order:\n{plan}");
    // `status <= 'PROCESSING'` is the unfinished range only while these come first.
    let first: Vec<String> = sqlx::query_scalar("SELECT unnest(enum_range(NULL::work_item_status))::text LIMIT 3")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(first, ["QUEUED", "PROCESSING", "COMPLETED"], "the roll-up's status range depends on this order");
    let stranded =
        explain(&db, format!("PREPARE stranded(bigint) AS {STRANDED_ORDERS_SQL}"), "EXECUTE stranded(500)".into())
            .await;
    assert!(!stranded.contains("Seq Scan on work_items"), "the healing sweep scans work_items:\n{stranded}");
    let unmarked =
        explain(&db, format!("PREPARE unmarked(bigint) AS {UNMARKED_ORDERS_SQL}"), "EXECUTE unmarked(500)".into())
            .await;
    assert!(!unmarked.contains("Seq Scan"), "the healing sweep scans a table for running items:\n{unmarked}");
    // By primary key from each result, never by walking the partial index of leased rows:
    // with statistics that think it empty, the planner nests a loop over it and re-reads the
    // whole batch for each leased row (measured: 2,355 items/s instead of 6,771 over a
    // million finished items).
    assert!(complete.contains("work_items_pkey"), "completion finds items by primary key:\n{complete}");
    assert!(!complete.contains("idx_work_items_leased"), "completion walks the leased index:\n{complete}");
}

/// A sweep reads the orders it may delete, oldest first, through the orders' created_at
/// index, and checks each one's items and dead letters by index: never the
/// history.
#[tokio::test]
async fn the_pruner_reads_finished_orders_through_their_index() {
    let db = TestDb::new().await;
    sqlx::raw_sql(
        "INSERT INTO work_orders (workflow_id, tenant_id, created_by, status, created_at, updated_at)
           SELECT 'plan', gen_random_uuid(), gen_random_uuid(), 'COMPLETED', now() - g * interval '1 minute' - interval '1 minute',
                  now() - g * interval '1 minute'
           FROM generate_series(1, 20000) g;
         INSERT INTO work_items (work_order_id, type, content, status, processed_at)
           SELECT o.id, 'TICKET', '{}', 'COMPLETED', o.updated_at FROM work_orders o, generate_series(1, 5);
         ANALYZE;",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    // On the engine's connections (the pruner runs on the engine's pool); with the
    // planner's defaults the generic plan hashes every item of the table instead.
    let mut conn = engine_connection(&db).await;
    let plan = explain_on(
        &mut conn,
        "force_generic_plan",
        format!("PREPARE candidates(float8, bigint) AS {PRUNE_CANDIDATES_SQL}"),
        "EXECUTE candidates(86400000, 100)".into(),
    )
    .await;
    assert!(plan.contains("idx_work_orders_created_at"), "candidates come from the orders' created_at index:\n{plan}");
    assert!(plan.contains("idx_work_items_composite"), "each order's items are read by index:\n{plan}");
    assert!(plan.contains("dead_letters_open_item"), "open letters are read from their index:\n{plan}");
    assert!(!plan.contains("Seq Scan"), "the pruner scans a table:\n{plan}");
}

/// The SLA sweep reads only what its clock can still be running for: with a history of
/// finished items and statistics that think the queue empty, no statement of the sweep scans
/// work_items (generic plans, the engine's planner settings: how the leader runs them).
#[tokio::test]
async fn sla_sweep_statements_read_indexes_not_the_history() {
    use orderly::db::sla::*;
    let db = TestDb::new().await;
    finished_history(&db, 60000).await;
    sqlx::raw_sql("INSERT INTO sla_rules (name, clock) VALUES ('plan', 'TIME_TO_FINISH')")
        .execute(&db.pool)
        .await
        .unwrap();
    let rule: uuid::Uuid = sqlx::query_scalar("SELECT id FROM sla_rules").fetch_one(&db.pool).await.unwrap();
    let mut conn = engine_connection(&db).await;
    let fire = "(uuid, work_item_type, priority, uuid, text, bigint, float8)";
    let fire_args = format!("('{rule}', NULL, NULL, NULL, NULL, 5000, 60000)");
    let resolve_args = format!("('{rule}')");
    for (name, sql, types, args) in [
        ("fire_start", FIRE_TIME_TO_START_SQL, fire, &fire_args),
        ("fire_finish", FIRE_TIME_TO_FINISH_SQL, fire, &fire_args),
        ("fire_held", FIRE_TIME_AWAITING_APPROVAL_SQL, fire, &fire_args),
        ("fire_letters", FIRE_DEAD_LETTER_OPEN_SQL, fire, &fire_args),
        ("resolve_start", RESOLVE_TIME_TO_START_SQL, "(uuid)", &resolve_args),
        ("resolve_finish", RESOLVE_TIME_TO_FINISH_SQL, "(uuid)", &resolve_args),
        ("resolve_held", RESOLVE_TIME_AWAITING_APPROVAL_SQL, "(uuid)", &resolve_args),
        ("resolve_letters", RESOLVE_DEAD_LETTER_OPEN_SQL, "(uuid)", &resolve_args),
    ] {
        let plan = explain_on(
            &mut conn,
            "force_generic_plan",
            format!("PREPARE {name}{types} AS {sql}"),
            format!("EXECUTE {name}{args}"),
        )
        .await;
        assert!(!plan.contains("Seq Scan on work_items"), "{name} scans work_items:\n{plan}");
        assert!(!plan.contains("Seq Scan on work_orders"), "{name} scans work_orders:\n{plan}");
        assert!(!plan.contains("Seq Scan on escalations"), "{name} scans escalations:\n{plan}");
    }
}

/// A roll-up's probes step over the index entries of row versions it has already found dead
/// (migration 0016): its cost stays that of the order's live items, however many of the
/// order's items have already run. With the composite index deduplicated, the entries of an
/// order's QUEUED items were merged into posting lists once their leaf pages filled, a
/// posting list cannot be marked dead while any item in it is still queued, and every probe
/// read the old row of every claimed item again.
#[tokio::test]
async fn a_roll_up_probe_does_not_reread_the_rows_of_items_that_already_ran() {
    let db = TestDb::new().await;
    let order = insert_order(&db.pool, "MEDIUM").await;
    // One statement: every item gets the same key, enough of them to fill several leaf pages.
    sqlx::query(
        "INSERT INTO work_items (work_order_id, type, content) SELECT $1, 'TICKET', '{}' FROM generate_series(1, 2000)",
    )
    .bind(order)
    .execute(&db.pool)
    .await
    .unwrap();
    // 1,200 of them run: claimed by the engine's statement, then finished, each change committed.
    let claimed = orderly::db::claim::claim(&db.pool, "probe-test", 1200, std::time::Duration::from_secs(60), 1 << 20)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1200);
    let ids: Vec<uuid::Uuid> = claimed.iter().map(|c| c.id).collect();
    sqlx::query("UPDATE work_items SET status = 'COMPLETED', lease_expires_at = NULL WHERE id = ANY($1)")
        .bind(&ids)
        .execute(&db.pool)
        .await
        .unwrap();

    // On a connection as the engine opens it (the completer's roll-up runs on the engine's pool).
    let mut conn = engine_connection(&db).await;
    let version = row_versions(&db.pool, &[order]).await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "SET plan_cache_mode = force_generic_plan; PREPARE probe(text[]) AS {ROLL_UP_SQL}"
    )))
    .execute(&mut conn)
    .await
    .unwrap();
    // Rows read by each probe. The first reads the dead versions and marks their entries dead
    // once no transaction can see them (an autovacuum ANALYZE's snapshot can delay that for a
    // moment, hence several probes); from then on a probe reads one live item's row.
    let mut fetches = Vec::new();
    for _ in 0..50 {
        let plan: Vec<String> =
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("EXPLAIN (ANALYZE, COSTS OFF) EXECUTE probe({version})")))
                .fetch_all(&mut conn)
                .await
                .unwrap();
        let plan = plan.join("\n");
        assert!(plan.contains("idx_work_items_composite"), "the probe walks the composite index:\n{plan}");
        assert!(!plan.contains("hashed SubPlan"), "the probe reads every unfinished item of the table:\n{plan}");
        fetches.push(
            plan.lines()
                .filter_map(|line| line.trim().strip_prefix("Heap Fetches: "))
                .map(|n| n.parse::<u64>().unwrap())
                .sum::<u64>(),
        );
        if fetches.len() > 1 && *fetches.last().unwrap() <= 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(fetches[0] > 100, "the first probe did not meet the dead versions: {fetches:?}");
    assert!(*fetches.last().unwrap() <= 2, "every probe read the dead versions again: {fetches:?}");
    // And it still answers: the order has unfinished items, so there is nothing to roll up.
    let mut tx = db.pool.begin().await.unwrap();
    let locked = orderly::db::rollup::lock_orders(&mut tx, &[order]).await.unwrap();
    let changed = orderly::db::rollup::roll_up_locked(&mut tx, &locked).await.unwrap();
    tx.commit().await.unwrap();
    assert!(changed.is_empty(), "{changed:?}");
}

/// A million items waiting for a dependency cost the claim nothing: they are not in its
/// index. Loaded in bulk (triggers off) as the edge trigger would leave them: each counts
/// one unmet dependency on a parent still queued. A claim of the 100 runnable items then
/// reads a few buffers per claimed item, however many wait.
#[tokio::test]
async fn the_claim_reads_no_waiting_item_however_many_wait() {
    let db = TestDb::new().await;
    let mut conn = db.pool.acquire().await.unwrap();
    sqlx::raw_sql(
        "SET session_replication_role = replica;
         INSERT INTO work_orders (id, workflow_id, tenant_id, created_by)
           VALUES ('00000000-0000-0000-0000-000000000001', 'plan', gen_random_uuid(), gen_random_uuid());
         INSERT INTO work_items (id, work_order_id, type, content, priority, tenant_id, has_dependents, run_at)
           SELECT '00000000-0000-0000-0000-000000000002', id, 'TICKET', '{}', 'MEDIUM', tenant_id, true, now() + interval '1 day'
           FROM work_orders;
         INSERT INTO work_items (work_order_id, type, content, priority, tenant_id, deps_pending, has_dependencies)
           SELECT o.id, 'TICKET', '{}', 'URGENT', o.tenant_id, 1, true FROM work_orders o, generate_series(1, 1000000);
         INSERT INTO work_item_dependencies (work_item_id, depends_on_id)
           SELECT id, '00000000-0000-0000-0000-000000000002' FROM work_items WHERE deps_pending = 1;
         INSERT INTO work_items (work_order_id, type, content, priority, tenant_id)
           SELECT o.id, 'TICKET', '{}', 'LOW', o.tenant_id FROM work_orders o, generate_series(1, 100);
         SET session_replication_role = origin;
         ANALYZE work_items; ANALYZE work_item_dependencies;",
    )
    .execute(&mut *conn)
    .await
    .unwrap();
    drop(conn);
    let mut conn = engine_connection(&db).await;
    sqlx::raw_sql("BEGIN").execute(&mut conn).await.unwrap();
    let plan = explain_on(
        &mut conn,
        "force_generic_plan",
        format!("PREPARE claim_waiting(bigint, float8, text, int) AS {CLAIM_SQL}"),
        "EXECUTE claim_waiting(256, 30000, 'plan-test', 1048576)".into(),
    )
    .await;
    assert!(plan.contains("idx_work_items_ready"), "claim walks the ready index:\n{plan}");
    let analyzed: Vec<String> = sqlx::query_scalar(
        "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF, TIMING OFF) EXECUTE claim_waiting(256, 30000, 'plan-test', 1048576)",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    sqlx::raw_sql("ROLLBACK").execute(&mut conn).await.unwrap();
    let analyzed = analyzed.join("\n");
    // Only the 100 runnable (LOW) items are claimed, ahead of a million URGENT waiting ones.
    let top = analyzed.lines().next().unwrap_or_default();
    assert!(top.contains("rows=100 "), "the claim takes exactly the runnable items:\n{analyzed}");
    let buffers: u64 = analyzed
        .lines()
        .find(|l| l.trim_start().starts_with("Buffers:"))
        .and_then(|l| l.split_whitespace().filter_map(|w| w.split('=').nth(1)).map(|n| n.parse::<u64>().ok()).sum())
        .unwrap_or(u64::MAX);
    // A scan that met the waiting items would read tens of thousands of pages.
    assert!(buffers < 5_000, "the claim of 100 items read {buffers} buffers beside a million waiting:\n{analyzed}");
}
