//! Test harness: a fresh database per test, an engine on it, a real HTTP agent, and helpers
//! that wait on database state with a deadline (never a bare sleep).

use orderly::agent::Registry;
use orderly::config::Settings;
use orderly::daemon::Engine;
use serde_json::Value;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool, Row};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub fn base_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

fn with_database(url: &str, name: &str) -> String {
    let mut parsed = reqwest::Url::parse(url).expect("DATABASE_URL is a URL");
    parsed.set_path(&format!("/{name}"));
    parsed.to_string()
}

/// A database of its own, migrated, dropped when the test ends.
pub struct TestDb {
    pub pool: PgPool,
    pub url: String,
    name: String,
}

impl TestDb {
    pub async fn new() -> TestDb {
        let name = format!("orderly_test_{}", Uuid::new_v4().simple());
        Self::create(&name).await
    }

    /// A database migrated up to `version` only (an earlier release's schema): the fault
    /// suite's upgrade test.
    #[allow(dead_code)]
    pub async fn at_migration(version: i64) -> TestDb {
        let name = format!("orderly_test_{}", Uuid::new_v4().simple());
        let db = Self::create_unmigrated(&name).await;
        orderly::db::migrate_to(&db.pool, version).await.unwrap();
        db
    }

    async fn create(name: &str) -> TestDb {
        let db = Self::create_unmigrated(name).await;
        orderly::db::migrate(&db.pool).await.unwrap();
        db
    }

    async fn create_unmigrated(name: &str) -> TestDb {
        let mut admin = PgConnection::connect(&base_url())
            .await
            .expect("PostgreSQL must be reachable at DATABASE_URL or postgres://postgres@127.0.0.1:5432/postgres");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut admin).await.unwrap();
        let url = with_database(&base_url(), name);
        let pool = PgPoolOptions::new().max_connections(8).connect(&url).await.unwrap();
        TestDb { pool, url, name: name.to_owned() }
    }

    /// Settings for an engine on this database: test-friendly defaults under `toml`.
    pub fn settings(&self, toml: &str) -> Settings {
        // The admin server on a free port: tests run in parallel.
        let test_defaults = "[worker]\npoll_interval = \"200ms\"\n[retry]\nbackoff_base = \"50ms\"\nbackoff_max = \"200ms\"\n\
                             [admin]\nlisten = \"127.0.0.1:0\"\n";
        let mut settings = Settings::from_toml_layers(&[test_defaults, toml]).expect("test settings are valid");
        settings.database.url = self.url.clone();
        settings.database.migrate_on_start = false;
        settings
    }

    pub async fn engine(&self, toml: &str) -> Engine {
        Engine::start(self.settings(toml), &Registry::builtin(), None).await.expect("engine starts")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // The pool is not touched here: its connections belong to the test's runtime, which
        // is blocked in this drop. FORCE terminates them.
        let name = self.name.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                if let Ok(mut admin) = PgConnection::connect(&base_url()).await {
                    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")))
                        .execute(&mut admin)
                        .await;
                }
            });
        })
        .join()
        .ok();
    }
}

pub async fn stop(engine: Engine) {
    engine.shutdown(CancellationToken::new()).await;
}

/// The upstream's first INSERT, in plain SQL.
pub async fn insert_order(pool: &PgPool, priority: &str) -> Uuid {
    sqlx::query_scalar(
        "INSERT INTO work_orders (workflow_id, tenant_id, created_by, priority)
         VALUES ('default', gen_random_uuid(), gen_random_uuid(), $1::priority) RETURNING id",
    )
    .bind(priority)
    .fetch_one(pool)
    .await
    .unwrap()
}

pub async fn insert_order_with_workflow(pool: &PgPool, workflow: &str) -> Uuid {
    sqlx::query_scalar(
        "INSERT INTO work_orders (workflow_id, tenant_id, created_by) VALUES ($1, gen_random_uuid(), gen_random_uuid()) RETURNING id",
    )
    .bind(workflow)
    .fetch_one(pool)
    .await
    .unwrap()
}

