//! `zhijian run`: the streaming daemon. NATS JetStream in, violations and
//! summaries out, Prometheus metrics and health over HTTP.
//!
//! One runtime, whatever the number of instances: the input stream is
//! partitioned by conversation (NATS computes the partition), each
//! partition is judged by one instance at a time under a lease, and a
//! single instance is a cluster of one. A segment goes through:
//!
//! ```text
//! TRANSCRIPTS ─(input connection: one consumer per held partition)─▶ worker ─▶ judge (engine)
//!   ─▶ window (publish, acks awaited together) ─▶ VIOLATIONS / dead letters (output connection)
//!   ─▶ stored-through seq ─▶ checkpoint (cluster bucket) ─▶ the next holder starts there
//! ```
//!
//! | file | job |
//! |---|---|
//! | `membership` | members, leases, who holds which partition; the coordinator loop |
//! | `worker` | one partition: consume, judge, publish, checkpoint |
//! | `window` | the publish window: acks awaited together, lost ones sent again |
//! | `checkpoint` | a partition's open conversations in the bucket, written once their events are stored |
//! | `replay` | what an earlier holder stored after a checkpoint, so a replay stores nothing twice |
//! | `judge` | the engine call, and shadow mode beside it |
//! | `deadletter`, `poison` | bad input: dead letters; subjects the client cannot receive |
//! | `conn`, `health`, `http` | connections, what `/readyz` means, the HTTP endpoints |
//! | `lexicons` | hot reload, and one lexicon version per conversation across instances |
//! | `setup` | the streams and the bucket |
//!
//! Nothing accepted is lost: a checkpoint covers an input only once every
//! event of it is stored, and a new holder replays from the checkpoint.
//! Nothing is stored twice: events carry ids (`Nats-Msg-Id`), and a new
//! holder reads what was stored after the checkpoint before replaying (see
//! `replay`), so this holds beyond the output stream's duplicate window.
//!
//! Shutdown (SIGTERM/SIGINT or the `shutdown` future of [`run`]), all within
//! `shutdown_grace_s`, whatever NATS does: workers stop reading, store what
//! they hold and checkpoint (by 75 % of it); leases are given back and the
//! member leaves (by 85 %); the output is flushed and the connections
//! drained with what is left. What could not be saved is named in one log
//! line per partition; the next holder replays it.

mod checkpoint;
pub(crate) mod conn;
mod ctx;
mod deadletter;
mod health;
mod http;
mod judge;
mod lease;
mod lexicons;
mod membership;
mod poison;
mod reader;
mod replay;
mod setup;
mod window;
mod worker;

use crate::config::Config;
use crate::engine::EngineConfig;
use crate::event::Event;
use crate::matcher::{LoadError, Scanners};
use crate::metrics::Metrics;
use crate::nats_conn::{self, ConnectError};
use crate::subject;
use async_nats::HeaderMap;
use async_nats::jetstream;
use bytes::Bytes;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

pub use membership::{Unclean, assignment, partitions_of};
pub use setup::{Setup, SetupError, setup};

