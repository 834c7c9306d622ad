//! Matching: one Aho-Corasick automaton over every phrase and exception of
//! the lexicon, then per-rule filters (exceptions, word boundaries, clause
//! position) and overlap resolution.
//!
//! [`Scanner`] is immutable and shared behind an `Arc`; a lexicon reload
//! builds a new one. Per-utterance buffers live in [`Scratch`], owned by the
//! caller, so scanning does not allocate unless something hits.
//!
//! Cost model: normalise + automaton on every utterance; jieba only when a
//! hit belongs to a rule with `boundary = "word"` (running jieba on every
//! utterance would cost 3–4× the whole pipeline).

use crate::book::Book;
pub use crate::build_error::BuildError;
use crate::chardfa::CharDfa;
use crate::event::Speaker;
use crate::lexicon::{Lexicon, LexiconError, LexiconSet, Rule};
use crate::normalize::Normalized;
pub use crate::rules::Hit;
use crate::rules::{Boundary, Position};
use aho_corasick::{AhoCorasick, AhoCorasickKind, MatchKind};
use jieba_rs::Jieba;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};

mod set;
pub use set::*;

/// The jieba segmenter with its default dictionary, built once per process
/// (≈0.13 s, ≈32 MiB) and shared by every lexicon.
pub fn default_segmenter() -> Arc<Jieba> {
    static JIEBA: LazyLock<Arc<Jieba>> = LazyLock::new(|| Arc::new(Jieba::new()));
    Arc::clone(&JIEBA)
}

/// Up to this many patterns the DFA is used: ≈30% faster than the default
/// NFA for a lexicon of a few hundred phrases. With tens of thousands of
/// patterns the DFA is slower and large, so the crate picks.
const DFA_MAX_PATTERNS: usize = 2_000;

/// What one automaton pattern means for one phrase list (group).
#[derive(Debug, Clone, Copy)]
struct Use {
    group: u16,
    exception: bool,
    /// For the anchor piece of a phrase with gaps: the phrase, an index
    /// into [`Scanner::rests`]; [`NO_REST`] for a plain phrase.
    rest: u32,
    /// Written `^…`: only a match at the start of the segment counts.
    at_start: bool,
}

const NO_REST: u32 = u32::MAX;

/// One phrase list of one rule: what its hits must satisfy.
#[derive(Debug, Clone, Copy)]
struct Group {
    boundary: Boundary,
    position: Position,
}

/// The one automaton over every phrase and exception.
enum Automaton {
    /// Character level, run during normalisation (see [`CharDfa`]).
    Chars(CharDfa),
    /// Bytes of the normalised text: lexicons too large for the character
    /// automaton's dense table.
    Bytes(AhoCorasick),
}

fn byte_automaton(patterns: &[String]) -> Result<AhoCorasick, BuildError> {
    let mut builder = AhoCorasick::builder();
    builder.match_kind(MatchKind::Standard);
    if patterns.len() <= DFA_MAX_PATTERNS {
        builder.kind(Some(AhoCorasickKind::DFA));
    }
    Ok(builder.build(patterns)?)
}

/// A compiled lexicon.
pub struct Scanner {
    lexicon: Lexicon,
    /// Shared by the base and every tenant overlay of a lexicon set: one
    /// table in the cache, whatever the tenant (patterns of other tenants
    /// have no `uses` here).
    automaton: Arc<Automaton>,
    /// Pattern id → the groups that use it (one normalised string may be a
    /// phrase of one rule and an exception of another).
    uses: Vec<Vec<Use>>,
    /// Phrases with gaps: `(anchor piece, every piece)`.
    rests: Vec<(usize, Vec<crate::wording::Piece>)>,
    groups: Vec<Group>,
    book: Book,
    /// Pattern id → the normalised pattern.
    patterns: Arc<Vec<String>>,
    /// Bit per [`Speaker`]: whether any rule judges that speaker.
    judged_speakers: u8,
    /// Group index → bit per [`Speaker`] whose segments it is searched in.
    group_speakers: Vec<u8>,
    /// Group index → bit per channel (see [`channel_bit`]) its rule judges:
    /// a rule for written service only costs nothing in a call.
    group_channels: Vec<u8>,
    segmenter: Arc<Jieba>,
}

