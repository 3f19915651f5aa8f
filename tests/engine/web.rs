//! The web page at /, in process: sign-in into an HttpOnly SameSite=Strict cookie, the
//! security headers, every page, every form (POST then redirect, with the outcome shown on
//! the next page), cross-site and token-less POSTs refused, read sessions without actions,
//! and payloads shown as text.

use crate::api::{OPERATE, READ, app, dead_lettered, escalation, held};
use crate::common::*;
use axum::body::Body;
use axum::http::Request;
use tower::ServiceExt;

/// A response as a browser sees it.
pub struct Page {
    pub status: u16,
    pub headers: axum::http::HeaderMap,
    pub body: String,
}

impl Page {
    pub fn location(&self) -> &str {
        self.headers.get("location").map(|v| v.to_str().unwrap()).unwrap_or("")
    }
}

const ORIGIN: &str = "http://orderly.test";
const HOST: &str = "orderly.test";

/// A request from a page of this server (`Origin` = `Host`) unless `headers` says otherwise.
async fn send(
    app: &axum::Router,
    method: &str,
    path: &str,
    cookie: Option<&str>,
    headers: &[(&str, &str)],
    form: Option<&[(&str, &str)]>,
) -> Page {
    let mut request = Request::builder().method(method).uri(path).header("host", HOST);
    if method == "POST" && !headers.iter().any(|(k, _)| *k == "origin" || *k == "sec-fetch-site") {
        request = request.header("origin", ORIGIN);
    }
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    if let Some(cookie) = cookie {
        request = request.header("cookie", format!("orderly_session={cookie}"));
    }
    let body = match form {
        Some(pairs) => {
            request = request.header("content-type", "application/x-www-form-urlencoded");
            Body::from(url::form_urlencoded::Serializer::new(String::new()).extend_pairs(pairs).finish())
        }
        None => Body::empty(),
    };
    let response = app.clone().oneshot(request.body(body).unwrap()).await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
    Page { status, headers, body: String::from_utf8_lossy(&bytes).into_owned() }
}

pub async fn get(app: &axum::Router, path: &str, cookie: &str) -> Page {
    send(app, "GET", path, Some(cookie), &[], None).await
}

/// Signs in with `token`; returns the session cookie's value.
pub async fn sign_in(app: &axum::Router, token: &str) -> String {
    let page = send(app, "POST", "/login", None, &[], Some(&[("token", token)])).await;
    assert_eq!((page.status, page.location()), (303, "/"), "{}", page.body);
    let cookie = page.headers["set-cookie"].to_str().unwrap().to_owned();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    cookie.split(';').next().unwrap().strip_prefix("orderly_session=").unwrap().to_owned()
}

/// The session's form token, from a page's forms.
fn csrf(body: &str) -> String {
    let at = body.find("name=\"csrf\" value=\"").expect("the page has a form") + "name=\"csrf\" value=\"".len();
    body[at..].split('"').next().unwrap().to_owned()
}

/// Posts a form of a page, then follows the redirect: the next page, which shows the outcome.
pub async fn submit(app: &axum::Router, cookie: &str, path: &str, fields: &[(&str, &str)]) -> Page {
    let token = csrf(&get(app, "/", cookie).await.body);
    let mut pairs = vec![("csrf", token.as_str())];
    pairs.extend_from_slice(fields);
    let page = send(app, "POST", path, Some(cookie), &[], Some(&pairs)).await;
    assert_eq!(page.status, 303, "POST {path}: {}", page.body);
    let next = get(app, page.location(), cookie).await;
    assert_eq!(next.status, 200, "{}", next.body);
    next
}

