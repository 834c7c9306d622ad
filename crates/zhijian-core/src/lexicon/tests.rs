//! The lexicon's validation, located problems and overlays.

use super::*;

const HEAD: &str = r#"
[lexicon]
name = "test"
version = "1"

[[section]]
id = "lang"
name = "服务用语"
max_deduct = 30

[[category]]
id = "forbidden"
name = "服务忌语"
"#;

fn load(body: &str) -> Result<Lexicon, LexiconError> {
    load_sources(vec![(PathBuf::from("t.toml"), format!("{HEAD}{body}"))])
}

fn first_problem(body: &str) -> String {
    match load(body) {
        Ok(_) => panic!("accepted:\n{body}"),
        Err(e) => e.problems[0].to_string(),
    }
}

/// The problem whose message holds `want` (or all of them, to show).
fn problem_with(body: &str, want: &str) -> String {
    match load(body) {
        Ok(_) => panic!("accepted:\n{body}"),
        Err(e) => e
            .problems
            .iter()
            .map(ToString::to_string)
            .find(|p| p.contains(want))
            .unwrap_or_else(|| e.to_string()),
    }
}

/// Each case `(name, body, text on the line the problem must name,
/// message)` is refused with that message at that line.
fn expect_problems(cases: &[(&str, String, &str, &str)]) {
    for (name, body, at, want) in cases {
        let got = problem_with(body, want);
        let line = line_of(body, at);
        assert!(
            got.contains(want) && got.starts_with(&format!("t.toml:{line}: ")),
            "case {name}:\n want t.toml:{line}: …{want:?}\n got {got:?}"
        );
    }
}

/// The 1-based line of the first occurrence of `needle` in HEAD + body.
fn line_of(body: &str, needle: &str) -> usize {
    let all = format!("{HEAD}{body}");
    let at = all
        .find(needle)
        .unwrap_or_else(|| panic!("{needle} not in text"));
    all[..at].matches('\n').count() + 1
}

const GOOD: &str = r#"
[[rule]]
id = "forbidden.a"
category = "forbidden"
severity = "high"
deduct = 1
section = "lang"
phrases = ["不知道", "你问我/我问谁"]
exceptions = ["暂时不知道您的问题"]
"#;

#[test]
fn loads_a_good_lexicon_with_defaults() {
    let lex = load(GOOD).expect("valid");
    let r = &lex.rules[0];
    assert_eq!(r.id, "forbidden.a");
    assert_eq!(r.kind(), "phrase");
    assert_eq!(r.speakers, vec![Speaker::Agent]);
    assert!(r.channels.is_empty());
    assert_eq!(r.section, Some(0));
    assert_eq!(lex.categories[r.category].name, "服务忌语");
    let Spec::Phrase(p) = &r.spec else {
        panic!("{:?}", r.spec)
    };
    assert_eq!(
        (p.list.boundary, p.list.position),
        (rules::Boundary::None, rules::Position::Any)
    );
    assert!(lex.version.starts_with("1+"), "{}", lex.version);
}

#[test]
fn version_digest_changes_with_content() {
    let a = load(GOOD).expect("valid").version;
    let b = load(&GOOD.replace("不知道", "不清楚"))
        .expect("valid")
        .version;
    assert_ne!(a, b);
}

