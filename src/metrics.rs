//! The process's metrics: what the hot path, the rescuer and the SLA sweeper count, read by
//! `/metrics` (`admin/metrics.rs` renders them), the tests and the bench.
//!
//! Cheap on the hot path: a counter is an atomic. A labelled counter or histogram is a map
//! from its label values to atomics behind a read-write lock that is only written the first
//! time a label set is seen, so an increment is a shared read lock, a hash of a few short
//! strings and an atomic add, with no allocation.
//!
//! Label values come only from closed sets: the model's enums (statuses, error codes,
//! decisions, priorities), the configured agent names (anything else is `other`), and the
//! database's enums (item types, connector types), capped at a few hundred values so that a
//! bug can never grow a family without bound. Never ids, never error text.

use crate::model::{AttemptStatus, Completion, Decision, ErrorCode, ItemStatus, NextState, Priority};
use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// The agent label of results the runner produced before an agent was chosen (no route, an
/// invalid template): see `worker::runner`.
pub const ROUTER_AGENT: &str = "router";
/// The agent label of LOST attempts the rescuer records.
pub const RESCUER_AGENT: &str = "rescuer";
/// The label value that stands for anything outside a family's closed set.
pub const OTHER: &str = "other";

/// Approval decisions made by the configured policy (the completer) or by a human.
pub const SOURCE_POLICY: &str = "POLICY";
pub const SOURCE_HUMAN: &str = "HUMAN";

/// Buckets of `orderly_attempt_duration_seconds`: 5 ms to 10 min (agent timeouts are 30 s by
/// default, at most a day).
pub const ATTEMPT_BUCKETS: &[f64] =
    &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0];
/// Buckets of `orderly_queue_wait_seconds`: 1 ms (an idle daemon woken by NOTIFY) to a day.
pub const QUEUE_WAIT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0,
    86400.0,
];

/// Most distinct item types (or connector types) counted separately; more are `other`.
const MAX_DB_LABELS: usize = 256;

/// Counters of this process since it started, and two health flags. Shared (`Arc`) by the
/// dispatcher, the completers, the listener, the rescuer, the SLA sweeper and the admin
/// server; a notifier increments [`Metrics::notification`].
#[derive(Debug)]
pub struct Metrics {
    pub claimed: AtomicU64,
    pub completed: AtomicU64,
    pub retried: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub awaiting_approval: AtomicU64,
    pub released: AtomicU64,
    /// Outputs handed to the step's agent evaluators (the next run evaluates them).
    pub evaluations_queued: AtomicU64,
    /// Outputs sent back to their agent for a revision by a review.
    pub revisions: AtomicU64,
    /// Results rejected by the fence: the attempt was no longer the item's current one.
    pub stale_writes: AtomicU64,
    /// Executions abandoned because the lease could not be renewed.
    pub leases_lost: AtomicU64,
    pub completer_batches: AtomicU64,
    pub claim_batches: AtomicU64,
    /// The last claim reached the database.
    pub ready: AtomicBool,
    /// The LISTEN connection is up (set and cleared by `worker::listener`; `/readyz`).
    pub listening: AtomicBool,

