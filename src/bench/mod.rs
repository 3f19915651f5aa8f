//! `orderly bench`: whole-process benchmark. Against a scratch database (created, then
//! dropped), enqueue items the way an upstream does (plain batched INSERTs), run `orderly run`
//! as a child process (the production code path: attempts, evals/approval with the default
//! policy, roll-ups), and report throughput, latencies, the daemon's RSS and CPU, and the
//! database's work per item. Reports figures; asserts nothing.
//!
//! With `--agent-latency`, the items go to an `http` agent instead of `echo`: a server in the
//! bench's own process, on loopback, that answers every request after that latency
//! ([`LatencyAgent`]). The report then adds the ideal throughput (concurrency / latency),
//! the measured share of it, and how many requests the agent held at once.

pub mod agent;
mod flood;
mod report;
pub mod sql;

use crate::cli::{BenchArgs, BenchShape};
use crate::cmd::unreachable_hint;
use crate::config::Settings;
use crate::db;
use agent::LatencyAgent;
use anyhow::Context;
use serde::Serialize;
use sqlx::PgPool;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug, Default, Clone, Serialize)]
pub struct BenchReport {
    pub date: String,
    pub items: usize,
    pub items_per_order: usize,
    /// How the items were enqueued (see `orderly bench --help`).
    pub shape: String,
    pub concurrency: usize,
    /// `echo`, or `http` (the bench's own server, see [`LatencyAgent`]).
    pub agent: String,
    /// How long the `http` agent takes to answer; `None` for `echo`.
    pub agent_latency_ms: Option<f64>,
    /// concurrency / latency: the most the daemon can finish with every slot busy.
    pub ideal_items_per_s: Option<f64>,
    /// processing_items_per_s / ideal_items_per_s.
    pub ratio_to_ideal: Option<f64>,
    /// Requests the `http` agent answered during processing (one per item when none fails).
    pub agent_requests: Option<u64>,
    /// Most requests the `http` agent held at once during processing: the daemon's real
    /// concurrency, at most `concurrency`.
    pub agent_peak_in_flight: Option<usize>,
    /// CPU of the bench's process during processing, per item: the `http` agent's server
    /// almost entirely (on the same cores as the daemon and PostgreSQL).
    pub bench_cpu_us_per_item: Option<f64>,
    pub history: usize,
    pub fsync: String,
    pub synchronous_commit: String,
    pub enqueue_items_per_s: f64,
    pub processing_items_per_s: f64,
    pub processing_seconds: f64,
    pub pickup_ms: Percentiles,
    /// Dependency shapes: from the finish of an item's last dependency to its start.
    pub release_ms: Option<Percentiles>,
    /// Pickup latency when every INSERT comes on a connection opened for it.
    pub pickup_new_connection_ms: Percentiles,
    /// Wall time of a new connection's first INSERT of an item (commit included).
    pub first_insert_ms: Percentiles,
    /// The same into a copy of `work_items` without orderly's trigger and queue indexes.
    pub first_insert_plain_ms: Percentiles,
    /// Median of `first_insert_ms` over the median of `first_insert_plain_ms`.
    pub first_insert_ratio: f64,
    pub end_to_end_ms: Percentiles,
    pub end_to_end_offered_per_s: f64,
    pub daemon_peak_rss_mib: f64,
    pub daemon_cpu_seconds: f64,
    pub daemon_cpu_us_per_item: f64,
    pub db_transactions_per_item: f64,
    pub db_rows_written_per_item: f64,
    /// WAL written during processing, per item (cluster-wide LSN difference).
    pub db_wal_bytes_per_item: f64,
    /// `--shape flood`: the newcomer tenant's pickups and the backlog's rate.
    pub flood: Option<flood::FloodReport>,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct Percentiles {
    pub samples: usize,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    fn of(mut values: Vec<f64>) -> Percentiles {
        values.sort_by(f64::total_cmp);
        let at = |p: f64| {
            if values.is_empty() { f64::NAN } else { values[((values.len() - 1) as f64 * p).round() as usize] }
        };
        Percentiles { samples: values.len(), p50: at(0.5), p90: at(0.9), p99: at(0.99), max: at(1.0) }
    }
}

pub async fn run(settings: Settings, args: BenchArgs) -> anyhow::Result<()> {
    let mut url = reqwest::Url::parse(&settings.database.url).context("database.url is not a URL")?;
    url.set_path(&format!("/{}", args.database_name));
    let url = url.to_string();
    db::drop_database(&url).await.map_err(|e| unreachable_hint(&url, e))?;
    db::ensure_database(&url).await.map_err(|e| unreachable_hint(&url, e))?;
    // One connection observes (its own statistics are flushed on demand, see `settled_counters`);
    // the upstream's inserts use a pool of their own, closed before processing starts.
    let pool = sqlx::postgres::PgPoolOptions::new().max_connections(1).connect(&url).await?;
    db::migrate(&pool).await?;
    let say = |text: String| {
        if !args.json {
            eprintln!("{text}");
        }
    };

    let mut report = BenchReport {
        date: chrono::Utc::now().format("%Y-%m-%d").to_string(),
        items: args.items,
        items_per_order: args.items_per_order,
        shape: format!("{:?}", args.shape).to_lowercase(),
        concurrency: args.concurrency,
        agent: if args.agent_latency.is_some() { "http" } else { "echo" }.into(),
        agent_latency_ms: args.agent_latency.map(|l| l.as_secs_f64() * 1e3),
        ideal_items_per_s: args.agent_latency.map(|l| args.concurrency as f64 / l.as_secs_f64()),
        history: args.history,
        ..BenchReport::default()
    };
    (report.fsync, report.synchronous_commit) = sql::durability_settings(&pool).await?;
    if args.history > 0 {
        say(format!("pre-filling {} finished items with their attempts…", args.history));
        sql::prefill_history(&pool, args.history as i64).await?;
    }

    say(format!("enqueueing {} items ({} per order) with batched INSERTs…", args.items, args.items_per_order));
    let upstream = sqlx::postgres::PgPoolOptions::new().max_connections(4).connect(&url).await?;
    let started = Instant::now();
    let tenants = flood::Tenants::default();
    let backlog_tenant = (args.shape == BenchShape::Flood).then_some(tenants.backlog);
    enqueue(&upstream, args.items, args.items_per_order, args.shape, backlog_tenant).await?;
    report.enqueue_items_per_s = args.items as f64 / started.elapsed().as_secs_f64();
    upstream.close().await;

    let agent = match args.agent_latency {
        Some(latency) => {
            // The agent's server holds a socket per request in flight, as the daemon does.
            if let Err(e) = crate::daemon::raise_open_files_limit() {
                say(format!("cannot raise the open-file limit: {e}"));
            }
            Some(LatencyAgent::start(latency, args.usage).await?)
        }
        None => None,
    };
    let config = std::env::temp_dir().join(format!("orderly-bench-{}.toml", std::process::id()));
    let mut daemon_toml = daemon_config(args.concurrency, agent.as_ref());
    if args.no_tenant_turns {
        daemon_toml = daemon_toml.replace("[worker]\n", "[worker]\ntenant_turns = false\n");
    }
    if args.shape == BenchShape::Retried {
        daemon_toml.push_str(RETRIED_CONFIG);
    }
    std::fs::write(&config, daemon_toml)?;
    let before = settled_counters(&pool).await?;
    say(match &agent {
        Some(agent) => format!(
            "processing with `orderly run`, an http agent answering after {}…",
            humantime::format_duration(agent.latency)
        ),
        None => "processing with `orderly run`…".into(),
    });
    let started = sql::now(&pool).await?;
    let (bench_cpu_before, _) = process_usage(std::process::id());
    let daemon = spawn_daemon(&config, &url)?;
    if args.shape == BenchShape::Flood {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let newcomers_pool = sqlx::postgres::PgPoolOptions::new().max_connections(1).connect(&url).await?;
        let newcomers = flood::newcomers(newcomers_pool, tenants.newcomer, args.newcomer_rate, stop.clone());
        flood::wait_tenant_drained(&pool, tenants.backlog, Duration::from_secs(3600)).await?;
        stop.store(true, Ordering::Relaxed);
        let newcomer_items = newcomers.await?;
        wait_drained(&pool, Duration::from_secs(60)).await?;
        let (pickups, backlog_items_per_s) = flood::report(&pool, tenants, started).await?;
        report.flood = Some(flood::FloodReport {
            newcomer_rate_per_s: args.newcomer_rate,
            newcomer_items,
            newcomer_pickup_ms: Percentiles::of(pickups),
            backlog_items_per_s,
            tenant_turns: !args.no_tenant_turns,
        });
    }
    wait_drained(&pool, Duration::from_secs(3600)).await?;
    if let Some(agent) = &agent {
        let (bench_cpu, _) = process_usage(std::process::id());
        report.bench_cpu_us_per_item = Some((bench_cpu - bench_cpu_before) * 1e6 / args.items as f64);
        report.agent_requests = Some(agent.stats.requests.load(Ordering::Relaxed));
        report.agent_peak_in_flight = Some(agent.stats.peak.load(Ordering::Relaxed));
    }
    // The end is the last recorded attempt on the database clock, so the (deliberately
    // infrequent) drain poll does not blur the figure.
    let finished = sql::last_completion(&pool).await?.unwrap_or(started);
    report.processing_seconds = (finished - started).num_microseconds().unwrap_or(0) as f64 / 1e6;
    report.processing_items_per_s = args.items as f64 / report.processing_seconds;
    report.ratio_to_ideal = report.ideal_items_per_s.map(|ideal| report.processing_items_per_s / ideal);
    // The daemon is still running: its high-water mark covers all of processing, every
    // slot busy included.
    let (cpu, processing_rss) = process_usage(daemon.id());
    // The daemon's connections publish their statistics when they close.
    stop_daemon(daemon);
    if graph_edges(args.shape, 1).is_some() {
        report.release_ms = Some(Percentiles::of(sql::release_latencies(&pool).await?));
    }
    let after = settled_counters(&pool).await?;
    report.daemon_cpu_seconds = cpu;
    report.daemon_cpu_us_per_item = cpu * 1e6 / args.items as f64;
    let per_item = |n: i64| n as f64 / args.items as f64;
    report.db_transactions_per_item = per_item(after.transactions - before.transactions);
    report.db_rows_written_per_item = per_item(after.rows_written - before.rows_written);
    report.db_wal_bytes_per_item = per_item(after.wal_bytes - before.wal_bytes);

    if args.throughput_only {
        return finish(&args, &report, &config, pool, &url, processing_rss).await;
    }
    // A fresh daemon, idle once it listens, for the latency phases.
    let daemon = spawn_daemon(&config, &url)?;
    if let Err(e) = wait_listening(&pool, Duration::from_secs(30)).await {
        stop_daemon(daemon);
        return Err(e);
    }
    say("pickup latency on an idle engine (a pooled upstream, then one that connects per INSERT)…".into());
    let mut pickups = Vec::new();
    for _ in 0..args.pickup_samples {
        tokio::time::sleep(Duration::from_millis(15)).await;
        pickups.push(sql::timed_single_insert(&mut *pool.acquire().await?).await?);
    }
    let mut fresh = Vec::new();
    for _ in 0..args.pickup_samples {
        tokio::time::sleep(Duration::from_millis(15)).await;
        let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&url).await?;
        fresh.push(sql::timed_single_insert(&mut conn).await?);
        sqlx::Connection::close(conn).await?;
    }
    wait_drained(&pool, Duration::from_secs(60)).await?;
    report.pickup_ms = Percentiles::of(sql::pickup_latencies(&pool, &pickups).await?);
    report.pickup_new_connection_ms = Percentiles::of(sql::pickup_latencies(&pool, &fresh).await?);

