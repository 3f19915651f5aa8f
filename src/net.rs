//! Outbound HTTP, shared by the `http` agent kind and the notification channels: one
//! implementation of the private-address refusal and of the pieces every caller of a
//! configured URL needs.
//!
//! The private-address check applies to the addresses actually connected to: names go
//! through [`PublicOnlyResolver`], installed as the client's resolver by [`client_builder`],
//! which refuses a name with any private address (no separate lookup that a DNS-rebinding
//! answer could pass); IP-literal hosts, which reqwest connects to without a resolver, are
//! checked by [`refuse_private_literal`] before the first request and, when redirects are
//! followed, on every hop. A refusal is found in a failed request's error chain with
//! [`address_refused`]. Through a proxy from the environment (`HTTP_PROXY`, …) the resolver
//! sees the proxy's name; the target's name is then resolved by the proxy and only literals
//! are checked here.
//!
//! URLs may carry secrets (a token in the query or path, a password in the userinfo):
//! [`error_chain`] strips reqwest's URL from errors, so callers show only a redacted form
//! (`redact_agent_url`).

use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::header::HeaderMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use url::Host;

/// Redirects a client follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Redirects {
    /// A 3xx answer is returned as it is (the caller classifies it).
    Refuse,
    /// Followed up to this many hops; unless private addresses are allowed, a hop to a
    /// private IP literal is refused like the first request.
    Follow(usize),
}

/// A client builder for configured URLs. Unless `allow_private`, names resolve through
/// [`PublicOnlyResolver`] and every redirect hop to an IP literal is checked by
/// [`refuse_private_literal`]; the caller checks the first URL itself (literals do not go
/// through a resolver). Connecting is bounded by `connect_timeout` (at most 10 s).
pub fn client_builder(connect_timeout: Duration, allow_private: bool, redirects: Redirects) -> reqwest::ClientBuilder {
    let redirects = match (redirects, allow_private) {
        (Redirects::Refuse, _) => reqwest::redirect::Policy::none(),
        (Redirects::Follow(hops), true) => reqwest::redirect::Policy::limited(hops),
        (Redirects::Follow(hops), false) => {
            reqwest::redirect::Policy::custom(move |attempt| match refuse_private_literal(attempt.url()) {
                Err(refused) => attempt.error(refused),
                Ok(()) => reqwest::redirect::Policy::limited(hops).redirect(attempt),
            })
        }
    };
    let builder =
        reqwest::Client::builder().redirect(redirects).connect_timeout(connect_timeout.min(Duration::from_secs(10)));
    if allow_private { builder } else { builder.dns_resolver(Arc::new(PublicOnlyResolver)) }
}

/// A connection refused because the address is private (loopback, RFC 1918, link-local, …).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{host} is private address {ip}; set allow_private = true to allow it")]
pub struct AddressRefused {
    pub host: String,
    pub ip: IpAddr,
}

/// Refuses a URL whose host is a private IP literal. Names are left to
/// [`PublicOnlyResolver`]; `url` has already normalised `127.1` or `2130706433` to an IPv4
/// host for http(s), so only the parsed host is looked at.
pub fn refuse_private_literal(url: &Url) -> Result<(), AddressRefused> {
    let ip = match url.host() {
        Some(Host::Ipv4(v4)) => IpAddr::V4(v4),
        Some(Host::Ipv6(v6)) => IpAddr::V6(v6),
        Some(Host::Domain(_)) | None => return Ok(()),
    };
    if is_private(&ip) {
        return Err(AddressRefused { host: url.host_str().unwrap_or_default().to_owned(), ip });
    }
    Ok(())
}

/// Resolves names with the system resolver (through tokio) and refuses a name that has any
/// private address, so the check holds for the address reqwest then connects to.
pub struct PublicOnlyResolver;

impl Resolve for PublicOnlyResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addresses: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if let Some(address) = addresses.iter().find(|a| is_private(&a.ip())) {
                return Err(Box::new(AddressRefused { host, ip: address.ip() }) as _);
            }
            let addresses: Addrs = Box::new(addresses.into_iter());
            Ok(addresses)
        })
    }
}

/// Loopback, unspecified, RFC 1918, shared (100.64/10), "this network" (0/8), link-local and
/// unique-local addresses, IPv4-mapped ones included.
pub fn is_private(ip: &IpAddr) -> bool {
    match ip {
        // 0.0.0.0/8 ("this network") reaches the local host on Linux.
        IpAddr::V4(v4) => {
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.octets()[0] == 0
                || v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_private(&IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            v6.is_loopback() || v6.is_unspecified() || (first & 0xfe00) == 0xfc00 || (first & 0xffc0) == 0xfe80
        }
    }
}

/// The refusal behind a failed request (from the resolver or the redirect policy), if any.
pub fn address_refused(e: &reqwest::Error) -> Option<&AddressRefused> {
    find_source::<AddressRefused>(e)
}

/// The first error of type `T` in `e`'s source chain, `e` included.
pub fn find_source<'a, T: std::error::Error + 'static>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a T> {
    let mut current = Some(e);
    while let Some(error) = current {
        if let Some(found) = error.downcast_ref::<T>() {
            return Some(found);
        }
        current = error.source();
    }
    None
}

/// `Retry-After` as seconds or an HTTP date (a date in the past is no hint).
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let text = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = text.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let when = chrono::DateTime::parse_from_rfc2822(text).ok()?;
    (when.with_timezone(&chrono::Utc) - chrono::Utc::now()).to_std().ok()
}

