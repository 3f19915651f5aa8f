//! The `llm` kind: calls an OpenAI-compatible chat completions API (`POST
//! {base_url}/chat/completions`) with the step's prompts and answers the model's JSON
//! (docs/agents.md, "llm").
//!
//! The prompts come from the template step's `llm` object ([`prompt`]); the reply's first
//! choice becomes the output, with the call's token counts as its `usage` ([`reply`]). Statuses
//! are classified as the `http` kind's: 429 → `AGENT_RATE_LIMITED`, 408 and 5xx →
//! `AGENT_UNAVAILABLE` (both retryable, Retry-After passed on), other 4xx → `AGENT_REJECTED`,
//! connection errors → `AGENT_CONNECTION`. Private addresses are refused unless
//! `allow_private` ([`crate::net`]); redirects are never followed.
//!
//! The `api_key` is sent as a sensitive `Authorization` header and scrubbed from every message
//! (a server may echo it in an error); the base URL is shown redacted only.

mod prompt;
mod reply;

use super::{Agent, AgentError, AgentRequest, AgentSpec, BoxFuture, DEFAULT_TIMEOUT, Executor};
use crate::model::{ConfigError, ErrorCode, printable};
use crate::net::{self, REDACTED, Redirects, error_chain, redact_agent_url, refuse_private_literal, retry_after};
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue};
use reqwest::{StatusCode, Url};
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

/// The client's own limit is the agent's timeout plus this, so the runner's timer (which
/// records the attempt as TIMEOUT) normally fires first.
const CLIENT_GRACE: Duration = Duration::from_secs(1);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LlmOptions {
    base_url: String,
    model: String,
    /// A string; a number (an environment variable's digits) is taken as its text. Never
    /// deserialized as `String`, whose type error would quote the value.
    api_key: Option<Value>,
    timeout: Option<String>,
    #[serde(default)]
    allow_private: bool,
    temperature: Option<f64>,
    max_tokens: Option<u32>,
}

/// A configured `llm` agent.
pub struct LlmAgent {
    client: reqwest::Client,
    /// `{base_url}/chat/completions`.
    endpoint: Url,
    model: String,
    temperature: Option<f64>,
    max_tokens: Option<u32>,
    allow_private: bool,
    max_output_bytes: usize,
    /// Kept only to scrub it from messages; never shown.
    api_key: Option<String>,
}

pub fn factory(spec: &AgentSpec<'_>) -> Result<Agent, ConfigError> {
    let (agent, timeout) = LlmAgent::from_spec(spec)?;
    Ok(Agent { executor: Arc::new(agent), timeout })
}

