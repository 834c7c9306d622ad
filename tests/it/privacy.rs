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

/// Everything the daemon stores, read back in full from a real nats-server:
/// a conversation reads out a mobile, an identity card and a bank card
/// number (and a broken line carries one too); no event in the output
/// stream, the shadow stream or the dead letters holds any of them in
/// clear. A second run with the tenant opted in finds them in its events,
/// and dead letters stay masked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_stored_event_holds_a_personal_number_in_clear() {
    use crate::daemon::{
        Daemon, config, copy_lexicons, js, lexicons, publish, stream_messages, wait_done,
    };
    use crate::nats_support::{NatsServer, tempdir};
    const NUMBERS: [&str; 3] = ["13812345678", "110101199003074514", "4111111111111111"];
    let run = |raw_tenant: bool| async move {
        let nats = NatsServer::start();
        let candidate = tempdir("privacy-shadow");
        copy_lexicons(&candidate);
        let mut extra = format!("[shadow]\nlexicons = \"{}\"\n", candidate.display());
        if raw_tenant {
            extra.push_str("[privacy]\nraw_tenants = [\"acme\"]\n");
        }
        let daemon = Daemon::start(config(&nats, &lexicons(), &extra)).await;
        let say = |seq: u32, speaker: &str, text: &str| {
            format!(
                r#"{{"conversation_id":"p1","tenant":"acme","seq":{seq},"speaker":"{speaker}","text":"{text}"}}"#
            )
        };
        let lines = vec![
            say(0, "agent", "您好，请问有什么可以帮您"),
            say(1, "customer", "我的手机是138 1234 5678，快点处理"),
            say(
                2,
                "agent",
                "您的身份证号110101199003074514，卡号4111 1111 1111 1111，不归我管",
            ),
            // Broken (no speaker): a dead letter.
            r#"{"conversation_id":"p1","tenant":"acme","seq":3,"text":"手机13812345678"}"#
                .to_string(),
            r#"{"conversation_id":"p1","tenant":"acme","type":"end"}"#.to_string(),
        ];
        publish(&nats, &lines).await;
        let js = js(&nats).await;
        wait_done(&js, 1).await;
        crate::hardening::wait_for("the shadow's summary", async || {
            stream_messages(&js, "SHADOW")
                .await
                .iter()
                .any(|m| m.subject.starts_with("shadow.summaries."))
        })
        .await;
        crate::hardening::wait_for("the dead letter", async || {
            !stream_messages(&js, "ZHIJIAN_DEADLETTER").await.is_empty()
        })
        .await;
        let mut stored = Vec::new();
        for stream in ["VIOLATIONS", "SHADOW", "ZHIJIAN_DEADLETTER"] {
            for m in stream_messages(&js, stream).await {
                // Digits only, as a reader that strips separators would.
                let digits: String = String::from_utf8_lossy(&m.payload)
                    .chars()
                    .filter(|c| c.is_ascii_digit() || *c == '*')
                    .collect();
                stored.push((
                    stream,
                    digits,
                    String::from_utf8_lossy(&m.payload).to_string(),
                ));
            }
        }
        daemon.stop().await;
        stored
    };
    let clear = |stored: &[(&str, String, String)], stream: &str| -> Vec<String> {
        stored
            .iter()
            .filter(|(s, digits, _)| *s == stream && NUMBERS.iter().any(|n| digits.contains(n)))
            .map(|(_, _, text)| text.clone())
            .collect()
    };
    let masked = run(false).await;
    assert!(masked.len() >= 6, "{masked:?}");
    for stream in ["VIOLATIONS", "SHADOW", "ZHIJIAN_DEADLETTER"] {
        let found = clear(&masked, stream);
        assert!(
            found.is_empty(),
            "{stream} holds numbers in clear: {found:?}"
        );
    }
    let raw = run(true).await;
    assert!(!clear(&raw, "VIOLATIONS").is_empty(), "{raw:?}");
    assert!(!clear(&raw, "SHADOW").is_empty(), "{raw:?}");
    assert!(clear(&raw, "ZHIJIAN_DEADLETTER").is_empty(), "{raw:?}");
}
