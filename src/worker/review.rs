//! After a successful execution: run the step's evaluators (writing `eval_results`) and let
//! the approval policy turn their results into one decision (`approval_events`).

use crate::config::PolicyKind;
use crate::model::{ApprovalRecord, Decision, EvalRecord};
use crate::policy::catalog::{JSON_SCHEMA, SchemaState};
use crate::policy::evaluators::{self, AfterRevisions, Combine, Evaluator, Policy, Revise, Thresholds};
use serde_json::{Value, json};

/// Most validation errors kept in an eval's metrics.
const MAX_REPORTED_ERRORS: usize = 10;

/// Runs each named evaluator over the output, with the schema the runner read before the
/// agent ran (so a database failure defers the run instead of deciding it). Unknown
/// evaluator names produce a failed eval saying so, rather than silently passing.
pub fn evaluate(schema: &SchemaState, evaluators: &[Evaluator], output: &Value) -> Vec<EvalRecord> {
    let mut records = Vec::with_capacity(evaluators.len());
    for evaluator in evaluators {
        let name = match evaluator {
            // Agents judge in their own run (`super::evaluation`).
            Evaluator::Agent(_) => continue,
            Evaluator::Named(name) => name,
            Evaluator::Assertion(a) => {
                let (passed, why) = evaluators::check(a, output);
                records.push(EvalRecord {
                    evaluation_type: a.name.clone(),
                    score: if passed { 1.0 } else { 0.0 },
                    passed,
                    metrics: json!({ "version": a.version, "pointer": a.pointer, "check": why }),
                });
                continue;
            }
        };
        let record = match name.as_str() {
            JSON_SCHEMA => match schema {
                SchemaState::Ready(schema) => {
                    Some(schema_eval(&schema.name, &schema.version, &schema.validator, output))
                }
                // No active schema for this document type: nothing to validate against.
                SchemaState::Absent => None,
                SchemaState::Broken(message) => Some(EvalRecord {
                    evaluation_type: JSON_SCHEMA.into(),
                    score: 0.0,
                    passed: false,
                    metrics: json!({ "error": message }),
                }),
            },
            other => Some(EvalRecord {
                evaluation_type: other.to_owned(),
                score: 0.0,
                passed: false,
                metrics: json!({ "error": format!("unknown evaluator `{other}`") }),
            }),
        };
        records.extend(record);
    }
    records
}

/// JSON Schema validation: score 1 when valid, else 0; the errors go to the metrics.
pub fn schema_eval(name: &str, version: &str, validator: &jsonschema::Validator, output: &Value) -> EvalRecord {
    let errors: Vec<String> = validator.iter_errors(output).map(|e| format!("{}: {}", e.instance_path(), e)).collect();
    let passed = errors.is_empty();
    EvalRecord {
        evaluation_type: JSON_SCHEMA.into(),
        score: if passed { 1.0 } else { 0.0 },
        passed,
        metrics: json!({
            "schema": name,
            "version": version,
            "error_count": errors.len(),
            "errors": errors.into_iter().take(MAX_REPORTED_ERRORS).collect::<Vec<_>>(),
        }),
    }
}

/// What a review does with a rejected output when its step allows revisions.
#[derive(Debug, Clone, PartialEq)]
pub enum AfterReject {
    /// Reject as a step without revisions does (a retry within the budget, else a dead letter).
    Reject,
    /// Send it back to the agent as revision `revision` with this feedback.
    Revise { revision: i32, feedback: Value },
    /// Revisions are spent: a person decides.
    Escalate,
    /// Revisions are spent: dead-lettered.
    DeadLetter,
}

/// Decides what a rejection means for a step with `revise` after `revisions` revisions, and
/// rewrites the policy's record so it says so.
pub fn after_reject(
    revise: Option<&Revise>,
    revisions: i32,
    approval: &mut ApprovalRecord,
    evals: &[EvalRecord],
) -> AfterReject {
    let Some(revise) = revise else { return AfterReject::Reject };
    let said = approval.reason.clone().unwrap_or_else(|| "rejected".into());
    if revisions < revise.max {
        let revision = revisions + 1;
        approval.reason = Some(format!("{said}; sent back for revision {revision} of {}", revise.max));
        return AfterReject::Revise { revision, feedback: feedback(evals) };
    }
    match revise.then {
        AfterRevisions::Human => {
            approval.decision = Decision::Escalated;
            approval.reason = Some(format!("{said}; still rejected after {revisions} revisions: a person decides"));
            AfterReject::Escalate
        }
        AfterRevisions::DeadLetter => {
            approval.reason = Some(format!("{said}; still rejected after {revisions} revisions"));
            AfterReject::DeadLetter
        }
    }
}

