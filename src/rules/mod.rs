//! Rule kinds. A lexicon rule names its `kind`; each kind is one module
//! here that owns its lexicon fields and their validation (`parse`), its
//! per-conversation state, and the hooks the engine calls: on every final
//! segment, on the clock, and when the conversation closes.
//!
//! The engine knows no kind by name: it hands every segment to
//! [`Book::on_segment`] and every close to [`Book::on_close`], and turns what
//! the kinds report ([`Found`]) into events. Adding a kind is one module and
//! one line in each `match` of this file (the registry).
//!
//! | kind | judges | state |
//! |---|---|---|
//! | [`phrase`] | phrases said (forbidden, filler, escalation) | none |
//! | [`required`] | a phrase that must be said within a scope | verdict, counters |
//! | [`response`] | a trigger answered by an expected phrase | the open trigger |
//! | [`pattern`] | regular expressions and number detectors | none |
//! | [`timing`] | reply times and silences, from `ts_ms` | the clock marks |
//! | [`repetition`] | the same text sent again and again | recent texts |

pub mod pattern;
pub mod phrase;
pub mod repetition;
pub mod required;
pub mod response;
pub mod timing;

use crate::event::{Channel, Speaker};
use crate::lexicon::{Fields, Lexicon, Rule};
use crate::matcher::Hit;
use crate::normalize::Normalized;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// A rule's kind-specific settings, as validated from the lexicon.
#[derive(Debug, Clone, PartialEq)]
pub enum Spec {
    Phrase(phrase::Spec),
    Required(required::Spec),
    Response(response::Spec),
    Pattern(pattern::Spec),
    Timing(timing::Spec),
    Repetition(repetition::Spec),
}

/// Every kind's name, for messages.
pub const KINDS: [&str; 6] = [
    "phrase",
    "required",
    "response",
    "pattern",
    "timing",
    "repetition",
];

/// Reads the kind's fields of a rule; `None` (with the problems recorded)
/// when they are invalid.
pub fn parse(kind: &str, f: &mut Fields<'_>) -> Option<Spec> {
    match kind {
        "phrase" => phrase::parse(f).map(Spec::Phrase),
        "required" => required::parse(f).map(Spec::Required),
        "response" => response::parse(f).map(Spec::Response),
        "pattern" => pattern::parse(f).map(Spec::Pattern),
        "timing" => timing::parse(f).map(Spec::Timing),
        "repetition" => repetition::parse(f).map(Spec::Repetition),
        other => {
            let hint = match other {
                "forbidden" | "filler" => " (forbidden and filler rules are kind = \"phrase\")",
                "greeting" | "closing" => " (greeting and closing rules are kind = \"required\")",
                _ => "",
            };
            f.error(
                "kind",
                format!("unknown kind {other:?} (one of {KINDS:?}){hint}"),
            );
            None
        }
    }
}