/// A conversation's channel as a bit; an unknown channel has its own.
fn channel_bit(channel: Option<crate::event::Channel>) -> u8 {
    match channel {
        Some(c) => 1 << (c as u8),
        None => 1 << 7,
    }
}

/// Why a candidate hit was dropped (reported by [`Scanner::scan_explained`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Suppression {
    /// It lies inside an occurrence of one of the rule's exceptions.
    Exception { norm: (usize, usize) },
    /// It starts or ends inside a word (jieba).
    WordBoundary,
    /// The rule needs a clause start and the hit is mid-clause.
    Position,
    /// A longer or earlier hit of the same rule covers it.
    Overlap,
}

impl Suppression {
    /// A metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Suppression::Exception { .. } => "exception",
            Suppression::WordBoundary => "word_boundary",
            Suppression::Position => "position",
            Suppression::Overlap => "overlap",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Suppressed {
    pub group: u16,
    pub norm: (usize, usize),
    pub orig: (usize, usize),
    pub why: Suppression,
}

/// Per-caller reusable buffers.
#[derive(Debug, Default)]
pub struct Scratch {
    pub norm: Normalized,
    candidates: Vec<Candidate>,
    /// Word boundaries of `norm.text` (byte offsets), valid inside the
    /// clauses listed in `segmented`.
    boundaries: Vec<bool>,
    /// The jieba tokens of the segmented clauses, as byte ranges.
    tokens: Vec<(usize, usize)>,
    /// Clauses (byte ranges) already segmented for this utterance: jieba
    /// runs only on the clauses that hold a hit needing a boundary check.
    segmented: Vec<(usize, usize)>,
    pub hits: Vec<Hit>,
    /// The candidates dropped by the last scan: `(group, why)` (what the
    /// suppression audit counts; cheap, drops are rare).
    pub dropped: Vec<(u16, Suppression)>,
}

#[derive(Debug, Clone, Copy)]
struct Candidate {
    group: u16,
    exception: bool,
    start: usize,
    end: usize,
    rest: u32,
    at_start: bool,
}

/// The patterns of one or more lexicons, for one automaton.
#[derive(Default)]
struct PatternTable {
    /// Normalised pattern → its id (ids are dense, in order of first use).
    index: HashMap<String, usize>,
}

impl PatternTable {
    fn id(&mut self, text: String) -> usize {
        let next = self.index.len();
        *self.index.entry(text).or_insert(next)
    }

