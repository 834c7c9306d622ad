//! The engine for tests: the fixture lexicon, an engine over it, and JSONL
//! runs.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use zhijian::engine::{Engine, EngineConfig};
use zhijian::event::Event;
use zhijian::lexicon;
use zhijian::matcher::{Scanner, default_segmenter};

pub fn fixtures() -> PathBuf {
    crate::repo().join("tests/fixtures")
}

/// The fixture lexicon, compiled once per test binary.
pub fn test_scanner() -> Arc<Scanner> {
    static S: OnceLock<Arc<Scanner>> = OnceLock::new();
    S.get_or_init(|| Arc::new(compile(&fixtures().join("lexicon"))))
        .clone()
}

/// The shipped default lexicon, compiled once per test binary.
pub fn default_scanner() -> Arc<Scanner> {
    static S: OnceLock<Arc<Scanner>> = OnceLock::new();
    S.get_or_init(|| Arc::new(compile(&crate::repo().join("lexicons"))))
        .clone()
}

pub fn compile(dir: &Path) -> Scanner {
    let lex = lexicon::load_dir(dir).unwrap_or_else(|e| panic!("lexicon {}: {e}", dir.display()));
    Scanner::new(lex, default_segmenter()).expect("compiles")
}

pub fn engine() -> Engine {
    Engine::new(test_scanner(), EngineConfig::default())
}

/// Runs JSONL through `zhijian::scan::scan`; returns (events, stderr).
pub fn scan_jsonl(engine: &mut Engine, input: &str) -> (Vec<Event>, String) {
    let mut out = Vec::new();
    let mut err = Vec::new();
    zhijian::scan::scan(engine, input.as_bytes(), &mut out, &mut err).expect("in-memory I/O");
    let events = String::from_utf8(out)
        .expect("utf-8 output")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad output line {l}: {e}")))
        .collect();
    (events, String::from_utf8(err).expect("utf-8 errors"))
}

/// A segment line.
pub fn seg(conv: &str, seq: u64, speaker: &str, text: &str) -> String {
    serde_json::json!({"conversation_id": conv, "seq": seq, "speaker": speaker, "text": text})
        .to_string()
}

pub fn end(conv: &str) -> String {
    serde_json::json!({"conversation_id": conv, "type": "end"}).to_string()
}

/// `(category, rule_id, matched, seq)` of every violation, in order.
pub fn violations(events: &[Event]) -> Vec<(String, String, Option<String>, u64)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Violation(v) => Some((
                v.category.clone(),
                v.rule_id.clone(),
                v.matched.clone(),
                v.seq,
            )),
            Event::Summary(_) => None,
        })
        .collect()
}

/// Every hit of every violation, in order: `(category, text of the span)`
/// (spans are segment offsets; `text` may be an excerpt from `text_start`).
pub fn hits(events: &[Event]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for e in events {
        if let Event::Violation(v) = e {
            let chars: Vec<char> = v.text.chars().collect();
            for [s, e] in &v.spans {
                let span: String = chars[s - v.text_start..e - v.text_start].iter().collect();
                out.push((v.category.as_str().to_string(), span));
            }
        }
    }
    out
}

/// The violations of one category, in order.
pub fn violations_of<'a>(
    events: &'a [Event],
    category: &str,
) -> Vec<&'a zhijian::event::Violation> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Violation(v) if v.category.as_str() == category => Some(v),
            _ => None,
        })
        .collect()
}

pub fn summaries(events: &[Event]) -> Vec<&zhijian::event::Summary> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Summary(s) => Some(s),
            Event::Violation(_) => None,
        })
        .collect()
}

/// A child process that is killed and reaped when dropped, so a failing
/// test leaves nothing running.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
