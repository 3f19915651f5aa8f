//! Daemons as child processes, a ledger agent, and the oracle.

use crate::common::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::json;
use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use uuid::Uuid;

pub fn long_mode() -> bool {
    std::env::var("ORDERLY_FAULT_LONG").is_ok_and(|v| v == "1")
}

/// A ledger agent: every execution is recorded. Content decides speed and outcome.
pub async fn ledger_agent() -> TestAgent {
    TestAgent::start(|envelope| {
        let content = &envelope["work_item"]["content"];
        let delay = Duration::from_millis(content["ms"].as_u64().unwrap_or(0));
        let answer = match content["outcome"].as_str().unwrap_or("ok") {
            "retry" => (503, vec![], "busy".to_owned()),
            "fatal" => (400, vec![], "unusable".to_owned()),
            _ => (200, vec![], json!({"done": content["n"]}).to_string()),
        };
        (answer, delay)
    })
    .await
}

/// Inserts `n` items in orders of 20 with mixed speed (0–`max_ms`) and outcome
/// (90% ok, 7% always-retryable, 3% permanent).
pub async fn enqueue_mixed(db: &TestDb, n: usize, max_ms: u64) -> Vec<Uuid> {
    let mut ids = Vec::with_capacity(n);
    let mut order = Uuid::nil();
    for i in 0..n {
        if i % 20 == 0 {
            order = insert_order(&db.pool, ["LOW", "MEDIUM", "HIGH", "URGENT"][i % 4]).await;
        }
        let outcome = match fastrand::u8(0..100) {
            0..=89 => "ok",
            90..=96 => "retry",
            _ => "fatal",
        };
        let content = json!({"n": i, "ms": fastrand::u64(0..=max_ms), "outcome": outcome}).to_string();
        ids.push(insert_item(&db.pool, order, "TICKET", &content).await);
    }
    ids
}

/// Inserts `orders` orders of 20 items shaped as a graph: a root, a fan-out of 9 that each
/// need it, a fan-in that needs all 9, then a chain of 9 after it. Outcomes are mixed as in
/// [`enqueue_mixed`], so some dependencies are dead-lettered and hold their dependents.
pub async fn enqueue_graph(db: &TestDb, orders: usize, max_ms: u64) -> Vec<Uuid> {
    let mut ids = Vec::with_capacity(orders * 20);
    for o in 0..orders {
        let order = insert_order(&db.pool, ["LOW", "MEDIUM", "HIGH", "URGENT"][o % 4]).await;
        let mut tx = db.pool.begin().await.unwrap();
        let mut items = Vec::with_capacity(20);
        for i in 0..20 {
            let outcome = match fastrand::u8(0..100) {
                0..=97 => "ok",
                98 => "retry",
                _ => "fatal",
            };
            let content = json!({"n": o * 20 + i, "ms": fastrand::u64(0..=max_ms), "outcome": outcome}).to_string();
            let id: Uuid = sqlx::query_scalar(
                "INSERT INTO work_items (work_order_id, type, content) VALUES ($1, 'TICKET', $2) RETURNING id",
            )
            .bind(order)
            .bind(content)
            .fetch_one(&mut *tx)
            .await
            .unwrap();
            items.push(id);
        }
        let mut edges: Vec<(usize, usize)> = (1..10).map(|i| (i, 0)).collect();
        edges.extend((1..10).map(|i| (10, i)));
        edges.extend((11..20).map(|i| (i, i - 1)));
        let (from, to): (Vec<Uuid>, Vec<Uuid>) = edges.iter().map(|(a, b)| (items[*a], items[*b])).unzip();
        sqlx::query("INSERT INTO work_item_dependencies (work_item_id, depends_on_id) SELECT * FROM unnest($1::uuid[], $2::uuid[])")
            .bind(&from)
            .bind(&to)
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        ids.extend(items);
    }
    ids
}

