//! `SLACK` connectors: a message to an incoming webhook.
//!
//! Config: `{"url", "allow_private"?: false, "timeout"?: "10s"}`. The message is
//! `{"text": <plain-text fallback>, "blocks": [...]}` rendered from the payload, within
//! Slack's limits (text at most 40,000 characters, at most 50 blocks, a header at most 150
//! and a section's text at most 3,000). Slack answers errors as plain-text codes:
//! `channel_not_found`, `no_service`, `invalid_token` and the other codes of a webhook
//! that can never work are permanent whatever the status; 429 and 5xx are retried (with
//! Retry-After). Deliveries are paced to one a second per connector (`PACING`). The
//! webhook URL's path is its secret: errors show only its scheme and host. With
//! `admin.public_url` set, the message links to the escalation's page.

use super::{Channels, Delivery, Rendered, Secrets, http_url, parse_config, post, render, timeout};
use crate::db::notifications::Claimed;
use serde::Deserialize;
use serde_json::{Value, json};
use std::time::Duration;

/// Slack's limits for a message.
pub const MAX_TEXT: usize = 40_000;
pub const MAX_BLOCKS: usize = 50;
pub const MAX_SECTION_TEXT: usize = 3_000;
pub const MAX_HEADER_TEXT: usize = 150;

