//! What the engine records beside the items, on a real Citus cluster (docs/distributed.md).
//! SLA rules: a rule is swept tenant by tenant, each tenant's escalations and notifications
//! on its own node, grouped per tenant; two sweepers at once fire each level once; two
//! notifiers at once deliver every notification once, a paced connector a second apart; an
//! incident's resolve and acknowledge are queued on its tenant's node. And what agents report
//! beside their results (costs, logs, artifacts), recorded on each item's tenant. Skipped,
//! with a SKIPPED line, without `ORDERLY_CITUS_URL`.

use crate::citus::CitusDb;
use axum::extract::State;
use axum::http::Uri;
use orderly::db::distributed::Topology;
use orderly::sla::notifier::Notifier;
use orderly::sla::sweeper::Sweeper;
use serde_json::{Value, json};
use sqlx::PgPool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use uuid::Uuid;

type Seen = Arc<Mutex<Vec<(String, Instant)>>>;

/// A receiver on 127.0.0.1 for every connector: records each request's path, answers 202.
async fn sink() -> (String, Seen) {
    async fn handle(State(seen): State<Seen>, uri: Uri) -> (axum::http::StatusCode, &'static str) {
        seen.lock().unwrap().push((uri.path().to_owned(), Instant::now()));
        (axum::http::StatusCode::ACCEPTED, "{}")
    }
    let seen: Seen = Default::default();
    let app = axum::Router::new().fallback(handle).with_state(seen.clone());
    (crate::common::serve(app).await, seen)
}

async fn connector(pool: &PgPool, name: &str, kind: &str, config: Value) {
    sqlx::query(
        "INSERT INTO connectors (name, type, config, tenant_id) VALUES ($1, $2::connector_type, $3, gen_random_uuid())",
    )
    .bind(name)
    .bind(kind)
    .bind(config)
    .execute(pool)
    .await
    .unwrap();
}

/// An order of `n` TICKET items of `tenant`.
async fn tickets(pool: &PgPool, tenant: Uuid, n: i32) {
    let order: Uuid = sqlx::query_scalar(
        "INSERT INTO work_orders (workflow_id, tenant_id, created_by) VALUES ('wf', $1, gen_random_uuid()) RETURNING id",
    )
    .bind(tenant)
    .fetch_one(pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO work_items (work_order_id, tenant_id, type, content)
         SELECT $1, $2, 'TICKET', '{}' FROM generate_series(1, $3)",
    )
    .bind(order)
    .bind(tenant)
    .bind(n)
    .execute(pool)
    .await
    .unwrap();
}

async fn rows(pool: &PgPool, sql: &'static str) -> Vec<(Uuid, String, i64)> {
    sqlx::query_as(sql).fetch_all(pool).await.unwrap()
}

