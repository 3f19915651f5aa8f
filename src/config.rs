//! Settings: `config/default.toml` (compiled in), then the `--config` file, then the systemd
//! credential `database-url`, then `DATABASE_URL`, then `ORDERLY__SECTION__KEY` variables.
//! Validated once at start-up; everything downstream receives typed settings, never raw
//! strings.

use figment::Figment;
use figment::providers::{Env, Format, Toml};
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
    pub log: LogSettings,
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

impl Settings {
    /// Loads the layered configuration. `file` is the operator's `--config`.
    pub fn load(file: Option<&Path>) -> Result<Settings, ConfigError> {
        let mut figment = Figment::from(Toml::string(DEFAULT_TOML));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::Load(format!("file {} does not exist", path.display())));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        if let Some(url) = credential("database-url")? {
            figment = figment.merge(figment::providers::Serialized::default("database.url", url));
        }
        figment = figment
            .merge(Env::raw().only(&["DATABASE_URL"]).map(|_| "database.url".into()))
            // `lowercase(false)` after `map`: figment's `map` turns lower-casing back on.
            .merge(Env::prefixed("ORDERLY__").map(|key| env_key_path(key.as_str()).into()).lowercase(false));
        Self::from_figment(figment)
    }

    /// Parses settings from TOML text layered over the defaults (tests, demo, bench).
    pub fn from_toml_over_defaults(toml: &str) -> Result<Settings, ConfigError> {
        Self::from_toml_layers(&[toml])
    }

    /// Parses settings from several TOML texts, each layered over the previous ones.
    pub fn from_toml_layers(layers: &[&str]) -> Result<Settings, ConfigError> {
        let figment =
            layers.iter().fold(Figment::from(Toml::string(DEFAULT_TOML)), |f, layer| f.merge(Toml::string(layer)));
        Self::from_figment(figment)
    }

    fn from_figment(figment: Figment) -> Result<Settings, ConfigError> {
        let settings: Settings = figment.extract().map_err(|e| {
            let messages: Vec<String> = e.into_iter().map(describe_figment_error).collect();
            ConfigError::Load(messages.join("; "))
        })?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks every value against its documented range (config/default.toml), so that what
    /// `check-config` accepts can run.
    fn validate(&self) -> Result<(), ConfigError> {
        let database = &self.database;
        if database.url.trim().is_empty() {
            return Err(ConfigError::invalid("database.url", "must not be empty"));
        }
        match reqwest::Url::parse(&database.url) {
            Ok(url) if matches!(url.scheme(), "postgres" | "postgresql") => {}
            Ok(_) => return Err(ConfigError::invalid("database.url", "must be a postgres:// or postgresql:// URL")),
            Err(e) => return Err(ConfigError::invalid("database.url", format!("is not a URL: {e}"))),
        }
        count_in("database.max_connections", database.max_connections, 2, MAX_CONNECTIONS)?;
        duration_in("database.acquire_timeout", database.acquire_timeout, None, MAX_INTERVAL)?;
        if !database.idle_in_transaction_timeout.is_zero() {
            duration_in(
                "database.idle_in_transaction_timeout",
                database.idle_in_transaction_timeout,
                Some(Duration::from_secs(1)),
                MAX_INTERVAL,
            )?;
        }

        let worker = &self.worker;
        count_in("worker.concurrency", worker.concurrency, 1, MAX_BATCH)?;
        duration_in("worker.poll_interval", worker.poll_interval, None, MAX_INTERVAL)?;
        count_in("worker.claim_batch", worker.claim_batch, 1, MAX_BATCH)?;
        duration_in("worker.lease", worker.lease, Some(Duration::from_secs(1)), MAX_INTERVAL)?;
        duration_in("worker.shutdown_grace", worker.shutdown_grace, Some(Duration::ZERO), MAX_INTERVAL)?;
        count_in("worker.completer_batch", worker.completer_batch, 1, MAX_BATCH)?;
        count_in("worker.completers", worker.completers, 1, MAX_COMPLETERS)?;
        count_in("worker.max_rescues", worker.max_rescues, 1, MAX_ATTEMPTS)?;
        duration_in("worker.rescue_interval", worker.rescue_interval, None, MAX_INTERVAL)?;
        duration_in(
            "worker.leader_lease",
            worker.leader_lease,
            Some(Duration::from_secs(1)),
            Duration::from_secs(600),
        )?;
        duration_in("worker.stall_timeout", worker.stall_timeout, Some(Duration::from_secs(1)), MAX_INTERVAL)?;

        let retry = &self.retry;
        count_in("retry.max_attempts", retry.max_attempts, 1, MAX_ATTEMPTS)?;
        duration_in("retry.backoff_base", retry.backoff_base, None, MAX_INTERVAL)?;
        duration_in("retry.backoff_max", retry.backoff_max, Some(retry.backoff_base), MAX_INTERVAL)?;

        count_in("limits.max_content_bytes", self.limits.max_content_bytes, 1, MAX_SIZE_BYTES)?;
        count_in("limits.max_output_bytes", self.limits.max_output_bytes, 1, MAX_SIZE_BYTES)?;

        for (item_type, agent) in &self.routes {
            if !self.agents.contains_key(agent) {
                return Err(ConfigError::invalid(
                    format!("routes.{item_type}"),
                    format!("names agent `{agent}`, which is not configured under [agents]"),
                ));
            }
        }

        if let Some(retention) = self.pruner.retention {
            duration_in("pruner.retention", retention, None, MAX_RETENTION)?;
        }
        duration_in("pruner.interval", self.pruner.interval, None, MAX_INTERVAL)?;
        count_in("pruner.batch", self.pruner.batch, 1, MAX_BATCH as i64)?;
        duration_in("sla.sweep_interval", self.sla.sweep_interval, None, MAX_INTERVAL)?;
        duration_in("schedules.poll_interval", self.schedules.poll_interval, None, MAX_INTERVAL)?;
        count_in("schedules.batch", self.schedules.batch, 1, MAX_BATCH as i64)?;
        count_in("sla.batch", self.sla.batch, 1, MAX_BATCH as i64)?;
        duration_in("admin.gauge_interval", self.admin.gauge_interval, Some(Duration::from_secs(1)), MAX_INTERVAL)?;
        count_in("admin.max_connections", self.admin.max_connections, 1, MAX_ADMIN_CONNECTIONS)?;
        duration_in(
            "admin.idle_timeout",
            self.admin.idle_timeout,
            Some(Duration::from_secs(1)),
            Duration::from_secs(3600),
        )?;
        duration_in(
            "admin.request_timeout",
            self.admin.request_timeout,
            Some(Duration::from_secs(1)),
            Duration::from_secs(3600),
        )?;
        validate_tokens(&self.admin.tokens)?;

        let notifier = &self.notifier;
        duration_in("notifier.poll_interval", notifier.poll_interval, None, MAX_INTERVAL)?;
        count_in("notifier.batch", notifier.batch, 1, MAX_BATCH as i64)?;
        duration_in("notifier.lease", notifier.lease, Some(Duration::from_secs(1)), MAX_INTERVAL)?;
        count_in("notifier.max_attempts", notifier.max_attempts, 1, MAX_ATTEMPTS)?;
        duration_in("notifier.backoff_base", notifier.backoff_base, None, MAX_INTERVAL)?;
        duration_in("notifier.backoff_max", notifier.backoff_max, Some(notifier.backoff_base), MAX_INTERVAL)?;
        count_in("notifier.concurrency", notifier.concurrency, 1, MAX_NOTIFIER_CONCURRENCY)?;

        validate_log_level(&self.log.level)
    }

    /// The effective configuration as TOML with every secret replaced by `<redacted>`: the
    /// credentials and query values of the database URL, and the secrets of every agent's
    /// options (see [`AgentSettings::redacted_options`]).
    pub fn redacted_toml(&self) -> String {
        let mut copy = self.clone();
        copy.database.url = redact_url(&copy.database.url);
        for agent in copy.agents.values_mut() {
            agent.options = agent.redacted_options();
        }
        toml::to_string_pretty(&copy).unwrap_or_else(|e| format!("# cannot render: {e}"))
    }
}

