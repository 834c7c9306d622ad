//! `zhijian diff --old DIR --new DIR INPUT`: what a lexicon change does to
//! real conversations before it goes live.
//!
//! Both lexicons judge the same JSONL input (one pass, two engines, the
//! offline clock of `zhijian scan`). Violations are compared by event id,
//! which depends on the conversation, the segment, the rule and the span,
//! never on the lexicon version: an id only one side has is a violation the
//! change adds or removes. The report gives, per rule and category, the
//! violations added and removed with example utterances (digits masked as
//! in the console), alerts per 1,000 conversations, and the change in the
//! score distribution; as text, JSON, or a self-contained HTML page.

use crate::engine::{Engine, EngineConfig};
use crate::event::{Event, Violation};
use crate::matcher::Scanners;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::Arc;

/// Examples kept per rule and direction.
const EXAMPLES: usize = 3;

/// One side's result.
#[derive(Debug, Default, Serialize)]
pub(crate) struct Side {
    pub version: String,
    pub violations: usize,
    /// Violations per 1,000 conversations, by category.
    pub per_1000_by_category: BTreeMap<String, f64>,
    pub mean_score: f64,
    /// Conversations per score band: 100, [95, 100), [90, 95), < 90.
    pub score_bands: [usize; 4],
}

/// Changes of one rule.
#[derive(Debug, Default, Serialize)]
pub(crate) struct RuleChange {
    pub category: String,
    pub added: usize,
    pub removed: usize,
    pub added_examples: Vec<String>,
    pub removed_examples: Vec<String>,
}

/// The whole comparison.
#[derive(Debug, Default, Serialize)]
pub(crate) struct Report {
    pub conversations: usize,
    pub lines: usize,
    pub bad_lines: usize,
    pub old: Side,
    pub new: Side,
    /// Conversations whose score changed.
    pub scores_changed: usize,
    pub rules: BTreeMap<String, RuleChange>,
}

fn band(score: f64) -> usize {
    if score >= 100.0 {
        0
    } else if score >= 95.0 {
        1
    } else if score >= 90.0 {
        2
    } else {
        3
    }
}

/// What the example shows of a violation: its rule's words or note, in the
/// segment's text, digits masked.
fn example(v: &Violation) -> String {
    let what = match (&v.matched, &v.note) {
        (Some(m), _) => format!("【{}】", crate::console::mask::mask(m)),
        (None, Some(n)) => format!("({})", crate::console::mask::mask(n)),
        (None, None) => String::new(),
    };
    let text: String = v.text.chars().take(80).collect();
    format!(
        "{} seq {}: {what} {}",
        v.conversation_id,
        v.seq,
        crate::console::mask::mask(&text)
    )
}

/// Judges `input` with both lexicons and compares.
pub(crate) fn compare(old: Arc<Scanners>, new: Arc<Scanners>, input: &str) -> Report {
    let mut report = Report::default();
    report.old.version = old.base().version().to_string();
    report.new.version = new.base().version().to_string();
    let judge = |s: Arc<Scanners>| {
        crate::scan::judge_text(
            &mut Engine::with_scanners(s, EngineConfig::default()),
            input,
        )
    };
    let (old_events, lines, bad_lines) = judge(old);
    let (new_events, _, _) = judge(new);
    report.lines = lines;
    report.bad_lines = bad_lines;
    let (old_ids, old_scores) = index(&old_events, &mut report.old);
    let (new_ids, new_scores) = index(&new_events, &mut report.new);
    report.conversations = new_scores.len().max(old_scores.len());
    report.scores_changed = new_scores
        .iter()
        .filter(|(k, s)| old_scores.get(*k).is_none_or(|o| (*o - **s).abs() > 1e-9))
        .count();
    let mut added: Vec<&&Violation> = new_ids
        .iter()
        .filter(|(id, _)| !old_ids.contains_key(*id))
        .map(|(_, v)| v)
        .collect();
    let mut removed: Vec<&&Violation> = old_ids
        .iter()
        .filter(|(id, _)| !new_ids.contains_key(*id))
        .map(|(_, v)| v)
        .collect();
    // Deterministic examples: in conversation and segment order.
    let order = |v: &&&Violation| (v.conversation_id.clone(), v.seq, v.id.clone());
    added.sort_by_key(order);
    removed.sort_by_key(order);
    for (list, is_added) in [(added, true), (removed, false)] {
        for v in list {
            let r = report.rules.entry(v.rule_id.clone()).or_default();
            r.category = v.category.clone();
            let (n, examples) = if is_added {
                (&mut r.added, &mut r.added_examples)
            } else {
                (&mut r.removed, &mut r.removed_examples)
            };
            *n += 1;
            if examples.len() < EXAMPLES {
                examples.push(example(v));
            }
        }
    }
    report
}

/// Violations by id and scores by conversation of one side; fills in the
/// side's totals.
type Indexed<'a> = (
    HashMap<&'a str, &'a Violation>,
    HashMap<(&'a str, &'a str), f64>,
);

fn index<'a>(events: &'a [Event], side: &mut Side) -> Indexed<'a> {
    let mut by_id: HashMap<&str, &Violation> = HashMap::new();
    let mut scores: HashMap<(&str, &str), f64> = HashMap::new();
    let mut by_category: BTreeMap<String, usize> = BTreeMap::new();
    for e in events {
        match e {
            Event::Violation(v) => {
                by_id.insert(&v.id, v);
                *by_category.entry(v.category.clone()).or_default() += 1;
            }
            Event::Summary(s) => {
                scores.insert((&s.tenant, &s.conversation_id), s.score);
            }
        }
    }
    side.violations = by_id.len();
    let n = scores.len().max(1) as f64;
    side.per_1000_by_category = by_category
        .into_iter()
        .map(|(c, k)| (c, (k as f64 * 1000.0 / n * 10.0).round() / 10.0))
        .collect();
    side.mean_score = (scores.values().sum::<f64>() / n * 100.0).round() / 100.0;
    for s in scores.values() {
        side.score_bands[band(*s)] += 1;
    }
    (by_id, scores)
}

