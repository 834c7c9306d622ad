//! The judging engine: conversation state and verdicts. Synchronous, no I/O:
//! every call takes the clock (`now_ms`) as an argument and appends the
//! events it produces to a caller-owned `Vec`.
//!
//! One [`Engine`] owns a set of conversations (the daemon runs one per
//! shard, the offline scanner one in total) and shares the compiled lexicon
//! ([`Scanner`]) behind an `Arc`.
//!
//! Semantics, in order of application to an input event:
//! 1. Provisional segments (`final: false`) change nothing and yield
//!    nothing: the final segment with the same seq is judged instead.
//! 2. Events for a conversation closed recently (a tombstone) are late:
//!    they cannot reopen it or change its verdicts, but a late segment not
//!    seen before is still scanned, so its forbidden and filler violations
//!    are never lost (an ASR result that arrives after the hang-up event).
//! 3. A segment whose seq was already seen is a duplicate and ignored.
//! 4. Agent segments are scanned: forbidden and filler hits become
//!    violations; greeting and closing hits feed the window verdicts.
//! 5. `end` (or idle, or end of input) closes the conversation: the closing
//!    verdict, then the summary with the score.

use crate::event::{
    Category, Channel, CloseReason, Counts, Event, Input, InputKind, MAX_SPANS, Segment, Speaker,
    Summary, Violation, event_id,
};
use crate::lexicon::RuleKind;
use crate::matcher::{Scanner, Scratch};
use crate::normalize::char_offset;
use hashbrown::{Equivalent, HashMap};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Conversation ids come from outside: hashbrown's default hasher
/// (foldhash) is seeded per process, so ids cannot be chosen to collide, and
/// is several times faster than std's SipHash, which cost a fifth of the
/// pipeline.
type Map<V> = HashMap<Key, V>;

/// A conversation's identity: ids are unique within a tenant.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    tenant: Box<str>,
    id: Box<str>,
}

/// The borrowed form of [`Key`], so a lookup hashes the input's strings once
/// and allocates nothing. Field order and types hash exactly like `Key`.
#[derive(Hash)]
struct KeyRef<'a> {
    tenant: &'a str,
    id: &'a str,
}

impl Equivalent<Key> for KeyRef<'_> {
    fn equivalent(&self, key: &Key) -> bool {
        *self.tenant == *key.tenant && *self.id == *key.id
    }
}

impl KeyRef<'_> {
    fn to_key(&self) -> Key {
        Key {
            tenant: self.tenant.into(),
            id: self.id.into(),
        }
    }
}

/// What the engine did with one input event (for counting).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A final segment of a judged speaker, scanned.
    Judged,
    /// A final segment of a speaker no rule judges (customer, system).
    Recorded,
    /// A provisional ASR hypothesis: ignored.
    Provisional,
    /// A segment seq already seen in this conversation: ignored.
    Duplicate,
    /// An event for a conversation that was already closed: a new segment
    /// is scanned for phrase violations, nothing else changes.
    Late,
    /// An `end` event closed the conversation.
    Closed,
    /// An `end` event for a conversation never seen: nothing to close.
    UnknownEnd,
}

impl Outcome {
    /// Every outcome, indexed by `outcome as usize` (metrics rely on it).
    pub const ALL: [Outcome; 7] = [
        Outcome::Judged,
        Outcome::Recorded,
        Outcome::Provisional,
        Outcome::Duplicate,
        Outcome::Late,
        Outcome::Closed,
        Outcome::UnknownEnd,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Judged => "judged",
            Outcome::Recorded => "recorded",
            Outcome::Provisional => "provisional",
            Outcome::Duplicate => "duplicate",
            Outcome::Late => "late",
            Outcome::Closed => "closed",
            Outcome::UnknownEnd => "unknown_end",
        }
    }
}

/// Engine settings that are not part of the lexicon.
#[derive(Debug, Clone, Copy)]
pub struct EngineConfig {
    /// How long a closed conversation is remembered, so that late or
    /// redelivered events for it are ignored instead of reopening it.
    pub tombstone_ttl_ms: u64,
    /// Violations carry at most this many characters of their segment (an
    /// excerpt around the first match), so one long segment cannot make
    /// every event it yields as long as itself.
    pub excerpt_chars: usize,
    /// Open conversations at most; past it the least recently active are
    /// closed (reason `limit`). Bounds memory against floods of new ids.
    pub max_open: usize,
    /// Final segments per conversation at most; the conversation is closed
    /// (reason `limit`) when it reaches this, bounding its seq bookkeeping.
    pub max_segments: u32,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            tombstone_ttl_ms: 10 * 60 * 1000,
            excerpt_chars: 256,
            max_open: 1_000_000,
            max_segments: 20_000,
        }
    }
}

