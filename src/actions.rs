//! What an operator can do to the queue beyond what `db` does in one statement, shared by
//! every surface (the CLI, the JSON API and the web page of the admin server): decisions
//! that apply the same rules as the engine (`rules`), replays whose new content is checked
//! as the item's step would check it, bulk actions, and why an item waits.

use crate::config::Settings;
use crate::db;
use crate::db::OpsError;
use crate::model::ItemStatus;
use crate::policy::catalog::{Catalog, ContentFormat, RouteError};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::json;
use sqlx::PgPool;
use std::collections::BTreeMap;
use uuid::Uuid;

mod approvals;
pub mod budgets;
pub mod schedules;

pub use approvals::decide_held;

/// What a replay did.
#[derive(Debug, Clone, Serialize)]
pub struct Replayed {
    pub dead_letter_id: Uuid,
    pub work_item_id: Uuid,
    pub content_replaced: bool,
    /// Something that will make the item fail again, said before it does (no route).
    pub warning: Option<String>,
}

/// Replays a dead letter (see `db::dead_letters::replay`). New content is checked first as
/// the item's step would check it (`rules::content`: within `limits.max_content_bytes`, not
/// empty, JSON unless the step takes text): content the item would fail on at once is
/// refused with `OpsError::Invalid` and the runner's error code, and nothing is written.
/// When the item has no usable route the replay goes ahead (the route may be fixed in the
/// configuration of the daemons) with a warning, and the content is checked as JSON, the
/// default.
pub async fn replay_dead_letter(
    pool: &PgPool,
    catalog: &Catalog,
    settings: &Settings,
    id: Uuid,
    content: Option<&str>,
    actor: &str,
) -> Result<Replayed, OpsError> {
    let target = db::dead_letters::replay_target(pool, id).await?;
    let (format, warning) = match catalog.resolve(&target.workflow_id, &target.item_type).await {
        Ok(step) => (step.content, None),
        Err(e @ RouteError::Invalid { .. }) => {
            (ContentFormat::Json, Some(format!("{e}; the item fails again with {} until that is fixed", e.code())))
        }
        Err(e @ RouteError::Unavailable { .. }) => return Err(OpsError::Unavailable(e.to_string())),
    };
    if let Some(text) = content {
        check_content(text, format, settings.limits.max_content_bytes)?;
    }
    let work_item_id = db::dead_letters::replay(pool, id, content, actor).await?;
    Ok(Replayed { dead_letter_id: id, work_item_id, content_replaced: content.is_some(), warning })
}

/// Content for an item whose step takes `format`, refused as `OpsError::Invalid` with the
/// error code the runner would record.
pub fn check_content(text: &str, format: ContentFormat, limit: usize) -> Result<(), OpsError> {
    crate::policy::content::parse(text, format, limit)
        .map(|_| ())
        .map_err(|e| OpsError::Invalid { code: e.code.as_str(), message: format!("content refused: {}", e.message) })
}

/// Most dead letters one bulk action works through; more take another request.
pub const BULK_MAX: i64 = 1000;

/// A bulk action on the open dead letters a filter takes.
#[derive(Debug, Clone)]
pub enum Bulk {
    Replay,
    Discard { reason: String },
}

