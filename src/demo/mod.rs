//! `orderly demo`: the product in one command. Creates a scratch database next to the
//! configured one, starts real HTTP agents on 127.0.0.1 (one that succeeds, a flaky one, one
//! that is sometimes too slow, one answering garbage, a judge of the flaky one's answers),
//! enqueues realistic work orders with plain INSERTs, runs the engine, shows progress and ends
//! with a summary.

pub mod sql;

use crate::agent::Registry;
use crate::cli::DemoArgs;
use crate::cmd::unreachable_hint;
use crate::config::Settings;
use crate::daemon::Engine;
use crate::db;
use anyhow::Context;
use axum::http::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;
use std::io::IsTerminal;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const DEMO_DB: &str = "orderly_demo";

pub async fn run(settings: Settings, args: DemoArgs) -> anyhow::Result<()> {
    let url = scratch_url(&settings.database.url)?;
    println!("orderly demo: scratch database {}", crate::net::redact_url(&url));
    db::drop_database(&url).await.map_err(|e| unreachable_hint(&url, e))?;
    db::ensure_database(&url).await.map_err(|e| unreachable_hint(&url, e))?;

    let agents = DemoAgents::start().await?;
    let mut demo_settings = Settings::from_toml_over_defaults(&agents.config())?;
    demo_settings.database.url = url.clone();
    demo_settings.database.max_connections = settings.database.max_connections;
    // The admin server on a free port of 127.0.0.1 (never the default port a daemon on this
    // host may hold): it takes the agents' progress callbacks; the demo reports through its
    // summary.
    demo_settings.admin.listen = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
    let engine = Engine::start(demo_settings, &Registry::builtin(), None).await?;
    let pool = engine.pool.clone();
    seed_catalog(&pool).await?;
    sql::seed_demo_sla(&pool, &format!("{}/oncall", agents.base), 600).await?;
    sql::seed_demo_schedule(&pool).await?;

    let started = Instant::now();
    let total = enqueue_orders(&pool, args.orders).await?;
    println!("enqueued {total} work items in {} work orders (INVOICE, TICKET, STATUS_REPORT)\n", args.orders);
    show_progress(&pool, total).await?;
    let elapsed = started.elapsed();
    // One more sweep resolves what finished, then the notifier tells the sink (a few seconds
    // at most).
    tokio::time::sleep(Duration::from_millis(600)).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while sql::pending_notifications(&pool).await? > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    engine.shutdown(CancellationToken::new()).await;

    print_summary(&pool, elapsed).await?;
    if args.keep {
        println!(
            "\nThe database is kept. Look around:\n  DATABASE_URL={url} orderly dead-letters list\n  DATABASE_URL={url} orderly status"
        );
    } else {
        pool.close().await;
        db::drop_database(&url).await?;
        println!("\n(scratch database dropped; run with --keep to inspect it with `orderly dead-letters list`)");
    }
    Ok(())
}

fn scratch_url(url: &str) -> anyhow::Result<String> {
    let mut parsed = reqwest::Url::parse(url).context("database.url is not a URL")?;
    parsed.set_path(&format!("/{DEMO_DB}"));
    Ok(parsed.to_string())
}

/// The demo's agents: real HTTP servers speaking the agent protocol.
struct DemoAgents {
    base: String,
}

impl DemoAgents {
    async fn start() -> anyhow::Result<DemoAgents> {
        use axum::routing::post;
        let app = axum::Router::new()
            .route("/extract", post(extract))
            .route("/triage", post(triage))
            .route("/report", post(report))
            .route("/legacy", post(legacy))
            .route("/judge", post(judge))
            .route("/oncall", post(oncall));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(DemoAgents { base })
    }