/// A systemd credential (`LoadCredential=NAME:FILE`): the trimmed text of
/// `$CREDENTIALS_DIRECTORY/NAME`, `None` when there is no such directory or file.
fn credential(name: &str) -> Result<Option<String>, ConfigError> {
    let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") else {
        return Ok(None);
    };
    let path = Path::new(&dir).join(name);
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(Some(text.trim().to_owned())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ConfigError::Load(format!("cannot read the credential {}: {e}", path.display()))),
    }
}

/// Maps `ORDERLY__SECTION__KEY` (prefix already stripped) to a key path: section and key
/// names are lower-cased, `__` separates them; under `routes` the rest is one key kept as
/// written, since item types are matched exactly (`ORDERLY__ROUTES__Ticket_v2` →
/// `routes.Ticket_v2`).
fn env_key_path(key: &str) -> String {
    match key.split_once("__") {
        Some((section, route)) if section.eq_ignore_ascii_case("routes") => format!("routes.{route}"),
        _ => key.split("__").map(str::to_ascii_lowercase).collect::<Vec<_>>().join("."),
    }
}

/// `min <= value <= max`, else an error naming the key and the range.
fn count_in<T: PartialOrd + fmt::Display>(key: &str, value: T, min: T, max: T) -> Result<(), ConfigError> {
    if value < min || value > max {
        return Err(ConfigError::invalid(key, format!("must be between {min} and {max}, not {value}")));
    }
    Ok(())
}

