//! `pattern`: regular expressions (the `regex` crate's syntax) over the
//! *normalised* text, and built-in detectors of full personal numbers
//! (see [`crate::detect`]): mainland mobile numbers, resident ID numbers
//! (checksum verified) and bank cards (Luhn), in Arabic or Chinese digits.
//!
//! ```toml
//! [[rule]]
//! id = "pii.full_number"
//! kind = "pattern"
//! category = "pii"
//! severity = "high"
//! detectors = ["mobile", "id_card", "bank_card"]
//! patterns = ["(告诉|提供|报)(我|一下)?(您|你)的?(完整的?)?(银行卡|身份证)(号|号码)"]
//! not_patterns = []   # a match inside one of these does not count
//! ```
//!
//! Normalised text has no spaces or punctuation, ASCII is lower-case,
//! full-width forms are folded and traditional characters simplified: write
//! patterns against that (`\d` also matches full-width digits, since they
//! fold to ASCII). A pattern that can match the empty string is refused.
//! Matches map back to the original text's offsets like phrase hits.
//!
//! All patterns of a lexicon run as one `RegexSet` pass per segment; only
//! the rules whose patterns matched search for positions.

use super::Seg;
use crate::detect::{self, Detector};
use crate::event::{MAX_SPANS, Speaker};
use crate::fields::Fields;
use regex::{Regex, RegexSet};

#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    /// As written in the file.
    pub patterns: Vec<String>,
    pub not_patterns: Vec<String>,
    pub detectors: Vec<Detector>,
}

/// Compiled regexes are bounded so one lexicon entry cannot take the
/// daemon's memory.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

fn compile(f: &Fields<'_>, key: &str, src: &str) -> Option<Regex> {
    match regex::RegexBuilder::new(src)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
    {
        Ok(re) if re.is_match("") => {
            f.error_at_value(
                key,
                src,
                format!(
                    "pattern {src:?} matches the empty string, so it would match every segment"
                ),
            );
            None
        }
        Ok(re) => Some(re),
        Err(e) => {
            let msg = e.to_string();
            let last = msg.lines().last().unwrap_or(&msg).trim();
            let last = last.strip_prefix("error: ").unwrap_or(last).to_string();
            f.error_at_value(key, src, format!("invalid pattern {src:?}: {last}"));
            None
        }
    }
}

/// One pattern rule, compiled.
#[derive(Debug)]
struct Compiled {
    rule: u16,
    speakers: u8,
    patterns: Vec<Regex>,
    not: Vec<Regex>,
    /// Bit per [`Detector`].
    detectors: u8,
}

/// Every pattern rule of a lexicon.
#[derive(Debug, Default)]
pub(crate) struct Set {
    rules: Vec<Compiled>,
    /// Every positive pattern, for the one-pass check: pattern i belongs to
    /// `rules[owner[i]]`.
    set: Option<RegexSet>,
    owner: Vec<usize>,
    /// Union of the rules' detector bits.
    detectors: u8,
    /// Bit per speaker some pattern rule reads.
    speakers: u8,
}

/// Per-caller buffers.
#[derive(Debug, Default)]
pub struct Scratch {
    found: Vec<detect::Found>,
    matched: Vec<bool>,
    spans: Vec<(usize, usize, u16)>,
    nots: Vec<(usize, usize, usize)>,
}

/// Marks a span's source as a detector (else a pattern index).
const DETECTOR: u16 = 0x8000;

fn speaker_bits(s: &[Speaker]) -> u8 {
    s.iter().fold(0, |m, s| m | 1 << (*s as u8))
}

