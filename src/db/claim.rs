//! The claim: the one statement that takes runnable items for a worker. The dispatcher
//! (`worker::dispatcher`) calls [`claim`] with its free slots; everything after the claim is
//! in `super::queue`.

use crate::model::Priority;
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use std::time::Duration;
use uuid::Uuid;

/// What both claims do with the rows they locked (`next`): mark them PROCESSING under a
/// lease, their orders PROCESSING, and return them with their orders' fields.
/// With three filters (`w.`, `o.` and `s.` conditions, each ending in `AND`), every table it
/// reads names one tenant: the distributed claim (`super::distributed::CLAIM_TENANT_SQL`).
macro_rules! claimed_and_started {
    () => {
        claimed_and_started!("", "", "")
    };
    ($w:literal, $o:literal, $s:literal) => {
        concat!(
            r#"), claimed AS (
    UPDATE work_items w
    SET status = 'PROCESSING',
        attempt = w.attempt + 1,
        lease_expires_at = now() + $2 * interval '1 millisecond',
        locked_by = $3,
        claimed_at = now()
    WHERE "#,
            $w,
            r#" w.ctid = ANY (ARRAY (SELECT ctid FROM next))
    RETURNING w.id, w.work_order_id, w.type, w.priority, w.attempt, w.attempt_base,
              w.max_attempts, w.rescues, w.created_at, w.run_at, w.has_dependencies, w.review_pending,
              octet_length(w.content) AS content_bytes,
              CASE WHEN octet_length(w.content) <= $4 THEN w.content END AS content
), started AS (
    UPDATE work_orders o SET status = 'PROCESSING', updated_at = now()
    WHERE "#,
            $o,
            r#" o.ctid = ANY (ARRAY (SELECT s.ctid FROM work_orders s
                               WHERE "#,
            $s,
            r#" s.id IN (SELECT work_order_id FROM claimed) AND s.status <> 'PROCESSING'
                               FOR NO KEY UPDATE SKIP LOCKED))
    RETURNING o.id, o.workflow_id, o.tenant_id, o.created_by, o.priority, o.metadata
)
SELECT c.id, c.work_order_id, c.type::text AS item_type, c.priority::text AS priority,
       c.attempt, c.attempt_base, c.max_attempts, c.rescues, c.created_at, c.run_at, c.has_dependencies,
       c.review_pending,
       c.content_bytes,
       c.content, coalesce(s.workflow_id, o.workflow_id) AS workflow_id,
       coalesce(s.tenant_id, o.tenant_id) AS tenant_id, coalesce(s.created_by, o.created_by) AS created_by,
       coalesce(s.priority, o.priority)::text AS order_priority,
       coalesce(s.metadata, o.metadata)::text AS metadata, now() AS claimed_at,
       s.id IS NULL AND o.status <> 'PROCESSING' AS order_unmarked
FROM claimed c
LEFT JOIN started s ON s.id = c.work_order_id
LEFT JOIN LATERAL (SELECT o.workflow_id, o.tenant_id, o.created_by, o.priority, o.metadata, o.status
                   FROM work_orders o WHERE "#,
            $o,
            r#" o.id = c.work_order_id AND s.id IS NULL OFFSET 0) o ON true
"#
        )
    };
}
pub(crate) use claimed_and_started;