impl Spec {
    pub fn kind(&self) -> &'static str {
        match self {
            Spec::Phrase(_) => "phrase",
            Spec::Required(_) => "required",
            Spec::Response(_) => "response",
            Spec::Pattern(_) => "pattern",
            Spec::Timing(_) => "timing",
            Spec::Repetition(_) => "repetition",
        }
    }

    /// The phrase lists the automaton must find for this rule, in the order
    /// the kind refers to them (group 0, 1, …).
    pub fn phrase_lists(&self) -> Vec<&PhraseList> {
        match self {
            Spec::Phrase(s) => vec![&s.list],
            Spec::Required(s) => std::iter::once(&s.list)
                .chain(s.continuation.as_ref())
                .chain(s.continuation_before.as_ref())
                .collect(),
            Spec::Response(s) => vec![&s.trigger.list, &s.expect.list],
            Spec::Pattern(_) | Spec::Timing(_) | Spec::Repetition(_) => Vec::new(),
        }
    }

    /// The speakers whose segments carry each phrase list (same order as
    /// [`Spec::phrase_lists`]); `rule` gives the rule-level `speakers`.
    pub fn list_speakers<'a>(&'a self, rule: &'a [Speaker]) -> Vec<&'a [Speaker]> {
        match self {
            Spec::Response(s) => vec![&s.trigger.speakers, &s.expect.speakers],
            Spec::Required(s) => std::iter::once(rule)
                .chain(s.continuation.as_ref().map(|_| rule))
                .chain(
                    s.continuation_before
                        .as_ref()
                        .map(|_| &[Speaker::Customer][..]),
                )
                .collect(),
            _ => self.phrase_lists().iter().map(|_| rule).collect(),
        }
    }

    pub fn phrase_count(&self) -> usize {
        match self {
            Spec::Pattern(s) => s.patterns.len() + s.detectors.len(),
            _ => self.phrase_lists().iter().map(|l| l.phrases.len()).sum(),
        }
    }

    /// Whether the rule-level `speakers` field applies to this kind.
    pub fn takes_speakers(&self) -> bool {
        !matches!(self, Spec::Response(_) | Spec::Timing(_))
    }

    pub fn default_speakers(&self) -> Vec<Speaker> {
        match self {
            Spec::Response(s) => {
                let mut v = s.trigger.speakers.clone();
                v.extend(&s.expect.speakers);
                v.sort_by_key(|s| *s as u8);
                v.dedup();
                v
            }
            Spec::Timing(_) => vec![Speaker::Agent, Speaker::Customer],
            _ => vec![Speaker::Agent],
        }
    }

    /// Whether every violation of this rule is the agent's doing (only
    /// such rules may deduct points): what the agent alone said, or did
    /// not say or do.
    pub fn judges_agent(&self, speakers: &[Speaker]) -> bool {
        match self {
            Spec::Response(s) => s.expect.speakers == [Speaker::Agent],
            Spec::Timing(_) => true,
            _ => speakers == [Speaker::Agent],
        }
    }

    /// Whether the rule's state can ever hold a deadline: the kinds'
    /// `deadline` is `None` for every other rule, whatever its state (a
    /// test checks), so the clock and [`Book::next_deadline`] only visit
    /// these.
    fn has_deadline(&self) -> bool {
        match self {
            Spec::Required(s) => matches!(
                s.scope,
                required::Scope::Start {
                    seconds: Some(_),
                    ..
                }
            ),
            Spec::Response(s) => s.within_seconds.is_some(),
            Spec::Timing(s) => s.measure != timing::Measure::Silence,
            Spec::Phrase(_) | Spec::Pattern(_) | Spec::Repetition(_) => false,
        }
    }

    /// Whether the rule must see segments of every speaker, whoever it
    /// reads: a response rule counts every segment after its trigger, a
    /// required rule's clock starts at the conversation's first event.
    pub fn reads_every_segment(&self) -> bool {
        matches!(self, Spec::Response(_) | Spec::Required(_))
    }

    /// Whether the rule keeps per-conversation state.
    fn stateful(&self) -> bool {
        self.initial_state().is_some()
    }

    fn initial_state(&self) -> Option<State> {
        match self {
            Spec::Phrase(_) | Spec::Pattern(_) => None,
            Spec::Required(_) => Some(State::Required(required::State::default())),
            Spec::Response(_) => Some(State::Response(response::State::default())),
            Spec::Timing(_) => Some(State::Timing(timing::State::default())),
            Spec::Repetition(_) => Some(State::Repetition(repetition::State::default())),
        }
    }

    /// One line for people: what the rule checks (`zhijian lexicon check`).
    pub fn describe(&self) -> String {
        match self {
            Spec::Phrase(s) => s.describe(),
            Spec::Required(s) => s.describe(),
            Spec::Response(s) => s.describe(),
            Spec::Pattern(s) => s.describe(),
            Spec::Timing(s) => s.describe(),
            Spec::Repetition(s) => s.describe(),
        }
    }
}

/// The per-conversation state of one stateful rule. Saved across restarts
/// (tagged by kind, keyed by rule id).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum State {
    Required(required::State),
    Response(response::State),
    Timing(timing::State),
    Repetition(repetition::State),
}

/// Whether a hit must sit on word boundaries (jieba segmentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Boundary {
    /// Any occurrence counts.
    None,
    /// Both ends of the hit must be word boundaries, so 喂 does not hit
    /// inside 喂养.
    Word,
}

