//! After a successful execution: run the step's evaluators (writing `eval_results`) and let
//! the approval policy turn their results into one decision (`approval_events`).

use crate::config::PolicyKind;
use crate::model::{ApprovalRecord, Decision, EvalRecord};
use crate::policy::catalog::{JSON_SCHEMA, SchemaState};
use serde_json::{Value, json};

/// Most validation errors kept in an eval's metrics.
const MAX_REPORTED_ERRORS: usize = 10;

/// Runs each named evaluator over the output, with the schema the runner read before the
/// agent ran (so a database failure defers the run instead of deciding it). Unknown
/// evaluator names produce a failed eval saying so, rather than silently passing.
pub fn evaluate(schema: &SchemaState, evaluators: &[String], output: &Value) -> Vec<EvalRecord> {
    let mut records = Vec::with_capacity(evaluators.len());
    for name in evaluators {
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

/// The approval policy: a pure function of the eval results, versioned.
pub fn approve(policy: PolicyKind, evals: &[EvalRecord]) -> ApprovalRecord {
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
            let record = approve(policy, &evals);
            assert_eq!(record.decision, expected, "{policy:?}");
            assert!(record.approver_id.starts_with("policy:"));
            assert!(record.policy_version.ends_with("/1"));
        }
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
