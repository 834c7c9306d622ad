//! `zhijian run`: the streaming daemon. NATS JetStream in, violations and
//! summaries out, Prometheus metrics and health over HTTP.
//!
//! ```text
//! TRANSCRIPTS ─pull─▶ dispatcher ─(shard by tenant+conversation)─▶ shard 0..N ─▶ VIOLATIONS
//!                      │                                             │ (Engine)    summaries.*
//!                      └ stall check, consumer gauges                └ bad input ─▶ dead letter
//! lexicon dir / SIGHUP ─▶ reloader ─(watch: Arc<Scanner>)─▶ every shard
//! ```
//!
//! Shutdown order (SIGTERM/SIGINT or the `shutdown` future of [`run`]):
//! stop pulling; shards finish the messages already queued (publish, then
//! ack); open conversations and unstored events are saved to the state
//! bucket; the connection is drained. The next start restores them, so a
//! rolling restart loses no verdict. Messages are pulled in short batches, so
//! none is left behind in a client buffer at shutdown.
//!
//! A crash (SIGKILL, OOM) loses the in-memory state since the last start:
//! unacked messages are redelivered and every forbidden/filler violation is
//! still produced (de-duplicated by id), but a conversation whose segments
//! were all processed before the crash ends without a summary (its `end`
//! finds no state: `zhijian_input_events_total{outcome="unknown_end"}`).

mod http;
pub mod nats;
pub mod shard;

use crate::config::Config;
use crate::engine::{Engine, EngineConfig};
use crate::event::Event;
use crate::lexicon;
use crate::matcher::{Scanner, default_segmenter};
use crate::metrics::Metrics;
use async_nats::HeaderMap;
use async_nats::jetstream;
use bytes::Bytes;
use futures_util::StreamExt;
use shard::{
    Remains, SavedConversation, SavedStash, Shard, Stash, shard_of, shard_of_stash,
    shard_of_subject,
};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};
use tokio::sync::{mpsc, watch};

/// Why the daemon could not start or stopped badly.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Configuration or lexicon: exit code 2.
    #[error("{0}")]
    Config(String),
    /// NATS, HTTP or I/O: exit code 1.
    #[error("{0}")]
    Runtime(String),
}

/// What every task shares.
pub struct Shared {
    pub config: Config,
    pub metrics: Arc<Metrics>,
    pub js: jetstream::Context,
}

impl Shared {
    /// Subject, headers (`Nats-Msg-Id` = event id) and payload of an event.
    pub fn encode(&self, event: &Event) -> (String, HeaderMap, Bytes) {
        let s = &self.config.streams;
        let subject = match event {
            Event::Violation(v) => format!(
                "{}.{}.{}",
                s.violations_prefix,
                v.tenant,
                v.category.as_str()
            ),
            Event::Summary(x) => format!("{}.{}", s.summaries_prefix, x.tenant),
        };
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", event.id());
        // Serialising our own event types cannot fail.
        let payload = serde_json::to_vec(event).unwrap_or_default();
        (subject, headers, Bytes::from(payload))
    }
}

/// Loads and compiles the lexicon directory.
pub fn load_scanner(dir: &Path) -> Result<Scanner, String> {
    let lex =
        lexicon::load_dir(dir).map_err(|e| format!("invalid lexicon {}:\n{e}", dir.display()))?;
    Scanner::new(lex, default_segmenter())
        .map_err(|e| format!("cannot compile lexicon {}: {e}", dir.display()))
}

