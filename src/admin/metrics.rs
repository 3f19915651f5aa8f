//! `GET /metrics`: the Prometheus text exposition format (version 0.0.4), written by hand.
//! The format is a few lines per series; a client library would bring its own registry and
//! encoder for what [`crate::metrics`] already holds as atomics, and a dependency for little.
//!
//! What is served:
//!
//! - counters and histograms of this process since it started ([`crate::metrics::Metrics`]);
//! - local gauges: items in flight here, whether this replica leads, the build;
//! - database gauges (queue depth by status and type, the oldest runnable item's age, open
//!   dead letters, items awaiting approval), which describe the whole database, not this
//!   process: only the elected leader refreshes them, every `admin.gauge_interval`, with
//!   statements that read the partial indexes of live rows (`db::gauges`); the other
//!   replicas omit them, and so does a leader whose last good refresh is older than three
//!   intervals (the database is unreachable). Scrape every replica and the series exist
//!   exactly once; `orderly_leader` says which one carries them.
//!
//! Every label value comes from a closed set (see [`crate::metrics`]).

use super::AdminState;
use crate::db;
use crate::db::gauges::Depth;
use crate::metrics::{HistogramSnapshot, Histograms, Metrics};
use crate::model::ItemStatus;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::routing::get;
use sqlx::PgPool;
use std::fmt::{Display, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// The content type of the text exposition format.
pub const CONTENT_TYPE_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

pub fn routes() -> axum::Router<AdminState> {
    axum::Router::new().route("/metrics", get(serve))
}

async fn serve(State(state): State<AdminState>) -> ([(axum::http::HeaderName, &'static str); 1], String) {
    ([(CONTENT_TYPE, CONTENT_TYPE_TEXT)], render(&state))
}

/// The gauges read from the database, as the leader last refreshed them.
#[derive(Debug, Default)]
pub struct DbGauges {
    latest: Mutex<Option<Refreshed>>,
}

#[derive(Debug, Clone)]
struct Refreshed {
    at: Instant,
    depth: Vec<Depth>,
    open_dead_letters: i64,
    /// Agents with limits or a pause (`db::limits::views`).
    agents: Vec<db::limits::AgentView>,
}

impl DbGauges {
    fn set(&self, refreshed: Option<Refreshed>) {
        *self.latest.lock().unwrap_or_else(|p| p.into_inner()) = refreshed;
    }

    /// The last refresh, if it is younger than `max_age`.
    fn fresh(&self, max_age: Duration) -> Option<Refreshed> {
        let latest = self.latest.lock().unwrap_or_else(|p| p.into_inner());
        latest.as_ref().filter(|r| r.at.elapsed() <= max_age).cloned()
    }
}

/// The leader's refresh loop: at once on taking the lead, then every `interval`; a replica
/// that does not lead forgets its gauges. Each refresh is bounded by `interval`; a failed one
/// keeps the previous values until they are three intervals old (see the module note).
pub async fn refresh_gauges(
    pool: PgPool,
    gauges: std::sync::Arc<DbGauges>,
    interval: Duration,
    mut leadership: crate::leadership::Leadership,
    stop: CancellationToken,
) {
    let mut election_over = false;
    loop {
        if leadership.is_leader() {
            let read =
                async { Ok::<_, sqlx::Error>((db::gauges::gauges(&pool).await?, db::limits::views(&pool).await?)) };
            match tokio::time::timeout(interval, read).await {
                Ok(Ok(((depth, open_dead_letters), agents))) => {
                    gauges.set(Some(Refreshed { at: Instant::now(), depth, open_dead_letters, agents }))
                }
                Ok(Err(e)) => crate::telemetry::warn_limited("gauges", "refreshing the database gauges failed", &e),
                Err(_) => crate::telemetry::warn_limited(
                    "gauges",
                    "refreshing the database gauges failed",
                    &format!("no answer within {}", humantime::format_duration(interval)),
                ),
            }
        } else {
            gauges.set(None);
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
            changed = leadership.changed(), if !election_over => election_over = changed.is_err(),
        }
    }
}

/// The whole exposition.
pub fn render(state: &AdminState) -> String {
    let m = &*state.metrics;
    let mut out = Exposition::default();

    out.family("orderly_items_claimed_total", "counter", "Items claimed by this process, by item type.");
    for (item_type, n) in m.claimed_by_type.snapshot() {
        out.sample("orderly_items_claimed_total", &[("item_type", &item_type)], n);
    }
    out.family(
        "orderly_attempts_total",
        "counter",
        "Attempts recorded by this process, by attempt status, agent and item type.",
    );
    for ((status, agent, item_type), n) in m.attempts.snapshot() {
        out.sample(
            "orderly_attempts_total",
            &[("status", status.as_str()), ("agent", &agent), ("item_type", &item_type)],
            n,
        );
    }
    out.family(
        "orderly_items_finished_total",
        "counter",
        "Items this process moved to COMPLETED, FAILED (dead-lettered) or AWAITING_APPROVAL.",
    );
    for (state, n) in m.finished.snapshot() {
        out.sample("orderly_items_finished_total", &[("state", state.as_str())], n);
    }
    out.family("orderly_dead_letters_total", "counter", "Dead letters written by this process, by error code.");
    for (code, n) in m.dead_letters.snapshot() {
        out.sample("orderly_dead_letters_total", &[("error_code", code.map_or("NONE", |c| c.as_str()))], n);
    }
    out.counter("orderly_retries_total", "Failed attempts scheduled to run again after a backoff.", &m.retried);
    out.counter(
        "orderly_items_released_total",
        "Items released to the queue without counting the attempt (shutdown, database unavailable).",
        &m.released,
    );
    out.counter(
        "orderly_evaluations_queued_total",
        "Agent outputs handed to their step's agent evaluators (the next run evaluates them).",
        &m.evaluations_queued,
    );
    out.counter("orderly_revisions_total", "Outputs a review sent back to their agent with feedback.", &m.revisions);
    out.counter(
        "orderly_stale_writes_total",
        "Results refused by the fence: the attempt was no longer the item's current one.",
        &m.stale_writes,
    );
    out.counter(
        "orderly_leases_lost_total",
        "Executions abandoned because their lease could not be renewed.",
        &m.leases_lost,
    );
    out.family(
        "orderly_rescues_total",
        "counter",
        "Expired leases rescued by this replica while leading, by outcome (requeued, dead_lettered).",
    );
    for (dead, n) in m.rescues.snapshot() {
        out.sample("orderly_rescues_total", &[("outcome", if dead { "dead_lettered" } else { "requeued" })], n);
    }
    out.family("orderly_eval_results_total", "counter", "Eval results recorded, by result (passed, failed).");
    for (passed, n) in m.eval_results.snapshot() {
        out.sample("orderly_eval_results_total", &[("result", if passed { "passed" } else { "failed" })], n);
    }
    out.family(
        "orderly_approval_decisions_total",
        "counter",
        "Approval decisions recorded by this process, by decision and source (POLICY, HUMAN).",
    );
    for ((decision, source), n) in m.approvals.snapshot() {
        out.sample("orderly_approval_decisions_total", &[("decision", decision.as_str()), ("source", source)], n);
    }
    out.counter(
        "orderly_escalations_fired_total",
        "SLA escalation levels fired by this replica's sweeps.",
        &m.escalations_fired,
    );
    out.counter(
        "orderly_escalations_resolved_total",
        "SLA escalations resolved by this replica's sweeps (their clock stopped).",
        &m.escalations_resolved,
    );
    out.family(
        "orderly_notifications_total",
        "counter",
        "Notifications sent by this process, by channel (connector type) and outcome.",
    );
    for ((channel, outcome), n) in m.notifications.snapshot() {
        out.sample("orderly_notifications_total", &[("channel", &channel), ("outcome", outcome)], n);
    }

    out.histograms(
        "orderly_attempt_duration_seconds",
        "Duration of attempts recorded by this process, by agent.",
        "agent",
        &m.attempt_seconds,
        |agent| agent.to_string(),
    );
    out.histograms(
        "orderly_queue_wait_seconds",
        "Time from an item becoming runnable (its INSERT, or the end of its retry delay) to its claim, by priority.",
        "priority",
        &m.queue_wait_seconds,
        |priority| priority.as_str().to_owned(),
    );

    out.family(
        "orderly_schedule_slots_total",
        "counter",
        "Schedule slots handled by this replica while leading, by outcome (materialized, skipped by policy).",
    );
    for (outcome, n) in m.schedule_slots.snapshot() {
        out.sample("orderly_schedule_slots_total", &[("outcome", outcome)], n);
    }
    out.histograms(
        "orderly_schedule_late_seconds",
        "How late a schedule slot's order was made, from its slot time (database clock).",
        "",
        &m.schedule_late_seconds,
        |_| String::new(),
    );
    out.family("orderly_in_flight_items", "gauge", "Items this process is executing or about to record.");
    out.sample("orderly_in_flight_items", &[], state.in_flight.len());
    let leading = state.leadership.is_leader();
    out.family(
        "orderly_leader",
        "gauge",
        "1 when this replica is the elected leader (it carries the database gauges).",
    );
    out.sample("orderly_leader", &[], u8::from(leading));
    if let Some(term) = state.leadership.term() {
        out.family("orderly_leader_epoch", "gauge", "The leader lease's epoch this replica holds (leader only).");
        out.sample("orderly_leader_epoch", &[], term.epoch);
        out.family(
            "orderly_leader_since_timestamp_seconds",
            "gauge",
            "When this replica's term as leader began, in Unix seconds (leader only).",
        );
        out.sample("orderly_leader_since_timestamp_seconds", &[], term.since.timestamp());
    }
    out.family("orderly_build_info", "gauge", "The running build; the value is always 1.");
    out.sample("orderly_build_info", &[("version", env!("CARGO_PKG_VERSION"))], 1);

    let interval = state.settings.admin.gauge_interval;
    if let Some(gauges) = leading.then(|| state.gauges.fresh(interval * 3)).flatten() {
        database_gauges(&mut out, &gauges);
    }
    out.text
}

/// The leader's gauges (see the module note).
fn database_gauges(out: &mut Exposition, gauges: &Refreshed) {
    out.family(
        "orderly_queue_depth",
        "gauge",
        "Live items in the database by status (QUEUED, PROCESSING, AWAITING_APPROVAL) and item type (leader only).",
    );
    for d in &gauges.depth {
        out.sample("orderly_queue_depth", &[("status", d.status.as_str()), ("item_type", &d.item_type)], d.count);
    }
    let oldest = gauges.depth.iter().filter_map(|d| d.oldest_seconds).fold(0.0_f64, f64::max);
    out.family(
        "orderly_oldest_queued_age_seconds",
        "gauge",
        "How long the oldest runnable QUEUED item has waited; 0 when none waits (leader only).",
    );
    out.sample("orderly_oldest_queued_age_seconds", &[], oldest.max(0.0));
    out.family("orderly_open_dead_letters", "gauge", "Dead letters not yet replayed or discarded (leader only).");
    out.sample("orderly_open_dead_letters", &[], gauges.open_dead_letters);
    let held: i64 = gauges.depth.iter().filter(|d| d.status == ItemStatus::AwaitingApproval).map(|d| d.count).sum();
    out.family("orderly_items_awaiting_approval", "gauge", "Items held for a human decision (leader only).");
    out.sample("orderly_items_awaiting_approval", &[], held);
    out.family(
        "orderly_agent_in_flight",
        "gauge",
        "Executions holding a slot of an agent with limits, across every replica (leader only).",
    );
    for a in &gauges.agents {
        out.sample("orderly_agent_in_flight", &[("agent", &a.agent)], a.in_flight);
    }
    out.family("orderly_agent_waiting", "gauge", "Items waiting for an agent's limit, pause or circuit (leader only).");
    for a in &gauges.agents {
        out.sample("orderly_agent_waiting", &[("agent", &a.agent)], a.waiting);
    }
    out.family(
        "orderly_agent_circuit_open",
        "gauge",
        "1 while an agent's circuit is open, 0.5 while it probes, 0 when closed (leader only).",
    );
    for a in &gauges.agents {
        let state = match a.circuit.as_str() {
            "open" => 1.0,
            "probing" => 0.5,
            _ => 0.0,
        };
        out.sample("orderly_agent_circuit_open", &[("agent", &a.agent)], state);
    }
    out.family(
        "orderly_agent_rate_booked_seconds",
        "gauge",
        "How far ahead of now an agent's rate is booked by starts and reservations (leader only).",
    );
    for a in &gauges.agents {
        let ahead =
            a.rate_booked_until.map_or(0.0, |t| (t - chrono::Utc::now()).num_milliseconds().max(0) as f64 / 1e3);
        out.sample("orderly_agent_rate_booked_seconds", &[("agent", &a.agent)], ahead);
    }
    out.family("orderly_agent_paused", "gauge", "1 while an agent is paused by a Retry-After (leader only).");
    for a in &gauges.agents {
        out.sample("orderly_agent_paused", &[("agent", &a.agent)], i64::from(a.paused_until.is_some()));
    }
}

#[derive(Default)]
struct Exposition {
    text: String,
}

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn counter(&mut self, name: &str, help: &str, value: &std::sync::atomic::AtomicU64) {
        self.family(name, "counter", help);
        self.sample(name, &[], Metrics::get(value));
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (label, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let _ = write!(self.text, "{label}=\"{}\"", escape(value));
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {value}");
    }

    fn histograms<K: Eq + std::hash::Hash + Clone + Ord>(
        &mut self,
        name: &str,
        help: &str,
        label: &str,
        histograms: &Histograms<K>,
        show: impl Fn(&K) -> String,
    ) {
        self.family(name, "histogram", help);
        for (key, HistogramSnapshot { cumulative, count, sum }) in histograms.snapshot() {
            let value = show(&key);
            // An empty label name: a histogram without labels.
            let labelled: &[(&str, &str)] = if label.is_empty() { &[] } else { &[(label, &value)] };
            for (bound, n) in cumulative {
                let le = if bound.is_infinite() { "+Inf".to_owned() } else { bound.to_string() };
                let mut labels = labelled.to_vec();
                labels.push(("le", &le));
                self.sample(&format!("{name}_bucket"), &labels, n);
            }
            self.sample(&format!("{name}_sum"), labelled, sum);
            self.sample(&format!("{name}_count"), labelled, count);
        }
    }
}

/// A label value as the format quotes it: backslash, double quote and line feed escaped.
fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_quote_and_escape_label_values() {
        let mut out = Exposition::default();
        out.family("x_total", "counter", "An example.");
        out.sample("x_total", &[("a", "plain"), ("b", "q\"uo\\te\nd")], 3);
        out.sample("y", &[], 0.25);
        assert_eq!(
            out.text,
            "# HELP x_total An example.\n# TYPE x_total counter\nx_total{a=\"plain\",b=\"q\\\"uo\\\\te\\nd\"} 3\ny 0.25\n"
        );
    }
}
