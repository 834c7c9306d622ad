//! Lexicon tests (`zhijian lexicon test --suite DIR`), like `promtool test
//! rules`: test files beside the lexicon say, for an utterance or a short
//! conversation, which violations a rule change must keep giving and
//! which it must not give.
//!
//! ```toml
//! # lexicons/tests/forbidden.toml
//! [[case]]
//! name = "没有办法 is a refusal"
//! text = "这个我们也没有办法"             # one agent utterance (speaker = "customer" …)
//! expect = [{ rule = "forbidden.shirking", matched = "没有办法" }]
//!
//! [[case]]
//! name = "a policy explanation is not"
//! text = "系统暂时查询不到物流"
//! expect = []
//!
//! [[case]]
//! name = "请稍等 is thanked"
//! channel = "call"
//! conversation = ["agent:您好，请稍等", "customer:好", "agent:感谢您的耐心等待，再见"]
//! expect = []
//! ```
//!
//! A case with `text` judges one utterance and does not close the
//! conversation (no verdicts at its close); a `conversation` is
//! closed after its last utterance, so every verdict counts. Utterances are
//! `gap` seconds apart (default 5). `expect` is
//! the whole set of violations: each `{ rule, seq?, matched? }` must occur,
//! and nothing else may. `tenant` judges with a tenant overlay.

use crate::engine::{Engine, EngineConfig};
use crate::event::{Channel, Event, Input, InputKind, Segment, Speaker};
use crate::matcher::Scanners;
use serde::Deserialize;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    case: Vec<Case>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    speaker: Option<String>,
    #[serde(default)]
    conversation: Option<Vec<String>>,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    tenant: Option<String>,
    /// Seconds between utterances (default 5): timing rules measure it.
    #[serde(default)]
    gap: Option<u64>,
    expect: Vec<Expect>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    rule: String,
    #[serde(default)]
    seq: Option<u64>,
    #[serde(default)]
    matched: Option<String>,
}

/// The result of a suite.
#[derive(Debug, Default)]
pub struct Outcome {
    pub cases: usize,
    pub failed: usize,
    /// One block per failed case, for people.
    pub report: String,
}

/// `(rule, seq, matched)` of a violation, as the suite compares them.
type Got = (String, u64, Option<String>);

/// Runs every `*.toml` case file of `dir` against `scanners`. Errors (an
/// unreadable or invalid file) name the file.
pub fn run(dir: &Path, scanners: &Arc<Scanners>) -> Result<Outcome, String> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot read test directory {}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    paths.sort();
    if paths.is_empty() {
        return Err(format!("no *.toml test files in {}", dir.display()));
    }
    let mut outcome = Outcome::default();
    for path in paths {
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let file: File = toml::from_str(&text).map_err(|e| {
            let line = e.span().map_or(0, |s| {
                text[..s.start.min(text.len())].matches('\n').count() + 1
            });
            format!("{}:{line}: {}", path.display(), e.message().trim())
        })?;
        for case in &file.case {
            outcome.cases += 1;
            let got = judge(case, scanners)
                .map_err(|e| format!("{}: case {:?}: {e}", path.display(), case.name))?;
            if let Some(diff) = compare(&case.expect, &got) {
                outcome.failed += 1;
                let _ = writeln!(
                    outcome.report,
                    "FAIL {}: {}\n{diff}",
                    path.display(),
                    case.name
                );
            }
        }
    }
    Ok(outcome)
}

fn speaker(name: &str) -> Result<Speaker, String> {
    Speaker::ALL
        .into_iter()
        .find(|s| s.as_str() == name)
        .ok_or_else(|| format!("unknown speaker {name:?} (agent, customer, system)"))
}

