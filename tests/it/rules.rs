//! Every rule kind, case by case, on the fixture lexicon of all kinds
//! (`tests/fixtures/rules`): when each verdict comes, what is not judged,
//! channels and speakers, overlaps, tenants, the clock, late events, and
//! state carried across a restart at every point of a conversation.

use crate::support::fixtures;
use std::sync::{Arc, OnceLock};
use zhijian::engine::{Conversation, Engine, EngineConfig};
use zhijian::event::{CloseReason, Event, Summary, Violation, decode_str};
use zhijian::lexicon;
use zhijian::matcher::{Scanners, default_segmenter};

pub(crate) fn scanners() -> Arc<Scanners> {
    static S: OnceLock<Arc<Scanners>> = OnceLock::new();
    S.get_or_init(|| {
        let set = lexicon::load_set(&fixtures().join("rules")).unwrap_or_else(|e| panic!("{e}"));
        Arc::new(Scanners::new(set, default_segmenter()).expect("compiles"))
    })
    .clone()
}

fn engine() -> Engine {
    Engine::with_scanners(scanners(), EngineConfig::default())
}

/// One step of a script: an input line at an engine time, or a clock tick.
#[derive(Clone)]
pub(crate) enum Step {
    Line(String, u64),
    Tick(u64),
}

/// A segment of conversation `c` (tenant `t`, channel `ch`) at `ts` seconds;
/// the engine clock follows the segment times.
fn say(c: &str, ch: &str, seq: u64, speaker: &str, text: &str, ts: u64) -> Step {
    say_as("default", c, ch, seq, speaker, text, ts)
}

pub(crate) fn say_as(
    t: &str,
    c: &str,
    ch: &str,
    seq: u64,
    speaker: &str,
    text: &str,
    ts: u64,
) -> Step {
    let mut v = serde_json::json!({"conversation_id": c, "tenant": t, "seq": seq,
        "speaker": speaker, "text": text, "ts_ms": ts * 1000});
    if !ch.is_empty() {
        v["channel"] = ch.into();
    }
    Step::Line(v.to_string(), ts * 1000)
}

pub(crate) fn end(c: &str, ts: u64) -> Step {
    Step::Line(
        serde_json::json!({"conversation_id": c, "type": "end", "ts_ms": ts * 1000}).to_string(),
        ts * 1000,
    )
}

/// Idle timeout of the ticks: long, so ticks only pass deadlines.
const IDLE_MS: u64 = 3_600_000;

pub(crate) fn play(e: &mut Engine, steps: &[Step], out: &mut Vec<Event>) {
    for s in steps {
        match s {
            Step::Line(l, now) => {
                let input = decode_str(l).unwrap_or_else(|err| panic!("{l}: {err}"));
                e.handle(&input, *now, out);
            }
            Step::Tick(now) => {
                e.close_idle(*now, IDLE_MS, out);
            }
        }
    }
}

fn run(steps: &[Step]) -> Vec<Event> {
    let mut e = engine();
    let mut out = Vec::new();
    play(&mut e, steps, &mut out);
    e.close_all(CloseReason::Eof, u64::MAX / 2, &mut out);
    out
}

pub(crate) fn violations(events: &[Event]) -> Vec<&Violation> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Violation(v) => Some(v),
            Event::Summary(_) => None,
        })
        .collect()
}

/// `(rule id, seq)` of every violation, in order.
fn verdicts(events: &[Event]) -> Vec<(String, u64)> {
    violations(events)
        .into_iter()
        .map(|v| (v.rule_id.clone(), v.seq))
        .collect()
}

fn of(events: &[Event], rule: &str) -> Vec<(String, u64)> {
    verdicts(events)
        .into_iter()
        .filter(|(r, _)| r == rule)
        .collect()
}

fn rs(pairs: &[(&str, u64)]) -> Vec<(String, u64)> {
    pairs.iter().map(|(r, s)| (r.to_string(), *s)).collect()
}

