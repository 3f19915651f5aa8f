//! `orderly bench --fairness`: what one tenant's backlog does to another tenant's latency.
//! Tenant A queues `--items` items; the daemon drains them alone, then again while tenant B
//! inserts 20 single items a second; then B alone on the idle daemon. Reported: A's drain rate
//! with B beside it over A's rate alone, and B's pickup (insert to attempt start, on the
//! database clock) beside the backlog and on an idle queue. Figures only; asserts nothing.

use super::{Percentiles, spawn_daemon, sql, stop_daemon, wait_drained};
use serde::Serialize;
use sqlx::PgPool;
use std::time::Duration;
use uuid::Uuid;

/// Tenant B's insert rate.
const B_PER_SECOND: f64 = 20.0;

#[derive(Debug, Default, Clone, Serialize)]
pub struct FairnessReport {
    pub a_items: usize,
    pub a_alone_items_per_s: f64,
    pub a_beside_b_items_per_s: f64,
    /// A's rate beside B over A's rate alone.
    pub a_ratio: f64,
    pub b_beside_a_pickup_ms: Percentiles,
    pub b_idle_pickup_ms: Percentiles,
}

/// Inserts B's items at [`B_PER_SECOND`] until `until` says stop (checked before each insert).
async fn offer_b(
    pool: &PgPool,
    b: Uuid,
    mut until: impl FnMut() -> bool,
) -> anyhow::Result<Vec<(Uuid, chrono::DateTime<chrono::Utc>)>> {
    let interval = Duration::from_secs_f64(1.0 / B_PER_SECOND);
    let mut next = tokio::time::Instant::now();
    let mut samples = Vec::new();
    while !until() {
        samples.push(sql::timed_tenant_insert(pool, b).await?);
        next += interval;
        tokio::time::sleep_until(next).await;
    }
    Ok(samples)
}

/// A's backlog drained by a fresh daemon, with B inserting beside it or not; A's rate and
/// B's samples.
async fn drain_a(
    pool: &PgPool,
    url: &str,
    config: &std::path::Path,
    items: usize,
    beside: Option<Uuid>,
) -> anyhow::Result<(f64, Vec<(Uuid, chrono::DateTime<chrono::Utc>)>)> {
    let a = Uuid::from_u128(0xa);
    sql::insert_tenant_backlog(pool, a, items, 100).await?;
    let started = sql::now(pool).await?;
    let daemon = spawn_daemon(config, url)?;
    let samples = match beside {
        Some(b) => {
            let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let watcher = {
                let (pool, done) = (pool.clone(), done.clone());
                tokio::spawn(async move {
                    while sql::tenant_live(&pool, a).await.unwrap_or(true) {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    done.store(true, std::sync::atomic::Ordering::Relaxed);
                })
            };
            let samples = offer_b(pool, b, || done.load(std::sync::atomic::Ordering::Relaxed)).await;
            watcher.abort();
            samples?
        }
        None => Vec::new(),
    };
    wait_drained(pool, Duration::from_secs(3600)).await?;
    stop_daemon(daemon);
    let finished = sql::tenant_last_completion(pool, a).await?.unwrap_or(started);
    let seconds = (finished - started).num_microseconds().unwrap_or(0) as f64 / 1e6;
    Ok((items as f64 / seconds, samples))
}

pub async fn run(
    pool: &PgPool,
    url: &str,
    config: &std::path::Path,
    items: usize,
    say: impl Fn(String),
) -> anyhow::Result<FairnessReport> {
    let b = Uuid::from_u128(0xb);
    say(format!("tenant A's {items} items drained alone…"));
    let (alone, _) = drain_a(pool, url, config, items, None).await?;
    say(format!("tenant A's {items} items again, tenant B inserting {B_PER_SECOND} items/s beside them…"));
    let (beside, b_samples) = drain_a(pool, url, config, items, Some(b)).await?;
    let b_beside = Percentiles::of(sql::pickup_latencies(pool, &b_samples).await?);
    say(format!("tenant B alone on an idle daemon for 5 s at {B_PER_SECOND} items/s…"));
    let daemon = spawn_daemon(config, url)?;
    super::wait_listening(pool, Duration::from_secs(30)).await?;
    let until = tokio::time::Instant::now() + Duration::from_secs(5);
    let idle = offer_b(pool, b, || tokio::time::Instant::now() >= until).await;
    let drained = wait_drained(pool, Duration::from_secs(60)).await;
    stop_daemon(daemon);
    let b_idle = Percentiles::of(sql::pickup_latencies(pool, &idle?).await?);
    drained?;
    Ok(FairnessReport {
        a_items: items,
        a_alone_items_per_s: alone,
        a_beside_b_items_per_s: beside,
        a_ratio: beside / alone,
        b_beside_a_pickup_ms: b_beside,
        b_idle_pickup_ms: b_idle,
    })
}

pub fn print(r: &FairnessReport) {
    let p =
        |x: &Percentiles| format!("p50 {:.2}  p99 {:.2}  max {:.2} ms ({} samples)", x.p50, x.p99, x.max, x.samples);
    println!("orderly bench --fairness: tenant A's {} queued items, tenant B inserting {B_PER_SECOND}/s", r.a_items);
    println!("  A alone           {:>10.0} items/s", r.a_alone_items_per_s);
    println!("  A beside B        {:>10.0} items/s ({:.2}x of alone)", r.a_beside_b_items_per_s, r.a_ratio);
    println!("  B's pickup        {} beside A's backlog", p(&r.b_beside_a_pickup_ms));
    println!("    idle queue      {}", p(&r.b_idle_pickup_ms));
}
