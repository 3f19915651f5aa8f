//! Settings: `config/default.toml` (compiled in), then the `--config` file, then the systemd
//! credential `database-url`, then `DATABASE_URL`, then `ORDERLY__SECTION__KEY` variables.
//! Validated once at start-up; everything downstream receives typed settings, never raw
//! strings.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

/// The documented defaults, shipped inside the binary so it runs from anywhere.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

use crate::model::MAX_INTERVAL;
/// Upper bound of `pruner.retention`: 100 years of 365.25 days, as humantime counts them.
pub const MAX_RETENTION: Duration = Duration::from_secs(100 * 31_557_600);
/// Upper bound of `limits.*` sizes: PostgreSQL stores no field larger than 1 GiB.
pub const MAX_SIZE_BYTES: usize = 1 << 30;
/// Upper bound of the batch sizes and of `worker.concurrency`.
pub const MAX_BATCH: usize = 100_000;
/// Upper bound of `retry.max_attempts` and `worker.max_rescues`.
pub const MAX_ATTEMPTS: i32 = 1_000_000;
/// Upper bound of `database.max_connections`.
pub const MAX_CONNECTIONS: u32 = 10_000;
/// Upper bound of `worker.completers` (each holds a connection while it writes).
pub const MAX_COMPLETERS: usize = 1_000;
/// Upper bound of `admin.max_connections`.
pub const MAX_ADMIN_CONNECTIONS: usize = 100_000;
/// Upper bound of `notifier.concurrency` (deliveries in flight at once in one process).
pub const MAX_NOTIFIER_CONCURRENCY: usize = 1_000;

use crate::agent::AgentSettings;
use crate::model::ConfigError;
use crate::net::redact_url;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub database: DatabaseSettings,
    pub worker: WorkerSettings,
    pub retry: RetrySettings,
    pub limits: LimitSettings,
    pub approval: ApprovalSettings,
    pub pruner: PrunerSettings,
    pub sla: SlaSettings,
    pub schedules: ScheduleSettings,
    pub notifier: NotifierSettings,
    pub admin: AdminSettings,
    #[serde(default)]
    pub agents: BTreeMap<String, AgentSettings>,
    /// Item type → agent name; keys are matched exactly as the database spells the type.
    #[serde(default)]
    pub routes: BTreeMap<String, String>,
    /// Model → prices, for the cost entries of agents that report tokens only
    /// (`policy::costs`, docs/costs.md).
    #[serde(default)]
    pub prices: BTreeMap<String, Price>,
    /// Tenant id → its cap on items running at once (`worker::limits`, docs/limits.md).
    #[serde(default)]
    pub tenants: BTreeMap<uuid::Uuid, TenantSettings>,
    pub log: LogSettings,
}

/// `[tenants."UUID"]`: the most of a tenant's items running at once across every replica.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<u32>,
}

/// `[prices.MODEL]`: what a million tokens of a model cost. Decimals as text (`"2.50"`), so
/// that no float ever touches money.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub input_per_million: String,
    pub output_per_million: String,
    /// ISO 4217, three letters.
    pub currency: String,
}

/// `Debug` shows the URL redacted (see [`redact_url`]).
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    pub url: String,
    pub max_connections: u32,
    pub migrate_on_start: bool,
    #[serde(with = "humantime_serde")]
    pub acquire_timeout: Duration,
    /// PostgreSQL ends a session of this process that sits inside a transaction for longer
    /// than this (`idle_in_transaction_session_timeout`): a frozen process must not hold row
    /// locks that every other replica waits for.
    #[serde(with = "humantime_serde")]
    pub idle_in_transaction_timeout: Duration,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSettings {
    pub concurrency: usize,
    /// Evaluation runs (agent evaluators judging a recorded output) at once in this process,
    /// beside `concurrency`: a slow judge does not hold an agent's slot (docs/review.md).
    pub evaluator_concurrency: usize,
    /// Claims take turns among tenants once one or two tenants fill a claim
    /// (docs/limits.md, "Tenants take turns"); false: always oldest first.
    pub tenant_turns: bool,
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    pub claim_batch: usize,
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    pub completer_batch: usize,
    /// Completer tasks writing results concurrently, each on its own connection.
    pub completers: usize,
    /// Times an item may be taken back from a vanished worker before it is dead-lettered
    /// as a crash loop.
    pub max_rescues: i32,
    /// How often the leader looks for expired leases.
    #[serde(with = "humantime_serde")]
    pub rescue_interval: Duration,
    /// The leader's lease on the database clock: a leader that dies, freezes or loses the
    /// database hands over within about this long (plus a fifth of it).
    #[serde(with = "humantime_serde")]
    pub leader_lease: Duration,
    /// A loop busy with one step for longer than this (the dispatcher in one claim round, a
    /// completer retrying one batch) makes the engine unhealthy (`worker::liveness`).
    #[serde(with = "humantime_serde")]
    pub stall_timeout: Duration,
}

