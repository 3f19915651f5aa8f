//! Run logs and artifacts (migration 0027): written by the completer with the attempts they
//! belong to, read by the item page and `orderly items logs`.

use super::distributed::BindTenant;
use crate::model::Completion;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

/// Writes the logs and artifacts of the written attempts of a batch, in the completer's
/// transaction: one statement each, for the whole batch. On a Citus cluster `tenant` names
/// the batch's one tenant, which every row carries.
pub async fn record<'a>(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    batch: impl IntoIterator<Item = &'a Completion>,
    written: &std::collections::HashSet<Uuid>,
    tenant: Option<Uuid>,
) -> Result<(), sqlx::Error> {
    let (mut attempt, mut item, mut line, mut level, mut at, mut message) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut a_attempt, mut a_item, mut position, mut name, mut kind, mut size, mut url) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for done in batch.into_iter().filter(|d| written.contains(&d.attempt_id)) {
        for (n, l) in done.report.logs.iter().enumerate() {
            attempt.push(done.attempt_id);
            item.push(done.item_id);
            line.push(n as i32 + 1);
            level.push(l.level.as_str());
            at.push(l.at);
            message.push(l.message.as_str());
        }
        for (n, a) in done.report.artifacts.iter().enumerate() {
            a_attempt.push(done.attempt_id);
            a_item.push(done.item_id);
            position.push(n as i32 + 1);
            name.push(a.name.as_str());
            kind.push(a.kind.as_deref());
            size.push(a.size);
            url.push(a.url.as_deref());
        }
    }
    if !attempt.is_empty() {
        let sql = match tenant {
            None => {
                "INSERT INTO run_logs (attempt_id, work_item_id, line, level, logged_at, message)
                     SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::int[], $4::text[], $5::timestamptz[], $6::text[])"
            }
            Some(_) => {
                "INSERT INTO run_logs (tenant_id, attempt_id, work_item_id, line, level, logged_at, message)
                 SELECT $7, * FROM unnest($1::uuid[], $2::uuid[], $3::int[], $4::text[], $5::timestamptz[], $6::text[])"
            }
        };
        sqlx::query(sql)
            .bind(&attempt)
            .bind(&item)
            .bind(&line)
            .bind(&level)
            .bind(&at)
            .bind(&message)
            .bind_tenant(tenant)
            .execute(&mut **tx)
            .await?;
    }
    if !a_attempt.is_empty() {
        let sql = match tenant {
            None => "INSERT INTO run_artifacts (attempt_id, work_item_id, position, name, type, size_bytes, url)
                     SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::int[], $4::text[], $5::text[], $6::bigint[], $7::text[])",
            Some(_) => {
                "INSERT INTO run_artifacts (tenant_id, attempt_id, work_item_id, position, name, type, size_bytes, url)
                 SELECT $8, * FROM unnest($1::uuid[], $2::uuid[], $3::int[], $4::text[], $5::text[], $6::bigint[], $7::text[])"
            }
        };
        sqlx::query(sql)
            .bind(&a_attempt)
            .bind(&a_item)
            .bind(&position)
            .bind(&name)
            .bind(&kind)
            .bind(&size)
            .bind(&url)
            .bind_tenant(tenant)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

/// One log line as on-call reads it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct LogRow {
    pub attempt_number: Option<i32>,
    pub line: i32,
    pub level: String,
    pub logged_at: Option<DateTime<Utc>>,
    pub message: String,
}

/// One artifact reference.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct ArtifactRow {
    pub attempt_number: Option<i32>,
    pub name: String,
    #[sqlx(rename = "type")]
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub size_bytes: Option<i64>,
    pub url: Option<String>,
}

/// An item's log lines and artifacts, attempt by attempt (the last `limit` lines).
/// On a Citus cluster the item's tenant is read first, and the attempts are joined on it.
pub async fn of_item(pool: &PgPool, item: Uuid, limit: i64) -> Result<(Vec<LogRow>, Vec<ArtifactRow>), sqlx::Error> {
    let tenant = match super::distributed::placement(pool, super::distributed::Row::Item, item).await? {
        super::distributed::Placement::Single => None,
        super::distributed::Placement::Tenant(tenant) => Some(tenant),
        super::distributed::Placement::Missing => return Ok((Vec::new(), Vec::new())),
    };
    let logs = sqlx::query_as(super::distributed::scoped(
        "SELECT * FROM (SELECT a.attempt_number, l.line, l.level, l.logged_at, l.message
                        FROM run_logs l LEFT JOIN attempts a ON a.id = l.attempt_id{t:a}
                        WHERE l.work_item_id = $1{t:l} ORDER BY a.attempt_number DESC NULLS LAST, l.line DESC LIMIT $2) t
         ORDER BY attempt_number NULLS FIRST, line",
        tenant,
        3,
    ))
    .bind(item)
    .bind(limit)
    .bind_tenant(tenant)
    .fetch_all(pool)
    .await?;
    let artifacts = sqlx::query_as(super::distributed::scoped(
        "SELECT a.attempt_number, r.name, r.type, r.size_bytes, r.url
         FROM run_artifacts r LEFT JOIN attempts a ON a.id = r.attempt_id{t:a}
         WHERE r.work_item_id = $1{t:r} ORDER BY a.attempt_number, r.position",
        tenant,
        2,
    ))
    .bind(item)
    .bind_tenant(tenant)
    .fetch_all(pool)
    .await?;
    Ok((logs, artifacts))
}