/// The daemons' configuration file: short leases so faults recover quickly.
pub fn write_config(agent: &TestAgent, extra: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("orderly-fault-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("orderly.toml");
    let text = format!(
        "{}[database]\nmigrate_on_start = false\nmax_connections = 6\nidle_in_transaction_timeout = \"1s\"\n\
         [worker]\nconcurrency = 16\nlease = \"2s\"\nrescue_interval = \"500ms\"\nleader_lease = \"2s\"\npoll_interval = \"200ms\"\nmax_rescues = 10\nshutdown_grace = \"10s\"\n\
         [retry]\nmax_attempts = 4\nbackoff_base = \"50ms\"\nbackoff_max = \"300ms\"\n\
         [routes]\nTICKET = \"ledger\"\n[log]\nformat = \"json\"\nlevel = \"warn,sqlx=error\"\n{extra}",
        agent.config("ledger", "5s")
    );
    std::fs::write(&path, text).unwrap();
    path
}

pub struct Daemon {
    pub child: Child,
    pub log: std::path::PathBuf,
    started: Instant,
}

/// A daemon whose test failed half-way must not outlive it.
impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Daemon {
    pub fn start(db: &TestDb, config: &std::path::Path) -> Daemon {
        Daemon::start_with(&db.url, config, &[])
    }

    /// `orderly run` on the database at `url`, with extra environment variables
    /// (`ORDERLY_FAILPOINTS`, for one).
    pub fn start_with(url: &str, config: &std::path::Path, env: &[(&str, &str)]) -> Daemon {
        let log = config.with_file_name(format!("daemon-{}.log", Uuid::new_v4().simple()));
        let child = Command::new(env!("CARGO_BIN_EXE_orderly"))
            .args(["--config", config.to_str().unwrap(), "run"])
            .env("DATABASE_URL", url)
            .env_remove("RUST_LOG")
            .env_remove("ORDERLY_FAILPOINTS")
            // Replicas run side by side: each admin server on a free port.
            .env("ORDERLY__ADMIN__LISTEN", "127.0.0.1:0")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("orderly starts");
        Daemon { child, log, started: Instant::now() }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// How long ago the process was started.
    pub fn age(&self) -> Duration {
        self.started.elapsed()
    }

    /// Whether the process is still running (not exited, not yet reaped).
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits up to `deadline` for the process to exit by itself: its exit status, or `None`
    /// if it is still running.
    pub async fn wait_exit(&mut self, deadline: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if start.elapsed() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn signal(&self, signal: Signal) {
        let _ = kill(Pid::from_raw(self.pid()), signal);
    }

    pub fn kill9(mut self) {
        self.signal(Signal::SIGKILL);
        let _ = self.child.wait();
    }

    /// SIGTERM, and whether the daemon then exited 0 (its log is printed if not). A daemon
    /// started a moment ago is given time to install its handlers first: a signal that
    /// arrives while the process is still loading takes the default action.
    pub async fn terminate(mut self) -> bool {
        let settle = Duration::from_millis(500).saturating_sub(self.started.elapsed());
        tokio::time::sleep(settle).await;
        self.signal(Signal::SIGTERM);
        let (status, log) = tokio::task::spawn_blocking(move || (self.child.wait(), self.log_text())).await.unwrap();
        let ok = status.as_ref().map(|s| s.success()).unwrap_or(false);
        if !ok {
            eprintln!("daemon exit {status:?}; its log:\n{log}");
        }
        ok
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The JSON log events (the config's `log.format = "json"`, fields flattened) whose
    /// message is `message`.
    pub fn log_events(&self, message: &str) -> Vec<serde_json::Value> {
        self.log_text()
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(|event| event["message"] == message)
            .collect()
    }
}

/// Replaces `from` (which must be there) by `to` in a configuration file.
pub fn edit_config(config: &std::path::Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(config).unwrap();
    assert!(text.contains(from), "the config has {from:?}");
    std::fs::write(config, text.replace(from, to)).unwrap();
}

/// Inserts `n` items that succeed, each taking a random time in `ms`, in orders of 20
/// (one INSERT per order); order number k runs workflow `workflow(k)`.
pub async fn enqueue_ok(
    pool: &sqlx::PgPool,
    n: usize,
    ms: std::ops::RangeInclusive<u64>,
    workflow: impl Fn(usize) -> String,
) -> Vec<Uuid> {
    let mut ids = Vec::with_capacity(n);
    for (k, first) in (0..n).step_by(20).enumerate() {
        let order = insert_order_with_workflow(pool, &workflow(k)).await;
        let last = (first + 20).min(n) - 1;
        let batch: Vec<Uuid> = sqlx::query_scalar(
            "INSERT INTO work_items (work_order_id, type, content)
             SELECT $1, 'TICKET'::work_item_type, json_build_object('n', g, 'ms', $4 + floor(random() * ($5 - $4 + 1))::int8,
                                                    'outcome', 'ok')::text
             FROM generate_series($2::int8, $3::int8) g ORDER BY g RETURNING id",
        )
        .bind(order)
        .bind(first as i64)
        .bind(last as i64)
        .bind(*ms.start() as i64)
        .bind(*ms.end() as i64)
        .fetch_all(pool)
        .await
        .unwrap();
        ids.extend(batch);
    }
    ids
}

/// A database that does not exist yet (a first start), dropped when the test ends.
pub struct ScratchDb {
    pub name: String,
    pub url: String,
}

impl ScratchDb {
    pub fn fresh() -> ScratchDb {
        let name = format!("orderly_fresh_{}", Uuid::new_v4().simple());
        let mut url = reqwest::Url::parse(&base_url()).expect("DATABASE_URL is a URL");
        url.set_path(&format!("/{name}"));
        ScratchDb { name, url: url.to_string() }
    }

    pub async fn exists(&self) -> bool {
        let pool = sqlx::PgPool::connect(&base_url()).await.unwrap();
        let found = sqlx::query_scalar("SELECT count(*) FROM pg_database WHERE datname = $1")
            .bind(&self.name)
            .fetch_one(&pool)
            .await
            .map(|n: i64| n > 0)
            .unwrap();
        pool.close().await;
        found
    }
}

impl Drop for ScratchDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                if let Ok(pool) = sqlx::PgPool::connect(&base_url()).await {
                    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")))
                        .execute(&pool)
                        .await;
                    pool.close().await;
                }
            });
        })
        .join()
        .ok();
    }
}