/// `[schedules]`: the leader's scheduler (see `maintenance::scheduler`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSettings {
    /// Longest the scheduler sleeps before it looks again (a schedule added or edited by SQL
    /// is seen within it); it wakes earlier for the earliest `next_run`.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Most schedules handled in one transaction.
    pub batch: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySettings {
    pub max_attempts: i32,
    #[serde(with = "humantime_serde")]
    pub backoff_base: Duration,
    #[serde(with = "humantime_serde")]
    pub backoff_max: Duration,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSettings {
    pub max_content_bytes: usize,
    pub max_output_bytes: usize,
    /// The dependencies' results in one envelope, together (docs/dependencies.md).
    pub max_dependency_bytes: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyKind {
    /// Approve every output (the default; says so in `approver_id`).
    ApproveAll,
    /// Reject when any evaluator failed (the attempt fails and is retried).
    RequirePassingEvals,
    /// Hold for a human (AWAITING_APPROVAL) when any evaluator failed.
    EscalateOnFailure,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalSettings {
    pub policy: PolicyKind,
}

/// The leader's pruner of finished work orders (docs/operations.md, "Pruning").
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrunerSettings {
    /// How long finished orders are kept after they finished; `None` ("off") keeps them.
    #[serde(with = "off_or_duration")]
    pub retention: Option<Duration>,
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Most orders deleted per transaction.
    pub batch: i64,
}

/// The leader's SLA sweeper (docs/operations.md, SLA rules).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlaSettings {
    /// How often the leader fires due levels and resolves stopped clocks.
    #[serde(with = "humantime_serde")]
    pub sweep_interval: Duration,
    /// Most escalations one rule fires per transaction (a backlog takes several).
    pub batch: i64,
}

/// The delivery of the SLA notifications outbox (`sla::notifier`), on every replica.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifierSettings {
    /// How long an idle notifier waits before it looks for due notifications again.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Most notifications claimed per statement.
    pub batch: i64,
    /// How long a claimed notification is this process's; a notifier that dies leaves it to
    /// another one after this long. A delivery never runs past its lease.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// Deliveries (lost ones included) before a notification is FAILED.
    pub max_attempts: i32,
    #[serde(with = "humantime_serde")]
    pub backoff_base: Duration,
    #[serde(with = "humantime_serde")]
    pub backoff_max: Duration,
    /// Deliveries in flight at once in this process.
    pub concurrency: usize,
    /// `admin.public_url`, copied here when the settings load: where messages link to. Not a
    /// key of `[notifier]`.
    #[serde(skip)]
    pub public_url: Option<reqwest::Url>,
}

/// The admin HTTP server of `orderly run`: probes and metrics (src/admin).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSettings {
    /// Where the server listens (`IP:port`); `None` ("off") runs no server. Port 0 takes a
    /// free port, which is logged (`admin server listening`).
    #[serde(with = "off_or_address")]
    pub listen: Option<std::net::SocketAddr>,
    /// How often the leader refreshes the gauges that need the database (queue depth, oldest
    /// queued item, open dead letters, items awaiting approval).
    #[serde(with = "humantime_serde")]
    pub gauge_interval: Duration,
    /// Most connections open at once; past it the longest-idle one is closed for the new one
    /// (or the new one is refused when every connection is in a request).
    pub max_connections: usize,
    /// A connection that has not sent a whole request head for this long (a new one, or one
    /// kept alive between requests) is closed.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Longest a request may take, its body included; past it the answer is 408.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Host names (without port) the server answers to besides IP addresses and `localhost`:
    /// a request naming another host is refused (DNS rebinding).
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// Bearer tokens of the JSON API (`/api/v1`) and the web page's sign-in, each stored as
    /// the SHA-256 of the token (`orderly admin-token NAME` makes one). None: the API and the
    /// page refuse everyone.
    #[serde(default)]
    pub tokens: Vec<AdminToken>,
    /// Where people reach the web interface (`https://orderly.example.com`, behind whatever
    /// proxy): notifications link to the escalation's page under it. None: no links.
    #[serde(default, with = "public_url", skip_serializing_if = "Option::is_none")]
    pub public_url: Option<reqwest::Url>,
}

/// One `[[admin.tokens]]` entry: who (`name`, written to `audit_logs` for every action taken
/// with it), the token's SHA-256 as 64 hex digits (never the token itself) and its scope.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AdminToken {
    pub name: String,
    pub sha256: String,
    pub scope: TokenScope,
}

/// What a token may do: `read` every GET; `operate` also every action (replay, discard,
/// approve, reject, acknowledge, resolve, cancel).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenScope {
    Read,
    Operate,
}

impl TokenScope {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenScope::Read => "read",
            TokenScope::Operate => "operate",
        }
    }
}

/// Longest `admin.tokens[].name` (it is written to `audit_logs.user_id`, a VARCHAR(255)).
pub const MAX_TOKEN_NAME: usize = 64;

