//! The demo's fixtures: its catalog (a schema, two workflow templates), its upstream INSERTs,
//! and the counts its progress bar and summary show.

use crate::model::{AttemptStatus, DeadLetterReason};
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

/// The demo's catalog: a JSON Schema for INVOICE outputs and two workflow templates.
pub async fn seed_demo_catalog(
    pool: &PgPool,
    invoice_schema: Value,
    invoice_review: Value,
    legacy_reports: Value,
    judged_tickets: Value,
) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("INSERT INTO schemas (name, version, document_type, schema_definition) VALUES ('invoice-extraction', '1', 'INVOICE', $1)")
        .bind(invoice_schema)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO workflow_templates (name, description, document_type, workflow_definition)
         VALUES ('invoice-review', 'invoices must pass their schema', 'INVOICE', $1),
                ('legacy-reports', 'reports through the legacy agent', 'STATUS_REPORT', $2),
                ('default', 'tickets judged by a second agent, revised once', 'TICKET', $3)",
    )
    .bind(invoice_review)
    .bind(legacy_reports)
    .bind(judged_tickets)
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

/// The demo's SLA: a webhook connector to the demo's own on-call sink, and a rule that
/// STATUS_REPORT items finish within `after_ms` (its slow agent breaches it).
pub async fn seed_demo_sla(pool: &PgPool, sink_url: &str, after_ms: i64) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO connectors (name, type, config, tenant_id)
         VALUES ('demo-oncall', 'API', jsonb_build_object('url', $1::text, 'secret', 'whsec_ZGVtby1zZWNyZXQ=',
                 'allow_private', true), '00000000-0000-0000-0000-000000000000')",
    )
    .bind(sink_url)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "WITH r AS (INSERT INTO sla_rules (name, clock, item_type)
                    VALUES ('status reports finish quickly', 'TIME_TO_FINISH', 'STATUS_REPORT') RETURNING id)
         INSERT INTO sla_levels (rule_id, level, after, connectors)
         SELECT id, 1, $1 * interval '1 millisecond', '{demo-oncall}'::text[] FROM r",
    )
    .bind(after_ms as f64)
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

/// The demo's schedule: a heartbeat ticket every 2 seconds while the demo runs.
pub async fn seed_demo_schedule(pool: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO schedules (name, cron, timezone, tenant_id, created_by, items)
         VALUES ('demo heartbeat', '*/2 * * * * *', 'UTC', '00000000-0000-0000-0000-000000000000',
                 '00000000-0000-0000-0000-000000000000',
                 '[{\"type\": \"TICKET\", \"content\": {\"subject\": \"heartbeat at {{slot}}\"}}]')",
    )
    .execute(pool)
    .await
    .map(|_| ())
}

/// The orders the demo's schedule made, and how many of them completed.
pub async fn demo_schedule(pool: &PgPool) -> Result<(i64, i64), sqlx::Error> {
    sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE o.status = 'COMPLETED') FROM work_orders o
         JOIN schedules s ON s.id = o.schedule_id WHERE s.name = 'demo heartbeat'",
    )
    .fetch_one(pool)
    .await
}

/// What the demo's SLA did: escalations by status, notifications by status.
pub async fn demo_sla(pool: &PgPool) -> Result<(Vec<(String, i64)>, Vec<(String, i64)>), sqlx::Error> {
    let escalations =
        sqlx::query_as("SELECT status::text, count(*) FROM escalations GROUP BY 1 ORDER BY 1").fetch_all(pool).await?;
    let notifications =
        sqlx::query_as("SELECT kind || ' ' || status::text, count(*) FROM notifications GROUP BY 1 ORDER BY 1")
            .fetch_all(pool)
            .await?;
    Ok((escalations, notifications))
}

/// Notifications not yet delivered or failed.
pub async fn pending_notifications(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM notifications WHERE status = 'PENDING'").fetch_one(pool).await
}

/// Inserts an order and its items exactly as an upstream would (two plain INSERTs).
pub async fn insert_order_sql(
    pool: &PgPool,
    workflow: &str,
    priority: &str,
    items: &[(&str, String)],
) -> Result<Uuid, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let order: Uuid = sqlx::query_scalar(
        "INSERT INTO work_orders (workflow_id, tenant_id, created_by, priority)
         VALUES ($1, gen_random_uuid(), gen_random_uuid(), $2::priority) RETURNING id",
    )
    .bind(workflow)
    .bind(priority)
    .fetch_one(&mut *tx)
    .await?;
    for (item_type, content) in items {
        sqlx::query("INSERT INTO work_items (work_order_id, type, content) VALUES ($1, $2::work_item_type, $3)")
            .bind(order)
            .bind(item_type)
            .bind(content)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(order)
}

#[derive(Debug, Default, sqlx::FromRow)]
pub struct DemoProgress {
    pub completed: i64,
    pub failed: i64,
    pub awaiting: i64,
    pub queued_now: i64,
    pub retrying: i64,
    pub running: i64,
}