/// Answers of a webhook that no retry can fix.
const PERMANENT_CODES: [&str; 9] = [
    "channel_not_found",
    "no_service",
    "invalid_token",
    "channel_is_archived",
    "action_prohibited",
    "posting_to_general_channel_denied",
    "no_active_hooks",
    "team_disabled",
    "invalid_payload",
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SlackConfig {
    url: String,
    #[serde(default)]
    allow_private: bool,
    timeout: Option<String>,
}

pub(super) async fn deliver(channels: &Channels, notification: &Claimed, cap: Duration) -> Delivery {
    let config: SlackConfig = match parse_config(&notification.config) {
        Ok(config) => config,
        Err(invalid) => return invalid,
    };
    let mut secrets = Secrets::default();
    if let Ok(url) = reqwest::Url::parse(&config.url) {
        secrets.add_url(&url);
        for segment in url.path_segments().into_iter().flatten() {
            secrets.add(segment);
        }
    }
    send(channels, notification, &config, cap).await.unwrap_or_else(|failed| failed).scrubbed(&secrets)
}

async fn send(
    channels: &Channels,
    notification: &Claimed,
    config: &SlackConfig,
    cap: Duration,
) -> Result<Delivery, Delivery> {
    let url = http_url(&config.url)?;
    let timeout = timeout(config.timeout.as_deref(), cap)?;
    let shown = shown(&url);
    if !config.allow_private {
        crate::net::refuse_private_literal(&url)
            .map_err(|refused| Delivery::permanent(format!("POST {shown} refused: {refused}")))?;
    }
    let message = message(&render(&notification.kind, &notification.payload).with_link(channels.link(notification)));
    let request = channels
        .client(config.allow_private)
        .post(url)
        .timeout(timeout)
        .header("content-type", "application/json")
        .body(message.to_string());
    Ok(post(request, &shown, |body| PERMANENT_CODES.iter().any(|code| body.contains(code))).await)
}

/// Scheme, host and port; the path (the webhook's token) is not shown.
fn shown(url: &reqwest::Url) -> String {
    let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
    format!("{}://{}{port}/…", url.scheme(), url.host_str().unwrap_or_default())
}

/// The webhook message: a fallback text and blocks (header, summary, items, tenants, how to
/// act), each within Slack's limits.
pub fn message(rendered: &Rendered) -> Value {
    let icon = if rendered.fired { ":rotating_light:" } else { ":white_check_mark:" };
    let title = rendered.subject.trim_start_matches("[orderly] ");
    let mut blocks =
        vec![json!({"type": "header", "text": {"type": "plain_text", "text": fit_plain(title, MAX_HEADER_TEXT)}})];
    let mut summary = format!("{icon} {}", escape(&rendered.headline));
    for line in &rendered.details {
        summary.push('\n');
        summary.push_str(&escape(line));
    }
    blocks.push(section(&summary));
    if let Some(link) = &rendered.link {
        // `<url|text>`: the URL escaped as message text is.
        blocks.push(section(&format!("*<{}|Open in orderly>*", escape(link))));
    }
    if !rendered.items.is_empty() {
        let mut items = format!("*{}*", escape(&rendered.items_heading()));
        for item in &rendered.items {
            items.push_str("\n• ");
            items.push_str(&escape(item));
        }
        blocks.push(section(&items));
    }
    if !rendered.tenants.is_empty() {
        let tenants = format!("Tenants: {}", escape(&rendered.tenants.join(", ")));
        blocks.push(
            json!({"type": "context", "elements": [{"type": "mrkdwn", "text": fit(&tenants, MAX_SECTION_TEXT)}]}),
        );
    }
    if let Some(act) = &rendered.act {
        // A ``` inside would end the code block early.
        blocks.push(section(&format!("*How to act*\n```{}```", escape(&act.replace("```", "'''")))));
    }
    blocks.truncate(MAX_BLOCKS);
    json!({"text": fit(&escape(&rendered.text()), MAX_TEXT), "blocks": blocks})
}

fn section(mrkdwn: &str) -> Value {
    json!({"type": "section", "text": {"type": "mrkdwn", "text": fit(mrkdwn, MAX_SECTION_TEXT)}})
}

/// Slack's escaping of `&`, `<` and `>` in message text.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// At most `max` characters of escaped text, never cutting an entity in two.
fn fit(escaped: &str, max: usize) -> String {
    if escaped.chars().count() <= max {
        return escaped.to_owned();
    }
    let mut cut: String = escaped.chars().take(max - 1).collect();
    if let Some(amp) = cut.rfind('&')
        && !cut[amp..].contains(';')
    {
        cut.truncate(amp);
    }
    cut.push('…');
    cut
}

/// Plain text (not escaped: a header is `plain_text`) of at most `max` characters.
fn fit_plain(text: &str, max: usize) -> String {
    super::truncate(text, max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_payloads_stay_within_slack_limits() {
        let long = "x<&>".repeat(5_000);
        let sample: Vec<Value> = (0..40)
            .map(|i| {
                json!({"work_item_id": format!("{i}-{long}"), "work_order_id": long, "tenant_id": format!("t{i}{long}"),
                       "item_type": "INVOICE", "priority": "HIGH", "late_by_seconds": 60})
            })
            .collect();
        let payload = json!({"kind": "FIRED", "rule": {"name": long, "clock": "TIME_TO_START"}, "level": 3,
                             "after_seconds": 60, "count": 100000, "sample": sample, "act": long});
        let message = message(&render("FIRED", &payload));
        assert!(message["text"].as_str().unwrap().chars().count() <= MAX_TEXT);
        let blocks = message["blocks"].as_array().unwrap();
        assert!(!blocks.is_empty() && blocks.len() <= MAX_BLOCKS);
        for block in blocks {
            let texts: Vec<&str> = match block["type"].as_str().unwrap() {
                "context" => {
                    block["elements"].as_array().unwrap().iter().map(|e| e["text"].as_str().unwrap()).collect()
                }
                _ => vec![block["text"]["text"].as_str().unwrap()],
            };
            for text in texts {
                let limit = if block["type"] == "header" { MAX_HEADER_TEXT } else { MAX_SECTION_TEXT };
                assert!(text.chars().count() <= limit, "{} over {limit}", block["type"]);
                if block["type"] != "header" {
                    assert!(!text.contains('<') && !text.contains('>'), "unescaped text in {}", block["type"]);
                    let tail = &text[text.rfind('&').unwrap_or(0)..];
                    assert!(!tail.starts_with('&') || tail.contains(';'), "a cut entity: {tail}");
                }
            }
        }
    }

    #[test]
    fn a_message_names_the_rule_items_and_how_to_act() {
        let payload = json!({"kind": "FIRED", "rule": {"name": "tickets", "clock": "TIME_TO_FINISH"}, "level": 1,
            "after_seconds": 300, "count": 1, "act": "orderly escalations ack <id>",
            "sample": [{"work_item_id": "i-1", "work_order_id": "o-1", "tenant_id": "t-1", "item_type": "TICKET",
                        "priority": "URGENT", "late_by_seconds": 61}]});
        let message = message(&render("FIRED", &payload));
        let all = message.to_string();
        for expected in
            ["tickets", "level 1", "i-1", "o-1", "t-1", "late by 1m 1s", "orderly escalations ack &lt;id&gt;"]
        {
            assert!(all.contains(expected), "missing {expected} in {all}");
        }
    }

    #[test]
    fn a_message_links_to_the_page_when_there_is_one() {
        let payload = json!({"kind": "FIRED", "rule": {"name": "tickets"}, "level": 1, "count": 1});
        let link = "https://orderly.example/escalations/0190aaaa-0000-7000-8000-000000000001";
        let message = message(&render("FIRED", &payload).with_link(Some(link.into())));
        let blocks = message["blocks"].as_array().unwrap();
        assert!(blocks.iter().any(|b| b["text"]["text"] == format!("*<{link}|Open in orderly>*")), "{message}");
        assert!(message["text"].as_str().unwrap().contains(&format!("Open in orderly: {link}")), "{message}");
        let unlinked = super::message(&render("FIRED", &payload));
        assert!(!unlinked.to_string().contains("Open in orderly"), "{unlinked}");
    }

    #[test]
    fn errors_show_the_host_but_not_the_webhook_path() {
        let url = reqwest::Url::parse("https://hooks.slack.com/services/T000/B000/XXXXSECRET").unwrap();
        assert_eq!(shown(&url), "https://hooks.slack.com/…");
    }
}
