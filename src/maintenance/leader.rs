//! Leader election: the replica that holds the lease row `orderly_leader` leads. The lease
//! expires on the database clock, so a leader that dies, freezes or is cut off from the
//! database loses it within `worker.leader_lease` whatever its session does, and another
//! replica takes it over on its next try (every fifth of the lease). See
//! [`crate::leadership`] for how the loops that run only on the leader use the term.

use crate::db;
use crate::leadership::Term;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, PgConnection};
use std::str::FromStr;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Runs the election for `holder` until `stop`, publishing this replica's term on `term_tx`;
/// on stop it resigns, so a successor does not wait for the lease to run out.
pub async fn run(
    url: String,
    holder: String,
    lease: Duration,
    term_tx: watch::Sender<Option<Term>>,
    stop: CancellationToken,
) {
    let every = renew_interval(lease);
    let mut session: Option<PgConnection> = None;
    let mut term: Option<Term> = None;
    loop {
        if session.is_none() {
            session = connect(&url, every).await;
        }
        if let Some(conn) = session.as_mut() {
            let sent = Instant::now();
            // Alive, whether or not this replica leads (a failure shows in the campaign next).
            let _ = tokio::time::timeout(every, db::leader::heartbeat(conn, &holder, term.is_some())).await;
            match tokio::time::timeout(every, db::leader::campaign(conn, &holder, lease)).await {
                Ok(Ok(Some(granted))) => {
                    let next =
                        Term { epoch: granted.epoch, since: granted.since, valid_until: sent + lease.mul_f64(0.9) };
                    if term.is_none_or(|t| t.epoch != next.epoch) {
                        if let Some(old) = term {
                            tracing::warn!(epoch = old.epoch, reason = "lease expired", "leadership lost");
                        }
                        let reason =
                            if granted.epoch == 1 { "first leader of this database" } else { "the lease was free" };
                        tracing::info!(epoch = next.epoch, since = %next.since, reason, "leadership acquired");
                    }
                    term = Some(next);
                }
                Ok(Ok(None)) => {
                    if let Some(old) = term.take() {
                        tracing::warn!(
                            epoch = old.epoch,
                            reason = "another replica holds the lease",
                            "leadership lost"
                        );
                    }
                }
                Ok(Err(e)) => {
                    crate::telemetry::warn_limited("leader", "cannot renew or take the leader lease", &e);
                    session = None;
                }
                Err(_) => {
                    crate::telemetry::warn_limited(
                        "leader",
                        "cannot renew or take the leader lease",
                        &format!("no answer within {}", humantime::format_duration(every)),
                    );
                    session = None;
                }
            }
        }
        if let Some(old) = term.filter(|t| !t.is_valid()) {
            tracing::warn!(epoch = old.epoch, reason = "lease ran out before it could be renewed", "leadership lost");
            term = None;
        }
        term_tx.send_if_modified(|published| {
            let changed = *published != term;
            *published = term;
            changed
        });
        let delay = every.mul_f64(0.8 + 0.4 * fastrand::f64());
        // Sleep no longer than the term lasts, so that the published term never outlives it.
        let delay = term.map_or(delay, |t| delay.min(t.valid_until.saturating_duration_since(Instant::now())));
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(delay) => {}
        }
    }
    let _ = term_tx.send(None);
    if let (Some(old), Some(conn)) = (term.filter(Term::is_valid), session.as_mut()) {
        match tokio::time::timeout(every, db::leader::resign(conn, &holder, old.epoch)).await {
            Ok(Ok(())) => tracing::info!(epoch = old.epoch, reason = "stepped down", "leadership lost"),
            _ => tracing::warn!(
                epoch = old.epoch,
                reason = "stepped down; resigning failed, the lease runs out",
                "leadership lost"
            ),
        }
    }
    if let Some(mut conn) = session {
        let _ = tokio::time::timeout(every, db::leader::leave(&mut conn, &holder)).await;
        let _ = sqlx::Connection::close(conn).await;
    }
}

/// How often the leader renews and a follower tries to take over: a fifth of the lease, so a
/// few lost renewals in a row do not cost the lease.
pub fn renew_interval(lease: Duration) -> Duration {
    (lease / 5).max(Duration::from_millis(100))
}

/// The election's own session (not a pooled one: a busy pool must not delay renewals).
async fn connect(url: &str, within: Duration) -> Option<PgConnection> {
    let options = match PgConnectOptions::from_str(url) {
        Ok(o) => o.application_name("orderly"),
        Err(e) => {
            crate::telemetry::warn_limited("leader", "leader election cannot connect", &e);
            return None;
        }
    };
    match tokio::time::timeout(within.max(Duration::from_secs(1)), options.connect()).await {
        Ok(Ok(conn)) => Some(conn),
        Ok(Err(e)) => {
            crate::telemetry::warn_limited("leader", "leader election cannot connect", &e);
            None
        }
        Err(_) => {
            crate::telemetry::warn_limited("leader", "leader election cannot connect", &"timed out");
            None
        }
    }
}
