//! The human message of a notification (Slack, email, Telegram, PagerDuty's summary),
//! rendered from the sweeper's payload (`{kind, rule, level, after_seconds, count, sample,
//! act}`): every text from the payload cleaned of control characters and bounded.

use serde_json::Value;
use std::time::Duration;

/// The human message of a notification, rendered from its payload. Every text taken from the
/// payload is cleaned of control characters (a rule name cannot forge a line) and bounded.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    pub fired: bool,
    /// One line: `[orderly] SLA breached: "rule" level 2, 37 items late`.
    pub subject: String,
    /// One sentence saying which rule, which level and how late.
    pub headline: String,
    /// Further facts, one line each (how late the latest is, what the count covers).
    pub details: Vec<String>,
    /// One line per sampled item: id, type, priority, order, tenant, how late.
    pub items: Vec<String>,
    /// Items in the breach beyond the sample (`count - sample`).
    pub more_items: u64,
    pub tenants: Vec<String>,
    /// How on-call acts (a CLI command), if the payload says.
    pub act: Option<String>,
    /// The page in orderly's web interface (`admin.public_url`), if set.
    pub link: Option<String>,
}

/// Most sample items rendered (the sweeper writes at most 10).
const MAX_SAMPLE: usize = 10;

pub fn render(kind: &str, payload: &Value) -> Rendered {
    let field = |value: &Value, max: usize| -> Option<String> {
        let text = match value {
            Value::String(text) => text.clone(),
            Value::Number(number) => number.to_string(),
            Value::Bool(flag) => flag.to_string(),
            _ => return None,
        };
        let text = truncate(&clean(&text, false), max);
        (!text.trim().is_empty()).then_some(text)
    };
    let kind = field(&payload["kind"], 20).unwrap_or_else(|| kind.to_owned());
    if kind == "BUDGET" {
        return budget(payload, field);
    }
    let fired = kind != "RESOLVED";
    let rule = field(&payload["rule"]["name"], 200)
        .or_else(|| field(&payload["rule"]["id"], 200))
        .unwrap_or_else(|| "(unnamed rule)".to_owned());
    let clock = field(&payload["rule"]["clock"], 60);
    let level = payload["level"].as_i64();
    let after = payload["after_seconds"].as_f64();
    let count = payload["count"].as_u64();
    let sample: Vec<&Value> =
        payload["sample"].as_array().map(|s| s.iter().take(MAX_SAMPLE).collect()).unwrap_or_default();

    let level_text = level.map(|l| format!(" level {l}")).unwrap_or_default();
    let count_text = count.map(|c| format!("{c} item{}", if c == 1 { "" } else { "s" }));
    let clock_text = clock.as_deref().map(clock_phrase);
    let subject = if fired {
        let late = count_text.as_ref().map(|c| format!(", {c} late")).unwrap_or_default();
        format!("[orderly] SLA breached: \"{rule}\"{level_text}{late}")
    } else {
        format!("[orderly] SLA resolved: \"{rule}\"{level_text}")
    };
    let headline = if fired {
        let what = count_text.clone().unwrap_or_else(|| "items".to_owned());
        let threshold = after.map(|a| format!(" past {}", duration(a))).unwrap_or_default();
        let clock = clock_text.as_ref().map(|c| format!(" {c}")).unwrap_or_default();
        format!("SLA rule \"{rule}\" breached{level_text}: {what}{threshold}{clock}.")
    } else {
        let what = count_text.clone().map(|c| format!(" for {c}")).unwrap_or_default();
        format!("SLA rule \"{rule}\"{level_text} is no longer breached: the breach is over{what}.")
    };

    let mut details = Vec::new();
    if let Some(clock) = &clock {
        details.push(format!("Clock: {clock}."));
    }
    let latest = sample
        .iter()
        .filter_map(|item| item["late_by_seconds"].as_f64())
        .fold(None, |max: Option<f64>, l| Some(max.map_or(l, |m| m.max(l))));
    if fired && let Some(latest) = latest {
        details.push(format!("The latest item shown is late by {}.", duration(latest)));
    }

    let mut tenants: Vec<String> = Vec::new();
    let items: Vec<String> = sample
        .iter()
        .map(|item| {
            let text = |key: &str| field(&item[key], 80);
            let id = text("work_item_id").unwrap_or_else(|| "?".to_owned());
            let kind: Vec<String> = [text("item_type"), text("priority")].into_iter().flatten().collect();
            let mut line = format!("item {id}");
            if !kind.is_empty() {
                line.push_str(&format!(" ({})", kind.join(", ")));
            }
            if let Some(order) = text("work_order_id") {
                line.push_str(&format!(", order {order}"));
            }
            if let Some(tenant) = text("tenant_id") {
                line.push_str(&format!(", tenant {tenant}"));
                if !tenants.contains(&tenant) {
                    tenants.push(tenant);
                }
            }
            if fired && let Some(late) = item["late_by_seconds"].as_f64() {
                line.push_str(&format!(": late by {}", duration(late)));
            }
            line
        })
        .collect();
    let more_items = count.map_or(0, |c| c.saturating_sub(items.len() as u64));
    let act = field(&payload["act"], 1000);
    Rendered { fired, subject: truncate(&subject, 250), headline, details, items, more_items, tenants, act, link: None }
}

