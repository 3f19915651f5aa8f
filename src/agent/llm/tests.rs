//! Unit tests of the `llm` kind: options, the request body, status classes and secrets. The
//! templater's and the reply's are beside them (prompt.rs, reply.rs); the calls against a
//! real server are tests/engine/llm.rs.

use super::*;
use crate::agent::{AgentLimits, AgentSettings, AttemptView, ContextView, WorkItemView, WorkOrderView};

/// A request for a TICKET item of workflow `wf` with this content and `{"channel": "mail"}`
/// as the order's metadata.
pub(crate) fn request(content: Value) -> AgentRequest {
    AgentRequest {
        work_item: WorkItemView {
            id: uuid::Uuid::new_v4(),
            item_type: "TICKET".into(),
            content,
            priority: "MEDIUM".into(),
            created_at: chrono::Utc::now(),
        },
        work_order: WorkOrderView {
            id: uuid::Uuid::new_v4(),
            workflow_id: "wf".into(),
            tenant_id: uuid::Uuid::new_v4(),
            created_by: uuid::Uuid::new_v4(),
            priority: "MEDIUM".into(),
            metadata: json!({"channel": "mail"}),
        },
        attempt: AttemptView { id: uuid::Uuid::new_v4(), number: 1, max_attempts: 3 },
        context: ContextView::default(),
        progress: None,
        report: Default::default(),
        review: None,
        evaluate: None,
        step_options: None,
        output_schema: None,
    }
}

fn settings(options: Value) -> AgentSettings {
    let mut table = json!({"kind": "llm"});
    table.as_object_mut().unwrap().extend(options.as_object().unwrap().clone());
    serde_json::from_value(table).unwrap()
}

fn agent(options: Value) -> Result<LlmAgent, ConfigError> {
    let settings = settings(options);
    let spec = AgentSpec { name: "model", settings: &settings, limits: AgentLimits { max_output_bytes: 1 << 20 } };
    LlmAgent::from_spec(&spec).map(|(agent, _)| agent)
}

const SECRET: &str = "sk-SECRETCANARY123";

fn local(extra: Value) -> LlmAgent {
    let mut options =
        json!({"base_url": "http://127.0.0.1:1/v1", "model": "tiny", "api_key": SECRET, "allow_private": true});
    options.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    agent(options).unwrap()
}

#[test]
fn options_are_strict_and_checked() {
    let error = |options: Value| agent(options).err().expect("refused").to_string();
    let ok = json!({"base_url": "http://h/v1", "model": "m"});
    agent(ok.clone()).unwrap();
    assert!(error(json!({"base_url": "http://h/v1", "model": "m", "prompt": "x"})).contains("unknown field `prompt`"));
    assert!(error(json!({"model": "m"})).contains("missing field `base_url`"));
    assert!(error(json!({"base_url": "ftp://h/", "model": "m"})).contains("agents.model.base_url"));
    assert!(error(json!({"base_url": "http://h/v1", "model": " "})).contains("agents.model.model"));
    assert!(error(json!({"base_url": "http://h/", "model": "m", "temperature": 2.5})).contains("temperature"));
    assert!(error(json!({"base_url": "http://h/", "model": "m", "max_tokens": 0})).contains("max_tokens"));
    assert!(error(json!({"base_url": "http://h/", "model": "m", "timeout": "0s"})).contains("agents.model.timeout"));
    let settings = settings(json!({"base_url": "http://h/", "model": "m", "timeout": "2m"}));
    let spec = AgentSpec { name: "model", settings: &settings, limits: AgentLimits { max_output_bytes: 1 } };
    assert_eq!(LlmAgent::from_spec(&spec).unwrap().1, Duration::from_secs(120));
    assert_eq!(LlmAgent::from_spec(&AgentSpec { settings: &self::settings(ok), ..spec }).unwrap().1, DEFAULT_TIMEOUT);
}

#[test]
fn the_endpoint_is_the_base_url_with_chat_completions() {
    for (base, endpoint) in [
        ("http://127.0.0.1:8080/v1", "http://127.0.0.1:8080/v1/chat/completions"),
        ("http://127.0.0.1:11434/v1/", "http://127.0.0.1:11434/v1/chat/completions"),
        ("https://api.example.com", "https://api.example.com/chat/completions"),
        ("https://x.example.com/openai?api-version=1", "https://x.example.com/openai/chat/completions?api-version=1"),
    ] {
        assert_eq!(completions_url(Url::parse(base).unwrap()).as_str(), endpoint, "{base}");
    }
}

