//! Secrets never leave the process by accident: canary strings planted in every place a
//! secret lives (the database password, an agent URL's token and user, a header value, a
//! command's environment) appear in no output: `check-config`, the daemon's log at debug
//! level, operators' commands, error messages, and nothing the daemon writes to the tables.

use crate::cli::{orderly, text};
use crate::common::*;
use std::process::{Command, Stdio};

const CANARIES: [&str; 5] = ["CanaryDbPass", "CanaryQueryToken", "CanaryUserToken", "CanaryHeader", "CanaryEnvValue"];

fn assert_clean(what: &str, shown: &str) {
    for canary in CANARIES {
        assert!(!shown.contains(canary), "{what} shows the secret {canary}:\n{shown}");
    }
}

#[tokio::test]
async fn planted_secrets_appear_in_no_output() {
    let db = TestDb::new().await;
    sqlx::raw_sql("ALTER TYPE work_item_type ADD VALUE 'CONTRACT'").execute(&db.pool).await.unwrap();
    // Trust authentication ignores the password, so the daemon connects with it all the same.
    let mut url = reqwest::Url::parse(&db.url).unwrap();
    url.set_password(Some("CanaryDbPass")).unwrap();
    let url = url.to_string();
    let dir = std::env::temp_dir().join(format!("orderly-secrets-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("orderly.toml");
    std::fs::write(
        &config,
        "[worker]\npoll_interval = \"100ms\"\n[retry]\nmax_attempts = 1\n\
         [agents.leaky]\nkind = \"http\"\nurl = \"http://CanaryUserToken@127.0.0.1:9/hook?token=CanaryQueryToken\"\n\
         allow_private = true\ntimeout = \"2s\"\nheaders = { Authorization = \"Bearer CanaryHeader\" }\n\
         [agents.tool]\nkind = \"command\"\nprogram = \"/bin/sh\"\nargs = [\"-c\", \"exit 3\"]\n\
         env = { API_KEY = \"CanaryEnvValue\" }\n\
         [routes]\nTICKET = \"leaky\"\nCONTRACT = \"tool\"\n",
    )
    .unwrap();
    let cfg = config.to_str().unwrap();
    let mut outputs = Vec::new();

    let out = orderly(&url, &["--config", cfg, "check-config"]);
    assert!(out.status.success(), "{}", text(&out));
    outputs.push(("check-config", text(&out)));

    let order = insert_order(&db.pool, "MEDIUM").await;
    let ticket = insert_item(&db.pool, order, "TICKET", "{}").await;
    let contract = insert_item(&db.pool, order, "CONTRACT", "{}").await;
    let daemon = Command::new(env!("CARGO_BIN_EXE_orderly"))
        .args(["--config", cfg, "run"])
        .env("DATABASE_URL", &url)
        .env("ORDERLY__ADMIN__LISTEN", "127.0.0.1:0")
        .env("ORDERLY__LOG__LEVEL", "debug")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_status(&db.pool, ticket, "FAILED").await;
    wait_for_status(&db.pool, contract, "FAILED").await;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(daemon.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    let out = tokio::task::spawn_blocking(move || daemon.wait_with_output()).await.unwrap().unwrap();
    let log = text(&out);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("DEBUG"), "the daemon logged at debug level: {log}");
    outputs.push(("the daemon's log", log));

    for args in [&["status"][..], &["dead-letters", "list"]] {
        let out = orderly(&url, args);
        outputs.push(("an operator command", text(&out)));
    }
    let letter: uuid::Uuid = sqlx::query_scalar("SELECT id FROM dead_letters WHERE work_item_id = $1")
        .bind(ticket)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let out = orderly(&url, &["dead-letters", "show", &letter.to_string()]);
    outputs.push(("dead-letters show", text(&out)));
    // An error that names the database.
    let out = orderly("postgres://postgres:CanaryDbPass@127.0.0.1:1/orderly", &["status"]);
    assert!(!out.status.success());
    outputs.push(("an unreachable database", text(&out)));

    for (what, shown) in &outputs {
        assert_clean(what, shown);
    }
    let stored: Vec<String> = sqlx::query_scalar(
        "SELECT coalesce(error, '') || coalesce(input::text, '') FROM attempts
         UNION ALL SELECT coalesce(last_error, '') FROM work_items
         UNION ALL SELECT error || payload::text FROM dead_letters",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_clean("the tables", &stored.join("\n"));
    // The errors still say what happened, without the secrets.
    let joined = stored.join("\n");
    assert!(joined.contains("AGENT_CONNECTION") || joined.contains("failed"), "{joined}");
}
