//! Unit tests of the parent module.

use super::load::*;
use super::*;
use crate::net::REDACTED;
use figment::Figment;
use figment::providers::{Format, Toml};

#[test]
fn defaults_load_and_validate() {
    let s = Settings::from_toml_over_defaults("").unwrap();
    assert_eq!(s.worker.poll_interval, Duration::from_secs(1));
    assert!(s.database.migrate_on_start);
    assert_eq!(s.approval.policy, PolicyKind::ApproveAll);
    let n = &s.notifier;
    assert_eq!(
        (n.poll_interval, n.batch, n.lease, n.max_attempts, n.backoff_base, n.backoff_max, n.concurrency),
        (Duration::from_secs(1), 32, Duration::from_secs(60), 12, Duration::from_secs(1), Duration::from_secs(600), 8)
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
    let err = Settings::from_toml_over_defaults("[limits]\nmax_content_bytes = 1073741825\n").unwrap_err().to_string();
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
fn admin_public_url_is_an_absolute_http_url_that_the_notifier_links_to() {
    let s = Settings::from_toml_over_defaults("").unwrap();
    assert_eq!((s.admin.public_url.clone(), s.notifier.public_url.clone()), (None, None));
    assert!(!s.redacted_toml().contains("public_url"), "{}", s.redacted_toml());
    for (given, shown) in [
        ("https://orderly.example.com", "https://orderly.example.com"),
        ("https://ops.example.com/orderly/", "https://ops.example.com/orderly"),
        ("http://10.0.0.5:9187", "http://10.0.0.5:9187"),
    ] {
        let s = Settings::from_toml_over_defaults(&format!("[admin]\npublic_url = \"{given}\"\n")).unwrap();
        assert_eq!(s.notifier.public_url, s.admin.public_url, "the notifier links where the admin says");
        let url = s.admin.public_url.clone().unwrap();
        assert_eq!(crate::sla::channels::page_link(&url, &[]), format!("{shown}/escalations"));
        assert!(s.redacted_toml().contains(&format!("public_url = \"{shown}\"")), "{}", s.redacted_toml());
    }
    for bad in [
        "orderly.example.com",
        "/escalations",
        "ftp://orderly.example.com",
        "https://user:pass@orderly.example.com",
        "https://orderly.example.com/?x=1",
        "https://orderly.example.com/#top",
        "",
    ] {
        let err = Settings::from_toml_over_defaults(&format!("[admin]\npublic_url = \"{bad}\"\n")).unwrap_err();
        assert!(err.to_string().contains("admin.public_url"), "{bad}: {err}");
        assert!(!err.to_string().contains("pass@"), "{bad}: {err}");
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
        let err = Settings::from_toml_over_defaults(&format!("[[admin.tokens]]\n{entry}\n")).unwrap_err().to_string();
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
    assert!(
        crate::model::parse_duration("agents.x.timeout", "soon").unwrap_err().to_string().contains("agents.x.timeout")
    );
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
        let err = Settings::from_toml_over_defaults(&format!("[log]\nlevel = \"{bad}\"\n")).unwrap_err().to_string();
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
