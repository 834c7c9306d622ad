//! `required` ("must say"): one of the rule's phrases must occur in a
//! scope, else one violation when the scope ends. Greeting (开头语) and
//! closing (结束语) are two such rules; a lexicon may have any number (a
//! recording notice 录音提示, identity verification 核实身份).
//!
//! Scopes, counted in segments of the rule's `speakers` (default: agent):
//!
//! | `scope` | with | satisfied when | the verdict comes |
//! |---|---|---|---|
//! | `"start"` | `segments = N` | a phrase in the first N segments | at the N-th segment |
//! | `"start"` | `seconds = N` | a phrase within N s of the first event | at the first segment (or clock tick) past the deadline |
//! | `"end"` | `segments = N` | a phrase in the last N segments | at close |
//! | `"conversation"` | — | a phrase anywhere | at close |
//!
//! No verdict is made on a conversation where the speaker never spoke, and
//! no `start` verdict on one first seen mid-way.
//!
//! `continuation` says the contact goes on beyond the transcript: in the
//! speaker's first segment for a `start` scope (the greeting happened in
//! an earlier contact), in the speaker's last segment for an `end` scope
//! (the matter moved elsewhere: 请私信…, 已私信您, 请拨打客服热线… and then
//! nothing). Either way no verdict is made, as a reviewer would.

use super::{Boundary, Close, Found, PhraseList, Position, RuleRef, Seg, Sink};
use crate::event::Speaker;
use crate::fields::Fields;
use serde::{Deserialize, Serialize};

/// End-scope windows are tracked as bits of a u64.
pub const MAX_SEGMENTS: i64 = 64;
/// A start deadline of a day at most.
pub(crate) const MAX_SECONDS: i64 = 86_400;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The first `segments` segments, or the first `seconds`.
    Start {
        segments: Option<u32>,
        seconds: Option<u64>,
    },
    /// The last `segments` segments before close.
    End { segments: u32 },
    /// Anywhere.
    Conversation,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    pub list: PhraseList,
    pub scope: Scope,
    /// Start scopes: phrases that, in the speaker's first segment (without
    /// the required phrase), show the conversation continues an earlier
    /// contact (the progress of a question asked before, a closing
    /// question): then no verdict is made. Later segments do not count: a
    /// closing question in the second turn of an ungreeted conversation
    /// measured as a missed greeting, not a continuation.
    ///
    /// End scopes: phrases that, in the speaker's last segment, show the
    /// matter continues elsewhere (a private message, a hotline): then,
    /// unless a required phrase was said in the scope, no verdict is made.
    /// Only the last segment counts: 请私信 early in a thread that the agent
    /// then finished in public does not excuse a missing closing.
    pub continuation: Option<PhraseList>,
    /// Start scopes: phrases that, in a customer's segment before the
    /// speaker first spoke, show the conversation continues an earlier
    /// contact (`^那…`, a reply such as `^在的`, `说了好几次`): then no
    /// verdict is made.
    pub continuation_before: Option<PhraseList>,
}

/// An optional list of plain phrases (phrase syntax, no exceptions):
/// `None` when absent, `Some(None)` when a phrase is invalid (said so).
fn plain_list(f: &mut Fields<'_>, key: &str) -> Option<Option<PhraseList>> {
    let phrases = f.strings(key)?;
    let mut ok = true;
    for p in &phrases {
        if let Err(e) = crate::wording::compile(p) {
            f.error_at_value(key, p, format!("{key} {p:?} {e}"));
            ok = false;
        }
    }
    Some(ok.then(|| PhraseList {
        phrases,
        exceptions: Vec::new(),
        boundary: Boundary::None,
        position: Position::Any,
    }))
}

impl Spec {
    /// The group index of `continuation_before` (see `Spec::phrase_lists`).
    fn before_list(&self) -> Option<u16> {
        self.continuation_before
            .as_ref()
            .map(|_| 1 + u16::from(self.continuation.is_some()))
    }
}

