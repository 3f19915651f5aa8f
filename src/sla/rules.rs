//! What a rule means and what is wrong with one: checks that report problems clearly instead
//! of failing a sweep, and the message payload every notification channel renders.

use crate::db::sla::{Fired, Level, Rule};
use serde_json::{Value, json};
use std::collections::BTreeSet;

/// Most items named in one message; the count says how many there are in all.
pub const SAMPLE: usize = 10;

/// A problem with a rule. `blocking` ones stop the rule from firing at all.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub rule: String,
    pub blocking: bool,
    pub message: String,
}

/// Checks a rule against the connectors that exist (by name, ACTIVE).
pub fn check(rule: &Rule, active_connectors: &BTreeSet<String>) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut problem = |blocking, message: String| problems.push(Problem { rule: rule.name.clone(), blocking, message });
    if rule.levels.is_empty() {
        problem(true, "has no levels: add rows to sla_levels (rule_id, level, after, connectors)".into());
    }
    if crate::db::sla::fire_sql(&rule.clock, None).is_none() {
        problem(true, format!("has an unknown clock `{}`", rule.clock));
    }
    let mut previous: Option<&Level> = None;
    for level in &rule.levels {
        if let Some(before) = previous
            && level.after_seconds <= before.after_seconds
        {
            problem(
                false,
                format!(
                    "level {} fires at {}s, not after level {} ({}s): levels should escalate later and later",
                    level.level, level.after_seconds, before.level, before.after_seconds
                ),
            );
        }
        if level.connectors.is_empty() {
            problem(false, format!("level {} notifies no connector: it is recorded only", level.level));
        }
        for name in &level.connectors {
            if !active_connectors.contains(name) {
                problem(
                    false,
                    format!("level {} names connector `{name}`, which does not exist or is not ACTIVE", level.level),
                );
            }
        }
        previous = Some(level);
    }
    problems
}

/// The message of a group of escalations one level fired: every channel renders it.
pub fn fired_payload(rule: &Rule, level: &Level, fired: &[&Fired]) -> Value {
    let tenants: BTreeSet<String> = fired.iter().map(|f| f.tenant_id.to_string()).collect();
    let worst = fired.iter().map(|f| f.late_by_seconds).fold(0.0, f64::max);
    json!({
        "kind": "FIRED",
        "rule": { "id": rule.id, "name": rule.name, "clock": rule.clock },
        "level": level.level,
        "after_seconds": level.after_seconds,
        "count": fired.len(),
        "most_late_by_seconds": worst.round(),
        "tenants": tenants.into_iter().take(SAMPLE).collect::<Vec<_>>(),
        "sample": fired.iter().take(SAMPLE).map(|f| json!({
            "escalation_id": f.id,
            "work_item_id": f.work_item_id,
            "work_order_id": f.work_order_id,
            "tenant_id": f.tenant_id,
            "item_type": f.item_type,
            "priority": f.priority,
            "late_by_seconds": f.late_by_seconds.round(),
        })).collect::<Vec<_>>(),
        "act": format!(
            "orderly escalations list; acknowledge with `orderly escalations ack ESCALATION_ID` to stop rule {}'s later levels for that item",
            rule.name
        ),
    })
}

/// The message sent to a connector once the escalations it was told about are resolved.
pub fn resolved_payload(rule: &Rule, items: &[(uuid::Uuid, uuid::Uuid)]) -> Value {
    json!({
        "kind": "RESOLVED",
        "rule": { "id": rule.id, "name": rule.name, "clock": rule.clock },
        "level": null,
        "count": items.len(),
        "sample": items.iter().take(SAMPLE).map(|(item, order)| json!({
            "work_item_id": item, "work_order_id": order,
        })).collect::<Vec<_>>(),
        "act": "nothing to do: the SLA clock stopped for these items",
    })
}
