//! Dead letters: replay with a fresh budget (optionally new content), discard, both audited.

use crate::common::*;
use orderly::db;
use uuid::Uuid;

async fn open_letter_id(db: &TestDb, item: Uuid) -> Uuid {
    sqlx::query_scalar("SELECT id FROM dead_letters WHERE work_item_id = $1 AND processed_at IS NULL")
        .bind(item)
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn replay_with_fixed_content_completes_the_item_and_is_audited() {
    let db = TestDb::new().await;
    let order = insert_order(&db.pool, "MEDIUM").await;
    let item = insert_item(&db.pool, order, "TICKET", "{broken").await;
    let engine = db.engine("[routes]\nTICKET = \"echo\"\n").await;
    wait_for_status(&db.pool, item, "FAILED").await;
    wait_for_order(&db.pool, order, "FAILED").await;
    let letter = open_letter_id(&db, item).await;

    let detail = db::dead_letters::get(&db.pool, letter).await.unwrap();
    assert_eq!(detail.dead_letter.error_code.as_deref(), Some("CONTENT_INVALID_JSON"));
    assert_eq!(detail.attempts.len(), 1);
    assert_eq!(detail.payload["work_item_id"], item.to_string());

    db::dead_letters::replay(&db.pool, letter, Some(r#"{"fixed":true}"#), "alice").await.unwrap();
    wait_for_status(&db.pool, item, "COMPLETED").await;
    stop(engine).await;

    assert_eq!(order_status(&db.pool, order).await, "COMPLETED");
    let numbers: Vec<i32> = attempts(&db.pool, item).await.iter().map(|a| a.0).collect();
    assert_eq!(numbers, vec![1, 2], "attempt numbers continue across a replay");
    let (resolution, processed): (String, bool) =
        sqlx::query_as("SELECT resolution, processed_at IS NOT NULL FROM dead_letters WHERE id = $1")
            .bind(letter)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!((resolution.as_str(), processed), ("REPLAYED", true));
    let (actor, action): (String, String) =
        sqlx::query_as("SELECT user_id, action FROM audit_logs WHERE resource_id = $1")
            .bind(letter)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!((actor.as_str(), action.as_str()), ("alice", "dead_letter.replay"));
    // A processed dead letter cannot be replayed twice.
    assert!(matches!(db::dead_letters::replay(&db.pool, letter, None, "alice").await, Err(db::OpsError::Conflict(_))));
}

#[tokio::test]
async fn replay_gives_a_fresh_attempt_budget() {
    let db = TestDb::new().await;
    let order = insert_order(&db.pool, "MEDIUM").await;
    let item = insert_item(&db.pool, order, "TICKET", "{}").await;
    let config =
        "[agents.flaky]\nkind = \"fail\"\nretryable = true\n[retry]\nmax_attempts = 2\n[routes]\nTICKET = \"flaky\"\n";
    let engine = db.engine(config).await;
    wait_for_status(&db.pool, item, "FAILED").await;
    let letter = open_letter_id(&db, item).await;
    db::dead_letters::replay(&db.pool, letter, None, "bob").await.unwrap();
    wait_until("a second dead letter", std::time::Duration::from_secs(20), || async {
        count(&db.pool, "SELECT count(*) FROM dead_letters").await == 2
    })
    .await;
    stop(engine).await;
    assert_eq!(attempts(&db.pool, item).await.len(), 4, "two attempts per budget");
    assert_eq!(dead_letter(&db.pool, item).await, Some(("AGENT_ERROR".into(), "RETRIES_EXHAUSTED".into(), 2)));
}

#[tokio::test]
async fn discard_closes_the_letter_and_keeps_the_item_failed() {
    let db = TestDb::new().await;
    let order = insert_order(&db.pool, "MEDIUM").await;
    let item = insert_item(&db.pool, order, "INVOICE", "{}").await;
    let engine = db.engine("").await;
    wait_for_status(&db.pool, item, "FAILED").await;
    stop(engine).await;
    let letter = open_letter_id(&db, item).await;
    db::dead_letters::discard(&db.pool, letter, "carol", Some("duplicate of another order")).await.unwrap();
    assert_eq!(item_status(&db.pool, item).await, "FAILED");
    assert!(dead_letter(&db.pool, item).await.is_none());
    let details: serde_json::Value =
        sqlx::query_scalar("SELECT details FROM audit_logs WHERE action = 'dead_letter.discard' AND user_id = 'carol'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(details["reason"], "duplicate of another order");
    assert!(matches!(db::dead_letters::get(&db.pool, Uuid::new_v4()).await, Err(db::OpsError::NotFound { .. })));
}

/// `orderly dead-letters replay --content FILE` checks the file as the item's route would
/// (JSON, not empty, within limits.max_content_bytes) and says why it refuses; a letter
/// already closed is refused with who closed it and when.
#[tokio::test]
async fn cli_replay_refuses_content_the_item_would_fail_on_and_says_who_closed_a_letter() {
    let db = TestDb::new().await;
    let (item, letter) =
        crate::api::dead_lettered(&db, "TICKET", "{broken", "CONTENT_INVALID_JSON", "content is not valid JSON").await;
    let dir = std::env::temp_dir().join(format!("orderly-replay-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = |name: &str, bytes: &[u8]| {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let config = file("orderly.toml", b"[routes]\nTICKET = \"echo\"\n");
    let big = vec![b' '; 20 << 20];
    let replay = |content: String| {
        crate::cli::orderly(
            &db.url,
            &[
                "--config",
                &config,
                "dead-letters",
                "replay",
                &letter.to_string(),
                "--content",
                &content,
                "--actor",
                "carol",
            ],
        )
    };
    for (content, says) in [
        (file("bad.json", b"{not json"), "content is not valid JSON"),
        (file("empty.json", b""), "content is empty (CONTENT_EMPTY)"),
        (file("big.json", &big), "content is 20971520 bytes; limits.max_content_bytes is 1048576 (CONTENT_TOO_LARGE)"),
        (file("latin1.json", b"{\"a\": \"\xe9\"}"), "is not UTF-8 text"),
    ] {
        let out = replay(content);
        let shown = crate::cli::text(&out);
        assert_eq!(out.status.code(), Some(1), "{shown}");
        assert!(shown.contains(says) && shown.contains("nothing was replayed"), "{says}: {shown}");
    }
    assert_eq!(item_status(&db.pool, item).await, "FAILED", "nothing changed");
    let out = replay(file("good.json", b"{\"fixed\": true}"));
    assert!(out.status.success(), "{}", crate::cli::text(&out));
    assert!(crate::cli::text(&out).contains("and the new content"), "{}", crate::cli::text(&out));
    assert_eq!(item_status(&db.pool, item).await, "QUEUED");
    let out = replay(file("again.json", b"{}"));
    let shown = crate::cli::text(&out);
    assert!(!out.status.success());
    assert!(shown.contains("was already REPLAYED by carol at "), "{shown}");
    let out = crate::cli::orderly(&db.url, &["dead-letters", "discard", &letter.to_string(), "--reason", "x"]);
    assert!(crate::cli::text(&out).contains("already REPLAYED by carol"), "{}", crate::cli::text(&out));
    std::fs::remove_dir_all(&dir).ok();
}
