//! `orderly roles`: the least-privilege matrix. What each role can and cannot do, tenants
//! isolated from each other by row-level security, the README's upstream INSERTs as a
//! producer, and an engine that works with nothing but the daemon's grants.
//!
//! Roles are cluster-wide: each test uses its own prefix and drops its roles at the end
//! (after its database, which holds their grants).

use crate::cli::{orderly, text};
use crate::common::*;
use sqlx::{Connection, PgConnection};
use std::time::Duration;
use uuid::Uuid;

/// The roles of one test, dropped after its database.
pub struct TestRoles {
    pub prefix: String,
}

impl TestRoles {
    pub fn new() -> TestRoles {
        TestRoles { prefix: format!("orderly_t{}", &Uuid::new_v4().simple().to_string()[..10]) }
    }
    pub fn name(&self, role: &str) -> String {
        format!("{}_{role}", self.prefix)
    }
    /// `db`'s URL, logging in as `role` (the test cluster trusts local connections).
    pub fn url(&self, db: &TestDb, role: &str) -> String {
        let mut url = reqwest::Url::parse(&db.url).unwrap();
        url.set_username(&self.name(role)).unwrap();
        url.set_password(None).unwrap();
        url.to_string()
    }
}

impl TestRoles {
    /// New roles with `orderly roles` on `db`.
    pub fn create(db: &TestDb) -> TestRoles {
        let roles = TestRoles::new();
        let out = orderly(&db.url, &["roles", "--prefix", &roles.prefix]);
        assert!(out.status.success(), "{}", text(&out));
        roles
    }
}

impl Drop for TestRoles {
    fn drop(&mut self) {
        let names: Vec<String> = ["owner", "daemon", "producer", "oncall"].iter().map(|r| self.name(r)).collect();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                if let Ok(mut admin) = PgConnection::connect(&base_url()).await {
                    for name in names {
                        let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP ROLE IF EXISTS {name}")))
                            .execute(&mut admin)
                            .await;
                    }
                }
            });
        })
        .join()
        .ok();
    }
}

async fn as_role(roles: &TestRoles, db: &TestDb, role: &str) -> PgConnection {
    PgConnection::connect(&roles.url(db, role)).await.unwrap_or_else(|e| panic!("{role} logs in: {e}"))
}

/// Runs `sql`; `Err` with the SQLSTATE when PostgreSQL refuses it.
async fn exec(conn: &mut PgConnection, sql: &str) -> Result<u64, String> {
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned())).execute(&mut *conn).await.map(|r| r.rows_affected()).map_err(
        |e| match &e {
            sqlx::Error::Database(d) => format!("{} {}", d.code().unwrap_or_default(), d.message()),
            other => other.to_string(),
        },
    )
}

async fn scalar(conn: &mut PgConnection, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned())).fetch_one(&mut *conn).await.unwrap()
}

/// permission denied (42501) or a row-level security refusal (42501 as well).
fn denied(result: Result<u64, String>, what: &str) {
    match result {
        Err(e) if e.starts_with("42501") => {}
        other => panic!("{what}: expected permission denied, got {other:?}"),
    }
}

