//! Engine semantics, case by case, on the fixture lexicon.

use crate::support::{end, engine, hits, scan_jsonl, seg, summaries, violations, violations_of};
use zhijian::engine::{Engine, EngineConfig, Outcome};
use zhijian::event::{CloseReason, Event, decode_str};

type V = (String, String, Option<String>, u64);
/// (name, input lines, expected missing_greeting violations, greeted)
type GreetingCase = (&'static str, Vec<String>, Vec<V>, Option<bool>);

fn v(cat: &str, rule: &str, matched: Option<&str>, seq: u64) -> V {
    (cat.into(), rule.into(), matched.map(str::to_string), seq)
}

fn run(lines: &[String]) -> Vec<Event> {
    scan_jsonl(&mut engine(), &lines.join("\n")).0
}

#[test]
fn greeting_windows() {
    let greeting = |seq| v("missing_greeting", "greeting.std", None, seq);
    let cases: Vec<GreetingCase> = vec![
        (
            "greeted_in_first",
            vec![
                seg("c", 0, "agent", "您好"),
                seg("c", 1, "agent", "好的"),
                seg("c", 2, "agent", "再见"),
            ],
            vec![],
            Some(true),
        ),
        (
            "greeted_in_second",
            vec![
                seg("c", 0, "customer", "在吗"),
                seg("c", 1, "agent", "在的"),
                seg("c", 2, "agent", "您好，请讲"),
                seg("c", 3, "agent", "再见"),
            ],
            vec![],
            Some(true),
        ),
        (
            "verdict_at_second_agent_segment",
            vec![
                seg("c", 0, "agent", "在的"),
                seg("c", 1, "customer", "嗯"),
                seg("c", 2, "agent", "说吧"),
                seg("c", 3, "agent", "您好 再见"),
            ],
            vec![greeting(2)],
            Some(false),
        ),
        (
            "agent_spoke_once_verdict_at_close",
            vec![
                seg("c", 0, "customer", "在吗"),
                seg("c", 1, "agent", "在的，再见"),
            ],
            vec![greeting(1)],
            Some(false),
        ),
        (
            "agent_never_spoke",
            vec![
                seg("c", 0, "customer", "在吗"),
                seg("c", 1, "customer", "人呢"),
            ],
            vec![],
            None,
        ),
        (
            "first_seen_midway_after_restart",
            vec![
                seg("c", 7, "agent", "好的"),
                seg("c", 8, "agent", "已处理"),
                seg("c", 9, "agent", "再见"),
            ],
            vec![],
            None,
        ),
        (
            "greeting_in_third_is_too_late",
            vec![
                seg("c", 0, "agent", "嗯"),
                seg("c", 1, "agent", "好"),
                seg("c", 2, "agent", "您好 再见"),
            ],
            vec![greeting(1)],
            Some(false),
        ),
    ];
    for (name, lines, want, greeted) in cases {
        let events = run(&lines);
        let got: Vec<V> = violations(&events)
            .into_iter()
            .filter(|v| v.0 == "missing_greeting")
            .collect();
        assert_eq!(got, want, "case {name}");
        assert_eq!(summaries(&events)[0].greeted, greeted, "case {name}");
    }
}

#[test]
fn closing_windows() {
    let cases: Vec<(&str, Vec<&str>, Option<bool>)> = vec![
        ("closing_last", vec!["您好", "好的", "再见"], Some(true)),
        (
            "closing_then_rating_request",
            vec!["您好", "还有什么可以帮您", "请评价", "谢谢"],
            Some(true),
        ),
        (
            "closing_fourth_from_last",
            vec!["您好", "再见", "a", "b", "c"],
            Some(false),
        ),
        ("no_closing", vec!["您好", "好的"], Some(false)),
    ];
    for (name, agent, closed) in cases {
        let mut lines: Vec<String> = agent
            .iter()
            .enumerate()
            .map(|(i, t)| seg("c", i as u64, "agent", t))
            .collect();
        lines.push(end("c"));
        let events = run(&lines);
        let s = summaries(&events);
        assert_eq!(s[0].closed, closed, "case {name}");
        assert_eq!(s[0].reason, CloseReason::End, "case {name}");
        let missing: Vec<V> = violations(&events)
            .into_iter()
            .filter(|v| v.0 == "missing_closing")
            .collect();
        let want = if closed == Some(false) {
            vec![v(
                "missing_closing",
                "closing.std",
                None,
                agent.len() as u64 - 1,
            )]
        } else {
            vec![]
        };
        assert_eq!(missing, want, "case {name}");
    }
}

#[test]
fn fillers_are_interjections_not_particles() {
    let cases: &[(&str, &str, &[&str])] = &[
        ("standing_alone_twice", "喂？喂？", &["喂", "喂"]),
        ("clause_start", "啊，这个我查一下", &["啊"]),
        ("utterance_start_no_punctuation", "啊这个我查一下", &["啊"]),
        ("sentence_final_particle", "好的啊", &[]),
        ("particle_before_comma", "好的啊，您稍等", &[]),
        ("inside_a_word", "宝宝喂养要注意", &[]),
        ("after_space_asr_pause", "好的 哎 您说", &["哎"]),
        ("repeated_counts_once", "啊啊啊", &["啊"]),
    ];
    for (name, text, want) in cases {
        let events = run(&[seg("c", 0, "agent", text)]);
        let got: Vec<String> = hits(&events)
            .into_iter()
            .filter(|h| h.0 == "filler")
            .map(|h| h.1)
            .collect();
        assert_eq!(got, *want, "case {name}: {text}");
    }
}

#[test]
fn forbidden_hits_exceptions_and_overlaps() {
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "traditional_spaced_punctuated",
            "你問我，我 問誰？",
            &["你問我，我 問誰"],
        ),
        ("full_width_space", "不\u{3000}知道", &["不\u{3000}知道"]),
        ("zero_width_inside", "不\u{200B}知道", &["不\u{200B}知道"]),
        (
            "exception_scripted_closing",
            "暂时不知道您的问题是否已为您解决",
            &[],
        ),
        (
            "exception_does_not_cover_second_hit",
            "暂时不知道您的问题，我也不知道",
            &["不知道"],
        ),
        (
            "longest_of_overlapping_phrases_in_one_rule",
            "急什么，别催我",
            &["急什么，别催我"],
        ),
        (
            "two_separate_hits",
            "急什么？不关我的事",
            &["急什么", "不关我的事"],
        ),
        ("customer_is_not_judged", "", &[]),
    ];
    for (name, text, want) in cases {
        let events = run(&[
            seg("c", 0, "agent", text),
            seg("c", 1, "customer", "你问我我问谁"),
        ]);
        let got: Vec<String> = hits(&events)
            .into_iter()
            .filter(|h| h.0 == "forbidden")
            .map(|h| h.1)
            .collect();
        assert_eq!(got, *want, "case {name}: {text}");
    }
}