/// Where in the utterance a hit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    Any,
    /// At the start of the utterance or of a clause (after punctuation or a
    /// pause): interjections, not sentence-final particles (好的啊).
    ClauseStart,
}

/// A list of phrases with its exceptions and match conditions: what the
/// automaton finds for a rule (a phrase rule's phrases, a required rule's
/// accepted wordings, a response rule's trigger and its expected answer).
#[derive(Debug, Clone, PartialEq)]
pub struct PhraseList {
    /// As written in the file.
    pub phrases: Vec<String>,
    /// As written in the file.
    pub exceptions: Vec<String>,
    pub boundary: Boundary,
    pub position: Position,
}

impl PhraseList {
    /// Reads `phrases`, `exceptions`, `boundary` and `position` from `f`.
    pub fn parse(f: &mut Fields<'_>, boundary: Boundary, position: Position) -> Option<PhraseList> {
        let boundary = f
            .choice(
                "boundary",
                &[("none", Boundary::None), ("word", Boundary::Word)],
            )
            .unwrap_or(boundary);
        let position = f
            .choice(
                "position",
                &[
                    ("any", Position::Any),
                    ("clause_start", Position::ClauseStart),
                ],
            )
            .unwrap_or(position);
        let exceptions = f.strings("exceptions").unwrap_or_default();
        let Some(phrases) = f.strings("phrases") else {
            f.error("phrases", "missing field `phrases`".into());
            return None;
        };
        let mut ok = true;
        if phrases.is_empty() {
            f.error("phrases", "phrases must not be empty".into());
            ok = false;
        }
        // Every plain form of every phrase (phrase syntax expands; see
        // crate::wording), to find repeats and useless exceptions.
        let mut seen: HashMap<crate::wording::Variant, &str> = HashMap::new();
        let mut firsts: Vec<String> = Vec::new();
        for p in &phrases {
            let variants = match crate::wording::compile(p) {
                Ok(v) => v,
                Err(e) => {
                    f.error_at_value("phrases", p, format!("phrase {p:?} {e}"));
                    ok = false;
                    continue;
                }
            };
            for v in variants {
                if let Some(first) = seen.get(&v) {
                    let how = if crate::wording::has_syntax(p) || crate::wording::has_syntax(first)
                    {
                        format!("repeats {:?}, a form of {first:?}", v.joined())
                    } else {
                        format!("duplicates {first:?} after normalisation")
                    };
                    f.error_at_value("phrases", p, format!("phrase {p:?} {how}"));
                    ok = false;
                    break;
                }
                if let Some(piece) = v.pieces.first() {
                    firsts.push(piece.text.clone());
                }
                seen.insert(v, p);
            }
        }
        for x in &exceptions {
            match crate::wording::compile(x) {
                Err(e) => {
                    f.error_at_value("exceptions", x, format!("exception {x:?} {e}"));
                    ok = false;
                }
                Ok(variants) => {
                    // An exception applies around a phrase's hit: some form
                    // of it must hold the first piece of some phrase.
                    let useful = variants
                        .iter()
                        .any(|v| firsts.iter().any(|p| v.joined().contains(p.as_str())));
                    if !useful {
                        f.error_at_value(
                            "exceptions",
                            x,
                            format!(
                                "exception {x:?} contains none of the phrases, so it can never apply"
                            ),
                        );
                        ok = false;
                    }
                }
            }
        }
        ok.then_some(PhraseList {
            phrases,
            exceptions,
            boundary,
            position,
        })
    }

    /// `a、b、c` (at most `n`, then `…`). Written into one buffer: verdict
    /// notes call this for every violation.
    pub fn sample(&self, n: usize) -> String {
        let shown = &self.phrases[..n.min(self.phrases.len())];
        let len = shown.iter().map(String::len).sum::<usize>() + 3 * shown.len();
        let mut s = String::with_capacity(len);
        for (i, p) in shown.iter().enumerate() {
            if i > 0 {
                s.push('、');
            }
            s.push_str(p);
        }
        if self.phrases.len() > n {
            s.push('…');
        }
        s
    }
}

