//! `audit_logs`: one row per operator action, written in the action's transaction.

use serde_json::Value;
use uuid::Uuid;

pub(crate) async fn audit(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    actor: &str,
    action: &str,
    resource: (&str, Uuid),
    details: Value,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO audit_logs (user_id, action, resource_type, resource_id, details)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(actor)
    .bind(action)
    .bind(resource.0)
    .bind(resource.1)
    .bind(details)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
