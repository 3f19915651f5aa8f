//! Schedules (docs/schedules.md): every catch-up policy after a downtime, exactly one order
//! per slot whoever races for it, overlap, edits by SQL, bad rows reported and never fatal,
//! the items a slot makes, and the commands. The clock is not waited for: `next_run` and
//! `last_run` are set in the past, as a downtime leaves them.

use crate::cli::{orderly, text};
use crate::common::*;
use orderly::maintenance::scheduler::Scheduler;
use std::sync::Arc;
use uuid::Uuid;

fn scheduler(db: &TestDb) -> Scheduler {
    Scheduler { pool: db.pool.clone(), settings: Arc::new(db.settings("")), metrics: Default::default() }
}

/// An every-minute schedule with these policies; returns its id.
async fn every_minute(db: &TestDb, name: &str, catch_up: &str, limit: i32, overlap: &str) -> Uuid {
    sqlx::query_scalar(
        "INSERT INTO schedules (name, cron, timezone, tenant_id, created_by, items, catch_up, catch_up_limit, overlap)
         VALUES ($1, '* * * * *', 'Europe/Berlin', gen_random_uuid(), gen_random_uuid(),
                 '[{\"type\": \"TICKET\", \"content\": {\"slot\": \"{{slot}}\", \"from\": \"{{schedule}}\"}}]',
                 $2::schedule_catch_up, $3, $4::schedule_overlap)
         RETURNING id",
    )
    .bind(name)
    .bind(catch_up)
    .bind(limit)
    .bind(overlap)
    .fetch_one(&db.pool)
    .await
    .unwrap()
}

/// As if the daemons had been down: the next slot was three minutes ago (four slots are due:
/// three missed ones and the current minute's).
async fn downtime(db: &TestDb, schedule: Uuid) {
    sqlx::query(
        "UPDATE schedules SET next_run = date_trunc('minute', now() - interval '3 minutes'),
                              last_run = date_trunc('minute', now() - interval '4 minutes') WHERE id = $1",
    )
    .bind(schedule)
    .execute(&db.pool)
    .await
    .unwrap();
}