/// Writes the latest progress of running attempts, fenced: only an item still PROCESSING at
/// that attempt takes it. Returns how many were written.
/// `topology` is the database's layout, read once by the caller.
pub async fn write_progress(
    pool: &PgPool,
    topology: super::distributed::Topology,
    updates: &[crate::agent::ProgressUpdate],
) -> Result<u64, sqlx::Error> {
    if topology == super::distributed::Topology::Single {
        return write_progress_of(pool, updates, None).await;
    }
    let ids: Vec<Uuid> = updates.iter().map(|u| u.item).collect();
    // On a Citus cluster: the items' tenants first (one read across the shards), then each
    // tenant's updates on its node.
    let tenants: Vec<(Uuid, Uuid)> =
        sqlx::query_as("SELECT id, tenant_id FROM work_items WHERE id = ANY($1)").bind(&ids).fetch_all(pool).await?;
    let mut by_tenant: std::collections::BTreeMap<Uuid, Vec<crate::agent::ProgressUpdate>> = Default::default();
    for update in updates {
        if let Some((_, tenant)) = tenants.iter().find(|(id, _)| *id == update.item) {
            by_tenant.entry(*tenant).or_default().push(update.clone());
        }
    }
    let mut written = 0;
    for (tenant, group) in by_tenant {
        written += write_progress_of(pool, &group, Some(tenant)).await?;
    }
    Ok(written)
}

/// [`write_progress`] on one PostgreSQL, or for one tenant's items on a cluster.
async fn write_progress_of(
    pool: &PgPool,
    updates: &[crate::agent::ProgressUpdate],
    tenant: Option<Uuid>,
) -> Result<u64, sqlx::Error> {
    let ids: Vec<Uuid> = updates.iter().map(|u| u.item).collect();
    let attempts: Vec<i32> = updates.iter().map(|u| u.attempt).collect();
    let percents: Vec<f64> = updates.iter().map(|u| u.progress.percent).collect();
    let messages: Vec<Option<&str>> = updates.iter().map(|u| u.progress.message.as_deref()).collect();
    sqlx::query(super::distributed::scoped(
        "INSERT INTO run_progress ({tc}work_item_id, attempt, percent, message, updated_at)
         SELECT {tv}u.id, u.attempt, u.percent, u.message, now()
         FROM unnest($1::uuid[], $2::int[], $3::float8[], $4::text[]) AS u(id, attempt, percent, message)
         JOIN work_items w ON w.id = u.id{t:w} AND w.attempt = u.attempt AND w.status = 'PROCESSING'
         ON CONFLICT ({tc}work_item_id) DO UPDATE
         SET attempt = excluded.attempt, percent = excluded.percent, message = excluded.message,
             updated_at = excluded.updated_at
         WHERE run_progress.attempt <= excluded.attempt",
        tenant,
        5,
    ))
    .bind(&ids)
    .bind(&attempts)
    .bind(&percents)
    .bind(&messages)
    .bind_tenant(tenant)
    .execute(pool)
    .await
    .map(|r| r.rows_affected())
}

/// Whether `attempt` is the item's current attempt and still running (a progress callback
/// for anything else is refused).
pub async fn attempt_running(pool: &PgPool, item: Uuid, attempt: i32) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM work_items WHERE id = $1 AND attempt = $2 AND status = 'PROCESSING')",
    )
    .bind(item)
    .bind(attempt)
    .fetch_one(pool)
    .await
}

/// The key that signs progress callbacks (migration 0029).
pub async fn progress_key(pool: &PgPool) -> Result<Vec<u8>, sqlx::Error> {
    let key: String =
        sqlx::query_scalar("SELECT key FROM orderly_keys WHERE name = 'progress'").fetch_one(pool).await?;
    Ok(key.into_bytes())
}

/// An item's last progress report.
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow)]
pub struct ProgressRow {
    pub attempt: i32,
    pub percent: f64,
    pub message: Option<String>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

pub async fn progress_of(pool: &PgPool, item: Uuid) -> Result<Option<ProgressRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT attempt, percent::float8 AS percent, message, updated_at FROM run_progress WHERE work_item_id = $1",
    )
    .bind(item)
    .fetch_optional(pool)
    .await
}