/// `min <= value <= max` (`None`: greater than zero), else an error naming the key and range.
fn duration_in(key: &str, value: Duration, min: Option<Duration>, max: Duration) -> Result<(), ConfigError> {
    let show = |d: Duration| humantime::format_duration(d).to_string();
    let low_ok = match min {
        None => !value.is_zero(),
        Some(min) => value >= min,
    };
    if low_ok && value <= max {
        return Ok(());
    }
    let low = match min {
        None => "greater than 0".to_owned(),
        Some(min) => format!("at least {}", show(min)),
    };
    Err(ConfigError::invalid(key, format!("must be {low} and at most {}, not {}", show(max), show(value))))
}

const LOG_LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];

/// Each comma-separated directive must be a level or `target=level` (also
/// `target[span]=level` and `[span]=level`). `EnvFilter` alone would take a bare word such as
/// `verbose` for a target name and silence everything else.
fn validate_log_level(filter: &str) -> Result<(), ConfigError> {
    const KEY: &str = "log.level";
    let is_level = |word: &str| LOG_LEVELS.iter().any(|level| level.eq_ignore_ascii_case(word.trim()));
    let expected = "each comma-separated directive must be a level (trace, debug, info, warn, error, off) \
                    or target=level";
    if filter.trim().is_empty() {
        return Err(ConfigError::invalid(KEY, format!("must not be empty: {expected}")));
    }
    for directive in filter.split(',').map(str::trim) {
        let valid = is_level(directive)
            || directive.rsplit_once('=').is_some_and(|(selector, level)| is_level(level) && valid_selector(selector));
        if !valid {
            return Err(ConfigError::invalid(KEY, format!("`{directive}` is not valid: {expected}")));
        }
    }
    if let Err(e) = filter.parse::<tracing_subscriber::EnvFilter>() {
        return Err(ConfigError::invalid(KEY, e.to_string()));
    }
    Ok(())
}

