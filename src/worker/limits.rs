//! Limits on the hot path. The gate sits between the claim and the runners, beside the
//! budget gate: it routes each claimed item and sends those of capped tenants, limited
//! template steps and limited or paused agents through `db::limits::admit`, one transaction
//! per key in the batch; nothing at all happens when nothing is limited. The waker, on every
//! replica, lets items that wait for a free slot run as slots free (after each completion
//! batch of a limited agent, and twice a second as the safety net), and tells the dispatcher
//! to claim them.

use super::runner::RunContext;
use crate::db;
use crate::db::claim::ClaimedItem;
use crate::db::limits::Claimed;
use crate::model::Priority;
use crate::policy::catalog::Step;
use crate::policy::limits::AgentLimit;
use sqlx::PgPool;
use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// How often the waker looks even when no completion told it to.
const WAKE_EVERY: Duration = Duration::from_millis(500);

fn rank(priority: Priority) -> i32 {
    match priority {
        Priority::Low => 0,
        Priority::Medium => 1,
        Priority::High => 2,
        Priority::Urgent => 3,
    }
}

/// How long the set of paused agents is believed before it is read again: a pause another
/// replica recorded is seen within this (about one poll).
const PAUSES_RECHECK: Duration = Duration::from_millis(250);

/// The gate: which agents are paused (read at most every [`PAUSES_RECHECK`]), whether any
/// template step has limits (kept by the waker), and the claim's check of every limit.
#[derive(Default)]
pub struct LimitGate {
    paused: std::sync::Mutex<Option<(std::time::Instant, HashSet<String>)>>,
    /// Some active template gives a step `limits`: only then (or when agents or tenants are
    /// limited) does the gate resolve the claimed items' steps, so that a claim never waits
    /// on a template read it does not need. Refreshed by the [`waker`] every round.
    steps_limited: Arc<std::sync::atomic::AtomicBool>,
}

impl LimitGate {
    /// A gate that reads whether template steps have limits from `steps_limited`.
    pub fn new(steps_limited: Arc<std::sync::atomic::AtomicBool>) -> LimitGate {
        LimitGate { paused: Default::default(), steps_limited }
    }

    async fn paused(&self, pool: &PgPool) -> Result<HashSet<String>, sqlx::Error> {
        if let Some((at, paused)) = &*self.paused.lock().expect("limit gate")
            && at.elapsed() < PAUSES_RECHECK
        {
            return Ok(paused.clone());
        }
        let paused: HashSet<String> = db::limits::paused_agents(pool).await?.into_iter().collect();
        *self.paused.lock().expect("limit gate") = Some((std::time::Instant::now(), paused.clone()));
        Ok(paused)
    }

    /// Keeps the claimed items their limits let start now; the others are parked. Each item
    /// passes up to three gates in turn, each keyed in the database ([`Key`]): its tenant's
    /// cap, its template step's limits, its agent's limits and pause. Returns how long until
    /// the earliest parked item's turn (a rate reservation, a pause's end), so the dispatcher
    /// looks again then.
    pub async fn admit(
        &self,
        ctx: &RunContext,
        pool: &PgPool,
        items: &mut Vec<ClaimedItem>,
        judging: &HashSet<Uuid>,
    ) -> Result<Option<Duration>, sqlx::Error> {
        if items.is_empty() {
            return Ok(None);
        }
        let paused = self.paused(pool).await?;
        let capped = |tenant: &Uuid| ctx.settings.tenants.get(tenant).and_then(|t| t.max_in_flight);
        let any_tenant_cap = items.iter().any(|i| capped(&i.tenant_id).is_some());
        if ctx.agents.limited().next().is_none()
            && paused.is_empty()
            && !any_tenant_cap
            && !self.steps_limited.load(std::sync::atomic::Ordering::Relaxed)
        {
            return Ok(None);
        }
        // One resolution per (workflow, type) in the batch.
        let mut steps: HashMap<(&str, &str), Option<Step>> = HashMap::new();
        for item in items.iter() {
            if let Entry::Vacant(slot) = steps.entry((item.workflow_id.as_str(), item.item_type.as_str())) {
                // An item that cannot be routed is the runner's to fail, not the gate's.
                slot.insert(ctx.catalog.resolve(&item.workflow_id, &item.item_type).await.ok());
            }
        }
        let mut gates: [BTreeMap<String, (AgentLimit, Vec<Claimed>)>; 3] = Default::default();
        for item in items.iter() {
            let claimed = Claimed { id: item.id, attempt: item.attempt, priority: rank(item.priority) };
            if let Some(max) = capped(&item.tenant_id) {
                let limit = AgentLimit { max_in_flight: Some(max), ..AgentLimit::default() };
                gates[0].entry(Key::Tenant(item.tenant_id).to_string()).or_insert((limit, Vec::new())).1.push(claimed);
            }
            let Some(Some(step)) = steps.get(&(item.workflow_id.as_str(), item.item_type.as_str())) else { continue };
            if judging.contains(&item.id) {
                // An evaluation run calls the step's judges, not its agent: their limits hold.
                for agent in step.judge_agents() {
                    let agent_limit = ctx.agents.limit(agent);
                    if agent_limit.is_some() || paused.contains(agent) {
                        let limit = agent_limit.copied().unwrap_or_default();
                        let waiting = &mut gates[2].entry(agent.to_owned()).or_insert((limit, Vec::new())).1;
                        if !waiting.iter().any(|c| c.id == claimed.id) {
                            waiting.push(claimed);
                        }
                    }
                }
                continue;
            }
            if let Some(limit) = step.limit {
                let key = Key::Step(&item.workflow_id, &item.item_type).to_string();
                gates[1].entry(key).or_insert((limit, Vec::new())).1.push(claimed);
            }
            let agent_limit = ctx.agents.limit(&step.agent);
            if agent_limit.is_some() || paused.contains(&step.agent) {
                let limit = agent_limit.copied().unwrap_or_default();
                gates[2].entry(step.agent.clone()).or_insert((limit, Vec::new())).1.push(claimed);
            }
        }
        let mut parked = HashSet::new();
        let mut next: Option<Duration> = None;
        for gate in gates {
            for (key, (limit, mut claimed)) in gate {
                // Parked at an earlier gate: not asked again (its slot there, if any, is dead
                // once it is QUEUED again).
                claimed.retain(|c| !parked.contains(&c.id));
                if claimed.is_empty() {
                    continue;
                }
                claimed.sort_by_key(|c| std::cmp::Reverse(c.priority));
                for (id, after) in db::limits::admit(pool, &key, &limit, &claimed).await? {
                    parked.insert(id);
                    if let Some(after) = after {
                        next = Some(next.map_or(after, |n| n.min(after)));
                    }
                }
            }
        }
        if !parked.is_empty() {
            tracing::debug!(parked = parked.len(), "claimed items parked by limits");
            items.retain(|i| !parked.contains(&i.id));
        }
        Ok(next)
    }
}

