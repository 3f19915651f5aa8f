//! Upstreams that enqueue through client libraries nobody here wrote: the SQLAlchemy ORM on
//! tables it reflects (automap) and the Django ORM on the models `inspectdb` prints. Each
//! script (tests/clients/) runs as a real Python process against the test's database while
//! an engine completes what it enqueues. Python and its packages are required (`.ci/run`
//! installs them): a missing one fails the test with the script's stderr, it never skips.

use crate::common::*;
use serde::Deserialize;
use std::time::Duration;
use uuid::Uuid;

/// The item type both scripts enqueue, routed to the echo agent.
const ITEM_TYPE: &str = "TICKET";

/// What a script reports on stdout.
#[derive(Debug, Deserialize)]
struct Summary {
    library: String,
    version: String,
    order_id: Uuid,
    item_type: String,
    /// Items whose id the database made and the library learned.
    server_ids: Vec<Uuid>,
    /// Items the client gave an id of its own.
    client_ids: Vec<Uuid>,
    /// Items inserted without an id whose id the library did not learn.
    unidentified_items: i64,
    /// A second order and its items inserted in one statement (SQLAlchemy's
    /// `insert().from_select` over a CTE that inserts the order).
    #[serde(default)]
    cte_order_id: Option<Uuid>,
    #[serde(default)]
    cte_items: i64,
    /// A diamond inserted with its edges: [a, b, c, d], b and c need a, d needs b and c.
    graph: Vec<Uuid>,
}

impl Summary {
    fn reported(&self) -> Vec<Uuid> {
        self.server_ids.iter().chain(&self.client_ids).copied().collect()
    }

    fn total(&self) -> i64 {
        (self.server_ids.len() + self.client_ids.len()) as i64 + self.unidentified_items
    }
}

/// Runs `python3 tests/clients/<script> <url>` and parses its summary; with a tenant, the
/// script enqueues that tenant's orders and names it on its session (`orderly.tenant_id`).
async fn run_client(script: &str, url: &str, tenant: Option<Uuid>) -> Summary {
    let path = format!("{}/tests/clients/{script}", env!("CARGO_MANIFEST_DIR"));
    let mut command = tokio::process::Command::new("python3");
    command.arg(&path).arg(url).env_remove("ORDERLY_TENANT_ID");
    if let Some(tenant) = tenant {
        command.env("ORDERLY_TENANT_ID", tenant.to_string());
    }
    let output = command.output().await.unwrap_or_else(|e| {
        panic!("cannot run `python3 {path}`: {e} (python3 is required; .ci/run installs its packages)")
    });
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "`python3 {script}` failed ({}); a missing module means the client packages are not \
         installed (see .ci/run)\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );
    eprintln!("{script} stderr:\n{stderr}");
    serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("`python3 {script}` printed no summary ({e})\nstdout:\n{stdout}\nstderr:\n{stderr}"))
}

/// Who the script logs in as.
#[derive(Debug, Clone, Copy, PartialEq)]
enum As {
    /// The superuser of the test cluster.
    Superuser,
    /// The producer role of `orderly roles`, under row-level security, naming its tenant.
    Producer,
}

