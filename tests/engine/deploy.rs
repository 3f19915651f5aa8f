//! Deployment files checked by the tools that read them: the systemd unit by
//! `systemd-analyze security` (exposure at most 2.0) and `systemd-analyze verify`. Where
//! `systemd-analyze` is missing the check is skipped with a note, except in CI (`CI=true`),
//! where it fails: CI machines have it.

use crate::cli::text;
use std::path::PathBuf;
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `systemd-analyze`, or `None` (outside CI) when it is not installed.
fn systemd_analyze() -> Option<Command> {
    let found = Command::new("systemd-analyze").arg("--version").output().is_ok_and(|o| o.status.success());
    if !found {
        let ci = std::env::var("CI").is_ok_and(|v| v == "true");
        assert!(!ci, "systemd-analyze is required in CI (Debian package `systemd`)");
        eprintln!("systemd-analyze not installed: skipping the unit checks");
        return None;
    }
    Some(Command::new("systemd-analyze"))
}

/// The exposure `systemd-analyze security` prints: "→ Overall exposure level for X: 1.1 OK".
fn exposure(output: &str) -> f64 {
    let line = output.lines().find(|l| l.contains("Overall exposure level")).expect("an overall exposure line");
    let after = line.rsplit_once(": ").expect("level after the colon").1;
    after.split_whitespace().next().unwrap().parse().expect("a number")
}

#[test]
fn the_systemd_unit_scores_2_or_lower_and_verifies() {
    let Some(mut security) = systemd_analyze() else { return };
    let unit = repo().join("systemd/orderly.service");
    let out = security.args(["security", "--offline=true", "--no-pager"]).arg(&unit).output().unwrap();
    let shown = text(&out);
    let level = exposure(&shown);
    assert!(level <= 2.0, "exposure {level} > 2.0:\n{shown}");

    // `verify` wants the ExecStart binary to exist: the same unit, pointed at the binary
    // under test, in a directory of its own (the unit keeps its name).
    let dir = std::env::temp_dir().join(format!("orderly-unit-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let copy = dir.join("orderly.service");
    let original = std::fs::read_to_string(&unit).unwrap();
    assert!(original.contains("ExecStart=/usr/bin/orderly "), "the unit runs /usr/bin/orderly");
    std::fs::write(&copy, original.replace("/usr/bin/orderly", env!("CARGO_BIN_EXE_orderly"))).unwrap();
    let out = Command::new("systemd-analyze").args(["verify", "--man=no"]).arg(&copy).output().unwrap();
    std::fs::remove_dir_all(&dir).ok();
    assert!(out.status.success() && text(&out).trim().is_empty(), "systemd-analyze verify:\n{}", text(&out));
}

/// What the unit promises the daemon about its configuration: the URL from the systemd
/// credential `database-url` (`LoadCredential=`), overridden by `DATABASE_URL` when both are set.
#[test]
fn the_database_url_can_come_from_a_systemd_credential() {
    let dir = std::env::temp_dir().join(format!("orderly-cred-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("database-url"), "postgres://orderly:s3cret@db.internal:5432/orderly\n").unwrap();
    let check = |database_url: Option<&str>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_orderly"));
        cmd.arg("check-config").env("CREDENTIALS_DIRECTORY", &dir).env_remove("DATABASE_URL");
        if let Some(url) = database_url {
            cmd.env("DATABASE_URL", url);
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{}", text(&out));
        text(&out)
    };
    let shown = check(None);
    assert!(shown.contains("db.internal:5432/orderly") && !shown.contains("s3cret"), "{shown}");
    let shown = check(Some("postgres://postgres@127.0.0.1:5432/other"));
    assert!(shown.contains("127.0.0.1:5432/other"), "DATABASE_URL wins: {shown}");
    std::fs::remove_dir_all(&dir).ok();
}

/// `orderly health` (the container's HEALTHCHECK): 0 on a migrated database; 1, saying why,
/// on a database without the migrations and on one that does not answer.
#[tokio::test]
async fn health_exits_0_only_when_the_database_answers_and_is_migrated() {
    use crate::cli::orderly;
    let db = crate::common::TestDb::new().await;
    let out = orderly(&db.url, &["health"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("healthy:") && text(&out).contains("migrations applied"), "{}", text(&out));

    let mut empty = reqwest::Url::parse(&crate::common::base_url()).unwrap();
    empty.set_path(&format!("/orderly_health_{}", uuid::Uuid::new_v4().simple()));
    let empty = empty.to_string();
    orderly::db::ensure_database(&empty).await.unwrap();
    let out = orderly(&empty, &["health"]);
    orderly::db::drop_database(&empty).await.unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("orderly migrate"), "{}", text(&out));

    let started = std::time::Instant::now();
    let out = orderly("postgres://postgres@127.0.0.1:1/orderly", &["health", "--timeout", "2s"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("unhealthy"), "{}", text(&out));
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}
