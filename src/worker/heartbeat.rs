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
pub async fn run_once(pool: &PgPool, in_flight: &InFlight, lease: Duration, topology: Topology) -> usize {
    let held = in_flight.snapshot();
    if held.is_empty() {
        return 0;
    }
    let ids: Vec<_> = held.iter().map(|(id, _)| *id).collect();
    let attempts: Vec<_> = held.iter().map(|(_, l)| l.attempt).collect();
    let by_tenant: Vec<(Uuid, Uuid, i32)> = held.iter().map(|(id, l)| (l.tenant, *id, l.attempt)).collect();
    let asked_at = Instant::now();
    let mut stopped = 0;
    let renewed = match topology {
        Topology::Single => db::queue::renew_leases(pool, &ids, &attempts, lease).await,
        Topology::Distributed => distributed::renew_leases(pool, &by_tenant, lease).await,
    };
    match renewed {
        Ok(renewed) => {
            in_flight.confirm(&renewed, asked_at);
            let missing: Vec<(Uuid, i32)> =
                held.iter().filter(|(id, _)| !renewed.contains(id)).map(|(id, l)| (*id, l.attempt)).collect();
            if !missing.is_empty() {
                // Not renewed: either locked right now (being completed or rescued) or no
                // longer ours. Only the latter stops the work.
                let (ids, attempts): (Vec<Uuid>, Vec<i32>) = missing.iter().copied().unzip();
                let current = match topology {
                    Topology::Single => db::queue::still_current(pool, &ids, &attempts).await,
                    Topology::Distributed => {
                        let missing: Vec<_> = by_tenant.iter().filter(|(_, id, _)| ids.contains(id)).copied().collect();
                        distributed::still_current(pool, &missing).await
                    }
                };
                if let Ok(current) = current {
                    for (id, held_lease) in &held {
                        if ids.contains(id) && !current.contains(id) && !held_lease.stop.lease_lost.is_cancelled() {
                            held_lease.stop.lease_lost.cancel();
                            stopped += 1;
                        }
                    }
                }
            }
        }
        Err(e) => {
            crate::telemetry::warn_limited("heartbeat", "cannot renew leases", &e);
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
