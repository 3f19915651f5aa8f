//! The notifier: delivers the notifications outbox that the SLA sweeper writes. It runs on
//! every replica (no leader): each round claims a batch of due notifications
//! (`db::notifications::claim`: SKIP LOCKED, a lease, the attempt counted, connectors paced),
//! delivers them concurrently (at most `notifier.concurrency` at once) through their
//! connectors' channels, and records each outcome:
//!
//! - delivered → `DELIVERED`;
//! - retryable (connection errors, timeouts, 408, 429, 5xx, SMTP 4xx) → due again after the
//!   backoff (exponential from `backoff_base`, capped at `backoff_max`, 50–100% jitter) or
//!   after the receiver's Retry-After (Telegram's `retry_after`; clamped to `backoff_max`), on
//!   the database clock; a paced connector (Slack, Telegram) answering with one is held that
//!   long as a whole;
//! - permanent (other 4xx, Slack's codes of a dead webhook, SMTP 5xx, an invalid connector
//!   config), or retryable after `max_attempts` deliveries → `FAILED`.
//!
//! `last_error` says which connector and what happened, never a secret of its config (the
//! channels scrub their errors). PagerDuty's acknowledge and resolve of an incident are
//! notifications like the others, with the same retries; the claim holds them back until the
//! incident's trigger is delivered. With `admin.public_url` set, messages link to the
//! escalation's page. A delivery never runs past its claim's lease: a claim
//! whose turn comes too late is handed back uncounted. A notifier killed mid-delivery leaves
//! its claims to any notifier once their lease has passed, under the same id (the
//! webhook-id and Message-ID receivers de-duplicate on); stopping [`Notifier::run`] does the
//! same with what is in flight.

use crate::config::NotifierSettings;
use crate::db::notifications::{self, Claimed};
use crate::model::Backoff;
use crate::sla::channels::{Channels, Delivery, PACING, truncate};
use sqlx::PgPool;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Characters of `last_error` kept.
const MAX_ERROR_CHARS: usize = 2_000;

/// Delivers the notifications outbox. Cheap to clone (the pool and the HTTP clients are
/// shared).
#[derive(Clone)]
pub struct Notifier {
    pub pool: PgPool,
    pub settings: NotifierSettings,
    channels: Arc<Channels>,
    /// This process's counters (`orderly_notifications_total`), when it runs in a daemon.
    metrics: Option<Arc<crate::metrics::Metrics>>,
    /// On a Citus cluster the claim goes tenant by tenant (db::distributed::notifications).
    topology: crate::db::distributed::Topology,
}

/// What one round did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryReport {
    pub claimed: usize,
    pub delivered: usize,
    /// Due again later.
    pub retried: usize,
    pub failed: usize,
    /// Handed back uncounted: the claim's lease would have ended before the delivery.
    pub released: usize,
    /// The outcome could not be written (the database); the lease hands it to a later round.
    pub unrecorded: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Recorded {
    Delivered,
    Retried,
    Failed,
    Released,
    Unrecorded,
}

impl DeliveryReport {
    fn add(&mut self, recorded: Recorded) {
        match recorded {
            Recorded::Delivered => self.delivered += 1,
            Recorded::Retried => self.retried += 1,
            Recorded::Failed => self.failed += 1,
            Recorded::Released => self.released += 1,
            Recorded::Unrecorded => self.unrecorded += 1,
        }
    }
}

impl Notifier {
    /// A notifier on `pool`. Fails only if the HTTP clients cannot be built (no TLS roots).
    pub fn new(pool: PgPool, settings: NotifierSettings) -> Result<Notifier, reqwest::Error> {
        let channels = Channels::new(settings.public_url.clone())?;
        let topology = crate::db::distributed::Topology::Single;
        Ok(Notifier { pool, settings, channels: Arc::new(channels), metrics: None, topology })
    }

    /// Counts every recorded outcome in `metrics` (by connector type and outcome).
    pub fn with_metrics(self, metrics: Arc<crate::metrics::Metrics>) -> Notifier {
        Notifier { metrics: Some(metrics), ..self }
    }

    /// Claims as `topology` needs (tenant by tenant on a Citus cluster).
    pub fn on(self, topology: crate::db::distributed::Topology) -> Notifier {
        Notifier { topology, ..self }
    }