pub async fn demo_progress(pool: &PgPool) -> Result<DemoProgress, sqlx::Error> {
    sqlx::query_as(
        "SELECT count(*) FILTER (WHERE status = 'COMPLETED') AS completed,
                count(*) FILTER (WHERE status = 'FAILED') AS failed,
                count(*) FILTER (WHERE status = 'AWAITING_APPROVAL') AS awaiting,
                count(*) FILTER (WHERE status = 'QUEUED' AND attempt = 0) AS queued_now,
                count(*) FILTER (WHERE status = 'QUEUED' AND attempt > 0) AS retrying,
                count(*) FILTER (WHERE status = 'PROCESSING') AS running
         FROM work_items",
    )
    .fetch_one(pool)
    .await
}

#[derive(Debug, Default, sqlx::FromRow)]
pub struct DemoSummary {
    pub items: i64,
    pub orders: i64,
    pub completed: i64,
    pub awaiting: i64,
    pub retried: i64,
    pub dead_lettered: i64,
    pub attempts: i64,
    pub evals_passed: i64,
    pub evals_failed: i64,
    pub approved: i64,
    pub rejected: i64,
    pub orders_completed: i64,
    pub orders_failed: i64,
    /// (error code or `?`, reason, count), most frequent first.
    #[sqlx(skip)]
    pub dead_letter_codes: Vec<(String, DeadLetterReason, i64)>,
    /// (status, error code, count).
    #[sqlx(skip)]
    pub attempt_outcomes: Vec<(AttemptStatus, Option<String>, i64)>,
}

pub async fn demo_summary(pool: &PgPool) -> Result<DemoSummary, sqlx::Error> {
    let mut summary: DemoSummary = sqlx::query_as(
        "SELECT (SELECT count(*) FROM work_items) AS items,
                (SELECT count(*) FROM work_orders) AS orders,
                (SELECT count(*) FROM work_items WHERE status = 'COMPLETED') AS completed,
                (SELECT count(*) FROM work_items WHERE status = 'AWAITING_APPROVAL') AS awaiting,
                (SELECT count(*) FROM work_items WHERE attempt > 1) AS retried,
                (SELECT count(*) FROM dead_letters) AS dead_lettered,
                (SELECT count(*) FROM attempts) AS attempts,
                (SELECT count(*) FROM eval_results WHERE passed) AS evals_passed,
                (SELECT count(*) FROM eval_results WHERE NOT passed) AS evals_failed,
                (SELECT count(*) FROM approval_events WHERE decision = 'APPROVED') AS approved,
                (SELECT count(*) FROM approval_events WHERE decision = 'REJECTED') AS rejected,
                (SELECT count(*) FROM work_orders WHERE status = 'COMPLETED') AS orders_completed,
                (SELECT count(*) FROM work_orders WHERE status = 'FAILED') AS orders_failed",
    )
    .fetch_one(pool)
    .await?;
    summary.dead_letter_codes = sqlx::query_as(
        "SELECT coalesce(error_code, '?') AS code, reason::text AS reason, count(*) AS n FROM dead_letters GROUP BY 1, 2 ORDER BY 3 DESC",
    )
    .fetch_all(pool)
    .await?;
    summary.attempt_outcomes = sqlx::query_as(
        "SELECT status::text AS status, error_code, count(*) AS n FROM attempts GROUP BY 1, 2 ORDER BY 1, 3 DESC",
    )
    .fetch_all(pool)
    .await?;
    Ok(summary)
}

/// The priced spend per agent: (agent, amount rounded to the cent's hundredth, currency,
/// attempts).
pub async fn demo_spend(pool: &PgPool) -> Result<Vec<(String, String, String, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT agent_id, round(sum(amount), 4)::text, currency::text, count(DISTINCT attempt_id)
         FROM cost_entries WHERE amount IS NOT NULL GROUP BY 1, 3 ORDER BY 1, 3",
    )
    .fetch_all(pool)
    .await
}

/// The judged tickets: (passed at the first judgement, passed after a revision, held for a
/// person).
pub async fn demo_review(pool: &PgPool) -> Result<(i64, i64, i64), sqlx::Error> {
    sqlx::query_as(
        "SELECT count(*) FILTER (WHERE w.status = 'COMPLETED' AND coalesce(r.revision, 0) = 0),
                count(*) FILTER (WHERE w.status = 'COMPLETED' AND r.revision > 0),
                count(*) FILTER (WHERE w.status = 'AWAITING_APPROVAL')
         FROM work_items w LEFT JOIN item_reviews r ON r.work_item_id = w.id
         WHERE EXISTS (SELECT 1 FROM eval_results e WHERE e.work_item_id = w.id AND e.evaluation_type = 'tone')",
    )
    .fetch_one(pool)
    .await
}

/// Items whose agents reported progress while they ran.
pub async fn demo_progress_reports(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM run_progress").fetch_one(pool).await
}
