//! Agent limits across replicas (migration 0030). At a claim, the items of a limited agent go
//! through [`admit`]: in one transaction with the agent's state row locked (replicas take
//! turns per agent, and only for limited agents), it counts the live slots, applies the pause,
//! the circuit, `max_in_flight` and the rate (GCRA), takes a slot for each item let through
//! and parks the rest: their claim undone, no attempt spent, a row in `agent_waits` saying
//! why. [`wake`] lets waiting items run as slots free; [`record`] writes what the completers
//! saw (a Retry-After pause, the circuit's failures and successes).

use crate::policy::limits::AgentLimit;
use chrono::{DateTime, TimeDelta, Utc};
use sqlx::PgPool;
use uuid::Uuid;

/// How much wider than `1 / rate` starts are spaced (see [`admit`]).
const RATE_SPACING: f64 = 1.05;

/// A claimed item of a limited agent, as the gate needs it.
#[derive(Debug, Clone, Copy)]
pub struct Claimed {
    pub id: Uuid,
    pub attempt: i32,
    /// Higher first (the item's priority as a number).
    pub priority: i32,
}

/// Why an item waits for its agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// For a free slot (`max_in_flight`, or the circuit's one probe): until woken.
    InFlight,
    /// For its turn in the rate: a reservation at a time.
    Rate(DateTime<Utc>),
    /// The agent asked to be left alone (Retry-After) until then.
    Paused(DateTime<Utc>),
    /// The circuit is open until then.
    Circuit(DateTime<Utc>),
}

impl Wait {
    fn reason(self) -> &'static str {
        match self {
            Wait::InFlight => "in_flight",
            Wait::Rate(_) => "rate",
            Wait::Paused(_) => "paused",
            Wait::Circuit(_) => "circuit",
        }
    }

    fn until(self) -> Option<DateTime<Utc>> {
        match self {
            Wait::InFlight => None,
            Wait::Rate(t) | Wait::Paused(t) | Wait::Circuit(t) => Some(t),
        }
    }
}

#[derive(sqlx::FromRow)]
struct State {
    paused_until: Option<DateTime<Utc>>,
    circuit_open_until: Option<DateTime<Utc>>,
    circuit_probing: bool,
    tat: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
}

