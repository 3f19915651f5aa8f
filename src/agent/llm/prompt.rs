//! The `llm` kind's prompts: the step's `llm` object, read strictly, and a tiny `{{variable}}`
//! templater (docs/agents.md, "llm").
//!
//! A template is text with `{{name}}` placeholders and optional `{{#revision}}…{{/revision}}`
//! sections, kept only on a revision (so one prompt can use `{{feedback}}` and still run a
//! first time). Every placeholder is checked when the template is read, in skipped sections
//! too; whether its value exists (a content path, a revision's feedback, a judge's output) is
//! checked when it is rendered. Every problem is a permanent `PROMPT_INVALID` naming the
//! workflow template and the step.

use crate::agent::{AgentError, AgentRequest};
use crate::model::ErrorCode;
use serde::Deserialize;
use serde_json::{Value, json};

/// The step's `llm` object; every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct StepOptions {
    system: Option<String>,
    user: Option<String>,
    temperature: Option<f64>,
    max_tokens: Option<u32>,
}

/// The messages and parameters of one call, rendered.
#[derive(Debug, PartialEq)]
pub(super) struct Prompt {
    pub system: Option<String>,
    pub user: String,
    /// The step's own, when it sets them (the agent's defaults apply otherwise).
    pub temperature: Option<f64>,
    pub max_tokens: Option<u32>,
}

/// The judge's instructions when an evaluator's step gives no prompt.
const JUDGE_SYSTEM: &str = "You are an evaluator. Judge the output below against the criteria. Answer only with a \
    JSON object: {\"score\": a number from 0 to 1, \"passed\": true or false, \"reasons\": [short strings saying why]}.";
const JUDGE_USER: &str =
    "Criteria:\n{{criteria}}\n\nThe input the output was made from:\n{{content}}\n\nThe output to judge:\n{{output}}";
const JUDGE_USER_NO_CRITERIA: &str = "Criteria: judge whether the output is a correct and complete answer to the \
    input.\n\nThe input the output was made from:\n{{content}}\n\nThe output to judge:\n{{output}}";
/// Added to the user prompt of a revision whose prompts do not use `{{feedback}}`.
const REVISION: &str = "\n\nThis is revision {{revision}}. Your previous output was:\n{{previous_output}}\n\n\
    It was sent back with this feedback:\n{{feedback}}\n\nAnswer again with the whole output, addressing the feedback.";
/// Added to the system prompt when no message mentions JSON (OpenAI refuses JSON mode without).
pub(super) const ANSWER_JSON: &str = "Answer with a JSON object.";

