//! A seeded smoke run of what the cargo-fuzz targets (`fuzz/`) check, in
//! the normal test suite: arbitrary bytes and JSON-ish lines through input
//! decoding, normalisation and the engine with the default lexicon, with
//! the invariants of `zhijian_tools::invariants` (no panic, spans within the text,
//! `matched` equal to the span, unique event ids, one summary per
//! conversation). Deterministic: the same cases every run
//! (`PROPTEST_CASES` raises the count).

use crate::support::default_scanner;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use zhijian_tools::invariants::{check_decode, check_normalize, check_scan, engine_for_checks};

/// Pieces of text that reach the rules: default-lexicon phrases and
/// exceptions, their traditional and spaced forms, fillers, punctuation,
/// invisible and odd characters, escapes that JSON must decode.
const WORDS: &[&str] = &[
    "你问我我问谁",
    "你問我，我 問誰",
    "急什么",
    "不知道",
    "不清楚",
    "我要下班了",
    "您好",
    "很高兴为您服务",
    "还有什么可以帮您",
    "再见",
    "啊",
    "喂，",
    "呃",
    "哎呀",
    "好的啊",
    "，",
    "。",
    "？",
    " ",
    "\u{3000}",
    "\u{200B}",
    "\u{FEFF}",
    "\u{034F}",
    "😊",
    "Ａｂ１",
    "\\n",
    "\\u554a",
    "\\ud83d\\ude0a",
    "\\\"",
    "\\\\",
];

fn text() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(WORDS), 0..8).prop_map(|v| v.concat())
}

/// A JSON value of any type, often one a field does not accept.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => text().prop_map(|t| format!("\"{t}\"")),
        2 => (0u64..6).prop_map(|n| n.to_string()),
        1 => any::<i64>().prop_map(|n| n.to_string()),
        1 => Just("18446744073709551616".to_string()),
        1 => Just("1.5".to_string()),
        1 => Just("null".to_string()),
        1 => any::<bool>().prop_map(|b| b.to_string()),
        1 => Just("[]".to_string()),
        1 => Just("{\"a\":[1,{}]}".to_string()),
        2 => prop::sample::select(&["\"agent\"", "\"customer\"", "\"system\"", "\"end\"", "\"segment\"", "\"call\"", "\"chat\""][..]).prop_map(str::to_string),
    ]
}

const FIELDS: &[&str] = &[
    "conversation_id",
    "type",
    "seq",
    "speaker",
    "text",
    "tenant",
    "channel",
    "agent_id",
    "ts_ms",
    "final",
    "x",
];

/// A plausible event: a few conversations, small seqs, mostly agent
/// segments with lexicon text, sometimes `end`, provisional or odd fields.
fn event() -> impl Strategy<Value = String> {
    (
        prop::sample::select(&["c1", "c2", "c3"][..]),
        prop::sample::select(&["", ",\"tenant\":\"acme\"", ",\"tenant\":\"t.x\""][..]),
        0u64..6,
        prop::sample::select(&["agent", "agent", "customer", "system"][..]),
        text(),
        0u8..10,
    )
        .prop_map(|(conv, tenant, seq, speaker, text, kind)| match kind {
            0 => format!(r#"{{"conversation_id":"{conv}"{tenant},"type":"end"}}"#),
            1 => format!(
                r#"{{"conversation_id":"{conv}"{tenant},"seq":{seq},"speaker":"{speaker}","text":"{text}","final":false}}"#
            ),
            2 => format!(
                r#"{{"conversation_id":"{conv}"{tenant},"seq":{seq},"speaker":"{speaker}","text":"{text}","ts_ms":{}}}"#,
                seq * 1000
            ),
            _ => format!(
                r#"{{"conversation_id":"{conv}"{tenant},"seq":{seq},"speaker":"{speaker}","text":"{text}"}}"#
            ),
        })
}

/// An event's values as an array in the order of the wire struct's fields
/// (conversation_id, type, seq, speaker, text, …): what serde would decode
/// positionally if arrays were accepted.
fn positional() -> impl Strategy<Value = String> {
    (
        prop::sample::select(&["\"c1\"", "\"c2\""][..]),
        prop::sample::select(&["null", "\"segment\""][..]),
        0u64..6,
        prop::sample::select(&["\"agent\"", "\"customer\""][..]),
        text(),
    )
        .prop_map(|(c, t, seq, sp, text)| format!(r#"[{c},{t},{seq},{sp},"{text}"]"#))
}

/// An object of random fields and values, an array of values, or an event
/// cut short, duplicated fields and all.
fn jsonish() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => event(),
        1 => positional(),
        2 => prop::collection::vec((prop::sample::select(FIELDS), value()), 0..8).prop_map(|kv| {
            let body: Vec<String> = kv.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
            format!("{{{}}}", body.join(","))
        }),
        1 => prop::collection::vec(value(), 0..6).prop_map(|v| format!("[{}]", v.join(","))),
        1 => value(),
        1 => (event(), any::<prop::sample::Index>()).prop_map(|(e, at)| {
            let cut = at.index(e.len() + 1);
            String::from_utf8_lossy(&e.as_bytes()[..cut]).into_owned()
        }),
    ]
}

fn runner() -> TestRunner {
    // A fixed seed: the same cases on every run and machine.
    TestRunner::new_with_rng(
        Config {
            cases: Config::default().cases.max(256),
            failure_persistence: None,
            ..Config::default()
        },
        proptest::test_runner::TestRng::deterministic_rng(
            proptest::test_runner::RngAlgorithm::ChaCha,
        ),
    )
}

#[test]
fn arbitrary_bytes_never_panic_decoding_or_judging() {
    let scanner = default_scanner();
    let lines = prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 0..8);
    runner()
        .run(&lines, |lines| {
            let mut engine = engine_for_checks(scanner.clone());
            check_scan(&mut engine, lines.iter().map(Vec::as_slice));
            for l in &lines {
                check_normalize(&String::from_utf8_lossy(l));
            }
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn jsonish_lines_judged_with_the_default_lexicon_keep_the_invariants() {
    let scanner = default_scanner();
    let totals = std::cell::Cell::new((0, 0, 0));
    runner()
        .run(&prop::collection::vec(jsonish(), 1..24), |lines| {
            let mut engine = engine_for_checks(scanner.clone());
            let c = check_scan(&mut engine, lines.iter().map(|l| l.as_bytes()));
            let (a, v, s) = totals.get();
            totals.set((a + c.accepted, v + c.violations, s + c.summaries));
            for l in &lines {
                check_normalize(l);
                check_decode(l.as_bytes());
            }
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
    // The generator reaches the engine's interesting paths, not only the
    // decoder's rejections.
    let (accepted, violations, summaries) = totals.get();
    eprintln!(
        "fuzz smoke: {} cases, {accepted} lines accepted, {violations} violations, {summaries} summaries",
        runner().config().cases
    );
    assert!(
        accepted > 500 && violations > 200 && summaries > 100,
        "generator too weak: {accepted} accepted, {violations} violations, {summaries} summaries"
    );
}

#[test]
fn normalisation_of_arbitrary_text_keeps_offsets() {
    runner()
        .run(&any::<String>(), |s| {
            check_normalize(&s);
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
    runner()
        .run(&text(), |s| {
            check_normalize(&s);
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
}
