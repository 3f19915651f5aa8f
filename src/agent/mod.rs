//! THE PLUG-IN SEAM. An agent executes one work item: it receives an [`AgentRequest`]
//! (the envelope of docs/agents.md) and answers JSON output or a classified [`AgentError`].
//! The runner (`worker::runner`) calls agents; agents know nothing of the database.
//!
//! A Rust user adds a kind by implementing [`Executor`] and registering a factory with
//! [`Registry::register`]; `[agents.NAME] kind = "..."` then selects it. Nothing else changes.

mod builtin;
mod child;
mod command;
mod http;
mod llm;
mod report;

use crate::model::ConfigError;
use crate::model::ErrorCode;
use crate::net::{REDACTED, redact_agent_url};
use serde::Deserialize;
use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

pub use command::CommandAgent;
pub use http::HttpAgent;
pub use report::{Compute, ProgressUpdate, Reported, Reporter};

/// A boxed future, so executors can live behind `dyn Executor`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Executes work items. Dropping the returned future must stop the work: the runner drops
/// it on timeout, lost lease or shutdown.
pub trait Executor: Send + Sync + 'static {
    fn execute<'a>(&'a self, request: &'a AgentRequest) -> BoxFuture<'a, Result<Value, AgentError>>;

    /// Whether the envelope should carry a progress callback (`request.progress`): for agents
    /// in another process that report over HTTP. Plug-ins and commands report through
    /// `request.report`, so the default is no (signing a token costs every item).
    fn takes_progress_callback(&self) -> bool {
        false
    }
}

/// The envelope sent to every agent: `{work_item, work_order, attempt, context}`.
#[derive(Debug, Clone, Serialize)]
pub struct AgentRequest {
    pub work_item: WorkItemView,
    pub work_order: WorkOrderView,
    pub attempt: AttemptView,
    pub context: ContextView,
    /// Where an HTTP agent posts its progress while it runs (docs/agents.md); absent when
    /// the daemon has no admin server to take it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<ProgressCallback>,
    /// How a plug-in reports progress, log lines and compute while it runs (not sent).
    #[serde(skip)]
    pub report: Reporter,
    /// Set on a revision: the output a review sent back and why (docs/review.md).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub review: Option<ReviewView>,
    /// Set when the agent is called as an evaluator: what it judges (docs/review.md).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub evaluate: Option<EvaluateView>,
    /// The template step's (or the evaluator's) options for this agent's kind, e.g. an
    /// `llm` agent's prompts and parameters under the step's `llm` key (not sent).
    #[serde(skip)]
    pub step_options: Option<Arc<Value>>,
    /// The JSON Schema the step checks the output against, when it has one (not sent).
    #[serde(skip)]
    pub output_schema: Option<Arc<Value>>,
}

/// What a revision run is told: which revision this is, the output that was sent back and
/// the feedback that sent it (evaluators' reasons, or a person's comment).
#[derive(Debug, Clone, Serialize)]
pub struct ReviewView {
    /// 1 for the first revision.
    pub revision: i32,
    pub max_revisions: i32,
    pub previous_output: Value,
    pub feedback: Vec<Value>,
}

/// What an agent called as an evaluator judges: the output, and the criteria text of the
/// template's evaluator.
#[derive(Debug, Clone, Serialize)]
pub struct EvaluateView {
    pub evaluator: String,
    pub version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub criteria: Option<String>,
    pub output: Value,
}

