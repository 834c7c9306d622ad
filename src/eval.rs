//! `zhijian lexicon eval`: precision and recall of a lexicon against
//! reviewer labels.
//!
//! Labels are JSONL, one object per line, of two kinds:
//!
//! ```text
//! {"conversation_id": "c1", "seq": 4, "categories": ["forbidden"]}
//! {"conversation_id": "c1", "seq": 6, "categories": []}
//! {"conversation_id": "c1", "greeting": true, "closing": null}
//! ```
//!
//! A segment label lists the categories a reviewer expects for that
//! segment (empty: the segment is clean). Only the categories of match
//! rules (phrase, pattern) are compared per segment, and only on labelled
//! segments: the sample decides what is measured. A conversation label
//! says whether the agent greeted and closed properly (`true`), did not
//! (`false`: a violation is expected) or cannot be judged (`null`: the
//! conversation starts mid-way or is cut off); it is compared with the
//! summary's `greeted` and `closed`.
//!
//! Labels hold ids and categories only, never text: the texts shown for
//! misses come from the input at run time.

use crate::engine::Engine;
use crate::event::{Event, InputKind, Speaker, decode_str};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;

/// The categories every labels file measures (docs/labelling.md); others
/// only when a label names them.
const MEASURED: [&str; 4] = ["forbidden", "filler", "pii", "escalation"];

/// One line of a labels file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLabel {
    conversation_id: String,
    #[serde(default)]
    tenant: Option<String>,
    #[serde(default)]
    seq: Option<u64>,
    /// `customer` on a customer segment's label (informative: the
    /// comparison is by segment).
    #[serde(default)]
    #[allow(dead_code)]
    speaker: Option<String>,
    #[serde(default)]
    categories: Option<Vec<String>>,
    #[serde(default, deserialize_with = "present")]
    greeting: Verdict,
    #[serde(default, deserialize_with = "present")]
    closing: Verdict,
}

/// `Some(None)` for an explicit `null`, `None` when the field is absent.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Verdict, D::Error> {
    Option::<bool>::deserialize(d).map(Some)
}

/// A conversation's labelled verdict: absent (`None`), not judgeable
/// (`Some(None)`), or whether the agent did it (`Some(Some(_))`).
type Verdict = Option<Option<bool>>;

/// Parsed labels.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct Labels {
    /// `(tenant, conversation, seq)` → expected categories.
    segments: BTreeMap<(String, String, u64), BTreeSet<String>>,
    /// `(tenant, conversation)` → (greeting, closing) verdicts, each
    /// `None` when not labelled.
    conversations: BTreeMap<(String, String), (Verdict, Verdict)>,
}

