//! Executes one claimed item: validate content, resolve the route, run the agent under its
//! time limit, review the output, decide the next state. Produces a [`Completion`] for the
//! completer; never writes to the database itself.

pub use super::envelope::ItemContext;
use super::envelope::{check_output_size, content_value, envelope};
use super::evaluation::{self, Judged};
use super::review;
use super::review::AfterReject;
use crate::agent::{AgentError, Agents, ReviewView};
use crate::config::Settings;
use crate::db::claim::ClaimedItem;
use crate::db::reviews::Stage;
use crate::model::{AttemptStatus, Completion, Decision, ErrorCode, ErrorInfo, NextState, ReviewWrite};
use crate::panic::CatchUnwind;
use crate::policy::catalog::{Catalog, JSON_SCHEMA, RouteError, SchemaState};
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
    /// One PostgreSQL or a Citus cluster (`db::distributed`): which statements the engine runs.
    pub topology: crate::db::distributed::Topology,
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
    // An evaluation run (the output recorded, its judges to call) is recorded under its first
    // judge's agent, so the judges' costs and failures are theirs.
    let pending = context.as_ref().and_then(|c| c.review.clone());
    let evaluating = pending.as_ref().is_some_and(|p| p.stage == Stage::Evaluate);
    let agent_name = match &step {
        Ok(s) if evaluating => s
            .evaluators
            .iter()
            .find_map(|e| match e {
                Evaluator::Agent(j) => Some(j.agent.clone()),
                _ => None,
            })
            .unwrap_or_else(|| s.agent.clone()),
        Ok(s) => s.agent.clone(),
        Err(_) => crate::metrics::ROUTER_AGENT.to_owned(),
    };
    tracing::Span::current().record("agent", agent_name.as_str());
    let mut input = json!({ "agent": agent_name, "content_bytes": item.content_bytes,
                            "mem_docs": context.as_ref().map_or(0, |c| c.mem_docs.len()),
                            "dependencies": context.as_ref().map_or(0, |c| c.dependencies.len()) });
    // Progress, log lines and compute the agent reports while it runs (docs/agents.md).
    let reporter =
        crate::agent::Reporter::for_attempt(item.id, item.attempt, ctx.progress.as_ref().map(|p| p.sink.clone()));
    let finish = |input, attempt_status, output, error: Option<ErrorInfo>, evals, approval, next, judged| {
        completion(
            ctx,
            &reporter,
            judged,
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
            None,
        ));
    }
    let schema = schema.unwrap_or(SchemaState::Absent);

    let result: Result<Value, AgentError>;
    let mut timed_out = false;
    let mut evals = Vec::new();
    let mut approval: Option<crate::model::ApprovalRecord> = None;
    // The review's part: the output handed to the judges, or what a rejection does.
    let mut handed_over = false;
    let mut after = AfterReject::Reject;
    // The judges' usage reports, on an evaluation run.
    let mut judged: Option<Vec<Value>> = None;
    // The judge that failed, and the pause its agent asked for.
    let mut judge_failed: Option<(String, Option<std::time::Duration>)> = None;
    let revisions = pending.as_ref().map_or(0, |p| p.revision);

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
            if let Some(recorded) = pending.as_ref().filter(|p| p.stage == Stage::Evaluate) {
                let names: Vec<&str> = step.evaluators.iter().map(|e| e.name()).collect();
                input = json!({ "agent": agent_name, "evaluates": recorded.output_attempt_id,
                                "evaluators": names, "revision": recorded.revision });
                match evaluation::judge(ctx, &step, &request, &schema, &recorded.output, &stop).await {
                    Judged::LeaseLost => {
                        tracing::warn!("lease lost; evaluation abandoned");
                        return None;
                    }
                    Judged::Interrupted => {
                        let error = ErrorInfo {
                            code: ErrorCode::Interrupted,
                            message: "interrupted by shutdown; released to the queue".into(),
                        };
                        return Some(finish(
                            input,
                            AttemptStatus::Interrupted,
                            None,
                            Some(error),
                            vec![],
                            None,
                            NextState::Released { delay_ms: 0 },
                            Some(vec![]),
                        ));
                    }
                    Judged::Done { evals: found, usage } => {
                        evals = found;
                        judged = Some(usage);
                        result = Ok(recorded.output.clone());
                    }
                    Judged::Failed { error, usage, agent, pause } => {
                        tracing::warn!(error = %error, "an evaluator failed; the recorded output is kept");
                        judged = Some(usage);
                        result = Err(error);
                        judge_failed = Some((agent, pause));
                    }
                }
                if result.is_ok() {
                    let mut record = review::approve(&step.approval, &evals);
                    if record.decision == Decision::Rejected {
                        after = review::after_reject(step.revise.as_ref(), revisions, &mut record, &evals);
                    }
                    approval = Some(record);
                }
            } else {
                if let Some(sent_back) = pending.as_ref().filter(|p| p.stage == Stage::Revise) {
                    let review = ReviewView {
                        revision: sent_back.revision,
                        max_revisions: step
                            .revise
                            .as_ref()
                            .map_or(sent_back.revision, |r| r.max.max(sent_back.revision)),
                        previous_output: sent_back.output.clone(),
                        feedback: sent_back.feedback.as_array().cloned().unwrap_or_default(),
                    };
                    input["review"] = json!({ "revision": review.revision, "feedback": review.feedback });
                    request.review = Some(review);
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
                            vec![], None, NextState::Released { delay_ms: 0 }, None));
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
                    if step.has_judges() {
                        // Recorded first, judged by the next run: a crash from here on never
                        // makes the agent run again for an output it already gave.
                        handed_over = true;
                    } else {
                        evals = review::evaluate(&schema, &step.evaluators, output);
                        let mut record = review::approve(&step.approval, &evals);
                        if record.decision == Decision::Rejected {
                            after = review::after_reject(step.revise.as_ref(), revisions, &mut record, &evals);
                        }
                        approval = Some(record);
                    }
                }
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
        return Some(finish(input, AttemptStatus::Interrupted, None, Some(error), vec![], None, next, judged));
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
    let (mut attempt_status, mut next) = decision::next_state(&outcome, budget, backoff, fastrand::f64());
    // The review's own transitions (docs/review.md). A decision on an item with a pending
    // review settles it; a failure leaves it pending (the judges, or the revision, run again).
    let decided = matches!(outcome, Outcome::Succeeded(_));
    let review = if handed_over {
        (attempt_status, next) = (AttemptStatus::Completed, NextState::Evaluate);
        Some(ReviewWrite::Evaluate)
    } else {
        match after {
            AfterReject::Revise { revision, feedback } => {
                next = NextState::Revise;
                Some(ReviewWrite::Revise { revision, feedback })
            }
            AfterReject::DeadLetter => {
                next = NextState::DeadLetter { reason: crate::model::DeadLetterReason::RetriesExhausted };
                Some(ReviewWrite::Settled)
            }
            AfterReject::Escalate | AfterReject::Reject if decided && (pending.is_some() || revisions > 0) => {
                Some(ReviewWrite::Settled)
            }
            AfterReject::Escalate | AfterReject::Reject => None,
        }
    };
    // A 429 or 503 with Retry-After pauses the agent on every replica, not only this item.
    let pause = match (&outcome, error.as_ref().map(|e| e.code)) {
        (
            Outcome::Failed { retry_after: Some(after), .. },
            Some(ErrorCode::AgentRateLimited | ErrorCode::AgentUnavailable),
        ) => Some(after.as_millis().min(i64::MAX as u128) as i64),
        _ => None,
    };
    let mut done = finish(input, attempt_status, output, error, evals, approval, next, judged);
    done.report.agent_pause_ms = pause;
    if let Some((agent, pause)) = judge_failed {
        // The failure is the failing judge's, and so is the pause it asked for.
        done.agent = agent;
        done.report.agent_pause_ms = pause.map(|p| p.as_millis().min(i64::MAX as u128) as i64);
    }
    done.review = review;
    Some(done)
}

/// Most characters of an error message kept on the attempt (agents' bodies and stderr can be
/// long; the head says what happened).
const ERROR_KEEP_CHARS: usize = 8 * 1024;

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
    judged: Option<Vec<Value>>,
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
    // An evaluation run's output is the agent's, recorded before: its usage, logs and
    // artifacts were the agent's attempt's. This attempt's usage is the judges'.
    let own_output = if judged.is_some() { None } else { output.as_ref() };
    let usage = match &judged {
        Some(reports) if !reports.is_empty() => Some(json!({ "usage": { "costs": reports }, "progress": null })),
        Some(_) => None,
        None => own_output.and_then(|o| {
            let usage = o.get("usage").cloned();
            let progress = o.get("progress").cloned();
            (usage.is_some() || progress.is_some()).then(|| json!({ "usage": usage, "progress": progress }))
        }),
    };
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
        logs: crate::policy::report::logs(own_output, lines, reported.dropped),
        agent_pause_ms: None,
        artifacts: own_output.map(crate::policy::report::artifacts).unwrap_or_default(),
    };
    Completion {
        item_id: item.id,
        order_id: item.work_order_id,
        tenant_id: item.tenant_id,
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
        review: None,
    }
}
