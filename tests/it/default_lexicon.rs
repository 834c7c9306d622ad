//! The shipped lexicon (`lexicons/`): it covers the service standards and
//! judges typical agent utterances as a QA lead would.

use crate::support::{compile, default_scanner, fixtures};
use std::collections::HashSet;
use zhijian::event::Speaker;
use zhijian::matcher::Scratch;
use zhijian::normalize::{char_offset, normalize};

#[test]
fn every_seed_forbidden_phrase_is_in_a_forbidden_rule() {
    let scanner = default_scanner();
    let phrases: HashSet<String> = scanner
        .rules()
        .iter()
        .filter(|r| scanner.category_id(r) == "forbidden")
        .flat_map(|r| r.phrases().map(|p| normalize(p)))
        .collect();
    let seeds = std::fs::read_to_string(fixtures().join("seed-forbidden.txt")).expect("seed list");
    let mut missing = Vec::new();
    let mut checked = 0;
    for line in seeds
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        for alt in line.split(['/', '？', '?', '！', '!', '、']) {
            let n = normalize(alt);
            if n.is_empty() {
                continue;
            }
            checked += 1;
            if !phrases.contains(&n) {
                missing.push(alt.to_string());
            }
        }
    }
    assert!(checked > 70, "only {checked} seed phrases read");
    assert!(
        missing.is_empty(),
        "seed phrases missing from lexicons/: {missing:?}"
    );
}

#[test]
fn seed_fillers_greetings_and_closings_are_present() {
    let scanner = default_scanner();
    let has = |category: &str, phrase: &str| {
        scanner
            .rules()
            .iter()
            .any(|r| scanner.category_id(r) == category && r.phrases().any(|p| p == phrase))
    };
    for f in ["啊", "哎"] {
        assert!(has("filler", f), "filler {f}");
    }
    // 喂 is judged once, by forbidden.wei (on calls).
    assert!(has("forbidden", "喂"), "喂");
    for g in ["您好", "你好", "上午好", "下午好", "晚上好"] {
        assert!(has("missing_greeting", g), "greeting {g}");
    }
    for c in ["再见", "感谢您的来电"] {
        assert!(has("missing_closing", c), "closing {c}");
    }
}

#[test]
fn typical_agent_utterances() {
    // (name, utterance, expected rule ids of the hits, in order)
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "scripted_jd_closing",
            "暂时不知道您的问题我是否为您解决完毕，请您对我的服务做出评价",
            // No forbidden hit; the rating request is a closing.
            &["closing.standard"],
        ),
        (
            "genuine_ignorance",
            "这个小妹也不知道呢",
            &["forbidden.ignorance"],
        ),
        (
            "polite_question_to_customer",
            "不知道您是否方便接听电话",
            &[],
        ),
        ("blurred_screen", "亮度过高会看不清楚的", &[]),
        ("impatience", "急什么，别催我", &["forbidden.impatience"]),
        (
            "shirking_traditional",
            "這不關我的事",
            &["forbidden.shirking"],
        ),
        (
            "confrontation",
            "你問我，我問誰？",
            &["forbidden.confrontation"],
        ),
        ("clarifying_question", "您是什么意思呢", &[]),
        ("curt_wei_on_answering", "喂，讲", &["forbidden.wei"]),
        ("feeding", "宝宝喂养要注意", &[]),
        // Real wording, written with phrase syntax (issue 12).
        (
            "no_way_variant",
            "这个我们也没有办法",
            &["forbidden.shirking"],
        ),
        (
            "cannot_find",
            "这个订单我这边查询不到",
            &["forbidden.shirking"],
        ),
        ("not_found_yet", "系统暂时查询不到物流", &[]),
        (
            "not_very_clear",
            "这个问题我也不是很清楚",
            &["forbidden.ignorance"],
        ),
        ("customer_view", "如果您还是不了解的话可以再问我", &[]),
        ("reproach", "我已经跟您说了", &["forbidden.lecturing"]),
        ("chat_particles", "好的哦，亲，稍等呢，是的啊", &[]),
        ("acknowledgement", "嗯嗯 好的", &[]),
        (
            "greeting",
            "您好，很高兴为您服务",
            &["greeting.standard", "greeting.standard"],
        ),
        (
            "closing",
            "请问还有其他还可以帮到您的吗?",
            // The greeting rule's hit is its continuation list: as a first
            // segment this would continue an earlier contact.
            &["greeting.standard", "closing.standard"],
        ),
    ];
    let scanner = default_scanner();
    let mut scratch = Scratch::default();
    for (name, text, want) in cases {
        scanner.scan(text, Speaker::Agent, &mut scratch);
        // As judged in calls and chat (and without a channel): the rules
        // for written service are tested in lexicons/tests/written.toml.
        let got: Vec<&str> = scratch
            .hits
            .iter()
            .map(|h| scanner.hit_rule(h))
            .filter(|r| r.applies_on(None))
            .map(|r| r.id.as_str())
            .collect();
        assert_eq!(got, *want, "case {name}: {text}");
    }
}