    fn config(&self) -> String {
        let agent = |name: &str, path: &str, timeout: &str| {
            format!(
                "[agents.{name}]\nkind = \"http\"\nurl = \"{}/{path}\"\ntimeout = \"{timeout}\"\nallow_private = true\n",
                self.base
            )
        };
        format!(
            "{}{}{}{}{}\
             [worker]\nconcurrency = 32\npoll_interval = \"250ms\"\n\
             [retry]\nmax_attempts = 3\nbackoff_base = \"100ms\"\nbackoff_max = \"1s\"\n\
             [routes]\nINVOICE = \"extractor\"\nTICKET = \"triage\"\nSTATUS_REPORT = \"reporter\"\n\
             [sla]\nsweep_interval = \"200ms\"\n[notifier]\npoll_interval = \"100ms\"\n\
             [schedules]\npoll_interval = \"200ms\"\n\
             [log]\nlevel = \"warn,sqlx=error\"\n\
             [prices.demo-small]\ninput_per_million = \"0.15\"\noutput_per_million = \"0.60\"\ncurrency = \"USD\"\n\
             [prices.demo-large]\ninput_per_million = \"2.50\"\noutput_per_million = \"10\"\ncurrency = \"USD\"\n",
            agent("extractor", "extract", "2s"),
            agent("triage", "triage", "2s"),
            agent("reporter", "report", "300ms"),
            agent("legacy", "legacy", "2s"),
            agent("judge", "judge", "2s"),
        )
    }
}

