//! `zhijian run`: the streaming daemon. NATS JetStream in, violations and
//! summaries out, Prometheus metrics and health over HTTP.
//!
//! ```text
//! TRANSCRIPTS ─pull─▶ dispatcher ─(shard by tenant+conversation)─▶ shard 0..N ─▶ publisher ─▶ VIOLATIONS
//!                      │                                             │ (Engine)   (≤ window     summaries.*
//!                      └ stall check, consumer gauges                │             unacked)
//!                                                                    └ bad input ─▶ dead letter
//! lexicon dir / SIGHUP ─▶ reloader ─(watch: Arc<Scanner>)─▶ every shard
//! watchdog: work pending, nothing stored ─▶ /readyz 503
//! poison sweeper: undecodable subjects, by stream sequence ─▶ dead letter
//! ```
//!
//! Shutdown order (SIGTERM/SIGINT or the `shutdown` future of [`run`]),
//! all within `shutdown_grace_s`: stop pulling (at once, even with a full
//! shard queue); shards finish the messages already queued (publish, then
//! ack) until half the grace period, then abort (queued inputs Nak'ed,
//! unstored events stashed); open conversations and stashed events are
//! saved to the state bucket in chunks before a deadline; the connection is
//! drained. The next start restores them, so a rolling restart loses no
//! verdict. Messages are pulled in short batches, so normally none is left
//! behind in a client buffer at shutdown.
//!
//! One instance judges per consumer: it holds a lease in the state bucket
//! and a second instance waits as a standby (see `standby`); several that
//! share the work run with `[cluster]` (see `cluster`).
//!
//! A crash (SIGKILL, OOM) loses the in-memory state since the last start:
//! unacked messages are redelivered and every forbidden/filler violation is
//! still produced (de-duplicated by id), but a conversation whose segments
//! were all processed before the crash ends without a summary (its `end`
//! finds no state: `zhijian_input_events_total{outcome="unknown_end"}`).

pub mod cluster;
mod http;
pub(crate) mod nats;
mod poison;
pub(crate) mod shard;
mod standby;

use crate::config::{Config, StreamsConfig};
use crate::engine::{Engine, EngineConfig};
use crate::event::Event;
use crate::matcher::{LoadError, Scanners};
use crate::metrics::Metrics;
use crate::nats_conn::{self, ConnectError};
use crate::subject;
use async_nats::HeaderMap;
use async_nats::jetstream;
use bytes::Bytes;
use futures_util::StreamExt;
use shard::{Remains, SavedConversation, SavedStash, Shard, Stash, shard_of, shard_of_stash};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};
use tokio::sync::{mpsc, watch};

