//! Parsing, environment overrides and validation.

use super::*;

#[test]
fn defaults_validate() {
    let c = RawConfig::default()
        .validate(&Overrides::default())
        .expect("valid");
    assert_eq!(c.metrics_addr.to_string(), "127.0.0.1:9464");
    assert_eq!(c.idle_timeout, Duration::from_secs(300));
    assert!(c.streams.create);
    // Personal data is kept for a documented while, masked by default.
    let st = &c.streams;
    assert_eq!(
        (
            st.input_max_age_h,
            st.output_max_age_h,
            st.deadletter_max_age_h
        ),
        (168, 720, 336)
    );
    assert!(c.privacy.masks("acme") && !c.deadletter_raw);
}

#[test]
fn file_then_env_then_flags() {
    let raw = RawConfig::parse_with_env(
        "[nats]\nurl = \"nats://a:1\"\n[engine]\nidle_timeout_s = 2\n",
        [
            ("ZHIJIAN_ENGINE_IDLE_TIMEOUT_S".to_string(), "8".to_string()),
            ("ZHIJIAN_NATS_PASSWORD".to_string(), "s3cret".to_string()),
            ("ZHIJIAN_NATS_USER".to_string(), "qa".to_string()),
            ("ZHIJIAN_STREAMS_CREATE".to_string(), "false".to_string()),
            ("PATH".to_string(), "/bin".to_string()),
        ],
    )
    .expect("env applies");
    let flags = Overrides {
        nats_url: Some("nats://b:2".into()),
        ..Overrides::default()
    };
    let c = raw.validate(&flags).expect("valid");
    assert_eq!(c.nats.url, "nats://b:2");
    assert_eq!(c.idle_timeout, Duration::from_secs(8));
    assert!(!c.streams.create);
    let shown = format!("{c:?}");
    assert!(
        !shown.contains("s3cret"),
        "secret leaked into Debug: {shown}"
    );
}

#[test]
fn errors_name_the_key() {
    let cases: &[(&str, &str)] = &[
        ("[nats]\nurll = \"x\"\n", "line 2: unknown field `urll`"),
        (
            "[engine]\nidle_timeout_s = \"four\"\n",
            "line 2: invalid type",
        ),
        ("[metrics]\naddr = \"nowhere\"\n", "[metrics] addr"),
        ("[engine]\nidle_timeout_s = 0\n", "[engine] idle_timeout_s"),
        ("[cluster]\npartitions = 0\n", "0, no partitions, is gone"),
        ("[log]\nformat = \"xml\"\n", "[log] format"),
        ("[nats]\nuser = \"u\"\n", "user and password go together"),
        (
            "[nats]\ntoken = \"t\"\ncredentials_file = \"c\"\n",
            "set one of user and password, token or credentials_file",
        ),
        (
            "[nats]\ntls_client_cert = \"c\"\n",
            "tls_client_cert and tls_client_key go together",
        ),
        ("[streams]\ninput_prefix = \"a.>\"\n", "input_prefix"),
        (
            "[console]\naddr = \"0.0.0.0:9465\"\n",
            "is not loopback: set a token",
        ),
        ("[console]\nuser = \"qa\"\n", "[console] user and password"),
    ];
    for (text, want) in cases {
        let err = match RawConfig::parse(text) {
            Err(e) => e.to_string(),
            Ok(r) => r
                .validate(&Overrides::default())
                .expect_err(text)
                .to_string(),
        };
        assert!(err.contains(want), "{text:?}: want {want:?} in {err:?}");
    }
    let err =
        RawConfig::parse_with_env("", [("ZHIJIAN_ENGINE_SHARDZ".to_string(), "2".to_string())])
            .expect_err("unknown key")
            .to_string();
    assert!(
        err.contains("ZHIJIAN_ENGINE_SHARDZ: unknown key [engine] shardz"),
        "{err}"
    );
}