    /// Items claimed, by item type.
    pub claimed_by_type: Counter<Label>,
    /// Attempt rows written by this process, by attempt status, agent and item type.
    pub attempts: Counter<(AttemptStatus, Label, Label)>,
    /// Items that reached COMPLETED, FAILED (dead-lettered) or AWAITING_APPROVAL.
    pub finished: Counter<ItemStatus>,
    /// Dead letters written, by error code (`None`: a dead letter without a code).
    pub dead_letters: Counter<Option<ErrorCode>>,
    /// Rescued expired leases: `true` dead-lettered, `false` re-queued.
    pub rescues: Counter<bool>,
    /// Eval results written, by `passed`.
    pub eval_results: Counter<bool>,
    /// Approval events, by decision and source ([`SOURCE_POLICY`], [`SOURCE_HUMAN`]).
    pub approvals: Counter<(Decision, &'static str)>,
    pub escalations_fired: AtomicU64,
    pub escalations_resolved: AtomicU64,
    /// Notifications sent, by channel (connector type) and outcome.
    pub notifications: Counter<(Label, &'static str)>,
    /// Attempt durations as recorded on the attempt, by agent.
    pub attempt_seconds: Histograms<Label>,
    /// From the moment an item became runnable (`run_at`: its INSERT, or the end of its
    /// retry delay) to its claim, on the database clock, by priority.
    pub queue_wait_seconds: Histograms<Priority>,
    /// Schedule slots this replica handled while leading, by outcome (`materialized`, or
    /// `skipped` by the catch-up or overlap policy).
    pub schedule_slots: Counter<&'static str>,
    /// How late each materialized slot's order was made (database clock), in seconds.
    pub schedule_late_seconds: Histograms<()>,

    agents: Interner,
    item_types: Interner,
    channels: Interner,
}

/// A label value from a closed set, shared rather than copied.
pub type Label = Arc<str>;

impl Default for Metrics {
    /// Metrics that take any agent name (up to a cap); the engine uses [`Metrics::new`].
    fn default() -> Self {
        Metrics::with_agents(None)
    }
}

impl Metrics {
    /// Metrics for an engine with these configured agents: any other agent label is `other`.
    pub fn new<'a>(agents: impl IntoIterator<Item = &'a String>) -> Metrics {
        let mut allowed: HashSet<String> = agents.into_iter().cloned().collect();
        allowed.extend([ROUTER_AGENT.to_owned(), RESCUER_AGENT.to_owned()]);
        Metrics::with_agents(Some(allowed))
    }

    fn with_agents(agents: Option<HashSet<String>>) -> Metrics {
        let metrics = Metrics {
            claimed: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            retried: AtomicU64::new(0),
            dead_lettered: AtomicU64::new(0),
            awaiting_approval: AtomicU64::new(0),
            released: AtomicU64::new(0),
            evaluations_queued: AtomicU64::new(0),
            revisions: AtomicU64::new(0),
            stale_writes: AtomicU64::new(0),
            leases_lost: AtomicU64::new(0),
            completer_batches: AtomicU64::new(0),
            claim_batches: AtomicU64::new(0),
            ready: AtomicBool::new(false),
            listening: AtomicBool::new(false),
            claimed_by_type: Counter::default(),
            attempts: Counter::default(),
            finished: Counter::default(),
            dead_letters: Counter::default(),
            rescues: Counter::default(),
            eval_results: Counter::default(),
            approvals: Counter::default(),
            escalations_fired: AtomicU64::new(0),
            escalations_resolved: AtomicU64::new(0),
            notifications: Counter::default(),
            attempt_seconds: Histograms::new(ATTEMPT_BUCKETS),
            queue_wait_seconds: Histograms::new(QUEUE_WAIT_BUCKETS),
            schedule_slots: Counter::default(),
            schedule_late_seconds: Histograms::new(QUEUE_WAIT_BUCKETS),
            agents: Interner::new(agents, MAX_DB_LABELS),
            item_types: Interner::new(None, MAX_DB_LABELS),
            channels: Interner::new(None, MAX_DB_LABELS),
        };
        // The values of the small closed sets show from the start, so that rates exist
        // before the first event.
        for state in [ItemStatus::Completed, ItemStatus::Failed, ItemStatus::AwaitingApproval] {
            metrics.finished.add(state, 0);
        }
        for outcome in ["materialized", "skipped"] {
            metrics.schedule_slots.add(outcome, 0);
        }
        metrics.schedule_late_seconds.touch(());
        for flag in [false, true] {
            metrics.rescues.add(flag, 0);
            metrics.eval_results.add(flag, 0);
        }
        metrics
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
    /// Results written, whatever the outcome.
    pub fn recorded(&self) -> u64 {
        Self::get(&self.completed)
            + Self::get(&self.retried)
            + Self::get(&self.dead_lettered)
            + Self::get(&self.awaiting_approval)
            + Self::get(&self.released)
            + Self::get(&self.evaluations_queued)
            + Self::get(&self.revisions)
    }

    /// One item claimed (the dispatcher): its type, priority and how long it waited while
    /// runnable, in seconds.
    pub fn claimed_item(&self, item_type: &str, priority: Priority, waited_seconds: f64) {
        self.claimed_by_type.add(self.item_types.get(item_type), 1);
        self.queue_wait_seconds.observe(priority, waited_seconds);
    }

    /// One result the completer has written (not stale, not left unwritten).
    pub fn result_written(&self, done: &Completion) {
        let counter = match done.next {
            NextState::Completed => &self.completed,
            NextState::AwaitingApproval => &self.awaiting_approval,
            NextState::Retry { .. } => &self.retried,
            NextState::Released { .. } => &self.released,
            NextState::DeadLetter { .. } => &self.dead_lettered,
            NextState::Evaluate => &self.evaluations_queued,
            NextState::Revise => &self.revisions,
        };
        Self::add(counter, 1);
        let agent = self.agents.get(&done.agent);
        self.attempt_seconds.observe(agent.clone(), f64::from(done.duration_ms.max(0)) / 1000.0);
        self.attempt_written(done, agent);
        for eval in &done.evals {
            self.eval_results.add(eval.passed, 1);
        }
        if let Some(approval) = &done.approval {
            self.approvals.add((approval.decision, SOURCE_POLICY), 1);
        }
    }

    /// One expired lease the rescuer has written: a LOST attempt, re-queued or dead-lettered.
    pub fn rescue_written(&self, done: &Completion) {
        let dead = matches!(done.next, NextState::DeadLetter { .. });
        self.rescues.add(dead, 1);
        self.attempt_written(done, self.agents.get(&done.agent));
    }

    /// The attempt row, and where the item went (both kinds of result).
    fn attempt_written(&self, done: &Completion, agent: Label) {
        self.attempts.add((done.attempt_status, agent, self.item_types.get(&done.item_type)), 1);
        match done.next {
            NextState::Completed => self.finished.add(ItemStatus::Completed, 1),
            NextState::AwaitingApproval => self.finished.add(ItemStatus::AwaitingApproval, 1),
            NextState::DeadLetter { .. } => {
                self.finished.add(ItemStatus::Failed, 1);
                self.dead_letters.add(done.error.as_ref().map(|e| e.code), 1);
            }
            NextState::Retry { .. } | NextState::Released { .. } | NextState::Evaluate | NextState::Revise => {}
        }
    }

    /// One approval decision made outside the completer (a human, through an operator
    /// surface running in this process).
    pub fn approval_decided(&self, decision: Decision, source: &'static str) {
        self.approvals.add((decision, source), 1);
    }

    /// One notification attempt: `channel` is the connector type (`SLACK`, `EMAIL`, ...),
    /// `outcome` a fixed word of the notifier's (`delivered`, `failed`, `retried`, ...).
    pub fn notification(&self, channel: &str, outcome: &'static str) {
        self.notifications.add((self.channels.get(channel), outcome), 1);
    }
}

/// A labelled counter: label values → count.
#[derive(Debug)]
pub struct Counter<K> {
    cells: RwLock<HashMap<K, AtomicU64>>,
}

impl<K> Default for Counter<K> {
    fn default() -> Self {
        Counter { cells: RwLock::new(HashMap::new()) }
    }
}

impl<K: Eq + Hash + Clone + Ord> Counter<K> {
    pub fn add(&self, key: K, n: u64) {
        if let Some(cell) = read(&self.cells).get(&key) {
            cell.fetch_add(n, Ordering::Relaxed);
            return;
        }
        write(&self.cells).entry(key).or_default().fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self, key: &K) -> u64 {
        read(&self.cells).get(key).map_or(0, |cell| cell.load(Ordering::Relaxed))
    }

    /// Every label set seen, in order.
    pub fn snapshot(&self) -> Vec<(K, u64)> {
        let mut all: Vec<(K, u64)> =
            read(&self.cells).iter().map(|(k, cell)| (k.clone(), cell.load(Ordering::Relaxed))).collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }
}

/// A labelled histogram with fixed buckets (upper bounds, in seconds).
#[derive(Debug)]
pub struct Histograms<K> {
    bounds: &'static [f64],
    cells: RwLock<HashMap<K, Histogram>>,
}

/// One histogram: per-bucket counts (not cumulative; the last is +Inf), count and sum.
#[derive(Debug)]
pub struct Histogram {
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    sum_micros: AtomicU64,
}

/// A histogram as rendered: cumulative counts per upper bound, then the total and the sum.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    pub cumulative: Vec<(f64, u64)>,
    pub count: u64,
    pub sum: f64,
}

impl<K: Eq + Hash + Clone + Ord> Histograms<K> {
    pub fn new(bounds: &'static [f64]) -> Self {
        Histograms { bounds, cells: RwLock::new(HashMap::new()) }
    }

