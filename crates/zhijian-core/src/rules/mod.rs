//! Rule kinds. A lexicon rule names its `kind`; each kind is one module
//! here that owns its lexicon fields and their validation (`parse`), its
//! per-conversation state, and the hooks the engine calls: on every final
//! segment, on the clock, and when the conversation closes.
//!
//! This module is the registry: [`Spec`] and [`State`] name every kind,
//! [`parse`] reads a rule's fields by its kind, and the hook types ([`Seg`],
//! [`Close`], [`Found`], [`Sink`]) are what the kinds see and report. It
//! knows nothing of the lexicon that holds the rules: the lexicon calls
//! [`parse`], and [`crate::book::Book`] (above both) runs the hooks. The
//! engine knows no kind by name: it hands every segment to the book and
//! turns what the kinds report into events. Adding a kind is one module
//! here, whose `Spec` implements [`Kind`], and one line in the registry
//! below.
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
use crate::fields::Fields;
use crate::normalize::Normalized;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// A hit that survived every filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hit {
    /// The phrase list (automaton group) that hit;
    /// [`crate::matcher::Scanner::group_rule`] gives its rule.
    pub group: u16,
    /// Byte range in the normalised text; `Normalized::original_range`
    /// maps it back (only callers that need it pay for it).
    pub norm: (usize, usize),
}

/// What a rule kind is to the registry and to the book: its name, its
/// per-conversation state, what the automaton must find for it, and the
/// hooks the book calls. The defaults fit a kind that searches phrase lists
/// in the segments of the rule's speakers and keeps no state.
pub(crate) trait Kind: Sized {
    /// The kind's name in a lexicon (`kind = "…"`).
    const NAME: &'static str;
    /// Whether the kind keeps per-conversation state (in [`Kind::State`]).
    const STATEFUL: bool;
    /// The per-conversation state ([`NoState`] for a kind without).
    type State: KindState + Default;

