//! The notifier against real sinks on 127.0.0.1: axum servers standing in for webhook
//! receivers and Slack, and a real SMTP server (Debian's python3-aiosmtpd, started by each
//! test as a child process: plain, implicit TLS, STARTTLS with authentication). Connectors
//! and notifications are INSERTed as the SLA sweeper would. Time decisions are checked on
//! the database clock; a retry is made due by backdating `next_attempt_at`, never by
//! sleeping.

use crate::common::*;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use orderly::config::NotifierSettings;
use orderly::db::notifications;
use orderly::sla::channels::PACING;
use orderly::sla::notifier::{DeliveryReport, Notifier};
use serde_json::{Value, json};
use sha2::Sha256;
use sqlx::{PgPool, Row};
use std::collections::{HashMap, VecDeque};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncBufReadExt;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The webhook secret of the tests' API connectors: `whsec_` + base64 of the key.
const KEY: &[u8] = b"SECRET-signing-key-of-the-test";

fn secret() -> String {
    format!("whsec_{}", STANDARD.encode(KEY))
}

fn settings(db: &TestDb, toml: &str) -> NotifierSettings {
    db.settings(toml).notifier
}

fn notifier(db: &TestDb, toml: &str) -> Notifier {
    Notifier::new(db.pool.clone(), settings(db, toml)).expect("the notifier's HTTP clients build")
}

/// A payload as the sweeper writes it.
fn payload(kind: &str) -> Value {
    json!({
        "kind": kind,
        "rule": {"id": Uuid::nil(), "name": "invoices-start", "clock": "TIME_TO_START"},
        "level": 2,
        "after_seconds": 900,
        "count": 3,
        "sample": [
            {"work_item_id": "0190aaaa-0000-7000-8000-000000000001", "work_order_id": "0190bbbb-0000-7000-8000-000000000001",
             "tenant_id": "0190cccc-0000-7000-8000-00000000000a", "item_type": "INVOICE", "priority": "HIGH",
             "late_by_seconds": 125},
            {"work_item_id": "0190aaaa-0000-7000-8000-000000000002", "work_order_id": "0190bbbb-0000-7000-8000-000000000002",
             "tenant_id": "0190cccc-0000-7000-8000-00000000000b", "item_type": "INVOICE", "priority": "LOW",
             "late_by_seconds": 3723}
        ],
        "act": "orderly escalations list --rule invoices-start"
    })
}

pub async fn insert_connector(pool: &PgPool, name: &str, kind: &str, config: Value) -> Uuid {
    sqlx::query_scalar(
        "INSERT INTO connectors (name, type, config, tenant_id) VALUES ($1, $2::connector_type, $3, gen_random_uuid())
         RETURNING id",
    )
    .bind(name)
    .bind(kind)
    .bind(config)
    .fetch_one(pool)
    .await
    .unwrap()
}

async fn insert_notification(pool: &PgPool, connector: Uuid, kind: &str) -> Uuid {
    sqlx::query_scalar(
        "INSERT INTO notifications (connector_id, level, kind, payload) VALUES ($1, 2, $2, $3) RETURNING id",
    )
    .bind(connector)
    .bind(kind)
    .bind(payload(kind))
    .fetch_one(pool)
    .await
    .unwrap()
}