impl Labels {
    /// Parses a labels file; errors name the line.
    pub(crate) fn parse(text: &str) -> Result<Labels, String> {
        let mut labels = Labels::default();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let n = i + 1;
            let raw: RawLabel =
                serde_json::from_str(line).map_err(|e| format!("labels line {n}: {e}"))?;
            let tenant = raw.tenant.unwrap_or_else(|| "default".into());
            match (raw.seq, raw.categories) {
                (Some(seq), Some(categories)) => {
                    let key = (tenant, raw.conversation_id, seq);
                    if labels
                        .segments
                        .insert(key, categories.into_iter().collect())
                        .is_some()
                    {
                        return Err(format!("labels line {n}: this segment is labelled twice"));
                    }
                }
                (None, None) => {
                    if raw.greeting.is_none() && raw.closing.is_none() {
                        return Err(format!(
                            "labels line {n}: a conversation label needs greeting or closing"
                        ));
                    }
                    let key = (tenant, raw.conversation_id);
                    if labels
                        .conversations
                        .insert(key, (raw.greeting, raw.closing))
                        .is_some()
                    {
                        return Err(format!(
                            "labels line {n}: this conversation is labelled twice"
                        ));
                    }
                }
                _ => {
                    return Err(format!(
                        "labels line {n}: a segment label needs both seq and categories"
                    ));
                }
            }
        }
        Ok(labels)
    }

    /// The categories a reviewer expects for one segment, when labelled.
    pub(crate) fn segment(
        &self,
        tenant: &str,
        conversation: &str,
        seq: u64,
    ) -> Option<&BTreeSet<String>> {
        self.segments
            .get(&(tenant.to_string(), conversation.to_string(), seq))
    }

    pub(crate) fn segment_count(&self) -> usize {
        self.segments.len()
    }

    pub(crate) fn conversation_count(&self) -> usize {
        self.conversations.len()
    }

    /// Keeps the labels of the conversations `keep` says yes to (a split).
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        self.segments.retain(|(_, c, _), _| keep(c));
        self.conversations.retain(|(_, c), _| keep(c));
    }

    /// Every labelled `(tenant, conversation)`, segment labels included.
    pub(crate) fn conversation_keys(&self) -> BTreeSet<(&str, &str)> {
        self.segments
            .keys()
            .map(|(t, c, _)| (t.as_str(), c.as_str()))
            .chain(
                self.conversations
                    .keys()
                    .map(|(t, c)| (t.as_str(), c.as_str())),
            )
            .collect()
    }

    /// The categories these labels measure: the format's own
    /// ([`MEASURED`]) and any a label names.
    pub(crate) fn measured_categories(&self) -> BTreeSet<&str> {
        MEASURED
            .into_iter()
            .chain(self.segments.values().flatten().map(String::as_str))
            .collect()
    }

    /// Labelled segments: `(tenant, conversation, seq)` → categories.
    pub(crate) fn segments(&self) -> &BTreeMap<(String, String, u64), BTreeSet<String>> {
        &self.segments
    }
}

/// Counts of one category or rule.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tally {
    pub true_pos: usize,
    pub false_pos: usize,
    pub false_neg: usize,
}

impl Tally {
    pub(crate) fn precision(&self) -> Option<f64> {
        let n = self.true_pos + self.false_pos;
        (n > 0).then(|| self.true_pos as f64 / n as f64)
    }

    pub(crate) fn recall(&self) -> Option<f64> {
        let n = self.true_pos + self.false_neg;
        (n > 0).then(|| self.true_pos as f64 / n as f64)
    }
}

/// Agreement of one conversation verdict (greeting or closing).
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct Agreement {
    pub labelled: usize,
    pub agreed: usize,
    /// `(label, verdict)` → conversations.
    pub confusion: BTreeMap<(String, String), usize>,
}

impl Agreement {
    pub(crate) fn rate(&self) -> Option<f64> {
        (self.labelled > 0).then(|| self.agreed as f64 / self.labelled as f64)
    }

    /// Agreement on the conversations the reviewer could judge (`true` or
    /// `false`): in a corpus of excerpts most labels are `null`, and
    /// whether zhijian also declines to judge them is a different question
    /// from whether it judges a greeting right.
    pub(crate) fn judged(&self) -> (usize, usize) {
        self.confusion
            .iter()
            .filter(|((label, _), _)| label != "not judged")
            .fold((0, 0), |(n, agreed), ((label, verdict), k)| {
                (n + k, agreed + if label == verdict { *k } else { 0 })
            })
    }
}

/// One disagreement, for people.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Miss {
    /// "miss" (expected, not found) or "false alarm".
    pub what: &'static str,
    pub category: String,
    pub rule: Option<String>,
    pub conversation_id: String,
    pub seq: Option<u64>,
    pub text: String,
}

/// The result of an evaluation.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct Report {
    pub by_category: BTreeMap<String, Tally>,
    pub by_rule: BTreeMap<String, Tally>,
    pub greeting: Agreement,
    pub closing: Agreement,
    pub misses: Vec<Miss>,
    /// Labelled segments or conversations not found in the input.
    pub not_in_input: usize,
    /// Labelled conversations that are in the input: 0 means the labels
    /// are for another corpus (or lost their source prefix), and every
    /// table is empty for that reason alone.
    pub shared_conversations: usize,
}

