//! The notifications outbox on a Citus cluster (db::notifications holds the single-node
//! claim and the outcome statements both use). The outbox is distributed by tenant, and
//! `FOR UPDATE SKIP LOCKED` needs a statement routed to one shard, so a claim reads first,
//! across every shard, which tenants have notifications due and for which connectors; then
//! claims each tenant's in a statement of its own. A paced connector (Slack) is shared by
//! every tenant: its turn is taken on the connector's row (a reference table, on every node)
//! with a compare-and-set of `next_send_at`, in the transaction that claims its one
//! notification, so replicas never send to it together.

use crate::db::notifications::{Claimed, decode};
use sqlx::PgPool;
use std::time::Duration;
use uuid::Uuid;

/// Who has notifications due: (tenant, connector, connector type), the oldest due first;
/// read on every shard. At most 256 pairs a round (a multi-shard LIMIT must be written in).
const DUE_SQL: &str = "SELECT n.tenant_id, n.connector_id, c.type::text
    FROM notifications n JOIN connectors c ON c.id = n.connector_id
    WHERE n.status = 'PENDING' AND n.next_attempt_at <= now()
      AND (n.locked_until IS NULL OR n.locked_until <= now())
      AND c.next_send_at <= now()
    GROUP BY n.tenant_id, n.connector_id, c.type
    ORDER BY min(n.next_attempt_at)
    LIMIT 256";

/// One tenant's claim, routed to its node: `$1` most rows, `$2` lease in seconds, `$3` the
/// paced connector types, `$4` the tenant, `$5` one paced connector whose turn this
/// transaction holds (NULL: the tenant's unpaced connectors whose `next_send_at` passed).
/// An incident's events keep their order as on one node.
const CLAIM_TENANT_SQL: &str = "UPDATE notifications n
    SET locked_until = now() + make_interval(secs => $2), attempts = n.attempts + 1
    FROM connectors c
    WHERE n.tenant_id = $4 AND c.id = n.connector_id AND n.id IN (
        SELECT n.id FROM notifications n JOIN connectors c ON c.id = n.connector_id
        WHERE n.tenant_id = $4 AND n.status = 'PENDING' AND n.next_attempt_at <= now()
          AND (n.locked_until IS NULL OR n.locked_until <= now())
          AND (c.id = $5 OR ($5::uuid IS NULL AND c.next_send_at <= now() AND NOT c.type::text = ANY($3::text[])))
          AND (n.dedup_key IS NULL OR n.kind = 'FIRED' OR NOT EXISTS (
              SELECT 1 FROM notifications earlier
              WHERE earlier.tenant_id = $4 AND earlier.connector_id = n.connector_id
                AND earlier.dedup_key = n.dedup_key AND earlier.status = 'PENDING'
                AND (earlier.kind = 'FIRED' OR (earlier.kind = 'ACKNOWLEDGED' AND n.kind = 'RESOLVED'))))
        ORDER BY n.next_attempt_at, n.id
        LIMIT $1
        FOR NO KEY UPDATE OF n SKIP LOCKED)
    RETURNING n.id, n.tenant_id, n.kind, n.payload, n.rule_id, n.level, n.escalation_ids, n.dedup_key, n.attempts,
              n.created_at, c.id AS connector_id, c.name AS connector_name, c.config";

/// A paced connector's turn: its `next_send_at` moved on by its interval if it had passed.
const TAKE_TURN_SQL: &str = "UPDATE connectors SET next_send_at = now() + make_interval(secs => $2)
    WHERE id = $1 AND next_send_at <= now()";

/// Claims up to `batch` due notifications across the tenants, as
/// [`crate::db::notifications::claim`] does on one node: unpaced connectors give any number
/// (each tenant in turn, oldest due first), a paced one at most one per claim (from the
/// tenant whose notification for it is oldest), its `next_send_at` moved on.
pub async fn claim(
    pool: &PgPool,
    batch: i64,
    lease: Duration,
    pacing: &[(&str, Duration)],
) -> Result<Vec<Claimed>, sqlx::Error> {
    let paced_types: Vec<&str> = pacing.iter().map(|(kind, _)| *kind).collect();
    let due: Vec<(Uuid, Uuid, String)> = sqlx::query_as(DUE_SQL).fetch_all(pool).await?;
    let mut claimed = Vec::new();
    let mut tenants: Vec<Uuid> = Vec::new();
    for (tenant, _, kind) in &due {
        if !paced_types.contains(&kind.as_str()) && !tenants.contains(tenant) {
            tenants.push(*tenant);
        }
    }
    for tenant in tenants {
        let room = batch - claimed.len() as i64;
        if room <= 0 {
            break;
        }
        let rows = sqlx::query(CLAIM_TENANT_SQL)
            .bind(room)
            .bind(lease.as_secs_f64())
            .bind(&paced_types)
            .bind(tenant)
            .bind(None::<Uuid>)
            .fetch_all(pool)
            .await?;
        for row in &rows {
            claimed.push(decode(row, true)?);
        }
    }
    // The connectors' types (a tenant's claim may take connectors the read of who has
    // notifications due did not list: it is cut at 256 pairs).
    if !claimed.is_empty() {
        let ids: Vec<Uuid> = claimed.iter().map(|c| c.connector_id).collect();
        let types: Vec<(Uuid, String)> = sqlx::query_as("SELECT id, type::text FROM connectors WHERE id = ANY($1)")
            .bind(&ids)
            .fetch_all(pool)
            .await?;
        for c in claimed.iter_mut() {
            c.connector_type = types.iter().find(|t| t.0 == c.connector_id).map(|t| t.1.clone()).unwrap_or_default();
        }
    }
    let mut turns: Vec<Uuid> = Vec::new();
    for (tenant, connector, kind) in &due {
        let Some((_, interval)) = pacing.iter().find(|(paced, _)| *paced == kind.as_str()) else { continue };
        if turns.contains(connector) || claimed.len() as i64 >= batch {
            continue;
        }
        turns.push(*connector);
        let mut tx = pool.begin().await?;
        let turn = sqlx::query(TAKE_TURN_SQL).bind(connector).bind(interval.as_secs_f64()).execute(&mut *tx).await?;
        if turn.rows_affected() == 0 {
            continue;
        }
        let rows = sqlx::query(CLAIM_TENANT_SQL)
            .bind(1_i64)
            .bind(lease.as_secs_f64())
            .bind(&paced_types)
            .bind(tenant)
            .bind(connector)
            .fetch_all(&mut *tx)
            .await?;
        // Nothing left to claim (another replica took it): the turn is not spent.
        if rows.is_empty() {
            continue;
        }
        tx.commit().await?;
        for row in &rows {
            claimed.push(Claimed { connector_type: kind.clone(), ..decode(row, true)? });
        }
    }
    claimed.sort_by_key(|c| c.id);
    Ok(claimed)
}
