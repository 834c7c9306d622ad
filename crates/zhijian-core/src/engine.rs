//! The judging engine: conversation state and verdicts. Synchronous, no I/O:
//! every call takes the clock (`now_ms`) as an argument and appends the
//! events it produces to a caller-owned `Vec`.
//!
//! One [`Engine`] owns a set of conversations (the daemon runs one per
//! shard, the offline scanner one in total) and shares the compiled
//! lexicons ([`Scanners`]: the base and one per tenant) behind an `Arc`.
//! The engine knows no rule kind: it scans each segment once, hands it to
//! the rules ([`crate::book::Book`]) and turns what they report into
//! events.
//!
//! Semantics, in order of application to an input event:
//! 1. Provisional segments (`final: false`) change nothing and yield
//!    nothing: the final segment with the same seq is judged instead.
//! 2. Events for a conversation closed recently (a tombstone) are late:
//!    they cannot reopen it or change its verdicts, but a late segment not
//!    seen before is still scanned, so its phrase and pattern violations
//!    are never lost (an ASR result that arrives after the hang-up event).
//! 3. A segment whose seq was already seen is a duplicate and ignored.
//! 4. Segments of a speaker some rule reads are judged: phrase and pattern
//!    matches become violations (one per span: when rules overlap, the most
//!    severe stands for the others); stateful rules update their state and
//!    may report verdicts (a required phrase missing, a response not given).
//! 5. The clock ([`Engine::close_idle`]) passes deadlines of rules that
//!    wait (a response within N seconds) and closes idle conversations.
//! 6. `end` (or idle, or end of input) closes the conversation: close-time
//!    verdicts, then the summary with the score.

use crate::event::{
    Also, Channel, CloseReason, Counts, Event, Input, InputKind, Segment, Speaker, Summary,
    Violation, event_id, excerpt,
};
use crate::matcher::{Scanner, Scanners, Scratch};
use crate::normalize::char_offset;
use crate::rules::{self, Found, State};
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
    /// A final segment of a speaker some rule reads, judged.
    Judged,
    /// A final segment of a speaker no rule reads.
    Recorded,
    /// A provisional ASR hypothesis: ignored.
    Provisional,
    /// A segment seq already seen in this conversation: ignored.
    Duplicate,
    /// An event for a conversation that was already closed: a new segment
    /// is scanned for phrase and pattern violations, nothing else changes.
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
    /// The conversation's time: the latest segment `ts_ms` (or engine
    /// clock, for segments without one).
    #[serde(default)]
    pub last_ts: u64,
    /// Seqs seen (final segments only), for idempotence.
    pub seen: SeqSet,
    /// The first event seen was not the first of the conversation (seq > 0),
    /// e.g. after a restart without saved state: no verdicts about its
    /// start.
    pub midway: bool,
    pub segments: u32,
    pub agent_segments: u32,
    /// The most recent agent segment (where close-time verdicts point).
    pub last_agent_seq: u64,
    /// The start of the most recent agent segment, at most the excerpt
    /// limit: what close-time verdicts show.
    pub last_agent_text: String,
    /// The most recent agent segment's full length in characters.
    #[serde(default)]
    pub last_agent_chars: usize,
    #[serde(default)]
    pub last_seq: Option<u64>,
    pub counts: Counts,
    /// Deductions per scorecard section id (capped when the score is
    /// computed, so a lexicon reload that changes caps applies cleanly).
    pub deducted: Vec<(String, f64)>,
    /// The state of each stateful rule of the conversation's lexicon, in
    /// the order of its [`crate::book::Book::slot_rules`]. In saved state it is
    /// `rules`, keyed by rule id, so a restart with a changed lexicon keeps
    /// what still applies.
    #[serde(skip)]
    pub states: Vec<State>,
    /// The earliest conversation time at which a rule's deadline passes.
    #[serde(skip, default = "never")]
    pub deadline: u64,
    /// Saved form of `states`: `(rule id, state)`; empty in memory.
    #[serde(default, rename = "rules", skip_serializing_if = "Vec::is_empty")]
    pub saved_rules: Vec<(String, State)>,
    /// Which of the engine's lexicons judges it: the one current when it
    /// opened, to its end (see [`Engine::set_scanners`]).
    #[serde(skip)]
    pub lexicon: u32,
    /// In saved state: the version of the lexicon that judges it, so that
    /// whoever restores it judges it on with that version (see
    /// [`Engine::register`]); empty in memory and in state saved before it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub lexicon_version: String,
    /// Versions that judged it earlier, when its own could not be had
    /// after a restore (named in its summary).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub earlier_lexicons: Vec<String>,
    /// State format 1 (before rule kinds): the greeting verdict and the
    /// closing window bits, moved into the rules' state when loaded.
    #[serde(default, skip_serializing)]
    pub greeted: Option<bool>,
    #[serde(default, skip_serializing)]
    pub closing_bits: Option<u32>,
}

