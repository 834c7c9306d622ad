//! The live conversations board: every open conversation with its agent,
//! channel, duration, running score and worst open alert, most urgent
//! first; closed ones stay a few minutes, then drop off.
//!
//! It is derived from the streams, not from what this process judged:
//! the input stream (agent, channel, when it started, its `end`) from
//! [`LOOKBACK`] ago, and the output stream the console follows anyway
//! (violations, summaries). Every instance of the daemon reads the same
//! streams, so every instance's console shows every conversation.
//!
//! The running score is the engine's: 100 minus each scorecard section's
//! deductions capped at its points, with the sections of the lexicon read
//! from `[engine] lexicons` (re-read every minute).

use crate::event::{Channel, Event, InputKind, Severity, decode};
use crate::lexicon::{LexiconSet, load_set};
use async_nats::jetstream::{self, consumer::DeliverPolicy, consumer::pull};
use futures_util::StreamExt;
use serde::Serialize;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How far back the board reads the input stream when it starts ...
pub(super) const LOOKBACK: Duration = Duration::from_secs(30 * 60);
/// ... but never more than this many messages back (20k segments/s over
/// 30 minutes would be 36 M messages to read at every start).
pub(super) const MAX_REPLAY: u64 = 500_000;
/// How long a closed conversation stays on the board.
pub(super) const CLOSED_LINGER_MS: u64 = 5 * 60 * 1000;
/// A conversation with no event for this long leaves the board (its
/// summary never came: the daemon was down, the stream lost it).
pub(super) const STALE_MS: u64 = 2 * 3600 * 1000;
/// Conversations held at most (the least recently active go first).
pub(super) const MAX_CONVERSATIONS: usize = 50_000;
/// Alerts remembered per conversation.
const MAX_ALERTS: usize = 500;
/// How long a loaded scorecard is used before the lexicon is read again.
const SCORECARD_TTL: Duration = Duration::from_secs(60);

/// One alert of a conversation, as the board needs it.
#[derive(Debug, Clone)]
struct AlertRef {
    id: String,
    seq: u64,
    rule_id: String,
    category: String,
    category_name: String,
    severity: Severity,
    deduct: f64,
    raised_ms: u64,
}

#[derive(Debug, Default)]
struct Conv {
    agent_id: Option<String>,
    channel: Option<Channel>,
    /// When its first and last messages were stored (the stream's clock).
    first_ms: Option<u64>,
    last_ms: u64,
    segments: u32,
    /// An `end` event was seen.
    ended: bool,
    /// Its summary: (score, close reason, when it was stored).
    summary: Option<(f64, &'static str, u64)>,
    alerts: Vec<AlertRef>,
}

impl Conv {
    fn touch(&mut self, at_ms: u64) {
        self.first_ms = Some(self.first_ms.map_or(at_ms, |f| f.min(at_ms)));
        self.last_ms = self.last_ms.max(at_ms);
    }
}

/// A scorecard section of a tenant's lexicon.
#[derive(Debug, Clone)]
pub(super) struct SectionDef {
    pub id: String,
    pub name: String,
    pub max_deduct: f64,
}

/// The sections of every tenant's lexicon, and which rule deducts where.
#[derive(Debug, Default)]
pub struct Scorecard {
    /// Tenant ("" for the base) → sections and rule id → section index.
    tenants: HashMap<String, (Vec<SectionDef>, HashMap<String, usize>)>,
}

impl Scorecard {
    pub fn of(set: &LexiconSet) -> Scorecard {
        let mut tenants = HashMap::new();
        let base = std::iter::once((String::new(), &set.base));
        for (tenant, lexicon) in base.chain(set.tenants.iter().map(|(t, l)| (t.clone(), l))) {
            let sections = lexicon
                .sections
                .iter()
                .map(|s| SectionDef {
                    id: s.id.clone(),
                    name: s.name.clone(),
                    max_deduct: s.max_deduct,
                })
                .collect();
            let rules = lexicon
                .rules
                .iter()
                .filter_map(|r| r.section.map(|s| (r.id.clone(), s)))
                .collect();
            tenants.insert(tenant, (sections, rules));
        }
        Scorecard { tenants }
    }

