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
//! Publishing is pipelined and bounded: the shard hands a job (the input
//! and its events) to its *publisher* task and judges the next message at
//! once, so a publish round trip never stalls judging. The publisher keeps
//! at most `[daemon] publish_window` events sent and unacknowledged, waiting
//! for the oldest ack before sending more. A burst of any size (one segment
//! with many hits, ten thousand idle closes at once) is therefore stored in
//! full, just later; and because the windows of all shards together stay
//! below the client's own limit of unacknowledged publishes (set in
//! `nats::setup`), a publish never waits for a permit that only its own
//! unawaited acks could free (the deadlock of a single job holding 5,000).
//!
//! At shutdown a shard finishes its queue; if the grace period runs short it
//! is told to abort: queued inputs are Nak'ed unjudged, and the events of
//! unfinished jobs go to the stash (saved with the state) while their inputs
//! are Nak'ed.
//!
//! If storing fails after the configured attempts, the events go back to the
//! shard's stash, keyed by the input (tenant, conversation, seq), and the
//! input is Nak'ed: the engine already recorded the segment, so its
//! redelivery is a duplicate to the engine, and the stash is published then.

use crate::daemon::{SendError, Shared};
use crate::engine::{Conversation, Engine, Outcome};
use crate::event::{CloseReason, Event, Input, InputKind, decode_limited};
use crate::matcher::Scanners;
use crate::subject;
use async_nats::HeaderMap;
use async_nats::jetstream::{self, AckKind, context::PublishAckFuture};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, watch};

/// Events not yet stored, by the input that produced them.
pub type Stash = HashMap<String, Vec<Event>>;

/// What a shard hands back when it stops, to be saved.
pub struct Remains {
    pub conversations: Vec<(String, String, Conversation)>,
    pub stash: Stash,
}

/// An input and the events it produced, for the publisher.
struct Job {
    /// The input to ack once all are stored; None for idle closes.
    msg: Option<jetstream::Message>,
    events: Vec<Event>,
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

/// Stash keys of saved idle-close events (no input will ask for them).
const PENDING_KEY: &str = "\u{0}pending";

pub struct Shard {
    shared: Arc<Shared>,
    engine: Engine,
    scanner_rx: watch::Receiver<Arc<Scanners>>,
    stash: Stash,
    /// Events of idle closes not yet stored (retried every tick).
    pending: Vec<Event>,
    events: Vec<Event>,
    /// Open conversations last reported to the gauge.
    reported_open: i64,
    jobs: Option<mpsc::Sender<Job>>,
    /// Stash keys of inputs whose events are being stored: a redelivery
    /// of one of them must not be acked before the first delivery's events
    /// are stored.
    in_flight_keys: HashSet<String>,
    done: mpsc::UnboundedReceiver<Done>,
    publisher: Option<tokio::task::JoinHandle<()>>,
    /// Set when the grace period runs short: stop judging, hand back.
    abort: watch::Receiver<bool>,
    /// Shadow mode: the candidate lexicon's engine.
    shadow: Option<Shadow>,
}

/// Shadow mode in one shard: a second engine with the candidate lexicon
/// judges every input after the live one, on the same clock. Its events
/// are compared with the live events by id and handed to a sender task
/// that publishes them to `<prefix>.<live subject>` with core NATS (kept by
/// the shadow stream): the live path never waits for it (a full queue
/// drops and counts) and never sees its events. Its conversations are not
/// saved across restarts.
pub struct Shadow {
    engine: Engine,
    rx: watch::Receiver<Arc<Scanners>>,
    events: Vec<Event>,
    /// To the shadow's sender task; full: the event is dropped and counted,
    /// never waited for.
    out: mpsc::Sender<(String, HeaderMap, bytes::Bytes)>,
}

/// Shadow events a shard may have waiting to be sent.
const SHADOW_QUEUE: usize = 4096;

impl Shadow {
    /// A shadow engine with the candidate lexicon of `rx`, holding at most
    /// `max_open` conversations.
    pub fn new(
        rx: &watch::Receiver<Arc<Scanners>>,
        shared: &Arc<Shared>,
        max_open: usize,
    ) -> Shadow {
        let engine = Engine::with_scanners(
            Arc::clone(&rx.borrow()),
            super::engine_config(&shared.config, max_open),
        );
        let rx = rx.clone();
        let (out, mut queue) = mpsc::channel::<(String, HeaderMap, bytes::Bytes)>(SHADOW_QUEUE);
        let client = shared.js.client();
        let failures = shared.metrics.shadow_publish_failures.clone();
        tokio::spawn(async move {
            while let Some((subject, headers, payload)) = queue.recv().await {
                if client
                    .publish_with_headers(subject, headers, payload)
                    .await
                    .is_err()
                {
                    failures.inc();
                }
            }
        });
        Shadow {
            engine,
            rx,
            events: Vec::new(),
            out,
        }
    }

