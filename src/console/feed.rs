//! The feed: the ring of the last events (masked) and their broadcast, filled by following the output stream.

use super::*;

/// Events a browser may fall behind the live feed before it is told to
/// reconnect (and catch up from the ring).
pub(super) const BROADCAST_BUFFER: usize = 1024;

/// Events a new browser starts with when it asks for no position.
pub(super) const INITIAL_EVENTS: usize = 500;

/// One published event as the console serves it.
pub(super) struct Item {
    /// Its sequence number in the output stream.
    pub(super) seq: u64,
    /// When it was stored in the output stream (epoch ms).
    pub(super) raised_ms: u64,
    pub(super) event: Event,
    /// `{"seq":…,"event":…}`, serialized once for every browser.
    pub(super) json: String,
}

/// The recent events and the live broadcast.
pub(super) struct Feed {
    pub(super) ring: Mutex<VecDeque<Arc<Item>>>,
    pub(super) history: usize,
    pub(super) live: broadcast::Sender<Arc<Item>>,
    /// True once the ring holds what the stream held at start-up: before
    /// that, a reconnecting browser would get its missed events late, as
    /// live ones, and the gap would go unnoticed.
    pub(super) ready: watch::Sender<bool>,
    /// Bumped when the output stream was recreated (its sequence restarted):
    /// every browser is told to start over.
    pub(super) epoch: watch::Sender<u64>,
}

impl Feed {
    pub(super) fn new(history: usize) -> Feed {
        Feed {
            ring: Mutex::new(VecDeque::with_capacity(history.min(65_536))),
            history,
            live: broadcast::channel(BROADCAST_BUFFER).0,
            ready: watch::channel(false).0,
            epoch: watch::channel(0).0,
        }
    }

    /// Forgets everything: the stream's sequence numbers start over.
    pub(super) fn reset(&self) {
        let mut ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
        ring.clear();
        self.epoch.send_modify(|e| *e += 1);
    }

    pub(super) fn push(&self, item: Item) {
        let item = Arc::new(item);
        let mut ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
        if ring.back().is_some_and(|last| last.seq >= item.seq) {
            return;
        }
        if ring.len() == self.history {
            ring.pop_front();
        }
        ring.push_back(Arc::clone(&item));
        // Sent under the lock: a browser subscribing takes its backlog and
        // its receiver under the same lock, so it sees every event once.
        let _ = self.live.send(item);
    }

    /// The backlog after `after` (or the last [`INITIAL_EVENTS`]), whether
    /// events after `after` were already dropped from the ring, and a
    /// receiver of what comes next.
    ///
    /// `None` when `after` is beyond the newest event: the stream was
    /// recreated since the browser saw it, and it must start over.
    #[allow(clippy::type_complexity)]
    pub(super) fn subscribe(
        &self,
        after: Option<u64>,
    ) -> Option<(Vec<Arc<Item>>, bool, broadcast::Receiver<Arc<Item>>)> {
        let ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
        if after.is_some_and(|a| a > ring.back().map_or(0, |i| i.seq)) {
            return None;
        }
        let rx = self.live.subscribe();
        let (backlog, gap) = match after {
            Some(after) => {
                let gap = ring
                    .front()
                    .is_some_and(|first| first.seq > after.saturating_add(1));
                let from = ring.partition_point(|i| i.seq <= after);
                (ring.range(from..).cloned().collect(), gap)
            }
            None => {
                let from = ring.len().saturating_sub(INITIAL_EVENTS);
                (ring.range(from..).cloned().collect(), false)
            }
        };
        Some((backlog, gap, rx))
    }

    /// The violation `id`, if still in the ring (newest first: an alert
    /// being worked is usually recent).
    pub(super) fn violation(&self, id: &str) -> Option<crate::event::Violation> {
        let ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
        ring.iter().rev().find_map(|i| match &i.event {
            Event::Violation(v) if v.id == id => Some(v.clone()),
            _ => None,
        })
    }

    /// The events stored at or after `since_ms` that `keep` selects, and
    /// when the oldest event of the ring was stored (how far back the
    /// console can see).
    pub(super) fn select(
        &self,
        since_ms: u64,
        keep: impl Fn(&Event) -> bool,
    ) -> (Vec<Arc<Item>>, Option<u64>) {
        let ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
        let from = ring.partition_point(|i| i.raised_ms < since_ms);
        let picked = ring
            .range(from..)
            .filter(|i| keep(&i.event))
            .cloned()
            .collect();
        (picked, ring.front().map(|i| i.raised_ms))
    }

