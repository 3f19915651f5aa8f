//! Dependencies between items (docs/dependencies.md): edges inserted by the upstream or made
//! from a template's `needs`, checked at INSERT, waited on by the claim, settled by every
//! writer that finishes an item, and carried forward in the envelope.

use crate::common::*;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use std::time::Duration;
use uuid::Uuid;

/// Inserts an edge: `item` waits for `on`.
pub async fn depend(pool: &sqlx::PgPool, item: Uuid, on: Uuid, kind: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO work_item_dependencies (work_item_id, depends_on_id, kind) VALUES ($1, $2, $3::dependency_kind)",
    )
    .bind(item)
    .bind(on)
    .bind(kind)
    .execute(pool)
    .await
    .map(|_| ())
}

async fn started_at(pool: &sqlx::PgPool, item: Uuid) -> DateTime<Utc> {
    sqlx::query_scalar("SELECT min(started_at) FROM attempts WHERE work_item_id = $1")
        .bind(item)
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn processed_at(pool: &sqlx::PgPool, item: Uuid) -> DateTime<Utc> {
    sqlx::query_scalar("SELECT processed_at FROM work_items WHERE id = $1").bind(item).fetch_one(pool).await.unwrap()
}

async fn error_code(pool: &sqlx::PgPool, item: Uuid) -> Option<String> {
    sqlx::query_scalar("SELECT last_error_code FROM work_items WHERE id = $1").bind(item).fetch_one(pool).await.unwrap()
}

/// An agent that answers `{"step": TYPE}` for every item, or fails with 422 for content
/// `{"fail": true}`.
async fn step_agent() -> TestAgent {
    TestAgent::start(|envelope| {
        if envelope["work_item"]["content"]["fail"] == json!(true) {
            return ((422, vec![], "{\"error\":\"refused\"}".into()), Duration::ZERO);
        }
        ok_json(json!({ "step": envelope["work_item"]["type"] }))
    })
    .await
}

fn routes(agent: &TestAgent) -> String {
    format!(
        "{}[routes]\nTICKET = \"steps\"\nINVOICE = \"steps\"\nSTATUS_REPORT = \"steps\"\n",
        agent.config("steps", "5s")
    )
}

#[tokio::test]
async fn a_chain_runs_link_by_link_and_each_link_reads_its_inputs() {
    let db = TestDb::new().await;
    let agent = step_agent().await;
    let order = insert_order(&db.pool, "MEDIUM").await;
    // Inserted last link first, with a higher priority than the first: priority never lets an
    // item with unmet dependencies run.
    let mut tx = db.pool.begin().await.unwrap();
    let mut ids = Vec::new();
    for (item_type, priority) in [("STATUS_REPORT", "URGENT"), ("INVOICE", "HIGH"), ("TICKET", "LOW")] {
        let id: Uuid = sqlx::query_scalar(
            "INSERT INTO work_items (work_order_id, type, content, priority)
             VALUES ($1, $2::work_item_type, '{}', $3::priority) RETURNING id",
        )
        .bind(order)
        .bind(item_type)
        .bind(priority)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
        ids.push(id);
    }
    let (report, invoice, ticket) = (ids[0], ids[1], ids[2]);
    for (item, on) in [(report, invoice), (invoice, ticket)] {
        sqlx::query("INSERT INTO work_item_dependencies (work_item_id, depends_on_id) VALUES ($1, $2)")
            .bind(item)
            .bind(on)
            .execute(&mut *tx)
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    let pending: Vec<i32> = sqlx::query_scalar("SELECT deps_pending FROM work_items WHERE id = ANY($1) ORDER BY id")
        .bind(&ids)
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(pending.iter().sum::<i32>(), 2, "two unmet edges: {pending:?}");

    let engine = db.engine(&routes(&agent)).await;
    wait_for_order(&db.pool, order, "COMPLETED").await;
    stop(engine).await;

    // Each link started after the one before it had finished.
    assert!(started_at(&db.pool, invoice).await >= processed_at(&db.pool, ticket).await);
    assert!(started_at(&db.pool, report).await >= processed_at(&db.pool, invoice).await);
    let order_of_runs: Vec<Uuid> = agent.received.lock().unwrap().iter().map(|r| r.item_id).collect();
    assert_eq!(order_of_runs, vec![ticket, invoice, report]);
    // The last link's envelope carries its dependency's outcome and result.
    let envelope = agent.received.lock().unwrap()[2].envelope.clone();
    let deps = envelope["context"]["dependencies"].as_array().unwrap().clone();
    assert_eq!(deps.len(), 1, "{envelope}");
    assert_eq!(deps[0]["id"], json!(invoice.to_string()));
    assert_eq!(deps[0]["type"], json!("INVOICE"));
    assert_eq!(deps[0]["kind"], json!("BLOCKS"));
    assert_eq!(deps[0]["status"], json!("COMPLETED"));
    assert_eq!(deps[0]["result"], json!({"step": "INVOICE"}));
    // An item without dependencies gets an empty list.
    let first = agent.received.lock().unwrap()[0].envelope.clone();
    assert_eq!(first["context"]["dependencies"], json!([]));
}

#[tokio::test]
async fn bad_edges_are_refused_at_insert_with_a_clear_error() {
    let db = TestDb::new().await;
    let order = insert_order(&db.pool, "MEDIUM").await;
    let a = insert_item(&db.pool, order, "TICKET", "{}").await;
    let b = insert_item(&db.pool, order, "TICKET", "{}").await;
    let c = insert_item(&db.pool, order, "TICKET", "{}").await;
    let message = |e: sqlx::Error| e.into_database_error().map(|d| d.message().to_owned()).unwrap_or_default();

    let own = depend(&db.pool, a, a, "BLOCKS").await.unwrap_err();
    assert!(message(own).contains("an_item_cannot_depend_on_itself"));

    depend(&db.pool, b, a, "BLOCKS").await.unwrap();
    depend(&db.pool, c, b, "SOFT").await.unwrap();
    let cycle = message(depend(&db.pool, a, c, "BLOCKS").await.unwrap_err());
    assert!(cycle.contains("dependency cycle"), "{cycle}");
    // A cycle closed inside one statement is refused too.
    let d = insert_item(&db.pool, order, "TICKET", "{}").await;
    let e = insert_item(&db.pool, order, "TICKET", "{}").await;
    let both =
        sqlx::query("INSERT INTO work_item_dependencies (work_item_id, depends_on_id) VALUES ($1, $2), ($2, $1)")
            .bind(d)
            .bind(e)
            .execute(&db.pool)
            .await
            .unwrap_err();
    assert!(message(both).contains("dependency cycle"));
    // RELATED edges are only recorded: they may point anywhere within the tenant, both ways.
    depend(&db.pool, a, c, "RELATED").await.unwrap();

    // Another tenant's item.
    let other_order = insert_order(&db.pool, "MEDIUM").await;
    let foreign = insert_item(&db.pool, other_order, "TICKET", "{}").await;
    let cross = message(depend(&db.pool, a, foreign, "BLOCKS").await.unwrap_err());
    assert!(cross.contains("another tenant"), "{cross}");

    // An item that already started cannot be given dependencies.
    sqlx::query("UPDATE work_items SET status = 'PROCESSING', attempt = 1, lease_expires_at = now() + interval '1 hour' WHERE id = $1").bind(d).execute(&db.pool).await.unwrap();
    let started = message(depend(&db.pool, d, a, "BLOCKS").await.unwrap_err());
    assert!(started.contains("already started"), "{started}");

    // A dependency that was cancelled can never be waited on.
    sqlx::query("UPDATE work_items SET status = 'CANCELLED' WHERE id = $1").bind(e).execute(&db.pool).await.unwrap();
    let f = insert_item(&db.pool, order, "TICKET", "{}").await;
    let cancelled = message(depend(&db.pool, f, e, "BLOCKS").await.unwrap_err());
    assert!(cancelled.contains("will never complete"), "{cancelled}");
    // ... but a SOFT edge to it is met at once.
    depend(&db.pool, f, e, "SOFT").await.unwrap();
    let pending: i32 = sqlx::query_scalar("SELECT deps_pending FROM work_items WHERE id = $1")
        .bind(f)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(pending, 0);
}

#[tokio::test]
async fn an_edge_to_a_completed_item_is_met_at_once() {
    let db = TestDb::new().await;
    let order = insert_order(&db.pool, "MEDIUM").await;
    let done = insert_item(&db.pool, order, "TICKET", "{}").await;
    let engine = db.engine("[routes]\nTICKET = \"echo\"\n").await;
    wait_for_status(&db.pool, done, "COMPLETED").await;
    // A later order of the same tenant builds on it.
    let tenant: Uuid = sqlx::query_scalar("SELECT tenant_id FROM work_orders WHERE id = $1")
        .bind(order)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let later: Uuid = sqlx::query_scalar(
        "INSERT INTO work_orders (workflow_id, tenant_id, created_by) VALUES ('default', $1, gen_random_uuid()) RETURNING id",
    )
    .bind(tenant)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let mut tx = db.pool.begin().await.unwrap();
    let next: Uuid = sqlx::query_scalar(
        "INSERT INTO work_items (work_order_id, type, content) VALUES ($1, 'TICKET', '{}') RETURNING id",
    )
    .bind(later)
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    sqlx::query("INSERT INTO work_item_dependencies (work_item_id, depends_on_id) VALUES ($1, $2)")
        .bind(next)
        .bind(done)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    wait_for_status(&db.pool, next, "COMPLETED").await;
    stop(engine).await;
}

#[tokio::test]
async fn a_dead_lettered_dependency_holds_its_dependents_until_replayed() {
    let db = TestDb::new().await;
    let agent = step_agent().await;
    let order = insert_order(&db.pool, "MEDIUM").await;
    let parent = insert_item(&db.pool, order, "TICKET", r#"{"fail": true}"#).await;
    let blocked = insert_item(&db.pool, order, "INVOICE", "{}").await;
    let soft = insert_item(&db.pool, order, "STATUS_REPORT", "{}").await;
    depend(&db.pool, blocked, parent, "BLOCKS").await.unwrap();
    depend(&db.pool, soft, parent, "SOFT").await.unwrap();
    let engine = db.engine(&routes(&agent)).await;
    wait_for_status(&db.pool, parent, "FAILED").await;
    // The SOFT dependent runs after the failure and sees it.
    wait_for_status(&db.pool, soft, "COMPLETED").await;
    let envelope = agent.received.lock().unwrap().iter().find(|r| r.item_id == soft).unwrap().envelope.clone();
    assert_eq!(envelope["context"]["dependencies"][0]["status"], json!("FAILED"));
    // The BLOCKS dependent waits, and says why.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(item_status(&db.pool, blocked).await, "QUEUED");
    assert_eq!(agent.executions_of(blocked), 0);
    let edges = orderly::db::dependencies::of_item(&db.pool, blocked, 50).await.unwrap();
    let letter: Uuid = sqlx::query_scalar("SELECT id FROM dead_letters WHERE work_item_id = $1")
        .bind(parent)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        orderly::db::dependencies::waiting_reason(orderly::model::ItemStatus::Queued, &edges),
        Some(format!("blocked by dead letter {letter}"))
    );
    // Replayed with content that succeeds: the dependent runs after it.
    let settings = std::sync::Arc::new(db.settings(&routes(&agent)));
    let catalog = orderly::policy::catalog::Catalog::new(db.pool.clone(), settings.clone());
    orderly::actions::replay_dead_letter(&db.pool, &catalog, &settings, letter, Some("{}"), "alice").await.unwrap();
    wait_for_status(&db.pool, blocked, "COMPLETED").await;
    stop(engine).await;
    assert!(started_at(&db.pool, blocked).await >= processed_at(&db.pool, parent).await);
    assert_eq!(order_status(&db.pool, order).await, "COMPLETED");
}

#[tokio::test]
async fn discarding_a_dead_letter_cancels_what_blocks_on_it_transitively_across_orders() {
    let db = TestDb::new().await;
    let agent = step_agent().await;
    let order = insert_order(&db.pool, "MEDIUM").await;
    let tenant: Uuid = sqlx::query_scalar("SELECT tenant_id FROM work_orders WHERE id = $1")
        .bind(order)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let other: Uuid = sqlx::query_scalar(
        "INSERT INTO work_orders (workflow_id, tenant_id, created_by) VALUES ('default', $1, gen_random_uuid()) RETURNING id",
    )
    .bind(tenant)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let parent = insert_item(&db.pool, order, "TICKET", r#"{"fail": true}"#).await;
    let child = insert_item(&db.pool, other, "INVOICE", "{}").await;
    let grandchild = insert_item(&db.pool, other, "INVOICE", "{}").await;
    let soft_grandchild = insert_item(&db.pool, order, "STATUS_REPORT", "{}").await;
    depend(&db.pool, child, parent, "BLOCKS").await.unwrap();
    depend(&db.pool, grandchild, child, "BLOCKS").await.unwrap();
    depend(&db.pool, soft_grandchild, child, "SOFT").await.unwrap();
    let engine = db.engine(&routes(&agent)).await;
    wait_for_status(&db.pool, parent, "FAILED").await;
    let letter: Uuid = sqlx::query_scalar("SELECT id FROM dead_letters WHERE work_item_id = $1")
        .bind(parent)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    orderly::actions::discard_dead_letter(&db.pool, letter, "alice", Some("bad input")).await.unwrap();
    // In the discard's own transaction: both BLOCKS dependents cancelled, their order rolled up.
    for item in [child, grandchild] {
        assert_eq!(item_status(&db.pool, item).await, "CANCELLED");
        assert_eq!(error_code(&db.pool, item).await.as_deref(), Some("DEPENDENCY_FAILED"));
    }
    assert_eq!(order_status(&db.pool, other).await, "CANCELLED");
    let audited: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_logs WHERE action = 'work_item.cancel' AND user_id = 'alice'
           AND details->>'reason' = 'DEPENDENCY_FAILED' AND resource_id = ANY($1)",
    )
    .bind(vec![child, grandchild])
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(audited, 2);
    // The SOFT dependent of the cancelled child runs, and sees it cancelled.
    wait_for_status(&db.pool, soft_grandchild, "COMPLETED").await;
    stop(engine).await;
    let envelope =
        agent.received.lock().unwrap().iter().find(|r| r.item_id == soft_grandchild).unwrap().envelope.clone();
    assert_eq!(envelope["context"]["dependencies"][0]["status"], json!("CANCELLED"));
    assert_eq!(agent.executions_of(child) + agent.executions_of(grandchild), 0);
    assert_eq!(order_status(&db.pool, order).await, "FAILED");
}

#[tokio::test]
async fn cancelling_an_item_cancels_what_blocks_on_it() {
    let db = TestDb::new().await;
    let order = insert_order(&db.pool, "MEDIUM").await;
    let parent = insert_item(&db.pool, order, "TICKET", "{}").await;
    let child = insert_item(&db.pool, order, "TICKET", "{}").await;
    depend(&db.pool, child, parent, "BLOCKS").await.unwrap();
    let cancelled =
        orderly::actions::cancel(&db.pool, orderly::db::items::Target::Item(parent), "bob", Some("not needed"))
            .await
            .unwrap();
    let ids: Vec<Uuid> = cancelled.iter().map(|c| c.work_item_id).collect();
    assert_eq!(ids, vec![parent, child]);
    assert_eq!(item_status(&db.pool, child).await, "CANCELLED");
    assert_eq!(order_status(&db.pool, order).await, "CANCELLED");
}

#[tokio::test]
async fn template_needs_give_an_orders_items_their_edges_in_any_insert_order() {
    let db = TestDb::new().await;
    let agent = step_agent().await;
    // The trigger that reads templates' needs runs only while some template has them.
    let needs_trigger = || async {
        sqlx::query_scalar::<_, String>(
            "SELECT tgenabled::text FROM pg_trigger WHERE tgrelid = 'work_items'::regclass AND tgname = 'work_items_needs'",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap()
    };
    assert_eq!(needs_trigger().await, "D", "no template needs anything: the trigger is off");
    insert_template(
        &db.pool,
        "pipeline",
        json!({"steps": {"INVOICE": {"needs": ["TICKET"]}, "STATUS_REPORT": {"needs": ["TICKET", "INVOICE"]}}}),
    )
    .await;
    let order = insert_order_with_workflow(&db.pool, "pipeline").await;
    // The last step first, in one statement with the middle one; the first step after.
    let later: Vec<Uuid> = sqlx::query_scalar(
        "INSERT INTO work_items (work_order_id, type, content)
         VALUES ($1, 'STATUS_REPORT', '{}'), ($1, 'INVOICE', '{}') RETURNING id",
    )
    .bind(order)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let first = insert_item(&db.pool, order, "TICKET", "{}").await;
    let edges: Vec<(Uuid, Uuid)> = sqlx::query_as(
        "SELECT work_item_id, depends_on_id FROM work_item_dependencies ORDER BY work_item_id, depends_on_id",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let mut expected = vec![(later[0], later[1]), (later[0], first), (later[1], first)];
    expected.sort();
    assert_eq!(edges, expected);
    let engine = db.engine(&routes(&agent)).await;
    wait_for_order(&db.pool, order, "COMPLETED").await;
    stop(engine).await;
    let runs: Vec<Uuid> = agent.received.lock().unwrap().iter().map(|r| r.item_id).collect();
    assert_eq!(runs, vec![first, later[1], later[0]]);
    let last: Value = agent.received.lock().unwrap()[2].envelope["context"]["dependencies"].clone();
    assert_eq!(last.as_array().unwrap().len(), 2, "{last}");
    assert_eq!(needs_trigger().await, "O");
    sqlx::query("UPDATE workflow_templates SET is_active = false").execute(&db.pool).await.unwrap();
    assert_eq!(needs_trigger().await, "D", "the last template with needs retired: the trigger is off again");
}

#[tokio::test]
async fn dependency_results_past_the_budget_are_left_out_and_marked() {
    let db = TestDb::new().await;
    let agent =
        TestAgent::start(|envelope| ok_json(json!({ "text": "x".repeat(300), "of": envelope["work_item"]["id"] })))
            .await;
    let order = insert_order(&db.pool, "MEDIUM").await;
    let a = insert_item(&db.pool, order, "TICKET", "{}").await;
    let b = insert_item(&db.pool, order, "TICKET", "{}").await;
    let c = insert_item(&db.pool, order, "INVOICE", "{}").await;
    depend(&db.pool, c, a, "BLOCKS").await.unwrap();
    depend(&db.pool, c, b, "BLOCKS").await.unwrap();
    let config = format!(
        "{}[routes]\nTICKET = \"a\"\nINVOICE = \"a\"\n[limits]\nmax_dependency_bytes = 500\n",
        agent.config("a", "5s")
    );
    let engine = db.engine(&config).await;
    wait_for_status(&db.pool, c, "COMPLETED").await;
    stop(engine).await;
    let envelope = agent.received.lock().unwrap().iter().find(|r| r.item_id == c).unwrap().envelope.clone();
    let deps = envelope["context"]["dependencies"].as_array().unwrap();
    assert_eq!(deps.len(), 2);
    assert!(deps[0]["result"].is_object());
    assert_eq!(deps[1]["result"], Value::Null);
    assert_eq!(deps[1]["result_omitted"], json!(true));
    assert!(deps[1]["result_bytes"].as_i64().unwrap() > 300);
}

/// What on-call reads: the API's item (edges both ways, why it waits), the API's order (its
/// graph), the CLI's `items show`, and the page's item and order.
#[tokio::test]
async fn on_call_sees_why_an_item_waits_and_the_orders_graph() {
    let db = TestDb::new().await;
    let order = insert_order(&db.pool, "MEDIUM").await;
    let parent = insert_item(&db.pool, order, "TICKET", "{}").await;
    let child = insert_item(&db.pool, order, "INVOICE", "{}").await;
    let related = insert_item(&db.pool, order, "STATUS_REPORT", "{}").await;
    depend(&db.pool, child, parent, "BLOCKS").await.unwrap();
    depend(&db.pool, related, child, "RELATED").await.unwrap();
    let app = crate::api::app(&db, "[routes]\nTICKET = \"echo\"\nINVOICE = \"echo\"\nSTATUS_REPORT = \"echo\"\n");

    let (status, item) = crate::api::get(&app, &format!("/api/v1/items/{child}")).await;
    assert_eq!(status, 200, "{item}");
    assert_eq!(item["waiting_reason"]["kind"], json!("dependencies"));
    assert_eq!(item["waiting_reason"]["detail"], json!(format!("waiting for 1 dependency: {parent} (QUEUED)")));
    assert_eq!(item["dependencies"]["dependencies"][0]["work_item_id"], json!(parent.to_string()));
    assert_eq!(item["dependencies"]["dependencies"][0]["satisfied"], json!(false));
    assert_eq!(item["dependencies"]["dependents"][0]["work_item_id"], json!(related.to_string()));
    assert_eq!(item["dependencies"]["dependents"][0]["kind"], json!("RELATED"));
    // A RELATED edge holds nothing back: the related item is simply runnable.
    let (_, other) = crate::api::get(&app, &format!("/api/v1/items/{related}")).await;
    assert_eq!(other["waiting_reason"]["kind"], json!("runnable"), "{other}");

    let (status, body) = crate::api::get(&app, &format!("/api/v1/orders/{order}")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["order"]["items_by_status"]["QUEUED"], json!(3));
    assert_eq!(body["graph"]["nodes"].as_array().unwrap().len(), 3);
    assert_eq!(body["graph"]["edges"].as_array().unwrap().len(), 2);
    let waiting: Vec<bool> =
        body["graph"]["nodes"].as_array().unwrap().iter().map(|n| n["waiting"].as_bool().unwrap()).collect();
    assert_eq!(waiting, vec![false, true, false]);
    let (status, _) = crate::api::get(&app, &format!("/api/v1/orders/{}", Uuid::now_v7())).await;
    assert_eq!(status, 404);
    let (status, _) = crate::api::get(&app, "/api/v1/orders/not-an-id").await;
    assert_eq!(status, 400);

    let shown = crate::cli::text(&crate::cli::orderly(&db.url, &["items", "show", &child.to_string()]));
    assert!(shown.contains(&format!("waiting: waiting for 1 dependency: {parent} (QUEUED) (dependencies)")), "{shown}");
    assert!(shown.contains("depends on:") && shown.contains("dependents:"), "{shown}");
    assert!(shown.contains(&format!("{parent} TICKET")), "{shown}");

    // The parent dead-lettered: the child says it is blocked, on every surface.
    sqlx::query("UPDATE work_items SET status = 'FAILED', processed_at = now() WHERE id = $1")
        .bind(parent)
        .execute(&db.pool)
        .await
        .unwrap();
    let letter: Uuid = sqlx::query_scalar(
        "INSERT INTO dead_letters (work_item_id, source, event_type, payload, error, reason)
         VALUES ($1, 'test', 'TICKET', '{}', 'broken', 'PERMANENT') RETURNING id",
    )
    .bind(parent)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let (_, item) = crate::api::get(&app, &format!("/api/v1/items/{child}")).await;
    assert_eq!(item["waiting_reason"]["kind"], json!("blocked"));
    assert_eq!(item["waiting_reason"]["detail"], json!(format!("blocked by dead letter {letter}")));
}