/// Items held by a given daemon process (its worker id contains `-<pid>-`).
pub async fn held_by(db: &TestDb, pid: i32) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM work_items WHERE status = 'PROCESSING' AND locked_by LIKE $1")
        .bind(format!("%-{pid}-%"))
        .fetch_one(&db.pool)
        .await
        .unwrap_or(0)
}

/// Waits until every item is terminal or visibly waiting for a human.
pub async fn quiesce(db: &TestDb, deadline: Duration) {
    quiesce_pool(&db.pool, deadline).await
}

/// [`quiesce`] on any database.
pub async fn quiesce_pool(pool: &sqlx::PgPool, deadline: Duration) {
    let start = Instant::now();
    loop {
        // Items held by a dead-lettered dependency stay QUEUED: the oracle checks they should.
        let live: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM work_items WHERE status = 'PROCESSING' OR (status = 'QUEUED' AND deps_pending = 0)",
        )
        .fetch_one(pool)
        .await
        .unwrap_or(i64::MAX);
        if live == 0 {
            return;
        }
        assert!(start.elapsed() < deadline, "not quiet after {deadline:?}: {live} items still live");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What the oracle found.
#[derive(Debug, Default)]
pub struct Verdict {
    pub items: usize,
    pub lost: i64,
    pub stuck: i64,
    pub misnumbered: i64,
    pub open_attempts: i64,
    pub completed_without_one_success: i64,
    pub failed_without_one_letter: i64,
    pub letters_without_failure: i64,
    pub duplicates: i64,
    pub concurrent_duplicates: usize,
    pub lost_attempts: i64,
    pub misrolled_orders: i64,
    /// QUEUED items whose count of unmet dependencies disagrees with their dependencies'
    /// statuses (waiting although released, or released early).
    pub miscounted_waits: i64,
    /// Attempts started before a BLOCKS dependency of their item had completed.
    pub started_early: i64,
}

/// Checks the guarantees (docs/guarantees.md) over the database and the agent's ledger.
pub async fn oracle(db: &TestDb, inserted: &[Uuid], agent: &TestAgent) -> Verdict {
    let pool = &db.pool;
    let scalar = |sql: &'static str| async move { sqlx::query_scalar::<_, i64>(sql).fetch_one(pool).await.unwrap() };
    let present: i64 = sqlx::query_scalar("SELECT count(*) FROM work_items WHERE id = ANY($1)")
        .bind(inserted)
        .fetch_one(pool)
        .await
        .unwrap();
    let mut v = Verdict {
        items: inserted.len(),
        lost: inserted.len() as i64 - present,
        stuck: scalar(
            "SELECT count(*) FROM work_items WHERE status = 'PROCESSING'
                OR (status = 'QUEUED' AND deps_pending = 0 AND run_at <= now() - interval '5 seconds')",
        )
        .await,
        // Recomputed from the dependencies' statuses, not from the edges' own bookkeeping.
        miscounted_waits: scalar(
            "SELECT count(*) FROM work_items w WHERE w.status = 'QUEUED' AND w.deps_pending <> (
                 SELECT count(*) FROM work_item_dependencies d JOIN work_items p ON p.id = d.depends_on_id
                 WHERE d.work_item_id = w.id AND d.kind <> 'RELATED'
                   AND NOT (p.status = 'COMPLETED' OR (d.kind = 'SOFT' AND p.status IN ('FAILED', 'CANCELLED'))))",
        )
        .await,
        started_early: scalar(
            "SELECT count(*) FROM attempts a
             JOIN work_item_dependencies d ON d.work_item_id = a.work_item_id AND d.kind = 'BLOCKS'
             JOIN work_items p ON p.id = d.depends_on_id
             WHERE p.status <> 'COMPLETED' OR a.started_at < p.processed_at",
        )
        .await,
        misnumbered: scalar(
            "SELECT count(*) FROM work_items w
             WHERE (SELECT count(*) FROM attempts a WHERE a.work_item_id = w.id) <> w.attempt
                OR EXISTS (SELECT 1 FROM attempts a WHERE a.work_item_id = w.id AND (a.attempt_number < 1 OR a.attempt_number > w.attempt))",
        )
        .await,
        open_attempts: scalar("SELECT count(*) FROM attempts WHERE status = 'STARTED'").await,
        // An output handed to agent evaluators is an attempt COMPLETED and then evaluated by
        // a later one (`input.evaluates`): the deciding attempt is the later one.
        completed_without_one_success: scalar(
            "SELECT count(*) FROM work_items w WHERE (w.status = 'COMPLETED') <>
               ((SELECT count(*) FROM attempts a WHERE a.work_item_id = w.id AND a.status = 'COMPLETED'
                   AND NOT EXISTS (SELECT 1 FROM attempts e WHERE e.work_item_id = w.id
                                   AND e.input->>'evaluates' = a.id::text)) = 1)",
        )
        .await,
        failed_without_one_letter: scalar(
            "SELECT count(*) FROM work_items w WHERE w.status = 'FAILED' AND
               (SELECT count(*) FROM dead_letters d WHERE d.work_item_id = w.id AND d.processed_at IS NULL) <> 1",
        )
        .await,
        letters_without_failure: scalar(
            "SELECT count(*) FROM dead_letters d JOIN work_items w ON w.id = d.work_item_id
             WHERE d.processed_at IS NULL AND w.status <> 'FAILED'",
        )
        .await,
        lost_attempts: scalar("SELECT count(*) FROM attempts WHERE status = 'LOST'").await,
        // An order's status is what its items say, at once: the roll-up commits with the
        // write that finished its items, so no fault can leave one behind.
        misrolled_orders: scalar(
            "SELECT count(*) FROM work_orders o WHERE EXISTS (SELECT 1 FROM work_items i WHERE i.work_order_id = o.id)
               AND o.status::text <> (
                 SELECT CASE WHEN bool_or(i.status IN ('QUEUED', 'PROCESSING', 'AWAITING_APPROVAL')) THEN 'PROCESSING'
                             WHEN bool_or(i.status = 'FAILED') THEN 'FAILED'
                             WHEN NOT bool_or(i.status = 'COMPLETED') AND bool_or(i.status = 'CANCELLED') THEN 'CANCELLED'
                             ELSE 'COMPLETED' END
                 FROM work_items i WHERE i.work_order_id = o.id)",
        )
        .await,
        ..Verdict::default()
    };
    (v.duplicates, v.concurrent_duplicates) = ledger_duplicates(pool, agent).await;
    v
}

