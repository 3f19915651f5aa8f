//! The PagerDuty and Telegram connectors (migration 0024) against real-shaped receivers on
//! 127.0.0.1: axum servers answering as PagerDuty's Events API v2 (`POST /v2/enqueue`, 202
//! `{"status":"success","dedup_key":...}`, 400 for an invalid event) and as the Telegram Bot
//! API (`POST /bot{token}/sendMessage`, `{"ok":true,"result":{...}}`, a 429 with
//! `parameters.retry_after`). The sweeper fires and resolves by hand (time is backdated on the
//! database clock, never waited for); the notifier runs as in the daemon.

use crate::common::*;
use crate::notify::insert_connector;
use crate::sla::rule;
use orderly::db;
use orderly::db::notifications;
use orderly::sla::channels::PACING;
use orderly::sla::notifier::Notifier;
use orderly::sla::sweeper::Sweeper;
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const ROUTING_KEY: &str = "R0UTINGKEY0123456789abcdef012345";
const BOT_TOKEN: &str = "123456789:AAH-test_bot_token";
const CHAT_ID: i64 = -1001234567890;
const PUBLIC_URL: &str = "https://orderly.example.com/ops";

/// One request a receiver got.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    body: Value,
    at: Instant,
}

/// What a receiver answers a request (path, body, how many came before it): status, JSON.
type Reply = dyn Fn(&str, &Value, usize) -> (u16, Value) + Send + Sync;