#[test]
fn validation_errors_name_file_line_and_entry() {
    // (case, body, the text on the line the problem must name, message)
    let cases: &[(&str, String, &str, &str)] = &[
        (
            "unknown_key",
            GOOD.replace("severity", "severty"),
            "severty",
            "rule \"forbidden.a\": unknown field `severty` for a phrase rule",
        ),
        (
            "unknown_kind",
            GOOD.replace("deduct = 1", "deduct = 1\nkind = \"forbiden\""),
            "kind = ",
            "kind: unknown kind \"forbiden\"",
        ),
        (
            "old_greeting_kind",
            GOOD.replace("deduct = 1", "deduct = 1\nkind = \"greeting\""),
            "kind = ",
            "greeting and closing rules are kind = \"required\"",
        ),
        (
            "unknown_category",
            GOOD.replace("category = \"forbidden\"", "category = \"rude\""),
            "category = \"rude\"",
            "unknown category \"rude\" (defined: [\"forbidden\"])",
        ),
        (
            "bad_severity",
            GOOD.replace("\"high\"", "\"urgent\""),
            "severity",
            "unknown severity \"urgent\"",
        ),
        (
            "negative_deduct",
            GOOD.replace("deduct = 1", "deduct = -1"),
            "deduct = -1",
            "deduct must be a number >= 0",
        ),
        (
            "deduct_without_section",
            GOOD.replace("section = \"lang\"\n", ""),
            "deduct = 1",
            "names its scorecard `section` (or set deduct = 0 to only alert)",
        ),
        (
            "unknown_section",
            GOOD.replace("section = \"lang\"", "section = \"x\""),
            "section = \"x\"",
            "unknown section \"x\"",
        ),
        (
            "punctuation_phrase",
            GOOD.replace("\"不知道\"", "\"，。！\""),
            "\"，。！\"",
            "phrase \"，。！\" is empty after normalisation",
        ),
        (
            "duplicate_phrase",
            GOOD.replace("\"你问我/我问谁\"", "\"不 知道\""),
            "\"不 知道\"",
            "phrase \"不 知道\" duplicates \"不知道\"",
        ),
        (
            "no_phrases",
            GOOD.replace("phrases = [\"不知道\", \"你问我/我问谁\"]", "phrases = []"),
            "phrases = []",
            "phrases must not be empty",
        ),
        (
            "useless_exception",
            GOOD.replace("暂时不知道您的问题", "您好"),
            "\"您好\"",
            "exception \"您好\" contains none of the phrases",
        ),
        (
            "bad_id",
            GOOD.replace("forbidden.a", "Forbidden A"),
            "id = \"Forbidden A\"",
            "rule \"Forbidden A\": id: ids are",
        ),
        (
            "window_is_gone",
            GOOD.replace("deduct = 1", "deduct = 1\nwindow = 2"),
            "window",
            "unknown field `window` for a phrase rule",
        ),
        (
            "customer_words_cost_no_points",
            GOOD.replace("deduct = 1", "deduct = 1\nspeakers = [\"customer\"]"),
            "[[rule]]",
            "a customer's words never cost the agent points",
        ),
        (
            "agent_and_customer_words_cost_no_points",
            GOOD.replace(
                "deduct = 1",
                "deduct = 1\nspeakers = [\"agent\", \"customer\"]",
            ),
            "[[rule]]",
            "a rule that deducts reads the agent's segments only",
        ),
        (
            "dotted_category",
            format!("[[category]]\nid = \"a.b\"\nname = \"x\"\n{GOOD}"),
            "id = \"a.b\"",
            "category ids may not contain '.'",
        ),
        (
            "unknown_channel",
            GOOD.replace("deduct = 1", "deduct = 1\nchannels = [\"sms\"]"),
            "channels",
            "unknown channel \"sms\" (call, chat, social, email)",
        ),
        (
            "missing_field",
            GOOD.replace("severity = \"high\"\n", ""),
            "[[rule]]",
            "missing field `severity`",
        ),
    ];
    expect_problems(cases);
    let syntax = first_problem("[[rule]\n");
    let line = line_of("[[rule]\n", "[[rule]");
    assert!(
        syntax.contains(&format!("t.toml:{line}: unclosed array table")),
        "{syntax}"
    );
}

const PATTERN: &str = r#"
[[rule]]
id = "pii.x"
kind = "pattern"
category = "forbidden"
severity = "high"
patterns = ["订单号\\d{6,}"]
detectors = ["mobile"]
"#;

const RESPONSE: &str = r#"
[[rule]]
id = "hold.x"
kind = "response"
category = "forbidden"
severity = "low"
deduct = 0.5
section = "lang"
within_segments = 3
trigger = { speakers = ["agent"], phrases = ["请稍等"] }
expect = { speakers = ["agent"], phrases = ["感谢您的耐心等待"] }
"#;

const REQUIRED: &str = r#"
[[rule]]
id = "greeting.x"
kind = "required"
category = "forbidden"
severity = "low"
scope = "start"
segments = 2
phrases = ["您好"]
"#;

