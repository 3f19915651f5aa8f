//! Distributed mode on a real Citus cluster (docs/distributed.md). `ORDERLY_CITUS_URL` names
//! a database on the coordinator in which the workers are added (`citus_add_node`); each
//! test makes a database of its own on the coordinator and on every worker. Without the
//! variable every test here prints a SKIPPED line and returns: Citus is built by hand, it is
//! not in the registries CI reaches.

use crate::citus::CitusDb;
use crate::cli::{orderly, text};
use sqlx::{PgPool, Row};
use std::time::Duration;
use uuid::Uuid;

/// The work tables (co-located, by tenant), the catalogs (reference tables) and the
/// coordinator's own state, as docs/distributed.md lists them.
const DISTRIBUTED: &[&str] = &[
    "work_orders",
    "work_items",
    "attempts",
    "eval_results",
    "approval_events",
    "dead_letters",
    "escalations",
    "notifications",
    "cost_entries",
    "work_item_dependencies",
    "mem_docs",
    "item_reviews",
    "run_logs",
    "run_artifacts",
    "run_progress",
    "agent_slots",
    "agent_waits",
    "budget_waits",
    "orderly_tenants",
];
const REFERENCE: &[&str] = &[
    "workflow_templates",
    "workflow_step_needs",
    "schemas",
    "connectors",
    "tools",
    "capabilities",
    "tool_capabilities",
    "sla_rules",
    "sla_levels",
    "schedules",
    "budgets",
    "agent_state",
];
const LOCAL: &[&str] = &["orderly_leader", "orderly_replicas", "orderly_activity", "audit_logs", "orderly_keys"];

#[tokio::test]
async fn migrate_distributed_keys_every_work_table_by_tenant_on_one_colocation() {
    let Some(db) = CitusDb::distributed("migrate_distributed_keys_every_work_table_by_tenant").await else {
        return;
    };
    let rows = sqlx::query(
        "SELECT logicalrelid::text AS t, partmethod::text AS m, colocationid AS c,
                CASE WHEN partmethod = 'h' THEN column_to_column_name(logicalrelid, partkey) END AS col
         FROM pg_dist_partition",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let find = |t: &str| rows.iter().find(|r| r.get::<String, _>("t") == t);
    let colocation: i32 = find("work_orders").expect("work_orders is distributed").get("c");
    for t in DISTRIBUTED {
        let row = find(t).unwrap_or_else(|| panic!("{t} is not distributed"));
        assert_eq!(row.get::<String, _>("m"), "h", "{t} is hash-distributed");
        assert_eq!(row.get::<Option<String>, _>("col").as_deref(), Some("tenant_id"), "{t} by tenant_id");
        assert_eq!(row.get::<i32, _>("c"), colocation, "{t} is co-located with work_orders");
    }
    for t in REFERENCE {
        let row = find(t).unwrap_or_else(|| panic!("{t} is not a reference table"));
        assert_eq!(row.get::<String, _>("m"), "n", "{t} is a reference table");
    }
    for t in LOCAL {
        assert!(find(t).is_none(), "{t} stays on the coordinator");
    }
    // No table of orderly's is left out of the three lists.
    let all: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND c.relname NOT LIKE '\\_sqlx%'",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    for t in &all {
        assert!(
            DISTRIBUTED.contains(&t.as_str()) || REFERENCE.contains(&t.as_str()) || LOCAL.contains(&t.as_str()),
            "{t} is in no list of docs/distributed.md"
        );
    }
    // tenant_id leads every primary key, unique index and foreign key of the work tables.
    let keys: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT c.relname::text, i.indexrelid::regclass::text, a.attname::text
         FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
         JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
         WHERE i.indisunique AND c.relname = ANY($1)
         UNION ALL
         SELECT con.conrelid::regclass::text, con.conname::text, a.attname::text
         FROM pg_constraint con JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = con.conkey[1]
         WHERE con.contype = 'f' AND con.conrelid::regclass::text = ANY($1)
           AND con.confrelid::regclass::text = ANY($1)",
    )
    .bind(DISTRIBUTED)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert!(keys.len() >= DISTRIBUTED.len() + 8, "every table's keys were read: {keys:?}");
    for (table, key, first) in &keys {
        assert_eq!(first, "tenant_id", "{key} on {table} leads with tenant_id");
    }
    // Run again: refused, nothing changed.
    let again = orderly(&db.url, &["migrate", "--distributed"]);
    assert!(!again.status.success());
    assert!(text(&again).contains("already distributed"), "{}", text(&again));
}

