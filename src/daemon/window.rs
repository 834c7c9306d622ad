//! The publish window of one partition: events (and dead letters) sent and
//! not yet stored, at most `[daemon] publish_window` of them.
//!
//! Acknowledgements are awaited all at once, not one after another: each
//! publish's ack future goes into one set that the worker polls beside its
//! input, so the ack timeout of every event in the window runs at the same
//! time. Acks lost in a disconnect then cost one timeout for the whole
//! window, not one per event in sequence (async-nats starts an ack's timeout
//! when it is first polled: awaiting a window of 512 one by one after a
//! disconnect cost up to 512 × 5 s). When the output connection comes back,
//! every event still waiting is sent again at once ([`Window::retry_all`]),
//! without waiting for its timeout: a re-publish carries the same
//! `Nats-Msg-Id`, so what the server had stored is not stored twice.
//!
//! An event that fails is sent again after a backoff (100 ms, doubling to
//! 5 s), as a batch with every other failed one. Nothing is ever dropped:
//! the worker's checkpoint waits for [`Window::stored_through`], the input
//! sequence below which every item is stored.

use crate::event::{CloseReason, Event};
use crate::metrics::Metrics;
use async_nats::HeaderMap;
use async_nats::jetstream::{
    self,
    context::{PublishAckFuture, PublishError},
    publish::PublishAck,
};
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// What an item is, for the metrics counted when it is stored.
// Events are the common case and dead letters rare: boxing the event to
// even the sizes would allocate once more per event.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub(super) enum What {
    Event(Event),
    DeadLetter(&'static str),
}

/// One message to store: where, what, and the input it came from.
#[derive(Debug)]
pub(super) struct Item {
    pub subject: String,
    pub headers: HeaderMap,
    pub payload: Bytes,
    /// The partition's input sequence it belongs to (events of a clock
    /// pass: the last input judged before it).
    pub input_seq: u64,
    /// When its input entered the stream (ms since the epoch), for the
    /// end-to-end latency.
    pub arrived_ms: Option<u64>,
    pub what: What,
}

impl Item {
    fn kind(&self) -> &'static str {
        match &self.what {
            What::Event(Event::Violation(_)) => "violation",
            What::Event(Event::Summary(_)) => "summary",
            What::DeadLetter(_) => "deadletter",
        }
    }
}

struct Pending {
    item: Item,
    /// Which send of the item the ack in flight answers; an answer to an
    /// earlier send is ignored.
    attempt: u32,
    /// When it was first sent (the health clock's ms).
    since_ms: u64,
}

type Ack = Pin<Box<dyn Future<Output = (u64, u32, Result<PublishAck, PublishError>)> + Send>>;

/// What [`Window::next`] saw.
// `Stored` moves its item out once; the others are rare.
#[allow(clippy::large_enum_variant)]
pub(super) enum Settled {
    /// Stored by the stream (`duplicate`: it had been already; `resent`:
    /// this worker sent it more than once, so a duplicate is its own
    /// earlier send, stored with its ack lost, and is counted now).
    Stored {
        item: Item,
        duplicate: bool,
        resent: bool,
        stream: String,
        sequence: u64,
    },
    /// Not stored; it will be sent again.
    Failed {
        kind: &'static str,
        error: PublishError,
    },
    /// Failed items are due to be sent again: call [`Window::resend`].
    RetryDue,
}

pub(super) struct Window {
    js: jetstream::Context,
    capacity: usize,
    next_no: u64,
    pending: BTreeMap<u64, Pending>,
    acks: FuturesUnordered<Ack>,
    retry: BTreeSet<u64>,
    retry_at: Option<tokio::time::Instant>,
    backoff: Duration,
}

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