/// An active workflow template for TICKET items with this definition.
pub async fn insert_template(pool: &PgPool, name: &str, definition: Value) {
    sqlx::query("INSERT INTO workflow_templates (name, document_type, workflow_definition) VALUES ($1, 'TICKET', $2)")
        .bind(name)
        .bind(definition)
        .execute(pool)
        .await
        .unwrap();
}

/// The upstream's second INSERT, in plain SQL.
pub async fn insert_item(pool: &PgPool, order: Uuid, item_type: &str, content: &str) -> Uuid {
    sqlx::query_scalar(
        "INSERT INTO work_items (work_order_id, type, content) VALUES ($1, $2::work_item_type, $3) RETURNING id",
    )
    .bind(order)
    .bind(item_type)
    .bind(content)
    .fetch_one(pool)
    .await
    .unwrap()
}

pub async fn item_status(pool: &PgPool, id: Uuid) -> String {
    sqlx::query_scalar("SELECT status::text FROM work_items WHERE id = $1").bind(id).fetch_one(pool).await.unwrap()
}

pub async fn order_status(pool: &PgPool, id: Uuid) -> String {
    sqlx::query_scalar("SELECT status::text FROM work_orders WHERE id = $1").bind(id).fetch_one(pool).await.unwrap()
}

pub async fn count(pool: &PgPool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

/// Waits until `check` holds, failing the test with `what` after `deadline`.
pub async fn wait_until<F, Fut>(what: &str, deadline: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return;
        }
        assert!(start.elapsed() < deadline, "timed out after {deadline:?} waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until an engine on this database has its LISTEN connection up.
pub async fn wait_listening(db: &TestDb) {
    wait_until("the engine to LISTEN", Duration::from_secs(10), || async {
        count(
            &db.pool,
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'orderly' AND (query ILIKE 'LISTEN%' OR query LIKE '%orderly listener%')",
        )
        .await
            > 0
    })
    .await;
}

pub async fn wait_for_status(pool: &PgPool, id: Uuid, status: &str) {
    let what = format!("item {id} to be {status}");
    wait_until(&what, Duration::from_secs(20), || async { item_status(pool, id).await == status }).await;
}

/// Waits for an order's status: the roll-up follows its last item's write (after that
/// write's commit, milliseconds later), so a test that saw the item finish waits for it.
pub async fn wait_for_order(pool: &PgPool, id: Uuid, status: &str) {
    let what = format!("order {id} to be {status}");
    wait_until(&what, Duration::from_secs(20), || async { order_status(pool, id).await == status }).await;
}

/// Waits until no item is QUEUED-and-runnable or PROCESSING.
pub async fn wait_quiet(pool: &PgPool) {
    wait_until("queue to drain", Duration::from_secs(60), || async {
        count(pool, "SELECT count(*) FROM work_items WHERE status IN ('QUEUED', 'PROCESSING')").await == 0
    })
    .await;
}

/// Attempts of an item: (number, status, error_code).
pub async fn attempts(pool: &PgPool, id: Uuid) -> Vec<(i32, String, Option<String>)> {
    sqlx::query("SELECT attempt_number, status::text AS s, error_code FROM attempts WHERE work_item_id = $1 ORDER BY attempt_number")
        .bind(id)
        .fetch_all(pool)
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

/// (error_code, reason, retry_count) of the item's open dead letter.
pub async fn dead_letter(pool: &PgPool, id: Uuid) -> Option<(String, String, i32)> {
    sqlx::query("SELECT error_code, reason::text, retry_count FROM dead_letters WHERE work_item_id = $1 AND processed_at IS NULL")
        .bind(id)
        .fetch_optional(pool)
        .await
        .unwrap()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
}

/// One request an HTTP test agent received.
#[derive(Debug, Clone)]
pub struct Received {
    pub item_id: Uuid,
    pub attempt: i64,
    pub idempotency_key: Option<String>,
    pub envelope: Value,
}

/// What the agent answers: status, headers, body.
pub type Answer = (u16, Vec<(&'static str, String)>, String);
type Behaviour = dyn Fn(&Value) -> (Answer, Duration) + Send + Sync;

/// A real HTTP agent on 127.0.0.1 that records every request it receives.
pub struct TestAgent {
    pub url: String,
    pub received: Arc<Mutex<Vec<Received>>>,
    /// Requests open now, and the most ever open at once (the agent's own count; read by
    /// the fault suite's limits scenario).
    #[allow(dead_code)]
    pub open: Arc<Mutex<(usize, usize)>>,
}

/// Counts a request open until dropped (also when its connection goes and the handler with it).
struct OpenGuard(Arc<Mutex<(usize, usize)>>);

impl OpenGuard {
    fn enter(open: &Arc<Mutex<(usize, usize)>>) -> OpenGuard {
        let mut o = open.lock().unwrap();
        o.0 += 1;
        o.1 = o.1.max(o.0);
        OpenGuard(open.clone())
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.lock().unwrap().0 -= 1;
    }
}

impl TestAgent {
    /// `behaviour` maps the envelope to an answer and a delay before answering.
    pub async fn start(behaviour: impl Fn(&Value) -> (Answer, Duration) + Send + Sync + 'static) -> TestAgent {
        use axum::extract::State;
        use axum::http::{HeaderMap, StatusCode};
        use axum::response::IntoResponse;
        type Shared = (Arc<Behaviour>, Arc<Mutex<Vec<Received>>>, Arc<Mutex<(usize, usize)>>);
        async fn handle(
            State((behaviour, received, open)): State<Shared>,
            headers: HeaderMap,
            body: String,
        ) -> impl IntoResponse {
            let _open = OpenGuard::enter(&open);
            let envelope: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
            received.lock().unwrap().push(Received {
                item_id: envelope["work_item"]["id"].as_str().and_then(|s| s.parse().ok()).unwrap_or_default(),
                attempt: envelope["attempt"]["number"].as_i64().unwrap_or(-1),
                idempotency_key: headers.get("idempotency-key").and_then(|v| v.to_str().ok()).map(str::to_owned),
                envelope: envelope.clone(),
            });
            let ((status, extra, body), delay) = behaviour(&envelope);
            tokio::time::sleep(delay).await;
            let mut headers = axum::http::HeaderMap::new();
            for (name, value) in extra {
                headers.insert(name, value.parse().unwrap());
            }
            (StatusCode::from_u16(status).unwrap(), headers, body)
        }
        let received = Arc::new(Mutex::new(Vec::new()));
        let open: Arc<Mutex<(usize, usize)>> = Default::default();
        let shared: Shared = (Arc::new(behaviour), received.clone(), open.clone());
        let app = axum::Router::new().route("/", axum::routing::post(handle)).with_state(shared);
        let url = format!("{}/", serve(app).await);
        TestAgent { url, received, open }
    }

    /// Config for an http agent named `name` pointing here.
    pub fn config(&self, name: &str, timeout: &str) -> String {
        format!(
            "[agents.{name}]\nkind = \"http\"\nurl = \"{}\"\ntimeout = \"{timeout}\"\nallow_private = true\n",
            self.url
        )
    }

    pub fn executions_of(&self, id: Uuid) -> usize {
        self.received.lock().unwrap().iter().filter(|r| r.item_id == id).count()
    }
}

/// Serves `app` on a free port of 127.0.0.1 for the rest of the test: its base URL
/// (`http://127.0.0.1:PORT`, no trailing slash).
pub async fn serve(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    base
}

pub fn ok_json(body: Value) -> (Answer, Duration) {
    ((200, vec![], body.to_string()), Duration::ZERO)
}

/// A PROCESSING item of `order` whose lease expired a minute ago, as a vanished worker leaves
/// it: inserted and marked in one transaction, so no claim sees it QUEUED.
pub async fn insert_expired_lease(pool: &PgPool, order: Uuid) -> Uuid {
    let mut tx = pool.begin().await.unwrap();
    let item: Uuid = sqlx::query_scalar(
        "INSERT INTO work_items (work_order_id, type, content) VALUES ($1, 'TICKET', '{}') RETURNING id",
    )
    .bind(order)
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    sqlx::query(
        "UPDATE work_items SET status = 'PROCESSING', attempt = 1, locked_by = 'gone',
                lease_expires_at = now() - interval '1 minute' WHERE id = $1",
    )
    .bind(item)
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    item
}
