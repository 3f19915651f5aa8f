//! The admin server (`admin.listen`): /healthz, /readyz and its checks, /metrics in the
//! Prometheus text format, the leader's database gauges and their plans, and the real binary
//! serving them while `orderly run` runs.

use crate::common::*;
use orderly::db::ENGINE_PLANNER_SETTINGS;
use orderly::db::gauges::{OPEN_DEAD_LETTERS_SQL, QUEUE_DEPTH_SQL};
use serde_json::Value;
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::BufRead;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::time::Duration;

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(5)).build().unwrap()
}

/// GET `path`: status and body, or `None` when nothing answers.
async fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let response = client().get(format!("http://{addr}{path}")).send().await.ok()?;
    let status = response.status().as_u16();
    Some((status, response.text().await.ok()?))
}

/// /readyz as (status, JSON body).
async fn readyz(addr: SocketAddr) -> (u16, Value) {
    let (status, body) = get(addr, "/readyz").await.expect("the admin server answers");
    (status, serde_json::from_str(&body).unwrap_or_else(|e| panic!("/readyz answers JSON ({e}): {body}")))
}

async fn wait_ready(addr: SocketAddr, deadline: Duration) {
    let mut last = Value::Null;
    let start = std::time::Instant::now();
    loop {
        let (status, body) = readyz(addr).await;
        if status == 200 {
            assert_eq!(body["ready"], true, "{body}");
            assert_eq!(body["failing"], serde_json::json!([]), "{body}");
            return;
        }
        assert!(start.elapsed() < deadline, "not ready within {deadline:?}: {last}");
        last = body;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn failing(body: &Value) -> Vec<String> {
    body["failing"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_owned()).collect()
}

#[tokio::test]
async fn readyz_is_ready_with_the_engine_and_draining_during_shutdown() {
    let db = TestDb::new().await;
    let agent = TestAgent::start(|_| ((200, vec![], "{\"ok\":true}".into()), Duration::from_millis(1500))).await;
    let engine = db.engine(&format!("{}[routes]\nTICKET = \"slow\"\n", agent.config("slow", "10s"))).await;
    let addr = engine.admin_addr().expect("the admin server runs");
    assert!(addr.ip().is_loopback() && addr.port() != 0, "port 0 became a real port: {addr}");

    assert_eq!(get(addr, "/healthz").await, Some((200, "ok".to_owned())));
    wait_ready(addr, Duration::from_secs(10)).await;
    let (_, body) = readyz(addr).await;
    for check in ["database", "migrations", "listener", "engine", "draining"] {
        assert_eq!(body["checks"][check]["ok"], true, "{check}: {body}");
    }

    let order = insert_order(&db.pool, "MEDIUM").await;
    let item = insert_item(&db.pool, order, "TICKET", "{}").await;
    wait_for_status(&db.pool, item, "PROCESSING").await;
    let draining = tokio::spawn(stop(engine));
    wait_until("/readyz to say draining", Duration::from_secs(5), || async {
        let (status, body) = readyz(addr).await;
        status == 503 && failing(&body).contains(&"draining".to_owned())
    })
    .await;
    let (_, body) = readyz(addr).await;
    assert_eq!(body["ready"], false, "{body}");
    assert_eq!(body["checks"]["draining"]["ok"], false, "{body}");
    assert_eq!(body["checks"]["database"]["ok"], true, "the database is fine while draining: {body}");
    assert_eq!(get(addr, "/healthz").await, Some((200, "ok".to_owned())), "alive while draining");
    assert_eq!(get(addr, "/metrics").await.map(|(status, _)| status), Some(200), "metrics while draining");

    draining.await.unwrap();
    assert_eq!(item_status(&db.pool, item).await, "COMPLETED", "the drain let the item finish");
    assert_eq!(get(addr, "/healthz").await, None, "the server stops with the engine");
}

/// The database refuses connections (as while it restarts): instead of restarting the
/// shared PostgreSQL, this test's own database stops taking connections and its sessions
/// are terminated; readiness names the database, then recovers once connections are allowed.
#[tokio::test]
async fn readyz_names_the_database_when_it_refuses_connections_and_recovers() {
    let db = TestDb::new().await;
    let engine = db.engine("[routes]\nTICKET = \"echo\"\n").await;
    let addr = engine.admin_addr().unwrap();
    wait_ready(addr, Duration::from_secs(10)).await;

    let name = reqwest::Url::parse(&db.url).unwrap().path().trim_start_matches('/').to_owned();
    let mut admin = PgConnection::connect(&base_url()).await.unwrap();
    let allow = |yes: bool| format!("ALTER DATABASE {name} ALLOW_CONNECTIONS {yes}");
    sqlx::raw_sql(sqlx::AssertSqlSafe(allow(false))).execute(&mut admin).await.unwrap();
    let terminate = format!(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = '{name}' AND pid <> pg_backend_pid()"
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(terminate)).execute(&mut admin).await.unwrap();

    wait_until("/readyz to name the database", Duration::from_secs(10), || async {
        let (status, body) = readyz(addr).await;
        status == 503 && failing(&body).contains(&"database".to_owned())
    })
    .await;
    let (_, body) = readyz(addr).await;
    assert_eq!(body["checks"]["database"]["ok"], false, "{body}");
    assert!(body["checks"]["database"]["detail"].as_str().unwrap().len() > 3, "says why: {body}");
    assert_eq!(body["checks"]["draining"]["ok"], true, "{body}");
    assert_eq!(get(addr, "/healthz").await, Some((200, "ok".to_owned())), "alive without a database");
    let (status, metrics) = get(addr, "/metrics").await.unwrap();
    assert_eq!(status, 200, "metrics need no database: {metrics}");

    sqlx::raw_sql(sqlx::AssertSqlSafe(allow(true))).execute(&mut admin).await.unwrap();
    // The listener reconnects with a backoff of at most 5 s.
    wait_ready(addr, Duration::from_secs(30)).await;
    let order = insert_order(&db.pool, "MEDIUM").await;
    let item = insert_item(&db.pool, order, "TICKET", "{}").await;
    wait_for_status(&db.pool, item, "COMPLETED").await;
    stop(engine).await;
}

/// A parsed exposition: `# TYPE` per family and every sample with its labels.
#[derive(Debug)]
struct Scrape {
    types: HashMap<String, String>,
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

impl Scrape {
    /// Parses the text format strictly: every sample belongs to a family declared before it
    /// by `# TYPE` (histograms through `_bucket`, `_sum`, `_count`), names and label names are
    /// valid, label values are quoted, values are numbers, no series appears twice.
    fn parse(text: &str) -> Scrape {
        let valid_name = |name: &str| {
            !name.is_empty()
                && !name.starts_with(|c: char| c.is_ascii_digit())
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
        };
        let mut types = HashMap::new();
        let mut samples = Vec::new();
        let mut seen = BTreeSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
                assert!(valid_name(name), "{line}");
                assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
                assert!(types.insert(name.to_owned(), kind.to_owned()).is_none(), "declared twice: {line}");
                continue;
            }
            if line.starts_with("# HELP ") {
                continue;
            }
            assert!(!line.is_empty() && !line.starts_with('#'), "unexpected line: {line:?}");
            let (series, value) = line.rsplit_once(' ').expect("a sample is `series value`");
            let value: f64 = value.parse().unwrap_or_else(|_| panic!("value of {line}"));
            let (name, labels) = match series.split_once('{') {
                None => (series, BTreeMap::new()),
                Some((name, rest)) => (name, parse_labels(rest.strip_suffix('}').expect("closing brace"))),
            };
            assert!(valid_name(name), "{line}");
            assert!(labels.keys().all(|l| valid_name(l) && !l.starts_with("__")), "{line}");
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| {
                    name.strip_suffix(suffix).filter(|f| types.get(*f).is_some_and(|k| k == "histogram"))
                })
                .unwrap_or(name);
            assert!(types.contains_key(family), "no # TYPE before {line}");
            if types[family] == "counter" {
                assert!(name.ends_with("_total") && value >= 0.0, "{line}");
            }
            assert!(seen.insert((name.to_owned(), labels.clone())), "series twice: {line}");
            samples.push((name.to_owned(), labels, value));
        }
        Scrape { types, samples }
    }

    /// The value of the series with exactly these labels.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: BTreeMap<String, String> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        self.samples.iter().find(|(n, l, _)| n == name && *l == want).map(|(_, _, v)| *v)
    }

    /// The label names each series of `name` carries.
    fn label_sets(&self, name: &str) -> BTreeSet<Vec<String>> {
        self.samples.iter().filter(|(n, _, _)| n == name).map(|(_, l, _)| l.keys().cloned().collect()).collect()
    }
}

fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    while !rest.is_empty() {
        let (name, after) = rest.split_once("=\"").expect("label=\"value\"");
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next().expect("closing quote") {
                (i, '"') => break i,
                (_, '\\') => match chars.next().expect("escape").1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (_, c) => value.push(c),
            }
        };
        assert!(labels.insert(name.to_owned(), value).is_none(), "label twice in {text}");
        rest = after[end + 1..].strip_prefix(',').unwrap_or(&after[end + 1..]);
    }
    labels
}

async fn scrape(addr: SocketAddr) -> Scrape {
    let response = client().get(format!("http://{addr}/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(content_type.starts_with("text/plain; version=0.0.4"), "{content_type}");
    Scrape::parse(&response.text().await.unwrap())
}

#[tokio::test]
async fn metrics_are_prometheus_text_and_move_as_items_finish() {
    let db = TestDb::new().await;
    let engine = db
        .engine(
            "[agents.failer]\nkind = \"fail\"\nmessage = \"no\"\n\
             [routes]\nTICKET = \"echo\"\nINVOICE = \"failer\"\n\
             [admin]\ngauge_interval = \"1s\"\n",
        )
        .await;
    let addr = engine.admin_addr().unwrap();

    let before = scrape(addr).await;
    let expected_types = [
        ("orderly_items_claimed_total", "counter"),
        ("orderly_attempts_total", "counter"),
        ("orderly_items_finished_total", "counter"),
        ("orderly_dead_letters_total", "counter"),
        ("orderly_retries_total", "counter"),
        ("orderly_items_released_total", "counter"),
        ("orderly_stale_writes_total", "counter"),
        ("orderly_leases_lost_total", "counter"),
        ("orderly_rescues_total", "counter"),
        ("orderly_eval_results_total", "counter"),
        ("orderly_approval_decisions_total", "counter"),
        ("orderly_escalations_fired_total", "counter"),
        ("orderly_escalations_resolved_total", "counter"),
        ("orderly_notifications_total", "counter"),
        ("orderly_attempt_duration_seconds", "histogram"),
        ("orderly_queue_wait_seconds", "histogram"),
        ("orderly_in_flight_items", "gauge"),
        ("orderly_leader", "gauge"),
        ("orderly_build_info", "gauge"),
    ];
    for (name, kind) in expected_types {
        assert_eq!(before.types.get(name).map(String::as_str), Some(kind), "# TYPE of {name}");
    }
    assert_eq!(before.value("orderly_items_finished_total", &[("state", "COMPLETED")]), Some(0.0));
    assert_eq!(before.value("orderly_retries_total", &[]), Some(0.0));
    assert_eq!(before.value("orderly_build_info", &[("version", env!("CARGO_PKG_VERSION"))]), Some(1.0));

    // Three tickets complete, an invoice fails permanently, a status report has no route, and
    // a delayed ticket stays queued.
    let order = insert_order(&db.pool, "HIGH").await;
    for _ in 0..3 {
        insert_item(&db.pool, order, "TICKET", "{}").await;
    }
    insert_item(&db.pool, order, "INVOICE", "{}").await;
    insert_item(&db.pool, order, "STATUS_REPORT", "{}").await;
    sqlx::query(
        "INSERT INTO work_items (work_order_id, type, content, run_at) VALUES ($1, 'TICKET', '{}', now() + interval '1 hour')",
    )
    .bind(order)
    .execute(&db.pool)
    .await
    .unwrap();
    wait_until("five items to finish", Duration::from_secs(20), || async {
        count(&db.pool, "SELECT count(*) FROM work_items WHERE status IN ('COMPLETED', 'FAILED')").await == 5
    })
    .await;
    // The completer counts right after its transaction commits.
    wait_until("the counters to see all five", Duration::from_secs(5), || async { engine.metrics.recorded() == 5 })
        .await;

    let after = scrape(addr).await;
    let v = |name: &str, labels: &[(&str, &str)]| after.value(name, labels).unwrap_or(0.0);
    assert_eq!(v("orderly_items_claimed_total", &[("item_type", "TICKET")]), 3.0);
    assert_eq!(v("orderly_items_claimed_total", &[("item_type", "INVOICE")]), 1.0);
    assert_eq!(v("orderly_items_claimed_total", &[("item_type", "STATUS_REPORT")]), 1.0);
    let attempts = |status, agent, item_type| {
        v("orderly_attempts_total", &[("status", status), ("agent", agent), ("item_type", item_type)])
    };
    assert_eq!(attempts("COMPLETED", "echo", "TICKET"), 3.0);
    assert_eq!(attempts("FAILED", "failer", "INVOICE"), 1.0);
    assert_eq!(attempts("FAILED", "router", "STATUS_REPORT"), 1.0, "no route: the router's attempt");
    assert_eq!(v("orderly_items_finished_total", &[("state", "COMPLETED")]), 3.0);
    assert_eq!(v("orderly_items_finished_total", &[("state", "FAILED")]), 2.0);
    assert_eq!(v("orderly_items_finished_total", &[("state", "AWAITING_APPROVAL")]), 0.0);
    assert_eq!(v("orderly_dead_letters_total", &[("error_code", "AGENT_ERROR")]), 1.0);
    assert_eq!(v("orderly_dead_letters_total", &[("error_code", "NO_ROUTE")]), 1.0);
    assert_eq!(v("orderly_approval_decisions_total", &[("decision", "APPROVED"), ("source", "POLICY")]), 3.0);
    assert_eq!(v("orderly_retries_total", &[]), 0.0);
    assert_eq!(v("orderly_in_flight_items", &[]), 0.0);

    // Label sets are fixed per family, and every value comes from a closed set.
    let sets = |name: &str| after.label_sets(name).into_iter().collect::<Vec<_>>();
    assert_eq!(sets("orderly_attempts_total"), vec![vec!["agent", "item_type", "status"]]);
    assert_eq!(sets("orderly_items_claimed_total"), vec![vec!["item_type"]]);
    assert_eq!(sets("orderly_items_finished_total"), vec![vec!["state"]]);
    assert_eq!(sets("orderly_dead_letters_total"), vec![vec!["error_code"]]);
    assert_eq!(sets("orderly_attempt_duration_seconds_bucket"), vec![vec!["agent", "le"]]);
    assert_eq!(sets("orderly_queue_wait_seconds_count"), vec![vec!["priority"]]);
    let agents = ["echo", "failer", "router", "rescuer", "other"];
    let item_types = ["TICKET", "INVOICE", "STATUS_REPORT"];
    for (name, labels, _) in &after.samples {
        for (label, value) in labels {
            let closed = match label.as_str() {
                "agent" => agents.contains(&value.as_str()),
                "item_type" => item_types.contains(&value.as_str()),
                "status" | "state" => value.chars().all(|c| c.is_ascii_uppercase() || c == '_'),
                "error_code" => value.parse::<orderly::model::ErrorCode>().is_ok(),
                "le" => value == "+Inf" || value.parse::<f64>().is_ok(),
                _ => !value.contains('-') || value == env!("CARGO_PKG_VERSION"),
            };
            assert!(closed, "{name}: {label}=\"{value}\" is not from a closed set");
        }
    }

    // Histograms: cumulative buckets ending in +Inf, which equals the count.
    for (family, label, value, n) in [
        ("orderly_attempt_duration_seconds", "agent", "echo", 3.0),
        ("orderly_queue_wait_seconds", "priority", "HIGH", 5.0),
    ] {
        let buckets: Vec<(f64, f64)> = after
            .samples
            .iter()
            .filter(|(name, labels, _)| name == &format!("{family}_bucket") && labels[label] == value)
            .map(|(_, labels, count)| (labels["le"].replace("+Inf", "inf").parse::<f64>().unwrap(), *count))
            .collect();
        assert!(buckets.len() > 5, "{family}: {buckets:?}");
        assert!(buckets.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1), "{family}: {buckets:?}");
        assert_eq!(buckets.last().unwrap(), &(f64::INFINITY, n), "{family}");
        assert_eq!(after.value(&format!("{family}_count"), &[(label, value)]), Some(n), "{family}");
        assert!(after.value(&format!("{family}_sum"), &[(label, value)]).unwrap() >= 0.0, "{family}");
    }

    // The leader's database gauges: the delayed ticket is queued but not runnable, and two
    // dead letters are open.
    wait_until("the leader's gauges", Duration::from_secs(15), || async {
        let s = scrape(addr).await;
        s.value("orderly_leader", &[]) == Some(1.0)
            && s.value("orderly_queue_depth", &[("status", "QUEUED"), ("item_type", "TICKET")]) == Some(1.0)
            && s.value("orderly_open_dead_letters", &[]) == Some(2.0)
    })
    .await;
    let gauges = scrape(addr).await;
    for (name, kind) in [
        ("orderly_queue_depth", "gauge"),
        ("orderly_oldest_queued_age_seconds", "gauge"),
        ("orderly_open_dead_letters", "gauge"),
        ("orderly_items_awaiting_approval", "gauge"),
    ] {
        assert_eq!(gauges.types.get(name).map(String::as_str), Some(kind), "# TYPE of {name}");
    }
    assert_eq!(gauges.value("orderly_oldest_queued_age_seconds", &[]), Some(0.0), "nothing runnable waits");
    assert_eq!(gauges.value("orderly_items_awaiting_approval", &[]), Some(0.0));
    assert_eq!(gauges.label_sets("orderly_queue_depth"), BTreeSet::from([vec!["item_type".into(), "status".into()]]));
    stop(engine).await;
}

/// Per gauge statement, the partial index it must read; none may scan a table, whatever the
/// history holds.
#[tokio::test]
async fn gauge_statements_read_only_the_partial_indexes() {
    let db = TestDb::new().await;
    sqlx::raw_sql(
        "INSERT INTO work_orders (workflow_id, tenant_id, created_by)
           SELECT 'plan', gen_random_uuid(), gen_random_uuid() FROM generate_series(1, 2000);
         INSERT INTO work_items (work_order_id, type, content, status, processed_at)
           SELECT o.id, 'TICKET', '{}', 'COMPLETED', now()
           FROM work_orders o, generate_series(1, 20);
         ANALYZE;
         UPDATE work_items SET status = 'QUEUED' WHERE id IN (SELECT id FROM work_items ORDER BY id LIMIT 300);
         UPDATE work_items SET status = 'PROCESSING', attempt = 1, lease_expires_at = now() + interval '1 minute'
           WHERE id IN (SELECT id FROM work_items WHERE status = 'QUEUED' LIMIT 50);
         UPDATE work_items SET status = 'AWAITING_APPROVAL', attempt = 1
           WHERE id IN (SELECT id FROM work_items WHERE status = 'QUEUED' LIMIT 20);
         INSERT INTO dead_letters (source, event_type, error, work_item_id, error_code, reason, payload,
                                   processed_at, resolution)
           SELECT 'plan', 'work_item', 'no', id, 'AGENT_ERROR', 'PERMANENT', '{}', now(), 'DISCARDED' FROM work_items
           WHERE status = 'COMPLETED' LIMIT 5000;",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let options = PgConnectOptions::from_str(&db.url).unwrap().options(ENGINE_PLANNER_SETTINGS);
    let mut conn = PgConnection::connect_with(&options).await.unwrap();
    let explain = async |conn: &mut PgConnection, sql: &str| -> String {
        let lines: Vec<String> =
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("EXPLAIN {sql}"))).fetch_all(&mut *conn).await.unwrap();
        lines.join("\n")
    };
    let depth = explain(&mut conn, QUEUE_DEPTH_SQL).await;
    for index in ["idx_work_items_ready", "idx_work_items_waiting", "idx_work_items_leased", "idx_work_items_held"] {
        assert!(depth.contains(index), "queue depth reads {index}:\n{depth}");
    }
    assert!(!depth.contains("Seq Scan") && !depth.contains("Bitmap"), "queue depth scans the table:\n{depth}");
    let dead = explain(&mut conn, OPEN_DEAD_LETTERS_SQL).await;
    assert!(dead.contains("dead_letters_open_item"), "open dead letters read their partial index:\n{dead}");
    assert!(!dead.contains("Seq Scan"), "open dead letters scan the table:\n{dead}");

    // And the statements give the right numbers.
    let (rows, open) = orderly::db::gauges::gauges(&db.pool).await.unwrap();
    let by_status: BTreeMap<String, i64> = rows.iter().map(|d| (d.status.to_string(), d.count)).collect();
    assert_eq!(
        by_status,
        BTreeMap::from([("AWAITING_APPROVAL".into(), 20), ("PROCESSING".into(), 50), ("QUEUED".into(), 230)])
    );
    assert_eq!(open, 0, "every dead letter is processed");
}

