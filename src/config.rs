//! Daemon configuration: one TOML file (every key documented with its
//! default in `deploy/zhijian.toml`), overridden by environment variables
//! `ZHIJIAN_<SECTION>_<KEY>` (e.g. `ZHIJIAN_NATS_URL`), overridden by flags.
//!
//! The file, with the environment variables set over it as TOML values, is
//! deserialized into raw structs with `deny_unknown_fields` (a typo is an
//! error naming the key; the structs are the one list of keys), then
//! validated once into [`Config`]. Secrets are
//! wrapped in [`Secret`], whose `Debug` never prints them.

use serde::Deserialize;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A configuration file or environment that cannot be read into a
/// [`RawConfig`].
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("cannot read config {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Not TOML, an unknown key, a value of the wrong type: with its line
    /// in the file when the error has one.
    #[error("{}{}", .line.map(|l| format!("line {l}: ")).unwrap_or_default(), .source.message().trim())]
    Toml {
        line: Option<usize>,
        #[source]
        source: Box<toml::de::Error>,
    },
    /// A `ZHIJIAN_…` variable.
    #[error("environment variable {name}: {source}")]
    Env {
        name: String,
        #[source]
        source: EnvError,
    },
    /// An error in the file named.
    #[error("{}: {source}", .path.display())]
    InFile {
        path: PathBuf,
        #[source]
        source: Box<ParseError>,
    },
}

/// Why a `ZHIJIAN_<SECTION>_<KEY>` variable cannot be applied.
#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    #[error("expected ZHIJIAN_<SECTION>_<KEY>")]
    Shape,
    #[error("unknown key [{section}] {key}")]
    UnknownKey { section: String, key: String },
    /// No reading of the text (integer, boolean, text) is of the key's type;
    /// the source is what the first reading was refused for.
    #[error(
        "[{section}] {key}: {value:?} is not valid here ({})",
        .source.as_ref().map(|e| e.message().trim()).unwrap_or_default()
    )]
    Value {
        section: String,
        key: String,
        value: String,
        #[source]
        source: Option<Box<toml::de::Error>>,
    },
}

/// A configuration that deserializes but cannot be used: which key, and
/// what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidConfig {
    /// A number outside the values its key takes.
    #[error("[{section}] {key} must be {bound}, got {got}")]
    OutOfRange {
        section: &'static str,
        key: &'static str,
        /// The values it takes, e.g. `1..=256`.
        bound: &'static str,
        got: u64,
    },
    /// A number below what its key takes (the message says the bound).
    #[error("[{section}] {key} must be {bound}")]
    Bound {
        section: &'static str,
        key: &'static str,
        /// e.g. `> 0`, `>= 1`.
        bound: &'static str,
    },
    /// `[cluster] lease_ms` shorter than three heartbeats.
    #[error("[cluster] lease_ms ({lease_ms}) must be at least 3 × heartbeat_ms ({heartbeat_ms})")]
    LeaseTooShort { lease_ms: u64, heartbeat_ms: u64 },
    /// An address that does not parse as `host:port`.
    #[error("[{section}] addr {addr:?} is not host:port")]
    NotHostPort { section: &'static str, addr: String },
    #[error("[log] format {0:?} is not \"text\" or \"json\"")]
    LogFormat(String),
    /// Two keys set without each other.
    #[error("[{section}] {first} and {second} go together")]
    GoTogether {
        section: &'static str,
        first: &'static str,
        second: &'static str,
    },
    /// More than one kind of NATS authentication.
    #[error("[nats] authentication: set one of user and password, token or credentials_file")]
    NatsAuth,
    /// A `[streams]` prefix or subject that is not a literal subject.
    #[error("[streams] {key} {value:?} is not a valid subject")]
    NotSubject { key: &'static str, value: String },
    /// A name with characters or a length its key does not take.
    #[error("[{section}] {key} {value:?}: {rule}")]
    BadName {
        section: &'static str,
        key: &'static str,
        value: String,
        /// What the key takes.
        rule: &'static str,
    },
    #[error(
        "[console] token must be non-empty printable ASCII without spaces (it travels in an HTTP header)"
    )]
    ConsoleToken,
    /// The console on a public address without credentials.
    #[error(
        "[console] addr {0} is not loopback: set a token or user and password (transcripts are personal data)"
    )]
    OpenConsole(SocketAddr),
    #[error(
        "[shadow] prefix and stream must be one subject token each (no '.', '*', '>' or spaces)"
    )]
    ShadowTokens,
    /// The shadow prefix is the first token of a live subject.
    #[error("[shadow] prefix {0:?} would share subjects with the live streams")]
    ShadowPrefix(String),
}

