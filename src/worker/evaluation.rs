//! An evaluation run: the step's evaluators over an output the agent already produced and
//! the completer recorded (`item_reviews` stage EVALUATE). The built-in evaluators run here;
//! each agent evaluator is called with the item's envelope and `evaluate` set, under its own
//! time limit, and its answer becomes an eval record. The agent is not run again: a judge
//! that fails is retried as a judge, on the recorded output. Called by the runner; writes
//! nothing itself.

use super::review;
use super::runner::{RunContext, Stop};
use crate::agent::{AgentError, AgentRequest, EvaluateView};
use crate::model::{ErrorCode, EvalRecord};
use crate::panic::CatchUnwind;
use crate::policy::catalog::{SchemaState, Step};
use crate::policy::evaluators::{AgentJudge, Evaluator};
use serde_json::{Value, json};

/// How an evaluation run ended.
pub enum Judged {
    /// Every evaluator answered; the judges' usage reports (one per judge that sent one).
    Done {
        evals: Vec<EvalRecord>,
        usage: Vec<Value>,
    },
    /// A judge failed (`EVALUATOR_FAILED`); the usage of those that answered before it, the
    /// failing judge's agent, and how long that agent asked to be left alone (a 429 or 503
    /// with Retry-After: the agent is paused on every replica, as when it runs as an agent).
    Failed {
        error: AgentError,
        usage: Vec<Value>,
        agent: String,
        pause: Option<std::time::Duration>,
    },
    LeaseLost,
    Interrupted,
}

/// Runs the step's evaluators, in the order the step lists them, over `output`.
pub async fn judge(
    ctx: &RunContext,
    step: &Step,
    base: &AgentRequest,
    schema: &SchemaState,
    output: &Value,
    stop: &Stop,
) -> Judged {
    let mut evals = Vec::with_capacity(step.evaluators.len());
    let mut usage = Vec::new();
    for evaluator in &step.evaluators {
        let Evaluator::Agent(judge) = evaluator else {
            evals.extend(review::evaluate(schema, std::slice::from_ref(evaluator), output));
            continue;
        };
        let Some(agent) = ctx.agents.get(&judge.agent) else {
            let error = failed(judge, AgentError::permanent(ErrorCode::UnknownAgent, "the agent is not configured"));
            return Judged::Failed { error, usage, agent: judge.agent.clone(), pause: None };
        };
        let mut request = base.clone();
        request.evaluate = Some(EvaluateView {
            evaluator: judge.name.clone(),
            version: judge.version.clone(),
            criteria: judge.criteria.clone(),
            output: output.clone(),
        });
        request.step_options = judge.llm.clone();
        request.output_schema = None;
        request.progress = None;
        request.review = None;
        let timeout = judge.timeout.unwrap_or(agent.timeout);
        let call = CatchUnwind(agent.executor.execute(&request));
        let answer = tokio::select! {
            biased;
            _ = stop.lease_lost.cancelled() => return Judged::LeaseLost,
            _ = stop.interrupt.cancelled() => return Judged::Interrupted,
            answer = tokio::time::timeout(timeout, call) => answer,
        };
        let answer = match answer {
            Ok(Ok(answer)) => answer,
            Ok(Err(panic)) => Err(AgentError::retryable(ErrorCode::AgentPanicked, format!("panicked: {panic}"))),
            Err(_) => Err(AgentError::retryable(
                ErrorCode::AgentTimeout,
                format!("did not answer within {}", humantime::format_duration(timeout)),
            )),
        };
        let record = answer.and_then(|answer| {
            if let Some(u) = answer.get("usage").filter(|u| !u.is_null()) {
                usage.push(u.clone());
            }
            verdict(judge, &answer)
        });
        match record {
            Ok(record) => evals.push(record),
            Err(e) => {
                let pause = match &e {
                    AgentError::Retryable {
                        code: ErrorCode::AgentRateLimited | ErrorCode::AgentUnavailable,
                        retry_after,
                        ..
                    } => *retry_after,
                    _ => None,
                };
                return Judged::Failed { error: failed(judge, e), usage, agent: judge.agent.clone(), pause };
            }
        }
    }
    Judged::Done { evals, usage }
}