/// A notification's (status, attempts, last_error).
async fn state(pool: &PgPool, id: Uuid) -> (String, i32, Option<String>) {
    let row = sqlx::query("SELECT status::text, attempts, last_error FROM notifications WHERE id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap();
    (row.get(0), row.get(1), row.get(2))
}

/// Seconds from the database's now until the notification is due again.
async fn due_in(pool: &PgPool, id: Uuid) -> f64 {
    sqlx::query_scalar("SELECT extract(epoch FROM next_attempt_at - now())::float8 FROM notifications WHERE id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Makes a scheduled retry due now (instead of waiting for it).
async fn make_due(pool: &PgPool, id: Uuid) {
    sqlx::query("UPDATE notifications SET next_attempt_at = now() WHERE id = $1").bind(id).execute(pool).await.unwrap();
}

/// One request a sink received.
#[derive(Debug, Clone)]
struct Request {
    path: String,
    headers: HashMap<String, String>,
    body: String,
    at: Instant,
}

/// What a sink answers: status, headers, body.
type Answer = (u16, Vec<(&'static str, String)>, String);

/// A real HTTP receiver on 127.0.0.1 (any path) that records every request and answers
/// from a script, the last answer repeating.
struct Sink {
    base: String,
    requests: Arc<Mutex<Vec<Request>>>,
}

impl Sink {
    async fn start(answers: Vec<Answer>) -> Sink {
        type Shared = (Arc<Mutex<VecDeque<Answer>>>, Arc<Mutex<Vec<Request>>>);
        async fn handle(
            State((answers, requests)): State<Shared>,
            uri: Uri,
            headers: HeaderMap,
            body: String,
        ) -> (StatusCode, HeaderMap, String) {
            let headers_seen = headers
                .iter()
                .map(|(name, value)| (name.as_str().to_owned(), value.to_str().unwrap_or_default().to_owned()))
                .collect();
            requests.lock().unwrap().push(Request {
                path: uri.to_string(),
                headers: headers_seen,
                body,
                at: Instant::now(),
            });
            let (status, extra, body) = {
                let mut answers = answers.lock().unwrap();
                if answers.len() > 1 { answers.pop_front().unwrap() } else { answers[0].clone() }
            };
            let mut headers = HeaderMap::new();
            for (name, value) in extra {
                headers.insert(name, value.parse().unwrap());
            }
            (StatusCode::from_u16(status).unwrap(), headers, body)
        }
        assert!(!answers.is_empty());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let shared: Shared = (Arc::new(Mutex::new(answers.into())), requests.clone());
        let app = axum::Router::new().fallback(handle).with_state(shared);
        let base = serve(app).await;
        Sink { base, requests }
    }

    fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }
}

fn ok() -> Answer {
    (200, vec![], "ok".into())
}

/// The Standard Webhooks check a receiver makes, recomputed here.
fn verify_signature(request: &Request) {
    let id = &request.headers["webhook-id"];
    let timestamp: i64 = request.headers["webhook-timestamp"].parse().expect("webhook-timestamp is unix seconds");
    assert!((chrono::Utc::now().timestamp() - timestamp).abs() < 60, "timestamp {timestamp} is not now");
    let mut mac = Hmac::<Sha256>::new_from_slice(KEY).unwrap();
    mac.update(format!("{id}.{timestamp}.{}", request.body).as_bytes());
    let expected = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
    assert_eq!(request.headers["webhook-signature"], expected, "the signature verifies");
}

async fn webhook(db: &TestDb, sink: &Sink) -> Uuid {
    let config = json!({"url": format!("{}/hook", sink.base), "secret": secret(), "allow_private": true});
    insert_connector(&db.pool, "ops-webhook", "API", config).await
}

#[tokio::test]
async fn webhooks_are_delivered_once_with_a_standard_webhooks_signature() {
    let db = TestDb::new().await;
    let sink = Sink::start(vec![ok()]).await;
    let connector = webhook(&db, &sink).await;
    let id = insert_notification(&db.pool, connector, "FIRED").await;
    let notifier = notifier(&db, "");

    let report = notifier.run_once().await.unwrap();
    assert_eq!(report, DeliveryReport { claimed: 1, delivered: 1, ..DeliveryReport::default() });
    assert_eq!(state(&db.pool, id).await, ("DELIVERED".into(), 1, None));
    let delivered_at: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT delivered_at FROM notifications WHERE id = $1")
            .bind(id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert!(delivered_at.is_some());

    // Nothing is sent twice.
    assert_eq!(notifier.run_once().await.unwrap().claimed, 0);
    let requests = sink.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    let request = &requests[0];
    assert_eq!(request.path, "/hook");
    assert_eq!(request.headers["webhook-id"], id.to_string());
    assert_eq!(request.headers["content-type"], "application/json");
    verify_signature(request);
    let body: Value = serde_json::from_str(&request.body).unwrap();
    assert_eq!(body, payload("FIRED"), "the payload is posted as the sweeper wrote it");
}

#[tokio::test]
async fn rate_limited_webhooks_retry_after_the_receivers_hint_with_the_same_id() {
    let db = TestDb::new().await;
    let sink = Sink::start(vec![(429, vec![("retry-after", "2".into())], "slow down".into()), ok()]).await;
    let connector = webhook(&db, &sink).await;
    let id = insert_notification(&db.pool, connector, "FIRED").await;
    let notifier = notifier(&db, "[notifier]\nbackoff_base = \"1m\"\nbackoff_max = \"10m\"\n");

    let report = notifier.run_once().await.unwrap();
    assert_eq!(report.retried, 1, "{report:?}");
    let (status, attempts, error) = state(&db.pool, id).await;
    assert_eq!((status.as_str(), attempts), ("PENDING", 1));
    assert!(error.as_deref().unwrap().contains("429"), "{error:?}");
    // Retry-After (2 s) replaced the 1-minute backoff, on the database clock.
    let due = due_in(&db.pool, id).await;
    assert!((1.5..=2.0).contains(&due), "due in {due}s");
    assert_eq!(notifier.run_once().await.unwrap().claimed, 0, "not due before the hint");

    make_due(&db.pool, id).await;
    let report = notifier.run_once().await.unwrap();
    assert_eq!(report.delivered, 1, "{report:?}");
    assert_eq!(state(&db.pool, id).await, ("DELIVERED".into(), 2, None));
    let requests = sink.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0].headers["webhook-id"], id.to_string());
    assert_eq!(requests[1].headers["webhook-id"], id.to_string(), "the same webhook-id on the retry");
    verify_signature(&requests[1]);
}

#[tokio::test]
async fn retry_after_is_clamped_to_backoff_max() {
    let db = TestDb::new().await;
    let sink = Sink::start(vec![(503, vec![("retry-after", "86400".into())], String::new())]).await;
    let connector = webhook(&db, &sink).await;
    let id = insert_notification(&db.pool, connector, "FIRED").await;
    let notifier = notifier(&db, "[notifier]\nbackoff_base = \"1s\"\nbackoff_max = \"5s\"\n");
    assert_eq!(notifier.run_once().await.unwrap().retried, 1);
    let due = due_in(&db.pool, id).await;
    assert!((4.5..=5.0).contains(&due), "due in {due}s");
}

#[tokio::test]
async fn server_errors_are_retried_with_backoff_then_delivered() {
    let db = TestDb::new().await;
    let sink = Sink::start(vec![(500, vec![], "database down".into()), ok()]).await;
    let connector = webhook(&db, &sink).await;
    let id = insert_notification(&db.pool, connector, "FIRED").await;
    let notifier = notifier(&db, "[notifier]\nbackoff_base = \"10s\"\nbackoff_max = \"1m\"\n");

    assert_eq!(notifier.run_once().await.unwrap().retried, 1);
    let (status, attempts, error) = state(&db.pool, id).await;
    assert_eq!((status.as_str(), attempts), ("PENDING", 1));
    let error = error.unwrap();
    assert!(
        error.contains("API connector \"ops-webhook\"") && error.contains("500") && error.contains("database down"),
        "{error}"
    );
    // First retry: the base with 50–100% jitter.
    let due = due_in(&db.pool, id).await;
    assert!((4.5..=10.0).contains(&due), "due in {due}s");

    make_due(&db.pool, id).await;
    assert_eq!(notifier.run_once().await.unwrap().delivered, 1);
    assert_eq!(state(&db.pool, id).await, ("DELIVERED".into(), 2, None));
    let requests = sink.requests();
    assert_eq!(requests.len(), 2);
    assert!(requests.iter().all(|r| r.headers["webhook-id"] == id.to_string()));
}

#[tokio::test]
async fn retries_stop_after_max_attempts() {
    let db = TestDb::new().await;
    let sink = Sink::start(vec![(503, vec![], "busy".into())]).await;
    let connector = webhook(&db, &sink).await;
    let id = insert_notification(&db.pool, connector, "FIRED").await;
    let notifier = notifier(&db, "[notifier]\nmax_attempts = 2\n");
    assert_eq!(notifier.run_once().await.unwrap().retried, 1);
    make_due(&db.pool, id).await;
    assert_eq!(notifier.run_once().await.unwrap().failed, 1);
    let (status, attempts, error) = state(&db.pool, id).await;
    assert_eq!((status.as_str(), attempts), ("FAILED", 2));
    assert!(error.as_deref().unwrap().contains("gave up after 2 attempts"), "{error:?}");
    make_due(&db.pool, id).await;
    assert_eq!(notifier.run_once().await.unwrap().claimed, 0);
    assert_eq!(sink.requests().len(), 2);
}

#[tokio::test]
async fn gone_webhooks_fail_for_good_with_the_error_visible() {
    let db = TestDb::new().await;
    let sink = Sink::start(vec![(410, vec![], "this hook was deleted".into())]).await;
    let connector = webhook(&db, &sink).await;
    let id = insert_notification(&db.pool, connector, "RESOLVED").await;
    let notifier = notifier(&db, "");

    assert_eq!(notifier.run_once().await.unwrap().failed, 1);
    let (status, attempts, error) = state(&db.pool, id).await;
    assert_eq!((status.as_str(), attempts), ("FAILED", 1));
    let error = error.unwrap();
    assert!(error.contains("410") && error.contains("this hook was deleted"), "{error}");
    // No more attempts, even once due.
    make_due(&db.pool, id).await;
    assert_eq!(notifier.run_once().await.unwrap().claimed, 0);
    assert_eq!(sink.requests().len(), 1);
}

async fn slack(db: &TestDb, sink: &Sink, name: &str) -> Uuid {
    let config = json!({"url": format!("{}/services/T000/B000/XXXX", sink.base), "allow_private": true});
    insert_connector(&db.pool, name, "SLACK", config).await
}

#[tokio::test]
async fn slack_messages_are_rendered_from_the_payload() {
    let db = TestDb::new().await;
    let sink = Sink::start(vec![ok()]).await;
    let connector = slack(&db, &sink, "oncall-slack").await;
    let id = insert_notification(&db.pool, connector, "FIRED").await;
    assert_eq!(notifier(&db, "").run_once().await.unwrap().delivered, 1);
    assert_eq!(state(&db.pool, id).await.0, "DELIVERED");
    let requests = sink.requests();
    let message: Value = serde_json::from_str(&requests[0].body).unwrap();
    let text = message["text"].as_str().unwrap();
    let blocks = message["blocks"].as_array().unwrap();
    assert!(!blocks.is_empty() && blocks.len() <= 50);
    for expected in [
        "invoices-start",
        "level 2",
        "3 items",
        "0190aaaa-0000-7000-8000-000000000002",
        "0190bbbb-0000-7000-8000-000000000001",
        "0190cccc-0000-7000-8000-00000000000b",
        "late by 1h 2m 3s",
        "orderly escalations list --rule invoices-start",
    ] {
        assert!(text.contains(expected), "{expected} missing from the text: {text}");
        assert!(message["blocks"].to_string().contains(expected), "{expected} missing from the blocks");
    }
}

#[tokio::test]
async fn slack_channel_not_found_fails_for_good() {
    let db = TestDb::new().await;
    let sink = Sink::start(vec![(404, vec![], "channel_not_found".into())]).await;
    let connector = slack(&db, &sink, "gone-channel").await;
    let id = insert_notification(&db.pool, connector, "FIRED").await;
    let notifier = notifier(&db, "");
    assert_eq!(notifier.run_once().await.unwrap().failed, 1);
    let (status, _, error) = state(&db.pool, id).await;
    assert_eq!(status, "FAILED");
    let error = error.unwrap();
    assert!(error.contains("channel_not_found") && error.contains("SLACK connector \"gone-channel\""), "{error}");
    assert!(!error.contains("XXXX") && !error.contains("/services/"), "the webhook path is its secret: {error}");
}

#[tokio::test]
async fn a_rate_limited_slack_webhook_holds_its_connector_for_the_hint() {
    let db = TestDb::new().await;
    let sink = Sink::start(vec![(429, vec![("retry-after", "30".into())], "rate_limited".into())]).await;
    let connector = slack(&db, &sink, "busy-slack").await;
    let id = insert_notification(&db.pool, connector, "FIRED").await;
    let other = insert_notification(&db.pool, connector, "RESOLVED").await;
    let notifier = notifier(&db, "");
    assert_eq!(notifier.run_once().await.unwrap().retried, 1);
    let due = due_in(&db.pool, id).await;
    assert!((29.0..=30.0).contains(&due), "due in {due}s");
    let held_for: f64 =
        sqlx::query_scalar("SELECT extract(epoch FROM next_send_at - now())::float8 FROM connectors WHERE id = $1")
            .bind(connector)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert!((29.0..=30.0).contains(&held_for), "connector held for {held_for}s");
    // The other message of that connector waits too, though it is due.
    assert!(due_in(&db.pool, other).await <= 0.0);
    assert_eq!(notifier.run_once().await.unwrap().claimed, 0);
    assert_eq!(sink.requests().len(), 1);
}

#[tokio::test]
async fn slack_deliveries_to_one_connector_are_paced_a_second_apart() {
    let db = TestDb::new().await;
    let sink = Sink::start(vec![ok()]).await;
    let connector = slack(&db, &sink, "paced").await;
    let first = insert_notification(&db.pool, connector, "FIRED").await;
    let second = insert_notification(&db.pool, connector, "RESOLVED").await;

    // One round claims one message of the paced connector, not both.
    let notifier = notifier(&db, "[notifier]\npoll_interval = \"50ms\"\n");
    assert_eq!(notifier.run_once().await.unwrap().delivered, 1);
    assert_eq!(notifier.run_once().await.unwrap().claimed, 0, "the connector's next_send_at is in the future");
    let paced_for: f64 =
        sqlx::query_scalar("SELECT extract(epoch FROM next_send_at - now())::float8 FROM connectors WHERE id = $1")
            .bind(connector)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert!(paced_for > 0.5 && paced_for <= 1.0, "next_send_at in {paced_for}s");

    // The loop delivers the second once the interval has passed.
    let stop = CancellationToken::new();
    let running = tokio::spawn(notifier.clone().run(stop.clone()));
    wait_until("both Slack messages delivered", Duration::from_secs(10), || async {
        state(&db.pool, second).await.0 == "DELIVERED"
    })
    .await;
    stop.cancel();
    running.await.unwrap();
    assert_eq!(state(&db.pool, first).await.0, "DELIVERED");
    let requests = sink.requests();
    assert_eq!(requests.len(), 2);
    let apart = requests[1].at.duration_since(requests[0].at);
    assert!(apart >= Duration::from_millis(900), "Slack messages {apart:?} apart");
}

#[tokio::test]
async fn private_addresses_are_refused_unless_allowed() {
    let db = TestDb::new().await;
    let sink = Sink::start(vec![ok()]).await;
    let refused = insert_connector(
        &db.pool,
        "internal-hook",
        "API",
        json!({"url": format!("{}/hook", sink.base), "secret": secret()}),
    )
    .await;
    let by_name = insert_connector(
        &db.pool,
        "localhost-slack",
        "SLACK",
        json!({"url": sink.base.replace("127.0.0.1", "localhost") + "/services/x"}),
    )
    .await;
    let a = insert_notification(&db.pool, refused, "FIRED").await;
    let b = insert_notification(&db.pool, by_name, "FIRED").await;
    let report = notifier(&db, "").run_once().await.unwrap();
    assert_eq!(report.failed, 2, "{report:?}");
    for id in [a, b] {
        let (status, attempts, error) = state(&db.pool, id).await;
        assert_eq!((status.as_str(), attempts), ("FAILED", 1));
        let error = error.unwrap();
        assert!(error.contains("private address") && error.contains("allow_private = true"), "{error}");
    }
    assert!(sink.requests().is_empty(), "nothing was sent to a private address");
}

#[tokio::test]
async fn a_claim_left_by_a_dead_notifier_is_delivered_after_its_lease_with_the_same_id() {
    let db = TestDb::new().await;
    let sink = Sink::start(vec![ok()]).await;
    let connector = webhook(&db, &sink).await;
    let id = insert_notification(&db.pool, connector, "FIRED").await;

    // A notifier claims it and dies before delivering (kill -9: nothing else is written).
    let dead = notifications::claim(&db.pool, 32, Duration::from_secs(60), &PACING).await.unwrap();
    assert_eq!(dead.iter().map(|c| c.id).collect::<Vec<_>>(), [id]);
    let notifier = notifier(&db, "");
    assert_eq!(notifier.run_once().await.unwrap().claimed, 0, "a live lease is respected");
    assert!(sink.requests().is_empty());

    // Its lease passes.
    sqlx::query("UPDATE notifications SET locked_until = now() - interval '1 second' WHERE id = $1")
        .bind(id)
        .execute(&db.pool)
        .await
        .unwrap();
    let report = notifier.run_once().await.unwrap();
    assert_eq!(report.delivered, 1, "{report:?}");
    assert_eq!(state(&db.pool, id).await, ("DELIVERED".into(), 2, None), "the lost delivery is counted");
    let requests = sink.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].headers["webhook-id"], id.to_string());
    verify_signature(&requests[0]);
}

#[tokio::test]
async fn invalid_connectors_fail_with_a_clear_error() {
    let db = TestDb::new().await;
    let cases = [
        ("no-url", "API", json!({"secret": secret()}), "missing field `url`"),
        (
            "typo",
            "SLACK",
            json!({"url": "https://hooks.example/x", "allow_privat": true}),
            "unknown field `allow_privat`",
        ),
        ("ftp", "API", json!({"url": "ftp://h.example/x", "secret": secret()}), "http:// or https://"),
        ("bad-timeout", "SLACK", json!({"url": "https://hooks.example/x", "timeout": "0s"}), "config.timeout"),
        ("database", "DATABASE", json!({}), "connector type DATABASE cannot deliver notifications"),
        ("no-to", "EMAIL", json!({"host": "127.0.0.1", "from": "orderly@example.com", "to": []}), "to must name"),
        ("bad-from", "EMAIL", json!({"host": "127.0.0.1", "from": "not an address", "to": ["a@example.com"]}), "from:"),
    ];
    let mut ids = Vec::new();
    for (name, kind, config, _) in &cases {
        let connector = insert_connector(&db.pool, name, kind, config.clone()).await;
        ids.push(insert_notification(&db.pool, connector, "FIRED").await);
    }
    let report = notifier(&db, "").run_once().await.unwrap();
    assert_eq!(report.failed, cases.len(), "{report:?}");
    for (id, (name, _, _, expected)) in ids.into_iter().zip(cases) {
        let (status, _, error) = state(&db.pool, id).await;
        let error = error.unwrap();
        assert_eq!(status, "FAILED", "{name}");
        assert!(error.contains(expected) && error.contains(name), "{name}: {error}");
    }
}

#[tokio::test]
async fn connector_secrets_never_appear_in_last_error() {
    let db = TestDb::new().await;
    // Receivers that echo secrets they were sent in their error answers.
    let secret_key = format!("whsec_{}", STANDARD.encode(b"SECRET-key-material"));
    let sink = Sink::start(vec![(500, vec![], format!("bad token SECRET-url-token, key {secret_key}"))]).await;
    let slack_sink = Sink::start(vec![(500, vec![], "no hook at /services/T0/B0/SECRET-slack-path".into())]).await;
    let closed_port = free_port();
    let connectors = [
        (
            "API",
            json!({"url": format!("{}/hook?token=SECRET-url-token", sink.base.replace("http://", "http://SECRET-user:SECRET-pass@")),
                   "secret": secret_key, "allow_private": true}),
        ),
        (
            "API",
            json!({"url": format!("{}/hook", sink.base), "secret": "whsec_!!SECRET-not-base64", "allow_private": true}),
        ),
        ("API", json!({"url": format!("{}/hook", sink.base), "secret": secret(), "allow_private": "SECRET-as-a-flag"})),
        (
            "SLACK",
            json!({"url": format!("{}/services/T0/B0/SECRET-slack-path", slack_sink.base), "allow_private": true}),
        ),
        (
            "EMAIL",
            json!({"host": "127.0.0.1", "port": closed_port, "tls": "starttls", "username": "orderly",
                   "password": "SECRET-smtp-password", "from": "orderly@example.com", "to": ["oncall@example.com"]}),
        ),
        (
            "EMAIL",
            json!({"host": "127.0.0.1", "port": closed_port, "tls": "none", "username": "orderly",
                   "password": "SECRET-smtp-password", "from": "orderly@example.com", "to": ["oncall@example.com"]}),
        ),
    ];
    for (n, (kind, config)) in connectors.into_iter().enumerate() {
        let connector = insert_connector(&db.pool, &format!("c{n}"), kind, config).await;
        insert_notification(&db.pool, connector, "FIRED").await;
    }
    let report = notifier(&db, "").run_once().await.unwrap();
    assert_eq!(report.claimed, 6, "{report:?}");
    assert_eq!(report.delivered, 0, "{report:?}");
    let errors: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT c.name, n.last_error FROM notifications n JOIN connectors c ON c.id = n.connector_id ORDER BY c.name",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    for (name, error) in &errors {
        let error = error.as_deref().unwrap_or_else(|| panic!("{name} has no last_error"));
        assert!(!error.contains("SECRET"), "{name}: {error}");
        assert!(!error.contains(&STANDARD.encode(b"SECRET-key-material")), "{name}: {error}");
    }
    let by_name: HashMap<_, _> = errors.into_iter().map(|(name, error)| (name, error.unwrap())).collect();
    assert!(by_name["c0"].contains("500") && by_name["c0"].contains("token=<redacted>"), "{}", by_name["c0"]);
    assert!(by_name["c1"].contains("whsec_"), "{}", by_name["c1"]);
    assert!(by_name["c2"].contains("allow_private"), "{}", by_name["c2"]);
    assert!(by_name["c3"].contains("500"), "{}", by_name["c3"]);
    assert!(by_name["c4"].contains(&format!("127.0.0.1:{closed_port}")), "{}", by_name["c4"]);
    assert!(by_name["c5"].contains("not sent in clear"), "{}", by_name["c5"]);
}

