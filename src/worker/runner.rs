//! Executes one claimed item: validate content, resolve the route, run the agent under its
//! time limit, review the output, decide the next state. Produces a [`Completion`] for the
//! completer; never writes to the database itself.

use super::catalog::{Catalog, ContentFormat, RouteError};
use super::decision::{self, Backoff, Budget, Outcome};
use super::review;
use crate::agent::{
    AgentError, AgentRequest, Agents, AttemptView, ContextView, MemDocView, WorkItemView, WorkOrderView,
};
use crate::config::Settings;
use crate::db::queue::{ClaimedItem, MemDoc};
use crate::model::{AttemptStatus, Completion, Decision, ErrorCode, ErrorInfo, NextState};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Content above this size is not copied into `attempts.input` (only its size is).
const INPUT_COPY_LIMIT: usize = 16 * 1024;

/// What every runner shares.
pub struct RunContext {
    pub agents: Agents,
    pub catalog: Arc<Catalog>,
    pub settings: Arc<Settings>,
    pub worker_id: String,
}

/// Why a running execution is being stopped from outside.
#[derive(Clone, Default)]
pub struct Stop {
    /// Clean shutdown past its grace period: release the item (INTERRUPTED).
    pub interrupt: CancellationToken,
    /// The lease is gone: write nothing, the rescuer owns the item now.
    pub lease_lost: CancellationToken,
}

/// Runs one item to a [`Completion`], or `None` when its lease was lost mid-run.
pub async fn run(ctx: &RunContext, item: ClaimedItem, mem_docs: Vec<MemDoc>, stop: Stop) -> Option<Completion> {
    let started = Instant::now();
    let attempt_id = Uuid::now_v7();
    let settings = &ctx.settings;

    let step = ctx.catalog.resolve(&item.workflow_id, &item.item_type).await;
    let max_attempts = item
        .max_attempts
        .or_else(|| step.as_ref().ok().and_then(|s| s.max_attempts))
        .unwrap_or(settings.retry.max_attempts);
    let budget = Budget { used: item.attempt - item.attempt_base, max: max_attempts };
    let agent_name = step.as_ref().map(|s| s.agent.clone()).unwrap_or_else(|_| "router".to_owned());
    let mut input = json!({ "agent": agent_name, "content_bytes": item.content_bytes, "mem_docs": mem_docs.len() });

    let result: Result<Value, AgentError>;
    let mut timed_out = false;
    let mut evals = Vec::new();
    let mut approval = None;

    let prepared = step.map_err(route_error).and_then(|step| {
        let content = content_value(&item, step.content, settings.limits.max_content_bytes)?;
        Ok((step, content))
    });
    match prepared {
        Err(error) => result = Err(error),
        Ok((step, content)) => {
            if item.content_bytes as usize <= INPUT_COPY_LIMIT {
                input["content"] = content.clone();
            }
            let agent = ctx.agents.get(&step.agent).expect("routes are validated against agents").clone();
            let timeout = step.timeout.unwrap_or(agent.timeout);
            let request = envelope(&item, content, mem_docs, attempt_id, max_attempts);
            tokio::select! {
                biased;
                _ = stop.lease_lost.cancelled() => {
                    tracing::warn!(work_item.id = %item.id, attempt = item.attempt, "lease lost; execution abandoned");
                    return None;
                }
                _ = stop.interrupt.cancelled() => {
                    return Some(completion(ctx, &item, attempt_id, budget, started, input, agent_name,
                        AttemptStatus::Interrupted, None, Some(ErrorInfo { code: ErrorCode::Interrupted,
                            message: "interrupted by shutdown; released to the queue".into() }),
                        vec![], None, NextState::Released));
                }
                answer = tokio::time::timeout(timeout, agent.executor.execute(&request)) => match answer {
                    Ok(answer) => result = answer,
                    Err(_) => {
                        timed_out = true;
                        result = Err(AgentError::retryable(ErrorCode::AgentTimeout,
                            format!("agent {} did not answer within {}", step.agent, humantime::format_duration(timeout))));
                    }
                }
            }
            if let Ok(output) = &result {
                evals = review::evaluate(&ctx.catalog, &item.item_type, &step.evaluators, output).await;
                approval = Some(review::approve(step.approval, &evals));
            }
        }
    }

    let (outcome, output, error) = match result {
        Ok(output) => {
            let decision = approval.as_ref().map_or(Decision::Approved, |a| a.decision);
            let error = (decision == Decision::Rejected).then(|| ErrorInfo {
                code: ErrorCode::ApprovalRejected,
                message: approval.as_ref().and_then(|a| a.reason.clone()).unwrap_or_else(|| "rejected".into()),
            });
            (Outcome::Succeeded(decision), Some(output), error)
        }
        Err(e) => {
            let outcome = match &e {
                _ if timed_out => Outcome::TimedOut,
                AgentError::Retryable { retry_after, .. } => {
                    Outcome::Failed { retryable: true, retry_after: *retry_after }
                }
                AgentError::Permanent { .. } => Outcome::Failed { retryable: false, retry_after: None },
            };
            (outcome, None, Some(ErrorInfo { code: e.code(), message: e.message().to_owned() }))
        }
    };
    let backoff = Backoff { base: settings.retry.backoff_base, max: settings.retry.backoff_max };
    let (attempt_status, next) = decision::next_state(&outcome, budget, backoff, fastrand::f64());
    Some(completion(
        ctx,
        &item,
        attempt_id,
        budget,
        started,
        input,
        agent_name,
        attempt_status,
        output,
        error,
        evals,
        approval,
        next,
    ))
}

