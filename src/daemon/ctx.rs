//! What the partitions' coordinator ([`super::membership`]) and their
//! workers ([`super::worker`]) share: one per process.

use super::Shared;
use super::conn::Link;
use super::lexicons::LexiconStore;
use crate::config::ClusterConfig;
use crate::matcher::Scanners;
use async_nats::jetstream::{self, kv};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::watch;

/// Everything the coordinator and the workers share.
pub struct Ctx {
    pub shared: Arc<Shared>,
    pub cluster: ClusterConfig,
    pub partitions: u32,
    pub kv: kv::Store,
    /// The input stream through the output connection (JetStream API:
    /// raw reads, deletes, consumer info).
    pub input: jetstream::stream::Stream,
    /// JetStream on the input connection: the partitions' consumers.
    pub input_js: jetstream::Context,
    pub input_link: Link,
    pub output_link: Link,
    pub scanners: watch::Receiver<Arc<Scanners>>,
    /// The candidate lexicon in shadow mode.
    pub shadow: Option<watch::Receiver<Arc<Scanners>>>,
    pub lexicons: Arc<LexiconStore>,
    pub clock: Instant,
    /// This process's run (see `membership::LeaseValue::run`).
    pub run: u64,
    /// When the input stream was created (see `checkpoint`).
    pub stream_created: String,
}

impl Ctx {
    /// Milliseconds since this process started (the clock leases and
    /// checkpoints are timed by).
    pub(crate) fn now(&self) -> u64 {
        self.clock.elapsed().as_millis() as u64
    }
}
