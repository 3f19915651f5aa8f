//! Executes one claimed item: validate content, resolve the route, run the agent under its
//! time limit, review the output, decide the next state. Produces a [`Completion`] for the
//! completer; never writes to the database itself.

use super::review;
use crate::agent::{
    AgentError, AgentRequest, Agents, AttemptView, ContextView, DependencyView, MemDocView, WorkItemView, WorkOrderView,
};
use crate::config::Settings;
use crate::db::claim::ClaimedItem;
use crate::db::dependencies::Input;
use crate::db::queue::MemDoc;
use crate::model::{AttemptStatus, Completion, Decision, ErrorCode, ErrorInfo, NextState};
use crate::panic::CatchUnwind;
use crate::policy::catalog::{Catalog, ContentFormat, JSON_SCHEMA, RouteError, SchemaState};
use crate::policy::decision::{self, Backoff, Budget, Outcome};
use crate::policy::evaluators::Evaluator;
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
    /// Where agents' progress goes, and what HTTP agents' callbacks need; `None` in tools
    /// that run agents without an engine.
    pub progress: Option<super::progress::ProgressHub>,
}

/// Why a running execution is being stopped from outside.
#[derive(Clone, Default)]
pub struct Stop {
    /// Clean shutdown past its grace period: release the item (INTERRUPTED).
    pub interrupt: CancellationToken,
    /// The lease is gone: write nothing, the rescuer owns the item now.
    pub lease_lost: CancellationToken,
}