/// A spending budget crossing 80% or 100% (payload from migration 0028's trigger:
/// `{kind: BUDGET, threshold, budget: {name, period}, scope, spent, amount, currency, act}`).
fn budget(payload: &Value, field: impl Fn(&Value, usize) -> Option<String>) -> Rendered {
    let name = field(&payload["budget"]["name"], 100).unwrap_or_else(|| "(unnamed budget)".to_owned());
    let threshold = payload["threshold"].as_u64().unwrap_or(100);
    let money = |key: &str| field(&payload[key], 60).unwrap_or_else(|| "?".to_owned());
    let currency = field(&payload["currency"], 3).unwrap_or_default();
    let period = field(&payload["budget"]["period"], 10).filter(|p| p != "total");
    let scope = field(&payload["scope"], 300).unwrap_or_else(|| "?".to_owned());
    let subject = if threshold >= 100 {
        format!("[orderly] budget \"{name}\" exhausted: {} of {} {currency}", money("spent"), money("amount"))
    } else {
        format!("[orderly] budget \"{name}\" at {threshold}%: {} of {} {currency}", money("spent"), money("amount"))
    };
    let period_text = period.map(|p| format!(" this {p}")).unwrap_or_default();
    let headline = if threshold >= 100 {
        format!(
            "Budget \"{name}\" for {scope} is exhausted{period_text}: {} of {} {currency} spent. Its items wait (or are held) until it is raised, reset or the period ends.",
            money("spent"),
            money("amount")
        )
    } else {
        format!(
            "Budget \"{name}\" for {scope} has passed {threshold}%{period_text}: {} of {} {currency} spent.",
            money("spent"),
            money("amount")
        )
    };
    Rendered {
        fired: true,
        subject: truncate(&subject, 250),
        headline,
        details: Vec::new(),
        items: Vec::new(),
        more_items: 0,
        tenants: Vec::new(),
        act: field(&payload["act"], 1000),
        link: None,
    }
}

impl Rendered {
    /// The same message linking to `link` (a page of orderly's web interface).
    pub fn with_link(self, link: Option<String>) -> Rendered {
        Rendered { link, ..self }
    }

    /// The plain-text message (email body, Slack fallback text, Telegram message).
    pub fn text(&self) -> String {
        let mut text = format!("{}\n", self.headline);
        for line in &self.details {
            text.push_str(line);
            text.push('\n');
        }
        if let Some(link) = &self.link {
            text.push_str(&format!("Open in orderly: {link}\n"));
        }
        if !self.items.is_empty() {
            text.push_str(&format!("\n{}:\n", self.items_heading()));
            for item in &self.items {
                text.push_str(&format!("  - {item}\n"));
            }
        }
        if !self.tenants.is_empty() {
            text.push_str(&format!("\nTenants: {}\n", self.tenants.join(", ")));
        }
        if let Some(act) = &self.act {
            text.push_str(&format!("\nHow to act: {act}\n"));
        }
        text
    }

    /// `Items` or `Items (10 of 37 shown)`.
    pub fn items_heading(&self) -> String {
        if self.more_items > 0 {
            format!("Items ({} of {} shown)", self.items.len(), self.items.len() as u64 + self.more_items)
        } else {
            "Items".to_owned()
        }
    }
}

fn clock_phrase(clock: &str) -> String {
    match clock {
        "TIME_TO_START" => "waiting to start (TIME_TO_START)".to_owned(),
        "TIME_TO_FINISH" => "since enqueued without finishing (TIME_TO_FINISH)".to_owned(),
        "TIME_AWAITING_APPROVAL" => "awaiting a human approval (TIME_AWAITING_APPROVAL)".to_owned(),
        "DEAD_LETTER_OPEN" => "with a dead letter left open (DEAD_LETTER_OPEN)".to_owned(),
        other => format!("on the {other} clock"),
    }
}

/// Whole seconds, humanly: `1h 2m 3s`; anything not a positive number is `0s`.
fn duration(seconds: f64) -> String {
    let seconds = if seconds.is_finite() && seconds > 0.0 { seconds.round().min(1e12) as u64 } else { 0 };
    humantime::format_duration(Duration::from_secs(seconds)).to_string()
}

/// Control characters become spaces (newlines too, unless `keep_newlines`).
pub(super) fn clean(text: &str, keep_newlines: bool) -> String {
    text.chars().map(|c| if c.is_control() && !(keep_newlines && c == '\n') { ' ' } else { c }).collect()
}

/// At most `max` characters, `…` marking a cut.
pub fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}
