//! The admin HTTP server of `orderly run` (`admin.listen`): probes (`probes.rs`), Prometheus
//! metrics (`metrics.rs`), the JSON API under `/api/v1` (`api.rs`) and the web page at `/`
//! (`web.rs`), on one axum router over one [`AdminState`]. The API and the page need a token
//! of `[[admin.tokens]]` (`auth.rs`); the probes and `/metrics` need none.
//!
//! Life cycle: `Engine::start` binds the listener before migrations run and before any engine
//! task starts (a port that cannot be bound fails the start, naming `admin.listen`), so
//! `/healthz` answers from the start while `/readyz` says what is not ready yet. During the
//! drain `/readyz` answers 503 `draining` and the rest keeps serving; `Engine::shutdown`
//! stops the server last, gracefully (requests in progress finish, within
//! [`SHUTDOWN_BOUND`]).

pub mod api;
pub mod auth;
pub mod metrics;
pub mod probes;
pub mod server;
pub mod web;

use crate::config::Settings;
use crate::metrics::Metrics;
use crate::policy::catalog::Catalog;
use crate::worker::InFlight;
use anyhow::Context;
use sqlx::PgPool;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Longest the server's graceful stop waits for requests in progress.
pub const SHUTDOWN_BOUND: Duration = Duration::from_secs(2);

/// What the handlers read: the engine's pool, settings, counters and health handles.
#[derive(Clone)]
pub struct AdminState {
    /// The engine's pool (probes take one connection for a moment, within their timeout).
    pub pool: PgPool,
    pub settings: Arc<Settings>,
    /// This process's counters and histograms; `listening` is the LISTEN connection's flag.
    pub metrics: Arc<Metrics>,
    /// The database gauges the leader refreshes (see [`metrics::DbGauges`]).
    pub gauges: Arc<metrics::DbGauges>,
    /// Fired when an engine task died (`Engine::failed`).
    pub failed: CancellationToken,
    /// Fired when shutdown starts: the engine stops claiming and drains.
    pub draining: CancellationToken,
    /// Whether this replica is the elected leader.
    pub leadership: crate::leadership::Leadership,
    /// Executions this process holds leases for.
    pub in_flight: InFlight,
    pub worker_id: String,
    /// The pool of the API and the web page: a few connections of its own, opened on demand,
    /// with PostgreSQL's default planner settings (operators' filtered reads are not the
    /// engine's indexed statements), so operators never wait for or take the engine's.
    pub ops: PgPool,
    /// Routes and content formats, as the runner resolves them (a replay's content check,
    /// an item's waiting reason).
    pub catalog: Arc<Catalog>,
    /// `admin.tokens`, hashes decoded.
    pub tokens: Arc<auth::Tokens>,
    /// Where HTTP agents' progress callbacks go (`POST /api/v1/progress`).
    pub progress: crate::worker::progress::ProgressHub,
    /// The web page's sign-in sessions.
    pub sessions: Arc<auth::Sessions>,
    /// Failed authentications by client address (the API's bearer tokens, the page's sign-in).
    pub failed_auth: Arc<auth::FailedAuth>,
}

/// Connections of [`AdminState::ops`].
pub const OPS_POOL_CONNECTIONS: u32 = 4;

impl AdminState {
    /// A state for `settings` over the given engine and operators' pools, with no engine
    /// behind it (`failed`, `draining` and leadership unset): for tests and tools that serve
    /// the API without an engine.
    pub fn standalone(pool: PgPool, ops: PgPool, settings: Arc<Settings>) -> AdminState {
        let (_, leadership) = crate::leadership::Leadership::new("standalone", pool.clone());
        AdminState {
            progress: crate::worker::progress::ProgressHub::start(pool.clone()),
            catalog: Arc::new(Catalog::new(ops.clone(), settings.clone())),
            tokens: Arc::new(auth::Tokens::new(&settings.admin.tokens)),
            sessions: Default::default(),
            failed_auth: Default::default(),
            pool,
            ops,
            metrics: Arc::new(Metrics::new(settings.agents.keys())),
            settings,
            gauges: Default::default(),
            failed: CancellationToken::new(),
            draining: CancellationToken::new(),
            leadership,
            in_flight: InFlight::default(),
            worker_id: "standalone".to_owned(),
        }
    }
}

/// Every route of the admin server.
pub fn router(state: AdminState) -> axum::Router {
    // A replay's new content travels JSON-escaped (or form-encoded): up to six bytes each.
    let body_limit = state.settings.limits.max_content_bytes.saturating_mul(6).saturating_add(64 * 1024).max(2 << 20);
    axum::Router::new()
        .merge(probes::routes())
        .merge(metrics::routes())
        .merge(api::routes())
        .merge(web::routes())
        .layer(axum::extract::DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn_with_state(state.clone(), host_and_caching))
        .with_state(state)
}

