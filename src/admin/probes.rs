//! Liveness and readiness.
//!
//! - `GET /healthz`: 200 `ok` while the process runs (the server answers from before the
//!   migrations until the end of the drain). It reads nothing: a database outage must not get
//!   a healthy process restarted.
//! - `GET /readyz`: 200 when every check passes, else 503; the JSON body names every check
//!   with `ok` and a `detail`, and lists the failing ones:
//!   `{"ready": false, "failing": ["database", "migrations"], "checks": {"database": {"ok":
//!   false, "detail": "…"}, …}}`. The checks:
//!   - `database`: a pooled connection answers `SELECT 1` within [`DATABASE_TIMEOUT`];
//!   - `migrations`: the newest migration applied is this build's newest (an older schema
//!     is still migrating; a newer one belongs to a newer build, which this one must not
//!     write beside);
//!   - `listener`: the LISTEN connection is up (new items wake the engine at once);
//!   - `engine`: no engine task has died (`Engine::failed`);
//!   - `draining`: shutdown has not started.
//!
//!   Beside the checks, `leader` says whether this replica leads and shows the leader lease
//!   (holder, epoch, since, expires_at, live) as the database has it; it never fails
//!   readiness (a replica serves whoever leads).

use super::AdminState;
use crate::db;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Longest the `database` and `migrations` checks wait for the database together, below the
/// 1 s an orchestrator's probe usually allows.
pub const DATABASE_TIMEOUT: Duration = Duration::from_millis(800);

pub fn routes() -> axum::Router<AdminState> {
    axum::Router::new().route("/healthz", get(healthz)).route("/readyz", get(readyz))
}

async fn healthz() -> &'static str {
    "ok"
}

/// One check's result.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub ok: bool,
    pub detail: String,
}

/// The `/readyz` body.
#[derive(Debug, Clone, Serialize)]
pub struct Readiness {
    pub ready: bool,
    /// The names of the failing checks.
    pub failing: Vec<&'static str>,
    pub checks: BTreeMap<&'static str, Check>,
    pub leader: Leader,
}

/// Who leads, in the `/readyz` body.
#[derive(Debug, Clone, Serialize)]
pub struct Leader {
    /// Whether this replica holds a live term.
    pub this_replica: bool,
    /// The lease row, when the database answered and some replica has led.
    pub lease: Option<db::leader::Lease>,
}

async fn readyz(State(state): State<AdminState>) -> (StatusCode, Json<Readiness>) {
    let readiness = readiness(&state).await;
    let status = if readiness.ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(readiness))
}

/// Runs every check (the local ones read flags; the database ones take one connection).
pub async fn readiness(state: &AdminState) -> Readiness {
    let mut checks = BTreeMap::new();
    let (database, migrations, lease) = database_checks(state).await;
    checks.insert("database", database);
    checks.insert("migrations", migrations);
    let listening = state.metrics.listening.load(Ordering::Relaxed);
    checks.insert("listener", check(listening, "LISTEN connection up", "LISTEN connection down; reconnecting"));
    let alive = !state.failed.is_cancelled();
    checks.insert(
        "engine",
        check(alive, "every engine task running", "an engine task died; the process is shutting down"),
    );
    let draining = state.draining.is_cancelled();
    checks.insert(
        "draining",
        check(!draining, "not draining", "shutting down: no new claims, in-flight items finishing"),
    );
    let failing: Vec<&'static str> = checks.iter().filter(|(_, c)| !c.ok).map(|(name, _)| *name).collect();
    let leader = Leader { this_replica: state.leadership.is_leader(), lease };
    Readiness { ready: failing.is_empty(), failing, checks, leader }
}

fn check(ok: bool, yes: &str, no: &str) -> Check {
    Check { ok, detail: if ok { yes } else { no }.to_owned() }
}

fn failed(detail: String) -> Check {
    Check { ok: false, detail }
}

/// `database`, then `migrations` and the leader lease on the same connection, within
/// [`DATABASE_TIMEOUT`].
async fn database_checks(state: &AdminState) -> (Check, Check, Option<db::leader::Lease>) {
    let expected = db::newest_migration();
    let unknown = || failed("unknown: the database did not answer".to_owned());
    let reads = async {
        let mut conn = match state.pool.acquire().await {
            Ok(conn) => conn,
            Err(e) => return (failed(format!("no connection: {}", db::describe_error(&e))), unknown(), None),
        };
        if let Err(e) = db::gauges::ping(&mut conn).await {
            return (failed(format!("SELECT 1 failed: {}", db::describe_error(&e))), unknown(), None);
        }
        let database = Check { ok: true, detail: "answers".to_owned() };
        let migrations = match db::gauges::applied_migration(&mut conn).await {
            Ok(applied) if applied.is_some() && applied == expected => {
                Check { ok: true, detail: format!("at version {}", applied.unwrap_or_default()) }
            }
            Ok(applied) => failed(format!(
                "the database is at version {}, this build's newest is {}",
                applied.map_or("none".to_owned(), |v| v.to_string()),
                expected.map_or("none".to_owned(), |v| v.to_string())
            )),
            Err(e) => failed(format!("reading _sqlx_migrations failed: {}", db::describe_error(&e))),
        };
        let lease = db::leader::current(&mut *conn).await.ok().flatten();
        (database, migrations, lease)
    };
    match tokio::time::timeout(DATABASE_TIMEOUT, reads).await {
        Ok(checks) => checks,
        Err(_) => (failed(format!("no answer within {}ms", DATABASE_TIMEOUT.as_millis())), unknown(), None),
    }
}