#[tokio::test]
async fn sign_in_sets_a_strict_http_only_cookie_and_pages_carry_a_csp() {
    let db = TestDb::new().await;
    let app = app(&db, "[routes]\nTICKET = \"echo\"\n");
    let page = send(&app, "GET", "/", None, &[], None).await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("action=\"/login\"") && page.body.contains("type=\"password\""), "{}", page.body);
    let csp = page.headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("form-action 'self'") && !csp.contains("script-src"),
        "{csp}"
    );
    assert_eq!(page.headers["x-frame-options"], "DENY");
    assert_eq!(page.headers["x-content-type-options"], "nosniff");
    assert!(!page.body.contains("<script"), "no script at all");

    let css = send(&app, "GET", "/assets/style.css", None, &[], None).await;
    assert_eq!((css.status, css.headers["content-type"].to_str().unwrap()), (200, "text/css; charset=utf-8"));

    // Wrong token, cross-site sign-in, a sign-in with no Origin at all.
    let page = send(&app, "POST", "/login", None, &[], Some(&[("token", "orderly_nope")])).await;
    assert_eq!(page.status, 401);
    assert!(page.body.contains("That token is not valid."), "{}", page.body);
    assert!(page.headers.get("set-cookie").is_none());
    for headers in [
        vec![("origin", "http://evil.example")],
        vec![("sec-fetch-site", "cross-site"), ("origin", ORIGIN)],
        vec![("sec-fetch-site", "same-site")],
    ] {
        let page = send(&app, "POST", "/login", None, &headers, Some(&[("token", OPERATE)])).await;
        assert_eq!(page.status, 403, "{headers:?}");
        assert!(page.headers.get("set-cookie").is_none());
    }
    let page =
        send(&app, "POST", "/login", None, &[("sec-fetch-site", "same-origin")], Some(&[("token", OPERATE)])).await;
    assert_eq!(page.status, 303, "Sec-Fetch-Site: same-origin is enough");

    let cookie = sign_in(&app, OPERATE).await;
    let page = get(&app, "/", &cookie).await;
    assert!(page.body.contains("<h1>Overview</h1>") && page.body.contains("alice · operate"), "{}", page.body);
    assert!(page.headers["content-security-policy"].to_str().unwrap().contains("default-src 'none'"));
    assert_eq!(page.headers["cache-control"], "no-store");

    // A forged or stale cookie is no session; pages then send to the sign-in.
    for path in ["/dead-letters", "/approvals", "/escalations", "/items"] {
        let page = send(&app, "GET", path, Some("forged"), &[], None).await;
        assert_eq!((page.status, page.location()), (303, "/"), "{path}");
    }

    // Sign out: the cookie is cleared and the session is gone.
    let token = csrf(&page.body);
    let out = send(&app, "POST", "/logout", Some(&cookie), &[], Some(&[("csrf", &token)])).await;
    assert_eq!(out.status, 303);
    assert!(out.headers["set-cookie"].to_str().unwrap().contains("Max-Age=0"));
    assert!(get(&app, "/", &cookie).await.body.contains("action=\"/login\""), "signed out");
}