#[test]
fn every_kind_loads_and_validates_its_own_fields() {
    let lex = load(&format!(
        "{PATTERN}{RESPONSE}{REQUIRED}{}{}",
        "\n[[rule]]\nid = \"t.x\"\nkind = \"timing\"\ncategory = \"forbidden\"\nseverity = \"low\"\nchannels = [\"chat\"]\nmeasure = \"first_reply\"\nseconds = 30\n",
        "\n[[rule]]\nid = \"r.x\"\nkind = \"repetition\"\ncategory = \"forbidden\"\nseverity = \"low\"\ntimes = 3\n"
    ))
    .expect("valid");
    let kinds: Vec<&str> = lex.rules.iter().map(Rule::kind).collect();
    assert_eq!(
        kinds,
        ["pattern", "response", "required", "timing", "repetition"]
    );
    // Alert-only rules need no section.
    assert_eq!((lex.rules[0].deduct, lex.rules[0].section), (0.0, None));
    // A response rule reads both sides' speakers.
    assert_eq!(lex.rules[1].speakers, vec![Speaker::Agent]);

    let cases: &[(&str, String, &str, &str)] = &[
        (
            "invalid_regex",
            PATTERN.replace("订单号\\\\d{6,}", "订单号(\\\\d{6,}"),
            "patterns",
            "invalid pattern \"订单号(\\\\d{6,}\": unclosed group",
        ),
        (
            "empty_match",
            PATTERN.replace("订单号\\\\d{6,}", "(订单号)?"),
            "patterns",
            "pattern \"(订单号)?\" matches the empty string",
        ),
        (
            "unknown_detector",
            PATTERN.replace("\"mobile\"", "\"passport\""),
            "detectors",
            "unknown detector \"passport\" (one of [\"mobile\", \"id_card\", \"bank_card\"])",
        ),
        (
            "pattern_without_patterns",
            PATTERN
                .replace("patterns = [\"订单号\\\\d{6,}\"]\n", "")
                .replace("detectors = [\"mobile\"]\n", ""),
            "[[rule]]",
            "a pattern rule needs `patterns` or `detectors`",
        ),
        (
            "response_without_trigger",
            RESPONSE.replace(
                "trigger = { speakers = [\"agent\"], phrases = [\"请稍等\"] }\n",
                "",
            ),
            "[[rule]]",
            "a response rule needs a `trigger` table",
        ),
        (
            "response_without_window",
            RESPONSE.replace("within_segments = 3\n", ""),
            "[[rule]]",
            "a response rule needs `within_segments = N` or `within_seconds = N`",
        ),
        (
            "response_side_unknown_field",
            RESPONSE.replace(
                "phrases = [\"请稍等\"]",
                "phrases = [\"请稍等\"], window = 2",
            ),
            "trigger",
            "unknown field `trigger.window`",
        ),
        (
            "scope_out_of_range",
            REQUIRED.replace("segments = 2", "segments = 0"),
            "segments = 0",
            "segments: must be 1..=64, got 0",
        ),
        (
            "scope_unknown",
            REQUIRED.replace("scope = \"start\"", "scope = \"begin\""),
            "scope",
            "unknown value \"begin\"",
        ),
        (
            "start_scope_needs_a_size",
            REQUIRED.replace("segments = 2\n", ""),
            "scope",
            "a \"start\" scope needs `segments = N` or `seconds = N`",
        ),
        (
            "required_without_scope",
            REQUIRED.replace("scope = \"start\"\n", ""),
            "[[rule]]",
            "missing field `scope`",
        ),
    ];
    expect_problems(cases);
}

#[test]
fn duplicate_rule_ids_name_the_first() {
    let twice = format!("{GOOD}{GOOD}");
    let got = first_problem(&twice);
    let first = line_of(&twice, "[[rule]]");
    // The second definition's id line.
    let second = format!("{HEAD}{GOOD}").matches('\n').count() + 3;
    assert!(
        got.contains(&format!(
            "t.toml:{second}: rule \"forbidden.a\": id: duplicate rule id (first defined at t.toml:{first})"
        )),
        "{got}"
    );
}

#[test]
fn missing_or_duplicate_metadata() {
    let no_meta = load_sources(vec![(PathBuf::from("a.toml"), GOOD.into())]).expect_err("no meta");
    assert!(no_meta.to_string().contains("no [lexicon] table"));
    let two = load_sources(vec![
        (PathBuf::from("a.toml"), HEAD.into()),
        (
            PathBuf::from("b.toml"),
            "[lexicon]\nname = \"x\"\nversion = \"2\"\n".into(),
        ),
    ])
    .expect_err("two metas");
    assert!(
        two.to_string()
            .contains("b.toml:1: a second [lexicon] table (the first is at a.toml:2)"),
        "{two}"
    );
}

