//! Routing and evaluation configuration, read through the db layer and cached briefly:
//! workflow template steps (per order `workflow_id` and item type) over config routes, and
//! compiled JSON Schemas per document type. Edits in the database apply within `TTL`.

use crate::config::Settings;
use crate::db;
use crate::model::ErrorCode;
use crate::policy::evaluators::{
    Evaluator, EvaluatorDefinition, Policy, PolicyDefinition, Revise, ReviseDefinition, parse_evaluators, parse_policy,
    parse_revise,
};
use crate::policy::limits::AgentLimit;
use serde::Deserialize;
use serde_json::Value;
use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a template or schema read from the database is reused.
pub const TTL: Duration = Duration::from_secs(5);

/// How an item's content is handed to the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ContentFormat {
    /// The content must be JSON; anything else is CONTENT_INVALID_JSON.
    #[default]
    Json,
    /// The content is passed as a JSON string, whatever it holds.
    Text,
}

/// The resolved step for one item: which agent, with which overrides.
#[derive(Debug, Clone)]
pub struct Step {
    pub agent: String,
    pub timeout: Option<Duration>,
    pub max_attempts: Option<i32>,
    pub evaluators: Vec<Evaluator>,
    pub approval: Policy,
    pub content: ContentFormat,
    /// The step's own limits (`"limits"` in the template): kept besides its agent's.
    pub limit: Option<AgentLimit>,
    /// The step's options for its agent's kind (the `llm` key: prompts, parameters), handed
    /// to the agent as `AgentRequest::step_options`.
    pub llm: Option<Arc<Value>>,
    /// How often a rejected output may go back to the agent with feedback.
    pub revise: Option<Revise>,
}

impl Step {
    /// Whether an agent judges this step's outputs: then the output is recorded first and
    /// evaluated by the next run (docs/review.md).
    pub fn has_judges(&self) -> bool {
        self.judge_agents().next().is_some()
    }

    /// The agents that judge this step's outputs, in the order of its evaluators.
    pub fn judge_agents(&self) -> impl Iterator<Item = &str> {
        self.evaluators.iter().filter_map(|e| match e {
            Evaluator::Agent(j) => Some(j.agent.as_str()),
            _ => None,
        })
    }
}

/// A step's `"limits"`: the slot and rate limits of an agent (a circuit is the agent's own).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct StepLimits {
    max_in_flight: Option<u32>,
    rate: Option<String>,
    burst: Option<u32>,
}

/// The JSON shape of one step in `workflow_definition.steps.<TYPE>`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct StepDefinition {
    agent: Option<String>,
    #[serde(default, with = "humantime_serde")]
    timeout: Option<Duration>,
    max_attempts: Option<i32>,
    evaluators: Option<Vec<EvaluatorDefinition>>,
    approval: Option<PolicyDefinition>,
    content: Option<ContentFormat>,
    /// The steps (item types) this one waits for in its order (BLOCKS edges, made by the
    /// database when the items are inserted: migration 0023). Read here only to be checked.
    #[serde(default)]
    needs: Vec<String>,
    limits: Option<StepLimits>,
    llm: Option<Value>,
    revise: Option<ReviseDefinition>,
}

#[derive(Debug, Clone, Deserialize)]
struct WorkflowDefinition {
    #[serde(default)]
    steps: HashMap<String, StepDefinition>,
}

/// The evaluator every step runs unless it lists its own.
pub const JSON_SCHEMA: &str = "json_schema";

/// Why an item's step or schema could not be resolved. The variant decides what happens
/// to the item: a database that cannot be read defers the run (never fails it); a
/// configuration that cannot route it is permanent.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// Reading the catalog failed (connection lost, restart, pool timeout): retryable.
    #[error("reading {what} failed: {source}")]
    Unavailable {
        what: String,
        #[source]
        source: sqlx::Error,
    },
    /// No route, an unknown agent, an invalid template: retrying cannot help.
    #[error("{message}")]
    Invalid { code: ErrorCode, message: String },
}

impl RouteError {
    /// The stable error code recorded on the attempt.
    pub fn code(&self) -> ErrorCode {
        match self {
            RouteError::Unavailable { .. } => ErrorCode::DatabaseUnavailable,
            RouteError::Invalid { code, .. } => *code,
        }
    }

