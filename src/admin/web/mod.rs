//! The web page at `/`: server-rendered HTML, no JavaScript. An overview of the queue; the
//! open dead letters grouped by error code, each with its attempts, errors, payload and
//! content, an edit-and-replay form, discard, and "replay / discard all N matching"; the
//! approvals inbox; the escalations with acknowledge and resolve; one item with why it waits,
//! and cancel.
//!
//! HTML is written with `maud`: every `(value)` spliced into a template is escaped at
//! compile time (raw markup needs an explicit `PreEscaped`, used nowhere here), so a payload
//! holding `<script>` is shown as text.
//!
//! Sign-in takes a token of `[[admin.tokens]]` and starts a session (see [`super::auth`]):
//! an `HttpOnly; SameSite=Strict` cookie, only its hash kept here. Every action is a POST
//! answered by a redirect (303) to a page that shows what it did. A POST is refused (403)
//! unless the browser says it comes from this origin (`Sec-Fetch-Site: same-origin`, or, from
//! a browser that does not send it, an `Origin` naming the `Host`), and unless it carries the
//! session's form token. Pages are sent with a Content-Security-Policy that allows no script
//! at all, only this server's stylesheet, and forms posting only here.

use super::AdminState;
use super::api;
use super::auth::{self, COOKIE, Flash, Session};
use crate::actions;
use crate::actions::Overview;
use crate::config::TokenScope;
use crate::db::{self, OpsError};
use crate::model::{Decision, ItemStatus};
use axum::extract::{Form, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use maud::{DOCTYPE, Markup, html};
use serde_json::Value;
use std::collections::HashMap;
use uuid::Uuid;

mod approvals;
mod charts;
mod costs;
mod dead_letters;
mod escalations;
mod format;
mod graph;
mod guard;
mod items;
mod overview;
mod schedules;
mod sign_in;

use format::*;
use guard::*;

pub use guard::same_origin;

/// The Content-Security-Policy of every page: no script, no frame, styles and images from
/// here only, forms posting here only.
pub const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
                       frame-ancestors 'none'; base-uri 'none'";

/// Letters shown per error code on the grouped page (the group's own page shows more); each
/// is read with its attempts, evals and approvals.
const LETTERS_PER_GROUP: i64 = 5;

/// Letters shown on one error code's page.
const LETTERS_PER_CODE: i64 = 50;

/// Longest output or payload shown inline, in characters.
const SHOWN_CHARS: usize = 4096;

const STYLE: &str = include_str!("style.css");

pub fn routes() -> axum::Router<AdminState> {
    axum::Router::new()
        .route("/", get(overview::home))
        .route("/login", post(sign_in::login))
        .route("/logout", post(sign_in::logout))
        .route("/items", get(items::items))
        .route("/items/{id}", get(items::item))
        .route("/items/{id}/cancel", post(items::cancel))
        .route("/orders/{id}", get(items::order))
        .route("/orders/{id}/cancel", post(items::cancel_order))
        .route("/dead-letters", get(dead_letters::dead_letters))
        .route("/dead-letters/bulk", post(dead_letters::bulk))
        .route("/dead-letters/picked", post(dead_letters::picked))
        .route("/dead-letters/{id}", get(dead_letters::dead_letter))
        .route("/dead-letters/{id}/replay", post(dead_letters::replay))
        .route("/dead-letters/{id}/discard", post(dead_letters::discard))
        .route("/approvals", get(approvals::approvals))
        .route("/approvals/{id}/{decision}", post(approvals::decide))
        .route("/escalations", get(escalations::escalations))
        .route("/schedules", get(schedules::schedules))
        .route("/costs", get(costs::costs))
        .route("/budgets/{name}/{action}", post(costs::budget_action))
        .route("/escalations/bulk", post(escalations::bulk))
        .route("/escalations/{id}", get(escalations::escalation))
        .route("/escalations/{id}/{action}", post(escalations::escalation_action))
        .layer(axum::middleware::from_fn(security_headers))
        .route("/assets/style.css", get(style))
}

async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

async fn style() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        STYLE,
    )
}

/// A page as an HTML response.
fn page(status: StatusCode, markup: Markup) -> Response {
    (status, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], markup.into_string()).into_response()
}

fn layout(title: &str, session: Option<&Session>, flash: Option<Flash>, body: Markup) -> Markup {
    layout_refreshing(title, session, flash, body, None)
}

