//! Who may use the JSON API and the web page: bearer tokens from `[[admin.tokens]]`, kept
//! as SHA-256 hashes, and the web page's sign-in sessions.
//!
//! - A token is `orderly_` and 64 hex digits of the operating system's random generator
//!   ([`generate_token`], `orderly admin-token`). The configuration holds only its SHA-256;
//!   a presented token is hashed and compared with every configured hash in constant time
//!   (no early exit, no comparison that stops at the first differing byte), so neither the
//!   match nor its position leaks through timing.
//! - A web session is 32 random bytes in an `HttpOnly; SameSite=Strict` cookie. The server
//!   keeps only the SHA-256 of it, with the token's name and scope, a per-session form token
//!   (checked on every POST beside the Origin check) and a one-shot message for the next
//!   page. Sessions live in this process's memory: they end after [`SESSION_TTL`], on sign
//!   out, or when the process restarts, and each replica has its own.

use crate::config::{AdminToken, TokenScope};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The prefix of every token `orderly admin-token` makes (easy to spot in a leaked file).
pub const TOKEN_PREFIX: &str = "orderly_";

/// How long a web session lasts after sign-in.
pub const SESSION_TTL: Duration = Duration::from_secs(8 * 3600);

/// Most sessions kept at once per token; past it that token's oldest session ends. Per
/// token, so that signing in again and again with one token never ends another's sessions.
pub const MAX_SESSIONS_PER_TOKEN: usize = 100;

/// Failed authentications (sign-ins and bearer tokens) one client address may make within
/// [`FAILURE_WINDOW`]; past them its attempts are answered 429 until the window ends.
pub const FAILURES_ALLOWED: u32 = 10;
/// The window of [`FAILURES_ALLOWED`].
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Client addresses remembered at once (the oldest windows are forgotten first).
const MAX_FAILING_ADDRESSES: usize = 10_000;

/// The name of the session cookie.
pub const COOKIE: &str = "orderly_session";

/// Who is acting: the token's name (written to `audit_logs`) and what it may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub name: String,
    pub scope: TokenScope,
}

impl Identity {
    pub fn may_operate(&self) -> bool {
        self.scope == TokenScope::Operate
    }
}

/// SHA-256 of `text`, as 64 lower-case hex digits.
pub fn sha256_hex(text: &str) -> String {
    hex(&Sha256::digest(text.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<[u8; 32]> {
    let text = text.trim();
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, chunk) in text.as_bytes().chunks(2).enumerate() {
        let digits = std::str::from_utf8(chunk).ok()?;
        out[i] = u8::from_str_radix(digits, 16).ok()?;
    }
    Some(out)
}

/// `n` bytes from the operating system's random generator.
fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).expect("the operating system's random generator is available");
    bytes
}

/// A new token: [`TOKEN_PREFIX`] and 32 random bytes in hex.
pub fn generate_token() -> String {
    format!("{TOKEN_PREFIX}{}", hex(&random_bytes::<32>()))
}

/// Equality of two hashes in constant time.
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b) {
        diff |= x ^ y;
    }
    std::hint::black_box(diff) == 0
}

/// The configured tokens, hashes decoded once.
#[derive(Debug, Default)]
pub struct Tokens {
    entries: Vec<([u8; 32], Identity)>,
}

impl Tokens {
    /// From `admin.tokens` (validated at load: every hash is 64 hex digits).
    pub fn new(tokens: &[AdminToken]) -> Tokens {
        let entries = tokens
            .iter()
            .filter_map(|t| unhex(&t.sha256).map(|h| (h, Identity { name: t.name.clone(), scope: t.scope })))
            .collect();
        Tokens { entries }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The identity of a presented token, if it is configured. Every configured hash is
    /// compared, whatever matched.
    pub fn verify(&self, presented: &str) -> Option<Identity> {
        let hash: [u8; 32] = Sha256::digest(presented.trim().as_bytes()).into();
        let mut found = None;
        for (expected, identity) in &self.entries {
            if same(&hash, expected) {
                found = Some(identity);
            }
        }
        found.cloned()
    }
}

/// A one-shot message shown on the next page (after a POST and its redirect).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flash {
    pub ok: bool,
    pub text: String,
}

