//! Personal numbers in events (issue 23): masked at the source in every
//! event, unless the tenant opted in to the raw text.

use crate::rules::{end, play, say_as, scanners, violations};
use zhijian::engine::{Engine, EngineConfig};
use zhijian::event::CloseReason;

/// Personal numbers never leave in an event unless the tenant opted in:
/// masked in `text` and `matched` of the rule that found them, in the
/// events of other rules about the same segment (a verdict at close, a
/// response's trigger kept in state), character for character, so ids and
/// offsets are those of the raw events.
#[test]
fn personal_numbers_are_masked_in_every_event_unless_the_tenant_opted_in() {
    let script = |tenant: &str| {
        vec![
            say_as(
                tenant,
                "p",
                "call",
                0,
                "agent",
                "您好，请问有什么可以帮您",
                0,
            ),
            say_as(
                tenant,
                "p",
                "call",
                1,
                "customer",
                "我要投诉，我的手机13812345678一直收不到验证码",
                1,
            ),
            say_as(
                tenant,
                "p",
                "call",
                2,
                "agent",
                "您的身份证号110101199003074514，卡号4111 1111 1111 1111对吗",
                2,
            ),
            end("p", 3),
        ]
    };
    let mut privacy = zhijian::privacy::Privacy::default();
    privacy.raw_tenants.insert("lab".into());
    let config = EngineConfig {
        privacy,
        ..EngineConfig::default()
    };
    let judge = |tenant: &str, config: &EngineConfig| {
        let mut e = Engine::with_scanners(scanners(), config.clone());
        let mut out = Vec::new();
        play(&mut e, &script(tenant), &mut out);
        e.close_all(CloseReason::Eof, u64::MAX / 2, &mut out);
        out
    };
    let masked = judge("acme", &config);
    let mut all_raw = config.clone();
    all_raw.privacy.raw_events = true;
    let raw = judge("acme", &all_raw);
    // The tenant that opted in gets its events as with raw_events.
    let lab = judge("lab", &config);
    assert_eq!(lab, judge("lab", &all_raw));
    let digits = |s: &str| s.chars().filter(char::is_ascii_digit).count();
    let (mut rules, mut leaked) = (Vec::new(), Vec::new());
    for (m, r) in violations(&masked).iter().zip(violations(&raw)) {
        rules.push(m.rule_id.as_str());
        // The same event, shown masked.
        assert_eq!(
            (&m.id, m.start, m.end, &m.spans),
            (&r.id, r.start, r.end, &r.spans)
        );
        assert_eq!(
            m.text.chars().count(),
            r.text.chars().count(),
            "{}",
            m.rule_id
        );
        for shown in [Some(&m.text), m.matched.as_ref(), m.note.as_ref()]
            .into_iter()
            .flatten()
        {
            if ["13812345678", "110101199003074514", "4111 1111 1111"]
                .iter()
                .any(|n| shown.contains(n))
                || digits(shown) > 12
            {
                leaked.push(format!("{}: {shown}", m.rule_id));
            }
        }
    }
    assert!(leaked.is_empty(), "personal numbers in clear: {leaked:?}");
    // A customer's threat holding a number glued to 一, and the missing
    // closing shown on the agent's segment holding an ID and a card.
    assert!(
        rules.contains(&"escalation.threat") && rules.contains(&"closing.std"),
        "{rules:?}"
    );
    let shown: Vec<&str> = violations(&masked)
        .iter()
        .map(|v| v.text.as_str())
        .collect();
    assert!(
        shown
            .iter()
            .any(|t| t.contains("**************4514") && t.contains("**** **** **** 1111")),
        "{shown:?}"
    );
    // Raw, the text as said.
    assert!(
        violations(&lab)
            .iter()
            .any(|v| v.text.contains("110101199003074514")),
        "{:?}",
        violations(&lab)
    );
}