/// [`layout`] that reloads itself every `refresh` seconds (a meta refresh: no script).
fn layout_refreshing(
    title: &str,
    session: Option<&Session>,
    flash: Option<Flash>,
    body: Markup,
    refresh: Option<u32>,
) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                @if let Some(seconds) = refresh { meta http-equiv="refresh" content=(seconds); }
                title { (title) " · orderly" }
                link rel="stylesheet" href="/assets/style.css";
            }
            body {
                header {
                    a.brand href="/" { "orderly" }
                    @if let Some(session) = session {
                        nav {
                            a href="/" { "Overview" }
                            a href="/dead-letters" { "Dead letters" }
                            a href="/approvals" { "Approvals" }
                            a href="/escalations" { "Escalations" }
                            a href="/schedules" { "Schedules" }
                            a href="/items" { "Items" }
                            a href="/costs" { "Costs" }
                        }
                        form.signout method="post" action="/logout" {
                            span.who { (session.identity.name) " · " (session.identity.scope.as_str()) }
                            input type="hidden" name="csrf" value=(session.csrf);
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                @if let Some(flash) = flash {
                    p class=(if flash.ok { "flash ok" } else { "flash error" }) role="status" { (flash.text) }
                }
                main { (body) }
            }
        }
    }
}

/// Hidden fields every action form carries: the form token and where to come back to.
fn hidden(session: &Session, back: &str) -> Markup {
    html! {
        input type="hidden" name="csrf" value=(session.csrf);
        input type="hidden" name="back" value=(back);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(*k, v.parse().unwrap());
        }
        map
    }

    #[test]
    fn posts_must_come_from_this_origin() {
        assert!(same_origin(&headers(&[("sec-fetch-site", "same-origin")])));
        assert!(!same_origin(&headers(&[("sec-fetch-site", "cross-site"), ("origin", "http://h:1"), ("host", "h:1")])));
        assert!(!same_origin(&headers(&[("sec-fetch-site", "same-site")])));
        assert!(!same_origin(&headers(&[("sec-fetch-site", "none")])));
        assert!(same_origin(&headers(&[("origin", "http://127.0.0.1:9187"), ("host", "127.0.0.1:9187")])));
        assert!(!same_origin(&headers(&[("origin", "http://evil.example"), ("host", "127.0.0.1:9187")])));
        assert!(
            !same_origin(&headers(&[("origin", "https://127.0.0.1:9187"), ("host", "127.0.0.1:9187")])),
            "another scheme is another origin"
        );
        assert!(same_origin(&headers(&[
            ("origin", "https://orderly.internal"),
            ("host", "orderly.internal"),
            ("x-forwarded-proto", "https")
        ])));
        assert!(!same_origin(&headers(&[("origin", "null"), ("host", "127.0.0.1:9187")])));
        assert!(!same_origin(&headers(&[("host", "127.0.0.1:9187")])), "neither header: refused");
    }

    #[test]
    fn short_ids_of_ids_made_together_differ() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        assert_ne!(short(a), short(b));
        assert!(a.simple().to_string().ends_with(short(a).trim_start_matches('…')));
    }

    #[test]
    fn redirects_stay_on_this_server() {
        let form = |b: &str| HashMap::from([("back".to_owned(), b.to_owned())]);
        assert_eq!(back(&form("/approvals"), "/"), "/approvals");
        assert_eq!(back(&form("/items?state=FAILED&type=TICKET"), "/"), "/items?state=FAILED&type=TICKET");
        for bad in [
            "//evil.example/",
            "https://evil.example/",
            "/\\evil.example",
            "approvals",
            "/\t/evil.example/",
            "/\n/evil.example/",
            "/\r\n/evil.example",
        ] {
            assert_eq!(back(&form(bad), "/x"), "/x", "{bad:?}");
        }
        // A line break elsewhere cannot reach the Location header: it is dropped.
        assert_eq!(back(&form("/approvals\r\nSet-Cookie: x=1"), "/"), "/approvalsSet-Cookie:%20x=1");
    }

    #[test]
    fn templates_escape_what_they_show() {
        let text = "<script>alert(1)</script>";
        let markup = html! { pre { (text) } };
        assert_eq!(markup.into_string(), "<pre>&lt;script&gt;alert(1)&lt;/script&gt;</pre>");
    }
}
