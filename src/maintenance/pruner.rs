//! The pruner (leader only): deletes finished work orders past `pruner.retention`, with
//! everything they own, in batches. Off unless a retention is configured.

use crate::config::Settings;
use crate::db;
use sqlx::PgPool;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Default, Clone, PartialEq)]
pub struct PruneReport {
    pub orders: usize,
    pub items: usize,
}

pub struct Pruner {
    pub pool: PgPool,
    pub settings: Arc<Settings>,
    /// One PostgreSQL or a Citus cluster (`db::distributed`): a cluster is pruned tenant by tenant.
    pub topology: db::distributed::Topology,
}

impl Pruner {
    pub async fn run(self, leadership: crate::leadership::Leadership, stop: CancellationToken) {
        if self.settings.pruner.retention.is_none() {
            // Off: idle until the engine stops (an engine task that ends early is a failure).
            return stop.cancelled().await;
        }
        super::every_interval_while_leading(self.settings.pruner.interval, leadership, stop, || async {
            match self.run_once().await {
                Ok(report) if report != PruneReport::default() => {
                    tracing::info!(orders = report.orders, items = report.items, "pruned finished work orders");
                }
                Ok(_) => {}
                Err(e) => crate::telemetry::warn_limited("prune", "pruning failed", &e),
            }
        })
        .await
    }

    /// One sweep: deletes every order past retention, a batch per transaction. Does nothing
    /// when pruning is off.
    pub async fn run_once(&self) -> Result<PruneReport, sqlx::Error> {
        let mut report = PruneReport::default();
        let Some(retention) = self.settings.pruner.retention else {
            return Ok(report);
        };
        let limit = self.settings.pruner.batch;
        if self.topology == db::distributed::Topology::Distributed {
            let retention_ms = retention.as_millis() as f64;
            // Every tenant with an order past retention, each until a short batch (as below).
            for tenant in db::distributed::prune::tenants(&self.pool, retention_ms).await? {
                loop {
                    let batch = db::distributed::prune::prune_tenant(&self.pool, tenant, retention_ms, limit).await?;
                    report.orders += batch.orders.len();
                    report.items += batch.items;
                    if (batch.candidates as i64) < limit || batch.orders.is_empty() {
                        break;
                    }
                }
            }
            return Ok(report);
        }
        loop {
            let batch = db::maintenance::prune_finished(&self.pool, retention, limit).await?;
            report.orders += batch.orders.len();
            report.items += batch.items;
            // A short batch was the last; a batch that deleted nothing (every candidate
            // changed under it) is left for the next sweep.
            if (batch.candidates as i64) < self.settings.pruner.batch || batch.orders.is_empty() {
                return Ok(report);
            }
        }
    }
}
