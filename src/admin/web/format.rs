//! How the page writes times, ages, ids, query values and long JSON.

use super::*;

pub(super) fn ts(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// How long ago (or, for a time ahead, how soon) `t` is, in words: "3m 20s ago", "in 2h".
pub(super) fn ago(t: DateTime<Utc>) -> String {
    let seconds = (Utc::now() - t).num_seconds();
    let words = |s: i64| {
        let s = s.unsigned_abs();
        match s {
            0..60 => format!("{s}s"),
            60..3600 => format!("{}m {}s", s / 60, s % 60),
            3600..86_400 => format!("{}h {}m", s / 3600, s % 3600 / 60),
            _ => format!("{}d {}h", s / 86_400, s % 86_400 / 3600),
        }
    };
    if seconds >= 0 { format!("{} ago", words(seconds)) } else { format!("in {}", words(seconds)) }
}

pub(super) fn age(seconds: f64) -> String {
    humantime::format_duration(std::time::Duration::from_secs(seconds.max(0.0) as u64)).to_string()
}

/// A query-string value, percent-encoded.
pub(super) fn q(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

/// An id as the page shows it in tables, links and messages: its last 8 hex digits, which
/// are random in every id orderly makes (the first ones of a time-ordered id are its
/// millisecond timestamp, the same for everything made in the same minute). The full id is
/// on the item's own page and in every link.
pub(super) fn short(id: Uuid) -> String {
    let hex = id.simple().to_string();
    format!("…{}", &hex[hex.len() - 8..])
}

/// JSON as indented text, cut at [`SHOWN_CHARS`].
pub(super) fn json_text(value: &Value) -> String {
    cut(&serde_json::to_string_pretty(value).unwrap_or_default())
}

pub(super) fn cut(text: &str) -> String {
    crate::model::printable(text, SHOWN_CHARS)
}
