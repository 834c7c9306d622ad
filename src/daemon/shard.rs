//! A shard: one worker task owning one [`Engine`] and the conversations
//! routed to it. Messages of one conversation always reach the same shard
//! and are judged one at a time, in order.
//!
//! Acknowledgement order, per message: decode → judge → publish every
//! event through JetStream (the event id as `Nats-Msg-Id`) → once JetStream
//! acknowledged every event, ack the input. A message is never acked before
//! its events are stored, so a crash anywhere loses nothing: the input is
//! redelivered and the output stream drops the duplicate events.
//!
//! The wait for JetStream's acks is pipelined: the shard hands the pending
//! publishes to its *acker* task and judges the next message at once, so a
//! publish round trip never stalls judging (it cost p99 latency under load).
//!
//! If storing fails after the configured attempts, the events go back to the
//! shard's stash, keyed by the input (tenant, conversation, seq), and the
//! input is Nak'ed: the engine already recorded the segment, so its
//! redelivery is a duplicate to the engine, and the stash is published then.

use crate::daemon::Shared;
use crate::engine::{Conversation, Engine, Outcome};
use crate::event::{CloseReason, Event, Input, InputKind, decode};
use crate::matcher::Scanner;
use async_nats::HeaderMap;
use async_nats::jetstream::{self, AckKind, context::PublishAckFuture};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, watch};

/// Events not yet stored, by the input that produced them.
pub type Stash = HashMap<String, Vec<Event>>;

/// What a shard hands back when it stops, to be saved.
pub struct Remains {
    pub conversations: Vec<(String, String, Conversation)>,
    pub stash: Stash,
}

/// Publishes sent, waiting for JetStream's acks (in the acker task).
struct InFlight {
    /// The input to ack once all are stored; None for idle closes.
    msg: Option<jetstream::Message>,
    events: Vec<Event>,
    acks: Vec<Result<PublishAckFuture, String>>,
    stash_key: String,
    arrived_ms: Option<u64>,
}

/// The outcome of a job, back to the shard: its input is no longer in
/// flight, and what could not be stored goes to the stash (inputs) or the
/// retry list (idle closes).
struct Done {
    stash_key: Option<String>,
    failed: Option<Vec<Event>>,
}

/// Dead-letter reason: the subject does not name the payload's
/// conversation.
pub const SUBJECT_MISMATCH: &str = "subject_mismatch";

/// Stash keys of saved idle-close events (no input will ask for them).
const PENDING_KEY: &str = "\u{0}pending";

pub struct Shard {
    shared: Arc<Shared>,
    engine: Engine,
    scanner_rx: watch::Receiver<Arc<Scanner>>,
    stash: Stash,
    /// Events of idle closes not yet stored (retried every tick).
    pending: Vec<Event>,
    events: Vec<Event>,
    /// Open conversations last reported to the gauge.
    reported_open: i64,
    in_flight: Option<mpsc::Sender<InFlight>>,
    /// Stash keys of inputs whose events are being stored: a redelivery
    /// of one of them must not be acked before the first delivery's events
    /// are stored.
    in_flight_keys: std::collections::HashSet<String>,
    done: mpsc::UnboundedReceiver<Done>,
    acker: Option<tokio::task::JoinHandle<()>>,
}

/// Wall-clock milliseconds since the epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The stash key of an input: which redelivery its events belong to.
fn stash_key(input: &Input<'_>) -> String {
    match &input.kind {
        InputKind::Segment(s) => format!(
            "{}\u{0}{}\u{0}{}",
            input.tenant, input.conversation_id, s.seq
        ),
        InputKind::End => format!("{}\u{0}{}\u{0}end", input.tenant, input.conversation_id),
    }
}