/// `target`, `target[span...]` or `[span...]`; a target is a Rust path (`orderly::worker`).
fn valid_selector(selector: &str) -> bool {
    let selector = selector.trim();
    let (target, span) = match selector.find('[') {
        Some(at) => (&selector[..at], Some(&selector[at..])),
        None => (selector, None),
    };
    let target_ok = target.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | ':' | '-' | '.'));
    let span_ok = span.is_none_or(|s| s.len() > 2 && s.ends_with(']'));
    target_ok && span_ok && !(target.is_empty() && span.is_none())
}

fn describe_figment_error(e: figment::error::Error) -> String {
    let key = e.path.join(".");
    let kind = e.kind.to_string();
    if key.is_empty() { kind } else { format!("`{key}`: {kind}") }
}

pub use crate::agent::parse_duration;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::REDACTED;

    #[test]
    fn defaults_load_and_validate() {
        let s = Settings::from_toml_over_defaults("").unwrap();
        assert_eq!(s.worker.poll_interval, Duration::from_secs(1));
        assert!(s.database.migrate_on_start);
        assert_eq!(s.approval.policy, PolicyKind::ApproveAll);
        let n = &s.notifier;
        assert_eq!(
            (n.poll_interval, n.batch, n.lease, n.max_attempts, n.backoff_base, n.backoff_max, n.concurrency),
            (
                Duration::from_secs(1),
                32,
                Duration::from_secs(60),
                12,
                Duration::from_secs(1),
                Duration::from_secs(600),
                8
            )
        );
    }

    #[test]
    fn pruner_retention_is_off_by_default_and_takes_a_duration() {
        let s = Settings::from_toml_over_defaults("").unwrap();
        assert_eq!(s.pruner.retention, None);
        let s = Settings::from_toml_over_defaults("[pruner]\nretention = \"30d\"\n").unwrap();
        assert_eq!(s.pruner.retention, Some(Duration::from_secs(30 * 86_400)));
        assert!(s.redacted_toml().contains("retention = \"30days\""), "{}", s.redacted_toml());
        let err = Settings::from_toml_over_defaults("[pruner]\nretention = \"never\"\n").unwrap_err();
        assert!(err.to_string().contains("pruner.retention"), "{err}");
        let err = Settings::from_toml_over_defaults("[pruner]\nretention = \"0s\"\n").unwrap_err();
        assert!(err.to_string().contains("pruner.retention"), "{err}");
    }

    #[test]
    fn unknown_keys_are_errors_that_name_the_key() {
        let err = Settings::from_toml_over_defaults("[worker]\nconcurency = 3\n").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("concurency"), "{text}");
        assert!(text.contains("worker"), "{text}");
    }

    #[test]
    fn invalid_values_name_the_key() {
        let err = Settings::from_toml_over_defaults("[worker]\npoll_interval = \"soon\"\n").unwrap_err();
        assert!(err.to_string().contains("worker.poll_interval"), "{err}");
        let err = Settings::from_toml_over_defaults("[worker]\nconcurrency = 0\n").unwrap_err();
        assert!(err.to_string().contains("worker.concurrency"), "{err}");
        let err = Settings::from_toml_over_defaults("[routes]\nTICKET = \"nobody\"\n").unwrap_err();
        assert!(err.to_string().contains("routes.TICKET"), "{err}");
    }

    #[test]
    fn redaction_hides_passwords_and_headers() {
        let s = Settings::from_toml_over_defaults(
            "[database]\nurl = \"postgres://u:hunter2@db/x\"\n[agents.a]\nkind = \"http\"\nurl = \"http://a/?token=t0ken\"\nheaders = { Authorization = \"Bearer s3cret\" }\n",
        )
        .unwrap();
        let shown = s.redacted_toml();
        assert!(!shown.contains("hunter2") && !shown.contains("s3cret") && !shown.contains("t0ken"), "{shown}");
        assert!(shown.contains("<redacted>"));
    }

    #[test]
    fn every_duration_and_size_is_bounded_and_the_error_names_key_and_range() {
        let err = Settings::from_toml_over_defaults("[worker]\nlease = \"100000000000y\"\n").unwrap_err().to_string();
        assert!(err.contains("worker.lease") && err.contains("at least 1s and at most 1day"), "{err}");
        let over = [
            ("database", "acquire_timeout = \"2d\"", "database.acquire_timeout"),
            ("database", "max_connections = 10001", "database.max_connections"),
            ("worker", "lease = \"500ms\"", "worker.lease"),
            ("worker", "shutdown_grace = \"25h\"", "worker.shutdown_grace"),
            ("worker", "poll_interval = \"2d\"", "worker.poll_interval"),
            ("worker", "rescue_interval = \"0s\"", "worker.rescue_interval"),
            ("worker", "concurrency = 100001", "worker.concurrency"),
            ("worker", "claim_batch = 100001", "worker.claim_batch"),
            ("worker", "completer_batch = 0", "worker.completer_batch"),
            ("worker", "completers = 1001", "worker.completers"),
            ("worker", "max_rescues = 1000001", "worker.max_rescues"),
            ("worker", "stall_timeout = \"500ms\"", "worker.stall_timeout"),
            ("retry", "max_attempts = 1000001", "retry.max_attempts"),
            ("retry", "backoff_base = \"2d\"\nbackoff_max = \"3d\"", "retry.backoff_base"),
            ("retry", "backoff_max = \"2d\"", "retry.backoff_max"),
            ("retry", "backoff_base = \"10s\"\nbackoff_max = \"5s\"", "retry.backoff_max"),
            ("limits", "max_content_bytes = 1073741825", "limits.max_content_bytes"),
            ("limits", "max_output_bytes = 1073741825", "limits.max_output_bytes"),
            ("limits", "max_output_bytes = 0", "limits.max_output_bytes"),
            ("pruner", "retention = \"101y\"", "pruner.retention"),
            ("pruner", "interval = \"2d\"", "pruner.interval"),
            ("pruner", "batch = 100001", "pruner.batch"),
            ("notifier", "poll_interval = \"0s\"", "notifier.poll_interval"),
            ("notifier", "poll_interval = \"2d\"", "notifier.poll_interval"),
            ("notifier", "batch = 0", "notifier.batch"),
            ("notifier", "batch = 100001", "notifier.batch"),
            ("notifier", "lease = \"500ms\"", "notifier.lease"),
            ("notifier", "lease = \"25h\"", "notifier.lease"),
            ("notifier", "max_attempts = 0", "notifier.max_attempts"),
            ("notifier", "max_attempts = 1000001", "notifier.max_attempts"),
            ("notifier", "backoff_base = \"0s\"", "notifier.backoff_base"),
            ("notifier", "backoff_base = \"1m\"\nbackoff_max = \"30s\"", "notifier.backoff_max"),
            ("notifier", "backoff_max = \"2d\"", "notifier.backoff_max"),
            ("notifier", "concurrency = 0", "notifier.concurrency"),
            ("notifier", "concurrency = 1001", "notifier.concurrency"),
            ("admin", "gauge_interval = \"500ms\"", "admin.gauge_interval"),
            ("admin", "gauge_interval = \"2d\"", "admin.gauge_interval"),
        ];
        for (section, line, key) in over {
            let err = Settings::from_toml_over_defaults(&format!("[{section}]\n{line}\n")).unwrap_err().to_string();
            assert!(err.contains(key) && err.contains("must be"), "{line}: {err}");
        }
        let err = Settings::from_toml_over_defaults("[worker]\nconcurrency = 100001\n").unwrap_err().to_string();
        assert!(err.contains("between 1 and 100000"), "{err}");
        let err =
            Settings::from_toml_over_defaults("[limits]\nmax_content_bytes = 1073741825\n").unwrap_err().to_string();
        assert!(err.contains("between 1 and 1073741824"), "{err}");
        // The upper bounds themselves are accepted.
        Settings::from_toml_over_defaults(
            "[database]\nmax_connections = 10000\nacquire_timeout = \"1d\"\n\
             [worker]\nlease = \"1d\"\nshutdown_grace = \"0s\"\nconcurrency = 100000\nclaim_batch = 100000\n\
             completers = 1000\ncompleter_batch = 100000\nmax_rescues = 1000000\nrescue_interval = \"24h\"\n\
             stall_timeout = \"1d\"\n\
             [retry]\nmax_attempts = 1000000\nbackoff_base = \"1d\"\nbackoff_max = \"1d\"\n\
             [limits]\nmax_content_bytes = 1073741824\nmax_output_bytes = 1073741824\n\
             [pruner]\nretention = \"100y\"\ninterval = \"1d\"\nbatch = 100000\n\
             [notifier]\npoll_interval = \"1d\"\nbatch = 100000\nlease = \"1d\"\nmax_attempts = 1000000\n\
             backoff_base = \"1d\"\nbackoff_max = \"1d\"\nconcurrency = 1000\n",
        )
        .unwrap();
    }

    #[test]
    fn admin_listen_is_an_address_or_off() {
        let s = Settings::from_toml_over_defaults("").unwrap();
        assert_eq!(s.admin.listen, Some("127.0.0.1:9187".parse().unwrap()));
        assert_eq!(s.admin.gauge_interval, Duration::from_secs(15));
        let s = Settings::from_toml_over_defaults("[admin]\nlisten = \"off\"\n").unwrap();
        assert_eq!(s.admin.listen, None);
        assert!(s.redacted_toml().contains("listen = \"off\""), "{}", s.redacted_toml());
        let s = Settings::from_toml_over_defaults("[admin]\nlisten = \"[::1]:0\"\n").unwrap();
        assert_eq!(s.admin.listen, Some("[::1]:0".parse().unwrap()));
        assert!(s.redacted_toml().contains("listen = \"[::1]:0\""), "{}", s.redacted_toml());
        for bad in ["localhost:9187", "9187", "127.0.0.1", "127.0.0.1:65536", ""] {
            let err = Settings::from_toml_over_defaults(&format!("[admin]\nlisten = \"{bad}\"\n")).unwrap_err();
            assert!(err.to_string().contains("admin.listen") && err.to_string().contains("IP:port"), "{bad}: {err}");
        }
    }

    #[test]
    fn admin_tokens_are_hashes_with_unique_names_and_a_scope() {
        let hash = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
        let other = "60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752";
        let s = Settings::from_toml_over_defaults("").unwrap();
        assert!(s.admin.tokens.is_empty());
        let s = Settings::from_toml_over_defaults(&format!(
            "[[admin.tokens]]\nname = \"oncall\"\nsha256 = \"{hash}\"\nscope = \"operate\"\n\
             [[admin.tokens]]\nname = \"grafana\"\nsha256 = \"{}\"\nscope = \"read\"\n",
            other.to_uppercase()
        ))
        .unwrap();
        assert_eq!(s.admin.tokens.len(), 2);
        assert_eq!((s.admin.tokens[0].name.as_str(), s.admin.tokens[0].scope), ("oncall", TokenScope::Operate));
        assert_eq!(s.admin.tokens[1].scope, TokenScope::Read);
        let bad = [
            (format!("name = \"a b\"\nsha256 = \"{hash}\"\nscope = \"read\""), "admin.tokens[0].name"),
            (format!("name = \"\"\nsha256 = \"{hash}\"\nscope = \"read\""), "admin.tokens[0].name"),
            ("name = \"a\"\nsha256 = \"orderly_secret\"\nscope = \"read\"".to_owned(), "admin.tokens[0].sha256"),
            (format!("name = \"a\"\nsha256 = \"{}\"\nscope = \"read\"", &hash[1..]), "admin.tokens[0].sha256"),
            (format!("name = \"a\"\nsha256 = \"{hash}\"\nscope = \"admin\""), "scope"),
            (format!("name = \"a\"\nsha256 = \"{hash}\"\nscope = \"read\"\ntoken = \"x\""), "token"),
        ];
        for (entry, key) in bad {
            let err =
                Settings::from_toml_over_defaults(&format!("[[admin.tokens]]\n{entry}\n")).unwrap_err().to_string();
            assert!(err.contains(key), "{entry}: {err}");
        }
        for (second, key) in [
            (format!("name = \"a\"\nsha256 = \"{other}\""), "admin.tokens[1].name"),
            (format!("name = \"b\"\nsha256 = \"{hash}\""), "admin.tokens[1].sha256"),
        ] {
            let err = Settings::from_toml_over_defaults(&format!(
                "[[admin.tokens]]\nname = \"a\"\nsha256 = \"{hash}\"\nscope = \"read\"\n\
                 [[admin.tokens]]\n{second}\nscope = \"read\"\n"
            ))
            .unwrap_err()
            .to_string();
            assert!(err.contains(key), "{second}: {err}");
        }
    }

    #[test]
    fn database_url_must_be_a_postgres_url() {
        let err = Settings::from_toml_over_defaults("[database]\nurl = \"mysql://u@h/x\"\n").unwrap_err();
        assert!(err.to_string().contains("database.url"), "{err}");
        let err = Settings::from_toml_over_defaults("[database]\nurl = \"not a url\"\n").unwrap_err();
        assert!(err.to_string().contains("database.url"), "{err}");
        Settings::from_toml_over_defaults("[database]\nurl = \"postgresql://u@h/x?sslmode=require\"\n").unwrap();
    }

    #[test]
    fn agent_timeouts_must_be_positive_and_at_most_a_day() {
        let build = |timeout: &str| {
            let s = Settings::from_toml_over_defaults(&format!(
                "[agents.a]\nkind = \"http\"\nurl = \"https://a.example/x\"\ntimeout = \"{timeout}\"\n\
                 [agents.c]\nkind = \"command\"\nprogram = \"/bin/true\"\ntimeout = \"{timeout}\"\n"
            ))
            .unwrap();
            crate::agent::Registry::builtin().build(&s.agents, s.agent_limits()).map(|_| ())
        };
        for bad in ["0s", "25h", "100000000000y"] {
            let err = build(bad).unwrap_err().to_string();
            assert!(err.contains(".timeout") && err.contains("greater than 0 and at most 1day"), "{bad}: {err}");
        }
        build("30s").unwrap();
        build("1d").unwrap();
        assert!(parse_duration("agents.x.timeout", "soon").unwrap_err().to_string().contains("agents.x.timeout"));
    }

    #[test]
    fn log_level_is_validated_strictly() {
        for good in [
            "info",
            "INFO",
            "Warn",
            "off",
            "info,sqlx=warn",
            "orderly::worker=debug",
            "[claim]=trace",
            "orderly[claim]=debug",
        ] {
            let s = Settings::from_toml_over_defaults(&format!("[log]\nlevel = \"{good}\"\n"));
            assert!(s.is_ok(), "{good}: {:?}", s.err());
        }
        for bad in ["verbose", "", "info,", "info,verbose", "sqlx=loud", "=info", "orderly", "a b=info", "5"] {
            let err =
                Settings::from_toml_over_defaults(&format!("[log]\nlevel = \"{bad}\"\n")).unwrap_err().to_string();
            assert!(err.contains("log.level"), "{bad}: {err}");
        }
    }

    #[test]
    fn route_keys_keep_their_case_from_toml() {
        let s = Settings::from_toml_over_defaults("[routes]\nTicket_v2 = \"echo\"\nTICKET = \"echo\"\n").unwrap();
        assert_eq!(s.routes.keys().collect::<Vec<_>>(), ["TICKET", "Ticket_v2"]);
    }

    #[test]
    fn config_env_keys_lower_case_sections_but_keep_route_keys() {
        assert_eq!(env_key_path("WORKER__CONCURRENCY"), "worker.concurrency");
        assert_eq!(env_key_path("worker__Poll_Interval"), "worker.poll_interval");
        assert_eq!(env_key_path("ROUTES__Ticket_v2"), "routes.Ticket_v2");
        assert_eq!(env_key_path("routes__TICKET"), "routes.TICKET");
        assert_eq!(env_key_path("AGENTS__TRIAGE__URL"), "agents.triage.url");
        // What figment's Env provider does with a mapped key: nests it by its dots and
        // parses the value (environment variables cannot be set here: `unsafe` is forbidden).
        let mapped = [("ROUTES__Ticket_v2", "echo"), ("WORKER__CONCURRENCY", "7")].into_iter().fold(
            Figment::from(Toml::string(DEFAULT_TOML)),
            |f, (key, value)| {
                let value: figment::value::Value = value.parse().unwrap();
                f.merge(figment::providers::Serialized::global(&env_key_path(key), value))
            },
        );
        let s = Settings::from_figment(mapped).unwrap();
        assert_eq!(s.routes.get("Ticket_v2").map(String::as_str), Some("echo"));
        assert_eq!(s.worker.concurrency, 7);
    }

    #[test]
    fn config_secrets_never_show_in_check_config_or_debug() {
        let s = Settings::from_toml_over_defaults(
            "[database]\nurl = \"postgres://u:canary-db-pw@db/x?sslpassword=canary-db-query\"\n\
             [agents.a]\nkind = \"http\"\nurl = \"https://user:canary-http-pw@a.example/x?token=canary-query&b=canary-query2#canary-frag\"\n\
             headers = { Authorization = \"Bearer canary-header\" }\n\
             [agents.c]\nkind = \"command\"\nprogram = \"/bin/true\"\nargs = [\"--endpoint\", \"https://h.example/?k=canary-arg\"]\n\
             env = { API_KEY = \"canary-env\" }\n",
        )
        .unwrap();
        let canaries = [
            "canary-db-pw",
            "canary-db-query",
            "canary-http-pw",
            "canary-query",
            "canary-frag",
            "canary-header",
            "canary-arg",
            "canary-env",
        ];
        let shown = [s.redacted_toml(), format!("{s:?}"), format!("{s:#?}"), format!("{:?}", s.agents["a"])];
        for text in &shown {
            for canary in canaries {
                assert!(!text.contains(canary), "{canary} in {text}");
            }
            assert!(text.contains(REDACTED), "{text}");
        }
        // What is not secret still shows.
        let toml = s.redacted_toml();
        assert!(toml.contains("postgres://u:<redacted>@db/x?sslpassword=<redacted>"), "{toml}");
        assert!(toml.contains("Authorization = \"<redacted>\""), "{toml}");
        assert!(toml.contains("API_KEY = \"<redacted>\""), "{toml}");
        assert!(toml.contains("https://h.example/?k=<redacted>"), "{toml}");
        // The settings themselves are untouched.
        assert!(s.database.url.contains("canary-db-pw"));
    }

    #[test]
    fn redact_url_hides_password_query_values_and_fragment() {
        assert_eq!(
            redact_url("https://u:p@host/x?token=abc&flag&=v"),
            "https://u:<redacted>@host/x?token=<redacted>&<redacted>&=<redacted>"
        );
        assert_eq!(redact_url("postgres://postgres@127.0.0.1:1/orderly"), "postgres://postgres@127.0.0.1:1/orderly");
        assert_eq!(redact_url("https://h/x#access_token=abc"), "https://h/x#<redacted>");
        assert_eq!(redact_url("not a url"), "<unparseable url>");
    }
}