#[test]
fn rules_overlapping_the_same_span_are_one_violation() {
    // The forbidden phrase 喂你听不听得到 contains the filler 喂: one span,
    // one violation (the more severe rule), naming the other; one deduction.
    let events = run(&[seg("c", 0, "agent", "喂，你听不听得到")]);
    let got: Vec<(String, Option<String>)> = violations(&events)
        .into_iter()
        .map(|v| (v.0, v.2))
        .collect();
    let want = vec![
        (
            "forbidden".to_string(),
            Some("喂，你听不听得到".to_string()),
        ),
        ("missing_greeting".to_string(), None),
        ("missing_closing".to_string(), None),
    ];
    assert_eq!(got, want);
    let Some(Event::Violation(v)) = events.first() else {
        panic!("{events:?}")
    };
    assert_eq!(
        v.also,
        vec![zhijian::event::Also {
            rule_id: "filler.basic".into(),
            category: "filler".into()
        }]
    );
    let s = &summaries(&events)[0];
    assert_eq!((s.counts.get("forbidden"), s.counts.get("filler")), (1, 0));
    // −1 for the phrase, −0.5 and −0.5 for greeting and closing.
    assert_eq!(s.score, 98.0);
}

#[test]
fn offsets_are_unicode_scalars_into_the_original() {
    let events = run(&[seg("c", 0, "agent", "您好😊！你問我，我 問誰？")]);
    let Event::Violation(v) = &events[0] else {
        panic!("first event is not a violation")
    };
    assert_eq!((v.start, v.end), (Some(4), Some(12)));
    let chars: Vec<char> = v.text.chars().collect();
    let slice: String = chars[4..12].iter().collect();
    assert_eq!(Some(slice), v.matched);
}