    fn refresh(&mut self) {
        if self.rx.has_changed().unwrap_or(false) {
            let s = Arc::clone(&self.rx.borrow_and_update());
            self.engine.set_scanners(s);
        }
    }

    /// Judges the input the live engine judged (at the same `now`) and
    /// compares with the live engine's `live` events.
    pub(super) fn judge(&mut self, shared: &Shared, input: &Input<'_>, now: u64, live: &[Event]) {
        self.refresh();
        self.engine.handle(input, now, &mut self.events);
        // The shadow's own drops are not the live lexicon's.
        let _ = self.engine.take_suppressed();
        self.report(shared, live);
    }

    /// Closes idle conversations as the live engine did (`live`: its
    /// closing events).
    pub(super) fn close_idle(&mut self, shared: &Shared, idle_ms: u64, live: &[Event]) {
        self.refresh();
        self.engine.close_idle(now_ms(), idle_ms, &mut self.events);
        self.report(shared, live);
    }

    /// Counts agreement per rule of `live` and the shadow's events, and
    /// sends the shadow's events; clears them.
    fn report(&mut self, shared: &Shared, live: &[Event]) {
        let m = &shared.metrics;
        let violations = |events: &[Event]| -> Vec<(String, String)> {
            events
                .iter()
                .filter_map(|e| match e {
                    Event::Violation(v) => Some((v.id.clone(), v.rule_id.clone())),
                    Event::Summary(_) => None,
                })
                .collect()
        };
        let (live, shadow) = (violations(live), violations(&self.events));
        for (id, rule) in &live {
            let agreement = if shadow.iter().any(|(s, _)| s == id) {
                "both"
            } else {
                "live_only"
            };
            m.shadow_violations
                .with_label_values(&[rule, agreement])
                .inc();
        }
        for (id, rule) in &shadow {
            if !live.iter().any(|(l, _)| l == id) {
                m.shadow_violations
                    .with_label_values(&[rule, "shadow_only"])
                    .inc();
            }
        }
        let Some(config) = &shared.config.shadow else {
            self.events.clear();
            return;
        };
        for e in self.events.drain(..) {
            let (subject, headers, payload) = match shared.encode(&e) {
                Ok(encoded) => encoded,
                Err(err) => {
                    tracing::error!(error = %err, "shadow event not sent");
                    m.shadow_publish_failures.inc();
                    continue;
                }
            };
            let subject = subject::below(&config.prefix, &subject);
            if self.out.try_send((subject, headers, payload)).is_err() {
                m.shadow_publish_failures.inc();
            }
        }
    }
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
        scanner_rx: watch::Receiver<Arc<Scanners>>,
        stash: Stash,
        abort: watch::Receiver<bool>,
        shadow: Option<Shadow>,
    ) -> Shard {
        let (jobs, rx) = mpsc::channel(shared.config.shard_queue);
        let (done_tx, done) = mpsc::unbounded_channel();
        let publisher = tokio::spawn(publisher(Arc::clone(&shared), rx, done_tx, abort.clone()));
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
            jobs: Some(jobs),
            in_flight_keys: HashSet::new(),
            done,
            publisher: Some(publisher),
            abort,
            shadow,
        }
    }

    /// Runs until the channel closes (shutdown) or the abort signal, then
    /// returns what must be saved.
    pub async fn run(mut self, mut rx: mpsc::Receiver<jetstream::Message>) -> Remains {
        self.report_open();
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut abort = self.abort.clone();
        loop {
            tokio::select! {
                biased;
                _ = until_set(&mut abort) => break,
                msg = rx.recv() => match msg {
                    Some(m) => {
                        self.handle(m).await;
                        self.shared.inputs_queued.fetch_sub(1, Ordering::Relaxed);
                    }
                    None => break,
                },
                _ = tick.tick() => self.sweep().await,
            }
        }
        let aborted = *self.abort.borrow();
        if aborted {
            // Out of time: what is still queued was never judged; ask for
            // it again at once (the next instance judges it).
            rx.close();
            let mut naked = 0u64;
            while let Ok(m) = rx.try_recv() {
                ack(&m, AckKind::Nak(None)).await;
                self.shared.inputs_queued.fetch_sub(1, Ordering::Relaxed);
                naked += 1;
            }
            self.shared
                .metrics
                .naks
                .with_label_values(&["shutdown"])
                .inc_by(naked);
        }
        // Wait for the publisher: every input is acked or Nak'ed, every
        // failure is back here.
        self.jobs = None;
        if let Some(p) = self.publisher.take() {
            let _ = p.await;
        }
        self.take_failures();
        // Last chance for idle-close events that could not be stored (not
        // when out of time); what is left is saved with the state.
        if !self.pending.is_empty() {
            let pending = std::mem::take(&mut self.pending);
            let stored = !aborted && publish_all(&self.shared, &pending, None).await.is_ok();
            if !stored {
                tracing::warn!(
                    events = pending.len(),
                    "events of idle closes saved for the next start"
                );
                self.stash
                    .insert(format!("{PENDING_KEY}\u{0}{}", now_ms()), pending);
            }
        }
        Remains {
            conversations: self
                .engine
                .export()
                .map(|(t, id, c)| (t.to_string(), id.to_string(), c))
                .collect(),
            stash: self.stash,
        }
    }

    fn refresh_scanner(&mut self) {
        if self.scanner_rx.has_changed().unwrap_or(false) {
            let s = Arc::clone(&self.scanner_rx.borrow_and_update());
            self.engine.set_scanners(s);
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

    /// Events the publisher could not store: into the stash (inputs) or
    /// the retry list (idle closes).
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
        let input = match decode_limited(&msg.message.payload, self.shared.config.max_text_bytes) {
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
        let streams = &self.shared.config.streams;
        let subject_matches = subject::parse_input(streams, msg.message.subject.as_str())
            == Some((input.tenant.as_ref(), input.conversation_id.as_ref()));
        if !subject_matches {
            metrics
                .scan_seconds
                .observe(received.elapsed().as_secs_f64());
            let detail = format!(
                "the subject must be {} (tenant and conversation_id of the payload)",
                subject::input(streams, &input.tenant, &input.conversation_id)
            );
            dead_letter(&self.shared, &msg, subject::SUBJECT_MISMATCH, &detail).await;
            return;
        }
        let outcome = judge(
            &mut self.engine,
            self.shadow.as_mut(),
            &self.shared,
            &input,
            &mut self.events,
            received,
        );
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
            self.shared.progress();
            self.events = events;
            return;
        }
        let key = stash_key(&input);
        self.in_flight_keys.insert(key.clone());
        self.submit(Job {
            msg: Some(msg),
            events,
            stash_key: key,
            arrived_ms: arrived,
        })
        .await;
    }

    /// Hands a job to the publisher; waits while its queue is full (the
    /// backpressure that reaches the puller through the shard's queue).
    async fn submit(&mut self, job: Job) {
        self.shared
            .metrics
            .output_pending
            .add(job.events.len() as i64);
        let Some(tx) = &self.jobs else {
            return self.give_back(job).await;
        };
        let mut abort = self.abort.clone();
        let sent = tokio::select! {
            r = tx.send(job) => r.map_err(|mpsc::error::SendError(job)| job),
            // Out of time while the publisher is full: keep the events.
            _ = until_set(&mut abort) => Ok(()),
        };
        if let Err(job) = sent {
            // The publisher is gone (only at shutdown): keep the events.
            self.give_back(job).await;
        }
    }

    /// A job that will not be published now: its events to the stash or
    /// the retry list, its input Nak'ed.
    async fn give_back(&mut self, job: Job) {
        self.shared
            .metrics
            .output_pending
            .sub(job.events.len() as i64);
        match job.msg {
            Some(msg) => {
                self.in_flight_keys.remove(&job.stash_key);
                self.stash.insert(job.stash_key, job.events);
                ack(&msg, AckKind::Nak(Some(self.shared.config.nak_delay))).await;
            }
            None => self.pending.extend(job.events),
        }
    }

    /// Closes idle conversations and retries what could not be stored.
    async fn sweep(&mut self) {
        self.refresh_scanner();
        self.take_failures();
        let idle_ms = self.shared.config.idle_timeout.as_millis() as u64;
        let mut events = std::mem::take(&mut self.pending);
        let before = events.len();
        self.engine.close_idle(now_ms(), idle_ms, &mut events);
        self.report_open();
        if let Some(shadow) = self.shadow.as_mut() {
            shadow.close_idle(&self.shared, idle_ms, &events[before..]);
        }
        if events.is_empty() {
            self.pending = events;
            return;
        }
        self.submit(Job {
            msg: None,
            events,
            stash_key: String::new(),
            arrived_ms: None,
        })
        .await;
    }
}

