//! Renews the leases of everything in flight, every lease/3. An execution whose lease the
//! database no longer confirms (rescued, or unreachable for longer than the lease) is
//! stopped: finishing it against a lease we do not hold would be a duplicate.

use super::InFlight;
use crate::db;
use crate::db::distributed::{Topology, engine as distributed};
use sqlx::PgPool;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub async fn run(pool: PgPool, in_flight: InFlight, lease: Duration, topology: Topology, stop: CancellationToken) {
    let interval = lease / 3;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        crate::failpoint::hit("heartbeat");
        run_once(&pool, &in_flight, lease, topology).await;
    }
}

/// One renewal round (tests call it directly). Returns how many executions were stopped.
/// An execution is stopped when the database says its lease is no longer ours, or when the
/// lease could not be confirmed for a whole lease period (the database, or on a Citus
/// cluster the node holding its tenant, unreachable): finishing it against a lease we do not
/// hold would be a duplicate.
pub async fn run_once(pool: &PgPool, in_flight: &InFlight, lease: Duration, topology: Topology) -> usize {
    let held = in_flight.snapshot();
    if held.is_empty() {
        return 0;
    }
    let ids: Vec<_> = held.iter().map(|(id, _)| *id).collect();
    let attempts: Vec<_> = held.iter().map(|(_, l)| l.attempt).collect();
    let by_tenant: Vec<(Uuid, Uuid, i32)> = held.iter().map(|(id, l)| (l.tenant, *id, l.attempt)).collect();
    let asked_at = Instant::now();
    let renewal = match topology {
        Topology::Single => match db::queue::renew_leases(pool, &ids, &attempts, lease).await {
            Ok(renewed) => distributed::Answered { known: renewed, unknown: vec![], error: None },
            Err(e) => distributed::Answered { known: vec![], unknown: ids.clone(), error: Some(e) },
        },
        Topology::Distributed => distributed::renew_leases(pool, &by_tenant, lease).await,
    };
    if let Some(e) = &renewal.error {
        crate::telemetry::warn_limited("heartbeat", "cannot renew leases", e);
    }
    in_flight.confirm(&renewal.known, asked_at);
    // Not renewed and not unreachable: either locked right now (being completed or rescued)
    // or no longer ours. Only the latter stops the work.
    let missing: Vec<(Uuid, Uuid, i32)> = by_tenant
        .iter()
        .filter(|(_, id, _)| !renewal.known.contains(id) && !renewal.unknown.contains(id))
        .copied()
        .collect();
    let mut unknown = renewal.unknown;
    let mut gone = Vec::new();
    if !missing.is_empty() {
        let current = match topology {
            Topology::Single => {
                let (ids, attempts): (Vec<Uuid>, Vec<i32>) = missing.iter().map(|(_, id, n)| (*id, *n)).unzip();
                match db::queue::still_current(pool, &ids, &attempts).await {
                    Ok(current) => distributed::Answered { known: current, unknown: vec![], error: None },
                    Err(e) => distributed::Answered { known: vec![], unknown: ids, error: Some(e) },
                }
            }
            Topology::Distributed => distributed::still_current(pool, &missing).await,
        };
        gone.extend(
            missing
                .iter()
                .map(|(_, id, _)| *id)
                .filter(|id| !current.known.contains(id) && !current.unknown.contains(id)),
        );
        unknown.extend(current.unknown);
    }
    let mut stopped = 0;
    for (id, held_lease) in &held {
        if held_lease.stop.lease_lost.is_cancelled() {
            continue;
        }
        if gone.contains(id) {
            held_lease.stop.lease_lost.cancel();
            stopped += 1;
        } else if unknown.contains(id) && held_lease.confirmed_at.elapsed() >= lease {
            tracing::warn!(work_item.id = %id, "lease expired while the database was unreachable; stopping");
            held_lease.stop.lease_lost.cancel();
            stopped += 1;
        }
    }
    stopped
}
