//! What a template step asks of an output before it is approved: its evaluators (the JSON
//! Schema check by name, or built-in assertions on one value of the output) and its approval
//! policy (a fixed rule, or thresholds on the evaluators' combined score with a grey zone
//! for a person). Parsed and checked once per step by `policy::catalog`; run by
//! `worker::review`, which writes what they found.

use crate::config::PolicyKind;
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;

/// One evaluator of a step.
#[derive(Debug, Clone)]
pub enum Evaluator {
    /// By name: `json_schema`, or a name orderly does not know (which fails, saying so).
    Named(String),
    Assertion(Assertion),
    /// A configured agent asked to judge the output (docs/review.md).
    Agent(AgentJudge),
}

impl Evaluator {
    pub fn name(&self) -> &str {
        match self {
            Evaluator::Named(name) => name,
            Evaluator::Assertion(a) => &a.name,
            Evaluator::Agent(j) => &j.name,
        }
    }
}

/// An agent as an evaluator: it receives the envelope with `evaluate` set (the output, the
/// criteria) and answers `{"score": 0..1, "passed": bool, "reasons": [...]}`.
#[derive(Debug, Clone)]
pub struct AgentJudge {
    pub name: String,
    pub version: String,
    /// The configured agent that judges.
    pub agent: String,
    pub criteria: Option<String>,
    /// Its own time limit (else the agent's).
    pub timeout: Option<std::time::Duration>,
    /// Options for the judging agent's kind (an `llm` agent's prompts).
    pub llm: Option<std::sync::Arc<Value>>,
}

/// How many times a step's output may be sent back to its agent, and what happens to one
/// still rejected after the last revision.
#[derive(Debug, Clone, PartialEq)]
pub struct Revise {
    pub max: i32,
    pub then: AfterRevisions,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AfterRevisions {
    /// AWAITING_APPROVAL: a person decides.
    Human,
    /// FAILED with a dead letter (APPROVAL_REJECTED).
    DeadLetter,
}

/// The JSON shape of a step's `revise`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReviseDefinition {
    max: i32,
    #[serde(default = "dead_letter")]
    then: AfterRevisions,
}

fn dead_letter() -> AfterRevisions {
    AfterRevisions::DeadLetter
}

/// Most revisions a step may allow.
pub const MAX_REVISIONS: i32 = 10;

pub(crate) fn parse_revise(definition: ReviseDefinition) -> Result<Revise, String> {
    if !(1..=MAX_REVISIONS).contains(&definition.max) {
        return Err(format!("revise: max must be 1 to {MAX_REVISIONS}, not {}", definition.max));
    }
    Ok(Revise { max: definition.max, then: definition.then })
}

/// A check of one value of the output, found by a JSON pointer (RFC 6901; `""` is the
/// whole output).
#[derive(Debug, Clone)]
pub struct Assertion {
    pub name: String,
    pub version: String,
    pub pointer: String,
    pub check: Check,
}

#[derive(Debug, Clone)]
pub enum Check {
    Exists,
    Equals(Value),
    /// The value is a string this pattern matches (anywhere in it, unless anchored).
    Matches(regex::Regex),
    /// The value's length (characters of a string, elements of an array) is within bounds.
    Length {
        min: Option<usize>,
        max: Option<usize>,
    },
}

impl Check {
    fn describe(&self) -> String {
        match self {
            Check::Exists => "exists".into(),
            Check::Equals(v) => format!("equals {v}"),
            Check::Matches(re) => format!("matches /{}/", re.as_str()),
            Check::Length { min, max } => match (min, max) {
                (Some(a), Some(b)) => format!("length {a}..={b}"),
                (Some(a), None) => format!("length at least {a}"),
                (None, Some(b)) => format!("length at most {b}"),
                (None, None) => "length".into(),
            },
        }
    }
}

