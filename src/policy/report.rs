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
    /// The agent asked to be left alone this long (a 429 or 503 with Retry-After): every
    /// replica pauses it (`db::limits::record`).
    pub agent_pause_ms: Option<i64>,
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

/// A log level as stored: TRACE, DEBUG, INFO, WARN or ERROR (WARNING is WARN; anything
/// else is INFO).
pub fn level_of(text: &str) -> String {
    level(Some(&Value::String(text.to_owned())))
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

/// The output's `logs` followed by the lines the agent reported while it ran (`reported`,
/// with `dropped` more it could not keep: a command's stderr), bounded together in lines and
/// bytes, with a last line saying what was cut.
pub fn logs(output: Option<&Value>, reported: Vec<LogLine>, dropped: usize) -> Vec<LogLine> {
    let listed = output.and_then(|o| o.get("logs")).and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    let parsed = listed.iter().filter_map(|line| match line {
        Value::String(text) => Some(LogLine { level: "INFO".to_owned(), at: None, message: text.clone() }),
        Value::Object(o) => Some(LogLine {
            level: level(o.get("level")),
            at: o
                .get("time")
                .and_then(Value::as_str)
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.with_timezone(&Utc)),
            message: match o.get("message") {
                Some(Value::String(m)) => m.clone(),
                Some(other) => other.to_string(),
                None => return None,
            },
        }),
        _ => None,
    });
    let all: Vec<LogLine> = parsed.chain(reported).collect();
    let total = all.len() + dropped;
    let mut out = Vec::new();
    let mut bytes = 0;
    for (i, line) in all.into_iter().enumerate() {
        let message = crate::model::printable(&line.message, MAX_MESSAGE_CHARS);
        if out.len() == MAX_LOG_LINES || bytes + message.len() > MAX_LOG_BYTES {
            out.push(cut(total - i));
            return out;
        }
        bytes += message.len();
        out.push(LogLine { message, ..line });
    }
    if dropped > 0 {
        out.push(cut(dropped));
    }
    out
}

fn cut(left_out: usize) -> LogLine {
    LogLine {
        level: "WARN".into(),
        at: None,
        message: format!(
            "log cut: {left_out} more line(s) left out (at most {MAX_LOG_LINES} lines and {MAX_LOG_BYTES} bytes an attempt)"
        ),
    }
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
        let out = logs(
            Some(&json!({"logs": ["plain", {"level": "warning", "time": "2026-12-07T10:00:00Z", "message": "slow"},
                                         {"level": 3, "message": {"n": 1}}, 42, {"no": "message"}]})),
            vec![],
            0,
        );
        assert_eq!(out.len(), 3);
        assert_eq!((out[1].level.as_str(), out[1].message.as_str()), ("WARN", "slow"));
        assert!(out[1].at.is_some());
        assert_eq!(out[2].message, "{\"n\":1}");
        let many: Vec<Value> = (0..10_000).map(|i| json!(format!("line {i}"))).collect();
        let cut = logs(Some(&json!({ "logs": many })), vec![], 0);
        assert_eq!(cut.len(), MAX_LOG_LINES + 1);
        assert!(cut.last().unwrap().message.starts_with("log cut: 9800 more line(s) left out"), "{:?}", cut.last());
        // Lines reported while running follow the output's, under the same caps.
        let stderr = vec![LogLine { level: "WARN".into(), at: None, message: "from stderr".into() }];
        let both = logs(Some(&json!({"logs": ["first"]})), stderr, 7);
        assert_eq!(both.iter().map(|l| l.message.as_str()).collect::<Vec<_>>()[..2], ["first", "from stderr"]);
        assert!(both[2].message.starts_with("log cut: 7 more line(s)"), "{both:?}");
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