/// A value that must never reach a log line.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsConfig {
    /// Server URL(s), comma-separated.
    pub url: String,
    /// Connection name shown by the server.
    pub name: String,
    pub user: Option<String>,
    pub password: Option<Secret>,
    pub token: Option<Secret>,
    /// A `.creds` file (JWT + nkey seed).
    pub credentials_file: Option<PathBuf>,
    /// PEM file of CA certificates to trust (custom CA).
    pub tls_ca_file: Option<PathBuf>,
    /// Client certificate and key for mutual TLS.
    pub tls_client_cert: Option<PathBuf>,
    pub tls_client_key: Option<PathBuf>,
    /// Refuse to connect without TLS.
    pub tls_required: bool,
    pub connect_timeout_ms: u64,
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            url: "nats://127.0.0.1:4222".into(),
            name: "zhijian".into(),
            user: None,
            password: None,
            token: None,
            credentials_file: None,
            tls_ca_file: None,
            tls_client_cert: None,
            tls_client_key: None,
            tls_required: false,
            connect_timeout_ms: 5_000,
        }
    }
}

/// How zhijian authenticates to NATS: one kind at most.
#[derive(Debug, Clone, PartialEq)]
pub enum NatsAuth {
    /// None configured: credentials written into the URL
    /// (`nats://user:password@host`, `nats://token@host`), if any.
    None,
    UserPassword {
        user: String,
        password: Secret,
    },
    Token(Secret),
    /// A `.creds` file (JWT + nkey seed).
    CredentialsFile(PathBuf),
}

/// The validated NATS settings.
#[derive(Debug, Clone)]
pub struct NatsSettings {
    /// Server URL(s), comma-separated.
    pub url: String,
    /// Connection name shown by the server.
    pub name: String,
    pub auth: NatsAuth,
    /// PEM file of CA certificates to trust (custom CA).
    pub tls_ca_file: Option<PathBuf>,
    /// Client certificate and key for mutual TLS.
    pub tls_client: Option<(PathBuf, PathBuf)>,
    /// Refuse to connect without TLS.
    pub tls_required: bool,
    pub connect_timeout: Duration,
}