/// The ledger's side of the oracle (single-node and distributed): executions without a
/// recorded result, and attempts executed more than once.
pub async fn ledger_duplicates(pool: &sqlx::PgPool, agent: &TestAgent) -> (i64, usize) {
    // Executions whose result was recorded: every attempt that ran the agent to an end.
    let recorded: HashMap<Uuid, i64> = sqlx::query_as::<_, (Uuid, i64)>(
        "SELECT work_item_id, count(*) FROM attempts
         WHERE status IN ('COMPLETED', 'FAILED', 'TIMEOUT', 'INTERRUPTED') AND agent_id = 'ledger'
         GROUP BY 1",
    )
    .fetch_all(pool)
    .await
    .unwrap()
    .into_iter()
    .collect();
    let received = agent.received.lock().unwrap().clone();
    let mut executed: HashMap<Uuid, i64> = HashMap::new();
    let mut per_attempt: HashMap<(Uuid, i64), usize> = HashMap::new();
    for r in &received {
        *executed.entry(r.item_id).or_default() += 1;
        *per_attempt.entry((r.item_id, r.attempt)).or_default() += 1;
    }
    let duplicates = executed.iter().map(|(id, n)| (n - recorded.get(id).copied().unwrap_or(0)).max(0)).sum();
    // The same attempt executed twice would mean two workers held one claim.
    (duplicates, per_attempt.values().filter(|n| **n > 1).count())
}