/// A rule as the kind hooks see it: its index and definition, and which
/// automaton groups hold its phrase lists.
#[derive(Clone, Copy)]
pub struct RuleRef<'a> {
    pub ix: u16,
    pub rule: &'a Rule,
    /// The automaton group of the rule's first phrase list; list `i` is
    /// group `first_group + i`.
    pub first_group: u16,
}

impl RuleRef<'_> {
    /// Whether phrase list `list` of this rule hit the segment.
    pub fn hit(&self, seg: &Seg<'_>, list: u16) -> bool {
        let g = self.first_group + list;
        seg.hits.iter().any(|h| h.group == g)
    }

    /// The hits of phrase list `list` in the segment.
    pub fn hits<'s>(&self, seg: &'s Seg<'_>, list: u16) -> impl Iterator<Item = &'s Hit> + 's {
        let g = self.first_group + list;
        seg.hits.iter().filter(move |h| h.group == g)
    }
}

/// One final segment, as the rules see it.
pub struct Seg<'a> {
    pub seq: u64,
    pub speaker: Speaker,
    pub channel: Option<Channel>,
    /// The segment's `ts_ms`, or the engine clock when it had none.
    pub ts_ms: u64,
    pub text: &'a str,
    pub norm: &'a Normalized,
    /// Phrase-list hits that survived every filter, by group.
    pub hits: &'a [Hit],
    /// The conversation was first seen mid-way (after a restart without
    /// saved state): verdicts about its start are not made.
    pub midway: bool,
    /// Excerpts kept in state are at most this many characters.
    pub excerpt_chars: usize,
    /// The segment's text fingerprint (repetition rules), computed once
    /// for all of them on first use.
    pub fingerprint: std::cell::OnceCell<(u64, usize)>,
}

/// The close of a conversation, as the rules see it.
pub struct Close {
    /// The conversation's time at close: its last `ts_ms` plus the engine
    /// time since (so deadlines pass while nobody speaks).
    pub ts_ms: u64,
    /// The most recent agent segment (where close-time verdicts point).
    pub last_agent_seq: Option<u64>,
    pub last_seq: Option<u64>,
    pub midway: bool,
}

/// What a rule reports.
#[derive(Debug, Clone, PartialEq)]
pub enum Found {
    /// Hits in the current segment: byte ranges of the normalised text (the
    /// first [`crate::event::MAX_SPANS`]) and how many there were.
    Spans {
        rule: u16,
        spans: Vec<(usize, usize)>,
        count: u32,
    },
    /// A verdict about the conversation, pointing at segment `seq`.
    Verdict {
        rule: u16,
        seq: u64,
        ts_ms: u64,
        /// Makes the event id unique among this rule's verdicts in one
        /// conversation (stable across replays).
        key: String,
        /// Why, for people.
        note: String,
        /// The text to show, when the verdict is about a segment other than
        /// the current one (e.g. the trigger of a response rule); `None`:
        /// the segment `seq` as the engine knows it.
        text: Option<Shown>,
    },
}

/// The start of a segment kept in a rule's state, to show in a verdict
/// about it later.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Shown {
    /// At most [`Shown::CHARS`] characters.
    pub text: String,
    /// The segment's whole length in characters.
    pub chars: usize,
}

impl Shown {
    /// Characters kept: state stays small per conversation.
    pub const CHARS: usize = 64;

    pub fn of(text: &str, excerpt_chars: usize) -> Shown {
        let (head, _) = crate::event::excerpt(text, 0, excerpt_chars.min(Shown::CHARS));
        Shown {
            text: head.to_string(),
            chars: text.chars().count(),
        }
    }
}

/// Where hooks report: what they found, and (for `zhijian lexicon test`)
/// why they decided as they did.
pub struct Sink<'a> {
    pub found: &'a mut Vec<Found>,
    pub explain: Option<&'a mut Vec<String>>,
}

impl Sink<'_> {
    /// Records an explanation (only when one is asked for: the closure
    /// builds the text).
    pub fn explain(&mut self, rule: &Rule, why: impl FnOnce() -> String) {
        if let Some(e) = self.explain.as_deref_mut() {
            e.push(format!("{:<28} {:<10} {}", rule.id, rule.kind(), why()));
        }
    }
}