type Reply = (StatusCode, [(&'static str, String); 1], String);

fn reply(status: StatusCode, body: Value) -> Reply {
    (status, [("content-type", "application/json".into())], body.to_string())
}

async fn work(min_ms: u64, max_ms: u64) {
    tokio::time::sleep(Duration::from_millis(fastrand::u64(min_ms..=max_ms))).await;
}

/// Reports its progress through the envelope's callback (docs/agents.md), without waiting.
fn report_progress(envelope: &Value, percent: u32, message: &str) {
    let callback = envelope["progress"].clone();
    let (Some(url), Some(token)) = (callback["url"].as_str(), callback["token"].as_str()) else { return };
    let request = reqwest::Client::new()
        .post(url)
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(json!({"percent": percent, "message": message}).to_string());
    tokio::spawn(async move {
        let _ = request.send().await;
    });
}

/// Succeeds; one output in eight misses its total and fails the INVOICE schema. Reports its
/// progress half-way and the tokens of the model it "used" (priced by the demo's table).
async fn extract(axum::Json(envelope): axum::Json<Value>) -> Reply {
    report_progress(&envelope, 50, "reading the invoice lines");
    work(20, 120).await;
    let content = &envelope["work_item"]["content"];
    let mut output = json!({"vendor": content["vendor"], "currency": "EUR", "lines": content["lines"]});
    if fastrand::u8(0..8) != 0 {
        output["total"] = content["amount"].clone();
    }
    output["usage"] = json!({"model": "demo-small", "input_tokens": fastrand::u32(200..900), "output_tokens": fastrand::u32(50..200)});
    reply(StatusCode::OK, output)
}

/// Flaky: one call in four is a 503 or a 429.
async fn triage(axum::Json(envelope): axum::Json<Value>) -> Reply {
    work(5, 30).await;
    match fastrand::u8(0..8) {
        0 => reply(StatusCode::SERVICE_UNAVAILABLE, json!({"error": "model overloaded"})),
        1 => reply(StatusCode::TOO_MANY_REQUESTS, json!({"error": "rate limited"})),
        _ => {
            let subject = envelope["work_item"]["content"]["subject"].as_str().unwrap_or("").to_owned();
            let queue = if subject.contains("fire") { "facilities-urgent" } else { "helpdesk" };
            let usage = json!({"model": "demo-large", "input_tokens": fastrand::u32(300..1200), "output_tokens": 40});
            // A revision answers the judge's complaint (docs/review.md).
            let revision = envelope["review"]["revision"].as_i64().unwrap_or(0);
            reply(StatusCode::OK, json!({"queue": queue, "summary": subject, "revision": revision, "usage": usage}))
        }
    }
}

/// Sometimes too slow for its 300ms timeout.
async fn report(axum::Json(envelope): axum::Json<Value>) -> Reply {
    if fastrand::u8(0..5) == 0 {
        work(1_000, 1_500).await;
    } else {
        work(10, 60).await;
    }
    reply(StatusCode::OK, json!({"report": format!("week {} is on track", envelope["work_item"]["content"]["week"])}))
}

/// Judges a triage answer's tone: most first answers pass, one in five is too curt (sent
/// back for a revision, which passes), one in ten is borderline (a person decides).
async fn judge(axum::Json(envelope): axum::Json<Value>) -> Reply {
    work(5, 20).await;
    let usage = json!({"model": "demo-small", "input_tokens": fastrand::u32(150..400), "output_tokens": 20});
    let revised = envelope["evaluate"]["output"]["revision"].as_i64().unwrap_or(0) > 0;
    let (score, reason) = match fastrand::u8(0..10) {
        _ if revised => (0.92, "the revision is polite"),
        0 | 1 => (0.3, "too curt: greet the customer and say what happens next"),
        2 => (0.65, "polite, but the next step is vague"),
        _ => (0.9, "polite and clear"),
    };
    reply(StatusCode::OK, json!({"score": score, "reasons": [reason], "usage": usage}))
}

/// Messages the on-call sink received (the SLA's webhook connector points here).
static ONCALL_MESSAGES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// The on-call webhook: counts what the notifier delivers.
async fn oncall() -> StatusCode {
    ONCALL_MESSAGES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    StatusCode::NO_CONTENT
}

/// Answers garbage: an HTML error page with status 200.
async fn legacy() -> (StatusCode, String) {
    work(5, 20).await;
    (StatusCode::OK, "<html><body>Internal error</body></html>".into())
}

async fn seed_catalog(pool: &PgPool) -> anyhow::Result<()> {
    let invoice_schema = json!({
        "type": "object",
        "required": ["vendor", "total", "currency"],
        "properties": {"vendor": {"type": "string"}, "total": {"type": "number"}, "currency": {"type": "string"}}
    });
    sql::seed_demo_catalog(
        pool,
        invoice_schema,
        json!({"steps": {"INVOICE": {"agent": "extractor", "approval": "require_passing_evals"}}}),
        json!({"steps": {"STATUS_REPORT": {"agent": "legacy"}}}),
        json!({"steps": {"TICKET": {"agent": "triage",
            "evaluators": [{"name": "tone", "agent": "judge", "criteria": "Polite, and says what happens next."}],
            "approval": {"combine": "min", "pass_at": 0.8, "fail_below": 0.5},
            "revise": {"max": 1, "then": "human"}}}}),
    )
    .await?;
    Ok(())
}

async fn enqueue_orders(pool: &PgPool, orders: usize) -> anyhow::Result<i64> {
    let vendors = ["ACME GmbH", "Globex", "Initech", "Umbrella plc", "Hooli"];
    let subjects =
        ["printer on fire", "VPN drops every hour", "new laptop for Dana", "password reset", "coffee machine leaking"];
    let mut total = 0;
    for n in 0..orders {
        let (workflow, priority) = match n % 10 {
            0 => ("legacy-reports", "LOW"),
            1 | 2 => ("default", "URGENT"),
            3..=6 => ("invoice-review", "HIGH"),
            _ => ("default", "MEDIUM"),
        };
        let items: Vec<(&str, String)> = (0..fastrand::usize(1..=5))
            .map(|i| match (n + i) % 3 {
                0 => (
                    "INVOICE",
                    json!({"vendor": vendors[fastrand::usize(..vendors.len())], "amount": fastrand::u32(50..5000),
                           "lines": fastrand::u8(1..9)})
                    .to_string(),
                ),
                1 => ("TICKET", json!({"subject": subjects[fastrand::usize(..subjects.len())]}).to_string()),
                _ => ("STATUS_REPORT", json!({"week": fastrand::u8(1..53), "team": "platform"}).to_string()),
            })
            .collect();
        total += items.len() as i64;
        sql::insert_order_sql(pool, workflow, priority, &items).await?;
    }
    Ok(total)
}

async fn show_progress(pool: &PgPool, total: i64) -> anyhow::Result<()> {
    let terminal = std::io::stderr().is_terminal();
    let bar = terminal.then(|| {
        let bar = indicatif::ProgressBar::new(total as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} finished  {msg}",
            )
            .expect("valid template"),
        );
        bar
    });
    let mut last_line = Instant::now() - Duration::from_secs(2);
    loop {
        let p = sql::demo_progress(pool).await?;
        let finished = p.completed + p.failed + p.awaiting;
        let msg = format!(
            "completed {} · dead-lettered {} · retrying {} · running {}",
            p.completed, p.failed, p.retrying, p.running
        );
        match &bar {
            Some(bar) => {
                bar.set_position(finished as u64);
                bar.set_message(msg);
            }
            None if last_line.elapsed() >= Duration::from_secs(1) => {
                println!("{finished}/{total} finished: {msg}");
                last_line = Instant::now();
            }
            None => {}
        }
        if p.queued_now + p.retrying + p.running == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(if terminal { 100 } else { 250 })).await;
    }
    if let Some(bar) = bar {
        bar.finish();
    }
    Ok(())
}