/// Runs one item to a [`Completion`], or `None` when its lease was lost mid-run. Runs inside
/// the item's span (see the dispatcher), so every line it logs names the item, its order,
/// the attempt and the agent.
/// `context` is `None` when it could not be read: the run is then deferred, never made
/// without the context it should have had.
pub async fn run(ctx: &RunContext, item: ClaimedItem, context: Option<ItemContext>, stop: Stop) -> Option<Completion> {
    let started = Instant::now();
    let attempt_id = Uuid::now_v7();
    let settings = &ctx.settings;

    let step = ctx.catalog.resolve(&item.workflow_id, &item.item_type).await;
    let step_max = step.as_ref().ok().and_then(|s| s.max_attempts);
    let max_attempts = Budget::ceiling(item.max_attempts, step_max, settings.retry.max_attempts);
    let budget = Budget { used: item.attempt - item.attempt_base, max: max_attempts };
    let agent_name = step.as_ref().map(|s| s.agent.clone()).unwrap_or_else(|_| crate::metrics::ROUTER_AGENT.to_owned());
    tracing::Span::current().record("agent", agent_name.as_str());
    let mut input = json!({ "agent": agent_name, "content_bytes": item.content_bytes,
                            "mem_docs": context.as_ref().map_or(0, |c| c.mem_docs.len()),
                            "dependencies": context.as_ref().map_or(0, |c| c.dependencies.len()) });
    // Progress, log lines and compute the agent reports while it runs (docs/agents.md).
    let reporter =
        crate::agent::Reporter::for_attempt(item.id, item.attempt, ctx.progress.as_ref().map(|p| p.sink.clone()));
    let finish = |input, attempt_status, output, error: Option<ErrorInfo>, evals, approval, next| {
        completion(
            ctx,
            &reporter,
            &item,
            attempt_id,
            budget,
            started,
            input,
            agent_name.clone(),
            attempt_status,
            output,
            error,
            evals,
            approval,
            next,
        )
    };

    // Everything read from the database before the agent runs: a failed read defers the run.
    let schema = match &step {
        Ok(step) if step.evaluators.iter().any(|e| matches!(e, Evaluator::Named(n) if n == JSON_SCHEMA)) => {
            ctx.catalog.schema(&item.item_type).await
        }
        _ => Ok(SchemaState::Absent),
    };
    let unavailable = match (&step, &schema, &context) {
        (Err(e @ RouteError::Unavailable { .. }), _, _) | (_, Err(e), _) => Some(e.to_string()),
        (_, _, None) => Some("reading the item's mem_docs and dependencies failed".to_owned()),
        _ => None,
    };
    if let Some(why) = unavailable {
        let backoff = Backoff { base: settings.retry.backoff_base, max: settings.retry.backoff_max };
        let delay = backoff.delay(1, fastrand::f64());
        tracing::warn!(error = %why, retry_in = ?delay,
            "the database was unavailable while preparing the run; released, not counted");
        let error = ErrorInfo {
            code: ErrorCode::DatabaseUnavailable,
            message: format!("{why}; released to the queue, the attempt not counted"),
        };
        return Some(finish(
            input,
            AttemptStatus::Interrupted,
            None,
            Some(error),
            vec![],
            None,
            NextState::Released { delay_ms: delay.as_millis() as i64 },
        ));
    }
    let schema = schema.unwrap_or(SchemaState::Absent);

    let result: Result<Value, AgentError>;
    let mut timed_out = false;
    let mut evals = Vec::new();
    let mut approval = None;

    let prepared = step.map_err(|e| AgentError::permanent(e.code(), e.to_string())).and_then(|step| {
        let content = content_value(&item, step.content, settings.limits.max_content_bytes)?;
        let request = envelope(&item, content, context.unwrap_or_default(), attempt_id, max_attempts)?;
        Ok((step, request))
    });
    match prepared {
        Err(error) => result = Err(error),
        Ok((step, mut request)) => {
            request.report = reporter.clone();
            request.step_options = step.llm.clone();
            if let SchemaState::Ready(schema) = &schema {
                request.output_schema = Some(schema.definition.clone());
            }
            let agent = ctx.agents.get(&step.agent).expect("routes are validated against agents").clone();
            if agent.executor.takes_progress_callback() {
                request.progress = progress_callback(ctx, &item).await;
            }
            if item.content_bytes as usize <= INPUT_COPY_LIMIT {
                input["content"] = request.work_item.content.clone();
            }
            let timeout = step.timeout.unwrap_or(agent.timeout);
            // A panic in the agent's code fails this attempt only.
            let execution = CatchUnwind(agent.executor.execute(&request));
            tokio::select! {
                biased;
                _ = stop.lease_lost.cancelled() => {
                    tracing::warn!("lease lost; execution abandoned");
                    return None;
                }
                _ = stop.interrupt.cancelled() => {
                    return Some(finish(input, AttemptStatus::Interrupted, None, Some(ErrorInfo { code: ErrorCode::Interrupted,
                            message: "interrupted by shutdown; released to the queue".into() }),
                        vec![], None, NextState::Released { delay_ms: 0 }));
                }
                answer = tokio::time::timeout(timeout, execution) => match answer {
                    Ok(Ok(answer)) => result = answer.and_then(|output| {
                        check_output_size(&output, settings.limits.max_output_bytes)?;
                        Ok(output)
                    }),
                    Ok(Err(panic)) => {
                        tracing::error!(
                            panic = %panic, "agent panicked; the attempt fails");
                        result = Err(AgentError::retryable(ErrorCode::AgentPanicked,
                            format!("agent {} panicked: {panic}", step.agent)));
                    }
                    Err(_) => {
                        timed_out = true;
                        result = Err(AgentError::retryable(ErrorCode::AgentTimeout,
                            format!("agent {} did not answer within {}", step.agent, humantime::format_duration(timeout))));
                    }
                }
            }
            if let Ok(output) = &result {
                evals = review::evaluate(&schema, &step.evaluators, output);
                approval = Some(review::approve(&step.approval, &evals));
            }
        }
    }

    // This host ran out of file handles, memory or processes: released after a backoff, the
    // attempt not counted (as when the database was unavailable before the run).
    if let Err(AgentError::HostExhausted { message }) = &result {
        let backoff = Backoff { base: settings.retry.backoff_base, max: settings.retry.backoff_max };
        let delay = backoff.delay(1, fastrand::f64());
        tracing::warn!(error = %message, retry_in = ?delay,
            "this host ran out of a resource while running the item; released, not counted");
        let error = ErrorInfo {
            code: ErrorCode::HostResourcesExhausted,
            message: format!("{message}; released to the queue, the attempt not counted"),
        };
        let next = NextState::Released { delay_ms: delay.as_millis() as i64 };
        return Some(finish(input, AttemptStatus::Interrupted, None, Some(error), vec![], None, next));
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
                AgentError::HostExhausted { .. } => unreachable!("released above"),
            };
            (outcome, None, Some(ErrorInfo { code: e.code(), message: e.message().to_owned() }))
        }
    };
    let backoff = Backoff { base: settings.retry.backoff_base, max: settings.retry.backoff_max };
    let (attempt_status, next) = decision::next_state(&outcome, budget, backoff, fastrand::f64());
    // A 429 or 503 with Retry-After pauses the agent on every replica, not only this item.
    let pause = match (&outcome, error.as_ref().map(|e| e.code)) {
        (
            Outcome::Failed { retry_after: Some(after), .. },
            Some(ErrorCode::AgentRateLimited | ErrorCode::AgentUnavailable),
        ) => Some(after.as_millis().min(i64::MAX as u128) as i64),
        _ => None,
    };
    let mut done = finish(input, attempt_status, output, error, evals, approval, next);
    done.report.agent_pause_ms = pause;
    Some(done)
}

