//! `EMAIL` connectors: a plain-text message over SMTP (lettre, rustls only).
//!
//! Config: `{"host", "port"?, "tls"?: "starttls" | "tls" | "none", "username"?, "password"?,
//! "from", "to": [..], "accept_invalid_certs"?: false, "timeout"?: "10s"}`. `tls` defaults
//! to `starttls` (port 587; `tls` is implicit TLS on 465, `none` plain SMTP on 25);
//! certificates are checked against the webpki roots unless `accept_invalid_certs` (for
//! tests). A password is refused with `tls = "none"`: it would cross the network in clear.
//! The Message-ID is derived from the notification's id, the same on every retry; the body
//! links to the escalation's page when `admin.public_url` is set. SMTP 4xx
//! and connection, TLS and timeout errors are retried; SMTP 5xx and the client's own
//! refusals (no common authentication mechanism, say) are permanent.

use super::{Delivery, Secrets, parse_config, render, timeout};
use crate::db::notifications::Claimed;
use lettre::message::Mailbox;
use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde::Deserialize;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
enum TlsMode {
    #[default]
    Starttls,
    Tls,
    None,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EmailConfig {
    host: String,
    port: Option<u16>,
    #[serde(default)]
    tls: TlsMode,
    username: Option<String>,
    password: Option<String>,
    from: String,
    to: Vec<String>,
    #[serde(default)]
    accept_invalid_certs: bool,
    timeout: Option<String>,
}

pub(super) async fn deliver(notification: &Claimed, link: Option<String>, cap: Duration) -> Delivery {
    let config: EmailConfig = match parse_config(&notification.config) {
        Ok(config) => config,
        Err(invalid) => return invalid,
    };
    let mut secrets = Secrets::default();
    if let Some(password) = &config.password {
        secrets.add(password);
    }
    send(notification, &config, link, cap).await.unwrap_or_else(|failed| failed).scrubbed(&secrets)
}

async fn send(
    notification: &Claimed,
    config: &EmailConfig,
    link: Option<String>,
    cap: Duration,
) -> Result<Delivery, Delivery> {
    let invalid = |what: String| Delivery::permanent(format!("invalid connector config: {what}"));
    let timeout = timeout(config.timeout.as_deref(), cap)?;
    if config.host.trim().is_empty() {
        return Err(invalid("host must not be empty".into()));
    }
    if config.password.is_some() && config.tls == TlsMode::None {
        return Err(invalid("a password needs tls = \"starttls\" or \"tls\"; it is not sent in clear".into()));
    }
    let from: Mailbox = config.from.parse().map_err(|e| invalid(format!("from: {e}")))?;
    if config.to.is_empty() {
        return Err(invalid("to must name at least one address".into()));
    }
    let rendered = render(&notification.kind, &notification.payload).with_link(link);
    let mut builder = Message::builder()
        .from(from)
        .subject(rendered.subject.clone())
        .message_id(Some(format!("<{}@orderly.notifications>", notification.id)))
        .header(ContentType::TEXT_PLAIN);
    for to in &config.to {
        let to: Mailbox = to.parse().map_err(|e| invalid(format!("to: {e}")))?;
        builder = builder.to(to);
    }
    let message = builder.body(rendered.text()).map_err(|e| invalid(format!("cannot build the message: {e}")))?;

    let tls_parameters = || {
        TlsParameters::builder(config.host.clone())
            .dangerous_accept_invalid_certs(config.accept_invalid_certs)
            .build()
            .map_err(|e| invalid(format!("TLS for {}: {e}", config.host)))
    };
    let (tls, default_port) = match config.tls {
        TlsMode::Starttls => (Tls::Required(tls_parameters()?), 587),
        TlsMode::Tls => (Tls::Wrapper(tls_parameters()?), 465),
        TlsMode::None => (Tls::None, 25),
    };
    let port = config.port.unwrap_or(default_port);
    let mut transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(config.host.clone())
        .port(port)
        .tls(tls)
        .timeout(Some(timeout));
    if let Some(password) = &config.password {
        transport =
            transport.credentials(Credentials::new(config.username.clone().unwrap_or_default(), password.clone()));
    }
    let transport = transport.build();
    let server = format!("SMTP {}:{port}", config.host);
    let sent = tokio::time::timeout(timeout, transport.send(message)).await;
    Ok(match sent {
        Ok(Ok(_)) => Delivery::Delivered,
        Err(_) => Delivery::retry(format!("{server} timed out after {}", humantime::format_duration(timeout))),
        Ok(Err(e)) if e.is_permanent() || e.is_client() => {
            Delivery::permanent(format!("{server} refused: {}", chain(&e)))
        }
        Ok(Err(e)) => Delivery::retry(format!("{server} failed: {}", chain(&e))),
    })
}

/// The error and its sources.
fn chain(e: &lettre::transport::smtp::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let next = s.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    text
}