#[test]
fn processing_is_idempotent() {
    let lines = vec![
        seg("c", 0, "agent", "您好"),
        seg("c", 1, "agent", "急什么"),
        seg("c", 1, "agent", "急什么"),
        seg("c", 2, "agent", "不知道 再见"),
        seg("c", 1, "agent", "急什么"),
    ];
    let once = run(&lines[..2]
        .iter()
        .chain(&lines[3..4])
        .cloned()
        .collect::<Vec<_>>());
    let with_duplicates = run(&lines);
    assert_eq!(once, with_duplicates);
    assert_eq!(violations(&once).len(), 2);
}

#[test]
fn provisional_segments_change_nothing() {
    let mut e = engine();
    let mut out = Vec::new();
    let provisional =
        r#"{"conversation_id":"c","seq":0,"speaker":"agent","text":"急什么","final":false}"#;
    let input = decode_str(provisional).expect("valid");
    assert_eq!(e.handle(&input, 0, &mut out), Outcome::Provisional);
    assert!(out.is_empty());
    assert_eq!(
        e.open_conversations(),
        0,
        "a provisional segment must not open a conversation"
    );
    let fin = seg("c", 0, "agent", "急什么");
    assert_eq!(
        e.handle(&decode_str(&fin).expect("valid"), 0, &mut out),
        Outcome::Judged
    );
    assert_eq!(violations(&out).len(), 1);
}

#[test]
fn late_events_after_close_are_ignored_until_the_tombstone_expires() {
    let mut e = Engine::new(
        crate::support::test_scanner(),
        EngineConfig {
            tombstone_ttl_ms: 1000,
            ..EngineConfig::default()
        },
    );
    let mut out = Vec::new();
    let s0 = seg("c", 0, "agent", "您好");
    let s1 = seg("c", 1, "agent", "急什么");
    let fin = end("c");
    assert_eq!(
        e.handle(&decode_str(&s0).expect("valid"), 0, &mut out),
        Outcome::Judged
    );
    assert_eq!(
        e.handle(&decode_str(&fin).expect("valid"), 10, &mut out),
        Outcome::Closed
    );
    assert_eq!(
        e.handle(&decode_str(&fin).expect("valid"), 20, &mut out),
        Outcome::Late
    );
    assert_eq!(
        e.handle(&decode_str(&s1).expect("valid"), 30, &mut out),
        Outcome::Late
    );
    assert_eq!(summaries(&out).len(), 1);
    e.close_idle(2000, 60_000, &mut out);
    assert_eq!(
        e.handle(&decode_str(&s1).expect("valid"), 2001, &mut out),
        Outcome::Judged
    );
    let unknown = end("never-seen");
    assert_eq!(
        e.handle(&decode_str(&unknown).expect("valid"), 2002, &mut out),
        Outcome::UnknownEnd
    );
}

#[test]
fn idle_conversations_close_oldest_first_and_free_state() {
    let mut e = engine();
    let mut out = Vec::new();
    for (conv, at) in [("b", 100u64), ("a", 50), ("c", 900)] {
        let s = seg(conv, 0, "agent", "您好");
        e.handle(&decode_str(&s).expect("valid"), at, &mut out);
    }
    assert_eq!(e.open_conversations(), 3);
    let closed = e.close_idle(1000, 500, &mut out);
    assert_eq!(closed, 2);
    let ids: Vec<(&str, CloseReason)> = summaries(&out)
        .iter()
        .map(|s| (s.conversation_id.as_str(), s.reason))
        .collect();
    assert_eq!(
        ids,
        vec![("a", CloseReason::Idle), ("b", CloseReason::Idle)]
    );
    assert_eq!(e.open_conversations(), 1);
}

#[test]
fn score_caps_deductions_per_section() {
    // Six 有本事你去告 at 1.5 points each = 9, capped at the section's 2.
    let text = "有本事你去告！".repeat(6);
    let lines = vec![
        seg("c", 0, "agent", "您好"),
        seg("c", 1, "agent", &text),
        seg("c", 2, "agent", "再见"),
    ];
    let events = run(&lines);
    let s = summaries(&events);
    assert_eq!(s[0].counts.get("forbidden"), 6);
    assert_eq!(s[0].score, 98.0);
    // 40 fillers at 1 point: capped at 30.
    let lines: Vec<String> = (0..40)
        .map(|i| seg("d", i, "agent", "啊，您好，再见"))
        .collect();
    let events = run(&lines);
    assert_eq!(summaries(&events)[0].score, 70.0);
    // Half points.
    let events = run(&[seg("e", 0, "agent", "嗯"), seg("e", 1, "agent", "好")]);
    assert_eq!(summaries(&events)[0].score, 99.0);
}

