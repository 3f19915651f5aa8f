//! Delivery channels of the notifier (`sla::notifier`), chosen by `connectors.type`: `API`
//! ([`webhook`]: the payload as JSON, signed per Standard Webhooks), `SLACK` ([`slack`]: an
//! incoming webhook message), `EMAIL` ([`email`]: SMTP through lettre, rustls only),
//! `PAGERDUTY` ([`pagerduty`]: Events API v2 trigger, acknowledge and resolve) and `TELEGRAM`
//! ([`telegram`]: a bot's sendMessage). Each reads its connector's `config` JSON strictly (an
//! invalid config is a permanent failure that names the key) and answers a [`Delivery`]:
//! delivered, retryable (connection errors, timeouts, 408, 429, 5xx, SMTP 4xx; with the
//! receiver's Retry-After) or permanent (anything else).
//!
//! Connector configs hold secrets (tokens in URLs, the webhook secret, the SMTP password,
//! PagerDuty's routing key, the Telegram bot token): every message a channel returns has gone
//! through its [`Secrets`], and URLs are shown redacted, so nothing the notifier logs or
//! stores in `last_error` shows them.
//!
//! The human message (Slack, email, Telegram) is rendered from the payload by [`render`]; the
//! payload contract is the sweeper's (`{kind, rule, level, after_seconds, count, sample,
//! act}`). With `admin.public_url` set, messages link to the escalation's page
//! ([`page_link`]).

pub mod email;
pub mod pagerduty;
mod render;
pub mod slack;
pub mod telegram;
pub mod webhook;

use crate::db::notifications::Claimed;
use crate::net::REDACTED;
use crate::net::{self, Redirects};
use reqwest::{StatusCode, Url};
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::time::Duration;
use uuid::Uuid;

use render::clean;
pub use render::{Rendered, render, truncate};

/// Connector types whose deliveries are paced, with their minimum interval: Slack accepts
/// about one message a second per incoming webhook, Telegram about one a second per chat.
pub const PACING: [(&str, Duration); 2] = [("SLACK", Duration::from_secs(1)), ("TELEGRAM", Duration::from_secs(1))];

/// Connector types that follow escalations as incidents: each group a level fires is
/// triggered with a `dedup_key`, and acknowledged and resolved under it when orderly
/// acknowledges and resolves the group (`db::sla::incident_events`), instead of receiving the
/// sweeper's resolved notices.
pub const INCIDENT_TYPES: [&str; 1] = ["PAGERDUTY"];

/// A connector's delivery timeout unless its config sets `timeout`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Bytes of a response body read for classification and the error preview.
const BODY_PREVIEW_BYTES: usize = 4096;

/// How one delivery went.
#[derive(Debug, Clone, PartialEq)]
pub enum Delivery {
    Delivered,
    /// Worth another try later; `retry_after` is the receiver's hint.
    Retryable {
        error: String,
        retry_after: Option<Duration>,
    },
    /// No retry can succeed (a refusal, an invalid connector config).
    Permanent {
        error: String,
    },
}

impl Delivery {
    pub fn retry(error: impl Into<String>) -> Delivery {
        Delivery::Retryable { error: error.into(), retry_after: None }
    }

    pub fn permanent(error: impl Into<String>) -> Delivery {
        Delivery::Permanent { error: error.into() }
    }

    /// The same outcome with its error passed through `secrets`.
    fn scrubbed(self, secrets: &Secrets) -> Delivery {
        match self {
            Delivery::Delivered => Delivery::Delivered,
            Delivery::Retryable { error, retry_after } => {
                Delivery::Retryable { error: secrets.scrub(&error), retry_after }
            }
            Delivery::Permanent { error } => Delivery::Permanent { error: secrets.scrub(&error) },
        }
    }
}

/// The HTTP clients the channels share: one that refuses private addresses, one that allows
/// them (`allow_private = true` in a connector's config). Neither follows redirects.
pub struct Channels {
    public: reqwest::Client,
    private: reqwest::Client,
    /// `admin.public_url`: where messages link to.
    public_url: Option<Url>,
}

impl Channels {
    pub fn new(public_url: Option<Url>) -> reqwest::Result<Channels> {
        let build = |allow_private| {
            net::client_builder(DEFAULT_TIMEOUT, allow_private, Redirects::Refuse)
                .user_agent(concat!("orderly/", env!("CARGO_PKG_VERSION")))
                .build()
        };
        Ok(Channels { public: build(false)?, private: build(true)?, public_url })
    }

