//! (e) Agent limits under kill -9: three daemons keep an agent's `max_in_flight` together
//! while the daemon holding the most of its slots is killed again and again. The slots of a
//! killed daemon die with its leases, so the agent is used again within a lease, and it never
//! has more requests open than the limit (the agent's own count, not orderly's tables).

use crate::common::*;
use crate::harness::*;
use std::time::{Duration, Instant};

const MAX_IN_FLIGHT: usize = 5;

#[tokio::test]
async fn an_agents_max_in_flight_holds_and_recovers_under_kill_9() {
    let (items, kills) = if long_mode() { (3_000, 10) } else { (600, 3) };
    let db = TestDb::new().await;
    let agent = ledger_agent().await;
    let config = write_config(&agent, "");
    edit_config(&config, "kind = \"http\"", &format!("kind = \"http\"\nmax_in_flight = {MAX_IN_FLIGHT}"));
    let ids = enqueue_mixed(&db, items, 60).await;
    let mut daemons: Vec<Daemon> = (0..3).map(|_| Daemon::start(&db, &config)).collect();
    let mut recoveries = Vec::new();
    for _ in 0..kills {
        tokio::time::sleep(Duration::from_millis(fastrand::u64(400..900))).await;
        // The daemon holding the most items (PROCESSING under its leases: its slots, and what
        // it claimed and has not yet parked).
        let mut held = Vec::new();
        for d in &daemons {
            held.push(held_by(&db, d.pid()).await);
        }
        let k = (0..daemons.len()).max_by_key(|k| held[*k]).unwrap_or(0);
        let victim = daemons.swap_remove(k);
        let pid = victim.pid();
        let before = agent.received.lock().unwrap().len();
        victim.kill9();
        let killed_at = Instant::now();
        daemons.push(Daemon::start(&db, &config));
        if held[k] > 0 {
            // Its slots are free again once the rescuer has taken its items back.
            wait_until("the killed daemon's items to be rescued", Duration::from_secs(30), || {
                let db = &db;
                async move { held_by(db, pid).await == 0 }
            })
            .await;
            recoveries.push(killed_at.elapsed().as_secs_f64());
        }
        let ran_since = agent.received.lock().unwrap().len() - before;
        println!("killed a daemon holding {} items; {ran_since} requests since", held[k]);
    }
    quiesce(&db, Duration::from_secs(180)).await;
    for d in daemons {
        assert!(d.terminate().await, "daemon exits 0 on SIGTERM");
    }
    let verdict = oracle(&db, &ids, &agent).await;
    let peak = agent.open.lock().unwrap().1;
    recoveries.sort_by(f64::total_cmp);
    println!(
        "RECOVERY| kill -9 of the daemon holding an agent's slots | {} kills | p50 {:.2}s | max {:.2}s | \
         lease 2s | peak {peak} of max_in_flight {MAX_IN_FLIGHT} open at the agent |",
        recoveries.len(),
        percentile(&recoveries, 0.5),
        recoveries.last().copied().unwrap_or(f64::NAN)
    );
    assert!(peak <= MAX_IN_FLIGHT, "the agent never had more than {MAX_IN_FLIGHT} requests open: {peak}");
    verdict.assert_holds(
        "kill -9 of the daemon holding a limited agent's slots",
        &format!("{kills} kills"),
        kills as i64 * MAX_IN_FLIGHT as i64,
    );
}