/// `orderly run` serves the admin server: /healthz answers while it runs, /readyz turns 503
/// "draining" on SIGTERM while an item finishes, and the process still exits 0.
#[tokio::test]
async fn the_binary_serves_healthz_while_orderly_run_runs() {
    let db = TestDb::new().await;
    let dir = std::env::temp_dir().join(format!("orderly-admin-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("orderly.toml");
    std::fs::write(
        &config,
        "[worker]\npoll_interval = \"100ms\"\n\
         [agents.slow]\nkind = \"command\"\nprogram = \"/bin/sh\"\nargs = [\"-c\", \"sleep 2; printf '{}'\"]\n\
         [routes]\nTICKET = \"slow\"\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n[log]\nformat = \"json\"\nlevel = \"info,sqlx=warn\"\n",
    )
    .unwrap();
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_orderly"))
        .args(["--config", config.to_str().unwrap(), "run"])
        .env("DATABASE_URL", &db.url)
        .env_remove("RUST_LOG")
        .env_remove("ORDERLY_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The log names the address the system chose; the rest of the log is kept for failures.
    let stderr = daemon.stderr.take().unwrap();
    let (found, address) = std::sync::mpsc::channel();
    let log = std::thread::spawn(move || {
        let mut lines = Vec::new();
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Ok(event) = serde_json::from_str::<Value>(&line)
                && event["message"] == "admin server listening"
            {
                let _ = found.send(event["addr"].as_str().unwrap_or_default().to_owned());
            }
            lines.push(line);
        }
        lines.join("\n")
    });
    let addr: SocketAddr = tokio::task::spawn_blocking(move || address.recv_timeout(Duration::from_secs(20)))
        .await
        .unwrap()
        .expect("the daemon logs the admin address")
        .parse()
        .unwrap();

    assert_eq!(get(addr, "/healthz").await, Some((200, "ok".to_owned())));
    wait_ready(addr, Duration::from_secs(15)).await;
    let metrics = scrape(addr).await;
    assert_eq!(metrics.value("orderly_build_info", &[("version", env!("CARGO_PKG_VERSION"))]), Some(1.0));

    let order = insert_order(&db.pool, "MEDIUM").await;
    let item = insert_item(&db.pool, order, "TICKET", "{}").await;
    wait_for_status(&db.pool, item, "PROCESSING").await;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(daemon.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    wait_until("/readyz to say draining", Duration::from_secs(5), || async {
        let (status, body) = readyz(addr).await;
        status == 503 && failing(&body).contains(&"draining".to_owned())
    })
    .await;
    assert_eq!(get(addr, "/healthz").await, Some((200, "ok".to_owned())), "alive while draining");

    let status = tokio::task::spawn_blocking(move || daemon.wait()).await.unwrap().unwrap();
    let log = log.join().unwrap();
    assert!(status.success(), "SIGTERM exits 0, got {status}: {log}");
    assert_eq!(item_status(&db.pool, item).await, "COMPLETED", "{log}");
    assert_eq!(get(addr, "/healthz").await, None, "the server is gone with the process");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every metric family the docs name gets a sample once the engine has done each kind of
/// thing: items completed, failed and retried, an eval, a policy and a human decision, a
/// rescue, an escalation fired and its notification delivered, the leader's gauges. And every
/// family served is documented.
#[tokio::test]
async fn every_documented_metric_family_gets_a_sample() {
    let db = TestDb::new().await;
    let sink = TestAgent::start(|_| ok_json(serde_json::json!({}))).await;
    sqlx::query(
        "INSERT INTO connectors (name, type, config, tenant_id)
         VALUES ('hook', 'API', jsonb_build_object('url', $1::text, 'secret', 'whsec_c2VjcmV0', 'allow_private', true), gen_random_uuid())",
    )
    .bind(&sink.url)
    .execute(&db.pool)
    .await
    .unwrap();
    crate::sla::rule(&db, "decide at once", "TIME_AWAITING_APPROVAL", &[(1, "1 millisecond", &["hook"])]).await;
    sqlx::query(
        "INSERT INTO schemas (name, version, document_type, schema_definition) VALUES ('ticket-output', '1', 'TICKET', '{\"type\": \"object\"}')",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    // A held item (made before the engine runs, so that no claim races the test's writes):
    // the rule escalates it at once, the hook hears of it, then a human approves.
    let held = crate::api::held(&db).await;
    // Another held item, left held: the queue depth gauge always has a live item to count,
    // however long the scrape below takes.
    crate::api::held(&db).await;
    let engine = db
        .engine(&format!(
            "{}[agents.failer]\nkind = \"fail\"\nmessage = \"no\"\ncircuit_failures = 10\n\
             [routes]\nTICKET = \"echo\"\nINVOICE = \"failer\"\n\
             [worker]\nrescue_interval = \"200ms\"\n[sla]\nsweep_interval = \"200ms\"\n\
             [notifier]\npoll_interval = \"100ms\"\n[admin]\ngauge_interval = \"1s\"\n",
            crate::api::tokens_toml()
        ))
        .await;
    let addr = engine.admin_addr().unwrap();
    let order = insert_order(&db.pool, "HIGH").await;
    let ticket = insert_item(&db.pool, order, "TICKET", "{}").await;
    insert_item(&db.pool, order, "INVOICE", "{}").await;
    wait_for_status(&db.pool, ticket, "COMPLETED").await;
    // A lease left behind by a vanished worker, for the leader's rescuer.
    let lost = insert_expired_lease(&db.pool, order).await;
    wait_until("the escalation to be delivered", Duration::from_secs(20), || async {
        !sink.received.lock().unwrap().is_empty()
    })
    .await;
    let approved = reqwest::Client::new()
        .post(format!("http://{addr}/api/v1/approvals/{held}/approve"))
        .bearer_auth(crate::api::OPERATE)
        .header("content-type", "application/json")
        .body(serde_json::json!({"reason": "looks right"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(approved.status(), 200, "{}", approved.text().await.unwrap_or_default());
    wait_for_status(&db.pool, lost, "COMPLETED").await;
    wait_quiet(&db.pool).await;

    let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/operations.md")).unwrap();
    // The leader's gauges and the notifier's counts may lag a moment behind the database.
    let start = std::time::Instant::now();
    loop {
        let scraped = scrape(addr).await;
        let missing: Vec<&String> = scraped
            .types
            .keys()
            .filter(|name| {
                !scraped.samples.iter().any(|(n, _, _)| {
                    n == *name
                        || n.strip_prefix(name.as_str()).is_some_and(|s| ["_bucket", "_sum", "_count"].contains(&s))
                })
            })
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "families without a sample: {missing:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let scraped = scrape(addr).await;
    for name in scraped.types.keys() {
        assert!(docs.contains(name.as_str()), "{name} is served but not documented in docs/operations.md");
    }
    let v = |name: &str, labels: &[(&str, &str)]| scraped.value(name, labels).unwrap_or(0.0);
    assert_eq!(v("orderly_approval_decisions_total", &[("decision", "APPROVED"), ("source", "HUMAN")]), 1.0);
    assert!(v("orderly_notifications_total", &[("channel", "API"), ("outcome", "delivered")]) >= 1.0);
    assert_eq!(v("orderly_rescues_total", &[("outcome", "requeued")]), 1.0);
    stop(engine).await;
}