/// Lets through what the agent's limits allow of `items` (in the order given) and parks the
/// rest. Returns the ids parked, each with how long until its turn (none: until woken).
pub async fn admit(
    pool: &PgPool,
    agent: &str,
    limit: &AgentLimit,
    items: &[Claimed],
) -> Result<Vec<(Uuid, Option<std::time::Duration>)>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let max_in_flight = limit.max_in_flight.map(|m| m as i32);
    sqlx::query(
        "INSERT INTO agent_state AS s (agent, max_in_flight) VALUES ($1, $2)
         ON CONFLICT (agent) DO UPDATE SET max_in_flight = excluded.max_in_flight
         WHERE s.max_in_flight IS DISTINCT FROM excluded.max_in_flight",
    )
    .bind(agent)
    .bind(max_in_flight)
    .execute(&mut *tx)
    .await?;
    let state: State = sqlx::query_as(
        "SELECT paused_until, circuit_open_until, circuit_probing, tat, now() AS now
         FROM agent_state WHERE agent = $1 FOR UPDATE",
    )
    .bind(agent)
    .fetch_one(&mut *tx)
    .await?;
    let now = state.now;
    let ids: Vec<Uuid> = items.iter().map(|i| i.id).collect();
    // Items coming back for the rate reservation they hold.
    let reserved: std::collections::HashSet<Uuid> = sqlx::query_scalar(
        "SELECT work_item_id FROM agent_waits WHERE work_item_id = ANY ($1) AND reason = 'rate' AND reserved_at <= now()",
    )
    .bind(&ids)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .collect();
    let probing = state.circuit_probing && state.circuit_open_until.is_none_or(|t| t <= now);
    let cap = if probing { Some(1) } else { limit.max_in_flight.map(i64::from) };
    let mut live = match cap {
        Some(_) => {
            sqlx::query(
                "DELETE FROM agent_slots s WHERE s.agent = $1 AND NOT EXISTS (
                     SELECT 1 FROM work_items w WHERE w.id = s.work_item_id AND w.attempt = s.attempt
                                                  AND w.status = 'PROCESSING')",
            )
            .bind(agent)
            .execute(&mut *tx)
            .await?;
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM agent_slots WHERE agent = $1")
                .bind(agent)
                .fetch_one(&mut *tx)
                .await?
        }
        None => 0,
    };
    let mut tat = state.tat.unwrap_or(now);
    let mut admitted = Vec::new();
    let mut parked: Vec<(Claimed, Wait)> = Vec::new();
    for item in items {
        let wait = if let Some(until) = state.paused_until.filter(|t| *t > now) {
            Some(Wait::Paused(until))
        } else if let Some(until) = state.circuit_open_until.filter(|t| *t > now) {
            Some(Wait::Circuit(until))
        } else if cap.is_some_and(|cap| live >= cap) {
            Some(Wait::InFlight)
        } else if let (Some(rate), false) = (limit.rate, reserved.contains(&item.id)) {
            // GCRA: each start (or reservation) moves the theoretical arrival time on by one
            // interval; a start is allowed once it is within the burst's tolerance of it.
            // Starts are spaced 5% wider than the rate: what happens between the admission
            // and the request (the runner, the network) may shift a start by up to 50 ms
            // without a one-second window at the agent seeing more than rate + burst.
            let interval = TimeDelta::microseconds((1e6 * RATE_SPACING / rate.per_second) as i64);
            let tolerance = TimeDelta::microseconds(((rate.burst - 1.0) * 1e6 * RATE_SPACING / rate.per_second) as i64);
            let at = tat.max(now);
            let allowed = at - tolerance;
            tat = at + interval;
            (allowed > now).then_some(Wait::Rate(allowed))
        } else {
            None
        };
        match wait {
            Some(wait) => parked.push((*item, wait)),
            None => {
                live += 1;
                admitted.push(*item);
            }
        }
    }
    if limit.rate.is_some() {
        sqlx::query("UPDATE agent_state SET tat = $2, updated_at = now() WHERE agent = $1")
            .bind(agent)
            .bind(tat)
            .execute(&mut *tx)
            .await?;
    }
    let admitted_ids: Vec<Uuid> = admitted.iter().map(|i| i.id).collect();
    if !admitted_ids.is_empty() {
        sqlx::query("DELETE FROM agent_waits WHERE work_item_id = ANY ($1)")
            .bind(&admitted_ids)
            .execute(&mut *tx)
            .await?;
        if cap.is_some() {
            let attempts: Vec<i32> = admitted.iter().map(|i| i.attempt).collect();
            sqlx::query(
                "INSERT INTO agent_slots (work_item_id, agent, attempt)
                 SELECT id, $3, attempt FROM unnest($1::uuid[], $2::int[]) AS u(id, attempt)
                 ON CONFLICT (work_item_id) DO UPDATE SET agent = excluded.agent, attempt = excluded.attempt,
                                                          taken_at = now()",
            )
            .bind(&admitted_ids)
            .bind(&attempts)
            .bind(agent)
            .execute(&mut *tx)
            .await?;
        }
    }
    let parked_ids: std::collections::HashSet<Uuid> = park(&mut tx, agent, &parked).await?.into_iter().collect();
    tx.commit().await?;
    Ok(parked
        .iter()
        .filter(|(item, _)| parked_ids.contains(&item.id))
        .map(|(item, wait)| (item.id, wait.until().and_then(|t| (t - now).to_std().ok())))
        .collect())
}

/// The agents paused now (a Retry-After): every agent's claim checks these, limited or not.
pub async fn paused_agents(pool: &PgPool) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT agent FROM agent_state WHERE paused_until > now()").fetch_all(pool).await
}