/// Per-conversation state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// The verdict: `Some(true)` satisfied, `Some(false)` violated, `None`
    /// while open (end and conversation scopes decide at close).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<bool>,
    /// Segments of the rule's speakers seen.
    #[serde(default)]
    pub seen: u32,
    /// Bit i: the i-th most recent such segment held a phrase (end scope),
    /// or bit 0: some segment did (conversation scope).
    #[serde(default)]
    pub bits: u64,
    /// The conversation time of the first event (start scope in seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_ts: Option<u64>,
    /// Start scopes: the speaker's first segment continued an earlier
    /// contact, no verdict. End scopes: the speaker's latest segment moved
    /// the matter elsewhere (no verdict if it stays the last).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub continued: bool,
}

fn deadline_of(spec: &Spec, st: &State) -> Option<u64> {
    match spec.scope {
        Scope::Start {
            seconds: Some(s), ..
        } => st.start_ts.map(|t| t.saturating_add(s * 1000)),
        _ => None,
    }
}

pub fn deadline(spec: &Spec, st: &State) -> Option<u64> {
    // Only a speaker who spoke can have missed it (see `on_clock`).
    if st.verdict.is_some() || st.seen == 0 || st.continued {
        return None;
    }
    deadline_of(spec, st)
}

fn violate(
    r: RuleRef<'_>,
    st: &mut State,
    seq: u64,
    ts_ms: u64,
    note: String,
    sink: &mut Sink<'_>,
) {
    st.verdict = Some(false);
    sink.explain(r, || format!("VIOLATED: {note}"));
    sink.found.push(Found::Verdict {
        rule: r.ix,
        seq,
        ts_ms,
        // One verdict per rule per conversation, wherever it was reached
        // (the category keeps contract v1's ids for greeting and closing).
        key: String::new(),
        note,
        text: None,
    });
}

impl super::Kind for Spec {
    const NAME: &'static str = "required";
    const STATEFUL: bool = true;
    type State = State;

