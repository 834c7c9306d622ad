//! `response`: a trigger (a speaker saying one of some phrases) expects a
//! response (a speaker saying one of other phrases) within N segments or N
//! seconds; else one violation. 请稍等 answered by 感谢您的耐心等待; a
//! customer's 投诉 answered by the agent's 抱歉/对不起.
//!
//! ```toml
//! [[rule]]
//! id = "hold.thanks"
//! kind = "response"
//! category = "hold_without_thanks"
//! severity = "low"
//! trigger = { speakers = ["agent"], phrases = ["请稍等"] }
//! expect = { speakers = ["agent"], phrases = ["感谢您的耐心等待", "久等了"] }
//! within_segments = 4     # segments of any speaker after the trigger
//! within_seconds = 120    # and/or: by the segments' ts_ms and the clock
//! ```
//!
//! While a trigger waits, further triggers are part of the same wait (one
//! violation per unanswered wait). A segment holding both the trigger and
//! the response answers itself. At close, a trigger still waiting with at
//! least one segment after it is a violation (the conversation went on and
//! ended without the response); one that was the last segment is not.

use super::{Boundary, Close, Found, PhraseList, Position, RuleRef, Seg, Shown, Sink};
use crate::event::Speaker;
use crate::fields::Fields;
use serde::{Deserialize, Serialize};

/// One side of the rule: who says it and what.
#[derive(Debug, Clone, PartialEq)]
pub struct Side {
    pub speakers: Vec<Speaker>,
    pub list: PhraseList,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    pub trigger: Side,
    pub expect: Side,
    pub within_segments: Option<u32>,
    pub within_seconds: Option<u64>,
}

fn side(f: &mut Fields<'_>, key: &str, default_speaker: Speaker) -> Option<Side> {
    let Some(mut t) = f.table(key) else {
        f.error(
            key,
            format!(
                "a response rule needs a `{key}` table: {key} = {{ speakers = [\"agent\"], phrases = [\"…\"] }}"
            ),
        );
        return None;
    };
    let speakers = t
        .speakers("speakers")
        .unwrap_or_else(|| vec![default_speaker]);
    let list = PhraseList::parse(&mut t, Boundary::None, Position::Any);
    t.finish("response");
    Some(Side {
        speakers,
        list: list?,
    })
}

fn speakers(s: &[Speaker]) -> String {
    s.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("/")
}

/// A trigger waiting for its response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Waiting {
    pub seq: u64,
    pub ts_ms: u64,
    /// Segments (any speaker) since the trigger.
    pub after: u32,
    /// The trigger segment's start, shown by the violation.
    #[serde(default)]
    pub shown: Shown,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<Waiting>,
}

pub fn deadline(spec: &Spec, st: &State) -> Option<u64> {
    let w = st.waiting.as_ref()?;
    spec.within_seconds
        .map(|s| w.ts_ms.saturating_add(s * 1000))
}

fn missed(spec: &Spec, r: RuleRef<'_>, w: Waiting, ts_ms: u64, why: &str, sink: &mut Sink<'_>) {
    let note = format!(
        "{} at segment {} not followed by {} {why}",
        spec.trigger.list.sample(2),
        w.seq,
        spec.expect.list.sample(3),
    );
    sink.explain(r, || format!("VIOLATED: {note}"));
    sink.found.push(Found::Verdict {
        rule: r.ix,
        seq: w.seq,
        ts_ms,
        key: w.seq.to_string(),
        note,
        text: Some(w.shown),
    });
}

impl super::Kind for Spec {
    const NAME: &'static str = "response";
    const STATEFUL: bool = true;
    type State = State;

    fn parse(f: &mut Fields<'_>) -> Option<Spec> {
        let trigger = side(f, "trigger", Speaker::Agent);
        let expect = side(f, "expect", Speaker::Agent);
        let within_segments = f.integer("within_segments", 1..=1000).map(|n| n as u32);
        let within_seconds = f.integer("within_seconds", 1..=86_400).map(|n| n as u64);
        if within_segments.is_none() && within_seconds.is_none() && !f.has("within_segments") {
            f.error(
                "",
                "a response rule needs `within_segments = N` or `within_seconds = N`".into(),
            );
            return None;
        }
        Some(Spec {
            trigger: trigger?,
            expect: expect?,
            within_segments,
            within_seconds,
        })
    }

    fn describe(&self) -> String {
        let mut within = Vec::new();
        if let Some(n) = self.within_segments {
            within.push(format!("{n} segment(s)"));
        }
        if let Some(s) = self.within_seconds {
            within.push(format!("{s} s"));
        }
        format!(
            "{} saying {} expects {} saying {} within {}",
            speakers(&self.trigger.speakers),
            self.trigger.list.sample(3),
            speakers(&self.expect.speakers),
            self.expect.list.sample(3),
            within.join(" / ")
        )
    }