/// The state of one open conversation. Serializable so the daemon can save
/// open conversations across a restart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Conversation {
    /// Arrival order of the conversation (deterministic close order).
    pub order: u64,
    pub channel: Option<Channel>,
    pub agent_id: Option<String>,
    pub last_activity_ms: u64,
    /// Seqs seen (final segments only), for idempotence.
    pub seen: SeqSet,
    /// The first event seen was not the first of the conversation (seq > 0),
    /// e.g. after a restart without saved state: no greeting verdict.
    pub midway: bool,
    pub segments: u32,
    pub agent_segments: u32,
    /// The greeting verdict: None while undecided.
    pub greeted: Option<bool>,
    /// Bit i set: the agent's i-th most recent segment held a closing.
    pub closing_bits: u32,
    /// The most recent agent segment (where close-time verdicts point).
    pub last_agent_seq: u64,
    /// The start of the most recent agent segment, at most the excerpt
    /// limit: what close-time verdicts show.
    pub last_agent_text: String,
    /// The most recent agent segment's full length in characters.
    #[serde(default)]
    pub last_agent_chars: usize,
    pub counts: Counts,
    /// Deductions per scorecard section id (capped when the score is
    /// computed, so a lexicon reload that changes caps applies cleanly).
    pub deducted: Vec<(String, f64)>,
}

impl Conversation {
    fn new(order: u64, first_seq: Option<u64>) -> Conversation {
        Conversation {
            order,
            channel: None,
            agent_id: None,
            last_activity_ms: 0,
            seen: SeqSet::default(),
            midway: first_seq.is_some_and(|s| s > 0),
            segments: 0,
            agent_segments: 0,
            greeted: None,
            closing_bits: 0,
            last_agent_seq: 0,
            last_agent_text: String::with_capacity(64),
            last_agent_chars: 0,
            counts: Counts::default(),
            deducted: Vec::new(),
        }
    }

    fn deduct(&mut self, section: &str, points: f64) {
        match self.deducted.iter_mut().find(|(s, _)| s == section) {
            Some((_, d)) => *d += points,
            None => self.deducted.push((section.to_string(), points)),
        }
    }
}

/// What is remembered of a closed conversation.
struct Tombstone {
    closed_at_ms: u64,
    /// Seqs seen, so a redelivered segment stays a duplicate after close.
    seen: SeqSet,
    channel: Option<Channel>,
}

/// Judges conversations.
pub struct Engine {
    scanner: Arc<Scanner>,
    config: EngineConfig,
    open: Map<Conversation>,
    /// Recently closed conversations.
    closed: Map<Tombstone>,
    next_order: u64,
    scratch: Scratch,
}

impl Engine {
    pub fn new(scanner: Arc<Scanner>, config: EngineConfig) -> Engine {
        Engine {
            scanner,
            config,
            open: Map::default(),
            closed: Map::default(),
            next_order: 0,
            scratch: Scratch::default(),
        }
    }

    /// Swaps in a new compiled lexicon; conversations keep their state.
    pub fn set_scanner(&mut self, scanner: Arc<Scanner>) {
        self.scanner = scanner;
    }

    /// Number of open conversations.
    pub fn open_conversations(&self) -> usize {
        self.open.len()
    }

