//! The supervisor's desk, an agent's shift and the live board, end to end:
//! shared by every instance through NATS, surviving restarts.

use crate::console::*;
use crate::daemon::{Daemon, config, js, lexicons, publish, wait_done};
use crate::nats_support::{NatsServer, free_port};
use std::net::SocketAddr;
use std::time::Duration;
use zhijian::config::ConsoleConfig;

/// One HTTP/1.0 request with a method, headers and body: status and body.
fn send(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let (code, _, body) = http(port, method, "127.0.0.1", path, headers, Some(body));
    (code, body)
}

async fn send_async(
    port: u16,
    method: &'static str,
    path: String,
    headers: Vec<(&'static str, &'static str)>,
    body: String,
) -> (u16, String) {
    tokio::task::spawn_blocking(move || send(port, method, &path, &headers, &body))
        .await
        .expect("request")
}

/// GETs `path` until `ok` holds for its JSON (or the deadline).
async fn poll_json(
    port: u16,
    path: &str,
    ok: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = std::time::Instant::now() + crate::daemon::DEADLINE;
    loop {
        let (code, body) = send_async(port, "GET", path.to_string(), vec![], String::new()).await;
        if code == 200 {
            let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
            if ok(&v) {
                return v;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{path} never as wanted: {code} {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const JSON: (&str, &str) = ("Content-Type", "application/json");

/// Two instances of the daemon on one NATS, sharing a partitioned input
/// (`[cluster]`): each console shows every conversation on its board; an alert
/// acknowledged on one is acknowledged on the other, survives a restart,
/// and a false alarm is exported with its rule, span and lexicon version,
/// digits masked. Alert actions are validated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_desk_is_shared_by_every_instance_and_survives_restarts() {
    let nats = NatsServer::start();
    let member = |name: &str| {
        format!(
            "[cluster]\npartitions = 2\ninstance = \"{name}\"\nheartbeat_ms = 100\nlease_ms = 400\ncheckpoint_ms = 100\n"
        )
    };
    let (a, port_a) = with_console_in(&nats, None, None, &member("a")).await;
    let (b, port_b) = with_console_in(&nats, None, None, &member("b")).await;
    let lines: Vec<String> = [
        r#"{"conversation_id":"open-1","tenant":"acme","channel":"call","seq":0,"speaker":"agent","agent_id":"a1","text":"您好"}"#,
        r#"{"conversation_id":"open-1","tenant":"acme","channel":"call","seq":1,"speaker":"customer","text":"再不修我就投诉你们"}"#,
        r#"{"conversation_id":"open-1","tenant":"acme","channel":"call","seq":2,"speaker":"agent","agent_id":"a1","text":"急什么，你打13812345678问"}"#,
        r#"{"conversation_id":"done-1","tenant":"acme","channel":"chat","seq":0,"speaker":"agent","agent_id":"a2","text":"您好"}"#,
        r#"{"conversation_id":"done-1","tenant":"acme","channel":"chat","seq":1,"speaker":"agent","agent_id":"a2","text":"这不归我管"}"#,
        r#"{"conversation_id":"done-1","tenant":"acme","type":"end"}"#,
    ]
    .map(String::from)
    .to_vec();
    publish(&nats, &lines).await;
    let js = js(&nats).await;
    let events = crate::daemon::wait_events(&js, "the alerts and done-1's summary", |events| {
        let has = |rule: &str| {
            events
                .iter()
                .any(|e| matches!(e, zhijian::event::Event::Violation(v) if v.rule_id == rule))
        };
        has("escalation.complaint_threat")
            && has("forbidden.impatience")
            && events
                .iter()
                .any(|e| matches!(e, zhijian::event::Event::Summary(_)))
    })
    .await;
    let id_of = |rule: &str| {
        events
            .iter()
            .find_map(|e| match e {
                zhijian::event::Event::Violation(v) if v.rule_id == rule => Some(v.id.clone()),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no {rule} violation"))
    };
    let threat = id_of("escalation.complaint_threat");
    let rude = id_of("forbidden.impatience");

    // Both boards: the open conversation with the critical alert first,
    // its agent and channel; the closed one below it with its score.
    for port in [port_a, port_b] {
        let board = poll_json(port, "/api/board", |v| {
            v["rows"].as_array().is_some_and(|r| r.len() == 2)
                && v["rows"][0]["worst_open"]["severity"] == "critical"
                && v["rows"][1]["open"] == false
        })
        .await;
        let first = &board["rows"][0];
        assert_eq!(first["conversation_id"], "open-1");
        assert_eq!(
            (first["agent_id"].as_str(), first["channel"].as_str()),
            (Some("a1"), Some("call"))
        );
        assert_eq!(first["worst_open"]["id"], threat.as_str());
        assert_eq!(first["worst_open"]["category_name"], "客户投诉升级");
        assert!(
            first["score"].as_f64().is_some_and(|s| s < 100.0),
            "{first}"
        );
        assert_eq!(board["rows"][1]["conversation_id"], "done-1");
        assert_eq!(board["rows"][1]["reason"], "end");
    }
    // Filters as the feed's.
    let only_a2 = poll_json(port_a, "/api/board?agent=a2", |v| {
        v["rows"].as_array().is_some_and(|r| r.len() == 1)
    })
    .await;
    assert_eq!(only_a2["rows"][0]["conversation_id"], "done-1");
    let top = poll_json(port_a, "/api/board?limit=1", |v| v["total"] == 2).await;
    assert_eq!(top["rows"].as_array().map(Vec::len), Some(1), "{top}");
    assert_eq!(top["rows"][0]["conversation_id"], "open-1");

    // Bad actions: clear errors, nothing stored.
    let long_note = format!(
        r#"{{"action":"note","by":"张三","note":"{}"}}"#,
        "字".repeat(1001)
    );
    let huge = format!(
        r#"{{"action":"note","by":"张三","note":"{}"}}"#,
        "x".repeat(9000)
    );
    let path = format!("/api/alerts/{threat}");
    for (what, headers, body, code, says) in [
        (
            "unknown action",
            vec![JSON],
            r#"{"action":"delete","by":"张三"}"#.to_string(),
            400,
            "unknown action",
        ),
        (
            "no name",
            vec![JSON],
            r#"{"action":"acknowledge","by":" "}"#.to_string(),
            400,
            "`by` must not be empty",
        ),
        (
            "unknown field",
            vec![JSON],
            r#"{"action":"acknowledge","by":"x","admin":true}"#.to_string(),
            422,
            "unknown field",
        ),
        (
            "long note",
            vec![JSON],
            long_note,
            400,
            "over the limit of 1000",
        ),
        ("huge body", vec![JSON], huge, 413, ""),
        (
            "not JSON",
            vec![("Content-Type", "text/plain")],
            r#"{"action":"acknowledge","by":"x"}"#.to_string(),
            415,
            "",
        ),
        (
            "cross-site",
            vec![JSON, ("Sec-Fetch-Site", "cross-site")],
            r#"{"action":"acknowledge","by":"x"}"#.to_string(),
            403,
            "own page",
        ),
    ] {
        let (got, body) = send_async(port_a, "POST", path.clone(), headers, body).await;
        assert_eq!(got, code, "{what}: {body}");
        assert!(body.contains(says), "{what}: {body}");
    }
    let (got, _) = send_async(
        port_a,
        "POST",
        "/api/alerts/not-an-id".into(),
        vec![JSON],
        r#"{"action":"acknowledge","by":"x"}"#.into(),
    )
    .await;
    assert_eq!(got, 400);
    let (got, _) = send_async(
        port_a,
        "POST",
        format!("/api/alerts/{}", "0".repeat(32)),
        vec![JSON],
        r#"{"action":"acknowledge","by":"x"}"#.into(),
    )
    .await;
    assert_eq!(got, 404, "an alert the console never saw");
    let (got, _) = send_async(port_b, "GET", path.clone(), vec![], String::new()).await;
    assert_eq!(got, 404, "no one worked it yet");

    // Acknowledged on A (by a name that is markup: stored as text) ...
    let (got, body) = send_async(
        port_a,
        "POST",
        path.clone(),
        vec![JSON],
        r#"{"action":"acknowledge","by":"<b>张三</b>"}"#.into(),
    )
    .await;
    assert_eq!(got, 200, "{body}");
    // ... seen on B, and on B's board the critical alert is no longer open.
    let state = poll_json(port_b, &path, |v| v["status"] == "acknowledged").await;
    assert_eq!(state["acknowledged"]["by"], "<b>张三</b>");
    assert!(
        state["acknowledged"]["at_ms"]
            .as_u64()
            .is_some_and(|t| t > 0)
    );
    assert_eq!(state["alert"]["rule_id"], "escalation.complaint_threat");
    let board = poll_json(port_b, "/api/board", |v| {
        v["rows"]
            .as_array()
            .is_some_and(|r| r.iter().all(|r| r["worst_open"]["severity"] != "critical"))
    })
    .await;
    let open_1 = board["rows"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["conversation_id"] == "open-1"))
        .expect("open-1 on the board");
    assert_ne!(open_1["worst_open"]["id"], threat.as_str());
    assert_eq!(
        open_1["open_alerts"].as_u64(),
        open_1["alerts"].as_u64().map(|n| n - 1)
    );

    // A false alarm, with a note, marked on B: exported by A, masked.
    let rude_path = format!("/api/alerts/{rude}");
    let (got, body) = send_async(
        port_b,
        "POST",
        rude_path.clone(),
        vec![JSON],
        r#"{"action":"false_alarm","by":"李四","note":"客户先说的\"急什么\"，回拨13812345678"}"#
            .into(),
    )
    .await;
    assert_eq!(got, 200, "{body}");
    poll_json(port_a, &rude_path, |v| v["status"] == "false_alarm").await;
    let (got, csv) = send_async(
        port_a,
        "GET",
        "/api/false-alarms".into(),
        vec![],
        String::new(),
    )
    .await;
    assert_eq!(got, 200);
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(rows.len(), 2, "{csv}");
    // With a byte order mark, so that Excel on a Chinese Windows reads UTF-8.
    assert!(rows[0].starts_with("\u{FEFF}alert_id,tenant,conversation_id,seq,agent_id,rule_id"));
    let rude_event = events
        .iter()
        .find_map(|e| match e {
            zhijian::event::Event::Violation(v) if v.id == rude => Some(v.clone()),
            _ => None,
        })
        .expect("the violation");
    for want in [
        rude.as_str(),
        "forbidden.impatience",
        &rude_event.lexicon_version,
        "0-3",
        "李四",
        "*******5678",
    ] {
        assert!(rows[1].contains(want), "{want} in {}", rows[1]);
    }
    assert!(
        !csv.contains("13812345678"),
        "the export masks numbers: {csv}"
    );
    let (got, jsonl) = send_async(
        port_a,
        "GET",
        "/api/false-alarms?format=jsonl".into(),
        vec![],
        String::new(),
    )
    .await;
    assert_eq!(got, 200);
    let line: serde_json::Value = serde_json::from_str(jsonl.trim()).expect("one JSON line");
    assert_eq!(line["alert"]["spans"][0], serde_json::json!([0, 3]));
    assert_eq!(
        line["notes"][0]["text"], "客户先说的\"急什么\"，回拨*******5678",
        "notes are masked like transcripts"
    );
    // The same export without the console, from the bucket.
    let url = nats.url();
    let cli = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_zhijian"))
            .args(["false-alarms", "--nats-url", &url])
            .output()
            .expect("zhijian false-alarms runs")
    })
    .await
    .expect("the export");
    assert!(
        cli.status.success(),
        "{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&cli.stdout),
        csv,
        "the CLI exports what the console does"
    );
    let (got, _) = send_async(
        port_a,
        "GET",
        "/api/false-alarms?format=xlsx".into(),
        vec![],
        String::new(),
    )
    .await;
    assert_eq!(got, 400);

    // The conversation view: the score by scorecard section, named.
    let view = poll_json(port_a, "/api/conversations/acme/open-1", |v| {
        v["violations"].as_array().is_some_and(|a| a.len() >= 2)
    })
    .await;
    let sections = view["sections"].as_array().expect("sections");
    assert!(
        sections
            .iter()
            .any(|s| s["name"] == "服务用语" && s["deducted"].as_f64().is_some_and(|d| d > 0.0)),
        "{sections:?}"
    );
    let deducted: f64 = sections.iter().filter_map(|s| s["deducted"].as_f64()).sum();
    assert_eq!(view["score"].as_f64(), Some(100.0 - deducted));

    // An agent over the shift: alerts and average score.
    let agent = poll_json(port_a, "/api/agents/a2", |v| v["conversations_closed"] == 1).await;
    assert!(agent["alerts"].as_u64().is_some_and(|n| n >= 1), "{agent}");
    let done_score = events
        .iter()
        .find_map(|e| match e {
            zhijian::event::Event::Summary(s) if s.conversation_id == "done-1" => Some(s.score),
            _ => None,
        })
        .expect("a summary");
    assert_eq!(agent["average_score"].as_f64(), Some(done_score));
    let (got, _) = send_async(
        port_a,
        "GET",
        "/api/agents/a2?hours=99".into(),
        vec![],
        String::new(),
    )
    .await;
    assert_eq!(got, 400);

    // Both instances restart: the state is in NATS, not in them.
    a.stop().await;
    b.stop().await;
    let (c, port_c) = with_console_in(&nats, None, None, &member("c")).await;
    let state = poll_json(port_c, &path, |v| v["status"] == "acknowledged").await;
    assert_eq!(state["acknowledged"]["by"], "<b>张三</b>");
    poll_json(port_c, &rude_path, |v| v["status"] == "false_alarm").await;
    c.stop().await;
}

/// An agent's shift is counted from the output stream, not from the
/// console's history: with a history of 3 events, 8 alerts and 2 closed
/// conversations are all counted (the list shows what the history holds).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agents_shift_counts_more_than_the_history_holds() {
    let nats = NatsServer::start();
    let mut cfg = config(&nats, &lexicons(), "");
    let port = free_port();
    cfg.console = Some(ConsoleConfig {
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        token: None,
        basic: None,
        mask_digits: true,
        history: 3,
    });
    let daemon = Daemon::start(cfg).await;
    let mut lines = Vec::new();
    for c in 0..2 {
        for seq in 0..4 {
            lines.push(format!(
                r#"{{"conversation_id":"s{c}","tenant":"acme","channel":"call","seq":{seq},"speaker":"agent","agent_id":"a7","text":"急什么"}}"#
            ));
        }
        lines.push(format!(
            r#"{{"conversation_id":"s{c}","tenant":"acme","type":"end"}}"#
        ));
    }
    publish(&nats, &lines).await;
    let js = js(&nats).await;
    let events = wait_done(&js, 2).await;
    let alerts = events
        .iter()
        .filter(|e| matches!(e, zhijian::event::Event::Violation(_)))
        .count() as u64;
    assert!(
        alerts > 3,
        "{alerts} alerts: the test needs more than the history"
    );
    let agent = poll_json(port, "/api/agents/a7", |v| {
        v["alerts"].as_u64() == Some(alerts) && v["conversations_closed"] == 2
    })
    .await;
    assert!(
        agent["recent"].as_array().is_some_and(|r| r.len() <= 3),
        "{agent}"
    );
    let scores: Vec<f64> = events
        .iter()
        .filter_map(|e| match e {
            zhijian::event::Event::Summary(s) => Some(s.score),
            _ => None,
        })
        .collect();
    let mean = ((scores.iter().sum::<f64>() / scores.len() as f64) * 100.0).round() / 100.0;
    assert_eq!(agent["average_score"].as_f64(), Some(mean));
    daemon.stop().await;
}

/// The board reads the input stream from its lookback, but at most its
/// replay limit of messages back, then follows it live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_board_replays_at_most_its_limit_of_the_input_stream() {
    use zhijian::console::{Board, Scorecard, follow_input};
    let nats = NatsServer::start();
    let js = js(&nats).await;
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "BOARD_T".into(),
        subjects: vec!["bt.>".into()],
        ..Default::default()
    })
    .await
    .expect("stream");
    let seg = |i: usize| {
        format!(
            r#"{{"conversation_id":"c{i:02}","tenant":"t","agent_id":"a","seq":0,"speaker":"agent","text":"您好"}}"#
        )
    };
    for i in 0..30 {
        js.publish(format!("bt.t.c{i:02}"), seg(i).into())
            .await
            .expect("publish")
            .await
            .expect("stored");
    }
    let board = std::sync::Arc::new(Board::default());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(follow_input(
        js.clone(),
        "BOARD_T".into(),
        "bt.>".into(),
        std::sync::Arc::clone(&board),
        10,
        None,
        stopped,
    ));
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    };
    let ids = |board: &Board| {
        let mut ids: Vec<String> = board
            .rows(now(), &Scorecard::default(), |_| true, |_, _| true)
            .into_iter()
            .map(|r| r.conversation_id)
            .collect();
        ids.sort();
        ids
    };
    let want: Vec<String> = (20..30).map(|i| format!("c{i:02}")).collect();
    let deadline = std::time::Instant::now() + crate::daemon::DEADLINE;
    while ids(&board) != want {
        assert!(std::time::Instant::now() < deadline, "{:?}", ids(&board));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        ids(&board),
        want,
        "the last 10 messages, not the 30 of the lookback"
    );
    // Live from there.
    js.publish("bt.t.c30", seg(30).into())
        .await
        .expect("publish")
        .await
        .expect("stored");
    while ids(&board).len() < 11 {
        assert!(std::time::Instant::now() < deadline, "{:?}", ids(&board));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The live message came after the lookback's in the stream: nothing of
    // the lookback beyond its last 10 arrived before it.
    let mut with_live = want.clone();
    with_live.push("c30".into());
    assert_eq!(ids(&board), with_live);
    let _ = stop.send(true);
}
