//! `zhijian lexicon audit INPUT`: what the rules find and what they keep
//! quiet on real traffic — the most frequent kept and dropped hits per rule
//! with an example each, and, given reviewer labels (`--labels`, the format
//! of `zhijian lexicon eval`), the phrases whose hits are mostly false alarms
//! with the exception that would silence them.

use crate::eval::Labels;
use crate::event::{InputKind, decode_str};
use crate::matcher::{Scanner, Scratch};
use std::collections::HashMap;
use std::fmt::Write as _;

/// One `(rule, what)` line of the audit.
#[derive(Debug, Default, Clone)]
struct Tally {
    count: usize,
    example: String,
    /// Hits on labelled segments: the reviewer expected the rule's
    /// category / did not.
    confirmed: usize,
    false_alarms: usize,
    /// Normalised contexts of the false alarms (a character either side).
    contexts: HashMap<String, usize>,
}

/// Runs the base lexicon of `scanner` over every final segment of the JSONL
/// `input` and reports; `top` lines per table.
pub(crate) fn audit(scanner: &Scanner, input: &str, labels: Option<&Labels>, top: usize) -> String {
    let mut kept: HashMap<(String, String), Tally> = HashMap::new();
    let mut dropped: HashMap<(String, &'static str, String), Tally> = HashMap::new();
    let mut scratch = Scratch::default();
    let mut segments = 0usize;
    for line in input.lines() {
        let Ok(i) = decode_str(line) else {
            continue;
        };
        let InputKind::Segment(s) = &i.kind else {
            continue;
        };
        if !s.is_final {
            continue;
        }
        segments += 1;
        let text = s.text.as_ref();
        let suppressed = scanner.scan_explained(text, s.speaker, &mut scratch);
        let norm = &scratch.norm.text;
        let expected = labels.and_then(|l| l.segment(&i.tenant, &i.conversation_id, s.seq));
        for h in &scratch.hits {
            let rule = scanner.hit_rule(h);
            let matched = norm[h.norm.0..h.norm.1].to_string();
            let t = kept.entry((rule.id.clone(), matched)).or_default();
            t.count += 1;
            if t.example.is_empty() {
                t.example = crate::console::mask::mask(text).into_owned();
            }
            // Only a phrase rule's hit is a violation; the phrases of a
            // required or response rule satisfy or trigger it.
            if let Some(expected) = expected.filter(|_| rule.kind() == "phrase") {
                if expected.contains(scanner.category_id(rule)) {
                    t.confirmed += 1;
                } else {
                    t.false_alarms += 1;
                    let from = norm[..h.norm.0].char_indices().last().map_or(0, |(i, _)| i);
                    let to = norm[h.norm.1..]
                        .char_indices()
                        .nth(1)
                        .map_or(norm.len(), |(i, _)| h.norm.1 + i);
                    *t.contexts.entry(norm[from..to].to_string()).or_default() += 1;
                }
            }
        }
        for x in &suppressed {
            let rule = scanner.rule(scanner.group_rule(x.group));
            let matched = norm[x.norm.0..x.norm.1].to_string();
            let t = dropped
                .entry((rule.id.clone(), x.why.as_str(), matched))
                .or_default();
            t.count += 1;
            if t.example.is_empty() {
                t.example = crate::console::mask::mask(text).into_owned();
            }
        }
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "lexicon {}; {segments} segments\n\nKEPT (found and reported), most frequent first:",
        scanner.version()
    );
    let mut k: Vec<_> = kept.iter().collect();
    k.sort_by(|a, b| b.1.count.cmp(&a.1.count).then(a.0.cmp(b.0)));
    for ((rule, m), t) in k.iter().take(top) {
        let judged = if labels.is_some() && t.confirmed + t.false_alarms > 0 {
            format!(
                " [labelled: {} confirmed, {} false alarms]",
                t.confirmed, t.false_alarms
            )
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "  {:>5}  {rule:<28} {m}{judged}  e.g. {}",
            t.count, t.example
        );
    }
    let _ = writeln!(out, "\nDROPPED (found, then dropped by a rule's filter):");
    let mut d: Vec<_> = dropped.iter().collect();
    d.sort_by(|a, b| b.1.count.cmp(&a.1.count).then(a.0.cmp(b.0)));
    for ((rule, why, m), t) in d.iter().take(top) {
        let _ = writeln!(
            out,
            "  {:>5}  {rule:<28} {m} ({why})  e.g. {}",
            t.count, t.example
        );
    }
    if labels.is_some() {
        let _ = writeln!(
            out,
            "\nSUGGESTED EXCEPTIONS (phrases whose labelled hits are mostly false alarms):"
        );
        let mut any = false;
        for ((rule, m), t) in k.iter() {
            if t.false_alarms >= 2 && t.false_alarms > t.confirmed {
                any = true;
                let mut ctx: Vec<_> = t.contexts.iter().collect();
                ctx.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
                let shown: Vec<String> = ctx
                    .iter()
                    .take(3)
                    .map(|(c, n)| format!("\"{c}\" ({n})"))
                    .collect();
                let _ = writeln!(
                    out,
                    "  {rule}: {m} — {} false alarms, {} confirmed; exceptions to consider: {}",
                    t.false_alarms,
                    t.confirmed,
                    shown.join(", ")
                );
            }
        }
        if !any {
            let _ = writeln!(out, "  none");
        }
    }
    out
}
