//! `PAGERDUTY` connectors: PagerDuty's Events API v2, one incident per group of escalations.
//!
//! Config: `{"routing_key", "url"?: "https://events.pagerduty.com/v2/enqueue", "severity"?:
//! "critical" | "error" | "warning" | "info", "source"?: "orderly", "allow_private"?: false,
//! "timeout"?: "10s"}`.
//!
//! A FIRED notification is a `trigger` under the notification's `dedup_key` (made when the
//! sweeper queued it: `orderly:{rule id}:L{level}:{notification id}`), with a summary (the
//! rendered subject), the severity and source, the rule's clock as `class` and its name as
//! `group`, the sweeper's payload as `custom_details`, and a link to the escalation's page
//! when `admin.public_url` is set. The ACKNOWLEDGED and RESOLVED notifications that
//! `db::sla::incident_events` queues once orderly has acknowledged or resolved the whole group
//! are `acknowledge` and `resolve` under the same key; the claim sends them after the trigger.
//!
//! PagerDuty answers 202 (any 2xx is delivered); 429 and 5xx are retried (with Retry-After),
//! 400 (an invalid event) and other 4xx are permanent. The routing key is a secret: no error
//! shows it.

use super::{Channels, Delivery, Secrets, http_url, parse_config, post, render, shown_url, timeout, truncate};
use crate::db::notifications::Claimed;
use serde::Deserialize;
use serde_json::{Value, json};
use std::time::Duration;

/// The Events API v2 endpoint unless the config names another (`url`).
pub const DEFAULT_URL: &str = "https://events.pagerduty.com/v2/enqueue";

/// PagerDuty's limit on `payload.summary`.
pub const MAX_SUMMARY: usize = 1024;

/// The incident's urgency as PagerDuty reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Severity {
    #[default]
    Critical,
    Error,
    Warning,
    Info,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Info => "info",
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PagerDutyConfig {
    routing_key: String,
    url: Option<String>,
    #[serde(default)]
    severity: Severity,
    source: Option<String>,
    #[serde(default)]
    allow_private: bool,
    timeout: Option<String>,
}

/// What an event does to its incident.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventAction {
    Trigger,
    Acknowledge,
    Resolve,
}

impl EventAction {
    /// The action of a notification of this kind (`notifications.kind`).
    pub fn of_kind(kind: &str) -> Option<EventAction> {
        match kind {
            "FIRED" => Some(EventAction::Trigger),
            "ACKNOWLEDGED" => Some(EventAction::Acknowledge),
            "RESOLVED" => Some(EventAction::Resolve),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            EventAction::Trigger => "trigger",
            EventAction::Acknowledge => "acknowledge",
            EventAction::Resolve => "resolve",
        }
    }
}

pub(super) async fn deliver(channels: &Channels, notification: &Claimed, cap: Duration) -> Delivery {
    let config: PagerDutyConfig = match parse_config(&notification.config) {
        Ok(config) => config,
        Err(invalid) => return invalid,
    };
    let mut secrets = Secrets::default();
    secrets.add(&config.routing_key);
    if let Some(url) = config.url.as_deref().and_then(|url| reqwest::Url::parse(url).ok()) {
        secrets.add_url(&url);
    }
    send(channels, notification, &config, cap).await.unwrap_or_else(|failed| failed).scrubbed(&secrets)
}

async fn send(
    channels: &Channels,
    notification: &Claimed,
    config: &PagerDutyConfig,
    cap: Duration,
) -> Result<Delivery, Delivery> {
    let url = http_url(config.url.as_deref().unwrap_or(DEFAULT_URL))?;
    let timeout = timeout(config.timeout.as_deref(), cap)?;
    if !config.allow_private {
        crate::net::refuse_private_literal(&url)
            .map_err(|refused| Delivery::permanent(format!("POST {} refused: {refused}", shown_url(&url))))?;
    }
    let event = event(notification, config, channels.link(notification).as_deref())?;
    let request = channels
        .client(config.allow_private)
        .post(url.clone())
        .timeout(timeout)
        .header("content-type", "application/json")
        .body(event.to_string());
    Ok(post(request, &shown_url(&url), |_| false).await)
}