    // The upstream's first INSERT on a new connection, against the same INSERT into a copy of
    // the table without orderly's trigger and queue indexes, alternating, on the live engine.
    say("first INSERT on a new connection: work_items and a plain copy…".into());
    let order = sql::create_plain_copy(&pool).await?;
    let (mut ours, mut plain) = (Vec::new(), Vec::new());
    for _ in 0..args.pickup_samples {
        tokio::time::sleep(Duration::from_millis(5)).await;
        plain.push(sql::first_insert_ms(&url, sql::InsertTarget::PlainCopy, order).await?);
        ours.push(sql::first_insert_ms(&url, sql::InsertTarget::WorkItems, order).await?);
    }
    wait_drained(&pool, Duration::from_secs(60)).await?;
    report.first_insert_ms = Percentiles::of(ours);
    report.first_insert_plain_ms = Percentiles::of(plain);
    report.first_insert_ratio = report.first_insert_ms.p50 / report.first_insert_plain_ms.p50;

    let offered = (report.processing_items_per_s * 0.5).clamp(100.0, 20_000.0);
    say(format!("end-to-end latency at {offered:.0} items/s offered for 3s…"));
    let marker = sql::now(&pool).await?;
    offer_load(&pool, offered, Duration::from_secs(3)).await?;
    wait_drained(&pool, Duration::from_secs(120)).await?;
    report.end_to_end_offered_per_s = offered;
    report.end_to_end_ms = Percentiles::of(sql::end_to_end_since(&pool, marker).await?);