    fn parse(f: &mut Fields<'_>) -> Option<Spec> {
        #[derive(Clone, Copy)]
        enum S {
            Start,
            End,
            Whole,
        }
        let list = PhraseList::parse(f, Boundary::None, Position::Any);
        let continuation = plain_list(f, "continuation");
        let before = plain_list(f, "continuation_before");
        let which = f.choice(
            "scope",
            &[
                ("start", S::Start),
                ("end", S::End),
                ("conversation", S::Whole),
            ],
        );
        let had_scope = which.is_some() || f.has("scope");
        let sized = f.has("segments") || f.has("seconds");
        let segments = f.integer("segments", 1..=MAX_SEGMENTS).map(|n| n as u32);
        let seconds = f.integer("seconds", 1..=MAX_SECONDS).map(|n| n as u64);
        let scope = match which {
            Some(S::Start) => {
                if segments.is_none() && seconds.is_none() {
                    if sized {
                        // The value given is invalid, and said so.
                        return None;
                    }
                    f.error(
                        "scope",
                        "a \"start\" scope needs `segments = N` or `seconds = N`".into(),
                    );
                    return None;
                }
                Scope::Start { segments, seconds }
            }
            Some(S::End) => {
                if seconds.is_some() {
                    f.error("seconds", "an \"end\" scope counts segments only".into());
                }
                match segments {
                    Some(n) => Scope::End { segments: n },
                    None if sized => return None,
                    None => {
                        f.error("scope", "an \"end\" scope needs `segments = N`".into());
                        return None;
                    }
                }
            }
            Some(S::Whole) => {
                if segments.is_some() || seconds.is_some() {
                    f.error(
                        "scope",
                        "a \"conversation\" scope takes neither segments nor seconds".into(),
                    );
                }
                Scope::Conversation
            }
            None => {
                if !had_scope {
                    f.error(
                        "scope",
                        "missing field `scope` (\"start\", \"end\" or \"conversation\")".into(),
                    );
                }
                return None;
            }
        };
        let start_only =
            |f: &mut Fields<'_>, key: &str, list: Option<Option<PhraseList>>| match list {
                Some(None) => Err(()),
                Some(Some(_)) if !matches!(scope, Scope::Start { .. }) => {
                    f.error(key, format!("{key} applies to a \"start\" scope only"));
                    Err(())
                }
                Some(list) => Ok(list),
                None => Ok(None),
            };
        // `continuation` also fits an end scope (continued elsewhere); not a
        // whole-conversation scope, which has no first or last segment to read.
        let continuation = match continuation {
            Some(Some(list)) if matches!(scope, Scope::End { .. }) => Ok(Some(list)),
            other => start_only(f, "continuation", other),
        };
        let continuation_before = start_only(f, "continuation_before", before);
        let (Ok(continuation), Ok(continuation_before)) = (continuation, continuation_before)
        else {
            return None;
        };
        Some(Spec {
            list: list?,
            scope,
            continuation,
            continuation_before,
        })
    }

    fn describe(&self) -> String {
        let scope = match self.scope {
            Scope::Start {
                segments: Some(n),
                seconds: None,
            } => format!("in the first {n} segment(s)"),
            Scope::Start {
                segments: None,
                seconds: Some(s),
            } => format!("within the first {s} s"),
            Scope::Start {
                segments: Some(n),
                seconds: Some(s),
            } => format!("in the first {n} segment(s) and within {s} s"),
            Scope::Start { .. } => "at the start".into(),
            Scope::End { segments } => format!("in the last {segments} segment(s)"),
            Scope::Conversation => "anywhere in the conversation".into(),
        };
        format!("one of {} {scope}", self.list.sample(3))
    }

    fn phrase_lists(&self) -> Vec<&PhraseList> {
        std::iter::once(&self.list)
            .chain(self.continuation.as_ref())
            .chain(self.continuation_before.as_ref())
            .collect()
    }

    fn list_speakers<'a>(&'a self, rule: &'a [Speaker]) -> Vec<&'a [Speaker]> {
        std::iter::once(rule)
            .chain(self.continuation.as_ref().map(|_| rule))
            .chain(
                self.continuation_before
                    .as_ref()
                    .map(|_| &[Speaker::Customer][..]),
            )
            .collect()
    }

    fn has_deadline(&self) -> bool {
        matches!(
            self.scope,
            Scope::Start {
                seconds: Some(_),
                ..
            }
        )
    }

    fn reads_every_segment(&self) -> bool {
        true
    }

    fn done_when_decided(&self) -> bool {
        !matches!(self.scope, Scope::End { .. })
    }

    fn on_segment(&self, r: RuleRef<'_>, st: &mut State, seg: &Seg<'_>, sink: &mut Sink<'_>) {
        if st.start_ts.is_none() {
            st.start_ts = Some(seg.ts_ms);
        }
        if !r.speakers.contains(&seg.speaker) {
            if let Some(before) = self.before_list()
                && st.seen == 0
                && !st.continued
                && r.hit(seg, before)
            {
                st.continued = true;
                sink.explain(r, || {
                    "not judged: the customer's first words continue an earlier contact".into()
                });
            }
            return;
        }
        st.seen = st.seen.saturating_add(1);
        let hit = r.hit(seg, 0);
        match self.scope {
            Scope::Start { segments, seconds } => {
                if st.seen == 1 && !hit && self.continuation.is_some() && r.hit(seg, 1) {
                    st.continued = true;
                    sink.explain(r, || {
                        "not judged: the first segment continues an earlier contact".into()
                    });
                }
                if st.continued {
                    return;
                }
                if st.verdict.is_some() || seg.midway {
                    if seg.midway && st.verdict.is_none() {
                        sink.explain(r, || {
                            "not judged: the conversation was first seen mid-way".into()
                        });
                    }
                    return;
                }
                let late = seconds.is_some_and(|s| {
                    st.start_ts
                        .is_some_and(|t| seg.ts_ms > t.saturating_add(s * 1000))
                });
                if hit && !late {
                    st.verdict = Some(true);
                    sink.explain(r, || {
                        format!("satisfied: said in segment {} of the scope", st.seen)
                    });
                } else if late {
                    let s = seconds.unwrap_or(0);
                    violate(
                        r,
                        st,
                        seg.seq,
                        seg.ts_ms,
                        format!("none of {} within the first {s} s", self.list.sample(3)),
                        sink,
                    );
                } else if segments.is_some_and(|n| st.seen >= n) {
                    let n = segments.unwrap_or(0);
                    violate(
                        r,
                        st,
                        seg.seq,
                        seg.ts_ms,
                        format!(
                            "none of {} in the first {n} segment(s)",
                            self.list.sample(3)
                        ),
                        sink,
                    );
                } else {
                    sink.explain(r, || {
                        format!("open: not said yet ({} segment(s) into the scope)", st.seen)
                    });
                }
            }
            Scope::End { .. } => {
                st.bits = (st.bits << 1) | u64::from(hit);
                if hit {
                    sink.explain(r, || {
                        "said here: satisfied if no more than the scope's segments follow".into()
                    });
                }
                st.continued = self.continuation.is_some() && r.hit(seg, 1);
                if st.continued {
                    sink.explain(r, || {
                        "continued elsewhere: not judged if no segment of the speaker follows"
                            .into()
                    });
                }
            }
            Scope::Conversation => {
                if hit && st.bits == 0 {
                    st.bits = 1;
                    st.verdict = Some(true);
                    sink.explain(r, || "satisfied: said".into());
                }
            }
        }
    }

    fn on_clock(&self, r: RuleRef<'_>, st: &mut State, now_ts: u64, sink: &mut Sink<'_>) {
        if let Some(d) = deadline(self, st)
            && now_ts > d
            && let Scope::Start {
                seconds: Some(s), ..
            } = self.scope
        {
            // The verdict points at the conversation's start: no segment of
            // the scope held it.
            violate(
                r,
                st,
                0,
                d,
                format!("none of {} within the first {s} s", self.list.sample(3)),
                sink,
            );
        }
    }

    fn deadline(&self, st: &State) -> Option<u64> {
        deadline(self, st)
    }

    fn on_close(&self, r: RuleRef<'_>, st: &mut State, close: &Close, sink: &mut Sink<'_>) {
        if st.verdict.is_some() && !matches!(self.scope, Scope::End { .. }) {
            return;
        }
        if st.seen == 0 {
            sink.explain(r, || "not judged: the speaker never spoke".into());
            return;
        }
        let at = close.last_agent_seq.or(close.last_seq).unwrap_or(0);
        match self.scope {
            Scope::Start { .. } => {
                if close.midway || st.continued {
                    return;
                }
                violate(
                    r,
                    st,
                    at,
                    close.ts_ms,
                    format!(
                        "none of {} before the conversation ended",
                        self.list.sample(3)
                    ),
                    sink,
                );
            }
            Scope::End { segments } => {
                let mask = if segments >= 64 {
                    u64::MAX
                } else {
                    (1u64 << segments) - 1
                };
                if st.bits & mask != 0 {
                    st.verdict = Some(true);
                    sink.explain(r, || {
                        format!("satisfied: said in the last {segments} segment(s)")
                    });
                } else if st.continued {
                    sink.explain(r, || {
                        "not judged: the last segment continues the matter elsewhere".into()
                    });
                } else {
                    violate(
                        r,
                        st,
                        at,
                        close.ts_ms,
                        format!(
                            "none of {} in the last {segments} segment(s)",
                            self.list.sample(3)
                        ),
                        sink,
                    );
                }
            }
            Scope::Conversation => violate(
                r,
                st,
                at,
                close.ts_ms,
                format!("none of {} in the conversation", self.list.sample(3)),
                sink,
            ),
        }
    }
}

impl super::KindState for State {
    /// The scope's clock starts at the conversation's first segment,
    /// whoever says it.
    fn hears_other_speakers(&self) -> bool {
        self.seen == 0 && !self.continued
    }

    fn decided(&self) -> bool {
        self.verdict.is_some()
    }
}