/// A job being published.
struct Pending {
    id: u64,
    job: Job,
    /// Events sent whose ack has not been awaited yet.
    unresolved: usize,
    /// Every event was sent (a large job is sent as the window allows).
    sent_all: bool,
    /// Indexes of events JetStream did not store.
    failed: Vec<usize>,
}

/// The publisher of one shard: sends each job's events, at most `window`
/// unacknowledged at a time, and acks (or Naks) each input once its events
/// are stored, in order.
struct Publisher {
    shared: Arc<Shared>,
    done: mpsc::UnboundedSender<Done>,
    /// Sent events by (job id, event index), oldest first.
    window: VecDeque<(u64, usize, Result<PublishAckFuture, SendError>)>,
    jobs: VecDeque<Pending>,
    next_id: u64,
    abort: watch::Receiver<bool>,
}

async fn publisher(
    shared: Arc<Shared>,
    mut rx: mpsc::Receiver<Job>,
    done: mpsc::UnboundedSender<Done>,
    abort: watch::Receiver<bool>,
) {
    let mut p = Publisher {
        shared,
        done,
        window: VecDeque::new(),
        jobs: VecDeque::new(),
        next_id: 0,
        abort,
    };
    let mut abort = p.abort.clone();
    let mut aborted = false;
    loop {
        if *abort.borrow() {
            aborted = true;
            break;
        }
        let job = if p.window.is_empty() {
            // Nothing in flight: wait for work.
            tokio::select! {
                biased;
                _ = until_set(&mut abort) => continue,
                job = rx.recv() => match job {
                    Some(job) => Some(job),
                    None => break,
                },
            }
        } else {
            // New work first (it is sent while older acks are on their
            // way), else wait for the oldest ack.
            rx.try_recv().ok()
        };
        let progressed = match job {
            Some(job) => p.start(job).await,
            None => p.resolve_oldest().await,
        };
        if !progressed {
            aborted = true;
            break;
        }
    }
    if !aborted {
        while !p.window.is_empty() {
            if !p.resolve_oldest().await {
                break;
            }
        }
    }
    // Whatever is unfinished (only when aborted or a task died) goes back.
    rx.close();
    while let Ok(job) = rx.try_recv() {
        p.jobs.push_back(Pending {
            id: u64::MAX,
            job,
            unresolved: 0,
            sent_all: false,
            failed: Vec::new(),
        });
    }
    p.give_back_all().await;
}