    /// The score and each section's deductions (capped) of a tenant's
    /// conversation with these `(rule, deduct)`; deductions of rules the
    /// lexicon no longer has go to a section `""`, uncapped.
    pub fn score<'a>(
        &self,
        tenant: &str,
        deducts: impl Iterator<Item = (&'a str, f64)>,
    ) -> (f64, Vec<SectionScore>) {
        let empty = (Vec::new(), HashMap::new());
        let (sections, rules) = self
            .tenants
            .get(tenant)
            .or_else(|| self.tenants.get(""))
            .unwrap_or(&empty);
        let mut raw = vec![0.0f64; sections.len()];
        let mut other = 0.0f64;
        for (rule, d) in deducts {
            match rules.get(rule) {
                Some(&i) if i < raw.len() => raw[i] += d,
                _ => other += d,
            }
        }
        let mut out: Vec<SectionScore> = sections
            .iter()
            .zip(&raw)
            .map(|(s, &d)| SectionScore {
                id: s.id.clone(),
                name: s.name.clone(),
                max_deduct: Some(s.max_deduct),
                deducted: d.min(s.max_deduct),
            })
            .collect();
        if other > 0.0 {
            out.push(SectionScore {
                id: String::new(),
                name: String::new(),
                max_deduct: None,
                deducted: other,
            });
        }
        let total: f64 = out.iter().map(|s| s.deducted).sum();
        (((100.0 - total) * 1e6).round() / 1e6, out)
    }
}

/// One section's share of a score.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SectionScore {
    /// Empty: rules the lexicon no longer has.
    pub id: String,
    pub name: String,
    pub max_deduct: Option<f64>,
    pub deducted: f64,
}

/// The scorecard, read again from the lexicon directory when stale.
pub(super) struct Scorecards {
    dir: PathBuf,
    loaded: Mutex<(Option<Instant>, Arc<Scorecard>)>,
}

impl Scorecards {
    pub(super) fn new(dir: PathBuf) -> Scorecards {
        Scorecards {
            dir,
            loaded: Mutex::new((None, Arc::new(Scorecard::default()))),
        }
    }

    pub(super) fn get(&self) -> Arc<Scorecard> {
        let mut loaded = self.loaded.lock().unwrap_or_else(PoisonError::into_inner);
        if loaded.0.is_none_or(|at| at.elapsed() > SCORECARD_TTL) {
            // Reading a few small TOML files: a millisecond or two, once a
            // minute at most.
            match load_set(&self.dir) {
                Ok(set) => loaded.1 = Arc::new(Scorecard::of(&set)),
                Err(e) => {
                    tracing::warn!(dir = %self.dir.display(), error = %e, "console: cannot read the lexicon's scorecard; scores use the last one read")
                }
            }
            loaded.0 = Some(Instant::now());
        }
        Arc::clone(&loaded.1)
    }
}

/// The worst alert of a conversation not yet acknowledged or dismissed.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct WorstAlert {
    pub id: String,
    pub seq: u64,
    pub rule_id: String,
    pub category: String,
    pub category_name: String,
    pub severity: Severity,
    pub raised_ms: u64,
}

/// One row of the board.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Row {
    pub tenant: String,
    pub conversation_id: String,
    pub agent_id: Option<String>,
    pub channel: Option<Channel>,
    pub started_ms: Option<u64>,
    pub duration_ms: u64,
    pub segments: u32,
    pub open: bool,
    /// The close reason (`end`, `idle`, …) once its summary came.
    pub reason: Option<&'static str>,
    pub score: f64,
    pub alerts: usize,
    pub open_alerts: usize,
    pub worst_open: Option<WorstAlert>,
}

