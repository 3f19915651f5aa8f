//! The bench's own HTTP agent: answers every envelope after a fixed latency and counts the
//! requests in flight (`orderly bench --agent-latency`).

use super::*;

/// The bench's `http` agent: a server on 127.0.0.1 (a free port) in the bench's own process,
/// on its multi-threaded runtime, that answers every POST to `/` with `{"ok":true}` after
/// `latency`. Each request costs it a timer and a small answer (the report gives its CPU per
/// item, which shares the cores with the daemon and PostgreSQL); [`AgentStats`] counts what
/// it served.
pub struct LatencyAgent {
    pub url: String,
    pub latency: Duration,
    /// Whether answers report usage (`orderly bench --usage`).
    pub usage: bool,
    pub stats: Arc<AgentStats>,
}

#[derive(Debug, Default)]
pub struct AgentStats {
    /// Requests answered.
    pub requests: AtomicU64,
    /// Requests being served now, and the most at once.
    pub in_flight: AtomicUsize,
    pub peak: AtomicUsize,
}

impl LatencyAgent {
    /// Binds and starts serving; the server lives as long as the runtime.
    pub async fn start(latency: Duration, usage: bool) -> anyhow::Result<LatencyAgent> {
        use axum::serve::ListenerExt;
        let stats = Arc::new(AgentStats::default());
        let app =
            axum::Router::new().route("/", axum::routing::post(answer)).with_state((latency, usage, stats.clone()));
        // A backlog above tokio's default 1,024: a claim starts up to claim_batch requests at once.
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind((std::net::Ipv4Addr::LOCALHOST, 0).into())?;
        let listener = socket.listen(4096)?;
        let url = format!("http://{}/", listener.local_addr()?);
        // Answers are small writes: no Nagle delay waiting for the client's ACK.
        let listener = listener.tap_io(|stream| {
            let _ = stream.set_nodelay(true);
        });
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                eprintln!("the bench's agent server stopped: {e}");
            }
        });
        Ok(LatencyAgent { url, latency, usage, stats })
    }
}

/// The answer of `--usage`: tokens of the bench's priced model (two cost entries an item).
const USAGE_ANSWER: &str = r#"{"ok":true,"usage":{"model":"bench-model","input_tokens":1200,"output_tokens":300}}"#;

/// One request: read the envelope, wait the latency, answer. A request the client gives up
/// on (its future dropped) leaves the count of those in flight all the same.
async fn answer(
    axum::extract::State((latency, usage, stats)): axum::extract::State<(Duration, bool, Arc<AgentStats>)>,
    _envelope: axum::body::Bytes,
) -> impl axum::response::IntoResponse {
    struct Serving<'a>(&'a AgentStats);
    impl Drop for Serving<'_> {
        fn drop(&mut self) {
            self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
    }
    let now = stats.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
    stats.peak.fetch_max(now, Ordering::Relaxed);
    let _serving = Serving(&stats);
    tokio::time::sleep(latency).await;
    stats.requests.fetch_add(1, Ordering::Relaxed);
    let body = if usage { USAGE_ANSWER } else { r#"{"ok":true}"# };
    ([(axum::http::header::CONTENT_TYPE, "application/json")], body)
}