impl Set {
    /// Compiles the pattern rules among `rules` (`(id, speakers, spec)` of
    /// every rule, in the lexicon's order).
    pub fn new<'a>(
        rules: impl IntoIterator<Item = (&'a str, &'a [Speaker], &'a super::Spec)>,
    ) -> Result<Set, crate::build_error::BuildError> {
        let mut set = Set::default();
        let mut all = Vec::new();
        for (i, (id, speakers, spec)) in rules.into_iter().enumerate() {
            let super::Spec::Pattern(spec) = spec else {
                continue;
            };
            let build = |src: &String| {
                regex::RegexBuilder::new(src)
                    .size_limit(REGEX_SIZE_LIMIT)
                    .build()
                    .map_err(|e| crate::build_error::BuildError::Pattern {
                        rule: id.to_string(),
                        source: Box::new(e),
                    })
            };
            let patterns = spec
                .patterns
                .iter()
                .map(build)
                .collect::<Result<Vec<_>, _>>()?;
            let not = spec
                .not_patterns
                .iter()
                .map(build)
                .collect::<Result<Vec<_>, _>>()?;
            for p in &spec.patterns {
                all.push(p.clone());
                set.owner.push(set.rules.len());
            }
            let detectors = spec.detectors.iter().fold(0u8, |m, d| m | 1 << (*d as u8));
            set.detectors |= detectors;
            let speakers = speaker_bits(speakers);
            set.speakers |= speakers;
            set.rules.push(Compiled {
                rule: u16::try_from(i)
                    .map_err(|_| crate::build_error::BuildError::TooMany("rules"))?,
                speakers,
                patterns,
                not,
                detectors,
            });
        }
        if !all.is_empty() {
            set.set = Some(
                regex::RegexSetBuilder::new(&all)
                    .size_limit(REGEX_SIZE_LIMIT * 8)
                    .build()
                    .map_err(|e| crate::build_error::BuildError::PatternSet(Box::new(e)))?,
            );
        }
        Ok(set)
    }

    /// Whether any pattern rule reads this speaker's segments.
    pub fn judges(&self, speaker: Speaker) -> bool {
        self.speakers & (1 << (speaker as u8)) != 0
    }

    /// Calls `found(rule, spans, count)` for every pattern rule matching the
    /// segment (spans are byte ranges of the normalised text, in order, the
    /// first [`MAX_SPANS`]).
    pub fn scan(
        &self,
        seg: &Seg<'_>,
        scratch: &mut Scratch,
        explain: bool,
        mut found: impl FnMut(u16, Vec<(usize, usize)>, u32, Vec<String>),
    ) {
        let text = seg.norm.text.as_str();
        let bit = 1u8 << (seg.speaker as u8);
        scratch.matched.clear();
        scratch.matched.resize(self.rules.len(), false);
        let mut any = false;
        // `is_match` first: it allocates nothing and most segments match
        // no pattern (`matches` allocates its result set on every call).
        if let Some(set) = &self.set
            && set.is_match(text)
        {
            for i in set.matches(text).iter() {
                scratch.matched[self.owner[i]] = true;
                any = true;
            }
        }
        scratch.found.clear();
        if self.detectors != 0 {
            // `find` starts with the cheap `may_contain` check itself.
            detect::find(text, self.detectors, &mut scratch.found);
            any |= !scratch.found.is_empty();
        }
        if !any {
            return;
        }
        for (ci, c) in self.rules.iter().enumerate() {
            if c.speakers & bit == 0 {
                continue;
            }
            // (start, end, source): a pattern index, or DETECTOR | detector.
            scratch.spans.clear();
            if scratch.matched[ci] {
                for (pi, re) in c.patterns.iter().enumerate() {
                    scratch.spans.extend(
                        re.find_iter(text)
                            .filter(|m| !m.is_empty())
                            .map(|m| (m.start(), m.end(), pi as u16)),
                    );
                }
            }
            for f in &scratch.found {
                if c.detectors & (1 << (f.detector as u8)) != 0 {
                    scratch
                        .spans
                        .push((f.start, f.end, DETECTOR | f.detector as u16));
                }
            }
            if scratch.spans.is_empty() {
                continue;
            }
            let mut reasons = Vec::new();
            if !c.not.is_empty() {
                scratch.nots.clear();
                scratch
                    .nots
                    .extend(c.not.iter().enumerate().flat_map(|(ni, re)| {
                        re.find_iter(text).map(move |m| (m.start(), m.end(), ni))
                    }));
                let nots = &scratch.nots;
                scratch.spans.retain(|&(s, e, _)| {
                    match nots.iter().find(|&&(ns, ne, _)| ns <= s && e <= ne) {
                        Some(&(ns, ne, ni)) => {
                            if explain {
                                reasons.push(format!(
                                    "dropped {:?}: inside {:?}, a match of not_patterns[{ni}]",
                                    &text[s..e],
                                    &text[ns..ne]
                                ));
                            }
                            false
                        }
                        None => true,
                    }
                });
            }
            // Leftmost-longest, without overlaps.
            scratch
                .spans
                .sort_unstable_by_key(|&(s, e, _)| (s, std::cmp::Reverse(e)));
            let mut kept = Vec::new();
            let mut covered = 0;
            let mut count = 0u32;
            for &(s, e, src) in &scratch.spans {
                if s < covered {
                    continue;
                }
                covered = e;
                count += 1;
                if kept.len() < MAX_SPANS {
                    kept.push((s, e));
                }
                if explain {
                    reasons.push(match src & DETECTOR {
                        0 => format!(
                            "{:?} matched pattern {:?}",
                            &text[s..e],
                            c.patterns[usize::from(src)].as_str()
                        ),
                        _ => {
                            let d = Detector::ALL
                                .into_iter()
                                .find(|d| *d as u16 == src & !DETECTOR)
                                .map_or("?", |d| d.describe());
                            format!("{:?} is a {d}", &text[s..e])
                        }
                    });
                }
            }
            if count > 0 || !reasons.is_empty() {
                found(c.rule, kept, count, reasons);
            }
        }
    }
}