/// The board's state: conversations by (tenant, id).
#[derive(Default)]
pub struct Board {
    convs: Mutex<HashMap<(String, String), Conv>>,
}

impl Board {
    fn with<R>(&self, tenant: &str, id: &str, f: impl FnOnce(&mut Conv) -> R) -> R {
        let mut convs = self.convs.lock().unwrap_or_else(PoisonError::into_inner);
        if convs.len() >= MAX_CONVERSATIONS
            && !convs.contains_key(&(tenant.to_string(), id.to_string()))
        {
            // Full: the least recently active tenth goes (amortised).
            let mut by_age: Vec<u64> = convs.values().map(|c| c.last_ms).collect();
            by_age.sort_unstable();
            let cut = by_age[MAX_CONVERSATIONS / 10];
            convs.retain(|_, c| c.last_ms > cut);
        }
        let conv = convs
            .entry((tenant.to_string(), id.to_string()))
            .or_default();
        f(conv)
    }

    /// An input message stored at `at_ms`.
    pub(crate) fn on_input(&self, payload: &[u8], at_ms: u64) {
        let Ok(input) = decode(payload) else {
            return;
        };
        self.with(&input.tenant, &input.conversation_id, |c| {
            c.touch(at_ms);
            if let Some(a) = &input.agent_id {
                c.agent_id = Some(a.to_string());
            }
            if input.channel.is_some() {
                c.channel = input.channel;
            }
            match input.kind {
                InputKind::End => c.ended = true,
                InputKind::Segment(s) if s.is_final => c.segments = c.segments.saturating_add(1),
                InputKind::Segment(_) => {}
            }
        });
    }

    /// An output event stored at `at_ms`.
    pub(crate) fn on_event(&self, event: &Event, at_ms: u64) {
        match event {
            Event::Violation(v) => self.with(&v.tenant, &v.conversation_id, |c| {
                c.touch(at_ms);
                if c.agent_id.is_none() {
                    c.agent_id = v.agent_id.clone();
                }
                if c.channel.is_none() {
                    c.channel = v.channel;
                }
                if c.alerts.len() < MAX_ALERTS && !c.alerts.iter().any(|a| a.id == v.id) {
                    c.alerts.push(AlertRef {
                        id: v.id.clone(),
                        seq: v.seq,
                        rule_id: v.rule_id.clone(),
                        category: v.category.clone(),
                        category_name: v.category_name.clone(),
                        severity: v.severity,
                        deduct: v.deduct,
                        raised_ms: at_ms,
                    });
                }
            }),
            Event::Summary(s) => self.with(&s.tenant, &s.conversation_id, |c| {
                c.touch(at_ms);
                if c.agent_id.is_none() {
                    c.agent_id = s.agent_id.clone();
                }
                if c.channel.is_none() {
                    c.channel = s.channel;
                }
                c.summary = Some((s.score, s.reason.as_str(), at_ms));
            }),
        }
    }

