//! What makes an item's content usable by its step: not larger than
//! `limits.max_content_bytes`, not empty (whitespace only counts as empty), and JSON when the
//! step takes JSON (`content = "json"`, the default). The runner applies it before every
//! agent call; an operator's replay with edited content applies it before anything is
//! written, so content the item would fail on at once is refused with the same reason.

use super::catalog::ContentFormat;
use crate::model::ErrorCode;
use serde_json::Value;

/// Why content is unusable: the error code the runner would record, and a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ContentRefused {
    pub code: ErrorCode,
    pub message: String,
}

/// Checks the size only (the runner does not even load content over the limit).
pub fn check_size(bytes: usize, limit: usize) -> Result<(), ContentRefused> {
    if bytes > limit {
        return Err(ContentRefused {
            code: ErrorCode::ContentTooLarge,
            message: format!("content is {bytes} bytes; limits.max_content_bytes is {limit}"),
        });
    }
    Ok(())
}

/// The content as the agent receives it: a JSON value (parsed, or the text as a JSON string
/// for `content = "text"`), or why it cannot be used.
pub fn parse(text: &str, format: ContentFormat, limit: usize) -> Result<Value, ContentRefused> {
    check_size(text.len(), limit)?;
    if text.trim().is_empty() {
        return Err(ContentRefused { code: ErrorCode::ContentEmpty, message: "content is empty".to_owned() });
    }
    match format {
        ContentFormat::Text => Ok(Value::String(text.to_owned())),
        ContentFormat::Json => serde_json::from_str(text).map_err(|e| ContentRefused {
            code: ErrorCode::ContentInvalidJson,
            message: format!("content is not valid JSON: {e}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_is_checked_for_size_emptiness_and_json() {
        assert_eq!(parse("{\"a\":1}", ContentFormat::Json, 100).unwrap(), serde_json::json!({"a": 1}));
        assert_eq!(parse("plain", ContentFormat::Text, 100).unwrap(), Value::String("plain".into()));
        assert_eq!(parse("{not json", ContentFormat::Json, 100).unwrap_err().code, ErrorCode::ContentInvalidJson);
        assert_eq!(parse("{not json", ContentFormat::Text, 100).unwrap(), Value::String("{not json".into()));
        for empty in ["", "  \n\t"] {
            assert_eq!(parse(empty, ContentFormat::Text, 100).unwrap_err().code, ErrorCode::ContentEmpty);
        }
        let big = "1".repeat(101);
        let refused = parse(&big, ContentFormat::Json, 100).unwrap_err();
        assert_eq!(refused.code, ErrorCode::ContentTooLarge);
        assert!(refused.message.contains("101 bytes") && refused.message.contains("max_content_bytes is 100"));
    }
}
