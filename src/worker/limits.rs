//! Agent limits on the hot path. The gate sits between the claim and the runners, beside the
//! budget gate: it routes each claimed item and sends those of limited agents through
//! `db::limits::admit`, one transaction per limited agent in the batch; nothing at all
//! happens when no agent has limits. The waker, on every replica, lets items that wait for a
//! free slot run as slots free (after each completion batch of a limited agent, and twice a
//! second as the safety net), and tells the dispatcher to claim them.

use super::runner::RunContext;
use crate::agent::Agents;
use crate::db;
use crate::db::limits::Claimed;
use crate::db::queue::ClaimedItem;
use crate::model::Priority;
use sqlx::PgPool;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

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

/// The gate: which agents are paused (read at most every [`PAUSES_RECHECK`]), and the claim's
/// check of limited and paused agents.
#[derive(Default)]
pub struct LimitGate {
    paused: std::sync::Mutex<Option<(std::time::Instant, HashSet<String>)>>,
}

impl LimitGate {
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

    /// Keeps the claimed items their agents' limits let start now; the others are parked.
    /// Returns how long until the earliest parked item's turn (a rate reservation, a pause's
    /// end), so the dispatcher looks again then.
    pub async fn admit(
        &self,
        ctx: &RunContext,
        pool: &PgPool,
        items: &mut Vec<ClaimedItem>,
    ) -> Result<Option<Duration>, sqlx::Error> {
        if items.is_empty() {
            return Ok(None);
        }
        let paused = self.paused(pool).await?;
        if ctx.agents.limited().next().is_none() && paused.is_empty() {
            return Ok(None);
        }
        let mut by_agent: BTreeMap<String, Vec<Claimed>> = BTreeMap::new();
        for item in items.iter() {
            // An item that cannot be routed is the runner's to fail, not the gate's.
            let Ok(step) = ctx.catalog.resolve(&item.workflow_id, &item.item_type).await else { continue };
            if ctx.agents.limit(&step.agent).is_some() || paused.contains(&step.agent) {
                by_agent.entry(step.agent.clone()).or_default().push(Claimed {
                    id: item.id,
                    attempt: item.attempt,
                    priority: rank(item.priority),
                });
            }
        }
        let mut parked = HashSet::new();
        let mut next: Option<Duration> = None;
        for (agent, mut claimed) in by_agent {
            let limit = ctx.agents.limit(&agent).copied().unwrap_or_default();
            claimed.sort_by_key(|c| std::cmp::Reverse(c.priority));
            for (id, after) in db::limits::admit(pool, &agent, &limit, &claimed).await? {
                parked.insert(id);
                if let Some(after) = after {
                    next = Some(next.map_or(after, |n| n.min(after)));
                }
            }
        }
        if !parked.is_empty() {
            tracing::debug!(parked = parked.len(), "claimed items parked by agent limits");
            items.retain(|i| !parked.contains(&i.id));
        }
        Ok(next)
    }
}

/// Lets items waiting for a slot run as slots free, for every limited agent with a slot
/// limit or a circuit; `nudge` is told by the completers, `claim` wakes the dispatcher.
pub async fn waker(pool: PgPool, agents: Agents, nudge: Arc<Notify>, claim: Arc<Notify>, stop: CancellationToken) {
    let slotted: Vec<(String, Option<u32>)> = agents
        .limited()
        .filter(|(_, l)| l.max_in_flight.is_some() || l.circuit.is_some())
        .map(|(name, l)| (name.clone(), l.max_in_flight))
        .collect();
    if slotted.is_empty() {
        // Nothing to wake: wait for shutdown (an engine task that ends early is a failure).
        stop.cancelled().await;
        return;
    }
    loop {
        let mut woke = 0;
        for (agent, max) in &slotted {
            match db::limits::wake(&pool, agent, *max).await {
                Ok(n) => woke += n,
                Err(e) => crate::telemetry::warn_limited("limits_wake", "waking items waiting for an agent failed", &e),
            }
        }
        if woke > 0 {
            claim.notify_one();
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = nudge.notified() => {}
            _ = tokio::time::sleep(WAKE_EVERY) => {}
        }
    }
}
