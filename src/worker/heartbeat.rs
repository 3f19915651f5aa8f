//! Renews the leases of everything in flight, every lease/3. An execution whose lease the
//! database no longer confirms (rescued, or unreachable for longer than the lease) is
//! stopped: finishing it against a lease we do not hold would be a duplicate.

use super::InFlight;
use crate::db;
use sqlx::PgPool;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

pub async fn run(pool: PgPool, in_flight: InFlight, lease: Duration, stop: CancellationToken) {
    let interval = lease / 3;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        run_once(&pool, &in_flight, lease).await;
    }
}

/// One renewal round (tests call it directly). Returns how many executions were stopped.
pub async fn run_once(pool: &PgPool, in_flight: &InFlight, lease: Duration) -> usize {
    let held = in_flight.snapshot();
    if held.is_empty() {
        return 0;
    }
    let ids: Vec<_> = held.iter().map(|(id, _)| *id).collect();
    let attempts: Vec<_> = held.iter().map(|(_, l)| l.attempt).collect();
    let asked_at = Instant::now();
    let mut stopped = 0;
    match db::queue::renew_leases(pool, &ids, &attempts, lease).await {
        Ok(renewed) => {
            in_flight.confirm(&renewed, asked_at);
            for (id, held_lease) in &held {
                if !renewed.contains(id) && !held_lease.stop.lease_lost.is_cancelled() {
                    // Either already written by the completer (then it left in_flight just
                    // now) or taken back by the rescuer: stop work on it either way.
                    held_lease.stop.lease_lost.cancel();
                    stopped += 1;
                }
            }
        }
        Err(e) => {
            crate::telemetry::warn_limited("heartbeat", &format!("cannot renew leases: {e}"));
            for (id, held_lease) in &held {
                if held_lease.confirmed_at.elapsed() >= lease && !held_lease.stop.lease_lost.is_cancelled() {
                    tracing::warn!(work_item.id = %id, "lease expired while the database was unreachable; stopping");
                    held_lease.stop.lease_lost.cancel();
                    stopped += 1;
                }
            }
        }
    }
    stopped
}
