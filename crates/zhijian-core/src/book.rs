//! The compiled rules of a lexicon ([`Book`]): which rule each automaton
//! group belongs to, which rules keep per-conversation state, and the
//! dispatch of segments, clock and close to the kinds' hooks in
//! [`crate::rules`]. It sits above both the registry and the lexicon: the
//! kinds know nothing of the lexicon, the lexicon nothing of the book.

use crate::build_error::BuildError;
use crate::event::{Channel, Speaker};
use crate::lexicon::{Lexicon, Rule};
use crate::rules::{Close, Found, PhraseList, RuleRef, Seg, Sink, Spec, State, pattern, required};

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
pub(crate) struct GroupDef<'a> {
    pub rule: u16,
    pub list: &'a PhraseList,
    pub speakers: &'a [Speaker],
}

impl Book {
    /// Compiles the rules of `lexicon`; also returns the phrase-list groups
    /// for the automaton.
    pub(crate) fn new(lexicon: &Lexicon) -> Result<(Book, Vec<GroupDef<'_>>), BuildError> {
        let mut groups = Vec::new();
        let mut first_group = Vec::new();
        let mut group_rule = Vec::new();
        let mut slot = Vec::new();
        let mut slots = Vec::new();
        let mut timed = Vec::new();
        let mut done_when_decided = Vec::new();
        let mut gates = Vec::new();
        for (i, rule) in lexicon.rules.iter().enumerate() {
            let ix = u16::try_from(i).map_err(|_| BuildError::TooMany("rules"))?;
            first_group.push(
                u16::try_from(groups.len()).map_err(|_| BuildError::TooMany("phrase lists"))?,
            );
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
                let speakers = if rule.spec.hears_every_speaker() {
                    0xFF
                } else {
                    rule.speakers.iter().fold(0u8, |m, s| m | 1 << (*s as u8))
                };
                let channels = rule.channels.iter().fold(0u8, |m, c| m | 1 << (*c as u8));
                gates.push((speakers, channels));
                done_when_decided.push(rule.spec.done_when_decided());
            } else {
                slot.push(None);
            }
        }
        let patterns = pattern::Set::new(
            lexicon
                .rules
                .iter()
                .map(|r| (r.id.as_str(), r.speakers.as_slice(), &r.spec)),
        )?;
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
    pub(crate) fn initial_states(&self, lexicon: &Lexicon) -> Vec<State> {
        self.slots
            .iter()
            .filter_map(|&r| lexicon.rules[usize::from(r)].spec.initial_state())
            .collect()
    }

    /// Rule ids of the state vector's entries, in order (saving state).
    pub(crate) fn slot_rules(&self) -> &[u16] {
        &self.slots
    }

    pub fn group_rule(&self, group: u16) -> u16 {
        self.group_rule[usize::from(group)]
    }

    fn rule_ref<'a>(&self, lexicon: &'a Lexicon, ix: u16) -> (&'a Rule, RuleRef<'a>) {
        let rule = &lexicon.rules[usize::from(ix)];
        let rr = RuleRef {
            ix,
            id: &rule.id,
            kind: rule.kind(),
            speakers: &rule.speakers,
            first_group: self.first_group[usize::from(ix)],
        };
        (rule, rr)
    }

    /// Runs every rule concerned by a segment: the rules whose phrase lists
    /// hit it, the pattern rules whose patterns match it, and every stateful
    /// rule. `states` is the conversation's state vector.
    pub(crate) fn on_segment(
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
            let (rule, rr) = self.rule_ref(lexicon, r);
            if !rule.applies_on(seg.channel) {
                continue;
            }
            rule.spec.on_hit(rr, seg, sink);
        }
        if self.patterns.judges(seg.speaker) {
            let explain = sink.explain.is_some();
            self.patterns
                .scan(seg, pattern_scratch, explain, |r, spans, count, reasons| {
                    let (rule, rr) = self.rule_ref(lexicon, r);
                    if !rule.applies_on(seg.channel) {
                        return;
                    }
                    for why in reasons {
                        sink.explain(rr, || why);
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
        let speaker_mask = 1u8 << (seg.speaker as u8);
        let channel_mask = seg.channel.map_or(0, |c| 1u8 << (c as u8));
        for (((&r, state), &done_when_decided), &(speakers, channels)) in self
            .slots
            .iter()
            .zip(states.iter_mut())
            .zip(&self.done_when_decided)
            .zip(&self.gates)
        {
            // Not on this channel (an unknown channel is judged by all).
            if channels != 0 && channel_mask != 0 && channels & channel_mask == 0 {
                continue;
            }
            // Not this speaker's segment: nothing to do, unless the state
            // says otherwise (a required rule whose clock has not started).
            if speakers & speaker_mask == 0 && !state.hears_other_speakers() {
                continue;
            }
            // A rule with its verdict has nothing left to do here (nor at
            // close: see `required::on_close`).
            if done_when_decided && state.decided() {
                continue;
            }
            // A rule that waits for nothing acts only on a segment holding
            // its trigger (list 0), a response rule for one. Most segments
            // of a large rulebook are such no-ops for most of its response
            // rules; deciding here, from the state and the hits, spares
            // loading the rule.
            if state.wants_only_its_trigger()
                && !seg
                    .hits
                    .iter()
                    .any(|h| h.group == self.first_group[usize::from(r)])
            {
                continue;
            }
            let (rule, rr) = self.rule_ref(lexicon, r);
            if !rule.applies_on(seg.channel) {
                continue;
            }
            rule.spec.on_segment(rr, state, seg, sink);
        }
    }

    /// Deadlines passed by the clock: `now_ts` is the conversation's time.
    pub(crate) fn on_clock(
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
            let (rule, rr) = self.rule_ref(lexicon, r);
            if !rule.applies_on(channel) {
                continue;
            }
            rule.spec.on_clock(rr, state, now_ts, sink);
        }
    }

    /// The earliest conversation time at which [`Book::on_clock`] can
    /// report something (`u64::MAX`: never).
    pub(crate) fn next_deadline(&self, lexicon: &Lexicon, states: &[State]) -> u64 {
        let mut next = u64::MAX;
        for &(slot, r) in &self.timed {
            let Some(state) = states.get(slot) else {
                continue;
            };
            let spec = &lexicon.rules[usize::from(r)].spec;
            let d = spec.deadline(state);
            next = next.min(d.unwrap_or(u64::MAX));
        }
        next
    }

    /// Close-time verdicts.
    pub(crate) fn on_close(
        &self,
        lexicon: &Lexicon,
        states: &mut [State],
        channel: Option<Channel>,
        close: &Close,
        sink: &mut Sink<'_>,
    ) {
        for (&r, state) in self.slots.iter().zip(states.iter_mut()) {
            let (rule, rr) = self.rule_ref(lexicon, r);
            if !rule.applies_on(channel) {
                continue;
            }
            rule.spec.on_close(rr, state, close, sink);
        }
    }

    /// Contract v1's `greeted` and `closed`: the verdicts of the first
    /// required rules of categories `missing_greeting` and
    /// `missing_closing`.
    pub(crate) fn greeted_closed(
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
    pub(crate) fn states_from(
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
pub(crate) fn state_from_format_1(
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