/// Undoes the claims of `parked` (fenced by attempt) and records why each waits.
async fn park(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    agent: &str,
    parked: &[(Claimed, Wait)],
) -> Result<Vec<Uuid>, sqlx::Error> {
    if parked.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<Uuid> = parked.iter().map(|(i, _)| i.id).collect();
    let attempts: Vec<i32> = parked.iter().map(|(i, _)| i.attempt).collect();
    let priorities: Vec<i32> = parked.iter().map(|(i, _)| i.priority).collect();
    let reasons: Vec<&str> = parked.iter().map(|(_, w)| w.reason()).collect();
    let until: Vec<Option<DateTime<Utc>>> = parked.iter().map(|(_, w)| w.until()).collect();
    sqlx::query_scalar(
        "WITH p AS (
             SELECT * FROM unnest($1::uuid[], $2::int[], $3::int[], $4::text[], $5::timestamptz[])
                 AS p(id, attempt, priority, reason, until)
         ), parked AS (
             UPDATE work_items i
             SET status = 'QUEUED', attempt = i.attempt - 1, run_at = coalesce(p.until, 'infinity'),
                 lease_expires_at = NULL, locked_by = NULL, claimed_at = NULL
             FROM p WHERE i.id = p.id AND i.attempt = p.attempt AND i.status = 'PROCESSING'
             RETURNING i.id, p.priority, p.reason, p.until
         )
         INSERT INTO agent_waits AS w (work_item_id, agent, reason, priority, reserved_at)
         SELECT id, $6, reason, priority, CASE WHEN reason = 'rate' THEN until END FROM parked
         ON CONFLICT (work_item_id) DO UPDATE
         SET agent = excluded.agent, reason = excluded.reason, priority = excluded.priority,
             reserved_at = excluded.reserved_at, woken_at = NULL
         RETURNING w.work_item_id",
    )
    .bind(&ids)
    .bind(&attempts)
    .bind(&priorities)
    .bind(&reasons)
    .bind(&until)
    .bind(agent)
    .fetch_all(&mut **tx)
    .await
}

/// The keys with items waiting for a slot, and each one's slot limit as its last admission
/// wrote it (none: only the circuit's probe limits it, or nothing any more: an item parked
/// while the circuit probed is woken once the circuit has closed).
pub async fn waiting_keys(pool: &PgPool) -> Result<Vec<(String, Option<i32>)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT s.agent, s.max_in_flight FROM agent_state s
         WHERE EXISTS (SELECT 1 FROM agent_waits w
                       WHERE w.agent = s.agent AND w.woken_at IS NULL AND w.reason = 'in_flight')",
    )
    .fetch_all(pool)
    .await
}

/// Brings the stored slot limits of the configured keys (agents and tenants: `limited`) up
/// to the configuration at start-up: a raised limit wakes more at once, and the items of a
/// key whose limit is gone (an agent or tenant not in `limited`; template steps are left to
/// their next admission) run now.
pub async fn reconcile(pool: &PgPool, limited: &[(String, Option<u32>)]) -> Result<u64, sqlx::Error> {
    let keys: Vec<&str> = limited.iter().map(|(k, _)| k.as_str()).collect();
    let caps: Vec<Option<i32>> = limited.iter().map(|(_, m)| m.map(|m| m as i32)).collect();
    let mut tx = pool.begin().await?;
    sqlx::query(
        "UPDATE agent_state s SET max_in_flight = c.cap
         FROM unnest($1::text[], $2::int[]) AS c(agent, cap)
         WHERE s.agent = c.agent AND s.max_in_flight IS DISTINCT FROM c.cap",
    )
    .bind(&keys)
    .bind(&caps)
    .execute(&mut *tx)
    .await?;
    let released = sqlx::query(
        "WITH gone AS (
             UPDATE agent_state SET max_in_flight = NULL
             WHERE agent <> ALL ($1) AND agent NOT LIKE 'step:%' AND max_in_flight IS NOT NULL
             RETURNING agent
         ), waits AS (
             DELETE FROM agent_waits w USING gone
             WHERE w.agent = gone.agent AND w.reason = 'in_flight' RETURNING w.work_item_id
         )
         UPDATE work_items i SET run_at = now() FROM waits
         WHERE i.id = waits.work_item_id AND i.status = 'QUEUED' AND NOT isfinite(i.run_at)",
    )
    .bind(&keys)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;
    Ok(released)
}

