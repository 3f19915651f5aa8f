//! The claim: the one statement that takes runnable items for a worker, taking turns among
//! tenants. The dispatcher (`worker::dispatcher`) calls [`claim`] with the free slots and its
//! own place in the round ([`Turns`]); everything after the claim is in `super::queue`.

use crate::model::Priority;
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use std::time::Duration;
use uuid::Uuid;

/// The claim statement (see [`claim`]); public so the plan test can EXPLAIN it.
/// Parameters: $1 limit, $2 lease (ms), $3 worker id, $4 content size limit, $5 the tenant
/// the round starts after, $6 and $7 tenants with a weight other than 1 and their weights.
///
/// How it takes turns (docs/limits.md#fairness):
/// - `walk` steps through the ready index (priority first, then tenant, then run time) one
///   (priority, tenant) group at a time, from the highest priority down and, within one, from
///   the tenant after $5 round to it. Each step is one index descent; a group's first entry is
///   its oldest run time, so the step also says whether the tenant has runnable work (a
///   tenant whose items all wait for a later time costs the one step). It stops after
///   finding `$1` runnable groups or `2 $1 + 8` steps: its cost follows the batch, not the
///   number of tenants.
/// - `next` locks each runnable group's oldest items (`FOR UPDATE SKIP LOCKED`), up to its
///   share of the batch (the batch divided by the weights of the priority's runnable
///   groups), and keeps them in turns: every group's first, then every group's second...
///   (a weight-2 tenant's turns come twice as often), priority first.
/// - `fill` tops the batch up from the groups in walk order when some had fewer items than
///   their share (a lone tenant takes the whole batch).
/// - `claimed` then updates the locked rows as before: straight to the row versions by
///   `ctid = ANY(ARRAY(...))` (a TID scan; a row this statement has locked cannot move
///   before it updates it). Looking them up again by primary key cost a tenth of the
///   database's CPU (a bitmap scan re-reads every dead index entry of a key). The update
///   has no other condition: one on `status` would offer the planner the ready index again.
///
/// Orders are taken with SKIP LOCKED too (and updated by `ctid` as the items are), so a claim
/// never waits for a writer of an order's items ([`super::rollup::lock_orders`]); an order it
/// could not mark comes back with `order_unmarked` and the dispatcher rolls it up after the
/// claim has committed ([`super::rollup::roll_up`]), which waits for that writer and then sees
/// the claimed item. Their lock is `FOR NO KEY UPDATE`, which an upstream still adding items
/// to the order (a key-share lock, from the foreign key) does not hold off.
pub const CLAIM_SQL: &str = r#"
WITH RECURSIVE walk (pos, priority, tenant_id, runnable, wrapped, found) AS (
    SELECT 0, (SELECT r.priority FROM work_items r WHERE r.status = 'QUEUED' AND r.deps_pending = 0
               ORDER BY r.priority DESC LIMIT 1), $5::uuid, false, false, 0
    UNION ALL
    SELECT w.pos + 1, g.priority, g.tenant_id, g.run_at <= now(), g.wrapped, w.found + (g.run_at <= now())::int
    FROM walk w, LATERAL (
        -- The next tenant of this priority, in this round.
        (SELECT r.priority, r.tenant_id, r.run_at, w.wrapped FROM work_items r
         WHERE r.status = 'QUEUED' AND r.deps_pending = 0 AND r.priority = w.priority AND r.tenant_id > w.tenant_id
           AND (NOT w.wrapped OR r.tenant_id <= $5)
         ORDER BY r.priority DESC, r.tenant_id, r.run_at LIMIT 1)
        UNION ALL
        -- Past the last tenant: round to the first, once.
        (SELECT r.priority, r.tenant_id, r.run_at, true FROM work_items r
         WHERE NOT w.wrapped AND r.status = 'QUEUED' AND r.deps_pending = 0 AND r.priority = w.priority
           AND r.tenant_id <= $5
         ORDER BY r.priority DESC, r.tenant_id, r.run_at LIMIT 1)
        UNION ALL
        -- The round is over: the next lower priority, from the tenant after $5.
        (SELECT n.priority, n.tenant_id, n.run_at, n.wrapped
         FROM (SELECT r.priority FROM work_items r
               WHERE r.status = 'QUEUED' AND r.deps_pending = 0 AND r.priority < w.priority
               ORDER BY r.priority DESC LIMIT 1) np,
         LATERAL (
             (SELECT r.priority, r.tenant_id, r.run_at, false AS wrapped FROM work_items r
              WHERE r.status = 'QUEUED' AND r.deps_pending = 0 AND r.priority = np.priority AND r.tenant_id > $5
              ORDER BY r.priority DESC, r.tenant_id, r.run_at LIMIT 1)
             UNION ALL
             (SELECT r.priority, r.tenant_id, r.run_at, true FROM work_items r
              WHERE r.status = 'QUEUED' AND r.deps_pending = 0 AND r.priority = np.priority
              ORDER BY r.priority DESC, r.tenant_id, r.run_at LIMIT 1)
             LIMIT 1) n)
        LIMIT 1
    ) g
    WHERE w.found < $1 AND w.pos < 2 * $1 + 8
), groups AS (
    SELECT g.pos, g.priority, g.tenant_id, g.weight, sum(g.weight) OVER (PARTITION BY g.priority) AS level_weight
    FROM (SELECT w.pos, w.priority, w.tenant_id,
                 coalesce((SELECT x.weight FROM unnest($6::uuid[], $7::float8[]) AS x(tenant, weight)
                           WHERE x.tenant = w.tenant_id LIMIT 1), 1.0) AS weight
          FROM walk w WHERE w.pos > 0 AND w.runnable) g
), next AS (
    SELECT c.ctid FROM groups g, LATERAL (
        SELECT l.ctid, row_number() OVER () AS turn FROM (
            SELECT r.ctid FROM work_items r
            WHERE r.status = 'QUEUED' AND r.deps_pending = 0 AND r.priority = g.priority
              AND r.tenant_id = g.tenant_id AND r.run_at <= now()
            ORDER BY r.priority DESC, r.tenant_id, r.run_at
            LIMIT ceil($1 * g.weight / g.level_weight)::bigint
            FOR UPDATE OF r SKIP LOCKED) l) c
    ORDER BY g.priority DESC, c.turn / g.weight, g.pos
    LIMIT $1
), fill AS (
    SELECT f.ctid FROM (SELECT * FROM groups ORDER BY priority DESC, pos) g, LATERAL (
        SELECT r.ctid FROM work_items r
        WHERE r.status = 'QUEUED' AND r.deps_pending = 0 AND r.priority = g.priority
          AND r.tenant_id = g.tenant_id AND r.run_at <= now()
          AND r.ctid <> ALL (ARRAY (SELECT ctid FROM next))
        ORDER BY r.priority DESC, r.tenant_id, r.run_at
        LIMIT $1
        FOR UPDATE OF r SKIP LOCKED) f
    LIMIT $1 - (SELECT count(*) FROM next)
), claimed AS (
    UPDATE work_items w
    SET status = 'PROCESSING',
        attempt = w.attempt + 1,
        lease_expires_at = now() + $2 * interval '1 millisecond',
        locked_by = $3,
        claimed_at = now()
    WHERE w.ctid = ANY (ARRAY (SELECT ctid FROM next UNION ALL SELECT ctid FROM fill))
    RETURNING w.id, w.work_order_id, w.type, w.priority, w.attempt, w.attempt_base,
              w.max_attempts, w.rescues, w.created_at, w.run_at, w.has_dependencies,
              octet_length(w.content) AS content_bytes,
              CASE WHEN octet_length(w.content) <= $4 THEN w.content END AS content
), started AS (
    UPDATE work_orders o SET status = 'PROCESSING', updated_at = now()
    WHERE o.ctid = ANY (ARRAY (SELECT s.ctid FROM work_orders s
                               WHERE s.id IN (SELECT work_order_id FROM claimed) AND s.status <> 'PROCESSING'
                               FOR NO KEY UPDATE SKIP LOCKED))
    RETURNING o.id, o.workflow_id, o.tenant_id, o.created_by, o.priority, o.metadata
)
SELECT c.id, c.work_order_id, c.type::text AS item_type, c.priority::text AS priority,
       c.attempt, c.attempt_base, c.max_attempts, c.rescues, c.created_at, c.run_at, c.has_dependencies,
       c.content_bytes,
       c.content, coalesce(s.workflow_id, o.workflow_id) AS workflow_id,
       coalesce(s.tenant_id, o.tenant_id) AS tenant_id, coalesce(s.created_by, o.created_by) AS created_by,
       coalesce(s.priority, o.priority)::text AS order_priority,
       coalesce(s.metadata, o.metadata)::text AS metadata, now() AS claimed_at,
       s.id IS NULL AND o.status <> 'PROCESSING' AS order_unmarked,
       (SELECT t.tenant_id FROM walk t WHERE t.pos > 0 ORDER BY t.pos DESC LIMIT 1) AS walked_to