/// The compiled rules of a lexicon: which rule each automaton group belongs
/// to, which rules keep state, and the pattern set.
#[derive(Debug)]
pub struct Book {
    /// Rule → its first automaton group.
    first_group: Vec<u16>,
    /// Group → the rule it belongs to.
    group_rule: Vec<u16>,
    /// Rule → its slot in a conversation's state vector.
    slot: Vec<Option<u16>>,
    /// Slot → rule: the stateful rules, which see every segment, in the
    /// order of a conversation's state vector.
    slots: Vec<u16>,
    /// The stateful rules that can hold a deadline, `(slot, rule)`: the
    /// only ones [`Book::next_deadline`] (after every segment) and
    /// [`Book::on_clock`] need to visit.
    timed: Vec<(usize, u16)>,
    /// Per stateful rule (as `slots`): done once its verdict is made (a
    /// required rule of a start or conversation scope), so later segments
    /// need not visit it.
    done_when_decided: Vec<bool>,
    /// Per stateful rule (as `slots`): bits of the speakers whose segments
    /// it acts on (all for response rules, which count every segment after
    /// a trigger) and of the channels it applies to (0: every channel).
    /// Checked before the rule itself is read.
    gates: Vec<(u8, u8)>,
    patterns: pattern::Set,
}

/// The automaton groups of a lexicon: each phrase list of each rule, with
/// the speakers whose segments it is searched in.
pub struct GroupDef<'a> {
    pub rule: u16,
    pub list: &'a PhraseList,
    pub speakers: &'a [Speaker],
}

impl Book {
    /// Compiles the rules of `lexicon`; also returns the phrase-list groups
    /// for the automaton.
    pub fn new(lexicon: &Lexicon) -> Result<(Book, Vec<GroupDef<'_>>), String> {
        let mut groups = Vec::new();
        let mut first_group = Vec::new();
        let mut group_rule = Vec::new();
        let mut slot = Vec::new();
        let mut slots = Vec::new();
        let mut timed = Vec::new();
        let mut done_when_decided = Vec::new();
        let mut gates = Vec::new();
        for (i, rule) in lexicon.rules.iter().enumerate() {
            let ix = u16::try_from(i).map_err(|_| "too many rules".to_string())?;
            first_group.push(u16::try_from(groups.len()).map_err(|_| "too many phrase lists")?);
            let lists = rule.spec.phrase_lists();
            let speakers = rule.spec.list_speakers(&rule.speakers);
            for (list, speakers) in lists.into_iter().zip(speakers) {
                groups.push(GroupDef {
                    rule: ix,
                    list,
                    speakers,
                });
                group_rule.push(ix);
            }
            if rule.spec.stateful() {
                if rule.spec.has_deadline() {
                    timed.push((slots.len(), ix));
                }
                slot.push(Some(slots.len() as u16));
                slots.push(ix);
                let speakers = match &rule.spec {
                    Spec::Response(_) => 0xFF,
                    _ => rule.speakers.iter().fold(0u8, |m, s| m | 1 << (*s as u8)),
                };
                let channels = rule.channels.iter().fold(0u8, |m, c| m | 1 << (*c as u8));
                gates.push((speakers, channels));
                done_when_decided.push(matches!(
                    &rule.spec,
                    Spec::Required(s) if !matches!(s.scope, required::Scope::End { .. })
                ));
            } else {
                slot.push(None);
            }
        }
        let patterns = pattern::Set::new(lexicon)?;
        Ok((
            Book {
                first_group,
                done_when_decided,
                gates,
                group_rule,
                slot,
                slots,
                timed,
                patterns,
            },
            groups,
        ))
    }

    /// Fresh per-conversation state: one entry per stateful rule.
    pub fn initial_states(&self, lexicon: &Lexicon) -> Vec<State> {
        self.slots
            .iter()
            .filter_map(|&r| lexicon.rules[usize::from(r)].spec.initial_state())
            .collect()
    }

