//! Loading the layered configuration (defaults, the `--config` file, the systemd
//! credential, `DATABASE_URL`, `ORDERLY__*`), validating every value against its documented
//! range, and the redacted TOML that `check-config` prints.

use super::*;
use figment::Figment;
use figment::providers::{Env, Format, Toml};

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

    pub(super) fn from_figment(figment: Figment) -> Result<Settings, ConfigError> {
        let mut settings: Settings = figment.extract().map_err(|e| {
            let messages: Vec<String> = e.into_iter().map(describe_figment_error).collect();
            ConfigError::Load(messages.join("; "))
        })?;
        settings.validate()?;
        // The notifier builds the links of its messages (it is handed `[notifier]` alone).
        settings.notifier.public_url = settings.admin.public_url.clone();
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
        count_in("worker.evaluator_concurrency", worker.evaluator_concurrency, 1, MAX_BATCH)?;
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
        for (model, price) in &self.prices {
            for (key, value) in
                [("input_per_million", &price.input_per_million), ("output_per_million", &price.output_per_million)]
            {
                let decimal = !value.is_empty()
                    && value.len() <= 40
                    && value.chars().all(|c| c.is_ascii_digit() || c == '.')
                    && value.chars().filter(|c| *c == '.').count() <= 1;
                if !decimal {
                    return Err(ConfigError::invalid(
                        format!("prices.{model}.{key}"),
                        format!("`{value}` is not a non-negative decimal (write it as a string, \"2.50\")"),
                    ));
                }
            }
            if price.currency.len() != 3 || !price.currency.chars().all(|c| c.is_ascii_uppercase()) {
                return Err(ConfigError::invalid(
                    format!("prices.{model}.currency"),
                    format!("`{}` is not a three-letter ISO 4217 code such as USD", price.currency),
                ));
            }
        }
        count_in("limits.max_dependency_bytes", self.limits.max_dependency_bytes, 0, MAX_SIZE_BYTES)?;

        for (tenant, settings) in &self.tenants {
            if settings.max_in_flight == Some(0) {
                return Err(ConfigError::invalid(
                    format!("tenants.{tenant}.max_in_flight"),
                    "must be at least 1 (leave it out for no limit)",
                ));
            }
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
pub(super) fn credential(name: &str) -> Result<Option<String>, ConfigError> {
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
pub(super) fn env_key_path(key: &str) -> String {
    match key.split_once("__") {
        Some((section, route)) if section.eq_ignore_ascii_case("routes") => format!("routes.{route}"),
        _ => key.split("__").map(str::to_ascii_lowercase).collect::<Vec<_>>().join("."),
    }
}

/// `min <= value <= max`, else an error naming the key and the range.
pub(super) fn count_in<T: PartialOrd + fmt::Display>(key: &str, value: T, min: T, max: T) -> Result<(), ConfigError> {
    if value < min || value > max {
        return Err(ConfigError::invalid(key, format!("must be between {min} and {max}, not {value}")));
    }
    Ok(())
}

/// `min <= value <= max` (`None`: greater than zero), else an error naming the key and range.
pub(super) fn duration_in(key: &str, value: Duration, min: Option<Duration>, max: Duration) -> Result<(), ConfigError> {
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
pub(super) fn validate_log_level(filter: &str) -> Result<(), ConfigError> {
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
pub(super) fn valid_selector(selector: &str) -> bool {
    let selector = selector.trim();
    let (target, span) = match selector.find('[') {
        Some(at) => (&selector[..at], Some(&selector[at..])),
        None => (selector, None),
    };
    let target_ok = target.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | ':' | '-' | '.'));
    let span_ok = span.is_none_or(|s| s.len() > 2 && s.ends_with(']'));
    target_ok && span_ok && !(target.is_empty() && span.is_none())
}

pub(super) fn describe_figment_error(e: figment::error::Error) -> String {
    let key = e.path.join(".");
    let kind = e.kind.to_string();
    if key.is_empty() { kind } else { format!("`{key}`: {kind}") }
}