    /// The page a notification links to, when `admin.public_url` is set.
    fn link(&self, notification: &Claimed) -> Option<String> {
        self.public_url.as_ref().map(|base| page_link(base, &notification.escalation_ids))
    }

    fn client(&self, allow_private: bool) -> &reqwest::Client {
        if allow_private { &self.private } else { &self.public }
    }

    /// Delivers one claimed notification through its connector's channel, within `cap`
    /// (what is left of the claim's lease) or the connector's own `timeout`, whichever is
    /// shorter. The error of a failure never shows a secret of the connector's config.
    pub async fn deliver(&self, notification: &Claimed, cap: Duration) -> Delivery {
        match notification.connector_type.as_str() {
            "API" => webhook::deliver(self, notification, cap).await,
            "SLACK" => slack::deliver(self, notification, cap).await,
            "EMAIL" => email::deliver(notification, self.link(notification), cap).await,
            "PAGERDUTY" => pagerduty::deliver(self, notification, cap).await,
            "TELEGRAM" => telegram::deliver(self, notification, cap).await,
            other => Delivery::permanent(format!(
                "connector type {other} cannot deliver notifications (API, SLACK, EMAIL, PAGERDUTY and TELEGRAM can)"
            )),
        }
    }
}

/// Parses a connector's config strictly. The error names the key but shows no value of the
/// config (serde quotes values it cannot read, which may be secrets).
fn parse_config<T: DeserializeOwned>(config: &Value) -> Result<T, Delivery> {
    let every_string = Secrets::every_string_in(config);
    serde_path_to_error::deserialize(config).map_err(|e| {
        let key = e.path().to_string();
        let at = if key == "." { String::new() } else { format!("{key}: ") };
        Delivery::permanent(every_string.scrub(&format!("invalid connector config: {at}{}", e.inner())))
    })
}

/// The connector's `timeout` (a duration string, above 0 and at most 1 day), else
/// [`DEFAULT_TIMEOUT`]; never more than `cap`.
fn timeout(configured: Option<&str>, cap: Duration) -> Result<Duration, Delivery> {
    let timeout = match configured {
        Some(text) => crate::model::parse_duration("config.timeout", text)
            .map_err(|e| Delivery::permanent(format!("invalid connector config: {e}")))?,
        None => DEFAULT_TIMEOUT,
    };
    Ok(timeout.min(cap))
}

/// An http(s) URL from a connector's config; the error does not show it.
fn http_url(text: &str) -> Result<Url, Delivery> {
    let url = Url::parse(text).map_err(|e| Delivery::permanent(format!("invalid connector config: url: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || !url.has_host() {
        return Err(Delivery::permanent("invalid connector config: url must be an http:// or https:// URL"));
    }
    Ok(url)
}

/// What a delivery's errors may show of a URL: the agents' redaction (user name, password,
/// query values and fragment hidden).
fn shown_url(url: &Url) -> String {
    crate::net::redact_agent_url(url.as_str())
}

/// The page of one escalation (`{public_url}/escalations/{id}`), or the escalations list when
/// a message is about several (or none).
pub fn page_link(public_url: &Url, escalations: &[Uuid]) -> String {
    let base = public_url.as_str().trim_end_matches('/');
    match escalations {
        [one] => format!("{base}/escalations/{one}"),
        _ => format!("{base}/escalations"),
    }
}

/// Sends a prepared POST and classifies the answer: 2xx delivered; 408, 429, 5xx and
/// connection errors retryable (with Retry-After); 3xx (redirects are not followed) and
/// other 4xx permanent. `permanent_body` lets a channel call a failure permanent by its
/// body (Slack's error codes). A refused private address is permanent.
async fn post(request: reqwest::RequestBuilder, shown: &str, permanent_body: impl Fn(&str) -> bool) -> Delivery {
    match send(request, shown).await {
        Ok(answer) => classify(answer.status, answer.retry_after, &answer.preview(), shown, permanent_body),
        Err(failed) => failed,
    }
}

/// What a receiver answered a POST.
struct Answer {
    status: StatusCode,
    /// The `Retry-After` header.
    retry_after: Option<Duration>,
    /// The first [`BODY_PREVIEW_BYTES`] of the body, as sent (lossy UTF-8).
    body: String,
}

impl Answer {
    /// The body for an error message: control characters out, at most 300 characters.
    fn preview(&self) -> String {
        preview(&self.body)
    }
}

/// Sends a prepared POST. A connection error or a timeout is retryable, a refused private
/// address permanent.
async fn send(request: reqwest::RequestBuilder, shown: &str) -> Result<Answer, Delivery> {
    let response = match request.send().await {
        Ok(response) => response,
        Err(e) => {
            if let Some(refused) = net::address_refused(&e) {
                return Err(Delivery::permanent(format!("POST {shown} refused: {refused}")));
            }
            let what = if e.is_timeout() { "timed out" } else { "failed" };
            return Err(Delivery::retry(format!("POST {shown} {what}: {}", net::error_chain(e))));
        }
    };
    let status = response.status();
    let retry_after = net::retry_after(response.headers());
    let body = read_body(response).await;
    Ok(Answer { status, retry_after, body })
}

fn classify(
    status: StatusCode,
    retry_after: Option<Duration>,
    body: &str,
    shown: &str,
    permanent_body: impl Fn(&str) -> bool,
) -> Delivery {
    let answered = || {
        let body = body.trim();
        if body.is_empty() {
            format!("POST {shown} answered {status}")
        } else {
            format!("POST {shown} answered {status}: {body}")
        }
    };
    match status.as_u16() {
        200..=299 => Delivery::Delivered,
        _ if permanent_body(body.trim()) => Delivery::permanent(answered()),
        300..=399 => Delivery::permanent(format!("{}; redirects are not followed", answered())),
        408 | 429 | 500..=599 => Delivery::Retryable { error: answered(), retry_after },
        _ => Delivery::permanent(answered()),
    }
}

/// The first [`BODY_PREVIEW_BYTES`] of a body (lossy UTF-8); a body that cannot be read
/// counts as empty (the status decides).
async fn read_body(mut response: reqwest::Response) -> String {
    let mut body = Vec::new();
    while body.len() < BODY_PREVIEW_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            Ok(None) | Err(_) => break,
        }
    }
    body.truncate(BODY_PREVIEW_BYTES);
    String::from_utf8_lossy(&body).into_owned()
}