    /// Rule ids of the state vector's entries, in order (saving state).
    pub fn slot_rules(&self) -> &[u16] {
        &self.slots
    }

    /// The state vector's index of a rule's state.
    pub fn slot_of(&self, rule: u16) -> Option<usize> {
        self.slot
            .get(usize::from(rule))
            .copied()
            .flatten()
            .map(usize::from)
    }

    pub fn group_rule(&self, group: u16) -> u16 {
        self.group_rule[usize::from(group)]
    }

    fn rule_ref<'a>(&self, lexicon: &'a Lexicon, ix: u16) -> RuleRef<'a> {
        RuleRef {
            ix,
            rule: &lexicon.rules[usize::from(ix)],
            first_group: self.first_group[usize::from(ix)],
        }
    }

    /// Runs every rule concerned by a segment: the rules whose phrase lists
    /// hit it, the pattern rules whose patterns match it, and every stateful
    /// rule. `states` is the conversation's state vector.
    pub fn on_segment(
        &self,
        lexicon: &Lexicon,
        states: &mut [State],
        seg: &Seg<'_>,
        pattern_scratch: &mut pattern::Scratch,
        sink: &mut Sink<'_>,
    ) {
        // Stateless rules with hits (a stateful rule sees every segment
        // below). Hits are ordered by start: collect the rules first.
        let mut hit_rules: [u16; 8] = [u16::MAX; 8];
        let mut n = 0;
        let mut overflow: Vec<u16> = Vec::new();
        for h in seg.hits {
            let r = self.group_rule(h.group);
            if self.slot[usize::from(r)].is_some()
                || hit_rules[..n].contains(&r)
                || overflow.contains(&r)
            {
                continue;
            }
            if n < hit_rules.len() {
                hit_rules[n] = r;
                n += 1;
            } else {
                overflow.push(r);
            }
        }
        for &r in hit_rules[..n].iter().chain(&overflow) {
            let rr = self.rule_ref(lexicon, r);
            if !rr.rule.applies_on(seg.channel) {
                continue;
            }
            if let Spec::Phrase(s) = &rr.rule.spec {
                phrase::on_segment(s, rr, seg, sink);
            }
        }
        if self.patterns.judges(seg.speaker) {
            let explain = sink.explain.is_some();
            self.patterns
                .scan(seg, pattern_scratch, explain, |r, spans, count, reasons| {
                    let rule = &lexicon.rules[usize::from(r)];
                    if !rule.applies_on(seg.channel) {
                        return;
                    }
                    for why in reasons {
                        sink.explain(rule, || why);
                    }
                    if count > 0 {
                        sink.found.push(Found::Spans {
                            rule: r,
                            spans,
                            count,
                        });
                    }
                });
        }
        let speaker_bit = 1u8 << (seg.speaker as u8);
        let channel_bit = seg.channel.map_or(0, |c| 1u8 << (c as u8));
        for (((&r, state), &done_when_decided), &(speakers, channels)) in self
            .slots
            .iter()
            .zip(states.iter_mut())
            .zip(&self.done_when_decided)
            .zip(&self.gates)
        {
            // Not on this channel (an unknown channel is judged by all).
            if channels != 0 && channel_bit != 0 && channels & channel_bit == 0 {
                continue;
            }
            // Not this speaker's segment: nothing to do, except for a
            // required rule whose scope has not started its clock yet.
            if speakers & speaker_bit == 0
                && !matches!(&*state, State::Required(st) if st.seen == 0 && !st.continued)
            {
                continue;
            }
            // A required rule with its verdict has nothing left to do here
            // (nor at close: see `required::on_close`).
            if done_when_decided
                && let State::Required(st) = &*state
                && st.verdict.is_some()
            {
                continue;
            }
            // A response rule that waits for nothing acts only on a segment
            // holding its trigger (list 0): `response::on_segment` does
            // nothing otherwise. Most segments of a large rulebook are such
            // no-ops for most of its response rules; deciding here, from
            // the state and the hits, spares loading the rule.
            if let State::Response(st) = &*state
                && st.waiting.is_none()
                && !seg
                    .hits
                    .iter()
                    .any(|h| h.group == self.first_group[usize::from(r)])
            {
                continue;
            }
            let rr = self.rule_ref(lexicon, r);
            if !rr.rule.applies_on(seg.channel) {
                continue;
            }
            match (&rr.rule.spec, state) {
                (Spec::Required(s), State::Required(st)) => {
                    required::on_segment(s, rr, st, seg, sink)
                }
                (Spec::Response(s), State::Response(st)) => {
                    response::on_segment(s, rr, st, seg, sink)
                }
                (Spec::Timing(s), State::Timing(st)) => timing::on_segment(s, rr, st, seg, sink),
                (Spec::Repetition(s), State::Repetition(st)) => {
                    repetition::on_segment(s, rr, st, seg, sink)
                }
                _ => {}
            }
        }
    }

    /// Deadlines passed by the clock: `now_ts` is the conversation's time.
    pub fn on_clock(
        &self,
        lexicon: &Lexicon,
        states: &mut [State],
        channel: Option<Channel>,
        now_ts: u64,
        sink: &mut Sink<'_>,
    ) {
        for &(slot, r) in &self.timed {
            let Some(state) = states.get_mut(slot) else {
                continue;
            };
            let rr = self.rule_ref(lexicon, r);
            if !rr.rule.applies_on(channel) {
                continue;
            }
            match (&rr.rule.spec, state) {
                (Spec::Required(s), State::Required(st)) => {
                    required::on_clock(s, rr, st, now_ts, sink)
                }
                (Spec::Response(s), State::Response(st)) => {
                    response::on_clock(s, rr, st, now_ts, sink)
                }
                (Spec::Timing(s), State::Timing(st)) => timing::on_clock(s, rr, st, now_ts, sink),
                _ => {}
            }
        }
    }

    /// The earliest conversation time at which [`Book::on_clock`] can
    /// report something (`u64::MAX`: never).
    pub fn next_deadline(&self, lexicon: &Lexicon, states: &[State]) -> u64 {
        let mut next = u64::MAX;
        for &(slot, r) in &self.timed {
            let Some(state) = states.get(slot) else {
                continue;
            };
            let spec = &lexicon.rules[usize::from(r)].spec;
            let d = match (spec, state) {
                (Spec::Required(s), State::Required(st)) => required::deadline(s, st),
                (Spec::Response(s), State::Response(st)) => response::deadline(s, st),
                (Spec::Timing(s), State::Timing(st)) => timing::deadline(s, st),
                _ => None,
            };
            next = next.min(d.unwrap_or(u64::MAX));
        }
        next
    }

    /// Close-time verdicts.
    pub fn on_close(
        &self,
        lexicon: &Lexicon,
        states: &mut [State],
        channel: Option<Channel>,
        close: &Close,
        sink: &mut Sink<'_>,
    ) {
        for (&r, state) in self.slots.iter().zip(states.iter_mut()) {
            let rr = self.rule_ref(lexicon, r);
            if !rr.rule.applies_on(channel) {
                continue;
            }
            match (&rr.rule.spec, state) {
                (Spec::Required(s), State::Required(st)) => {
                    required::on_close(s, rr, st, close, sink)
                }
                (Spec::Response(s), State::Response(st)) => {
                    response::on_close(s, rr, st, close, sink)
                }
                (Spec::Timing(s), State::Timing(st)) => timing::on_close(s, rr, st, close, sink),
                _ => {}
            }
        }
    }

    /// Contract v1's `greeted` and `closed`: the verdicts of the first
    /// required rules of categories `missing_greeting` and
    /// `missing_closing`.
    pub fn greeted_closed(
        &self,
        lexicon: &Lexicon,
        states: &[State],
        channel: Option<Channel>,
    ) -> (Option<bool>, Option<bool>) {
        // The first rule of the category that judges this channel: a
        // genre's own greeting (`channels = ["social"]`) stands for the
        // conversation on that channel, the general one elsewhere.
        let verdict = |category: &str| {
            self.slots.iter().zip(states).find_map(|(&r, st)| {
                let rule = &lexicon.rules[usize::from(r)];
                match st {
                    State::Required(st)
                        if lexicon.categories[rule.category].id == category
                            && rule.applies_on(channel) =>
                    {
                        Some(st.verdict)
                    }
                    _ => None,
                }
            })
        };
        (
            verdict("missing_greeting").flatten(),
            verdict("missing_closing").flatten(),
        )
    }

    /// Moves state saved under rule ids into a state vector for this
    /// lexicon: rules not in `saved` start fresh; saved state of a rule that
    /// no longer exists or changed kind is dropped.
    pub fn states_from(
        &self,
        lexicon: &Lexicon,
        saved: &mut dyn FnMut(&str) -> Option<State>,
    ) -> Vec<State> {
        self.slots
            .iter()
            .filter_map(|&r| {
                let rule = &lexicon.rules[usize::from(r)];
                let fresh = rule.spec.initial_state()?;
                match saved(&rule.id) {
                    Some(s) if std::mem::discriminant(&s) == std::mem::discriminant(&fresh) => {
                        Some(s)
                    }
                    _ => Some(fresh),
                }
            })
            .collect()
    }
}

