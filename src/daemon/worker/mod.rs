//! One partition, judged while this instance holds its lease: the one
//! pipeline every input goes through.
//!
//! ```text
//! checkpoint ─load─▶ engine          already-stored events ◀─scan─ output streams (see replay)
//!                      │
//! consumer (from the checkpoint's seq + 1) ─▶ decode ─▶ judge ─▶ window ─publish─▶ VIOLATIONS
//!                                                                 │ acks, all awaited at once
//!                                       stored-through seq ◀──────┘
//!                                              │
//!                         snapshot ─▶ write task: waits for it, then chunks, then the head
//! ```
//!
//! The worker is one task with one loop. It reads an input only while the
//! window has room, so a burst is stored in full, just later. A checkpoint
//! never waits for the window: the worker takes a snapshot and goes on; the
//! write task writes its head once the window's stored-through sequence
//! covers it.
//!
//! The input comes from an ephemeral consumer on the input connection. When
//! that connection drops, the consumer is dropped with it and made again
//! only after the partition's next inputs were looked at from the server's
//! side (`poison::sweep_partition`): an input whose subject is not UTF-8 —
//! the one that dropped the connection — is dead-lettered and removed
//! first, so it is never delivered again.

use super::checkpoint::{Changed, Checkpoints, HeadState, Marks, Snapshot, Written};
use super::conn::Link;
use super::ctx::Ctx;
use super::deadletter::DeadLetter;
use super::health::PartitionHealth;
use super::judge::{Shadow, judge};
use super::lease::{Lease, Lost};
use super::reader::Reader;
use super::replay::{self, Stored};
use super::window::{Item, Settled, What, Window, count_stored};
use crate::engine::Engine;
use crate::event::{Event, decode_limited};
use crate::matcher::Scanners;
use crate::subject;
use async_nats::HeaderMap;
use async_nats::jetstream;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::sync::watch;

mod start;

/// How long one look at the stream (a sweep, creating the consumer) may
/// take before it is tried again.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// How a worker ended.
#[derive(Debug)]
pub(super) enum Exit {
    /// Stopped on request, everything stored and checkpointed.
    Released,
    /// The lease or the checkpoint moved: another member holds it.
    Lost,
    /// Stopped on request before everything was stored and checkpointed:
    /// the next holder replays the inputs after `checkpoint_seq`.
    Unsaved {
        unstored: usize,
        checkpoint_seq: u64,
        judged_seq: u64,
    },
    /// Could not go on (checkpoint head unreadable, an event not encoded).
    Failed(String),
}

impl From<Lost> for Exit {
    fn from(_: Lost) -> Exit {
        Exit::Lost
    }
}

/// A stop request: a handover or the shutdown, and by when the worker must
/// have stored and checkpointed what it can.
pub(super) type Stop = watch::Receiver<Option<tokio::time::Instant>>;

pub(super) struct Worker {
    ctx: Arc<Ctx>,
    p: u32,
    epoch: u64,
    lease: Arc<Lease>,
    health: Arc<PartitionHealth>,
    engine: Engine,
    scanners: watch::Receiver<Arc<Scanners>>,
    shadow: Option<Shadow>,
    /// Last input sequence judged (its events handed to the window).
    seq: u64,
    window: Window,
    ckpt: Checkpoints,
    /// Conversations changed or closed since the last snapshot.
    changed: Changed,
    writing: Option<tokio::task::JoinHandle<(HeadState, Snapshot, Written)>>,
    /// The window's stored-through sequence, for the write task.
    stored_tx: watch::Sender<u64>,
    /// The last stream sequences acknowledged, output and dead letters.
    acked: Marks,
    /// What an earlier holder stored after the checkpoint (see `replay`).
    already: Stored,
    reader: Reader,
    input_link: Link,
    output_link: Link,
    output_generation: u64,
    events: Vec<Event>,
    /// Gauge shares last reported (open conversations, pending inputs).
    reported_open: i64,
    reported_pending: i64,
    /// A publish failure was logged since the last success.
    failing: bool,
}

