//! The command kind's end of run and error messages: a run ends when the direct child exits
//! (background processes holding its pipes do not keep it open and are killed), and messages
//! built from its output carry no NUL byte and keep the tail of stderr.

use crate::common::*;
use serde_json::{Value, json};
use sqlx::Row;
use std::path::{Path, PathBuf};
use std::time::Duration;
use uuid::Uuid;

/// A temporary directory for one test's scripts and marker files.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        let dir = std::env::temp_dir().join(format!("orderly-command-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Writes a /bin/sh script and returns an engine config running it for TICKET items.
    fn script_config(&self, body: &str, timeout: &str) -> String {
        let script = self.path("agent.sh");
        std::fs::write(&script, body).unwrap();
        format!(
            "[agents.script]\nkind = \"command\"\nprogram = \"/bin/sh\"\nargs = [{:?}]\ntimeout = \"{timeout}\"\n\
             [retry]\nmax_attempts = 1\n[routes]\nTICKET = \"script\"\n",
            script.display().to_string()
        )
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.0).ok();
    }
}

fn process_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // A zombie has stopped running; only its parent's bookkeeping is left.
        Ok(stat) => !stat.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'),
        Err(_) => false,
    }
}

async fn read_pid(file: &Path) -> i32 {
    wait_until("the script to record a pid", Duration::from_secs(5), || async {
        std::fs::read_to_string(file).is_ok_and(|text| text.ends_with('\n'))
    })
    .await;
    std::fs::read_to_string(file).unwrap().trim().parse().unwrap()
}

async fn result_of(db: &TestDb, item: Uuid) -> Value {
    sqlx::query_scalar("SELECT result FROM work_items WHERE id = $1").bind(item).fetch_one(&db.pool).await.unwrap()
}

/// (status, duration_ms) of the item's only attempt; fails if there is not exactly one.
async fn only_attempt(db: &TestDb, item: Uuid) -> (String, i32) {
    let rows = sqlx::query("SELECT status::text, duration_ms FROM attempts WHERE work_item_id = $1")
        .bind(item)
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(rows.len(), 1, "exactly one attempt");
    (rows[0].get(0), rows[0].get(1))
}

/// The error text of the item's attempt and of its open dead letter.
async fn errors_of(db: &TestDb, item: Uuid) -> (String, String) {
    let attempt: String = sqlx::query_scalar("SELECT error FROM attempts WHERE work_item_id = $1")
        .bind(item)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let letter: String =
        sqlx::query_scalar("SELECT error FROM dead_letters WHERE work_item_id = $1 AND processed_at IS NULL")
            .bind(item)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    (attempt, letter)
}

/// Runs one TICKET item through `config` until it is `status`, within `deadline`.
async fn run_one(db: &TestDb, config: &str, status: &str, deadline: Duration) -> Uuid {
    let order = insert_order(&db.pool, "MEDIUM").await;
    let item = insert_item(&db.pool, order, "TICKET", "{}").await;
    let engine = db.engine(config).await;
    let what = format!("the item to be {status}");
    wait_until(&what, deadline, || async { item_status(&db.pool, item).await == status }).await;
    stop(engine).await;
    item
}

#[tokio::test]
async fn a_command_ends_when_its_child_exits_and_its_background_processes_are_killed() {
    let db = TestDb::new().await;
    let scratch = Scratch::new();
    let (marker, pid) = (scratch.path("marker"), scratch.path("pid"));
    // The background subshell inherits stdout and would write the marker after 2 s.
    let body = format!(
        "echo '{{\"a\":1}}'\n(sleep 2; touch {m}) &\necho $! > {p}\nexit 0\n",
        m = marker.display(),
        p = pid.display()
    );
    let item = run_one(&db, &scratch.script_config(&body, "20s"), "COMPLETED", Duration::from_secs(10)).await;
    let (status, duration_ms) = only_attempt(&db, item).await;
    assert_eq!(status, "COMPLETED");
    assert!(duration_ms < 2_000, "the run ended at the child's exit, not at EOF: {duration_ms} ms");
    assert_eq!(result_of(&db, item).await, json!({"a": 1}), "output written before the exit is kept");
    let background = read_pid(&pid).await;
    wait_until("the background process to be killed", Duration::from_secs(5), || async { !process_alive(background) })
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!marker.exists(), "the background process never got to write its marker");
}