/// Keys of the runtime before partitions still parse (a file written
/// for it starts), do nothing, and are named so start-up can warn.
#[test]
fn keys_of_the_old_runtime_are_accepted_and_named() {
    let c = RawConfig::parse(
        "[engine]\nshards = 4\n[daemon]\nnak_delay_ms = 5\nshard_queue = 9\n[streams]\nmax_ack_pending = 7\n",
    )
    .expect("parses")
    .validate(&Overrides::default())
    .expect("valid");
    assert_eq!(
        c.deprecated,
        [
            "[engine] shards",
            "[daemon] nak_delay_ms",
            "[daemon] shard_queue",
            "[streams] max_ack_pending"
        ]
    );
    let none = RawConfig::default()
        .validate(&Overrides::default())
        .expect("valid");
    assert!(none.deprecated.is_empty());
}

/// Each kind of mistake is its own variant, and says what it said as a
/// string.
#[test]
fn invalid_configs_are_typed_with_the_same_words() {
    let invalid = |text: &str| {
        RawConfig::parse(text)
            .expect("parses")
            .validate(&Overrides::default())
            .expect_err(text)
    };
    let cases = [
        (
            "[daemon]\npublish_window = 5000\n",
            InvalidConfig::OutOfRange {
                section: "daemon",
                key: "publish_window",
                bound: "1..=4096",
                got: 5000,
            },
            "[daemon] publish_window must be 1..=4096, got 5000",
        ),
        (
            "[engine]\nidle_timeout_s = 0\n",
            InvalidConfig::Bound {
                section: "engine",
                key: "idle_timeout_s",
                bound: "> 0",
            },
            "[engine] idle_timeout_s must be > 0",
        ),
        (
            "[console]\nhistory = 0\n",
            InvalidConfig::Bound {
                section: "console",
                key: "history",
                bound: "1..=1000000 events",
            },
            "[console] history must be 1..=1000000 events",
        ),
        (
            "[streams]\nduplicate_window_s = 7200\ninput_max_age_h = 1\n",
            InvalidConfig::Bound {
                section: "streams",
                key: "input_max_age_h",
                bound: "0 (kept) or at least duplicate_window_s in hours",
            },
            "[streams] input_max_age_h must be 0 (kept) or at least duplicate_window_s in hours",
        ),
        (
            "[log]\nformat = \"xml\"\n",
            InvalidConfig::LogFormat("xml".into()),
            "[log] format \"xml\" is not \"text\" or \"json\"",
        ),
        (
            "[nats]\npassword = \"p\"\n",
            InvalidConfig::GoTogether {
                section: "nats",
                first: "user",
                second: "password",
            },
            "[nats] user and password go together",
        ),
        (
            "[console]\ntoken = \"a b\"\n",
            InvalidConfig::ConsoleToken,
            "[console] token must be non-empty printable ASCII without spaces (it travels in an HTTP header)",
        ),
        (
            "[shadow]\nlexicons = \"x\"\nprefix = \"violations\"\n",
            InvalidConfig::ShadowPrefix("violations".into()),
            "[shadow] prefix \"violations\" would share subjects with the live streams",
        ),
        (
            "[cluster]\npartitions = 2000\n",
            InvalidConfig::OutOfRange {
                section: "cluster",
                key: "partitions",
                bound: "1..=1024 (0, no partitions, is gone: see docs/operations.md)",
                got: 2000,
            },
            "[cluster] partitions must be 1..=1024 (0, no partitions, is gone: see docs/operations.md), got 2000",
        ),
        (
            "[cluster]\npartitions = 2\nlease_ms = 100\nheartbeat_ms = 50\n",
            InvalidConfig::LeaseTooShort {
                lease_ms: 100,
                heartbeat_ms: 50,
            },
            "[cluster] lease_ms (100) must be at least 3 × heartbeat_ms (50)",
        ),
        (
            "[cluster]\npartitions = 2\nbucket = \"a.b\"\n",
            InvalidConfig::BadName {
                section: "cluster",
                key: "bucket",
                value: "a.b".into(),
                rule: "letters, digits, '-' and '_' only",
            },
            "[cluster] bucket \"a.b\": letters, digits, '-' and '_' only",
        ),
    ];
    for (text, want, says) in cases {
        let err = invalid(text);
        assert_eq!(err, want, "{text:?}");
        assert_eq!(err.to_string(), says, "{text:?}");
    }
}