/// An attempt's progress callback: POST `{"percent": N, "message": "…"}` to `url` with
/// `Authorization: Bearer TOKEN`; refused once the attempt has ended.
#[derive(Debug, Clone, Serialize)]
pub struct ProgressCallback {
    pub url: String,
    pub token: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct WorkItemView {
    pub id: Uuid,
    #[serde(rename = "type")]
    pub item_type: String,
    /// The item's content: parsed JSON, or the raw text for steps with `content = "text"`.
    pub content: Value,
    pub priority: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

#[derive(Debug, Clone, Serialize)]
pub struct WorkOrderView {
    pub id: Uuid,
    pub workflow_id: String,
    pub tenant_id: Uuid,
    pub created_by: Uuid,
    pub priority: String,
    pub metadata: Value,
}

#[derive(Debug, Clone, Serialize)]
pub struct AttemptView {
    pub id: Uuid,
    pub number: i32,
    pub max_attempts: i32,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ContextView {
    pub mem_docs: Vec<MemDocView>,
    /// The item's dependencies and their outcomes (docs/dependencies.md); empty for an item
    /// without any.
    pub dependencies: Vec<DependencyView>,
}

/// One dependency of the item, as its agent sees it.
#[derive(Debug, Clone, Serialize)]
pub struct DependencyView {
    pub id: Uuid,
    #[serde(rename = "type")]
    pub item_type: String,
    /// BLOCKS, SOFT or RELATED.
    pub kind: String,
    /// Its status when this item was claimed (a SOFT dependency may have failed).
    pub status: String,
    pub result: Option<Value>,
    /// Set when the result was left out: the results before it filled
    /// `limits.max_dependency_bytes`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result_omitted: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result_bytes: Option<i32>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MemDocView {
    #[serde(rename = "type")]
    pub doc_type: String,
    pub content: String,
    pub metadata: Value,
}

impl AgentRequest {
    /// The idempotency key agents can use to recognise a repeated execution.
    pub fn idempotency_key(&self) -> String {
        self.work_item.id.to_string()
    }
}

/// A failed execution, classified once: the variant decides retry or dead letter.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AgentError {
    /// May succeed later; `retry_after` is the agent's own hint (clamped by the runner).
    #[error("{message}")]
    Retryable { code: ErrorCode, message: String, retry_after: Option<Duration> },
    /// Cannot succeed by retrying.
    #[error("{message}")]
    Permanent { code: ErrorCode, message: String },
    /// This host ran out of something (file handles, memory, processes): not the item's
    /// fault, so the item is released after a backoff and the attempt is not counted.
    #[error("{message}")]
    HostExhausted { message: String },
}

impl AgentError {
    pub fn retryable(code: ErrorCode, message: impl Into<String>) -> Self {
        AgentError::Retryable { code, message: message.into(), retry_after: None }
    }
    pub fn permanent(code: ErrorCode, message: impl Into<String>) -> Self {
        AgentError::Permanent { code, message: message.into() }
    }
    pub fn code(&self) -> ErrorCode {
        match self {
            AgentError::Retryable { code, .. } | AgentError::Permanent { code, .. } => *code,
            AgentError::HostExhausted { .. } => ErrorCode::HostResourcesExhausted,
        }
    }
    pub fn message(&self) -> &str {
        match self {
            AgentError::Retryable { message, .. }
            | AgentError::Permanent { message, .. }
            | AgentError::HostExhausted { message } => message,
        }
    }

    /// `other`, unless `error`'s source chain says this host ran out of file handles, memory
    /// or processes (EMFILE, ENFILE, ENOMEM, EAGAIN): then [`AgentError::HostExhausted`].
    pub fn unless_host_exhausted(error: &(dyn std::error::Error + 'static), other: AgentError) -> AgentError {
        if host_exhausted(error) { AgentError::HostExhausted { message: other.message().to_owned() } } else { other }
    }
}

/// Whether an I/O error in `error`'s source chain is the host running out of a resource.
pub fn host_exhausted(error: &(dyn std::error::Error + 'static)) -> bool {
    const EXHAUSTED: [i32; 4] = [
        nix::errno::Errno::EMFILE as i32,
        nix::errno::Errno::ENFILE as i32,
        nix::errno::Errno::ENOMEM as i32,
        nix::errno::Errno::EAGAIN as i32,
    ];
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && io.raw_os_error().is_some_and(|code| EXHAUSTED.contains(&code))
        {
            return true;
        }
        next = e.source();
    }
    false
}

/// One `[agents.NAME]` table: a kind plus the kind's own options, which the kind's factory
/// validates (so unknown keys are reported as `agents.NAME.key`). `Debug` shows the options
/// redacted (see [`AgentSettings::redacted_options`]).
#[derive(Clone, Serialize, Deserialize)]
pub struct AgentSettings {
    pub kind: String,
    /// Executions in flight at once across every replica (docs/limits.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<u32>,
    /// Starts per time across every replica: "50/s", "600/min".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<String>,
    /// Starts the rate allows at once after a quiet spell (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// Consecutive timeouts, 5xx and connection failures that open the circuit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_failures: Option<u32>,
    /// How long an open circuit waits before one probe (default 30s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_cool_down: Option<String>,
    #[serde(flatten)]
    pub options: serde_json::Map<String, Value>,
}

impl fmt::Debug for AgentSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentSettings").field("kind", &self.kind).field("options", &self.redacted_options()).finish()
    }
}

impl AgentSettings {
    /// The agent's limits, checked (errors name `agents.NAME.key`).
    pub fn limit(&self, name: &str) -> Result<crate::policy::limits::AgentLimit, ConfigError> {
        crate::policy::limits::AgentLimit::parse(
            &format!("agents.{name}"),
            self.max_in_flight,
            self.rate.as_deref(),
            self.burst,
            self.circuit_failures,
            self.circuit_cool_down.as_deref(),
        )
    }

