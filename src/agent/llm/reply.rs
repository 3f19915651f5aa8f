//! The `llm` kind's reply: a chat completions answer becomes the output (the model's JSON
//! object) and the usage, or a classified error.

use crate::agent::AgentError;
use crate::model::{ErrorCode, printable};
use serde_json::{Value, json};

/// Most characters of a refusal or a reply quoted in an error.
const QUOTE_CHARS: usize = 500;

/// What a 2xx answer gave: the usage (when the server said it, also for a failed reply, which
/// still cost its tokens) and the output or why there is none.
#[derive(Debug)]
pub(super) struct Parsed {
    pub usage: Option<Value>,
    pub output: Result<Value, AgentError>,
}

/// Parses a 2xx body. `model` is the configured model (the usage names the server's own when
/// it says it); `max_tokens` the limit the request set, for the truncation message.
pub(super) fn parse(body: &[u8], model: &str, max_tokens: Option<u32>) -> Parsed {
    let reply: Value = match serde_json::from_slice(body) {
        Ok(reply) => reply,
        Err(e) => {
            let preview = printable(&String::from_utf8_lossy(&body[..body.len().min(300)]), QUOTE_CHARS);
            let message = format!("the model server answered a body that is not JSON ({e}): {preview:?}");
            return Parsed { usage: None, output: Err(bad_output(message)) };
        }
    };
    Parsed { usage: usage(&reply, model), output: output(&reply, max_tokens) }
}

/// `{"model", "input_tokens", "output_tokens"}` from the reply's `usage`, when it has counts.
fn usage(reply: &Value, model: &str) -> Option<Value> {
    let counts = reply.get("usage")?;
    let count = |key: &str| counts.get(key).filter(|n| n.is_u64()).cloned();
    let (input, output) = (count("prompt_tokens"), count("completion_tokens"));
    if input.is_none() && output.is_none() {
        return None;
    }
    let model = reply.get("model").and_then(Value::as_str).filter(|m| !m.trim().is_empty()).unwrap_or(model);
    let mut usage = json!({"model": model});
    for (key, value) in [("input_tokens", input), ("output_tokens", output)] {
        if let Some(value) = value {
            usage[key] = value;
        }
    }
    Some(usage)
}

fn bad_output(message: String) -> AgentError {
    AgentError::retryable(ErrorCode::AgentBadOutput, message)
}

/// The first choice's message as the output: a JSON object as it is, any other JSON value as
/// `{"result": value}`.
fn output(reply: &Value, max_tokens: Option<u32>) -> Result<Value, AgentError> {
    let Some(choice) = reply.get("choices").and_then(|c| c.get(0)) else {
        let said = match reply.pointer("/error/message").and_then(Value::as_str) {
            Some(error) => format!(": {}", printable(error, QUOTE_CHARS)),
            None => String::new(),
        };
        return Err(bad_output(format!("the model server's reply has no choices{said}")));
    };
    let message = choice.get("message").unwrap_or(&Value::Null);
    match message.get("refusal") {
        None | Some(Value::Null) => {}
        Some(Value::String(text)) if text.trim().is_empty() => {}
        Some(refusal) => {
            let refusal = refusal.as_str().map_or_else(|| refusal.to_string(), str::to_owned);
            return Err(AgentError::permanent(
                ErrorCode::LlmRefused,
                format!("the model refused: {}", printable(&refusal, QUOTE_CHARS)),
            ));
        }
    }
    match choice.get("finish_reason").and_then(Value::as_str) {
        Some("content_filter") => {
            return Err(AgentError::permanent(
                ErrorCode::LlmRefused,
                "the model server's content filter withheld the reply (finish_reason content_filter)",
            ));
        }
        Some("length") => {
            let limit = match max_tokens {
                Some(n) => format!("max_tokens ({n})"),
                None => "the model server's token limit (no max_tokens set)".to_owned(),
            };
            return Err(AgentError::permanent(
                ErrorCode::LlmTruncated,
                format!(
                    "the reply was cut at {limit} before it was complete; raise the step's llm.max_tokens or the agent's max_tokens"
                ),
            ));
        }
        _ => {}
    }
    let content = match message.get("content") {
        Some(Value::String(text)) => text.clone(),
        // Content as parts: [{"type": "text", "text": "…"}, …].
        Some(Value::Array(parts)) => parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).collect(),
        _ => return Err(bad_output("the model's reply has no message content".into())),
    };
    let value: Value = serde_json::from_str(strip_fence(&content)).map_err(|e| {
        bad_output(format!("the model answered text that is not JSON ({e}): {:?}", printable(&content, QUOTE_CHARS)))
    })?;
    Ok(match value {
        Value::Object(_) => value,
        other => json!({ "result": other }),
    })
}

