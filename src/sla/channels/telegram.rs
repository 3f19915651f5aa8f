//! `TELEGRAM` connectors: a message from a bot to a chat, through the Bot API's
//! `sendMessage`.
//!
//! Config: `{"bot_token", "chat_id": <number> | "@channel", "api_url"?:
//! "https://api.telegram.org", "parse_mode"?: "HTML" | "MarkdownV2",
//! "disable_web_page_preview"?: true, "allow_private"?: false, "timeout"?: "10s"}`.
//!
//! The message is the rendered notification as text (its title, then what Slack and email
//! say, with the link to the escalation's page when `admin.public_url` is set), at most 4,096
//! characters; plain text unless `parse_mode` is set, and then escaped for it. POSTed as JSON
//! to `{api_url}/bot{bot_token}/sendMessage`. Telegram answers `{"ok": true, ...}`; a 429
//! carries `parameters.retry_after` (seconds) in its body, which is the retry's delay (the
//! notifier holds the connector that long); 408 and 5xx are retried; other answers (400
//! `chat not found`, 401 a revoked token, 403 a bot removed from the chat, a 2xx that is not
//! `"ok": true`) are permanent. Deliveries are paced to one a second per connector (`PACING`).
//!
//! The bot token is a secret and it is in the URL's path: errors show the URL with
//! `bot<redacted>`, and scrub the token (and its secret part, after the colon) from anything
//! else they quote.

use super::{Answer, Channels, Delivery, Rendered, Secrets, http_url, parse_config, render, send, shown_url, timeout};
use crate::db::notifications::Claimed;
use crate::net::REDACTED;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::time::Duration;

/// The Bot API unless the config names another (`api_url`).
pub const DEFAULT_API_URL: &str = "https://api.telegram.org";

/// Telegram's limit on a message's text (after entities are parsed), in UTF-16 code units.
pub const MAX_TEXT: usize = 4096;

/// A chat: its numeric id (groups are negative) or `@channelusername`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(untagged)]
enum ChatId {
    Id(i64),
    Name(String),
}

/// How Telegram parses the text. The text is escaped for it: only orderly's own markup
/// (the bold title) is formatted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
enum ParseMode {
    #[serde(rename = "HTML")]
    Html,
    MarkdownV2,
}

impl ParseMode {
    fn as_str(self) -> &'static str {
        match self {
            ParseMode::Html => "HTML",
            ParseMode::MarkdownV2 => "MarkdownV2",
        }
    }
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TelegramConfig {
    bot_token: String,
    chat_id: ChatId,
    api_url: Option<String>,
    parse_mode: Option<ParseMode>,
    #[serde(default = "yes")]
    disable_web_page_preview: bool,
    #[serde(default)]
    allow_private: bool,
    timeout: Option<String>,
}

pub(super) async fn deliver(channels: &Channels, notification: &Claimed, cap: Duration) -> Delivery {
    let config: TelegramConfig = match parse_config(&notification.config) {
        Ok(config) => config,
        Err(invalid) => return invalid,
    };
    let secrets = secrets(&config);
    send_message(channels, notification, &config, cap).await.unwrap_or_else(|failed| failed).scrubbed(&secrets)
}

/// The token whole and its secret part (after the bot's id), and the API URL's credentials.
fn secrets(config: &TelegramConfig) -> Secrets {
    let mut secrets = Secrets::default();
    secrets.add(&config.bot_token);
    if let Some((_, secret)) = config.bot_token.split_once(':') {
        secrets.add(secret);
    }
    if let Some(url) = config.api_url.as_deref().and_then(|url| reqwest::Url::parse(url).ok()) {
        secrets.add_url(&url);
    }
    secrets
}

