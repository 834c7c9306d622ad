//! Tests of `event`.

use super::*;

#[test]
fn decodes_a_minimal_segment_with_defaults() {
    let i = decode_str(r#"{"conversation_id":"c1","seq":3,"speaker":"agent","text":"您好"}"#)
        .expect("valid");
    assert_eq!(i.tenant, "default");
    assert_eq!(i.channel, None);
    let InputKind::Segment(s) = i.kind else {
        panic!("not a segment")
    };
    assert_eq!((s.seq, s.speaker, s.is_final), (3, Speaker::Agent, true));
    assert_eq!(s.text, "您好");
}

#[test]
fn non_objects_are_named_in_the_error_and_spaced_objects_decode() {
    for (input, found) in [
        (r#"["c1",null,0,"agent","你问我我问谁"]"#, "an array"),
        (r#""x""#, "a string"),
        ("3", "a number"),
        ("-0.5e3", "a number"),
        ("null", "null"),
        (" false ", "a boolean"),
    ] {
        let e = decode_str(input).expect_err(input);
        assert_eq!(
            e.to_string(),
            format!("invalid JSON or field type: an event must be a JSON object, found {found}")
        );
    }
    // Not JSON: serde's message, with the position.
    let e = decode_str("this is not JSON").expect_err("garbage");
    assert_eq!(
        e.to_string(),
        "invalid JSON or field type: expected ident at line 1 column 2"
    );
    let spaced = " \r\n\t{\"conversation_id\":\"c1\",\"type\":\"end\"} \n";
    assert_eq!(decode_str(spaced).map(|i| i.kind), Ok(InputKind::End));
}

#[test]
fn ignores_unknown_fields_and_decodes_end() {
    let i = decode_str(r#"{"conversation_id":"c1","type":"end","x":{"y":[1]},"tenant":"t1"}"#)
        .expect("valid");
    assert_eq!(i.kind, InputKind::End);
    assert_eq!(i.tenant, "t1");
}

#[test]
fn bad_input_table() {
    let long_id = format!(
        r#"{{"conversation_id":"{}","type":"end"}}"#,
        "x".repeat(129)
    );
    let long_text = format!(
        r#"{{"conversation_id":"c","seq":1,"speaker":"agent","text":"{}"}}"#,
        "啊".repeat(MAX_TEXT_BYTES / 3 + 1)
    );
    let cases: Vec<(&str, &str, &str)> = vec![
        ("not_json", "hello", "invalid_json"),
        ("array", "[1,2]", "invalid_json"),
        // An array with the right types in field order: serde would
        // decode it positionally into a segment.
        (
            "positional_array",
            r#"["c1",null,0,"agent","你问我我问谁"]"#,
            "invalid_json",
        ),
        (
            "positional_array_spaced",
            " \t\r\n[\"c1\", \"segment\", 0, \"agent\", \"你问我我问谁\"]",
            "invalid_json",
        ),
        ("string", r#""x""#, "invalid_json"),
        ("number", "3", "invalid_json"),
        ("negative_number", "-3", "invalid_json"),
        ("null", "null", "invalid_json"),
        ("true", "true", "invalid_json"),
        ("empty", "", "invalid_json"),
        ("whitespace", " \n", "invalid_json"),
        ("truncated", r#"{"conversation_id":"c""#, "invalid_json"),
        (
            "missing_id",
            r#"{"seq":1,"speaker":"agent","text":""}"#,
            "missing_field",
        ),
        (
            "empty_id",
            r#"{"conversation_id":"","type":"end"}"#,
            "invalid_field",
        ),
        (
            "id_with_space",
            r#"{"conversation_id":"a b","type":"end"}"#,
            "invalid_field",
        ),
        ("long_id", &long_id, "invalid_field"),
        (
            "missing_seq",
            r#"{"conversation_id":"c","speaker":"agent","text":""}"#,
            "missing_field",
        ),
        (
            "negative_seq",
            r#"{"conversation_id":"c","seq":-1,"speaker":"agent","text":""}"#,
            "invalid_json",
        ),
        (
            "string_seq",
            r#"{"conversation_id":"c","seq":"1","speaker":"agent","text":""}"#,
            "invalid_json",
        ),
        (
            "missing_speaker",
            r#"{"conversation_id":"c","seq":1,"text":""}"#,
            "missing_field",
        ),
        (
            "bad_speaker",
            r#"{"conversation_id":"c","seq":1,"speaker":"bot","text":""}"#,
            "invalid_field",
        ),
        (
            "missing_text",
            r#"{"conversation_id":"c","seq":1,"speaker":"agent"}"#,
            "missing_field",
        ),
        (
            "null_text",
            r#"{"conversation_id":"c","seq":1,"speaker":"agent","text":null}"#,
            "missing_field",
        ),
        (
            "bad_type",
            r#"{"conversation_id":"c","type":"start"}"#,
            "invalid_field",
        ),
        (
            "bad_channel",
            r#"{"conversation_id":"c","type":"end","channel":"sms"}"#,
            "invalid_field",
        ),
        (
            "tenant_with_dot",
            r#"{"conversation_id":"c","type":"end","tenant":"a.b"}"#,
            "invalid_field",
        ),
        (
            "bad_final",
            r#"{"conversation_id":"c","seq":1,"speaker":"agent","text":"","final":"no"}"#,
            "invalid_json",
        ),
        ("text_too_long", &long_text, "text_too_long"),
    ];
    for (name, input, code) in cases {
        match decode_str(input) {
            Ok(i) => panic!("case {name}: accepted {i:?}"),
            Err(e) => assert_eq!(e.code(), code, "case {name}: {e}"),
        }
    }
    assert_eq!(
        decode(b"\xff\xfe").map_err(|e| e.code()),
        Err("invalid_utf8")
    );
}

#[test]
fn event_ids_are_stable_and_separated() {
    let a = event_id(&[b"t", b"c1", b"2"]);
    assert_eq!(a, event_id(&[b"t", b"c1", b"2"]));
    assert_eq!(a.len(), 32);
    // The separator keeps ("c1","2") and ("c","12") apart.
    assert_ne!(a, event_id(&[b"t", b"c", b"12"]));
}

/// What serde alone makes of a line (the decoder before the plain
/// path): the reference the plain path must agree with.
fn serde_wire(s: &str) -> Option<Wire<'_>> {
    let start = s.trim_start_matches([' ', '\t', '\n', '\r']);
    if !start.starts_with('{') {
        return None;
    }
    serde_json::from_str::<Wire<'_>>(s).ok()
}

/// Every line built from the pieces below, and the plain decoder's
/// verdict on each: whenever it decodes a line, serde decodes it to the
/// same fields; and it does decode the common shapes.
#[test]
fn the_plain_decoder_agrees_with_serde() {
    // Every field, and names that are not fields or only look like one.
    let keys: Vec<&str> = plain::FIELDS
        .iter()
        .copied()
        .chain(["other", "conversation\\u005fid", "Seq", "texts", "ts", ""])
        .collect();
    let values = [
        r#""c1""#,
        r#""您好，请问""#,
        r#""a\"b""#,
        r#""a\nb""#,
        "\"a\tb\"",
        "\"a\u{7f}b\"",
        r#""""#,
        "0",
        "7",
        "00",
        "-1",
        "1.5",
        "1e3",
        "18446744073709551615",
        "18446744073709551616",
        "true",
        "false",
        "null",
        "nul",
        "tru",
        "[1]",
        "{}",
        r#"{"a":1}"#,
    ];
    let (mut plain, mut total) = (0, 0);
    let mut check = |line: &str| {
        total += 1;
        if let Some(w) = plain::wire_str(line) {
            plain += 1;
            assert_eq!(serde_wire(line).as_ref(), Some(&w), "{line}");
            assert_eq!(plain::wire(line.as_bytes()).as_ref(), Some(&w), "{line}");
        }
    };
    for k in keys {
        for v in values {
            check(&format!(r#"{{"{k}":{v}}}"#));
            check(&format!(r#"{{"conversation_id":"c","{k}":{v},"seq":1}}"#));
            check(&format!(" {{ \"{k}\" : {v} }} \r\n"));
            check(&format!(r#"{{"{k}":{v},"{k}":{v}}}"#));
            check(&format!(r#"{{"{k}":{v},}}"#));
            check(&format!(r#"{{"{k}":{v}}}x"#));
            check(&format!(r#"{{"{k}":{v}"#));
            check(&format!(r#"{{"{k}" {v}}}"#));
            check(&format!(r#"["{k}",{v}]"#));
        }
    }
    for line in [
        "",
        "{}",
        "{",
        "}",
        "{\"conversation_id\":\"c\"}\u{3000}",
        "\u{feff}{\"conversation_id\":\"c\"}",
        r#"{"conversation_id":"c","seq":1,"speaker":"agent","text":"您好","final":false,"continued":true,"ts_ms":5,"channel":"chat","tenant":"t","agent_id":"a","type":"segment"}"#,
    ] {
        check(line);
    }
    // The common shapes take the plain path (so the checks above ran).
    assert!(plain > 200 && plain < total / 4, "{plain} of {total}");
    let typical = r#"{"channel":"call","conversation_id":"synth-0","seq":1,"speaker":"agent","tenant":"bench","text":"您好，很高兴为您服务。"}"#;
    assert!(plain::wire_str(typical).is_some());
    // Invalid UTF-8 is never plain.
    assert!(plain::wire(b"{\"conversation_id\":\"\xff\"}").is_none());
    assert!(plain::wire(b"{\"x\xff\":1}").is_none());
}

#[test]
fn string_end_finds_the_first_quote_backslash_or_control_byte() {
    let naive = |b: &[u8]| b.iter().position(|&c| c == b'"' || c == b'\\' || c < 0x20);
    // Every position of every special byte in strings of every length
    // around the eight-byte words, behind plain, high and edge bytes.
    for len in 0..20 {
        for fill in [b'a', 0x7f, 0x80, 0xff, 0x20, 0x21, 0x5b, 0x5d] {
            let base = vec![fill; len];
            assert_eq!(plain::string_end(&base), naive(&base), "{len} {fill}");
            for at in 0..len {
                for special in [b'"', b'\\', 0x00, 0x01, 0x1f, b'\n'] {
                    let mut b = base.clone();
                    b[at] = special;
                    assert_eq!(plain::string_end(&b), naive(&b), "{b:?}");
                    // A second special byte after the first.
                    if at + 1 < len {
                        b[len - 1] = b'"';
                        assert_eq!(plain::string_end(&b), naive(&b), "{b:?}");
                    }
                }
            }
        }
    }
}

#[test]
fn decoders_agree_on_plain_and_other_lines() {
    for line in [
        r#"{"conversation_id":"c1","seq":3,"speaker":"agent","text":"您好"}"#,
        r#"{"conversation_id":"c1","seq":3,"speaker":"agent","text":"您\u597d"}"#,
        r#"{"conversation_id":"c 1","type":"end"}"#,
        r#"{"conversation_id":"c1","type":"end","tenant":"a.b"}"#,
        r#"{"conversation_id":"c1","seq":3,"speaker":"bot","text":""}"#,
    ] {
        let by_str = decode_str(line);
        assert_eq!(decode(line.as_bytes()), by_str);
        if let Some(plain) = decode_plain(line.as_bytes(), MAX_TEXT_BYTES) {
            assert_eq!(plain, by_str);
        }
    }
}