/// The text inside one Markdown code fence around the whole reply (```json … ```), which
/// models that ignore `response_format` tend to add; other text as it is.
fn strip_fence(text: &str) -> &str {
    let trimmed = text.trim();
    let Some(inner) = trimmed.strip_prefix("```").and_then(|t| t.strip_suffix("```")) else { return trimmed };
    // The fence's info string (`json`) ends at the first line break.
    inner.split_once('\n').map_or(inner, |(info, body)| if info.trim().contains(['{', '[']) { inner } else { body })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(message: Value, finish: &str) -> Vec<u8> {
        json!({"id": "x", "model": "tiny-2025", "choices": [{"index": 0, "message": message, "finish_reason": finish}],
               "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17}})
        .to_string()
        .into_bytes()
    }

    fn content(text: &str) -> Vec<u8> {
        reply(json!({"role": "assistant", "content": text}), "stop")
    }

    #[test]
    fn json_content_is_the_output_and_usage_names_the_servers_model() {
        let parsed = parse(&content(r#"{"answer": 42}"#), "tiny", Some(100));
        assert_eq!(parsed.output.unwrap(), json!({"answer": 42}));
        assert_eq!(parsed.usage, Some(json!({"model": "tiny-2025", "input_tokens": 12, "output_tokens": 5})));
        assert_eq!(parse(&content("[1, 2]"), "tiny", None).output.unwrap(), json!({"result": [1, 2]}));
        assert_eq!(parse(&content("\"yes\""), "tiny", None).output.unwrap(), json!({"result": "yes"}));
        assert_eq!(parse(&content("```json\n{\"a\": 1}\n```"), "t", None).output.unwrap(), json!({"a": 1}));
        assert_eq!(parse(&content("```{\"a\": 1}```"), "t", None).output.unwrap(), json!({"a": 1}));
        let parts =
            reply(json!({"content": [{"type": "text", "text": "{\"a\":"}, {"type": "text", "text": "2}"}]}), "stop");
        assert_eq!(parse(&parts, "t", None).output.unwrap(), json!({"a": 2}));
        // Without the server's model name, the configured one; without counts, no usage.
        let bare = json!({"choices": [{"message": {"content": "{}"}}], "usage": {"prompt_tokens": 3}}).to_string();
        assert_eq!(parse(bare.as_bytes(), "tiny", None).usage, Some(json!({"model": "tiny", "input_tokens": 3})));
        let none = json!({"choices": [{"message": {"content": "{}"}}]}).to_string();
        assert_eq!(parse(none.as_bytes(), "tiny", None).usage, None);
    }

    fn error_of(body: &[u8]) -> AgentError {
        parse(body, "tiny", Some(400)).output.unwrap_err()
    }

    #[test]
    fn bad_replies_are_retryable_bad_output() {
        for body in [
            content("Sure! Here is the JSON: {"),
            content(""),
            reply(json!({"role": "assistant", "content": null}), "stop"),
            b"<html>502</html>".to_vec(),
            br#"{"choices": []}"#.to_vec(),
            br#"{"error": {"message": "model not loaded"}}"#.to_vec(),
        ] {
            let e = error_of(&body);
            assert!(matches!(e, AgentError::Retryable { code: ErrorCode::AgentBadOutput, .. }), "{e:?}");
        }
        assert!(error_of(br#"{"error": {"message": "model not loaded"}}"#).message().ends_with("model not loaded"));
        // Content that is not JSON still cost its tokens.
        assert!(parse(&content("nope"), "tiny", None).usage.is_some());
    }

    #[test]
    fn truncated_and_refused_replies_are_permanent_with_their_usage() {
        let cut = parse(&reply(json!({"content": "{\"a\": \"unfinish"}), "length"), "tiny", Some(400));
        let e = cut.output.unwrap_err();
        assert!(matches!(e, AgentError::Permanent { code: ErrorCode::LlmTruncated, .. }), "{e:?}");
        assert!(e.message().starts_with("the reply was cut at max_tokens (400)"), "{e:?}");
        assert_eq!(cut.usage.unwrap()["output_tokens"], 5);
        let long = "no ".repeat(400);
        let refused = parse(&reply(json!({"content": null, "refusal": long}), "stop"), "tiny", None);
        let e = refused.output.unwrap_err();
        assert!(matches!(e, AgentError::Permanent { code: ErrorCode::LlmRefused, .. }), "{e:?}");
        assert!(e.message().starts_with("the model refused: no no") && e.message().ends_with('…'), "{e:?}");
        assert!(e.message().chars().count() < 600, "the refusal is cut");
        assert!(refused.usage.is_some());
        let filtered = error_of(&reply(json!({"content": ""}), "content_filter"));
        assert_eq!(filtered.code(), ErrorCode::LlmRefused);
    }
}
