//! Progress as every agent kind reports it, checked the same way: a percent clamped to
//! 0..=100, a message cleaned and bounded, and the per-attempt token an HTTP agent's
//! progress callback carries (HMAC-SHA256 over the item and attempt, with the key every
//! replica reads from `orderly_keys`, so any replica's admin server can check it).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::Value;
use sha2::Sha256;
use uuid::Uuid;

/// Most characters of a progress message.
pub const MAX_MESSAGE_CHARS: usize = 500;

/// One progress report, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    /// 0..=100, two decimals at most.
    pub percent: f64,
    pub message: Option<String>,
}

impl Progress {
    /// A percent clamped to 0..=100 (250 is 100, -3 is 0); `None` when it is not a number.
    /// The message loses control characters and is cut at [`MAX_MESSAGE_CHARS`].
    pub fn new(percent: f64, message: Option<&str>) -> Option<Progress> {
        if !percent.is_finite() {
            return None;
        }
        let percent = (percent.clamp(0.0, 100.0) * 100.0).round() / 100.0;
        let message = message
            .map(|m| m.chars().map(|c| if c.is_control() { ' ' } else { c }).collect::<String>())
            .map(|m| crate::model::printable(m.trim(), MAX_MESSAGE_CHARS))
            .filter(|m| !m.is_empty());
        Some(Progress { percent, message })
    }

    /// `{"percent": N, "message": "…"}` (a callback's body, a command's line); the percent
    /// may be a number or a numeric string.
    pub fn from_json(value: &Value) -> Option<Progress> {
        let percent = match value.get("percent")? {
            Value::Number(n) => n.as_f64()?,
            Value::String(s) => s.trim().parse().ok()?,
            _ => return None,
        };
        Progress::new(percent, value.get("message").and_then(Value::as_str))
    }
}

fn mac(key: &[u8], item: Uuid, attempt: i32) -> [u8; 16] {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(item.as_bytes());
    mac.update(&attempt.to_be_bytes());
    let full = mac.finalize().into_bytes();
    full[..16].try_into().expect("SHA-256 is 32 bytes")
}

/// The token of one attempt's progress callback.
pub fn token(key: &[u8], item: Uuid, attempt: i32) -> String {
    let mut bytes = Vec::with_capacity(36);
    bytes.extend_from_slice(item.as_bytes());
    bytes.extend_from_slice(&attempt.to_be_bytes());
    bytes.extend_from_slice(&mac(key, item, attempt));
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The item and attempt a token was made for, if it was made with `key`.
pub fn verify(key: &[u8], token: &str) -> Option<(Uuid, i32)> {
    let bytes = URL_SAFE_NO_PAD.decode(token.trim().as_bytes()).ok()?;
    if bytes.len() != 36 {
        return None;
    }
    let item = Uuid::from_slice(&bytes[..16]).ok()?;
    let attempt = i32::from_be_bytes(bytes[16..20].try_into().ok()?);
    let expected = mac(key, item, attempt);
    // Constant time: every byte compared.
    let same = expected.iter().zip(&bytes[20..]).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
    same.then_some((item, attempt))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn percents_are_clamped_and_messages_cleaned() {
        assert_eq!(Progress::new(250.0, None).unwrap().percent, 100.0);
        assert_eq!(Progress::new(-3.0, Some("  ")).unwrap(), Progress { percent: 0.0, message: None });
        assert_eq!(Progress::new(33.3333, None).unwrap().percent, 33.33);
        assert!(Progress::new(f64::NAN, None).is_none());
        let long = "x".repeat(2000);
        assert_eq!(Progress::new(1.0, Some(&long)).unwrap().message.unwrap().chars().count(), MAX_MESSAGE_CHARS + 1);
        assert_eq!(Progress::new(1.0, Some("a\nb\u{1b}[31m")).unwrap().message.unwrap(), "a b [31m");
        assert_eq!(Progress::from_json(&json!({"percent": "40", "message": "half"})).unwrap().percent, 40.0);
        assert!(Progress::from_json(&json!({"percent": true})).is_none());
        assert!(Progress::from_json(&json!({"message": "no percent"})).is_none());
    }

    #[test]
    fn tokens_name_one_attempt_and_cannot_be_forged() {
        let key = b"0123456789abcdef0123456789abcdef";
        let item = Uuid::now_v7();
        let t = token(key, item, 3);
        assert_eq!(verify(key, &t), Some((item, 3)));
        assert_eq!(verify(b"another key of thirty-two bytes!", &t), None);
        // Another attempt's token cannot be made from this one.
        let mut bytes = URL_SAFE_NO_PAD.decode(&t).unwrap();
        bytes[19] = 4;
        assert_eq!(verify(key, &URL_SAFE_NO_PAD.encode(bytes)), None);
        assert_eq!(verify(key, "garbage"), None);
        assert_eq!(verify(key, ""), None);
    }
}