fn summary(events: &[Event]) -> &Summary {
    events
        .iter()
        .find_map(|e| match e {
            Event::Summary(s) => Some(s),
            Event::Violation(_) => None,
        })
        .expect("a summary")
}

#[test]
fn required_start_segments_start_seconds_and_end() {
    // Greeting in the first two agent segments; identity check within 60 s;
    // goodbye in the last two.
    let ok = run(&[
        say("c", "call", 0, "agent", "您好，先核实身份", 0),
        say("c", "call", 1, "customer", "好", 5),
        say("c", "call", 2, "agent", "好的，再见", 10),
        end("c", 11),
    ]);
    assert_eq!(verdicts(&ok), rs(&[]));
    let s = summary(&ok);
    assert_eq!((s.greeted, s.closed), (Some(true), Some(true)));

    // A system notice is nobody's turn: the greeting may come after it.
    let notice = run(&[
        say("c", "chat", 0, "system", "系统提示：客服已接入", 0),
        say("c", "chat", 1, "system", "系统提示：请耐心等待", 1),
        say("c", "chat", 2, "agent", "您好", 2),
    ]);
    assert_eq!(of(&notice, "greeting.std"), rs(&[]));

    // Missed: the greeting verdict at the second agent segment, the
    // identity check at the first segment past 60 s, the closing at close
    // (pointing at the last agent segment).
    let missed = run(&[
        say("c", "call", 0, "agent", "请讲", 0),
        say("c", "call", 1, "agent", "嗯", 10),
        say("c", "call", 2, "agent", "好的", 61),
        say("c", "call", 3, "agent", "核实身份", 70),
        end("c", 80),
    ]);
    // (The 51 s pause also breaks the call silence rule.)
    assert_eq!(
        verdicts(&missed),
        rs(&[
            ("greeting.std", 1),
            ("verify.identity", 2),
            ("call.silence", 2),
            ("closing.std", 3)
        ])
    );
    let v = violations(&missed);
    assert_eq!(v[1].rule_id, "verify.identity");
    assert!(
        v[1].note.as_deref().is_some_and(|n| n.contains("60 s")),
        "{:?}",
        v[1].note
    );
    assert_eq!(v[0].kind, "required");
    assert_eq!(v[0].category_name, "缺少开头语");
    assert_eq!(summary(&missed).greeted, Some(false));

    // The closing said, then two more agent segments: out of the window.
    let early = run(&[
        say("c", "call", 0, "agent", "您好，核实身份", 0),
        say("c", "call", 1, "agent", "再见", 1),
        say("c", "call", 2, "agent", "还有", 2),
        say("c", "call", 3, "agent", "别的", 3),
    ]);
    assert_eq!(of(&early, "closing.std"), rs(&[("closing.std", 3)]));

    // First seen mid-way (seq > 0): no verdict about the start.
    let midway = run(&[
        say("c", "call", 5, "agent", "好的", 0),
        say("c", "call", 6, "agent", "好的", 70),
    ]);
    assert_eq!(of(&midway, "greeting.std"), rs(&[]));
    assert_eq!(of(&midway, "verify.identity"), rs(&[]));
    assert_eq!(summary(&midway).greeted, None);

    // A customer-only conversation: the agent never spoke, nothing to judge.
    let silent = run(&[say("c", "chat", 0, "customer", "在吗", 0)]);
    assert_eq!(
        verdicts(&silent)
            .into_iter()
            .filter(|(r, _)| r.ends_with(".std") || r == "verify.identity")
            .count(),
        0
    );
}

#[test]
fn a_start_deadline_passes_by_the_clock() {
    // The agent spoke, then nobody did: the 60 s deadline passes on a tick.
    let events = run(&[
        say("c", "call", 0, "agent", "您好", 0),
        Step::Tick(30_000),
        Step::Tick(61_000),
    ]);
    let v = violations(&events);
    assert_eq!(v[0].rule_id, "verify.identity");
    // Reported by the tick, before the conversation closed.
    assert!(matches!(events.last(), Some(Event::Summary(_))));
    assert_eq!(of(&events, "verify.identity").len(), 1);
}