impl LlmAgent {
    fn from_spec(spec: &AgentSpec<'_>) -> Result<(LlmAgent, Duration), ConfigError> {
        let options: LlmOptions = spec.options()?;
        let key = |k: &str| format!("agents.{}.{k}", spec.name);
        let base = Url::parse(&options.base_url).map_err(|e| ConfigError::invalid(key("base_url"), e.to_string()))?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(ConfigError::invalid(key("base_url"), "must be an http:// or https:// URL"));
        }
        let endpoint = completions_url(base);
        if options.model.trim().is_empty() {
            return Err(ConfigError::invalid(key("model"), "must name a model"));
        }
        if let Some(t) = options.temperature
            && !(0.0..=2.0).contains(&t)
        {
            return Err(ConfigError::invalid(key("temperature"), format!("must be between 0 and 2, not {t}")));
        }
        if options.max_tokens == Some(0) {
            return Err(ConfigError::invalid(key("max_tokens"), "must be at least 1"));
        }
        let api_key = match options.api_key {
            None | Some(Value::Null) => None,
            Some(Value::String(text)) => Some(text),
            Some(Value::Number(number)) => Some(number.to_string()),
            Some(_) => return Err(ConfigError::invalid(key("api_key"), "must be a string")),
        };
        let api_key = api_key.filter(|k| !k.is_empty());
        let mut headers = HeaderMap::new();
        if let Some(api_key) = &api_key {
            let mut value = HeaderValue::from_str(&format!("Bearer {api_key}"))
                .map_err(|_| ConfigError::invalid(key("api_key"), "must be printable ASCII without line breaks"))?;
            value.set_sensitive(true);
            headers.insert(AUTHORIZATION, value);
        }
        let timeout = spec.duration("timeout", options.timeout.as_deref(), DEFAULT_TIMEOUT)?;
        let client = net::client_builder(timeout, options.allow_private, Redirects::Refuse)
            .default_headers(headers)
            .timeout(timeout + CLIENT_GRACE)
            .build()
            .map_err(|e| {
                ConfigError::invalid(key("base_url"), format!("cannot build HTTP client: {}", error_chain(e)))
            })?;
        let agent = LlmAgent {
            client,
            endpoint,
            model: options.model,
            temperature: options.temperature,
            max_tokens: options.max_tokens,
            allow_private: options.allow_private,
            max_output_bytes: spec.limits.max_output_bytes,
            api_key,
        };
        Ok((agent, timeout))
    }

    async fn call(&self, request: &AgentRequest) -> Result<Value, AgentError> {
        let prompt = prompt::build(request)?;
        let max_tokens = prompt.max_tokens.or(self.max_tokens);
        let body = self.body(request, &prompt);
        if !self.allow_private {
            refuse_private_literal(&self.endpoint)
                .map_err(|refused| AgentError::permanent(ErrorCode::AgentAddressRefused, refused.to_string()))?;
        }
        let response = self
            .client
            .post(self.endpoint.clone())
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .map_err(|e| self.request_failed(e))?;
        let status = response.status();
        let retry_after = retry_after(response.headers());
        let body = self.read_body(response).await?;
        if !status.is_success() {
            return Err(self.classify(status, retry_after, &body));
        }
        let parsed = reply::parse(&body, &self.model, max_tokens);
        match parsed.output {
            Ok(mut output) => {
                // The usage is always this kind's own: a `usage` the model wrote is replaced.
                output["usage"] = parsed.usage.unwrap_or_else(|| json!({ "model": self.model }));
                Ok(output)
            }
            Err(error) => {
                // A reply that failed still cost its tokens.
                if let Some(usage) = parsed.usage {
                    request.report.usage(usage);
                }
                Err(self.scrubbed(error))
            }
        }
    }

    /// The chat completions request: the messages, the JSON response format (the step's
    /// schema when it has one) and the step's parameters over the agent's.
    fn body(&self, request: &AgentRequest, prompt: &prompt::Prompt) -> Value {
        let mut messages = Vec::new();
        if let Some(system) = &prompt.system {
            messages.push(json!({"role": "system", "content": system}));
        }
        messages.push(json!({"role": "user", "content": prompt.user}));
        let response_format = match &request.output_schema {
            Some(schema) => json!({"type": "json_schema", "json_schema": {"name": "output", "schema": schema}}),
            None => json!({"type": "json_object"}),
        };
        let mut body = json!({"model": self.model, "messages": messages, "response_format": response_format});
        if let Some(temperature) = prompt.temperature.or(self.temperature) {
            body["temperature"] = json!(temperature);
        }
        if let Some(max_tokens) = prompt.max_tokens.or(self.max_tokens) {
            body["max_tokens"] = json!(max_tokens);
        }
        body
    }

    /// Reads the body chunk by chunk, stopping as soon as it passes the output limit.
    async fn read_body(&self, mut response: reqwest::Response) -> Result<Vec<u8>, AgentError> {
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| self.request_failed(e))? {
            body.extend_from_slice(&chunk);
            super::check_output_size(body.len(), self.max_output_bytes)?;
        }
        Ok(body)
    }

    /// A failed send or read: a refused address is permanent, the client's own timeout is
    /// `AGENT_TIMEOUT`, anything else a retryable connection error.
    fn request_failed(&self, e: reqwest::Error) -> AgentError {
        if let Some(refused) = net::address_refused(&e) {
            return AgentError::permanent(ErrorCode::AgentAddressRefused, refused.to_string());
        }
        let exhausted = super::host_exhausted(&e);
        let code = if e.is_timeout() { ErrorCode::AgentTimeout } else { ErrorCode::AgentConnection };
        let message =
            self.scrub(format!("POST {} failed: {}", redact_agent_url(self.endpoint.as_str()), error_chain(e)));
        if exhausted { AgentError::HostExhausted { message } } else { AgentError::retryable(code, message) }
    }

    /// A non-2xx answer, classified as the `http` kind's (3xx is never followed).
    fn classify(&self, status: StatusCode, retry_after: Option<Duration>, body: &[u8]) -> AgentError {
        // OpenAI-style servers say why in `{"error": {"message": "…"}}`.
        let said = serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|b| b.pointer("/error/message").and_then(Value::as_str).map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned());
        let message = self.scrub(format!("the model server answered {status}: {}", printable(&said, 500)));
        match status.as_u16() {
            300..=399 => AgentError::permanent(ErrorCode::AgentRedirect, format!("{message}; redirects are refused")),
            429 => AgentError::Retryable { code: ErrorCode::AgentRateLimited, message, retry_after },
            408 | 500..=599 => AgentError::Retryable { code: ErrorCode::AgentUnavailable, message, retry_after },
            _ => AgentError::permanent(ErrorCode::AgentRejected, message),
        }
    }

    /// `text` without the API key.
    fn scrub(&self, text: String) -> String {
        match &self.api_key {
            Some(key) if text.contains(key.as_str()) => text.replace(key.as_str(), REDACTED),
            _ => text,
        }
    }

    fn scrubbed(&self, error: AgentError) -> AgentError {
        match error {
            AgentError::Retryable { code, message, retry_after } => {
                AgentError::Retryable { code, message: self.scrub(message), retry_after }
            }
            AgentError::Permanent { code, message } => AgentError::Permanent { code, message: self.scrub(message) },
            AgentError::HostExhausted { message } => AgentError::HostExhausted { message: self.scrub(message) },
        }
    }
}

/// `base` with `/chat/completions` added to its path (its query, if any, kept).
fn completions_url(mut base: Url) -> Url {
    base.path_segments_mut().expect("checked: the URL can be a base").pop_if_empty().extend(["chat", "completions"]);
    base
}

impl Executor for LlmAgent {
    fn execute<'a>(&'a self, request: &'a AgentRequest) -> BoxFuture<'a, Result<Value, AgentError>> {
        Box::pin(self.call(request))
    }
}

#[cfg(test)]
pub(super) mod tests;
