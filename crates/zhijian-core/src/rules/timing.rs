//! `timing`: how long things take, from the segments' `ts_ms` (and the
//! engine clock while nobody speaks).
//!
//! | `measure` | violation |
//! |---|---|
//! | `"first_reply"` | the agent's first segment comes more than `seconds` after the customer's first |
//! | `"unanswered"` | a customer segment is not followed by an agent segment within `seconds` (one violation per unanswered stretch) |
//! | `"silence"` | more than `seconds` pass between two consecutive segments |
//!
//! ```toml
//! [[rule]]
//! id = "chat.first_reply"
//! kind = "timing"
//! category = "slow_reply"
//! severity = "medium"
//! channels = ["chat"]
//! measure = "first_reply"
//! seconds = 30
//! ```
//!
//! A segment without `ts_ms` takes the engine clock's time, so mixing
//! timed and untimed segments in one conversation gives meaningless times.

use super::{Close, Found, RuleRef, Seg, Shown, Sink};
use crate::event::Speaker;
use crate::fields::Fields;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Measure {
    FirstReply,
    Unanswered,
    Silence,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    pub measure: Measure,
    pub seconds: u64,
}

impl Spec {
    fn limit_ms(&self) -> u64 {
        self.seconds.saturating_mul(1000)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// first_reply and unanswered: the customer segment waiting for the
    /// agent `(seq, ts_ms)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<(u64, u64)>,
    /// first_reply: the agent has replied (or the verdict is made).
    #[serde(default)]
    pub done: bool,
    /// The waiting customer segment's start, shown by the violation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shown: Option<Shown>,
    /// silence: the previous segment's time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_ts: Option<u64>,
}

pub fn deadline(spec: &Spec, st: &State) -> Option<u64> {
    match spec.measure {
        Measure::FirstReply | Measure::Unanswered => {
            st.waiting.map(|(_, t)| t.saturating_add(spec.limit_ms()))
        }
        Measure::Silence => None,
    }
}

fn report(
    r: RuleRef<'_>,
    seq: u64,
    ts_ms: u64,
    key: String,
    note: String,
    text: Option<Shown>,
    sink: &mut Sink<'_>,
) {
    sink.explain(r, || format!("VIOLATED: {note}"));
    sink.found.push(Found::Verdict {
        rule: r.ix,
        seq,
        ts_ms,
        key,
        note,
        text,
    });
}

fn expire(spec: &Spec, r: RuleRef<'_>, st: &mut State, ts_ms: u64, sink: &mut Sink<'_>) {
    let Some((seq, t)) = st.waiting.take() else {
        return;
    };
    let (key, note) = match spec.measure {
        Measure::FirstReply => {
            st.done = true;
            (
                "first_reply".to_string(),
                format!(
                    "no reply within {} s of the customer's first message",
                    spec.seconds
                ),
            )
        }
        _ => (
            seq.to_string(),
            format!(
                "customer message at segment {seq} unanswered for {} s",
                spec.seconds
            ),
        ),
    };
    let shown = st.shown.take();
    report(r, seq, ts_ms.max(t), key, note, shown, sink);
}

impl super::Kind for Spec {
    const NAME: &'static str = "timing";
    const STATEFUL: bool = true;
    type State = State;

    fn parse(f: &mut Fields<'_>) -> Option<Spec> {
        let measure = f.choice(
            "measure",
            &[
                ("first_reply", Measure::FirstReply),
                ("unanswered", Measure::Unanswered),
                ("silence", Measure::Silence),
            ],
        );
        if measure.is_none() && !f.has("measure") {
            f.error(
                "measure",
                "missing field `measure` (\"first_reply\", \"unanswered\" or \"silence\")".into(),
            );
        }
        let seconds = f.integer("seconds", 1..=86_400);
        if seconds.is_none() && !f.has("seconds") {
            f.error("seconds", "missing field `seconds`".into());
        }
        Some(Spec {
            measure: measure?,
            seconds: seconds? as u64,
        })
    }

    fn describe(&self) -> String {
        let s = self.seconds;
        match self.measure {
            Measure::FirstReply => {
                format!("the agent's first reply within {s} s of the customer's first message")
            }
            Measure::Unanswered => {
                format!("every customer message answered by the agent within {s} s")
            }
            Measure::Silence => format!("no silence longer than {s} s between segments"),
        }
    }