// ---- Email against a real SMTP server (aiosmtpd) ----

/// A Python that has aiosmtpd: `ORDERLY_TEST_PYTHON`, else Debian's (where
/// `apt-get install python3-aiosmtpd` puts it), else the first `python3` on PATH. Missing
/// aiosmtpd fails the test: it is installed by `.ci/run`, never skipped.
fn smtp_python() -> String {
    let mut candidates: Vec<String> = std::env::var("ORDERLY_TEST_PYTHON").into_iter().collect();
    candidates.extend(["/usr/bin/python3".to_owned(), "python3".to_owned()]);
    for python in &candidates {
        let has = std::process::Command::new(python)
            .args(["-c", "import aiosmtpd"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if has {
            return python.clone();
        }
    }
    panic!(
        "no Python with aiosmtpd among {candidates:?}: install it (`apt-get install -y python3-aiosmtpd`, as .ci/run does) \
         or point ORDERLY_TEST_PYTHON at a Python that has it"
    );
}

/// A free port on 127.0.0.1 (bound and released; the server binds it next).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// aiosmtpd as a child process, its stdout (the messages it received) collected.
struct SmtpServer {
    port: u16,
    output: Arc<Mutex<String>>,
    _child: tokio::process::Child,
}

impl SmtpServer {
    async fn start(args: &[String], port: u16) -> SmtpServer {
        let mut child = tokio::process::Command::new(smtp_python())
            .args(args)
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 starts");
        let output = Arc::new(Mutex::new(String::new()));
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn tokio::io::AsyncRead + Send + Unpin>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let output = output.clone();
            tokio::spawn(async move {
                let mut lines = tokio::io::BufReader::new(stream).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let mut output = output.lock().unwrap();
                    output.push_str(&line);
                    output.push('\n');
                }
            });
        }
        let started = Instant::now();
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("aiosmtpd exited with {status}: {}", output.lock().unwrap());
            }
            assert!(started.elapsed() < Duration::from_secs(20), "aiosmtpd did not listen: {}", output.lock().unwrap());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        SmtpServer { port, output, _child: child }
    }

    /// `python3 -m aiosmtpd -n -l 127.0.0.1:PORT` plus `extra` arguments.
    async fn cli(extra: &[String]) -> SmtpServer {
        let port = free_port();
        let mut args = vec!["-m".to_owned(), "aiosmtpd".into(), "-n".into(), "-l".into(), format!("127.0.0.1:{port}")];
        args.extend_from_slice(extra);
        Self::start(&args, port).await
    }

    /// The messages received so far, as the Debugging handler prints them.
    async fn wait_for_message(&self) -> String {
        wait_until("aiosmtpd to receive a message", Duration::from_secs(10), || async {
            self.output.lock().unwrap().contains("END MESSAGE")
        })
        .await;
        let output = self.output.lock().unwrap().clone();
        // Undo quoted-printable soft line breaks and `=` escapes, so lines read whole.
        output.replace("=\n", "").replace("=3D", "=")
    }
}