/// Runs partition `p` under `lease` until stopped, lost or failed.
pub(super) async fn work(
    ctx: Arc<Ctx>,
    p: u32,
    epoch: u64,
    lease: Arc<Lease>,
    health: Arc<PartitionHealth>,
    mut stop: Stop,
) -> Exit {
    let config = &ctx.shared.config;
    let max_open = config.max_open_conversations / ctx.partitions as usize;
    let mut scanners = ctx.scanners.clone();
    let mut engine = Engine::with_scanners(
        Arc::clone(&scanners.borrow_and_update()),
        super::engine_config(config, max_open),
    );
    engine.track_clock_changes();
    let shadow = ctx
        .shadow
        .as_ref()
        .map(|rx| Shadow::new(rx, &ctx.shared, max_open));
    let ckpt = Checkpoints::new(
        p,
        epoch,
        ctx.kv.clone(),
        ctx.stream_created.clone(),
        ctx.cluster.max_deltas,
        ctx.shared.max_payload,
        Arc::clone(&ctx.shared.metrics),
    );
    let (stored_tx, _) = watch::channel(0);
    let mut w = Worker {
        window: Window::new(ctx.shared.js.clone(), config.publish_window),
        input_link: ctx.input_link.clone(),
        output_link: ctx.output_link.clone(),
        output_generation: ctx.output_link.state().generation,
        ctx: Arc::clone(&ctx),
        p,
        epoch,
        lease,
        health,
        engine,
        scanners,
        shadow,
        seq: 0,
        ckpt,
        changed: Changed::default(),
        writing: None,
        stored_tx,
        acked: Marks::default(),
        already: Stored::default(),
        reader: Reader::default(),
        events: Vec::new(),
        reported_open: 0,
        reported_pending: 0,
        failing: false,
    };
    let exit = match w.start(&mut stop).await {
        Ok(true) => w.run(&mut stop).await,
        // Stopped before judging: nothing to store, and the checkpoint as
        // it was (`finish` would write this empty engine over the
        // partition's state).
        Ok(false) => Exit::Released,
        Err(exit) => exit,
    };
    // Events still waiting are no longer this instance's to store (the next
    // holder replays their inputs).
    ctx.shared.metrics.output_pending.sub(w.window.len() as i64);
    w.health.judging.store(false, Ordering::Relaxed);
    w.health.oldest_unstored_ms.store(0, Ordering::Relaxed);
    w.report_open(true);
    w.report_pending(0);
    ctx.shared.metrics.cluster.forget(p);
    exit
}

