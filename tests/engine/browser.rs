//! The web page in a real browser: headless Chromium driven through chromedriver's W3C
//! WebDriver HTTP API (plain reqwest, no client crate), against a running engine's admin
//! server. Signs in, finds a dead letter, edits its content and replays it, sees the item
//! complete; approves a held item; acknowledges an escalation. Screenshots go to
//! `target/screenshots/`; with `ORDERLY_SCREENSHOTS_TO_DOCS=1` the overview also replaces
//! `docs/screenshot-overview.png` (the README's).
//!
//! Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs them; `CHROMIUM` and
//! `CHROMEDRIVER` override the paths). Without them the test fails when `CI=true` and is
//! skipped, saying so, elsewhere.

use crate::api::{OPERATE, READ, escalation, held, tokens_toml};
use crate::common::*;
use base64::Engine as _;
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use uuid::Uuid;

fn binary(env: &str, default: &str) -> Option<PathBuf> {
    let path = PathBuf::from(std::env::var(env).unwrap_or_else(|_| default.to_owned()));
    path.exists().then_some(path)
}

/// chromedriver on a free port, killed when dropped.
struct Driver {
    child: Child,
    base: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One browser session; closed (best effort) when dropped, even after a failed assertion.
struct Browser {
    http: reqwest::Client,
    url: String,
    session: String,
    profile: PathBuf,
    driver: Driver,
}

impl Drop for Browser {
    fn drop(&mut self) {
        // A blocking DELETE /session on a plain socket: no runtime is needed in drop.
        let addr = self.driver.base.trim_start_matches("http://").to_owned();
        if let Ok(mut stream) = std::net::TcpStream::connect(&addr) {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
            let request = format!(
                "DELETE /session/{} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                self.session
            );
            if stream.write_all(request.as_bytes()).is_ok() {
                let _ = stream.read_to_end(&mut Vec::new());
            }
        }
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

impl Browser {
    async fn start(chromium: &Path, chromedriver: &Path) -> Browser {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let log = screenshots_dir().join("chromedriver.log");
        let child = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let driver = Driver { child, base: format!("http://127.0.0.1:{port}") };
        let http = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(90)).build().unwrap();
        let start = Instant::now();
        loop {
            let ready = match http.get(format!("{}/status", driver.base)).send().await {
                Ok(r) => r.text().await.ok().and_then(|t| serde_json::from_str::<Value>(&t).ok()),
                Err(_) => None,
            };
            if ready.is_some_and(|v| v["value"]["ready"] == true) {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "chromedriver did not get ready (see {})",
                log.display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let profile = std::env::temp_dir().join(format!("orderly-chromium-{}", Uuid::new_v4().simple()));
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium.to_str().unwrap(),
                "args": ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                         "--disable-background-networking", "--disable-component-update", "--disable-sync",
                         "--disable-dev-shm-usage", "--window-size=1280,900",
                         format!("--user-data-dir={}", profile.display())]
            }
        }}});
        let response = http
            .post(format!("{}/session", driver.base))
            .header("content-type", "application/json")
            .body(capabilities.to_string())
            .send()
            .await
            .expect("chromedriver answers");
        let body: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
        let session = body["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("a browser session starts: {body}"))
            .to_owned();
        let url = format!("{}/session/{session}", driver.base);
        Browser { http, url, session, profile, driver }
    }

    /// One WebDriver command: its `value`, or the test fails with the driver's error.
    async fn command(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self.http.request(method.clone(), format!("{}{path}", self.url));
        if let Some(body) = body {
            request = request.header("content-type", "application/json").body(body.to_string());
        }
        let response = request.send().await.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = response.status();
        let body: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap_or(Value::Null);
        assert!(status.is_success(), "{method} {path}: {status} {body}");
        body["value"].clone()
    }

    async fn goto(&self, url: &str) {
        self.command(reqwest::Method::POST, "/url", Some(json!({ "url": url }))).await;
    }

    /// The element matching a CSS selector (the test fails when there is none).
    async fn find(&self, css: &str) -> String {
        let value =
            self.command(reqwest::Method::POST, "/element", Some(json!({"using": "css selector", "value": css}))).await;
        // The W3C element reference: an object with one entry, the web element identifier.
        value.as_object().and_then(|o| o.values().next()).and_then(Value::as_str).expect("an element").to_owned()
    }

    async fn click(&self, css: &str) {
        let element = self.find(css).await;
        self.command(reqwest::Method::POST, &format!("/element/{element}/click"), Some(json!({}))).await;
    }

    async fn replace_text(&self, css: &str, text: &str) {
        let element = self.find(css).await;
        self.command(reqwest::Method::POST, &format!("/element/{element}/clear"), Some(json!({}))).await;
        self.command(reqwest::Method::POST, &format!("/element/{element}/value"), Some(json!({ "text": text }))).await;
    }

    async fn source(&self) -> String {
        self.command(reqwest::Method::GET, "/source", None).await.as_str().unwrap_or_default().to_owned()
    }

    async fn current_url(&self) -> String {
        self.command(reqwest::Method::GET, "/url", None).await.as_str().unwrap_or_default().to_owned()
    }

    /// Signs in on the server at `base` with `token` and waits for the overview.
    async fn sign_in(&self, base: &str, token: &str) {
        self.goto(&format!("{base}/")).await;
        self.wait_for("Sign in").await;
        self.replace_text("#token", token).await;
        self.click("form.signin button").await;
        self.wait_for("<h1>Overview</h1>").await;
    }

    /// Waits until the page holds `needle` (a page loads after a click's navigation).
    async fn wait_for(&self, needle: &str) {
        let start = Instant::now();
        loop {
            let source = self.source().await;
            if source.contains(needle) {
                return;
            }
            assert!(start.elapsed() < Duration::from_secs(45), "the page never showed {needle:?}: {source}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn screenshot(&self, name: &str) -> PathBuf {
        let data = self.command(reqwest::Method::GET, "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD.decode(data.as_str().unwrap()).unwrap();
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        let path = screenshots_dir().join(name);
        std::fs::write(&path, &png).unwrap();
        path
    }
}

/// Chromium and its driver; without them the test says SKIPPED (and fails in CI).
fn browser_binaries() -> Option<(PathBuf, PathBuf)> {
    match (binary("CHROMIUM", "/usr/bin/chromium"), binary("CHROMEDRIVER", "/usr/bin/chromedriver")) {
        (Some(chromium), Some(chromedriver)) => Some((chromium, chromedriver)),
        _ => {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("chromium and chromedriver are required in CI (apt-get install chromium chromium-driver)");
            }
            eprintln!(
                "SKIPPED: the browser test needs chromium and chromium-driver (apt-get install chromium chromium-driver)"
            );
            None
        }
    }
}

fn screenshots_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target").join("screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test]
async fn an_operator_signs_in_replays_an_edited_dead_letter_approves_and_acknowledges_in_chromium() {
    let Some((chromium, chromedriver)) = browser_binaries() else { return };
    let db = TestDb::new().await;
    // What must not move while the engine runs is written first: a held item, an item
    // scheduled for later with an open escalation.
    let held_item = held(&db).await;
    let sent_back = held(&db).await;
    let order = insert_order(&db.pool, "HIGH").await;
    let later = insert_item(&db.pool, order, "TICKET", r#"{"subject":"quarterly report"}"#).await;
    sqlx::query("UPDATE work_items SET run_at = now() + interval '2 hours' WHERE id = $1")
        .bind(later)
        .execute(&db.pool)
        .await
        .unwrap();
    let esc = escalation(&db, later).await;
    let engine = db.engine(&format!("{}[routes]\nTICKET = \"echo\"\nSTATUS_REPORT = \"echo\"\n", tokens_toml())).await;
    let base = format!("http://{}", engine.admin_addr().unwrap());
    for n in 0..24 {
        let order = insert_order(&db.pool, if n % 3 == 0 { "HIGH" } else { "MEDIUM" }).await;
        let kind = if n % 2 == 0 { "TICKET" } else { "STATUS_REPORT" };
        insert_item(&db.pool, order, kind, &format!("{{\"n\": {n}}}")).await;
    }
    let order = insert_order(&db.pool, "MEDIUM").await;
    let broken = insert_item(&db.pool, order, "TICKET", "{\"subject\": \"printer on fire\"").await;
    insert_item(&db.pool, order, "TICKET", "<script>alert('not JSON')</script>").await;
    insert_item(&db.pool, insert_order(&db.pool, "LOW").await, "INVOICE", "{\"total\": 12}").await;
    wait_until("three dead letters", Duration::from_secs(30), || async {
        count(&db.pool, "SELECT count(*) FROM dead_letters WHERE processed_at IS NULL").await == 3
    })
    .await;
    let letter: Uuid = sqlx::query_scalar("SELECT id FROM dead_letters WHERE work_item_id = $1")
        .bind(broken)
        .fetch_one(&db.pool)
        .await
        .unwrap();

    // The overview's charts draw what the engine recorded (every 2 s here).
    wait_until("the engine's activity recorded", Duration::from_secs(30), || async {
        count(&db.pool, "SELECT coalesce(sum(dead_lettered), 0)::bigint FROM orderly_activity").await == 3
    })
    .await;
    let browser = Browser::start(&chromium, &chromedriver).await;
    browser.sign_in(&base, OPERATE).await;
    let overview = browser.screenshot("overview.png").await;
    if std::env::var("ORDERLY_SCREENSHOTS_TO_DOCS").is_ok_and(|v| v == "1") {
        std::fs::copy(&overview, Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/screenshot-overview.png")).unwrap();
    }

    // The dead letters: find the broken one in its group, edit, replay.
    browser.click("a[href='/dead-letters']").await;
    browser.wait_for("CONTENT_INVALID_JSON").await;
    let source = browser.source().await;
    assert!(source.contains("&lt;script&gt;alert('not JSON')&lt;/script&gt;"), "a payload is text: {source}");
    assert!(!source.contains("<script>alert"), "{source}");
    browser.click(&format!("#letter-{letter} > summary")).await;
    browser.replace_text(&format!("#content-{letter}"), r#"{"subject": "printer on fire", "fixed": true}"#).await;
    browser.screenshot("dead-letters.png").await;
    browser.click(&format!("#letter-{letter} form.edit button")).await;
    browser.wait_for("Replayed dead letter").await;
    wait_for_status(&db.pool, broken, "COMPLETED").await;
    browser.goto(&format!("{base}/items/{broken}")).await;
    browser.wait_for("COMPLETED").await;
    assert!(browser.source().await.contains("fixed"), "the new content was used");
    browser.screenshot("item.png").await;

    // The approvals inbox.
    browser.click("a[href='/approvals']").await;
    browser.wait_for(&format!("held-{held_item}")).await;
    browser.screenshot("approvals.png").await;
    browser.click(&format!("#held-{held_item} form[action$='/approve'] button")).await;
    browser.wait_for("Approved item").await;
    assert_eq!(item_status(&db.pool, held_item).await, "COMPLETED");
    // Reject and revise: the comment goes to the agent with the held output; the revision
    // runs (echo) and completes.
    browser
        .replace_text(&format!("#held-{sent_back} form[action$='/revise'] input[name='reason']"), "Say sorry first.")
        .await;
    browser.click(&format!("#held-{sent_back} form[action$='/revise'] button")).await;
    browser.wait_for("Sent back for revision").await;
    wait_for_status(&db.pool, sent_back, "COMPLETED").await;
    let revised: serde_json::Value =
        sqlx::query_scalar("SELECT input FROM attempts WHERE work_item_id = $1 ORDER BY attempt_number DESC LIMIT 1")
            .bind(sent_back)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(revised["review"]["feedback"][0]["comment"], "Say sorry first.", "{revised}");

    // The escalations.
    browser.click("a[href='/escalations']").await;
    browser.wait_for(&format!("escalation-{esc}")).await;
    browser.click(&format!("#escalation-{esc} form[action$='/ack'] button")).await;
    browser.wait_for("Acknowledged escalation").await;
    browser.screenshot("escalations.png").await;
    let (status, by): (String, Option<String>) =
        sqlx::query_as("SELECT status::text, acknowledged_by FROM escalations WHERE id = $1")
            .bind(esc)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!((status.as_str(), by.as_deref()), ("ACKNOWLEDGED", Some("alice")));
    assert!(browser.current_url().await.ends_with("/escalations"), "POST, then redirect");
    assert_eq!(crate::api::audit_count(&db, "alice", "dead_letter.replay").await, 1);
    drop(browser);
    stop(engine).await;
}

/// The order page draws the order's dependency graph as SVG (no script): it renders with a
/// size, every item is a node that links to the item's page, and a click follows the link.
#[tokio::test]
async fn the_order_page_draws_its_dependency_graph_and_each_node_links_to_its_item_in_chromium() {
    let Some((chromium, chromedriver)) = browser_binaries() else { return };
    let db = TestDb::new().await;
    // A pipeline of five items: extract → (classify, translate) → summarise → review, the
    // first scheduled two hours ahead, so nothing moves while the page is read.
    let order = insert_order(&db.pool, "HIGH").await;
    let mut items = Vec::new();
    for step in ["extract", "classify", "translate", "summarise", "review"] {
        items.push(insert_item(&db.pool, order, "TICKET", &format!("{{\"step\": \"{step}\"}}")).await);
    }
    sqlx::query("UPDATE work_items SET run_at = now() + interval '2 hours' WHERE id = $1")
        .bind(items[0])
        .execute(&db.pool)
        .await
        .unwrap();
    for (item, on, kind) in [(1, 0, "BLOCKS"), (2, 0, "BLOCKS"), (3, 1, "BLOCKS"), (3, 2, "SOFT"), (4, 3, "BLOCKS")] {
        crate::dependencies::depend(&db.pool, items[item], items[on], kind).await.unwrap();
    }
    let engine = db.engine(&format!("{}[routes]\nTICKET = \"echo\"\n", tokens_toml())).await;
    let base = format!("http://{}", engine.admin_addr().unwrap());

    let browser = Browser::start(&chromium, &chromedriver).await;
    browser.sign_in(&base, READ).await;
    browser.goto(&format!("{base}/orders/{order}")).await;
    browser.wait_for("svg").await;
    let svg = browser.find("svg.graph").await;
    let rect = browser.command(reqwest::Method::GET, &format!("/element/{svg}/rect"), None).await;
    assert!(
        rect["width"].as_f64().unwrap_or(0.0) > 300.0 && rect["height"].as_f64().unwrap_or(0.0) > 50.0,
        "the graph renders with a size: {rect}"
    );
    let source = browser.source().await;
    for item in &items {
        assert!(source.contains(&format!("href=\"/items/{item}\"")), "every item is a node linking to it: {item}");
    }
    assert_eq!(source.matches("<path").count(), 5, "one line per edge");
    assert!(source.contains("stroke-dasharray=\"6 4\""), "the SOFT edge is dashed");
    assert!(source.contains("waiting"), "waiting items say so");
    let shot = browser.screenshot("order-graph.png").await;
    if std::env::var("ORDERLY_SCREENSHOTS_TO_DOCS").is_ok_and(|v| v == "1") {
        std::fs::copy(&shot, Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/screenshot-order-graph.png")).unwrap();
    }
    // A click on the last node opens its item, which says what it waits for.
    browser.click(&format!("svg.graph a[href='/items/{}']", items[4])).await;
    browser.wait_for("Depends on").await;
    assert!(browser.current_url().await.ends_with(&format!("/items/{}", items[4])));
    assert!(browser.source().await.contains("waiting for 1 dependency"), "the item page says why it waits");
    drop(browser);
    stop(engine).await;
}

/// The costs page draws the spend per day as SVG bars and lets an operator raise a budget;
/// the overview's in-flight list shows a running item's progress as a bar.
#[tokio::test]
async fn the_costs_chart_renders_a_budget_is_raised_and_progress_shows_in_flight_in_chromium() {
    let Some((chromium, chromedriver)) = browser_binaries() else { return };
    let db = TestDb::new().await;
    // Every call costs 2.50 USD and says it is 40% done, then takes its time.
    let agent = TestAgent::start(|envelope| {
        let callback = envelope["progress"].clone();
        tokio::spawn(async move {
            let _ = reqwest::Client::new()
                .post(callback["url"].as_str().unwrap_or_default())
                .bearer_auth(callback["token"].as_str().unwrap_or_default())
                .body(json!({"percent": 40, "message": "summarising chapter 4"}).to_string())
                .send()
                .await;
        });
        let slow = envelope["work_item"]["content"]["slow"].as_bool().unwrap_or(false);
        let (answer, _) = ok_json(json!({"ok": true, "usage": {"amount": "2.50", "currency": "USD"}}));
        (answer, if slow { Duration::from_secs(120) } else { Duration::ZERO })
    })
    .await;
    let order = insert_order(&db.pool, "MEDIUM").await;
    let tenant: uuid::Uuid = sqlx::query_scalar("SELECT tenant_id FROM work_orders WHERE id = $1")
        .bind(order)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    for _ in 0..3 {
        insert_item(&db.pool, order, "TICKET", "{}").await;
    }
    let config = format!("{}{}[routes]\nTICKET = \"paid\"\n", tokens_toml(), agent.config("paid", "180s"));
    let engine = db.engine(&config).await;
    wait_for_order(&db.pool, order, "COMPLETED").await;
    let scope = format!("tenant:{tenant}");
    let out = crate::cli::orderly(
        &db.url,
        &["budgets", "create", "team", "--scope", &scope, "--amount", "5", "--currency", "USD"],
    );
    assert!(out.status.success(), "{}", crate::cli::text(&out));
    let running = insert_item(&db.pool, insert_order(&db.pool, "HIGH").await, "TICKET", r#"{"slow": true}"#).await;
    let base = format!("http://{}", engine.admin_addr().unwrap());

    let browser = Browser::start(&chromium, &chromedriver).await;
    browser.sign_in(&base, OPERATE).await;
    // The running item's progress, as a bar in the in-flight list. The deadline is generous:
    // the item is claimed, its agent called and the progress posted back while Chromium starts
    // on the same two cores as the rest of the suite (15 s ran out once in CI).
    wait_until("the progress to be written", Duration::from_secs(60), || async {
        count(&db.pool, "SELECT count(*) FROM run_progress WHERE percent = 40").await == 1
    })
    .await;
    browser.goto(&format!("{base}/")).await;
    browser.wait_for("summarising chapter 4").await;
    let bar = browser.find("td.progress progress").await;
    let rect = browser.command(reqwest::Method::GET, &format!("/element/{bar}/rect"), None).await;
    assert!(rect["width"].as_f64().unwrap_or(0.0) > 20.0, "the progress bar renders: {rect}");
    assert!(browser.source().await.contains(&format!("/items/{running}")));
    browser.screenshot("overview-progress.png").await;

    // The spend per day as bars, and the budget: 7.50 of 5 USD, exhausted, raised here.
    browser.goto(&format!("{base}/costs")).await;
    browser.wait_for("Budgets").await;
    let chart = browser.find("div.charts svg").await;
    let rect = browser.command(reqwest::Method::GET, &format!("/element/{chart}/rect"), None).await;
    assert!(rect["width"].as_f64().unwrap_or(0.0) > 300.0 && rect["height"].as_f64().unwrap_or(0.0) > 50.0, "{rect}");
    let source = browser.source().await;
    assert!(source.contains("<rect") && source.contains("USD"), "bars per currency");
    assert!(source.contains("exhausted: wait") && source.contains("7.50"), "the exhausted budget is shown");
    browser.screenshot("costs.png").await;
    browser.replace_text("#budget-team input[name=amount]", "20").await;
    browser.click("#budget-team form button").await;
    browser.wait_for("Budget team: 7.50 of 20 USD spent").await;
    assert!(browser.current_url().await.ends_with("/costs"));
    assert_eq!(crate::api::audit_count(&db, "alice", "budget.amount").await, 1);
    drop(browser);
    // The slow item would run for two minutes: cancelled, its request is dropped.
    let out = crate::cli::orderly(&db.url, &["cancel", &running.to_string(), "--reason", "test over"]);
    assert!(out.status.success(), "{}", crate::cli::text(&out));
    stop(engine).await;
}
