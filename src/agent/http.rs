//! The `http` kind: POST the envelope as JSON to a configured URL (DESIGN §4).
//!
//! 2xx + JSON body → output. 408, 429, 5xx, connection errors → retryable (Retry-After is
//! passed on; the runner clamps it). Other 4xx → permanent. Non-JSON 2xx → permanent.
//! Redirects and private/loopback addresses are refused unless allowed in config.

use super::{Agent, AgentError, AgentRequest, AgentSpec, BoxFuture, DEFAULT_TIMEOUT, Executor};
use crate::config::ConfigError;
use crate::model::ErrorCode;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{StatusCode, Url};
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

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
    let redirects =
        if options.allow_redirects { reqwest::redirect::Policy::limited(5) } else { reqwest::redirect::Policy::none() };
    let client = reqwest::Client::builder()
        .default_headers(headers)
        .redirect(redirects)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .build()
        .map_err(|e| ConfigError::invalid(key("url"), format!("cannot build HTTP client: {e}")))?;
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

impl Executor for HttpAgent {
    fn execute<'a>(&'a self, request: &'a AgentRequest) -> BoxFuture<'a, Result<Value, AgentError>> {
        Box::pin(self.post(request))
    }
}

impl HttpAgent {
    async fn post(&self, request: &AgentRequest) -> Result<Value, AgentError> {
        if !self.allow_private {
            self.refuse_private_addresses().await?;
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
            .map_err(|e| {
                AgentError::retryable(ErrorCode::AgentConnection, format!("request failed: {}", error_chain(&e)))
            })?;
        let status = response.status();
        let retry_after = retry_after(response.headers());
        let body = self.read_body(response).await?;
        classify(status, retry_after, &body)
    }

    /// Reads the body chunk by chunk, stopping as soon as it passes the output limit.
    async fn read_body(&self, mut response: reqwest::Response) -> Result<Vec<u8>, AgentError> {
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| {
            AgentError::retryable(ErrorCode::AgentConnection, format!("reading response: {}", error_chain(&e)))
        })? {
            body.extend_from_slice(&chunk);
            super::check_output_size(body.len(), self.max_output_bytes)?;
        }
        Ok(body)
    }

    async fn refuse_private_addresses(&self) -> Result<(), AgentError> {
        let host = self.url.host_str().unwrap_or_default().trim_matches(['[', ']']);
        let port = self.url.port_or_known_default().unwrap_or(80);
        let addresses: Vec<IpAddr> = match host.parse::<IpAddr>() {
            Ok(ip) => vec![ip],
            Err(_) => tokio::net::lookup_host((host, port))
                .await
                .map_err(|e| AgentError::retryable(ErrorCode::AgentConnection, format!("cannot resolve {host}: {e}")))?
                .map(|a| a.ip())
                .collect(),
        };
        if let Some(ip) = addresses.iter().find(|ip| is_private(ip)) {
            return Err(AgentError::permanent(
                ErrorCode::AgentAddressRefused,
                format!("{host} resolves to private address {ip}; set allow_private = true to allow it"),
            ));
        }
        Ok(())
    }
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

/// `Retry-After` as seconds or an HTTP date.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let text = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = text.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let when = chrono::DateTime::parse_from_rfc2822(text).ok()?;
    (when.with_timezone(&chrono::Utc) - chrono::Utc::now()).to_std().ok()
}

fn is_private(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_private(&IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            v6.is_loopback() || v6.is_unspecified() || (first & 0xfe00) == 0xfc00 || (first & 0xffc0) == 0xfe80
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
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

    #[test]
    fn private_addresses_are_recognised() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.0.1",
            "172.16.0.1",
            "169.254.1.1",
            "::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "100.64.0.1",
        ] {
            assert!(is_private(&ip.parse().unwrap()), "{ip}");
        }
        for ip in ["8.8.8.8", "2001:4860::8888"] {
            assert!(!is_private(&ip.parse().unwrap()), "{ip}");
        }
    }
}
