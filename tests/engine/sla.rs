//! SLA rules: levels fire once per item (even with two sweepers at once), breaches of one
//! level go out as one grouped message per connector, acknowledging stops later levels,
//! reaching the awaited state resolves and notifies, bad rules are reported, not fatal, and
//! the sweep's statements read indexes, not the history. Time is never waited for: rows are
//! backdated on the database clock.

use crate::common::*;
use orderly::db;
use orderly::sla::sweeper::Sweeper;
use serde_json::Value;
use std::sync::Arc;
use uuid::Uuid;

fn sweeper(db: &TestDb) -> Sweeper {
    Sweeper {
        pool: db.pool.clone(),
        settings: Arc::new(db.settings("")),
        metrics: Default::default(),
        topology: orderly::db::distributed::Topology::Single,
    }
}

async fn connector(db: &TestDb, name: &str) -> Uuid {
    sqlx::query_scalar(
        "INSERT INTO connectors (name, type, config, tenant_id)
         VALUES ($1, 'API', '{\"url\": \"http://127.0.0.1:9/\", \"secret\": \"whsec_c2VjcmV0\"}', gen_random_uuid())
         RETURNING id",
    )
    .bind(name)
    .fetch_one(&db.pool)
    .await
    .unwrap()
}

/// A rule with levels given as (level, after, connectors).
pub async fn rule(db: &TestDb, name: &str, clock: &str, levels: &[(i32, &str, &[&str])]) -> Uuid {
    let id: Uuid = sqlx::query_scalar("INSERT INTO sla_rules (name, clock) VALUES ($1, $2::sla_clock) RETURNING id")
        .bind(name)
        .bind(clock)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    for (level, after, connectors) in levels {
        let connectors: Vec<String> = connectors.iter().map(|c| c.to_string()).collect();
        sqlx::query("INSERT INTO sla_levels (rule_id, level, after, connectors) VALUES ($1, $2, $3::interval, $4)")
            .bind(id)
            .bind(level)
            .bind(after)
            .bind(connectors)
            .execute(&db.pool)
            .await
            .unwrap();
    }
    id
}

async fn scalar(db: &TestDb, sql: &'static str) -> i64 {
    count(&db.pool, sql).await
}