#[test]
fn response_within_segments_seconds_clock_and_close() {
    let answered = run(&[
        say("c", "call", 0, "agent", "您好，请稍等", 0),
        say("c", "call", 1, "customer", "好", 5),
        say("c", "call", 2, "agent", "感谢您的耐心等待", 30),
    ]);
    assert_eq!(of(&answered, "hold.thanks"), rs(&[]));

    // Two segments pass without the thanks: the verdict points at the
    // trigger, and shows its text.
    let by_segments = run(&[
        say("c", "call", 0, "agent", "您好，请稍等", 0),
        say("c", "call", 1, "customer", "好", 5),
        say("c", "call", 2, "agent", "查到了", 10),
        say("c", "call", 3, "agent", "感谢您的耐心等待", 11),
    ]);
    assert_eq!(of(&by_segments, "hold.thanks"), rs(&[("hold.thanks", 0)]));
    let v = violations(&by_segments)
        .into_iter()
        .find(|v| v.rule_id == "hold.thanks")
        .expect("hold");
    assert_eq!((v.text.as_str(), v.text_chars), ("您好，请稍等", 6));
    assert_eq!(v.deduct, 0.5);
    // A long trigger: an excerpt, and the segment's whole length.
    let long = format!("您好，请稍等{}", "查".repeat(100));
    let long_trigger = run(&[
        say("c", "call", 0, "agent", &long, 0),
        say("c", "call", 1, "agent", "好", 1),
        say("c", "call", 2, "agent", "好", 2),
    ]);
    let v = violations(&long_trigger)
        .into_iter()
        .find(|v| v.rule_id == "hold.thanks")
        .expect("hold");
    assert_eq!((v.text.chars().count(), v.text_chars), (64, 106));

    // 120 s pass by the next segment's time.
    let by_time = run(&[
        say("c", "call", 0, "agent", "您好，请稍等", 0),
        say("c", "call", 1, "agent", "感谢您的耐心等待", 121),
    ]);
    assert_eq!(of(&by_time, "hold.thanks"), rs(&[("hold.thanks", 0)]));

    // 120 s pass while nobody speaks: the tick reports it.
    let by_clock = run(&[
        say("c", "call", 0, "agent", "您好，请稍等", 0),
        Step::Tick(100_000),
        Step::Tick(121_000),
    ]);
    assert_eq!(of(&by_clock, "hold.thanks"), rs(&[("hold.thanks", 0)]));

    // At close: a trigger followed by a segment is missed; a trigger that
    // was the last segment is not judged; trigger and thanks in one
    // segment answer themselves.
    let closed = run(&[
        say("c", "call", 0, "agent", "您好，请稍等", 0),
        say("c", "call", 1, "customer", "好", 5),
        end("c", 6),
    ]);
    assert_eq!(of(&closed, "hold.thanks"), rs(&[("hold.thanks", 0)]));
    let last = run(&[say("c", "call", 0, "agent", "您好，请稍等", 0), end("c", 1)]);
    assert_eq!(of(&last, "hold.thanks"), rs(&[]));
    // …unless its time limit passed before the close: the same verdict the
    // clock would have given, with or without a tick in between.
    let late_end = run(&[
        say("c", "call", 0, "agent", "您好，请稍等", 0),
        end("c", 200),
    ]);
    assert_eq!(of(&late_end, "hold.thanks"), rs(&[("hold.thanks", 0)]));
    let both = run(&[
        say("c", "call", 0, "agent", "您好，请稍等，感谢您的耐心等待", 0),
        say("c", "call", 1, "agent", "好的", 1),
        say("c", "call", 2, "agent", "好的", 2),
    ]);
    assert_eq!(of(&both, "hold.thanks"), rs(&[]));
}