    /// Makes `key`'s histogram exist with nothing in it, so that it is served before the first
    /// observation.
    pub fn touch(&self, key: K) {
        let mut cells = write(&self.cells);
        cells.entry(key).or_insert_with(|| Histogram {
            buckets: (0..=self.bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        });
    }

    pub fn observe(&self, key: K, seconds: f64) {
        let seconds = if seconds.is_finite() { seconds.max(0.0) } else { 0.0 };
        let bucket = self.bounds.iter().position(|bound| seconds <= *bound).unwrap_or(self.bounds.len());
        let record = |h: &Histogram| {
            h.buckets[bucket].fetch_add(1, Ordering::Relaxed);
            h.count.fetch_add(1, Ordering::Relaxed);
            h.sum_micros.fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
        };
        if let Some(h) = read(&self.cells).get(&key) {
            return record(h);
        }
        let mut cells = write(&self.cells);
        let h = cells.entry(key).or_insert_with(|| Histogram {
            buckets: (0..=self.bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        });
        record(h);
    }

    /// Observations per bucket (not cumulative; the last is past the largest bound), summed
    /// over every label set.
    pub fn bucket_totals(&self) -> Vec<u64> {
        let mut totals = vec![0; self.bounds.len() + 1];
        for h in read(&self.cells).values() {
            for (total, bucket) in totals.iter_mut().zip(h.buckets.iter()) {
                *total += bucket.load(Ordering::Relaxed);
            }
        }
        totals
    }

    /// Every label set seen, in order. A snapshot taken while observations land may show a
    /// count one ahead of its buckets; the renderer takes the buckets' total as the count.
    pub fn snapshot(&self) -> Vec<(K, HistogramSnapshot)> {
        let mut all: Vec<(K, HistogramSnapshot)> = read(&self.cells)
            .iter()
            .map(|(k, h)| {
                let mut running = 0;
                let mut cumulative = Vec::with_capacity(h.buckets.len());
                for (i, bucket) in h.buckets.iter().enumerate() {
                    running += bucket.load(Ordering::Relaxed);
                    cumulative.push((self.bounds.get(i).copied().unwrap_or(f64::INFINITY), running));
                }
                let sum = h.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
                (k.clone(), HistogramSnapshot { cumulative, count: running, sum })
            })
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }
}

/// Turns a label value into a shared [`Label`] from a closed set: an allowed name, or any
/// name up to `cap` distinct ones; anything else is [`OTHER`].
#[derive(Debug)]
struct Interner {
    allowed: Option<HashSet<String>>,
    cap: usize,
    seen: RwLock<HashMap<Box<str>, Label>>,
    other: Label,
}

impl Interner {
    fn new(allowed: Option<HashSet<String>>, cap: usize) -> Interner {
        Interner { allowed, cap, seen: RwLock::new(HashMap::new()), other: Arc::from(OTHER) }
    }

    fn get(&self, value: &str) -> Label {
        if let Some(label) = read(&self.seen).get(value) {
            return label.clone();
        }
        if self.allowed.as_ref().is_some_and(|allowed| !allowed.contains(value)) {
            return self.other.clone();
        }
        let mut seen = write(&self.seen);
        if seen.len() >= self.cap {
            return self.other.clone();
        }
        seen.entry(value.into()).or_insert_with(|| Arc::from(value)).clone()
    }
}

/// Counters stay usable after a panic elsewhere: a poisoned lock still holds valid atomics.
fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_outside_the_closed_sets_are_other() {
        let metrics = Metrics::new(&["echo".to_owned()]);
        assert_eq!(&*metrics.agents.get("echo"), "echo");
        assert_eq!(&*metrics.agents.get(ROUTER_AGENT), ROUTER_AGENT);
        assert_eq!(&*metrics.agents.get("an agent named in a template only"), OTHER);
        let capped = Interner::new(None, 2);
        assert_eq!(&*capped.get("A"), "A");
        assert_eq!(&*capped.get("B"), "B");
        assert_eq!(&*capped.get("C"), OTHER);
        assert_eq!(&*capped.get("A"), "A");
    }

    #[test]
    fn histograms_count_each_observation_in_one_bucket_and_render_cumulatively() {
        let h: Histograms<()> = Histograms::new(&[0.1, 1.0]);
        for seconds in [0.05, 0.1, 0.5, 7.0, f64::NAN, -1.0] {
            h.observe((), seconds);
        }
        let snapshot = &h.snapshot()[0].1;
        // NaN and negative values count as 0 s.
        assert_eq!(snapshot.cumulative, vec![(0.1, 4), (1.0, 5), (f64::INFINITY, 6)]);
        assert_eq!(snapshot.count, 6);
        assert!((snapshot.sum - 7.65).abs() < 1e-9, "{}", snapshot.sum);
    }

    #[test]
    fn counters_add_per_label_set() {
        let c: Counter<(bool, &'static str)> = Counter::default();
        c.add((true, "a"), 2);
        c.add((true, "a"), 1);
        c.add((false, "a"), 1);
        assert_eq!(c.get(&(true, "a")), 3);
        assert_eq!(c.snapshot(), vec![((false, "a"), 1), ((true, "a"), 3)]);
    }
}
