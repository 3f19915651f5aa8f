//! (f) Agent evaluators under kill -9: the writer's output is recorded before a slow judge
//! sees it, and daemons are killed while judges are being called. The output is judged
//! until one judgement is written, on the recorded output: the writer never runs again for
//! an item whose output was recorded, and each item has exactly one written evaluation.

use crate::common::*;
use crate::harness::*;
use serde_json::json;
use std::time::Duration;
use uuid::Uuid;

#[tokio::test]
async fn a_recorded_output_is_judged_once_and_never_regenerated_under_kill_9() {
    let (items, kills) = if long_mode() { (1_000, 8) } else { (200, 3) };
    let db = TestDb::new().await;
    let writer = ledger_agent().await;
    // A slow judge: most of an item's time is spent being judged, so kills land there.
    let judge = TestAgent::start(|_| {
        ((200, vec![], json!({"score": 0.9, "reasons": ["fine"]}).to_string()), Duration::from_millis(300))
    })
    .await;
    insert_template(
        &db.pool,
        "judged",
        json!({"steps": {"TICKET": {"agent": "ledger",
            "evaluators": [{"name": "critic", "agent": "judge"}],
            "approval": {"combine": "min", "pass_at": 0.8, "fail_below": 0.5}}}}),
    )
    .await;
    let mut ids: Vec<Uuid> = Vec::with_capacity(items);
    for chunk in 0..items.div_ceil(20) {
        let order = insert_order_with_workflow(&db.pool, "judged").await;
        for n in chunk * 20..((chunk + 1) * 20).min(items) {
            ids.push(insert_item(&db.pool, order, "TICKET", &json!({"n": n, "ms": n % 40}).to_string()).await);
        }
    }
    let config = write_config(&writer, &judge.config("judge", "5s"));
    edit_config(&config, "concurrency = 16\n", "concurrency = 16\nevaluator_concurrency = 8\n");
    let mut daemons: Vec<Daemon> = (0..2).map(|_| Daemon::start(&db, &config)).collect();
    for _ in 0..kills {
        tokio::time::sleep(Duration::from_millis(fastrand::u64(700..1_200))).await;
        let mut held = Vec::new();
        for d in &daemons {
            held.push(held_by(&db, d.pid()).await);
        }
        let k = (0..daemons.len()).max_by_key(|k| held[*k]).unwrap_or(0);
        let victim = daemons.swap_remove(k);
        println!("killing a daemon holding {} items", held[k]);
        victim.kill9();
        daemons.push(Daemon::start(&db, &config));
    }
    quiesce(&db, Duration::from_secs(180)).await;
    for d in daemons {
        assert!(d.terminate().await, "daemon exits 0 on SIGTERM");
    }
    let verdict = oracle(&db, &ids, &writer).await;

    let pool = &db.pool;
    let scalar = |sql: &'static str| async move { sqlx::query_scalar::<_, i64>(sql).fetch_one(pool).await.unwrap() };
    // The writer's output was recorded once per item, and the item's result is that output.
    let recorded_twice = scalar(
        "SELECT count(*) FROM work_items w WHERE (SELECT count(*) FROM attempts a WHERE a.work_item_id = w.id
                                                  AND a.agent_id = 'ledger' AND a.status = 'COMPLETED') <> 1",
    )
    .await;
    let result_not_recorded = scalar(
        "SELECT count(*) FROM work_items w WHERE w.status = 'COMPLETED' AND w.result IS DISTINCT FROM
           (SELECT a.output FROM attempts a WHERE a.work_item_id = w.id AND a.agent_id = 'ledger' AND a.status = 'COMPLETED')",
    )
    .await;
    // No writer request after its output was recorded: every request of an item precedes
    // (or is) the one recorded, so the requests number the LOST writer runs plus one.
    let regenerated = scalar(
        "SELECT count(*) FROM attempts e JOIN attempts a ON e.input->>'evaluates' = a.id::text
         WHERE a.agent_id = 'ledger' AND EXISTS (SELECT 1 FROM attempts later WHERE later.work_item_id = a.work_item_id
                                                  AND later.agent_id = 'ledger' AND later.attempt_number > a.attempt_number)",
    )
    .await;
    let evaluated_twice = scalar(
        "SELECT count(*) FROM work_items w WHERE (SELECT count(*) FROM eval_results e WHERE e.work_item_id = w.id) <> 1",
    )
    .await;
    let judge_calls = judge.received.lock().unwrap().len();
    let lost_evaluations = scalar("SELECT count(*) FROM attempts WHERE status = 'LOST'").await;
    println!(
        "FAULTS| agent evaluators, kill -9 while judging | {kills} kills | {items} items | {judge_calls} judge calls \
         for {items} judgements ({lost_evaluations} runs lost to kills) | recorded twice {recorded_twice} | \
         regenerated {regenerated} | evaluated twice {evaluated_twice} |"
    );
    assert_eq!(recorded_twice, 0, "each item's output is recorded exactly once");
    assert_eq!(result_not_recorded, 0, "each result is the recorded output");
    assert_eq!(regenerated, 0, "the writer never ran again after its output was recorded");
    assert_eq!(evaluated_twice, 0, "each item has exactly one written evaluation");
    verdict.assert_holds("kill -9 while agent evaluators judge", &format!("{kills} kills"), kills as i64 * 16);
}