/// Phrases disguised with characters the fold drops or folds (issue 10,
/// item 8): each case was missed before. The hit maps back to the original
/// span, dropped characters inside it and marks on its last character
/// included; the byte automaton (large lexicons) agrees.
#[test]
fn evasions_are_caught_with_exact_offsets() {
    /// (name, utterance, rule, original matched text, char start..end)
    type Case = (
        &'static str,
        &'static str,
        &'static str,
        &'static str,
        (usize, usize),
    );
    let cases: &[Case] = &[
        (
            "combining_grapheme_joiner",
            "你\u{34F}问我我问谁",
            "forbidden.confrontation",
            "你\u{34F}问我我问谁",
            (0, 7),
        ),
        (
            "mongolian_vowel_separator",
            "这不关\u{180E}我的事",
            "forbidden.shirking",
            "不关\u{180E}我的事",
            (1, 7),
        ),
        (
            "hangul_filler",
            "急\u{3164}什么",
            "forbidden.impatience",
            "急\u{3164}什么",
            (0, 4),
        ),
        (
            "halfwidth_hangul_filler",
            "好的，别\u{FFA0}催我",
            "forbidden.impatience",
            "别\u{FFA0}催我",
            (3, 7),
        ),
        (
            "tag_characters_astral",
            "不关\u{E0041}\u{E0042}我的事",
            "forbidden.shirking",
            "不关\u{E0041}\u{E0042}我的事",
            (0, 7),
        ),
        (
            "combining_acute",
            "你\u{301}问我我问谁",
            "forbidden.confrontation",
            "你\u{301}问我我问谁",
            (0, 7),
        ),
        (
            "mark_on_the_last_character",
            "我也不知道\u{301}\u{301}呢",
            "forbidden.ignorance",
            "不知道\u{301}\u{301}",
            (2, 7),
        ),
        (
            "compatibility_ideograph",
            "\u{F967}关我的事",
            "forbidden.shirking",
            "\u{F967}关我的事",
            (0, 5),
        ),
        (
            "compatibility_supplement_astral",
            "\u{2F804}问我我问谁",
            "forbidden.confrontation",
            "\u{2F804}问我我问谁",
            (0, 6),
        ),
        (
            "kangxi_radical",
            "这个事\u{2F09}我处理不了",
            "forbidden.shirking",
            "这个事\u{2F09}我处理不了",
            (0, 9),
        ),
    ];
    let chars = default_scanner();
    let bytes = compile(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("lexicons"))
        .without_char_automaton()
        .expect("byte automaton");
    let mut scratch = Scratch::default();
    for scanner in [&*chars, &bytes] {
        for (name, text, rule, matched, (start, end)) in cases {
            scanner.scan(text, Speaker::Agent, &mut scratch);
            let got: Vec<(&str, &str, (usize, usize))> = scratch
                .hits
                .iter()
                .map(|h| {
                    let (s, e) = scratch.norm.original_range(text, h.norm.0, h.norm.1);
                    (
                        scanner.hit_rule(h).id.as_str(),
                        &text[s..e],
                        (char_offset(text, s), char_offset(text, e)),
                    )
                })
                .collect();
            assert_eq!(
                got,
                vec![(*rule, *matched, (*start, *end))],
                "case {name}: {text:?} ({})",
                scanner.automaton_summary()
            );
        }
    }
}