/// The evaluators' findings as the agent's revision receives them (`review.feedback`):
/// each evaluator's name, score, whether it passed, and its reasons.
pub fn feedback(evals: &[EvalRecord]) -> Value {
    Value::Array(
        evals
            .iter()
            .map(|e| {
                let reasons = match (&e.metrics.get("reasons"), &e.metrics.get("check"), &e.metrics.get("errors")) {
                    (Some(r), _, _) => (*r).clone(),
                    (None, Some(check), _) => json!([check]),
                    (None, None, Some(errors)) => (*errors).clone(),
                    _ => json!([]),
                };
                json!({ "evaluator": e.evaluation_type, "score": e.score, "passed": e.passed, "reasons": reasons })
            })
            .collect(),
    )
}

/// The approval policy: a pure function of the eval results, versioned.
pub fn approve(policy: &Policy, evals: &[EvalRecord]) -> ApprovalRecord {
    match policy {
        Policy::Fixed(kind) => approve_fixed(*kind, evals),
        Policy::Thresholds(t) => approve_by_thresholds(t, evals),
    }
}

/// Thresholds: the combined score against `pass_at` and `fail_below`; the reason names the
/// score, how it was combined from which evaluators, and the threshold that decided.
fn approve_by_thresholds(t: &Thresholds, evals: &[EvalRecord]) -> ApprovalRecord {
    let score = match t.combine {
        _ if evals.is_empty() => 1.0,
        Combine::All => {
            if evals.iter().all(|e| e.passed) {
                1.0
            } else {
                0.0
            }
        }
        Combine::Min => evals.iter().map(|e| e.score).fold(1.0, f64::min),
        Combine::Mean => {
            let weight = |e: &EvalRecord| t.weights.get(&e.evaluation_type).copied().unwrap_or(1.0);
            let total: f64 = evals.iter().map(weight).sum();
            evals.iter().map(|e| weight(e) * e.score).sum::<f64>() / total
        }
    };
    let parts: Vec<String> = evals
        .iter()
        .map(|e| format!("{} {:.2}{}", e.evaluation_type, e.score, if e.passed { "" } else { " failed" }))
        .collect();
    let of = if parts.is_empty() { "no evaluator".to_owned() } else { parts.join(", ") };
    let (decision, why) = if score >= t.pass_at {
        (Decision::Approved, format!("at or above pass_at {:.2}", t.pass_at))
    } else if score < t.fail_below {
        (Decision::Rejected, format!("below fail_below {:.2}", t.fail_below))
    } else {
        (
            Decision::Escalated,
            format!("below pass_at {:.2} and at or above fail_below {:.2}: a person decides", t.pass_at, t.fail_below),
        )
    };
    ApprovalRecord {
        approver_id: "policy:thresholds".into(),
        decision,
        reason: Some(format!("score {score:.2} ({} of {of}) is {why}", t.combine.as_str())),
        policy_version: "thresholds/1".into(),
    }
}

