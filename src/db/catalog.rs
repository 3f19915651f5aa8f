//! Reads of the configuration the database holds: workflow templates and schemas.

use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

/// The active workflow definition matched by an order's `workflow_id` (template name, or
/// template id as text); the newest wins.
pub async fn workflow_definition(pool: &PgPool, workflow_id: &str) -> Result<Option<Value>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT workflow_definition FROM workflow_templates
         WHERE is_active AND (name = $1 OR id::text = $1)
         ORDER BY created_at DESC LIMIT 1",
    )
    .bind(workflow_id)
    .fetch_optional(pool)
    .await
}

/// Whether any active template gives a step `limits` (the limit gate resolves every claimed
/// item's step only then, or when agents or tenants are limited).
pub async fn any_step_limits(pool: &PgPool) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM workflow_templates WHERE is_active AND workflow_definition @? '$.steps.*.limits')",
    )
    .fetch_one(pool)
    .await
}

/// An active JSON Schema row for a document type.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SchemaRow {
    pub id: Uuid,
    pub name: String,
    pub version: String,
    pub definition: Value,
}

/// The newest active schema for a document type (the item type).
pub async fn active_schema(pool: &PgPool, document_type: &str) -> Result<Option<SchemaRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, name, version, schema_definition AS definition FROM schemas
         WHERE document_type = $1 AND is_active
         ORDER BY created_at DESC LIMIT 1",
    )
    .bind(document_type)
    .fetch_optional(pool)
    .await
}