/// A signed-in browser.
#[derive(Debug, Clone)]
pub struct Session {
    pub identity: Identity,
    /// The form token every POST of this session must carry.
    pub csrf: String,
    pub expires: Instant,
    pub created: Instant,
    pub flash: Option<Flash>,
}

/// The web page's sessions, by the SHA-256 of their cookie.
#[derive(Debug, Default)]
pub struct Sessions {
    inner: Mutex<HashMap<[u8; 32], Session>>,
}

/// The key a cookie value is kept under.
pub fn session_key(cookie: &str) -> [u8; 32] {
    Sha256::digest(cookie.as_bytes()).into()
}

impl Sessions {
    /// Starts a session; returns the cookie value (never stored).
    pub fn create(&self, identity: Identity) -> String {
        let cookie = hex(&random_bytes::<32>());
        let now = Instant::now();
        let session = Session {
            identity,
            csrf: hex(&random_bytes::<16>()),
            expires: now + SESSION_TTL,
            created: now,
            flash: None,
        };
        let mut sessions = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        sessions.retain(|_, s| s.expires > now);
        loop {
            let of_token = sessions.iter().filter(|(_, s)| s.identity.name == session.identity.name);
            if of_token.clone().count() < MAX_SESSIONS_PER_TOKEN {
                break;
            }
            match of_token.min_by_key(|(_, s)| s.created).map(|(k, _)| *k) {
                Some(key) => sessions.remove(&key),
                None => break,
            };
        }
        sessions.insert(session_key(&cookie), session);
        cookie
    }

    /// The live session of a cookie value.
    pub fn get(&self, cookie: &str) -> Option<Session> {
        let key = session_key(cookie);
        let mut sessions = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        match sessions.get(&key) {
            Some(s) if s.expires > Instant::now() => Some(s.clone()),
            Some(_) => {
                sessions.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Takes the session's pending message.
    pub fn take_flash(&self, cookie: &str) -> Option<Flash> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).get_mut(&session_key(cookie)).and_then(|s| s.flash.take())
    }

    pub fn set_flash(&self, cookie: &str, flash: Flash) {
        if let Some(s) = self.inner.lock().unwrap_or_else(|p| p.into_inner()).get_mut(&session_key(cookie)) {
            s.flash = Some(flash);
        }
    }

    pub fn remove(&self, cookie: &str) {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).remove(&session_key(cookie));
    }

