//! `repetition`: the same speaker (default: the agent) sends the same or
//! nearly the same text `times` times in one conversation (a canned answer
//! pasted again and again). "Nearly the same" means equal after
//! normalisation (case, width, punctuation, spaces, traditional forms) and
//! with digits removed (order numbers, times). Texts shorter than
//! `min_chars` (after normalisation) are not compared: 好的 and 嗯嗯 repeat
//! by nature.
//!
//! ```toml
//! [[rule]]
//! id = "canned.repeated"
//! kind = "repetition"
//! category = "repetition"
//! severity = "medium"
//! times = 3
//! min_chars = 8
//! ```
//!
//! One violation per text, at the segment where it reaches `times`. The
//! state remembers the last [`REMEMBERED`] distinct texts (as 64-bit
//! fingerprints), so memory per conversation is bounded.

use super::{Found, RuleRef, Seg, Sink};
use crate::fields::Fields;
use serde::{Deserialize, Serialize};

/// Distinct texts remembered per conversation.
pub(crate) const REMEMBERED: usize = 16;

#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    pub times: u32,
    pub min_chars: usize,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// `(fingerprint, times seen)`, most recent last.
    #[serde(default)]
    pub recent: Vec<(u64, u32)>,
    /// Texts already reported: never again, even once evicted from
    /// `recent` (their event id would repeat).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reported: Vec<u64>,
}

/// FNV-1a over the normalised text without digits, and how many
/// characters that is.
pub fn fingerprint(norm: &str) -> (u64, usize) {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut n = 0usize;
    for c in norm.chars().filter(|c| !c.is_ascii_digit()) {
        n += 1;
        let mut buf = [0u8; 4];
        for &b in c.encode_utf8(&mut buf).as_bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    (h, n)
}

impl super::Kind for Spec {
    const NAME: &'static str = "repetition";
    const STATEFUL: bool = true;
    type State = State;

    fn parse(f: &mut Fields<'_>) -> Option<Spec> {
        let times = f.integer("times", 2..=100);
        if times.is_none() && !f.has("times") {
            f.error("times", "missing field `times` (2 or more)".into());
        }
        let min_chars = f.integer("min_chars", 1..=10_000).unwrap_or(6) as usize;
        Some(Spec {
            times: times? as u32,
            min_chars,
        })
    }

    fn describe(&self) -> String {
        format!(
            "the same text ({}+ characters) at most {} time(s)",
            self.min_chars,
            self.times - 1
        )
    }

    fn on_segment(&self, r: RuleRef<'_>, st: &mut State, seg: &Seg<'_>, sink: &mut Sink<'_>) {
        if !r.speakers.contains(&seg.speaker) {
            return;
        }
        let (fp, chars) = *seg.fingerprint.get_or_init(|| fingerprint(&seg.norm.text));
        if chars < self.min_chars {
            return;
        }
        let seen = match st.recent.iter().position(|(f, _)| *f == fp) {
            Some(i) => {
                let mut e = st.recent.remove(i);
                e.1 = e.1.saturating_add(1);
                st.recent.push(e);
                e.1
            }
            None => {
                if st.recent.len() >= REMEMBERED {
                    st.recent.remove(0);
                }
                st.recent.push((fp, 1));
                1
            }
        };
        if seen == self.times && !st.reported.contains(&fp) {
            st.reported.push(fp);
            let note = format!("the same text sent {seen} times");
            sink.explain(r, || format!("VIOLATED: {note}"));
            sink.found.push(Found::Verdict {
                rule: r.ix,
                seq: seg.seq,
                ts_ms: seg.ts_ms,
                key: format!("{fp:016x}"),
                note,
                text: None,
            });
        } else if seen > 1 {
            sink.explain(r, || format!("seen {seen} time(s) (limit {})", self.times));
        }
    }
}

impl super::KindState for State {}
