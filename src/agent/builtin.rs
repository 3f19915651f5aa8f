//! Built-in agents for demos, tests and benchmarks: `echo` answers its input, `fail` fails.

use super::{Agent, AgentError, AgentRequest, AgentSpec, BoxFuture, DEFAULT_TIMEOUT, Executor};
use crate::model::ConfigError;
use crate::model::ErrorCode;
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;

/// Answers `{"echo": <content>}` at once. With `fail_once_key`, an item whose content has
/// that key set to `true` fails its first attempt (retryable): the retry path, for benchmarks.
pub struct EchoAgent {
    fail_once_key: Option<String>,
}

impl Executor for EchoAgent {
    fn execute<'a>(&'a self, request: &'a AgentRequest) -> BoxFuture<'a, Result<Value, AgentError>> {
        Box::pin(async move {
            let fails = self.fail_once_key.as_ref().is_some_and(|key| request.work_item.content[key] == true);
            if fails && request.attempt.number == 1 {
                return Err(AgentError::retryable(
                    ErrorCode::AgentError,
                    "the echo agent fails this item's first attempt",
                ));
            }
            Ok(json!({ "echo": request.work_item.content }))
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EchoOptions {
    timeout: Option<String>,
    fail_once_key: Option<String>,
}

pub fn echo_factory(spec: &AgentSpec<'_>) -> Result<Agent, ConfigError> {
    let options: EchoOptions = spec.options()?;
    Ok(Agent {
        executor: Arc::new(EchoAgent { fail_once_key: options.fail_once_key }),
        timeout: spec.duration("timeout", options.timeout.as_deref(), DEFAULT_TIMEOUT)?,
    })
}

/// Always fails, permanently unless `retryable = true`.
pub struct FailAgent {
    message: String,
    retryable: bool,
}

impl Executor for FailAgent {
    fn execute<'a>(&'a self, _request: &'a AgentRequest) -> BoxFuture<'a, Result<Value, AgentError>> {
        Box::pin(async move {
            Err(if self.retryable {
                AgentError::retryable(ErrorCode::AgentError, self.message.clone())
            } else {
                AgentError::permanent(ErrorCode::AgentError, self.message.clone())
            })
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FailOptions {
    message: Option<String>,
    #[serde(default)]
    retryable: bool,
    timeout: Option<String>,
}

pub fn fail_factory(spec: &AgentSpec<'_>) -> Result<Agent, ConfigError> {
    let options: FailOptions = spec.options()?;
    Ok(Agent {
        executor: Arc::new(FailAgent {
            message: options.message.unwrap_or_else(|| "the fail agent always fails".into()),
            retryable: options.retryable,
        }),
        timeout: spec.duration("timeout", options.timeout.as_deref(), DEFAULT_TIMEOUT)?,
    })
}