#[tokio::test]
async fn a_setsid_grandchild_holding_stdout_does_not_keep_the_run_open() {
    let db = TestDb::new().await;
    let scratch = Scratch::new();
    let pid = scratch.path("pid");
    // The grandchild leaves the process group (so the group kill misses it) and holds stdout;
    // the child exits once it has left.
    let body = format!(
        "echo '{{\"b\":2}}'\nsetsid /bin/sh -c 'echo $$ > {p}; exec sleep 30' &\n\
         while [ ! -s {p} ]; do sleep 0.05; done\nexit 0\n",
        p = pid.display()
    );
    let item = run_one(&db, &scratch.script_config(&body, "20s"), "COMPLETED", Duration::from_secs(10)).await;
    let escaped = read_pid(&pid).await;
    let (status, duration_ms) = only_attempt(&db, item).await;
    // Clean up before asserting: the escaped process is outside the agent's reach by design.
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(escaped), nix::sys::signal::Signal::SIGKILL);
    assert_eq!(status, "COMPLETED");
    assert!(duration_ms < 2_000, "the run ended shortly after the child's exit: {duration_ms} ms");
    assert_eq!(result_of(&db, item).await, json!({"b": 2}));
}

#[tokio::test]
async fn nul_bytes_in_a_commands_output_never_reach_an_error_message() {
    let db = TestDb::new().await;
    let scratch = Scratch::new();
    let body = "read -r line\ncase \"$line\" in\n\
                *stdout*) printf 'not json\\000here'; exit 0;;\n\
                *) printf 'before\\000after\\n' >&2; exit 1;;\nesac\n";
    let config = scratch.script_config(body, "10s");
    let order = insert_order(&db.pool, "MEDIUM").await;
    let on_stderr = insert_item(&db.pool, order, "TICKET", r#"{"mode":"stderr"}"#).await;
    let on_stdout = insert_item(&db.pool, order, "TICKET", r#"{"mode":"stdout"}"#).await;
    let engine = db.engine(&config).await;
    wait_quiet(&db.pool).await;
    stop(engine).await;

    assert_eq!(item_status(&db.pool, on_stderr).await, "FAILED");
    assert_eq!(dead_letter(&db.pool, on_stderr).await, Some(("COMMAND_FAILED".into(), "PERMANENT".into(), 1)));
    for error in <[String; 2]>::from(errors_of(&db, on_stderr).await) {
        assert!(!error.contains('\0'), "{error:?}");
        assert!(error.contains("before") && error.contains("after"), "the text around the NUL is kept: {error:?}");
    }
    assert_eq!(item_status(&db.pool, on_stdout).await, "FAILED");
    assert_eq!(dead_letter(&db.pool, on_stdout).await.unwrap().0, "AGENT_BAD_OUTPUT");
    for error in <[String; 2]>::from(errors_of(&db, on_stdout).await) {
        assert!(!error.contains('\0'), "{error:?}");
        assert!(error.contains("not json"), "{error:?}");
    }
}

#[tokio::test]
async fn a_long_stderr_keeps_its_tail() {
    let db = TestDb::new().await;
    let scratch = Scratch::new();
    let body = "i=0\nwhile [ $i -lt 2000 ]; do echo \"noise $i.\" >&2; i=$((i+1)); done\n\
                echo 'the real error' >&2\nexit 2\n";
    let item = run_one(&db, &scratch.script_config(body, "10s"), "FAILED", Duration::from_secs(20)).await;
    assert_eq!(dead_letter(&db.pool, item).await, Some(("COMMAND_FAILED".into(), "PERMANENT".into(), 1)));
    let (error, letter) = errors_of(&db, item).await;
    assert_eq!(error, letter);
    assert!(error.ends_with("noise 1999.\nthe real error"), "the tail is kept: {error:?}");
    assert!(error.contains(": …"), "the cut is marked: {error:?}");
    assert!(!error.contains("noise 0."), "the head is dropped: {error:?}");
    assert!(error.len() < 4096 + 200, "about 4 KiB of stderr: {} bytes", error.len());
}

#[tokio::test]
async fn a_command_output_over_the_limit_is_refused() {
    let db = TestDb::new().await;
    let scratch = Scratch::new();
    // 200 KB is more than a pipe holds: the child is only done once it has all been read.
    let body = "read -r line\ncase \"$line\" in\n\
                *big*) printf '{\"pad\":\"'; head -c 200000 /dev/zero | tr '\\000' x; echo '\"}';;\n\
                *) echo '{\"ok\":true}';;\nesac\n";
    let config = format!("{}[limits]\nmax_output_bytes = 1024\n", scratch.script_config(body, "10s"));
    let order = insert_order(&db.pool, "MEDIUM").await;
    let big = insert_item(&db.pool, order, "TICKET", r#"{"mode":"big"}"#).await;
    let small = insert_item(&db.pool, order, "TICKET", r#"{"mode":"small"}"#).await;
    let engine = db.engine(&config).await;
    wait_quiet(&db.pool).await;
    stop(engine).await;
    assert_eq!(dead_letter(&db.pool, big).await, Some(("OUTPUT_TOO_LARGE".into(), "PERMANENT".into(), 1)));
    assert_eq!(item_status(&db.pool, small).await, "COMPLETED");
    assert_eq!(result_of(&db, small).await, json!({"ok": true}));
}