impl Publisher {
    fn aborted(&self) -> bool {
        *self.abort.borrow()
    }

    /// Sends a job's events as the window allows. False when aborted.
    async fn start(&mut self, job: Job) -> bool {
        let id = self.next_id;
        self.next_id += 1;
        let n = job.events.len();
        self.jobs.push_back(Pending {
            id,
            job,
            unresolved: 0,
            sent_all: false,
            failed: Vec::new(),
        });
        for i in 0..n {
            while self.window.len() >= self.shared.config.publish_window {
                if !self.resolve_oldest().await {
                    return false;
                }
            }
            if self.aborted() {
                return false;
            }
            // The job being sent is the newest.
            let Some(pending) = self.jobs.back_mut().filter(|p| p.id == id) else {
                return true;
            };
            let sent = self.shared.send(&pending.job.events[i]).await;
            pending.unresolved += 1;
            self.window.push_back((id, i, sent));
        }
        if let Some(pending) = self.jobs.back_mut().filter(|p| p.id == id) {
            pending.sent_all = true;
        }
        self.complete_ready().await
    }

    /// Awaits the oldest ack. False when aborted.
    async fn resolve_oldest(&mut self) -> bool {
        let Some((id, i, sent)) = self.window.pop_front() else {
            return true;
        };
        let mut abort = self.abort.clone();
        let result = tokio::select! {
            biased;
            _ = until_set(&mut abort) => return false,
            r = stored(sent) => r,
        };
        // Acks are awaited in sending order and finished jobs leave from
        // the front, so the oldest ack belongs to the front job.
        let front = self.jobs.front().is_some_and(|p| p.id == id);
        let job = if front {
            self.jobs.front_mut()
        } else {
            self.jobs.iter_mut().find(|p| p.id == id)
        };
        if let Some(p) = job {
            p.unresolved -= 1;
            let event = &p.job.events[i];
            match result {
                Ok(duplicate) => {
                    if !duplicate {
                        count_stored(&self.shared, event, p.job.arrived_ms);
                    }
                    self.shared.progress();
                }
                Err(_) => {
                    count_failure(&self.shared, event);
                    p.failed.push(i);
                }
            }
        }
        self.complete_ready().await
    }