/// Most characters of an error message kept on the attempt (agents' bodies and stderr can be
/// long; the head says what happened).
const ERROR_KEEP_CHARS: usize = 8 * 1024;

/// The output limit for every agent kind (http and command stop reading at it; a plug-in's
/// answer is measured here), without building the serialized text.
fn check_output_size(output: &Value, limit: usize) -> Result<(), AgentError> {
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

/// The attempt's progress callback for HTTP agents, when the daemon has an admin server and
/// the signing key could be read (without it, the agent simply has no callback).
async fn progress_callback(ctx: &RunContext, item: &ClaimedItem) -> Option<crate::agent::ProgressCallback> {
    let hub = ctx.progress.as_ref()?;
    let url = hub.callback_url()?.to_owned();
    match hub.key().await {
        Ok(key) => Some(crate::agent::ProgressCallback {
            url,
            token: crate::policy::progress::token(key, item.id, item.attempt),
        }),
        Err(e) => {
            crate::telemetry::warn_limited("progress_key", "cannot read the progress key; no progress callback", &e);
            None
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn completion(
    ctx: &RunContext,
    reporter: &crate::agent::Reporter,
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
    let reported = reporter.take();
    // The output's usage, else what a failed call reported beside its error.
    let usage = usage.or_else(|| reported.usage.clone().map(|u| json!({ "usage": u, "progress": null })));
    let (mut costs, warnings) = usage
        .as_ref()
        .and_then(|u| u.get("usage"))
        .filter(|u| !u.is_null())
        .map(|u| crate::policy::costs::costs_and_warnings(u, &ctx.settings.prices))
        .unwrap_or_default();
    costs.extend(reported.compute.map(crate::policy::costs::from_compute).unwrap_or_default());
    let mut lines = reported.logs;
    lines.extend(warnings.into_iter().map(|message| crate::policy::report::LogLine {
        level: "WARN".into(),
        at: None,
        message,
    }));
    let report = crate::policy::report::RunReport {
        costs,
        logs: crate::policy::report::logs(output.as_ref(), lines, reported.dropped),
        agent_pause_ms: None,
        artifacts: output.as_ref().map(crate::policy::report::artifacts).unwrap_or_default(),
    };
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
        report,
        usage,
        error: error.map(|e| ErrorInfo { message: crate::model::printable(&e.message, ERROR_KEEP_CHARS), ..e }),
        evals,
        approval,
        next,
    }
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
}

fn envelope(
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
    let ItemContext { mem_docs, dependencies } = context;
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