    fn build(self) -> Result<(Arc<Automaton>, Arc<Vec<String>>), BuildError> {
        let mut patterns = vec![String::new(); self.index.len()];
        for (text, id) in self.index {
            patterns[id] = text;
        }
        let automaton = match CharDfa::new(&patterns) {
            Some(dfa) => Automaton::Chars(dfa),
            None => Automaton::Bytes(byte_automaton(&patterns)?),
        };
        Ok((Arc::new(automaton), Arc::new(patterns)))
    }
}

/// A compiled lexicon without its automaton.
struct Parts {
    lexicon: Lexicon,
    uses: Vec<Vec<Use>>,
    rests: Vec<(usize, Vec<crate::wording::Piece>)>,
    groups: Vec<Group>,
    book: Book,
    judged_speakers: u8,
    group_speakers: Vec<u8>,
    group_channels: Vec<u8>,
}

impl Parts {
    /// Compiles `lexicon`, adding its patterns to `table`.
    fn new(lexicon: Lexicon, table: &mut PatternTable) -> Result<Parts, BuildError> {
        let mut uses: Vec<Vec<Use>> = Vec::new();
        let mut rests: Vec<(usize, Vec<crate::wording::Piece>)> = Vec::new();
        let (book, defs) = Book::new(&lexicon)?;
        let mut groups = Vec::with_capacity(defs.len());
        let mut group_speakers = Vec::with_capacity(defs.len());
        let mut group_channels = Vec::with_capacity(defs.len());
        for (gi, def) in defs.iter().enumerate() {
            let rule = &lexicon.rules[usize::from(def.rule)];
            group_channels.push(
                crate::event::Channel::ALL
                    .into_iter()
                    .map(Some)
                    .chain([None])
                    .filter(|c| rule.applies_on(*c))
                    .fold(0u8, |m, c| m | channel_bit(c)),
            );
            let group = u16::try_from(gi).map_err(|_| BuildError::TooMany("phrase lists"))?;
            groups.push(Group {
                boundary: def.list.boundary,
                position: def.list.position,
            });
            group_speakers.push(def.speakers.iter().fold(0, |m, s| m | speaker_bit(*s)));
            let all = def
                .list
                .phrases
                .iter()
                .map(|p| (p, false))
                .chain(def.list.exceptions.iter().map(|x| (x, true)));
            for (text, exception) in all {
                // Validated at load: a phrase that does not compile is not
                // in a lexicon.
                let variants =
                    crate::wording::compile(text).map_err(|reason| BuildError::Phrase {
                        phrase: text.to_string(),
                        reason,
                    })?;
                for v in variants {
                    // The automaton looks for the anchor piece (a plain
                    // phrase is its own anchor).
                    let anchor = crate::wording::anchor(&v);
                    let Some(first) = v.pieces.get(anchor).cloned() else {
                        continue;
                    };
                    let rest = if v.pieces.len() == 1 {
                        NO_REST
                    } else {
                        rests.push((anchor, v.pieces));
                        u32::try_from(rests.len() - 1)
                            .map_err(|_| BuildError::TooMany("phrases"))?
                    };
                    let pid = table.id(first.text);
                    if uses.len() <= pid {
                        uses.resize_with(pid + 1, Vec::new);
                    }
                    uses[pid].push(Use {
                        group,
                        exception,
                        rest,
                        at_start: v.at_start,
                    });
                }
            }
        }
        drop(defs);
        // Every speaker some rule reads: phrase lists, and the speakers of
        // stateful and pattern rules (a timing rule reads the customer's
        // segments too).
        let mut judged_speakers = lexicon
            .rules
            .iter()
            .flat_map(|r| r.speakers.iter())
            .fold(0, |m, s| m | speaker_bit(*s))
            | group_speakers.iter().fold(0, |m, b| m | b);
        if lexicon.rules.iter().any(|r| r.spec.reads_every_segment()) {
            judged_speakers = Speaker::ALL.iter().fold(0, |m, s| m | speaker_bit(*s));
        }
        Ok(Parts {
            lexicon,
            uses,
            rests,
            groups,
            book,
            judged_speakers,
            group_speakers,
            group_channels,
        })
    }

    fn into_scanner(
        mut self,
        automaton: Arc<Automaton>,
        patterns: Arc<Vec<String>>,
        segmenter: Arc<Jieba>,
    ) -> Scanner {
        // One entry per pattern of the shared table (patterns of other
        // lexicons mean nothing here).
        self.uses.resize_with(patterns.len(), Vec::new);
        Scanner {
            lexicon: self.lexicon,
            automaton,
            uses: self.uses,
            rests: self.rests,
            groups: self.groups,
            book: self.book,
            patterns,
            judged_speakers: self.judged_speakers,
            group_speakers: self.group_speakers,
            group_channels: self.group_channels,
            segmenter,
        }
    }
}

impl Scanner {
    /// Compiles a validated lexicon.
    pub fn new(lexicon: Lexicon, segmenter: Arc<Jieba>) -> Result<Scanner, BuildError> {
        let mut table = PatternTable::default();
        let parts = Parts::new(lexicon, &mut table)?;
        let (automaton, patterns) = table.build()?;
        Ok(parts.into_scanner(automaton, patterns, segmenter))
    }