/// State format 1 (before rule kinds) kept the greeting verdict and the
/// closing window bits in the conversation: they become the state of the
/// required rules of the v1 categories `missing_greeting` and
/// `missing_closing`.
pub fn state_from_format_1(
    lexicon: &Lexicon,
    rule_id: &str,
    (greeted, closing_bits): (Option<bool>, Option<u32>),
    agent_segments: u32,
) -> Option<State> {
    let rule = lexicon.rules.iter().find(|r| r.id == rule_id)?;
    if !matches!(rule.spec, Spec::Required(_)) {
        return None;
    }
    match lexicon.categories[rule.category].id.as_str() {
        "missing_greeting" if greeted.is_some() || closing_bits.is_some() => {
            Some(State::Required(required::State {
                verdict: greeted,
                seen: agent_segments,
                ..Default::default()
            }))
        }
        "missing_closing" if closing_bits.is_some() => Some(State::Required(required::State {
            verdict: None,
            seen: agent_segments,
            bits: u64::from(closing_bits.unwrap_or(0)),
            ..Default::default()
        })),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// [`Spec::has_deadline`] is the kinds' `deadline` made static: every
    /// rule of the default lexicon and of the generated rulebook, in a state
    /// that waits for everything it can wait for, has a deadline exactly
    /// when `has_deadline` says so.
    #[test]
    fn has_deadline_agrees_with_the_kinds() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("lexicons");
        let (rulebook, _) = crate::synth::large_rulebook(1);
        let lexicons = [
            crate::lexicon::load_dir(&dir).expect("default lexicon"),
            crate::lexicon::load_sources(rulebook).expect("rulebook"),
        ];
        let mut cases = std::collections::BTreeSet::new();
        for rule in lexicons.iter().flat_map(|l| &l.rules) {
            let deadline = match &rule.spec {
                Spec::Required(s) => required::deadline(
                    s,
                    &required::State {
                        verdict: None,
                        seen: 1,
                        bits: 0,
                        start_ts: Some(5),
                        continued: false,
                    },
                ),
                Spec::Response(s) => response::deadline(
                    s,
                    &response::State {
                        waiting: Some(response::Waiting {
                            seq: 0,
                            ts_ms: 5,
                            after: 0,
                            shown: Shown::default(),
                        }),
                    },
                ),
                Spec::Timing(s) => timing::deadline(
                    s,
                    &timing::State {
                        waiting: Some((0, 5)),
                        done: false,
                        shown: None,
                        last_ts: Some(5),
                    },
                ),
                Spec::Phrase(_) | Spec::Pattern(_) | Spec::Repetition(_) => None,
            };
            assert_eq!(deadline.is_some(), rule.spec.has_deadline(), "{}", rule.id);
            cases.insert((rule.kind(), rule.spec.has_deadline()));
        }
        // Both answers for every kind that can have a deadline.
        for kind in ["required", "response", "timing"] {
            assert!(cases.contains(&(kind, true)), "{kind} with a deadline");
            assert!(cases.contains(&(kind, false)), "{kind} without");
        }
    }
}