async fn send_message(
    channels: &Channels,
    notification: &Claimed,
    config: &TelegramConfig,
    cap: Duration,
) -> Result<Delivery, Delivery> {
    let invalid = |what: &str| Delivery::permanent(format!("invalid connector config: {what}"));
    if !valid_token(&config.bot_token) {
        return Err(invalid("bot_token must be a bot's token as BotFather gives it (digits, a colon, then the key)"));
    }
    if matches!(&config.chat_id, ChatId::Name(name) if name.trim().is_empty()) {
        return Err(invalid("chat_id must be a chat's numeric id or \"@channelusername\""));
    }
    let api = http_url(config.api_url.as_deref().unwrap_or(DEFAULT_API_URL))?;
    let timeout = timeout(config.timeout.as_deref(), cap)?;
    let shown = format!("{}/bot{REDACTED}/sendMessage", shown_url(&api).trim_end_matches('/'));
    if !config.allow_private {
        crate::net::refuse_private_literal(&api)
            .map_err(|refused| Delivery::permanent(format!("POST {shown} refused: {refused}")))?;
    }
    let url = http_url(&format!("{}/bot{}/sendMessage", api.as_str().trim_end_matches('/'), config.bot_token))?;
    let rendered = render(&notification.kind, &notification.payload).with_link(channels.link(notification));
    let mut body = json!({
        "chat_id": config.chat_id,
        "text": text(&rendered, config.parse_mode),
        "disable_web_page_preview": config.disable_web_page_preview,
    });
    if let Some(mode) = config.parse_mode {
        body["parse_mode"] = json!(mode.as_str());
    }
    let request = channels
        .client(config.allow_private)
        .post(url)
        .timeout(timeout)
        .header("content-type", "application/json")
        .body(body.to_string());
    Ok(match send(request, &shown).await {
        Ok(answer) => classify(&answer, &shown),
        Err(failed) => failed,
    })
}

/// `123456789:AAH…`: the bot's id, a colon, the key (letters, digits, `_` and `-`). Nothing
/// else can be put in the URL's path.
fn valid_token(token: &str) -> bool {
    token.split_once(':').is_some_and(|(id, key)| {
        !id.is_empty()
            && id.chars().all(|c| c.is_ascii_digit())
            && !key.is_empty()
            && key.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))
    })
}

/// Telegram's answer: `{"ok": true}` delivered; 429 retried after its `parameters.retry_after`
/// (else the Retry-After header); 408 and 5xx retried; anything else permanent.
fn classify(answer: &Answer, shown: &str) -> Delivery {
    let status = answer.status;
    let json: Option<Value> = serde_json::from_str(&answer.body).ok();
    let answered = || {
        let preview = answer.preview();
        let preview = preview.trim();
        if preview.is_empty() {
            format!("POST {shown} answered {status}")
        } else {
            format!("POST {shown} answered {status}: {preview}")
        }
    };
    match status.as_u16() {
        200..=299 if is_ok(&answer.body, json.as_ref()) => Delivery::Delivered,
        200..=299 => Delivery::permanent(format!("{}; not Telegram's {{\"ok\": true}}", answered())),
        429 => {
            let hinted = json
                .as_ref()
                .and_then(|j| j["parameters"]["retry_after"].as_f64())
                .filter(|seconds| seconds.is_finite() && *seconds >= 0.0)
                .map(|seconds| Duration::from_secs_f64(seconds.min(86_400.0)));
            Delivery::Retryable { error: answered(), retry_after: hinted.or(answer.retry_after) }
        }
        408 | 500..=599 => Delivery::Retryable { error: answered(), retry_after: answer.retry_after },
        300..=399 => Delivery::permanent(format!("{}; redirects are not followed", answered())),
        _ => {
            let migrated = json.as_ref().and_then(|j| j["parameters"]["migrate_to_chat_id"].as_i64());
            match migrated {
                Some(id) => {
                    Delivery::permanent(format!("{}; the group became a supergroup: set chat_id to {id}", answered()))
                }
                None => Delivery::permanent(answered()),
            }
        }
    }
}

/// `"ok": true`, also in a body cut at the preview's length (a long message echoed back).
fn is_ok(body: &str, json: Option<&Value>) -> bool {
    match json {
        Some(json) => json["ok"] == json!(true),
        None => body.chars().filter(|c| !c.is_whitespace()).take(10).collect::<String>() == "{\"ok\":true",
    }
}

/// The message: the title (bold when parsed), a blank line, the rendered text; cut to
/// [`MAX_TEXT`] before escaping (Telegram counts the text after parsing).
fn text(rendered: &Rendered, mode: Option<ParseMode>) -> String {
    let title = fit(rendered.subject.trim_start_matches("[orderly] "), 256);
    let body = fit(&rendered.text(), MAX_TEXT - utf16_len(&title) - 2);
    match mode {
        None => format!("{title}\n\n{body}"),
        Some(ParseMode::Html) => format!("<b>{}</b>\n\n{}", escape_html(&title), escape_html(&body)),
        Some(ParseMode::MarkdownV2) => format!("*{}*\n\n{}", escape_markdown(&title), escape_markdown(&body)),
    }
}