    /// The rows at `now_ms`, most urgent first: the worst open alert
    /// (critical first), then open before closed, then the lowest score,
    /// then the longest. `is_open(id)`: whether an alert still needs a
    /// supervisor (not acknowledged, not a false alarm).
    pub fn rows(
        &self,
        now_ms: u64,
        scorecard: &Scorecard,
        is_open: impl Fn(&str) -> bool,
        keep: impl Fn(&str, Option<&str>) -> bool,
    ) -> Vec<Row> {
        let mut convs = self.convs.lock().unwrap_or_else(PoisonError::into_inner);
        convs.retain(|_, c| match c.summary {
            Some((_, _, closed)) => now_ms.saturating_sub(closed) < CLOSED_LINGER_MS,
            None => now_ms.saturating_sub(c.last_ms) < STALE_MS,
        });
        let mut rows: Vec<Row> = convs
            .iter()
            .filter(|((tenant, _), c)| keep(tenant, c.agent_id.as_deref()))
            .map(|((tenant, id), c)| {
                let open_alerts: Vec<&AlertRef> =
                    c.alerts.iter().filter(|a| is_open(&a.id)).collect();
                let worst = open_alerts
                    .iter()
                    .max_by_key(|a| (a.severity, a.raised_ms))
                    .map(|a| WorstAlert {
                        id: a.id.clone(),
                        seq: a.seq,
                        rule_id: a.rule_id.clone(),
                        category: a.category.clone(),
                        category_name: a.category_name.clone(),
                        severity: a.severity,
                        raised_ms: a.raised_ms,
                    });
                let score = match c.summary {
                    Some((score, _, _)) => score,
                    None => {
                        scorecard
                            .score(
                                tenant,
                                c.alerts.iter().map(|a| (a.rule_id.as_str(), a.deduct)),
                            )
                            .0
                    }
                };
                let end = c.summary.map_or(now_ms, |(_, _, at)| at);
                Row {
                    tenant: tenant.clone(),
                    conversation_id: id.clone(),
                    agent_id: c.agent_id.clone(),
                    channel: c.channel,
                    started_ms: c.first_ms,
                    duration_ms: c.first_ms.map_or(0, |f| end.saturating_sub(f)),
                    segments: c.segments,
                    open: c.summary.is_none(),
                    reason: c.summary.map(|(_, r, _)| r),
                    score,
                    alerts: c.alerts.len(),
                    open_alerts: open_alerts.len(),
                    worst_open: worst,
                }
            })
            .collect();
        rows.sort_by(|a, b| {
            let sev = |r: &Row| std::cmp::Reverse(r.worst_open.as_ref().map(|w| w.severity));
            sev(a)
                .cmp(&sev(b))
                .then(b.open.cmp(&a.open))
                .then(a.score.total_cmp(&b.score))
                .then(b.duration_ms.cmp(&a.duration_ms))
                .then(a.conversation_id.cmp(&b.conversation_id))
        });
        rows
    }
}

/// Follows the input stream into the board, from [`LOOKBACK`] ago but at
/// most `max_replay` messages back ([`MAX_REPLAY`]), then after the last
/// message seen when the consumer fails. The input stream may hold a
/// message whose subject the client cannot receive (see `daemon::poison`):
/// when the console's connection drops the consumer goes with it, and the
/// next one starts after such a message, which the daemon removes.
pub async fn follow_input(
    js: jetstream::Context,
    stream: String,
    subjects: String,
    board: Arc<Board>,
    max_replay: u64,
    link: Option<crate::daemon::conn::Link>,
    stop: watch::Receiver<bool>,
) {
    let what = Following {
        stream,
        subjects,
        lookback: LOOKBACK,
        max_replay,
        description: "zhijian console board",
    };
    follow_stream(
        js,
        what,
        move |payload, at_ms| board.on_input(payload, at_ms),
        link,
        stop,
    )
    .await
}

/// What [`follow_stream`] reads.
pub(super) struct Following {
    pub stream: String,
    pub subjects: String,
    /// From this long ago…
    pub lookback: Duration,
    /// …but at most this many messages back.
    pub max_replay: u64,
    pub description: &'static str,
}