/// Lets run as many items waiting for a slot of `agent` as there are free slots (`cap`:
/// `max_in_flight`, 1 while the circuit probes; `None` wakes up to 1,000 at a time), highest
/// priority and oldest first. Items woken in the last 10 s and not yet claimed count as taken.
pub async fn wake(pool: &PgPool, agent: &str, max_in_flight: Option<i32>) -> Result<u64, sqlx::Error> {
    sqlx::query(
        "WITH st AS (
             SELECT coalesce(s.circuit_probing AND coalesce(s.circuit_open_until <= now(), true), false) AS probing
             FROM (SELECT 1) one LEFT JOIN agent_state s ON s.agent = $1
         ), cap AS (
             SELECT CASE WHEN (SELECT probing FROM st) THEN 1 ELSE coalesce($2::int, 1000) END
                    - (SELECT count(*) FROM agent_slots s JOIN work_items w
                         ON w.id = s.work_item_id AND w.attempt = s.attempt AND w.status = 'PROCESSING'
                       WHERE s.agent = $1)
                    - (SELECT count(*) FROM agent_waits WHERE agent = $1 AND woken_at > now() - interval '10 seconds')
                      AS free
         ), picked AS (
             SELECT work_item_id FROM agent_waits
             WHERE agent = $1 AND woken_at IS NULL AND reason = 'in_flight'
             ORDER BY priority DESC, since
             LIMIT greatest(0, (SELECT free FROM cap))
             FOR UPDATE SKIP LOCKED
         ), woke AS (
             UPDATE agent_waits w SET woken_at = now() FROM picked p WHERE w.work_item_id = p.work_item_id
             RETURNING w.work_item_id
         )
         UPDATE work_items i SET run_at = now() FROM woke WHERE i.id = woke.work_item_id AND i.status = 'QUEUED'",
    )
    .bind(agent)
    .bind(max_in_flight)
    .execute(pool)
    .await
    .map(|r| r.rows_affected())
}

/// What a completion batch saw of one agent, in order: whether the last transient failure
/// came after the last success, how many failures since it, and a Retry-After pause.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Seen {
    /// A success came in the batch (the count starts again from the failures after it).
    pub succeeded: bool,
    /// Transient failures (timeouts, 5xx, connection errors) after the last success.
    pub failures: i32,
    /// The longest Retry-After of a 429 or 503 in the batch.
    pub pause_ms: Option<i64>,
}

/// Writes what a batch saw of `agent`: a pause, and the circuit's count (opening it at
/// `limit.circuit.failures`, closing it on a success).
pub async fn record(pool: &PgPool, agent: &str, limit: &AgentLimit, seen: &Seen) -> Result<(), sqlx::Error> {
    let (threshold, cool_ms) =
        limit.circuit.map_or((None, 0), |c| (Some(c.failures as i32), c.cool_down.as_millis() as i64));
    sqlx::query("INSERT INTO agent_state AS s (agent) VALUES ($1) ON CONFLICT (agent) DO NOTHING")
        .bind(agent)
        .execute(pool)
        .await?;
    sqlx::query(
        "UPDATE agent_state s SET
             paused_until = CASE WHEN $4::bigint IS NULL THEN s.paused_until
                                 ELSE greatest(coalesce(s.paused_until, now()), now() + $4 * interval '1 millisecond') END,
             pause_reason = CASE WHEN $4::bigint IS NULL THEN s.pause_reason ELSE 'Retry-After' END,
             consecutive_failures = c.count,
             circuit_open_until = CASE
                 WHEN $5::int IS NOT NULL AND c.count >= $5 AND coalesce(s.circuit_open_until <= now(), true)
                      AND $3 > 0 THEN now() + $6 * interval '1 millisecond'
                 WHEN $2 AND $3 = 0 THEN NULL
                 ELSE s.circuit_open_until END,
             circuit_probing = CASE
                 WHEN $5::int IS NOT NULL AND c.count >= $5 AND $3 > 0 THEN true
                 WHEN $2 AND $3 = 0 THEN false
                 ELSE s.circuit_probing END,
             updated_at = now()
         FROM (SELECT CASE WHEN $2 THEN $3 ELSE consecutive_failures + $3 END AS count
               FROM agent_state WHERE agent = $1) c
         WHERE s.agent = $1",
    )
    .bind(agent)
    .bind(seen.succeeded)
    .bind(seen.failures)
    .bind(seen.pause_ms)
    .bind(threshold)
    .bind(cool_ms)
    .execute(pool)
    .await?;
    Ok(())
}