#[test]
fn patterns_and_detectors_judge_the_agent_and_map_to_the_original() {
    let events = run(&[
        say(
            "c",
            "call",
            0,
            "agent",
            "您好，您的号码是 138 1234 5678 吗",
            0,
        ),
        say("c", "call", 1, "customer", "我的号码是13812345678", 1),
        say("c", "call", 2, "agent", "请告诉我您的验证码", 2),
        say(
            "c",
            "call",
            3,
            "agent",
            "请不要把验证码告诉任何人，也不要告诉我你的密码",
            3,
        ),
        say("c", "call", 4, "agent", "您的号码是138****5678，[电话x]", 4),
    ]);
    assert_eq!(
        of(&events, "pii.number"),
        rs(&[("pii.number", 0), ("pii.number", 2)])
    );
    let v = violations(&events);
    // Masked at the source: offsets are those of the text as said.
    assert_eq!(v[0].matched.as_deref(), Some("*** **** 5678"));
    assert_eq!((v[0].start, v[0].end), (Some(9), Some(22)));
    assert_eq!(v[0].kind, "pattern");
    assert_eq!(v[1].matched.as_deref(), Some("告诉我您的验证码"));
}

#[test]
fn one_span_is_one_violation_the_most_severe_naming_the_others() {
    // 喂 at a clause start: wei.call on a call; the filler rule does not
    // list 喂. The escalation rule reads the customer only.
    let events = run(&[
        say("c", "call", 0, "agent", "喂，您好", 0),
        say("c", "chat", 1, "agent", "喂，您好", 1),
        say("c", "", 2, "agent", "喂", 2),
        say("c", "call", 3, "customer", "我要投诉，找律师", 3),
    ]);
    // Channel: a call rule judges calls and conversations of unknown
    // channel, not chats. (The conversation's channel is the latest one
    // given: seq 2 has none, so the chat of seq 1 applies.)
    assert_eq!(of(&events, "wei.call"), rs(&[("wei.call", 0)]));
    let esc: Vec<&Violation> = violations(&events)
        .into_iter()
        .filter(|v| v.category == "escalation")
        .collect();
    assert_eq!(esc.len(), 1);
    assert_eq!((esc[0].count, esc[0].deduct), (2, 0.0));
    assert_eq!(esc[0].severity, zhijian::event::Severity::Critical);

    // Spans side by side are separate violations.
    let mut e = engine();
    let mut out = Vec::new();
    let line = say("o", "call", 0, "agent", "啊不知道", 0);
    play(&mut e, &[line], &mut out);
    let v = violations(&out);
    assert_eq!(v.len(), 2, "{v:?}");
    let over = run(&[say("o", "call", 0, "agent", "不知道啊", 0)]);
    // 啊 is sentence-final here (not a clause start): no filler at all.
    assert_eq!(of(&over, "filler.basic"), rs(&[]));
}

#[test]
fn timing_first_reply_unanswered_and_silence() {
    let chat = run(&[
        say("c", "chat", 0, "customer", "在吗", 0),
        say("c", "chat", 1, "agent", "您好", 45),
        say("c", "chat", 2, "customer", "我的快递呢", 50),
        say("c", "chat", 3, "customer", "人呢", 60),
        say("c", "chat", 4, "agent", "您好，请稍等", 130),
        say("c", "chat", 5, "customer", "好", 135),
        say("c", "chat", 6, "agent", "感谢您的耐心等待", 150),
    ]);
    assert_eq!(
        of(&chat, "chat.first_reply"),
        rs(&[("chat.first_reply", 1)])
    );
    // The stretch from seq 2 waited 80 s (the second message is part of
    // it); seq 5 was answered in 15 s.
    assert_eq!(of(&chat, "chat.unanswered"), rs(&[("chat.unanswered", 2)]));
    // The verdict shows the customer message that waited.
    let v = violations(&chat)
        .into_iter()
        .find(|v| v.rule_id == "chat.unanswered")
        .expect("unanswered");
    assert_eq!((v.text.as_str(), v.text_chars), ("我的快递呢", 5));
    // Call rules do not apply in chat.
    assert_eq!(of(&chat, "call.silence"), rs(&[]));

    let never = run(&[
        say("c", "chat", 0, "customer", "在吗", 0),
        Step::Tick(31_000),
    ]);
    assert_eq!(
        of(&never, "chat.first_reply"),
        rs(&[("chat.first_reply", 0)])
    );

    let call = run(&[
        say("c", "call", 0, "agent", "您好", 0),
        say("c", "call", 1, "customer", "嗯", 10),
        say("c", "call", 2, "agent", "好的", 40),
    ]);
    assert_eq!(of(&call, "call.silence"), rs(&[("call.silence", 2)]));
}