#[tokio::test]
async fn migrate_distributed_refuses_a_database_without_citus() {
    let db = crate::common::TestDb::new().await;
    let out = orderly(&db.url, &["migrate", "--distributed"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("no Citus extension"), "{}", text(&out));
    assert_eq!(orderly::db::distributed::topology(&db.pool).await.unwrap(), orderly::db::distributed::Topology::Single);
}

async fn order(pool: &PgPool, tenant: Uuid) -> Uuid {
    sqlx::query_scalar(
        "INSERT INTO work_orders (workflow_id, tenant_id, created_by, priority)
         VALUES ('default', $1, gen_random_uuid(), 'MEDIUM') RETURNING id",
    )
    .bind(tenant)
    .fetch_one(pool)
    .await
    .unwrap()
}

async fn items(pool: &PgPool, tenant: Uuid, order: Uuid, n: i32) {
    sqlx::query(
        "INSERT INTO work_items (work_order_id, tenant_id, type, content)
         SELECT $2, $1, 'INVOICE', '{\"n\": 1}' FROM generate_series(1, $3)",
    )
    .bind(tenant)
    .bind(order)
    .bind(n)
    .execute(pool)
    .await
    .unwrap();
}

#[tokio::test]
async fn an_upstream_insert_names_its_tenant_and_lists_it_for_the_claim() {
    let Some(db) = CitusDb::distributed("an_upstream_insert_names_its_tenant").await else { return };
    assert_eq!(
        orderly::db::distributed::topology(&db.pool).await.unwrap(),
        orderly::db::distributed::Topology::Distributed
    );
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let order_a = order(&db.pool, a).await;
    items(&db.pool, a, order_a, 3).await;
    // The item takes its order's priority, read on the order's shard in the same transaction.
    let priorities: Vec<String> = sqlx::query_scalar("SELECT priority::text FROM work_items WHERE tenant_id = $1")
        .bind(a)
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(priorities, vec!["MEDIUM"; 3]);
    // An item that names another tenant than its order's is refused by the foreign key.
    let wrong = sqlx::query(
        "INSERT INTO work_items (work_order_id, tenant_id, type, content) VALUES ($1, $2, 'INVOICE', '{}')",
    )
    .bind(order_a)
    .bind(b)
    .execute(&db.pool)
    .await;
    assert!(wrong.is_err(), "an item under another tenant's order was accepted");
    // An item without a tenant cannot be routed at all.
    let none = sqlx::query("INSERT INTO work_items (work_order_id, type, content) VALUES ($1, 'INVOICE', '{}')")
        .bind(order_a)
        .execute(&db.pool)
        .await;
    assert!(none.is_err(), "an item without a tenant was accepted");
    assert_eq!(orderly::db::distributed::listed_tenants(&db.pool, 10).await.unwrap(), vec![a]);
    // Features whose triggers span shards are refused with a clear error.
    let edge = sqlx::query(
        "INSERT INTO work_item_dependencies (tenant_id, work_item_id, depends_on_id)
         SELECT $1, w.id, w.id FROM work_items w WHERE w.tenant_id = $1 LIMIT 1",
    )
    .bind(a)
    .execute(&db.pool)
    .await
    .unwrap_err();
    assert!(edge.to_string().contains("not supported in distributed mode"), "{edge}");
}

#[tokio::test]
async fn a_claim_names_one_tenant_and_runs_on_one_shard() {
    let Some(db) = CitusDb::distributed("a_claim_names_one_tenant_and_runs_on_one_shard").await else { return };
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let (order_a, order_b) = (order(&db.pool, a).await, order(&db.pool, b).await);
    items(&db.pool, a, order_a, 5).await;
    items(&db.pool, b, order_b, 2).await;
    let lease = Duration::from_secs(30);
    let claimed = orderly::db::distributed::claim_tenant(&db.pool, "w1", 4, lease, 1 << 20, a).await.unwrap();
    assert_eq!(claimed.len(), 4);
    assert!(claimed.iter().all(|i| i.tenant_id == a && i.work_order_id == order_a && i.attempt == 1));
    let status: String = sqlx::query_scalar("SELECT status::text FROM work_orders WHERE tenant_id = $1 AND id = $2")
        .bind(a)
        .bind(order_a)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(status, "PROCESSING", "the claim marked the order");
    // Routed: Citus plans the whole statement as one task on one node.
    let plan: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "EXPLAIN {}",
        orderly::db::distributed::CLAIM_TENANT_SQL
            .replace("$1", "4")
            .replace("$2", "30000")
            .replace("$3", "'w1'")
            .replace("$4", "1000")
            .replace("$5", &format!("'{b}'::uuid"))
    )))
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert!(plan.iter().any(|l| l.trim() == "Task Count: 1"), "{}", plan.join("\n"));
    // A tenant with queued items stays listed; once it has none it can be forgotten.
    assert!(!orderly::db::distributed::forget_tenant(&db.pool, a).await.unwrap());
    let rest = orderly::db::distributed::claim_tenant(&db.pool, "w1", 4, lease, 1 << 20, a).await.unwrap();
    assert_eq!(rest.len(), 1);
    assert!(orderly::db::distributed::forget_tenant(&db.pool, a).await.unwrap());
    assert_eq!(orderly::db::distributed::listed_tenants(&db.pool, 10).await.unwrap(), vec![b]);
}