#[test]
fn ids_are_deterministic_and_distinct() {
    let lines = vec![
        seg("c", 0, "agent", "急什么？急什么"),
        seg("c", 1, "agent", "急什么"),
    ];
    let a = run(&lines);
    let b = run(&lines);
    assert_eq!(a, b);
    let mut ids: Vec<&str> = a.iter().map(Event::id).collect();
    let n = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), n, "ids collide: {a:?}");
    // Another tenant, same conversation id: different ids.
    let other = scan_jsonl(
        &mut engine(),
        &lines.join("\n").replace(
            "\"conversation_id\"",
            "\"tenant\":\"t2\",\"conversation_id\"",
        ),
    )
    .0;
    assert_ne!(a[0].id(), other[0].id());
}

/// A lexicon swap (a reload) applies to the conversations that open after
/// it; one open before is judged to its end by the lexicon it opened with,
/// so its score is one version's and its summary names it (issue 21: a
/// reload or a rolling upgrade mixed two versions in one conversation).
#[test]
fn a_lexicon_swap_judges_open_conversations_to_their_end_with_their_lexicon() {
    let mut e = engine();
    let mut out = Vec::new();
    e.handle(
        &decode_str(&seg("c", 0, "agent", "您好")).expect("valid"),
        0,
        &mut out,
    );
    // The same lexicon with one more rule.
    let fixture = crate::support::fixtures().join("lexicon/lexicon.toml");
    let text = std::fs::read_to_string(&fixture).expect("fixture");
    let extra = "[[rule]]\nid = \"forbidden.extra\"\ncategory = \"forbidden\"\nseverity = \"high\"\ndeduct = 1\nsection = \"lang\"\nphrases = [\"没办法\"]\n";
    let lex = zhijian::lexicon::load_sources(vec![
        (fixture.clone(), text),
        ("extra.toml".into(), extra.to_string()),
    ])
    .expect("valid");
    let swapped = zhijian::matcher::Scanner::new(lex, zhijian::matcher::default_segmenter())
        .expect("compiles");
    let before = crate::support::test_scanner().version().to_string();
    e.set_scanner(std::sync::Arc::new(swapped));
    for (conv, seq) in [("c", 1), ("d", 0)] {
        e.handle(
            &decode_str(&seg(conv, seq, "agent", "您好，没办法")).expect("valid"),
            1,
            &mut out,
        );
    }
    e.close_all(CloseReason::Eof, 2, &mut out);
    let extra_hits: Vec<&str> = violations_of(&out, "forbidden")
        .iter()
        .filter(|v| v.rule_id == "forbidden.extra")
        .map(|v| v.conversation_id.as_str())
        .collect();
    assert_eq!(
        extra_hits,
        ["d"],
        "only the conversation opened after the swap"
    );
    let version = |id: &str| {
        summaries(&out)
            .iter()
            .find(|s| s.conversation_id == id)
            .map(|s| s.lexicon_version.clone())
            .expect("a summary")
    };
    assert_eq!(version("c"), before);
    assert!(version("d").starts_with("t1+") && version("d") != before);
    let c = summaries(&out)
        .into_iter()
        .find(|s| s.conversation_id == "c")
        .expect("c's summary");
    assert_eq!(c.greeted, Some(true), "its greeting state kept");
}

