//! Unit tests of the parent module.

use super::*;
use serde_json::json;

fn payload() -> Value {
    json!({
        "kind": "FIRED",
        "rule": {"id": "0190-rule", "name": "invoices start", "clock": "TIME_TO_START"},
        "level": 2,
        "after_seconds": 900,
        "count": 37,
        "sample": [
            {"work_item_id": "item-1", "work_order_id": "order-1", "tenant_id": "tenant-a",
             "item_type": "INVOICE", "priority": "HIGH", "late_by_seconds": 125.4},
            {"work_item_id": "item-2", "work_order_id": "order-2", "tenant_id": "tenant-b",
             "item_type": "INVOICE", "priority": "LOW", "late_by_seconds": 3723}
        ],
        "act": "orderly escalations list --rule 'invoices start'"
    })
}

#[test]
fn a_fired_breach_says_which_rule_level_items_tenants_and_how_to_act() {
    let rendered = render("FIRED", &payload());
    assert!(rendered.fired);
    assert_eq!(rendered.subject, "[orderly] SLA breached: \"invoices start\" level 2, 37 items late");
    let text = rendered.text();
    for expected in [
        "SLA rule \"invoices start\" breached level 2: 37 items past 15m waiting to start (TIME_TO_START).",
        "The latest item shown is late by 1h 2m 3s.",
        "Items (2 of 37 shown):",
        "  - item item-1 (INVOICE, HIGH), order order-1, tenant tenant-a: late by 2m 5s",
        "  - item item-2 (INVOICE, LOW), order order-2, tenant tenant-b: late by 1h 2m 3s",
        "Tenants: tenant-a, tenant-b",
        "How to act: orderly escalations list --rule 'invoices start'",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in\n{text}");
    }
}

#[test]
fn a_resolution_says_the_breach_is_over() {
    let mut payload = payload();
    payload["kind"] = json!("RESOLVED");
    let rendered = render("RESOLVED", &payload);
    assert!(!rendered.fired);
    assert_eq!(rendered.subject, "[orderly] SLA resolved: \"invoices start\" level 2");
    let text = rendered.text();
    assert!(text.contains("is no longer breached: the breach is over for 37 items."), "{text}");
    assert!(!text.contains("late by"), "{text}");
}

#[test]
fn odd_payloads_render_without_panicking_or_forging_lines() {
    for payload in [json!(null), json!([]), json!({"rule": 5, "sample": "x", "level": "two"}), json!({})] {
        let rendered = render("FIRED", &payload);
        assert!(rendered.subject.contains("(unnamed rule)"), "{rendered:?}");
    }
    let rendered = render("FIRED", &json!({"rule": {"name": "a\nSubject: forged\r\nb"}}));
    assert!(!rendered.subject.contains('\n') && !rendered.subject.contains('\r'), "{rendered:?}");
    assert!(!rendered.text().contains("\nSubject: forged"));
}

#[test]
fn secrets_are_scrubbed_in_every_spelling() {
    let mut secrets = Secrets::default();
    let url = Url::parse("https://user:p%40ss-word@h.example/x?token=t0k%2Fen&v=1#frag-secret").unwrap();
    secrets.add_url(&url);
    secrets.add("whsec_c2VjcmV0");
    let text = format!("{url} t0k/en p@ss-word whsec_c2VjcmV0 frag-secret v=1");
    let scrubbed = secrets.scrub(&text);
    for secret in ["t0k%2Fen", "t0k/en", "p%40ss-word", "p@ss-word", "whsec_c2VjcmV0", "frag-secret"] {
        assert!(!scrubbed.contains(secret), "{secret} in {scrubbed}");
    }
    assert!(scrubbed.contains("v=1"), "short values are left: {scrubbed}");
}

#[test]
fn config_errors_name_the_key_but_show_no_value() {
    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Config {
        url: String,
        allow_private: Option<bool>,
    }
    let config = json!({"url": "https://h/?token=SECRETCANARY", "allow_private": "SECRETCANARY2"});
    let Err(Delivery::Permanent { error }) = parse_config::<Config>(&config) else { panic!("must fail") };
    assert!(error.contains("invalid connector config: allow_private: invalid type"), "{error}");
    assert!(!error.contains("SECRETCANARY"), "{error}");
    let Err(Delivery::Permanent { error }) = parse_config::<Config>(&json!({"url": "x", "alow_private": true})) else {
        panic!("must fail")
    };
    assert!(error.contains("alow_private"), "{error}");
}

#[test]
fn http_answers_are_classified() {
    let never = |_: &str| false;
    for (status, retryable) in
        [(500, true), (503, true), (408, true), (429, true), (400, false), (404, false), (410, false), (301, false)]
    {
        let outcome = classify(StatusCode::from_u16(status).unwrap(), None, "", "http://h/", never);
        assert_eq!(matches!(outcome, Delivery::Retryable { .. }), retryable, "{status}: {outcome:?}");
        assert!(!matches!(outcome, Delivery::Delivered), "{status}");
    }
    assert_eq!(classify(StatusCode::NO_CONTENT, None, "", "http://h/", never), Delivery::Delivered);
    let hinted = classify(StatusCode::TOO_MANY_REQUESTS, Some(Duration::from_secs(2)), "slow down", "u", never);
    assert_eq!(
        hinted,
        Delivery::Retryable {
            error: "POST u answered 429 Too Many Requests: slow down".into(),
            retry_after: Some(Duration::from_secs(2))
        }
    );
}

#[test]
fn links_name_the_escalation_or_the_list() {
    let id: uuid::Uuid = "0190aaaa-0000-7000-8000-000000000001".parse().unwrap();
    for base in ["https://orderly.example.com", "https://orderly.example.com/", "https://ops.example.com/orderly/"] {
        let base = Url::parse(base).unwrap();
        let shown = base.as_str().trim_end_matches('/');
        assert_eq!(page_link(&base, &[id]), format!("{shown}/escalations/{id}"));
        assert_eq!(page_link(&base, &[id, id]), format!("{shown}/escalations"));
        assert_eq!(page_link(&base, &[]), format!("{shown}/escalations"));
    }
    let link = format!("https://orderly.example.com/escalations/{id}");
    let text = render("FIRED", &payload()).with_link(Some(link.clone())).text();
    assert!(text.contains(&format!("\nOpen in orderly: {link}\n")), "{text}");
    assert!(!render("FIRED", &payload()).text().contains("Open in orderly"));
}