#[allow(clippy::too_many_arguments)]
fn completion(
    ctx: &RunContext,
    item: &ClaimedItem,
    attempt_id: Uuid,
    budget: Budget,
    started: Instant,
    input: Value,
    agent: String,
    attempt_status: AttemptStatus,
    output: Option<Value>,
    error: Option<ErrorInfo>,
    evals: Vec<crate::model::EvalRecord>,
    approval: Option<crate::model::ApprovalRecord>,
    next: NextState,
) -> Completion {
    let usage = output.as_ref().and_then(|o| {
        let usage = o.get("usage").cloned();
        let progress = o.get("progress").cloned();
        (usage.is_some() || progress.is_some()).then(|| json!({ "usage": usage, "progress": progress }))
    });
    Completion {
        item_id: item.id,
        order_id: item.work_order_id,
        item_type: item.item_type.clone(),
        attempt: item.attempt,
        attempt_id,
        attempts_used: budget.used,
        agent,
        worker_id: ctx.worker_id.clone(),
        started_at: item.claimed_at,
        duration_ms: started.elapsed().as_millis().min(i32::MAX as u128) as i32,
        input,
        attempt_status,
        output,
        usage,
        error,
        evals,
        approval,
        next,
    }
}

fn route_error(e: RouteError) -> AgentError {
    AgentError::permanent(e.code, e.message)
}

/// The content as the agent receives it, or the permanent error that makes it unusable.
pub fn content_value(item: &ClaimedItem, format: ContentFormat, limit: usize) -> Result<Value, AgentError> {
    let Some(text) = item.content.as_deref() else {
        return Err(AgentError::permanent(
            ErrorCode::ContentTooLarge,
            format!("content is {} bytes; limits.max_content_bytes is {limit}", item.content_bytes),
        ));
    };
    if text.trim().is_empty() {
        return Err(AgentError::permanent(ErrorCode::ContentEmpty, "content is empty"));
    }
    match format {
        ContentFormat::Text => Ok(Value::String(text.to_owned())),
        ContentFormat::Json => serde_json::from_str(text).map_err(|e| {
            AgentError::permanent(ErrorCode::ContentInvalidJson, format!("content is not valid JSON: {e}"))
        }),
    }
}

fn envelope(
    item: &ClaimedItem,
    content: Value,
    mem_docs: Vec<MemDoc>,
    attempt_id: Uuid,
    max_attempts: i32,
) -> AgentRequest {
    AgentRequest {
        work_item: WorkItemView {
            id: item.id,
            item_type: item.item_type.clone(),
            content,
            priority: item.priority.clone(),
            created_at: item.created_at,
        },
        work_order: WorkOrderView {
            id: item.work_order_id,
            workflow_id: item.workflow_id.clone(),
            tenant_id: item.tenant_id,
            created_by: item.created_by,
            priority: item.order_priority.clone(),
            metadata: item.order_metadata.clone(),
        },
        attempt: AttemptView { id: attempt_id, number: item.attempt, max_attempts },
        context: ContextView {
            mem_docs: mem_docs
                .into_iter()
                .map(|d| MemDocView { doc_type: d.doc_type, content: d.content, metadata: d.metadata })
                .collect(),
        },
    }
}