    pub fn len(&self) -> usize {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Compares a form token with the session's in constant time.
pub fn same_form_token(given: &str, expected: &str) -> bool {
    let a: [u8; 32] = Sha256::digest(given.as_bytes()).into();
    let b: [u8; 32] = Sha256::digest(expected.as_bytes()).into();
    same(&a, &b)
}

/// Failed authentications by client address (see [`FAILURES_ALLOWED`]).
#[derive(Debug, Default)]
pub struct FailedAuth {
    inner: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl FailedAuth {
    /// How long `client` must wait, when it has failed [`FAILURES_ALLOWED`] times in its
    /// current window.
    pub fn blocked(&self, client: IpAddr) -> Option<Duration> {
        let now = Instant::now();
        let failures = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        match failures.get(&client) {
            Some((start, n)) if *n >= FAILURES_ALLOWED && now.duration_since(*start) < FAILURE_WINDOW => {
                Some(FAILURE_WINDOW - now.duration_since(*start))
            }
            _ => None,
        }
    }

    /// Counts a failure of `client`; returns its failures in the current window.
    pub fn failed(&self, client: IpAddr) -> u32 {
        let now = Instant::now();
        let mut failures = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if failures.len() >= MAX_FAILING_ADDRESSES && !failures.contains_key(&client) {
            failures.retain(|_, (start, _)| now.duration_since(*start) < FAILURE_WINDOW);
            if failures.len() >= MAX_FAILING_ADDRESSES
                && let Some(oldest) = failures.iter().min_by_key(|(_, (start, _))| *start).map(|(ip, _)| *ip)
            {
                failures.remove(&oldest);
            }
        }
        let entry = failures.entry(client).or_insert((now, 0));
        if now.duration_since(entry.0) >= FAILURE_WINDOW {
            *entry = (now, 0);
        }
        entry.1 = entry.1.saturating_add(1);
        entry.1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_token_signing_in_again_and_again_never_ends_another_tokens_sessions() {
        let sessions = Sessions::default();
        let who = |name: &str| Identity { name: name.to_owned(), scope: TokenScope::Read };
        let alice = sessions.create(who("alice"));
        let first_mallory = sessions.create(who("mallory"));
        for _ in 0..(MAX_SESSIONS_PER_TOKEN * 3) {
            sessions.create(who("mallory"));
        }
        assert!(sessions.get(&alice).is_some(), "another token's session survives");
        assert!(sessions.get(&first_mallory).is_none(), "the flooding token's oldest session ended");
        let of_mallory = sessions.inner.lock().unwrap().values().filter(|s| s.identity.name == "mallory").count();
        assert_eq!(of_mallory, MAX_SESSIONS_PER_TOKEN);
    }

    #[test]
    fn an_address_that_fails_too_often_waits_out_its_window() {
        let failed = FailedAuth::default();
        let (bad, other): (IpAddr, IpAddr) = ("192.0.2.7".parse().unwrap(), "192.0.2.8".parse().unwrap());
        for n in 1..=FAILURES_ALLOWED {
            assert!(failed.blocked(bad).is_none(), "not yet after {}", n - 1);
            assert_eq!(failed.failed(bad), n);
        }
        let wait = failed.blocked(bad).expect("blocked after the allowed failures");
        assert!(wait <= FAILURE_WINDOW && wait > Duration::ZERO);
        assert!(failed.blocked(other).is_none(), "another address is not");
    }

    fn token(name: &str, secret: &str, scope: TokenScope) -> AdminToken {
        AdminToken { name: name.into(), sha256: sha256_hex(secret), scope }
    }

    #[test]
    fn tokens_are_found_by_their_hash_only() {
        let tokens = Tokens::new(&[
            token("ro", "read-secret", TokenScope::Read),
            token("ops", "op-secret", TokenScope::Operate),
        ]);
        assert_eq!(tokens.verify("op-secret"), Some(Identity { name: "ops".into(), scope: TokenScope::Operate }));
        assert_eq!(tokens.verify("read-secret").map(|i| i.scope), Some(TokenScope::Read));
        assert_eq!(tokens.verify("op-secre"), None);
        assert_eq!(tokens.verify(""), None);
        // The hash itself is not a token.
        assert_eq!(tokens.verify(&sha256_hex("op-secret")), None);
        assert!(Tokens::new(&[]).verify("anything").is_none());
    }

    #[test]
    fn generated_tokens_are_random_and_prefixed() {
        let (a, b) = (generate_token(), generate_token());
        assert_ne!(a, b);
        assert!(a.starts_with(TOKEN_PREFIX) && a.len() == TOKEN_PREFIX.len() + 64, "{a}");
        assert_eq!(sha256_hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn sessions_keep_only_a_hash_and_expire() {
        let sessions = Sessions::default();
        let identity = Identity { name: "ops".into(), scope: TokenScope::Operate };
        let cookie = sessions.create(identity.clone());
        assert_eq!(sessions.get(&cookie).unwrap().identity, identity);
        assert!(sessions.inner.lock().unwrap().keys().all(|k| *k == session_key(&cookie)));
        assert!(sessions.get("nope").is_none());
        sessions.set_flash(&cookie, Flash { ok: true, text: "done".into() });
        assert_eq!(sessions.take_flash(&cookie).map(|f| f.text), Some("done".into()));
        assert_eq!(sessions.take_flash(&cookie), None);
        sessions.inner.lock().unwrap().values_mut().for_each(|s| s.expires = Instant::now());
        assert!(sessions.get(&cookie).is_none(), "expired");
        let cookie = sessions.create(identity);
        sessions.remove(&cookie);
        assert!(sessions.get(&cookie).is_none(), "signed out");
    }
}