/// Runs `engine` over the JSONL `input` (as `zhijian scan` does) and
/// compares the events with `labels`.
pub(crate) fn evaluate(
    engine: &mut Engine,
    input: &str,
    labels: &Labels,
) -> std::io::Result<Report> {
    let (events, _, _) = crate::scan::judge_text(engine, input);
    // The texts, for the list of misses.
    let mut texts: HashMap<(String, String, u64), (Speaker, String)> = HashMap::new();
    for line in input.lines() {
        if let Ok(i) = decode_str(line)
            && let InputKind::Segment(s) = &i.kind
            && s.is_final
        {
            texts.insert(
                (i.tenant.to_string(), i.conversation_id.to_string(), s.seq),
                (s.speaker, s.text.to_string()),
            );
        }
    }
    // Predicted match categories per segment, with the rule of each.
    let mut predicted: HashMap<(String, String, u64), BTreeMap<String, String>> = HashMap::new();
    let mut verdicts: HashMap<(String, String), (Option<bool>, Option<bool>)> = HashMap::new();
    for e in &events {
        match e {
            Event::Violation(v) if !v.spans.is_empty() => {
                let key = (v.tenant.clone(), v.conversation_id.clone(), v.seq);
                let p = predicted.entry(key).or_default();
                p.entry(v.category.clone())
                    .or_insert_with(|| v.rule_id.clone());
                // A folded rule's category was found too.
                for a in &v.also {
                    p.entry(a.category.clone())
                        .or_insert_with(|| a.rule_id.clone());
                }
            }
            Event::Violation(_) => {}
            Event::Summary(s) => {
                verdicts.insert(
                    (s.tenant.clone(), s.conversation_id.clone()),
                    (s.greeted, s.closed),
                );
            }
        }
    }
    let mut report = Report::default();
    let in_input: BTreeSet<(&str, &str)> = texts
        .keys()
        .map(|(t, c, _)| (t.as_str(), c.as_str()))
        .collect();
    report.shared_conversations = labels
        .conversation_keys()
        .iter()
        .filter(|k| in_input.contains(k))
        .count();
    let text_of = |key: &(String, String, u64)| {
        texts
            .get(key)
            .map(|(sp, t)| format!("{}: {t}", sp.as_str()))
            .unwrap_or_default()
    };
    // The categories this file measures: those of the label format from
    // the start, and any other a label names. A category no label names
    // (policy_limit in a file labelled before it existed) was not looked
    // for, so its hits are neither confirmed nor false.
    let measured = labels.measured_categories();
    for (key, want) in &labels.segments {
        if !texts.contains_key(key) {
            report.not_in_input += 1;
            continue;
        }
        let mut got = predicted.get(key).cloned().unwrap_or_default();
        got.retain(|c, _| measured.contains(c.as_str()));
        let categories: BTreeSet<&String> = want.iter().chain(got.keys()).collect();
        for c in categories {
            let tally = report.by_category.entry(c.clone()).or_default();
            let rule = got.get(c);
            match (want.contains(c), rule) {
                (true, Some(r)) => {
                    tally.true_pos += 1;
                    report.by_rule.entry(r.clone()).or_default().true_pos += 1;
                }
                (true, None) => {
                    tally.false_neg += 1;
                    report.misses.push(Miss {
                        what: "miss",
                        category: c.clone(),
                        rule: None,
                        conversation_id: key.1.clone(),
                        seq: Some(key.2),
                        text: text_of(key),
                    });
                }
                (false, Some(r)) => {
                    tally.false_pos += 1;
                    report.by_rule.entry(r.clone()).or_default().false_pos += 1;
                    report.misses.push(Miss {
                        what: "false alarm",
                        category: c.clone(),
                        rule: Some(r.clone()),
                        conversation_id: key.1.clone(),
                        seq: Some(key.2),
                        text: text_of(key),
                    });
                }
                (false, None) => {}
            }
        }
    }
    let show = |v: Option<bool>| match v {
        Some(true) => "yes",
        Some(false) => "no",
        None => "not judged",
    };
    for (key, (greeting, closing)) in &labels.conversations {
        let Some(&(greeted, closed)) = verdicts.get(key) else {
            report.not_in_input += 1;
            continue;
        };
        for (label, verdict, agreement, category) in [
            (greeting, greeted, &mut report.greeting, "missing_greeting"),
            (closing, closed, &mut report.closing, "missing_closing"),
        ] {
            let Some(label) = *label else {
                continue;
            };
            agreement.labelled += 1;
            *agreement
                .confusion
                .entry((show(label).to_string(), show(verdict).to_string()))
                .or_default() += 1;
            if label == verdict {
                agreement.agreed += 1;
            } else {
                report.misses.push(Miss {
                    what: if verdict == Some(false) {
                        "false alarm"
                    } else {
                        "miss"
                    },
                    category: category.to_string(),
                    rule: None,
                    conversation_id: key.1.clone(),
                    seq: None,
                    text: format!("reviewer: {}, zhijian: {}", show(label), show(verdict)),
                });
            }
        }
    }
    Ok(report)
}