#[test]
fn the_body_has_the_messages_the_response_format_and_the_parameters() {
    let llm = local(json!({"temperature": 0.7, "max_tokens": 100}));
    let mut r = request(json!({"text": "hi"}));
    r.step_options = Some(Arc::new(json!({"system": "Be brief.", "user": "Answer {{content.text}} as JSON"})));
    let body = llm.body(&r, &prompt::build(&r).unwrap());
    assert_eq!(
        body,
        json!({"model": "tiny",
               "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Answer hi as JSON"}],
               "response_format": {"type": "json_object"},
               "temperature": 0.7, "max_tokens": 100})
    );
    // The step's parameters win; a schema asks for it.
    let schema = json!({"type": "object", "required": ["answer"]});
    r.output_schema = Some(Arc::new(schema.clone()));
    r.step_options = Some(Arc::new(json!({"temperature": 0.0, "max_tokens": 5})));
    let body = llm.body(&r, &prompt::build(&r).unwrap());
    assert_eq!(
        body["response_format"],
        json!({"type": "json_schema", "json_schema": {"name": "output", "schema": schema}})
    );
    assert_eq!((body["temperature"].as_f64(), body["max_tokens"].as_u64()), (Some(0.0), Some(5)));
    assert_eq!(
        body["messages"],
        json!([{"role": "system", "content": prompt::ANSWER_JSON}, {"role": "user", "content": "{\"text\":\"hi\"}"}])
    );
    // No parameters anywhere: none sent.
    let plain = local(json!({})).body(&request(json!({})), &prompt::build(&request(json!({}))).unwrap());
    assert!(plain.get("temperature").is_none() && plain.get("max_tokens").is_none(), "{plain}");
}

#[test]
fn status_classes_follow_the_http_kind() {
    let llm = local(json!({}));
    let after = Some(Duration::from_secs(3));
    for (status, code, retryable) in [
        (429, ErrorCode::AgentRateLimited, true),
        (503, ErrorCode::AgentUnavailable, true),
        (500, ErrorCode::AgentUnavailable, true),
        (408, ErrorCode::AgentUnavailable, true),
        (400, ErrorCode::AgentRejected, false),
        (404, ErrorCode::AgentRejected, false),
        (302, ErrorCode::AgentRedirect, false),
    ] {
        let e = llm.classify(StatusCode::from_u16(status).unwrap(), after, br#"{"error": {"message": "why"}}"#);
        assert_eq!(e.code(), code, "{status}");
        match e {
            AgentError::Retryable { retry_after, message, .. } => {
                assert!(retryable, "{status}");
                assert_eq!(retry_after, after, "{status}: Retry-After is passed on");
                assert!(message.ends_with(": why"), "{message}");
            }
            AgentError::Permanent { .. } => assert!(!retryable, "{status}"),
            AgentError::HostExhausted { .. } => unreachable!(),
        }
    }
}

#[tokio::test]
async fn the_api_key_is_never_shown() {
    let options = json!({"base_url": "http://user:pw@127.0.0.1:1/v1?key=QUERYCANARY", "model": "tiny",
                         "api_key": SECRET, "allow_private": true});
    let shown = format!("{:?}", settings(options.clone()));
    assert!(!shown.contains(SECRET) && !shown.contains("QUERYCANARY"), "{shown}");
    // Configuration errors name the key, never its value.
    for bad in [
        json!({"api_key": format!("{SECRET}\n")}),
        json!({"api_key": [SECRET]}),
        json!({"extra": 1}),
        json!({"base_url": "nope"}),
    ] {
        let mut o = options.clone();
        o.as_object_mut().unwrap().extend(bad.as_object().unwrap().clone());
        let e = agent(o).err().expect("refused").to_string();
        assert!(!e.contains(SECRET), "{e}");
    }
    // A key of digits (from the environment) is taken as its text, and hidden as well.
    let digits = json!({"base_url": "http://h/v1", "model": "m", "api_key": 123456789, "max_tokens": 77});
    assert_eq!(agent(digits.clone()).unwrap().api_key.as_deref(), Some("123456789"));
    let shown = format!("{:?}", settings(digits));
    assert!(!shown.contains("123456789") && shown.contains("77"), "{shown}");
    // A server echoing the key in an error, and a failed connection.
    let llm = agent(options).unwrap();
    let echoed = format!(r#"{{"error": {{"message": "Incorrect API key provided: {SECRET}"}}}}"#);
    let e = llm.classify(StatusCode::UNAUTHORIZED, None, echoed.as_bytes());
    assert_eq!(e.message(), "the model server answered 401 Unauthorized: Incorrect API key provided: <redacted>");
    let e = llm.call(&request(json!({}))).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::AgentConnection, "{e:?}");
    for canary in [SECRET, "QUERYCANARY", ":pw@"] {
        assert!(!e.message().contains(canary), "{e:?}");
    }
}

#[tokio::test]
async fn private_addresses_are_refused_unless_allowed_and_prompts_checked_first() {
    let llm = agent(json!({"base_url": "http://127.0.0.1:1/v1", "model": "tiny"})).unwrap();
    let e = llm.call(&request(json!({}))).await.unwrap_err();
    assert!(matches!(e, AgentError::Permanent { code: ErrorCode::AgentAddressRefused, .. }), "{e:?}");
    let mut bad = request(json!({}));
    bad.step_options = Some(Arc::new(json!({"user": "{{nope}}"})));
    assert_eq!(llm.call(&bad).await.unwrap_err().code(), ErrorCode::PromptInvalid);
}