    /// The compiled rules (kinds, state slots, patterns).
    pub fn book(&self) -> &Book {
        &self.book
    }

    /// The rule a hit belongs to.
    pub fn hit_rule(&self, hit: &Hit) -> &Rule {
        self.rule(self.group_rule(hit.group))
    }

    /// A rule's category id.
    pub fn category_id(&self, rule: &Rule) -> &str {
        &self.lexicon.categories[rule.category].id
    }

    /// The rule a hit's group belongs to.
    pub fn group_rule(&self, group: u16) -> u16 {
        self.book.group_rule(group)
    }

    pub fn lexicon(&self) -> &Lexicon {
        &self.lexicon
    }

    pub fn version(&self) -> &str {
        &self.lexicon.version
    }

    pub fn rules(&self) -> &[Rule] {
        &self.lexicon.rules
    }

    pub fn rule(&self, ix: u16) -> &Rule {
        &self.lexicon.rules[usize::from(ix)]
    }

    /// The same scanner matching with the byte automaton only (what large
    /// lexicons use): tests compare the two paths.
    #[doc(hidden)]
    pub fn without_char_automaton(mut self) -> Result<Scanner, BuildError> {
        self.automaton = Arc::new(Automaton::Bytes(byte_automaton(&self.patterns)?));
        Ok(self)
    }

    /// How the lexicon is matched, for people: the character automaton's
    /// size, or that the byte automaton is used.
    pub fn automaton_summary(&self) -> String {
        match &*self.automaton {
            Automaton::Chars(dfa) => {
                let (states, symbols, bytes) = dfa.size();
                format!(
                    "character automaton: {states} states × {symbols} symbols ({} KiB)",
                    bytes / 1024
                )
            }
            Automaton::Bytes(_) => {
                "byte automaton (the character automaton's table would be too large)".into()
            }
        }
    }

    /// Number of distinct normalised patterns in the automaton.
    pub fn pattern_count(&self) -> usize {
        self.patterns.len()
    }

    /// Counts the raw automaton matches in already-normalised text, before
    /// any filter (benchmarks measure this stage alone).
    pub fn count_raw_matches(&self, normalised: &str) -> usize {
        match &*self.automaton {
            Automaton::Chars(dfa) => {
                let mut state = dfa.start();
                let mut n = 0;
                for c in normalised.chars() {
                    state = dfa.next(state, c);
                    if CharDfa::is_match(state) {
                        n += dfa.matches(state).len();
                    }
                }
                n
            }
            Automaton::Bytes(ac) => ac.find_overlapping_iter(normalised).count(),
        }
    }

    /// Whether any rule judges this speaker's segments.
    pub fn judges(&self, speaker: Speaker) -> bool {
        self.judged_speakers & speaker_bit(speaker) != 0
    }

    /// Scans `text` spoken by `speaker`; the surviving hits are left in
    /// `scratch.hits`, ordered by start, then rule.
    pub fn scan(&self, text: &str, speaker: Speaker, scratch: &mut Scratch) {
        self.scan_inner(text, speaker, u8::MAX, scratch, None);
    }

    /// Like [`Scanner::scan`], for a conversation on `channel`: phrase
    /// lists of rules that do not judge that channel are not looked at.
    pub fn scan_on(
        &self,
        text: &str,
        speaker: Speaker,
        channel: Option<crate::event::Channel>,
        scratch: &mut Scratch,
    ) {
        self.scan_inner(text, speaker, channel_bit(channel), scratch, None);
    }

    /// Like [`Scanner::scan`], and also reports every dropped candidate and
    /// why (for `zhijian lexicon test`).
    pub fn scan_explained(
        &self,
        text: &str,
        speaker: Speaker,
        scratch: &mut Scratch,
    ) -> Vec<Suppressed> {
        let mut out = Vec::new();
        self.scan_inner(text, speaker, u8::MAX, scratch, Some(&mut out));
        out
    }