fn pct(x: Option<f64>) -> String {
    x.map_or("-".into(), |x| format!("{:.1}%", x * 100.0))
}

/// Two reports of the same labels side by side (`lexicon suggest`).
pub(crate) fn before_after(before: &Report, after: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "| measure | before | after |");
    let _ = writeln!(s, "|---|---|---|");
    let categories: BTreeSet<&String> = before
        .by_category
        .keys()
        .chain(after.by_category.keys())
        .collect();
    for c in categories {
        let (b, a) = (
            before.by_category.get(c).copied().unwrap_or_default(),
            after.by_category.get(c).copied().unwrap_or_default(),
        );
        let show = |t: Tally| {
            format!(
                "P {} R {} ({} found, {} false, {} missed)",
                pct(t.precision()),
                pct(t.recall()),
                t.true_pos,
                t.false_pos,
                t.false_neg
            )
        };
        let _ = writeln!(s, "| {c} | {} | {} |", show(b), show(a));
    }
    for (name, b, a) in [
        ("greeting", &before.greeting, &after.greeting),
        ("closing", &before.closing, &after.closing),
    ] {
        let _ = writeln!(
            s,
            "| {name} agreement | {} of {} ({}) | {} of {} ({}) |",
            b.agreed,
            b.labelled,
            pct(b.rate()),
            a.agreed,
            a.labelled,
            pct(a.rate())
        );
    }
    s
}

impl Report {
    /// A warning for people when the labels and the input share no
    /// conversation (`None` when they do, or when there are no labels).
    pub(crate) fn warning(&self, labels: &Labels) -> Option<String> {
        let labelled = labels.conversation_keys().len();
        (labelled > 0 && self.shared_conversations == 0).then(|| {
            format!(
                "warning: the labels and the input share no conversation ({labelled} labelled \
                 conversation(s), none in the input): are they for another corpus, or \
                 without their source prefix (jddc-, mobilecs-…)?"
            )
        })
    }