    /// The events of one conversation still in the ring.
    pub(super) fn conversation(&self, tenant: &str, id: &str) -> Vec<Arc<Item>> {
        let ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
        ring.iter()
            .filter(|i| {
                let (t, c) = match &i.event {
                    Event::Violation(v) => (&v.tenant, &v.conversation_id),
                    Event::Summary(s) => (&s.tenant, &s.conversation_id),
                };
                t == tenant && c == id
            })
            .cloned()
            .collect()
    }
}

/// The event with sensitive numbers masked in its text and its note, and
/// its `matched` words taken from the masked text (masking the words alone
/// could miss a number the text as a whole reveals).
pub(super) fn masked(mut event: Event, on: bool) -> Event {
    if !on {
        return event;
    }
    let Event::Violation(v) = &mut event else {
        return event;
    };
    if let std::borrow::Cow::Owned(t) = mask::mask(&v.text) {
        if let (Some(start), Some(end)) = (v.start, v.end) {
            // Offsets are into the segment; `text` starts at text_start.
            v.matched = Some(
                t.chars()
                    .skip(start.saturating_sub(v.text_start))
                    .take(end.saturating_sub(start))
                    .collect(),
            );
        }
        v.text = t;
    }
    // A verdict's note may quote what was said.
    if let Some(note) = &v.note
        && let std::borrow::Cow::Owned(n) = mask::mask(note)
    {
        v.note = Some(n);
    }
    event
}

/// Follows the output stream into the feed, from the last `history`
/// events, resuming after the last one seen when the consumer fails.
pub(super) async fn follow(
    js: jetstream::Context,
    stream: String,
    feed: Arc<Feed>,
    board: Arc<board::Board>,
    mask_digits: bool,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    let mut next: Option<u64> = None;
    loop {
        let followed = tokio::select! {
            r = follow_once(&js, &stream, &feed, &board, mask_digits, &metrics, &mut next) => r,
            _ = stop.wait_for(|s| *s) => return,
        };
        if let Err(e) = followed {
            tracing::warn!(stream = %stream, error = %e, "console: following the output stream failed; retrying");
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

pub(super) async fn follow_once(
    js: &jetstream::Context,
    stream: &str,
    feed: &Feed,
    board: &board::Board,
    mask_digits: bool,
    metrics: &Metrics,
    next: &mut Option<u64>,
) -> Result<(), async_nats::Error> {
    let mut s = js.get_stream(stream).await?;
    let state = s.info().await?.state.clone();
    if next.is_some_and(|n| n > state.last_sequence.saturating_add(1)) {
        tracing::warn!(
            stream,
            "console: the output stream was recreated; starting over"
        );
        feed.reset();
        *next = None;
    }
    // Ready once the events the stream holds now are in the ring.
    let loaded_at = state.last_sequence;
    if next.is_some() || loaded_at == 0 {
        feed.ready.send_replace(true);
    }
    let start = next.unwrap_or_else(|| {
        state
            .last_sequence
            .saturating_sub(feed.history as u64 - 1)
            .max(state.first_sequence)
            .max(1)
    });
    let consumer = s
        .create_consumer(pull::OrderedConfig {
            description: Some("zhijian console".into()),
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: start,
            },
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    while let Some(m) = messages.next().await {
        let m = m?;
        let info = m.info()?;
        let seq = info.stream_sequence;
        let raised_ms = (info.published.unix_timestamp_nanos() / 1_000_000) as u64;
        *next = Some(seq + 1);
        if seq >= loaded_at {
            feed.ready.send_replace(true);
        }
        metrics.console_events.inc();
        match serde_json::from_slice::<Event>(&m.payload) {
            Ok(event) => {
                let event = masked(event, mask_digits);
                let json = serde_json::to_string(&Wire {
                    seq,
                    raised_ms,
                    event: &event,
                })?;
                board.on_event(&event, raised_ms);
                feed.push(Item {
                    seq,
                    raised_ms,
                    event,
                    json,
                });
            }
            Err(e) => {
                metrics.console_bad_events.inc();
                tracing::warn!(stream, seq, subject = %m.subject, error = %e, "console: not an output event; skipped (it stays in the stream)");
            }
        }
    }
    Err("the ordered consumer ended".into())
}

#[derive(Serialize)]
pub(super) struct Wire<'a> {
    pub(super) seq: u64,
    /// When the event was stored in the output stream (the alert's time).
    pub(super) raised_ms: u64,
    pub(super) event: &'a Event,
}