impl Shard {
    pub fn new(
        shared: Arc<Shared>,
        engine: Engine,
        scanner_rx: watch::Receiver<Arc<Scanner>>,
        stash: Stash,
    ) -> Shard {
        let (in_flight, rx) = mpsc::channel(shared.config.shard_queue);
        let (done_tx, done) = mpsc::unbounded_channel();
        let acker = tokio::spawn(acker(Arc::clone(&shared), rx, done_tx));
        // Saved idle-close events are retried like any pending ones.
        let mut stash = stash;
        let saved: Vec<String> = stash
            .keys()
            .filter(|k| k.starts_with(PENDING_KEY))
            .cloned()
            .collect();
        let pending = saved
            .iter()
            .filter_map(|k| stash.remove(k))
            .flatten()
            .collect();
        Shard {
            shared,
            engine,
            scanner_rx,
            stash,
            pending,
            events: Vec::new(),
            reported_open: 0,
            in_flight: Some(in_flight),
            in_flight_keys: std::collections::HashSet::new(),
            done,
            acker: Some(acker),
        }
    }

    /// Runs until the channel closes (shutdown), then returns what must be
    /// saved.
    pub async fn run(mut self, mut rx: mpsc::Receiver<jetstream::Message>) -> Remains {
        self.report_open();
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(m) => self.handle(m).await,
                    None => break,
                },
                _ = tick.tick() => self.sweep().await,
            }
        }
        // Wait for the acker: every input is acked or Nak'ed, every failure
        // is back here.
        self.in_flight = None;
        if let Some(a) = self.acker.take() {
            let _ = a.await;
        }
        self.take_failures();
        // Last chance for idle-close events that could not be stored; if
        // that fails too they are saved with the state.
        if !self.pending.is_empty() {
            let pending = std::mem::take(&mut self.pending);
            if let Err(e) = publish_all(&self.shared, &pending, None).await {
                tracing::warn!(events = pending.len(), error = %e, "events of idle closes saved for the next start");
                self.stash
                    .insert(format!("{PENDING_KEY}\u{0}{}", now_ms()), pending);
            }
        }
        Remains {
            conversations: self
                .engine
                .export()
                .map(|(t, id, c)| (t.to_string(), id.to_string(), c.clone()))
                .collect(),
            stash: self.stash,
        }
    }

    fn refresh_scanner(&mut self) {
        if self.scanner_rx.has_changed().unwrap_or(false) {
            let s = Arc::clone(&self.scanner_rx.borrow_and_update());
            self.engine.set_scanner(s);
        }
    }

    fn report_open(&mut self) {
        let open = self.engine.open_conversations() as i64;
        self.shared
            .metrics
            .open_conversations
            .add(open - self.reported_open);
        self.reported_open = open;
    }

    /// Events the acker could not store: into the stash (inputs) or the
    /// retry list (idle closes).
    fn take_failures(&mut self) {
        while let Ok(d) = self.done.try_recv() {
            if let Some(key) = &d.stash_key {
                self.in_flight_keys.remove(key);
            }
            match (d.stash_key, d.failed) {
                (Some(key), Some(events)) => {
                    self.stash.insert(key, events);
                }
                (None, Some(events)) => self.pending.extend(events),
                (_, None) => {}
            }
        }
    }

    async fn handle(&mut self, msg: jetstream::Message) {
        let received = Instant::now();
        // When the input entered the stream: the start of end-to-end
        // latency (falls back to receipt).
        let arrived = msg
            .info()
            .ok()
            .map(|i| i.published.unix_timestamp_nanos())
            .and_then(|ns| u64::try_from(ns / 1_000_000).ok());
        self.refresh_scanner();
        self.take_failures();
        let metrics = &self.shared.metrics;
        let input = match decode(&msg.message.payload) {
            Ok(i) => i,
            Err(e) => {
                metrics
                    .scan_seconds
                    .observe(received.elapsed().as_secs_f64());
                dead_letter(&self.shared, &msg, e.code(), &e.to_string()).await;
                return;
            }
        };
        // Sharding (and restored state) follow the subject, the engine the
        // payload: they must name the same conversation.
        let subject_matches = msg
            .message
            .subject
            .as_str()
            .strip_prefix(self.shared.config.streams.input_prefix.as_str())
            .and_then(|r| r.strip_prefix('.'))
            .and_then(|r| r.strip_prefix(input.tenant.as_ref()))
            .and_then(|r| r.strip_prefix('.'))
            == Some(input.conversation_id.as_ref());
        if !subject_matches {
            metrics
                .scan_seconds
                .observe(received.elapsed().as_secs_f64());
            let detail = format!(
                "the subject must be {}.{}.{} (tenant and conversation_id of the payload)",
                self.shared.config.streams.input_prefix, input.tenant, input.conversation_id
            );
            dead_letter(&self.shared, &msg, SUBJECT_MISMATCH, &detail).await;
            return;
        }
        if let InputKind::Segment(s) = &input.kind {
            metrics.segment(input.channel, s.speaker);
        }
        let outcome = self.engine.handle(&input, now_ms(), &mut self.events);
        metrics
            .scan_seconds
            .observe(received.elapsed().as_secs_f64());
        metrics.outcome(outcome);
        self.report_open();
        let mut events = std::mem::take(&mut self.events);
        // A redelivery while the first delivery's events are still being
        // stored: acking it now could ack the input before its events are
        // stored. Ask for it again later.
        if matches!(
            outcome,
            Outcome::Duplicate | Outcome::Late | Outcome::UnknownEnd
        ) && !self.in_flight_keys.is_empty()
            && self.in_flight_keys.contains(&stash_key(&input))
        {
            self.shared
                .metrics
                .naks
                .with_label_values(&["in_flight"])
                .inc();
            ack(&msg, AckKind::Nak(Some(self.shared.config.nak_delay))).await;
            events.clear();
            self.events = events;
            return;
        }
        // A redelivery of an input whose events could not be stored: they
        // are in the stash. Stashed events go first: after a restart the
        // engine may judge the input again from less state (no tombstone),
        // and the first event stored under an id is the one that counts.
        if !self.stash.is_empty()
            && let Some(mut stashed) = self.stash.remove(&stash_key(&input))
        {
            stashed.append(&mut events);
            events = stashed;
        }
        if events.is_empty() {
            ack(&msg, AckKind::Ack).await;
            self.events = events;
            return;
        }
        let key = stash_key(&input);
        self.in_flight_keys.insert(key.clone());
        let acks = send_all(&self.shared, &events).await;
        self.submit(InFlight {
            msg: Some(msg),
            events,
            acks,
            stash_key: key,
            arrived_ms: arrived,
        })
        .await;
    }

    async fn submit(&mut self, job: InFlight) {
        if let Some(tx) = &self.in_flight
            && let Err(mpsc::error::SendError(job)) = tx.send(job).await
        {
            // The acker is gone (only at shutdown): keep the events.
            self.stash.insert(job.stash_key, job.events);
        }
    }

    /// Closes idle conversations and retries what could not be stored.
    async fn sweep(&mut self) {
        self.refresh_scanner();
        self.take_failures();
        let idle_ms = self.shared.config.idle_timeout.as_millis() as u64;
        let mut events = std::mem::take(&mut self.pending);
        self.engine.close_idle(now_ms(), idle_ms, &mut events);
        self.report_open();
        if events.is_empty() {
            self.pending = events;
            return;
        }
        let acks = send_all(&self.shared, &events).await;
        self.submit(InFlight {
            msg: None,
            events,
            acks,
            stash_key: String::new(),
            arrived_ms: None,
        })
        .await;
    }
}