fn utf16_len(text: &str) -> usize {
    text.chars().map(char::len_utf16).sum()
}

/// At most `max` UTF-16 code units, `…` marking a cut.
fn fit(text: &str, max: usize) -> String {
    let text = text.trim_end();
    if utf16_len(text) <= max {
        return text.to_owned();
    }
    let mut cut = String::new();
    let mut used = 0;
    for c in text.chars() {
        if used + c.len_utf16() > max.saturating_sub(1) {
            break;
        }
        used += c.len_utf16();
        cut.push(c);
    }
    cut.push('…');
    cut
}

fn escape_html(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// Every character MarkdownV2 reserves, and the backslash, escaped with a backslash.
fn escape_markdown(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if "_*[]()~`>#+-=|{}.!\\".contains(c) {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::StatusCode;
    use uuid::Uuid;

    const TOKEN: &str = "123456789:AAHsecretPART-of_the_token";

    fn config(value: Value) -> Result<TelegramConfig, Delivery> {
        parse_config(&value)
    }

    fn answer(status: u16, body: &str) -> Answer {
        Answer { status: StatusCode::from_u16(status).unwrap(), retry_after: None, body: body.to_owned() }
    }

    fn claimed(config: Value) -> Claimed {
        Claimed {
            tenant: None,
            id: Uuid::nil(),
            kind: "FIRED".into(),
            payload: json!({"kind": "FIRED", "rule": {"name": "tickets start"}, "level": 1, "count": 1}),
            rule_id: None,
            level: Some(1),
            escalation_ids: vec![],
            dedup_key: None,
            attempts: 1,
            created_at: chrono::Utc::now(),
            connector_id: Uuid::nil(),
            connector_name: "oncall-telegram".into(),
            connector_type: "TELEGRAM".into(),
            config,
        }
    }

    #[test]
    fn config_defaults_and_strictness() {
        let Ok(parsed) = config(json!({"bot_token": TOKEN, "chat_id": -1001234567890_i64})) else {
            panic!("a minimal config parses")
        };
        assert_eq!(parsed.chat_id, ChatId::Id(-1001234567890));
        assert!(parsed.disable_web_page_preview && parsed.parse_mode.is_none() && parsed.api_url.is_none());
        let Ok(parsed) = config(json!({"bot_token": TOKEN, "chat_id": "@oncall", "parse_mode": "HTML"})) else {
            panic!("a channel name and a parse mode parse")
        };
        assert_eq!((parsed.chat_id, parsed.parse_mode), (ChatId::Name("@oncall".into()), Some(ParseMode::Html)));
        for (bad, key) in [
            (json!({"bot_token": TOKEN, "chat_id": 1, "parse_mode": "Markdown"}), "parse_mode"),
            (json!({"bot_token": TOKEN, "chat_id": 1, "chat": 2}), "chat"),
            (json!({"bot_token": TOKEN}), "chat_id"),
            (json!({"bot_token": TOKEN, "chat_id": [TOKEN]}), "chat_id"),
        ] {
            let Err(Delivery::Permanent { error }) = config(bad.clone()) else { panic!("{bad} accepted") };
            assert!(error.contains(key), "{error}");
            assert!(!error.contains("secretPART"), "the token shows in {error}");
        }
    }

    #[test]
    fn tokens_are_checked_before_they_reach_the_url() {
        assert!(valid_token(TOKEN));
        for bad in ["", "123456789", ":abc", "abc:def", "123:abc/../../x", "123:abc?x=1", "123:ab c"] {
            assert!(!valid_token(bad), "{bad}");
        }
    }

    #[test]
    fn answers_are_classified_with_telegrams_retry_after() {
        let shown = "https://api.telegram.org/bot<redacted>/sendMessage";
        assert_eq!(classify(&answer(200, r#"{"ok":true,"result":{"message_id":7}}"#), shown), Delivery::Delivered);
        // A long echo cut at the preview's length is still a success.
        assert_eq!(classify(&answer(200, "{\"ok\": true, \"result\": {\"text\": \"xxxx"), shown), Delivery::Delivered);
        let limited = r#"{"ok":false,"error_code":429,"description":"Too Many Requests: retry after 3","parameters":{"retry_after":3}}"#;
        let Delivery::Retryable { error, retry_after } = classify(&answer(429, limited), shown) else {
            panic!("429 is retried")
        };
        assert_eq!(retry_after, Some(Duration::from_secs(3)));
        assert!(error.contains("429") && error.contains("retry after 3"), "{error}");
        assert!(matches!(classify(&answer(502, "Bad Gateway"), shown), Delivery::Retryable { retry_after: None, .. }));
        for (status, body) in [
            (400, r#"{"ok":false,"error_code":400,"description":"Bad Request: chat not found"}"#),
            (401, r#"{"ok":false,"error_code":401,"description":"Unauthorized"}"#),
            (403, r#"{"ok":false,"error_code":403,"description":"Forbidden: bot was kicked from the group chat"}"#),
            (200, r#"{"ok":false}"#),
            (200, "<html>a proxy</html>"),
        ] {
            let outcome = classify(&answer(status, body), shown);
            assert!(matches!(outcome, Delivery::Permanent { .. }), "{status} {body}: {outcome:?}");
        }
        let migrated = r#"{"ok":false,"error_code":400,"description":"Bad Request: group chat was upgraded to a supergroup chat","parameters":{"migrate_to_chat_id":-1009876}}"#;
        let Delivery::Permanent { error } = classify(&answer(400, migrated), shown) else { panic!() };
        assert!(error.contains("set chat_id to -1009876"), "{error}");
    }

    #[test]
    fn the_text_carries_the_link_and_is_escaped_for_its_parse_mode() {
        let payload = json!({"kind": "FIRED", "rule": {"name": "a<b> & c_d*"}, "level": 1, "count": 1,
                             "act": "orderly escalations ack ID"});
        let link = "https://orderly.example/escalations/0190aaaa-0000-7000-8000-000000000001";
        let rendered = render("FIRED", &payload).with_link(Some(link.into()));
        let plain = text(&rendered, None);
        assert!(plain.starts_with("SLA breached: \"a<b> & c_d*\" level 1, 1 item late\n\n"), "{plain}");
        assert!(plain.contains(&format!("Open in orderly: {link}")), "{plain}");
        let html = text(&rendered, Some(ParseMode::Html));
        assert!(html.starts_with("<b>SLA breached: \"a&lt;b&gt; &amp; c_d*\""), "{html}");
        let markdown = text(&rendered, Some(ParseMode::MarkdownV2));
        assert!(markdown.starts_with("*SLA breached: \"a<b\\> & c\\_d\\*\" level 1, 1 item late*"), "{markdown}");
        assert!(markdown.contains("https://orderly\\.example/escalations/0190aaaa\\-"), "{markdown}");
    }

    #[test]
    fn long_texts_are_cut_to_telegrams_limit() {
        let mut rendered = render("FIRED", &json!({"kind": "FIRED", "rule": {"name": "r"}, "count": 100}));
        rendered.items = (0..100).map(|i| format!("item {i} {}", "é😀".repeat(40))).collect();
        let text = text(&rendered, None);
        assert!(utf16_len(&text) <= MAX_TEXT && text.ends_with('…'), "{}", utf16_len(&text));
        assert_eq!(fit("short", 10), "short");
        assert_eq!(fit("😀😀😀", 4), "😀…");
    }

    /// The token is in the URL's path: neither an error of the connection (which quotes the
    /// URL) nor a receiver's echo of the path shows it.
    #[tokio::test]
    async fn the_bot_token_never_appears_in_an_error() {
        let app = axum::Router::new().fallback(|uri: axum::http::Uri| async move {
            (
                axum::http::StatusCode::NOT_FOUND,
                format!(r#"{{"ok":false,"error_code":404,"description":"Not Found: {uri}"}}"#),
            )
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let api_url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let channels = Channels::new(None).unwrap();
        let notification =
            claimed(json!({"bot_token": TOKEN, "chat_id": 42, "api_url": api_url, "allow_private": true}));
        let Delivery::Permanent { error } = deliver(&channels, &notification, Duration::from_secs(5)).await else {
            panic!("a 404 is permanent")
        };
        assert!(error.contains("404") && error.contains("/bot<redacted>/sendMessage"), "{error}");
        assert!(!error.contains("secretPART"), "{error}");

        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let api_url = format!("http://{}", closed.local_addr().unwrap());
        drop(closed);
        let notification =
            claimed(json!({"bot_token": TOKEN, "chat_id": 42, "api_url": api_url, "allow_private": true}));
        let Delivery::Retryable { error, .. } = deliver(&channels, &notification, Duration::from_secs(5)).await else {
            panic!("a refused connection is retried")
        };
        assert!(!error.contains("secretPART") && !error.contains("123456789:"), "{error}");
    }
}