/// The outcome of one assertion: passed, and what it says about why.
pub fn check(assertion: &Assertion, output: &Value) -> (bool, String) {
    let found = output.pointer(&assertion.pointer);
    let what = format!("{} {}", shown_pointer(&assertion.pointer), assertion.check.describe());
    let passed = match (&assertion.check, found) {
        (_, None) => return (false, format!("{what}: nothing at {}", shown_pointer(&assertion.pointer))),
        (Check::Exists, Some(_)) => true,
        (Check::Equals(want), Some(v)) => v == want,
        (Check::Matches(re), Some(Value::String(s))) => re.is_match(s),
        (Check::Matches(_), Some(v)) => return (false, format!("{what}: the value is {}, not a string", kind(v))),
        (Check::Length { min, max }, Some(v)) => {
            let len = match v {
                Value::String(s) => s.chars().count(),
                Value::Array(a) => a.len(),
                other => return (false, format!("{what}: the value is {}, not a string or array", kind(other))),
            };
            return (
                min.is_none_or(|m| len >= m) && max.is_none_or(|m| len <= m),
                format!("{what}: the length is {len}"),
            );
        }
    };
    (passed, what)
}

fn shown_pointer(pointer: &str) -> &str {
    if pointer.is_empty() { "the output" } else { pointer }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// How a step turns its evaluators' results into one decision.
#[derive(Debug, Clone, PartialEq)]
pub enum Policy {
    Fixed(PolicyKind),
    Thresholds(Thresholds),
}

/// The evaluators' scores combined into one; at or above `pass_at` the output is approved,
/// below `fail_below` rejected, between the two a person decides.
#[derive(Debug, Clone, PartialEq)]
pub struct Thresholds {
    pub combine: Combine,
    /// Weight per evaluator name for `mean` (1 when not named).
    pub weights: BTreeMap<String, f64>,
    pub pass_at: f64,
    pub fail_below: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Combine {
    /// 1 when every evaluator passed, else 0.
    All,
    /// The weighted mean of the scores.
    Mean,
    /// The lowest score.
    Min,
}

impl Combine {
    pub fn as_str(self) -> &'static str {
        match self {
            Combine::All => "all",
            Combine::Mean => "mean",
            Combine::Min => "min",
        }
    }
}

/// The JSON shape of an evaluator in `workflow_definition.steps.<TYPE>.evaluators`: a name,
/// or an object naming one check, or an object naming an `agent`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(crate) enum EvaluatorDefinition {
    Named(String),
    Object(serde_json::Map<String, Value>),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentJudgeDefinition {
    name: String,
    #[serde(default = "first_version")]
    version: String,
    agent: String,
    criteria: Option<String>,
    #[serde(default, with = "humantime_serde")]
    timeout: Option<std::time::Duration>,
    llm: Option<Value>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AssertionDefinition {
    name: String,
    #[serde(default = "first_version")]
    version: String,
    pointer: String,
    exists: Option<bool>,
    equals: Option<Value>,
    matches: Option<String>,
    min_length: Option<usize>,
    max_length: Option<usize>,
}

fn first_version() -> String {
    "1".into()
}

/// The JSON shape of a step's `approval`: a fixed policy's name, or thresholds.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(crate) enum PolicyDefinition {
    Fixed(PolicyKind),
    Thresholds(ThresholdsDefinition),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ThresholdsDefinition {
    combine: Combine,
    #[serde(default)]
    weights: BTreeMap<String, f64>,
    pass_at: f64,
    fail_below: f64,
}

/// Checks a step's evaluators; errors say which one and why. `agents` says whether an
/// agent of that name is configured.
pub(crate) fn parse_evaluators(
    definitions: Vec<EvaluatorDefinition>,
    agents: &dyn Fn(&str) -> bool,
) -> Result<Vec<Evaluator>, String> {
    let mut names = std::collections::BTreeSet::new();
    let mut evaluators = Vec::with_capacity(definitions.len());
    for definition in definitions {
        let evaluator = match definition {
            EvaluatorDefinition::Named(name) => Evaluator::Named(name),
            EvaluatorDefinition::Object(map) => {
                let named = map.get("name").and_then(Value::as_str).unwrap_or("?").to_owned();
                let bad = |e: serde_json::Error| format!("evaluator `{named}`: {e}");
                if map.contains_key("agent") {
                    let j: AgentJudgeDefinition = serde_json::from_value(Value::Object(map)).map_err(bad)?;
                    Evaluator::Agent(parse_judge(j, agents)?)
                } else {
                    let a: AssertionDefinition = serde_json::from_value(Value::Object(map)).map_err(bad)?;
                    Evaluator::Assertion(parse_assertion(a)?)
                }
            }
        };
        if !names.insert(evaluator.name().to_owned()) {
            return Err(format!("evaluator `{}` is listed twice", evaluator.name()));
        }
        evaluators.push(evaluator);
    }
    Ok(evaluators)
}

fn parse_judge(j: AgentJudgeDefinition, agents: &dyn Fn(&str) -> bool) -> Result<AgentJudge, String> {
    if j.name.trim().is_empty() || j.name.len() > 64 {
        return Err("an evaluator's name must be 1 to 64 characters".into());
    }
    if !agents(&j.agent) {
        return Err(format!("evaluator `{}`: agent `{}` is not configured", j.name, j.agent));
    }
    if let Some(t) = j.timeout
        && (t.is_zero() || t > crate::model::MAX_INTERVAL)
    {
        return Err(format!("evaluator `{}`: timeout must be greater than 0 and at most a day", j.name));
    }
    if j.llm.as_ref().is_some_and(|v| !v.is_object()) {
        return Err(format!("evaluator `{}`: llm must be an object", j.name));
    }
    Ok(AgentJudge {
        name: j.name,
        version: j.version,
        agent: j.agent,
        criteria: j.criteria,
        timeout: j.timeout,
        llm: j.llm.map(std::sync::Arc::new),
    })
}

fn parse_assertion(a: AssertionDefinition) -> Result<Assertion, String> {
    let at = format!("evaluator `{}`", a.name);
    if a.name.trim().is_empty() || a.name.len() > 64 {
        return Err("an evaluator's name must be 1 to 64 characters".into());
    }
    if !(a.pointer.is_empty() || a.pointer.starts_with('/')) {
        return Err(format!("{at}: pointer `{}` must be empty or start with `/` (RFC 6901)", a.pointer));
    }
    let length = a.min_length.is_some() || a.max_length.is_some();
    let kinds = [a.exists.is_some(), a.equals.is_some(), a.matches.is_some(), length].iter().filter(|k| **k).count();
    if kinds != 1 {
        return Err(format!("{at}: needs exactly one of exists, equals, matches, or min_length/max_length"));
    }
    let check = if let Some(exists) = a.exists {
        if !exists {
            return Err(format!("{at}: `exists` can only be true"));
        }
        Check::Exists
    } else if let Some(value) = a.equals {
        Check::Equals(value)
    } else if let Some(pattern) = a.matches {
        Check::Matches(regex::Regex::new(&pattern).map_err(|e| format!("{at}: `matches` is not a pattern: {e}"))?)
    } else {
        if let (Some(min), Some(max)) = (a.min_length, a.max_length)
            && min > max
        {
            return Err(format!("{at}: min_length {min} is above max_length {max}"));
        }
        Check::Length { min: a.min_length, max: a.max_length }
    };
    Ok(Assertion { name: a.name, version: a.version, pointer: a.pointer, check })
}

/// Checks a step's approval policy against its evaluators.
pub(crate) fn parse_policy(definition: PolicyDefinition, evaluators: &[Evaluator]) -> Result<Policy, String> {
    let t = match definition {
        PolicyDefinition::Fixed(kind) => return Ok(Policy::Fixed(kind)),
        PolicyDefinition::Thresholds(t) => t,
    };
    let unit = |v: f64| v.is_finite() && (0.0..=1.0).contains(&v);
    if !unit(t.pass_at) || !unit(t.fail_below) {
        return Err("approval: pass_at and fail_below are scores between 0 and 1".into());
    }
    if t.fail_below > t.pass_at {
        return Err(format!("approval: fail_below {} is above pass_at {}", t.fail_below, t.pass_at));
    }
    for (name, weight) in &t.weights {
        if !evaluators.iter().any(|e| e.name() == name) {
            return Err(format!("approval: weights name `{name}`, which is not one of the step's evaluators"));
        }
        if !(weight.is_finite() && *weight > 0.0) {
            return Err(format!("approval: the weight of `{name}` must be above 0"));
        }
    }
    Ok(Policy::Thresholds(Thresholds {
        combine: t.combine,
        weights: t.weights,
        pass_at: t.pass_at,
        fail_below: t.fail_below,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn assertion(definition: Value) -> Result<Assertion, String> {
        let parsed: EvaluatorDefinition = serde_json::from_value(definition).unwrap();
        match parse_evaluators(vec![parsed], &|_| true)?.pop() {
            Some(Evaluator::Assertion(a)) => Ok(a),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn assertions_check_one_value_and_say_why() {
        let output = json!({"total": 12, "status": "ok", "summary": "Paid in full", "lines": [1, 2]});
        let cases = [
            (json!({"name": "a", "pointer": "/total", "exists": true}), true),
            (json!({"name": "a", "pointer": "/missing", "exists": true}), false),
            (json!({"name": "a", "pointer": "/status", "equals": "ok"}), true),
            (json!({"name": "a", "pointer": "/total", "equals": 13}), false),
            (json!({"name": "a", "pointer": "/summary", "matches": "^Paid"}), true),
            (json!({"name": "a", "pointer": "/total", "matches": "1"}), false),
            (json!({"name": "a", "pointer": "/summary", "min_length": 5, "max_length": 12}), true),
            (json!({"name": "a", "pointer": "/summary", "max_length": 4}), false),
            (json!({"name": "a", "pointer": "/lines", "min_length": 2}), true),
            (json!({"name": "a", "pointer": "", "exists": true}), true),
        ];
        for (definition, expected) in cases {
            let a = assertion(definition.clone()).unwrap();
            let (passed, why) = check(&a, &output);
            assert_eq!(passed, expected, "{definition}: {why}");
        }
        let (_, why) = check(&assertion(json!({"name": "a", "pointer": "/total", "matches": "1"})).unwrap(), &output);
        assert!(why.contains("a number, not a string"), "{why}");
    }

    #[test]
    fn bad_assertions_and_thresholds_are_refused_with_the_reason() {
        for (definition, says) in [
            (json!({"name": "a", "pointer": "total", "exists": true}), "must be empty or start with `/`"),
            (json!({"name": "a", "pointer": "/t", "exists": true, "equals": 1}), "exactly one of"),
            (json!({"name": "a", "pointer": "/t"}), "exactly one of"),
            (json!({"name": "a", "pointer": "/t", "matches": "("}), "not a pattern"),
            (json!({"name": "a", "pointer": "/t", "min_length": 3, "max_length": 2}), "above max_length"),
            (json!({"name": "a", "pointer": "/t", "exists": false}), "can only be true"),
        ] {
            let e = assertion(definition.clone()).unwrap_err();
            assert!(e.contains(says), "{definition}: {e}");
        }
        let evaluators = vec![Evaluator::Named("json_schema".into())];
        for (definition, says) in [
            (json!({"combine": "mean", "pass_at": 1.2, "fail_below": 0.5}), "between 0 and 1"),
            (json!({"combine": "mean", "pass_at": 0.5, "fail_below": 0.8}), "is above pass_at"),
            (json!({"combine": "mean", "pass_at": 0.8, "fail_below": 0.5, "weights": {"judge": 2}}), "not one of"),
        ] {
            let parsed: PolicyDefinition = serde_json::from_value(definition.clone()).unwrap();
            let e = parse_policy(parsed, &evaluators).unwrap_err();
            assert!(e.contains(says), "{definition}: {e}");
        }
    }
}