fn never() -> u64 {
    u64::MAX
}

impl Conversation {
    fn new(order: u64, first_seq: Option<u64>, states: Vec<State>, lexicon: u32) -> Conversation {
        Conversation {
            lexicon,
            lexicon_version: String::new(),
            earlier_lexicons: Vec::new(),
            order,
            channel: None,
            agent_id: None,
            last_activity_ms: 0,
            last_ts: 0,
            seen: SeqSet::default(),
            midway: first_seq.is_some_and(|s| s > 0),
            segments: 0,
            agent_segments: 0,
            last_agent_seq: 0,
            last_agent_text: String::new(),
            last_agent_chars: 0,
            last_seq: None,
            counts: Counts::default(),
            deducted: Vec::new(),
            states,
            deadline: u64::MAX,
            saved_rules: Vec::new(),
            greeted: None,
            closing_bits: None,
        }
    }

    fn deduct(&mut self, section: &str, points: f64) {
        match self.deducted.iter_mut().find(|(s, _)| s == section) {
            Some((_, d)) => *d += points,
            None => self.deducted.push((section.to_string(), points)),
        }
    }

    /// The conversation's time at engine time `now_ms`: its last segment
    /// time plus the engine time since.
    fn time_at(&self, now_ms: u64) -> u64 {
        self.last_ts
            .saturating_add(now_ms.saturating_sub(self.last_activity_ms))
    }
}

/// What is remembered of a closed conversation for
/// [`EngineConfig::tombstone_ttl_ms`]: a late segment of it is judged by
/// itself (phrases, patterns), never reopens it. Serializable so that a
/// checkpoint keeps it across a take-over.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tombstone {
    closed_at_ms: u64,
    /// Seqs seen, so a redelivered segment stays a duplicate after close.
    seen: SeqSet,
    channel: Option<Channel>,
}

/// Judges conversations.
pub struct Engine {
    /// The current lexicons: new conversations are judged by them.
    scanners: Arc<Scanners>,
    /// Their generation (see [`Conversation::lexicon`]).
    generation: u32,
    /// Earlier (or registered) lexicons that open conversations still
    /// use, by generation: a handful at most, dropped when none uses them.
    earlier: Vec<(u32, Arc<Scanners>)>,
    /// The next generation to hand out.
    next_generation: u32,
    config: EngineConfig,
    open: Map<Conversation>,
    /// Recently closed conversations.
    closed: Map<Tombstone>,
    next_order: u64,
    scratch: Scratch,
    pattern_scratch: rules::pattern::Scratch,
    found: Vec<Found>,
    /// Candidate hits dropped since the last [`Engine::take_suppressed`]:
    /// `(rule id, reason, count)`.
    suppressed: Vec<(String, &'static str, u64)>,
    /// Conversations whose rule state a clock pass changed (deadlines in
    /// [`Engine::close_idle`]), when tracked: see
    /// [`Engine::take_clock_changes`].
    clock_changed: Option<Vec<(String, String)>>,
}

/// Which verdicts to explain (for `zhijian lexicon test`).
pub type Explain = Vec<String>;

impl Engine {
    /// An engine judging every tenant by one lexicon.
    pub fn new(scanner: Arc<Scanner>, config: EngineConfig) -> Engine {
        Engine::with_scanners(Arc::new(Scanners::single(scanner)), config)
    }

    /// An engine judging each tenant by its lexicon.
    pub fn with_scanners(scanners: Arc<Scanners>, config: EngineConfig) -> Engine {
        Engine {
            scanners,
            generation: 0,
            earlier: Vec::new(),
            next_generation: 1,
            config,
            open: Map::default(),
            closed: Map::default(),
            next_order: 0,
            scratch: Scratch::default(),
            pattern_scratch: rules::pattern::Scratch::default(),
            found: Vec::new(),
            suppressed: Vec::new(),
            clock_changed: None,
        }
    }

    /// Records, from now on, the conversations whose state a clock pass
    /// changes with no input (`(tenant, id)`), for a caller that saves only
    /// what changed; drained by [`Engine::take_clock_changes`].
    pub fn track_clock_changes(&mut self) {
        self.clock_changed.get_or_insert_with(Vec::new);
    }