    /// The tables and the list of disagreements, as text.
    pub(crate) fn render(&self, list_misses: bool) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "| category | labelled positive | found | false alarms | missed | precision | recall |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|---|");
        for (c, t) in &self.by_category {
            let _ = writeln!(
                s,
                "| {c} | {} | {} | {} | {} | {} | {} |",
                t.true_pos + t.false_neg,
                t.true_pos,
                t.false_pos,
                t.false_neg,
                pct(t.precision()),
                pct(t.recall())
            );
        }
        let _ = writeln!(s, "\n| rule | found | false alarms | precision |");
        let _ = writeln!(s, "|---|---|---|---|");
        for (r, t) in &self.by_rule {
            let _ = writeln!(
                s,
                "| {r} | {} | {} | {} |",
                t.true_pos,
                t.false_pos,
                pct(t.precision())
            );
        }
        let _ = writeln!(
            s,
            "\n| verdict | conversations labelled | agreed | agreement | where the reviewer judged |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|");
        for (name, a) in [("greeting", &self.greeting), ("closing", &self.closing)] {
            let (n, agreed) = a.judged();
            let judged = (n > 0).then(|| agreed as f64 / n as f64);
            let _ = writeln!(
                s,
                "| {name} | {} | {} | {} | {agreed} of {n} ({}) |",
                a.labelled,
                a.agreed,
                pct(a.rate()),
                pct(judged)
            );
            for ((label, verdict), n) in &a.confusion {
                if label != verdict {
                    let _ = writeln!(s, "|   reviewer {label}, zhijian {verdict} | {n} | | |");
                }
            }
        }
        if self.not_in_input > 0 {
            let _ = writeln!(
                s,
                "\n{} labelled segments or conversations are not in the input",
                self.not_in_input
            );
        }
        if list_misses && !self.misses.is_empty() {
            let _ = writeln!(s, "\nDisagreements:");
            for m in &self.misses {
                let at = m.seq.map_or(String::new(), |q| format!(" seq {q}"));
                let rule = m
                    .rule
                    .as_deref()
                    .map_or(String::new(), |r| format!(" ({r})"));
                let _ = writeln!(
                    s,
                    "  {:<11} {:<17} {}{at}{rule}: {}",
                    m.what, m.category, m.conversation_id, m.text
                );
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_parse_and_reject_what_they_cannot_mean() {
        let l = Labels::parse(
            "{\"conversation_id\":\"c\",\"seq\":1,\"categories\":[\"forbidden\"]}\n\n\
             {\"conversation_id\":\"c\",\"greeting\":null,\"closing\":true}\n",
        )
        .expect("valid");
        assert_eq!((l.segment_count(), l.conversation_count()), (1, 1));
        assert_eq!(
            l.conversations[&("default".to_string(), "c".to_string())],
            (Some(None), Some(Some(true)))
        );
        for (bad, want) in [
            (
                "{\"conversation_id\":\"c\",\"seq\":1}",
                "needs both seq and categories",
            ),
            ("{\"conversation_id\":\"c\"}", "needs greeting or closing"),
            (
                "{\"conversation_id\":\"c\",\"text\":\"x\"}",
                "unknown field `text`",
            ),
            (
                "{\"conversation_id\":\"c\",\"seq\":1,\"categories\":[]}\n{\"conversation_id\":\"c\",\"seq\":1,\"categories\":[]}",
                "line 2: this segment is labelled twice",
            ),
        ] {
            let e = Labels::parse(bad).expect_err(bad);
            assert!(e.contains(want), "{bad}: {e}");
        }
    }

    #[test]
    fn tally_rates() {
        let t = Tally {
            true_pos: 8,
            false_pos: 2,
            false_neg: 8,
        };
        assert_eq!((t.precision(), t.recall()), (Some(0.8), Some(0.5)));
        assert_eq!(Tally::default().precision(), None);
    }

    #[test]
    fn labels_for_another_corpus_are_warned_about() {
        let scanners = std::sync::Arc::new(
            crate::matcher::Scanners::load(std::path::Path::new(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/lexicons"
            )))
            .expect("default lexicon"),
        );
        let input = "{\"conversation_id\":\"jddc-1\",\"seq\":0,\"speaker\":\"agent\",\"text\":\"您好\"}\n\
                     {\"conversation_id\":\"jddc-1\",\"type\":\"end\",\"seq\":1}\n";
        for (labels, shared, warned) in [
            (
                "{\"conversation_id\":\"jddc-1\",\"seq\":0,\"categories\":[]}",
                1,
                false,
            ),
            // The same id without its source prefix.
            (
                "{\"conversation_id\":\"1\",\"seq\":0,\"categories\":[]}",
                0,
                true,
            ),
            ("", 0, false),
        ] {
            let labels = Labels::parse(labels).expect("labels");
            let mut engine = crate::engine::Engine::with_scanners(
                std::sync::Arc::clone(&scanners),
                crate::engine::EngineConfig::default(),
            );
            let report = evaluate(&mut engine, input, &labels).expect("evaluate");
            assert_eq!(report.shared_conversations, shared, "{labels:?}");
            assert_eq!(report.warning(&labels).is_some(), warned, "{labels:?}");
        }
    }
}
