//! A shard: one worker task owning one [`Engine`] and the conversations
//! routed to it. Messages of one conversation always reach the same shard
//! and are handled one at a time, so segments are judged in order.
//!
//! Acknowledgement order, per message: decode → judge → publish every
//! event through JetStream (the event id as `Nats-Msg-Id`) and wait for the
//! acks → ack the input. A message is never acked before its events are
//! safely stored, so a crash anywhere loses nothing: the input is
//! redelivered and the output stream drops the duplicate events.
//!
//! If publishing fails after the configured attempts, the events are kept
//! in a stash keyed by the input (tenant, conversation, seq) and the input
//! is Nak'ed: the engine already recorded the segment, so its redelivery is
//! a duplicate to the engine, and the stash is what gets published then.

use crate::daemon::Shared;
use crate::engine::{Conversation, Engine, Outcome};
use crate::event::{CloseReason, Event, Input, InputKind, decode};
use crate::matcher::Scanner;
use async_nats::HeaderMap;
use async_nats::jetstream::{self, AckKind};
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
        Shard {
            shared,
            engine,
            scanner_rx,
            stash,
            pending: Vec::new(),
            events: Vec::new(),
            reported_open: 0,
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
        // Last chance for idle-close events that could not be stored.
        if !self.pending.is_empty() {
            let pending = std::mem::take(&mut self.pending);
            if let Err(e) = self.publish(&pending, None).await {
                tracing::error!(events = pending.len(), error = %e, "events of idle closes lost at shutdown");
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
        let metrics = &self.shared.metrics;
        let input = match decode(&msg.message.payload) {
            Ok(i) => i,
            Err(e) => {
                metrics
                    .scan_seconds
                    .observe(received.elapsed().as_secs_f64());
                self.dead_letter(&msg, e.code(), &e.to_string()).await;
                return;
            }
        };
        if let InputKind::Segment(s) = &input.kind {
            metrics.segment(input.channel, s.speaker);
        }
        let outcome = self.engine.handle(&input, now_ms(), &mut self.events);
        metrics
            .scan_seconds
            .observe(received.elapsed().as_secs_f64());
        metrics.outcome(outcome);
        self.report_open();
        let key = stash_key(&input);
        let mut events = std::mem::take(&mut self.events);
        if events.is_empty()
            && matches!(outcome, Outcome::Duplicate | Outcome::Late)
            && let Some(stashed) = self.stash.remove(&key)
        {
            events = stashed;
        }
        if events.is_empty() {
            ack(&msg, AckKind::Ack).await;
            self.events = events;
            return;
        }
        match self.publish(&events, arrived).await {
            Ok(()) => ack(&msg, AckKind::Ack).await,
            Err(e) => {
                tracing::warn!(
                    subject = %msg.message.subject,
                    events = events.len(),
                    error = %e,
                    "cannot store events; input Nak'ed for redelivery"
                );
                self.shared
                    .metrics
                    .naks
                    .with_label_values(&["publish_failed"])
                    .inc();
                self.stash.insert(key, std::mem::take(&mut events));
                ack(&msg, AckKind::Nak(Some(self.shared.config.nak_delay))).await;
            }
        }
        events.clear();
        self.events = events;
    }

    /// Closes idle conversations and retries what could not be stored.
    async fn sweep(&mut self) {
        self.refresh_scanner();
        let idle_ms = self.shared.config.idle_timeout.as_millis() as u64;
        let mut events = std::mem::take(&mut self.pending);
        self.engine.close_idle(now_ms(), idle_ms, &mut events);
        self.report_open();
        if events.is_empty() {
            self.pending = events;
            return;
        }
        if let Err(e) = self.publish(&events, None).await {
            tracing::warn!(events = events.len(), error = %e, "cannot store events of idle closes; will retry");
            self.pending = events;
        }
    }

    /// Publishes events and waits for JetStream to store them, retrying
    /// failures; counts what was stored.
    async fn publish(&self, events: &[Event], arrived_ms: Option<u64>) -> Result<(), String> {
        let shared = &self.shared;
        let mut todo: Vec<usize> = (0..events.len()).collect();
        let mut last_error = String::new();
        for attempt in 0..shared.config.publish_attempts {
            if attempt > 0 {
                shared.metrics.publish_retries.inc_by(todo.len() as u64);
                tokio::time::sleep(Duration::from_millis(50 << attempt.min(6))).await;
            }
            let mut acks = Vec::with_capacity(todo.len());
            for &i in &todo {
                let (subject, headers, payload) = shared.encode(&events[i]);
                acks.push((
                    i,
                    shared
                        .js
                        .publish_with_headers(subject, headers, payload)
                        .await,
                ));
            }
            let mut failed = Vec::new();
            for (i, sent) in acks {
                let stored = match sent {
                    Ok(ack) => ack.await.map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                match stored {
                    // A duplicate was stored before (a redelivery): count
                    // each event once.
                    Ok(ack) if ack.duplicate => {}
                    Ok(_) => self.count_stored(&events[i], arrived_ms),
                    Err(e) => {
                        let kind = match events[i] {
                            Event::Violation(_) => "violation",
                            Event::Summary(_) => "summary",
                        };
                        shared
                            .metrics
                            .publish_failures
                            .with_label_values(&[kind])
                            .inc();
                        last_error = e;
                        failed.push(i);
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

    fn count_stored(&self, event: &Event, arrived_ms: Option<u64>) {
        let m = &self.shared.metrics;
        let (kind, arrived) = match event {
            Event::Violation(v) => {
                m.violations
                    .with_label_values(&[v.category.as_str(), &v.rule_id, v.severity.as_str()])
                    .inc();
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
    async fn dead_letter(&self, msg: &jetstream::Message, code: &'static str, detail: &str) {
        let shared = &self.shared;
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
        let stored = match shared
            .js
            .publish_with_headers(
                shared.config.streams.deadletter_subject.clone(),
                headers,
                msg.message.payload.clone(),
            )
            .await
        {
            Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match stored {
            Ok(()) => {
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

/// The shard of a stash key (`tenant\0conversation\0…`).
pub fn shard_of_stash(key: &str, shards: usize) -> usize {
    let mut parts = key.split('\u{0}');
    let tenant = parts.next().unwrap_or_default();
    let id = parts.next().unwrap_or_default();
    shard_of(tenant, id, shards)
}