#[tokio::test]
async fn levels_fire_once_in_groups_and_acknowledging_stops_the_chain() {
    let db = TestDb::new().await;
    connector(&db, "oncall-hook").await;
    connector(&db, "lead-hook").await;
    rule(
        &db,
        "start within 1m",
        "TIME_TO_START",
        &[(1, "1 minute", &["oncall-hook"]), (2, "2 minutes", &["oncall-hook", "lead-hook"])],
    )
    .await;
    let order = insert_order(&db.pool, "HIGH").await;
    for n in 0..200 {
        insert_item(&db.pool, order, "TICKET", &format!(r#"{{"n":{n}}}"#)).await;
    }
    // Runnable for 90 s and never started: level 1 is due, level 2 is not.
    sqlx::query("UPDATE work_items SET run_at = now() - interval '90 seconds'").execute(&db.pool).await.unwrap();
    // Two replicas sweeping at once (as after a leadership change): each level fires once.
    let (one, two) = (sweeper(&db), sweeper(&db));
    let (a, b) = tokio::join!(one.run_once(), two.run_once());
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.fired + b.fired, 200, "{a:?} {b:?}");
    assert_eq!(scalar(&db, "SELECT count(*) FROM escalations WHERE level = 1").await, 200);
    assert_eq!(scalar(&db, "SELECT count(*) FROM escalations WHERE level = 2").await, 0);
    // 200 breaches, one message for the connector (two sweepers may each have written one).
    let messages = scalar(&db, "SELECT count(*) FROM notifications").await;
    assert!((1..=2).contains(&messages), "{messages} messages for one breach");
    assert_eq!(scalar(&db, "SELECT sum((payload->>'count')::bigint)::bigint FROM notifications").await, 200);
    assert_eq!(scalar(&db, "SELECT sum(cardinality(escalation_ids))::bigint FROM notifications").await, 200);
    let payload: Value =
        sqlx::query_scalar("SELECT payload FROM notifications LIMIT 1").fetch_one(&db.pool).await.unwrap();
    assert_eq!(payload["rule"]["name"], "start within 1m");
    assert_eq!(payload["level"], 1);
    assert!(payload["sample"].as_array().unwrap().len() <= 10);
    assert!(payload["act"].as_str().unwrap().contains("orderly escalations"));

    // Sweeping again changes nothing.
    let again = sweeper(&db).run_once().await.unwrap();
    assert_eq!(again.fired, 0);

    // On-call acknowledges one item's escalation; later, level 2 fires for the other 199.
    let acked: Uuid = sqlx::query_scalar("SELECT id FROM escalations LIMIT 1").fetch_one(&db.pool).await.unwrap();
    db::sla::act(&db.pool, acked, db::sla::Action::Acknowledge, "oncall", Some("looking")).await.unwrap();
    let twice = db::sla::act(&db.pool, acked, db::sla::Action::Acknowledge, "oncall", None).await;
    assert!(matches!(twice, Err(db::OpsError::Conflict(_))), "{twice:?}");
    sqlx::query("UPDATE work_items SET run_at = now() - interval '150 seconds'").execute(&db.pool).await.unwrap();
    let second = sweeper(&db).run_once().await.unwrap();
    assert_eq!(second.fired, 199);
    let level2_notices = scalar(&db, "SELECT count(*) FROM notifications WHERE level = 2").await;
    assert_eq!(level2_notices, 2, "one message per connector of level 2");
    assert_eq!(scalar(&db, "SELECT count(*) FROM audit_logs WHERE action = 'escalation.acknowledge'").await, 1);

    // The items start: every escalation resolves, and each connector told hears it once.
    // (The engine's own sweeper is held off: this test sweeps by hand.)
    let engine = db.engine("[routes]\nTICKET = \"echo\"\n[sla]\nsweep_interval = \"1h\"\n").await;
    wait_quiet(&db.pool).await;
    stop(engine).await;
    let resolved = sweeper(&db).run_once().await.unwrap();
    assert_eq!(resolved.resolved, 399);
    assert_eq!(scalar(&db, "SELECT count(*) FROM escalations WHERE status <> 'RESOLVED'").await, 0);
    assert_eq!(scalar(&db, "SELECT count(*) FROM notifications WHERE kind = 'RESOLVED'").await, 2);
    let resolved_count: i64 = sqlx::query_scalar(
        "SELECT (payload->>'count')::bigint FROM notifications n JOIN connectors c ON c.id = n.connector_id
         WHERE kind = 'RESOLVED' AND c.name = 'oncall-hook'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(resolved_count, 200, "the resolved notice names each item once");
}

#[tokio::test]
async fn every_clock_fires_and_resolves() {
    let db = TestDb::new().await;
    connector(&db, "hook").await;
    rule(&db, "finish within 1h", "TIME_TO_FINISH", &[(1, "1 hour", &["hook"])]).await;
    rule(&db, "triage letters within 1h", "DEAD_LETTER_OPEN", &[(1, "1 hour", &["hook"])]).await;
    rule(&db, "decide within 1h", "TIME_AWAITING_APPROVAL", &[(1, "1 hour", &["hook"])]).await;
    let order = insert_order(&db.pool, "MEDIUM").await;
    let slow = insert_item(&db.pool, order, "TICKET", "{}").await;
    let failed = insert_item(&db.pool, order, "TICKET", "not json").await;
    let held = insert_item(&db.pool, order, "TICKET", "{}").await;
    let engine = db.engine("[routes]\nTICKET = \"echo\"\n[sla]\nsweep_interval = \"1h\"\n").await;
    wait_quiet(&db.pool).await;
    stop(engine).await;
    // Shape the history as if it had happened an hour and a half ago.
    sqlx::query("UPDATE work_items SET status = 'QUEUED', created_at = now() - interval '90 minutes' WHERE id = $1")
        .bind(slow)
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query("UPDATE dead_letters SET created_at = now() - interval '90 minutes' WHERE work_item_id = $1")
        .bind(failed)
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query("UPDATE work_items SET status = 'AWAITING_APPROVAL' WHERE id = $1")
        .bind(held)
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query(
        "UPDATE approval_events SET decision = 'ESCALATED', \"timestamp\" = now() - interval '90 minutes' WHERE work_item_id = $1",
    )
    .bind(held)
    .execute(&db.pool)
    .await
    .unwrap();
    let report = sweeper(&db).run_once().await.unwrap();
    assert_eq!(report.fired, 3, "{report:?}");
    for item in [slow, failed, held] {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM escalations WHERE work_item_id = $1")
            .bind(item)
            .fetch_one(&db.pool)
            .await
            .unwrap();
        assert_eq!(n, 1);
    }
    // Each clock stops: the item finishes, the letter is discarded, the human decides.
    sqlx::query("UPDATE work_items SET status = 'COMPLETED' WHERE id = $1").bind(slow).execute(&db.pool).await.unwrap();
    let letter: Uuid = sqlx::query_scalar("SELECT id FROM dead_letters WHERE work_item_id = $1")
        .bind(failed)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    db::dead_letters::discard(&db.pool, letter, "oncall", None).await.unwrap();
    sqlx::query("UPDATE work_items SET status = 'COMPLETED' WHERE id = $1").bind(held).execute(&db.pool).await.unwrap();
    let report = sweeper(&db).run_once().await.unwrap();
    assert_eq!(report.resolved, 3, "{report:?}");
}

#[tokio::test]
async fn bad_rules_are_reported_and_never_stop_the_sweep() {
    let db = TestDb::new().await;
    connector(&db, "hook").await;
    rule(&db, "no levels", "TIME_TO_START", &[]).await;
    rule(&db, "ghost connector", "TIME_TO_START", &[(1, "1 minute", &["nobody"]), (2, "30 seconds", &["hook"])]).await;
    // What the database refuses outright: a zero threshold, a level out of range.
    let rule_id: Uuid =
        sqlx::query_scalar("SELECT id FROM sla_rules WHERE name = 'no levels'").fetch_one(&db.pool).await.unwrap();
    for (level, after) in [(1, "0 seconds"), (0, "1 minute"), (1, "-5 minutes")] {
        let refused = sqlx::query("INSERT INTO sla_levels (rule_id, level, after) VALUES ($1, $2, $3::interval)")
            .bind(rule_id)
            .bind(level)
            .bind(after)
            .execute(&db.pool)
            .await;
        assert!(refused.is_err(), "level {level} after {after} is refused");
    }
    let order = insert_order(&db.pool, "MEDIUM").await;
    insert_item(&db.pool, order, "TICKET", "{}").await;
    sqlx::query("UPDATE work_items SET run_at = now() - interval '2 minutes'").execute(&db.pool).await.unwrap();
    let report = sweeper(&db).run_once().await.unwrap();
    assert_eq!(report.fired, 2, "the rule with a ghost connector still fires both levels: {report:?}");
    let messages: Vec<String> = report.problems.iter().map(|p| format!("{} {}", p.rule, p.message)).collect();
    assert!(report.problems.iter().any(|p| p.blocking && p.rule == "no levels"), "{messages:?}");
    assert!(messages.iter().any(|m| m.contains("`nobody`")), "{messages:?}");
    assert!(messages.iter().any(|m| m.contains("not after level 1")), "{messages:?}");
    assert_eq!(scalar(&db, "SELECT count(*) FROM notifications").await, 1, "only the real connector is written to");

    let out = crate::cli::orderly(&db.url, &["sla", "check"]);
    let shown = crate::cli::text(&out);
    assert!(!out.status.success(), "a rule that cannot fire fails the check: {shown}");
    assert!(shown.contains("no levels") && shown.contains("nobody"), "{shown}");
    let out = crate::cli::orderly(&db.url, &["escalations", "list"]);
    let shown = crate::cli::text(&out);
    assert!(out.status.success() && shown.contains("ghost connector"), "{shown}");
    let id = shown.split_whitespace().next().unwrap().to_owned();
    let out = crate::cli::orderly(&db.url, &["escalations", "ack", &id, "--actor", "oncall"]);
    assert!(out.status.success(), "{}", crate::cli::text(&out));
    let out = crate::cli::orderly(&db.url, &["escalations", "resolve", &id, "--reason", "fixed upstream"]);
    assert!(out.status.success(), "{}", crate::cli::text(&out));
    let out = crate::cli::orderly(&db.url, &["escalations", "show", &id]);
    let shown = crate::cli::text(&out);
    assert!(shown.contains("RESOLVED") && shown.contains("fixed upstream"), "{shown}");
}

/// The whole path in a running engine: the leader's sweeper fires a breach of 30 slow items,
/// the notifier delivers one signed message for it to a real webhook on 127.0.0.1, and once
/// the items finish, one resolved notice.
#[tokio::test]
async fn a_running_engine_fires_and_delivers_one_message_per_breach() {
    let db = TestDb::new().await;
    let sink = TestAgent::start(|_| ok_json(serde_json::json!({}))).await;
    let slow = TestAgent::start(|_| ((200, vec![], "{}".into()), std::time::Duration::from_secs(3))).await;
    sqlx::query(
        "INSERT INTO connectors (name, type, config, tenant_id)
         VALUES ('hook', 'API', jsonb_build_object('url', $1::text, 'secret', 'whsec_c2VjcmV0', 'allow_private', true), gen_random_uuid())",
    )
    .bind(&sink.url)
    .execute(&db.pool)
    .await
    .unwrap();
    rule(&db, "finish within 1m", "TIME_TO_FINISH", &[(1, "1 minute", &["hook"])]).await;
    let order = insert_order(&db.pool, "MEDIUM").await;
    for n in 0..30 {
        insert_item(&db.pool, order, "TICKET", &format!(r#"{{"n":{n}}}"#)).await;
    }
    sqlx::query("UPDATE work_items SET created_at = now() - interval '2 minutes'").execute(&db.pool).await.unwrap();
    let toml = format!(
        "{}[routes]\nTICKET = \"slow\"\n[sla]\nsweep_interval = \"100ms\"\n[notifier]\npoll_interval = \"100ms\"\n",
        slow.config("slow", "10s")
    );
    let engine = db.engine(&toml).await;
    wait_until("the breach to be delivered", std::time::Duration::from_secs(20), || async {
        !sink.received.lock().unwrap().is_empty()
    })
    .await;
    wait_quiet(&db.pool).await;
    // Items finish batch by batch, so the end of the breach may come in a few notices; each
    // item is in exactly one.
    let resolved_total = |received: &[Received]| -> u64 {
        received
            .iter()
            .filter(|r| r.envelope["kind"] == "RESOLVED")
            .map(|r| r.envelope["count"].as_u64().unwrap())
            .sum()
    };
    wait_until("the resolved notices", std::time::Duration::from_secs(20), || async {
        resolved_total(&sink.received.lock().unwrap()) >= 30
    })
    .await;
    wait_until("the outbox to be empty", std::time::Duration::from_secs(20), || async {
        scalar(&db, "SELECT count(*) FROM notifications WHERE status = 'PENDING'").await == 0
    })
    .await;
    stop(engine).await;
    let received = sink.received.lock().unwrap().clone();
    let fired: Vec<&Received> = received.iter().filter(|r| r.envelope["kind"] == "FIRED").collect();
    assert_eq!(fired.len(), 1, "one message for the whole breach");
    assert_eq!(fired[0].envelope["count"], 30);
    assert_eq!(resolved_total(&received), 30, "each item's end is told once");
    let undelivered: Vec<String> = sqlx::query_scalar(
        "SELECT kind || ' ' || status::text || ' ' || payload::text FROM notifications WHERE status <> 'DELIVERED'",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert!(undelivered.is_empty(), "{undelivered:?}");
}

/// Restartable clocks name the episode: an item held, decided, then held again is escalated
/// again (the subject is the hold's ESCALATED event); a dead letter replayed and dead-lettered
/// again is escalated again (the subject is the letter).
#[tokio::test]
async fn a_second_hold_and_a_second_dead_letter_escalate_again() {
    let db = TestDb::new().await;
    connector(&db, "hook").await;
    rule(&db, "decide within 1h", "TIME_AWAITING_APPROVAL", &[(1, "1 hour", &["hook"])]).await;
    rule(&db, "triage letters within 1h", "DEAD_LETTER_OPEN", &[(1, "1 hour", &["hook"])]).await;
    let order = insert_order(&db.pool, "MEDIUM").await;
    let held = insert_item(&db.pool, order, "TICKET", "{}").await;
    let failed = insert_item(&db.pool, order, "TICKET", "not json").await;
    let engine = db.engine("[routes]\nTICKET = \"echo\"\n[sla]\nsweep_interval = \"1h\"\n").await;
    wait_quiet(&db.pool).await;
    stop(engine).await;
    let hold = |minutes_ago: i64| {
        let pool = db.pool.clone();
        async move {
            sqlx::query("UPDATE work_items SET status = 'AWAITING_APPROVAL' WHERE id = $1")
                .bind(held)
                .execute(&pool)
                .await
                .unwrap();
            sqlx::query(
                "INSERT INTO approval_events (work_item_id, approver_id, decision, policy_version, \"timestamp\")
                 VALUES ($1, 'policy', 'ESCALATED', 'v1', now() - $2 * interval '1 minute')",
            )
            .bind(held)
            .bind(minutes_ago)
            .execute(&pool)
            .await
            .unwrap();
        }
    };
    let open_letter = || {
        let pool = db.pool.clone();
        async move {
            sqlx::query("UPDATE dead_letters SET created_at = now() - interval '90 minutes' WHERE work_item_id = $1 AND processed_at IS NULL")
                .bind(failed)
                .execute(&pool)
                .await
                .unwrap();
        }
    };
    let escalations_of = |item: Uuid| {
        let pool = db.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM escalations WHERE work_item_id = $1")
                .bind(item)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    // First episode of each: held 90 minutes ago, a letter 90 minutes old.
    hold(90).await;
    open_letter().await;
    let report = sweeper(&db).run_once().await.unwrap();
    assert_eq!(report.fired, 2, "{report:?}");
    // The human rejects; the item is retried and held again, 90 minutes ago as well. The
    // letter is replayed, the item fails again and gets a new letter.
    sqlx::query("UPDATE work_items SET status = 'QUEUED' WHERE id = $1").bind(held).execute(&db.pool).await.unwrap();
    let report = sweeper(&db).run_once().await.unwrap();
    assert_eq!(report.resolved, 1, "the first hold's escalation resolves: {report:?}");
    hold(80).await;
    let letter: Uuid = sqlx::query_scalar("SELECT id FROM dead_letters WHERE work_item_id = $1")
        .bind(failed)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    db::dead_letters::replay(&db.pool, letter, None, "oncall").await.unwrap();
    let engine = db.engine("[routes]\nTICKET = \"echo\"\n[sla]\nsweep_interval = \"1h\"\n").await;
    wait_quiet(&db.pool).await;
    stop(engine).await;
    let letters: i64 =
        sqlx::query_scalar("SELECT count(*) FROM dead_letters WHERE work_item_id = $1 AND processed_at IS NULL")
            .bind(failed)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(letters, 1, "a second, open letter");
    open_letter().await;
    let report = sweeper(&db).run_once().await.unwrap();
    assert_eq!(report.fired, 2, "the second hold and the second letter escalate: {report:?}");
    assert_eq!(escalations_of(held).await, 2);
    assert_eq!(escalations_of(failed).await, 2);
}
