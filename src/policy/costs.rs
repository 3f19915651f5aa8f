//! What an attempt cost, from the usage its agent reported (the output's `usage` object) and
//! the configuration's price table (`[prices.MODEL]`): the cost entries the completer writes
//! (db::costs). Quantities and prices stay decimal text, multiplied by PostgreSQL's numeric:
//! never a float.
//!
//! The usage shape (docs/costs.md): `{"model": "…", "input_tokens": N, "output_tokens": N}`
//! (priced per million tokens), and/or `{"amount": "0.0123", "currency": "USD"}` (a cost the
//! agent states itself, as one `external_api` call), either at the top of `usage` or as a list
//! under `usage.costs`.

use crate::config::Price;
use serde_json::Value;
use std::collections::BTreeMap;

/// One cost entry of an attempt, before it is written: one per attempt and cost type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CostRecord {
    /// `api_tokens`, `compute`, `storage` or `external_api`.
    pub cost_type: &'static str,
    pub model: Option<String>,
    /// A non-negative decimal, as text; `None` for tokens, whose quantity is input plus
    /// output.
    pub quantity: Option<String>,
    pub unit: &'static str,
    /// Tokens: the input and output counts, and their prices per million (from the table).
    pub tokens: Option<Tokens>,
    /// The agent's stated amount (already the total).
    pub amount: Option<String>,
    pub currency: Option<String>,
}

/// The token counts of an `api_tokens` entry, with the price table's prices when the model
/// is in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokens {
    pub input: Option<String>,
    pub output: Option<String>,
    pub input_per_million: Option<String>,
    pub output_per_million: Option<String>,
}

/// A JSON number or a string holding a non-negative decimal, as its text; anything else is
/// ignored (a usage report never fails an attempt).
pub(crate) fn decimal(value: Option<&Value>) -> Option<String> {
    let text = match value? {
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.trim().to_owned(),
        _ => return None,
    };
    let valid = !text.is_empty()
        && text.chars().all(|c| c.is_ascii_digit() || c == '.')
        && text.chars().filter(|c| *c == '.').count() <= 1
        && text.len() <= 40;
    valid.then_some(text)
}

pub(crate) fn currency(value: Option<&Value>) -> Option<String> {
    let c = value?.as_str()?.trim().to_ascii_uppercase();
    (c.len() == 3 && c.chars().all(|ch| ch.is_ascii_uppercase())).then_some(c)
}

/// The cost entries of one usage report.
pub fn from_usage(usage: &Value, prices: &BTreeMap<String, Price>) -> Vec<CostRecord> {
    costs_and_warnings(usage, prices).0
}

/// The cost entries of one usage report, and a warning for each part of it that was
/// ignored (the attempt's log keeps them: a usage report never fails an attempt).
pub fn costs_and_warnings(usage: &Value, prices: &BTreeMap<String, Price>) -> (Vec<CostRecord>, Vec<String>) {
    let mut warnings = Vec::new();
    let short = |v: &Value| crate::model::printable(&v.to_string(), 80);
    let reports: Vec<&Value> = match usage.get("costs").and_then(Value::as_array) {
        Some(list) => list.iter().collect(),
        None if usage.is_object() => vec![usage],
        None => {
            warnings.push(format!("usage ignored: {} is not an object", short(usage)));
            vec![]
        }
    };
    let mut out = Vec::new();
    for report in reports {
        let model = report.get("model").and_then(Value::as_str).map(|m| m.chars().take(200).collect::<String>());
        let price = model.as_deref().and_then(|m| prices.get(m));
        let mut counts = [None, None];
        for (slot, key) in counts.iter_mut().zip(["input_tokens", "output_tokens"]) {
            let given = report.get(key);
            if given.is_some() && decimal(given).is_none() {
                warnings.push(format!(
                    "usage.{key} ignored: {} is not a non-negative decimal",
                    short(&given.cloned().unwrap_or_default())
                ));
            }
            *slot = decimal(given);
        }
        if let [input, output] = counts
            && (input.is_some() || output.is_some())
        {
            out.push(CostRecord {
                cost_type: "api_tokens",
                model: model.clone(),
                quantity: None,
                unit: "token",
                tokens: Some(Tokens {
                    input,
                    output,
                    input_per_million: price.map(|p| p.input_per_million.clone()),
                    output_per_million: price.map(|p| p.output_per_million.clone()),
                }),
                amount: None,
                currency: price.map(|p| p.currency.clone()),
            });
        }
        let stated = report.get("amount");
        if stated.is_some() && decimal(stated).is_none() {
            warnings.push(format!(
                "usage.amount ignored: {} is not a non-negative decimal",
                short(&stated.cloned().unwrap_or_default())
            ));
        }
        if let Some(amount) = decimal(stated) {
            let currency = currency(report.get("currency")).or_else(|| price.map(|p| p.currency.clone()));
            if currency.is_none() {
                warnings.push(format!(
                    "usage.amount {amount} ignored: currency {} is not three letters and no price names one",
                    short(&report.get("currency").cloned().unwrap_or_default())
                ));
            }
            if let Some(currency) = currency {
                out.push(CostRecord {
                    cost_type: "external_api",
                    model: model.clone(),
                    quantity: Some("1".into()),
                    unit: "call",
                    tokens: None,
                    amount: Some(amount),
                    currency: Some(currency),
                });
            }
        }
    }
    (out, warnings)
}