/// The Events API v2 event of a notification: `{routing_key, event_action, dedup_key, payload
/// (triggers only), client, client_url, links}`.
fn event(notification: &Claimed, config: &PagerDutyConfig, link: Option<&str>) -> Result<Value, Delivery> {
    let invalid = |what: &str| Delivery::permanent(format!("invalid connector config: {what}"));
    if config.routing_key.trim().is_empty() || config.routing_key.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid("routing_key must be the integration key of an Events API v2 integration"));
    }
    let source = config.source.as_deref().unwrap_or("orderly");
    if source.trim().is_empty() {
        return Err(invalid("source must not be empty"));
    }
    let action = EventAction::of_kind(&notification.kind).ok_or_else(|| {
        Delivery::permanent(format!(
            "a {} notification has no PagerDuty event (FIRED, ACKNOWLEDGED and RESOLVED do)",
            notification.kind
        ))
    })?;
    let dedup_key = match (&notification.dedup_key, action) {
        (Some(key), _) => key.clone(),
        // A trigger queued by hand: a key of its own.
        (None, EventAction::Trigger) => format!("orderly:notification:{}", notification.id),
        (None, _) => {
            return Err(Delivery::permanent(format!(
                "a {} notification without a dedup_key cannot name its incident: PagerDuty connectors \
                 are acknowledged and resolved by the events orderly queues for their own triggers",
                notification.kind
            )));
        }
    };
    let links: Vec<Value> = link.map(|href| json!({"href": href, "text": "Open in orderly"})).into_iter().collect();
    let mut event = json!({
        "routing_key": config.routing_key,
        "event_action": action.as_str(),
        "dedup_key": dedup_key,
        "client": "orderly",
        "links": links,
    });
    if let Some(link) = link {
        event["client_url"] = json!(link);
    }
    if action == EventAction::Trigger {
        let rendered = render(&notification.kind, &notification.payload);
        let summary = rendered.subject.trim_start_matches("[orderly] ");
        let mut payload = json!({
            "summary": truncate(summary, MAX_SUMMARY),
            "source": source,
            "severity": config.severity.as_str(),
            "timestamp": notification.created_at.to_rfc3339(),
            "component": "orderly",
            "custom_details": notification.payload,
        });
        for (key, value) in
            [("class", &notification.payload["rule"]["clock"]), ("group", &notification.payload["rule"]["name"])]
        {
            if let Some(text) = value.as_str() {
                payload[key] = json!(truncate(text, 255));
            }
        }
        event["payload"] = payload;
    }
    Ok(event)
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    const ROUTING_KEY: &str = "R0UTINGKEYSECRET0123456789abcdef";

    fn claimed(kind: &str, dedup_key: Option<&str>, config: Value) -> Claimed {
        Claimed {
            tenant: None,
            id: Uuid::nil(),
            kind: kind.to_owned(),
            payload: json!({"kind": kind, "rule": {"id": "r-1", "name": "tickets start", "clock": "TIME_TO_START"},
                            "level": 1, "after_seconds": 60, "count": 2, "sample": []}),
            rule_id: None,
            level: Some(1),
            escalation_ids: vec![Uuid::nil()],
            dedup_key: dedup_key.map(str::to_owned),
            attempts: 1,
            created_at: chrono::Utc::now(),
            connector_id: Uuid::nil(),
            connector_name: "pager".into(),
            connector_type: "PAGERDUTY".into(),
            config,
        }
    }

    fn config(value: Value) -> Result<PagerDutyConfig, Delivery> {
        parse_config(&value)
    }

    #[test]
    fn config_defaults_and_strictness() {
        let Ok(parsed) = config(json!({"routing_key": ROUTING_KEY})) else { panic!("a minimal config parses") };
        assert_eq!((parsed.url, parsed.severity, parsed.allow_private), (None, Severity::Critical, false));
        let Ok(parsed) = config(json!({"routing_key": ROUTING_KEY, "severity": "warning", "source": "eu-1"})) else {
            panic!("severity and source parse")
        };
        assert_eq!((parsed.severity, parsed.source.as_deref()), (Severity::Warning, Some("eu-1")));
        for (bad, key) in [
            (json!({"routing_key": ROUTING_KEY, "severity": "SECRETCANARY"}), "severity"),
            (json!({"routing_key": ROUTING_KEY, "routingkey": "x"}), "routingkey"),
            (json!({"url": "https://events.pagerduty.com/v2/enqueue"}), "routing_key"),
        ] {
            let Err(Delivery::Permanent { error }) = config(bad.clone()) else { panic!("{bad} accepted") };
            assert!(error.contains(key) && !error.contains("SECRETCANARY"), "{error}");
        }
    }

    #[test]
    fn a_trigger_carries_the_key_the_summary_and_the_link() {
        let notification = claimed("FIRED", Some("orderly:r-1:L1:n-1"), json!({}));
        let Ok(parsed) = config(json!({"routing_key": ROUTING_KEY, "severity": "error"})) else { panic!() };
        let link = "https://orderly.example/escalations/00000000-0000-0000-0000-000000000000";
        let Ok(event) = event(&notification, &parsed, Some(link)) else { panic!("the event builds") };
        assert_eq!(event["routing_key"], ROUTING_KEY);
        assert_eq!(event["event_action"], "trigger");
        assert_eq!(event["dedup_key"], "orderly:r-1:L1:n-1");
        assert_eq!(event["payload"]["summary"], "SLA breached: \"tickets start\" level 1, 2 items late");
        assert_eq!(event["payload"]["severity"], "error");
        assert_eq!(event["payload"]["source"], "orderly");
        assert_eq!(event["payload"]["class"], "TIME_TO_START");
        assert_eq!(event["payload"]["group"], "tickets start");
        assert_eq!(event["payload"]["custom_details"]["count"], 2);
        assert_eq!(event["links"], json!([{"href": link, "text": "Open in orderly"}]));
        assert_eq!(event["client_url"], link);
    }

    #[test]
    fn acknowledge_and_resolve_name_the_incident_only() {
        let Ok(parsed) = config(json!({"routing_key": ROUTING_KEY})) else { panic!() };
        for (kind, action) in [("ACKNOWLEDGED", "acknowledge"), ("RESOLVED", "resolve")] {
            let Ok(event) = event(&claimed(kind, Some("orderly:r-1:L1:n-1"), json!({})), &parsed, None) else {
                panic!("{kind} builds")
            };
            assert_eq!(
                (event["event_action"].as_str(), event["dedup_key"].as_str()),
                (Some(action), Some("orderly:r-1:L1:n-1"))
            );
            assert!(event.get("payload").is_none() && event["links"] == json!([]), "{event}");
            let Err(Delivery::Permanent { error }) = super::event(&claimed(kind, None, json!({})), &parsed, None)
            else {
                panic!("{kind} without a key is refused")
            };
            assert!(error.contains("dedup_key"), "{error}");
        }
        let Ok(event) = event(&claimed("FIRED", None, json!({})), &parsed, None) else { panic!() };
        assert_eq!(event["dedup_key"], format!("orderly:notification:{}", Uuid::nil()));
    }

    /// A receiver that echoes the event back in a 400 (as an invalid-event answer quotes it):
    /// the error names the status and never the routing key.
    #[tokio::test]
    async fn the_routing_key_never_appears_in_an_error() {
        let app = axum::Router::new().fallback(|body: String| async move {
            (axum::http::StatusCode::BAD_REQUEST, format!("{{\"status\":\"invalid event\",\"echo\":{body}}}"))
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v2/enqueue?token=QUERYSECRET", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let channels = Channels::new(None).unwrap();
        let notification =
            claimed("FIRED", Some("k"), json!({"routing_key": ROUTING_KEY, "url": url, "allow_private": true}));
        let Delivery::Permanent { error } = deliver(&channels, &notification, Duration::from_secs(5)).await else {
            panic!("a 400 is permanent")
        };
        assert!(error.contains("400") && error.contains("invalid event"), "{error}");
        assert!(!error.contains(ROUTING_KEY) && !error.contains("QUERYSECRET"), "{error}");
    }
}
