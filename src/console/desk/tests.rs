//! Tests of `desk`.

use super::*;

fn raw(action: &str, by: &str, assignee: Option<&str>, note: Option<&str>) -> RawRequest {
    RawRequest {
        action: action.into(),
        by: by.into(),
        assignee: assignee.map(Into::into),
        note: note.map(Into::into),
    }
}

/// Each refusal is its own variant; its text is the response body.
#[test]
fn refusals_are_typed_with_their_words() {
    let long_note = "字".repeat(MAX_NOTE_CHARS + 1);
    for (req, want, says) in [
        (
            raw(&"x".repeat(50), "张三", None, None),
            RequestError::UnknownAction("x".repeat(40)),
            format!(
                "unknown action {:?} (acknowledge, assign, note, false_alarm, reopen)",
                "x".repeat(40)
            ),
        ),
        (
            raw("acknowledge", " ", None, None),
            RequestError::Empty("by"),
            "`by` must not be empty".to_string(),
        ),
        (
            raw("note", "张三", None, Some(&long_note)),
            RequestError::TooLong {
                field: "note",
                chars: MAX_NOTE_CHARS + 1,
                limit: MAX_NOTE_CHARS,
            },
            "`note` is 1001 characters, over the limit of 1000".to_string(),
        ),
        (
            raw("assign", "张三", Some("李\u{7}四"), None),
            RequestError::ControlCharacter("assignee"),
            "`assignee` contains a control character".to_string(),
        ),
    ] {
        let err = req.validate().expect_err(&says);
        assert_eq!(err, want);
        assert_eq!(err.to_string(), says);
    }
}

#[test]
fn requests_are_validated_with_clear_errors() {
    let long = "长".repeat(MAX_NAME_CHARS + 1);
    let long_note = "字".repeat(MAX_NOTE_CHARS + 1);
    let cases: Vec<(&str, RawRequest, &str)> = vec![
        (
            "unknown_action",
            raw("delete", "张三", None, None),
            "unknown action \"delete\"",
        ),
        (
            "empty_by",
            raw("acknowledge", "  ", None, None),
            "`by` must not be empty",
        ),
        (
            "long_by",
            raw("acknowledge", &long, None, None),
            "over the limit of 64",
        ),
        (
            "control_by",
            raw("acknowledge", "a\u{7}b", None, None),
            "control character",
        ),
        (
            "empty_note",
            raw("note", "张三", None, Some(" ")),
            "`note` must not be empty",
        ),
        (
            "long_note",
            raw("note", "张三", None, Some(&long_note)),
            "over the limit of 1000",
        ),
        (
            "note_with_escape",
            raw("note", "张三", None, Some("a\u{1b}[31m")),
            "control character",
        ),
        (
            "assignee_on_ack",
            raw("acknowledge", "张三", Some("李四"), None),
            "assign action only",
        ),
        (
            "note_on_ack",
            raw("acknowledge", "张三", None, Some("x")),
            "note or false_alarm",
        ),
    ];
    for (name, req, want) in cases {
        match req.validate() {
            Ok(r) => panic!("case {name}: accepted {r:?}"),
            Err(e) => assert!(e.to_string().contains(want), "case {name}: {e}"),
        }
    }
    let ok = raw(
        "note",
        " 张三 ",
        None,
        Some("<img src=x onerror=alert(1)>\n第二行"),
    )
    .validate()
    .expect("valid");
    assert_eq!(ok.by, "张三");
    assert_eq!(
        ok.note.as_deref(),
        Some("<img src=x onerror=alert(1)>\n第二行")
    );
    let unassign = raw("assign", "张三", Some(""), None)
        .validate()
        .expect("valid");
    assert_eq!(unassign.assignee, None);
    let why = raw("false_alarm", "张三", None, Some("客户在复述"))
        .validate()
        .expect("valid");
    assert_eq!(
        (why.action, why.note.as_deref()),
        (Action::FalseAlarm, Some("客户在复述"))
    );
}

fn raised() -> Raised {
    Raised {
        tenant: "acme".into(),
        conversation_id: "c1".into(),
        seq: 2,
        agent_id: Some("a1".into()),
        rule_id: "forbidden.impatience".into(),
        category: "forbidden".into(),
        category_name: "服务忌语".into(),
        kind: "phrase".into(),
        severity: Severity::High,
        spans: vec![[0, 3]],
        matched: Some("急什么".into()),
        text: "急什么,你说".into(),
        text_start: 0,
        note: None,
        lexicon_version: "v1+abc".into(),
    }
}

#[test]
fn actions_change_the_state_once_and_are_logged() {
    let mut s = AlertState::new("id1", raised());
    let req = |a: &str, assignee: Option<&str>, note: Option<&str>| {
        raw(a, "张三", assignee, note).validate().expect("valid")
    };
    assert!(s.apply(&req("acknowledge", None, None), 10));
    assert!(
        !s.apply(&req("acknowledge", None, None), 11),
        "already acknowledged"
    );
    assert!(s.apply(&req("assign", Some("李四"), None), 12));
    assert!(!s.apply(&req("assign", Some("李四"), None), 13));
    assert!(s.apply(&req("note", None, Some("已回电")), 14));
    assert!(s.apply(&req("false_alarm", None, Some("客户在复述")), 15));
    assert!(s.apply(&req("reopen", None, None), 16));
    assert_eq!(s.status, Status::Open);
    assert_eq!(s.assignee.as_deref(), Some("李四"));
    assert_eq!(
        s.log
            .iter()
            .map(|l| (l.action, l.at_ms))
            .collect::<Vec<_>>(),
        vec![
            (Action::Acknowledge, 10),
            (Action::Assign, 12),
            (Action::Note, 14),
            (Action::FalseAlarm, 15),
            (Action::Reopen, 16)
        ]
    );
    assert_eq!(s.notes.len(), 2);
    for i in 0..(MAX_LOG + 5) {
        s.apply(&req("note", None, Some("n")), 100 + i as u64);
    }
    assert_eq!((s.log.len(), s.notes.len()), (MAX_LOG, MAX_NOTES));
}

#[test]
fn the_csv_export_quotes_and_defuses_formulas() {
    let mut s = AlertState::new("id1", raised());
    let req = raw("false_alarm", "王五", None, Some("说的是\"急\",不是骂人"))
        .validate()
        .expect("valid");
    s.apply(&req, 42);
    let json = serde_json::to_string(&s).expect("json");
    let csv = false_alarms_csv(&[Arc::new(Shared { state: s, json })]);
    let line = csv.lines().nth(1).expect("a row");
    assert_eq!(
        line,
        "id1,acme,c1,2,a1,forbidden.impatience,forbidden,服务忌语,high,v1+abc,0-3,急什么,\"急什么,你说\",王五,42,\"王五: 说的是\"\"急\"\",不是骂人\""
    );
    assert_eq!(csv_cell("=HYPERLINK(1)"), "'=HYPERLINK(1)");
}