    /// The conversations a clock pass changed since the last call (empty
    /// unless tracked).
    pub fn take_clock_changes(&mut self) -> Vec<(String, String)> {
        self.clock_changed
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// Swaps in a new compiled lexicon for every tenant.
    pub fn set_scanner(&mut self, scanner: Arc<Scanner>) {
        self.set_scanners(Arc::new(Scanners::single(scanner)));
    }

    /// Swaps in new compiled lexicons for the conversations that open from
    /// now on. An open conversation is judged by the lexicon it opened
    /// with, to its end: a score is one lexicon's, and its summary names
    /// the version that judged every segment (a reload or a rolling
    /// upgrade never mixes two in one conversation).
    pub fn set_scanners(&mut self, scanners: Arc<Scanners>) {
        if Arc::ptr_eq(&self.scanners, &scanners) {
            return;
        }
        let old = std::mem::replace(&mut self.scanners, scanners);
        let was = std::mem::replace(&mut self.generation, self.next_generation);
        self.next_generation += 1;
        if self.open.values().any(|c| c.lexicon == was) {
            self.earlier.push((was, old));
        }
    }

    /// Makes lexicons known for conversations restored with their version
    /// (see [`Engine::import`]); they judge nothing new.
    pub fn register(&mut self, scanners: Arc<Scanners>) {
        let known = std::iter::once(&self.scanners)
            .chain(self.earlier.iter().map(|(_, s)| s))
            .any(|s| s.base().version() == scanners.base().version());
        if !known {
            self.earlier.push((self.next_generation, scanners));
            self.next_generation += 1;
        }
    }

    /// Whether a conversation of `tenant` saved with lexicon `version` can
    /// be judged on with that version (an empty version: state saved
    /// before versions were, judged by the current lexicon).
    pub fn knows(&self, tenant: &str, version: &str) -> bool {
        version.is_empty() || self.generation_of(tenant, version).is_some()
    }

    fn generation_of(&self, tenant: &str, version: &str) -> Option<u32> {
        std::iter::once((self.generation, &self.scanners))
            .chain(self.earlier.iter().map(|(g, s)| (*g, s)))
            .find(|(_, s)| s.for_tenant(tenant).version() == version)
            .map(|(g, _)| g)
    }

    /// The lexicon of a conversation of `tenant` in `generation`.
    fn lexicon(&self, tenant: &str, generation: u32) -> &Arc<Scanner> {
        lexicon_of(
            &self.scanners,
            self.generation,
            &self.earlier,
            tenant,
            generation,
        )
    }

    pub fn scanners(&self) -> &Arc<Scanners> {
        &self.scanners
    }

    /// The candidate hits rules dropped (exception, word boundary, clause
    /// position, overlap) since the last call, `(rule id, reason, count)`:
    /// the suppression audit's metric.
    pub fn take_suppressed(&mut self) -> Vec<(String, &'static str, u64)> {
        std::mem::take(&mut self.suppressed)
    }

    /// Number of open conversations.
    pub fn open_conversations(&self) -> usize {
        self.open.len()
    }

    /// Handles one input event.
    pub fn handle(&mut self, input: &Input<'_>, now_ms: u64, out: &mut Vec<Event>) -> Outcome {
        self.handle_explained(input, now_ms, out, None)
    }

    /// Like [`Engine::handle`], and records in `explain` why each rule
    /// decided as it did (for `zhijian lexicon test`).
    pub fn handle_explained(
        &mut self,
        input: &Input<'_>,
        now_ms: u64,
        out: &mut Vec<Event>,
        explain: Option<&mut Explain>,
    ) -> Outcome {
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
                self.finish(key, conv, CloseReason::End, now_ms, out, explain);
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
                let scanner: &Scanner = self.scanners.for_tenant(key.tenant);
                if let Some(t) = self.closed.get_mut(&key) {
                    if !t.seen.insert(segment.seq) {
                        return Outcome::Duplicate;
                    }
                    if scanner.judges(segment.speaker) {
                        let channel = input.channel.or(t.channel);
                        let cx = Ctx {
                            tenant: key.tenant,
                            id: key.id,
                            input,
                            segment,
                            channel,
                            excerpt_chars: self.config.excerpt_chars,
                            now_ms,
                        };
                        // No state: only what a segment shows by itself
                        // (phrases, patterns) is judged.
                        judge(
                            scanner,
                            &mut self.scratch,
                            &mut self.pattern_scratch,
                            &mut self.found,
                            &cx,
                            None,
                            out,
                            explain,
                        );
                        if !self.scratch.dropped.is_empty() {
                            count_dropped(&mut self.suppressed, &self.scratch.dropped, scanner);
                        }
                    }
                    return Outcome::Late;
                }
                let order = self.next_order;
                self.next_order += 1;
                let states = scanner.book().initial_states(scanner.lexicon());
                let generation = self.generation;
                self.open.entry(key.to_key()).or_insert_with(|| {
                    Conversation::new(order, Some(segment.seq), states, generation)
                })
            }
        };
        // Field borrows, not an `Arc` clone: no atomic operations per
        // segment.
        let scanner: &Scanner = lexicon_of(
            &self.scanners,
            self.generation,
            &self.earlier,
            key.tenant,
            conv.lexicon,
        );
        if !conv.seen.insert(segment.seq) {
            return Outcome::Duplicate;
        }
        conv.segments += 1;
        conv.last_activity_ms = now_ms;
        // A platform flag: the start of this conversation happened
        // elsewhere (before a transfer, in an earlier chat).
        if input.continued && conv.agent_segments == 0 {
            conv.midway = true;
        }
        conv.last_seq = Some(segment.seq);
        let ts = input.ts_ms.unwrap_or(now_ms);
        conv.last_ts = conv.last_ts.max(ts);
        if input.channel.is_some() {
            conv.channel = input.channel;
        }
        if segment.speaker == Speaker::Agent
            && let Some(a) = &input.agent_id
            && conv.agent_id.as_deref() != Some(a.as_ref())
        {
            conv.agent_id = Some(a.to_string());
        }
        let outcome = if scanner.judges(segment.speaker) {
            let cx = Ctx {
                tenant: key.tenant,
                id: key.id,
                input,
                segment,
                channel: input.channel.or(conv.channel),
                excerpt_chars: self.config.excerpt_chars,
                now_ms,
            };
            judge(
                scanner,
                &mut self.scratch,
                &mut self.pattern_scratch,
                &mut self.found,
                &cx,
                Some(conv),
                out,
                explain,
            );
            if !self.scratch.dropped.is_empty() {
                count_dropped(&mut self.suppressed, &self.scratch.dropped, scanner);
            }
            Outcome::Judged
        } else {
            Outcome::Recorded
        };
        // The segment limit: later segments of this conversation are late
        // (still scanned for phrases), and its seq set stops growing.
        if conv.segments >= self.config.max_segments
            && let Some((key, conv)) = self.open.remove_entry(&key)
        {
            self.finish(key, conv, CloseReason::Limit, now_ms, out, None);
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

    /// Passes rule deadlines by the clock (a response not given within N
    /// seconds while nobody speaks), closes conversations idle for at
    /// least `idle_ms` (oldest first) and forgets tombstones older than the
    /// configured TTL. Returns how many conversations it closed.
    pub fn close_idle(&mut self, now_ms: u64, idle_ms: u64, out: &mut Vec<Event>) -> usize {
        let mut due: Vec<(u64, u64, Key)> = Vec::new();
        for (k, c) in self.open.iter_mut() {
            if now_ms.saturating_sub(c.last_activity_ms) >= idle_ms {
                due.push((c.last_activity_ms, c.order, k.clone()));
                continue;
            }
            if c.deadline != u64::MAX && c.time_at(now_ms) > c.deadline {
                let scanner = lexicon_of(
                    &self.scanners,
                    self.generation,
                    &self.earlier,
                    &k.tenant,
                    c.lexicon,
                );
                let (book, lexicon) = (scanner.book(), scanner.lexicon());
                let mut sink = rules::Sink {
                    found: &mut self.found,
                    explain: None,
                };
                let t = c.time_at(now_ms);
                book.on_clock(lexicon, &mut c.states, c.channel, t, &mut sink);
                c.deadline = book.next_deadline(lexicon, &c.states);
                if let Some(changed) = self.clock_changed.as_mut() {
                    changed.push((k.tenant.to_string(), k.id.to_string()));
                }
                emit_verdicts(
                    scanner,
                    &k.tenant,
                    &k.id,
                    c,
                    &mut self.found,
                    None,
                    self.config.excerpt_chars,
                    out,
                );
            }
        }
        due.sort_unstable_by_key(|d| (d.0, d.1));
        let n = due.len();
        self.close_due(due, CloseReason::Idle, now_ms, out);
        let ttl = self.config.tombstone_ttl_ms;
        self.closed
            .retain(|_, t| now_ms.saturating_sub(t.closed_at_ms) < ttl);
        // Earlier lexicons no open conversation uses any more go.
        if !self.earlier.is_empty() {
            let open = &self.open;
            self.earlier
                .retain(|(g, _)| open.values().any(|c| c.lexicon == *g));
        }
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
                self.finish(key, conv, reason, now_ms, out, None);
            }
        }
    }