/// An engine routing ITEM_TYPE to echo runs while the script enqueues; every item it reports
/// (and any it inserted without learning the id) completes, the ids are as reported, and
/// the ids the database made are its time-ordered ones.
async fn enqueue_through(script: &str, login: As) -> Summary {
    let db = TestDb::new().await;
    let engine = db.engine(&format!("[routes]\n{ITEM_TYPE} = \"echo\"\n")).await;
    let (summary, roles) = match login {
        As::Superuser => (run_client(script, &db.url, None).await, None),
        As::Producer => {
            let roles = crate::roles::TestRoles::create(&db);
            let tenant = Uuid::new_v4();
            let summary = run_client(script, &roles.url(&db, "producer"), Some(tenant)).await;
            let tenants: Vec<Uuid> =
                sqlx::query_scalar("SELECT DISTINCT tenant_id FROM work_orders WHERE id = $1 OR id = $2")
                    .bind(summary.order_id)
                    .bind(summary.cte_order_id)
                    .fetch_all(&db.pool)
                    .await
                    .unwrap();
            assert_eq!(tenants, vec![tenant], "{script}: the producer's orders are its tenant's");
            (summary, Some(roles))
        }
    };
    assert_eq!(summary.item_type, ITEM_TYPE, "{script} enqueued a type the engine does not route");

    let reported = summary.reported();
    let mut distinct = reported.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), reported.len(), "{script} reported an id twice");

    let order = summary.order_id;
    let what = format!("the {} items {} enqueued to complete", summary.total(), summary.library);
    wait_until(&what, Duration::from_secs(60), || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM work_items WHERE work_order_id = $1 AND status = 'COMPLETED'",
        )
        .bind(order)
        .fetch_one(&db.pool)
        .await
        .unwrap()
            == summary.total()
    })
    .await;
    if let Some(cte_order) = summary.cte_order_id {
        assert!(summary.cte_items > 0, "{script}: the one-statement order has items");
        wait_for_order(&db.pool, cte_order, "COMPLETED").await;
    }
    stop(engine).await;

    let on_order: i64 = sqlx::query_scalar("SELECT count(*) FROM work_items WHERE work_order_id = $1")
        .bind(order)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(on_order, summary.total(), "items on the order");
    let completed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM work_items WHERE id = ANY($1) AND work_order_id = $2 AND status = 'COMPLETED'",
    )
    .bind(&reported)
    .bind(order)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        completed,
        reported.len() as i64,
        "every reported id is a COMPLETED item of the order (client ids kept)"
    );
    for id in &summary.server_ids {
        assert_eq!(id.get_version_num(), 7, "{id}: an id the database made is time-ordered (uuid v7)");
    }
    for id in &summary.client_ids {
        assert_eq!(id.get_version_num(), 4, "{id}: the client's own (v4) id was kept");
    }
    // The diamond ran in its order: each item started after what it needs had finished.
    assert_eq!(summary.graph.len(), 4, "{script}: the diamond's items");
    let (a, b, c, d) = (summary.graph[0], summary.graph[1], summary.graph[2], summary.graph[3]);
    let edges: i64 = sqlx::query_scalar("SELECT count(*) FROM work_item_dependencies WHERE work_item_id = ANY($1)")
        .bind(&summary.graph)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(edges, 4, "{script}: the diamond's edges");
    for (item, needs) in [(b, a), (c, a), (d, b), (d, c)] {
        let early: bool = sqlx::query_scalar(
            "SELECT (SELECT min(started_at) FROM attempts WHERE work_item_id = $1)
                    < (SELECT processed_at FROM work_items WHERE id = $2)",
        )
        .bind(item)
        .bind(needs)
        .fetch_one(&db.pool)
        .await
        .unwrap();
        assert!(!early, "{script}: {item} started before {needs} finished");
    }
    // Both scripts leave the item's priority to the database (omitted or NULL).
    let not_copied: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM work_items i JOIN work_orders o ON o.id = i.work_order_id
         WHERE o.id = $1 AND i.priority IS DISTINCT FROM o.priority",
    )
    .bind(order)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(not_copied, 0, "items take their order's priority");
    wait_for_order(&db.pool, order, "COMPLETED").await;
    // Every item records its order's tenant (the producers' row-level security checks it).
    let untenanted: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM work_items i JOIN work_orders o ON o.id = i.work_order_id
         WHERE i.tenant_id IS DISTINCT FROM o.tenant_id",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(untenanted, 0, "items carry their order's tenant");
    drop(db);
    drop(roles);
    eprintln!(
        "{} {}: {} server ids learned, {} client ids kept, {} inserted without a known id",
        summary.library,
        summary.version,
        summary.server_ids.len(),
        summary.client_ids.len(),
        summary.unidentified_items
    );
    summary
}

#[tokio::test]
async fn sqlalchemy_automap_upstream_is_processed() {
    sqlalchemy_checks(enqueue_through("sqlalchemy_enqueue.py", As::Superuser).await);
}

#[tokio::test]
async fn sqlalchemy_automap_upstream_is_processed_as_the_producer_role() {
    sqlalchemy_checks(enqueue_through("sqlalchemy_enqueue.py", As::Producer).await);
}

fn sqlalchemy_checks(summary: Summary) {
    assert_eq!(summary.library, "sqlalchemy");
    // 3 single adds, 100 by add_all, 4 for the diamond, 200 by a bulk insert(): the ORM
    // learned every id.
    assert_eq!(summary.server_ids.len(), 307);
    assert_eq!(summary.client_ids.len(), 1);
    assert_eq!(summary.unidentified_items, 0);
    // The order's id came from the database's default, learned at flush: time-ordered too.
    assert_eq!(summary.order_id.get_version_num(), 7, "{}: the order's database-made id", summary.order_id);
    assert_eq!(summary.cte_items, 1, "insert().from_select over the order's INSERT: one item");
}

#[tokio::test]
async fn django_inspectdb_upstream_is_processed() {
    django_checks(enqueue_through("django_enqueue.py", As::Superuser).await);
}

#[tokio::test]
async fn django_inspectdb_upstream_is_processed_as_the_producer_role() {
    django_checks(enqueue_through("django_enqueue.py", As::Producer).await);
}

fn django_checks(summary: Summary) {
    assert_eq!(summary.library, "django");
    // One create, 200 by bulk_create and the diamond's 4 with client ids, all kept; the
    // order's own id too.
    assert_eq!(summary.order_id.get_version_num(), 4, "{}: the order's client-chosen id", summary.order_id);
    assert_eq!(summary.client_ids.len(), 205);
    // One create without an id: inserted and completed; Django 5.2 does not learn its id
    // (a non-AutoField primary key), so it is counted, not listed.
    assert_eq!(summary.server_ids.len() as i64 + summary.unidentified_items, 1);
}