/// An agent's state as the page and the metrics show it.
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow)]
pub struct AgentView {
    pub agent: String,
    /// `closed`, `open` (until `circuit_open_until`) or `probing`.
    pub circuit: String,
    pub circuit_open_until: Option<DateTime<Utc>>,
    pub paused_until: Option<DateTime<Utc>>,
    pub consecutive_failures: i32,
    pub in_flight: i64,
    pub waiting: i64,
    /// How far ahead the agent's rate is booked (each start and each reservation moves it
    /// on by one interval): its use of the rate, as a time. None when not ahead of now.
    pub rate_booked_until: Option<DateTime<Utc>>,
}

/// [`views`] on a Citus cluster: the counts are read across the shards, joined on the tenant,
/// grouped by agent, then matched to the agents' state (a reference table); Citus runs no
/// correlated subquery over distributed tables.
const VIEWS_DISTRIBUTED_SQL: &str = "SELECT s.agent,
        CASE WHEN s.circuit_open_until > now() THEN 'open' WHEN s.circuit_probing THEN 'probing'
             ELSE 'closed' END AS circuit,
        CASE WHEN s.circuit_open_until > now() THEN s.circuit_open_until END AS circuit_open_until,
        CASE WHEN s.paused_until > now() THEN s.paused_until END AS paused_until,
        s.consecutive_failures,
        coalesce(f.n, 0) AS in_flight,
        coalesce(q.n, 0) AS waiting,
        CASE WHEN s.tat > now() THEN s.tat END AS rate_booked_until
    FROM agent_state s
    LEFT JOIN (SELECT l.agent, count(*) AS n FROM agent_slots l JOIN work_items w
                 ON w.tenant_id = l.tenant_id AND w.id = l.work_item_id AND w.attempt = l.attempt
                    AND w.status = 'PROCESSING'
               GROUP BY l.agent) f ON f.agent = s.agent
    LEFT JOIN (SELECT a.agent, count(*) AS n FROM agent_waits a JOIN work_items w
                 ON w.tenant_id = a.tenant_id AND w.id = a.work_item_id AND w.status = 'QUEUED'
               GROUP BY a.agent) q ON q.agent = s.agent
    WHERE s.agent NOT LIKE 'tenant:%' AND s.agent NOT LIKE 'step:%' ORDER BY s.agent";

pub async fn views(pool: &PgPool) -> Result<Vec<AgentView>, sqlx::Error> {
    if super::distributed::topology(pool).await? == super::distributed::Topology::Distributed {
        return sqlx::query_as(VIEWS_DISTRIBUTED_SQL).fetch_all(pool).await;
    }
    sqlx::query_as(
        "SELECT s.agent,
                CASE WHEN s.circuit_open_until > now() THEN 'open' WHEN s.circuit_probing THEN 'probing'
                     ELSE 'closed' END AS circuit,
                CASE WHEN s.circuit_open_until > now() THEN s.circuit_open_until END AS circuit_open_until,
                CASE WHEN s.paused_until > now() THEN s.paused_until END AS paused_until,
                s.consecutive_failures,
                (SELECT count(*) FROM agent_slots l JOIN work_items w
                   ON w.id = l.work_item_id AND w.attempt = l.attempt AND w.status = 'PROCESSING'
                 WHERE l.agent = s.agent) AS in_flight,
                (SELECT count(*) FROM agent_waits a JOIN work_items w ON w.id = a.work_item_id AND w.status = 'QUEUED'
                 WHERE a.agent = s.agent) AS waiting,
                CASE WHEN s.tat > now() THEN s.tat END AS rate_booked_until
         FROM agent_state s WHERE s.agent NOT LIKE 'tenant:%' AND s.agent NOT LIKE 'step:%' ORDER BY s.agent",
    )
    .fetch_all(pool)
    .await
}
