//! Output events: violations and summaries, their ids and excerpts.

use super::*;

/// An output event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
// Events are built, serialized and dropped: boxing the larger variant would
// cost an allocation per violation for no memory saved.
#[allow(clippy::large_enum_variant)]
pub enum Event {
    Violation(Violation),
    Summary(Summary),
}

impl Event {
    pub fn id(&self) -> &str {
        match self {
            Event::Violation(v) => &v.id,
            Event::Summary(s) => &s.id,
        }
    }
}

/// One rule broken once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Violation {
    /// Deterministic: a hash of tenant, conversation, seq, rule and span (see
    /// [`event_id`]), so a replayed input yields the same id.
    pub id: String,
    pub conversation_id: String,
    pub tenant: String,
    pub channel: Option<Channel>,
    pub agent_id: Option<String>,
    pub seq: u64,
    pub rule_id: String,
    /// The rule's category id (defined by the lexicon).
    pub category: String,
    /// The category's display name (v1.2).
    #[serde(default)]
    pub category_name: String,
    /// The rule's kind: phrase, required, response, pattern, timing,
    /// repetition (v1.2).
    #[serde(default)]
    pub kind: String,
    pub severity: Severity,
    pub deduct: f64,
    /// The slice of the original text that matched first (null for
    /// missing_*).
    pub matched: Option<String>,
    /// Unicode-scalar offsets of the first match in the segment (null for
    /// missing_*).
    pub start: Option<usize>,
    pub end: Option<usize>,
    /// How often the rule hit this segment (contract v1.1; 1 for older
    /// events). Repeated hits of one rule in one segment are one violation:
    /// a hostile segment cannot multiply the output.
    #[serde(default = "one")]
    pub count: u32,
    /// The segment offsets of the first [`MAX_SPANS`] hits, in order
    /// (v1.1; empty for missing_*).
    #[serde(default)]
    pub spans: Vec<[usize; 2]>,
    /// The original text of segment `seq`, or, when it is longer than the
    /// excerpt limit, an excerpt of it around the first match.
    pub text: String,
    /// Where `text` starts in the segment, in Unicode scalars (v1.1; 0
    /// when `text` is the whole segment).
    #[serde(default)]
    pub text_start: usize,
    /// The segment's full length in Unicode scalars (v1.1).
    #[serde(default)]
    pub text_chars: usize,
    /// Other rules that matched the same span of the segment; this
    /// violation (the most severe) stands for them (v1.2).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub also: Vec<Also>,
    /// Why, for verdicts that are not a match (a required phrase missing, a
    /// response not given, a reply too late) (v1.2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    pub lexicon_version: String,
    /// The segment's `ts_ms`, or the engine clock when it had none.
    pub ts_ms: u64,
}

/// A rule whose match was folded into a more severe violation of the same
/// span.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Also {
    pub rule_id: String,
    pub category: String,
}

/// How many hit spans a violation lists at most.
pub const MAX_SPANS: usize = 16;

pub(super) fn one() -> u32 {
    1
}

/// Per-category violation counts of one conversation, by category id.
/// Serialized as an object that always holds the four v1 categories.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    /// Sorted by id; a conversation has a handful at most.
    entries: Vec<(Box<str>, u32)>,
}

impl Counts {
    pub fn add(&mut self, category: &str) {
        self.add_n(category, 1);
    }

    pub fn add_n(&mut self, category: &str, n: u32) {
        match self
            .entries
            .binary_search_by(|(id, _)| (**id).cmp(category))
        {
            Ok(i) => self.entries[i].1 = self.entries[i].1.saturating_add(n),
            Err(i) => self.entries.insert(i, (category.into(), n)),
        }
    }

    pub fn get(&self, category: &str) -> u32 {
        self.entries
            .binary_search_by(|(id, _)| (**id).cmp(category))
            .map_or(0, |i| self.entries[i].1)
    }

    /// `(category id, count)`, by id.
    pub fn iter(&self) -> impl Iterator<Item = (&str, u32)> {
        self.entries.iter().map(|(id, n)| (&**id, *n))
    }

    pub fn total(&self) -> u32 {
        self.entries.iter().map(|e| e.1).sum()
    }
}

impl Serialize for Counts {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut all: Vec<(&str, u32)> = self.iter().collect();
        for v1 in V1_CATEGORIES {
            if self.get(v1) == 0 {
                all.push((v1, 0));
            }
        }
        all.sort_unstable();
        let mut map = serializer.serialize_map(Some(all.len()))?;
        for (id, n) in all {
            map.serialize_entry(id, &n)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Counts {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let map = std::collections::BTreeMap::<String, u32>::deserialize(deserializer)?;
        let mut c = Counts::default();
        for (id, n) in map {
            if n > 0 {
                c.add_n(&id, n);
            }
        }
        Ok(c)
    }
}

/// Why a conversation was closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CloseReason {
    /// An `end` event arrived.
    End,
    /// No event for the idle timeout.
    Idle,
    /// End of the offline input.
    Eof,
    /// A limit acted: the open-conversation limit (the least recently
    /// active conversations are closed first) or the segments-per-
    /// conversation limit.
    Limit,
}

impl CloseReason {
    pub const ALL: [CloseReason; 4] = [
        CloseReason::End,
        CloseReason::Idle,
        CloseReason::Eof,
        CloseReason::Limit,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::End => "end",
            CloseReason::Idle => "idle",
            CloseReason::Eof => "eof",
            CloseReason::Limit => "limit",
        }
    }
}

/// Once per conversation, when it closes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Deterministic: a hash of tenant and conversation.
    pub id: String,
    pub conversation_id: String,
    pub tenant: String,
    pub channel: Option<Channel>,
    /// The last agent id seen in the conversation.
    pub agent_id: Option<String>,
    pub reason: CloseReason,
    /// Distinct segments seen (all speakers, final or not).
    pub segments: u32,
    /// Agent segments judged (final only).
    pub agent_segments: u32,
    pub counts: Counts,
    /// Whether the agent greeted; null when not judged (the agent never
    /// spoke, the conversation was first seen mid-way, or the lexicon has no
    /// greeting rule).
    pub greeted: Option<bool>,
    /// Whether the agent closed politely; null when not judged.
    pub closed: Option<bool>,
    /// 100 minus the deductions, each scorecard section capped.
    pub score: f64,
    /// The lexicon version that judged the conversation.
    pub lexicon_version: String,
    /// Versions that judged earlier segments, when a restore could not have
    /// the version that opened it (a rolling upgrade that could not fetch
    /// it): then the score mixes versions, and this says which. Absent
    /// otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub earlier_lexicon_versions: Vec<String>,
    /// The engine clock when the conversation closed.
    pub ts_ms: u64,
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

/// A deterministic event id: FNV-1a (128-bit) over the parts, each followed
/// by a 0xFF separator byte (which never occurs in UTF-8), as 32 hex digits.
/// Not cryptographic: it only has to be stable and collision-free in
/// practice within a de-duplication window.
pub fn event_id(parts: &[&[u8]]) -> String {
    const OFFSET: u128 = 0x6c62272e07bb014262b821756295c58d;
    const PRIME: u128 = 0x0000000001000000000000000000013B;
    let mut h = OFFSET;
    for part in parts {
        for &b in part.iter().chain(std::iter::once(&0xFF)) {
            h ^= u128::from(b);
            h = h.wrapping_mul(PRIME);
        }
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(32);
    for i in (0..32).rev() {
        out.push(char::from(HEX[((h >> (i * 4)) & 0xF) as usize]));
    }
    out
}
