//! The review loop's table (`item_reviews`, migration 0037): what an item's review still has
//! to do. Read by the dispatcher for claimed items whose `review_pending` is set, written by
//! the completer with the attempt that decided it, and by a person's reject-with-revise
//! (`super::approvals`).

use crate::model::{Completion, ReviewWrite};
use serde_json::Value;
use sqlx::PgPool;
use std::collections::HashSet;
use uuid::Uuid;

/// What the next run of an item does instead of a plain run of its agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Evaluate the recorded output; the agent does not run.
    Evaluate,
    /// Run the agent with the output that was sent back and the feedback.
    Revise,
}

/// An item's pending review, as the runner needs it.
#[derive(Debug, Clone)]
pub struct PendingReview {
    pub work_item_id: Uuid,
    pub stage: Stage,
    /// The output to evaluate, or the one sent back for revision.
    pub output: Value,
    /// The attempt that produced `output` (none when a person sent it back).
    pub output_attempt_id: Option<Uuid>,
    /// Revisions so far; on stage REVISE, the number of the revision to run.
    pub revision: i32,
    pub feedback: Value,
}

#[derive(sqlx::FromRow)]
struct Row {
    work_item_id: Uuid,
    stage: Option<String>,
    output: sqlx::types::Json<Value>,
    output_attempt_id: Option<Uuid>,
    revision: i32,
    feedback: sqlx::types::Json<Value>,
}

/// The pending reviews of the given items (one statement per claim batch, only for items
/// claimed with `review_pending`). An item whose row is missing or settled has none.
pub async fn pending(pool: &PgPool, item_ids: &[Uuid]) -> Result<Vec<PendingReview>, sqlx::Error> {
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT work_item_id, stage, output, output_attempt_id, revision, feedback FROM item_reviews
         WHERE work_item_id = ANY($1) AND stage IS NOT NULL",
    )
    .bind(item_ids)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|r| {
            let stage = match r.stage.as_deref() {
                Some("EVALUATE") => Stage::Evaluate,
                Some("REVISE") => Stage::Revise,
                _ => return None,
            };
            Some(PendingReview {
                work_item_id: r.work_item_id,
                stage,
                output: r.output.0,
                output_attempt_id: r.output_attempt_id,
                revision: r.revision,
                feedback: r.feedback.0,
            })
        })
        .collect())
}

/// Records the reviews of the written completions of a batch, in the completer's
/// transaction. A settled review keeps its row (the revision count and the last output).
pub async fn record(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    batch: &[Completion],
    written: &HashSet<(Uuid, i32)>,
) -> Result<(), sqlx::Error> {
    let mut ids = Vec::new();
    let mut stages: Vec<Option<&str>> = Vec::new();
    let mut outputs: Vec<Option<&Value>> = Vec::new();
    let mut attempts = Vec::new();
    let mut revisions: Vec<Option<i32>> = Vec::new();
    let mut feedback: Vec<Option<&Value>> = Vec::new();
    for done in batch.iter().filter(|c| written.contains(&(c.item_id, c.attempt))) {
        let Some(review) = &done.review else { continue };
        let (stage, revision, said) = match review {
            ReviewWrite::Evaluate => (Some("EVALUATE"), None, None),
            ReviewWrite::Revise { revision, feedback } => (Some("REVISE"), Some(*revision), Some(feedback)),
            ReviewWrite::Settled => (None, None, None),
        };
        ids.push(done.item_id);
        stages.push(stage);
        outputs.push(done.output.as_ref());
        attempts.push(done.attempt_id);
        revisions.push(revision);
        feedback.push(said);
    }
    if ids.is_empty() {
        return Ok(());
    }
    // A settled review keeps the output it had; a hand-over to the evaluators keeps the
    // revision count and the feedback that asked for the revision.
    sqlx::query(
        "INSERT INTO item_reviews AS r (work_item_id, stage, output, output_attempt_id, revision, feedback)
         SELECT u.id, u.stage, coalesce(u.output, 'null'), u.attempt_id, coalesce(u.revision, 0),
                coalesce(u.feedback, '[]')
         FROM unnest($1::uuid[], $2::text[], $3::jsonb[], $4::uuid[], $5::int[], $6::jsonb[])
              AS u(id, stage, output, attempt_id, revision, feedback)
         ON CONFLICT (work_item_id) DO UPDATE SET
             stage = EXCLUDED.stage,
             output = CASE WHEN EXCLUDED.stage IS NULL THEN r.output ELSE EXCLUDED.output END,
             output_attempt_id = CASE WHEN EXCLUDED.stage IS NULL THEN r.output_attempt_id
                                      ELSE EXCLUDED.output_attempt_id END,
             revision = CASE WHEN EXCLUDED.stage = 'REVISE' THEN EXCLUDED.revision ELSE r.revision END,
             feedback = CASE WHEN EXCLUDED.stage = 'REVISE' THEN EXCLUDED.feedback ELSE r.feedback END,
             updated_at = now()",
    )
    .bind(&ids)
    .bind(&stages)
    .bind(&outputs)
    .bind(&attempts)
    .bind(&revisions)
    .bind(&feedback)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