#[test]
fn repetition_counts_the_same_text_digits_ignored() {
    let events = run(&[
        say("c", "chat", 0, "agent", "您好，订单123正在处理中", 0),
        say("c", "chat", 1, "agent", "您好，订单456正在处理中！", 1),
        say("c", "chat", 2, "agent", "好的", 2),
        say("c", "chat", 3, "agent", "好的", 3),
        say("c", "chat", 4, "agent", "好的", 4),
        say("c", "chat", 5, "agent", "您好 订单789 正在处理中", 5),
        say("c", "chat", 6, "agent", "您好，订单1正在处理中", 6),
    ]);
    // The third time, once; 好的 is too short to compare.
    assert_eq!(
        of(&events, "canned.repeated"),
        rs(&[("canned.repeated", 5)])
    );
}

#[test]
fn tenants_use_their_overlay_and_unknown_tenants_the_base() {
    let steps = |t: &str| {
        vec![
            say_as(t, "c", "call", 0, "agent", "您好，不知道，去别家吧", 0),
            say_as(t, "c", "call", 1, "agent", "号码是13812345678", 1),
        ]
    };
    let acme = run(&steps("acme"));
    let base = run(&steps("initech"));
    let rules = |ev: &[Event]| {
        let mut r: Vec<String> = violations(ev)
            .into_iter()
            .filter(|v| !v.spans.is_empty())
            .map(|v| format!("{}:{:?}:{}", v.rule_id, v.severity, v.deduct))
            .collect();
        r.sort();
        r
    };
    assert_eq!(
        rules(&acme),
        ["acme.competitor:Medium:1", "forbidden.core:Critical:2"]
    );
    assert_eq!(rules(&base), ["forbidden.core:High:1", "pii.number:High:0"]);
    let versions = |ev: &[Event]| summary(ev).lexicon_version.clone();
    assert!(versions(&acme).contains("/acme+"), "{}", versions(&acme));
    assert!(!versions(&base).contains('/'), "{}", versions(&base));
}

#[test]
fn late_segments_are_judged_by_what_they_show_alone() {
    // After the end, a late segment still yields its phrase and pattern
    // violations; no stateful rule reopens (no greeting, no hold verdict).
    let events = run(&[
        say("c", "call", 0, "agent", "您好", 0),
        end("c", 1),
        say("c", "call", 1, "agent", "请稍等，不知道，13812345678", 2),
        say("c", "call", 2, "agent", "好的", 3),
    ]);
    let after: Vec<(String, u64)> = verdicts(&events)
        .into_iter()
        .filter(|(_, seq)| *seq >= 1)
        .collect();
    assert_eq!(after, rs(&[("forbidden.core", 1), ("pii.number", 1)]));
}

/// A conversation that exercises every stateful kind, with clock ticks.
fn every_kind_script() -> Vec<Step> {
    vec![
        say("k", "chat", 0, "customer", "在吗，我要投诉", 0),
        say("k", "chat", 1, "agent", "在的", 40),
        say("k", "chat", 2, "customer", "快点", 45),
        say("k", "chat", 3, "agent", "请稍等", 50),
        Step::Tick(100_000),
        say("k", "chat", 4, "agent", "订单2正在处理中", 110),
        say("k", "chat", 5, "customer", "人呢", 120),
        Step::Tick(171_000),
        say("k", "chat", 6, "agent", "订单3正在处理中", 200),
        say("k", "chat", 7, "agent", "订单4正在处理中", 205),
        say("k", "chat", 8, "agent", "再见", 210),
        end("k", 211),
    ]
}

