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
pub(crate) struct Ctx {
    pub(crate) shared: Arc<Shared>,
    pub(crate) cluster: ClusterConfig,
    pub(crate) partitions: u32,
    pub(crate) kv: kv::Store,
    /// The input stream through the output connection (JetStream API:
    /// raw reads, deletes, consumer info).
    pub(crate) input: jetstream::stream::Stream,
    /// JetStream on the input connection: the partitions' consumers.
    pub(crate) input_js: jetstream::Context,
    pub(crate) input_link: Link,
    pub(crate) output_link: Link,
    pub(crate) scanners: watch::Receiver<Arc<Scanners>>,
    /// The candidate lexicon in shadow mode.
    pub(crate) shadow: Option<watch::Receiver<Arc<Scanners>>>,
    pub(crate) lexicons: Arc<LexiconStore>,
    pub(crate) clock: Instant,
    /// This process's run (see `membership::LeaseValue::run`).
    pub(crate) run: u64,
    /// When the input stream was created (see `checkpoint`).
    pub(crate) stream_created: String,
}

impl Ctx {
    /// Milliseconds since this process started (the clock leases and
    /// checkpoints are timed by).
    pub(crate) fn now(&self) -> u64 {
        self.clock.elapsed().as_millis() as u64
    }
}