    /// The options with secrets replaced by `<redacted>`: every value of `headers` and `env`,
    /// every option whose name suggests a secret (password, secret, token, credential, auth,
    /// api key), and the credentials and query values of every URL (see [`redact_url`]).
    pub fn redacted_options(&self) -> serde_json::Map<String, Value> {
        self.options.iter().map(|(key, value)| (key.clone(), redact_option(key, value))).collect()
    }
}

fn redact_option(key: &str, value: &Value) -> Value {
    let lower = key.to_ascii_lowercase();
    let secret_name = ["password", "secret", "token", "credential", "auth", "api_key", "apikey"]
        .iter()
        .any(|word| lower.contains(word));
    match value {
        Value::Object(map) if lower == "headers" || lower == "env" => {
            map.keys().map(|k| (k.clone(), Value::String(REDACTED.into()))).collect()
        }
        // Flags and numbers such as `max_tokens = 1000` are not secrets; an API key of digits
        // (from an environment variable) is.
        Value::Bool(_) | Value::Null => value.clone(),
        Value::Number(_) if !secret_name || lower.ends_with("tokens") => value.clone(),
        _ if secret_name || lower == "headers" || lower == "env" => Value::String(REDACTED.into()),
        Value::String(text) if lower == "url" => Value::String(redact_agent_url(text)),
        Value::String(text) if looks_like_url(text) => Value::String(redact_agent_url(text)),
        Value::Array(items) => Value::Array(items.iter().map(|item| redact_option("", item)).collect()),
        Value::Object(map) => map.iter().map(|(k, v)| (k.clone(), redact_option(k, v))).collect(),
        other => other.clone(),
    }
}

/// A string that parses as an absolute URL with a host (`scheme://host...`).
fn looks_like_url(text: &str) -> bool {
    text.contains("://") && reqwest::Url::parse(text).is_ok_and(|u| u.has_host())
}

/// What the agent kinds need of the configuration beyond their own table.
#[derive(Debug, Clone, Copy)]
pub struct AgentLimits {
    /// Output larger than this fails the attempt (`OUTPUT_TOO_LARGE`).
    pub max_output_bytes: usize,
}

/// What a factory receives to build one configured agent.
pub struct AgentSpec<'a> {
    pub name: &'a str,
    pub settings: &'a AgentSettings,
    pub limits: AgentLimits,
}

impl AgentSpec<'_> {
    /// Deserializes the kind's options strictly; errors name `agents.NAME.key`.
    pub fn options<T: serde::de::DeserializeOwned>(&self) -> Result<T, ConfigError> {
        serde_json::from_value(Value::Object(self.settings.options.clone()))
            .map_err(|e| ConfigError::invalid(format!("agents.{}", self.name), e.to_string()))
    }

    /// Parses an optional duration option, e.g. `timeout = "30s"`.
    pub fn duration(&self, key: &str, value: Option<&str>, default: Duration) -> Result<Duration, ConfigError> {
        match value {
            None => Ok(default),
            Some(text) => crate::model::parse_duration(&format!("agents.{}.{key}", self.name), text),
        }
    }
}