/// Why the daemon could not start or stopped badly.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Configuration or lexicon: exit code 2.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// An unclean shutdown: exit code 1.
    #[error("unclean shutdown: {0}")]
    Unclean(#[from] membership::Unclean),
    /// The streams or buckets: exit code 1.
    #[error(transparent)]
    Setup(#[from] setup::SetupError),
    /// The metrics or console listener: exit code 1.
    #[error(transparent)]
    Listen(#[from] crate::listen::ListenError),
    /// No usable NATS server: exit code 1.
    #[error(transparent)]
    Nats(#[from] ConnectError),
}

/// A lexicon the daemon cannot start with.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Lexicon(#[from] LoadError),
    #[error("[shadow] lexicons: {0}")]
    ShadowLexicon(#[source] LoadError),
}

/// An output event that does not serialize (a bug, not bad input).
#[derive(Debug, thiserror::Error)]
#[error("cannot serialize event {id}: {source}")]
pub(crate) struct EncodeError {
    id: String,
    source: serde_json::Error,
}

/// What every task shares.
pub(crate) struct Shared {
    pub config: Config,
    pub metrics: Arc<Metrics>,
    /// JetStream on the output connection.
    pub js: jetstream::Context,
    /// The server's largest message (dead letters are cut to fit).
    pub max_payload: usize,
    pub health: Arc<health::Health>,
}

impl Shared {
    /// Subject, headers (`Nats-Msg-Id` = event id) and payload of an event.
    pub(crate) fn encode(&self, event: &Event) -> Result<(String, HeaderMap, Bytes), EncodeError> {
        let s = &self.config.streams;
        let subject = match event {
            Event::Violation(v) => subject::violation(s, &v.tenant, &v.category),
            Event::Summary(x) => subject::summary(s, &x.tenant),
        };
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", event.id());
        headers.insert("Zhijian-Contract", crate::event::CONTRACT_VERSION);
        // CloudEvents 1.0, NATS protocol binding, binary mode: the
        // attributes in `ce-` headers, the payload unchanged.
        let (kind, tenant) = match event {
            Event::Violation(v) => ("io.zhijian.violation.v1", v.tenant.as_str()),
            Event::Summary(x) => ("io.zhijian.summary.v1", x.tenant.as_str()),
        };
        headers.insert("ce-specversion", "1.0");
        headers.insert("ce-id", event.id());
        headers.insert("ce-type", kind);
        headers.insert("ce-source", format!("/zhijian/{tenant}").as_str());
        headers.insert("content-type", "application/json");
        // Our own event types serialize; were one not to, nothing is sent
        // (never an empty payload) and the caller treats it as a failure.
        let payload = serde_json::to_vec(event).map_err(|source| EncodeError {
            id: event.id().to_string(),
            source,
        })?;
        Ok((subject, headers, Bytes::from(payload)))
    }
}

/// Wall-clock milliseconds since the epoch.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Removes the keys matching `keys` (a key, or a pattern with `*`/`>`) from
/// a bucket for good: a purge of the bucket's stream by subject, which
/// leaves no marker behind (a key-value purge or delete leaves one per key
/// for ever, and every listing of the keys reads them all).
pub(crate) async fn remove_keys(
    kv: &async_nats::jetstream::kv::Store,
    keys: &str,
) -> Result<(), async_nats::jetstream::stream::PurgeError> {
    kv.stream
        .purge()
        .filter(format!("{}{keys}", kv.prefix))
        .await
        .map(|_| ())
}

/// Says at start, in the log and in `/metrics`, whose events carry
/// personal numbers in clear (an opt-in; by default no one's).
fn report_privacy(privacy: &crate::privacy::Privacy, metrics: &Metrics) {
    if privacy.raw_events {
        tracing::warn!(
            "[privacy] raw_events: every tenant's events carry personal numbers in clear"
        );
        metrics.privacy_raw_tenants.with_label_values(&["*"]).set(1);
    }
    for tenant in &privacy.raw_tenants {
        tracing::warn!(%tenant, "[privacy] raw_tenants: this tenant's events carry personal numbers in clear");
        metrics
            .privacy_raw_tenants
            .with_label_values(&[tenant])
            .set(1);
    }
}

/// The engine settings of the configuration, for an engine holding at most
/// `max_open` open conversations (a partition's share).
pub(crate) fn engine_config(config: &Config, max_open: usize) -> EngineConfig {
    EngineConfig {
        tombstone_ttl_ms: config.tombstone_ttl.as_millis() as u64,
        excerpt_chars: config.excerpt_chars,
        max_open: max_open.max(1),
        max_segments: config.max_segments_per_conversation,
        privacy: config.privacy.clone(),
    }
}

/// Runs the daemon until `shutdown` resolves (or SIGTERM/SIGINT when started
/// from the command line, which passes a signal future).
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), DaemonError> {
    let metrics = Arc::new(Metrics::with_max_tenants(config.max_tenants));
    report_privacy(&config.privacy, &metrics);
    for key in &config.deprecated {
        tracing::warn!(
            key,
            "configuration key no longer used (one runtime: partitions); remove it"
        );
    }
    let scanners = Arc::new(Scanners::load(&config.lexicons).map_err(ConfigError::from)?);
    metrics.set_lexicon(scanners.base().version());
    metrics.set_categories(&scanners);
    lexicons::log_lexicons(&scanners, &config.lexicons, "lexicon loaded");
    // Shadow mode: the candidate lexicon, loaded like the live one.
    let shadow_scanners = match &config.shadow {
        Some(sh) => {
            let s = Arc::new(Scanners::load(&sh.lexicons).map_err(ConfigError::ShadowLexicon)?);
            lexicons::log_lexicons(&s, &sh.lexicons, "shadow lexicon loaded");
            Some(s)
        }
        None => None,
    };

    let probe_ok = Arc::new(AtomicBool::new(true));
    let (output_tx, output_link) = conn::link();
    let (input_tx, input_link) = conn::link();
    let console_link = config.console.as_ref().map(|_| conn::link());
    let health = Arc::new(health::Health::new(
        Arc::clone(&probe_ok),
        output_link.clone(),
        input_link.clone(),
    ));
    health.lexicon_loaded.store(true, Ordering::Relaxed);
    let http = http::serve(
        config.metrics_addr,
        Arc::clone(&metrics),
        Arc::clone(&health),
    )
    .await?;
    tracing::info!(addr = %http.addr, "metrics on /metrics, health on /healthz and /readyz");
    let (console_tx, console_link) = match console_link {
        Some((tx, link)) => (Some(tx), Some(link)),
        None => (None, None),
    };
    let links = conn::LinkSenders {
        output: output_tx,
        input: input_tx,
        console: console_tx,
    };
    let conns = conn::connect(&config, &metrics, &probe_ok, links).await?;
    let version = nats_conn::check_server(&conns.output)?;

    let setup = setup::setup(&conns.output, &config).await?;
    tracing::info!(
        server = %version,
        url = %nats_conn::redact_url(&config.nats.url),
        input = %config.streams.input_stream,
        partitions = setup.partitions,
        "JetStream ready"
    );
    let console = match (config.console.clone(), &conns.console, console_link) {
        (Some(c), Some(client), Some(link)) => {
            let console = crate::console::start(
                &config,
                c,
                jetstream::new(client.clone()),
                link,
                Arc::clone(&metrics),
            )
            .await?;
            tracing::info!(url = %format!("http://{}/", console.addr), "console for QA supervisors");
            Some(console)
        }
        _ => None,
    };

    let shared = Arc::new(Shared {
        config: config.clone(),
        metrics: Arc::clone(&metrics),
        js: setup.js.clone(),
        max_payload: conns.output.server_info().max_payload,
        health: Arc::clone(&health),
    });
    let store = Arc::new(lexicons::LexiconStore::new(
        setup.kv.clone(),
        Arc::clone(&metrics),
    ));
    store.publish(&config.lexicons, &scanners).await;

    let (stop_tx, stop_rx) = watch::channel(false);
    let (scanner_tx, scanner_rx) = watch::channel(Arc::clone(&scanners));
    tokio::spawn(lexicons::reloader(
        config.lexicons.clone(),
        config.reload_poll,
        config.reload_requires_tests,
        scanner_tx,
        Some(Arc::clone(&metrics)),
        Some(Arc::clone(&store)),
        stop_rx.clone(),
    ));
    let shadow_rx = match (&config.shadow, shadow_scanners) {
        (Some(shadow), Some(s)) => {
            let (tx, rx) = watch::channel(s);
            tokio::spawn(lexicons::reloader(
                shadow.lexicons.clone(),
                config.reload_poll,
                config.reload_requires_tests,
                tx,
                None,
                None,
                stop_rx.clone(),
            ));
            Some(rx)
        }
        _ => None,
    };
    tokio::spawn(health::watchdog(
        Arc::clone(&health),
        Arc::clone(&metrics),
        config.watchdog,
        stop_rx.clone(),
    ));
    tokio::spawn(conn::probe(
        setup.js.clone(),
        output_link.clone(),
        probe_ok,
        Arc::clone(&metrics),
        stop_rx.clone(),
    ));
    let input_js = jetstream::new(conns.input.clone());
    if let Some(stream) = setup.unroutable.clone() {
        let name = stream.cached_info().config.name.clone();
        match input_js.get_stream(&name).await {
            Ok(s) => match s.get_consumer(&config.streams.consumer).await {
                Ok(consumer) => {
                    tokio::spawn(poison::unroutable(
                        Arc::clone(&shared),
                        stream,
                        consumer,
                        input_link.clone(),
                        stop_rx.clone(),
                    ));
                }
                Err(e) => {
                    tracing::warn!(stream = %name, error = %e, "cannot read the unroutable inputs")
                }
            },
            Err(e) => {
                tracing::warn!(stream = %name, error = %e, "cannot read the unroutable inputs")
            }
        }
    }

    let stream_created = setup
        .input
        .cached_info()
        .created
        .unix_timestamp_nanos()
        .to_string();
    let ctx = Arc::new(ctx::Ctx {
        shared: Arc::clone(&shared),
        cluster: config.cluster.clone(),
        partitions: setup.partitions,
        kv: setup.kv.clone(),
        input: setup.input.clone(),
        input_js,
        input_link,
        output_link,
        scanners: scanner_rx,
        shadow: shadow_rx,
        lexicons: store,
        clock: std::time::Instant::now(),
        run: now_ms() ^ (u64::from(std::process::id()) << 40),
        stream_created,
    });
    // The grace period counts from the shutdown signal, not from the start.
    let (signalled_tx, signalled_rx) = tokio::sync::oneshot::channel();
    let shutdown = async move {
        shutdown.await;
        let _ = signalled_tx.send(tokio::time::Instant::now());
    };
    let grace = config.shutdown_grace;
    let served = membership::serve(ctx, shutdown, grace).await;
    let signalled = signalled_rx
        .await
        .unwrap_or_else(|_| tokio::time::Instant::now());
    let _ = stop_tx.send(true);
    if let Err(e) = &served {
        for line in &e.0 {
            tracing::error!("not saved at shutdown: {line}");
        }
    }
    close(&conns, http, console, signalled + grace).await;
    tracing::info!(took_ms = signalled.elapsed().as_millis() as u64, "stopped");
    served.map_err(DaemonError::from)
}

/// Flushes what is sent and drains the connections (by `by`, whatever NATS
/// does), then stops the HTTP servers.
async fn close(
    conns: &conn::Connections,
    http: http::Http,
    console: Option<crate::console::Console>,
    by: tokio::time::Instant,
) {
    // Most of what is left for the flush; the rest for draining.
    let left = by.saturating_duration_since(tokio::time::Instant::now());
    let flush_by = tokio::time::Instant::now() + left.mul_f64(0.7);
    match tokio::time::timeout_at(flush_by, conns.output.flush()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "flush at shutdown failed"),
        Err(_) => tracing::warn!("flush at shutdown did not finish in time"),
    }
    let mut clients = vec![&conns.output, &conns.input];
    if let Some(c) = &conns.console {
        clients.push(c);
    }
    for c in clients {
        // Drain only starts the drain (completion is the Closed event): at
        // most what is left of the grace period either way.
        let left = by.saturating_duration_since(tokio::time::Instant::now());
        if tokio::time::timeout(left.min(Duration::from_secs(1)), c.drain())
            .await
            .is_err()
        {
            tracing::debug!("drain at shutdown did not start in time");
        }
    }
    http.stop();
    if let Some(c) = console {
        c.stop();
    }
}