fn approve_fixed(policy: PolicyKind, evals: &[EvalRecord]) -> ApprovalRecord {
    let failed: Vec<&str> = evals.iter().filter(|e| !e.passed).map(|e| e.evaluation_type.as_str()).collect();
    let (name, decision, reason) = match policy {
        PolicyKind::ApproveAll => {
            ("approve_all", Decision::Approved, Some("default policy approves every output".to_owned()))
        }
        PolicyKind::RequirePassingEvals if failed.is_empty() => ("require_passing_evals", Decision::Approved, None),
        PolicyKind::RequirePassingEvals => {
            ("require_passing_evals", Decision::Rejected, Some(format!("failed evaluators: {}", failed.join(", "))))
        }
        PolicyKind::EscalateOnFailure if failed.is_empty() => ("escalate_on_failure", Decision::Approved, None),
        PolicyKind::EscalateOnFailure => (
            "escalate_on_failure",
            Decision::Escalated,
            Some(format!("failed evaluators: {}; a human decides", failed.join(", "))),
        ),
    };
    ApprovalRecord { approver_id: format!("policy:{name}"), decision, reason, policy_version: format!("{name}/1") }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval(passed: bool) -> EvalRecord {
        EvalRecord {
            evaluation_type: JSON_SCHEMA.into(),
            score: if passed { 1.0 } else { 0.0 },
            passed,
            metrics: json!({}),
        }
    }

    #[test]
    fn policies_decide_from_evals() {
        let table = [
            (PolicyKind::ApproveAll, vec![eval(false)], Decision::Approved),
            (PolicyKind::ApproveAll, vec![], Decision::Approved),
            (PolicyKind::RequirePassingEvals, vec![eval(true)], Decision::Approved),
            (PolicyKind::RequirePassingEvals, vec![eval(true), eval(false)], Decision::Rejected),
            (PolicyKind::EscalateOnFailure, vec![eval(false)], Decision::Escalated),
            (PolicyKind::EscalateOnFailure, vec![], Decision::Approved),
        ];
        for (policy, evals, expected) in table {
            let record = approve(&Policy::Fixed(policy), &evals);
            assert_eq!(record.decision, expected, "{policy:?}");
            assert!(record.approver_id.starts_with("policy:"));
            assert!(record.policy_version.ends_with("/1"));
        }
    }

    fn scored(name: &str, score: f64) -> EvalRecord {
        EvalRecord { evaluation_type: name.into(), score, passed: score >= 0.5, metrics: json!({}) }
    }

    #[test]
    fn thresholds_pass_fail_and_send_the_grey_zone_to_a_person() {
        let t = |combine, weights: &[(&str, f64)]| {
            Policy::Thresholds(Thresholds {
                combine,
                weights: weights.iter().map(|(n, w)| (n.to_string(), *w)).collect(),
                pass_at: 0.8,
                fail_below: 0.5,
            })
        };
        let evals = [scored("judge", 0.6), scored("has_total", 1.0)];
        let table = [
            // mean 0.8: exactly pass_at passes.
            (t(Combine::Mean, &[]), &evals[..], Decision::Approved),
            // weighted 3:1 toward the judge: 0.7, the grey zone.
            (t(Combine::Mean, &[("judge", 3.0)]), &evals[..], Decision::Escalated),
            (t(Combine::Min, &[]), &evals[..], Decision::Escalated),
            // exactly fail_below is not below it.
            (t(Combine::Min, &[]), &[scored("judge", 0.5)][..], Decision::Escalated),
            (t(Combine::Min, &[]), &[scored("judge", 0.49)][..], Decision::Rejected),
            (t(Combine::All, &[]), &[scored("judge", 0.4), scored("x", 1.0)][..], Decision::Rejected),
            (t(Combine::All, &[]), &[scored("x", 1.0)][..], Decision::Approved),
            (t(Combine::Mean, &[]), &[][..], Decision::Approved),
        ];
        for (policy, evals, expected) in table {
            let record = approve(&policy, evals);
            assert_eq!(record.decision, expected, "{policy:?} {evals:?}: {:?}", record.reason);
            assert_eq!(record.policy_version, "thresholds/1");
        }
        let grey = approve(&t(Combine::Mean, &[("judge", 3.0)]), &evals);
        let reason = grey.reason.unwrap();
        assert!(reason.contains("score 0.70 (mean of judge 0.60, has_total 1.00)"), "{reason}");
        assert!(reason.contains("a person decides"), "{reason}");
    }

    #[test]
    fn schema_eval_scores_and_reports_errors() {
        let schema = json!({"type": "object", "required": ["total"], "properties": {"total": {"type": "number"}}});
        let validator = jsonschema::validator_for(&schema).unwrap();
        let good = schema_eval("invoice", "1", &validator, &json!({"total": 3}));
        assert!(good.passed && good.score == 1.0);
        let bad = schema_eval("invoice", "1", &validator, &json!({"total": "three"}));
        assert!(!bad.passed && bad.score == 0.0);
        assert_eq!(bad.metrics["error_count"], 1);
    }
}