/// Runs the daemon until `shutdown` resolves (or SIGTERM/SIGINT when started
/// from the command line, which passes a signal future).
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), DaemonError> {
    let metrics = Arc::new(Metrics::with_max_tenants(config.max_tenants));
    let status = Arc::new(nats::Status::default());

    let scanner = Arc::new(load_scanner(&config.lexicons).map_err(DaemonError::Config)?);
    metrics.set_lexicon(scanner.version());
    status.lexicon_loaded.store(true, Ordering::Relaxed);
    tracing::info!(lexicon = %scanner.version(), dir = %config.lexicons.display(), "lexicon loaded");

    let http = http::serve(
        config.metrics_addr,
        Arc::clone(&metrics),
        Arc::clone(&status),
    )
    .await
    .map_err(DaemonError::Runtime)?;
    tracing::info!(addr = %http.addr, "metrics on /metrics, health on /healthz and /readyz");

    let client = nats::connect(&config, Arc::clone(&status), Arc::clone(&metrics))
        .await
        .map_err(DaemonError::Runtime)?;
    let version = nats::check_server(&client).map_err(DaemonError::Runtime)?;
    status.connected.store(true, Ordering::Relaxed);
    metrics.nats_connected.set(1);
    let setup = nats::setup(&client, &config)
        .await
        .map_err(DaemonError::Runtime)?;
    tracing::info!(
        server = %version,
        url = %nats::redact_url(&config.nats.url),
        input = %config.streams.input_stream,
        consumer = %config.streams.consumer,
        "JetStream ready"
    );

    let console = match config.console.clone() {
        Some(c) => {
            let console = crate::console::start(&config, c, setup.js.clone(), Arc::clone(&metrics))
                .await
                .map_err(DaemonError::Runtime)?;
            tracing::info!(url = %format!("http://{}/", console.addr), "console for QA supervisors");
            Some(console)
        }
        None => None,
    };

    let shared = Arc::new(Shared {
        config: config.clone(),
        metrics: Arc::clone(&metrics),
        js: setup.js.clone(),
    });
    let (scanner_tx, scanner_rx) = watch::channel(Arc::clone(&scanner));

    // Shards, with the state saved by the previous instance.
    let n = config.shards;
    let mut engines: Vec<Engine> = (0..n)
        .map(|_| {
            Engine::new(
                Arc::clone(&scanner),
                EngineConfig {
                    tombstone_ttl_ms: config.tombstone_ttl.as_millis() as u64,
                },
            )
        })
        .collect();
    let mut stashes: Vec<Stash> = (0..n).map(|_| Stash::new()).collect();
    restore_state(&setup.state, &mut engines, &mut stashes, &metrics).await;
    let mut senders = Vec::with_capacity(n);
    let mut workers = Vec::with_capacity(n);
    for (engine, stash) in engines.into_iter().zip(stashes) {
        let (tx, rx) = mpsc::channel(config.shard_queue);
        senders.push(tx);
        let shard = Shard::new(Arc::clone(&shared), engine, scanner_rx.clone(), stash);
        workers.push(tokio::spawn(shard.run(rx)));
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(reloader(
        config.lexicons.clone(),
        config.reload_poll,
        scanner_tx,
        Arc::clone(&metrics),
        stop_rx.clone(),
    ));
    tokio::spawn(consumer_gauges(
        setup.consumer.clone(),
        Arc::clone(&metrics),
        stop_rx.clone(),
    ));

    // Pull until shutdown.
    tokio::pin!(shutdown);
    let shard_died = dispatch(
        &setup.consumer,
        &senders,
        &config,
        &status,
        &metrics,
        &mut shutdown,
    )
    .await;
    tracing::info!("shutting down: stopped pulling, finishing in-flight messages");
    status.consumer_bound.store(false, Ordering::Relaxed);
    let _ = stop_tx.send(true);
    drop(senders);

    // Shards get most of the grace period to finish; whatever they hand
    // back is saved even if another shard is stuck, with time kept for it.
    let deadline = tokio::time::Instant::now() + config.shutdown_grace.mul_f64(0.8);
    let mut remains = Vec::new();
    let mut problems = Vec::new();
    for (i, w) in workers.into_iter().enumerate() {
        match tokio::time::timeout_at(deadline, w).await {
            Ok(Ok(r)) => remains.push(r),
            Ok(Err(e)) => problems.push(format!("shard {i} failed: {e}")),
            Err(_) => problems.push(format!("shard {i} did not finish within the grace period")),
        }
    }
    let save_budget = config
        .shutdown_grace
        .mul_f64(0.2)
        .max(Duration::from_secs(1));
    if tokio::time::timeout(save_budget, save_state(&setup.state, remains, &metrics))
        .await
        .is_err()
    {
        problems.push("saving open conversations did not finish in time".into());
    }
    if let Err(e) = client.flush().await {
        tracing::warn!(error = %e, "flush at shutdown failed");
    }
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
    if let Err(e) = client.drain().await {
        tracing::warn!(error = %e, "drain failed");
    }
    http.stop();
    if let Some(c) = console {
        c.stop();
    }
    tracing::info!("stopped");
    result
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
    config: &Config,
    status: &nats::Status,
    metrics: &Metrics,
    shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
) -> bool {
    const BATCH: usize = 256;
    const BATCH_EXPIRES: Duration = Duration::from_millis(500);
    let prefix = format!("{}.", config.streams.input_prefix);
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
        // The whole batch is read even if shutdown starts meanwhile: these
        // messages are already on their way to us (at most BATCH_EXPIRES).
        while let Some(item) = batch.next().await {
            match item {
                Ok(msg) => {
                    got += 1;
                    let shard =
                        shard_of_subject(msg.message.subject.as_str(), &prefix, senders.len());
                    if senders[shard].send(msg).await.is_err() {
                        // Only a shard that died drops its receiver.
                        tracing::error!(shard, "a shard stopped; shutting down");
                        return true;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "pull batch failed");
                    metrics.stream_restarts.with_label_values(&["error"]).inc();
                    break;
                }
            }
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
    tx: watch::Sender<Arc<Scanner>>,
    metrics: Arc<Metrics>,
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
        let built = tokio::task::spawn_blocking(move || load_scanner(&d)).await;
        match built {
            Ok(Ok(scanner)) => {
                let version = scanner.version().to_string();
                metrics.set_lexicon(&version);
                metrics
                    .lexicon_reloads
                    .with_label_values(&["success"])
                    .inc();
                let _ = tx.send(Arc::new(scanner));
                tracing::info!(lexicon = %version, took_ms = started.elapsed().as_millis() as u64, by_signal, "lexicon reloaded");
            }
            Ok(Err(e)) => {
                metrics
                    .lexicon_reloads
                    .with_label_values(&["failure"])
                    .inc();
                tracing::error!(error = %e, "lexicon reload rejected; the previous lexicon keeps serving");
            }
            Err(e) => {
                metrics
                    .lexicon_reloads
                    .with_label_values(&["failure"])
                    .inc();
                tracing::error!(error = %e, "lexicon reload task failed");
            }
        }
        if by_signal {
            seen = fingerprint(&dir);
        }
    }
}

/// Name, size and mtime of every `*.toml` in the lexicon directory.
fn fingerprint(dir: &Path) -> Vec<(String, u64, SystemTime)> {
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
                        e.file_name().to_string_lossy().into_owned(),
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

/// Saves open conversations and unstored events to the state bucket.
async fn save_state(kv: &jetstream::kv::Store, remains: Vec<Remains>, metrics: &Metrics) {
    let mut saved = 0u64;
    for r in remains {
        for (tenant, id, state) in r.conversations {
            let key = format!("conv.{}.{}", hex(&tenant), hex(&id));
            let value = SavedConversation {
                tenant,
                conversation_id: id,
                state,
            };
            match serde_json::to_vec(&value) {
                Ok(bytes) => match kv.put(&key, bytes.into()).await {
                    Ok(_) => saved += 1,
                    Err(e) => tracing::error!(key, error = %e, "cannot save conversation state"),
                },
                Err(e) => tracing::error!(key, error = %e, "cannot encode conversation state"),
            }
        }
        for (key, events) in r.stash {
            let kv_key = format!("stash.{}", hex(&key));
            let value = SavedStash { key, events };
            if let Ok(bytes) = serde_json::to_vec(&value)
                && let Err(e) = kv.put(&kv_key, bytes.into()).await
            {
                tracing::error!(key = kv_key, error = %e, "cannot save unstored events");
            }
        }
    }
    metrics.state_saved.inc_by(saved);
    tracing::info!(conversations = saved, "open conversations saved");
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
        let value = match kv.get(&key).await {
            Ok(Some(v)) => v,
            _ => continue,
        };
        if key.starts_with("conv.") {
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
        if let Err(e) = kv.purge(&key).await {
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
}
