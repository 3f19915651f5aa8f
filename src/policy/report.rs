//! What an agent reported beside its result, bounded: the output's `logs` (lines of
//! `{level, time, message}` or plain strings) and `artifacts` (`{name, type, size, url}`),
//! as the completer writes them (db::runs). Never a failed attempt: what cannot be read is
//! left out, what is too long is cut and marked, a URL with credentials loses them.

use chrono::{DateTime, Utc};
use serde_json::Value;

/// Most log lines kept per attempt; past it one line says how many were left out.
pub const MAX_LOG_LINES: usize = 200;
/// Most bytes of log messages kept per attempt, together.
pub const MAX_LOG_BYTES: usize = 64 * 1024;
/// Most characters of one message.
const MAX_MESSAGE_CHARS: usize = 4096;
/// Most artifacts kept per attempt.
pub const MAX_ARTIFACTS: usize = 100;

/// Everything an attempt reported beside its result: what it cost, its log, its artifacts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunReport {
    pub costs: Vec<crate::policy::costs::CostRecord>,
    pub logs: Vec<LogLine>,
    pub artifacts: Vec<Artifact>,
}

impl RunReport {
    pub fn is_empty(&self) -> bool {
        self.costs.is_empty() && self.logs.is_empty() && self.artifacts.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct LogLine {
    pub level: String,
    pub at: Option<DateTime<Utc>>,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Artifact {
    pub name: String,
    pub kind: Option<String>,
    pub size: Option<i64>,
    pub url: Option<String>,
}

fn level(value: Option<&Value>) -> String {
    match value.and_then(Value::as_str).map(|l| l.trim().to_ascii_uppercase()) {
        Some(l) if ["TRACE", "DEBUG", "INFO", "WARN", "WARNING", "ERROR"].contains(&l.as_str()) => {
            if l == "WARNING" {
                "WARN".into()
            } else {
                l
            }
        }
        _ => "INFO".into(),
    }
}

/// The output's `logs`, bounded in lines and bytes, with a last line saying what was cut.
pub fn logs(output: &Value) -> Vec<LogLine> {
    let Some(lines) = output.get("logs").and_then(Value::as_array) else { return Vec::new() };
    let mut out = Vec::new();
    let mut bytes = 0;
    for (i, line) in lines.iter().enumerate() {
        let (level, at, message) = match line {
            Value::String(text) => ("INFO".to_owned(), None, text.clone()),
            Value::Object(o) => (
                level(o.get("level")),
                o.get("time")
                    .and_then(Value::as_str)
                    .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                    .map(|t| t.with_timezone(&Utc)),
                match o.get("message") {
                    Some(Value::String(m)) => m.clone(),
                    Some(other) => other.to_string(),
                    None => continue,
                },
            ),
            _ => continue,
        };
        let message = crate::model::printable(&message, MAX_MESSAGE_CHARS);
        if out.len() == MAX_LOG_LINES || bytes + message.len() > MAX_LOG_BYTES {
            out.push(LogLine {
                level: "WARN".into(),
                at: None,
                message: format!(
                    "log cut: {} more line(s) left out (at most {MAX_LOG_LINES} lines and {MAX_LOG_BYTES} bytes an attempt)",
                    lines.len() - i
                ),
            });
            break;
        }
        bytes += message.len();
        out.push(LogLine { level, at, message });
    }
    out
}

/// A URL as it may be stored: http(s) only, without user or password.
fn clean_url(text: &str) -> Option<String> {
    let mut url = reqwest::Url::parse(text).ok()?;
    if !matches!(url.scheme(), "http" | "https" | "s3" | "gs") {
        return None;
    }
    let _ = url.set_username("");
    let _ = url.set_password(None);
    Some(url.to_string()).filter(|u| u.len() <= 2048)
}

/// The output's `artifacts` (references only), at most [`MAX_ARTIFACTS`].
pub fn artifacts(output: &Value) -> Vec<Artifact> {
    let Some(list) = output.get("artifacts").and_then(Value::as_array) else { return Vec::new() };
    list.iter()
        .filter_map(|a| {
            let name = a.get("name")?.as_str()?.trim();
            if name.is_empty() {
                return None;
            }
            Some(Artifact {
                name: crate::model::printable(name, 200),
                kind: a.get("type").and_then(Value::as_str).map(|t| crate::model::printable(t, 100)),
                size: a.get("size").and_then(Value::as_i64).filter(|s| *s >= 0),
                url: a.get("url").and_then(Value::as_str).and_then(clean_url),
            })
        })
        .take(MAX_ARTIFACTS)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn logs_are_read_leniently_and_cut_with_a_marker() {
        let out =
            logs(&json!({"logs": ["plain", {"level": "warning", "time": "2026-12-07T10:00:00Z", "message": "slow"},
                                         {"level": 3, "message": {"n": 1}}, 42, {"no": "message"}]}));
        assert_eq!(out.len(), 3);
        assert_eq!((out[1].level.as_str(), out[1].message.as_str()), ("WARN", "slow"));
        assert!(out[1].at.is_some());
        assert_eq!(out[2].message, "{\"n\":1}");
        let many: Vec<Value> = (0..10_000).map(|i| json!(format!("line {i}"))).collect();
        let cut = logs(&json!({ "logs": many }));
        assert_eq!(cut.len(), MAX_LOG_LINES + 1);
        assert!(cut.last().unwrap().message.starts_with("log cut: 9800 more line(s) left out"), "{:?}", cut.last());
    }

    #[test]
    fn artifacts_are_references_without_credentials() {
        let out = artifacts(&json!({"artifacts": [
            {"name": "report.pdf", "type": "application/pdf", "size": 1200, "url": "https://alice:secret@files.example/r.pdf"},
            {"name": "raw", "url": "file:///etc/passwd", "size": -1},
            {"type": "nameless"}
        ]}));
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].url.as_deref(), Some("https://files.example/r.pdf"));
        assert_eq!((out[1].url.clone(), out[1].size), (None, None));
    }
}