impl Worker {
    async fn run(&mut self, stop: &mut Stop) -> Exit {
        let mut tick = tokio::time::interval(self.ctx.cluster.checkpoint);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if !self.reader.is_open() {
                match self.open_reader(stop).await {
                    Ok(true) => {}
                    Ok(false) => return self.finish(stop).await,
                    Err(exit) => return exit,
                }
            }
            let read = !self.window.is_full();
            let step = tokio::select! {
                biased;
                _ = stop.changed() => return self.finish(stop).await,
                _ = self.input_link.changed() => Step::InputLink,
                _ = self.output_link.changed() => Step::OutputLink,
                s = self.window.next(), if !self.window.is_empty() => Step::Settled(s),
                w = join(&mut self.writing), if self.writing.is_some() => Step::Written(w),
                _ = tick.tick() => Step::Tick,
                m = self.reader.next(), if read => Step::Message(m),
            };
            let done = match step {
                Step::InputLink => {
                    let state = self.input_link.state();
                    if !state.connected || state.generation != self.reader.generation {
                        // Dropped at once: the consumer is made again only
                        // after a look at what comes next (see the module
                        // doc).
                        self.close_reader();
                    }
                    Ok(())
                }
                Step::OutputLink => {
                    let state = self.output_link.state();
                    if state.connected && state.generation != self.output_generation {
                        self.output_generation = state.generation;
                        // Acks in flight were likely lost with the old
                        // connection: everything waiting is sent again now.
                        self.window.retry_all();
                    }
                    Ok(())
                }
                Step::Settled(s) => self.settled(s).await,
                Step::Written(w) => self.written(w),
                Step::Tick => self.clock_pass().await,
                Step::Message(Some(Ok(msg))) => self.handle(msg).await,
                Step::Message(Some(Err(e))) => {
                    tracing::debug!(partition = self.p, error = %e, "partition consumer");
                    Ok(())
                }
                Step::Message(None) => {
                    self.close_reader();
                    Ok(())
                }
            };
            if let Err(exit) = done {
                return exit;
            }
            // The judged sequence may have moved with nothing to store.
            self.report_oldest();
        }
    }

    /// Makes the consumer from the input after `seq`, once the input
    /// connection is up and the partition's next inputs are swept for
    /// undecodable subjects. Ok(false): stopped meanwhile.
    async fn open_reader(&mut self, stop: &mut Stop) -> Result<bool, Exit> {
        loop {
            tokio::select! {
                _ = stop.changed() => return Ok(false),
                _ = self.input_link.connected() => {}
            }
            let generation = self.input_link.state().generation;
            let made = tokio::select! {
                _ = stop.changed() => return Ok(false),
                made = tokio::time::timeout(PROBE_TIMEOUT * 2, self.make_reader()) => made,
            };
            match made {
                Ok(Ok(())) => {
                    self.reader.generation = generation;
                    if !self.health.judging.swap(true, Ordering::Relaxed) {
                        tracing::info!(partition = self.p, seq = self.seq, "judging");
                    }
                    return Ok(true);
                }
                Ok(Err(e)) => {
                    tracing::warn!(partition = self.p, error = %e, "cannot consume the partition; retrying")
                }
                Err(_) => tracing::warn!(
                    partition = self.p,
                    "making the partition's consumer timed out; retrying"
                ),
            }
            tokio::select! {
                _ = stop.changed() => return Ok(false),
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }

    async fn make_reader(&mut self) -> Result<(), async_nats::Error> {
        self.reader
            .open(&self.ctx, self.p, self.epoch, self.seq)
            .await
    }

    fn close_reader(&mut self) {
        self.reader.close();
    }

    /// Judges one input and hands its events to the window.
    async fn handle(&mut self, msg: jetstream::Message) -> Result<(), Exit> {
        let Ok(info) = msg.info() else {
            return Ok(());
        };
        if !self.reader.in_order(&info) {
            // A message was lost between the server and here: from the
            // last input judged again.
            tracing::debug!(partition = self.p, "consumer sequence gap; making it again");
            self.close_reader();
            return Ok(());
        }
        let seq = info.stream_sequence;
        if seq <= self.seq {
            return Ok(());
        }
        self.refresh_scanner();
        let shared = Arc::clone(&self.ctx.shared);
        let metrics = &shared.metrics;
        let received = Instant::now();
        let arrived = u64::try_from(info.published.unix_timestamp_nanos() / 1_000_000).ok();
        let pending = i64::try_from(info.pending).unwrap_or(i64::MAX);
        if seq <= self.already.through_input {
            metrics.cluster.replayed.inc();
        }
        let input = match decode_limited(&msg.message.payload, shared.config.max_text_bytes) {
            Ok(i) => i,
            Err(e) => {
                let detail = e.to_string();
                return self.dead_letter(&msg, seq, e.code(), &detail).await;
            }
        };
        let streams = &shared.config.streams;
        // Restored state follows the partition, the engine the payload:
        // they must name the same conversation.
        let subject_matches =
            subject::parse_partitioned_input(streams, msg.message.subject.as_str()).is_some_and(
                |(p, tenant, token)| {
                    p == self.p
                        && tenant == input.tenant.as_ref()
                        && token == subject::id_token(&input.conversation_id)
                },
            );
        if !subject_matches {
            let detail = format!(
                "the subject must be {} (tenant and conversation_id of the payload)",
                subject::input(streams, &input.tenant, &input.conversation_id)
            );
            return self
                .dead_letter(&msg, seq, subject::SUBJECT_MISMATCH, &detail)
                .await;
        }
        let mut events = std::mem::take(&mut self.events);
        let outcome = judge(
            &mut self.engine,
            self.shadow.as_mut(),
            &shared,
            &input,
            &mut events,
            received,
        );
        self.changed.mark(&input.tenant, &input.conversation_id);
        self.changed.mark_closed(&events);
        metrics.outcome(outcome);
        self.seq = seq;
        let sent = self.send_events(&mut events, seq, arrived).await;
        self.events = events;
        self.report_open(false);
        self.report_pending(pending);
        sent
    }

    /// Hands events to the window (those an earlier holder stored are
    /// skipped); `input_seq`: the input they belong to.
    async fn send_events(
        &mut self,
        events: &mut Vec<Event>,
        input_seq: u64,
        arrived: Option<u64>,
    ) -> Result<(), Exit> {
        for e in events.drain(..) {
            if self.already.take(e.id()) {
                self.ctx.shared.metrics.replay_skipped.inc();
                continue;
            }
            let (subject, mut headers, payload) = self
                .ctx
                .shared
                .encode(&e)
                .map_err(|err| Exit::Failed(err.to_string()))?;
            self.stamp(&mut headers, input_seq);
            let item = Item {
                subject,
                headers,
                payload,
                input_seq,
                arrived_ms: arrived,
                what: What::Event(e),
            };
            self.send(item).await?;
        }
        Ok(())
    }

    /// Hands an item to the window, first waiting for room: a burst (one
    /// input with many events, thousands of idle closes at once) is stored
    /// in full, just later, and the client's own limit of unacknowledged
    /// publishes (twice every window) is never reached.
    async fn send(&mut self, item: Item) -> Result<(), Exit> {
        while self.window.is_full() {
            let s = self.window.next().await;
            self.settled(s).await?;
        }
        self.lease.hold().await?;
        self.ctx.shared.metrics.output_pending.inc();
        let now = self.ctx.shared.health.now_ms();
        self.window.send(item, now).await;
        self.report_oldest();
        Ok(())
    }

    fn stamp(&self, headers: &mut HeaderMap, input_seq: u64) {
        headers.insert(replay::PARTITION, self.p.to_string().as_str());
        headers.insert(replay::EPOCH, self.epoch.to_string().as_str());
        headers.insert(replay::INPUT_SEQ, input_seq.to_string().as_str());
    }

    /// Bad input: to the dead letters, through the window like any event.
    async fn dead_letter(
        &mut self,
        msg: &jetstream::Message,
        seq: u64,
        code: &'static str,
        detail: &str,
    ) -> Result<(), Exit> {
        self.seq = seq;
        let stream = self.ctx.shared.config.streams.input_stream.clone();
        let id = format!("deadletter.{stream}.{seq}");
        if self.already.take(&id) {
            self.ctx.shared.metrics.replay_skipped.inc();
            return Ok(());
        }
        tracing::warn!(
            partition = self.p,
            subject = %msg.message.subject,
            stream_seq = seq,
            reason = code,
            detail = %detail,
            "bad input dead-lettered"
        );
        let mut headers = HeaderMap::new();
        self.stamp(&mut headers, seq);
        let item =
            DeadLetter::of(msg, &stream, seq, code, detail).item(&self.ctx.shared, headers, seq);
        self.send(item).await
    }

    /// An item stored (or failed, or due again).
    async fn settled(&mut self, s: Settled) -> Result<(), Exit> {
        let metrics = Arc::clone(&self.ctx.shared.metrics);
        match s {
            Settled::Stored {
                item,
                duplicate,
                resent,
                stream,
                sequence,
            } => {
                metrics.output_pending.dec();
                if !duplicate || resent {
                    count_stored(&metrics, &item);
                }
                let streams = &self.ctx.shared.config.streams;
                if stream == streams.output_stream {
                    self.acked.output = self.acked.output.max(sequence);
                } else if stream == streams.deadletter_stream {
                    self.acked.deadletter = self.acked.deadletter.max(sequence);
                }
                if self.failing {
                    self.failing = false;
                    tracing::info!(partition = self.p, "events are stored again");
                }
                self.stored_tx
                    .send_replace(self.window.stored_through(self.seq));
                self.report_oldest();
            }
            Settled::Failed { kind, error } => {
                metrics.publish_failures.with_label_values(&[kind]).inc();
                if !std::mem::replace(&mut self.failing, true) {
                    tracing::warn!(partition = self.p, error = %error, "event not stored; sending it again");
                }
            }
            Settled::RetryDue => {
                self.lease.hold().await?;
                let n = self.window.resend().await;
                metrics.publish_retries.inc_by(n as u64);
            }
        }
        Ok(())
    }

    fn report_oldest(&self) {
        self.health
            .oldest_unstored_ms
            .store(self.window.oldest_since_ms(), Ordering::Relaxed);
        self.stored_tx.send_if_modified(|s| {
            let now = self.window.stored_through(self.seq);
            let moved = *s != now;
            *s = now;
            moved
        });
    }

    /// A checkpoint write finished.
    fn written(
        &mut self,
        done: Result<(HeadState, Snapshot, Written), tokio::task::JoinError>,
    ) -> Result<(), Exit> {
        self.writing = None;
        let m = &self.ctx.shared.metrics.cluster;
        let (state, snap, written) = match done {
            Ok(d) => d,
            Err(e) => return Err(Exit::Failed(format!("checkpoint task: {e}"))),
        };
        self.ckpt.done(state, &snap, &written);
        match written {
            Written::Ok => {
                m.checkpoints.with_label_values(&["ok"]).inc();
                if self.seq > self.already.through_input && self.already.len() > 0 {
                    // The replay is past what was stored before.
                    self.already.clear();
                }
                Ok(())
            }
            Written::Fenced => {
                m.checkpoints.with_label_values(&["fenced"]).inc();
                Err(Exit::Lost)
            }
            Written::Failed(e) => {
                m.checkpoints.with_label_values(&["failed"]).inc();
                tracing::warn!(partition = self.p, error = %e, "checkpoint not written; trying again later");
                self.changed.merge(snap.changed);
                Ok(())
            }
        }
    }

    /// Every checkpoint interval: deadlines passed by the clock, idle
    /// closes, a stalled consumer, and a snapshot when the state moved.
    async fn clock_pass(&mut self) -> Result<(), Exit> {
        self.refresh_scanner();
        let shared = Arc::clone(&self.ctx.shared);
        let idle_ms = shared.config.idle_timeout.as_millis() as u64;
        let now = super::now_ms();
        let mut events = std::mem::take(&mut self.events);
        self.engine.close_idle(now, idle_ms, &mut events);
        // Deadlines passed by the clock change state with no input.
        for (tenant, id) in self.engine.take_clock_changes() {
            self.changed.mark(&tenant, &id);
        }
        if let Some(shadow) = self.shadow.as_mut() {
            shadow.close_idle(&shared, now, idle_ms, &events);
        }
        self.changed.mark_closed(&events);
        let seq = self.seq;
        let sent = self.send_events(&mut events, seq, None).await;
        self.events = events;
        sent?;
        self.report_open(false);
        let m = &shared.metrics.cluster;
        m.observe_checkpoint_age(self.p, self.ckpt.written_at.elapsed());
        if !self.window.is_full() && self.reader.stalled(&self.ctx, self.p, self.seq).await {
            self.close_reader();
        }
        if self.ckpt.writing() {
            return Ok(());
        }
        if self.seq == self.ckpt.seq && self.changed.is_empty() {
            // Nothing new: the checkpoint is as good as fresh.
            self.ckpt.written_at = Instant::now();
            return Ok(());
        }
        self.start_checkpoint();
        Ok(())
    }

    /// Takes a snapshot and starts its write.
    fn start_checkpoint(&mut self) {
        if self.seq < self.ckpt.seq {
            // A head behind the one loaded would make the next holder judge
            // again what was judged.
            tracing::error!(
                partition = self.p,
                seq = self.seq,
                checkpoint_seq = self.ckpt.seq,
                "checkpoint not taken: the worker is behind its checkpoint"
            );
            return;
        }
        let changed = std::mem::take(&mut self.changed);
        let snap = self
            .ckpt
            .snapshot(&self.engine, changed, self.seq, self.acked);
        self.writing = Some(self.ckpt.write(
            snap,
            self.stored_tx.subscribe(),
            Arc::clone(&self.lease),
        ));
    }

    fn refresh_scanner(&mut self) {
        if self.scanners.has_changed().unwrap_or(false) {
            let s = Arc::clone(&self.scanners.borrow_and_update());
            self.engine.set_scanners(s);
        }
    }

    /// This partition's share of `zhijian_consumer_pending_messages`.
    fn report_pending(&mut self, pending: i64) {
        let gauge = &self.ctx.shared.metrics.consumer_pending;
        report_share(gauge, &mut self.reported_pending, pending);
    }

    fn report_open(&mut self, gone: bool) {
        let open = if gone {
            0
        } else {
            self.engine.open_conversations() as i64
        };
        let gauge = &self.ctx.shared.metrics.open_conversations;
        report_share(gauge, &mut self.reported_open, open);
    }

    /// Stop requested (hand-over or shutdown): reads nothing more, stores
    /// what is in the window and checkpoints, by the stop's deadline.
    async fn finish(&mut self, stop: &Stop) -> Exit {
        self.close_reader();
        self.health.judging.store(false, Ordering::Relaxed);
        if self.lease.is_lost() {
            return Exit::Lost;
        }
        let deadline = (*stop.borrow())
            .unwrap_or_else(|| tokio::time::Instant::now() + super::checkpoint::WRITE_PATIENCE);
        let finished = tokio::time::timeout_at(deadline, self.store_and_checkpoint()).await;
        let unsaved = || Exit::Unsaved {
            unstored: self.window.len(),
            checkpoint_seq: self.ckpt.seq,
            judged_seq: self.seq,
        };
        match finished {
            Ok(Ok(())) => Exit::Released,
            Ok(Err(exit)) => exit,
            Err(_) => {
                if let Some(w) = self.writing.take() {
                    // It must not write a head after this instance stopped.
                    w.abort();
                }
                unsaved()
            }
        }
    }

    async fn store_and_checkpoint(&mut self) -> Result<(), Exit> {
        // Everything stored first: a write under way waits for that.
        while !self.window.is_empty() {
            let s = self.window.next().await;
            self.settled(s).await?;
        }
        self.report_oldest();
        if let Some(w) = self.writing.as_mut() {
            let done = w.await;
            self.written(done)?;
        }
        // A write that fails (the state bucket electing a leader after a
        // server restart, say) is tried again until the stop's deadline
        // cuts it short.
        let mut pause = Duration::from_millis(100);
        while self.seq != self.ckpt.seq || !self.changed.is_empty() {
            self.start_checkpoint();
            let Some(w) = self.writing.as_mut() else {
                break; // behind its checkpoint: logged, not written
            };
            let done = w.await;
            self.written(done)?;
            if self.seq != self.ckpt.seq {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
        }
        if self.seq != self.ckpt.seq {
            return Err(Exit::Unsaved {
                unstored: 0,
                checkpoint_seq: self.ckpt.seq,
                judged_seq: self.seq,
            });
        }
        Ok(())
    }
}

enum Step {
    InputLink,
    OutputLink,
    Settled(Settled),
    Written(Result<(HeadState, Snapshot, Written), tokio::task::JoinError>),
    Tick,
    Message(Option<Result<jetstream::Message, jetstream::consumer::pull::MessagesError>>),
}

async fn join<T>(
    handle: &mut Option<tokio::task::JoinHandle<T>>,
) -> Result<T, tokio::task::JoinError> {
    match handle.as_mut() {
        Some(h) => h.await,
        None => std::future::pending().await,
    }
}

/// Sets this worker's share of a gauge the instance's workers add up to.
fn report_share(gauge: &prometheus::IntGauge, reported: &mut i64, now: i64) {
    gauge.add(now - *reported);
    *reported = now;
}