#[tokio::test]
async fn sla_levels_fire_and_resolve_per_tenant_and_every_notification_is_delivered_once_on_the_cluster() {
    let Some(db) = CitusDb::distributed("sla_levels_fire_and_resolve_per_tenant").await else { return };
    let (base, seen) = sink().await;
    let secret = "whsec_U0VDUkVULXNpZ25pbmcta2V5";
    connector(&db.pool, "hook", "API", json!({"url": format!("{base}/hook"), "secret": secret, "allow_private": true}))
        .await;
    connector(&db.pool, "chat", "SLACK", json!({"url": format!("{base}/slack"), "allow_private": true})).await;
    connector(
        &db.pool,
        "pager",
        "PAGERDUTY",
        json!({"routing_key": "R0UTING", "url": format!("{base}/pd"), "allow_private": true}),
    )
    .await;
    let rule: Uuid = sqlx::query_scalar(
        "INSERT INTO sla_rules (name, clock) VALUES ('start within 1m', 'TIME_TO_START') RETURNING id",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO sla_levels (rule_id, level, after, connectors) VALUES ($1, 1, '1 minute', '{hook,chat,pager}')",
    )
    .bind(rule)
    .execute(&db.pool)
    .await
    .unwrap();
    let tenants: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
    for tenant in &tenants {
        tickets(&db.pool, *tenant, 4).await;
    }
    // Runnable for 90 s and never started (no engine runs here): level 1 is due for all 12.
    sqlx::query("UPDATE work_items SET run_at = now() - interval '90 seconds'").execute(&db.pool).await.unwrap();

    let settings = Arc::new(orderly::config::Settings::from_toml_layers(&[""]).unwrap());
    // The engine's connections, as the daemon's loops have them (a plan made per execution).
    let engine = orderly::db::connect_engine(&orderly::db::PoolOptions {
        url: &db.url,
        max_connections: 8,
        acquire_timeout: Duration::from_secs(10),
        idle_in_transaction_timeout: Duration::ZERO,
    })
    .await
    .unwrap();
    let sweeper = || Sweeper {
        pool: engine.clone(),
        settings: settings.clone(),
        metrics: Default::default(),
        topology: Topology::Distributed,
    };
    let (one, two) = (sweeper(), sweeper());
    let (a, b) = tokio::join!(one.run_once(), two.run_once());
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.fired + b.fired, 12, "each level fires once across two sweepers: {a:?} {b:?}");
    let by_tenant = rows(
        &db.pool,
        "SELECT e.tenant_id, 'escalations', count(*) FROM escalations e
         JOIN work_items w ON w.tenant_id = e.tenant_id AND w.id = e.work_item_id GROUP BY 1 ORDER BY 1",
    )
    .await;
    let mut expected: Vec<(Uuid, String, i64)> = tenants.iter().map(|t| (*t, "escalations".into(), 4)).collect();
    expected.sort();
    assert_eq!(by_tenant, expected, "every escalation on its item's tenant");
    // One message per tenant and connector, each telling of that tenant's 4 escalations.
    let messages = rows(
        &db.pool,
        "SELECT n.tenant_id, c.name, (n.payload->>'count')::bigint FROM notifications n
         JOIN connectors c ON c.id = n.connector_id ORDER BY 1, 2",
    )
    .await;
    let mut expected: Vec<(Uuid, String, i64)> =
        tenants.iter().flat_map(|t| ["chat", "hook", "pager"].map(|c| (*t, c.to_string(), 4))).collect();
    expected.sort();
    assert_eq!(messages, expected);
    let strays: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM notifications n CROSS JOIN LATERAL unnest(n.escalation_ids) AS x(id)
         WHERE NOT EXISTS (SELECT 1 FROM escalations e WHERE e.tenant_id = n.tenant_id AND e.id = x.id)",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(strays, 0, "a message names only escalations of its own tenant");
    assert_eq!(sweeper().run_once().await.unwrap().fired, 0, "a second sweep fires nothing");

    // Two notifiers at once, as on two replicas, until all 9 are delivered.
    let notifier = || Notifier::new(engine.clone(), settings.notifier.clone()).unwrap().on(Topology::Distributed);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (x, y) = (notifier(), notifier());
        let (a, b) = tokio::join!(x.run_once(), y.run_once());
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!(a.unrecorded + b.unrecorded, 0, "{a:?} {b:?}");
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM notifications WHERE status <> 'DELIVERED'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
        if left == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{left} notifications not delivered after 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let seen = seen.lock().unwrap().clone();
    for path in ["/hook", "/slack", "/pd"] {
        assert_eq!(seen.iter().filter(|(p, _)| p == path).count(), 3, "{path}: once per tenant: {seen:?}");
    }
    let slack: Vec<Instant> = seen.iter().filter(|(p, _)| p == "/slack").map(|(_, at)| *at).collect();
    for pair in slack.windows(2) {
        let apart = pair[1].duration_since(pair[0]);
        assert!(apart >= Duration::from_millis(900), "Slack messages {apart:?} apart, its pacing is 1 s");
    }

    // The first tenant's items are done: its escalations resolve, the others' stay open.
    sqlx::query("UPDATE work_items SET status = 'COMPLETED' WHERE tenant_id = $1")
        .bind(tenants[0])
        .execute(&db.pool)
        .await
        .unwrap();
    let report = sweeper().run_once().await.unwrap();
    assert_eq!((report.fired, report.resolved), (0, 4), "{report:?}");
    let states =
        rows(&db.pool, "SELECT tenant_id, status::text, count(*) FROM escalations GROUP BY 1, 2 ORDER BY 1, 2").await;
    let mut expected: Vec<(Uuid, String, i64)> =
        tenants.iter().map(|t| (*t, if *t == tenants[0] { "RESOLVED" } else { "OPEN" }.to_string(), 4)).collect();
    expected.sort();
    assert_eq!(states, expected);
    // The resolved notices (hook and chat) and the incident's resolve (pager), on that tenant.
    let resolved = rows(
        &db.pool,
        "SELECT n.tenant_id, c.name || ' ' || n.kind || CASE WHEN n.dedup_key IS NULL THEN '' ELSE ' incident' END, 1::bigint
         FROM notifications n JOIN connectors c ON c.id = n.connector_id
         WHERE n.status = 'PENDING' ORDER BY 2",
    )
    .await;
    let expected: Vec<(Uuid, String, i64)> = ["chat RESOLVED", "hook RESOLVED", "pager RESOLVED incident"]
        .iter()
        .map(|k| (tenants[0], k.to_string(), 1))
        .collect();
    assert_eq!(resolved, expected);

    // On-call acknowledges the second tenant's escalations: each once (again is a conflict),
    // and once all four are, the incident's acknowledge is queued on that tenant's node.
    let open: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM escalations WHERE tenant_id = $1 ORDER BY id")
        .bind(tenants[1])
        .fetch_all(&db.pool)
        .await
        .unwrap();
    for id in &open {
        orderly::db::sla::act(&engine, *id, orderly::db::sla::Action::Acknowledge, "oncall", None).await.unwrap();
    }
    let again = orderly::db::sla::act(&engine, open[0], orderly::db::sla::Action::Acknowledge, "oncall", None).await;
    assert!(matches!(again, Err(orderly::db::OpsError::Conflict(_))), "{again:?}");
    let acknowledged: Vec<(Uuid, String)> =
        sqlx::query_as("SELECT tenant_id, status::text FROM escalations WHERE status = 'ACKNOWLEDGED' ORDER BY id")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(acknowledged, open.iter().map(|_| (tenants[1], "ACKNOWLEDGED".to_string())).collect::<Vec<_>>());
    let incident = rows(
        &db.pool,
        "SELECT tenant_id, kind, count(*) FROM notifications
         WHERE kind = 'ACKNOWLEDGED' AND dedup_key IS NOT NULL GROUP BY 1, 2",
    )
    .await;
    assert_eq!(incident, vec![(tenants[1], "ACKNOWLEDGED".to_string(), 1)]);
    assert_eq!(
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM audit_logs WHERE action = 'escalation.acknowledge'")
            .fetch_one(&db.pool)
            .await
            .unwrap(),
        4
    );
}