/// Issue 10, item 4: one segment of 急什么 × 5,010 made 5,010 violations,
/// each with the whole segment (a deadlock and 1.4 GB). Now one violation
/// per rule, with the count, the first spans and an excerpt.
#[test]
fn repeated_hits_of_one_rule_are_one_violation_with_a_count() {
    let text = "急什么".repeat(5010);
    let events = run(&[seg("c", 0, "agent", &text)]);
    let vs = violations_of(&events, "forbidden");
    assert_eq!(vs.len(), 1, "{vs:?}");
    let v = vs[0];
    assert_eq!(v.count, 5010);
    assert_eq!(v.spans.len(), zhijian::event::MAX_SPANS);
    assert_eq!(v.spans[0], [0, 3]);
    assert_eq!(v.spans[1], [3, 6]);
    assert_eq!((v.start, v.end), (Some(0), Some(3)));
    assert_eq!(v.matched.as_deref(), Some("急什么"));
    assert_eq!(v.text_chars, 3 * 5010);
    assert_eq!(
        v.text.chars().count(),
        EngineConfig::default().excerpt_chars
    );
    assert_eq!(v.text_start, 0);
    assert!((v.deduct - 5010.0).abs() < 1e-9, "{}", v.deduct);
    let s = &summaries(&events)[0];
    assert_eq!(s.counts.get("forbidden"), 5010);
    // The scorecard caps the section: 30 points.
    assert!((s.score - 70.0).abs() < 1e-9, "{}", s.score);
}

#[test]
fn a_long_segment_carries_an_excerpt_around_its_first_match() {
    let text = format!("{}急什么{}", "好".repeat(1000), "的".repeat(1000));
    let events = run(&[seg("c", 0, "agent", &text)]);
    let v = *violations_of(&events, "forbidden")
        .first()
        .expect("a forbidden violation");
    let limit = EngineConfig::default().excerpt_chars;
    assert_eq!((v.start, v.end), (Some(1000), Some(1003)));
    assert_eq!(v.text_chars, 2003);
    assert_eq!(v.text.chars().count(), limit);
    assert_eq!(v.text_start, 1000 - limit / 4);
    let shown: String = v.text.chars().skip(1000 - v.text_start).take(3).collect();
    assert_eq!(shown, "急什么");
    // The missing-closing verdict at close shows the segment's start only.
    let missing = *violations_of(&events, "missing_closing")
        .first()
        .expect("missing closing");
    assert_eq!(missing.text.chars().count(), limit);
    assert_eq!(missing.text_chars, 2003);
}

#[test]
fn the_open_conversation_limit_closes_the_least_recently_active() {
    let mut e = Engine::new(
        crate::support::test_scanner(),
        EngineConfig {
            max_open: 64,
            ..EngineConfig::default()
        },
    );
    let mut out = Vec::new();
    for i in 0..64u64 {
        let line = seg(&format!("c{i}"), 0, "customer", "你好");
        let input = decode_str(&line).expect("valid");
        e.handle(&input, i, &mut out);
    }
    assert!(out.is_empty());
    assert_eq!(e.open_conversations(), 64);
    // c0 is touched again: c1 is now the least recently active.
    let line = seg("c0", 1, "customer", "在吗");
    e.handle(&decode_str(&line).expect("valid"), 100, &mut out);
    let line = seg("new", 0, "customer", "你好");
    e.handle(&decode_str(&line).expect("valid"), 101, &mut out);
    let closed: Vec<(&str, CloseReason)> = summaries(&out)
        .iter()
        .map(|s| (s.conversation_id.as_str(), s.reason))
        .collect();
    assert_eq!(closed, vec![("c1", CloseReason::Limit)]);
    assert_eq!(e.open_conversations(), 64);
}

#[test]
fn the_segment_limit_closes_a_conversation_and_later_segments_are_late() {
    let mut e = Engine::new(
        crate::support::test_scanner(),
        EngineConfig {
            max_segments: 3,
            ..EngineConfig::default()
        },
    );
    let mut out = Vec::new();
    let mut outcomes = Vec::new();
    for seq in 0..5u64 {
        let line = seg("c", seq, "agent", "急什么");
        outcomes.push(e.handle(&decode_str(&line).expect("valid"), seq, &mut out));
    }
    assert_eq!(
        outcomes,
        vec![
            Outcome::Judged,
            Outcome::Judged,
            Outcome::Judged,
            Outcome::Late,
            Outcome::Late
        ]
    );
    let closed: Vec<CloseReason> = summaries(&out).iter().map(|s| s.reason).collect();
    assert_eq!(closed, vec![CloseReason::Limit]);
    // Late segments are still scanned: five forbidden hits in all.
    let forbidden = violations(&out)
        .iter()
        .filter(|v| v.0 == "forbidden")
        .count();
    assert_eq!(forbidden, 5);
}