    /// Closes every open conversation in arrival order.
    pub fn close_all(&mut self, reason: CloseReason, now_ms: u64, out: &mut Vec<Event>) {
        let mut all: Vec<(Key, Conversation)> = self.open.drain().collect();
        all.sort_unstable_by_key(|(_, c)| c.order);
        for (key, conv) in all {
            self.finish(key, conv, reason, now_ms, out, None);
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
        explain: Option<&mut Explain>,
    ) {
        let scanner = Arc::clone(self.lexicon(&key.tenant, conv.lexicon));
        let (tenant, id) = (&*key.tenant, &*key.id);
        let (book, lexicon) = (scanner.book(), scanner.lexicon());
        let close = rules::Close {
            ts_ms: conv.time_at(now_ms),
            last_agent_seq: (conv.agent_segments > 0).then_some(conv.last_agent_seq),
            last_seq: conv.last_seq,
            midway: conv.midway,
        };
        let mut found = std::mem::take(&mut self.found);
        {
            let mut sink = rules::Sink {
                found: &mut found,
                explain,
            };
            book.on_close(lexicon, &mut conv.states, conv.channel, &close, &mut sink);
        }
        emit_verdicts(
            &scanner,
            tenant,
            id,
            &mut conv,
            &mut found,
            None,
            self.config.excerpt_chars,
            out,
        );
        // The buffer goes back for the next conversation.
        self.found = found;
        let (greeted, closed) = book.greeted_closed(lexicon, &conv.states, conv.channel);
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
            counts: std::mem::take(&mut conv.counts),
            greeted,
            closed,
            score,
            lexicon_version: scanner.version().to_string(),
            earlier_lexicon_versions: std::mem::take(&mut conv.earlier_lexicons),
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
    /// `(tenant, conversation id, state)`, the rules' state keyed by rule
    /// id.
    pub fn export(&self) -> impl Iterator<Item = (&str, &str, Conversation)> {
        self.open
            .iter()
            .map(|(k, c)| (&*k.tenant, &*k.id, self.saved(&k.tenant, c)))
    }

    /// One open conversation's state as [`Engine::export`] gives it; None
    /// when it is not open (closed, or never seen).
    pub fn export_one(&self, tenant: &str, id: &str) -> Option<Conversation> {
        let c = self.open.get(&KeyRef { tenant, id })?;
        Some(self.saved(tenant, c))
    }

    /// Recently closed conversations, for saving across a take-over:
    /// `(tenant, conversation id, tombstone)`.
    pub fn export_closed(&self) -> impl Iterator<Item = (&str, &str, Tombstone)> {
        self.closed
            .iter()
            .map(|(k, t)| (&*k.tenant, &*k.id, t.clone()))
    }

    /// One recently closed conversation's tombstone; None when it is not
    /// closed (open, or forgotten).
    pub fn export_closed_one(&self, tenant: &str, id: &str) -> Option<Tombstone> {
        self.closed.get(&KeyRef { tenant, id }).cloned()
    }

    /// Restores a closed conversation's tombstone (an open conversation of
    /// that key stays open). It is forgotten `tombstone_ttl_ms` after its
    /// close, by this engine's clock.
    pub fn import_closed(&mut self, tenant: &str, id: &str, tombstone: Tombstone) {
        let key = KeyRef { tenant, id };
        if !self.open.contains_key(&key) {
            self.closed.insert(key.to_key(), tombstone);
        }
    }

    /// A conversation's state to save: its rules' state keyed by rule id.
    fn saved(&self, tenant: &str, c: &Conversation) -> Conversation {
        let scanner = self.lexicon(tenant, c.lexicon);
        let mut saved = c.clone();
        saved.saved_rules = named_states(scanner, std::mem::take(&mut saved.states));
        saved.lexicon_version = scanner.version().to_string();
        saved
    }

    /// Restores a saved conversation (replacing any state under that key).
    /// Rule state is matched to the lexicon's rules by id; state saved by
    /// format 1 (greeting verdict, closing bits) goes to the required rules
    /// of categories `missing_greeting` and `missing_closing`.
    ///
    /// It is judged on by the lexicon version it was saved with when that
    /// is known ([`Engine::register`]); else by the current one, and its
    /// summary names the version that judged it before
    /// (`earlier_lexicon_versions`).
    pub fn import(&mut self, tenant: &str, id: &str, mut conv: Conversation) {
        conv.order = self.next_order;
        self.next_order += 1;
        let saved_with = std::mem::take(&mut conv.lexicon_version);
        conv.lexicon = match self.generation_of(tenant, &saved_with) {
            Some(g) => g,
            None => {
                if !saved_with.is_empty() && !conv.earlier_lexicons.contains(&saved_with) {
                    conv.earlier_lexicons.push(saved_with);
                }
                self.generation
            }
        };
        let scanner = self.lexicon(tenant, conv.lexicon);
        let (book, lexicon) = (scanner.book(), scanner.lexicon());
        let mut named = std::mem::take(&mut conv.saved_rules);
        let legacy = (conv.greeted.take(), conv.closing_bits.take());
        conv.states = book.states_from(lexicon, &mut |rule_id| {
            if let Some(s) = take_named(&mut named, rule_id) {
                return Some(s);
            }
            crate::book::state_from_format_1(lexicon, rule_id, legacy, conv.agent_segments)
        });
        conv.deadline = book.next_deadline(lexicon, &conv.states);
        self.open.insert(KeyRef { tenant, id }.to_key(), conv);
    }
}

/// A state vector of `scanner`'s lexicon as `(rule id, state)`.
fn named_states(scanner: &Scanner, states: Vec<State>) -> Vec<(String, State)> {
    scanner
        .book()
        .slot_rules()
        .iter()
        .zip(states)
        .map(|(&r, s)| (scanner.rule(r).id.clone(), s))
        .collect()
}

/// The lexicon of a conversation of `tenant` in `generation` (fields, not
/// `&self`, so the caller may hold a conversation of the same engine).
fn lexicon_of<'a>(
    current: &'a Arc<Scanners>,
    current_generation: u32,
    earlier: &'a [(u32, Arc<Scanners>)],
    tenant: &str,
    generation: u32,
) -> &'a Arc<Scanner> {
    if generation == current_generation {
        return current.for_tenant(tenant);
    }
    earlier
        .iter()
        .find(|(g, _)| *g == generation)
        .map_or(current, |(_, s)| s)
        .for_tenant(tenant)
}