#[test]
fn synthetic_traffic_hits_exactly_what_it_injected() {
    use zhijian_tools::synth::{Mix, conversations};
    let scanner = default_scanner();
    let mut scratch = Scratch::default();
    let mix = Mix {
        traditional: 0.2,
        ..Mix::default()
    };
    let convs = conversations(7, 400, "c", &mix);
    let (mut forbidden, mut fillers) = (0, 0);
    for c in &convs {
        for t in c.turns.iter().filter(|t| t.speaker == Speaker::Agent) {
            scanner.scan(&t.text, Speaker::Agent, &mut scratch);
            // Synthetic traffic has no channel: the rules for written
            // service only (written.toml) do not judge it.
            for h in scratch
                .hits
                .iter()
                .filter(|h| scanner.hit_rule(h).applies_on(None))
            {
                match scanner.category_id(scanner.hit_rule(h)) {
                    "forbidden" => forbidden += 1,
                    "filler" => fillers += 1,
                    _ => {}
                }
            }
        }
    }
    let want_forbidden: usize = convs.iter().map(|c| c.injected_forbidden).sum();
    let want_fillers: usize = convs.iter().map(|c| c.injected_fillers).sum();
    assert!(
        want_forbidden > 20 && want_fillers > 20,
        "{want_forbidden} {want_fillers}"
    );
    assert_eq!((forbidden, fillers), (want_forbidden, want_fillers));
}

/// The readings reviewers disagree on are alert-only by default; one line
/// in a tenant's overlay turns the strict ones on (issue 26).
#[test]
fn one_overlay_line_turns_the_strict_readings_on() {
    let dir = crate::support::tempdir("strict-readings");
    let lexicons = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("lexicons");
    for e in std::fs::read_dir(&lexicons).expect("lexicons/") {
        let p = e.expect("entry").path();
        if p.extension().is_some_and(|x| x == "toml") {
            std::fs::copy(&p, dir.join(p.file_name().expect("name"))).expect("copy");
        }
    }
    std::fs::create_dir_all(dir.join("tenants/strict")).expect("mkdir");
    std::fs::write(
        dir.join("tenants/strict/strict.toml"),
        "enable = [\"forbidden.policy_limit\", \"forbidden.referral\"]\n",
    )
    .expect("overlay");
    let judge = |tenant: &str, text: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_zhijian"))
            .args(["lexicon", "test", "--lexicons"])
            .arg(&*dir)
            .args(["--tenant", tenant, text])
            .output()
            .expect("zhijian lexicon test");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        stdout
            .lines()
            .filter_map(|l| l.trim().strip_prefix("VIOLATION "))
            .filter_map(|l| l.split_whitespace().next().map(str::to_string))
            .filter(|r| !r.starts_with("greeting.") && !r.starts_with("closing."))
            .collect::<Vec<_>>()
    };
    let cases = [
        (
            "default",
            "没有办法修改地址哦",
            vec!["policy.limit_explained"],
        ),
        (
            "strict",
            "没有办法修改地址哦",
            vec!["forbidden.policy_limit"],
        ),
        ("default", "建议您咨询购买点", vec!["referral.elsewhere"]),
        ("strict", "建议您咨询购买点", vec!["forbidden.referral"]),
        ("strict", "这个我们也没有办法", vec!["forbidden.shirking"]),
    ];
    for (tenant, text, want) in cases {
        assert_eq!(judge(tenant, text), want, "{tenant}: {text}");
    }
}

