//! The `flood` shape (docs/limits.md, "Tenants take turns"): one tenant's backlog drains while
//! a newcomer tenant inserts a few items a second, each its own order. It measures what the
//! newcomer waits (first attempt's start − its INSERT, both on the database clock) and how
//! fast the backlog drains beside it; `--newcomer-rate 0` gives the backlog's rate alone.

use super::Percentiles;
use serde::Serialize;
use sqlx::PgPool;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// The two tenants of a flood.
#[derive(Debug, Clone, Copy)]
pub struct Tenants {
    pub backlog: Uuid,
    pub newcomer: Uuid,
}

impl Default for Tenants {
    fn default() -> Self {
        Tenants { backlog: Uuid::new_v4(), newcomer: Uuid::new_v4() }
    }
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct FloodReport {
    pub newcomer_rate_per_s: f64,
    pub newcomer_items: usize,
    /// The newcomer's items: their first attempt's start minus their INSERT.
    pub newcomer_pickup_ms: Percentiles,
    /// The backlog's items over the time from the daemon's start to its last one's finish.
    pub backlog_items_per_s: f64,
    pub tenant_turns: bool,
}

/// Inserts one newcomer item every `1 / rate` seconds until `stop` is set; returns how many.
pub fn newcomers(pool: PgPool, tenant: Uuid, rate: f64, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        if rate <= 0.0 {
            return 0;
        }
        let interval = Duration::from_secs_f64(1.0 / rate);
        let mut next = Instant::now();
        let mut n = 0;
        while !stop.load(Ordering::Relaxed) {
            if super::sql::insert_order_with_items(&pool, 1, None, (0.0, 0.0), Some(tenant)).await.is_ok() {
                n += 1;
            }
            next += interval;
            tokio::time::sleep_until(next.into()).await;
        }
        n
    })
}

/// Waits until none of `tenant`'s items is queued or running.
pub async fn wait_tenant_drained(pool: &PgPool, tenant: Uuid, deadline: Duration) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        let live: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM work_items WHERE tenant_id = $1 AND status IN ('QUEUED', 'PROCESSING')",
        )
        .bind(tenant)
        .fetch_one(pool)
        .await?;
        if live == 0 {
            return Ok(());
        }
        anyhow::ensure!(start.elapsed() < deadline, "the backlog is still live after {deadline:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The newcomer's pickups and the backlog's rate, from the database.
pub async fn report(
    pool: &PgPool,
    tenants: Tenants,
    started: chrono::DateTime<chrono::Utc>,
) -> Result<(Vec<f64>, f64), sqlx::Error> {
    let pickups: Vec<f64> = sqlx::query_scalar(
        "SELECT extract(epoch FROM a.started_at - w.created_at)::float8 * 1000 FROM work_items w
         JOIN attempts a ON a.work_item_id = w.id AND a.attempt_number = 1 WHERE w.tenant_id = $1",
    )
    .bind(tenants.newcomer)
    .fetch_all(pool)
    .await?;
    let (items, last): (i64, Option<chrono::DateTime<chrono::Utc>>) =
        sqlx::query_as("SELECT count(*), max(processed_at) FROM work_items WHERE tenant_id = $1")
            .bind(tenants.backlog)
            .fetch_one(pool)
            .await?;
    let seconds = last.map_or(f64::NAN, |l| (l - started).num_microseconds().unwrap_or(0) as f64 / 1e6);
    Ok((pickups, items as f64 / seconds))
}
