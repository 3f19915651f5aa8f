//! `API` connectors: the notification's payload POSTed as JSON, signed per Standard Webhooks.
//!
//! Config: `{"url", "secret": "whsec_<base64>", "allow_private"?: false, "timeout"?: "10s"}`.
//! Headers: `webhook-id` (the notification's id, the same on every retry, so receivers
//! de-duplicate on it), `webhook-timestamp` (unix seconds) and `webhook-signature`
//! (`v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`, the key being the
//! base64-decoded part of the secret after `whsec_`). Redirects are not followed; loopback,
//! private and link-local addresses are refused unless `allow_private`.

use super::{Channels, Delivery, Secrets, http_url, parse_config, post, shown_url, timeout};
use crate::db::notifications::Claimed;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use serde::Deserialize;
use sha2::Sha256;
use std::time::Duration;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WebhookConfig {
    url: String,
    secret: String,
    #[serde(default)]
    allow_private: bool,
    timeout: Option<String>,
}

pub(super) async fn deliver(channels: &Channels, notification: &Claimed, cap: Duration) -> Delivery {
    let config: WebhookConfig = match parse_config(&notification.config) {
        Ok(config) => config,
        Err(invalid) => return invalid,
    };
    let mut secrets = Secrets::default();
    secrets.add(&config.secret);
    if let Ok(url) = reqwest::Url::parse(&config.url) {
        secrets.add_url(&url);
    }
    send(channels, notification, &config, cap).await.unwrap_or_else(|failed| failed).scrubbed(&secrets)
}

async fn send(
    channels: &Channels,
    notification: &Claimed,
    config: &WebhookConfig,
    cap: Duration,
) -> Result<Delivery, Delivery> {
    let url = http_url(&config.url)?;
    let key = signing_key(&config.secret)?;
    let timeout = timeout(config.timeout.as_deref(), cap)?;
    if !config.allow_private {
        crate::net::refuse_private_literal(&url)
            .map_err(|refused| Delivery::permanent(format!("POST {} refused: {refused}", shown_url(&url))))?;
    }
    let body = serde_json::to_string(&notification.payload)
        .map_err(|e| Delivery::permanent(format!("cannot encode the payload: {e}")))?;
    let id = notification.id.to_string();
    let timestamp = chrono::Utc::now().timestamp();
    let signature = sign(&key, &id, timestamp, &body);
    let request = channels
        .client(config.allow_private)
        .post(url.clone())
        .timeout(timeout)
        .header("content-type", "application/json")
        .header("webhook-id", &id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(body);
    Ok(post(request, &shown_url(&url), |_| false).await)
}

/// The key of a `whsec_<base64>` secret. The error does not show the secret.
fn signing_key(secret: &str) -> Result<Vec<u8>, Delivery> {
    let invalid = || Delivery::permanent("invalid connector config: secret must be \"whsec_\" followed by base64");
    let encoded = secret.strip_prefix("whsec_").ok_or_else(invalid)?;
    let key = STANDARD.decode(encoded).map_err(|_| invalid())?;
    if key.is_empty() {
        return Err(invalid());
    }
    Ok(key)
}

/// `v1,<base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}"))>`.
pub fn sign(key: &[u8], id: &str, timestamp: i64, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(format!("{id}.{timestamp}.{body}").as_bytes());
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks specification.
    #[test]
    fn signatures_match_the_standard_webhooks_example() {
        let key = signing_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let signature = sign(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, r#"{"test": 2432232314}"#);
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn malformed_secrets_are_refused_without_showing_them() {
        for secret in ["MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_not base64!SECRETCANARY", "whsec_"] {
            let Err(Delivery::Permanent { error }) = signing_key(secret) else { panic!("{secret} accepted") };
            assert!(error.contains("whsec_") && !error.contains("SECRETCANARY") && !error.contains("MfKQ"), "{error}");
        }
    }
}