#[tokio::test]
async fn every_page_shows_payloads_as_text_and_every_form_acts_once() {
    let db = TestDb::new().await;
    let app = app(&db, "[routes]\nTICKET = \"echo\"\n");
    let script = "<script>alert('pwned')</script>";
    let (item, letter) =
        dead_lettered(&db, "TICKET", &format!("{{\"note\": \"{script}\""), "CONTENT_INVALID_JSON", script).await;
    sqlx::query("UPDATE dead_letters SET payload = jsonb_set(payload, '{note}', to_jsonb($2::text)) WHERE id = $1")
        .bind(letter)
        .bind(script)
        .execute(&db.pool)
        .await
        .unwrap();
    let (_, second) =
        dead_lettered(&db, "TICKET", "{broken", "CONTENT_INVALID_JSON", "content is not valid JSON").await;
    let (third_item, _) =
        dead_lettered(&db, "TICKET", "{broken", "CONTENT_INVALID_JSON", "content is not valid JSON").await;
    let held = held(&db).await;
    let esc = escalation(&db, held).await;
    let cookie = sign_in(&app, OPERATE).await;

    let page = get(&app, "/", &cookie).await;
    assert!(page.body.contains("open dead letters") && page.body.contains("awaiting approval"), "{}", page.body);
    let pages = [
        "/dead-letters".to_owned(),
        "/dead-letters?code=CONTENT_INVALID_JSON".to_owned(),
        format!("/dead-letters/{letter}"),
        format!("/items/{item}"),
        format!("/items/{held}"),
        "/items".to_owned(),
        "/items?state=FAILED&type=TICKET".to_owned(),
        "/approvals".to_owned(),
        "/escalations".to_owned(),
    ];
    for path in &pages {
        let page = get(&app, path, &cookie).await;
        assert_eq!(page.status, 200, "{path}: {}", page.body);
        assert!(!page.body.contains("<script"), "{path} holds raw markup from a payload: {}", page.body);
        assert!(!page.body.contains("<b>yes"), "{path}: {}", page.body);
    }
    let letters = get(&app, "/dead-letters", &cookie).await.body;
    assert!(letters.contains("&lt;script&gt;alert('pwned')&lt;/script&gt;"), "shown as text: {letters}");
    assert!(letters.contains("CONTENT_INVALID_JSON") && letters.contains("3 open"), "{letters}");
    assert!(letters.contains("Replay all 3 matching") && letters.contains("Discard all 3 matching"), "{letters}");
    assert!(letters.contains("Replay with this content") && letters.contains("<textarea"), "{letters}");
    assert!(get(&app, "/approvals", &cookie).await.body.contains("&lt;b&gt;yes&lt;/b&gt;"));
    let redirect = get(&app, &format!("/items?id={item}"), &cookie).await;
    assert_eq!((redirect.status, redirect.location()), (303, format!("/items/{item}").as_str()));
    assert_eq!(get(&app, "/items/nope", &cookie).await.status, 400);
    assert_eq!(get(&app, &format!("/items/{}", uuid::Uuid::new_v4()), &cookie).await.status, 404);

    // Replay with content the JSON step refuses: nothing happens, the page says why at once
    // (422, no redirect) and the box still holds the operator's edit.
    let token = csrf(&get(&app, "/", &cookie).await.body);
    let page = send(
        &app,
        "POST",
        &format!("/dead-letters/{letter}/replay"),
        Some(&cookie),
        &[],
        Some(&[("csrf", token.as_str()), ("edit", "1"), ("content", r#"{still broken, "but": "mine""#)]),
    )
    .await;
    assert_eq!(page.status, 422, "{}", page.body);
    assert!(page.body.contains("Not replayed: content refused: content is not valid JSON"), "{}", page.body);
    assert!(
        page.body.contains("{still broken, &quot;but&quot;: &quot;mine&quot;</textarea>"),
        "the edit is kept: {}",
        page.body
    );
    assert_eq!(item_status(&db.pool, item).await, "FAILED");
    // Edited content, CRLF from the textarea back to LF.
    let page = submit(
        &app,
        &cookie,
        &format!("/dead-letters/{letter}/replay"),
        &[("edit", "1"), ("content", "{\r\n  \"note\": \"fixed\"\r\n}"), ("back", "/dead-letters")],
    )
    .await;
    assert!(page.body.contains("Replayed dead letter") && page.body.contains("with the new content"), "{}", page.body);
    let content: String = sqlx::query_scalar("SELECT content FROM work_items WHERE id = $1")
        .bind(item)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(content, "{\n  \"note\": \"fixed\"\n}");
    assert_eq!(item_status(&db.pool, item).await, "QUEUED");
    // The same letter again: refused, with who and when.
    let page = submit(&app, &cookie, &format!("/dead-letters/{letter}/replay"), &[]).await;
    assert!(page.body.contains("already REPLAYED by alice at"), "{}", page.body);

    // Discard needs a reason; then the bulk form takes what is left.
    let page = submit(&app, &cookie, &format!("/dead-letters/{second}/discard"), &[("reason", " ")]).await;
    assert!(page.body.contains("Not discarded: a reason is required"), "{}", page.body);
    let page = submit(&app, &cookie, &format!("/dead-letters/{second}/discard"), &[("reason", "duplicate")]).await;
    assert!(page.body.contains("Discarded dead letter"), "{}", page.body);
    let page = submit(
        &app,
        &cookie,
        "/dead-letters/bulk",
        &[("action", "replay"), ("error_code", "CONTENT_INVALID_JSON"), ("limit", "5")],
    )
    .await;
    assert!(page.body.contains("Replayed 1 of 1 matching dead letter(s); 0 still open."), "{}", page.body);
    assert!(dead_letter(&db.pool, third_item).await.is_none());
    assert_eq!(item_status(&db.pool, third_item).await, "QUEUED");

    // Approvals and escalations.
    let page = submit(&app, &cookie, &format!("/approvals/{held}/approve"), &[("reason", "checked")]).await;
    assert!(page.body.contains("Approved item") && page.body.contains("COMPLETED"), "{}", page.body);
    assert_eq!(item_status(&db.pool, held).await, "COMPLETED");
    let page = submit(&app, &cookie, &format!("/approvals/{held}/reject"), &[]).await;
    assert!(
        page.body.contains("no longer awaiting approval") || page.body.contains("not AWAITING_APPROVAL"),
        "{}",
        page.body
    );
    let page = submit(&app, &cookie, &format!("/escalations/{esc}/ack"), &[]).await;
    assert!(page.body.contains("Acknowledged escalation"), "{}", page.body);
    let status: String = sqlx::query_scalar("SELECT status::text FROM escalations WHERE id = $1")
        .bind(esc)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(status, "ACKNOWLEDGED");
    let page = submit(&app, &cookie, &format!("/escalations/{esc}/ack"), &[]).await;
    assert!(page.body.contains("already acknowledged"), "{}", page.body);

    // Cancel from the item's page.
    let queued = insert_item(&db.pool, insert_order(&db.pool, "LOW").await, "TICKET", "{}").await;
    let page = submit(&app, &cookie, &format!("/items/{queued}/cancel"), &[("reason", "not needed")]).await;
    assert!(page.body.contains("Cancelled item"), "{}", page.body);
    assert_eq!(item_status(&db.pool, queued).await, "CANCELLED");
    for (user, action, n) in [
        ("alice", "dead_letter.replay", 2),
        ("alice", "dead_letter.discard", 1),
        ("alice", "dead_letter.bulk_replay", 1),
        ("alice", "approval.approve", 1),
        ("alice", "escalation.acknowledge", 1),
        ("alice", "work_item.cancel", 1),
    ] {
        assert_eq!(crate::api::audit_count(&db, user, action).await, n, "{action}");
    }
}

#[tokio::test]
async fn posts_without_the_form_token_from_elsewhere_or_from_a_read_session_are_refused() {
    let db = TestDb::new().await;
    let app = app(&db, "[routes]\nTICKET = \"echo\"\n");
    let (item, letter) = dead_lettered(&db, "TICKET", "{broken", "CONTENT_INVALID_JSON", "bad").await;
    let operate = sign_in(&app, OPERATE).await;
    let token = csrf(&get(&app, "/", &operate).await.body);
    let path = format!("/dead-letters/{letter}/replay");
    type Attempt<'a> = (&'a str, Vec<(&'a str, &'a str)>, Option<&'a str>, u16);
    let attempts: [Attempt; 5] = [
        ("no form token", vec![], Some(&operate), 403),
        ("another session's form token", vec![("csrf", "0123456789abcdef")], Some(&operate), 403),
        ("cross-site", vec![("csrf", &token)], Some(&operate), 403),
        ("no session", vec![("csrf", &token)], None, 401),
        ("forged session", vec![("csrf", &token)], Some("forged"), 401),
    ];
    for (what, form, cookie, status) in attempts {
        let headers: Vec<(&str, &str)> =
            if what == "cross-site" { vec![("origin", "http://evil.example")] } else { vec![] };
        let page = send(&app, "POST", &path, cookie, &headers, Some(&form)).await;
        assert_eq!(page.status, status, "{what}: {}", page.body);
    }
    // No Origin and no Sec-Fetch-Site: refused as well.
    let page =
        send(&app, "POST", &path, Some(&operate), &[("sec-fetch-site", "cross-site")], Some(&[("csrf", &token)])).await;
    assert_eq!(page.status, 403);
    assert_eq!(item_status(&db.pool, item).await, "FAILED", "nothing was replayed");

    // A read session sees the pages without their forms, and its POSTs are refused.
    let read = sign_in(&app, READ).await;
    let page = get(&app, "/dead-letters", &read).await;
    assert!(page.body.contains("bob · read"), "{}", page.body);
    assert!(!page.body.contains("Replay as is") && !page.body.contains("Discard all"), "{}", page.body);
    let token = csrf(&page.body);
    let page = send(&app, "POST", &path, Some(&read), &[], Some(&[("csrf", &token)])).await;
    assert_eq!(page.status, 403);
    assert!(page.body.contains("read scope"), "{}", page.body);
    assert_eq!(item_status(&db.pool, item).await, "FAILED");
}

/// The operators' rules live once (`actions`) and hold on every surface: a discard needs a
/// reason, and a reason is at most 2,000 characters, on the page, the API and the CLI alike.
#[tokio::test]
async fn operator_rules_hold_on_the_page_the_api_and_the_cli() {
    let db = TestDb::new().await;
    let app = app(&db, "");
    let (_, letter) = crate::api::dead_lettered(&db, "TICKET", "{}", "AGENT_ERROR", "no").await;
    let open = |db: &TestDb| {
        let pool = db.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM dead_letters WHERE processed_at IS NULL")
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    let long = "x".repeat(orderly::actions::MAX_REASON_CHARS + 1);
    // The page.
    let cookie = sign_in(&app, crate::api::OPERATE).await;
    let shown = get(&app, &format!("/dead-letters/{letter}"), &cookie).await;
    let token = csrf(&shown.body);
    let path = format!("/dead-letters/{letter}/discard");
    for reason in ["", long.as_str()] {
        let page = send(&app, "POST", &path, Some(&cookie), &[], Some(&[("csrf", &token), ("reason", reason)])).await;
        assert!(page.status == 303 || (400..500).contains(&page.status), "{}", page.status);
        assert_eq!(open(&db).await, 1, "the page refused a discard with reason of {} chars", reason.len());
    }
    // The API.
    for body in [serde_json::json!({}), serde_json::json!({"reason": long})] {
        let (status, answer) =
            crate::api::post(&app, &path.replace("/dead-letters", "/api/v1/dead-letters"), body).await;
        assert_eq!(status, 422, "{answer}");
        assert!(["REASON_REQUIRED", "REASON_INVALID"].contains(&answer["error"].as_str().unwrap()), "{answer}");
    }
    // The CLI.
    for args in [vec![], vec!["--reason", long.as_str()]] {
        let mut all = vec!["dead-letters", "discard"];
        let id = letter.to_string();
        all.push(&id);
        all.extend(args);
        let out = crate::cli::orderly(&db.url, &all);
        assert!(!out.status.success(), "{}", crate::cli::text(&out));
    }
    assert_eq!(open(&db).await, 1, "no surface discarded it");
    // With a reason, each works (the page shown here).
    let page =
        send(&app, "POST", &path, Some(&cookie), &[], Some(&[("csrf", &token), ("reason", "known bad input")])).await;
    assert_eq!(page.status, 303);
    assert_eq!(open(&db).await, 0);
}

/// A held item's own page offers approve and reject, and the decision brings the operator
/// back to the item.
#[tokio::test]
async fn a_held_items_page_approves_it() {
    let db = TestDb::new().await;
    let app = app(&db, "");
    let held = crate::api::held(&db).await;
    let reader = sign_in(&app, crate::api::READ).await;
    let page = get(&app, &format!("/items/{held}"), &reader).await;
    assert!(!page.body.contains(&format!("/approvals/{held}/approve")), "a read token sees no decision form");
    let cookie = sign_in(&app, crate::api::OPERATE).await;
    let page = get(&app, &format!("/items/{held}"), &cookie).await;
    assert!(page.body.contains("Held for a decision"), "{}", page.body);
    assert!(page.body.contains(&format!("action=\"/approvals/{held}/approve\"")), "{}", page.body);
    assert!(page.body.contains("&lt;b&gt;yes&lt;/b&gt;"), "the held output is shown, as text");
    let token = csrf(&page.body);
    let back = format!("/items/{held}");
    let done = send(
        &app,
        "POST",
        &format!("/approvals/{held}/approve"),
        Some(&cookie),
        &[],
        Some(&[("csrf", &token), ("back", &back), ("reason", "checked by hand")]),
    )
    .await;
    assert_eq!((done.status, done.location()), (303, back.as_str()));
    assert_eq!(item_status(&db.pool, held).await, "COMPLETED");
}

/// An escalation has a page of its own, linked from the list: its subject and the
/// notifications sent for it.
#[tokio::test]
async fn an_escalation_has_a_page_with_its_subject() {
    let db = TestDb::new().await;
    let app = app(&db, "");
    let order = insert_order(&db.pool, "MEDIUM").await;
    let item = insert_item(&db.pool, order, "TICKET", "{}").await;
    let escalation = crate::api::escalation(&db, item).await;
    let cookie = sign_in(&app, crate::api::READ).await;
    let list = get(&app, "/escalations", &cookie).await;
    assert!(list.body.contains(&format!("href=\"/escalations/{escalation}\"")), "{}", list.body);
    let page = get(&app, &format!("/escalations/{escalation}"), &cookie).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains(&format!("href=\"/items/{item}\"")), "{}", page.body);
    assert!(page.body.contains("None sent."), "{}", page.body);
    let missing = get(&app, &format!("/escalations/{}", uuid::Uuid::new_v4()), &cookie).await;
    assert_eq!(missing.status, 404);
}

/// The overview's charts come from every replica's activity rows: two engines on one
/// database each record what they did, and the page sums them (the last hour per minute, the
/// last day per hour); `?refresh=` reloads the page without script.
#[tokio::test]
async fn the_overview_charts_every_replicas_activity() {
    let db = TestDb::new().await;
    let config = "[routes]\nTICKET = \"echo\"\n";
    let engines = [db.engine(config).await, db.engine(config).await];
    let mut items = Vec::new();
    for n in 0..40 {
        let order = insert_order(&db.pool, "MEDIUM").await;
        items.push(insert_item(&db.pool, order, "TICKET", &format!("{{\"n\": {n}}}")).await);
    }
    // Two dead letters (content that is not JSON) and their failed attempts.
    let order = insert_order(&db.pool, "MEDIUM").await;
    insert_item(&db.pool, order, "TICKET", "not json").await;
    insert_item(&db.pool, order, "TICKET", "nor this").await;
    wait_until("every replica's activity recorded", std::time::Duration::from_secs(30), || async {
        count(&db.pool, "SELECT coalesce(sum(completed), 0)::bigint FROM orderly_activity").await == 40
            && count(&db.pool, "SELECT coalesce(sum(dead_lettered), 0)::bigint FROM orderly_activity").await == 2
    })
    .await;
    let replicas = count(&db.pool, "SELECT count(DISTINCT worker_id) FROM orderly_activity WHERE completed > 0").await;
    for engine in engines {
        stop(engine).await;
    }

    let app = crate::api::app(&db, config);
    let cookie = sign_in(&app, crate::api::READ).await;
    let page = get(&app, "/", &cookie).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("Items completed per minute: 40 in all"), "{}", page.body);
    assert!(page.body.contains("Dead letters per minute: 2 in all"));
    assert!(page.body.contains("Attempts failed per minute: 2 in all"));
    assert!(page.body.contains("Queue wait per minute: p50 "), "a quantile from the claims' buckets");
    assert_eq!(page.body.matches("<svg").count(), 4);
    assert!(!page.body.contains("http-equiv=\"refresh\""));
    let day = get(&app, "/?range=day", &cookie).await;
    assert!(day.body.contains("Items completed per hour: 40 in all"), "{}", day.body);
    let refreshing = get(&app, "/?refresh=30", &cookie).await;
    assert!(refreshing.body.contains("<meta http-equiv=\"refresh\" content=\"30\">"), "{}", refreshing.body);
    assert!(refreshing.body.contains("reloads every 30 s"));
    let too_fast = get(&app, "/?refresh=1", &cookie).await;
    assert_eq!(too_fast.status, 400);
    eprintln!("activity recorded by {replicas} replica(s)");
}

/// Escalations are acted on in bulk: every open level of one item at once, or the rows
/// ticked; each through the one action path (audited one by one). Lists filter by the API's
/// parameter names, types in any case, and say how long ago.
#[tokio::test]
async fn escalations_are_acknowledged_by_item_and_by_the_rows_ticked() {
    let db = TestDb::new().await;
    let app = app(&db, "[routes]\nTICKET = \"echo\"\n");
    let order = insert_order(&db.pool, "MEDIUM").await;
    let item = insert_item(&db.pool, order, "TICKET", "{}").await;
    let other = insert_item(&db.pool, order, "TICKET", "{}").await;
    let first = escalation(&db, item).await;
    let second = escalation(&db, item).await;
    let third = escalation(&db, other).await;
    let cookie = sign_in(&app, OPERATE).await;
    let list = get(&app, "/escalations", &cookie).await;
    assert!(list.body.contains("Acknowledge all 2 of this item"), "{}", list.body);
    assert!(list.body.contains("ago</small>"), "relative times: {}", list.body);
    let page = submit(&app, &cookie, "/escalations/bulk", &[("item", &item.to_string()), ("action", "ack")]).await;
    assert!(page.body.contains("Acknowledged 2 escalation(s)."), "{}", page.body);
    let status = |id: uuid::Uuid| {
        let pool = db.pool.clone();
        async move {
            sqlx::query_scalar::<_, String>("SELECT status::text FROM escalations WHERE id = $1")
                .bind(id)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    assert_eq!(
        (status(first).await, status(second).await, status(third).await),
        ("ACKNOWLEDGED".into(), "ACKNOWLEDGED".into(), "OPEN".into())
    );
    // Ticked rows: the third and the first, resolved.
    let page = submit(
        &app,
        &cookie,
        "/escalations/bulk",
        &[(&format!("pick-{third}"), "1"), (&format!("pick-{first}"), "1"), ("action", "resolve")],
    )
    .await;
    assert!(page.body.contains("Resolved 2 escalation(s)."), "{}", page.body);
    assert_eq!(
        (status(first).await, status(second).await, status(third).await),
        ("RESOLVED".into(), "ACKNOWLEDGED".into(), "RESOLVED".into())
    );
    assert_eq!(crate::api::audit_count(&db, "alice", "escalation.acknowledge").await, 2);
    assert_eq!(crate::api::audit_count(&db, "alice", "escalation.resolve").await, 2);
    let nothing = submit(&app, &cookie, "/escalations/bulk", &[("action", "ack")]).await;
    assert!(nothing.body.contains("no escalation was ticked"), "{}", nothing.body);

    // The items list takes the API's filters; a type in any case.
    let items = get(&app, &format!("/items?type=ticket&order={order}"), &cookie).await;
    assert!(
        items.body.contains(&format!("/items/{item}")) && items.body.contains(&format!("/items/{other}")),
        "{}",
        items.body
    );
    let none = get(&app, &format!("/items?type=ticket&order={}", uuid::Uuid::now_v7()), &cookie).await;
    assert!(none.body.contains("No item matches."));
}

/// Dead letters ticked on the list are replayed or discarded together, each through the one
/// action path; a discard without a reason is refused for each, and nothing changes.
#[tokio::test]
async fn dead_letters_ticked_on_the_list_are_discarded_or_replayed_together() {
    let db = TestDb::new().await;
    let app = app(&db, "[routes]\nTICKET = \"echo\"\n");
    let (_, a) = dead_lettered(&db, "TICKET", "{}", "AGENT_TIMEOUT", "too slow").await;
    let (_, b) = dead_lettered(&db, "TICKET", "{}", "AGENT_TIMEOUT", "too slow").await;
    let (c_item, c) = dead_lettered(&db, "TICKET", "{}", "AGENT_REJECTED", "refused").await;
    let cookie = sign_in(&app, OPERATE).await;
    let list = get(&app, "/dead-letters?error_code=AGENT_TIMEOUT", &cookie).await;
    assert!(
        list.body.contains(&format!("name=\"pick-{a}\"")) && list.body.contains(&format!("name=\"pick-{b}\"")),
        "{}",
        list.body
    );
    assert!(!list.body.contains(&format!("name=\"pick-{c}\"")), "the API's error_code filter applies");
    let picks = [(format!("pick-{a}"), "1"), (format!("pick-{b}"), "1")];
    let mut fields: Vec<(&str, &str)> = picks.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    fields.push(("action", "discard"));
    let refused = submit(&app, &cookie, "/dead-letters/picked", &fields).await;
    assert!(refused.body.contains("Discarded 0 of 2 dead letter(s)"), "{}", refused.body);
    fields.push(("reason", "the partner fixed their endpoint"));
    let page = submit(&app, &cookie, "/dead-letters/picked", &fields).await;
    assert!(page.body.contains("Discarded 2 dead letter(s)."), "{}", page.body);
    assert_eq!(crate::api::audit_count(&db, "alice", "dead_letter.discard").await, 2);
    let page =
        submit(&app, &cookie, "/dead-letters/picked", &[(&format!("pick-{c}"), "1"), ("action", "replay")]).await;
    assert!(page.body.contains("Replayed 1 dead letter(s)."), "{}", page.body);
    assert_eq!(item_status(&db.pool, c_item).await, "QUEUED");
}