#[test]
fn a_hit_padded_with_invisible_characters_carries_a_capped_match() {
    let text = format!("急{}什么", "\u{200B}".repeat(20_000));
    let events = run(&[seg("c", 0, "agent", &text)]);
    let v = *violations_of(&events, "forbidden")
        .first()
        .expect("the padded phrase is caught");
    let limit = EngineConfig::default().excerpt_chars;
    assert_eq!((v.start, v.end), (Some(0), Some(20_003)));
    assert_eq!(v.matched.as_deref().map(|m| m.chars().count()), Some(limit));
    assert!(v.text.chars().count() <= limit);
}

/// `zhijian scan` judges lines where they lie in the reader's buffer and
/// copies only those that cross its end, and judges them on a second
/// thread in batches: the output must not depend on where the buffer ends,
/// and must be what `scan::judge_text` (the same decoder and engine over a
/// string, line by line on one thread) gives, odd lines included, over
/// several batches.
#[test]
fn scan_output_does_not_depend_on_read_buffer_boundaries() {
    use std::io::BufReader;
    use zhijian::event::Event;
    use zhijian_tools::synth::{self, Mix};
    let convs = synth::conversations(7, 600, "buf-", &Mix::default());
    let mut lines = synth::interleaved_jsonl(&convs, "acme", "call");
    let odd = [
        String::new(),
        "   ".to_string(),
        "\u{3000}".to_string(),
        format!("{}\r", seg("odd-1", 1, "agent", "您好，请问有什么可以帮您")),
        format!("\u{3000}{}\u{3000}", seg("odd-1", 2, "agent", "你问我我问谁")),
        r#"{"conversation_id":"odd-2","seq":1,"speaker":"agent","text":"\u4f60\u95ee\u6211\u6211\u95ee\u8c01"}"#.to_string(),
        r#"{"conversation_id":"odd-2","seq":2,"speaker":"agent","text":"x","final":false}"#.to_string(),
        r#"{"conversation_id":"odd-2","seq":3,"seq":4,"speaker":"agent","text":"x"}"#.to_string(),
        r#"{"conversation_id":"odd-2","seq":5,"speaker":"agent","text":"a	b"}"#.to_string(),
        r#"["odd-3",null,0,"agent","你问我我问谁"]"#.to_string(),
        "not json".to_string(),
        end("odd-1"),
    ];
    for (i, l) in odd.iter().enumerate() {
        lines.insert((i * 797) % lines.len(), l.clone());
    }
    let text = lines.join("\n");
    let last = seg("odd-4", 2, "agent", "您好");

    // The same, with an invalid UTF-8 line and a too-long line (both bad:
    // they change nothing else), as bytes.
    let mut bytes = text.clone().into_bytes();
    bytes.extend_from_slice(b"\n{\"conversation_id\":\"\xff\"}\n");
    bytes.extend_from_slice(seg("odd-4", 1, "agent", &"长".repeat(2000)).as_bytes());
    bytes.extend_from_slice(b"\n");
    bytes.extend_from_slice(last.as_bytes());
    let (expected, lines_seen, bad) =
        zhijian::scan::judge_text(&mut engine(), &format!("{text}\n{last}"));
    assert!(
        bad >= 4 && lines_seen > 400,
        "{lines_seen} lines, {bad} bad"
    );

    let mut first: Option<(Vec<u8>, Vec<u8>)> = None;
    for capacity in [1, 7, 333, 1 << 16] {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let mut eng = engine();
        zhijian::scan::scan_limited(
            &mut eng,
            BufReader::with_capacity(capacity, &bytes[..]),
            &mut out,
            &mut err,
            4096,
        )
        .expect("in-memory I/O");
        match &first {
            None => {
                let events: Vec<Event> = String::from_utf8(out.clone())
                    .expect("utf-8")
                    .lines()
                    .map(|l| serde_json::from_str(l).expect("an event"))
                    .collect();
                assert_eq!(events, expected);
                let err = String::from_utf8(err.clone()).expect("utf-8");
                assert!(err.contains(": invalid_utf8: "), "{err}");
                assert!(err.contains(": line_too_long: "), "{err}");
                first = Some((out, err.into_bytes()));
            }
            Some((o, e)) => {
                assert_eq!(&out, o, "capacity {capacity}");
                assert_eq!(
                    String::from_utf8_lossy(&err),
                    String::from_utf8_lossy(e),
                    "capacity {capacity}"
                );
            }
        }
    }
}