/// The claim statement (see [`claim`]); public so the plan test can EXPLAIN it.
/// Parameters: $1 limit, $2 lease (ms), $3 worker id, $4 content size limit.
///
/// The update goes straight to the locked row versions by `ctid = ANY(ARRAY(...))` (a TID
/// scan): a row this statement has locked cannot move before it updates it. Looking them up
/// again by primary key cost a tenth of the database's CPU (a bitmap scan re-reads every dead
/// index entry of a key). The update has no other condition: one on `status` would offer the
/// planner the ready index again, which it takes when its statistics think the index empty
/// (docs/guarantees.md). Orders are taken with SKIP LOCKED too (and updated by `ctid` as the
/// items are), so a claim never waits for a writer of an order's items
/// ([`super::rollup::lock_orders`]); an order it could not mark comes back with
/// `order_unmarked` and the dispatcher rolls it up after the claim has committed
/// ([`super::rollup::roll_up`]), which waits for that writer and then sees the claimed item.
/// Their lock is `FOR NO KEY UPDATE`, which an upstream still adding items to the order (a
/// key-share lock, from the foreign key) does not hold off.
pub const CLAIM_SQL: &str = concat!(
    r#"
WITH next AS (
    SELECT ctid FROM work_items
    WHERE status = 'QUEUED' AND deps_pending = 0 AND run_at <= now()
    ORDER BY priority DESC, run_at
    LIMIT $1
    FOR UPDATE SKIP LOCKED
"#,
    claimed_and_started!()
);

/// The claim that takes turns among tenants (see [`claim_turns`]); public so the plan test
/// can EXPLAIN it. Parameters: those of [`CLAIM_SQL`], then $5 the most tenants one claim
/// visits, $6 and $7 the ranges of tenant ids it walks, in order (exclusive bounds,
/// [`Turn::ranges`]), $8 the most items it takes from one tenant.
///
/// At the top priority with runnable items, it steps from tenant to tenant through
/// `idx_work_items_ready_tenant` (one index descent each, never reading a tenant's backlog),
/// takes up to an equal share of the claim from each of those not in the crowd (`limit /
/// tenants`, at most $8, oldest first), then locks those rows by `ctid` with SKIP LOCKED; the
/// rest is [`CLAIM_SQL`]'s.
/// The lock needs no second look at the status: the picked row versions were QUEUED in this
/// statement's snapshot, and a row another claimer changed since has a new version at
/// another `ctid`, which the lock's recheck of the TID condition refuses. The walk's and the
/// share's conditions are written (`deps_pending <= 0`) so that only the tenant index can
/// serve them (migration 0038).
pub const CLAIM_TURNS_SQL: &str = concat!(
    r#"
WITH RECURSIVE top AS MATERIALIZED (
    SELECT priority FROM work_items
    WHERE status = 'QUEUED' AND deps_pending = 0 AND run_at <= now()
    ORDER BY priority DESC, run_at
    LIMIT 1
), tenants AS (
    -- One step per tenant, within the ranges of tenant ids between the crowd's ($6 and $7,
    -- in walking order, wrapping around): never into a crowd tenant's range, whose head of
    -- claimed entries the oldest-first claims leave behind.
    SELECT 0 AS n, 1 AS seg, ($6::uuid[])[1] AS cur, NULL::uuid AS tenant_id
    UNION ALL
    SELECT t.n + 1,
           CASE WHEN x.tenant_id IS NULL THEN t.seg + 1 ELSE t.seg END,
           CASE WHEN x.tenant_id IS NULL THEN ($6::uuid[])[t.seg + 1] ELSE x.tenant_id END,
           x.tenant_id
    FROM tenants t
    LEFT JOIN LATERAL (SELECT w.tenant_id FROM work_items w
                       WHERE w.status = 'QUEUED' AND w.deps_pending <= 0 AND w.priority = (SELECT priority FROM top)
                         AND w.tenant_id > t.cur AND w.tenant_id < ($7::uuid[])[t.seg] AND w.run_at <= now()
                       ORDER BY w.priority DESC, w.tenant_id LIMIT 1) x ON true
    WHERE t.seg <= cardinality($6::uuid[]) AND t.n < $5 + cardinality($6::uuid[])
), visited AS MATERIALIZED (
    SELECT tenant_id FROM tenants WHERE tenant_id IS NOT NULL LIMIT $5
), share AS MATERIALIZED (
    SELECT least($8, greatest(1, ceil($1::float8 / greatest(count(*), 1))))::int AS q FROM visited
), picked AS (
    SELECT i.ctid FROM visited v CROSS JOIN share
    CROSS JOIN LATERAL (SELECT w.ctid FROM work_items w
                        WHERE w.status = 'QUEUED' AND w.deps_pending <= 0 AND w.priority = (SELECT priority FROM top)
                          AND w.tenant_id = v.tenant_id AND w.run_at <= now()
                        ORDER BY w.priority DESC, w.tenant_id, w.run_at
                        LIMIT share.q) i
    LIMIT $1
), next AS (
    SELECT ctid FROM work_items
    WHERE ctid = ANY (ARRAY (SELECT ctid FROM picked))
    FOR UPDATE SKIP LOCKED
"#,
    claimed_and_started!()
);

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
    /// Its review has a pending stage (`item_reviews`): the dispatcher reads it.
    pub review_pending: bool,
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
}