fn save_and_restore(e: &Engine) -> Engine {
    let saved: Vec<(String, String, String)> = e
        .export()
        .map(|(t, id, c)| {
            (
                t.to_string(),
                id.to_string(),
                serde_json::to_string(&c).expect("serializes"),
            )
        })
        .collect();
    let mut fresh = engine();
    for (t, id, json) in saved {
        let c: Conversation = serde_json::from_str(&json).expect("loads");
        fresh.import(&t, &id, c);
    }
    fresh
}

#[test]
fn state_saved_at_any_point_gives_the_same_verdicts() {
    let script = every_kind_script();
    let whole = run(&script);
    let rules: Vec<String> = verdicts(&whole).into_iter().map(|v| v.0).collect();
    for kind_rule in [
        "greeting.std",
        "verify.identity",
        "hold.thanks",
        "chat.first_reply",
        "chat.unanswered",
        "canned.repeated",
    ] {
        assert!(
            rules.iter().any(|r| r == kind_rule),
            "the script must exercise {kind_rule}: {rules:?}"
        );
    }
    for cut in 0..=script.len() {
        let mut first = engine();
        let mut out = Vec::new();
        play(&mut first, &script[..cut], &mut out);
        let mut second = save_and_restore(&first);
        play(&mut second, &script[cut..], &mut out);
        second.close_all(CloseReason::Eof, u64::MAX / 2, &mut out);
        assert_eq!(out, whole, "restart after step {cut}");
    }
}

#[test]
fn state_of_format_1_loads_into_the_greeting_and_closing_rules() {
    // Saved by the version before rule kinds: the greeting verdict and the
    // closing bits lived in the conversation.
    let v1 = r#"{"order":0,"channel":"call","agent_id":null,"last_activity_ms":0,
        "seen":[[0,2]],"midway":false,"segments":3,"agent_segments":3,"greeted":true,
        "closing_bits":1,"last_agent_seq":2,"last_agent_text":"再见","last_agent_chars":2,
        "counts":{"forbidden":0,"filler":0,"missing_greeting":0,"missing_closing":0},
        "deducted":[]}"#;
    let c: Conversation = serde_json::from_str(v1).expect("format 1 loads");
    let mut e = engine();
    e.import("default", "old", c);
    let mut out = Vec::new();
    e.close_all(CloseReason::End, 1_000, &mut out);
    let s = summary(&out);
    assert_eq!((s.greeted, s.closed), (Some(true), Some(true)));
    assert_eq!(of(&out, "greeting.std"), rs(&[]));
    assert_eq!(of(&out, "closing.std"), rs(&[]));
}