fn take_named(named: &mut Vec<(String, State)>, id: &str) -> Option<State> {
    let i = named.iter().position(|(n, _)| n == id)?;
    Some(named.swap_remove(i).1)
}

/// Adds the candidates the last scan dropped to the suppression counts.
fn count_dropped(
    counts: &mut Vec<(String, &'static str, u64)>,
    dropped: &[(u16, crate::matcher::Suppression)],
    scanner: &Scanner,
) {
    for &(group, why) in dropped {
        let rule = &scanner.rule(scanner.group_rule(group)).id;
        let reason = why.as_str();
        match counts
            .iter_mut()
            .find(|(r, w, _)| r == rule && *w == reason)
        {
            Some(e) => e.2 += 1,
            None => counts.push((rule.clone(), reason, 1)),
        }
    }
}

/// Borrowed context of the segment being judged.
struct Ctx<'a, 'i> {
    tenant: &'a str,
    id: &'a str,
    input: &'a Input<'i>,
    segment: &'a Segment<'i>,
    channel: Option<Channel>,
    excerpt_chars: usize,
    now_ms: u64,
}

/// Scans a segment, runs the rules on it and emits their violations.
/// `conv` is `None` for a late segment (no state: phrase and pattern rules
/// only).
#[allow(clippy::too_many_arguments)]
fn judge(
    scanner: &Scanner,
    scratch: &mut Scratch,
    pattern_scratch: &mut rules::pattern::Scratch,
    found: &mut Vec<Found>,
    cx: &Ctx<'_, '_>,
    mut conv: Option<&mut Conversation>,
    out: &mut Vec<Event>,
    explain: Option<&mut Explain>,
) {
    let text = cx.segment.text.as_ref();
    scanner.scan_on(text, cx.segment.speaker, cx.channel, scratch);
    let ts_ms = cx.input.ts_ms.unwrap_or(cx.now_ms);
    let seg = rules::Seg {
        seq: cx.segment.seq,
        speaker: cx.segment.speaker,
        channel: cx.channel,
        ts_ms,
        text,
        norm: &scratch.norm,
        hits: &scratch.hits,
        midway: conv.as_ref().is_some_and(|c| c.midway),
        excerpt_chars: cx.excerpt_chars,
        fingerprint: std::cell::OnceCell::new(),
    };
    found.clear();
    {
        let mut sink = rules::Sink { found, explain };
        let mut no_state: [State; 0] = [];
        let states = match conv.as_deref_mut() {
            Some(c) => &mut c.states[..],
            None => &mut no_state[..],
        };
        scanner
            .book()
            .on_segment(scanner.lexicon(), states, &seg, pattern_scratch, &mut sink);
    }
    let lexicon = scanner.lexicon();
    if let Some(c) = conv.as_deref_mut() {
        c.deadline = scanner.book().next_deadline(lexicon, &c.states);
    }
    if !found.is_empty() {
        emit_spans(
            scanner,
            cx,
            &scratch.norm,
            found,
            conv.as_deref_mut(),
            ts_ms,
            out,
        );
        if let Some(c) = conv.as_deref_mut() {
            let current = Some((cx.segment.seq, text));
            emit_verdicts(
                scanner,
                cx.tenant,
                cx.id,
                c,
                found,
                current,
                cx.excerpt_chars,
                out,
            );
        }
    }
    if cx.segment.speaker == Speaker::Agent
        && let Some(c) = conv
    {
        c.agent_segments += 1;
        c.last_agent_seq = cx.segment.seq;
        c.last_agent_text.clear();
        let (head, _) = excerpt(text, 0, cx.excerpt_chars);
        c.last_agent_text.push_str(head);
        c.last_agent_chars = text.chars().count();
    }
}

/// Character offsets in the original text of a normalised byte range.
fn char_span(
    text: &str,
    norm: &crate::normalize::Normalized,
    (s, e): (usize, usize),
) -> (usize, usize, usize, usize) {
    let (os, oe) = norm.original_range(text, s, e);
    let start = char_offset(text, os);
    let end = start + char_offset(&text[os..], oe - os);
    (start, end, os, oe)
}

fn severity_rank(
    scanner: &Scanner,
    rule: u16,
) -> (
    std::cmp::Reverse<crate::event::Severity>,
    std::cmp::Reverse<u64>,
    u16,
) {
    let r = scanner.rule(rule);
    (
        std::cmp::Reverse(r.severity),
        std::cmp::Reverse((r.deduct * 1000.0) as u64),
        rule,
    )
}

/// One rule's matches in a segment, while overlaps are resolved.
struct SpanReport {
    rule: u16,
    /// Byte ranges of the normalised text.
    spans: Vec<(usize, usize)>,
    count: u32,
    /// Rules whose spans this one took.
    also: Vec<Also>,
}

/// Turns the span reports of one segment into violations: one per rule,
/// and one per span across rules: where spans of several rules overlap,
/// the most severe rule (then the larger deduction, then file order) keeps
/// the span and names the others in `also`. Span reports are removed from
/// `found`; verdicts stay.
fn emit_spans(
    scanner: &Scanner,
    cx: &Ctx<'_, '_>,
    norm: &crate::normalize::Normalized,
    found: &mut Vec<Found>,
    mut conv: Option<&mut Conversation>,
    ts_ms: u64,
    out: &mut Vec<Event>,
) {
    let mut spans: Vec<SpanReport> = Vec::new();
    // Move the span reports out, keep the verdicts in order (no clones).
    let mut i = 0;
    while i < found.len() {
        if matches!(found[i], Found::Spans { .. }) {
            if let Found::Spans {
                rule,
                spans: s,
                count,
            } = found.remove(i)
            {
                spans.push(SpanReport {
                    rule,
                    spans: s,
                    count,
                    also: Vec::new(),
                });
            }
        } else {
            i += 1;
        }
    }
    if spans.is_empty() {
        return;
    }
    spans.sort_by_key(|s| severity_rank(scanner, s.rule));
    let lexicon = scanner.lexicon();
    let text = cx.segment.text.as_ref();
    // Accepted spans: (start, end, index into `kept`).
    let mut taken: Vec<(usize, usize, usize)> = Vec::new();
    let mut kept: Vec<SpanReport> = Vec::new();
    for SpanReport {
        rule,
        spans: list,
        count,
        ..
    } in spans
    {
        let r = scanner.rule(rule);
        let mut left = Vec::with_capacity(list.len());
        let mut dropped = 0u32;
        for (s, e) in list {
            match taken.iter().find(|&&(ts, te, _)| s < te && ts < e) {
                Some(&(_, _, winner)) => {
                    dropped += 1;
                    let also = Also {
                        rule_id: r.id.clone(),
                        category: lexicon.categories[r.category].id.clone(),
                    };
                    if !kept[winner].also.contains(&also) {
                        kept[winner].also.push(also);
                    }
                }
                None => left.push((s, e)),
            }
        }
        if left.is_empty() {
            continue;
        }
        let k = kept.len();
        taken.extend(left.iter().map(|&(s, e)| (s, e, k)));
        kept.push(SpanReport {
            rule,
            spans: left,
            count: count.saturating_sub(dropped).max(1),
            also: Vec::new(),
        });
    }
    // Violations in order of their first span.
    kept.sort_by_key(|k| k.spans[0]);
    let seq = cx.segment.seq.to_string();
    for SpanReport {
        rule,
        spans: list,
        count,
        also,
    } in kept
    {
        let r = scanner.rule(rule);
        let category = &lexicon.categories[r.category];
        if let Some(c) = conv.as_deref_mut() {
            c.counts.add_n(&category.id, count);
            if let Some(section) = r.section
                && r.deduct > 0.0
            {
                c.deduct(&lexicon.sections[section].id, r.deduct * f64::from(count));
            }
        }
        let char_spans: Vec<(usize, usize, usize, usize)> =
            list.iter().map(|&sp| char_span(text, norm, sp)).collect();
        let (start, end, os, oe) = char_spans[0];
        let (s, e) = (start.to_string(), end.to_string());
        let id = event_id(&[
            cx.tenant.as_bytes(),
            cx.id.as_bytes(),
            seq.as_bytes(),
            r.id.as_bytes(),
            s.as_bytes(),
            e.as_bytes(),
        ]);
        let (shown, text_start) = excerpt(text, start, cx.excerpt_chars);
        out.push(Event::Violation(Violation {
            id,
            conversation_id: cx.id.to_string(),
            tenant: cx.tenant.to_string(),
            channel: cx.channel,
            agent_id: cx.input.agent_id.as_deref().map(str::to_string),
            seq: cx.segment.seq,
            rule_id: r.id.clone(),
            category: category.id.clone(),
            category_name: category.name.clone(),
            kind: r.kind().to_string(),
            severity: r.severity,
            deduct: r.deduct * f64::from(count),
            // A hit can span any number of dropped characters
            // (zero-width, marks): `matched` is capped like `text`.
            matched: Some(excerpt(&text[os..oe], 0, cx.excerpt_chars).0.to_string()),
            start: Some(start),
            end: Some(end),
            count,
            spans: char_spans.iter().map(|&(s, e, _, _)| [s, e]).collect(),
            text: shown.to_string(),
            text_start,
            text_chars: text.chars().count(),
            also,
            note: None,
            lexicon_version: scanner.version().to_string(),
            ts_ms,
        }));
    }
}

/// Turns verdicts into violations. `current` is the segment being judged
/// (`(seq, text)`), when there is one.
#[allow(clippy::too_many_arguments)]
fn emit_verdicts(
    scanner: &Scanner,
    tenant: &str,
    id: &str,
    conv: &mut Conversation,
    found: &mut Vec<Found>,
    current: Option<(u64, &str)>,
    excerpt_chars: usize,
    out: &mut Vec<Event>,
) {
    let lexicon = scanner.lexicon();
    // Drained, so the caller's buffer is kept for the next segment.
    for f in found.drain(..) {
        let Found::Verdict {
            rule,
            seq,
            ts_ms,
            key,
            note,
            text,
        } = f
        else {
            continue;
        };
        let r = scanner.rule(rule);
        let category = &lexicon.categories[r.category];
        conv.counts.add(&category.id);
        if let Some(section) = r.section
            && r.deduct > 0.0
        {
            conv.deduct(&lexicon.sections[section].id, r.deduct);
        }
        let (shown, chars) = match (text, current) {
            (Some(t), _) => (t.text, t.chars),
            (None, Some((cs, ct))) if cs == seq => {
                let (head, _) = excerpt(ct, 0, excerpt_chars);
                (head.to_string(), ct.chars().count())
            }
            (None, _) if conv.agent_segments > 0 && conv.last_agent_seq == seq => {
                (conv.last_agent_text.clone(), conv.last_agent_chars)
            }
            (None, _) => (String::new(), 0),
        };
        let mut parts: Vec<&[u8]> = vec![
            tenant.as_bytes(),
            id.as_bytes(),
            r.id.as_bytes(),
            category.id.as_bytes(),
        ];
        if !key.is_empty() {
            parts.push(key.as_bytes());
        }
        out.push(Event::Violation(Violation {
            id: event_id(&parts),
            conversation_id: id.to_string(),
            tenant: tenant.to_string(),
            channel: conv.channel,
            agent_id: conv.agent_id.clone(),
            seq,
            rule_id: r.id.clone(),
            category: category.id.clone(),
            category_name: category.name.clone(),
            kind: r.kind().to_string(),
            severity: r.severity,
            deduct: r.deduct,
            matched: None,
            start: None,
            end: None,
            count: 1,
            spans: Vec::new(),
            text: shown,
            text_start: 0,
            text_chars: chars,
            also: Vec::new(),
            note: Some(note),
            lexicon_version: scanner.version().to_string(),
            ts_ms,
        }));
    }
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