const BANDS: [&str; 4] = ["100", "95–99.9", "90–94.9", "< 90"];

impl Report {
    /// Every category either side has alerts of.
    fn categories(&self) -> std::collections::BTreeSet<&String> {
        self.old
            .per_1000_by_category
            .keys()
            .chain(self.new.per_1000_by_category.keys())
            .collect()
    }

    /// For people, in a terminal.
    pub(crate) fn text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "old {} → new {}: {} conversations ({} lines, {} bad)",
            self.old.version, self.new.version, self.conversations, self.lines, self.bad_lines
        );
        let _ = writeln!(
            s,
            "violations {} → {}; mean score {} → {}; {} conversations change score",
            self.old.violations,
            self.new.violations,
            self.old.mean_score,
            self.new.mean_score,
            self.scores_changed
        );
        let _ = writeln!(s, "\nscore band      old     new");
        for (i, b) in BANDS.iter().enumerate() {
            let _ = writeln!(
                s,
                "  {b:<10} {:>7} {:>7}",
                self.old.score_bands[i], self.new.score_bands[i]
            );
        }
        let _ = writeln!(s, "\nalerts per 1,000 conversations   old     new");
        let cats = self.categories();
        for c in cats {
            let o = self.old.per_1000_by_category.get(c).copied().unwrap_or(0.0);
            let n = self.new.per_1000_by_category.get(c).copied().unwrap_or(0.0);
            let _ = writeln!(s, "  {c:<28} {o:>7} {n:>7}");
        }
        if self.rules.is_empty() {
            let _ = writeln!(s, "\nno violation added or removed");
        }
        for (rule, r) in &self.rules {
            let _ = writeln!(
                s,
                "\n{rule} ({}): +{} added, -{} removed",
                r.category, r.added, r.removed
            );
            for e in &r.added_examples {
                let _ = writeln!(s, "  + {e}");
            }
            for e in &r.removed_examples {
                let _ = writeln!(s, "  - {e}");
            }
        }
        s
    }

    /// A self-contained page (no scripts, no external assets); every text
    /// from the input is escaped.
    pub(crate) fn html(&self) -> String {
        let e = escape;
        let mut s = String::from(
            "<!doctype html><html lang=\"zh-CN\"><head><meta charset=\"utf-8\">\
             <title>zhijian lexicon diff</title><style>\
             body{font-family:sans-serif;margin:2em;max-width:70em}\
             table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2em .6em;text-align:right}\
             td.l,th.l{text-align:left}.add{color:#a40000}.rem{color:#006400}\
             li{font-family:monospace;white-space:pre-wrap}</style></head><body>",
        );
        let _ = write!(
            s,
            "<h1>Lexicon diff</h1><p>old <code>{}</code> → new <code>{}</code>: {} conversations \
             ({} lines, {} bad). Violations {} → {}; mean score {} → {}; {} conversations change score.</p>",
            e(&self.old.version),
            e(&self.new.version),
            self.conversations,
            self.lines,
            self.bad_lines,
            self.old.violations,
            self.new.violations,
            self.old.mean_score,
            self.new.mean_score,
            self.scores_changed
        );
        s.push_str(
            "<h2>Score bands</h2><table><tr><th class=l>band</th><th>old</th><th>new</th></tr>",
        );
        for (i, b) in BANDS.iter().enumerate() {
            let _ = write!(
                s,
                "<tr><td class=l>{b}</td><td>{}</td><td>{}</td></tr>",
                self.old.score_bands[i], self.new.score_bands[i]
            );
        }
        s.push_str("</table><h2>Alerts per 1,000 conversations</h2><table><tr><th class=l>category</th><th>old</th><th>new</th></tr>");
        let cats = self.categories();
        for c in cats {
            let o = self.old.per_1000_by_category.get(c).copied().unwrap_or(0.0);
            let n = self.new.per_1000_by_category.get(c).copied().unwrap_or(0.0);
            let _ = write!(
                s,
                "<tr><td class=l>{}</td><td>{o}</td><td>{n}</td></tr>",
                e(c)
            );
        }
        s.push_str("</table><h2>Rules</h2>");
        if self.rules.is_empty() {
            s.push_str("<p>No violation added or removed.</p>");
        }
        for (rule, r) in &self.rules {
            let _ = write!(
                s,
                "<h3>{} ({})</h3><p><span class=add>+{} added</span>, <span class=rem>−{} removed</span></p><ul>",
                e(rule),
                e(&r.category),
                r.added,
                r.removed
            );
            for x in &r.added_examples {
                let _ = write!(s, "<li class=add>+ {}</li>", e(x));
            }
            for x in &r.removed_examples {
                let _ = write!(s, "<li class=rem>− {}</li>", e(x));
            }
            s.push_str("</ul>");
        }
        s.push_str("</body></html>\n");
        s
    }
}

/// HTML text escape.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn escape_covers_markup() {
        assert_eq!(
            super::escape("<b onclick='x'>&\""),
            "&lt;b onclick=&#39;x&#39;&gt;&amp;&quot;"
        );
    }
}