async fn print_summary(pool: &PgPool, elapsed: Duration) -> anyhow::Result<()> {
    let s = sql::demo_summary(pool).await?;
    let rate = s.items as f64 / elapsed.as_secs_f64();
    println!(
        "\norderly demo summary ({} items, {} work orders, {:.1}s, {:.0} items/s)",
        s.items,
        s.orders,
        elapsed.as_secs_f64(),
        rate
    );
    println!("  ┌─────────────────────────┬────────┐");
    let row = |label: &str, value: String| println!("  │ {label:<23} │ {value:>6} │");
    row("completed", s.completed.to_string());
    row("awaiting approval", s.awaiting.to_string());
    row("retried (needed >1 try)", s.retried.to_string());
    row("dead-lettered", s.dead_lettered.to_string());
    row("attempts recorded", s.attempts.to_string());
    row("eval results passed", s.evals_passed.to_string());
    row("eval results failed", s.evals_failed.to_string());
    row("approvals APPROVED", s.approved.to_string());
    row("approvals REJECTED", s.rejected.to_string());
    row("orders COMPLETED", s.orders_completed.to_string());
    row("orders FAILED", s.orders_failed.to_string());
    println!("  └─────────────────────────┴────────┘");
    if !s.dead_letter_codes.is_empty() {
        println!("  dead letters by error code:");
        for (code, reason, n) in &s.dead_letter_codes {
            println!("    {code:<22} {:<18} {n}", reason.as_str());
        }
    }
    println!("  attempts by outcome:");
    for (status, code, n) in &s.attempt_outcomes {
        println!("    {:<10} {:<22} {n}", status.as_str(), code.as_deref().unwrap_or(""));
    }
    let (escalations, notifications) = sql::demo_sla(pool).await?;
    println!("  SLA \"status reports finish quickly\" (within 600 ms):");
    for (status, n) in &escalations {
        println!("    escalations {status:<16} {n}");
    }
    for (what, n) in &notifications {
        println!("    notifications {what:<14} {n}");
    }
    println!(
        "    messages received by the on-call webhook: {}",
        ONCALL_MESSAGES.load(std::sync::atomic::Ordering::Relaxed)
    );
    println!("  spend per agent (orderly costs --by agent):");
    for (agent, amount, currency, attempts) in sql::demo_spend(pool).await? {
        println!("    {agent:<12} {amount:>12} {currency}  over {attempts} attempts");
    }
    println!("    progress reports kept: {} items", sql::demo_progress_reports(pool).await?);
    let (passed, revised, to_person) = sql::demo_review(pool).await?;
    println!("  tickets judged by the \"tone\" judge (docs/review.md):");
    println!("    passed at once {passed}, passed after a revision {revised}, sent to a person {to_person}");
    let (orders, completed) = sql::demo_schedule(pool).await?;
    println!("  schedule \"demo heartbeat\" (cron */2 * * * * *, every 2 s in UTC):");
    println!(
        "    orders made {orders}, completed {completed} (one per slot; `orderly schedules show \"demo heartbeat\"`)"
    );
    Ok(())
}
