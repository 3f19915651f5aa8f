//! The bench's report as a person reads it (`--json` prints the same fields as JSON).

use super::{BenchReport, Percentiles};

pub fn print(r: &BenchReport) {
    println!(
        "orderly bench {}: {} items, {} per order, concurrency {}, history {}",
        r.date, r.items, r.items_per_order, r.concurrency, r.history
    );
    match r.agent_latency_ms {
        Some(latency) => println!(
            "  agent             http, answering after {latency:.0} ms (served by the bench on loopback; \
             {} requests, at most {} at once)",
            r.agent_requests.unwrap_or(0),
            r.agent_peak_in_flight.unwrap_or(0)
        ),
        None => println!("  agent             {}", r.agent),
    }
    println!("  postgres          fsync={} synchronous_commit={}", r.fsync, r.synchronous_commit);
    println!("  enqueue           {:>10.0} items/s (batched plain INSERTs)", r.enqueue_items_per_s);
    println!(
        "  processing        {:>10.0} items/s ({:.2}s from daemon start to the last item recorded)",
        r.processing_items_per_s, r.processing_seconds
    );
    if let (Some(ideal), Some(ratio)) = (r.ideal_items_per_s, r.ratio_to_ideal) {
        println!(
            "  ideal             {ideal:>10.0} items/s (concurrency / latency): measured {ratio:.2}x; \
             bench's own CPU {:.0} µs/item",
            r.bench_cpu_us_per_item.unwrap_or(f64::NAN)
        );
    }
    let p = |x: &Percentiles| {
        format!("p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2} ms ({} samples)", x.p50, x.p90, x.p99, x.max, x.samples)
    };
    if let Some(f) = &r.flood {
        println!(
            "  flood             backlog {:.0} items/s; newcomer at {:.0}/s ({} items): pickup {} (tenant turns {})",
            f.backlog_items_per_s,
            f.newcomer_rate_per_s,
            f.newcomer_items,
            p(&f.newcomer_pickup_ms),
            if f.tenant_turns { "on" } else { "off" }
        );
    }
    if let Some(release) = &r.release_ms {
        println!("  release to start  {} (last dependency finished → first attempt)", p(release));
    }
    println!("  pickup latency    {}", p(&r.pickup_ms));
    println!("    new connection  {}", p(&r.pickup_new_connection_ms));
    println!("  first INSERT      {} on a new connection", p(&r.first_insert_ms));
    println!(
        "    plain copy      {} ({:.2}x: work_items over a copy without orderly's trigger)",
        p(&r.first_insert_plain_ms),
        r.first_insert_ratio
    );
    println!("  end-to-end        {} at {:.0} items/s offered", p(&r.end_to_end_ms), r.end_to_end_offered_per_s);
    println!(
        "  daemon            peak RSS {:.1} MiB, CPU {:.2}s ({:.0} µs/item)",
        r.daemon_peak_rss_mib, r.daemon_cpu_seconds, r.daemon_cpu_us_per_item
    );
    println!(
        "  database          {:.3} transactions/item, {:.2} rows written/item, {:.0} bytes of WAL/item",
        r.db_transactions_per_item, r.db_rows_written_per_item, r.db_wal_bytes_per_item
    );
}