/// The error and its sources, without the request URL (which may carry a secret).
pub fn error_chain(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// What secrets are shown as, in `check-config`, `Debug` and logs.
pub const REDACTED: &str = "<redacted>";

/// Hides the secrets of a URL, for logs and `check-config`: the password and every query
/// value (`https://u:p@host/x?token=abc` → `https://u:<redacted>@host/x?token=<redacted>`)
/// and the fragment. The user name stays.
pub fn redact_url(url: &str) -> String {
    let Ok(mut parsed) = reqwest::Url::parse(url) else {
        return "<unparseable url>".to_owned();
    };
    if parsed.password().is_some() {
        let _ = parsed.set_password(Some(REDACTED));
    }
    if let Some(query) = parsed.query() {
        let redacted: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((name, _)) => format!("{name}={REDACTED}"),
                None if pair.is_empty() => String::new(),
                None => REDACTED.to_owned(),
            })
            .collect();
        parsed.set_query(Some(&redacted.join("&")));
    }
    if parsed.fragment().is_some() {
        parsed.set_fragment(Some(REDACTED));
    }
    // The URL serializer percent-encodes `<` and `>`; the marker reads better as written.
    parsed.to_string().replace("%3Credacted%3E", REDACTED)
}

/// [`redact_url`] for the URLs agents call: their user name is often a token itself (a
/// database URL's is a role name, and shown).
pub fn redact_agent_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut parsed) if !parsed.username().is_empty() => {
            let _ = parsed.set_username(REDACTED);
            redact_url(parsed.as_str())
        }
        _ => redact_url(url),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_addresses_are_recognised() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.0.1",
            "172.16.0.1",
            "169.254.1.1",
            "::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "100.64.0.1",
            "0.0.0.0",
            "0.1.2.3",
            "::",
            "::ffff:10.0.0.1",
        ] {
            assert!(is_private(&ip.parse().unwrap()), "{ip}");
        }
        for ip in ["8.8.8.8", "2001:4860::8888"] {
            assert!(!is_private(&ip.parse().unwrap()), "{ip}");
        }
    }

    fn url(text: &str) -> Url {
        Url::parse(text).unwrap()
    }

    #[test]
    fn private_literal_hosts_are_refused_in_every_spelling() {
        for text in [
            "http://127.0.0.1:8080/",
            "http://127.1:8080/",
            "http://2130706433:8080/",
            "http://0x7f.1/",
            "http://0.0.0.0/",
            "http://[::1]/",
            "http://[::ffff:127.0.0.1]/",
            "https://10.0.0.5/hook",
            "http://169.254.169.254/latest/meta-data/",
        ] {
            let refused = refuse_private_literal(&url(text)).expect_err(text);
            assert!(refused.to_string().contains("allow_private"), "{text}: {refused}");
        }
        // Names are left to the resolver; public literals pass.
        for text in ["http://localhost/", "https://example.com/", "http://8.8.8.8/", "http://[2001:4860::8888]/"] {
            assert!(refuse_private_literal(&url(text)).is_ok(), "{text}");
        }
    }

    #[test]
    fn retry_after_takes_seconds_or_an_http_date() {
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert(reqwest::header::RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        let later = (chrono::Utc::now() + chrono::Duration::seconds(120)).to_rfc2822();
        headers.insert(reqwest::header::RETRY_AFTER, later.parse().unwrap());
        let hint = retry_after(&headers).unwrap();
        assert!(hint > Duration::from_secs(100) && hint <= Duration::from_secs(120), "{hint:?}");
        headers.insert(reqwest::header::RETRY_AFTER, "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap());
        assert_eq!(retry_after(&headers), None, "a date in the past is no hint");
        headers.insert(reqwest::header::RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after(&headers), None);
    }

    #[tokio::test]
    async fn names_resolving_to_private_addresses_are_refused_in_the_error_chain() {
        let client = client_builder(Duration::from_secs(5), false, Redirects::Refuse).build().unwrap();
        let e = client.post("http://localhost:1/?token=SECRETCANARY").send().await.unwrap_err();
        let refused = address_refused(&e).expect("the resolver refused localhost");
        assert!(refused.ip.is_loopback(), "{refused}");
        assert!(!error_chain(e).contains("SECRETCANARY"));
    }
}