/// A body as an error shows it: control characters out (newlines kept), at most 300
/// characters.
fn preview(body: &str) -> String {
    truncate(&clean(body, true), 300)
}

/// Secret strings of one connector's config, replaced by `<redacted>` in every error.
#[derive(Debug, Default, Clone)]
pub struct Secrets(Vec<String>);

impl Secrets {
    /// Strings shorter than this are not scrubbed (a query value `1` would mangle the text);
    /// secrets are longer.
    const MIN_LEN: usize = 4;

    pub fn add(&mut self, secret: &str) {
        if secret.chars().count() >= Self::MIN_LEN && !self.0.iter().any(|s| s == secret) {
            self.0.push(secret.to_owned());
            // Longest first, so a secret containing another is replaced whole.
            self.0.sort_by_key(|s| std::cmp::Reverse(s.len()));
        }
    }

    /// A URL's user name, password, query values and fragment, as written and decoded.
    pub fn add_url(&mut self, url: &Url) {
        self.add(url.username());
        if let Some(password) = url.password() {
            self.add(password);
        }
        if let Some(query) = url.query() {
            for pair in query.split('&') {
                self.add(pair.split_once('=').map_or(pair, |(_, value)| value));
            }
        }
        for (_, value) in url.query_pairs() {
            self.add(&value);
        }
        if let Some(fragment) = url.fragment() {
            self.add(fragment);
        }
        for text in [url.username(), url.password().unwrap_or_default(), url.fragment().unwrap_or_default()] {
            if let Ok(decoded) = percent_decode(text) {
                self.add(&decoded);
            }
        }
    }

    /// Every string anywhere in `value` (for errors about a config that could not be read).
    pub fn every_string_in(value: &Value) -> Secrets {
        let mut secrets = Secrets::default();
        fn walk(value: &Value, secrets: &mut Secrets) {
            match value {
                Value::String(text) => secrets.add(text),
                Value::Array(items) => items.iter().for_each(|item| walk(item, secrets)),
                Value::Object(map) => map.values().for_each(|item| walk(item, secrets)),
                _ => {}
            }
        }
        walk(value, &mut secrets);
        secrets
    }

    pub fn scrub(&self, text: &str) -> String {
        self.0.iter().fold(text.to_owned(), |text, secret| text.replace(secret.as_str(), REDACTED))
    }
}

fn percent_decode(text: &str) -> Result<String, std::string::FromUtf8Error> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(Some(high)), Some(Some(low))) =
                (bytes.get(i + 1).map(|b| hex(*b)), bytes.get(i + 2).map(|b| hex(*b)))
        {
            out.push((high * 16 + low) as u8);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out)
}

#[cfg(test)]
mod tests;