/// Why the daemon could not start or stopped badly.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Configuration or lexicon: exit code 2.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// An unclean shutdown: exit code 1.
    #[error("{0}")]
    Runtime(String),
    /// The streams, consumer or buckets: exit code 1.
    #[error(transparent)]
    Setup(#[from] nats::SetupError),
    /// The metrics or console listener: exit code 1.
    #[error(transparent)]
    Listen(#[from] crate::listen::ListenError),
    /// No usable NATS server: exit code 1.
    #[error(transparent)]
    Nats(#[from] ConnectError),
}

/// The shard of a message by its input subject.
pub(crate) fn shard_of_subject(subject: &str, streams: &StreamsConfig, shards: usize) -> usize {
    let (tenant, id) = subject::parse_input(streams, subject).unwrap_or(("", subject));
    shard_of(tenant, id, shards)
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

/// An event not sent, or sent and not stored.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SendError {
    #[error(transparent)]
    Encode(#[from] EncodeError),
    #[error(transparent)]
    Publish(#[from] jetstream::context::PublishError),
}

/// What every task shares.
pub(crate) struct Shared {
    pub config: Config,
    pub metrics: Arc<Metrics>,
    pub js: jetstream::Context,
    /// The server's largest message (dead letters are cut to fit).
    pub max_payload: usize,
    /// Input messages handed to shards and not yet handled.
    pub inputs_queued: AtomicI64,
    /// When output last moved (an event or dead letter stored, an input
    /// finished), in ms since the epoch: the watchdog's clock.
    pub last_progress_ms: AtomicU64,
}

impl Shared {
    /// Output moved: resets the watchdog.
    pub fn progress(&self) {
        self.last_progress_ms
            .store(shard::now_ms(), Ordering::Relaxed);
    }

    /// Publishes an event; its ack is still to come.
    pub async fn send(
        &self,
        event: &Event,
    ) -> Result<jetstream::context::PublishAckFuture, SendError> {
        let (subject, headers, payload) = self.encode(event)?;
        Ok(self
            .js
            .publish_with_headers(subject, headers, payload)
            .await?)
    }

    /// Subject, headers (`Nats-Msg-Id` = event id) and payload of an event.
    pub fn encode(&self, event: &Event) -> Result<(String, HeaderMap, Bytes), EncodeError> {
        let s = &self.config.streams;
        let subject = match event {
            Event::Violation(v) => subject::violation(s, &v.tenant, &v.category),
            Event::Summary(x) => subject::summary(s, &x.tenant),
        };
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", event.id());
        // Our own event types serialize; were one not to, nothing is sent
        // (never an empty payload) and the caller treats it as a failed
        // publish.
        let payload = serde_json::to_vec(event).map_err(|source| EncodeError {
            id: event.id().to_string(),
            source,
        })?;
        Ok((subject, headers, Bytes::from(payload)))
    }
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

/// The engine settings of the configuration, for an engine holding at most
/// `max_open` open conversations (a shard's or a partition's share).
pub(crate) fn engine_config(config: &Config, max_open: usize) -> EngineConfig {
    EngineConfig {
        tombstone_ttl_ms: config.tombstone_ttl.as_millis() as u64,
        excerpt_chars: config.excerpt_chars,
        max_open: max_open.max(1),
        max_segments: config.max_segments_per_conversation,
    }
}

/// Runs the daemon until `shutdown` resolves (or SIGTERM/SIGINT when started
/// from the command line, which passes a signal future).
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), DaemonError> {
    let metrics = Arc::new(Metrics::with_max_tenants(config.max_tenants));
    let status = Arc::new(http::Status::default());

    let scanners = Arc::new(Scanners::load(&config.lexicons).map_err(ConfigError::from)?);
    metrics.set_lexicon(scanners.base().version());
    metrics.set_categories(&scanners);
    status.lexicon_loaded.store(true, Ordering::Relaxed);
    log_lexicons(&scanners, &config.lexicons, "lexicon loaded");

    let http = http::serve(
        config.metrics_addr,
        Arc::clone(&metrics),
        Arc::clone(&status),
    )
    .await?;
    tracing::info!(addr = %http.addr, "metrics on /metrics, health on /healthz and /readyz");

    let client = nats::connect(&config, Arc::clone(&status), Arc::clone(&metrics)).await?;
    let version = nats_conn::check_server(&client)?;
    status.connected.store(true, Ordering::Relaxed);
    metrics.nats_connected.set(1);
    let setup = nats::setup(&client, &config).await?;
    tracing::info!(
        server = %version,
        url = %nats_conn::redact_url(&config.nats.url),
        input = %config.streams.input_stream,
        consumer = %config.streams.consumer,
        "JetStream ready"
    );

    let console = match config.console.clone() {
        Some(c) => {
            let console = crate::console::start(
                &config,
                c,
                setup.js.clone(),
                setup.cluster.is_some(),
                Arc::clone(&metrics),
            )
            .await?;
            tracing::info!(url = %format!("http://{}/", console.addr), "console for QA supervisors");
            Some(console)
        }
        None => None,
    };

    let shared = Arc::new(Shared {
        config: config.clone(),
        metrics: Arc::clone(&metrics),
        js: setup.js.clone(),
        max_payload: client.server_info().max_payload,
        inputs_queued: AtomicI64::new(0),
        last_progress_ms: AtomicU64::new(shard::now_ms()),
    });
    let (scanner_tx, scanner_rx) = watch::channel(Arc::clone(&scanners));
    // Shadow mode: the candidate lexicon, loaded like the live one.
    let (shadow_tx, shadow_rx) = match &config.shadow {
        Some(sh) => {
            let s = Arc::new(Scanners::load(&sh.lexicons).map_err(ConfigError::ShadowLexicon)?);
            log_lexicons(&s, &sh.lexicons, "shadow lexicon loaded");
            let (tx, rx) = watch::channel(s);
            (Some(tx), Some(rx))
        }
        None => (None, None),
    };

    // Both ways of running: the lexicon reloader and the watchdog.
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(reloader(
        config.lexicons.clone(),
        config.reload_poll,
        config.reload_requires_tests,
        scanner_tx,
        Some(Arc::clone(&metrics)),
        stop_rx.clone(),
    ));
    tokio::spawn(watchdog(
        Arc::clone(&shared),
        Arc::clone(&status),
        stop_rx.clone(),
    ));

    if let (Some(shadow), Some(tx)) = (&config.shadow, shadow_tx) {
        tokio::spawn(reloader(
            shadow.lexicons.clone(),
            config.reload_poll,
            config.reload_requires_tests,
            tx,
            None,
            stop_rx.clone(),
        ));
    }

    // A partitioned stream: partitions instead of shards, however many
    // instances run.
    if let Some((kv, partitions)) = setup.cluster.clone() {
        if let Some((stream, consumer)) = setup.unroutable.clone() {
            // A subject that is not UTF-8 would drop the connection at each
            // delivery there too: swept from the server's side first.
            tokio::spawn(poison::sweeper(
                Arc::clone(&shared),
                consumer.clone(),
                stream,
                Arc::clone(&status),
                stop_rx.clone(),
            ));
            tokio::spawn(poison::unroutable(
                Arc::clone(&shared),
                consumer,
                stop_rx.clone(),
            ));
        }
        let started = tokio::time::Instant::now();
        let result = cluster::serve(
            Arc::clone(&shared),
            config.cluster.clone(),
            cluster::Streams {
                input: setup.input.clone(),
                partitions,
                kv,
            },
            scanner_rx,
            shadow_rx,
            Arc::clone(&status),
            shutdown,
        )
        .await;
        status.consumer_bound.store(false, Ordering::Relaxed);
        let _ = stop_tx.send(true);
        close(&client, http, console, started + config.shutdown_grace).await;
        return result.map_err(|e| {
            DaemonError::Runtime(format!(
                "unclean shutdown ({e}); the next holders replay from the last checkpoints"
            ))
        });
    }
    let Some(consumer) = setup.consumer.clone() else {
        return Err(DaemonError::Runtime("no consumer was set up".into()));
    };
    // One instance on the consumer: the others wait as standbys.
    tokio::pin!(shutdown);
    let Some(lease) = standby::acquire(&setup.state, &config.streams.consumer, &mut shutdown).await
    else {
        let _ = stop_tx.send(true);
        close(
            &client,
            http,
            console,
            tokio::time::Instant::now() + config.shutdown_grace,
        )
        .await;
        tracing::info!("stopped while waiting as a standby");
        return Ok(());
    };

    // Shards, with the state saved by the previous instance.
    let n = config.shards;
    let mut engines: Vec<Engine> = (0..n)
        .map(|_| {
            Engine::with_scanners(
                Arc::clone(&scanners),
                engine_config(&config, config.max_open_conversations / n),
            )
        })
        .collect();
    let mut stashes: Vec<Stash> = (0..n).map(|_| Stash::new()).collect();
    restore_state(&setup.state, &mut engines, &mut stashes, &metrics).await;
    let mut senders = Vec::with_capacity(n);
    let mut workers = Vec::with_capacity(n);
    // Set when the grace period runs short: shards stop judging and hand
    // back what they hold.
    let (abort_tx, abort_rx) = watch::channel(false);
    for (engine, stash) in engines.into_iter().zip(stashes) {
        let (tx, rx) = mpsc::channel(config.shard_queue);
        senders.push(tx);
        let shadow = shadow_rx
            .as_ref()
            .map(|rx| shard::Shadow::new(rx, &shared, config.max_open_conversations / n));
        let shard = Shard::new(
            Arc::clone(&shared),
            engine,
            scanner_rx.clone(),
            stash,
            abort_rx.clone(),
            shadow,
        );
        workers.push(tokio::spawn(shard.run(rx)));
    }

    tokio::spawn(consumer_gauges(
        consumer.clone(),
        Arc::clone(&metrics),
        stop_rx.clone(),
    ));
    tokio::spawn(poison::sweeper(
        Arc::clone(&shared),
        consumer.clone(),
        setup.input.clone(),
        Arc::clone(&status),
        stop_rx.clone(),
    ));

    // Pull until shutdown, or until another instance took the lease.
    let mut lost = lease.lost();
    let until = async {
        tokio::select! {
            _ = shutdown.as_mut() => {}
            _ = lost.wait_for(|l| *l) => {}
        }
    };
    tokio::pin!(until);
    let shard_died = dispatch(&consumer, &senders, &shared, &status, &mut until).await;
    // The grace period, from here: shards finish their queues for half of
    // it, then are told to abort (hand back what they hold); saving state
    // gets what is left, less a margin for draining the connection.
    let started = tokio::time::Instant::now();
    let grace = config.shutdown_grace;
    tracing::info!(
        grace_s = grace.as_secs_f64(),
        "shutting down: stopped pulling, finishing in-flight messages"
    );
    status.consumer_bound.store(false, Ordering::Relaxed);
    let _ = stop_tx.send(true);
    drop(senders);

    let abort_at = started + grace.mul_f64(0.5);
    let shards_by = started + grace.mul_f64(0.7);
    let save_by = started + grace.mul_f64(0.92);
    let aborter = tokio::spawn(async move {
        tokio::time::sleep_until(abort_at).await;
        let _ = abort_tx.send(true);
    });
    let mut remains = Vec::new();
    let mut problems = Vec::new();
    for (i, w) in workers.into_iter().enumerate() {
        match tokio::time::timeout_at(shards_by, w).await {
            Ok(Ok(r)) => remains.push(r),
            Ok(Err(e)) => problems.push(format!("shard {i} failed: {e}")),
            Err(_) => problems.push(format!(
                "shard {i} did not hand back its state within the grace period (its open conversations are lost; their unacked inputs will be redelivered)"
            )),
        }
    }
    let aborted = aborter.is_finished();
    aborter.abort();
    if aborted {
        tracing::warn!(
            "the grace period ran short: queued inputs were Nak'ed unjudged and unstored events stashed"
        );
    }
    if lease.is_lost() {
        // The instance that took over restored the saved state already:
        // what this one holds would come back stale at the next start.
        problems.push("another instance took the lease: open conversations not saved".into());
    } else {
        let report = save_state(&setup.state, remains, &metrics, save_by).await;
        if !report.is_complete() {
            problems.push(report.describe());
        }
    }
    // Within the grace period (with NATS gone it cannot be given back; it
    // then expires by itself).
    let _ = tokio::time::timeout_at(started + grace.mul_f64(0.96), lease.release()).await;
    if shard_died {
        problems.push("a shard stopped taking messages before shutdown".into());
    }
    let result = if problems.is_empty() {
        Ok(())
    } else {
        Err(DaemonError::Runtime(format!(
            "unclean shutdown ({}); unacked messages will be redelivered",
            problems.join("; ")
        )))
    };
    close(&client, http, console, started + grace).await;
    tracing::info!(took_ms = started.elapsed().as_millis() as u64, "stopped");
    result
}

/// Flushes what is sent (until `by`), drains the connection and stops the
/// HTTP servers.
async fn close(
    client: &async_nats::Client,
    http: http::Http,
    console: Option<crate::console::Console>,
    by: tokio::time::Instant,
) {
    if let Err(e) = tokio::time::timeout_at(by, client.flush()).await {
        tracing::warn!(error = %e, "flush at shutdown timed out");
    }
    if let Err(e) = client.drain().await {
        tracing::warn!(error = %e, "drain failed");
    }
    http.stop();
    if let Some(c) = console {
        c.stop();
    }
}

/// Fails readiness while work is pending and nothing has been stored for
/// `[daemon] watchdog_s`: a daemon that judges but cannot store must be
/// seen (and, in Kubernetes, taken out of service), not look healthy.
async fn watchdog(shared: Arc<Shared>, status: Arc<http::Status>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let limit = shared.config.watchdog.as_millis() as u64;
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tick.tick() => {}
        }
        let pending = shared.metrics.output_pending.get() > 0
            || shared.inputs_queued.load(Ordering::Relaxed) > 0;
        let idle = shard::now_ms().saturating_sub(shared.last_progress_ms.load(Ordering::Relaxed));
        let stalled = pending && idle >= limit;
        let was = status.output_stalled.swap(stalled, Ordering::Relaxed);
        shared.metrics.output_stalled.set(i64::from(stalled));
        if stalled && !was {
            shared.metrics.output_stalls.inc();
            tracing::error!(
                pending_events = shared.metrics.output_pending.get(),
                queued_inputs = shared.inputs_queued.load(Ordering::Relaxed),
                idle_ms = idle,
                "output stalled: work is pending and nothing was stored; /readyz fails until it moves"
            );
        } else if was && !stalled {
            tracing::info!("output moving again");
        }
    }
}

/// Pulls messages in batches and routes each to its shard, until shutdown.
///
/// Batches, not a continuous pull stream: a batch ends after at most
/// `BATCH_EXPIRES`, and every message of it is handed to a shard. So at
/// shutdown nothing is left in a client-side buffer, unacked, to be
/// redelivered later *after* newer messages of its conversation (which would
/// judge them out of order). It also makes a stalled pull impossible to
/// outlive: each request expires and a new one is made.
async fn dispatch(
    consumer: &jetstream::consumer::PullConsumer,
    senders: &[mpsc::Sender<jetstream::Message>],
    shared: &Shared,
    status: &http::Status,
    shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
) -> bool {
    let (config, metrics) = (&shared.config, &*shared.metrics);
    const BATCH: usize = 256;
    const BATCH_EXPIRES: Duration = Duration::from_millis(500);
    let mut backoff = Duration::from_millis(100);
    let mut idle_since = std::time::Instant::now();
    loop {
        let batch = tokio::select! {
            biased;
            _ = shutdown.as_mut() => return false,
            b = consumer.batch().max_messages(BATCH).expires(BATCH_EXPIRES).messages() => b,
        };
        let mut batch = match batch {
            Ok(b) => b,
            Err(e) => {
                status.consumer_bound.store(false, Ordering::Relaxed);
                tracing::warn!(error = %e, "cannot pull from the consumer; retrying");
                tokio::select! {
                    _ = shutdown.as_mut() => return false,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        status.consumer_bound.store(true, Ordering::Relaxed);
        backoff = Duration::from_millis(100);
        let mut got = 0usize;
        // A batch being read when shutdown starts: what arrives in the
        // next 200 ms is Nak'ed (redelivered at once, in order, to the next
        // instance). Anything later stays unacked and is redelivered after
        // ack_wait, possibly after newer messages of its conversation (the
        // engine ignores a seq it has seen; a window verdict may differ):
        // that needs a batch still coming in 200 ms after shutdown, i.e. a
        // server that is gone, and the grace period must hold regardless.
        let mut stopping = false;
        // Once stopping, what the batch still brings is Nak'ed for a short
        // while only: with the server gone the batch may never end.
        let mut rest_until: Option<tokio::time::Instant> = None;
        loop {
            let item = match rest_until {
                Some(until) => match tokio::time::timeout_at(until, batch.next()).await {
                    Ok(item) => item,
                    Err(_) => break,
                },
                None => tokio::select! {
                    biased;
                    item = batch.next() => item,
                    // Shutdown while the batch is still coming in.
                    _ = shutdown.as_mut() => {
                        stopping = true;
                        rest_until = Some(tokio::time::Instant::now() + Duration::from_millis(200));
                        continue;
                    }
                },
            };
            let Some(item) = item else { break };
            match item {
                Ok(msg) if stopping => {
                    // Shutdown came while a shard's queue was full: the
                    // rest of the batch goes back at once, in order.
                    shard::nak_now(&msg).await;
                    metrics.naks.with_label_values(&["shutdown"]).inc();
                }
                Ok(msg) => {
                    got += 1;
                    let shard = shard_of_subject(
                        msg.message.subject.as_str(),
                        &config.streams,
                        senders.len(),
                    );
                    shared.inputs_queued.fetch_add(1, Ordering::Relaxed);
                    // A full queue must not make shutdown wait for it.
                    let permit = tokio::select! {
                        biased;
                        p = senders[shard].reserve() => Some(p),
                        _ = shutdown.as_mut() => None,
                    };
                    match permit {
                        Some(Ok(permit)) => permit.send(msg),
                        Some(Err(_)) => {
                            // Only a shard that died drops its receiver.
                            tracing::error!(shard, "a shard stopped; shutting down");
                            return true;
                        }
                        None => {
                            shared.inputs_queued.fetch_sub(1, Ordering::Relaxed);
                            shard::nak_now(&msg).await;
                            metrics.naks.with_label_values(&["shutdown"]).inc();
                            stopping = true;
                            rest_until =
                                Some(tokio::time::Instant::now() + Duration::from_millis(200));
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "pull batch failed");
                    metrics.stream_restarts.with_label_values(&["error"]).inc();
                    break;
                }
            }
        }
        if stopping {
            return false;
        }
        if got > 0 {
            idle_since = std::time::Instant::now();
        } else if idle_since.elapsed() >= config.stall_timeout {
            // Empty batches for a while: fine if nothing is pending, a
            // stall worth counting if messages wait.
            idle_since = std::time::Instant::now();
            let mut c = consumer.clone();
            if let Ok(info) = c.info().await
                && info.num_pending > 0
            {
                tracing::warn!(
                    pending = info.num_pending,
                    "empty pulls with messages pending"
                );
                metrics.stream_restarts.with_label_values(&["stall"]).inc();
            }
        }
    }
}

/// Reloads the lexicon on SIGHUP and when its files change (polled,
/// debounced by one poll interval); swaps it in atomically. A bad lexicon is
/// rejected and the current one keeps serving.
async fn reloader(
    dir: PathBuf,
    poll: Option<Duration>,
    requires_tests: bool,
    tx: watch::Sender<Arc<Scanners>>,
    // None for the shadow lexicon: it never touches the live metrics.
    metrics: Option<Arc<Metrics>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP");
            None
        }
    };
    let mut seen = fingerprint(&dir);
    let mut changed_at: Option<Vec<(String, u64, SystemTime)>> = None;
    let mut tick = tokio::time::interval(poll.unwrap_or(Duration::from_secs(3600)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let by_signal = tokio::select! {
            _ = stop.changed() => return,
            _ = async { match hup.as_mut() { Some(h) => { h.recv().await; } None => std::future::pending().await } } => true,
            _ = tick.tick() => false,
        };
        if !by_signal {
            if poll.is_none() {
                continue;
            }
            let now = fingerprint(&dir);
            if now == seen {
                changed_at = None;
                continue;
            }
            // Debounce: reload once the files stopped changing for a tick.
            if changed_at.as_ref() != Some(&now) {
                changed_at = Some(now);
                continue;
            }
            seen = now;
            changed_at = None;
        }
        let d = dir.clone();
        let started = std::time::Instant::now();
        let built = tokio::task::spawn_blocking(move || load_tested(&d, requires_tests)).await;
        match built {
            Ok(Ok(scanners)) => {
                if let Some(m) = &metrics {
                    m.set_lexicon(scanners.base().version());
                    m.set_categories(&scanners);
                    m.lexicon_reloads.with_label_values(&["success"]).inc();
                }
                log_lexicons(&scanners, &dir, "lexicon reloaded");
                tracing::info!(
                    took_ms = started.elapsed().as_millis() as u64,
                    by_signal,
                    "reload done"
                );
                let _ = tx.send(scanners);
            }
            Ok(Err(e)) => {
                if let Some(m) = &metrics {
                    m.lexicon_reloads.with_label_values(&["failure"]).inc();
                }
                tracing::error!(error = %e, dir = %dir.display(), "lexicon reload rejected; the previous lexicon keeps serving");
            }
            Err(e) => {
                if let Some(m) = &metrics {
                    m.lexicon_reloads.with_label_values(&["failure"]).inc();
                }
                tracing::error!(error = %e, "lexicon reload task failed");
            }
        }
        if by_signal {
            seen = fingerprint(&dir);
        }
    }
}

/// [`Scanners::load`], then, when `requires_tests` and the directory has a
/// `tests/` suite, the suite: a lexicon whose tests fail is an error.
fn load_tested(dir: &Path, requires_tests: bool) -> Result<Arc<Scanners>, ReloadError> {
    let scanners = Arc::new(Scanners::load(dir)?);
    let tests = dir.join("tests");
    if requires_tests && tests.is_dir() {
        let outcome = crate::suite::run(&tests, &scanners).map_err(ReloadError::Suite)?;
        if outcome.failed > 0 {
            return Err(ReloadError::TestsFail {
                failed: outcome.failed,
                cases: outcome.cases,
                report: outcome.report,
            });
        }
    }
    Ok(scanners)
}

/// Why a lexicon reload was rejected (the previous lexicon keeps serving).
#[derive(Debug, thiserror::Error)]
enum ReloadError {
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The test suite could not be read.
    #[error("{0}")]
    Suite(String),
    #[error(
        "{failed} of {cases} lexicon test cases fail ([engine] reload_requires_tests):\n{report}"
    )]
    TestsFail {
        failed: usize,
        cases: usize,
        report: String,
    },
}

/// One log line per lexicon: the base and each tenant's.
fn log_lexicons(scanners: &Scanners, dir: &Path, what: &str) {
    tracing::info!(lexicon = %scanners.base().version(), dir = %dir.display(), "{what}");
    for (tenant, s) in scanners.tenants() {
        tracing::info!(tenant, lexicon = %s.version(), rules = s.rules().len(), "{what} (tenant overlay)");
    }
}

/// Name, size and mtime of every `*.toml` of the lexicon directory, of its
/// test suite (`tests/*.toml`: fixing a failing test retries the reload)
/// and of its tenant overlays (`tenants/<tenant>/*.toml`).
fn fingerprint(dir: &Path) -> Vec<(String, u64, SystemTime)> {
    let mut out = fingerprint_files(dir, "");
    out.extend(fingerprint_files(&dir.join("tests"), "tests/"));
    if let Ok(rd) = std::fs::read_dir(dir.join("tenants")) {
        for e in rd.filter_map(Result::ok) {
            let name = e.file_name().to_string_lossy().into_owned();
            out.extend(fingerprint_files(&e.path(), &format!("tenants/{name}/")));
        }
    }
    out.sort();
    out
}

fn fingerprint_files(dir: &Path, prefix: &str) -> Vec<(String, u64, SystemTime)> {
    let mut out: Vec<(String, u64, SystemTime)> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter(|e| e.path().extension().is_some_and(|x| x == "toml"))
                .filter_map(|e| {
                    // Follows symlinks: in a Kubernetes ConfigMap volume each
                    // file is a link into a directory the kubelet swaps on
                    // update, and the link itself never changes.
                    let m = std::fs::metadata(e.path()).ok()?;
                    Some((
                        format!("{prefix}{}", e.file_name().to_string_lossy()),
                        m.len(),
                        m.modified().ok()?,
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// Consumer pending/redelivered gauges, every 5 s.
async fn consumer_gauges(
    mut consumer: jetstream::consumer::PullConsumer,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tick.tick() => {}
        }
        if let Ok(info) = consumer.info().await {
            metrics.consumer_pending.set(info.num_pending as i64);
            metrics
                .consumer_ack_pending
                .set(info.num_ack_pending as i64);
            metrics
                .consumer_redelivered
                .set(info.num_redelivered as i64);
        }
    }
}

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

/// Why a piece of state was not saved at shutdown.
#[derive(Debug, thiserror::Error)]
enum SaveError {
    #[error("out of time")]
    OutOfTime,
    #[error(transparent)]
    Put(async_nats::jetstream::kv::PutError),
    #[error("cannot encode: {0}")]
    Encode(serde_json::Error),
}

/// What [`save_state`] could and could not save.
#[derive(Debug, Default)]
struct SaveReport {
    saved: usize,
    /// Conversations not saved: `tenant/id` of the first few, and the count.
    unsaved: Vec<String>,
    unsaved_count: usize,
    unsaved_events: usize,
}

impl SaveReport {
    fn is_complete(&self) -> bool {
        self.unsaved_count == 0 && self.unsaved_events == 0
    }

    fn miss(&mut self, names: &[String]) {
        self.unsaved_count += names.len();
        let room = 20usize.saturating_sub(self.unsaved.len());
        self.unsaved.extend(names.iter().take(room).cloned());
    }

    fn describe(&self) -> String {
        let mut parts = Vec::new();
        if self.unsaved_count > 0 {
            let more = self.unsaved_count.saturating_sub(self.unsaved.len());
            parts.push(format!(
                "{} of {} open conversations not saved: {}{}",
                self.unsaved_count,
                self.unsaved_count + self.saved,
                self.unsaved.join(", "),
                if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                }
            ));
        }
        if self.unsaved_events > 0 {
            parts.push(format!(
                "{} unstored events not saved (their inputs are unacked and will be judged again)",
                self.unsaved_events
            ));
        }
        parts.join("; ")
    }
}

/// Values in the state bucket stay well below the server's message limit.
const STATE_CHUNK_BYTES: usize = 256 * 1024;

/// Saves open conversations and unstored events to the state bucket before
/// `deadline`: conversations in chunks of many per value (100k open
/// conversations are a few hundred puts, not 100k round trips), several
/// puts in flight at once.
async fn save_state(
    kv: &jetstream::kv::Store,
    remains: Vec<Remains>,
    metrics: &Metrics,
    deadline: tokio::time::Instant,
) -> SaveReport {
    let started = std::time::Instant::now();
    let mut report = SaveReport::default();
    // Chunks are built as JSON text directly (`SavedChunk`'s layout), so
    // each conversation is serialised once and chunk sizes are exact.
    let mut chunks: Vec<(Vec<u8>, Vec<String>)> = Vec::new();
    let mut stashes = Vec::new();
    let open_chunk = || format!("{{\"version\":{STATE_VERSION},\"conversations\":[").into_bytes();
    let mut chunk = open_chunk();
    let mut names = Vec::new();
    for r in remains {
        for (tenant, id, state) in r.conversations {
            let name = format!("{tenant}/{id}");
            let c = SavedConversation {
                tenant,
                conversation_id: id,
                state,
            };
            match serde_json::to_vec(&c) {
                Ok(bytes) => {
                    if !names.is_empty() {
                        chunk.push(b',');
                    }
                    chunk.extend_from_slice(&bytes);
                    names.push(name);
                }
                Err(e) => {
                    tracing::error!(conversation = %name, error = %e, "cannot encode conversation state");
                    report.miss(std::slice::from_ref(&name));
                }
            }
            if chunk.len() >= STATE_CHUNK_BYTES {
                chunk.extend_from_slice(b"]}");
                chunks.push((
                    std::mem::replace(&mut chunk, open_chunk()),
                    std::mem::take(&mut names),
                ));
            }
        }
        stashes.extend(r.stash);
    }
    if !names.is_empty() {
        chunk.extend_from_slice(b"]}");
        chunks.push((chunk, names));
    }
    let nonce = shard::now_ms();
    let mut puts =
        futures_util::stream::iter(chunks.into_iter().enumerate().map(|(i, (bytes, names))| {
            let key = format!("convs.{nonce}.{i}");
            async move {
                let result =
                    match tokio::time::timeout_at(deadline, kv.put(&key, bytes.into())).await {
                        Err(_) => Err(SaveError::OutOfTime),
                        Ok(put) => put.map(|_| ()).map_err(SaveError::Put),
                    };
                (key, names, result)
            }
        }))
        .buffer_unordered(8);
    while let Some((key, names, result)) = puts.next().await {
        match result {
            Ok(()) => report.saved += names.len(),
            Err(e) => {
                tracing::error!(key, conversations = names.len(), error = %e, "cannot save conversation state");
                report.miss(&names);
            }
        }
    }
    for (key, events) in stashes {
        let kv_key = format!("stash.{}", hex(&key));
        let n = events.len();
        let value = SavedStash { key, events };
        let result = match serde_json::to_vec(&value) {
            Ok(bytes) => {
                match tokio::time::timeout_at(deadline, kv.put(&kv_key, bytes.into())).await {
                    Err(_) => Err(SaveError::OutOfTime),
                    Ok(put) => put.map(|_| ()).map_err(SaveError::Put),
                }
            }
            Err(e) => Err(SaveError::Encode(e)),
        };
        if let Err(e) = result {
            tracing::error!(key = kv_key, events = n, error = %e, "cannot save unstored events");
            report.unsaved_events += n;
        }
    }
    metrics.state_saved.inc_by(report.saved as u64);
    tracing::info!(
        conversations = report.saved,
        took_ms = started.elapsed().as_millis() as u64,
        "open conversations saved"
    );
    report
}

/// The format of saved conversation chunks. 2: each rule's state under its
/// rule id (`rules`). Format 1 (the greeting verdict and closing bits in
/// the conversation) still loads: [`Engine::import`] moves them into the
/// greeting and closing rules. An unknown format is dropped with one log
/// line, never a crash.
const STATE_VERSION: u32 = 2;
const STATE_VERSIONS_READ: [u32; 2] = [1, 2];

/// A chunk of saved open conversations (value in the state bucket).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct SavedChunk {
    version: u32,
    conversations: Vec<SavedConversation>,
}

/// Restores what the previous instance saved, then deletes it.
async fn restore_state(
    kv: &jetstream::kv::Store,
    engines: &mut [Engine],
    stashes: &mut [Stash],
    metrics: &Metrics,
) {
    let keys: Vec<String> = match kv.keys().await {
        Ok(k) => k.filter_map(|k| async move { k.ok() }).collect().await,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list saved state");
            return;
        }
    };
    let n = engines.len();
    let mut restored = 0u64;
    for key in keys {
        // The instance lease (see `standby`) is not saved state.
        if key.starts_with("lease.") {
            continue;
        }
        let value = match kv.get(&key).await {
            Ok(Some(v)) => v,
            _ => continue,
        };
        if key.starts_with("convs.") {
            match serde_json::from_slice::<SavedChunk>(&value) {
                Ok(chunk) if STATE_VERSIONS_READ.contains(&chunk.version) => {
                    for s in chunk.conversations {
                        let shard = shard_of(&s.tenant, &s.conversation_id, n);
                        engines[shard].import(&s.tenant, &s.conversation_id, s.state);
                        restored += 1;
                    }
                }
                Ok(chunk) => tracing::error!(
                    key,
                    version = chunk.version,
                    "saved conversations in an unknown state format; dropped"
                ),
                Err(e) => {
                    tracing::error!(key, error = %e, "unreadable saved conversations; dropped")
                }
            }
        } else if key.starts_with("conv.") {
            match serde_json::from_slice::<SavedConversation>(&value) {
                Ok(s) => {
                    let shard = shard_of(&s.tenant, &s.conversation_id, n);
                    engines[shard].import(&s.tenant, &s.conversation_id, s.state);
                    restored += 1;
                }
                Err(e) => {
                    tracing::error!(key, error = %e, "unreadable saved conversation; skipped")
                }
            }
        } else if key.starts_with("stash.") {
            match serde_json::from_slice::<SavedStash>(&value) {
                Ok(s) => {
                    stashes[shard_of_stash(&s.key, n)].insert(s.key, s.events);
                }
                Err(e) => tracing::error!(key, error = %e, "unreadable saved events; skipped"),
            }
        }
        if let Err(e) = remove_keys(kv, &key).await {
            tracing::warn!(key, error = %e, "cannot delete restored state");
        }
    }
    metrics.state_restored.inc_by(restored);
    if restored > 0 {
        tracing::info!(conversations = restored, "open conversations restored");
    }
}

#[cfg(test)]
mod tests {
    use super::fingerprint;

    #[test]
    fn a_configmap_style_symlink_swap_changes_the_fingerprint() {
        // The kubelet's layout: a.toml -> ..data/a.toml, ..data -> ..v1;
        // an update writes ..v2 and swaps the ..data link.
        let dir = std::env::temp_dir().join(format!("zhijian-fp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for (version, body) in [("..v1", "a = 1\n"), ("..v2", "a = 22\n")] {
            std::fs::create_dir_all(dir.join(version)).expect("mkdir");
            std::fs::write(dir.join(version).join("a.toml"), body).expect("write");
        }
        let link = |target: &str, name: &str| {
            let tmp = dir.join(format!("{name}.tmp"));
            std::os::unix::fs::symlink(target, &tmp).expect("symlink");
            std::fs::rename(&tmp, dir.join(name)).expect("swap");
        };
        link("..v1", "..data");
        link("..data/a.toml", "a.toml");
        let before = fingerprint(&dir);
        assert_eq!(before.len(), 1, "{before:?}");
        link("..v2", "..data");
        assert_ne!(fingerprint(&dir), before, "the swap must be seen");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_tenant_overlay_edit_changes_the_fingerprint() {
        let dir = std::env::temp_dir().join(format!("zhijian-fpt-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let overlay = dir.join("tenants/acme");
        std::fs::create_dir_all(&overlay).expect("mkdir");
        std::fs::write(dir.join("a.toml"), "a = 1\n").expect("write");
        let base_only = fingerprint(&dir);
        std::fs::write(overlay.join("o.toml"), "disable = []\n").expect("write");
        let with_overlay = fingerprint(&dir);
        let names: Vec<&str> = with_overlay.iter().map(|f| f.0.as_str()).collect();
        assert_eq!(names, ["a.toml", "tenants/acme/o.toml"]);
        std::fs::write(overlay.join("o.toml"), "disable = [\"x\"]\n").expect("write");
        let edited = fingerprint(&dir);
        let _ = std::fs::remove_dir_all(&dir);
        assert_ne!(base_only, with_overlay);
        assert_ne!(with_overlay, edited, "the overlay edit must be seen");
    }
}
