//! On-call's actions on a real Citus cluster (docs/distributed.md), through the CLI as an
//! operator types them: the approvals inbox, approve and reject (the rejected item
//! dead-lettered), dead letters replayed (run again) and discarded, an order cancelled, an
//! item's page; each on the row's tenant's node, each order rolled up as its items say. Then
//! the admin API's reads of the same rows.
//! Skipped, with a SKIPPED line, without `ORDERLY_CITUS_URL`.

use crate::citus::CitusDb;
use crate::cli::{orderly, text};
use serde_json::json;
use sqlx::PgPool;
use std::time::{Duration, Instant};
use uuid::Uuid;

async fn order(pool: &PgPool, tenant: Uuid, workflow: &str, items: &[(&str, &str)]) -> (Uuid, Vec<Uuid>) {
    let order: Uuid = sqlx::query_scalar(
        "INSERT INTO work_orders (workflow_id, tenant_id, created_by) VALUES ($1, $2, gen_random_uuid()) RETURNING id",
    )
    .bind(workflow)
    .bind(tenant)
    .fetch_one(pool)
    .await
    .unwrap();
    let mut ids = Vec::new();
    for (kind, content) in items {
        ids.push(
            sqlx::query_scalar(
                "INSERT INTO work_items (work_order_id, tenant_id, type, content)
                 VALUES ($1, $2, $3::work_item_type, $4) RETURNING id",
            )
            .bind(order)
            .bind(tenant)
            .bind(kind)
            .bind(content)
            .fetch_one(pool)
            .await
            .unwrap(),
        );
    }
    (order, ids)
}

