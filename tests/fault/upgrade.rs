//! Upgrading in place (docs/operations.md, "Upgrading"): daemons at work on the schema the
//! previous migration left, `orderly migrate` run under them with items in flight, a daemon
//! started on the migrated schema, the old ones stopped one at a time. The oracle holds.
//!
//! The daemons started before the migration run this build, not an older one (a test cannot
//! hold a previous release). What it proves is that the newest migration can be applied
//! while daemons work: its locks neither wait on them for long nor stall them, and no
//! statement the running daemons have prepared breaks on the migrated schema.

use crate::common::*;
use crate::harness::*;
use std::process::Command;
use std::time::Duration;

/// Executions one daemon holds at once (`write_config`'s concurrency).
const CONCURRENCY: i64 = 16;

/// The version of the migration before the newest one, from `migrations/`.
fn previous_migration() -> i64 {
    let mut versions: Vec<i64> = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations"))
        .unwrap()
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.split('_').next()?.parse().ok())
        .collect();
    versions.sort_unstable();
    versions[versions.len() - 2]
}

#[tokio::test]
async fn migrating_in_place_under_working_daemons_loses_nothing() {
    let previous = previous_migration();
    let db = TestDb::at_migration(previous).await;
    let before = orderly::db::migration_status(&db.pool).await.unwrap();
    assert_eq!(before.pending.len(), 1, "one migration left to apply: {before:?}");
    let agent = ledger_agent().await;
    let config = write_config(&agent, "");
    let ids = enqueue_mixed(&db, 3_000, 100).await;
    let old: Vec<Daemon> = (0..2).map(|_| Daemon::start(&db, &config)).collect();
    let pids: Vec<i32> = old.iter().map(Daemon::pid).collect();
    wait_until("the daemons on the old schema to hold items", Duration::from_secs(30), || {
        let (db, pids) = (&db, &pids);
        async move {
            let mut held = 0;
            for pid in pids {
                held += held_by(db, *pid).await;
            }
            held > 0
        }
    })
    .await;

    let migrate = Command::new(env!("CARGO_BIN_EXE_orderly"))
        .arg("migrate")
        .env("DATABASE_URL", &db.url)
        .env_remove("ORDERLY_CONFIG")
        .output()
        .unwrap();
    assert!(migrate.status.success(), "{}", String::from_utf8_lossy(&migrate.stderr));
    assert!(orderly::db::migration_status(&db.pool).await.unwrap().current(), "migrated in place");
    let mut held_at_migration = 0;
    for pid in &pids {
        held_at_migration += held_by(&db, *pid).await;
    }

    // The rolling restart: the new daemon first, then each old one stopped (SIGTERM: it
    // finishes what it holds and exits 0).
    let new = Daemon::start(&db, &config);
    for daemon in old {
        assert!(daemon.terminate().await, "a daemon started before the migration exits 0 on SIGTERM");
    }
    quiesce(&db, Duration::from_secs(180)).await;
    assert!(new.terminate().await, "the daemon started after the migration exits 0 on SIGTERM");

    let verdict = oracle(&db, &ids, &agent).await;
    let workers: i64 =
        sqlx::query_scalar("SELECT count(DISTINCT worker_id) FROM attempts").fetch_one(&db.pool).await.unwrap();
    println!(
        "upgrade in place: migration {previous} -> {}, {held_at_migration} items held by the old daemons just after it, \
         {workers} daemons recorded attempts",
        orderly::db::newest_migration().unwrap()
    );
    assert_eq!(workers, 3, "both old daemons and the new one ran items");
    verdict.assert_holds("upgrade in place", "migrate under 2 working daemons, rolling restart", 2 * CONCURRENCY);
}
