//! The admin port under a flood: idle and half-sent connections beyond `admin.max_connections`
//! do not stop the probes, the API or the engine; a process out of file handles releases its
//! command agents' items instead of dead-lettering them.

use crate::api::{READ, tokens_toml};
use crate::common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Opens `n` connections that each send the start of a request line and nothing more.
fn half_sent(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    half_sent_within(addr, n, Duration::from_secs(2))
}

/// [`half_sent`], each connection given up after `within` (a server that cannot accept).
fn half_sent_within(addr: SocketAddr, n: usize, within: Duration) -> Vec<TcpStream> {
    (0..n)
        .filter_map(|_| {
            let mut s = TcpStream::connect_timeout(&addr, within).ok()?;
            s.write_all(b"GET / HTTP/1.1\r\n").ok()?;
            s.set_read_timeout(Some(Duration::from_millis(1))).ok()?;
            Some(s)
        })
        .collect()
}

/// How many of `conns` the server has closed (a read sees EOF or a reset).
fn closed(conns: &mut [TcpStream]) -> usize {
    let mut n = 0;
    for s in conns.iter_mut() {
        let mut buf = [0u8; 64];
        n += usize::from(match s.read(&mut buf) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
        });
    }
    n
}

#[tokio::test]
async fn twice_the_connection_limit_held_open_leaves_probes_api_and_engine_working() {
    let db = TestDb::new().await;
    let limit = 20;
    let engine = db
        .engine(&format!(
            "{}[admin]\nmax_connections = {limit}\nidle_timeout = \"30s\"\n[routes]\nTICKET = \"echo\"\n",
            tokens_toml()
        ))
        .await;
    let addr = engine.admin_addr().unwrap();
    // No pooled connections: each request below opens its own, as a probe does (a kept-alive
    // one is idle between requests, and the server may close it to make room).
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    // Ready first (its LISTEN connection up): what the flood must not take away.
    wait_until("the engine to be ready", Duration::from_secs(10), || {
        let (client, url) = (&client, format!("http://{addr}/readyz"));
        async move { client.get(url).send().await.is_ok_and(|r| r.status() == 200) }
    })
    .await;
    let mut flood = half_sent(addr, 2 * limit);
    assert_eq!(flood.len(), 2 * limit, "every flood connection was accepted by the kernel");
    // Each probe, API call and item below opens a fresh connection while the flood holds on.
    let mut latencies = Vec::new();
    for _ in 0..10 {
        let start = Instant::now();
        let health = client.get(format!("http://{addr}/healthz")).send().await.expect("/healthz answers");
        assert_eq!(health.status(), 200);
        latencies.push(start.elapsed().as_secs_f64() * 1000.0);
        let ready = client.get(format!("http://{addr}/readyz")).send().await.expect("/readyz answers");
        let ready_status = ready.status();
        assert_eq!(ready_status, 200, "/readyz under the flood: {}", ready.text().await.unwrap_or_default());
        let status =
            client.get(format!("http://{addr}/api/v1/status")).bearer_auth(READ).send().await.expect("the API answers");
        assert_eq!(status.status(), 200);
        flood.extend(half_sent(addr, 4));
    }
    let order = insert_order(&db.pool, "MEDIUM").await;
    let item = insert_item(&db.pool, order, "TICKET", "{}").await;
    wait_for_status(&db.pool, item, "COMPLETED").await;
    let shut = closed(&mut flood);
    assert!(
        shut >= flood.len() - limit,
        "the server closed idle connections past the limit: {shut} of {}",
        flood.len()
    );
    latencies.sort_by(f64::total_cmp);
    println!(
        "ADMIN FLOOD| {} half-sent connections against max_connections = {limit} | /healthz p50 {:.1} ms, max {:.1} ms | {shut} closed by the server |",
        flood.len(),
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1]
    );
    stop(engine).await;
}

#[tokio::test]
async fn idle_connections_are_closed_after_the_idle_timeout() {
    let db = TestDb::new().await;
    let engine = db.engine("[admin]\nidle_timeout = \"1s\"\n").await;
    let addr = engine.admin_addr().unwrap();
    let mut conns = half_sent(addr, 5);
    wait_until("the half-sent connections to be closed", Duration::from_secs(10), || {
        let n = closed(&mut conns);
        async move { n == 5 }
    })
    .await;
    stop(engine).await;
}