/// A judge's failure as the item records it: `EVALUATOR_FAILED`, naming the evaluator, its
/// agent and what went wrong; retryable when the judge's own error was.
fn failed(judge: &AgentJudge, error: AgentError) -> AgentError {
    let message = format!(
        "evaluator `{}` (agent `{}`): {} [{}]; the agent's output is kept and will be evaluated again",
        judge.name,
        judge.agent,
        error.message(),
        error.code()
    );
    match error {
        AgentError::Retryable { retry_after, .. } => {
            AgentError::Retryable { code: ErrorCode::EvaluatorFailed, message, retry_after }
        }
        AgentError::Permanent { .. } => AgentError::permanent(
            ErrorCode::EvaluatorFailed,
            message.replace("will be evaluated again", "is kept for a replay"),
        ),
        host @ AgentError::HostExhausted { .. } => host,
    }
}

/// A judge's answer as an eval record: `score` between 0 and 1 is required; `passed`
/// defaults to a score of at least 0.5; `reasons` is a list of strings (or one string).
/// Anything else is a garbled answer, retried like a failed call.
pub fn verdict(judge: &AgentJudge, answer: &Value) -> Result<EvalRecord, AgentError> {
    let preview = || {
        let text = answer.to_string();
        crate::model::printable(&text, 200)
    };
    let score = answer.get("score").and_then(Value::as_f64).filter(|s| (0.0..=1.0).contains(s)).ok_or_else(|| {
        AgentError::retryable(
            ErrorCode::AgentBadOutput,
            format!("answered without a `score` between 0 and 1: {}", preview()),
        )
    })?;
    let passed = match answer.get("passed") {
        None | Some(Value::Null) => score >= 0.5,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(AgentError::retryable(
                ErrorCode::AgentBadOutput,
                format!("answered a `passed` that is not true or false: {}", preview()),
            ));
        }
    };
    let reasons: Vec<String> = match answer.get("reasons") {
        None | Some(Value::Null) => vec![],
        Some(Value::String(s)) => vec![crate::model::printable(s, 2000)],
        Some(Value::Array(items)) => {
            items.iter().take(20).map(|r| crate::model::printable(r.as_str().unwrap_or(&r.to_string()), 2000)).collect()
        }
        Some(_) => {
            return Err(AgentError::retryable(
                ErrorCode::AgentBadOutput,
                format!("answered `reasons` that are not a list of strings: {}", preview()),
            ));
        }
    };
    Ok(EvalRecord {
        evaluation_type: judge.name.clone(),
        score,
        passed,
        metrics: json!({ "version": judge.version, "agent": judge.agent, "reasons": reasons }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn judge() -> AgentJudge {
        AgentJudge {
            name: "judge".into(),
            version: "2".into(),
            agent: "critic".into(),
            criteria: None,
            timeout: None,
            llm: None,
        }
    }

    #[test]
    fn a_judges_answer_becomes_an_eval_or_a_retryable_garble() {
        let ok = verdict(&judge(), &json!({"score": 0.7, "reasons": ["clear", "short"]})).unwrap();
        assert!(ok.passed && ok.score == 0.7);
        assert_eq!(ok.metrics["reasons"], json!(["clear", "short"]));
        assert_eq!(ok.metrics["version"], "2");
        let low = verdict(&judge(), &json!({"score": 0.9, "passed": false, "reasons": "tone"})).unwrap();
        assert!(!low.passed);
        assert_eq!(low.metrics["reasons"], json!(["tone"]));
        for garbage in
            [json!({}), json!({"score": 1.5}), json!({"score": "high"}), json!({"score": 0.5, "passed": "yes"})]
        {
            let e = verdict(&judge(), &garbage).unwrap_err();
            assert!(matches!(e, AgentError::Retryable { .. }), "{garbage}: {e:?}");
        }
        let e = failed(&judge(), AgentError::permanent(ErrorCode::AgentRejected, "HTTP 401"));
        assert_eq!(e.code(), ErrorCode::EvaluatorFailed);
        assert!(e.message().contains("evaluator `judge` (agent `critic`): HTTP 401"), "{}", e.message());
    }
}