    /// Handles one input event.
    pub fn handle(&mut self, input: &Input<'_>, now_ms: u64, out: &mut Vec<Event>) -> Outcome {
        let key = KeyRef {
            tenant: input.tenant.as_ref(),
            id: input.conversation_id.as_ref(),
        };
        let segment = match &input.kind {
            InputKind::Segment(s) if !s.is_final => return Outcome::Provisional,
            InputKind::Segment(s) => s,
            InputKind::End => {
                if self.closed.contains_key(&key) {
                    return Outcome::Late;
                }
                let Some((key, conv)) = self.open.remove_entry(&key) else {
                    return Outcome::UnknownEnd;
                };
                self.finish(key, conv, CloseReason::End, now_ms, out);
                return Outcome::Closed;
            }
        };
        // At the open-conversation limit, a new conversation first makes
        // room (the length check keeps this off the hot path).
        if self.open.len() >= self.config.max_open
            && !self.open.contains_key(&key)
            && !self.closed.contains_key(&key)
        {
            self.evict(now_ms, out);
        }
        // Hot path: an open conversation. Only a miss needs the tombstone
        // check (open and closed are disjoint).
        let conv = match self.open.get_mut(&key) {
            Some(c) => c,
            None => {
                if let Some(t) = self.closed.get_mut(&key) {
                    if !t.seen.insert(segment.seq) {
                        return Outcome::Duplicate;
                    }
                    if self.scanner.judges(segment.speaker) {
                        let cx = Ctx {
                            tenant: key.tenant,
                            id: key.id,
                            input,
                            segment,
                            excerpt_chars: self.config.excerpt_chars,
                            now_ms,
                        };
                        let channel = input.channel.or(t.channel);
                        phrase_violations(
                            &self.scanner,
                            &mut self.scratch,
                            &cx,
                            channel,
                            out,
                            |_, _, _| {},
                        );
                    }
                    return Outcome::Late;
                }
                let order = self.next_order;
                self.next_order += 1;
                self.open
                    .entry(key.to_key())
                    .or_insert_with(|| Conversation::new(order, Some(segment.seq)))
            }
        };
        if !conv.seen.insert(segment.seq) {
            return Outcome::Duplicate;
        }
        conv.segments += 1;
        conv.last_activity_ms = now_ms;
        if input.channel.is_some() {
            conv.channel = input.channel;
        }
        if segment.speaker == Speaker::Agent
            && let Some(a) = &input.agent_id
            && conv.agent_id.as_deref() != Some(a.as_ref())
        {
            conv.agent_id = Some(a.to_string());
        }
        let outcome = if self.scanner.judges(segment.speaker) {
            judge_segment(
                &self.scanner,
                &mut self.scratch,
                Ctx {
                    tenant: key.tenant,
                    id: key.id,
                    input,
                    segment,
                    excerpt_chars: self.config.excerpt_chars,
                    now_ms,
                },
                conv,
                out,
            );
            Outcome::Judged
        } else {
            Outcome::Recorded
        };
        // The segment limit: later segments of this conversation are late
        // (still scanned for phrases), and its seq set stops growing.
        if conv.segments >= self.config.max_segments
            && let Some((key, conv)) = self.open.remove_entry(&key)
        {
            self.finish(key, conv, CloseReason::Limit, now_ms, out);
        }
        outcome
    }

    /// Closes the least recently active 1/64 of the open-conversation
    /// limit (at least one), so the limit costs one sort per many new
    /// conversations rather than one per conversation.
    fn evict(&mut self, now_ms: u64, out: &mut Vec<Event>) {
        let n = (self.config.max_open / 64).max(1);
        let mut all: Vec<(u64, u64, &Key)> = self
            .open
            .iter()
            .map(|(k, c)| (c.last_activity_ms, c.order, k))
            .collect();
        let n = n.min(all.len());
        if n == 0 {
            return;
        }
        all.select_nth_unstable_by_key(n - 1, |d| (d.0, d.1));
        let mut due: Vec<(u64, u64, Key)> = all[..n]
            .iter()
            .map(|&(a, o, k)| (a, o, k.clone()))
            .collect();
        due.sort_unstable_by_key(|d| (d.0, d.1));
        self.close_due(due, CloseReason::Limit, now_ms, out);
    }

    /// Closes conversations idle for at least `idle_ms` (oldest first) and
    /// forgets tombstones older than the configured TTL.
    pub fn close_idle(&mut self, now_ms: u64, idle_ms: u64, out: &mut Vec<Event>) -> usize {
        let mut due: Vec<(u64, u64, Key)> = self
            .open
            .iter()
            .filter(|(_, c)| now_ms.saturating_sub(c.last_activity_ms) >= idle_ms)
            .map(|(k, c)| (c.last_activity_ms, c.order, k.clone()))
            .collect();
        due.sort_unstable_by_key(|d| (d.0, d.1));
        let n = due.len();
        self.close_due(due, CloseReason::Idle, now_ms, out);
        let ttl = self.config.tombstone_ttl_ms;
        self.closed
            .retain(|_, t| now_ms.saturating_sub(t.closed_at_ms) < ttl);
        n
    }

    fn close_due(
        &mut self,
        due: Vec<(u64, u64, Key)>,
        reason: CloseReason,
        now_ms: u64,
        out: &mut Vec<Event>,
    ) {
        for (_, _, key) in due {
            if let Some(conv) = self.open.remove(&key) {
                self.finish(key, conv, reason, now_ms, out);
            }
        }
    }

    /// Closes every open conversation in arrival order.
    pub fn close_all(&mut self, reason: CloseReason, now_ms: u64, out: &mut Vec<Event>) {
        let mut all: Vec<(Key, Conversation)> = self.open.drain().collect();
        all.sort_unstable_by_key(|(_, c)| c.order);
        for (key, conv) in all {
            self.finish(key, conv, reason, now_ms, out);
        }
    }