/// The rendered prompt of `request`: the step's templates, or the defaults (the content as
/// the user prompt; the built-in judge for an evaluator without prompts; the previous output
/// and feedback added to a revision's prompt that does not use `{{feedback}}`).
pub(super) fn build(request: &AgentRequest) -> Result<Prompt, AgentError> {
    let invalid = |what: String| AgentError::permanent(ErrorCode::PromptInvalid, format!("{}: {what}", place(request)));
    let options = match request.step_options.as_deref() {
        None | Some(Value::Null) => StepOptions::default(),
        Some(value) => StepOptions::deserialize(value).map_err(|e| invalid(format!("llm: {e}")))?,
    };
    if let Some(t) = options.temperature
        && !(0.0..=2.0).contains(&t)
    {
        return Err(invalid(format!("llm.temperature: must be between 0 and 2, not {t}")));
    }
    if options.max_tokens == Some(0) {
        return Err(invalid("llm.max_tokens: must be at least 1".into()));
    }
    let judge = request.evaluate.as_ref();
    let default_user = match judge {
        Some(e) if e.criteria.is_some() => JUDGE_USER,
        Some(_) => JUDGE_USER_NO_CRITERIA,
        None => "{{content}}",
    };
    let system_text = match (&options.system, &options.user) {
        (Some(system), _) => Some(system.as_str()),
        (None, None) if judge.is_some() => Some(JUDGE_SYSTEM),
        (None, _) => None,
    };
    let system = system_text.map(|text| parse(text).map_err(|e| invalid(format!("llm.system: {e}")))).transpose()?;
    let user_text = options.user.as_deref().unwrap_or(default_user);
    let mut user = parse(user_text).map_err(|e| invalid(format!("llm.user: {e}")))?;
    let uses_feedback = |tokens: &[Token<'_>]| tokens.contains(&Token::Var("feedback"));
    if request.review.is_some()
        && judge.is_none()
        && !uses_feedback(&user)
        && !system.as_deref().is_some_and(uses_feedback)
    {
        user.extend(parse(REVISION).expect("the revision paragraph is a valid template"));
    }
    let system = system.map(|t| render(&t, request).map_err(|e| invalid(format!("llm.system: {e}")))).transpose()?;
    let user = render(&user, request).map_err(|e| invalid(format!("llm.user: {e}")))?;
    let mentions_json = |text: &str| text.to_ascii_lowercase().contains("json");
    let system = if mentions_json(&user) || system.as_deref().is_some_and(mentions_json) {
        system
    } else {
        Some(system.map_or_else(|| ANSWER_JSON.to_owned(), |s| format!("{s}\n\n{ANSWER_JSON}")))
    };
    Ok(Prompt { system, user, temperature: options.temperature, max_tokens: options.max_tokens })
}

/// Where a prompt comes from, for error messages.
fn place(request: &AgentRequest) -> String {
    let step = format!("workflow template `{}` step {}", request.work_order.workflow_id, request.work_item.item_type);
    match &request.evaluate {
        Some(e) => format!("{step}, evaluator `{}`", e.evaluator),
        None => step,
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Token<'a> {
    Text(&'a str),
    Var(&'a str),
    /// `{{#revision}}`: what follows up to `{{/revision}}` is kept on a revision only.
    Revision,
    End,
}

/// Variables whose value exists on a revision only.
const REVISION_VARS: [&str; 3] = ["revision", "previous_output", "feedback"];
/// Variables whose value exists for an evaluator only.
const JUDGE_VARS: [&str; 2] = ["output", "criteria"];

/// Splits a template into text and checked placeholders.
fn parse(template: &str) -> Result<Vec<Token<'_>>, String> {
    let mut tokens = Vec::new();
    let mut rest = template;
    let mut in_section = false;
    while let Some(start) = rest.find("{{") {
        if start > 0 {
            tokens.push(Token::Text(&rest[..start]));
        }
        let inner = &rest[start + 2..];
        let Some(end) = inner.find("}}") else {
            return Err(format!("unclosed `{{{{` in \"{}\"", crate::model::printable(&rest[start..], 40)));
        };
        let name = inner[..end].trim();
        let token = match name {
            "#revision" if in_section => return Err("`{{#revision}}` sections cannot be nested".into()),
            "#revision" => Token::Revision,
            "/revision" if !in_section => return Err("`{{/revision}}` without `{{#revision}}`".into()),
            "/revision" => Token::End,
            _ if name.starts_with(['#', '/']) => {
                return Err(format!("unknown section `{{{{{name}}}}}` (only `{{{{#revision}}}}` is known)"));
            }
            _ if known(name) => Token::Var(name),
            _ => return Err(format!("unknown variable `{{{{{name}}}}}`")),
        };
        in_section = match token {
            Token::Revision => true,
            Token::End => false,
            _ => in_section,
        };
        tokens.push(token);
        rest = &inner[end + 2..];
    }
    if in_section {
        return Err("`{{#revision}}` without `{{/revision}}`".into());
    }
    if !rest.is_empty() {
        tokens.push(Token::Text(rest));
    }
    Ok(tokens)
}

fn known(name: &str) -> bool {
    let path_ok = |path: &str| path.split('.').all(|segment| !segment.is_empty());
    match name.split_once('.') {
        Some(("content" | "metadata", path)) => path_ok(path),
        None => {
            ["content", "metadata", "dependencies"].contains(&name)
                || REVISION_VARS.contains(&name)
                || JUDGE_VARS.contains(&name)
        }
        _ => matches!(name, "item.type" | "item.id"),
    }
}

/// Fills the placeholders from the request; a value it does not have is an error.
fn render(tokens: &[Token<'_>], request: &AgentRequest) -> Result<String, String> {
    let mut out = String::new();
    let mut skipping = false;
    for token in tokens {
        match *token {
            Token::Revision => skipping = request.review.is_none(),
            Token::End => skipping = false,
            _ if skipping => {}
            Token::Text(text) => out.push_str(text),
            Token::Var(name) => out.push_str(&value(name, request)?),
        }
    }
    Ok(out)
}

/// A string as it is; any other JSON as compact JSON text.
fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn value(name: &str, request: &AgentRequest) -> Result<String, String> {
    let review = || {
        request.review.as_ref().ok_or_else(|| {
            format!(
                "`{{{{{name}}}}}` has a value on a revision only; put it inside {{{{#revision}}}}…{{{{/revision}}}}"
            )
        })
    };
    let judged =
        || request.evaluate.as_ref().ok_or_else(|| format!("`{{{{{name}}}}}` has a value for an evaluator only"));
    Ok(match name {
        "content" => text(&request.work_item.content),
        "metadata" => text(&request.work_order.metadata),
        "item.type" => request.work_item.item_type.clone(),
        "item.id" => request.work_item.id.to_string(),
        "dependencies" => {
            let list: Vec<Value> = (request.context.dependencies.iter())
                .map(|d| json!({"type": d.item_type, "status": d.status, "result": d.result}))
                .collect();
            Value::Array(list).to_string()
        }
        "revision" => review()?.revision.to_string(),
        "previous_output" => review()?.previous_output.to_string(),
        "feedback" => Value::Array(review()?.feedback.clone()).to_string(),
        "output" => judged()?.output.to_string(),
        "criteria" => judged()?.criteria.clone().unwrap_or_default(),
        _ => {
            let (root, path) = name.split_once('.').expect("checked by parse");
            let (start, what) = match root {
                "content" => (&request.work_item.content, "the item's content"),
                _ => (&request.work_order.metadata, "the order's metadata"),
            };
            let found = path.split('.').try_fold(start, |at, segment| match at {
                Value::Object(map) => map.get(segment),
                Value::Array(items) => segment.parse::<usize>().ok().and_then(|i| items.get(i)),
                _ => None,
            });
            text(found.ok_or_else(|| format!("`{{{{{name}}}}}`: {what} has no `{path}`"))?)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::llm::tests::request;
    use crate::agent::{DependencyView, EvaluateView, ReviewView};
    use std::sync::Arc;

    fn with_step(step: Value) -> AgentRequest {
        let mut r = request(json!({"customer": {"name": "Ada", "tags": ["vip"]}, "text": "printer on fire"}));
        r.step_options = Some(Arc::new(step));
        r
    }

    fn user(step: Value) -> Result<String, AgentError> {
        build(&with_step(step)).map(|p| p.user)
    }

    fn invalid(step: Value) -> String {
        let e = build(&with_step(step)).unwrap_err();
        assert_eq!(e.code(), ErrorCode::PromptInvalid, "{e:?}");
        assert!(matches!(e, AgentError::Permanent { .. }));
        e.message().to_owned()
    }

    #[test]
    fn every_variable_is_filled() {
        let mut r = with_step(json!({"user": "{{content.customer.name}}|{{ content.customer.tags.0 }}|{{metadata}}|\
            {{metadata.channel}}|{{item.type}}|{{item.id}}|{{dependencies}}|{{content.text}}"}));
        r.context.dependencies.push(DependencyView {
            id: uuid::Uuid::nil(),
            item_type: "EXTRACT".into(),
            kind: "BLOCKS".into(),
            status: "COMPLETED".into(),
            result: Some(json!({"total": 3})),
            result_omitted: None,
            result_bytes: None,
        });
        let id = r.work_item.id;
        assert_eq!(
            build(&r).unwrap().user,
            format!(
                "Ada|vip|{{\"channel\":\"mail\"}}|mail|TICKET|{id}|\
                 [{{\"result\":{{\"total\":3}},\"status\":\"COMPLETED\",\"type\":\"EXTRACT\"}}]|printer on fire"
            )
        );
        // The whole content: compact JSON, or a string as it is.
        assert_eq!(user(json!({"user": "{{content.customer}}"})).unwrap(), r#"{"name":"Ada","tags":["vip"]}"#);
        let mut text = request(json!("just text"));
        text.step_options = Some(Arc::new(json!({"user": "<{{content}}>"})));
        assert_eq!(build(&text).unwrap().user, "<just text>");
    }

    #[test]
    fn defaults_are_the_content_and_a_json_instruction() {
        let prompt = build(&request(json!({"a": 1}))).unwrap();
        assert_eq!(
            prompt,
            Prompt { system: Some(ANSWER_JSON.into()), user: r#"{"a":1}"#.into(), temperature: None, max_tokens: None }
        );
        // A prompt that mentions JSON gets no instruction; a system prompt keeps its own text.
        let prompt =
            build(&with_step(json!({"system": "Be brief.", "user": "Give JSON for {{content.text}}"}))).unwrap();
        assert_eq!(prompt.system.as_deref(), Some("Be brief."));
        let prompt = build(&with_step(json!({"system": "Be brief.", "temperature": 0.5, "max_tokens": 9}))).unwrap();
        assert_eq!(prompt.system, Some(format!("Be brief.\n\n{ANSWER_JSON}")));
        assert_eq!((prompt.temperature, prompt.max_tokens), (Some(0.5), Some(9)));
    }

    #[test]
    fn bad_templates_and_options_are_prompt_invalid_naming_the_step() {
        let m = invalid(json!({"user": "hello {{foo}}"}));
        assert_eq!(m, "workflow template `wf` step TICKET: llm.user: unknown variable `{{foo}}`");
        assert!(invalid(json!({"system": "hi {{content"})).contains("llm.system: unclosed `{{`"));
        assert!(invalid(json!({"user": "{{content.customer.email}}"})).contains("content has no `customer.email`"));
        assert!(invalid(json!({"user": "{{metadata.x.y}}"})).contains("metadata has no `x.y`"));
        assert!(invalid(json!({"user": "{{content.}}"})).contains("unknown variable `{{content.}}`"));
        assert!(invalid(json!({"user": "{{feedback}}"})).contains("a revision only"));
        assert!(invalid(json!({"user": "{{output}}"})).contains("an evaluator only"));
        assert!(invalid(json!({"user": "{{#revision}}x"})).contains("without `{{/revision}}`"));
        assert!(invalid(json!({"user": "{{#draft}}x{{/draft}}"})).contains("unknown section"));
        // Unknown variables are found in sections a first run skips.
        assert!(invalid(json!({"user": "x{{#revision}}{{fedback}}{{/revision}}"})).contains("`{{fedback}}`"));
        assert!(invalid(json!({"usr": "x"})).contains("llm: unknown field `usr`"));
        assert!(invalid(json!({"temperature": 3})).contains("between 0 and 2"));
        assert!(invalid(json!({"max_tokens": 0})).contains("at least 1"));
        assert!(invalid(json!("prompt")).contains("llm: invalid type"));
    }

    fn revision(step: Value) -> AgentRequest {
        let mut r = with_step(step);
        r.review = Some(ReviewView {
            revision: 2,
            max_revisions: 3,
            previous_output: json!({"summary": "bad"}),
            feedback: vec![json!("too short")],
        });
        r
    }

    #[test]
    fn revisions_get_the_previous_output_and_feedback() {
        let p = build(&revision(json!({"user": "Summarise {{content.text}}"}))).unwrap();
        assert_eq!(
            p.user,
            "Summarise printer on fire\n\nThis is revision 2. Your previous output was:\n{\"summary\":\"bad\"}\n\n\
             It was sent back with this feedback:\n[\"too short\"]\n\nAnswer again with the whole output, addressing the feedback."
        );
        // A prompt that places the feedback itself gets nothing added; its section is kept.
        let step = json!({"user": "Summarise.{{#revision}} Fix: {{feedback}} (rev {{revision}}){{/revision}}"});
        assert_eq!(build(&revision(step.clone())).unwrap().user, "Summarise. Fix: [\"too short\"] (rev 2)");
        assert_eq!(build(&with_step(step)).unwrap().user, "Summarise.", "a first run skips the section");
    }

    #[test]
    fn evaluators_get_the_built_in_judge_unless_the_step_has_prompts() {
        let mut r = with_step(Value::Null);
        r.evaluate = Some(EvaluateView {
            evaluator: "judge".into(),
            version: "1".into(),
            criteria: Some("Names the customer.".into()),
            output: json!({"summary": "Ada's printer"}),
        });
        let p = build(&r).unwrap();
        assert_eq!(p.system.as_deref(), Some(JUDGE_SYSTEM));
        assert!(p.user.starts_with("Criteria:\nNames the customer.\n\nThe input the output was made from:\n{"));
        assert!(p.user.ends_with("The output to judge:\n{\"summary\":\"Ada's printer\"}"), "{}", p.user);
        r.step_options = Some(Arc::new(json!({"user": "{{criteria}} / {{output}} as JSON"})));
        let p = build(&r).unwrap();
        assert_eq!(
            (p.system, p.user.as_str()),
            (None, "Names the customer. / {\"summary\":\"Ada's printer\"} as JSON")
        );
        r.step_options = Some(Arc::new(json!({"user": "{{nope}}"})));
        let m = build(&r).unwrap_err().message().to_owned();
        assert!(m.starts_with("workflow template `wf` step TICKET, evaluator `judge`: llm.user:"), "{m}");
    }
}