    let (_, latency_rss) = process_usage(daemon.id());
    stop_daemon(daemon);
    finish(&args, &report, &config, pool, &url, processing_rss.max(latency_rss)).await
}

/// Cleans up and prints the report.
async fn finish(
    args: &BenchArgs,
    report: &BenchReport,
    config: &std::path::Path,
    pool: PgPool,
    url: &str,
    peak_rss_mib: f64,
) -> anyhow::Result<()> {
    let report = BenchReport { daemon_peak_rss_mib: peak_rss_mib, ..report.clone() };
    let _ = std::fs::remove_file(config);
    pool.close().await;
    if !args.keep {
        db::drop_database(url).await?;
    }
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        report::print(&report);
    }
    Ok(())
}

/// Added to the daemon's configuration for `--shape retried`: the echo agent fails the first
/// attempt of the items marked `"fail_once": true`, and a retry waits 10 ms (not the default
/// second), so the shape measures the retry's work rather than its wait.
const RETRIED_CONFIG: &str = "[agents.echo]\nkind = \"echo\"\nfail_once_key = \"fail_once\"\n\
                              [retry]\nbackoff_base = \"10ms\"\nbackoff_max = \"10ms\"\n";

/// The daemon's configuration: the given concurrency, TICKET routed to `echo`, or to the
/// bench's own `http` agent when there is one.
fn daemon_config(concurrency: usize, agent: Option<&LatencyAgent>) -> String {
    let route = match agent {
        None => "[routes]\nTICKET = \"echo\"\n".to_owned(),
        // Loopback, so allow_private; the timeout leaves room for a loaded machine.
        Some(agent) => format!(
            "[agents.bench_http]\nkind = \"http\"\nurl = \"{}\"\nallow_private = true\ntimeout = \"{}\"\n\
             [routes]\nTICKET = \"bench_http\"\n\
             [prices.bench-model]\ninput_per_million = \"2.50\"\noutput_per_million = \"10\"\ncurrency = \"USD\"\n",
            agent.url,
            humantime::format_duration(agent.latency + Duration::from_secs(30))
        ),
    };
    format!(
        "[database]\nmigrate_on_start = false\n[worker]\nconcurrency = {concurrency}\n{route}\
         [admin]\nlisten = \"127.0.0.1:0\"\n[log]\nlevel = \"warn,sqlx=error\"\n"
    )
}

