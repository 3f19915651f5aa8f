//! The http agent's address checks end to end: every spelling of a private address is
//! refused permanently before anything is sent, and a secret in the URL stays out of the
//! recorded errors.

use crate::common::*;
use serde_json::json;

#[tokio::test]
async fn private_address_spellings_are_refused_before_any_request() {
    let db = TestDb::new().await;
    let agent = TestAgent::start(|_| ok_json(json!({}))).await;
    let port = agent.url.trim_end_matches('/').rsplit(':').next().unwrap().to_owned();
    let hosts = ["localhost", "127.1", "2130706433", "[::1]", "[::ffff:127.0.0.1]", "0.0.0.0"];
    let mut config = String::from("[retry]\nmax_attempts = 3\n");
    let mut routes = String::from("[routes]\n");
    for (n, host) in hosts.iter().enumerate() {
        // One item type per spelling, routed to its own agent.
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("ALTER TYPE work_item_type ADD VALUE 'SPELLING{n}'")))
            .execute(&db.pool)
            .await
            .unwrap();
        config.push_str(&format!(
            "[agents.a{n}]\nkind = \"http\"\nurl = \"http://{host}:{port}/\"\nallow_redirects = true\n"
        ));
        routes.push_str(&format!("SPELLING{n} = \"a{n}\"\n"));
    }
    config.push_str(&routes);
    let order = insert_order(&db.pool, "MEDIUM").await;
    let mut items = Vec::new();
    for (n, host) in hosts.iter().enumerate() {
        items.push((host, insert_item(&db.pool, order, &format!("SPELLING{n}"), "{}").await));
    }
    let engine = db.engine(&config).await;
    wait_quiet(&db.pool).await;
    stop(engine).await;
    for (host, item) in items {
        assert_eq!(item_status(&db.pool, item).await, "FAILED", "{host}");
        assert_eq!(
            dead_letter(&db.pool, item).await,
            Some(("AGENT_ADDRESS_REFUSED".into(), "PERMANENT".into(), 1)),
            "{host}"
        );
        assert_eq!(attempts(&db.pool, item).await.len(), 1, "{host}: refused once, not retried");
    }
    assert!(agent.received.lock().unwrap().is_empty(), "the server received no request");
}

#[tokio::test]
async fn secrets_in_the_url_stay_out_of_recorded_errors() {
    let db = TestDb::new().await;
    // Port 1 on loopback: nothing listens, the connection is refused.
    let config = "[agents.down]\nkind = \"http\"\nurl = \"http://user:SECRETPASSWORD@127.0.0.1:1/hook?token=SECRETCANARY\"\n\
                  timeout = \"2s\"\nallow_private = true\n[retry]\nmax_attempts = 1\n[routes]\nTICKET = \"down\"\n";
    let order = insert_order(&db.pool, "MEDIUM").await;
    let item = insert_item(&db.pool, order, "TICKET", "{}").await;
    let engine = db.engine(config).await;
    wait_for_status(&db.pool, item, "FAILED").await;
    stop(engine).await;
    assert_eq!(dead_letter(&db.pool, item).await.unwrap().0, "AGENT_CONNECTION");
    let errors: Vec<String> = sqlx::query_scalar(
        "SELECT error FROM attempts WHERE work_item_id = $1 AND error IS NOT NULL
         UNION ALL SELECT last_error FROM work_items WHERE id = $1 AND last_error IS NOT NULL
         UNION ALL SELECT error FROM dead_letters WHERE work_item_id = $1",
    )
    .bind(item)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert!(errors.len() >= 2, "errors were recorded: {errors:?}");
    for error in &errors {
        assert!(!error.contains("SECRETCANARY") && !error.contains("SECRETPASSWORD"), "{error}");
        assert!(error.contains("token=<redacted>"), "the redacted URL is shown: {error}");
    }
}

/// A non-private address of this machine (the source address towards a public one; no
/// packet is sent), if it has one.
fn public_local_address() -> Option<std::net::IpAddr> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("192.0.2.200:9").ok()?;
    let ip = socket.local_addr().ok()?.ip();
    let private = match ip {
        std::net::IpAddr::V4(v4) => v4.is_loopback() || v4.is_private() || v4.is_link_local() || v4.octets()[0] == 0,
        std::net::IpAddr::V6(_) => true,
    };
    (!private).then_some(ip)
}

/// Redirect hops are checked too: a public first hop that redirects (307, so still a POST)
/// to a loopback literal or to a name of loopback is refused permanently, and the loopback
/// server sees nothing; a redirect to another public URL is still followed.
#[tokio::test]
async fn redirect_hops_to_private_addresses_are_refused() {
    let Some(ip) = public_local_address() else {
        eprintln!("skipped: this machine has no non-private address to serve the first hop from");
        return;
    };
    let db = TestDb::new().await;
    let internal = TestAgent::start(|_| ok_json(json!({"internal": true}))).await;
    let port = internal.url.trim_end_matches('/').rsplit(':').next().unwrap().to_owned();
    let redirect = |location: String| {
        move || {
            let location = location.clone();
            async move { (axum::http::StatusCode::TEMPORARY_REDIRECT, [("location", location)]) }
        }
    };
    let app = axum::Router::new()
        .route("/to-literal", axum::routing::post(redirect(format!("http://127.0.0.1:{port}/"))))
        .route("/to-name", axum::routing::post(redirect(format!("http://localhost:{port}/"))))
        .route("/to-public", axum::routing::post(redirect("/final".to_owned())))
        .route("/final", axum::routing::post(|| async { axum::Json(json!({"followed": true})) }));
    let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
    let public = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let mut config = String::from("[retry]\nmax_attempts = 3\n");
    for (name, path) in [("literal", "to-literal"), ("name", "to-name"), ("public", "to-public")] {
        config.push_str(&format!(
            "[agents.{name}]\nkind = \"http\"\nurl = \"{public}/{path}\"\ntimeout = \"5s\"\nallow_redirects = true\n"
        ));
    }
    config.push_str("[routes]\nTICKET = \"literal\"\nINVOICE = \"name\"\nSTATUS_REPORT = \"public\"\n");
    let order = insert_order(&db.pool, "MEDIUM").await;
    let literal = insert_item(&db.pool, order, "TICKET", "{}").await;
    let name = insert_item(&db.pool, order, "INVOICE", "{}").await;
    let followed = insert_item(&db.pool, order, "STATUS_REPORT", "{}").await;
    let engine = db.engine(&config).await;
    wait_quiet(&db.pool).await;
    stop(engine).await;
    for (what, item) in [("literal", literal), ("name", name)] {
        assert_eq!(
            dead_letter(&db.pool, item).await,
            Some(("AGENT_ADDRESS_REFUSED".into(), "PERMANENT".into(), 1)),
            "redirect to a loopback {what}"
        );
    }
    assert_eq!(item_status(&db.pool, followed).await, "COMPLETED");
    assert!(internal.received.lock().unwrap().is_empty(), "the loopback server received no request");
}