/// Sends every event; returns the ack futures (or the send error).
async fn send_all(shared: &Shared, events: &[Event]) -> Vec<Result<PublishAckFuture, String>> {
    let mut acks = Vec::with_capacity(events.len());
    for e in events {
        let (subject, headers, payload) = shared.encode(e);
        acks.push(
            shared
                .js
                .publish_with_headers(subject, headers, payload)
                .await
                .map_err(|e| e.to_string()),
        );
    }
    acks
}

/// Waits for the acks of each job in order, retries failures, acks or Naks
/// the input, and sends what could not be stored back to the shard.
async fn acker(
    shared: Arc<Shared>,
    mut rx: mpsc::Receiver<InFlight>,
    done: mpsc::UnboundedSender<Done>,
) {
    while let Some(job) = rx.recv().await {
        let mut retry = Vec::new();
        for (i, sent) in job.acks.into_iter().enumerate() {
            match stored(sent).await {
                Ok(duplicate) => {
                    if !duplicate {
                        count_stored(&shared, &job.events[i], job.arrived_ms);
                    }
                }
                Err(_) => {
                    count_failure(&shared, &job.events[i]);
                    retry.push(job.events[i].clone());
                }
            }
        }
        let result = if retry.is_empty() {
            Ok(())
        } else {
            publish_all(&shared, &retry, job.arrived_ms).await
        };
        let stash_key = job.msg.as_ref().map(|_| job.stash_key.clone());
        match (result, job.msg) {
            (Ok(()), Some(msg)) => {
                ack(&msg, AckKind::Ack).await;
                let _ = done.send(Done {
                    stash_key,
                    failed: None,
                });
            }
            (Ok(()), None) => {}
            (Err(e), msg) => {
                tracing::warn!(events = retry.len(), error = %e, "cannot store events; will retry");
                // Send the whole job's events back: publishing them again is
                // harmless (de-duplicated by id).
                let _ = done.send(Done {
                    stash_key,
                    failed: Some(job.events),
                });
                if let Some(msg) = msg {
                    shared
                        .metrics
                        .naks
                        .with_label_values(&["publish_failed"])
                        .inc();
                    ack(&msg, AckKind::Nak(Some(shared.config.nak_delay))).await;
                }
            }
        }
    }
}