    fn takes_speakers(&self) -> bool {
        false
    }

    fn default_speakers(&self) -> Vec<Speaker> {
        vec![Speaker::Agent, Speaker::Customer]
    }

    /// Reply times and silences are the agent's to keep.
    fn judges_agent(&self, _speakers: &[Speaker]) -> bool {
        true
    }

    fn has_deadline(&self) -> bool {
        self.measure != Measure::Silence
    }

    fn on_segment(&self, r: RuleRef<'_>, st: &mut State, seg: &Seg<'_>, sink: &mut Sink<'_>) {
        // System notices are nobody's turn and nobody's silence.
        if !r.speakers.contains(&seg.speaker) {
            return;
        }
        let limit = self.limit_ms();
        match self.measure {
            Measure::FirstReply => {
                if st.done {
                    return;
                }
                match seg.speaker {
                    Speaker::Customer if st.waiting.is_none() => {
                        st.waiting = Some((seg.seq, seg.ts_ms));
                        st.shown = Some(Shown::of(seg.text, seg.excerpt_chars));
                        sink.explain(r, || {
                            "the customer's first message: the clock starts".into()
                        });
                    }
                    Speaker::Agent => {
                        if let Some((_, t)) = st.waiting {
                            st.done = true;
                            st.waiting = None;
                            st.shown = None;
                            let took = seg.ts_ms.saturating_sub(t);
                            if took > limit {
                                report(
                                    r,
                                    seg.seq,
                                    seg.ts_ms,
                                    "first_reply".into(),
                                    format!(
                                        "first reply after {} s (limit {} s)",
                                        took / 1000,
                                        self.seconds
                                    ),
                                    None,
                                    sink,
                                );
                            } else {
                                sink.explain(r, || {
                                    format!("satisfied: first reply after {} s", took / 1000)
                                });
                            }
                        }
                    }
                    _ => {}
                }
            }
            Measure::Unanswered => match seg.speaker {
                Speaker::Customer if st.waiting.is_none() => {
                    st.waiting = Some((seg.seq, seg.ts_ms));
                    st.shown = Some(Shown::of(seg.text, seg.excerpt_chars));
                }
                Speaker::Agent => {
                    if let Some((seq, t)) = st.waiting.take() {
                        let shown = st.shown.take();
                        let took = seg.ts_ms.saturating_sub(t);
                        if took > limit {
                            report(
                                r,
                                seq,
                                seg.ts_ms,
                                seq.to_string(),
                                format!(
                                    "customer message at segment {seq} answered after {} s (limit {} s)",
                                    took / 1000,
                                    self.seconds
                                ),
                                shown,
                                sink,
                            );
                        }
                    }
                }
                _ => {}
            },
            Measure::Silence => {
                if let Some(prev) = st.last_ts {
                    let gap = seg.ts_ms.saturating_sub(prev);
                    if gap > limit {
                        report(
                            r,
                            seg.seq,
                            seg.ts_ms,
                            seg.seq.to_string(),
                            format!(
                                "{} s of silence before this segment (limit {} s)",
                                gap / 1000,
                                self.seconds
                            ),
                            None,
                            sink,
                        );
                    }
                }
                st.last_ts = Some(st.last_ts.map_or(seg.ts_ms, |p| p.max(seg.ts_ms)));
            }
        }
    }

    fn on_clock(&self, r: RuleRef<'_>, st: &mut State, now_ts: u64, sink: &mut Sink<'_>) {
        if let Some(d) = deadline(self, st)
            && now_ts > d
        {
            expire(self, r, st, d, sink);
        }
    }

    fn deadline(&self, st: &State) -> Option<u64> {
        deadline(self, st)
    }

    fn on_close(&self, r: RuleRef<'_>, st: &mut State, close: &Close, sink: &mut Sink<'_>) {
        match deadline(self, st) {
            Some(d) if close.ts_ms > d => expire(self, r, st, d, sink),
            Some(_) => {
                sink.explain(r, || {
                    "not judged: the conversation ended before the limit".into()
                });
                st.waiting = None;
                st.shown = None;
            }
            None => {}
        }
    }
}

impl super::KindState for State {}