    /// Finishes the jobs at the front whose events were all resolved:
    /// retries failures, then acks (or Naks) the input. False when aborted.
    async fn complete_ready(&mut self) -> bool {
        while self
            .jobs
            .front()
            .is_some_and(|p| p.sent_all && p.unresolved == 0)
        {
            let Some(p) = self.jobs.pop_front() else {
                break;
            };
            let result = if p.failed.is_empty() {
                Ok(())
            } else {
                let retry: Vec<Event> = p.failed.iter().map(|&i| p.job.events[i].clone()).collect();
                let mut abort = self.abort.clone();
                let r = tokio::select! {
                    biased;
                    _ = until_set(&mut abort) => None,
                    r = publish_all(&self.shared, &retry, p.job.arrived_ms) => Some(r),
                };
                match r {
                    Some(r) => r,
                    None => {
                        self.jobs.push_front(p);
                        return false;
                    }
                }
            };
            self.shared
                .metrics
                .output_pending
                .sub(p.job.events.len() as i64);
            let stash_key = p.job.msg.as_ref().map(|_| p.job.stash_key.clone());
            match (result, p.job.msg) {
                (Ok(()), Some(msg)) => {
                    ack(&msg, AckKind::Ack).await;
                    self.shared.progress();
                    let _ = self.done.send(Done {
                        stash_key,
                        failed: None,
                    });
                }
                (Ok(()), None) => {}
                (Err(e), msg) => {
                    tracing::warn!(events = p.failed.len(), error = %e, "cannot store events; will retry");
                    // Send the whole job's events back: publishing them
                    // again is harmless (de-duplicated by id).
                    let _ = self.done.send(Done {
                        stash_key,
                        failed: Some(p.job.events),
                    });
                    if let Some(msg) = msg {
                        self.shared
                            .metrics
                            .naks
                            .with_label_values(&["publish_failed"])
                            .inc();
                        ack(&msg, AckKind::Nak(Some(self.shared.config.nak_delay))).await;
                    }
                }
            }
        }
        true
    }

    /// Hands every unfinished job back to the shard (events to the stash,
    /// inputs Nak'ed): published events are de-duplicated by id when the
    /// stash is published again.
    async fn give_back_all(&mut self) {
        self.window.clear();
        while let Some(p) = self.jobs.pop_front() {
            self.shared
                .metrics
                .output_pending
                .sub(p.job.events.len() as i64);
            let stash_key = p.job.msg.as_ref().map(|_| p.job.stash_key.clone());
            if let Some(msg) = &p.job.msg {
                self.shared
                    .metrics
                    .naks
                    .with_label_values(&["shutdown"])
                    .inc();
                ack(msg, AckKind::Nak(None)).await;
            }
            let _ = self.done.send(Done {
                stash_key,
                failed: Some(p.job.events),
            });
        }
    }
}