/// Claims up to `limit` runnable items for `worker_id`, priority first then oldest run
/// time, and marks their orders PROCESSING, in one statement ([`CLAIM_SQL`]).
///
/// Locking: `FOR UPDATE SKIP LOCKED` on the partial index `idx_work_items_ready`, so
/// concurrent claimers never wait on each other.
pub async fn claim(
    pool: &PgPool,
    worker_id: &str,
    limit: i64,
    lease: Duration,
    max_content_bytes: i32,
) -> Result<Vec<ClaimedItem>, sqlx::Error> {
    sqlx::query_as(CLAIM_SQL)
        .bind(limit)
        .bind(lease.as_millis() as f64)
        .bind(worker_id)
        .bind(max_content_bytes)
        .fetch_all(pool)
        .await
}

/// Where a turns claim goes: from the tenant after `after` (`None`: from the first), through
/// at most `max_tenants` tenants, taking nothing from `crowd` and at most `share` items from
/// each of the others.
#[derive(Debug, Clone)]
pub struct Turn {
    pub after: Option<Uuid>,
    pub max_tenants: i32,
    pub crowd: Vec<Uuid>,
    pub share: i32,
}

impl Turn {
    /// The ranges of tenant ids a turn walks, in order, as exclusive (low, high) bounds: from
    /// `after` to the end and round from the start back to `after` (included), cut at every
    /// tenant of the crowd, so that no step enters a crowd tenant's range.
    pub fn ranges(&self) -> (Vec<Uuid>, Vec<Uuid>) {
        let start = self.after.unwrap_or(Uuid::nil());
        let mut cuts: Vec<Uuid> = self.crowd.clone();
        cuts.sort_unstable();
        cuts.dedup();
        let (mut lows, mut highs) = (vec![start], Vec::new());
        for cut in cuts.iter().filter(|c| **c > start) {
            highs.push(*cut);
            lows.push(*cut);
        }
        highs.push(Uuid::max());
        if start != Uuid::nil() {
            lows.push(Uuid::nil());
            for cut in cuts.iter().filter(|c| **c < start) {
                highs.push(*cut);
                lows.push(*cut);
            }
            // Up to `after` itself: a lone newcomer is the last turn's tenant every time.
            highs.push(Uuid::from_u128(start.as_u128().saturating_add(1)));
        }
        (lows, highs)
    }
}

/// Claims like [`claim`], taking turns among the tenants with runnable items at the top
/// priority ([`CLAIM_TURNS_SQL`]).
pub async fn claim_turns(
    pool: &PgPool,
    worker_id: &str,
    limit: i64,
    lease: Duration,
    max_content_bytes: i32,
    turn: &Turn,
) -> Result<Vec<ClaimedItem>, sqlx::Error> {
    let (lows, highs) = turn.ranges();
    sqlx::query_as(CLAIM_TURNS_SQL)
        .bind(limit)
        .bind(lease.as_millis() as f64)
        .bind(worker_id)
        .bind(max_content_bytes)
        .bind(turn.max_tenants)
        .bind(lows)
        .bind(highs)
        .bind(turn.share)
        .fetch_all(pool)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_turn_walks_every_tenant_range_once_around_the_crowd() {
        let u = Uuid::from_u128;
        let turn = |after: Option<u128>, crowd: &[u128]| Turn {
            after: after.map(u),
            max_tenants: 32,
            crowd: crowd.iter().copied().map(u).collect(),
            share: 8,
        };
        assert_eq!(turn(None, &[]).ranges(), (vec![Uuid::nil()], vec![Uuid::max()]));
        assert_eq!(turn(None, &[50]).ranges(), (vec![Uuid::nil(), u(50)], vec![u(50), Uuid::max()]));
        // From after the last turn to the end, then from the start back to it, cut at the crowd.
        assert_eq!(
            turn(Some(40), &[70, 10]).ranges(),
            (vec![u(40), u(70), Uuid::nil(), u(10)], vec![u(70), Uuid::max(), u(10), u(41)])
        );
    }
}