    fn invalid(code: ErrorCode, message: String) -> Self {
        RouteError::Invalid { code, message }
    }

    /// A failed read: a refusal of the stored value itself (a template the driver cannot
    /// decode) is as permanent as an invalid one; anything else is the database's state.
    fn read(what: String, source: sqlx::Error) -> Self {
        if db::is_refusal(&source) {
            RouteError::Invalid {
                code: ErrorCode::WorkflowInvalid,
                message: format!("{what} cannot be read: {source}"),
            }
        } else {
            RouteError::Unavailable { what, source }
        }
    }
}

/// The JSON Schema an item type's output is validated against.
#[derive(Clone)]
pub enum SchemaState {
    /// No active schema for this document type: nothing to validate against.
    Absent,
    Ready(Arc<CompiledSchema>),
    /// The active schema does not compile (or cannot be read): the evaluator fails, visibly.
    Broken(String),
}

/// A compiled schema and its identity (for eval metrics).
pub struct CompiledSchema {
    pub name: String,
    pub version: String,
    /// The schema as written, for agents that ask their model for output of this shape.
    pub definition: Arc<Value>,
    pub validator: jsonschema::Validator,
}

type Cached<T> = (Instant, T);

pub struct Catalog {
    pool: PgPool,
    settings: Arc<Settings>,
    /// Parsed once per read, shared, not copied per item: a template can be large and every
    /// item reads it.
    workflows: Mutex<HashMap<String, Cached<Option<Arc<Parsed>>>>>,
    schemas: Mutex<HashMap<String, Cached<SchemaState>>>,
}

impl Catalog {
    pub fn new(pool: PgPool, settings: Arc<Settings>) -> Self {
        Catalog { pool, settings, workflows: Mutex::default(), schemas: Mutex::default() }
    }

    /// The step for an item: the workflow template's step for its type, else the config
    /// route. No route is a permanent error naming the type.
    pub async fn resolve(&self, workflow_id: &str, item_type: &str) -> Result<Step, RouteError> {
        let parsed = self
            .workflow(workflow_id)
            .await
            .map_err(|e| RouteError::read(format!("workflow template `{workflow_id}`"), e))?;
        resolve_parsed(parsed.as_deref(), workflow_id, item_type, &self.settings)
    }

    async fn workflow(&self, workflow_id: &str) -> Result<Option<Arc<Parsed>>, sqlx::Error> {
        if let Some((at, parsed)) = self.workflows.lock().unwrap().get(workflow_id)
            && at.elapsed() < TTL
        {
            return Ok(parsed.clone());
        }
        let value = db::catalog::workflow_definition(&self.pool, workflow_id).await?;
        let parsed = value.map(|value| Arc::new(parse(&value)));
        self.workflows.lock().unwrap().insert(workflow_id.to_owned(), (Instant::now(), parsed.clone()));
        Ok(parsed)
    }

    /// The active schema for a document type, compiled. A schema that does not compile is
    /// [`SchemaState::Broken`] (the evaluator then fails, visibly); a failed read is an error.
    pub async fn schema(&self, document_type: &str) -> Result<SchemaState, RouteError> {
        if let Some((at, value)) = self.schemas.lock().unwrap().get(document_type)
            && at.elapsed() < TTL
        {
            return Ok(value.clone());
        }
        let state = match db::catalog::active_schema(&self.pool, document_type).await {
            Err(e) if db::is_refusal(&e) => {
                SchemaState::Broken(format!("the schema for {document_type} cannot be read: {e}"))
            }
            Err(e) => {
                return Err(RouteError::Unavailable { what: format!("the schema for {document_type}"), source: e });
            }
            Ok(None) => SchemaState::Absent,
            Ok(Some(row)) => match jsonschema::validator_for(&row.definition) {
                Ok(validator) => SchemaState::Ready(Arc::new(CompiledSchema {
                    name: row.name,
                    version: row.version,
                    validator,
                    definition: Arc::new(row.definition),
                })),
                Err(e) => SchemaState::Broken(format!("schema {} {} does not compile: {e}", row.name, row.version)),
            },
        };
        self.schemas.lock().unwrap().insert(document_type.to_owned(), (Instant::now(), state.clone()));
        Ok(state)
    }
}