#[test]
fn parse_errors_keep_their_source() {
    use std::error::Error as _;
    let err = RawConfig::parse("[engine]\nshards = \"four\"\n").expect_err("wrong type");
    assert!(
        matches!(err, ParseError::Toml { line: Some(2), .. }),
        "{err:?}"
    );
    assert!(
        err.source()
            .is_some_and(|s| s.to_string().contains("invalid type")),
        "{err:?}"
    );
    let err = RawConfig::parse_with_env(
        "",
        [("ZHIJIAN_ENGINE_SHARDS".to_string(), "four".to_string())],
    )
    .expect_err("wrong type");
    let ParseError::Env { name, source } = &err else {
        panic!("{err:?}");
    };
    assert_eq!(name, "ZHIJIAN_ENGINE_SHARDS");
    assert!(
        matches!(
            source,
            EnvError::Value {
                source: Some(_),
                ..
            }
        ),
        "{source:?}"
    );
    // A file's errors name the file; a variable's name the variable.
    let dir = std::env::temp_dir().join(format!("zhijian-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("bad.toml");
    std::fs::write(&file, "[engine]\nshardz = 1\n").expect("write");
    let err = RawConfig::load_with_env(Some(&file), []).expect_err("unknown key");
    assert!(matches!(err, ParseError::InFile { .. }), "{err:?}");
    assert!(
        err.to_string().starts_with(&format!(
            "{}: line 2: unknown field `shardz`",
            file.display()
        )),
        "{err}"
    );
    let err = RawConfig::load_with_env(Some(&file), [("ZHIJIAN_BIN".to_string(), "x".to_string())])
        .expect_err("the file first");
    assert!(matches!(err, ParseError::InFile { .. }), "{err:?}");
    std::fs::write(&file, "").expect("write");
    let err = RawConfig::load_with_env(Some(&file), [("ZHIJIAN_BIN".to_string(), "x".to_string())])
        .expect_err("bad variable");
    assert!(matches!(err, ParseError::Env { .. }), "{err:?}");
    let missing = dir.join("missing.toml");
    let err = RawConfig::load_with_env(Some(&missing), []).expect_err("no file");
    assert!(matches!(err, ParseError::Read { .. }), "{err:?}");
    assert!(
        err.to_string()
            .starts_with(&format!("cannot read config {}: ", missing.display())),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn environment_values_take_the_type_of_their_key() {
    let env = |pairs: &[(&str, &str)]| {
        RawConfig::parse_with_env(
            "[nats]\nname = \"file\"\n",
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    };
    let raw = env(&[
        ("ZHIJIAN_NATS_NAME", "123"),
        ("ZHIJIAN_NATS_TLS_REQUIRED", "yes"),
        ("ZHIJIAN_NATS_TOKEN", "true"),
        ("ZHIJIAN_STREAMS_MAX_ACK_PENDING", " 7 "),
        ("ZHIJIAN_ENGINE_RELOAD_REQUIRES_TESTS", "0"),
        ("ZHIJIAN_ENGINE_LEXICONS", "/etc/zhijian/lexicons"),
    ])
    .expect("valid");
    assert_eq!(raw.nats.name, "123");
    assert!(raw.nats.tls_required);
    assert_eq!(raw.nats.token, Some(Secret("true".into())));
    assert_eq!(raw.streams.max_ack_pending, Some(7));
    assert!(!raw.engine.reload_requires_tests);
    assert_eq!(raw.engine.lexicons, PathBuf::from("/etc/zhijian/lexicons"));
    // The file's other keys stay.
    assert_eq!(env(&[]).expect("valid").nats.name, "file");
    for (pairs, want) in [
        (
            &[("ZHIJIAN_ENGINE_SHARDS", "four")][..],
            "ZHIJIAN_ENGINE_SHARDS: [engine] shards: \"four\" is not valid here",
        ),
        (
            &[("ZHIJIAN_STREAMS_CREATE", "maybe")][..],
            "ZHIJIAN_STREAMS_CREATE: [streams] create: \"maybe\"",
        ),
        (
            &[("ZHIJIAN_NOPE_KEY", "1")][..],
            "ZHIJIAN_NOPE_KEY: unknown key [nope] key",
        ),
        (
            &[("ZHIJIAN_BIN", "x")][..],
            "ZHIJIAN_BIN: expected ZHIJIAN_<SECTION>_<KEY>",
        ),
    ] {
        let err = env(pairs).expect_err(want).to_string();
        assert!(err.contains(want), "want {want:?} in {err:?}");
    }
}
