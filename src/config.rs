//! Settings: `config/default.toml` (compiled in), then the `--config` file, then
//! `DATABASE_URL`, then `ORDERLY__SECTION__KEY` variables. Validated once at start-up;
//! everything downstream receives typed settings, never raw strings.

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// The documented defaults, shipped inside the binary so it runs from anywhere.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Load(String),
    #[error("configuration: `{key}`: {message}")]
    Invalid { key: String, message: String },
}

impl ConfigError {
    pub fn invalid(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Invalid { key: key.into(), message: message.into() }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub database: DatabaseSettings,
    pub worker: WorkerSettings,
    pub retry: RetrySettings,
    pub limits: LimitSettings,
    pub approval: ApprovalSettings,
    pub pruner: PrunerSettings,
    #[serde(default)]
    pub agents: BTreeMap<String, AgentSettings>,
    /// Item type (upper case) → agent name.
    #[serde(default)]
    pub routes: BTreeMap<String, String>,
    pub log: LogSettings,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    pub url: String,
    pub max_connections: u32,
    pub migrate_on_start: bool,
    #[serde(with = "humantime_serde")]
    pub acquire_timeout: Duration,
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

/// The leader's pruner of finished work orders (DESIGN §5).
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

/// One `[agents.NAME]` table: a kind plus the kind's own options, which the kind's factory
/// validates (so unknown keys are reported as `agents.NAME.key`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentSettings {
    pub kind: String,
    #[serde(flatten)]
    pub options: serde_json::Map<String, Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
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
    /// Loads the layered configuration. `file` is the operator's `--config`.
    pub fn load(file: Option<&Path>) -> Result<Settings, ConfigError> {
        let mut figment = Figment::from(Toml::string(DEFAULT_TOML));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::Load(format!("file {} does not exist", path.display())));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        figment = figment
            .merge(Env::raw().only(&["DATABASE_URL"]).map(|_| "database.url".into()))
            .merge(Env::prefixed("ORDERLY__").split("__"));
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
        let mut settings: Settings = figment.extract().map_err(|e| {
            let messages: Vec<String> = e.into_iter().map(describe_figment_error).collect();
            ConfigError::Load(messages.join("; "))
        })?;
        // Environment keys arrive lower-cased; item types are upper case.
        settings.routes =
            std::mem::take(&mut settings.routes).into_iter().map(|(k, v)| (k.to_ascii_uppercase(), v)).collect();
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let positive = |key: &str, d: Duration| {
            if d.is_zero() { Err(ConfigError::invalid(key, "must be greater than zero")) } else { Ok(()) }
        };
        if self.database.url.trim().is_empty() {
            return Err(ConfigError::invalid("database.url", "must not be empty"));
        }
        if self.database.max_connections < 2 {
            return Err(ConfigError::invalid("database.max_connections", "must be at least 2"));
        }
        positive("database.acquire_timeout", self.database.acquire_timeout)?;
        if self.worker.concurrency == 0 {
            return Err(ConfigError::invalid("worker.concurrency", "must be at least 1"));
        }
        if self.worker.claim_batch == 0 {
            return Err(ConfigError::invalid("worker.claim_batch", "must be at least 1"));
        }
        if self.worker.completers == 0 {
            return Err(ConfigError::invalid("worker.completers", "must be at least 1"));
        }
        if self.worker.completer_batch == 0 {
            return Err(ConfigError::invalid("worker.completer_batch", "must be at least 1"));
        }
        positive("worker.poll_interval", self.worker.poll_interval)?;
        positive("worker.rescue_interval", self.worker.rescue_interval)?;
        if self.worker.max_rescues < 1 {
            return Err(ConfigError::invalid("worker.max_rescues", "must be at least 1"));
        }
        positive("worker.lease", self.worker.lease)?;
        if self.worker.lease < Duration::from_secs(1) {
            return Err(ConfigError::invalid("worker.lease", "must be at least 1s"));
        }
        if self.retry.max_attempts < 1 {
            return Err(ConfigError::invalid("retry.max_attempts", "must be at least 1"));
        }
        positive("retry.backoff_base", self.retry.backoff_base)?;
        if self.retry.backoff_max < self.retry.backoff_base {
            return Err(ConfigError::invalid("retry.backoff_max", "must be at least retry.backoff_base"));
        }
        if self.limits.max_content_bytes == 0 || self.limits.max_output_bytes == 0 {
            return Err(ConfigError::invalid("limits", "sizes must be greater than zero"));
        }
        if self.limits.max_content_bytes > i32::MAX as usize {
            return Err(ConfigError::invalid("limits.max_content_bytes", "must be below 2 GiB"));
        }
        for (item_type, agent) in &self.routes {
            if !self.agents.contains_key(agent) {
                return Err(ConfigError::invalid(
                    format!("routes.{item_type}"),
                    format!("names agent `{agent}`, which is not configured under [agents]"),
                ));
            }
        }
        if let Some(retention) = self.pruner.retention {
            positive("pruner.retention", retention)?;
        }
        positive("pruner.interval", self.pruner.interval)?;
        if self.pruner.batch < 1 {
            return Err(ConfigError::invalid("pruner.batch", "must be at least 1"));
        }
        if let Err(e) = self.log.level.parse::<tracing_subscriber::EnvFilter>() {
            return Err(ConfigError::invalid("log.level", e.to_string()));
        }
        Ok(())
    }

    /// The effective configuration as TOML with every secret replaced by `<redacted>`:
    /// the database password, every agent header value and the userinfo and query values of
    /// http agents' URLs.
    pub fn redacted_toml(&self) -> String {
        let mut copy = self.clone();
        copy.database.url = redact_url(&copy.database.url);
        for agent in copy.agents.values_mut() {
            if agent.kind == "http"
                && let Some(Value::String(url)) = agent.options.get_mut("url")
                && let Ok(parsed) = reqwest::Url::parse(url)
            {
                *url = crate::agent::redact_url(&parsed);
            }
            if let Some(Value::Object(headers)) = agent.options.get_mut("headers") {
                for value in headers.values_mut() {
                    *value = Value::String("<redacted>".into());
                }
            }
        }
        toml::to_string_pretty(&copy).unwrap_or_else(|e| format!("# cannot render: {e}"))
    }
}

/// Hides the password of a connection URL, for logs and `check-config`.
pub fn redact_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("<redacted>"));
            parsed.to_string()
        }
        Ok(_) => url.to_owned(),
        Err(_) => "<unparseable url>".to_owned(),
    }
}

fn describe_figment_error(e: figment::error::Error) -> String {
    let key = e.path.join(".");
    let kind = e.kind.to_string();
    if key.is_empty() { kind } else { format!("`{key}`: {kind}") }
}

/// Parses a duration option of an agent (`"30s"`), naming the key on error.
pub fn parse_duration(key: &str, value: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(value).map_err(|e| ConfigError::invalid(key, format!("`{value}`: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_load_and_validate() {
        let s = Settings::from_toml_over_defaults("").unwrap();
        assert_eq!(s.worker.poll_interval, Duration::from_secs(1));
        assert!(s.database.migrate_on_start);
        assert_eq!(s.approval.policy, PolicyKind::ApproveAll);
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
}
