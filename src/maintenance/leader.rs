//! Leader election: the replica whose session holds the advisory lock `LEADER_LOCK` leads.
//! The lock dies with its session, so when the leader's process or connection dies another
//! replica takes over on its next try (every `RETRY`).

use crate::db;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, PgConnection};
use std::str::FromStr;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How often a follower tries to take the lock, and a leader checks it still holds it.
pub const RETRY: Duration = Duration::from_secs(1);

/// Runs the election; `leading` says whether this process leads right now.
pub async fn run(url: String, leading: watch::Sender<bool>, stop: CancellationToken) {
    let mut session: Option<PgConnection> = None;
    loop {
        let is_leader = match session.as_mut() {
            Some(conn) => {
                if *leading.borrow() {
                    db::maintenance::ping(conn).await.is_ok()
                } else {
                    db::maintenance::try_lead(conn).await.unwrap_or(false)
                }
            }
            None => false,
        };
        if session.is_some() && !is_leader && *leading.borrow() {
            tracing::warn!("lost the leader session");
            session = None;
        }
        if session.is_none() {
            let options = PgConnectOptions::from_str(&url).map(|o| o.application_name("orderly"));
            match async { options?.connect().await }.await {
                Ok(conn) => session = Some(conn),
                Err(e) => crate::telemetry::warn_limited("leader", "leader election cannot connect", &e),
            }
        }
        if is_leader != *leading.borrow() {
            tracing::info!(leader = is_leader, "leadership changed");
            let _ = leading.send(is_leader);
        }
        let delay = RETRY.mul_f64(0.8 + 0.4 * fastrand::f64());
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(delay) => {}
        }
    }
    if let Some(conn) = session {
        let _ = sqlx::Connection::close(conn).await;
    }
    let _ = leading.send(false);
}