    /// Close-time verdicts, the summary, and the tombstone.
    fn finish(
        &mut self,
        key: Key,
        mut conv: Conversation,
        reason: CloseReason,
        now_ms: u64,
        out: &mut Vec<Event>,
    ) {
        let scanner = Arc::clone(&self.scanner);
        let (tenant, id) = (&*key.tenant, &*key.id);
        // Greeting: the agent spoke fewer times than the window and never
        // greeted.
        if let Some(g) = scanner.windowed_rule(RuleKind::Greeting)
            && conv.greeted.is_none()
            && conv.agent_segments > 0
            && !conv.midway
        {
            conv.greeted = Some(false);
            push_missing(&scanner, g, tenant, id, &mut conv, now_ms, out);
        }
        let mut closed = None;
        if let Some(c) = scanner.windowed_rule(RuleKind::Closing)
            && conv.agent_segments > 0
        {
            let window = scanner.rule(c).window.min(32);
            let mask = if window >= 32 {
                u32::MAX
            } else {
                (1u32 << window) - 1
            };
            let ok = conv.closing_bits & mask != 0;
            closed = Some(ok);
            if !ok {
                push_missing(&scanner, c, tenant, id, &mut conv, now_ms, out);
            }
        }
        let lexicon = scanner.lexicon();
        let deducted: f64 = conv
            .deducted
            .iter()
            .map(|(section, d)| {
                let cap = lexicon
                    .sections
                    .iter()
                    .find(|s| &s.id == section)
                    .map_or(f64::INFINITY, |s| s.max_deduct);
                d.min(cap)
            })
            .sum();
        let score = ((100.0 - deducted) * 1e6).round() / 1e6;
        out.push(Event::Summary(Summary {
            id: event_id(&[tenant.as_bytes(), id.as_bytes(), b"summary"]),
            conversation_id: id.to_string(),
            tenant: tenant.to_string(),
            channel: conv.channel,
            agent_id: conv.agent_id.clone(),
            reason,
            segments: conv.segments,
            agent_segments: conv.agent_segments,
            counts: conv.counts,
            greeted: conv.greeted,
            closed,
            score,
            lexicon_version: scanner.version().to_string(),
            ts_ms: now_ms,
        }));
        self.closed.insert(
            key,
            Tombstone {
                closed_at_ms: now_ms,
                seen: std::mem::take(&mut conv.seen),
                channel: conv.channel,
            },
        );
    }

    /// Open conversations, for saving across a restart:
    /// `(tenant, conversation id, state)`.
    pub fn export(&self) -> impl Iterator<Item = (&str, &str, &Conversation)> {
        self.open.iter().map(|(k, c)| (&*k.tenant, &*k.id, c))
    }

    /// Restores a saved conversation (replacing any state under that key).
    pub fn import(&mut self, tenant: &str, id: &str, mut conv: Conversation) {
        conv.order = self.next_order;
        self.next_order += 1;
        self.open.insert(KeyRef { tenant, id }.to_key(), conv);
    }
}

/// Borrowed context of the segment being judged.
struct Ctx<'a, 'i> {
    tenant: &'a str,
    id: &'a str,
    input: &'a Input<'i>,
    segment: &'a Segment<'i>,
    excerpt_chars: usize,
    now_ms: u64,
}

fn judge_segment(
    scanner: &Scanner,
    scratch: &mut Scratch,
    cx: Ctx<'_, '_>,
    conv: &mut Conversation,
    out: &mut Vec<Event>,
) {
    let channel = cx.input.channel.or(conv.channel);
    let (has_greeting, has_closing) = phrase_violations(
        scanner,
        scratch,
        &cx,
        channel,
        out,
        |category, section, deduct| {
            conv.counts.add(category);
            conv.deduct(section, deduct);
        },
    );
    let text = cx.segment.text.as_ref();
    if cx.segment.speaker != Speaker::Agent {
        return;
    }
    conv.agent_segments += 1;
    conv.last_agent_seq = cx.segment.seq;
    conv.last_agent_text.clear();
    let (head, _) = excerpt(text, 0, cx.excerpt_chars);
    conv.last_agent_text.push_str(head);
    conv.last_agent_chars = if head.len() == text.len() {
        head.chars().count()
    } else {
        text.chars().count()
    };
    conv.closing_bits = (conv.closing_bits << 1) | u32::from(has_closing);
    if conv.midway || conv.greeted.is_some() {
        return;
    }
    let Some(g) = scanner.windowed_rule(RuleKind::Greeting) else {
        return;
    };
    if has_greeting {
        conv.greeted = Some(true);
    } else if conv.agent_segments as usize >= scanner.rule(g).window {
        conv.greeted = Some(false);
        let ts = cx.input.ts_ms.unwrap_or(cx.now_ms);
        push_missing(scanner, g, cx.tenant, cx.id, conv, ts, out);
    }
}

