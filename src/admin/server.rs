//! The admin port's accept loop: HTTP/1.1 connections served by hyper, bounded so that
//! whoever reaches the port cannot take the process down.
//!
//! - At most `admin.max_connections` open at once. A connection past the limit takes the
//!   place of the one idle the longest (no request in progress); when every connection is
//!   in a request, the new one is closed at once. Either is logged (rate-limited).
//! - A connection with no request in progress for `admin.idle_timeout` (one that never sends
//!   a whole request head, or one kept alive between requests) is closed, by a sweep every
//!   second; hyper's own header timeout closes one whose head trickles in past it.
//! - A request, its body included, is answered 408 past `admin.request_timeout`.
//! - An `accept` that fails (out of file handles, say) is logged and retried after a pause;
//!   it never ends the server.
//!
//! Every request carries the peer's address as axum's `ConnectInfo<SocketAddr>`, for the
//! rate limit of failed sign-ins and the logs. On stop, connections finish the request in
//! progress and close (`AdminServer::shutdown` bounds the wait).

use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// The bounds of the port (`[admin]` settings).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub idle_timeout: Duration,
    pub request_timeout: Duration,
}

/// One open connection, as the accept loop sees it.
struct Conn {
    /// Requests in progress on it.
    busy: Arc<AtomicUsize>,
    /// Milliseconds since the server's start at which it was accepted or last finished a
    /// request.
    last_active: Arc<AtomicU64>,
    /// Closes it at once.
    close: CancellationToken,
}

/// The open connections, by a local number.
#[derive(Default)]
struct Registry {
    conns: Mutex<HashMap<u64, Conn>>,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Conn>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Serves `app` on `listener` within `limits` until `stop`.
pub async fn serve(listener: TcpListener, app: axum::Router, limits: Limits, stop: CancellationToken) {
    let started = Instant::now();
    let now_ms = move || started.elapsed().as_millis() as u64;
    let registry = Arc::new(Registry::default());
    let mut tasks = JoinSet::new();
    let mut next_id = 0u64;
    let mut sweep = tokio::time::interval(Duration::from_secs(1));
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            _ = sweep.tick() => {
                close_idle(&registry, now_ms(), limits.idle_timeout);
                while tasks.try_join_next().is_some() {}
                continue;
            }
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    crate::telemetry::warn_limited("admin-accept", "admin server cannot accept a connection", &e);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        if registry.lock().len() >= limits.max_connections && !make_room(&registry) {
            crate::telemetry::warn_limited(
                "admin-limit",
                "admin connection limit reached; every connection is in a request, refused a new one",
                &format_args!("admin.max_connections = {}, from {peer}", limits.max_connections),
            );
            drop(stream);
            continue;
        }
        next_id += 1;
        let id = next_id;
        let conn = Conn {
            busy: Arc::new(AtomicUsize::new(0)),
            last_active: Arc::new(AtomicU64::new(now_ms())),
            close: CancellationToken::new(),
        };
        let (busy, last_active, close) = (conn.busy.clone(), conn.last_active.clone(), conn.close.clone());
        registry.lock().insert(id, conn);
        let registry = registry.clone();
        let app = TowerToHyperService::new(app.clone());
        let stop = stop.clone();
        tasks.spawn(async move {
            let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
                request.extensions_mut().insert(ConnectInfo(peer));
                let guard = Busy::start(busy.clone(), last_active.clone(), now_ms);
                let answer = hyper::service::Service::call(&app, request);
                async move {
                    let response = match tokio::time::timeout(limits.request_timeout, answer).await {
                        Ok(response) => response,
                        Err(_) => {
                            tracing::warn!(client = %peer, "admin request timed out (admin.request_timeout); answered 408");
                            Ok(timed_out())
                        }
                    };
                    drop(guard);
                    response
                }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.idle_timeout)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                _ = close.cancelled() => {}
                _ = stop.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    tokio::select! {
                        _ = connection.as_mut() => {}
                        _ = close.cancelled() => {}
                    }
                }
            }
            registry.lock().remove(&id);
        });
    }
    drop(listener);
    // Connections finish the request in progress (each saw `stop`); the caller bounds this.
    while tasks.join_next().await.is_some() {}
}