impl NatsConfig {
    fn validate(self) -> Result<NatsSettings, InvalidConfig> {
        let auth = match (self.user, self.password, self.token, self.credentials_file) {
            (None, None, None, None) => NatsAuth::None,
            (Some(user), Some(password), None, None) => NatsAuth::UserPassword { user, password },
            (None, None, Some(token), None) => NatsAuth::Token(token),
            (None, None, None, Some(path)) => NatsAuth::CredentialsFile(path),
            (user, password, _, _) if user.is_some() != password.is_some() => {
                return Err(InvalidConfig::GoTogether {
                    section: "nats",
                    first: "user",
                    second: "password",
                });
            }
            _ => return Err(InvalidConfig::NatsAuth),
        };
        let tls_client = match (self.tls_client_cert, self.tls_client_key) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            _ => {
                return Err(InvalidConfig::GoTogether {
                    section: "nats",
                    first: "tls_client_cert",
                    second: "tls_client_key",
                });
            }
        };
        Ok(NatsSettings {
            url: self.url,
            name: self.name,
            auth,
            tls_ca_file: self.tls_ca_file,
            tls_client,
            tls_required: self.tls_required,
            connect_timeout: Duration::from_millis(self.connect_timeout_ms),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamsConfig {
    /// Create missing streams, consumer and state bucket (local use). Off in
    /// production, where they are provisioned and start-up checks them.
    pub create: bool,
    pub input_stream: String,
    /// Input subjects are `<input_prefix>.<tenant>.<conversation_id>`.
    pub input_prefix: String,
    /// Durable pull consumer on the input stream.
    pub consumer: String,
    pub output_stream: String,
    /// Violations go to `<violations_prefix>.<tenant>.<category>`.
    pub violations_prefix: String,
    /// Summaries go to `<summaries_prefix>.<tenant>`.
    pub summaries_prefix: String,
    /// Bad input is republished here untouched, the reason in a header.
    pub deadletter_subject: String,
    /// Stream that keeps dead letters for a person to inspect.
    pub deadletter_stream: String,
    /// The console desk's key-value bucket is `<state_bucket>_desk`.
    pub state_bucket: String,
    /// The output stream's de-duplication window (`Nats-Msg-Id`).
    pub duplicate_window_s: u64,
    /// No longer used (the partitions' consumers acknowledge nothing).
    pub max_ack_pending: Option<i64>,
    /// The unroutable stream's consumer redelivers a message not
    /// acknowledged within this time.
    pub ack_wait_s: u64,
}

impl Default for StreamsConfig {
    fn default() -> Self {
        StreamsConfig {
            create: true,
            input_stream: "TRANSCRIPTS".into(),
            input_prefix: "transcripts".into(),
            consumer: "zhijian".into(),
            output_stream: "VIOLATIONS".into(),
            violations_prefix: "violations".into(),
            summaries_prefix: "summaries".into(),
            deadletter_subject: "zhijian.deadletter".into(),
            deadletter_stream: "ZHIJIAN_DEADLETTER".into(),
            state_bucket: "zhijian_state".into(),
            duplicate_window_s: 600,
            max_ack_pending: None,
            ack_wait_s: 30,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineSection {
    pub lexicons: PathBuf,
    /// No longer used: a partition is the unit of work (`[cluster]`).
    pub shards: Option<usize>,
    /// Close a conversation after this long without an event.
    pub idle_timeout_s: u64,
    /// Remember closed conversations this long (late events are ignored).
    pub tombstone_ttl_s: u64,
    /// Poll the lexicon directory for changes this often (0: SIGHUP only).
    pub reload_poll_ms: u64,
    /// Refuse a hot reload whose lexicon test suite (`<lexicons>/tests/`,
    /// when there is one) fails.
    pub reload_requires_tests: bool,
}

impl Default for EngineSection {
    fn default() -> Self {
        EngineSection {
            lexicons: PathBuf::from("lexicons"),
            shards: None,
            idle_timeout_s: 300,
            tombstone_ttl_s: 600,
            reload_poll_ms: 1000,
            reload_requires_tests: true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonSection {
    /// After SIGTERM: store, checkpoint and hand partitions over within
    /// this time, whatever NATS does.
    pub shutdown_grace_s: u64,
    /// No longer used (events are sent again until stored).
    pub publish_attempts: Option<u32>,
    /// No longer used (nothing is Nak'ed).
    pub nak_delay_ms: Option<u64>,
    /// No longer used (a partition's consumer is made again after 3 s
    /// without delivery while inputs wait).
    pub stall_timeout_s: Option<u64>,
    /// No longer used (no shards).
    pub shard_queue: Option<usize>,
    /// Events per partition sent and not yet acknowledged by JetStream, at
    /// most: the backpressure that keeps a burst from exhausting the
    /// client's window of unacknowledged publishes.
    pub publish_window: usize,
    /// An event waiting this long to be stored: `/readyz` fails and
    /// `zhijian_output_stalled` is 1.
    pub watchdog_s: u64,
}

impl Default for DaemonSection {
    fn default() -> Self {
        DaemonSection {
            shutdown_grace_s: 20,
            publish_attempts: None,
            nak_delay_ms: None,
            stall_timeout_s: None,
            shard_queue: None,
            publish_window: 512,
            watchdog_s: 30,
        }
    }
}

/// Limits on what hostile or broken input can make the daemon hold or emit.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    /// Characters of its segment a violation carries at most.
    pub excerpt_chars: usize,
    /// Open conversations per instance at most (split evenly over the
    /// partitions).
    pub max_open_conversations: usize,
    /// Final segments per conversation at most.
    pub max_segments_per_conversation: u32,
    /// A segment's `text` in bytes at most (longer: dead letter
    /// `text_too_long`).
    pub max_text_bytes: usize,
}

impl Default for LimitsSection {
    fn default() -> Self {
        let e = crate::engine::EngineConfig::default();
        LimitsSection {
            excerpt_chars: e.excerpt_chars,
            max_open_conversations: e.max_open,
            max_segments_per_conversation: e.max_segments,
            max_text_bytes: crate::event::MAX_TEXT_BYTES,
        }
    }
}

/// Tenants with their own metric series by default (`[metrics]
/// max_tenants`).
pub const DEFAULT_MAX_TENANTS: usize = 100;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSection {
    pub addr: String,
    /// Tenants with their own `zhijian_tenant_violations_total` series.
    pub max_tenants: usize,
}

impl Default for MetricsSection {
    fn default() -> Self {
        MetricsSection {
            addr: "127.0.0.1:9464".into(),
            max_tenants: DEFAULT_MAX_TENANTS,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsoleSection {
    /// Serve the live-alerts console.
    pub enabled: bool,
    pub addr: String,
    /// Bearer token (`Authorization: Bearer …`).
    pub token: Option<Secret>,
    /// HTTP basic auth.
    pub user: Option<String>,
    pub password: Option<Secret>,
    /// Mask phone, ID and bank-card numbers in transcripts shown.
    pub mask_digits: bool,
    /// Recent events kept in memory for new and reconnecting browsers.
    pub history: usize,
}

impl Default for ConsoleSection {
    fn default() -> Self {
        ConsoleSection {
            enabled: true,
            addr: "127.0.0.1:9465".into(),
            token: None,
            user: None,
            password: None,
            mask_digits: true,
            history: 5000,
        }
    }
}

/// The validated console settings.
#[derive(Debug, Clone)]
pub struct ConsoleConfig {
    pub addr: SocketAddr,
    pub token: Option<Secret>,
    /// User and password of HTTP basic auth.
    pub basic: Option<(String, Secret)>,
    pub mask_digits: bool,
    pub history: usize,
}

/// Shadow mode: a candidate lexicon judges every segment beside the live
/// one; its events go to their own subjects, never to the live ones.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShadowSection {
    /// The candidate lexicon directory; empty: no shadow.
    pub lexicons: String,
    /// Shadow events go to `<prefix>.<live subject>`.
    pub prefix: String,
    /// The stream that keeps them.
    pub stream: String,
}

impl Default for ShadowSection {
    fn default() -> Self {
        ShadowSection {
            lexicons: String::new(),
            prefix: "shadow".into(),
            stream: "SHADOW".into(),
        }
    }
}

/// The validated shadow settings.
#[derive(Debug, Clone)]
pub struct ShadowConfig {
    pub lexicons: PathBuf,
    pub prefix: String,
    pub stream: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    /// `text` (human-readable) or `json`.
    pub format: String,
    /// A tracing filter, e.g. `info` or `zhijian=debug,async_nats=warn`.
    pub level: String,
}

impl Default for LogSection {
    fn default() -> Self {
        LogSection {
            format: "text".into(),
            level: "info".into(),
        }
    }
}

/// Partitions: the input stream is split into `partitions` by conversation
/// (a subject transform computed by NATS), each partition judged by one
/// instance at a time (a lease in a key-value bucket), its open
/// conversations checkpointed to that bucket. One instance or many run the
/// same way. See `daemon::membership`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSection {
    /// Partitions of the input stream when this daemon creates it (unset:
    /// [`DEFAULT_PARTITIONS`]); an existing stream's own count wins.
    pub partitions: Option<u32>,
    /// This instance's name (letters, digits, `-`, `_`); empty: host name
    /// and process id. Names must differ between running instances.
    pub instance: String,
    /// The key-value bucket of members, leases and checkpoints.
    pub bucket: String,
    /// Replicas of the streams and the bucket this daemon creates (3 on a
    /// three-node cluster).
    pub replicas: usize,
    /// How long a lease holds without renewal.
    pub lease_ms: u64,
    /// How often members say they are alive and leases are renewed.
    pub heartbeat_ms: u64,
    /// How often a partition's open conversations are checkpointed.
    pub checkpoint_ms: u64,
    /// Checkpoints that write only what changed (deltas) between two that
    /// write every open conversation (bases); 0: every checkpoint a base.
    pub max_deltas: usize,
}

/// Partitions of an input stream this daemon creates when
/// `[cluster] partitions` is not set: room for twelve instances, and even
/// shares for 1, 2, 3, 4 and 6.
pub const DEFAULT_PARTITIONS: u32 = 12;

impl Default for ClusterSection {
    fn default() -> Self {
        ClusterSection {
            partitions: None,
            instance: String::new(),
            bucket: "zhijian_cluster".into(),
            replicas: 1,
            lease_ms: 5_000,
            heartbeat_ms: 1_000,
            checkpoint_ms: 500,
            max_deltas: 32,
        }
    }
}

/// The validated cluster settings.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// As configured (see [`ClusterSection::partitions`]).
    pub partitions: Option<u32>,
    pub instance: String,
    pub bucket: String,
    pub replicas: usize,
    pub lease: Duration,
    pub heartbeat: Duration,
    pub checkpoint: Duration,
    pub max_deltas: usize,
}

/// This machine's host name (empty when it cannot be read).
pub(crate) fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

impl ClusterSection {
    fn validate(&self) -> Result<ClusterConfig, InvalidConfig> {
        if let Some(p) = self.partitions.filter(|p| !(1..=1024).contains(p)) {
            // 0 was the unpartitioned runtime, which is gone.
            return Err(InvalidConfig::OutOfRange {
                section: "cluster",
                key: "partitions",
                bound: "1..=1024 (0, no partitions, is gone: see docs/operations.md)",
                got: p.into(),
            });
        }
        let name_ok = |t: &str| {
            !t.is_empty()
                && t.len() <= 64
                && t.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
        };
        let instance = if self.instance.is_empty() {
            let host: String = host_name()
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' {
                        c
                    } else {
                        '_'
                    }
                })
                .take(40)
                .collect();
            format!(
                "{}-{}",
                if host.is_empty() { "zhijian" } else { &host },
                std::process::id()
            )
        } else {
            self.instance.clone()
        };
        if !name_ok(&instance) {
            return Err(InvalidConfig::BadName {
                section: "cluster",
                key: "instance",
                value: instance,
                rule: "letters, digits, '-' and '_' only (at most 64)",
            });
        }
        if !name_ok(&self.bucket) {
            return Err(InvalidConfig::BadName {
                section: "cluster",
                key: "bucket",
                value: self.bucket.clone(),
                rule: "letters, digits, '-' and '_' only",
            });
        }
        if !(1..=5).contains(&self.replicas) {
            return Err(InvalidConfig::OutOfRange {
                section: "cluster",
                key: "replicas",
                bound: "1..=5",
                got: self.replicas as u64,
            });
        }
        if self.heartbeat_ms == 0 || self.lease_ms < 3 * self.heartbeat_ms {
            return Err(InvalidConfig::LeaseTooShort {
                lease_ms: self.lease_ms,
                heartbeat_ms: self.heartbeat_ms,
            });
        }
        if self.checkpoint_ms == 0 {
            return Err(InvalidConfig::Bound {
                section: "cluster",
                key: "checkpoint_ms",
                bound: ">= 1",
            });
        }
        Ok(ClusterConfig {
            partitions: self.partitions,
            instance,
            bucket: self.bucket.clone(),
            replicas: self.replicas,
            lease: Duration::from_millis(self.lease_ms),
            heartbeat: Duration::from_millis(self.heartbeat_ms),
            checkpoint: Duration::from_millis(self.checkpoint_ms),
            max_deltas: self.max_deltas,
        })
    }
}

/// The raw file, as written.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    pub nats: NatsConfig,
    pub streams: StreamsConfig,
    pub engine: EngineSection,
    pub daemon: DaemonSection,
    pub limits: LimitsSection,
    pub metrics: MetricsSection,
    pub console: ConsoleSection,
    pub shadow: ShadowSection,
    pub cluster: ClusterSection,
    pub log: LogSection,
}

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub nats: NatsSettings,
    pub streams: StreamsConfig,
    pub lexicons: PathBuf,
    pub idle_timeout: Duration,
    pub tombstone_ttl: Duration,
    pub reload_poll: Option<Duration>,
    pub reload_requires_tests: bool,
    pub shutdown_grace: Duration,
    pub publish_window: usize,
    pub watchdog: Duration,
    pub excerpt_chars: usize,
    pub max_open_conversations: usize,
    pub max_segments_per_conversation: u32,
    pub max_text_bytes: usize,
    pub metrics_addr: SocketAddr,
    pub max_tenants: usize,
    /// `None`: the console is off.
    pub console: Option<ConsoleConfig>,
    /// Shadow mode, when a candidate lexicon is configured.
    pub shadow: Option<ShadowConfig>,
    /// Partitions, leases and checkpoints.
    pub cluster: ClusterConfig,
    /// Keys set in the file that no longer do anything (warned at start).
    pub deprecated: Vec<&'static str>,
    pub log_json: bool,
    pub log_level: String,
}

/// The TOML value of an environment variable for `[section] key`: the
/// first reading of the text (an integer, a boolean, the text itself) that
/// the key takes. Booleans may also be written 1/0, yes/no, on/off.
fn env_value(section: &str, key: &str, v: &str) -> Result<toml::Value, EnvError> {
    let trimmed = v.trim();
    let mut readings = Vec::new();
    if let Ok(i) = trimmed.parse::<i64>() {
        readings.push(toml::Value::Integer(i));
    }
    match trimmed.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => readings.push(toml::Value::Boolean(true)),
        "0" | "false" | "no" | "off" => readings.push(toml::Value::Boolean(false)),
        _ => {}
    }
    readings.push(toml::Value::String(v.to_string()));
    let mut first_error = None;
    for reading in readings {
        let mut one = toml::Table::new();
        one.insert(key.to_string(), reading.clone());
        let mut probe = toml::Table::new();
        probe.insert(section.to_string(), toml::Value::Table(one));
        match RawConfig::deserialize(probe) {
            Ok(_) => return Ok(reading),
            Err(e) => {
                if e.message().trim().starts_with("unknown field") {
                    return Err(EnvError::UnknownKey {
                        section: section.to_string(),
                        key: key.to_string(),
                    });
                }
                first_error.get_or_insert(Box::new(e));
            }
        }
    }
    Err(EnvError::Value {
        section: section.to_string(),
        key: key.to_string(),
        value: v.to_string(),
        source: first_error,
    })
}

/// Flags that override the file and the environment.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub nats_url: Option<String>,
    pub lexicons: Option<PathBuf>,
    pub metrics_addr: Option<String>,
    pub log_format: Option<String>,
}

impl RawConfig {
    pub fn parse(text: &str) -> Result<RawConfig, ParseError> {
        toml::from_str(text).map_err(|source| {
            let line = source
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            ParseError::Toml {
                line,
                source: Box::new(source),
            }
        })
    }