/// Whether a publish was stored: Ok(duplicate) or the error.
async fn stored(sent: Result<PublishAckFuture, String>) -> Result<bool, String> {
    match sent {
        Ok(ack) => ack.await.map(|a| a.duplicate).map_err(|e| e.to_string()),
        Err(e) => Err(e),
    }
}

/// Publishes events and waits for them to be stored, retrying failures up
/// to the configured attempts (the first attempt already happened).
async fn publish_all(
    shared: &Shared,
    events: &[Event],
    arrived_ms: Option<u64>,
) -> Result<(), String> {
    let mut todo: Vec<&Event> = events.iter().collect();
    let mut last_error = String::new();
    for attempt in 1..shared.config.publish_attempts.max(2) {
        shared.metrics.publish_retries.inc_by(todo.len() as u64);
        tokio::time::sleep(Duration::from_millis(50 << attempt.min(6))).await;
        let mut failed = Vec::new();
        for e in todo {
            let (subject, headers, payload) = shared.encode(e);
            let sent = shared
                .js
                .publish_with_headers(subject, headers, payload)
                .await
                .map_err(|e| e.to_string());
            match stored(sent).await {
                Ok(duplicate) => {
                    if !duplicate {
                        count_stored(shared, e, arrived_ms);
                    }
                }
                Err(err) => {
                    count_failure(shared, e);
                    last_error = err;
                    failed.push(e);
                }
            }
        }
        if failed.is_empty() {
            return Ok(());
        }
        todo = failed;
    }
    Err(format!(
        "{} of {} events not stored: {last_error}",
        todo.len(),
        events.len()
    ))
}

fn count_failure(shared: &Shared, event: &Event) {
    let kind = match event {
        Event::Violation(_) => "violation",
        Event::Summary(_) => "summary",
    };
    shared
        .metrics
        .publish_failures
        .with_label_values(&[kind])
        .inc();
}

fn count_stored(shared: &Shared, event: &Event, arrived_ms: Option<u64>) {
    let m = &shared.metrics;
    let (kind, arrived) = match event {
        Event::Violation(v) => {
            m.violations
                .with_label_values(&[v.category.as_str(), &v.rule_id, v.severity.as_str()])
                .inc();
            m.tenant_violation(&v.tenant, v.category);
            ("violation", arrived_ms)
        }
        Event::Summary(s) => {
            m.conversations_closed
                .with_label_values(&[s.reason.as_str()])
                .inc();
            // Idle closes have no input: no latency to report.
            let arrived = if s.reason == CloseReason::Idle {
                None
            } else {
                arrived_ms
            };
            ("summary", arrived)
        }
    };
    if let Some(a) = arrived {
        let secs = now_ms().saturating_sub(a) as f64 / 1000.0;
        m.latency_seconds.with_label_values(&[kind]).observe(secs);
    }
}