/// `lexicon suggest` (issue 26): false alarms that share their wording
/// become an exception, misses that share a piece become a phrase (never
/// the whole utterance), and the overlay it writes loads as a tenant's.
#[test]
fn suggest_learns_exceptions_and_phrases_from_labels() {
    let dir = crate::support::tempdir("suggest");
    let mut input = String::new();
    let mut labels = String::new();
    // (id, agent text, reviewer's categories): texts written for the test.
    let cases = [
        ("s1", "不知道多少钱的话先按三十收", "[]"),
        ("s2", "因为不知道多少钱，先收您三十", "[]"),
        ("s3", "这种事情我们管不着的，您去问物业", "[\"forbidden\"]"),
        ("s4", "我们管不着的啦", "[\"forbidden\"]"),
        ("s5", "您好，请问有什么可以帮您", "[]"),
    ];
    for (id, text, cats) in cases {
        input.push_str(&format!(
            "{{\"conversation_id\":\"{id}\",\"seq\":0,\"speaker\":\"agent\",\"text\":\"{text}\",\"channel\":\"chat\"}}\n\
             {{\"conversation_id\":\"{id}\",\"type\":\"end\",\"seq\":1}}\n"
        ));
        labels.push_str(&format!(
            "{{\"conversation_id\":\"{id}\",\"seq\":0,\"categories\":{cats}}}\n"
        ));
    }
    std::fs::write(dir.join("in.jsonl"), &input).expect("input");
    std::fs::write(dir.join("labels.jsonl"), &labels).expect("labels");
    let lexicons = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("lexicons");
    let overlay = dir.join("suggested.toml");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_zhijian"))
        .args(["lexicon", "suggest", "--learn", "all", "--lexicons"])
        .arg(&lexicons)
        .arg("--labels")
        .arg(dir.join("labels.jsonl"))
        .arg("--out")
        .arg(&overlay)
        .arg(dir.join("in.jsonl"))
        .output()
        .expect("zhijian lexicon suggest");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Vec<&str>> = stdout
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|w| w.len() > 2 && (w[1] == "exception" || w[1] == "phrase"))
        .collect();
    let exception = lines
        .iter()
        .find(|w| w[1] == "exception")
        .unwrap_or_else(|| panic!("no exception suggested:\n{stdout}"));
    assert_eq!(exception[0], "forbidden.ignorance", "{stdout}");
    assert!(
        exception.last().is_some_and(|e| e.contains("不知道")),
        "{stdout}"
    );
    let phrase = lines
        .iter()
        .find(|w| w[1] == "phrase")
        .unwrap_or_else(|| panic!("no phrase suggested:\n{stdout}"));
    let piece = phrase.last().copied().unwrap_or_default();
    assert!(
        piece.starts_with("管不") || piece.contains("管不着"),
        "{stdout}"
    );
    assert!(!["这种事情我们管不着的", "我们管不着的啦"].contains(&piece));
    // The overlay is a tenant's, and loads.
    let tenant = dir.join("lex");
    std::fs::create_dir_all(tenant.join("tenants/t")).expect("mkdir");
    for e in std::fs::read_dir(&lexicons).expect("lexicons/") {
        let p = e.expect("entry").path();
        if p.extension().is_some_and(|x| x == "toml") {
            std::fs::copy(&p, tenant.join(p.file_name().expect("name"))).expect("copy");
        }
    }
    std::fs::copy(&overlay, tenant.join("tenants/t/suggested.toml")).expect("overlay");
    let set = zhijian::lexicon::load_set(&tenant).expect("the overlay loads");
    assert!(set.tenants.contains_key("t"));
}

/// The scanner skips the phrase lists of rules that do not judge the
/// conversation's channel (a rule for written service costs a call
/// nothing), and an unknown channel is judged as a call or chat.
#[test]
fn the_scanner_looks_only_at_the_rules_of_the_channel() {
    use zhijian::event::Channel;
    let scanner = default_scanner();
    let mut scratch = Scratch::default();
    let text = "这个是可以的啊，谢谢";
    let cases: &[(&str, Option<Channel>, &[&str])] = &[
        ("chat", Some(Channel::Chat), &[]),
        ("call", Some(Channel::Call), &[]),
        ("unknown", None, &[]),
        (
            "social",
            Some(Channel::Social),
            &["filler.written", "closing.written"],
        ),
        (
            "email",
            Some(Channel::Email),
            &["filler.written", "closing.written"],
        ),
    ];
    for (name, channel, want) in cases {
        scanner.scan_on(text, Speaker::Agent, *channel, &mut scratch);
        let got: Vec<&str> = scratch
            .hits
            .iter()
            .map(|h| scanner.hit_rule(h).id.as_str())
            .collect();
        assert_eq!(got, *want, "{name}");
    }
    // Without a channel given, every list is looked at (lexicon test).
    scanner.scan(text, Speaker::Agent, &mut scratch);
    assert_eq!(scratch.hits.len(), 2);
}