/// Builds an executor from its configuration.
pub type Factory = fn(&AgentSpec<'_>) -> Result<Agent, ConfigError>;

/// A configured agent: the executor plus what the runner needs to drive it.
#[derive(Clone)]
pub struct Agent {
    pub executor: Arc<dyn Executor>,
    /// Run-time limit; the runner drops the execution when it passes.
    pub timeout: Duration,
}

/// The default timeout of agents that do not set one.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Agent kinds by name. [`Registry::builtin`] has `echo`, `fail`, `http`, `command` and `llm`.
#[derive(Clone)]
pub struct Registry {
    kinds: BTreeMap<String, Factory>,
}

impl Default for Registry {
    fn default() -> Self {
        Self::builtin()
    }
}

impl Registry {
    pub fn builtin() -> Self {
        let mut registry = Registry { kinds: BTreeMap::new() };
        registry.register("echo", builtin::echo_factory);
        registry.register("fail", builtin::fail_factory);
        registry.register("http", http::factory);
        registry.register("command", command::factory);
        registry.register("llm", llm::factory);
        registry
    }

    /// Adds (or replaces) a kind.
    pub fn register(&mut self, kind: &str, factory: Factory) -> &mut Self {
        self.kinds.insert(kind.to_owned(), factory);
        self
    }

    pub fn kinds(&self) -> impl Iterator<Item = &str> {
        self.kinds.keys().map(String::as_str)
    }

    /// Builds every `[agents.NAME]` of the settings.
    pub fn build(
        &self,
        configured: &std::collections::BTreeMap<String, AgentSettings>,
        limits: AgentLimits,
    ) -> Result<Agents, ConfigError> {
        let mut agents = HashMap::new();
        let mut limited = HashMap::new();
        for (name, agent_settings) in configured {
            let factory = self.kinds.get(&agent_settings.kind).ok_or_else(|| {
                ConfigError::invalid(
                    format!("agents.{name}.kind"),
                    format!(
                        "unknown kind `{}` (known: {})",
                        agent_settings.kind,
                        self.kinds().collect::<Vec<_>>().join(", ")
                    ),
                )
            })?;
            let spec = AgentSpec { name, settings: agent_settings, limits };
            agents.insert(name.clone(), factory(&spec)?);
            let limit = agent_settings.limit(name)?;
            if limit.is_limited() {
                limited.insert(name.clone(), limit);
            }
        }
        Ok(Agents { by_name: Arc::new(agents), limited: Arc::new(limited) })
    }
}

/// The configured agents of this process, by name.
#[derive(Clone, Default)]
pub struct Agents {
    by_name: Arc<HashMap<String, Agent>>,
    /// The agents with limits the claim must check (`policy::limits`).
    limited: Arc<HashMap<String, crate::policy::limits::AgentLimit>>,
}

impl Agents {
    pub fn get(&self, name: &str) -> Option<&Agent> {
        self.by_name.get(name)
    }

    /// The agent's limits, if it has any.
    pub fn limit(&self, name: &str) -> Option<&crate::policy::limits::AgentLimit> {
        self.limited.get(name)
    }

    /// Every limited agent and its limits.
    pub fn limited(&self) -> impl Iterator<Item = (&String, &crate::policy::limits::AgentLimit)> {
        self.limited.iter()
    }
}

/// Reads at most `limit` bytes from a stream of chunks; more is `OUTPUT_TOO_LARGE`.
pub(crate) fn check_output_size(len: usize, limit: usize) -> Result<(), AgentError> {
    if len > limit {
        Err(AgentError::permanent(
            ErrorCode::OutputTooLarge,
            format!("agent output exceeds limits.max_output_bytes ({limit} bytes)"),
        ))
    } else {
        Ok(())
    }
}

/// Parses an agent's output; anything but JSON is `AGENT_BAD_OUTPUT` (permanent).
pub(crate) fn parse_output(bytes: &[u8]) -> Result<Value, AgentError> {
    serde_json::from_slice(bytes).map_err(|e| {
        let preview: String = String::from_utf8_lossy(&bytes[..bytes.len().min(120)]).into_owned();
        AgentError::permanent(ErrorCode::AgentBadOutput, format!("agent answered non-JSON output ({e}): {preview:?}"))
    })
}