/// Marks a connection busy while a request is in progress; idle again, from now, on drop.
struct Busy<F: Fn() -> u64> {
    busy: Arc<AtomicUsize>,
    last_active: Arc<AtomicU64>,
    now_ms: F,
}

impl<F: Fn() -> u64> Busy<F> {
    fn start(busy: Arc<AtomicUsize>, last_active: Arc<AtomicU64>, now_ms: F) -> Self {
        busy.fetch_add(1, Ordering::SeqCst);
        Busy { busy, last_active, now_ms }
    }
}

impl<F: Fn() -> u64> Drop for Busy<F> {
    fn drop(&mut self) {
        self.last_active.store((self.now_ms)(), Ordering::SeqCst);
        self.busy.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Closes the connection idle the longest, if any is idle; false when all are in a request.
fn make_room(registry: &Registry) -> bool {
    let conns = registry.lock();
    let oldest = conns
        .values()
        .filter(|c| c.busy.load(Ordering::SeqCst) == 0 && !c.close.is_cancelled())
        .min_by_key(|c| c.last_active.load(Ordering::SeqCst));
    match oldest {
        Some(conn) => {
            conn.close.cancel();
            crate::telemetry::warn_limited(
                "admin-limit",
                "admin connection limit reached; closed the connection idle the longest",
                &format_args!("{} open", conns.len()),
            );
            true
        }
        None => false,
    }
}

/// Closes every connection that has had no request in progress for `idle_timeout`.
fn close_idle(registry: &Registry, now_ms: u64, idle_timeout: Duration) {
    let limit = idle_timeout.as_millis() as u64;
    let mut closed = 0;
    for conn in registry.lock().values() {
        let idle_for = now_ms.saturating_sub(conn.last_active.load(Ordering::SeqCst));
        if conn.busy.load(Ordering::SeqCst) == 0 && idle_for >= limit && !conn.close.is_cancelled() {
            conn.close.cancel();
            closed += 1;
        }
    }
    if closed > 0 {
        tracing::debug!(closed, "closed idle admin connections (admin.idle_timeout)");
    }
}

fn timed_out() -> hyper::Response<axum::body::Body> {
    let mut response = hyper::Response::new(axum::body::Body::from("request timed out\n"));
    *response.status_mut() = hyper::StatusCode::REQUEST_TIMEOUT;
    response.headers_mut().insert(hyper::header::CONNECTION, hyper::header::HeaderValue::from_static("close"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(busy: usize, last_active: u64) -> Conn {
        Conn {
            busy: Arc::new(AtomicUsize::new(busy)),
            last_active: Arc::new(AtomicU64::new(last_active)),
            close: CancellationToken::new(),
        }
    }

    #[test]
    fn room_is_made_by_closing_the_connection_idle_the_longest() {
        let registry = Registry::default();
        registry.lock().extend([(1, conn(0, 500)), (2, conn(1, 100)), (3, conn(0, 200))]);
        assert!(make_room(&registry));
        let conns = registry.lock();
        assert!(conns[&3].close.is_cancelled(), "the oldest idle one");
        assert!(!conns[&2].close.is_cancelled(), "never one in a request, however old");
        assert!(!conns[&1].close.is_cancelled());
    }

    #[test]
    fn no_room_when_every_connection_is_in_a_request() {
        let registry = Registry::default();
        registry.lock().extend([(1, conn(1, 0)), (2, conn(2, 0))]);
        assert!(!make_room(&registry));
    }

    #[test]
    fn idle_connections_are_closed_after_the_idle_timeout_only() {
        let registry = Registry::default();
        registry.lock().extend([(1, conn(0, 0)), (2, conn(0, 9_500)), (3, conn(1, 0))]);
        close_idle(&registry, 10_000, Duration::from_secs(10));
        let conns = registry.lock();
        assert!(conns[&1].close.is_cancelled());
        assert!(!conns[&2].close.is_cancelled(), "idle 0.5 s only");
        assert!(!conns[&3].close.is_cancelled(), "in a request");
    }
}