/// Scans the segment and emits one violation per forbidden or filler rule
/// that hit it (repeated hits of a rule add to its `count` and `spans`),
/// calling `counted(category, section id, deduct)` for each hit. Returns
/// whether a greeting and a closing phrase occurred.
fn phrase_violations(
    scanner: &Scanner,
    scratch: &mut Scratch,
    cx: &Ctx<'_, '_>,
    channel: Option<Channel>,
    out: &mut Vec<Event>,
    mut counted: impl FnMut(Category, &str, f64),
) -> (bool, bool) {
    let text = cx.segment.text.as_ref();
    scanner.scan(text, cx.segment.speaker, scratch);
    let mut has_greeting = false;
    let mut has_closing = false;
    // This segment's violations (rule, index in `out`): a handful at most.
    let mut open: Vec<(u16, usize)> = Vec::new();
    for hit in &scratch.hits {
        let rule = scanner.rule(hit.rule);
        match rule.kind {
            RuleKind::Greeting => has_greeting = true,
            RuleKind::Closing => has_closing = true,
            RuleKind::Forbidden | RuleKind::Filler => {
                let category = rule.kind.violation_category();
                counted(
                    category,
                    &scanner.lexicon().sections[rule.section].id,
                    rule.deduct,
                );
                if let Some(&(_, at)) = open.iter().find(|(r, _)| *r == hit.rule) {
                    if let Some(Event::Violation(v)) = out.get_mut(at) {
                        v.count = v.count.saturating_add(1);
                        v.deduct += rule.deduct;
                        // Offsets cost a walk of the text: only for the
                        // spans that are listed.
                        if v.spans.len() < MAX_SPANS {
                            let (os, oe) =
                                scratch.norm.original_range(text, hit.norm.0, hit.norm.1);
                            let start = char_offset(text, os);
                            let end = start + char_offset(&text[os..], oe - os);
                            v.spans.push([start, end]);
                        }
                    }
                    continue;
                }
                let (os, oe) = scratch.norm.original_range(text, hit.norm.0, hit.norm.1);
                let start = char_offset(text, os);
                let end = start + char_offset(&text[os..], oe - os);
                let (s, e) = (start.to_string(), end.to_string());
                let seq = cx.segment.seq.to_string();
                let id = event_id(&[
                    cx.tenant.as_bytes(),
                    cx.id.as_bytes(),
                    seq.as_bytes(),
                    rule.id.as_bytes(),
                    s.as_bytes(),
                    e.as_bytes(),
                ]);
                let (shown, text_start) = excerpt(text, start, cx.excerpt_chars);
                open.push((hit.rule, out.len()));
                out.push(Event::Violation(Violation {
                    id,
                    conversation_id: cx.id.to_string(),
                    tenant: cx.tenant.to_string(),
                    channel,
                    agent_id: cx.input.agent_id.as_deref().map(str::to_string),
                    seq: cx.segment.seq,
                    rule_id: rule.id.clone(),
                    category,
                    severity: rule.severity,
                    deduct: rule.deduct,
                    // A hit can span any number of dropped characters
                    // (zero-width, marks): `matched` is capped like `text`.
                    matched: Some(excerpt(&text[os..oe], 0, cx.excerpt_chars).0.to_string()),
                    start: Some(start),
                    end: Some(end),
                    count: 1,
                    spans: vec![[start, end]],
                    text: shown.to_string(),
                    text_start,
                    text_chars: if shown.len() == text.len() {
                        shown.chars().count()
                    } else {
                        text.chars().count()
                    },
                    lexicon_version: scanner.version().to_string(),
                    ts_ms: cx.input.ts_ms.unwrap_or(cx.now_ms),
                }));
            }
        }
    }
    (has_greeting, has_closing)
}

/// At most `limit` characters of `text`, starting a quarter of the limit
/// before character `at` (so the match shows with some context before it):
/// the slice and the character offset where it starts. The whole text when
/// it fits.
pub fn excerpt(text: &str, at: usize, limit: usize) -> (&str, usize) {
    // Bytes bound characters: most segments take this branch uncounted.
    if text.len() <= limit || text.chars().count() <= limit {
        return (text, 0);
    }
    let first = at.saturating_sub(limit / 4);
    let mut bounds = text
        .char_indices()
        .map(|(i, _)| i)
        .chain(std::iter::once(text.len()))
        .skip(first);
    let from = bounds.next().unwrap_or(text.len());
    let to = bounds.nth(limit.saturating_sub(1)).unwrap_or(text.len());
    (&text[from..to], first)
}