/// Plays the case through a fresh engine; returns its violations.
fn judge(case: &Case, scanners: &Arc<Scanners>) -> Result<Vec<Got>, String> {
    let channel = match case.channel.as_deref() {
        None => None,
        Some(name) => Some(
            Channel::from_name(name)
                .ok_or_else(|| format!("unknown channel {name:?} (call, chat, social, email)"))?,
        ),
    };
    let (utterances, close): (Vec<(Speaker, &str)>, bool) = match (&case.text, &case.conversation) {
        (Some(t), None) => {
            let s = speaker(case.speaker.as_deref().unwrap_or("agent"))?;
            (vec![(s, t.as_str())], false)
        }
        (None, Some(c)) => {
            let mut v = Vec::new();
            for line in c {
                let (s, t) = line
                    .split_once(':')
                    .ok_or_else(|| format!("{line:?}: write speaker:text"))?;
                v.push((speaker(s.trim())?, t));
            }
            (v, true)
        }
        _ => return Err("give either text or conversation".into()),
    };
    let tenant = case.tenant.as_deref().unwrap_or("default");
    if case.tenant.is_some() && !scanners.has_tenant(tenant) {
        return Err(format!("tenant {tenant:?} has no overlay under tenants/"));
    }
    let step = case.gap.unwrap_or(5).saturating_mul(1000);
    // The cases are the lead's own text: matches compare as said.
    let mut config = EngineConfig::default();
    config.privacy.raw_events = true;
    let mut engine = Engine::with_scanners(Arc::clone(scanners), config);
    let mut events = Vec::new();
    let input = |seq: usize, kind: InputKind<'static>| Input {
        conversation_id: "case".into(),
        tenant: tenant.to_string().into(),
        channel,
        agent_id: None,
        ts_ms: Some(seq as u64 * step),
        continued: false,
        kind,
    };
    for (seq, (s, t)) in utterances.iter().enumerate() {
        let i = input(
            seq,
            InputKind::Segment(Segment {
                seq: seq as u64,
                speaker: *s,
                text: t.to_string().into(),
                is_final: true,
            }),
        );
        engine.handle(&i, seq as u64 * step, &mut events);
    }
    if close {
        let n = utterances.len();
        engine.handle(&input(n, InputKind::End), n as u64 * step, &mut events);
    }
    Ok(events
        .into_iter()
        .filter_map(|e| match e {
            Event::Violation(v) => Some((v.rule_id, v.seq, v.matched)),
            Event::Summary(_) => None,
        })
        .collect())
}

/// `None` when the violations are exactly the expected ones; else the
/// difference, `-` for expected and missing, `+` for found and unexpected.
fn compare(expect: &[Expect], got: &[Got]) -> Option<String> {
    let mut unmatched: Vec<&Got> = got.iter().collect();
    let mut diff = String::new();
    for e in expect {
        let hit = unmatched.iter().position(|(rule, seq, matched)| {
            *rule == e.rule
                && e.seq.is_none_or(|s| s == *seq)
                && e.matched
                    .as_ref()
                    .is_none_or(|m| matched.as_ref() == Some(m))
        });
        match hit {
            Some(i) => {
                unmatched.remove(i);
            }
            None => {
                let _ = writeln!(
                    diff,
                    "  - {}{}{}",
                    e.rule,
                    e.seq.map_or(String::new(), |s| format!(" at seq {s}")),
                    e.matched
                        .as_ref()
                        .map_or(String::new(), |m| format!(" matching {m:?}"))
                );
            }
        }
    }
    for (rule, seq, matched) in unmatched {
        let _ = writeln!(
            diff,
            "  + {rule} at seq {seq}{}",
            matched
                .as_ref()
                .map_or(String::new(), |m| format!(" matching {m:?}"))
        );
    }
    (!diff.is_empty()).then_some(diff)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(rule: &str, seq: Option<u64>, matched: Option<&str>) -> Expect {
        Expect {
            rule: rule.into(),
            seq,
            matched: matched.map(str::to_string),
        }
    }

    fn g(rule: &str, seq: u64, matched: Option<&str>) -> Got {
        (rule.into(), seq, matched.map(str::to_string))
    }

    #[test]
    fn expectations_are_the_whole_set() {
        let got = [g("a", 0, Some("x")), g("b", 1, None)];
        assert_eq!(
            compare(&[e("a", None, Some("x")), e("b", Some(1), None)], &got),
            None
        );
        assert_eq!(
            compare(&[e("a", None, None)], &got).as_deref(),
            Some("  + b at seq 1\n")
        );
        assert_eq!(
            compare(&[e("a", Some(0), Some("y")), e("b", None, None)], &got).as_deref(),
            Some("  - a at seq 0 matching \"y\"\n  + a at seq 0 matching \"x\"\n")
        );
        assert_eq!(compare(&[], &[]), None);
    }
}
