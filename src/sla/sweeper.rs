//! The SLA sweeper (leader only). Each sweep, for every active rule: resolve the escalations
//! whose clock stopped, notifying whoever was told (a PagerDuty connector gets its incidents'
//! resolve instead, once a whole incident is resolved), then fire the levels whose threshold
//! has passed (once per subject, rule and level: the unique key decides, whichever replica
//! gets there first) and queue one grouped notification per connector, in one transaction.
//! Resolving comes first so that the transaction locks escalations before incidents, as an
//! operator's acknowledge does. A rule with a problem is reported (at a bounded rate) and
//! skipped, never fatal.
//!
//! On a Citus cluster (docs/distributed.md) a rule is swept tenant by tenant: the tenants
//! with something for its clock are read across the shards, then each tenant's resolving,
//! firing and notifications run on that tenant's node, in transactions of their own. A
//! tenant's escalations are grouped into messages of that tenant.

use super::rules::{self, Problem};
use crate::config::Settings;
use crate::db::{self, sla::Recipient, sla::Rule};
use crate::sla::channels::INCIDENT_TYPES;
use sqlx::PgPool;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Per connector: the resolved escalations, and their (item, order) pairs, each once.
type ResolvedGroup = (Vec<Uuid>, Vec<(Uuid, Uuid)>);

/// What one sweep did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct SweepReport {
    pub fired: usize,
    pub resolved: usize,
    pub notifications: usize,
    pub problems: Vec<Problem>,
}

pub struct Sweeper {
    pub pool: PgPool,
    pub settings: Arc<Settings>,
    /// Escalations fired and resolved by this replica's sweeps are counted here.
    pub metrics: Arc<crate::metrics::Metrics>,
    pub topology: db::distributed::Topology,
}

impl Sweeper {
    pub async fn run(self, leadership: crate::leadership::Leadership, stop: CancellationToken) {
        crate::periodic::every_interval_while_leading(self.settings.sla.sweep_interval, leadership, stop, || async {
            match self.run_once().await {
                Ok(report) => {
                    crate::metrics::Metrics::add(&self.metrics.escalations_fired, report.fired as u64);
                    crate::metrics::Metrics::add(&self.metrics.escalations_resolved, report.resolved as u64);
                    if report.fired + report.resolved > 0 {
                        tracing::info!(
                            fired = report.fired,
                            resolved = report.resolved,
                            notifications = report.notifications,
                            "SLA sweep"
                        );
                    }
                    for problem in report.problems.iter().filter(|p| p.blocking) {
                        crate::telemetry::warn_limited(
                            "sla_rule",
                            "SLA rule skipped",
                            &format!("{}: {}", problem.rule, problem.message),
                        );
                    }
                }
                Err(e) => crate::telemetry::warn_limited("sla", "SLA sweep failed", &e),
            }
        })
        .await
    }

    /// One sweep over every active rule.
    pub async fn run_once(&self) -> Result<SweepReport, sqlx::Error> {
        let mut report = SweepReport::default();
        let rules = db::sla::rules(&self.pool, true).await?;
        let names: Vec<String> =
            rules.iter().flat_map(|r| r.levels.iter().flat_map(|l| l.connectors.iter().cloned())).collect();
        let connectors: HashMap<String, Recipient> = db::sla::connectors_named(&self.pool, &names)
            .await?
            .into_iter()
            .map(|(connector, name, kind)| {
                (name, Recipient { connector, incident: INCIDENT_TYPES.contains(&kind.as_str()), tenant: None })
            })
            .collect();
        let active: BTreeSet<String> = connectors.keys().cloned().collect();
        for rule in &rules {
            let problems = rules::check(rule, &active);
            let blocked = problems.iter().any(|p| p.blocking);
            report.problems.extend(problems);
            if blocked {
                continue;
            }
            match self.topology {
                db::distributed::Topology::Single => self.sweep_rule(rule, &connectors, &mut report, None).await?,
                db::distributed::Topology::Distributed => {
                    for tenant in db::sla::tenants_to_sweep(&self.pool, rule).await? {
                        self.sweep_rule(rule, &connectors, &mut report, Some(tenant)).await?;
                    }
                }
            }
        }
        Ok(report)
    }

    async fn sweep_rule(
        &self,
        rule: &Rule,
        connectors: &HashMap<String, Recipient>,
        report: &mut SweepReport,
        tenant: Option<Uuid>,
    ) -> Result<(), sqlx::Error> {
        let mut first = true;
        loop {
            let mut tx = self.pool.begin().await?;
            if first {
                // The resolved notice goes to every connector of a level that fired for them;
                // an incident (PagerDuty) hears once all of its escalations are resolved.
                let resolved = db::sla::resolve_stopped(&mut tx, rule, tenant).await?;
                let mut by_connector: BTreeMap<Uuid, ResolvedGroup> = BTreeMap::new();
                for r in &resolved {
                    let Some(level) = rule.levels.iter().find(|l| l.level == r.level) else { continue };
                    for name in &level.connectors {
                        if let Some(recipient) = connectors.get(name).filter(|c| !c.incident) {
                            let entry = by_connector.entry(recipient.connector).or_default();
                            if !entry.1.contains(&(r.work_item_id, r.work_order_id)) {
                                entry.1.push((r.work_item_id, r.work_order_id));
                            }
                            entry.0.push(r.id);
                        }
                    }
                }
                for (connector, (ids, items)) in &by_connector {
                    let payload = rules::resolved_payload(rule, items);
                    let recipient = Recipient { connector: *connector, incident: false, tenant };
                    db::sla::enqueue_notification(&mut tx, recipient, rule.id, None, "RESOLVED", ids, &payload).await?;
                    report.notifications += 1;
                }
                let ids: Vec<Uuid> = resolved.iter().map(|r| r.id).collect();
                report.notifications += db::sla::incident_events(&mut tx, &ids, tenant).await? as usize;
                report.resolved += resolved.len();
                first = false;
            }
            let fired = db::sla::fire(&mut tx, rule, self.settings.sla.batch, tenant).await?;
            // Per level: its escalations, to each of its connectors, as one message.
            let mut by_level: BTreeMap<i32, Vec<&db::sla::Fired>> = BTreeMap::new();
            for f in &fired {
                by_level.entry(f.level).or_default().push(f);
            }
            for (level_no, group) in &by_level {
                let Some(level) = rule.levels.iter().find(|l| l.level == *level_no) else { continue };
                let payload = rules::fired_payload(rule, level, group);
                let ids: Vec<Uuid> = group.iter().map(|f| f.id).collect();
                // One line per rule and level fired: the journal tells the story at 3 a.m.
                let sample: Vec<String> = group.iter().take(5).map(|f| f.work_item_id.to_string()).collect();
                tracing::warn!(rule = %rule.name, level = *level_no, escalations = group.len(),
                    work_item.ids = %sample.join(","), connectors = %level.connectors.join(","),
                    "SLA escalation fired");
                for name in &level.connectors {
                    if let Some(recipient) = connectors.get(name) {
                        db::sla::enqueue_notification(
                            &mut tx,
                            Recipient { tenant, ..*recipient },
                            rule.id,
                            Some(*level_no),
                            "FIRED",
                            &ids,
                            &payload,
                        )
                        .await?;
                        report.notifications += 1;
                    }
                }
            }
            report.fired += fired.len();
            tx.commit().await?;
            if (fired.len() as i64) < self.settings.sla.batch {
                return Ok(());
            }
        }
    }
}