/// A missing_greeting / missing_closing violation, pointing at the most
/// recent agent segment.
fn push_missing(
    scanner: &Scanner,
    rule_ix: u16,
    tenant: &str,
    id: &str,
    conv: &mut Conversation,
    ts_ms: u64,
    out: &mut Vec<Event>,
) {
    let rule = scanner.rule(rule_ix);
    let category = rule.kind.violation_category();
    conv.counts.add(category);
    conv.deduct(&scanner.lexicon().sections[rule.section].id, rule.deduct);
    out.push(Event::Violation(Violation {
        // One verdict per category per conversation: the id does not depend
        // on where it was reached.
        id: event_id(&[
            tenant.as_bytes(),
            id.as_bytes(),
            rule.id.as_bytes(),
            category.as_str().as_bytes(),
        ]),
        conversation_id: id.to_string(),
        tenant: tenant.to_string(),
        channel: conv.channel,
        agent_id: conv.agent_id.clone(),
        seq: conv.last_agent_seq,
        rule_id: rule.id.clone(),
        category,
        severity: rule.severity,
        deduct: rule.deduct,
        matched: None,
        start: None,
        end: None,
        count: 1,
        spans: Vec::new(),
        text: conv.last_agent_text.clone(),
        text_start: 0,
        text_chars: conv.last_agent_chars,
        lexicon_version: scanner.version().to_string(),
        ts_ms,
    }));
}

/// The set of seqs seen in a conversation: sorted, disjoint runs of
/// consecutive seqs (`first..=last`), where no two runs touch (a run ending
/// at `n` and one starting at `n + 1` are merged). Seqs nearly always arrive
/// in increasing order, so the usual conversation is one run of 16 bytes
/// whatever its length. Up to [`FEW_RUNS`] runs live in a small sorted
/// `Vec` (a `BTreeMap` node costs ~200 bytes, which is most of a closed
/// conversation's tombstone); past that a `BTreeMap`, so any arrival order
/// costs O(log runs) per insert (a sorted `Vec` of seqs made descending seqs
/// quadratic).
///
/// Serialized (saved state) as a JSON array whose items are a seq (a run of
/// one) or a `[first, last]` pair: an array of plain seqs, the format of
/// older versions, loads unchanged.
#[derive(Debug, Clone)]
pub struct SeqSet {
    runs: Runs,
}

/// Runs held in a `Vec` at most; more move to a `BTreeMap`.
pub const FEW_RUNS: usize = 8;

#[derive(Debug, Clone)]
enum Runs {
    Few(Vec<(u64, u64)>),
    Many(BTreeMap<u64, u64>),
}

impl Default for SeqSet {
    fn default() -> Self {
        SeqSet {
            runs: Runs::Few(Vec::new()),
        }
    }
}

impl PartialEq for SeqSet {
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}

impl Eq for SeqSet {}

impl SeqSet {
    /// Adds `seq`; false if it was already present.
    pub fn insert(&mut self, seq: u64) -> bool {
        let v = match &mut self.runs {
            Runs::Few(v) => v,
            Runs::Many(m) => return insert_many(m, seq),
        };
        // The first run starting after `seq`.
        let i = v.partition_point(|&(first, _)| first <= seq);
        let joins_left = match i.checked_sub(1).map(|j| v[j]) {
            Some((_, last)) if last >= seq => return false,
            Some((_, last)) => last + 1 == seq,
            None => false,
        };
        let joins_right = v
            .get(i)
            .is_some_and(|&(first, _)| seq.checked_add(1) == Some(first));
        match (joins_left, joins_right) {
            (true, true) => {
                v[i - 1].1 = v[i].1;
                v.remove(i);
            }
            (true, false) => v[i - 1].1 = seq,
            (false, true) => v[i].0 = seq,
            (false, false) => {
                if v.is_empty() {
                    // One run is the usual whole conversation: no spare.
                    v.reserve_exact(1);
                }
                v.insert(i, (seq, seq));
                if v.len() > FEW_RUNS {
                    self.runs = Runs::Many(v.iter().copied().collect());
                }
            }
        }
        true
    }

    /// Whether `seq` was inserted.
    pub fn contains(&self, seq: u64) -> bool {
        match &self.runs {
            Runs::Few(v) => {
                let i = v.partition_point(|&(first, _)| first <= seq);
                i > 0 && v[i - 1].1 >= seq
            }
            Runs::Many(m) => m
                .range(..=seq)
                .next_back()
                .is_some_and(|(_, &last)| last >= seq),
        }
    }

    /// Number of runs of consecutive seqs (what the set's memory grows with).
    pub fn runs(&self) -> usize {
        match &self.runs {
            Runs::Few(v) => v.len(),
            Runs::Many(m) => m.len(),
        }
    }