/// Through the daemon and a real NATS server: the daemon stops (SIGTERM)
/// in the middle of every kind's scope (a greeting window open, a hold
/// waiting for its thanks, a customer waiting for a first reply, a text
/// sent twice), saves its state, and the restarted daemon reaches exactly
/// the verdicts of one uninterrupted offline run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_restart_mid_scope_keeps_every_kinds_state() {
    use crate::daemon::{
        ChildDaemon, assert_no_duplicate_ids, assert_same, config_toml, js, metric, publish,
        wait_done,
    };
    use crate::nats_support::{NatsServer, free_port};
    let lines_of = |steps: Vec<Step>| -> Vec<String> {
        steps
            .into_iter()
            .filter_map(|s| match s {
                Step::Line(l, _) => Some(l),
                Step::Tick(_) => None,
            })
            .collect()
    };
    let script = |c: &str| {
        lines_of(vec![
            say(c, "call", 0, "customer", "在吗，我要投诉", 0),
            say(c, "call", 1, "agent", "在的", 40),
            say(c, "call", 2, "agent", "订单1正在处理中", 45),
            say(c, "call", 3, "agent", "请稍等", 50),
            // The stop comes here: greeting decided, identity check and
            // hold open, the canned text seen once.
            say(c, "call", 4, "agent", "订单2正在处理中", 110),
            say(c, "call", 5, "agent", "订单3正在处理中", 115),
            say(c, "call", 6, "agent", "核实身份，再见", 120),
            end(c, 121),
        ])
    };
    let (mut first, mut second) = (Vec::new(), Vec::new());
    for i in 0..6 {
        let l = script(&format!("r{i}"));
        first.extend_from_slice(&l[..4]);
        second.extend_from_slice(&l[4..]);
    }
    let all: Vec<String> = first.iter().chain(&second).cloned().collect();
    let mut offline = engine();
    let mut want = Vec::new();
    for l in &all {
        let input = decode_str(l).expect("valid");
        offline.handle(&input, input.ts_ms.unwrap_or(0), &mut want);
    }
    let rules: Vec<String> = verdicts(&want).into_iter().map(|v| v.0).collect();
    for r in [
        "greeting.std",
        "verify.identity",
        "hold.thanks",
        "canned.repeated",
    ] {
        assert!(rules.iter().any(|x| x == r), "{r} not exercised: {rules:?}");
    }

    let nats = NatsServer::start();
    let metrics_port = free_port();
    let dir = crate::support::tempdir("rules-restart");
    let cfg = dir.join("zhijian.toml");
    std::fs::write(
        &cfg,
        config_toml(&nats, &fixtures().join("rules"), metrics_port, ""),
    )
    .expect("config");
    let daemon = ChildDaemon::start(&cfg, metrics_port).await;
    publish(&nats, &first).await;
    let deadline = std::time::Instant::now() + crate::daemon::DEADLINE;
    while metric(metrics_port, "zhijian_open_conversations").await < 6.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "conversations never opened"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    daemon.signal("-TERM");
    assert!(daemon.wait().await.success());
    publish(&nats, &second).await;
    let daemon = ChildDaemon::start(&cfg, metrics_port).await;
    let got = wait_done(&js(&nats).await, 6).await;
    assert_no_duplicate_ids(&got);
    assert_same(&got, &want, "verdicts changed across the restart");
    assert_eq!(
        metric(metrics_port, "zhijian_state_restored_conversations_total").await,
        6.0
    );
    daemon.signal("-TERM");
    assert!(daemon.wait().await.success());
}

#[test]
fn phrase_syntax_matches_variants_and_gaps_within_a_clause() {
    let events = run(&[
        say("c", "call", 0, "agent", "您好，我这边没有办法", 0),
        say("c", "call", 1, "agent", "没办法", 1),
        say("c", "call", 2, "agent", "查不到物流信息", 2),
        say("c", "call", 3, "agent", "查询不到，信息稍后发您", 3),
        say("c", "call", 4, "agent", "暂时查不到物流信息", 4),
    ]);
    type Match = (u64, Option<String>, Option<usize>, Option<usize>);
    let got: Vec<Match> = violations(&events)
        .into_iter()
        .filter(|v| v.rule_id == "wording.syntax")
        .map(|v| (v.seq, v.matched.clone(), v.start, v.end))
        .collect();
    assert_eq!(
        got,
        vec![
            (0, Some("没有办法".to_string()), Some(6), Some(10)),
            (1, Some("没办法".to_string()), Some(0), Some(3)),
            // The gap holds 物流; the whole span is the match.
            (2, Some("查不到物流信息".to_string()), Some(0), Some(7)),
            // seq 3: the gap would cross a clause break; seq 4: inside the
            // exception, itself written with a gap.
        ]
    );
}