/// What a bulk action did: the filter was run again by the server when the action started.
#[derive(Debug, Clone, Serialize)]
pub struct BulkReport {
    pub action: &'static str,
    /// Open letters the filter took when the action started.
    pub matched: i64,
    /// The most this action would take: the request's limit, capped at [`BULK_MAX`].
    pub limit: i64,
    /// Letters replayed or discarded, oldest first.
    pub done: Vec<Uuid>,
    /// Letters that could not be (another operator got there first, say), with why.
    pub failed: Vec<BulkFailure>,
    /// Open letters the filter still takes afterwards.
    pub left: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct BulkFailure {
    pub id: Uuid,
    pub error: String,
}

/// Replays or discards the open letters `filter` takes, oldest first, at most `limit`
/// (capped at [`BULK_MAX`]), each in its own transaction and audited as one would be, then
/// one audit row for the whole (`dead_letter.bulk_replay` / `dead_letter.bulk_discard`).
pub async fn bulk_dead_letters(
    pool: &PgPool,
    filter: &db::dead_letters::Filter,
    limit: Option<i64>,
    action: &Bulk,
    actor: &str,
) -> Result<BulkReport, OpsError> {
    if let Bulk::Discard { reason } = action {
        required_reason(Some(reason))?;
    }
    let limit = limit.unwrap_or(BULK_MAX).clamp(0, BULK_MAX);
    let open = db::dead_letters::Filter { open: Some(true), ..filter.clone() };
    let matched = db::dead_letters::count_filtered(pool, &open).await?;
    let ids = db::dead_letters::open_ids(pool, &open, limit).await?;
    let mut done = Vec::new();
    let mut failed = Vec::new();
    for id in ids {
        let result = match action {
            Bulk::Replay => db::dead_letters::replay(pool, id, None, actor).await,
            Bulk::Discard { reason } => db::dead_letters::discard(pool, id, actor, Some(reason)).await,
        };
        match result {
            Ok(_) => done.push(id),
            Err(e @ (OpsError::Conflict(_) | OpsError::NotFound { .. })) => {
                failed.push(BulkFailure { id, error: e.to_string() })
            }
            Err(e) => return Err(e),
        }
    }
    let left = db::dead_letters::count_filtered(pool, &open).await?;
    let name = match action {
        Bulk::Replay => "replay",
        Bulk::Discard { .. } => "discard",
    };
    let report = BulkReport { action: name, matched, limit, done, failed, left };
    db::dead_letters::audit_bulk(
        pool,
        actor,
        &format!("dead_letter.bulk_{name}"),
        json!({
            "filter": filter,
            "limit": limit,
            "matched": report.matched,
            "done": report.done.len(),
            "failed": report.failed.len(),
            "left": report.left,
            "reason": match action { Bulk::Discard { reason } => Some(reason.as_str()), Bulk::Replay => None },
        }),
    )
    .await?;
    Ok(report)
}

/// The refusal of an action that needs a reason.
pub fn reason_required() -> OpsError {
    OpsError::Invalid { code: "REASON_REQUIRED", message: "a reason is required".to_owned() }
}

/// Longest reason an operator may give (characters): it is shown on pages and in audit rows.
pub const MAX_REASON_CHARS: usize = 2_000;

/// An operator's reason as every surface takes it: trimmed, empty as none, refused when
/// longer than [`MAX_REASON_CHARS`] or holding a control character other than a line break
/// (`REASON_INVALID`).
pub fn reason(text: Option<&str>) -> Result<Option<&str>, OpsError> {
    let Some(text) = text.map(str::trim).filter(|t| !t.is_empty()) else { return Ok(None) };
    if text.chars().count() > MAX_REASON_CHARS {
        return Err(OpsError::Invalid {
            code: "REASON_INVALID",
            message: format!("a reason is at most {MAX_REASON_CHARS} characters"),
        });
    }
    if text.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        return Err(OpsError::Invalid {
            code: "REASON_INVALID",
            message: "a reason cannot hold control characters".to_owned(),
        });
    }
    Ok(Some(text))
}

/// Cancels an item or every unfinished item of an order (see `db::items::cancel`), with the
/// reason checked as every surface checks it.
pub async fn cancel(
    pool: &PgPool,
    target: db::items::Target,
    actor: &str,
    reason: Option<&str>,
) -> Result<Vec<db::items::Cancelled>, OpsError> {
    let reason = self::reason(reason)?;
    db::items::cancel(pool, target, actor, reason).await
}

/// Discards an open dead letter: a reason is required, on every surface. Returns its item.
pub async fn discard_dead_letter(pool: &PgPool, id: Uuid, actor: &str, reason: Option<&str>) -> Result<Uuid, OpsError> {
    let reason = required_reason(reason)?;
    db::dead_letters::discard(pool, id, actor, Some(reason)).await
}

/// Acknowledges or resolves an escalation, with the reason checked.
pub async fn act_on_escalation(
    pool: &PgPool,
    id: Uuid,
    action: db::sla::Action,
    actor: &str,
    reason: Option<&str>,
) -> Result<(), OpsError> {
    let reason = self::reason(reason)?;
    db::sla::act(pool, id, action, actor, reason).await
}

/// [`reason`], for an action that needs one (`REASON_REQUIRED` without).
pub fn required_reason(text: Option<&str>) -> Result<&str, OpsError> {
    reason(text)?.ok_or_else(reason_required)
}

/// Why an item is where it is, for an operator: a short `kind`, a sentence, and the times
/// that matter.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct WaitingReason {
    /// `runnable` (waiting for a free worker), `scheduled` (a future run_at it was given),
    /// `backoff` (a retry's delay), `never` (run_at is 'infinity'), `no_route` (the catalog
    /// cannot route it: it will fail when claimed), `claimed` (running), `lease_expired`
    /// (its worker vanished; the rescuer takes it back), `held` (for approval), `budget` (an
    /// exhausted spending budget stops it, waiting or held), `agent_limit` (its agent's or
    /// template step's in-flight limit or rate, its agent's pause or open circuit),
    /// `tenant_limit` (its tenant's `max_in_flight`), `finished`.
    pub kind: &'static str,
    pub detail: String,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    pub worker: Option<String>,
}

