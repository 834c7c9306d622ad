//! What `/readyz` answers, and the watchdog behind `zhijian_output_stalled`.
//!
//! Ready means judging: every one of these holds.
//!
//! - the lexicon is loaded;
//! - the output connection is up and NATS answers its probe, and the input
//!   connection is up (see `conn`);
//! - this instance is a member of the cluster (its last heartbeat was
//!   written) and holds every partition the assignment gives it, each one's
//!   checkpoint loaded and its consumer reading. An instance the assignment
//!   gives nothing (more instances than partitions) is ready once it is a
//!   member: a hot standby, which takes partitions over when a member
//!   leaves;
//! - no event has waited longer than `[daemon] watchdog_s` to be stored
//!   (a trickle is a stall too: what counts is the age of the oldest event
//!   not yet stored, not whether anything moved);
//! - it is not shutting down.

use crate::metrics::Metrics;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// One held partition as the health checks see it; shared with its worker.
#[derive(Debug, Default)]
pub(crate) struct PartitionHealth {
    /// The checkpoint is loaded and the consumer reads.
    pub judging: AtomicBool,
    /// Milliseconds (on [`Health::clock`]) since which the oldest event not
    /// yet stored waits; 0: none waits.
    pub oldest_unstored_ms: AtomicU64,
}

/// The daemon's state, as `/readyz` and the watchdog read it.
#[derive(Debug)]
pub(crate) struct Health {
    pub lexicon_loaded: AtomicBool,
    /// NATS answered the last probe (see `conn::probe`).
    pub probe_ok: Arc<AtomicBool>,
    pub output: super::conn::Link,
    pub input: super::conn::Link,
    /// The last heartbeat wrote this member's key.
    pub member: AtomicBool,
    /// Every partition the assignment gives this instance is held and
    /// judging (set by the coordinator each round).
    pub partitions_ready: AtomicBool,
    pub stopping: AtomicBool,
    pub output_stalled: AtomicBool,
    /// The held partitions, registered by the coordinator.
    partitions: Mutex<HashMap<u32, Arc<PartitionHealth>>>,
    clock: Instant,
}

impl Health {
    pub(crate) fn new(
        probe_ok: Arc<AtomicBool>,
        output: super::conn::Link,
        input: super::conn::Link,
    ) -> Health {
        Health {
            lexicon_loaded: AtomicBool::new(false),
            probe_ok,
            output,
            input,
            member: AtomicBool::new(false),
            partitions_ready: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            output_stalled: AtomicBool::new(false),
            partitions: Mutex::new(HashMap::new()),
            clock: Instant::now(),
        }
    }

    /// Milliseconds on the health clock (never 0: 0 means "none").
    pub(crate) fn now_ms(&self) -> u64 {
        self.clock.elapsed().as_millis() as u64 + 1
    }

    /// A partition taken: its worker reports through the returned handle.
    pub(crate) fn hold(&self, p: u32) -> Arc<PartitionHealth> {
        let h = Arc::new(PartitionHealth::default());
        // A std Mutex: held for a map operation, never across an await.
        if let Ok(mut m) = self.partitions.lock() {
            m.insert(p, Arc::clone(&h));
        }
        h
    }

    pub(crate) fn release(&self, p: u32) {
        if let Ok(mut m) = self.partitions.lock() {
            m.remove(&p);
        }
    }

    /// Whether each of `assigned` is held and judging.
    pub(crate) fn judging_all(&self, assigned: &[u32]) -> bool {
        let Ok(m) = self.partitions.lock() else {
            return false;
        };
        assigned
            .iter()
            .all(|p| m.get(p).is_some_and(|h| h.judging.load(Ordering::Relaxed)))
    }

    /// The age of the oldest event not yet stored, over every held
    /// partition.
    fn oldest_unstored(&self) -> Duration {
        let now = self.now_ms();
        let Ok(m) = self.partitions.lock() else {
            return Duration::ZERO;
        };
        let oldest = m
            .values()
            .map(|h| h.oldest_unstored_ms.load(Ordering::Relaxed))
            .filter(|&t| t > 0)
            .min();
        oldest.map_or(Duration::ZERO, |t| {
            Duration::from_millis(now.saturating_sub(t))
        })
    }

    /// What `/readyz` checks, by name, in order.
    pub(crate) fn checks(&self) -> [(&'static str, bool); 7] {
        let r = Ordering::Relaxed;
        [
            ("lexicon_loaded", self.lexicon_loaded.load(r)),
            (
                "nats_connected",
                self.output.state().connected && self.probe_ok.load(r),
            ),
            ("input_connected", self.input.state().connected),
            ("member", self.member.load(r)),
            ("partitions_judging", self.partitions_ready.load(r)),
            ("output_moving", !self.output_stalled.load(r)),
            ("running", !self.stopping.load(r)),
        ]
    }
}

/// Sets `output_stalled` while an event has waited longer than `limit` to
/// be stored: a daemon that judges but cannot store must be seen (and, in
/// Kubernetes, taken out of service), not look healthy.
pub(super) async fn watchdog(
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    limit: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tick.tick() => {}
        }
        let age = health.oldest_unstored();
        metrics.output_oldest_unstored.set(age.as_secs_f64());
        let stalled = age >= limit;
        let was = health.output_stalled.swap(stalled, Ordering::Relaxed);
        metrics.output_stalled.set(i64::from(stalled));
        if stalled && !was {
            metrics.output_stalls.inc();
            tracing::error!(
                waiting_s = age.as_secs_f64(),
                "output stalled: an event has waited {}s to be stored; /readyz fails until it is",
                age.as_secs()
            );
        } else if was && !stalled {
            tracing::info!("output moving again");
        }
    }
}