/// What agents report beside their results on a cluster: cost entries, log lines and
/// artifacts, each written with its attempt on the item's tenant's node.
#[tokio::test]
async fn costs_logs_and_artifacts_are_recorded_on_each_items_tenant() {
    let Some(db) = CitusDb::distributed("costs_logs_and_artifacts_are_recorded").await else { return };
    let agent = crate::common::TestAgent::start(|_| {
        crate::common::ok_json(json!({
            "answer": 1,
            "usage": {"model": "small", "input_tokens": 1000, "output_tokens": 100},
            "logs": ["fetched", {"level": "warn", "message": "slow upstream"}],
            "artifacts": [{"name": "summary.pdf", "type": "application/pdf", "size": 1200}]
        }))
    })
    .await;
    let tenants: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
    for tenant in &tenants {
        tickets(&db.pool, *tenant, 5).await;
    }
    let config = format!(
        "{}[routes]\nTICKET = \"paid\"\n[prices.small]\ninput_per_million = \"2\"\noutput_per_million = \"10\"\ncurrency = \"USD\"\n",
        agent.config("paid", "5s")
    );
    let engine = db.engine(&config).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while crate::common::count(&db.pool, "SELECT count(*) FROM work_orders WHERE status = 'COMPLETED'").await < 3 {
        assert!(Instant::now() < deadline, "the three orders did not complete in 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    engine.shutdown(tokio_util::sync::CancellationToken::new()).await;
    // Per table: rows whose attempt is on the same tenant, and rows in all.
    for (table, per_item) in [("cost_entries", 1), ("run_logs", 2), ("run_artifacts", 1)] {
        let (joined, all): (i64, i64) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT count(a.id), count(*) FROM {table} r
             LEFT JOIN attempts a ON a.tenant_id = r.tenant_id AND a.id = r.attempt_id"
        )))
        .fetch_one(&db.pool)
        .await
        .unwrap();
        assert_eq!((joined, all), (15 * per_item, 15 * per_item), "{table}");
    }
    // 1,000 input tokens at 2 per million and 100 output at 10: 0.003 each, 0.015 per tenant.
    let amounts: Vec<(Uuid, String)> = sqlx::query_as(
        "SELECT tenant_id, trim(trailing '0' from sum(amount)::text) FROM cost_entries GROUP BY 1 ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let mut expected: Vec<(Uuid, String)> = tenants.iter().map(|t| (*t, "0.015".to_string())).collect();
    expected.sort();
    assert_eq!(amounts, expected);
    let warned: i64 = crate::common::count(&db.pool, "SELECT count(*) FROM run_logs WHERE level = 'WARN'").await;
    assert_eq!(warned, 15);
}