#[tokio::test]
async fn a_tenant_is_not_forgotten_while_an_upstream_transaction_adds_its_items() {
    let Some(db) = CitusDb::distributed("a_tenant_is_not_forgotten_while_an_upstream_transaction").await else {
        return;
    };
    let a = Uuid::new_v4();
    let order_a = order(&db.pool, a).await;
    items(&db.pool, a, order_a, 1).await;
    let lease = Duration::from_secs(30);
    assert_eq!(orderly::db::distributed::claim_tenant(&db.pool, "w1", 8, lease, 1 << 20, a).await.unwrap().len(), 1);
    // An upstream transaction adds an item and has not committed: the claim cannot see it,
    // and the tenant must not be forgotten, or the item would wait for nobody.
    let mut upstream = db.pool.begin().await.unwrap();
    sqlx::query("INSERT INTO work_items (work_order_id, tenant_id, type, content) VALUES ($1, $2, 'INVOICE', '{}')")
        .bind(order_a)
        .bind(a)
        .execute(&mut *upstream)
        .await
        .unwrap();
    assert!(orderly::db::distributed::claim_tenant(&db.pool, "w1", 8, lease, 1 << 20, a).await.unwrap().is_empty());
    assert!(!orderly::db::distributed::forget_tenant(&db.pool, a).await.unwrap(), "forgotten under an open insert");
    upstream.commit().await.unwrap();
    assert_eq!(orderly::db::distributed::listed_tenants(&db.pool, 10).await.unwrap(), vec![a]);
    assert_eq!(orderly::db::distributed::claim_tenant(&db.pool, "w1", 8, lease, 1 << 20, a).await.unwrap().len(), 1);
}

