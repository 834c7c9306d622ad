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
//! here and one line in each `match` of this file and of `book.rs`.
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
pub(crate) fn parse(kind: &str, f: &mut Fields<'_>) -> Option<Spec> {
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
    pub(crate) fn phrase_lists(&self) -> Vec<&PhraseList> {
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
    pub(crate) fn list_speakers<'a>(&'a self, rule: &'a [Speaker]) -> Vec<&'a [Speaker]> {
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
    pub(crate) fn takes_speakers(&self) -> bool {
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
    pub(crate) fn judges_agent(&self, speakers: &[Speaker]) -> bool {
        match self {
            Spec::Response(s) => s.expect.speakers == [Speaker::Agent],
            Spec::Timing(_) => true,
            _ => speakers == [Speaker::Agent],
        }
    }

    /// Whether the rule's state can ever hold a deadline: the kinds'
    /// `deadline` is `None` for every other rule, whatever its state (a
    /// test checks), so the clock and [`crate::book::Book::next_deadline`] only visit
    /// these.
    pub fn has_deadline(&self) -> bool {
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
    pub(crate) fn reads_every_segment(&self) -> bool {
        matches!(self, Spec::Response(_) | Spec::Required(_))
    }

    /// Whether the rule keeps per-conversation state.
    pub(crate) fn stateful(&self) -> bool {
        self.initial_state().is_some()
    }

    pub(crate) fn initial_state(&self) -> Option<State> {
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
