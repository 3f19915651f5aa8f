//! The envelope an agent receives for a claimed item (docs/agents.md), built by the runner
//! from the claim and the context the dispatcher read; and the output checks every kind
//! shares. Pure: no I/O.

use crate::agent::{
    AgentError, AgentRequest, AttemptView, ContextView, DependencyView, MemDocView, WorkItemView, WorkOrderView,
};
use crate::db::claim::ClaimedItem;
use crate::db::dependencies::Input;
use crate::db::queue::MemDoc;
use crate::db::reviews::PendingReview;
use crate::model::ErrorCode;
use crate::policy::catalog::ContentFormat;
use serde_json::Value;
use uuid::Uuid;

/// The output limit for every agent kind (http and command stop reading at it; a plug-in's
/// answer is measured here), without building the serialized text.
pub fn check_output_size(output: &Value, limit: usize) -> Result<(), AgentError> {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    serde_json::to_writer(&mut count, output)
        .map_err(|e| AgentError::permanent(ErrorCode::AgentBadOutput, format!("output cannot be serialized: {e}")))?;
    crate::agent::check_output_size(count.0, limit)
}

/// The content as the agent receives it, or the permanent error that makes it unusable.
pub fn content_value(item: &ClaimedItem, format: ContentFormat, limit: usize) -> Result<Value, AgentError> {
    let refused = |e: crate::policy::content::ContentRefused| AgentError::permanent(e.code, e.message);
    let Some(text) = item.content.as_deref() else {
        // Not loaded: larger than the limit.
        return Err(refused(
            crate::policy::content::check_size(item.content_bytes.max(0) as usize, limit).err().unwrap_or_else(|| {
                crate::policy::content::ContentRefused {
                    code: ErrorCode::ContentTooLarge,
                    message: format!("content is {} bytes; limits.max_content_bytes is {limit}", item.content_bytes),
                }
            }),
        ));
    };
    crate::policy::content::parse(text, format, limit).map_err(refused)
}

/// What the dispatcher reads for a claimed item before it runs.
#[derive(Debug, Default)]
pub struct ItemContext {
    pub mem_docs: Vec<MemDoc>,
    /// Its dependencies with their results (db::dependencies::inputs).
    pub dependencies: Vec<Input>,
    /// Its pending review, when the claim said it has one (db::reviews::pending).
    pub review: Option<PendingReview>,
}

pub fn envelope(
    item: &ClaimedItem,
    content: Value,
    context: ItemContext,
    attempt_id: Uuid,
    max_attempts: i32,
) -> Result<AgentRequest, AgentError> {
    let context_invalid = |what: String, e: serde_json::Error| {
        AgentError::permanent(ErrorCode::ContextInvalid, format!("{what} cannot be given to an agent as JSON: {e}"))
    };
    let metadata = serde_json::from_str(&item.order_metadata)
        .map_err(|e| context_invalid(format!("work order {} metadata", item.work_order_id), e))?;
    let ItemContext { mem_docs, dependencies, review: _ } = context;
    let dependencies = dependencies
        .into_iter()
        .map(|d| {
            let result = d
                .result
                .map(|text| serde_json::from_str(&text))
                .transpose()
                .map_err(|e| context_invalid(format!("dependency {}'s result", d.depends_on_id), e))?;
            Ok(DependencyView {
                id: d.depends_on_id,
                item_type: d.item_type,
                kind: d.kind,
                status: d.status.as_str().to_owned(),
                result,
                result_omitted: d.omitted.then_some(true),
                result_bytes: d.omitted.then_some(d.result_bytes).flatten(),
            })
        })
        .collect::<Result<_, AgentError>>()?;
    let mem_docs = mem_docs
        .into_iter()
        .map(|d| {
            let metadata = serde_json::from_str(&d.metadata)
                .map_err(|e| context_invalid(format!("a {} mem_doc's metadata", d.doc_type), e))?;
            Ok(MemDocView { doc_type: d.doc_type, content: d.content, metadata })
        })
        .collect::<Result<_, AgentError>>()?;
    Ok(AgentRequest {
        work_item: WorkItemView {
            id: item.id,
            item_type: item.item_type.clone(),
            content,
            priority: item.priority.as_str().to_owned(),
            created_at: item.created_at,
        },
        work_order: WorkOrderView {
            id: item.work_order_id,
            workflow_id: item.workflow_id.clone(),
            tenant_id: item.tenant_id,
            created_by: item.created_by,
            priority: item.order_priority.as_str().to_owned(),
            metadata,
        },
        attempt: AttemptView { id: attempt_id, number: item.attempt, max_attempts },
        context: ContextView { mem_docs, dependencies },
        progress: None,
        report: Default::default(),
        review: None,
        evaluate: None,
        step_options: None,
        output_schema: None,
    })
}
