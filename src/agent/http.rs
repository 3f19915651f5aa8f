//! The `http` kind: POST the envelope as JSON to a configured URL (docs/agents.md).
//!
//! 2xx + JSON body → output. 408, 429, 5xx, connection errors → retryable (Retry-After is
//! passed on; the runner clamps it). Other 4xx → permanent. Non-JSON 2xx → permanent.
//! Redirects and private/loopback addresses are refused unless allowed in config.
//!
//! The private-address check applies to the addresses actually connected to, on every hop
//! (the shared outbound helper, [`crate::net`]: a public-only resolver for names, a check of
//! IP literals before the first request and through the redirect policy on every hop). A
//! refusal is permanent (`AGENT_ADDRESS_REFUSED`).
//!
//! The URL may carry a secret (a token in the query, a password in the userinfo): errors are
//! stripped of reqwest's URL and only [`redact_url`]'s form is ever shown.

use super::{Agent, AgentError, AgentRequest, AgentSpec, BoxFuture, DEFAULT_TIMEOUT, Executor};
use crate::model::ConfigError;
use crate::model::ErrorCode;
use crate::net::{self, AddressRefused, Redirects, error_chain, refuse_private_literal, retry_after};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{StatusCode, Url};
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Redirect hops followed at most when `allow_redirects = true`.
const MAX_REDIRECTS: usize = 5;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpOptions {
    url: String,
    timeout: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    allow_private: bool,
    #[serde(default)]
    allow_redirects: bool,
}

pub struct HttpAgent {
    client: reqwest::Client,
    url: Url,
    allow_private: bool,
    max_output_bytes: usize,
}

pub fn factory(spec: &AgentSpec<'_>) -> Result<Agent, ConfigError> {
    let options: HttpOptions = spec.options()?;
    let key = |k: &str| format!("agents.{}.{k}", spec.name);
    let url = Url::parse(&options.url).map_err(|e| ConfigError::invalid(key("url"), e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(ConfigError::invalid(key("url"), "must be an http:// or https:// URL"));
    }
    let mut headers = HeaderMap::new();
    for (name, value) in &options.headers {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|e| ConfigError::invalid(key("headers"), format!("`{name}`: {e}")))?;
        let mut value = HeaderValue::from_str(value)
            .map_err(|_| ConfigError::invalid(key("headers"), format!("`{name}` has an invalid value")))?;
        value.set_sensitive(true);
        headers.insert(name, value);
    }
    let timeout = spec.duration("timeout", options.timeout.as_deref(), DEFAULT_TIMEOUT)?;
    let client = build_client(headers, timeout, options.allow_private, options.allow_redirects)
        .map_err(|e| ConfigError::invalid(key("url"), format!("cannot build HTTP client: {}", error_chain(e))))?;
    Ok(Agent {
        executor: Arc::new(HttpAgent {
            client,
            url,
            allow_private: options.allow_private,
            max_output_bytes: spec.limits.max_output_bytes,
        }),
        timeout,
    })
}

/// The agent's client, from the shared outbound builder ([`net::client_builder`]).
fn build_client(
    headers: HeaderMap,
    timeout: Duration,
    allow_private: bool,
    allow_redirects: bool,
) -> reqwest::Result<reqwest::Client> {
    let redirects = if allow_redirects { Redirects::Follow(MAX_REDIRECTS) } else { Redirects::Refuse };
    net::client_builder(timeout, allow_private, redirects).default_headers(headers).build()
}

impl Executor for HttpAgent {
    fn execute<'a>(&'a self, request: &'a AgentRequest) -> BoxFuture<'a, Result<Value, AgentError>> {
        Box::pin(self.post(request))
    }

    fn takes_progress_callback(&self) -> bool {
        true
    }
}

impl HttpAgent {
    async fn post(&self, request: &AgentRequest) -> Result<Value, AgentError> {
        if !self.allow_private {
            refuse_private_literal(&self.url).map_err(address_refused)?;
        }
        let body = serde_json::to_vec(request)
            .map_err(|e| AgentError::permanent(ErrorCode::AgentError, format!("cannot encode envelope: {e}")))?;
        let response = self
            .client
            .post(self.url.clone())
            .header("content-type", "application/json")
            .header("idempotency-key", request.idempotency_key())
            .header("x-orderly-attempt", request.attempt.number.to_string())
            .body(body)
            .send()
            .await
            .map_err(|e| request_failed(&self.url, e))?;
        let status = response.status();
        let retry_after = retry_after(response.headers());
        let body = self.read_body(response).await?;
        if !status.is_success() {
            // A failed call may still have cost something: its JSON body's `usage` counts.
            if let Some(usage) = serde_json::from_slice::<Value>(&body).ok().and_then(|b| b.get("usage").cloned()) {
                request.report.usage(usage);
            }
        }
        classify(status, retry_after, &body)
    }

    /// Reads the body chunk by chunk, stopping as soon as it passes the output limit.
    async fn read_body(&self, mut response: reqwest::Response) -> Result<Vec<u8>, AgentError> {
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| {
            AgentError::retryable(ErrorCode::AgentConnection, format!("reading response: {}", error_chain(e)))
        })? {
            body.extend_from_slice(&chunk);
            super::check_output_size(body.len(), self.max_output_bytes)?;
        }
        Ok(body)
    }
}

/// A failed send: a refused address (from the resolver or the redirect policy, found in the
/// error's source chain) is permanent; anything else is a retryable connection error.
fn request_failed(url: &Url, e: reqwest::Error) -> AgentError {
    if let Some(refused) = net::address_refused(&e) {
        return address_refused(refused.clone());
    }
    let exhausted = crate::agent::host_exhausted(&e);
    let failed = format!("POST {} failed: {}", redact_url(url), error_chain(e));
    if exhausted {
        AgentError::HostExhausted { message: failed }
    } else {
        AgentError::retryable(ErrorCode::AgentConnection, failed)
    }
}