FROM claimed c
LEFT JOIN started s ON s.id = c.work_order_id
LEFT JOIN LATERAL (SELECT o.workflow_id, o.tenant_id, o.created_by, o.priority, o.metadata, o.status
                   FROM work_orders o WHERE o.id = c.work_order_id AND s.id IS NULL OFFSET 0) o ON true
"#;

/// Where a dispatcher is in the round among tenants, and the tenants' weights.
#[derive(Debug, Clone, Default)]
pub struct Turns {
    /// The next claim starts with the tenant after this one (the last one the previous claim
    /// looked at).
    pub after: Uuid,
    /// Tenants with a weight other than 1, and their weights (above 0).
    pub weighted: Vec<(Uuid, f64)>,
}

/// A claimed item, as the claim statement returns it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ClaimedItem {
    pub id: Uuid,
    pub work_order_id: Uuid,
    pub item_type: String,
    pub priority: Priority,
    /// The attempt this claim started: the fencing token of every later write.
    pub attempt: i32,
    pub attempt_base: i32,
    pub max_attempts: Option<i32>,
    pub rescues: i32,
    pub created_at: DateTime<Utc>,
    /// When the item became runnable (its INSERT, the end of a retry delay, a delayed
    /// item's chosen time): the claim's queue wait starts here.
    pub run_at: DateTime<Utc>,
    /// Edges name dependencies of this item: its envelope carries their results.
    pub has_dependencies: bool,
    pub content_bytes: i32,
    /// None when the content is larger than the limit (it is then not loaded at all).
    pub content: Option<String>,
    pub workflow_id: String,
    pub tenant_id: Uuid,
    pub created_by: Uuid,
    pub order_priority: Priority,
    /// The order's metadata as JSON text, parsed by the runner for this item alone: a value
    /// `jsonb` holds but serde cannot (a number past f64, nesting past its limit) fails one
    /// item, not the claim of its whole batch.
    #[sqlx(rename = "metadata")]
    pub order_metadata: String,
    /// Database time of the claim: the attempt's `started_at`.
    pub claimed_at: DateTime<Utc>,
    /// The order was not PROCESSING and the claim could not mark it (another transaction
    /// held it): the dispatcher rolls it up ([`super::rollup::roll_up`]).
    pub order_unmarked: bool,
    /// The last tenant the claim's walk looked at (the same on every row): the next claim's
    /// [`Turns::after`].
    pub walked_to: Option<Uuid>,
}

/// Claims up to `limit` runnable items for `worker_id`: the highest priority first, taking
/// turns among its tenants from the one after `turns.after`, each tenant's oldest run time
/// first; marks their orders PROCESSING, in one statement ([`CLAIM_SQL`]).
///
/// Locking: `FOR UPDATE SKIP LOCKED` on the partial index `idx_work_items_ready`, so
/// concurrent claimers never wait on each other.
pub async fn claim(
    pool: &PgPool,
    worker_id: &str,
    limit: i64,
    lease: Duration,
    max_content_bytes: i32,
    turns: &Turns,
) -> Result<Vec<ClaimedItem>, sqlx::Error> {
    let (tenants, weights): (Vec<Uuid>, Vec<f64>) = turns.weighted.iter().copied().unzip();
    sqlx::query_as(CLAIM_SQL)
        .bind(limit)
        .bind(lease.as_millis() as f64)
        .bind(worker_id)
        .bind(max_content_bytes)
        .bind(turns.after)
        .bind(tenants)
        .bind(weights)
        .fetch_all(pool)
        .await
}
