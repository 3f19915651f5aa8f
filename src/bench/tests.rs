//! Unit tests of the parent module.

use super::*;
use crate::agent::{AgentRequest, AttemptView, ContextView, Registry, WorkItemView, WorkOrderView};
use serde_json::json;

/// The configuration the bench gives its daemon routes TICKET to the bench's own server
/// through the real `http` agent kind (loopback allowed), which answers `{"ok":true}`.
#[tokio::test]
async fn the_daemon_config_reaches_the_latency_agent_through_the_http_kind() {
    let server = LatencyAgent::start(Duration::from_millis(5), false).await.unwrap();
    let settings = Settings::from_toml_over_defaults(&daemon_config(5000, Some(&server))).unwrap();
    assert_eq!(settings.worker.concurrency, 5000);
    assert_eq!(settings.routes["TICKET"], "bench_http");
    let agents = Registry::builtin().build(&settings.agents, settings.agent_limits()).unwrap();
    let agent = agents.get("bench_http").unwrap();
    assert!(agent.timeout > server.latency, "the agent's timeout leaves room above the latency");
    let request = AgentRequest {
        work_item: WorkItemView {
            id: uuid::Uuid::now_v7(),
            item_type: "TICKET".into(),
            content: json!({"n": 1}),
            priority: "MEDIUM".into(),
            created_at: chrono::Utc::now(),
        },
        work_order: WorkOrderView {
            id: uuid::Uuid::now_v7(),
            workflow_id: "bench".into(),
            tenant_id: uuid::Uuid::new_v4(),
            created_by: uuid::Uuid::new_v4(),
            priority: "MEDIUM".into(),
            metadata: json!({}),
        },
        attempt: AttemptView { id: uuid::Uuid::now_v7(), number: 1, max_attempts: 5 },
        context: ContextView::default(),
        progress: None,
        report: Default::default(),
        review: None,
        evaluate: None,
        step_options: None,
        output_schema: None,
    };
    let (a, b) = tokio::join!(agent.executor.execute(&request), agent.executor.execute(&request));
    assert_eq!(a.unwrap(), json!({"ok": true}));
    assert_eq!(b.unwrap(), json!({"ok": true}));
    assert_eq!(server.stats.requests.load(Ordering::Relaxed), 2);
    assert_eq!(server.stats.in_flight.load(Ordering::Relaxed), 0);
    assert!((1..=2).contains(&server.stats.peak.load(Ordering::Relaxed)));

    let echo = Settings::from_toml_over_defaults(&daemon_config(256, None)).unwrap();
    assert_eq!(echo.routes["TICKET"], "echo");
    let retried = Settings::from_toml_over_defaults(&(daemon_config(256, None) + RETRIED_CONFIG)).unwrap();
    assert_eq!(retried.retry.backoff_base, std::time::Duration::from_millis(10));
}

#[test]
fn dependency_shapes_have_the_edges_they_promise() {
    assert_eq!(graph_edges(BenchShape::Chain, 4).unwrap(), vec![(1, 0), (2, 1), (3, 2)]);
    let fan = graph_edges(BenchShape::Fanout, 5).unwrap();
    assert_eq!(fan, vec![(1, 0), (2, 0), (3, 0), (4, 1), (4, 2), (4, 3)]);
    // A 3 × 3 lattice: 2 × 3 × 2 = 12 edges, the corner (2, 2) needs (1, 2) and (2, 1).
    let lattice = graph_edges(BenchShape::Lattice, 9).unwrap();
    assert_eq!(lattice.len(), 12);
    assert!(lattice.contains(&(8, 5)) && lattice.contains(&(8, 7)));
    // Every dependent comes after its dependencies (the order edges are inserted in).
    assert!(lattice.iter().chain(&fan).all(|(a, b)| a > b));
    assert!(graph_edges(BenchShape::Orders, 9).is_none());
}