/// Whether a publish was stored: Ok(duplicate) or the error.
async fn stored(sent: Result<PublishAckFuture, SendError>) -> Result<bool, SendError> {
    Ok(sent?.await.map_err(SendError::from)?.duplicate)
}

/// Publishes events and waits for them to be stored, retrying failures up
/// to the configured attempts (the first attempt already happened).
async fn publish_all(
    shared: &Shared,
    events: &[Event],
    arrived_ms: Option<u64>,
) -> Result<(), NotStored> {
    let mut todo: Vec<&Event> = events.iter().collect();
    let mut last_error = None;
    for attempt in 1..shared.config.publish_attempts.max(2) {
        shared.metrics.publish_retries.inc_by(todo.len() as u64);
        tokio::time::sleep(Duration::from_millis(50 << attempt.min(6))).await;
        let mut failed = Vec::new();
        for e in todo {
            let sent = shared.send(e).await;
            match stored(sent).await {
                Ok(duplicate) => {
                    if !duplicate {
                        count_stored(shared, e, arrived_ms);
                    }
                }
                Err(err) => {
                    count_failure(shared, e);
                    last_error = Some(err);
                    failed.push(e);
                }
            }
        }
        if failed.is_empty() {
            return Ok(());
        }
        todo = failed;
    }
    Err(NotStored {
        failed: todo.len(),
        total: events.len(),
        source: last_error,
    })
}

/// Events still not stored after the configured attempts, with the last
/// attempt's error.
#[derive(Debug, thiserror::Error)]
#[error("{failed} of {total} events not stored{}", .source.as_ref().map(|e| format!(": {e}")).unwrap_or_default())]
pub(super) struct NotStored {
    failed: usize,
    total: usize,
    #[source]
    source: Option<SendError>,
}

