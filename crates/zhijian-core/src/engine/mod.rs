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
#[derive(Debug, Clone)]
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
    /// Whose events carry personal numbers in clear: by default no one's
    /// ([`crate::privacy`]).
    pub privacy: crate::privacy::Privacy,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            tombstone_ttl_ms: 10 * 60 * 1000,
            excerpt_chars: 256,
            max_open: 1_000_000,
            max_segments: 20_000,
            privacy: crate::privacy::Privacy::default(),
        }
    }
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
pub(crate) type Explain = Vec<String>;

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
                        let cx = Ctx::new(&self.config, &key, input, segment, channel, now_ms);
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
            let channel = input.channel.or(conv.channel);
            let cx = Ctx::new(&self.config, &key, input, segment, channel, now_ms);
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

mod conversation;
mod emit;
mod seqset;
mod state;

pub use conversation::{Conversation, Tombstone};
use emit::*;
pub(crate) use seqset::SeqSet;

#[cfg(test)]
mod tests {
    use super::Outcome;

    #[test]
    fn outcome_all_is_indexed_by_discriminant() {
        for (i, o) in Outcome::ALL.iter().enumerate() {
            assert_eq!(*o as usize, i, "{}", o.as_str());
        }
    }
}