/// An item with every record about it and why it waits.
#[derive(Debug, Clone, Serialize)]
pub struct ItemView {
    #[serde(flatten)]
    pub detail: db::items::ItemDetail,
    pub waiting_reason: WaitingReason,
    /// The agent the catalog routes it to now, or why it cannot.
    pub route: RouteView,
}

/// Where the catalog routes an item now: its agent and content format, or why it cannot.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RouteView {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Reads an item and explains its state (see [`WaitingReason`]).
pub async fn item_view(pool: &PgPool, catalog: &Catalog, id: Uuid) -> Result<ItemView, OpsError> {
    let detail = db::items::get(pool, id).await?;
    let route = catalog.resolve(&detail.item.workflow_id, &detail.item.item_type).await;
    let waiting_reason = waiting_reason(&detail.item, &detail.dependencies, route.as_ref().err());
    let route = match route {
        Ok(step) => RouteView {
            agent: Some(step.agent.clone()),
            content: Some(format!("{:?}", step.content).to_lowercase()),
            ..RouteView::default()
        },
        Err(e) => RouteView { error_code: Some(e.code().as_str()), error: Some(e.to_string()), ..RouteView::default() },
    };
    Ok(ItemView { detail, waiting_reason, route })
}

/// The pure part of [`item_view`]: the item's row (times on the database clock), its
/// dependencies and, when the catalog could not route it, why.
pub fn waiting_reason(
    item: &db::items::ItemRow,
    edges: &db::dependencies::Edges,
    route_error: Option<&RouteError>,
) -> WaitingReason {
    let at = |t: DateTime<Utc>| t.format("%Y-%m-%d %H:%M:%S UTC").to_string();
    let ago = |t: DateTime<Utc>| humantime::format_duration(secs(item.now - t)).to_string();
    let reason = |kind, detail: String| WaitingReason { kind, detail, since: None, until: None, worker: None };
    match item.status {
        ItemStatus::Queued | ItemStatus::AwaitingApproval if item.budget_wait.is_some() => {
            let detail = item.budget_wait.clone().unwrap_or_default();
            let until = item.run_at.filter(|r| item.status == ItemStatus::Queued && *r > item.now);
            WaitingReason { until, ..reason("budget", detail) }
        }
        ItemStatus::Queued if item.agent_wait.is_some() => {
            let detail = item.agent_wait.clone().unwrap_or_default();
            let kind = if item.tenant_wait { "tenant_limit" } else { "agent_limit" };
            WaitingReason { until: item.run_at.filter(|r| *r > item.now), ..reason(kind, detail) }
        }
        ItemStatus::Queued => {
            if item.run_at_infinite {
                return reason(
                    "never",
                    "run_at is 'infinity': the item will never become runnable (cancel it, or set run_at)".to_owned(),
                );
            }
            if let Some(detail) = db::dependencies::waiting_reason(item.status, edges) {
                let kind = if detail.starts_with("blocked") { "blocked" } else { "dependencies" };
                return reason(kind, detail);
            }
            if let Some(RouteError::Invalid { code, message }) = route_error {
                return reason("no_route", format!("{message}; it fails with {code} when it is claimed"));
            }
            let run_at = item.run_at.unwrap_or(item.now);
            if run_at > item.now {
                let retried = item.attempt > 0;
                let detail = if retried {
                    format!(
                        "waiting out the backoff of attempt {} ({}) until {}",
                        item.attempt,
                        item.last_error_code.as_deref().unwrap_or("released"),
                        at(run_at)
                    )
                } else {
                    format!("scheduled: run_at is {}", at(run_at))
                };
                return WaitingReason {
                    until: Some(run_at),
                    ..reason(if retried { "backoff" } else { "scheduled" }, detail)
                };
            }
            WaitingReason {
                since: Some(run_at),
                ..reason(
                    "runnable",
                    format!("runnable since {} ({} ago); waiting for a free worker", at(run_at), ago(run_at)),
                )
            }
        }
        ItemStatus::Processing => {
            let worker = item.locked_by.clone().unwrap_or_else(|| "?".to_owned());
            let lease = item.lease_expires_at;
            let (kind, detail) = match lease {
                Some(l) if l < item.now => (
                    "lease_expired",
                    format!(
                        "claimed by {worker} (attempt {}), whose lease expired at {}: the leader's rescuer takes it back",
                        item.attempt,
                        at(l)
                    ),
                ),
                _ => (
                    "claimed",
                    format!(
                        "claimed by {worker} (attempt {}){}, lease until {}",
                        item.attempt,
                        item.claimed_at.map(|c| format!(" at {}", at(c))).unwrap_or_default(),
                        lease.map(at).unwrap_or_else(|| "?".to_owned())
                    ),
                ),
            };
            WaitingReason { kind, detail, since: item.claimed_at, until: lease, worker: Some(worker) }
        }
        ItemStatus::AwaitingApproval => {
            let since = item.held_since.or(item.processed_at);
            WaitingReason {
                since,
                ..reason(
                    "held",
                    format!(
                        "held for approval{} (attempt {}): approve or reject it",
                        since.map(|s| format!(" since {} ({} ago)", at(s), ago(s))).unwrap_or_default(),
                        item.attempt
                    ),
                )
            }
        }
        ItemStatus::Completed | ItemStatus::Failed | ItemStatus::Cancelled => WaitingReason {
            since: item.processed_at,
            ..reason(
                "finished",
                format!(
                    "{}{}{}",
                    item.status,
                    item.processed_at.map(|t| format!(" at {}", at(t))).unwrap_or_default(),
                    item.last_error_code.as_deref().map(|c| format!(" ({c})")).unwrap_or_default()
                ),
            )
        },
    }
}