#[tokio::test]
async fn each_role_can_do_what_it_needs_and_nothing_more() {
    let roles = TestRoles::new();
    let db = TestDb::new().await;
    // The command, twice: it is idempotent.
    for _ in 0..2 {
        let out = orderly(&db.url, &["roles", "--prefix", &roles.prefix]);
        assert!(out.status.success(), "{}", text(&out));
    }
    let (t1, t2) = (Uuid::new_v4(), Uuid::new_v4());

    // --- producer: the README's two INSERTs, own tenant only -------------------------------
    let mut producer = as_role(&roles, &db, "producer").await;
    denied(
        exec(&mut producer, "INSERT INTO work_orders (workflow_id, tenant_id, created_by) VALUES ('default', gen_random_uuid(), gen_random_uuid())").await,
        "an order without orderly.tenant_id set",
    );
    exec(&mut producer, &format!("SET orderly.tenant_id = '{t1}'")).await.unwrap();
    let order1: Uuid = sqlx::query_scalar(
        "INSERT INTO work_orders (workflow_id, tenant_id, created_by, priority)
         VALUES ('default', $1, gen_random_uuid(), 'HIGH') RETURNING id",
    )
    .bind(t1)
    .fetch_one(&mut producer)
    .await
    .expect("the upstream INSERT contract works for a producer");
    let item1: Uuid = sqlx::query_scalar(
        "INSERT INTO work_items (work_order_id, type, content) VALUES ($1, 'TICKET', '{\"subject\":\"printer on fire\"}') RETURNING id",
    )
    .bind(order1)
    .fetch_one(&mut producer)
    .await
    .expect("and the item INSERT, with the id the database made");
    denied(
        exec(&mut producer, &format!("INSERT INTO work_orders (workflow_id, tenant_id, created_by) VALUES ('default', '{t2}', gen_random_uuid())")).await,
        "an order for another tenant",
    );
    // Tenant 2's order and item, written by the owner (as an upstream of tenant 2 would).
    let order2: Uuid = sqlx::query_scalar(
        "INSERT INTO work_orders (workflow_id, tenant_id, created_by) VALUES ('default', $1, gen_random_uuid()) RETURNING id",
    )
    .bind(t2)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let item2 = insert_item(&db.pool, order2, "TICKET", "{}").await;
    let unrouted = insert_item(&db.pool, order2, "INVOICE", "{}").await;
    denied(
        exec(
            &mut producer,
            &format!("INSERT INTO work_items (work_order_id, type, content) VALUES ('{order2}', 'TICKET', '{{}}')"),
        )
        .await,
        "an item in another tenant's order",
    );
    assert_eq!(scalar(&mut producer, "SELECT count(*) FROM work_orders").await, 1, "sees only its tenant's orders");
    assert_eq!(scalar(&mut producer, "SELECT count(*) FROM work_items").await, 1, "and only their items");
    assert_eq!(
        scalar(&mut producer, &format!("SELECT count(*) FROM work_items WHERE id = '{item2}'")).await,
        0,
        "another tenant's item is invisible even by id"
    );
    denied(exec(&mut producer, "UPDATE work_items SET status = 'COMPLETED'").await, "producer UPDATE");
    denied(exec(&mut producer, "DELETE FROM work_orders").await, "producer DELETE");
    denied(exec(&mut producer, "SELECT count(*) FROM attempts").await, "producer reads attempts");
    denied(exec(&mut producer, "SELECT count(*) FROM dead_letters").await, "producer reads dead letters");
    denied(exec(&mut producer, "TRUNCATE work_items").await, "producer TRUNCATE");
    denied(exec(&mut producer, "CREATE TABLE evil (x int)").await, "producer CREATE TABLE");
    denied(
        exec(&mut producer, "SELECT orderly_schedule_slot(gen_random_uuid(), now())").await,
        "producer makes a schedule's slot",
    );
    denied(exec(&mut producer, "SELECT count(*) FROM schedules").await, "producer reads schedules");
    exec(&mut producer, &format!("SET orderly.tenant_id = '{t2}'")).await.unwrap();
    assert_eq!(scalar(&mut producer, "SELECT count(*) FROM work_items").await, 2, "tenant 2 sees its own two");
    exec(&mut producer, "RESET orderly.tenant_id").await.unwrap();
    assert_eq!(scalar(&mut producer, "SELECT count(*) FROM work_orders").await, 0, "no tenant, no rows");

    // --- daemon: an engine with only the daemon's grants processes every tenant's items ----
    let mut daemon = as_role(&roles, &db, "daemon").await;
    denied(exec(&mut daemon, "INSERT INTO work_orders (workflow_id, tenant_id, created_by) VALUES ('default', gen_random_uuid(), gen_random_uuid())").await, "daemon enqueues");
    assert_eq!(
        exec(&mut daemon, "SELECT orderly_schedule_slot(gen_random_uuid(), now())").await,
        Ok(1),
        "the daemon makes schedule slots through the function (an unknown schedule makes nothing)"
    );
    denied(exec(&mut daemon, "CREATE TABLE evil (x int)").await, "daemon CREATE TABLE");
    denied(exec(&mut daemon, "TRUNCATE work_items").await, "daemon TRUNCATE");
    denied(exec(&mut daemon, "ALTER TABLE work_items ADD COLUMN evil int").await, "daemon ALTER TABLE");
    denied(exec(&mut daemon, "SELECT count(*) FROM audit_logs").await, "daemon reads audit_logs");
    let toml = "[routes]\nTICKET = \"echo\"\n";
    let mut settings = db.settings(toml);
    settings.database.url = roles.url(&db, "daemon");
    // The default: migrate on start. The schema is current, so the daemon (no DDL) starts.
    settings.database.migrate_on_start = true;
    let engine = orderly::daemon::Engine::start(settings, &orderly::agent::Registry::builtin(), None)
        .await
        .expect("the engine starts as the daemon role");
    for item in [item1, item2] {
        wait_for_status(&db.pool, item, "COMPLETED").await;
    }
    wait_for_status(&db.pool, unrouted, "FAILED").await; // a dead letter, written as the daemon
    wait_for_order(&db.pool, order1, "COMPLETED").await;
    assert!(engine.healthy());
    stop(engine).await;

    // --- oncall: reads everything, decides, writes audit rows; deletes and enqueues nothing -
    let mut oncall = as_role(&roles, &db, "oncall").await;
    assert_eq!(scalar(&mut oncall, "SELECT count(*) FROM work_items").await, 3, "oncall sees every tenant");
    assert!(scalar(&mut oncall, "SELECT count(*) FROM attempts").await >= 3);
    denied(exec(&mut oncall, "DELETE FROM work_items").await, "oncall DELETE");
    denied(exec(&mut oncall, "INSERT INTO work_orders (workflow_id, tenant_id, created_by) VALUES ('default', gen_random_uuid(), gen_random_uuid())").await, "oncall enqueues");
    denied(exec(&mut oncall, "CREATE TABLE evil (x int)").await, "oncall CREATE TABLE");
    let oncall_url = roles.url(&db, "oncall");
    let out = orderly(&oncall_url, &["dead-letters", "list", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let letter: Uuid = sqlx::query_scalar("SELECT id FROM dead_letters WHERE work_item_id = $1")
        .bind(unrouted)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let out = orderly(&oncall_url, &["dead-letters", "replay", &letter.to_string(), "--actor", "oncall"]);
    assert!(out.status.success(), "oncall replays: {}", text(&out));
    let out = orderly(&oncall_url, &["status"]);
    assert!(out.status.success(), "oncall reads the status: {}", text(&out));
    assert_eq!(count(&db.pool, "SELECT count(*) FROM audit_logs WHERE user_id = 'oncall'").await, 1);

    // --- the daemon's pruner deletes with the daemon's grants too ---------------------------
    let mut settings = db.settings(&format!("{toml}[pruner]\nretention = \"1s\"\ninterval = \"200ms\"\n"));
    settings.database.url = roles.url(&db, "daemon");
    let engine = orderly::daemon::Engine::start(settings, &orderly::agent::Registry::builtin(), None).await.unwrap();
    wait_for_status(&db.pool, unrouted, "FAILED").await; // the replayed item fails again (no route)
    wait_until("the daemon's pruner to delete tenant 1's finished order", Duration::from_secs(30), || async {
        count(&db.pool, "SELECT count(*) FROM work_orders WHERE status = 'COMPLETED'").await == 0
    })
    .await;
    stop(engine).await;

    // --- owner: owns the schema, migrates ---------------------------------------------------
    let out = orderly(&roles.url(&db, "owner"), &["migrate"]);
    assert!(out.status.success(), "the owner runs migrations: {}", text(&out));
    let mut owner = as_role(&roles, &db, "owner").await;
    exec(&mut owner, "CREATE TABLE owner_may (x int); DROP TABLE owner_may").await.unwrap();
    let out = orderly(&roles.url(&db, "daemon"), &["health"]);
    assert!(out.status.success(), "orderly health as the daemon: {}", text(&out));
}

/// Every enqueue form an upstream uses works for a producer of the right tenant and is
/// refused for the wrong one: two statements, one statement (the order's INSERT in a CTE, its
/// items by `INSERT … SELECT`), a bulk `INSERT … SELECT` of many orders and their items in
/// one statement, and the `COPY` alternative (PostgreSQL refuses `COPY FROM` into a table
/// under row-level security; COPY into a temporary table, then one `INSERT … SELECT`).
#[tokio::test]
async fn a_producer_enqueues_in_every_form_for_its_own_tenant_only() {
    let db = TestDb::new().await;
    let roles = TestRoles::create(&db);
    let (own, other) = (Uuid::new_v4(), Uuid::new_v4());
    let mut producer = as_role(&roles, &db, "producer").await;
    exec(&mut producer, &format!("SET orderly.tenant_id = '{own}'")).await.unwrap();

    // One statement: the order and its item.
    let one = |tenant: Uuid| {
        format!(
            "WITH o AS (INSERT INTO work_orders (workflow_id, tenant_id, created_by) VALUES ('default', '{tenant}', gen_random_uuid()) RETURNING id)
             INSERT INTO work_items (work_order_id, type, content) SELECT id, 'TICKET', '{{}}' FROM o"
        )
    };
    assert_eq!(exec(&mut producer, &one(own)).await, Ok(1), "one statement, own tenant");
    denied(exec(&mut producer, &one(other)).await, "one statement, another tenant");

    // Bulk: 50 orders of 3 items in one statement.
    let bulk = |tenant: Uuid| {
        format!(
            "WITH o AS (INSERT INTO work_orders (workflow_id, tenant_id, created_by)
                        SELECT 'default', '{tenant}', gen_random_uuid() FROM generate_series(1, 50) RETURNING id)
             INSERT INTO work_items (work_order_id, type, content)
             SELECT o.id, 'TICKET', jsonb_build_object('n', n) FROM o CROSS JOIN generate_series(1, 3) n"
        )
    };
    assert_eq!(exec(&mut producer, &bulk(own)).await, Ok(150), "bulk INSERT … SELECT, own tenant");
    denied(exec(&mut producer, &bulk(other)).await, "bulk INSERT … SELECT, another tenant");

    // Another tenant's order (written by the owner), reached in one statement or with a
    // tenant_id the item claims for itself: refused either way.
    let theirs: Uuid = sqlx::query_scalar(
        "INSERT INTO work_orders (workflow_id, tenant_id, created_by) VALUES ('default', $1, gen_random_uuid()) RETURNING id",
    )
    .bind(other)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    denied(
        exec(
            &mut producer,
            &format!("INSERT INTO work_items (work_order_id, type, content) SELECT '{theirs}', 'TICKET', '{{}}'"),
        )
        .await,
        "INSERT … SELECT into another tenant's order",
    );
    denied(
        exec(
            &mut producer,
            &format!("INSERT INTO work_items (work_order_id, type, content, tenant_id) VALUES ('{theirs}', 'TICKET', '{{}}', '{own}')"),
        )
        .await,
        "another tenant's order, with the producer's own tenant written on the item",
    );
    // The tenant an item claims is overwritten by its order's.
    let mine: Uuid = sqlx::query_scalar(
        "INSERT INTO work_orders (workflow_id, tenant_id, created_by) VALUES ('default', $1, gen_random_uuid()) RETURNING id",
    )
    .bind(own)
    .fetch_one(&mut producer)
    .await
    .unwrap();
    let item: Uuid = sqlx::query_scalar(
        "INSERT INTO work_items (work_order_id, type, content, tenant_id) VALUES ($1, 'TICKET', '{}', $2) RETURNING id",
    )
    .bind(mine)
    .bind(other)
    .fetch_one(&mut producer)
    .await
    .expect("an item of the producer's own order");
    let recorded: Uuid = sqlx::query_scalar("SELECT tenant_id FROM work_items WHERE id = $1")
        .bind(item)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(recorded, own, "the item carries its order's tenant, not the one it sent");

    // COPY: refused straight into the table, accepted through a temporary table.
    let refused = match producer.copy_in_raw("COPY work_items (work_order_id, type, content) FROM STDIN").await {
        Err(sqlx::Error::Database(e)) => e.message().to_owned(),
        Err(other) => panic!("COPY FROM: unexpected error {other}"),
        Ok(c) => {
            let _ = c.abort("not expected").await;
            panic!("COPY FROM into work_items was accepted under row-level security");
        }
    };
    assert!(refused.contains("COPY FROM not supported with row-level security"), "{refused}");
    exec(&mut producer, "CREATE TEMPORARY TABLE staged_items (work_order_id uuid, type text, content jsonb)")
        .await
        .unwrap();
    let mut staged = producer.copy_in_raw("COPY staged_items (work_order_id, type, content) FROM STDIN").await.unwrap();
    let rows: String = (0..20).map(|n| format!("{mine}\tTICKET\t{{\"row\": {n}}}\n")).collect();
    staged.send(rows.as_bytes()).await.unwrap();
    assert_eq!(staged.finish().await.unwrap(), 20);
    assert_eq!(
        exec(
            &mut producer,
            "INSERT INTO work_items (work_order_id, type, content) SELECT work_order_id, type::work_item_type, content FROM staged_items",
        )
        .await,
        Ok(20),
        "the staged rows, in one INSERT … SELECT"
    );

    // What the producer can read is its own: 1 + 50 + 1 orders, 1 + 150 + 1 + 20 items.
    assert_eq!(scalar(&mut producer, "SELECT count(*) FROM work_orders").await, 52);
    assert_eq!(scalar(&mut producer, "SELECT count(*) FROM work_items").await, 172);
    let foreign: i64 = sqlx::query_scalar("SELECT count(*) FROM work_items WHERE tenant_id IS DISTINCT FROM $1")
        .bind(own)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(foreign, 0, "nothing was written for another tenant");
    drop(producer);
    drop(db);
}