/// The URL as it may be shown: user name, password, query values and fragment are replaced
/// by `<redacted>` (query keys are kept: `?token=<redacted>`).
pub(crate) fn redact_url(url: &Url) -> String {
    crate::net::redact_agent_url(url.as_str())
}

/// A refused address is permanent (`AGENT_ADDRESS_REFUSED`).
fn address_refused(refused: AddressRefused) -> AgentError {
    AgentError::permanent(ErrorCode::AgentAddressRefused, refused.to_string())
}

fn classify(status: StatusCode, retry_after: Option<Duration>, body: &[u8]) -> Result<Value, AgentError> {
    let preview = || String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
    match status.as_u16() {
        200..=299 => super::parse_output(body),
        300..=399 => Err(AgentError::permanent(
            ErrorCode::AgentRedirect,
            format!("agent answered {status}; redirects are refused unless allow_redirects = true"),
        )),
        429 => Err(AgentError::Retryable {
            code: ErrorCode::AgentRateLimited,
            message: format!("agent answered {status}: {}", preview()),
            retry_after,
        }),
        408 | 500..=599 => Err(AgentError::Retryable {
            code: ErrorCode::AgentUnavailable,
            message: format!("agent answered {status}: {}", preview()),
            retry_after,
        }),
        _ => Err(AgentError::permanent(ErrorCode::AgentRejected, format!("agent answered {status}: {}", preview()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_classes_follow_the_protocol() {
        let ok = classify(StatusCode::OK, None, br#"{"a":1}"#).unwrap();
        assert_eq!(ok["a"], 1);
        let garbage = classify(StatusCode::OK, None, b"<html>").unwrap_err();
        assert_eq!(garbage.code(), ErrorCode::AgentBadOutput);
        assert!(matches!(garbage, AgentError::Permanent { .. }));
        for (status, code, retryable) in [
            (500, ErrorCode::AgentUnavailable, true),
            (503, ErrorCode::AgentUnavailable, true),
            (408, ErrorCode::AgentUnavailable, true),
            (429, ErrorCode::AgentRateLimited, true),
            (400, ErrorCode::AgentRejected, false),
            (404, ErrorCode::AgentRejected, false),
            (422, ErrorCode::AgentRejected, false),
            (302, ErrorCode::AgentRedirect, false),
        ] {
            let err = classify(StatusCode::from_u16(status).unwrap(), None, b"").unwrap_err();
            assert_eq!(err.code(), code, "{status}");
            assert_eq!(matches!(err, AgentError::Retryable { .. }), retryable, "{status}");
        }
    }

    fn url(text: &str) -> Url {
        Url::parse(text).unwrap()
    }

    /// The redirect policy calls `refuse_private_literal` on each hop's URL: a hop from a
    /// public URL to a loopback literal is refused as the first request would be.
    #[test]
    fn redirect_hops_to_private_literals_are_refused() {
        let first = url("https://example.com/hook?token=abc");
        assert!(refuse_private_literal(&first).is_ok());
        for hop in ["http://127.0.0.1:1/", "http://[::1]/x", "http://2130706433/", "http://192.168.1.1/"] {
            let hop = first.join(hop).unwrap();
            let refused = refuse_private_literal(&hop).expect_err(hop.as_str());
            assert_eq!(address_refused(refused).code(), ErrorCode::AgentAddressRefused);
        }
        assert!(refuse_private_literal(&first.join("/elsewhere").unwrap()).is_ok());
    }

    #[tokio::test]
    async fn names_resolving_to_private_addresses_are_refused_permanently() {
        let client = build_client(HeaderMap::new(), Duration::from_secs(5), false, true).unwrap();
        let target = url("http://localhost:1/?token=SECRETCANARY");
        let e = client.post(target.clone()).send().await.unwrap_err();
        let error = request_failed(&target, e);
        assert!(matches!(error, AgentError::Permanent { code: ErrorCode::AgentAddressRefused, .. }), "{error:?}");
        assert!(!error.message().contains("SECRETCANARY"), "{error:?}");
    }

    #[tokio::test]
    async fn connection_errors_do_not_show_secrets_of_the_url() {
        let client = build_client(HeaderMap::new(), Duration::from_secs(5), true, false).unwrap();
        let target = url("http://user:SECRETPASSWORD@127.0.0.1:1/hook?token=SECRETCANARY&v=2");
        let e = client.post(target.clone()).send().await.unwrap_err();
        let error = request_failed(&target, e);
        assert_eq!(error.code(), ErrorCode::AgentConnection);
        assert!(matches!(error, AgentError::Retryable { .. }));
        let message = error.message();
        assert!(!message.contains("SECRETCANARY") && !message.contains("SECRETPASSWORD"), "{message}");
        assert!(message.contains("127.0.0.1:1/hook?token=<redacted>&v=<redacted>"), "{message}");
    }

    #[test]
    fn redacted_urls_keep_the_address_and_hide_the_secrets() {
        for (text, shown) in [
            ("https://api.example.com/v1/hook", "https://api.example.com/v1/hook"),
            ("http://127.0.0.1:8080/?token=abc", "http://127.0.0.1:8080/?token=<redacted>"),
            ("https://u:pw@h/p?a=1&b&c=", "https://<redacted>:<redacted>@h/p?a=<redacted>&<redacted>&c=<redacted>"),
            ("https://tok3n@h/", "https://<redacted>@h/"),
            ("http://[::1]:9/#frag", "http://[::1]:9/#<redacted>"),
        ] {
            assert_eq!(redact_url(&url(text)), shown, "{text}");
        }
    }
}