/// A self-signed certificate for 127.0.0.1 (openssl ships with the base image).
struct Cert {
    dir: std::path::PathBuf,
}

impl Cert {
    fn new() -> Cert {
        let dir = std::env::temp_dir().join(format!("orderly-smtp-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let status = std::process::Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
            .args(["-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"])
            .arg("-keyout")
            .arg(dir.join("key.pem"))
            .arg("-out")
            .arg(dir.join("cert.pem"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("openssl runs");
        assert!(status.success(), "openssl made a certificate");
        Cert { dir }
    }

    fn cert(&self) -> String {
        self.dir.join("cert.pem").display().to_string()
    }

    fn key(&self) -> String {
        self.dir.join("key.pem").display().to_string()
    }
}

impl Drop for Cert {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn email_config(port: u16, tls: &str) -> Value {
    json!({"host": "127.0.0.1", "port": port, "tls": tls, "from": "orderly@example.com",
           "to": ["oncall@example.com", "lead@example.com"], "accept_invalid_certs": true, "timeout": "10s"})
}

fn assert_rendered_email(message: &str, id: Uuid) {
    for expected in [
        "Subject: [orderly] SLA breached: \"invoices-start\" level 2, 3 items late",
        &format!("Message-ID: <{id}@orderly.notifications>"),
        "SLA rule \"invoices-start\" breached level 2: 3 items past 15m",
        "item 0190aaaa-0000-7000-8000-000000000001 (INVOICE, HIGH), order 0190bbbb-0000-7000-8000-000000000001",
        "tenant 0190cccc-0000-7000-8000-00000000000b: late by 1h 2m 3s",
        "Tenants: 0190cccc-0000-7000-8000-00000000000a, 0190cccc-0000-7000-8000-00000000000b",
        "How to act: orderly escalations list --rule invoices-start",
    ] {
        assert!(message.contains(expected), "missing {expected:?} in:\n{message}");
    }
}

#[tokio::test]
async fn email_is_delivered_over_plain_smtp() {
    let db = TestDb::new().await;
    let server = SmtpServer::cli(&[]).await;
    let connector = insert_connector(&db.pool, "oncall-mail", "EMAIL", email_config(server.port, "none")).await;
    let id = insert_notification(&db.pool, connector, "FIRED").await;
    let report = notifier(&db, "").run_once().await.unwrap();
    assert_eq!(report.delivered, 1, "{report:?}: {:?}", state(&db.pool, id).await);
    assert_eq!(state(&db.pool, id).await, ("DELIVERED".into(), 1, None));
    assert_rendered_email(&server.wait_for_message().await, id);
}

#[tokio::test]
async fn email_is_delivered_over_implicit_tls() {
    let db = TestDb::new().await;
    let cert = Cert::new();
    let server = SmtpServer::cli(&["--smtpscert".into(), cert.cert(), "--smtpskey".into(), cert.key()]).await;
    let connector = insert_connector(&db.pool, "tls-mail", "EMAIL", email_config(server.port, "tls")).await;
    let id = insert_notification(&db.pool, connector, "FIRED").await;
    let report = notifier(&db, "").run_once().await.unwrap();
    assert_eq!(report.delivered, 1, "{report:?}: {:?}", state(&db.pool, id).await);
    assert_rendered_email(&server.wait_for_message().await, id);
}

/// aiosmtpd requiring STARTTLS and then AUTH with one user name and password.
const STARTTLS_AUTH_SERVER: &str = r#"
import ssl, sys, time
from aiosmtpd.controller import Controller
from aiosmtpd.handlers import Debugging
from aiosmtpd.smtp import AuthResult, LoginPassword
port, cert, key, user, password = sys.argv[1:6]
context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
context.load_cert_chain(cert, key)
def authenticate(server, session, envelope, mechanism, data):
    ok = isinstance(data, LoginPassword) and data.login.decode() == user and data.password.decode() == password
    print("AUTH", mechanism, "accepted" if ok else "refused", flush=True)
    return AuthResult(success=ok, handled=False)
controller = Controller(Debugging(sys.stdout), hostname="127.0.0.1", port=int(port), tls_context=context,
                        require_starttls=True, authenticator=authenticate, auth_require_tls=True)
controller.start()
while True:
    time.sleep(3600)
"#;

#[tokio::test]
async fn email_is_delivered_over_starttls_with_authentication() {
    let db = TestDb::new().await;
    let cert = Cert::new();
    let port = free_port();
    let args = ["-c".to_owned(), STARTTLS_AUTH_SERVER.into(), port.to_string(), cert.cert(), cert.key()];
    let server =
        SmtpServer::start(&[&args[..], &["orderly".into(), "SECRET-right-password".into()]].concat(), port).await;
    let mut config = email_config(port, "starttls");
    config["username"] = json!("orderly");
    config["password"] = json!("SECRET-right-password");
    let good = insert_connector(&db.pool, "auth-mail", "EMAIL", config.clone()).await;
    config["password"] = json!("SECRET-wrong-password");
    let bad = insert_connector(&db.pool, "wrong-password", "EMAIL", config).await;
    let good_id = insert_notification(&db.pool, good, "FIRED").await;
    let bad_id = insert_notification(&db.pool, bad, "FIRED").await;

    let report = notifier(&db, "").run_once().await.unwrap();
    assert_eq!(state(&db.pool, good_id).await, ("DELIVERED".into(), 1, None), "{report:?}");
    assert_rendered_email(&server.wait_for_message().await, good_id);
    assert!(
        server.output.lock().unwrap().contains("AUTH PLAIN accepted")
            || server.output.lock().unwrap().contains("AUTH LOGIN accepted")
    );
    // A refused login is SMTP 535, permanent; the password stays out of the error.
    let (status, _, error) = state(&db.pool, bad_id).await;
    let error = error.unwrap();
    assert_eq!(status, "FAILED", "{error}; the server said:\n{}", server.output.lock().unwrap());
    assert!(error.contains("535") && !error.contains("SECRET"), "{error}");
}

/// The claim runs on the engine's connections, whose planner settings price table scans out
/// of reach: it must read notifications through their partial index and connectors by key,
/// or each claim would cost a scan of the outbox (and a JIT compilation).
#[tokio::test]
async fn the_claim_reads_due_notifications_through_their_index() {
    let db = TestDb::new().await;
    let mut conn = db.pool.acquire().await.unwrap();
    for (name, value) in orderly::db::ENGINE_PLANNER_SETTINGS {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("SET {name} = {value}"))).execute(&mut *conn).await.unwrap();
    }
    let prepare = format!("PREPARE claim(bigint, float8, text[], float8[]) AS {}", notifications::CLAIM_SQL);
    sqlx::raw_sql(sqlx::AssertSqlSafe(prepare)).execute(&mut *conn).await.unwrap();
    let plan: Vec<String> =
        sqlx::query_scalar("EXPLAIN EXECUTE claim(32, 60, '{SLACK}', '{1}')").fetch_all(&mut *conn).await.unwrap();
    let plan = plan.join("\n");
    assert!(!plan.contains("Seq Scan"), "{plan}");
    assert!(plan.contains("idx_notifications_due") && plan.contains("connectors_pkey"), "{plan}");
}