    fn scan_inner(
        &self,
        text: &str,
        speaker: Speaker,
        channels: u8,
        scratch: &mut Scratch,
        mut explain: Option<&mut Vec<Suppressed>>,
    ) {
        scratch.hits.clear();
        scratch.candidates.clear();
        scratch.segmented.clear();
        scratch.dropped.clear();
        let bit = speaker_bit(speaker);
        let mut any_phrase = false;
        let candidates = &mut scratch.candidates;
        let mut found = |pattern: usize, start: usize, end: usize| {
            for u in &self.uses[pattern] {
                // `^…` off the segment's start (a phrase with gaps is
                // checked once its whole span is known).
                if u.at_start && u.rest == NO_REST && start != 0 {
                    continue;
                }
                let g = usize::from(u.group);
                if self.group_speakers[g] & bit != 0 && self.group_channels[g] & channels != 0 {
                    any_phrase |= !u.exception;
                    candidates.push(Candidate {
                        group: u.group,
                        exception: u.exception,
                        start,
                        end,
                        rest: u.rest,
                        at_start: u.at_start,
                    });
                }
            }
        };
        match &*self.automaton {
            Automaton::Chars(dfa) => {
                let mut state = dfa.start();
                scratch.norm.fill_with(text, |c, end| {
                    state = dfa.next(state, c);
                    if CharDfa::is_match(state) {
                        for &p in dfa.matches(state) {
                            let p = p as usize;
                            // A match is the pattern's own bytes.
                            found(p, end - self.patterns[p].len(), end);
                        }
                    }
                });
            }
            Automaton::Bytes(ac) => {
                scratch.norm.fill(text);
                for m in ac.find_overlapping_iter(&scratch.norm.text) {
                    found(m.pattern().as_usize(), m.start(), m.end());
                }
            }
        }
        if !any_phrase {
            return;
        }
        // Phrases with gaps: the automaton found their anchor piece; the
        // others must sit around it within their gaps, in the same clause.
        if !self.rests.is_empty() {
            let norm = &scratch.norm;
            scratch.candidates.retain_mut(|c| {
                if c.rest == NO_REST {
                    return true;
                }
                let (anchor, pieces) = &self.rests[c.rest as usize];
                let clause = (norm.clause_start(c.start), norm.clause_end(c.start));
                match crate::wording::match_around(
                    &norm.text,
                    (c.start, c.end),
                    clause,
                    pieces,
                    *anchor,
                ) {
                    Some((start, _)) if c.at_start && start != 0 => false,
                    Some((start, end)) => {
                        c.start = start;
                        c.end = end;
                        true
                    }
                    None => false,
                }
            });
        }
        // Group by rule; within a rule exceptions first, then phrases
        // leftmost-longest, which is the order overlap resolution wants.
        scratch.candidates.sort_unstable_by(|a, b| {
            (a.group, !a.exception, a.start, std::cmp::Reverse(a.end)).cmp(&(
                b.group,
                !b.exception,
                b.start,
                std::cmp::Reverse(b.end),
            ))
        });

        let candidates = std::mem::take(&mut scratch.candidates);
        let mut i = 0;
        while i < candidates.len() {
            let group_ix = candidates[i].group;
            let mut j = i;
            while j < candidates.len() && candidates[j].group == group_ix {
                j += 1;
            }
            let group = &candidates[i..j];
            let n_exceptions = group.iter().take_while(|c| c.exception).count();
            let (exceptions, phrases) = group.split_at(n_exceptions);
            let rule = self.groups[usize::from(group_ix)];
            // End of the last accepted hit of this rule (overlap resolution).
            let mut covered_to = 0usize;
            for c in phrases {
                // Exceptions are clause-local: 联系您，不知道 must not count as
                // an occurrence of the exception 您不知道.
                let why = if let Some(x) = exceptions.iter().find(|x| {
                    x.start <= c.start
                        && c.end <= x.end
                        && !scratch.norm.spans_break(x.start, x.end)
                }) {
                    Some(Suppression::Exception {
                        norm: (x.start, x.end),
                    })
                } else if rule.position == Position::ClauseStart
                    && !scratch.norm.is_clause_start(c.start)
                {
                    // Before the boundary check: it is a binary search,
                    // jieba is a segmentation (余额 holds the filler 额).
                    Some(Suppression::Position)
                } else if rule.boundary == Boundary::Word
                    && !self.on_word_boundaries(scratch, c.start, c.end)
                {
                    Some(Suppression::WordBoundary)
                } else if c.start < covered_to {
                    Some(Suppression::Overlap)
                } else {
                    None
                };
                match why {
                    None => {
                        covered_to = c.end;
                        scratch.hits.push(Hit {
                            group: group_ix,
                            norm: (c.start, c.end),
                        });
                    }
                    Some(why) => {
                        scratch.dropped.push((group_ix, why));
                        if let Some(out) = explain.as_deref_mut() {
                            out.push(Suppressed {
                                group: group_ix,
                                norm: (c.start, c.end),
                                orig: scratch.norm.original_range(text, c.start, c.end),
                                why,
                            });
                        }
                    }
                }
            }
            i = j;
        }
        scratch.candidates = candidates;
        scratch
            .hits
            .sort_unstable_by_key(|h| (h.norm.0, h.group, h.norm.1));
    }