/// The kind keeps no per-conversation state.
pub type State = super::NoState;

impl super::Kind for Spec {
    const NAME: &'static str = "pattern";
    const STATEFUL: bool = false;
    type State = State;

    fn parse(f: &mut Fields<'_>) -> Option<Spec> {
        let patterns = f.strings("patterns").unwrap_or_default();
        let not_patterns = f.strings("not_patterns").unwrap_or_default();
        let names = f.strings("detectors").unwrap_or_default();
        let mut ok = true;
        for p in &patterns {
            ok &= compile(f, "patterns", p).is_some();
        }
        for p in &not_patterns {
            ok &= compile(f, "not_patterns", p).is_some();
        }
        let mut detectors = Vec::new();
        for n in &names {
            match Detector::from_name(n) {
                Some(d) if !detectors.contains(&d) => detectors.push(d),
                Some(_) => {}
                None => {
                    let known: Vec<&str> = Detector::ALL.iter().map(|d| d.name()).collect();
                    f.error_at_value(
                        "detectors",
                        n,
                        format!("unknown detector {n:?} (one of {known:?})"),
                    );
                    ok = false;
                }
            }
        }
        if patterns.is_empty() && detectors.is_empty() && ok {
            f.error(
                "",
                "a pattern rule needs `patterns` or `detectors` (or both)".into(),
            );
            ok = false;
        }
        ok.then_some(Spec {
            patterns,
            not_patterns,
            detectors,
        })
    }

    fn describe(&self) -> String {
        let mut parts = Vec::new();
        if !self.detectors.is_empty() {
            let d: Vec<&str> = self.detectors.iter().map(|d| d.name()).collect();
            parts.push(format!("detectors {}", d.join(", ")));
        }
        if !self.patterns.is_empty() {
            parts.push(format!("{} pattern(s)", self.patterns.len()));
        }
        if !self.not_patterns.is_empty() {
            parts.push(format!("{} exclusion(s)", self.not_patterns.len()));
        }
        parts.join("; ")
    }

    /// Its regular expressions and detectors, searched by [`Set`], not by
    /// the automaton.
    fn phrase_count(&self) -> usize {
        self.patterns.len() + self.detectors.len()
    }
}