pub(super) fn count_failure(shared: &Shared, event: &Event) {
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

pub(super) fn count_stored(shared: &Shared, event: &Event, arrived_ms: Option<u64>) {
    let m = &shared.metrics;
    let (kind, arrived) = match event {
        Event::Violation(v) => {
            m.violations
                .with_label_values(&[v.category.as_str(), &v.rule_id, v.severity.as_str()])
                .inc();
            if v.count > 1 {
                m.limits
                    .with_label_values(&["repeated_hits"])
                    .inc_by(u64::from(v.count - 1));
            }
            if v.text_start > 0 || v.text.len() < v.text_chars {
                m.limits.with_label_values(&["excerpt"]).inc();
            }
            m.tenant_violation(&v.tenant, &v.category);
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
    let letter = DeadLetter::of(msg, &stream, seq, code, detail);
    match publish_dead_letter(shared, letter).await {
        Ok(()) => {
            tracing::warn!(
                subject = %msg.message.subject,
                stream_seq = seq,
                reason = code,
                detail = %detail,
                deadletter = %subject::deadletter(&shared.config.streams),
                "bad input dead-lettered"
            );
            ack(msg, AckKind::Term).await;
        }
        Err(e) => {
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

/// What a dead letter carries.
pub struct DeadLetter<'a> {
    pub stream: &'a str,
    pub seq: u64,
    pub subject: &'a str,
    pub code: &'static str,
    pub detail: &'a str,
    pub payload: bytes::Bytes,
}

impl<'a> DeadLetter<'a> {
    /// The dead letter of input message `msg`, sequence `seq` of `stream`.
    pub fn of(
        msg: &'a jetstream::Message,
        stream: &'a str,
        seq: u64,
        code: &'static str,
        detail: &'a str,
    ) -> DeadLetter<'a> {
        DeadLetter {
            stream,
            seq,
            subject: msg.message.subject.as_str(),
            code,
            detail,
            payload: msg.message.payload.clone(),
        }
    }
}

/// Stores a dead letter: the payload (cut to fit the server's maximum
/// message size, with `Zhijian-Truncated` giving the original length) and
/// the reason, subject and original stream sequence in headers. Counted
/// as bad input once stored.
pub async fn publish_dead_letter(shared: &Shared, letter: DeadLetter<'_>) -> Result<(), SendError> {
    let code = letter.code;
    let mut headers = HeaderMap::new();
    headers.insert(
        "Nats-Msg-Id",
        format!("deadletter.{}.{}", letter.stream, letter.seq).as_str(),
    );
    headers.insert("Zhijian-Error", code);
    let detail: String = letter
        .detail
        .chars()
        .filter(|c| !c.is_control())
        .take(512)
        .collect();
    headers.insert("Zhijian-Error-Detail", detail.as_str());
    // A header value cannot hold every byte a subject may: keep it printable
    // and bounded.
    let subject: String = letter
        .subject
        .chars()
        .map(|c| if c.is_control() { '\u{FFFD}' } else { c })
        .take(1024)
        .collect();
    headers.insert("Zhijian-Original-Subject", subject.as_str());
    headers.insert("Zhijian-Original-Sequence", letter.seq.to_string().as_str());
    let mut payload = letter.payload;
    // The input was at most the server's limit, but its dead letter adds
    // headers: cut the payload so the letter fits (with room for the
    // protocol line), and say so.
    let max = shared.max_payload;
    let room = max.saturating_sub(header_bytes(&headers) + 256);
    if payload.len() > room {
        headers.insert("Zhijian-Truncated", payload.len().to_string().as_str());
        payload.truncate(room);
        shared
            .metrics
            .limits
            .with_label_values(&["deadletter_truncated"])
            .inc();
    }
    let sent = shared
        .js
        .publish_with_headers(
            subject::deadletter(&shared.config.streams).to_string(),
            headers,
            payload,
        )
        .await
        .map_err(SendError::from);
    match stored(sent).await {
        Ok(_) => {
            shared.metrics.bad_messages.with_label_values(&[code]).inc();
            shared.metrics.deadlettered.with_label_values(&[code]).inc();
            shared.progress();
            Ok(())
        }
        Err(e) => {
            shared
                .metrics
                .publish_failures
                .with_label_values(&["deadletter"])
                .inc();
            Err(e)
        }
    }
}

/// The size of headers on the wire (`NATS/1.0` line, `name: value` lines,
/// blank line).
fn header_bytes(headers: &HeaderMap) -> usize {
    let mut n = "NATS/1.0\r\n\r\n".len();
    for (name, values) in headers.iter() {
        for v in values {
            n += name.to_string().len() + 2 + v.as_str().len() + 2;
        }
    }
    n
}

/// Resolves once the flag is set; never if its sender is gone unset (a
/// dropped sender must not read as "abort", nor spin a loop that waits).
async fn until_set(flag: &mut watch::Receiver<bool>) {
    if flag.wait_for(|set| *set).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Asks for a message again at once (it was not judged).
pub async fn nak_now(msg: &jetstream::Message) {
    ack(msg, AckKind::Nak(None)).await;
}

/// Judges one input with `engine`, counting the segment, the time it took
/// since `received` and the hits dropped (by rule and reason).
/// Judges one input with the live engine at the wall clock's `now`, and
/// with the shadow (shadow mode) at the same `now`.
pub(super) fn judge(
    engine: &mut Engine,
    shadow: Option<&mut Shadow>,
    shared: &Shared,
    input: &Input<'_>,
    out: &mut Vec<Event>,
    received: Instant,
) -> Outcome {
    let metrics = &shared.metrics;
    if let InputKind::Segment(s) = &input.kind {
        metrics.segment(input.channel, s.speaker);
    }
    let now = now_ms();
    let outcome = engine.handle(input, now, out);
    if let Some(shadow) = shadow {
        shadow.judge(shared, input, now, out);
    }
    metrics
        .scan_seconds
        .observe(received.elapsed().as_secs_f64());
    for (rule, reason, n) in engine.take_suppressed() {
        metrics
            .suppressed_hits
            .with_label_values(&[&rule, reason])
            .inc_by(n);
    }
    outcome
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