    /// Whether `start..end` starts and ends on jieba word boundaries. A hit
    /// inside a token that is only the hit repeated (啊啊啊, 喂喂) also
    /// passes: reduplication repeats the interjection, it is not a longer
    /// word.
    fn on_word_boundaries(&self, scratch: &mut Scratch, start: usize, end: usize) -> bool {
        self.segment_clauses(scratch, start, end);
        if scratch.boundaries[start] && scratch.boundaries[end] {
            return true;
        }
        let i = scratch
            .tokens
            .iter()
            .position(|t| t.0 <= start && start < t.1);
        let Some((ts, te)) = i.map(|i| scratch.tokens[i]) else {
            return false;
        };
        let text = &scratch.norm.text;
        let unit = &text[start..end];
        end <= te && text[ts..te].len().is_multiple_of(unit.len()) && {
            let token = &text[ts..te];
            token
                .as_bytes()
                .chunks(unit.len())
                .all(|c| c == unit.as_bytes())
        }
    }

    /// Segments (once per utterance) each clause that overlaps
    /// `start..end`, marking token edges in `scratch.boundaries`. Clauses
    /// are segmented separately: punctuation is gone from the normalised
    /// text, but clause breaks are remembered.
    fn segment_clauses(&self, scratch: &mut Scratch, start: usize, end: usize) {
        let norm = &scratch.norm;
        if scratch.segmented.is_empty() {
            scratch.boundaries.clear();
            scratch.boundaries.resize(norm.text.len() + 1, false);
            scratch.tokens.clear();
        }
        for (cs, ce) in norm.clauses() {
            if ce <= start || cs >= end || scratch.segmented.contains(&(cs, ce)) {
                continue;
            }
            for t in self.segmenter.cut(&norm.text[cs..ce], false) {
                scratch.boundaries[cs + t.byte_start] = true;
                scratch.boundaries[cs + t.byte_end] = true;
                scratch.tokens.push((cs + t.byte_start, cs + t.byte_end));
            }
            scratch.segmented.push((cs, ce));
        }
    }

    /// The jieba tokens of each clause of the normalised text (for tools).
    pub fn tokens<'t>(&self, norm: &'t Normalized) -> Vec<&'t str> {
        norm.clauses()
            .flat_map(|(s, e)| {
                self.segmenter
                    .cut(&norm.text[s..e], false)
                    .into_iter()
                    .map(|t| t.word)
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

fn speaker_bit(s: Speaker) -> u8 {
    1 << (s as u8)
}