    /// Reads the kind's fields; `None` (with the problems recorded) when
    /// they are invalid.
    fn parse(f: &mut Fields<'_>) -> Option<Self>;

    /// One line for people: what the rule checks.
    fn describe(&self) -> String;

    /// The phrase lists the automaton must find for this rule, in the order
    /// the kind refers to them (group 0, 1, …).
    fn phrase_lists(&self) -> Vec<&PhraseList> {
        Vec::new()
    }

    /// The speakers whose segments carry each phrase list (same order as
    /// [`Kind::phrase_lists`]); `rule` gives the rule-level `speakers`.
    fn list_speakers<'a>(&'a self, rule: &'a [Speaker]) -> Vec<&'a [Speaker]> {
        self.phrase_lists().iter().map(|_| rule).collect()
    }

    fn phrase_count(&self) -> usize {
        self.phrase_lists().iter().map(|l| l.phrases.len()).sum()
    }

    /// Whether the rule-level `speakers` field applies to this kind.
    fn takes_speakers(&self) -> bool {
        true
    }

    fn default_speakers(&self) -> Vec<Speaker> {
        vec![Speaker::Agent]
    }

    /// Whether every violation of this rule is the agent's doing (only
    /// such rules may deduct points): what the agent alone said, or did
    /// not say or do.
    fn judges_agent(&self, speakers: &[Speaker]) -> bool {
        speakers == [Speaker::Agent]
    }

    /// Whether the rule's state can ever hold a deadline: `deadline` is
    /// `None` for every other rule, whatever its state (a test checks), so
    /// the clock and [`crate::book::Book::next_deadline`] only visit these.
    fn has_deadline(&self) -> bool {
        false
    }

    /// Whether the rule must see segments of every speaker, whoever it
    /// reads (a response rule counts every segment after its trigger, a
    /// required rule's clock starts at the conversation's first event).
    fn reads_every_segment(&self) -> bool {
        false
    }

    /// Whether the book hands the rule segments of every speaker, not only
    /// of the rule's `speakers`.
    fn hears_every_speaker(&self) -> bool {
        false
    }

    /// Whether the rule has nothing left to do on segments once its
    /// verdict is made ([`KindState::decided`]).
    fn done_when_decided(&self) -> bool {
        false
    }

    /// A stateless kind's hook: a segment in which one of its lists hit.
    fn on_hit(&self, _r: RuleRef<'_>, _seg: &Seg<'_>, _sink: &mut Sink<'_>) {}

    /// A stateful kind's hook: every segment the rule hears.
    fn on_segment(
        &self,
        _r: RuleRef<'_>,
        _st: &mut Self::State,
        _seg: &Seg<'_>,
        _sink: &mut Sink<'_>,
    ) {
    }

    /// Deadlines passed by the clock (`now_ts`: the conversation's time).
    fn on_clock(&self, _r: RuleRef<'_>, _st: &mut Self::State, _now_ts: u64, _sink: &mut Sink<'_>) {
    }

    /// The earliest conversation time at which `on_clock` can report.
    fn deadline(&self, _st: &Self::State) -> Option<u64> {
        None
    }

    /// Close-time verdicts.
    fn on_close(
        &self,
        _r: RuleRef<'_>,
        _st: &mut Self::State,
        _close: &Close,
        _sink: &mut Sink<'_>,
    ) {
    }
}

/// What the book asks of a rule's state before it loads the rule: cheap
/// answers that spare most of a large rulebook's hooks on most segments.
pub(crate) trait KindState {
    /// Whether a segment of a speaker the rule does not judge still matters
    /// (a required rule whose clock has not started).
    fn hears_other_speakers(&self) -> bool {
        false
    }

    /// Whether the verdict is made (see [`Kind::done_when_decided`]).
    fn decided(&self) -> bool {
        false
    }

    /// Whether only a segment holding the rule's first phrase list can
    /// change anything (a response rule waiting for no answer).
    fn wants_only_its_trigger(&self) -> bool {
        false
    }
}

/// The state of a kind that keeps none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct NoState;

impl KindState for NoState {}

/// The registry: one line per kind, `Variant => module`, where the module
/// has a `Spec` that implements [`Kind`] and its `State` type. It makes [`Spec`], [`State`],
/// [`KINDS`], [`parse`] and the dispatch of every [`Kind`] method.
macro_rules! registry {
    ($($variant:ident => $kind:ident),+ $(,)?) => {
        /// A rule's kind-specific settings, as validated from the lexicon.
        #[derive(Debug, Clone, PartialEq)]
        pub enum Spec {
            $($variant($kind::Spec),)+
        }

        /// The per-conversation state of one stateful rule. Saved across
        /// restarts (tagged by kind, keyed by rule id).
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(tag = "kind", rename_all = "snake_case")]
        pub enum State {
            $($variant($kind::State),)+
        }

        /// Every kind's name, for messages.
        pub const KINDS: &[&str] = &[$(<$kind::Spec as Kind>::NAME,)+];

        fn parse_kind(kind: &str, f: &mut Fields<'_>) -> Option<Option<Spec>> {
            $(
                if kind == <$kind::Spec as Kind>::NAME {
                    return Some(<$kind::Spec as Kind>::parse(f).map(Spec::$variant));
                }
            )+
            None
        }

        impl Spec {
            pub fn kind(&self) -> &'static str {
                match self { $(Spec::$variant(_) => <$kind::Spec as Kind>::NAME,)+ }
            }
            /// See [`Kind::phrase_lists`].
            pub(crate) fn phrase_lists(&self) -> Vec<&PhraseList> {
                match self { $(Spec::$variant(s) => s.phrase_lists(),)+ }
            }
            /// See [`Kind::list_speakers`].
            pub(crate) fn list_speakers<'a>(&'a self, rule: &'a [Speaker]) -> Vec<&'a [Speaker]> {
                match self { $(Spec::$variant(s) => s.list_speakers(rule),)+ }
            }
            pub fn phrase_count(&self) -> usize {
                match self { $(Spec::$variant(s) => Kind::phrase_count(s),)+ }
            }
            /// See [`Kind::takes_speakers`].
            pub(crate) fn takes_speakers(&self) -> bool {
                match self { $(Spec::$variant(s) => s.takes_speakers(),)+ }
            }
            pub fn default_speakers(&self) -> Vec<Speaker> {
                match self { $(Spec::$variant(s) => s.default_speakers(),)+ }
            }
            /// See [`Kind::judges_agent`].
            pub(crate) fn judges_agent(&self, speakers: &[Speaker]) -> bool {
                match self { $(Spec::$variant(s) => s.judges_agent(speakers),)+ }
            }
            /// See [`Kind::has_deadline`].
            pub fn has_deadline(&self) -> bool {
                match self { $(Spec::$variant(s) => s.has_deadline(),)+ }
            }
            /// See [`Kind::reads_every_segment`].
            pub(crate) fn reads_every_segment(&self) -> bool {
                match self { $(Spec::$variant(s) => s.reads_every_segment(),)+ }
            }
            /// See [`Kind::hears_every_speaker`].
            pub(crate) fn hears_every_speaker(&self) -> bool {
                match self { $(Spec::$variant(s) => s.hears_every_speaker(),)+ }
            }
            /// See [`Kind::done_when_decided`].
            pub(crate) fn done_when_decided(&self) -> bool {
                match self { $(Spec::$variant(s) => s.done_when_decided(),)+ }
            }
            /// Whether the rule keeps per-conversation state.
            pub(crate) fn stateful(&self) -> bool {
                match self { $(Spec::$variant(_) => <$kind::Spec as Kind>::STATEFUL,)+ }
            }
            pub(crate) fn initial_state(&self) -> Option<State> {
                match self {
                    $(Spec::$variant(_) => <$kind::Spec as Kind>::STATEFUL
                        .then(|| State::$variant(Default::default())),)+
                }
            }
            /// One line for people: what the rule checks (`zhijian lexicon check`).
            pub fn describe(&self) -> String {
                match self { $(Spec::$variant(s) => Kind::describe(s),)+ }
            }
            pub(crate) fn on_hit(&self, r: RuleRef<'_>, seg: &Seg<'_>, sink: &mut Sink<'_>) {
                match self { $(Spec::$variant(s) => s.on_hit(r, seg, sink),)+ }
            }
            pub(crate) fn on_segment(&self, r: RuleRef<'_>, state: &mut State, seg: &Seg<'_>, sink: &mut Sink<'_>) {
                match (self, state) {
                    $((Spec::$variant(s), State::$variant(st)) => s.on_segment(r, st, seg, sink),)+
                    _ => {}
                }
            }
            pub(crate) fn on_clock(&self, r: RuleRef<'_>, state: &mut State, now_ts: u64, sink: &mut Sink<'_>) {
                match (self, state) {
                    $((Spec::$variant(s), State::$variant(st)) => s.on_clock(r, st, now_ts, sink),)+
                    _ => {}
                }
            }
            pub(crate) fn deadline(&self, state: &State) -> Option<u64> {
                match (self, state) {
                    $((Spec::$variant(s), State::$variant(st)) => s.deadline(st),)+
                    _ => None,
                }
            }
            pub(crate) fn on_close(&self, r: RuleRef<'_>, state: &mut State, close: &Close, sink: &mut Sink<'_>) {
                match (self, state) {
                    $((Spec::$variant(s), State::$variant(st)) => s.on_close(r, st, close, sink),)+
                    _ => {}
                }
            }
        }

        impl State {
            /// See [`KindState::hears_other_speakers`].
            pub(crate) fn hears_other_speakers(&self) -> bool {
                match self { $(State::$variant(st) => st.hears_other_speakers(),)+ }
            }
            /// See [`KindState::decided`].
            pub(crate) fn decided(&self) -> bool {
                match self { $(State::$variant(st) => st.decided(),)+ }
            }
            /// See [`KindState::wants_only_its_trigger`].
            pub(crate) fn wants_only_its_trigger(&self) -> bool {
                match self { $(State::$variant(st) => st.wants_only_its_trigger(),)+ }
            }
        }
    };
}