impl Window {
    pub(super) fn new(js: jetstream::Context, capacity: usize) -> Window {
        Window {
            js,
            capacity: capacity.max(1),
            next_no: 0,
            pending: BTreeMap::new(),
            acks: FuturesUnordered::new(),
            retry: BTreeSet::new(),
            retry_at: None,
            backoff: FIRST_BACKOFF,
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    pub(super) fn len(&self) -> usize {
        self.pending.len()
    }

    /// No more may be sent until some are stored.
    pub(super) fn is_full(&self) -> bool {
        self.pending.len() >= self.capacity
    }

    /// Every input up to this sequence has all its items stored (`judged`:
    /// the last input judged, when nothing waits).
    pub(super) fn stored_through(&self, judged: u64) -> u64 {
        self.pending
            .values()
            .next()
            .map_or(judged, |p| p.item.input_seq.saturating_sub(1))
    }

    /// When the oldest item waiting was first sent (the health clock's
    /// ms), 0 when none waits.
    pub(super) fn oldest_since_ms(&self) -> u64 {
        self.pending.values().next().map_or(0, |p| p.since_ms)
    }

    /// Sends an item; its ack is awaited by [`Window::next`].
    pub(super) async fn send(&mut self, item: Item, now_ms: u64) {
        let no = self.next_no;
        self.next_no += 1;
        let sent = publish(&self.js, &item).await;
        self.pending.insert(
            no,
            Pending {
                item,
                attempt: 0,
                since_ms: now_ms,
            },
        );
        self.track(no, 0, sent);
    }

    fn track(&mut self, no: u64, attempt: u32, sent: Result<PublishAckFuture, PublishError>) {
        match sent {
            Ok(ack) => self
                .acks
                .push(Box::pin(async move { (no, attempt, ack.await) })),
            Err(e) => self
                .acks
                .push(Box::pin(async move { (no, attempt, Err(e)) })),
        }
    }

    /// The next ack (or failure) of an item, or that failed items are due
    /// again. Cancel-safe: it only waits. Never resolves when nothing waits.
    pub(super) async fn next(&mut self) -> Settled {
        loop {
            let retry_at = self.retry_at;
            let done = tokio::select! {
                Some(done) = self.acks.next(), if !self.acks.is_empty() => done,
                _ = sleep_until(retry_at), if retry_at.is_some() => {
                    self.retry_at = None;
                    return Settled::RetryDue;
                }
                else => std::future::pending().await,
            };
            let (no, attempt, result) = done;
            if self.pending.get(&no).is_none_or(|p| p.attempt != attempt) {
                // An answer to an earlier send of an item sent again since.
                continue;
            }
            match result {
                Ok(ack) => {
                    self.backoff = FIRST_BACKOFF;
                    // Stored after all, though already due again (retry_all).
                    self.retry.remove(&no);
                    let Some(p) = self.pending.remove(&no) else {
                        continue;
                    };
                    return Settled::Stored {
                        item: p.item,
                        duplicate: ack.duplicate,
                        resent: p.attempt > 0,
                        stream: ack.stream,
                        sequence: ack.sequence,
                    };
                }
                Err(_) if self.retry.contains(&no) => continue,
                Err(error) => {
                    let kind = self.pending.get(&no).map_or("event", |p| p.item.kind());
                    self.retry.insert(no);
                    if self.retry_at.is_none() {
                        self.retry_at = Some(tokio::time::Instant::now() + self.backoff);
                        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                    }
                    return Settled::Failed { kind, error };
                }
            }
        }
    }

    /// Every item still waiting is to be sent again now (the connection
    /// came back: acks in flight were likely lost with the old one).
    pub(super) fn retry_all(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        self.retry.extend(self.pending.keys().copied());
        self.retry_at = Some(tokio::time::Instant::now());
    }

    /// Sends the failed items again, oldest first; returns how many.
    pub(super) async fn resend(&mut self) -> usize {
        let todo = std::mem::take(&mut self.retry);
        let n = todo.len();
        for no in todo {
            let Some(p) = self.pending.get_mut(&no) else {
                continue;
            };
            p.attempt += 1;
            let attempt = p.attempt;
            let sent = match self.pending.get(&no) {
                Some(p) => publish(&self.js, &p.item).await,
                None => continue,
            };
            self.track(no, attempt, sent);
        }
        n
    }
}

/// Sends an item (a free function: a `&Window` held across the await would
/// make the worker's future not `Send`).
async fn publish(js: &jetstream::Context, item: &Item) -> Result<PublishAckFuture, PublishError> {
    js.publish_with_headers(
        item.subject.clone(),
        item.headers.clone(),
        item.payload.clone(),
    )
    .await
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Counts a stored item (not a duplicate): violations by category, rule and
/// severity, closes by reason, dead letters by reason, and the end-to-end
/// latency of events that have an input.
pub(super) fn count_stored(metrics: &Metrics, item: &Item) {
    let m = metrics;
    let (kind, arrived) = match &item.what {
        What::Event(Event::Violation(v)) => {
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
            ("violation", item.arrived_ms)
        }
        What::Event(Event::Summary(s)) => {
            m.conversations_closed
                .with_label_values(&[s.reason.as_str()])
                .inc();
            // Idle closes have no input: no latency to report.
            let arrived = (s.reason != CloseReason::Idle)
                .then_some(item.arrived_ms)
                .flatten();
            ("summary", arrived)
        }
        What::DeadLetter(code) => {
            m.bad_messages.with_label_values(&[code]).inc();
            m.deadlettered.with_label_values(&[code]).inc();
            return;
        }
    };
    if let Some(a) = arrived {
        let secs = super::now_ms().saturating_sub(a) as f64 / 1000.0;
        m.latency_seconds.with_label_values(&[kind]).observe(secs);
    }
}