fn set(overlays: &[(&str, &str)]) -> Result<LexiconSet, LexiconError> {
    load_set_sources(
        vec![(PathBuf::from("base.toml"), format!("{HEAD}{GOOD}{PATTERN}"))],
        overlays
            .iter()
            .map(|(t, body)| {
                (
                    t.to_string(),
                    vec![(
                        PathBuf::from(format!("tenants/{t}/o.toml")),
                        body.to_string(),
                    )],
                )
            })
            .collect(),
    )
}

#[test]
fn tenant_overlays_add_override_and_disable() {
    let s = set(&[
        (
            "acme",
            "disable = [\"pii.x\"]\n\n[[override]]\nid = \"forbidden.a\"\nseverity = \"critical\"\nphrases = [\"没办法\"]\nexceptions = []\n\n[[category]]\nid = \"vip\"\nname = \"贵宾\"\n\n[[rule]]\nid = \"vip.a\"\ncategory = \"vip\"\nseverity = \"low\"\nphrases = [\"等着吧\"]\n",
        ),
        ("globex", "[[override]]\nid = \"pii.x\"\nseverity = \"low\"\n"),
    ])
    .expect("valid");
    let acme = &s.tenants["acme"];
    let ids: Vec<&str> = acme.rules.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["forbidden.a", "vip.a"]);
    assert_eq!(acme.rules[0].severity, Severity::Critical);
    assert_eq!(acme.rules[0].phrases().collect::<Vec<_>>(), ["没办法"]);
    assert_eq!(
        acme.categories.last().map(|c| c.name.as_str()),
        Some("贵宾")
    );
    assert_eq!(s.tenants["globex"].rules[1].severity, Severity::Low);
    // The base is untouched; versions name the tenant and differ.
    assert_eq!(s.base.rules.len(), 2);
    assert_eq!(s.base.rules[0].severity, Severity::High);
    let (b, a, g) = (&s.base.version, &acme.version, &s.tenants["globex"].version);
    assert!(a.starts_with(&format!("{b}/acme+")), "{a} vs {b}");
    assert!(g.starts_with(&format!("{b}/globex+")), "{g} vs {b}");
}

#[test]
fn overlay_errors_name_the_overlay_file() {
    let cases = [
        (
            "disable = [\"forbidden.zz\"]\n",
            "tenants/acme/o.toml:1: disable \"forbidden.zz\": no base rule has this id",
        ),
        (
            "[[override]]\nid = \"forbidden.zz\"\nseverity = \"low\"\n",
            "tenants/acme/o.toml:1: override \"forbidden.zz\": no base rule has this id",
        ),
        (
            "[[override]]\nid = \"forbidden.a\"\nkind = \"pattern\"\n",
            "cannot change a rule's kind",
        ),
        (
            "[[override]]\nid = \"forbidden.a\"\nseverity = \"urgent\"\n",
            "tenants/acme/o.toml:3: rule \"forbidden.a\": severity: unknown severity \"urgent\"",
        ),
        (
            "[lexicon]\nname = \"x\"\nversion = \"2\"\n",
            "tenants/acme/o.toml:1: a tenant overlay has no [lexicon] table",
        ),
    ];
    for (overlay, want) in cases {
        let got = set(&[("acme", overlay)]).expect_err(overlay).to_string();
        assert!(
            got.contains(want),
            "overlay {overlay:?}:\n want {want:?}\n got {got}"
        );
    }
    let got = set(&[("a.b", GOOD)]).expect_err("bad tenant").to_string();
    assert!(got.contains("\"a.b\" is not a tenant name"), "{got}");
    // Overrides and disables belong in overlays only.
    let got = load_sources(vec![
        (PathBuf::from("a.toml"), format!("{HEAD}{GOOD}")),
        (
            PathBuf::from("b.toml"),
            "disable = [\"forbidden.a\"]\n".into(),
        ),
    ])
    .expect_err("disable in the base")
    .to_string();
    assert!(
        got.contains("b.toml:1: disable belongs in a tenant overlay"),
        "{got}"
    );
}