/// A command's compute, as two `compute` entries without a price (two units of one type): CPU seconds (user plus
/// system, to the millisecond) and peak memory in MiB.
pub fn from_compute(compute: crate::agent::Compute) -> Vec<CostRecord> {
    let entry = |quantity: String, unit| CostRecord {
        cost_type: "compute",
        model: None,
        quantity: Some(quantity),
        unit,
        tokens: None,
        amount: None,
        currency: None,
    };
    vec![
        entry(format!("{:.3}", compute.cpu_seconds.max(0.0)), "cpu_second"),
        entry(format!("{:.3}", compute.peak_memory_kib.max(0) as f64 / 1024.0), "peak_memory_mib"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn prices() -> BTreeMap<String, Price> {
        BTreeMap::from([(
            "small".to_owned(),
            Price { input_per_million: "2.50".into(), output_per_million: "10".into(), currency: "USD".into() },
        )])
    }

    #[test]
    fn tokens_are_priced_by_the_table_and_stated_amounts_kept() {
        let rows = from_usage(&json!({"model": "small", "input_tokens": 1200, "output_tokens": "300"}), &prices());
        assert_eq!(rows.len(), 1, "one entry per attempt and cost type");
        let tokens = rows[0].tokens.clone().unwrap();
        assert_eq!((tokens.input.as_deref(), tokens.output.as_deref()), (Some("1200"), Some("300")));
        assert_eq!(tokens.input_per_million.as_deref(), Some("2.50"));
        assert_eq!((rows[0].unit, rows[0].currency.as_deref()), ("token", Some("USD")));
        let stated = from_usage(&json!({"amount": "0.0123", "currency": "eur"}), &prices());
        assert_eq!(stated[0].amount.as_deref(), Some("0.0123"));
        assert_eq!(stated[0].currency.as_deref(), Some("EUR"));
        // An unknown model: quantities recorded, no price.
        let unknown = from_usage(&json!({"model": "big", "input_tokens": 5}), &prices());
        assert_eq!((unknown[0].tokens.clone().unwrap().input_per_million, unknown[0].currency.clone()), (None, None));
        let listed = from_usage(
            &json!({"costs": [{"model": "small", "input_tokens": 1}, {"amount": 1, "currency": "USD"}]}),
            &prices(),
        );
        assert_eq!(listed.len(), 2);
    }

    #[test]
    fn garbage_in_a_usage_report_is_ignored() {
        for usage in [
            json!({"input_tokens": -5}),
            json!({"input_tokens": "1e9"}),
            json!({"input_tokens": {"n": 1}}),
            json!({"amount": "1.0.0", "currency": "USD"}),
            json!({"amount": "3", "currency": "dollars"}),
            json!("tokens"),
            json!([1, 2]),
        ] {
            assert!(from_usage(&usage, &prices()).is_empty(), "{usage}");
            assert!(!costs_and_warnings(&usage, &prices()).1.is_empty(), "a warning says why: {usage}");
        }
    }
}