async fn orders_of(db: &TestDb, schedule: Uuid) -> Vec<(chrono::DateTime<chrono::Utc>, Uuid)> {
    sqlx::query_as("SELECT slot_at, id FROM work_orders WHERE schedule_id = $1 ORDER BY slot_at")
        .bind(schedule)
        .fetch_all(&db.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn every_catch_up_policy_after_a_three_slot_downtime() {
    let db = TestDb::new().await;
    let none = every_minute(&db, "none", "NONE", 10, "CREATE").await;
    let latest = every_minute(&db, "latest", "LATEST", 10, "CREATE").await;
    let all = every_minute(&db, "all", "ALL", 10, "CREATE").await;
    let all_two = every_minute(&db, "all but two", "ALL", 2, "CREATE").await;
    // A first round computes each new schedule's next_run (never a slot in the past).
    let first = scheduler(&db).run_once().await.unwrap();
    assert_eq!((first.computed, first.materialized), (4, 0), "{first:?}");
    for id in [none, latest, all, all_two] {
        downtime(&db, id).await;
    }
    let report = scheduler(&db).run_once().await.unwrap();
    let now: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT date_trunc('minute', now())").fetch_one(&db.pool).await.unwrap();
    let minute = chrono::Duration::minutes(1);
    let db = &db;
    let slots = |id| async move { orders_of(db, id).await.into_iter().map(|(slot, _)| slot).collect::<Vec<_>>() };
    // NONE makes only the slot that is on time (the current minute's); LATEST the latest; ALL
    // every missed one up to its limit, the latest ones.
    assert_eq!(slots(none).await, vec![now]);
    assert_eq!(slots(latest).await, vec![now]);
    assert_eq!(slots(all).await, vec![now - minute * 3, now - minute * 2, now - minute, now]);
    assert_eq!(slots(all_two).await, vec![now - minute, now]);
    assert_eq!(report.materialized, 1 + 1 + 4 + 2, "{report:?}");
    assert_eq!(report.skipped, 3 + 3 + 2, "{report:?}");
    // Each schedule's next_run is the slot after now, its last_run the latest due slot.
    let (last, next): (chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>) =
        sqlx::query_as("SELECT last_run, next_run FROM schedules WHERE id = $1")
            .bind(all)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!((last, next), (now, now + minute));
    // Nothing is due now: another round makes nothing.
    let again = scheduler(db).run_once().await.unwrap();
    assert_eq!(again.materialized, 0, "{again:?}");
}

#[tokio::test]
async fn a_slot_becomes_exactly_one_order_whoever_races_for_it() {
    let db = TestDb::new().await;
    let ids: Vec<Uuid> = {
        let mut ids = Vec::new();
        for n in 0..20 {
            ids.push(every_minute(&db, &format!("race {n}"), "ALL", 10, "CREATE").await);
        }
        ids
    };
    scheduler(&db).run_once().await.unwrap();
    for id in &ids {
        downtime(&db, *id).await;
    }
    // Two schedulers (a new leader and the old one waking up) at once, and run-now twice
    // at once on every schedule.
    let (one, two) = (scheduler(&db), scheduler(&db));
    let (a, b) = tokio::join!(one.run_once(), two.run_once());
    let made = a.unwrap().materialized + b.unwrap().materialized;
    assert_eq!(made, 20 * 4, "every due slot once");
    let runs = ids.iter().map(|_| ()).enumerate().map(|(n, _)| {
        let pool = db.pool.clone();
        async move {
            let name = format!("race {n}");
            let (x, y) = tokio::join!(
                orderly::db::schedules::run_now(&pool, &name, "alice"),
                orderly::db::schedules::run_now(&pool, &name, "bob")
            );
            (x.unwrap(), y.unwrap())
        }
    });
    for ((slot_x, made_x), (slot_y, made_y)) in futures_join_all(runs).await {
        assert_eq!(slot_x, slot_y, "both ask for the current minute's slot");
        assert!(made_x.is_none() || made_y.is_none(), "never two orders for one slot");
    }
    let duplicates: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT schedule_id, slot_at FROM work_orders WHERE schedule_id IS NOT NULL
                               GROUP BY 1, 2 HAVING count(*) > 1) d",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(duplicates, 0);
    let audited: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_logs WHERE action = 'schedule.run_now'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(audited, 40, "every run-now is audited, made or not");
}

async fn futures_join_all<F: std::future::Future>(futures: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut out = Vec::new();
    for f in futures {
        out.push(f.await);
    }
    out
}

#[tokio::test]
async fn a_slot_makes_its_items_and_the_engine_runs_them() {
    let db = TestDb::new().await;
    let id = every_minute(&db, "tickets", "LATEST", 10, "CREATE").await;
    scheduler(&db).run_once().await.unwrap();
    downtime(&db, id).await;
    scheduler(&db).run_once().await.unwrap();
    let (slot, order) = orders_of(&db, id).await[0];
    let (content, tenant_matches): (String, bool) = sqlx::query_as(
        "SELECT i.content, i.tenant_id = o.tenant_id FROM work_items i JOIN work_orders o ON o.id = i.work_order_id
         WHERE o.id = $1",
    )
    .bind(order)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let content: serde_json::Value = serde_json::from_str(&content).unwrap();
    assert_eq!(content["slot"], slot.format("%Y-%m-%dT%H:%M:%SZ").to_string(), "{{{{slot}}}} is the slot in RFC 3339");
    assert_eq!(content["from"], "tickets");
    assert!(tenant_matches);
    let engine = db.engine("[routes]\nTICKET = \"echo\"\n").await;
    wait_for_order(&db.pool, order, "COMPLETED").await;
    stop(engine).await;
}

#[tokio::test]
async fn overlap_skip_waits_for_the_previous_slots_order() {
    let db = TestDb::new().await;
    let id = every_minute(&db, "one at a time", "ALL", 10, "SKIP").await;
    scheduler(&db).run_once().await.unwrap();
    downtime(&db, id).await;
    let report = scheduler(&db).run_once().await.unwrap();
    // The first missed slot's order is made; it is unfinished (no engine), so the three
    // after it are skipped.
    assert_eq!((report.materialized, report.skipped), (1, 3), "{report:?}");
}

#[tokio::test]
async fn bad_schedules_are_refused_or_reported_and_never_stop_the_others() {
    let db = TestDb::new().await;
    // The database refuses a time zone it does not know, and an item type it does not know.
    let refused = sqlx::query(
        "INSERT INTO schedules (name, cron, timezone, tenant_id, created_by, items)
         VALUES ('bad zone', '* * * * *', 'Mars/Olympus', gen_random_uuid(), gen_random_uuid(), '[{\"type\": \"TICKET\", \"content\": {}}]')",
    )
    .execute(&db.pool)
    .await;
    assert!(refused.is_err(), "an unknown time zone is refused");
    let refused = sqlx::query(
        "INSERT INTO schedules (name, cron, timezone, tenant_id, created_by, items)
         VALUES ('bad type', '* * * * *', 'UTC', gen_random_uuid(), gen_random_uuid(), '[{\"type\": \"SPACESHIP\", \"content\": {}}]')",
    )
    .execute(&db.pool)
    .await;
    assert!(refused.is_err(), "an unknown item type is refused");
    // A cron the daemon cannot parse is reported on the row; the good schedule runs on.
    sqlx::query(
        "INSERT INTO schedules (name, cron, timezone, tenant_id, created_by, items)
         VALUES ('bad cron', '61 * * * *', 'UTC', gen_random_uuid(), gen_random_uuid(), '[{\"type\": \"TICKET\", \"content\": {}}]')",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let good = every_minute(&db, "good", "LATEST", 10, "CREATE").await;
    let report = scheduler(&db).run_once().await.unwrap();
    assert_eq!((report.invalid, report.computed), (1, 1), "{report:?}");
    let error: Option<String> = sqlx::query_scalar("SELECT last_error FROM schedules WHERE name = 'bad cron'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(error.unwrap_or_default().contains("61 * * * *"));
    downtime(&db, good).await;
    let report = scheduler(&db).run_once().await.unwrap();
    assert_eq!(report.materialized, 1, "the good schedule is not held up: {report:?}");
    assert_eq!(report.invalid, 0, "a reported schedule is not retried until it is edited: {report:?}");
    let out = orderly(&db.url, &["schedules", "check"]);
    assert!(!out.status.success(), "check fails for the bad one");
    assert!(text(&out).contains("FAIL bad cron") && text(&out).contains("ok   good"), "{}", text(&out));
    // Fixed by SQL: the next round computes its next run, no restart.
    sqlx::query("UPDATE schedules SET cron = '*/5 * * * *' WHERE name = 'bad cron'").execute(&db.pool).await.unwrap();
    let report = scheduler(&db).run_once().await.unwrap();
    assert_eq!(report.computed, 1, "{report:?}");
    let next: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT next_run FROM schedules WHERE name = 'bad cron'").fetch_one(&db.pool).await.unwrap();
    assert!(next.is_some());
}

#[tokio::test]
async fn the_commands_list_show_pause_resume_and_run_now() {
    let db = TestDb::new().await;
    sqlx::query(
        "INSERT INTO schedules (name, frequency, \"time\", timezone, tenant_id, created_by, items)
         VALUES ('nightly report', 'DAILY', '02:30', 'Europe/Berlin', gen_random_uuid(), gen_random_uuid(),
                 '[{\"type\": \"STATUS_REPORT\", \"content\": \"report for {{slot}}\"}]')",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    scheduler(&db).run_once().await.unwrap();
    let out = orderly(&db.url, &["schedules", "list"]);
    assert!(
        out.status.success() && text(&out).contains("nightly report") && text(&out).contains("next "),
        "{}",
        text(&out)
    );
    let out = orderly(&db.url, &["schedules", "next", "nightly report", "--count", "3"]);
    let shown = text(&out);
    assert_eq!(
        shown.lines().filter(|l| l.contains("T02:30:00+0") || l.contains("T03:00:00+02:00")).count(),
        3,
        "{shown}"
    );
    let out = orderly(&db.url, &["schedules", "show", "nightly report", "--json"]);
    let shown: serde_json::Value = serde_json::from_str(&text(&out)).unwrap();
    assert_eq!(shown["next_runs"].as_array().unwrap().len(), 3);
    let out = orderly(&db.url, &["schedules", "run-now", "nightly report", "--actor", "carol"]);
    assert!(text(&out).contains("made work order"), "{}", text(&out));
    let out = orderly(&db.url, &["schedules", "run-now", "nightly report", "--actor", "carol"]);
    assert!(text(&out).contains("already has its order"), "{}", text(&out));
    let out = orderly(&db.url, &["schedules", "pause", "nightly report", "--actor", "carol"]);
    assert!(text(&out).contains("paused"), "{}", text(&out));
    let out = orderly(&db.url, &["schedules", "resume", "nightly report", "--actor", "carol"]);
    assert!(text(&out).contains("resumed"), "{}", text(&out));
    let actions: Vec<String> =
        sqlx::query_scalar("SELECT action FROM audit_logs WHERE user_id = 'carol' ORDER BY created_at")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(actions, ["schedule.run_now", "schedule.run_now", "schedule.pause", "schedule.resume"]);
    let (next, error): (Option<chrono::DateTime<chrono::Utc>>, Option<String>) =
        sqlx::query_as("SELECT next_run, last_error FROM schedules WHERE name = 'nightly report'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert!(next.is_none() && error.is_none(), "resumed: its next run is computed again from now");
    let out = orderly(&db.url, &["schedules", "show", "nobody"]);
    assert!(!out.status.success());
}

/// The JSON API and the page list each schedule with its next three runs (in its zone and in
/// UTC) and the orders of its last slots.
#[tokio::test]
async fn the_api_and_the_page_show_next_runs_and_last_slots() {
    let db = TestDb::new().await;
    let id = every_minute(&db, "every minute", "LATEST", 10, "CREATE").await;
    scheduler(&db).run_once().await.unwrap();
    downtime(&db, id).await;
    scheduler(&db).run_once().await.unwrap();
    let order = orders_of(&db, id).await[0].1;
    let app = crate::api::app(&db, "");
    let (status, body) = crate::api::get(&app, "/api/v1/schedules").await;
    assert_eq!(status, 200, "{body}");
    let shown = &body["schedules"][0];
    assert_eq!(shown["name"], "every minute");
    assert_eq!(shown["next_runs"].as_array().unwrap().len(), 3, "{shown}");
    assert!(
        shown["next_runs"][0]["local"].as_str().unwrap().ends_with("+01:00")
            || shown["next_runs"][0]["local"].as_str().unwrap().ends_with("+02:00"),
        "{shown}"
    );
    assert_eq!(shown["recent_orders"][0]["work_order_id"], order.to_string());
    let cookie = crate::web::sign_in(&app, crate::api::READ).await;
    let page = crate::web::get(&app, "/schedules", &cookie).await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("every minute") && page.body.contains(&order.to_string()), "{}", page.body);
}