fn spawn_daemon(config: &std::path::Path, url: &str) -> anyhow::Result<Child> {
    Command::new(std::env::current_exe()?)
        .args(["--config", config.to_str().unwrap_or_default(), "run"])
        .env("DATABASE_URL", url)
        .env_remove("ORDERLY_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .context("starting `orderly run`")
}

/// SIGTERM, then waits for the daemon to exit.
fn stop_daemon(mut daemon: Child) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(daemon.id() as i32), nix::sys::signal::Signal::SIGTERM);
    let _ = daemon.wait();
}

/// The database's counters once every other connection has closed. A backend publishes its
/// transaction and row counts at most once a second, an idle one after up to 10 s, and
/// always when it exits; the bench's own connection is told to publish first.
async fn settled_counters(pool: &PgPool) -> anyhow::Result<sql::DbCounters> {
    let start = Instant::now();
    while sql::other_connections(pool).await? > 0 {
        anyhow::ensure!(start.elapsed() < Duration::from_secs(30), "other connections still open after 30s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(sql::flushed_counters(pool).await?)
}

async fn wait_listening(pool: &PgPool, deadline: Duration) -> anyhow::Result<()> {
    let start = Instant::now();
    while !sql::anyone_listening(pool).await? {
        anyhow::ensure!(start.elapsed() < deadline, "the daemon did not LISTEN within {deadline:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// CPU seconds (user + system) and peak RSS (MiB) of a process, from /proc.
fn process_usage(pid: u32) -> (f64, f64) {
    let ticks = 100.0; // USER_HZ on Linux
    let cpu = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let fields: Vec<&str> = stat.rsplit(')').next()?.split_whitespace().collect();
            Some((fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?) / ticks)
        })
        .unwrap_or(f64::NAN);
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:"))?.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0);
    (cpu, rss)
}

/// The edges of one order of `n` items in a dependency shape, as (dependent, dependency)
/// positions, each dependent after its dependencies; `None` for the other shapes.
pub fn graph_edges(shape: BenchShape, n: usize) -> Option<Vec<(usize, usize)>> {
    match shape {
        BenchShape::Chain => Some((1..n).map(|k| (k, k - 1)).collect()),
        BenchShape::Fanout if n >= 3 => {
            let mut edges: Vec<(usize, usize)> = (1..n - 1).map(|k| (k, 0)).collect();
            edges.extend((1..n - 1).map(|k| (n - 1, k)));
            Some(edges)
        }
        BenchShape::Fanout => Some((1..n).map(|k| (k, 0)).collect()),
        BenchShape::Lattice => {
            let side = (n as f64).sqrt().floor().max(1.0) as usize;
            let mut edges = Vec::new();
            for k in 0..n {
                let (i, j) = (k / side, k % side);
                if i > 0 {
                    edges.push((k, k - side));
                }
                if j > 0 {
                    edges.push((k, k - 1));
                }
            }
            Some(edges)
        }
        _ => None,
    }
}

async fn enqueue(
    pool: &PgPool,
    items: usize,
    per_order: usize,
    shape: BenchShape,
    tenant: Option<uuid::Uuid>,
) -> anyhow::Result<()> {
    let per_order = per_order.max(1);
    let orders = items.div_ceil(per_order);
    if shape == BenchShape::Bulk {
        sql::insert_bulk_interleaved(pool, orders, per_order).await?;
        return Ok(());
    }
    if graph_edges(shape, 1).is_some() {
        for o in 0..orders {
            let n = per_order.min(items - o * per_order);
            let edges = graph_edges(shape, n).unwrap_or_default();
            sql::insert_graph_order(pool, n, &edges).await?;
        }
        return Ok(());
    }
    // Upstreams insert in their own transactions; a few run concurrently here.
    let mut tasks = tokio::task::JoinSet::new();
    let chunks = 4.min(orders.max(1));
    for chunk in 0..chunks {
        let pool = pool.clone();
        tasks.spawn(async move {
            let mut o = chunk;
            while o < orders {
                let n = per_order.min(items - o * per_order);
                let priority = (shape == BenchShape::Priorities).then(|| ["LOW", "MEDIUM", "HIGH", "URGENT"][o % 4]);
                let delayed = if shape == BenchShape::Delayed { 0.1 } else { 0.0 };
                let failing = if shape == BenchShape::Retried { 0.1 } else { 0.0 };
                sql::insert_order_with_items(&pool, n, priority, (delayed, failing), tenant).await?;
                o += chunks;
            }
            Ok::<_, sqlx::Error>(())
        });
    }
    while let Some(result) = tasks.join_next().await {
        result??;
    }
    Ok(())
}

async fn wait_drained(pool: &PgPool, deadline: Duration) -> anyhow::Result<()> {
    let start = Instant::now();
    // Polled every 100ms: a tight poll would itself load the database being measured.
    while sql::any_live(pool).await? {
        anyhow::ensure!(start.elapsed() < deadline, "items still live after {deadline:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

async fn offer_load(pool: &PgPool, per_second: f64, duration: Duration) -> anyhow::Result<()> {
    let batch = ((per_second / 100.0).ceil() as usize).max(1);
    let interval = Duration::from_secs_f64(batch as f64 / per_second);
    let start = Instant::now();
    let mut next = start;
    while start.elapsed() < duration {
        sql::insert_order_with_items(pool, batch, None, (0.0, 0.0), None).await?;
        next += interval;
        tokio::time::sleep_until(next.into()).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