async fn count(pool: &PgPool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

#[tokio::test]
async fn the_engine_runs_every_tenants_items_on_the_cluster_retries_and_rescues() {
    let Some(db) = CitusDb::distributed("the_engine_runs_every_tenants_items_on_the_cluster").await else { return };
    // Five tenants, two orders each, 20 items an order; every fifth item fails once and is
    // retried (the retry makes it QUEUED again, which lists its tenant again).
    let tenants: Vec<Uuid> = (0..5).map(|_| Uuid::new_v4()).collect();
    for tenant in &tenants {
        for _ in 0..2 {
            let order = order(&db.pool, *tenant).await;
            sqlx::query(
                "INSERT INTO work_items (work_order_id, tenant_id, type, content)
                 SELECT $2, $1, 'INVOICE', jsonb_build_object('n', n, 'fail_once', n % 5 = 0)
                 FROM generate_series(1, 20) n",
            )
            .bind(tenant)
            .bind(order)
            .execute(&db.pool)
            .await
            .unwrap();
        }
    }
    // And one item a dead worker left PROCESSING under an expired lease: the rescuer's.
    let lost_order = order(&db.pool, tenants[0]).await;
    let lost: Uuid = sqlx::query_scalar(
        "INSERT INTO work_items (work_order_id, tenant_id, type, content) VALUES ($1, $2, 'INVOICE', '{}') RETURNING id",
    )
    .bind(lost_order)
    .bind(tenants[0])
    .fetch_one(&db.pool)
    .await
    .unwrap();
    sqlx::query(
        "UPDATE work_items SET status = 'PROCESSING', attempt = 1, locked_by = 'gone',
                lease_expires_at = now() - interval '1 minute' WHERE tenant_id = $1 AND id = $2",
    )
    .bind(tenants[0])
    .bind(lost)
    .execute(&db.pool)
    .await
    .unwrap();

    let engine = db
        .engine(
            "[agents.echo]\nkind = \"echo\"\nfail_once_key = \"fail_once\"\n\
             [retry]\nbackoff_base = \"10ms\"\nbackoff_max = \"10ms\"\n[routes]\nINVOICE = \"echo\"\n",
        )
        .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let left = count(&db.pool, "SELECT count(*) FROM work_items WHERE status <> 'COMPLETED'").await;
        if left == 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{left} items unfinished after 120 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    engine.shutdown(tokio_util::sync::CancellationToken::new()).await;

    // Every item once, plus one failed attempt for each marked item, plus the rescue's LOST.
    assert_eq!(count(&db.pool, "SELECT count(*) FROM work_items").await, 201);
    assert_eq!(count(&db.pool, "SELECT count(*) FROM attempts WHERE status = 'COMPLETED'").await, 201);
    assert_eq!(count(&db.pool, "SELECT count(*) FROM attempts WHERE status = 'FAILED'").await, 40);
    assert_eq!(count(&db.pool, "SELECT count(*) FROM attempts WHERE status = 'LOST'").await, 1);
    // Each attempt sits with its item (same tenant), and no execution ran twice.
    assert_eq!(
        count(
            &db.pool,
            "SELECT count(*) FROM attempts a JOIN work_items w ON w.tenant_id = a.tenant_id AND w.id = a.work_item_id"
        )
        .await,
        242
    );
    assert_eq!(
        count(
            &db.pool,
            "SELECT count(*) FROM (SELECT tenant_id, work_item_id, attempt_number FROM attempts
                                  GROUP BY 1, 2, 3 HAVING count(*) > 1) d"
        )
        .await,
        0
    );
    // Every order rolled up exactly, on its own shard.
    assert_eq!(count(&db.pool, "SELECT count(*) FROM work_orders WHERE status <> 'COMPLETED'").await, 0);
    // Every tenant took part, and none is left listed once its items are done.
    assert_eq!(count(&db.pool, "SELECT count(DISTINCT tenant_id) FROM attempts").await, 5);
    let listed = orderly::db::distributed::listed_tenants(&db.pool, 10).await.unwrap();
    assert!(listed.len() <= 1, "tenants still listed with no queued item: {listed:?}");
}