/// A running item's progress on a cluster: a command reports it on its descriptor, the
/// heartbeat writes it on the item's tenant's node, and it is kept after the run.
#[tokio::test]
async fn a_running_items_progress_is_written_on_its_tenant() {
    let Some(db) = CitusDb::distributed("a_running_items_progress_is_written").await else { return };
    let dir = std::env::temp_dir().join(format!("orderly-citus-progress-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("agent.sh");
    std::fs::write(
        &script,
        "echo '{\"percent\": 40, \"message\": \"reading\"}' > /proc/self/fd/$ORDERLY_PROGRESS_FD\nsleep 1.5\necho '{\"ok\": true}'\n",
    )
    .unwrap();
    let tenants: Vec<Uuid> = (0..2).map(|_| Uuid::new_v4()).collect();
    for tenant in &tenants {
        tickets(&db.pool, *tenant, 2).await;
    }
    let config = format!(
        "[agents.script]\nkind = \"command\"\nprogram = \"/bin/sh\"\nargs = [{:?}]\ntimeout = \"30s\"\n[routes]\nTICKET = \"script\"\n",
        script.display().to_string()
    );
    let engine = db.engine(&config).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while crate::common::count(&db.pool, "SELECT count(*) FROM work_items WHERE status = 'COMPLETED'").await < 4 {
        assert!(Instant::now() < deadline, "the four items did not complete in 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    engine.shutdown(tokio_util::sync::CancellationToken::new()).await;
    std::fs::remove_dir_all(&dir).ok();
    let rows: Vec<(Uuid, f64, Option<String>)> = sqlx::query_as(
        "SELECT p.tenant_id, p.percent::float8, p.message FROM run_progress p
         JOIN work_items w ON w.tenant_id = p.tenant_id AND w.id = p.work_item_id ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let mut expected: Vec<(Uuid, f64, Option<String>)> =
        tenants.iter().flat_map(|t| std::iter::repeat_n((*t, 40.0, Some("reading".to_string())), 2)).collect();
    expected.sort_by_key(|r| r.0);
    assert_eq!(rows, expected, "one progress row per item, on its tenant");
}