/// Every answer: refused (421) unless the Host header names an IP address, `localhost` or
/// one of `admin.allowed_hosts`; never stored by a cache (`Cache-Control: no-store`, unless
/// the route set its own).
async fn host_and_caching(
    axum::extract::State(state): axum::extract::State<AdminState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::http::{HeaderValue, StatusCode, header};
    use axum::response::IntoResponse;
    // A browser always sends Host (a rebinding page cannot leave it out); a client that sends
    // none (HTTP/1.0, a request made in-process) is not one.
    let host = request.headers().get(header::HOST).map(|h| h.to_str().unwrap_or("\u{fffd}"));
    if let Some(host) = host.filter(|h| !host_allowed(h, &state.settings.admin.allowed_hosts)) {
        crate::telemetry::warn_limited(
            "admin-host",
            "admin request refused: its Host is not this server's (admin.allowed_hosts)",
            &format_args!("Host {host:?}"),
        );
        return (StatusCode::MISDIRECTED_REQUEST, "this server does not answer to that host name\n").into_response();
    }
    let mut response = next.run(request).await;
    response.headers_mut().entry(header::CACHE_CONTROL).or_insert(HeaderValue::from_static("no-store"));
    response
}

/// Whether a Host header (with or without port) names this server: an IP address,
/// `localhost`, or a name listed in `allowed` (case-insensitive); an empty one is refused.
pub fn host_allowed(host: &str, allowed: &[String]) -> bool {
    let name = match host.strip_prefix('[') {
        // [v6]:port
        Some(rest) => match rest.split_once(']') {
            Some((v6, _)) => return v6.parse::<std::net::Ipv6Addr>().is_ok(),
            None => return false,
        },
        None => host
            .rsplit_once(':')
            .map_or(host, |(name, port)| if port.chars().all(|c| c.is_ascii_digit()) { name } else { host }),
    };
    !name.is_empty()
        && (name.parse::<std::net::IpAddr>().is_ok()
            || name.eq_ignore_ascii_case("localhost")
            || allowed.iter().any(|a| a.eq_ignore_ascii_case(name)))
}

/// Starts the server on `admin.listen`, or nothing when it is `off`.
pub async fn start(state: AdminState) -> anyhow::Result<Option<AdminServer>> {
    match state.settings.admin.listen {
        None => Ok(None),
        Some(listen) => {
            if state.tokens.is_empty() {
                tracing::info!("no admin.tokens: the JSON API (/api/v1) and the web page (/) refuse everyone");
            }
            AdminServer::start(listen, state).await.map(Some)
        }
    }
}

/// The running server and the leader's gauge refresher.
pub struct AdminServer {
    addr: SocketAddr,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl AdminServer {
    /// Binds `listen` and serves [`router`]; starts the gauge refresher.
    pub async fn start(listen: SocketAddr, state: AdminState) -> anyhow::Result<AdminServer> {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("admin.listen: cannot listen on {listen}"))?;
        let addr = listener.local_addr().context("admin.listen: reading the bound address")?;
        tracing::info!(%addr, "admin server listening");
        let stop = CancellationToken::new();
        let refresher = tokio::spawn(metrics::refresh_gauges(
            state.pool.clone(),
            state.gauges.clone(),
            state.settings.admin.gauge_interval,
            state.leadership.clone(),
            stop.clone(),
        ));
        let limits = server::Limits {
            max_connections: state.settings.admin.max_connections,
            idle_timeout: state.settings.admin.idle_timeout,
            request_timeout: state.settings.admin.request_timeout,
        };
        let app = router(state);
        let server = tokio::spawn(server::serve(listener, app, limits, stop.clone()));
        Ok(AdminServer { addr, stop, tasks: vec![server, refresher] })
    }

    /// The address the server listens on (the port chosen when `admin.listen` asks for 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, lets requests in progress finish (at most [`SHUTDOWN_BOUND`]), then
    /// closes whatever is left.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        let bound = tokio::time::sleep(SHUTDOWN_BOUND);
        tokio::pin!(bound);
        for task in &mut self.tasks {
            tokio::select! {
                _ = &mut bound => break,
                _ = task => {}
            }
        }
        tracing::debug!("admin server stopped");
        // Drop aborts what did not finish in time.
    }
}

impl Drop for AdminServer {
    /// An engine that failed to start, or a server past its bound, leaves nothing serving.
    fn drop(&mut self) {
        self.stop.cancel();
        for task in &self.tasks {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::host_allowed;

    #[test]
    fn only_addresses_localhost_and_listed_names_are_this_server() {
        let allowed = vec!["orderly.internal".to_owned()];
        for ok in [
            "127.0.0.1:9187",
            "127.0.0.1",
            "[::1]:9187",
            "localhost:9187",
            "LOCALHOST",
            "orderly.internal:80",
            "10.0.0.7",
        ] {
            assert!(host_allowed(ok, &allowed), "{ok}");
        }
        for bad in
            ["evil.example:9187", "evil.example", "", "[::1", "orderly.internal.evil.example", "127.0.0.1.nip.io:9187"]
        {
            assert!(!host_allowed(bad, &allowed), "{bad}");
        }
    }
}