/// A workflow template as read: its steps, or why they could not be read (a template that
/// does not parse fails each of its items, visibly, until it is fixed).
type Parsed = Result<WorkflowDefinition, String>;

fn parse(definition: &Value) -> Parsed {
    WorkflowDefinition::deserialize(definition).map_err(|e| e.to_string())
}

/// Pure step resolution, template step first, config route second: [`Catalog::resolve`] for
/// a template given as JSON (`None`: no template).
pub fn resolve_step(
    definition: Option<&Value>,
    workflow_id: &str,
    item_type: &str,
    settings: &Settings,
) -> Result<Step, RouteError> {
    let parsed = definition.map(parse);
    resolve_parsed(parsed.as_ref(), workflow_id, item_type, settings)
}

fn resolve_parsed(
    parsed: Option<&Parsed>,
    workflow_id: &str,
    item_type: &str,
    settings: &Settings,
) -> Result<Step, RouteError> {
    let step: Option<StepDefinition> = match parsed {
        None => None,
        Some(Err(e)) => {
            return Err(RouteError::invalid(
                ErrorCode::WorkflowInvalid,
                format!("workflow template `{workflow_id}` is invalid: {e}"),
            ));
        }
        Some(Ok(workflow)) => workflow.steps.get(item_type).cloned(),
    };
    let step = step.unwrap_or(StepDefinition {
        agent: None,
        timeout: None,
        max_attempts: None,
        evaluators: None,
        approval: None,
        content: None,
        needs: Vec::new(),
        limits: None,
        llm: None,
        revise: None,
    });
    if step.needs.iter().any(|need| need == item_type) {
        return Err(RouteError::invalid(
            ErrorCode::WorkflowInvalid,
            format!("workflow template `{workflow_id}` step {item_type} needs itself"),
        ));
    }
    let agent = step.agent.clone().or_else(|| settings.routes.get(item_type).cloned()).ok_or_else(|| {
        // Route keys match the type exactly as the database spells it.
        let near = settings.routes.keys().find(|k| k.eq_ignore_ascii_case(item_type) && k.as_str() != item_type);
        let hint = near.map(|k| format!(" (the route `{k}` differs only in case; keys match exactly)")).unwrap_or_default();
        RouteError::invalid(
            ErrorCode::NoRoute,
            format!(
                "no route for item type {item_type}: add `\"{item_type}\" = \"AGENT\"` under [routes] or a step in workflow template `{workflow_id}`{hint}"
            ),
        )
    })?;
    if !settings.agents.contains_key(&agent) {
        return Err(RouteError::invalid(
            ErrorCode::UnknownAgent,
            format!("item type {item_type} is routed to agent `{agent}`, which is not configured"),
        ));
    }
    if let Some(max) = step.max_attempts
        && max < 1
    {
        return Err(RouteError::invalid(
            ErrorCode::WorkflowInvalid,
            format!("workflow template `{workflow_id}` step {item_type}: max_attempts must be at least 1"),
        ));
    }
    if let Some(timeout) = step.timeout
        && (timeout.is_zero() || timeout > crate::model::MAX_INTERVAL)
    {
        return Err(RouteError::invalid(
            ErrorCode::WorkflowInvalid,
            format!(
                "workflow template `{workflow_id}` step {item_type}: timeout must be greater than 0 and at most {}",
                humantime::format_duration(crate::model::MAX_INTERVAL)
            ),
        ));
    }
    let limit = match &step.limits {
        None => None,
        Some(l) => {
            let at = format!("workflow template `{workflow_id}` step {item_type}: limits");
            let limit = AgentLimit::parse(&at, l.max_in_flight, l.rate.as_deref(), l.burst, None, None)
                .map_err(|e| RouteError::invalid(ErrorCode::WorkflowInvalid, e.to_string()))?;
            limit.is_limited().then_some(limit)
        }
    };
    let invalid = |why: String| {
        RouteError::invalid(
            ErrorCode::WorkflowInvalid,
            format!("workflow template `{workflow_id}` step {item_type}: {why}"),
        )
    };
    let evaluators = match step.evaluators {
        None => vec![Evaluator::Named(JSON_SCHEMA.to_owned())],
        Some(definitions) => {
            parse_evaluators(definitions, &|name| settings.agents.contains_key(name)).map_err(invalid)?
        }
    };
    let approval = match step.approval {
        None => Policy::Fixed(settings.approval.policy),
        Some(definition) => parse_policy(definition, &evaluators).map_err(invalid)?,
    };
    Ok(Step {
        agent,
        timeout: step.timeout,
        max_attempts: step.max_attempts,
        evaluators,
        approval,
        content: step.content.unwrap_or_default(),
        limit,
        llm: step.llm.map(Arc::new),
        revise: step.revise.map(parse_revise).transpose().map_err(invalid)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PolicyKind;
    use serde_json::json;

    fn settings() -> Settings {
        Settings::from_toml_over_defaults("[agents.triage]\nkind = \"echo\"\n[routes]\nTICKET = \"triage\"\n").unwrap()
    }

    #[test]
    fn config_route_is_the_fallback() {
        let step = resolve_step(None, "default", "TICKET", &settings()).unwrap();
        assert_eq!(step.agent, "triage");
        assert_eq!(step.evaluators.iter().map(Evaluator::name).collect::<Vec<_>>(), vec![JSON_SCHEMA]);
        assert_eq!(step.approval, Policy::Fixed(PolicyKind::ApproveAll));
    }

    #[test]
    fn template_steps_override_routes() {
        let definition = json!({"steps": {"TICKET": {"agent": "echo", "timeout": "2s", "max_attempts": 2,
                                                     "approval": "escalate_on_failure", "evaluators": []}}});
        let step = resolve_step(Some(&definition), "wf", "TICKET", &settings()).unwrap();
        assert_eq!(step.agent, "echo");
        assert_eq!(step.timeout, Some(Duration::from_secs(2)));
        assert_eq!(step.max_attempts, Some(2));
        assert_eq!(step.approval, Policy::Fixed(PolicyKind::EscalateOnFailure));
        assert!(step.evaluators.is_empty());
    }

    #[test]
    fn assertions_and_thresholds_are_checked_with_the_template() {
        let good = json!({"steps": {"TICKET": {"agent": "echo",
            "evaluators": ["json_schema", {"name": "has_total", "pointer": "/total", "exists": true}],
            "approval": {"combine": "min", "pass_at": 0.8, "fail_below": 0.4}}}});
        let step = resolve_step(Some(&good), "wf", "TICKET", &settings()).unwrap();
        assert_eq!(step.evaluators.iter().map(Evaluator::name).collect::<Vec<_>>(), ["json_schema", "has_total"]);
        assert!(matches!(step.approval, Policy::Thresholds(_)));
        let bad = json!({"steps": {"TICKET": {"agent": "echo",
            "approval": {"combine": "min", "pass_at": 0.4, "fail_below": 0.8}}}});
        let err = resolve_step(Some(&bad), "wf", "TICKET", &settings()).unwrap_err();
        assert!(matches!(err, RouteError::Invalid { code: ErrorCode::WorkflowInvalid, .. }), "{err}");
        assert!(err.to_string().contains("step TICKET: approval: fail_below 0.8 is above pass_at 0.4"), "{err}");
    }

    #[test]
    fn missing_routes_and_bad_templates_are_permanent_errors() {
        let err = resolve_step(None, "default", "INVOICE", &settings()).unwrap_err();
        assert_eq!(err.code(), ErrorCode::NoRoute);
        assert!(err.to_string().contains("INVOICE"));
        let bad = json!({"steps": {"TICKET": {"agnet": "x"}}});
        assert_eq!(
            resolve_step(Some(&bad), "wf", "TICKET", &settings()).unwrap_err().code(),
            ErrorCode::WorkflowInvalid
        );
        for timeout in ["0s", "2d"] {
            let bad = json!({"steps": {"TICKET": {"agent": "triage", "timeout": timeout}}});
            let err = resolve_step(Some(&bad), "wf", "TICKET", &settings()).unwrap_err();
            assert_eq!(err.code(), ErrorCode::WorkflowInvalid, "{timeout}");
            assert!(err.to_string().contains("timeout"), "{err}");
        }
        let ghost = json!({"steps": {"TICKET": {"agent": "ghost"}}});
        assert_eq!(
            resolve_step(Some(&ghost), "wf", "TICKET", &settings()).unwrap_err().code(),
            ErrorCode::UnknownAgent
        );
    }
}