/// What a start is counted against in `agent_state`, `agent_slots` and `agent_waits`: an
/// agent (its name), a tenant's cap (`tenant:ID`) or a template step's limits
/// (`step:WORKFLOW/TYPE`).
pub enum Key<'a> {
    Tenant(Uuid),
    Step(&'a str, &'a str),
}

impl std::fmt::Display for Key<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Key::Tenant(id) => write!(f, "tenant:{id}"),
            Key::Step(workflow, item_type) => write!(f, "step:{workflow}/{item_type}"),
        }
    }
}

/// Whether any active template step has limits, read once before the first claim (the waker
/// keeps it current); unreadable, it says yes, so the gate resolves and nothing slips past one.
pub async fn steps_limited_at_start(pool: &PgPool) -> Arc<std::sync::atomic::AtomicBool> {
    let any = db::catalog::any_step_limits(pool).await.unwrap_or(true);
    Arc::new(std::sync::atomic::AtomicBool::new(any))
}

/// The keys the configuration limits (agents, and tenants with a cap) and each one's slot
/// limit: what the waker stores at start-up (`db::limits::reconcile`).
pub fn configured_keys(
    agents: &crate::agent::Agents,
    settings: &crate::config::Settings,
) -> Vec<(String, Option<u32>)> {
    let agents = agents.limited().map(|(name, limit)| (name.clone(), limit.max_in_flight));
    let tenants = settings
        .tenants
        .iter()
        .filter_map(|(id, tenant)| tenant.max_in_flight.map(|max| (Key::Tenant(*id).to_string(), Some(max))));
    agents.chain(tenants).collect()
}

/// How the completers tell the waker that slots may have freed: always after a batch with a
/// limited agent's results, and after any batch while something waits for a slot (a tenant's
/// cap, a step's limit), as the waker last saw.
#[derive(Default)]
pub struct Nudge {
    notify: Notify,
    waiting: std::sync::atomic::AtomicBool,
}

impl Nudge {
    /// After a completion batch; `limited`: it had results of a limited or paused agent.
    pub fn completed(&self, limited: bool) {
        if limited || self.waiting.load(std::sync::atomic::Ordering::Relaxed) {
            self.notify.notify_one();
        }
    }
}

/// Lets items waiting for a slot run as slots free, for every key that has them (whichever
/// replica parked them); `nudge` is told by the completers, `claim` wakes the dispatcher.
/// At start-up the configured limits replace the stored ones (`db::limits::reconcile`).
pub async fn waker(
    pool: PgPool,
    limited: Vec<(String, Option<u32>)>,
    steps_limited: Arc<std::sync::atomic::AtomicBool>,
    nudge: Arc<Nudge>,
    claim: Arc<Notify>,
    stop: CancellationToken,
) {
    let mut reconciled = false;
    loop {
        if !reconciled {
            match db::limits::reconcile(&pool, &limited).await {
                Ok(released) => {
                    reconciled = true;
                    if released > 0 {
                        tracing::info!(released, "items waiting for a limit no longer configured run now");
                        claim.notify_one();
                    }
                }
                Err(e) => crate::telemetry::warn_limited("limits_wake", "storing the configured limits failed", &e),
            }
        }
        match db::catalog::any_step_limits(&pool).await {
            Ok(any) => steps_limited.store(any, std::sync::atomic::Ordering::Relaxed),
            Err(e) => {
                crate::telemetry::warn_limited("limits_wake", "reading whether template steps have limits failed", &e)
            }
        }
        let mut woke = 0;
        match db::limits::waiting_keys(&pool).await {
            Ok(keys) => {
                nudge.waiting.store(!keys.is_empty(), std::sync::atomic::Ordering::Relaxed);
                for (key, max) in keys {
                    match db::limits::wake(&pool, &key, max).await {
                        Ok(n) => woke += n,
                        Err(e) => {
                            crate::telemetry::warn_limited("limits_wake", "waking items waiting for a limit failed", &e)
                        }
                    }
                }
            }
            Err(e) => crate::telemetry::warn_limited("limits_wake", "reading what waits for a limit failed", &e),
        }
        if woke > 0 {
            claim.notify_one();
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = nudge.notify.notified() => {}
            _ = tokio::time::sleep(WAKE_EVERY) => {}
        }
    }
}