#[tokio::test]
async fn the_sql_examples_of_docs_distributed_md_run_on_the_cluster() {
    let Some(db) = CitusDb::distributed("the_sql_examples_of_docs_distributed_md").await else { return };
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/distributed.md")).unwrap();
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        match &mut current {
            None if line.trim_start() == "```sql" => current = Some(String::new()),
            Some(_) if line.trim_start() == "```" => blocks.push(current.take().unwrap_or_default()),
            Some(body) => {
                body.push_str(line);
                body.push('\n');
            }
            None => {}
        }
    }
    assert!(blocks.len() >= 2, "the page's SQL examples were found");
    for sql in &blocks {
        let mut psql = std::process::Command::new("psql")
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", &db.url])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("psql runs");
        std::io::Write::write_all(&mut psql.stdin.take().unwrap(), sql.as_bytes()).unwrap();
        let out = psql.wait_with_output().unwrap();
        assert!(out.status.success(), "{sql}\n{}", String::from_utf8_lossy(&out.stderr));
    }
    assert_eq!(count(&db.pool, "SELECT count(*) FROM work_items").await, 2);
    assert_eq!(orderly::db::distributed::listed_tenants(&db.pool, 10).await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_tenant_with_a_backlog_does_not_hold_back_the_others() {
    let Some(db) = CitusDb::distributed("a_tenant_with_a_backlog_does_not_hold_back_the_others").await else { return };
    // One tenant's 400 items inserted first, then three tenants' 5 items each.
    let crowd = Uuid::new_v4();
    let crowd_order = order(&db.pool, crowd).await;
    items(&db.pool, crowd, crowd_order, 400).await;
    let few: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
    for tenant in &few {
        let order = order(&db.pool, *tenant).await;
        items(&db.pool, *tenant, order, 5).await;
    }
    let engine = db.engine("[worker]\nconcurrency = 8\n[routes]\nINVOICE = \"echo\"\n").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while count(&db.pool, "SELECT count(*) FROM work_items WHERE status <> 'COMPLETED'").await > 0 {
        assert!(std::time::Instant::now() < deadline, "items unfinished after 120 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    engine.shutdown(tokio_util::sync::CancellationToken::new()).await;
    // Claims take turns: the small tenants' 15 items are done while the crowd's backlog has
    // barely started, not after it.
    let crowd_before: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM work_items WHERE tenant_id = $1
           AND processed_at < (SELECT max(processed_at) FROM work_items WHERE tenant_id = ANY($2))",
    )
    .bind(crowd)
    .bind(&few)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    println!("crowd items done before the last of the small tenants': {crowd_before} of 400");
    assert!(crowd_before < 100, "the small tenants waited behind {crowd_before} of the crowd's 400 items");
}

#[tokio::test]
async fn a_schedule_makes_each_missed_slot_once_on_its_tenants_node() {
    let Some(db) = CitusDb::distributed("a_schedule_makes_each_missed_slot_once").await else { return };
    let tenant = Uuid::new_v4();
    let schedule: Uuid = sqlx::query_scalar(
        "INSERT INTO schedules (name, cron, timezone, tenant_id, created_by, items, catch_up, catch_up_limit)
         VALUES ('every minute', '* * * * *', 'UTC', $1, gen_random_uuid(),
                 '[{\"type\": \"INVOICE\", \"content\": {\"slot\": \"{{slot}}\"}}]', 'ALL', 10)
         RETURNING id",
    )
    .bind(tenant)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    // As if the daemons had been down for three slots: four are due.
    sqlx::query(
        "UPDATE schedules SET next_run = date_trunc('minute', now() - interval '3 minutes'),
                              last_run = date_trunc('minute', now() - interval '4 minutes') WHERE id = $1",
    )
    .bind(schedule)
    .execute(&db.pool)
    .await
    .unwrap();
    // Two replicas: either may lead; each slot's order is made once.
    let engines =
        vec![db.engine("[routes]\nINVOICE = \"echo\"\n").await, db.engine("[routes]\nINVOICE = \"echo\"\n").await];
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let done = count(&db.pool, "SELECT count(*) FROM work_items WHERE status = 'COMPLETED'").await;
        if done >= 4 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{done} of the 4 slots' items done after 60 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for engine in engines {
        engine.shutdown(tokio_util::sync::CancellationToken::new()).await;
    }
    let slots: Vec<(Uuid, i64)> =
        sqlx::query_as("SELECT o.tenant_id, count(*) FROM work_orders o WHERE o.schedule_id = $1 GROUP BY 1")
            .bind(schedule)
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(slots, vec![(tenant, 4)], "one order per slot, on the schedule's tenant");
    assert_eq!(
        count(&db.pool, "SELECT count(DISTINCT slot_at) FROM work_orders WHERE schedule_id IS NOT NULL").await,
        4
    );
    let items: Vec<(Uuid, String)> =
        sqlx::query_as("SELECT tenant_id, content FROM work_items ORDER BY content").fetch_all(&db.pool).await.unwrap();
    assert_eq!(items.len(), 4);
    assert!(items.iter().all(|(t, c)| *t == tenant && c.contains("\"slot\"") && !c.contains("{{slot}}")), "{items:?}");
}

#[tokio::test]
async fn the_leaders_healing_read_rolls_up_orders_a_dead_writer_left_on_any_node() {
    let Some(db) = CitusDb::distributed("the_leaders_healing_read_rolls_up_orders").await else { return };
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let (finished, running) = (order(&db.pool, a).await, order(&db.pool, b).await);
    items(&db.pool, a, finished, 2).await;
    items(&db.pool, b, running, 1).await;
    // Changed by hand, as a writer that died before its roll-up would leave them: every item
    // of one order finished under a PROCESSING order, and an item running under a finished one.
    for sql in [
        "UPDATE work_items SET status = 'COMPLETED', processed_at = now() WHERE tenant_id = $1",
        "UPDATE work_orders SET status = 'PROCESSING' WHERE tenant_id = $1",
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql)).bind(a).execute(&db.pool).await.unwrap();
    }
    for sql in [
        "UPDATE work_items SET status = 'PROCESSING', attempt = 1, lease_expires_at = now() + interval '1 hour'
         WHERE tenant_id = $1",
        "UPDATE work_orders SET status = 'COMPLETED' WHERE tenant_id = $1",
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql)).bind(b).execute(&db.pool).await.unwrap();
    }
    let mut healed = orderly::db::distributed::engine::heal_roll_ups(&db.pool, 100).await.unwrap();
    healed.sort();
    let mut expected = vec![finished, running];
    expected.sort();
    assert_eq!(healed, expected);
    let statuses: Vec<(Uuid, String)> =
        sqlx::query_as("SELECT id, status::text FROM work_orders ORDER BY status").fetch_all(&db.pool).await.unwrap();
    assert_eq!(statuses, vec![(finished, "COMPLETED".to_owned()), (running, "PROCESSING".to_owned())]);
    assert!(orderly::db::distributed::engine::heal_roll_ups(&db.pool, 100).await.unwrap().is_empty());
}