/// A daemon whose process may open only a few files: a flood of connections makes `accept`
/// and the command agent's spawn fail with EMFILE. Neither is fatal, and the item is released
/// (HOST_RESOURCES_EXHAUSTED, not counted) rather than dead-lettered; once the flood is gone
/// it completes.
#[tokio::test]
async fn out_of_file_handles_is_transient_for_the_admin_port_and_the_agents() {
    let db = TestDb::new().await;
    let dir = std::env::temp_dir().join(format!("orderly-fds-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("orderly.toml");
    std::fs::write(
        &config,
        "[database]\nmigrate_on_start = false\nmax_connections = 4\n\
         [worker]\nconcurrency = 2\npoll_interval = \"100ms\"\n\
         [retry]\nbackoff_base = \"100ms\"\nbackoff_max = \"300ms\"\n\
         [admin]\nlisten = \"127.0.0.1:0\"\nmax_connections = 10000\nidle_timeout = \"1h\"\n\
         [agents.script]\nkind = \"command\"\nprogram = \"/bin/echo\"\nargs = [\"{}\"]\n\
         [routes]\nTICKET = \"script\"\n[log]\nformat = \"json\"\nlevel = \"info,sqlx=error\"\n",
    )
    .unwrap();
    let log = dir.join("daemon.log");
    // `ulimit -n` sets the hard limit too, so the daemon cannot raise it at start.
    let mut daemon = Command::new("/bin/sh")
        .args([
            "-c",
            &format!("ulimit -n 64; exec {} --config {} run", env!("CARGO_BIN_EXE_orderly"), config.display()),
        ])
        .env("DATABASE_URL", &db.url)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let addr: SocketAddr = {
        let mut found = None;
        wait_until("the admin address in the log", Duration::from_secs(15), || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            found = text
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .find(|e| {
                    e["message"] == "admin server listening" || e["fields"]["message"] == "admin server listening"
                })
                .and_then(|e| e["addr"].as_str().or(e["fields"]["addr"].as_str()).map(str::to_owned))
                .and_then(|a| a.parse().ok());
            let done = found.is_some();
            async move { done }
        })
        .await;
        found.unwrap()
    };
    // One item through first, so that the engine's pool holds the connections a run needs
    // (a flood that beats the pool to the file handles makes every database read fail
    // instead: released as DATABASE_UNAVAILABLE, which is not what this test is about).
    let warm = insert_order(&db.pool, "MEDIUM").await;
    let warm_item = insert_item(&db.pool, warm, "TICKET", "{}").await;
    wait_for_status(&db.pool, warm_item, "COMPLETED").await;
    // Take every file handle the daemon has left.
    let flood = half_sent_within(addr, 100, Duration::from_millis(200));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let order = insert_order(&db.pool, "MEDIUM").await;
    let item = insert_item(&db.pool, order, "TICKET", "{}").await;
    wait_until("a released attempt (the spawn failed for want of file handles)", Duration::from_secs(20), || {
        let pool = db.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM attempts WHERE work_item_id = $1 AND error_code = 'HOST_RESOURCES_EXHAUSTED'",
            )
            .bind(item)
            .fetch_one(&pool)
            .await
            .unwrap()
                > 0
        }
    })
    .await;
    assert_eq!(item_status(&db.pool, item).await, "QUEUED", "released, not dead-lettered");
    drop(flood);
    wait_for_status(&db.pool, item, "COMPLETED").await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("admin server cannot accept a connection"), "accept failures are logged\n{text}");
    assert!(matches!(daemon.try_wait(), Ok(None)), "the daemon is still running\n{text}");
    let dead: i64 = sqlx::query_scalar("SELECT count(*) FROM dead_letters").fetch_one(&db.pool).await.unwrap();
    assert_eq!(dead, 0);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(daemon.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    assert!(daemon.wait().unwrap().success(), "{}", std::fs::read_to_string(&log).unwrap());
}

/// Failed bearer tokens and sign-ins are counted by client address: past the allowance the
/// address gets 429 with Retry-After, whatever it sends.
#[tokio::test]
async fn guessing_tokens_is_limited_per_client_address() {
    let db = TestDb::new().await;
    let engine = db.engine(&tokens_toml()).await;
    let addr = engine.admin_addr().unwrap();
    let client = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(5)).build().unwrap();
    let mut statuses = Vec::new();
    for n in 0..(orderly::admin::auth::FAILURES_ALLOWED + 2) {
        let answer = client
            .get(format!("http://{addr}/api/v1/status"))
            .bearer_auth(format!("orderly_guess{n}"))
            .send()
            .await
            .unwrap();
        statuses.push(answer.status().as_u16());
        if answer.status() == 429 {
            assert!(answer.headers().contains_key("retry-after"), "429 says when to come back");
        }
    }
    let allowed = orderly::admin::auth::FAILURES_ALLOWED as usize;
    assert!(statuses[..allowed].iter().all(|s| *s == 401), "{statuses:?}");
    assert!(statuses[allowed..].iter().all(|s| *s == 429), "{statuses:?}");
    // The sign-in form is refused too, from the same address.
    let sign_in = client
        .post(format!("http://{addr}/login"))
        .header("origin", format!("http://{addr}"))
        .form(&[("token", READ)])
        .send()
        .await
        .unwrap();
    assert_eq!(sign_in.status(), 429);
    stop(engine).await;
}
