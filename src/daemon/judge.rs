//! Judging one input: the live engine, and in shadow mode the candidate
//! lexicon's engine beside it at the same clock.

use super::Shared;
use crate::engine::{Engine, Outcome};
use crate::event::{Event, Input, InputKind};
use crate::matcher::Scanners;
use crate::subject;
use async_nats::HeaderMap;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{mpsc, watch};

/// Judges one input with the live engine at the wall clock's `now`, and
/// with the shadow (shadow mode) at the same `now`; counts the segment,
/// the time it took since `received` and the hits dropped (by rule and
/// reason).
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
    let now = super::now_ms();
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

/// Shadow mode in one partition: a second engine with the candidate
/// lexicon judges every input after the live one, on the same clock. Its
/// events are compared with the live events by id and handed to a sender
/// task that publishes them to `<prefix>.<live subject>` with core NATS
/// (kept by the shadow stream): the live path never waits for it (a full
/// queue drops and counts) and never sees its events. Its conversations
/// are not checkpointed: after a take-over it judges from there.
pub(super) struct Shadow {
    engine: Engine,
    rx: watch::Receiver<Arc<Scanners>>,
    events: Vec<Event>,
    /// To the shadow's sender task; full: the event is dropped and counted,
    /// never waited for.
    out: mpsc::Sender<(String, HeaderMap, bytes::Bytes)>,
}

/// Shadow events a partition may have waiting to be sent.
const SHADOW_QUEUE: usize = 4096;

impl Shadow {
    /// A shadow engine with the candidate lexicon of `rx`, holding at most
    /// `max_open` conversations.
    pub(super) fn new(
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
    fn judge(&mut self, shared: &Shared, input: &Input<'_>, now: u64, live: &[Event]) {
        self.refresh();
        self.engine.handle(input, now, &mut self.events);
        // The shadow's own drops are not the live lexicon's.
        let _ = self.engine.take_suppressed();
        self.report(shared, live);
    }

    /// Closes idle conversations as the live engine did (`live`: its
    /// closing events).
    pub(super) fn close_idle(&mut self, shared: &Shared, now: u64, idle_ms: u64, live: &[Event]) {
        self.refresh();
        self.engine.close_idle(now, idle_ms, &mut self.events);
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