    /// The runs, in order.
    fn iter(&self) -> Box<dyn Iterator<Item = (u64, u64)> + '_> {
        match &self.runs {
            Runs::Few(v) => Box::new(v.iter().copied()),
            Runs::Many(m) => Box::new(m.iter().map(|(&f, &l)| (f, l))),
        }
    }

    /// Adds every seq of `first..=last` (loading saved state, which may hold
    /// overlapping or unordered items if edited by hand). Works on the map;
    /// [`SeqSet::compact`] moves a small result back to the `Vec`.
    fn insert_run(&mut self, first: u64, last: u64) {
        if let Runs::Few(v) = &self.runs {
            self.runs = Runs::Many(v.iter().copied().collect());
        }
        let Runs::Many(runs) = &mut self.runs else {
            return;
        };
        let (first, last) = (first.min(last), first.max(last));
        let mut new_first = first;
        let mut new_last = last;
        // Absorb every run that overlaps or touches `first..=last`: the one
        // starting before `first` and all starting within `first..=last+1`.
        if let Some((&f, &l)) = runs.range(..first).next_back()
            && l.saturating_add(1) >= first
        {
            new_first = f;
            new_last = new_last.max(l);
            runs.remove(&f);
        }
        let upper = last.saturating_add(1);
        while let Some((&f, &l)) = runs.range(first..=upper).next() {
            new_last = new_last.max(l);
            runs.remove(&f);
        }
        runs.insert(new_first, new_last);
    }

    /// Back to the `Vec` when few runs are left.
    fn compact(&mut self) {
        if let Runs::Many(m) = &self.runs
            && m.len() <= FEW_RUNS
        {
            let mut v = Vec::with_capacity(m.len());
            v.extend(m.iter().map(|(&f, &l)| (f, l)));
            self.runs = Runs::Few(v);
        }
    }
}

/// [`SeqSet::insert`] on the map form.
fn insert_many(runs: &mut BTreeMap<u64, u64>, seq: u64) -> bool {
    // The run starting at or before `seq`, if it reaches `seq` or ends
    // right before it.
    let mut joins_left = None;
    if let Some((&first, &last)) = runs.range(..=seq).next_back() {
        if last >= seq {
            return false;
        }
        if last + 1 == seq {
            joins_left = Some(first);
        }
    }
    // The run starting right after `seq`.
    let joins_right = seq
        .checked_add(1)
        .and_then(|next| runs.get(&next).map(|&last| (next, last)));
    match (joins_left, joins_right) {
        (Some(first), Some((next, last))) => {
            runs.remove(&next);
            runs.insert(first, last);
        }
        (Some(first), None) => {
            runs.insert(first, seq);
        }
        (None, Some((next, last))) => {
            runs.remove(&next);
            runs.insert(seq, last);
        }
        (None, None) => {
            runs.insert(seq, seq);
        }
    }
    true
}

impl Serialize for SeqSet {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = serializer.serialize_seq(Some(self.runs()))?;
        for (first, last) in self.iter() {
            if first == last {
                seq.serialize_element(&first)?;
            } else {
                seq.serialize_element(&[first, last])?;
            }
        }
        seq.end()
    }
}

impl<'de> Deserialize<'de> for SeqSet {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        /// One item: a seq or a `[first, last]` run.
        struct Item(u64, u64);