fn secs(d: chrono::TimeDelta) -> std::time::Duration {
    std::time::Duration::from_secs(d.num_seconds().max(0) as u64)
}

/// The queue at a glance: `orderly status`, the API's status route and the page's overview.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Overview {
    pub by_state: BTreeMap<String, i64>,
    /// type → state → count.
    pub by_type: BTreeMap<String, BTreeMap<String, i64>>,
    pub oldest_queued_seconds: Option<f64>,
    /// QUEUED items waiting for a future run_at (retries, delayed items).
    pub scheduled: i64,
    /// QUEUED items waiting for their dependencies.
    pub waiting_for_dependencies: i64,
    pub open_dead_letters: i64,
    pub awaiting_approval: i64,
    pub escalations_open: i64,
    pub escalations_acknowledged: i64,
    pub in_flight: Vec<db::orders::InFlight>,
    /// The leader lease (who leads, since when, until when); `None` before any replica led.
    pub leadership: Option<db::leader::Lease>,
    /// The replicas alive: seen by the database within the last 30 seconds.
    pub replicas: Vec<db::leader::Replica>,
    /// Agents with limits or a pause: circuit, pause, in flight, waiting (`db::limits`).
    pub agents: Vec<db::limits::AgentView>,
}

/// Reads the overview: the counts of `orderly status` (every item, so one pass over
/// `work_items`) and the unresolved escalations (their partial index).
pub async fn overview(pool: &sqlx::PgPool) -> Result<Overview, sqlx::Error> {
    let queue = db::orders::queue_status(pool, 20).await?;
    let escalations = db::sla::unresolved_counts(pool).await?;
    let leadership = db::leader::current(pool).await?;
    let replicas = db::leader::replicas(pool, std::time::Duration::from_secs(30)).await?;
    let agents = db::limits::views(pool).await?;
    let mut by_state = BTreeMap::new();
    let mut by_type: BTreeMap<String, BTreeMap<String, i64>> = BTreeMap::new();
    for row in &queue.counts {
        *by_state.entry(row.status.as_str().to_owned()).or_insert(0) += row.count;
        by_type.entry(row.item_type.clone()).or_default().insert(row.status.as_str().to_owned(), row.count);
    }
    let escalation = |status: &str| escalations.iter().find(|(s, _)| s == status).map_or(0, |(_, n)| *n);
    Ok(Overview {
        awaiting_approval: by_state.get(ItemStatus::AwaitingApproval.as_str()).copied().unwrap_or(0),
        by_state,
        by_type,
        oldest_queued_seconds: queue.oldest_queued_seconds,
        scheduled: queue.scheduled,
        waiting_for_dependencies: queue.waiting,
        open_dead_letters: queue.open_dead_letters,
        escalations_open: escalation("OPEN"),
        escalations_acknowledged: escalation("ACKNOWLEDGED"),
        in_flight: queue.in_flight,
        leadership,
        replicas,
        agents,
    })
}
