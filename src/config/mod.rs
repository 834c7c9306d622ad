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

mod cluster;
mod env;
mod errors;
mod nats;
mod sections;

pub use cluster::*;
use env::*;
pub use errors::*;
pub use nats::*;
pub use sections::*;

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
    pub privacy: PrivacySection,
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
    /// Whose events carry personal numbers in clear (`[privacy]`).
    pub privacy: crate::privacy::Privacy,
    /// Dead letters keep raw payloads (`[privacy] deadletter_raw`).
    pub deadletter_raw: bool,
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
            if !zhijian_core::token::is_literal_subject(token) {
                return Err(InvalidConfig::NotSubject {
                    key,
                    value: token.clone(),
                });
            }
        }
        // JetStream takes no retention shorter than the de-duplication
        // window.
        for (key, hours) in [
            ("input_max_age_h", st.input_max_age_h),
            ("output_max_age_h", st.output_max_age_h),
            ("deadletter_max_age_h", st.deadletter_max_age_h),
        ] {
            if hours != 0 && hours.saturating_mul(3600) < st.duplicate_window_s {
                return Err(InvalidConfig::Bound {
                    section: "streams",
                    key,
                    bound: "0 (kept) or at least duplicate_window_s in hours",
                });
            }
        }
        let console = self.console.validate()?;
        let shadow = if self.shadow.lexicons.trim().is_empty() {
            None
        } else {
            if !zhijian_core::token::is_token(&self.shadow.prefix)
                || !zhijian_core::token::is_token(&self.shadow.stream)
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
            deadletter_raw: self.privacy.deadletter_raw,
            privacy: crate::privacy::Privacy {
                raw_events: self.privacy.raw_events,
                raw_tenants: self.privacy.raw_tenants.into_iter().collect(),
            },
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
mod tests;