        impl<'de> Deserialize<'de> for Item {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct ItemVisitor;
                impl<'de> serde::de::Visitor<'de> for ItemVisitor {
                    type Value = Item;
                    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                        f.write_str("a seq or a [first, last] pair of seqs")
                    }
                    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Item, E> {
                        Ok(Item(v, v))
                    }
                    fn visit_seq<A: serde::de::SeqAccess<'de>>(
                        self,
                        mut a: A,
                    ) -> Result<Item, A::Error> {
                        use serde::de::Error;
                        let first: u64 = a
                            .next_element()?
                            .ok_or_else(|| A::Error::invalid_length(0, &self))?;
                        let last: u64 = a
                            .next_element()?
                            .ok_or_else(|| A::Error::invalid_length(1, &self))?;
                        if a.next_element::<serde::de::IgnoredAny>()?.is_some() {
                            return Err(A::Error::invalid_length(3, &self));
                        }
                        Ok(Item(first, last))
                    }
                }
                d.deserialize_any(ItemVisitor)
            }
        }

        struct SetVisitor;
        impl<'de> serde::de::Visitor<'de> for SetVisitor {
            type Value = SeqSet;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an array of seqs and [first, last] pairs")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<SeqSet, A::Error> {
                let mut set = SeqSet::default();
                while let Some(Item(first, last)) = a.next_element()? {
                    set.insert_run(first, last);
                }
                set.compact();
                Ok(set)
            }
        }
        deserializer.deserialize_seq(SetVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::{Outcome, SeqSet};

    #[test]
    fn outcome_all_is_indexed_by_discriminant() {
        for (i, o) in Outcome::ALL.iter().enumerate() {
            assert_eq!(*o as usize, i, "{}", o.as_str());
        }
    }

    #[test]
    fn seq_set_moves_to_the_map_past_few_runs_and_compares_by_content() {
        let mut gappy = SeqSet::default();
        for q in (0..2 * (super::FEW_RUNS as u64 + 2)).step_by(2) {
            assert!(gappy.insert(q));
        }
        assert_eq!(gappy.runs(), super::FEW_RUNS + 2);
        assert!(matches!(gappy.runs, super::Runs::Many(_)));
        for q in (1..2 * (super::FEW_RUNS as u64 + 2)).step_by(2) {
            assert!(gappy.insert(q));
            assert!(!gappy.insert(q));
        }
        assert_eq!(gappy.runs(), 1);
        let mut plain = SeqSet::default();
        for q in 0..2 * (super::FEW_RUNS as u64 + 2) {
            plain.insert(q);
        }
        assert!(matches!(plain.runs, super::Runs::Few(_)));
        assert_eq!(gappy, plain);
        // Loading saved state gives the small form again.
        let json = serde_json::to_string(&gappy).expect("json");
        let back: SeqSet = serde_json::from_str(&json).expect("load");
        assert!(matches!(back.runs, super::Runs::Few(_)));
        assert_eq!(back, plain);
    }

    #[test]
    fn seq_set_descending_200k_is_one_run_and_exact() {
        const N: u64 = 200_000;
        let mut s = SeqSet::default();
        // Every other seq first (descending: 100k separate runs), then the
        // gaps (descending, each joining two runs).
        for q in (0..N).rev().filter(|q| q % 2 == 1) {
            assert!(s.insert(q), "{q} is new");
        }
        assert_eq!(s.runs(), (N / 2) as usize);
        assert!(!s.contains(0) && s.contains(1) && !s.contains(2));
        for q in (0..N).rev().filter(|q| q % 2 == 0) {
            assert!(s.insert(q), "{q} is new");
        }
        assert_eq!(s.runs(), 1, "all of 0..{N} merged into one run");
        for q in (0..N).rev() {
            assert!(!s.insert(q), "{q} is a repeat");
            assert!(s.contains(q));
        }
        assert!(!s.contains(N));
        assert!(s.insert(N));
        assert_eq!(s.runs(), 1);
    }

    #[test]
    fn seq_set_matches_a_btreeset_in_any_order() {
        use proptest::prelude::*;
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        let strategy = proptest::collection::vec(
            prop_oneof![0u64..64, Just(u64::MAX), Just(u64::MAX - 1), any::<u64>()],
            0..200,
        );
        runner
            .run(&strategy, |seqs| {
                let mut s = SeqSet::default();
                let mut model = std::collections::BTreeSet::new();
                for &q in &seqs {
                    prop_assert_eq!(s.insert(q), model.insert(q), "insert {}", q);
                }
                for q in (0..70).chain([u64::MAX, u64::MAX - 1, u64::MAX - 2]) {
                    prop_assert_eq!(s.contains(q), model.contains(&q), "contains {}", q);
                }
                for &q in &seqs {
                    prop_assert!(s.contains(q));
                }
                // Runs are disjoint, sorted and never touch.
                let runs: Vec<(u64, u64)> = s.iter().collect();
                for w in runs.windows(2) {
                    prop_assert!(w[0].1 < w[1].0 && w[0].1 + 1 < w[1].0, "{:?}", w);
                }
                let json =
                    serde_json::to_string(&s).map_err(|e| TestCaseError::fail(e.to_string()))?;
                let back: SeqSet =
                    serde_json::from_str(&json).map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(&back, &s);
                // The older format (a plain array of seqs, any order) loads
                // to the same set.
                let old =
                    serde_json::to_string(&seqs).map_err(|e| TestCaseError::fail(e.to_string()))?;
                let from_old: SeqSet =
                    serde_json::from_str(&old).map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(&from_old, &s);
                Ok(())
            })
            .unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn seq_set_serde_format() {
        let mut s = SeqSet::default();
        for q in [7, 0, 1, 2, 3, 9, 10] {
            s.insert(q);
        }
        let json = serde_json::to_string(&s).expect("serializes");
        assert_eq!(json, "[[0,3],7,[9,10]]");
        // Saved by an older version: a sorted array of seqs.
        let old: SeqSet = serde_json::from_str("[0,1,2,3,7,9,10]").expect("old format loads");
        assert_eq!(old, s);
        // Overlapping and unordered items (state edited by hand) merge.
        let messy: SeqSet = serde_json::from_str("[[9,10],[2,0],[1,3],7,10]").expect("loads");
        assert_eq!(messy, s);
        for bad in ["{}", "[-1]", "[[1]]", "[[1,2,3]]", "[\"1\"]", "[1.5]"] {
            assert!(serde_json::from_str::<SeqSet>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn seq_set_handles_out_of_order_and_repeats() {
        let mut s = SeqSet::default();
        let inserted: Vec<bool> = [3, 5, 4, 5, 3, 0, 6].iter().map(|&q| s.insert(q)).collect();
        assert_eq!(inserted, vec![true, true, true, false, false, true, true]);
    }
}
