//! `[cluster]`: partitions, leases, heartbeats and checkpoints.

use super::*;

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
    pub(crate) fn validate(&self) -> Result<ClusterConfig, InvalidConfig> {
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