async fn status(pool: &PgPool, table: &str, id: Uuid) -> String {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT status::text FROM {table} WHERE id = $1")))
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

fn run(db: &CitusDb, args: &[&str]) -> String {
    let out = orderly(&db.url, args);
    let said = text(&out);
    assert!(out.status.success(), "orderly {args:?}: {said}");
    said
}

#[tokio::test]
async fn on_call_approves_rejects_replays_discards_and_cancels_on_each_tenants_node() {
    let Some(db) = CitusDb::distributed("on_call_approves_rejects_replays").await else { return };
    // TICKET output must have a string subject; the "strict" workflow holds a failing one.
    let schema = json!({"type": "object", "required": ["echo"],
                        "properties": {"echo": {"type": "object", "required": ["subject"],
                                                "properties": {"subject": {"type": "string"}}}}});
    sqlx::query("INSERT INTO schemas (name, version, document_type, schema_definition) VALUES ('ticket-output', '1', 'TICKET', $1)")
        .bind(schema)
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO workflow_templates (name, document_type, workflow_definition) VALUES ('strict', 'TICKET', $1)",
    )
    .bind(json!({"steps": {"TICKET": {"agent": "echo", "approval": "escalate_on_failure"}}}))
    .execute(&db.pool)
    .await
    .unwrap();
    // A template whose steps wait for each other is refused on a cluster, plainly.
    let needs = sqlx::query(
        "INSERT INTO workflow_templates (name, document_type, workflow_definition) VALUES ('chain', 'TICKET', $1)",
    )
    .bind(json!({"steps": {"EXTRACT": {"agent": "echo"}, "TICKET": {"agent": "echo", "needs": ["EXTRACT"]}}}))
    .execute(&db.pool)
    .await
    .unwrap_err()
    .to_string();
    assert!(needs.contains("not supported in distributed mode"), "{needs}");
    // So are step limits, and a daemon configured with agent limits does not start there:
    // they are not enforced on a cluster yet, and would otherwise hold items back forever.
    let limits = sqlx::query(
        "INSERT INTO workflow_templates (name, document_type, workflow_definition) VALUES ('capped', 'TICKET', $1)",
    )
    .bind(json!({"steps": {"TICKET": {"agent": "echo", "limits": {"max_in_flight": 2}}}}))
    .execute(&db.pool)
    .await
    .unwrap_err()
    .to_string();
    assert!(limits.contains("step limits are not supported in distributed mode"), "{limits}");
    let mut limited =
        orderly::config::Settings::from_toml_layers(&["[agents.echo]\nkind = \"echo\"\nmax_in_flight = 2\n"]).unwrap();
    limited.database.url = db.url.clone();
    limited.database.migrate_on_start = false;
    limited.admin.listen = None;
    let refused = orderly::daemon::Engine::start(limited, &orderly::agent::Registry::builtin(), None)
        .await
        .err()
        .map(|e| format!("{e:#}"))
        .unwrap_or_default();
    assert!(refused.contains("agent limits are not supported in distributed mode"), "{refused}");
    let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let held = r#"{"subject": 42}"#;
    let (order_a, tickets) = order(&db.pool, a, "strict", &[("TICKET", held), ("TICKET", held)]).await;
    let (order_b, invoices) = order(&db.pool, b, "wf", &[("INVOICE", "{}"), ("INVOICE", "{}")]).await;
    let (order_c, later) = order(&db.pool, c, "wf", &[("INVOICE", "{}"), ("INVOICE", "{}")]).await;
    // One attempt each: a rejection dead-letters the item, whatever the CLI's own settings.
    sqlx::query("UPDATE work_items SET max_attempts = 1 WHERE tenant_id = $1").bind(a).execute(&db.pool).await.unwrap();
    sqlx::query("UPDATE work_items SET run_at = now() + interval '1 hour' WHERE tenant_id = $1")
        .bind(c)
        .execute(&db.pool)
        .await
        .unwrap();
    let toml = format!(
        "{}[agents.bad]\nkind = \"fail\"\nmessage = \"boom\"\n[routes]\nINVOICE = \"bad\"\n[retry]\nmax_attempts = 1\n",
        crate::api::tokens_toml()
    );
    let engine = db.engine(&toml).await;
    let api = format!("http://{}/api/v1", engine.admin_addr().expect("the admin server listens"));
    let deadline = Instant::now() + Duration::from_secs(60);
    while crate::common::count(
        &db.pool,
        "SELECT count(*) FROM work_items WHERE status IN ('AWAITING_APPROVAL', 'FAILED')",
    )
    .await
        < 4
    {
        assert!(Instant::now() < deadline, "two held and two dead-lettered items expected within 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The inbox lists the two held items, with their tenant.
    let inbox = run(&db, &["approvals", "list"]);
    assert!(tickets.iter().all(|t| inbox.contains(&t.to_string())), "{inbox}");
    run(&db, &["approve", &tickets[0].to_string(), "--actor", "oncall"]);
    let again = orderly(&db.url, &["approve", &tickets[0].to_string()]);
    assert!(!again.status.success() && text(&again).contains("not AWAITING_APPROVAL"), "{}", text(&again));
    run(&db, &["reject", &tickets[1].to_string(), "--actor", "oncall", "--reason", "wrong subject"]);
    assert_eq!(status(&db.pool, "work_items", tickets[0]).await, "COMPLETED");
    assert_eq!(status(&db.pool, "work_items", tickets[1]).await, "FAILED");
    assert_eq!(status(&db.pool, "work_orders", order_a).await, "FAILED", "an item failed and none is live");
    let rejected: (Uuid, String) = sqlx::query_as(
        "SELECT tenant_id, error_code FROM dead_letters WHERE work_item_id = $1 AND processed_at IS NULL",
    )
    .bind(tickets[1])
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(rejected, (a, "APPROVAL_REJECTED".to_string()), "the rejection's dead letter, on the item's tenant");

    // Dead letters: one replayed (it runs again: with max_attempts 1 the failing agent
    // dead-letters it anew), one discarded (it stays FAILED).
    let letter = |item: Uuid| {
        let pool = db.pool.clone();
        async move {
            sqlx::query_scalar::<_, Uuid>(
                "SELECT id FROM dead_letters WHERE work_item_id = $1 AND processed_at IS NULL",
            )
            .bind(item)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    let replayed = letter(invoices[0]).await;
    run(&db, &["dead-letters", "replay", &replayed.to_string()]);
    let discarded = letter(invoices[1]).await;
    run(&db, &["dead-letters", "discard", &discarded.to_string(), "--reason", "duplicate"]);
    let twice = orderly(&db.url, &["dead-letters", "discard", &discarded.to_string(), "--reason", "again"]);
    assert!(!twice.status.success() && text(&twice).contains("already DISCARDED"), "{}", text(&twice));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let attempts: i64 =
            sqlx::query_scalar("SELECT count(*) FROM attempts WHERE tenant_id = $1 AND work_item_id = $2")
                .bind(b)
                .bind(invoices[0])
                .fetch_one(&db.pool)
                .await
                .unwrap();
        if attempts == 2 && status(&db.pool, "work_orders", order_b).await == "FAILED" {
            break;
        }
        assert!(Instant::now() < deadline, "the replayed item did not run again within 60 s ({attempts} attempts)");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The admin API reads the same rows on the cluster: listings across the tenants, an order
    // with its items, an item, the held items, budgets (none on a cluster), the status.
    let http = reqwest::Client::new();
    for path in [
        "/status".to_string(),
        "/items?limit=3".to_string(),
        "/items?state=FAILED".to_string(),
        format!("/items/{}", tickets[1]),
        format!("/orders/{order_a}"),
        "/dead-letters".to_string(),
        "/approvals".to_string(),
        "/escalations".to_string(),
        "/budgets".to_string(),
    ] {
        let response = http.get(format!("{api}{path}")).bearer_auth(crate::api::READ).send().await.unwrap();
        let code = response.status();
        let body: serde_json::Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
        assert_eq!(code, 200, "GET {path}: {body}");
        if path == format!("/orders/{order_a}") {
            assert_eq!(body["order"]["status"], "FAILED", "{body}");
            assert_eq!(body["graph"]["nodes"].as_array().map(Vec::len), Some(2), "{body}");
        }
    }
    engine.shutdown(tokio_util::sync::CancellationToken::new()).await;
    let letters: Vec<(Option<String>, bool)> = sqlx::query_as(
        "SELECT resolution::text, processed_at IS NULL FROM dead_letters WHERE tenant_id = $1 ORDER BY created_at, id",
    )
    .bind(b)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let mut closed: Vec<Option<String>> = letters.iter().filter(|l| !l.1).map(|l| l.0.clone()).collect();
    closed.sort();
    assert_eq!(closed, vec![Some("DISCARDED".into()), Some("REPLAYED".into())]);
    assert_eq!(letters.iter().filter(|l| l.1).count(), 1, "the replayed item's new dead letter is open");

    // Cancelling the third tenant's order: both its queued items, the order CANCELLED.
    let cancelled = run(&db, &["cancel", "--order", &order_c.to_string()]);
    assert!(later.iter().all(|i| cancelled.contains(&i.to_string())), "{cancelled}");
    for item in &later {
        assert_eq!(status(&db.pool, "work_items", *item).await, "CANCELLED");
    }
    assert_eq!(status(&db.pool, "work_orders", order_c).await, "CANCELLED");

    // An item's page, and every action audited on the coordinator.
    let page = run(&db, &["items", "show", &tickets[1].to_string()]);
    assert!(page.contains("FAILED") && page.contains("APPROVAL_REJECTED"), "{page}");
    let audited: Vec<String> =
        sqlx::query_scalar("SELECT action FROM audit_logs ORDER BY action").fetch_all(&db.pool).await.unwrap();
    for action in
        ["approval.approve", "approval.reject", "dead_letter.replay", "dead_letter.discard", "work_order.cancel"]
    {
        assert!(audited.iter().any(|a| a == action), "{action} not audited: {audited:?}");
    }

    // `orderly enqueue` on a cluster: the items name the order's tenant and land on its node.
    let d = Uuid::new_v4();
    run(&db, &["enqueue", "--tenant", &d.to_string(), "--item", r#"INVOICE={"n":1}"#, "--item", r#"TICKET={"n":2}"#]);
    let placed: Vec<(Uuid, String)> =
        sqlx::query_as("SELECT w.tenant_id, w.type::text FROM work_items w WHERE w.tenant_id = $1 ORDER BY 2")
            .bind(d)
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(placed, vec![(d, "INVOICE".to_string()), (d, "TICKET".to_string())]);

    // `orderly roles` says plainly that it does not run on a cluster yet.
    let roles = orderly(&db.url, &["roles"]);
    assert!(!roles.status.success(), "{}", text(&roles));
    assert!(text(&roles).contains("not supported in distributed mode yet"), "{}", text(&roles));
}