/// A real HTTP receiver on 127.0.0.1 that records every request and answers through `reply`.
struct Receiver {
    base: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Receiver {
    async fn start(reply: impl Fn(&str, &Value, usize) -> (u16, Value) + Send + Sync + 'static) -> Receiver {
        use axum::extract::State;
        use axum::http::{Method, StatusCode, Uri};
        type Shared = (Arc<Reply>, Arc<Mutex<Vec<Seen>>>);
        async fn handle(
            State((reply, seen)): State<Shared>,
            method: Method,
            uri: Uri,
            body: String,
        ) -> (StatusCode, [(&'static str, &'static str); 1], String) {
            let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
            let before = {
                let mut seen = seen.lock().unwrap();
                seen.push(Seen {
                    method: method.to_string(),
                    path: uri.path().to_owned(),
                    body: body.clone(),
                    at: Instant::now(),
                });
                seen.len() - 1
            };
            let (status, answer) = reply(uri.path(), &body, before);
            (StatusCode::from_u16(status).unwrap(), [("content-type", "application/json")], answer.to_string())
        }
        let seen = Arc::new(Mutex::new(Vec::new()));
        let shared: Shared = (Arc::new(reply), seen.clone());
        let app = axum::Router::new().fallback(handle).with_state(shared);
        let base = serve(app).await;
        Receiver { base, seen }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// PagerDuty's Events API v2 as it answers: 202 for a well-formed event of the routing key,
/// 400 otherwise, 404 anywhere but `/v2/enqueue`.
async fn pagerduty() -> Receiver {
    Receiver::start(|path, event, _| {
        if path != "/v2/enqueue" {
            return (404, json!({"status": "not found"}));
        }
        let action = event["event_action"].as_str().unwrap_or_default();
        let mut errors = Vec::new();
        if event["routing_key"] != ROUTING_KEY {
            errors.push("'routing_key' is invalid");
        }
        if !["trigger", "acknowledge", "resolve"].contains(&action) {
            errors.push("'event_action' is invalid");
        }
        if action != "trigger" && event["dedup_key"].as_str().is_none_or(str::is_empty) {
            errors.push("'dedup_key' is required for acknowledge and resolve");
        }
        if action == "trigger"
            && ["summary", "source", "severity"].iter().any(|k| event["payload"][k].as_str().is_none_or(str::is_empty))
        {
            errors.push("'payload' needs summary, source and severity");
        }
        if errors.is_empty() {
            (202, json!({"status": "success", "message": "Event processed", "dedup_key": event["dedup_key"]}))
        } else {
            (400, json!({"status": "invalid event", "message": "Event object is invalid", "errors": errors}))
        }
    })
    .await
}

/// The Telegram Bot API as it answers: 429 with `parameters.retry_after` (1 s) to the first
/// message, then `{"ok": true, "result": <the message>}`; 401 for another token.
async fn telegram() -> Receiver {
    Receiver::start(|path, request, before| {
        let expected = format!("/bot{BOT_TOKEN}/sendMessage");
        if path != expected {
            return (401, json!({"ok": false, "error_code": 401, "description": "Unauthorized"}));
        }
        if before == 0 {
            return (
                429,
                json!({"ok": false, "error_code": 429, "description": "Too Many Requests: retry after 1",
                       "parameters": {"retry_after": 1}}),
            );
        }
        let result = json!({"message_id": before, "date": chrono::Utc::now().timestamp(),
                            "chat": {"id": request["chat_id"], "type": "supergroup", "title": "on-call"},
                            "text": request["text"]});
        (200, json!({"ok": true, "result": result}))
    })
    .await
}

fn events(receiver: &Receiver) -> Vec<(String, String)> {
    receiver
        .seen()
        .iter()
        .map(|s| (s.body["event_action"].as_str().unwrap_or("?").to_owned(), s.body["dedup_key"].to_string()))
        .collect()
}

/// A breach of two items goes to PagerDuty as one incident and to Telegram as one message,
/// both linking to the escalations page; acknowledging both escalations in orderly
/// acknowledges the incident (one of them is not enough), and resolving both (one by hand, one
/// by the sweeper when its item is done) resolves it, all under the trigger's dedup_key.
/// Telegram's 429 is retried after its `retry_after`, not the backoff.
#[tokio::test]
async fn pagerduty_follows_orderly_and_telegram_hears_the_breach() {
    let db = TestDb::new().await;
    let (pd, tg) = (pagerduty().await, telegram().await);
    insert_connector(
        &db.pool,
        "pager",
        "PAGERDUTY",
        json!({"routing_key": ROUTING_KEY, "url": format!("{}/v2/enqueue", pd.base), "severity": "error",
               "allow_private": true}),
    )
    .await;
    insert_connector(
        &db.pool,
        "oncall-telegram",
        "TELEGRAM",
        json!({"bot_token": BOT_TOKEN, "chat_id": CHAT_ID, "api_url": tg.base, "allow_private": true}),
    )
    .await;
    let rule_id =
        rule(&db, "tickets start within 1m", "TIME_TO_START", &[(1, "1 minute", &["pager", "oncall-telegram"])]).await;
    let order = insert_order(&db.pool, "HIGH").await;
    let first = insert_item(&db.pool, order, "TICKET", "{}").await;
    let second = insert_item(&db.pool, order, "TICKET", "{}").await;
    sqlx::query("UPDATE work_items SET run_at = now() - interval '90 seconds'").execute(&db.pool).await.unwrap();

    let settings = db.settings(&format!(
        "[admin]\npublic_url = \"{PUBLIC_URL}/\"\n\
         [notifier]\npoll_interval = \"50ms\"\nbackoff_base = \"50ms\"\nbackoff_max = \"5s\"\n"
    ));
    let sweeper = Sweeper {
        pool: db.pool.clone(),
        settings: Arc::new(settings.clone()),
        metrics: Default::default(),
        topology: orderly::db::distributed::Topology::Single,
    };
    let notifier = Notifier::new(db.pool.clone(), settings.notifier.clone()).unwrap();
    let stop = CancellationToken::new();
    let running = tokio::spawn(notifier.run(stop.clone()));

    let fired = sweeper.run_once().await.unwrap();
    assert_eq!(fired.fired, 2, "{fired:?}");
    let dedup_key: String =
        sqlx::query_scalar("SELECT dedup_key FROM notifications WHERE kind = 'FIRED' AND dedup_key IS NOT NULL")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert!(dedup_key.starts_with(&format!("orderly:{rule_id}:L1:")), "{dedup_key}");
    wait_until("the trigger and the Telegram message", Duration::from_secs(20), || async {
        pd.seen().len() == 1 && tg.seen().len() == 2
    })
    .await;

    // PagerDuty: one trigger for the group, with the key, a summary and the link.
    let trigger = &pd.seen()[0];
    assert_eq!((trigger.method.as_str(), trigger.path.as_str()), ("POST", "/v2/enqueue"));
    let event = &trigger.body;
    assert_eq!(event["event_action"], "trigger");
    assert_eq!(event["dedup_key"], dedup_key.as_str());
    assert_eq!(event["payload"]["summary"], "SLA breached: \"tickets start within 1m\" level 1, 2 items late");
    assert_eq!(
        (event["payload"]["severity"].as_str(), event["payload"]["source"].as_str()),
        (Some("error"), Some("orderly"))
    );
    assert_eq!(event["payload"]["custom_details"]["count"], 2);
    assert_eq!(event["links"], json!([{"href": format!("{PUBLIC_URL}/escalations"), "text": "Open in orderly"}]));

    // Telegram: refused once with retry_after = 1, then sent 1 s later (the backoff is 50 ms).
    let messages = tg.seen();
    assert_eq!(messages[0].body, messages[1].body, "the retry sends the same message");
    let waited = messages[1].at - messages[0].at;
    assert!(waited >= Duration::from_millis(900), "retried after {waited:?}, not after retry_after");
    let message = &messages[1].body;
    assert_eq!(
        (message["chat_id"].as_i64(), message["disable_web_page_preview"].as_bool()),
        (Some(CHAT_ID), Some(true))
    );
    assert!(message.get("parse_mode").is_none(), "plain text unless configured: {message}");
    let text = message["text"].as_str().unwrap();
    for expected in [
        "SLA breached: \"tickets start within 1m\" level 1, 2 items late",
        &format!("Open in orderly: {PUBLIC_URL}/escalations\n"),
        &format!("item {first}"),
        &format!("item {second}"),
    ] {
        assert!(text.contains(expected), "missing {expected:?} in\n{text}");
    }

    // Acknowledging one escalation of the two leaves the incident alone; the second
    // acknowledges it.
    let escalation_of = |item: Uuid| {
        let pool = db.pool.clone();
        async move {
            sqlx::query_scalar::<_, Uuid>("SELECT id FROM escalations WHERE work_item_id = $1")
                .bind(item)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    let (one, two) = (escalation_of(first).await, escalation_of(second).await);
    orderly::actions::act_on_escalation(&db.pool, one, db::sla::Action::Acknowledge, "oncall", Some("looking"))
        .await
        .unwrap();
    assert_eq!(count(&db.pool, "SELECT count(*) FROM notifications WHERE kind = 'ACKNOWLEDGED'").await, 0);
    orderly::actions::act_on_escalation(&db.pool, two, db::sla::Action::Acknowledge, "oncall", None).await.unwrap();
    wait_until("the acknowledge", Duration::from_secs(20), || async { pd.seen().len() == 2 }).await;
    assert_eq!(events(&pd)[1], ("acknowledge".to_owned(), format!("\"{dedup_key}\"")));

    // One is resolved by hand; the other when its item is done (the sweeper), which resolves
    // the incident, and tells Telegram, linking to that escalation's page.
    orderly::actions::act_on_escalation(&db.pool, one, db::sla::Action::Resolve, "oncall", Some("fixed"))
        .await
        .unwrap();
    assert_eq!(count(&db.pool, "SELECT count(*) FROM notifications WHERE kind = 'RESOLVED'").await, 0);
    sqlx::query("UPDATE work_items SET status = 'COMPLETED' WHERE id = $1")
        .bind(second)
        .execute(&db.pool)
        .await
        .unwrap();
    let resolved = sweeper.run_once().await.unwrap();
    assert_eq!(resolved.resolved, 1, "{resolved:?}");
    wait_until("the resolve and the resolved message", Duration::from_secs(20), || async {
        pd.seen().len() == 3 && tg.seen().len() == 3
    })
    .await;
    let expected: Vec<(String, String)> = ["trigger", "acknowledge", "resolve"]
        .iter()
        .map(|action| (action.to_string(), format!("\"{dedup_key}\"")))
        .collect();
    assert_eq!(events(&pd), expected, "one incident, followed to its end");
    let resolved_text = tg.seen()[2].body["text"].as_str().unwrap().to_owned();
    assert!(resolved_text.starts_with("SLA resolved: \"tickets start within 1m\""), "{resolved_text}");
    assert!(resolved_text.contains(&format!("Open in orderly: {PUBLIC_URL}/escalations/{two}\n")), "{resolved_text}");

    wait_until("the outbox to be delivered", Duration::from_secs(20), || async {
        count(&db.pool, "SELECT count(*) FROM notifications WHERE status <> 'DELIVERED'").await == 0
    })
    .await;
    stop.cancel();
    running.await.unwrap();
    // `orderly escalations show` lists the incident's events with the other messages.
    let (_, sent) = db::sla::escalation(&db.pool, two).await.unwrap();
    let mut kinds: Vec<String> = sent.iter().filter(|n| n.connector == "pager").map(|n| n.kind.clone()).collect();
    kinds.sort();
    assert_eq!(kinds, ["ACKNOWLEDGED", "FIRED", "RESOLVED"]);
}

/// An incident's acknowledge and resolve are not sent while its trigger is still being
/// retried (nor the resolve while the acknowledge is): PagerDuty would open the incident after
/// it was resolved. Other notifications are not held.
#[tokio::test]
async fn an_incidents_acknowledge_and_resolve_wait_for_its_trigger() {
    let db = TestDb::new().await;
    let pager = insert_connector(&db.pool, "pager", "PAGERDUTY", json!({"routing_key": ROUTING_KEY})).await;
    let other = insert_connector(&db.pool, "pager-2", "PAGERDUTY", json!({"routing_key": ROUTING_KEY})).await;
    let insert = |connector: Uuid, kind: &'static str, key: &'static str, due_in_seconds: i64| {
        let pool = db.pool.clone();
        async move {
            sqlx::query_scalar::<_, Uuid>(
                "INSERT INTO notifications (connector_id, level, kind, payload, dedup_key, next_attempt_at)
                 VALUES ($1, 1, $2, '{}', $3, now() + $4 * interval '1 second') RETURNING id",
            )
            .bind(connector)
            .bind(kind)
            .bind(key)
            .bind(due_in_seconds)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    // The trigger failed once and waits for its retry; its acknowledge and resolve are due.
    let trigger = insert(pager, "FIRED", "k", 60).await;
    let acknowledge = insert(pager, "ACKNOWLEDGED", "k", 0).await;
    let resolve = insert(pager, "RESOLVED", "k", 0).await;
    // The same key on another connector is another incident.
    let elsewhere = insert(other, "RESOLVED", "k", 0).await;
    let claim = || async {
        let claimed = notifications::claim(&db.pool, 32, Duration::from_secs(60), &PACING).await.unwrap();
        for c in &claimed {
            notifications::release(&db.pool, (c.id, None), c.attempts).await.unwrap();
        }
        let mut ids: Vec<Uuid> = claimed.iter().map(|c| c.id).collect();
        ids.sort();
        ids
    };
    let both = |one: Uuid| {
        let mut ids = vec![one, elsewhere];
        ids.sort();
        ids
    };
    assert_eq!(claim().await, [elsewhere], "nothing of the incident before its trigger");
    sqlx::query("UPDATE notifications SET next_attempt_at = now() WHERE id = $1")
        .bind(trigger)
        .execute(&db.pool)
        .await
        .unwrap();
    assert_eq!(claim().await, both(trigger), "the trigger first");
    notifications::mark_delivered(&db.pool, trigger, None).await.unwrap();
    assert_eq!(claim().await, both(acknowledge), "then the acknowledge");
    notifications::mark_delivered(&db.pool, acknowledge, None).await.unwrap();
    assert_eq!(claim().await, both(resolve), "then the resolve");
    // The unique key keeps one event of each kind per incident.
    let twice = sqlx::query("INSERT INTO notifications (connector_id, level, kind, payload, dedup_key) VALUES ($1, 1, 'RESOLVED', '{}', 'k')")
        .bind(pager)
        .execute(&db.pool)
        .await;
    assert!(twice.is_err(), "a second resolve of one incident is refused");
}

/// Under `orderly roles`: the daemon's sweeper opens and resolves the incident, and on-call
/// (who cannot write the outbox) acknowledges it, through `orderly_incident_events`.
#[tokio::test]
async fn incidents_follow_orderly_under_least_privilege_roles() {
    // The roles are dropped after the database, which holds their grants.
    let roles = crate::roles::TestRoles::new();
    let db = TestDb::new().await;
    let out = crate::cli::orderly(&db.url, &["roles", "--prefix", &roles.prefix]);
    assert!(out.status.success(), "{}", crate::cli::text(&out));
    insert_connector(&db.pool, "pager", "PAGERDUTY", json!({"routing_key": ROUTING_KEY})).await;
    rule(&db, "tickets start within 1m", "TIME_TO_START", &[(1, "1 minute", &["pager"])]).await;
    let order = insert_order(&db.pool, "HIGH").await;
    let item = insert_item(&db.pool, order, "TICKET", "{}").await;
    sqlx::query("UPDATE work_items SET run_at = now() - interval '90 seconds'").execute(&db.pool).await.unwrap();
    let daemon = sqlx::PgPool::connect(&roles.url(&db, "daemon")).await.unwrap();
    let oncall = sqlx::PgPool::connect(&roles.url(&db, "oncall")).await.unwrap();
    let sweeper = Sweeper {
        pool: daemon.clone(),
        settings: Arc::new(db.settings("")),
        metrics: Default::default(),
        topology: orderly::db::distributed::Topology::Single,
    };
    assert_eq!(sweeper.run_once().await.unwrap().fired, 1);
    let escalation: Uuid = sqlx::query_scalar("SELECT id FROM escalations").fetch_one(&db.pool).await.unwrap();
    db::sla::act(&oncall, escalation, db::sla::Action::Acknowledge, "oncall", None).await.unwrap();
    sqlx::query("UPDATE work_items SET status = 'COMPLETED' WHERE id = $1").bind(item).execute(&db.pool).await.unwrap();
    assert_eq!(sweeper.run_once().await.unwrap().resolved, 1);
    let kinds: Vec<String> =
        sqlx::query_scalar("SELECT kind FROM notifications WHERE dedup_key IS NOT NULL ORDER BY kind")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(kinds, ["ACKNOWLEDGED", "FIRED", "RESOLVED"]);
    daemon.close().await;
    oncall.close().await;
}
