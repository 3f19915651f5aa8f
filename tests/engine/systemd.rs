//! `orderly run` under systemd (`Type=notify`, `WatchdogSec=`): the test plays the service
//! manager's side, a datagram socket named in `NOTIFY_SOCKET` with `WATCHDOG_USEC` set, and
//! runs the real binary against its own database.

use crate::common::*;
use std::os::unix::net::UnixDatagram;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The manager's end: every notification received, with when.
struct FakeSystemd {
    /// What `NOTIFY_SOCKET` is set to.
    address: String,
    received: Arc<Mutex<Vec<(Instant, String)>>>,
    dir: std::path::PathBuf,
}

impl FakeSystemd {
    /// A socket at a path, or (`abstract_name`) in the abstract namespace (`@name`).
    fn start(abstract_name: bool) -> FakeSystemd {
        let dir = std::env::temp_dir().join(format!("orderly-systemd-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let (socket, address) = if abstract_name {
            use std::os::linux::net::SocketAddrExt;
            let name = format!("orderly-test-notify-{}", uuid::Uuid::new_v4().simple());
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
            (UnixDatagram::bind_addr(&addr).unwrap(), format!("@{name}"))
        } else {
            let path = dir.join("notify");
            (UnixDatagram::bind(&path).unwrap(), path.to_str().unwrap().to_owned())
        };
        let received = Arc::new(Mutex::new(Vec::new()));
        let sink = received.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            // Ends when the test drops its side (the socket is leaked with the thread otherwise).
            socket.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
            while let Ok(n) = socket.recv(&mut buf) {
                sink.lock().unwrap().push((Instant::now(), String::from_utf8_lossy(&buf[..n]).into_owned()));
            }
        });
        FakeSystemd { address, received, dir }
    }

    /// Times at which a notification with the assignment `line` (`READY=1`) arrived.
    fn times(&self, line: &str) -> Vec<Instant> {
        self.received.lock().unwrap().iter().filter(|(_, m)| m.lines().any(|l| l == line)).map(|(t, _)| *t).collect()
    }

    async fn wait_for(&self, line: &str, deadline: Duration) -> Instant {
        let what = format!("systemd notification {line}");
        wait_until(&what, deadline, || async { !self.times(line).is_empty() }).await;
        self.times(line)[0]
    }
}

impl Drop for FakeSystemd {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

/// `orderly run` as systemd starts it: NOTIFY_SOCKET, WATCHDOG_USEC (200 ms: a ping every
/// 100 ms), logs in a file of the test's.
fn daemon(db: &TestDb, systemd: &FakeSystemd, config: &str, failpoints: &str) -> (Child, std::path::PathBuf) {
    let config_path = systemd.dir.join("orderly.toml");
    std::fs::write(&config_path, config).unwrap();
    let log = systemd.dir.join("orderly.log");
    let child = Command::new(env!("CARGO_BIN_EXE_orderly"))
        .args(["--config", config_path.to_str().unwrap(), "run"])
        .env("DATABASE_URL", &db.url)
        .env("NOTIFY_SOCKET", &systemd.address)
        .env("WATCHDOG_USEC", "200000")
        // Beside other daemons of the suite: a port of its own.
        .env("ORDERLY__ADMIN__LISTEN", "127.0.0.1:0")
        .env_remove("WATCHDOG_PID")
        .env_remove("RUST_LOG")
        .env("ORDERLY_FAILPOINTS", failpoints)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("orderly runs");
    (child, log)
}

async fn sigterm_and_wait(mut child: Child) -> std::process::ExitStatus {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "the daemon did not exit within 30 s of SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `log.format` is left at its default, `auto`: stderr is a file, so the log is JSON.
const CONFIG: &str = "[worker]\npoll_interval = \"100ms\"\nstall_timeout = \"1s\"\nshutdown_grace = \"2s\"\n\
                      [routes]\nTICKET = \"echo\"\n";

#[tokio::test]
async fn run_notifies_ready_pings_the_watchdog_and_notifies_stopping() {
    let db = TestDb::new().await;
    let systemd = FakeSystemd::start(false);
    let (child, log) = daemon(&db, &systemd, CONFIG, "");
    let ready = systemd.wait_for("READY=1", Duration::from_secs(90)).await;
    // READY=1 means the engine runs: an item inserted now is processed.
    let order = insert_order(&db.pool, "HIGH").await;
    let item = insert_item(&db.pool, order, "TICKET", r#"{"subject":"ready"}"#).await;
    wait_for_status(&db.pool, item, "COMPLETED").await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let pings = systemd.times("WATCHDOG=1");
    assert!(pings.len() >= 5, "a ping every 100 ms while healthy, got {} in 1.2 s+", pings.len());
    assert!(pings.iter().all(|t| *t >= ready), "no ping before READY=1");

    let status = sigterm_and_wait(child).await;
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "SIGTERM exits 0, got {status}: {log}");
    json_log_has_the_stable_fields(&log);
    let stopping = systemd.wait_for("STOPPING=1", Duration::from_secs(5)).await;
    assert!(stopping > ready);
    // The last ping may have been in flight with the signal; none follows the drain's start.
    let late = systemd.times("WATCHDOG=1").into_iter().filter(|t| *t > stopping + Duration::from_millis(50)).count();
    assert_eq!(late, 0, "no watchdog ping after STOPPING=1");
}

#[tokio::test]
async fn watchdog_pings_stop_while_the_dispatcher_is_wedged() {
    let db = TestDb::new().await;
    let systemd = FakeSystemd::start(true); // an abstract socket name: NOTIFY_SOCKET=@…
    let (child, log) = daemon(&db, &systemd, CONFIG, "dispatcher_hang");
    let ready = systemd.wait_for("READY=1", Duration::from_secs(90)).await;
    // The dispatcher is busy from its first round on and never finishes it: healthy for
    // stall_timeout (1 s), then unhealthy. Watch for 3 s past READY=1.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pings = systemd.times("WATCHDOG=1");
    let last = pings.last().copied();
    let quiet_since = ready + Duration::from_millis(1600);
    assert!(
        pings.iter().all(|t| *t < quiet_since),
        "pings must stop about 1 s (stall_timeout) after the dispatcher wedged; got {} pings, the last {:?} after READY",
        pings.len(),
        last.map(|t| t - ready)
    );
    let order = insert_order(&db.pool, "HIGH").await;
    let item = insert_item(&db.pool, order, "TICKET", "{}").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(item_status(&db.pool, item).await, "QUEUED", "a wedged dispatcher claims nothing");

    let status = sigterm_and_wait(child).await;
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "the hang ends with shutdown; exit 0, got {status}: {log}");
    assert!(log.contains("withholding systemd watchdog pings") && log.contains("dispatcher"), "{log}");
    systemd.wait_for("STOPPING=1", Duration::from_secs(5)).await;
}

/// `log.format = "auto"` with stderr not a terminal: one JSON object per line, with the field
/// names docs/operations.md promises.
fn json_log_has_the_stable_fields(log: &str) {
    let events: Vec<serde_json::Value> =
        log.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect();
    assert!(!events.is_empty(), "the daemon logged");
    for event in &events {
        for key in ["timestamp", "level", "target", "message"] {
            assert!(event[key].is_string(), "{key} in {event}");
        }
    }
    let started = events.iter().find(|e| e["message"] == "engine started").expect("engine started is logged");
    assert_eq!(started["level"], "INFO");
    assert!(started["worker"].is_string() && started["concurrency"].is_number(), "{started}");
    assert!(events.iter().any(|e| e["message"] == "engine stopped"), "engine stopped is logged");
}