    /// Reads a config file (`None`: defaults only) and applies the
    /// `ZHIJIAN_<SECTION>_<KEY>` variables of `vars` over it.
    pub fn load_with_env<I: IntoIterator<Item = (String, String)>>(
        path: Option<&Path>,
        vars: I,
    ) -> Result<RawConfig, ParseError> {
        let text = match path {
            None => String::new(),
            Some(path) => std::fs::read_to_string(path).map_err(|source| ParseError::Read {
                path: path.to_path_buf(),
                source,
            })?,
        };
        RawConfig::parse_with_env(&text, vars).map_err(|e| match path {
            Some(path) if !matches!(e, ParseError::Env { .. }) => ParseError::InFile {
                path: path.to_path_buf(),
                source: Box::new(e),
            },
            _ => e,
        })
    }

    /// Parses a config file's text with the `ZHIJIAN_<SECTION>_<KEY>`
    /// variables of `vars` set over it: each variable becomes the key's
    /// TOML value (of the type the key takes), and file and variables are
    /// deserialized together, so the keys and their types are defined once,
    /// by the sections' structs.
    pub fn parse_with_env<I: IntoIterator<Item = (String, String)>>(
        text: &str,
        vars: I,
    ) -> Result<RawConfig, ParseError> {
        // The file alone first: its errors name their line.
        let from_file = RawConfig::parse(text)?;
        let mut table: toml::Table = toml::from_str(text).map_err(|source| ParseError::Toml {
            line: None,
            source: Box::new(source),
        })?;
        let mut any = false;
        for (name, value) in vars {
            let Some(rest) = name.strip_prefix("ZHIJIAN_") else {
                continue;
            };
            let rest = rest.to_ascii_lowercase();
            let Some((section, key)) = rest.split_once('_') else {
                return Err(ParseError::Env {
                    name,
                    source: EnvError::Shape,
                });
            };
            let value = match env_value(section, key, &value) {
                Ok(value) => value,
                Err(source) => return Err(ParseError::Env { name, source }),
            };
            let section = table
                .entry(section)
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if let toml::Value::Table(section) = section {
                section.insert(key.to_string(), value);
            }
            any = true;
        }
        if !any {
            return Ok(from_file);
        }
        RawConfig::deserialize(table).map_err(|source| ParseError::Toml {
            line: None,
            source: Box::new(source),
        })
    }
    /// Validates into the config the daemon uses.
    pub fn validate(mut self, flags: &Overrides) -> Result<Config, InvalidConfig> {
        if let Some(u) = &flags.nats_url {
            self.nats.url = u.clone();
        }
        if let Some(l) = &flags.lexicons {
            self.engine.lexicons = l.clone();
        }
        if let Some(a) = &flags.metrics_addr {
            self.metrics.addr = a.clone();
        }
        if let Some(f) = &flags.log_format {
            self.log.format = f.clone();
        }
        let metrics_addr: SocketAddr =
            self.metrics
                .addr
                .parse()
                .map_err(|_| InvalidConfig::NotHostPort {
                    section: "metrics",
                    addr: self.metrics.addr.clone(),
                })?;
        let log_json = match self.log.format.as_str() {
            "text" => false,
            "json" => true,
            other => return Err(InvalidConfig::LogFormat(other.to_string())),
        };
        if self.engine.idle_timeout_s == 0 {
            return Err(InvalidConfig::Bound {
                section: "engine",
                key: "idle_timeout_s",
                bound: "> 0",
            });
        }
        if self.daemon.publish_window == 0 || self.daemon.publish_window > 4096 {
            return Err(InvalidConfig::OutOfRange {
                section: "daemon",
                key: "publish_window",
                bound: "1..=4096",
                got: self.daemon.publish_window as u64,
            });
        }
        if self.daemon.watchdog_s == 0 {
            return Err(InvalidConfig::Bound {
                section: "daemon",
                key: "watchdog_s",
                bound: "> 0",
            });
        }
        let l = &self.limits;
        if l.excerpt_chars < 16 {
            return Err(InvalidConfig::Bound {
                section: "limits",
                key: "excerpt_chars",
                bound: ">= 16",
            });
        }
        if l.max_open_conversations == 0 {
            return Err(InvalidConfig::Bound {
                section: "limits",
                key: "max_open_conversations",
                bound: ">= 1",
            });
        }
        if l.max_segments_per_conversation == 0 {
            return Err(InvalidConfig::Bound {
                section: "limits",
                key: "max_segments_per_conversation",
                bound: ">= 1",
            });
        }
        if !(1..=1024 * 1024).contains(&l.max_text_bytes) {
            return Err(InvalidConfig::OutOfRange {
                section: "limits",
                key: "max_text_bytes",
                bound: "1..=1048576",
                got: l.max_text_bytes as u64,
            });
        }
        let nats = self.nats.clone().validate()?;
        let st = &self.streams;
        for (key, token) in [
            ("input_prefix", &st.input_prefix),
            ("violations_prefix", &st.violations_prefix),
            ("summaries_prefix", &st.summaries_prefix),
            ("deadletter_subject", &st.deadletter_subject),
        ] {
            if !crate::subject::token::is_literal_subject(token) {
                return Err(InvalidConfig::NotSubject {
                    key,
                    value: token.clone(),
                });
            }
        }
        let console = self.console.validate()?;
        let shadow = if self.shadow.lexicons.trim().is_empty() {
            None
        } else {
            if !crate::subject::token::is_token(&self.shadow.prefix)
                || !crate::subject::token::is_token(&self.shadow.stream)
            {
                return Err(InvalidConfig::ShadowTokens);
            }
            let live = [
                &self.streams.input_prefix,
                &self.streams.violations_prefix,
                &self.streams.summaries_prefix,
            ];
            if live
                .iter()
                .any(|p| p.split('.').next() == Some(self.shadow.prefix.as_str()))
            {
                return Err(InvalidConfig::ShadowPrefix(self.shadow.prefix.clone()));
            }
            Some(ShadowConfig {
                lexicons: PathBuf::from(self.shadow.lexicons.trim()),
                prefix: self.shadow.prefix.clone(),
                stream: self.shadow.stream.clone(),
            })
        };
        let cluster = self.cluster.validate()?;
        let deprecated = [
            ("[engine] shards", self.engine.shards.is_some()),
            (
                "[daemon] publish_attempts",
                self.daemon.publish_attempts.is_some(),
            ),
            ("[daemon] nak_delay_ms", self.daemon.nak_delay_ms.is_some()),
            (
                "[daemon] stall_timeout_s",
                self.daemon.stall_timeout_s.is_some(),
            ),
            ("[daemon] shard_queue", self.daemon.shard_queue.is_some()),
            (
                "[streams] max_ack_pending",
                self.streams.max_ack_pending.is_some(),
            ),
        ]
        .into_iter()
        .filter_map(|(key, set)| set.then_some(key))
        .collect();
        Ok(Config {
            shadow,
            cluster,
            deprecated,
            lexicons: self.engine.lexicons.clone(),
            idle_timeout: Duration::from_secs(self.engine.idle_timeout_s),
            tombstone_ttl: Duration::from_secs(self.engine.tombstone_ttl_s),
            reload_poll: (self.engine.reload_poll_ms > 0)
                .then(|| Duration::from_millis(self.engine.reload_poll_ms)),
            reload_requires_tests: self.engine.reload_requires_tests,
            shutdown_grace: Duration::from_secs(self.daemon.shutdown_grace_s),
            publish_window: self.daemon.publish_window,
            watchdog: Duration::from_secs(self.daemon.watchdog_s),
            excerpt_chars: self.limits.excerpt_chars,
            max_open_conversations: self.limits.max_open_conversations,
            max_segments_per_conversation: self.limits.max_segments_per_conversation,
            max_text_bytes: self.limits.max_text_bytes,
            metrics_addr,
            max_tenants: self.metrics.max_tenants,
            console,
            log_json,
            log_level: self.log.level,
            nats,
            streams: self.streams,
        })
    }
}

impl ConsoleSection {
    fn validate(&self) -> Result<Option<ConsoleConfig>, InvalidConfig> {
        if !self.enabled {
            return Ok(None);
        }
        let addr: SocketAddr = self.addr.parse().map_err(|_| InvalidConfig::NotHostPort {
            section: "console",
            addr: self.addr.clone(),
        })?;
        let basic = match (&self.user, &self.password) {
            (Some(u), Some(p)) => Some((u.clone(), p.clone())),
            (None, None) => None,
            _ => {
                return Err(InvalidConfig::GoTogether {
                    section: "console",
                    first: "user",
                    second: "password",
                });
            }
        };
        if self
            .token
            .as_ref()
            .is_some_and(|t| t.0.is_empty() || !t.0.bytes().all(|b| b.is_ascii_graphic()))
        {
            return Err(InvalidConfig::ConsoleToken);
        }
        if !addr.ip().is_loopback() && self.token.is_none() && basic.is_none() {
            return Err(InvalidConfig::OpenConsole(addr));
        }
        if self.history == 0 || self.history > 1_000_000 {
            return Err(InvalidConfig::Bound {
                section: "console",
                key: "history",
                bound: "1..=1000000 events",
            });
        }
        Ok(Some(ConsoleConfig {
            addr,
            token: self.token.clone(),
            basic,
            mask_digits: self.mask_digits,
            history: self.history,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate() {
        let c = RawConfig::default()
            .validate(&Overrides::default())
            .expect("valid");
        assert_eq!(c.metrics_addr.to_string(), "127.0.0.1:9464");
        assert_eq!(c.idle_timeout, Duration::from_secs(300));
        assert!(c.streams.create);
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
        let err =
            RawConfig::load_with_env(Some(&file), [("ZHIJIAN_BIN".to_string(), "x".to_string())])
                .expect_err("the file first");
        assert!(matches!(err, ParseError::InFile { .. }), "{err:?}");
        std::fs::write(&file, "").expect("write");
        let err =
            RawConfig::load_with_env(Some(&file), [("ZHIJIAN_BIN".to_string(), "x".to_string())])
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
}