#[test]
fn a_conversation_that_began_elsewhere_gets_no_greeting_verdict() {
    // The first agent words continue an earlier contact.
    let continued = run(&[
        say(
            "c",
            "chat",
            0,
            "agent",
            "关于之前的问题，已经为您处理好了",
            0,
        ),
        say("c", "chat", 1, "agent", "好的", 1),
        end("c", 2),
    ]);
    assert_eq!(of(&continued, "greeting.std"), rs(&[]));
    assert_eq!(summary(&continued).greeted, None);
    // A greeting in the first segment is a greeting, whatever follows.
    let greeted = run(&[
        say("c", "chat", 0, "agent", "您好，之前的问题已经处理好了", 0),
        say("c", "chat", 1, "agent", "好的", 1),
    ]);
    assert_eq!(summary(&greeted).greeted, Some(true));
    // Without the marker: a missing greeting.
    let missed = run(&[
        say("c", "chat", 0, "agent", "已经为您处理好了", 0),
        say("c", "chat", 1, "agent", "好的", 1),
    ]);
    assert_eq!(of(&missed, "greeting.std"), rs(&[("greeting.std", 1)]));
    // The platform's flag on the input: a transferred conversation.
    let flagged = serde_json::json!({"conversation_id": "t", "seq": 0, "speaker": "agent",
        "text": "已经为您处理好了", "continued": true, "channel": "chat"})
    .to_string();
    let events = run(&[
        Step::Line(flagged, 0),
        say("t", "chat", 1, "agent", "好的", 1),
        end("t", 2),
    ]);
    assert_eq!(of(&events, "greeting.std"), rs(&[]));
    assert_eq!(summary(&events).greeted, None);
    // The customer's words before the agent spoke: `^那` only at their
    // start, `说了好几次` anywhere; after the agent spoke they do not count.
    let judged = |first: &str, second: &str| {
        let events = run(&[
            say("b", "chat", 0, "customer", first, 0),
            say("b", "chat", 1, "customer", second, 1),
            say("b", "chat", 2, "agent", "已经为您处理好了", 2),
            say("b", "chat", 3, "agent", "好的", 3),
            end("b", 4),
        ]);
        summary(&events).greeted
    };
    assert_eq!(judged("那什么时候到", "在吗"), None);
    assert_eq!(judged("在吗", "我都说了好几次了"), None);
    assert_eq!(judged("我想问那个订单", "在吗"), Some(false));
    let after = run(&[
        say("a", "chat", 0, "agent", "请讲", 0),
        say("a", "chat", 1, "customer", "那什么时候到", 1),
        say("a", "chat", 2, "agent", "好的", 2),
        end("a", 3),
    ]);
    assert_eq!(summary(&after).greeted, Some(false));
}

/// A deadline passed by the clock changes a conversation with no input: an
/// engine that tracks it says which, so a checkpoint of what changed (a
/// partition's delta) carries it; untracked, nothing is kept.
#[test]
fn a_clock_pass_names_the_conversations_it_changed() {
    let steps = [
        say("c", "call", 0, "agent", "您好", 0),
        say("quiet", "call", 0, "agent", "您好", 0),
        say("quiet", "call", 1, "customer", "我想查一下", 1),
    ];
    let mut e = engine();
    e.track_clock_changes();
    let mut out = Vec::new();
    play(&mut e, &steps, &mut out);
    assert!(
        e.take_clock_changes().is_empty(),
        "inputs are not the clock"
    );
    play(&mut e, &[Step::Tick(30_000)], &mut out);
    assert!(e.take_clock_changes().is_empty(), "no deadline passed yet");
    play(&mut e, &[Step::Tick(61_000)], &mut out);
    let changed = e.take_clock_changes();
    assert!(
        changed.contains(&("default".to_string(), "c".to_string())),
        "{changed:?}"
    );
    assert!(e.take_clock_changes().is_empty(), "drained");
    let mut untracked = engine();
    play(&mut untracked, &steps, &mut out);
    play(&mut untracked, &[Step::Tick(61_000)], &mut out);
    assert!(untracked.take_clock_changes().is_empty());
}