#[tokio::test]
async fn the_pruner_deletes_each_tenants_old_finished_orders_with_their_records() {
    let Some(db) = CitusDb::distributed("the_pruner_deletes_each_tenants_old_finished_orders").await else { return };
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let (old_a, recent_a, old_b) = (order(&db.pool, a).await, order(&db.pool, a).await, order(&db.pool, b).await);
    for (tenant, order_id) in [(a, old_a), (a, recent_a), (b, old_b)] {
        items(&db.pool, tenant, order_id, 3).await;
    }
    // Every item ran once and completed; two orders finished ten days ago, one just now.
    for tenant in [a, b] {
        sqlx::query(
            "UPDATE work_items SET status = 'COMPLETED', attempt = 1, processed_at = now() WHERE tenant_id = $1",
        )
        .bind(tenant)
        .execute(&db.pool)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO attempts (tenant_id, work_item_id, attempt_number, agent_id, status, input, completed_at)
             SELECT tenant_id, id, 1, 'echo', 'COMPLETED', '{}', now() FROM work_items WHERE tenant_id = $1",
        )
        .bind(tenant)
        .execute(&db.pool)
        .await
        .unwrap();
        sqlx::query("UPDATE work_orders SET status = 'COMPLETED' WHERE tenant_id = $1")
            .bind(tenant)
            .execute(&db.pool)
            .await
            .unwrap();
    }
    for (tenant, order_id) in [(a, old_a), (b, old_b)] {
        for sql in [
            "UPDATE work_orders SET created_at = now() - interval '10 days', updated_at = now() - interval '10 days'
             WHERE tenant_id = $1 AND id = $2",
            "UPDATE work_items SET created_at = now() - interval '10 days', processed_at = now() - interval '10 days'
             WHERE tenant_id = $1 AND work_order_id = $2",
        ] {
            sqlx::query(sqlx::AssertSqlSafe(sql)).bind(tenant).bind(order_id).execute(&db.pool).await.unwrap();
        }
    }
    // Tenant b's old order has an item with an open dead letter: it waits for an operator.
    sqlx::query(
        "INSERT INTO dead_letters (tenant_id, work_item_id, source, event_type, payload, error, reason, retry_count)
         SELECT tenant_id, id, 'echo', 'TICKET', '{}', 'boom', 'PERMANENT', 1 FROM work_items
         WHERE tenant_id = $1 AND work_order_id = $2 LIMIT 1",
    )
    .bind(b)
    .bind(old_b)
    .execute(&db.pool)
    .await
    .unwrap();
    let settings = orderly::config::Settings::from_toml_layers(&["[pruner]\nretention = \"1d\"\nbatch = 1\n"]).unwrap();
    let pruner = orderly::maintenance::pruner::Pruner {
        pool: db.pool.clone(),
        settings: std::sync::Arc::new(settings),
        topology: orderly::db::distributed::Topology::Distributed,
    };
    let report = pruner.run_once().await.unwrap();
    assert_eq!((report.orders, report.items), (1, 3));
    let orders: Vec<Uuid> =
        sqlx::query_scalar("SELECT id FROM work_orders ORDER BY id").fetch_all(&db.pool).await.unwrap();
    let mut kept = vec![recent_a, old_b];
    kept.sort();
    assert_eq!(orders, kept);
    assert_eq!(count(&db.pool, "SELECT count(*) FROM work_items").await, 6);
    assert_eq!(count(&db.pool, "SELECT count(*) FROM attempts").await, 6, "the pruned items' attempts went with them");
    assert_eq!(count(&db.pool, "SELECT count(*) FROM audit_logs WHERE action = 'pruner.delete'").await, 1);
    assert_eq!(pruner.run_once().await.unwrap(), orderly::maintenance::pruner::PruneReport::default());
}
