//! The sections of the file other than `[nats]` and `[cluster]`, with
//! their defaults.

use super::*;

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
    /// Bad input is republished here (masked, see `[privacy]`), the reason
    /// in a header.
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
    /// Retention of the streams this daemon creates, in hours (0: kept
    /// until deleted by hand). Transcripts are raw personal data: kept
    /// long enough to replay after an outage, then gone. Set when a stream
    /// is created; an existing stream keeps its own.
    pub input_max_age_h: u64,
    /// Violations and summaries (masked, see `[privacy]`).
    pub output_max_age_h: u64,
    /// Dead letters, and inputs no partition can take.
    pub deadletter_max_age_h: u64,
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
            input_max_age_h: 7 * 24,
            output_max_age_h: 30 * 24,
            deadletter_max_age_h: 14 * 24,
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

/// `[privacy]`: personal numbers (mobile, identity card, bank card) found
/// in a segment are masked in every event (all but the last four digits
/// become `*`). The raw text is an explicit opt-in, for every tenant or for
/// some.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrivacySection {
    /// Every tenant's events carry the text as said.
    pub raw_events: bool,
    /// Tenants whose events carry the text as said.
    pub raw_tenants: Vec<String>,
    /// Dead letters keep the payload as it came; by default their text is
    /// masked, and a payload that is not UTF-8 is replaced by its length
    /// and digest.
    pub deadletter_raw: bool,
}
