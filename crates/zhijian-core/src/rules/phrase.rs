//! `phrase`: every hit of one of the rule's phrases is a violation (服务忌语,
//! 语气词, a customer's complaint threat). Repeated hits in one segment are
//! one violation with a count.
//!
//! ```toml
//! [[rule]]
//! id = "forbidden.shirking"
//! kind = "phrase"            # the default
//! category = "forbidden"
//! severity = "high"
//! deduct = 1
//! section = "service_language"
//! phrases = ["不归我管", "找别人去"]
//! exceptions = []            # occurrences inside these do not count
//! boundary = "none"          # or "word": not inside a longer word (jieba)
//! position = "any"          # or "clause_start": interjections only
//! ```

use super::{Boundary, Found, PhraseList, Position, RuleRef, Seg, Sink};
use crate::event::MAX_SPANS;
use crate::fields::Fields;

#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    pub list: PhraseList,
}

/// The kind keeps no per-conversation state.
pub type State = super::NoState;

impl super::Kind for Spec {
    const NAME: &'static str = "phrase";
    const STATEFUL: bool = false;
    type State = State;

    fn parse(f: &mut Fields<'_>) -> Option<Spec> {
        PhraseList::parse(f, Boundary::None, Position::Any).map(|list| Spec { list })
    }

    fn describe(&self) -> String {
        format!(
            "{} phrase(s): {}",
            self.list.phrases.len(),
            self.list.sample(4)
        )
    }

    fn phrase_lists(&self) -> Vec<&PhraseList> {
        vec![&self.list]
    }

    fn on_hit(&self, r: RuleRef<'_>, seg: &Seg<'_>, sink: &mut Sink<'_>) {
        let mut spans = Vec::new();
        let mut count = 0u32;
        for h in r.hits(seg, 0) {
            count = count.saturating_add(1);
            if spans.len() < MAX_SPANS {
                spans.push(h.norm);
            }
        }
        if count > 0 {
            sink.explain(r, || {
                let shown: Vec<&str> = spans.iter().map(|&(s, e)| &seg.norm.text[s..e]).collect();
                format!("hit {count} time(s): {}", shown.join("、"))
            });
            sink.found.push(Found::Spans {
                rule: r.ix,
                spans,
                count,
            });
        }
    }
}
