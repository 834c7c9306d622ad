//! A conversation's state as the engine keeps it (saved in checkpoints), and
//! the tombstone that remembers a closed one.

use super::*;

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

pub(crate) fn never() -> u64 {
    u64::MAX
}

impl Conversation {
    pub(crate) fn new(
        order: u64,
        first_seq: Option<u64>,
        states: Vec<State>,
        lexicon: u32,
    ) -> Conversation {
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

    pub(crate) fn deduct(&mut self, section: &str, points: f64) {
        match self.deducted.iter_mut().find(|(s, _)| s == section) {
            Some((_, d)) => *d += points,
            None => self.deducted.push((section.to_string(), points)),
        }
    }

    /// The conversation's time at engine time `now_ms`: its last segment
    /// time plus the engine time since.
    pub(crate) fn time_at(&self, now_ms: u64) -> u64 {
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
    pub(crate) closed_at_ms: u64,
    /// Seqs seen, so a redelivered segment stays a duplicate after close.
    pub(crate) seen: SeqSet,
    pub(crate) channel: Option<Channel>,
}