/// Hands every message of a stream to `on_message` (payload, when it was
/// stored in ms), from the lookback on, then live; after a failure, from
/// the message after the last one seen. With a `link`, a drop of the
/// connection ends the consumer at once, and undecodable subjects are
/// skipped before the next one starts.
pub(super) async fn follow_stream(
    js: jetstream::Context,
    what: Following,
    on_message: impl Fn(&[u8], u64),
    mut link: Option<crate::daemon::conn::Link>,
    mut stop: watch::Receiver<bool>,
) {
    let mut next: Option<u64> = None;
    loop {
        if let (Some(l), Some(n)) = (link.as_mut(), next.as_mut()) {
            tokio::select! {
                _ = l.connected() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            *n = skip_undecodable(&js, &what.stream, *n).await;
        }
        let dropped = async {
            match link.as_mut() {
                Some(l) => loop {
                    l.changed().await;
                    if !l.state().connected {
                        return;
                    }
                },
                None => std::future::pending().await,
            }
        };
        let followed = tokio::select! {
            r = follow_once(&js, &what, &on_message, &mut next) => r,
            _ = dropped => Err("the connection dropped".into()),
            _ = stop.wait_for(|s| *s) => return,
        };
        match followed {
            Err(e) => {
                tracing::warn!(stream = %what.stream, what = what.description, error = %e, "console: following a stream failed; retrying")
            }
            // Restarting nearer the end of the stream: at once.
            Ok(()) => continue,
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// The first sequence from `from` on whose message has a subject the
/// client can receive (the JetStream API shows invalid bytes as U+FFFD).
async fn skip_undecodable(js: &jetstream::Context, stream: &str, from: u64) -> u64 {
    let Ok(s) = js.get_stream(stream).await else {
        return from;
    };
    let mut next = from;
    for _ in 0..1024 {
        match s.get_raw_message(next).await {
            Ok(m) if m.subject.as_str().contains('\u{FFFD}') => next += 1,
            _ => break,
        }
    }
    next
}

async fn follow_once(
    js: &jetstream::Context,
    what: &Following,
    on_message: &impl Fn(&[u8], u64),
    next: &mut Option<u64>,
) -> Result<(), async_nats::Error> {
    let mut s = js.get_stream(&what.stream).await?;
    let last = s.info().await?.state.last_sequence;
    let deliver_policy = match *next {
        Some(start_sequence) => DeliverPolicy::ByStartSequence { start_sequence },
        None => DeliverPolicy::ByStartTime {
            start_time: time::OffsetDateTime::now_utc() - what.lookback,
        },
    };
    let consumer = s
        .create_consumer(pull::OrderedConfig {
            description: Some(what.description.into()),
            filter_subject: what.subjects.clone(),
            deliver_policy,
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    let mut first = next.is_none();
    while let Some(m) = messages.next().await {
        let m = m?;
        let info = m.info()?;
        if std::mem::take(&mut first)
            && last.saturating_sub(info.stream_sequence) >= what.max_replay
        {
            // The lookback holds too much: start again nearer the end.
            *next = Some(last.saturating_sub(what.max_replay) + 1);
            return Ok(());
        }
        *next = Some(info.stream_sequence + 1);
        let at_ms = (info.published.unix_timestamp_nanos() / 1_000_000) as u64;
        on_message(&m.payload, at_ms);
    }
    Err("the ordered consumer ended".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn violation(conv: &str, id: &str, rule: &str, severity: &str, deduct: f64) -> Event {
        serde_json::from_value(serde_json::json!({
            "type": "violation", "id": id, "conversation_id": conv, "tenant": "t",
            "channel": "call", "agent_id": "a", "seq": 1, "rule_id": rule,
            "category": "c", "category_name": "类别", "kind": "phrase",
            "severity": severity, "deduct": deduct, "matched": null, "start": null,
            "end": null, "text": "x", "lexicon_version": "v", "ts_ms": 0
        }))
        .expect("a violation")
    }

    fn scorecard() -> Scorecard {
        let mut rules = HashMap::new();
        rules.insert("r.att".to_string(), 0);
        rules.insert("r.lang".to_string(), 1);
        let sections = vec![
            SectionDef {
                id: "attitude".into(),
                name: "服务态度".into(),
                max_deduct: 10.0,
            },
            SectionDef {
                id: "lang".into(),
                name: "服务用语".into(),
                max_deduct: 30.0,
            },
        ];
        let mut tenants = HashMap::new();
        tenants.insert(String::new(), (sections, rules));
        Scorecard { tenants }
    }

    #[test]
    fn scores_cap_each_section_like_the_engine() {
        let (score, sections) = scorecard().score(
            "t",
            [
                ("r.att", 8.0),
                ("r.att", 8.0),
                ("r.lang", 2.0),
                ("gone", 1.5),
            ]
            .into_iter(),
        );
        assert_eq!(score, 100.0 - 10.0 - 2.0 - 1.5);
        assert_eq!(
            sections
                .iter()
                .map(|s| (s.id.as_str(), s.deducted))
                .collect::<Vec<_>>(),
            vec![("attitude", 10.0), ("lang", 2.0), ("", 1.5)]
        );
    }

    #[test]
    fn the_most_urgent_conversation_comes_first_and_closed_ones_drop_off() {
        let board = Board::default();
        let seg = |conv: &str, agent: &str| {
            format!(
                r#"{{"conversation_id":"{conv}","tenant":"t","agent_id":"{agent}","channel":"chat","seq":0,"speaker":"agent","text":"x"}}"#
            )
        };
        board.on_input(seg("quiet", "a1").as_bytes(), 1_000);
        board.on_input(seg("rude", "a2").as_bytes(), 1_000);
        board.on_input(seg("threat", "a3").as_bytes(), 2_000);
        board.on_input(b"not json", 2_000);
        board.on_event(&violation("rude", "v1", "r.att", "high", 8.0), 3_000);
        board.on_event(&violation("threat", "v2", "r.x", "critical", 0.0), 3_000);
        board.on_event(&violation("threat", "v3", "r.lang", "low", 2.0), 3_500);
        let sc = scorecard();
        let ids = |rows: &[Row]| {
            rows.iter()
                .map(|r| r.conversation_id.clone())
                .collect::<Vec<_>>()
        };
        let rows = board.rows(10_000, &sc, |_| true, |_, _| true);
        assert_eq!(ids(&rows), ["threat", "rude", "quiet"]);
        assert_eq!(
            rows[0].worst_open.as_ref().map(|w| w.severity),
            Some(Severity::Critical)
        );
        assert_eq!(
            (rows[0].score, rows[1].score, rows[2].score),
            (98.0, 92.0, 100.0)
        );
        assert_eq!(
            (rows[1].duration_ms, rows[1].agent_id.as_deref()),
            (9_000, Some("a2"))
        );
        // The critical alert acknowledged: its low one is the worst left.
        let rows = board.rows(10_000, &sc, |id| id != "v2", |_, _| true);
        assert_eq!(ids(&rows), ["rude", "threat", "quiet"]);
        // Closed: stays for CLOSED_LINGER_MS, below the open ones.
        let summary: Event = serde_json::from_value(serde_json::json!({
            "type": "summary", "id": "s", "conversation_id": "rude", "tenant": "t",
            "channel": "chat", "agent_id": "a2", "reason": "end", "segments": 1,
            "agent_segments": 1, "counts": {}, "greeted": null, "closed": null,
            "score": 92.0, "lexicon_version": "v", "ts_ms": 0
        }))
        .expect("a summary");
        board.on_event(&summary, 11_000);
        let rows = board.rows(12_000, &sc, |_| true, |_, _| true);
        // Its high alert still needs a supervisor: above the quiet one.
        assert_eq!(ids(&rows), ["threat", "rude", "quiet"]);
        assert!(!rows[1].open && rows[1].reason == Some("end"));
        let rows = board.rows(12_000, &sc, |id| id != "v1", |_, _| true);
        assert_eq!(
            ids(&rows),
            ["threat", "quiet", "rude"],
            "open before closed"
        );
        let rows = board.rows(
            11_000 + CLOSED_LINGER_MS,
            &sc,
            |_| true,
            |_, agent| agent != Some("a1"),
        );
        assert_eq!(ids(&rows), ["threat"]);
    }
}