// Adding a kind: its module here, its line below.
registry! {
    Phrase => phrase,
    Required => required,
    Response => response,
    Pattern => pattern,
    Timing => timing,
    Repetition => repetition,
}

/// Reads the kind's fields of a rule; `None` (with the problems recorded)
/// when they are invalid.
pub(crate) fn parse(kind: &str, f: &mut Fields<'_>) -> Option<Spec> {
    if let Some(spec) = parse_kind(kind, f) {
        return spec;
    }
    let hint = match kind {
        "forbidden" | "filler" => " (forbidden and filler rules are kind = \"phrase\")",
        "greeting" | "closing" => " (greeting and closing rules are kind = \"required\")",
        _ => "",
    };
    f.error(
        "kind",
        format!("unknown kind {kind:?} (one of {KINDS:?}){hint}"),
    );
    None
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
    pub(crate) fn parse(
        f: &mut Fields<'_>,
        boundary: Boundary,
        position: Position,
    ) -> Option<PhraseList> {
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
pub(crate) struct RuleRef<'a> {
    pub ix: u16,
    /// The rule's id and kind (for explanations).
    pub id: &'a str,
    pub kind: &'static str,
    /// The speakers whose segments the rule judges.
    pub speakers: &'a [Speaker],
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
    pub(crate) const CHARS: usize = 64;

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
pub(crate) struct Sink<'a> {
    pub found: &'a mut Vec<Found>,
    pub explain: Option<&'a mut Vec<String>>,
}

impl Sink<'_> {
    /// Records an explanation (only when one is asked for: the closure
    /// builds the text).
    pub fn explain(&mut self, rule: RuleRef<'_>, why: impl FnOnce() -> String) {
        if let Some(e) = self.explain.as_deref_mut() {
            e.push(format!("{:<28} {:<10} {}", rule.id, rule.kind, why()));
        }
    }
}