/// Bad input: republished untouched to the dead-letter subject with the
/// reason in headers, then terminated (never redelivered). If the dead
/// letter cannot be stored, the input is Nak'ed instead: never dropped.
async fn dead_letter(shared: &Shared, msg: &jetstream::Message, code: &'static str, detail: &str) {
    let (stream, seq) = msg
        .info()
        .map(|i| (i.stream.to_string(), i.stream_sequence))
        .unwrap_or_default();
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", format!("deadletter.{stream}.{seq}").as_str());
    headers.insert("Zhijian-Error", code);
    let detail: String = detail
        .chars()
        .filter(|c| !c.is_control())
        .take(512)
        .collect();
    headers.insert("Zhijian-Error-Detail", detail.as_str());
    headers.insert("Zhijian-Original-Subject", msg.message.subject.as_str());
    headers.insert("Zhijian-Original-Sequence", seq.to_string().as_str());
    let sent = shared
        .js
        .publish_with_headers(
            shared.config.streams.deadletter_subject.clone(),
            headers,
            msg.message.payload.clone(),
        )
        .await
        .map_err(|e| e.to_string());
    match stored(sent).await {
        Ok(_) => {
            shared.metrics.bad_messages.with_label_values(&[code]).inc();
            shared.metrics.deadlettered.with_label_values(&[code]).inc();
            tracing::warn!(
                subject = %msg.message.subject,
                stream_seq = seq,
                reason = code,
                detail = %detail,
                deadletter = %shared.config.streams.deadletter_subject,
                "bad input dead-lettered"
            );
            ack(msg, AckKind::Term).await;
        }
        Err(e) => {
            shared
                .metrics
                .publish_failures
                .with_label_values(&["deadletter"])
                .inc();
            shared
                .metrics
                .naks
                .with_label_values(&["deadletter_failed"])
                .inc();
            tracing::warn!(subject = %msg.message.subject, error = %e, "cannot dead-letter bad input; Nak'ed");
            ack(msg, AckKind::Nak(Some(shared.config.nak_delay))).await;
        }
    }
}

/// Acknowledges; a failed ack only means a redelivery, which is harmless.
async fn ack(msg: &jetstream::Message, kind: AckKind) {
    if let Err(e) = msg.ack_with(kind).await {
        tracing::debug!(error = %e, "ack failed; the message will be redelivered");
    }
}

/// A saved open conversation (value in the state bucket).
#[derive(Debug, Serialize, Deserialize)]
pub struct SavedConversation {
    pub tenant: String,
    pub conversation_id: String,
    pub state: Conversation,
}

/// Saved unstored events (value in the state bucket).
#[derive(Debug, Serialize, Deserialize)]
pub struct SavedStash {
    pub key: String,
    pub events: Vec<Event>,
}

/// Which shard a conversation belongs to: FNV-1a of tenant and id, stable
/// across restarts (restored state must land where live messages go).
pub fn shard_of(tenant: &str, conversation_id: &str, shards: usize) -> usize {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in tenant.bytes().chain([0xFF]).chain(conversation_id.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    (h % shards as u64) as usize
}

/// The shard of a message by its subject `<prefix>.<tenant>.<conversation_id>`
/// (`prefix` includes the trailing dot).
pub fn shard_of_subject(subject: &str, prefix: &str, shards: usize) -> usize {
    let key = subject.strip_prefix(prefix).unwrap_or(subject);
    let (tenant, id) = key.split_once('.').unwrap_or(("", key));
    shard_of(tenant, id, shards)
}

/// The shard of a stash key (`tenant\0conversation\0…`).
pub fn shard_of_stash(key: &str, shards: usize) -> usize {
    let mut parts = key.split('\u{0}');
    let tenant = parts.next().unwrap_or_default();
    let id = parts.next().unwrap_or_default();
    shard_of(tenant, id, shards)
}