impl Verdict {
    /// Asserts every guarantee; `max_duplicates` is what the injected faults can explain.
    /// Prints one `FAULTS|` line per scenario (docs/guarantees.md and docs/performance.md).
    pub fn assert_holds(&self, scenario: &str, faults: &str, max_duplicates: i64) {
        println!("{scenario} ({} items): {self:?}", self.items);
        println!(
            "FAULTS| {scenario} | {} | {faults} | {} | {} | {} (≤ {max_duplicates} explained) | {} |",
            self.items, self.lost, self.stuck, self.duplicates, self.lost_attempts
        );
        assert_eq!(self.lost, 0, "{scenario}: items lost");
        assert_eq!(self.stuck, 0, "{scenario}: items stuck");
        assert_eq!(self.misnumbered, 0, "{scenario}: attempts not numbered 1..n");
        assert_eq!(self.open_attempts, 0, "{scenario}: attempts left open");
        assert_eq!(
            self.completed_without_one_success, 0,
            "{scenario}: completed items without exactly one COMPLETED attempt"
        );
        assert_eq!(self.failed_without_one_letter, 0, "{scenario}: FAILED items without exactly one dead letter");
        assert_eq!(self.letters_without_failure, 0, "{scenario}: open dead letters for items that are not FAILED");
        assert_eq!(self.concurrent_duplicates, 0, "{scenario}: one attempt executed twice");
        assert_eq!(self.misrolled_orders, 0, "{scenario}: orders whose status disagrees with their items");
        assert_eq!(
            self.miscounted_waits, 0,
            "{scenario}: items waiting on dependencies already met (or released early)"
        );
        assert_eq!(self.started_early, 0, "{scenario}: items started before a BLOCKS dependency completed");
        assert!(
            self.duplicates <= max_duplicates,
            "{scenario}: {} duplicate executions > {max_duplicates} explained by faults",
            self.duplicates
        );
    }
}

pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// The pid in the live leader lease's holder (worker ids are `host-pid-suffix`), if any
/// replica holds a live lease.
pub async fn leader_pid(db: &TestDb) -> Option<i32> {
    let holder: Option<String> = sqlx::query_scalar("SELECT holder FROM orderly_leader WHERE expires_at > now()")
        .fetch_optional(&db.pool)
        .await
        .ok()
        .flatten();
    holder.and_then(|h| h.rsplit('-').nth(1).and_then(|pid| pid.parse().ok()))
}

/// The leader lease's epoch (0 before any replica led).
pub async fn leader_epoch(db: &TestDb) -> i64 {
    sqlx::query_scalar("SELECT coalesce((SELECT epoch FROM orderly_leader), 0)").fetch_one(&db.pool).await.unwrap_or(0)
}

/// Waits until the process `pid` holds the live leader lease; returns how long that took.
pub async fn wait_leader(db: &TestDb, pid: i32, what: &str, deadline: Duration) -> Duration {
    let start = Instant::now();
    wait_until(what, deadline, || async move { leader_pid(db).await == Some(pid) }).await;
    start.elapsed()
}

/// A TCP proxy between a daemon and PostgreSQL that can be frozen: while paused it accepts
/// nothing new and forwards no byte in either direction, but closes nothing, as a network
/// partition that sends no FIN or RST would.
pub struct Proxy {
    pub addr: std::net::SocketAddr,
    paused: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(upstream: &str) -> Proxy {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let paused = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let upstream = upstream.to_owned();
        let flag = paused.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else { continue };
                while flag.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else { continue };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(forward(cr, sw, flag.clone()));
                tokio::spawn(forward(sr, cw, flag.clone()));
            }
        });
        Proxy { addr, paused, task }
    }

    /// `url` (a postgres:// URL) through this proxy.
    pub fn url(&self, url: &str) -> String {
        let mut parsed = reqwest::Url::parse(url).unwrap();
        parsed.set_port(Some(self.addr.port())).unwrap();
        parsed.to_string()
    }

    pub fn pause(&self) {
        self.paused.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn resume(&self) {
        self.paused.store(false, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn forward(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    paused: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        while paused.load(std::sync::atomic::Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        // Bytes read just as the pause began are held until it ends, not dropped.
        while paused.load(std::sync::atomic::Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