/// Checks `admin.tokens`: names short, printable and unique; hashes 64 hex digits and unique
/// (two names for one token would make the audit log lie about who acted).
pub fn validate_tokens(tokens: &[AdminToken]) -> Result<(), ConfigError> {
    let mut names = std::collections::BTreeSet::new();
    let mut hashes = std::collections::BTreeSet::new();
    for (i, token) in tokens.iter().enumerate() {
        let key = |field: &str| format!("admin.tokens[{i}].{field}");
        let name_ok = !token.name.is_empty()
            && token.name.len() <= MAX_TOKEN_NAME
            && token.name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'));
        if !name_ok {
            return Err(ConfigError::invalid(
                key("name"),
                format!(
                    "`{}` must be 1 to {MAX_TOKEN_NAME} characters of letters, digits, `-`, `_`, `.` or `@`",
                    token.name
                ),
            ));
        }
        if !names.insert(token.name.as_str()) {
            return Err(ConfigError::invalid(key("name"), format!("`{}` is used by two tokens", token.name)));
        }
        let hash = token.sha256.trim().to_ascii_lowercase();
        if hash.len() != 64 || !hash.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(ConfigError::invalid(
                key("sha256"),
                "must be the token's SHA-256 as 64 hex digits (`orderly admin-token NAME` prints it), \
                 not the token itself",
            ));
        }
        if !hashes.insert(hash) {
            return Err(ConfigError::invalid(
                key("sha256"),
                format!("is also the hash of another token than `{}`", token.name),
            ));
        }
    }
    Ok(())
}

/// `"off"` or a socket address such as `"127.0.0.1:9187"`.
mod off_or_address {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::net::SocketAddr;

    pub fn serialize<S: Serializer>(value: &Option<SocketAddr>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            None => s.serialize_str("off"),
            Some(addr) => s.serialize_str(&addr.to_string()),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
        let text = String::deserialize(d)?;
        if text.trim() == "off" {
            return Ok(None);
        }
        text.trim().parse().map(Some).map_err(|_| {
            serde::de::Error::custom(format!(
                "`{text}` is not an address: expected IP:port such as \"127.0.0.1:9187\" or \"[::1]:9187\" \
                 (port 0 takes a free port), or \"off\""
            ))
        })
    }
}

/// An absolute `http://` or `https://` URL without credentials, query or fragment (it is put
/// in messages), or nothing; shown without a trailing `/`.
mod public_url {
    use reqwest::Url;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Option<Url>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            None => s.serialize_none(),
            Some(url) => s.serialize_str(url.as_str().trim_end_matches('/')),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Url>, D::Error> {
        let text = String::deserialize(d)?;
        parse(&text).map(Some).map_err(|why| {
            // Credentials and query values are not repeated in the error.
            let shown = if Url::parse(text.trim()).is_ok() { crate::net::redact_agent_url(text.trim()) } else { text };
            serde::de::Error::custom(format!(
                "`{shown}` {why}: expected the web interface's address, such as \"https://orderly.example.com\""
            ))
        })
    }

    fn parse(text: &str) -> Result<Url, &'static str> {
        let url = Url::parse(text.trim()).map_err(|_| "is not an absolute URL")?;
        if !matches!(url.scheme(), "http" | "https") || !url.has_host() {
            return Err("is not an http:// or https:// URL");
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err("must not carry credentials (they would be in every message)");
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err("must not have a query or a fragment");
        }
        Ok(url)
    }
}

/// `"off"` or a duration such as `"30d"`.
mod off_or_duration {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(value: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            None => s.serialize_str("off"),
            Some(d) => s.serialize_str(&humantime::format_duration(*d).to_string()),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let text = String::deserialize(d)?;
        if text.trim() == "off" {
            return Ok(None);
        }
        humantime::parse_duration(&text)
            .map(Some)
            .map_err(|e| serde::de::Error::custom(format!("`{text}`: {e} (a duration such as \"30d\", or \"off\")")))
    }
}

impl fmt::Debug for DatabaseSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let DatabaseSettings { url, max_connections, migrate_on_start, acquire_timeout, idle_in_transaction_timeout } =
            self;
        f.debug_struct("DatabaseSettings")
            .field("url", &redact_url(url))
            .field("max_connections", max_connections)
            .field("migrate_on_start", migrate_on_start)
            .field("acquire_timeout", acquire_timeout)
            .field("idle_in_transaction_timeout", idle_in_transaction_timeout)
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// JSON when stderr is not a terminal (systemd's journal, a container runtime, a file),
    /// pretty on a terminal.
    Auto,
    Pretty,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    pub format: LogFormat,
    pub level: String,
}

impl Settings {
    /// The agents' own view of the limits (`agent::AgentLimits`).
    pub fn agent_limits(&self) -> crate::agent::AgentLimits {
        crate::agent::AgentLimits { max_output_bytes: self.limits.max_output_bytes }
    }
}

impl DatabaseSettings {
    /// The pool this configuration describes, in the db layer's terms.
    pub fn pool(&self) -> crate::db::PoolOptions<'_> {
        crate::db::PoolOptions {
            url: &self.url,
            max_connections: self.max_connections,
            acquire_timeout: self.acquire_timeout,
            idle_in_transaction_timeout: self.idle_in_transaction_timeout,
        }
    }
}

mod load;

#[cfg(test)]
mod tests;