    /// Rounds until `stop`: at once again after a round that claimed something, else after
    /// `poll_interval` (80–120%). A failed claim (the database) is logged and waited out the
    /// same way. Deliveries in flight at `stop` are dropped; their leases hand them on.
    pub async fn run(self, stop: CancellationToken) {
        loop {
            let round = tokio::select! {
                biased;
                _ = stop.cancelled() => return,
                round = self.run_once() => round,
            };
            let idle = match round {
                Ok(report) => report.claimed == 0,
                Err(e) => {
                    tracing::warn!(error = %e, "notifier: claiming notifications failed; trying again");
                    true
                }
            };
            if idle {
                let pause = self.settings.poll_interval.mul_f64(0.8 + 0.4 * fastrand::f64());
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(pause) => {}
                }
            }
        }
    }

    /// One round: claim a batch, deliver it, record every outcome. Errors only when the
    /// claim fails; a failed write of one outcome is counted in `unrecorded`.
    pub async fn run_once(&self) -> Result<DeliveryReport, sqlx::Error> {
        let lease = self.settings.lease;
        // Measured from before the claim, so never later than the lease in the database.
        let deadline = Instant::now() + lease - lease / 10;
        let claimed = match self.topology {
            crate::db::distributed::Topology::Single => {
                notifications::claim(&self.pool, self.settings.batch, lease, &PACING).await?
            }
            crate::db::distributed::Topology::Distributed => {
                crate::db::distributed::notifications::claim(&self.pool, self.settings.batch, lease, &PACING).await?
            }
        };
        let mut report = DeliveryReport { claimed: claimed.len(), ..DeliveryReport::default() };
        if claimed.is_empty() {
            return Ok(report);
        }
        let slots = Arc::new(Semaphore::new(self.settings.concurrency));
        let mut deliveries = JoinSet::new();
        for notification in claimed {
            let this = self.clone();
            let slots = slots.clone();
            deliveries.spawn(async move {
                let _slot = slots.acquire_owned().await.expect("the semaphore is never closed");
                this.deliver(notification, deadline).await
            });
        }
        while let Some(done) = deliveries.join_next().await {
            match done {
                Ok(recorded) => report.add(recorded),
                Err(e) => {
                    tracing::error!(error = %e, "notifier: a delivery panicked; its lease hands it on");
                    report.unrecorded += 1;
                }
            }
        }
        Ok(report)
    }

    async fn deliver(&self, notification: Claimed, deadline: Instant) -> Recorded {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining < (self.settings.lease / 4).min(Duration::from_secs(1)) {
            return match notifications::release(
                &self.pool,
                (notification.id, notification.tenant),
                notification.attempts,
            )
            .await
            {
                Ok(_) => Recorded::Released,
                Err(e) => {
                    tracing::warn!(notification = %notification.id, error = %e, "notifier: cannot hand back a claim");
                    Recorded::Unrecorded
                }
            };
        }
        let delivery = match tokio::time::timeout(remaining, self.channels.deliver(&notification, remaining)).await {
            Ok(delivery) => delivery,
            Err(_) => Delivery::retry(format!("delivery timed out after {}", humantime::format_duration(remaining))),
        };
        match self.record(&notification, delivery).await {
            Ok(recorded) => {
                if let Some(metrics) = &self.metrics {
                    let outcome = match recorded {
                        Recorded::Delivered => "delivered",
                        Recorded::Retried => "retried",
                        Recorded::Failed => "failed",
                        Recorded::Released => "released",
                        Recorded::Unrecorded => "unrecorded",
                    };
                    metrics.notification(&notification.connector_type, outcome);
                }
                recorded
            }
            Err(e) => {
                tracing::warn!(notification = %notification.id, error = %e,
                    "notifier: cannot record a delivery's outcome; its lease hands it on");
                Recorded::Unrecorded
            }
        }
    }

    async fn record(&self, n: &Claimed, delivery: Delivery) -> Result<Recorded, sqlx::Error> {
        let settings = &self.settings;
        let describe = |error: &str| {
            truncate(&format!("{} connector \"{}\": {error}", n.connector_type, n.connector_name), MAX_ERROR_CHARS)
        };
        match delivery {
            Delivery::Delivered => {
                notifications::mark_delivered(&self.pool, n.id, n.tenant).await?;
                tracing::info!(notification = %n.id, connector = %n.connector_name, kind = %n.kind,
                    attempts = n.attempts, "notification delivered");
                Ok(Recorded::Delivered)
            }
            Delivery::Retryable { error, .. } if n.attempts >= settings.max_attempts => {
                let error = describe(&format!("gave up after {} attempts: {error}", n.attempts));
                notifications::mark_failed(&self.pool, (n.id, n.tenant), n.attempts, &error).await?;
                tracing::warn!(notification = %n.id, connector = %n.connector_name, error = %error, "notification failed");
                Ok(Recorded::Failed)
            }
            Delivery::Retryable { error, retry_after } => {
                let backoff = Backoff { base: settings.backoff_base, max: settings.backoff_max };
                let delay = backoff.honour(n.attempts, retry_after, fastrand::f64());
                let error = describe(&error);
                notifications::schedule_retry(&self.pool, (n.id, n.tenant), n.attempts, delay, &error).await?;
                if retry_after.is_some() && PACING.iter().any(|(kind, _)| *kind == n.connector_type) {
                    notifications::defer_connector(&self.pool, n.connector_id, delay).await?;
                }
                tracing::warn!(notification = %n.id, connector = %n.connector_name, attempts = n.attempts,
                    retry_in = %humantime::format_duration(Duration::from_millis(delay.as_millis() as u64)), error = %error, "notification will be retried");
                Ok(Recorded::Retried)
            }
            Delivery::Permanent { error } => {
                let error = describe(&error);
                notifications::mark_failed(&self.pool, (n.id, n.tenant), n.attempts, &error).await?;
                tracing::warn!(notification = %n.id, connector = %n.connector_name, error = %error, "notification failed");
                Ok(Recorded::Failed)
            }
        }
    }
}
