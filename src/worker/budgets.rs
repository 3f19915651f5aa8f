//! The budget gate between the claim and the runners: while any budget exists, the claimed
//! items of a scope whose budget is exhausted are parked (`db::budgets::park`) instead of
//! run. Read at every claim, after this process's finished results are written, so replicas
//! overshoot a budget by at most what was running when it ran out (docs/costs.md).

use super::InFlight;
use crate::db;
use crate::db::claim::ClaimedItem;
use sqlx::PgPool;
use std::collections::HashSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long "no budget exists" is believed before it is read again: a budget made within it
/// is first checked this much later.
const RECHECK: Duration = Duration::from_secs(1);

/// Longest the gate waits for this process's finished results to be written.
const WRITTEN_WAIT: Duration = Duration::from_secs(2);

#[derive(Default)]
pub struct BudgetGate {
    /// When budgets' existence was last read, and what it said.
    known: Mutex<Option<(Instant, bool)>>,
}

impl BudgetGate {
    async fn active(&self, pool: &PgPool) -> Result<bool, sqlx::Error> {
        if let Some((at, any)) = *self.known.lock().expect("budget gate")
            && at.elapsed() < RECHECK
        {
            return Ok(any);
        }
        let any = db::budgets::any(pool).await?;
        *self.known.lock().expect("budget gate") = Some((Instant::now(), any));
        Ok(any)
    }

    /// Keeps the claimed items that may run; the others are parked. Nothing is read when no budget
    /// exists (one cached look a second), one statement when none is exhausted.
    pub async fn admit(
        &self,
        pool: &PgPool,
        in_flight: &InFlight,
        items: &mut Vec<ClaimedItem>,
    ) -> Result<(), sqlx::Error> {
        if !self.active(pool).await? {
            return Ok(());
        }
        // The spend of what this process has finished is read once it is written, so that
        // what overshoots a budget is only what was running (across replicas).
        if !in_flight.written(WRITTEN_WAIT).await {
            tracing::debug!("results still unwritten after {WRITTEN_WAIT:?}; reading budgets without them");
        }
        let distinct = |keys: Vec<uuid::Uuid>| keys.into_iter().collect::<HashSet<_>>().into_iter().collect::<Vec<_>>();
        let tenants = distinct(items.iter().map(|i| i.tenant_id).collect());
        let orders = distinct(items.iter().map(|i| i.work_order_id).collect());
        let workflows: Vec<&str> =
            items.iter().map(|i| i.workflow_id.as_str()).collect::<HashSet<_>>().into_iter().collect();
        let exhausted = db::budgets::exhausted(pool, &tenants, &workflows, &orders).await?;
        if exhausted.is_empty() {
            return Ok(());
        }
        let parks: Vec<_> = items
            .iter()
            .filter_map(|i| {
                let budget = exhausted.iter().find(|b| b.covers(i.tenant_id, &i.workflow_id, i.work_order_id))?;
                Some((i.id, i.attempt, budget.id, budget.hold))
            })
            .collect();
        if parks.is_empty() {
            return Ok(());
        }
        let parked: HashSet<uuid::Uuid> = db::budgets::park(pool, &parks).await?.into_iter().collect();
        if !parked.is_empty() {
            tracing::debug!(parked = parked.len(), "claimed items parked by exhausted budgets");
        }
        items.retain(|i| !parked.contains(&i.id));
        Ok(())
    }
}