    fn phrase_lists(&self) -> Vec<&PhraseList> {
        vec![&self.trigger.list, &self.expect.list]
    }

    fn list_speakers<'a>(&'a self, _rule: &'a [Speaker]) -> Vec<&'a [Speaker]> {
        vec![&self.trigger.speakers, &self.expect.speakers]
    }

    fn takes_speakers(&self) -> bool {
        false
    }

    fn default_speakers(&self) -> Vec<Speaker> {
        let mut v = self.trigger.speakers.clone();
        v.extend(&self.expect.speakers);
        v.sort_by_key(|s| *s as u8);
        v.dedup();
        v
    }

    fn judges_agent(&self, _speakers: &[Speaker]) -> bool {
        self.expect.speakers == [Speaker::Agent]
    }

    fn has_deadline(&self) -> bool {
        self.within_seconds.is_some()
    }

    fn reads_every_segment(&self) -> bool {
        true
    }

    /// It counts every segment after its trigger.
    fn hears_every_speaker(&self) -> bool {
        true
    }

    fn on_segment(&self, r: RuleRef<'_>, st: &mut State, seg: &Seg<'_>, sink: &mut Sink<'_>) {
        let answered = self.expect.speakers.contains(&seg.speaker) && r.hit(seg, 1);
        let triggered = self.trigger.speakers.contains(&seg.speaker) && r.hit(seg, 0);
        if let Some(w) = st.waiting.as_mut() {
            w.after += 1;
            // A response after the time limit does not count.
            let late_s = self
                .within_seconds
                .is_some_and(|s| seg.ts_ms > w.ts_ms.saturating_add(s * 1000));
            if answered && !late_s {
                let seq = w.seq;
                st.waiting = None;
                sink.explain(r, || {
                    format!("satisfied: the trigger at segment {seq} is answered here")
                });
                return;
            }
            let late_n = self.within_segments.is_some_and(|n| w.after >= n);
            if late_s || late_n {
                let why = if late_n {
                    format!("within {} segment(s)", self.within_segments.unwrap_or(0))
                } else {
                    format!("within {} s", self.within_seconds.unwrap_or(0))
                };
                if let Some(w) = st.waiting.take() {
                    missed(self, r, w, seg.ts_ms, &why, sink);
                }
            } else {
                sink.explain(r, || "waiting for the response".into());
                return;
            }
        }
        if triggered && st.waiting.is_none() {
            if answered {
                sink.explain(r, || "triggered and answered in the same segment".into());
                return;
            }
            st.waiting = Some(Waiting {
                seq: seg.seq,
                ts_ms: seg.ts_ms,
                after: 0,
                shown: Shown::of(seg.text, seg.excerpt_chars),
            });
            sink.explain(r, || "triggered: now waiting for the response".into());
        }
    }

    fn on_clock(&self, r: RuleRef<'_>, st: &mut State, now_ts: u64, sink: &mut Sink<'_>) {
        if let Some(d) = deadline(self, st)
            && now_ts > d
            && let Some(w) = st.waiting.take()
        {
            let why = format!("within {} s", self.within_seconds.unwrap_or(0));
            missed(self, r, w, d, &why, sink);
        }
    }

    fn deadline(&self, st: &State) -> Option<u64> {
        deadline(self, st)
    }

    fn on_close(&self, r: RuleRef<'_>, st: &mut State, close: &Close, sink: &mut Sink<'_>) {
        // The time limit passed before the close: missed, whatever followed
        // (the same verdict the clock would have given while nobody spoke).
        if let Some(d) = deadline(self, st)
            && close.ts_ms > d
            && let Some(w) = st.waiting.take()
        {
            let why = format!("within {} s", self.within_seconds.unwrap_or(0));
            missed(self, r, w, d, &why, sink);
            return;
        }
        let Some(w) = st.waiting.take() else {
            return;
        };
        if w.after == 0 {
            sink.explain(r, || {
                "not judged: the trigger was the conversation's last segment".into()
            });
            return;
        }
        missed(
            self,
            r,
            w,
            close.ts_ms,
            "before the conversation ended",
            sink,
        );
    }
}

impl super::KindState for State {
    /// Waiting for no answer, only a segment holding the trigger matters
    /// (`on_segment` does nothing otherwise).
    fn wants_only_its_trigger(&self) -> bool {
        self.waiting.is_none()
    }
}
