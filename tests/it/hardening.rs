//! Hostile input and faults against the daemon and a real nats-server
//! (issue 10): each test is named after the defect it pins, and fails on
//! the code that had it.

use crate::daemon::{
    ChildDaemon, Daemon, assert_no_duplicate_ids, assert_same, config, config_toml, js, lexicons,
    metric, output_events, publish, scan, stream_messages, wait_done,
};
use crate::nats_support::{NatsServer, free_port, http_get, tempdir};
use async_nats::jetstream;
use std::io::{BufRead, BufReader, Write};
use std::time::Duration;
use zhijian::event::Event;

/// `[cluster]` with `partitions` and short heartbeats, leases and
/// checkpoints (a test's failures and hand-overs in fractions of a second).
pub(crate) fn fast_partitions(partitions: u32) -> String {
    format!(
        "[cluster]\npartitions = {partitions}\nheartbeat_ms = 100\nlease_ms = 400\ncheckpoint_ms = 100\n"
    )
}

pub(crate) use zhijian_test_kit::wait::wait_for;

pub(crate) async fn readyz(port: u16) -> u16 {
    tokio::task::spawn_blocking(move || http_get(port, "/readyz"))
        .await
        .ok()
        .flatten()
        .map_or(0, |(code, _)| code)
}

/// Waits for the dead-letter stream to hold a message, and checks it is
/// the only one.
pub(crate) async fn the_dead_letter(js: &jetstream::Context) -> async_nats::Message {
    wait_for("the dead letter", async || {
        !stream_messages(js, "ZHIJIAN_DEADLETTER").await.is_empty()
    })
    .await;
    let mut letters = stream_messages(js, "ZHIJIAN_DEADLETTER").await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    letters.remove(0)
}

/// Defect 1: once ~5,000 output events waited to be stored at once (the
/// client's window of unacknowledged publishes), every shard hung for good.
/// 6,000 conversations idle-closing together in one partition is such a
/// burst.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_beyond_the_clients_publish_window_is_stored_in_full() {
    const N: usize = 6_000;
    let nats = NatsServer::start();
    let mut cfg = config(&nats, &lexicons(), "[cluster]\npartitions = 1\n");
    cfg.idle_timeout = Duration::from_secs(2);
    let daemon = Daemon::start(cfg).await;
    let lines: Vec<String> = (0..N)
        .map(|i| {
            format!(r#"{{"conversation_id":"b{i}","tenant":"acme","seq":0,"speaker":"customer","text":"你好"}}"#)
        })
        .collect();
    publish(&nats, &lines).await;
    let js = js(&nats).await;
    let got = wait_done(&js, N).await;
    assert_no_duplicate_ids(&got);
    let summaries = got
        .iter()
        .filter(|e| matches!(e, Event::Summary(s) if s.reason == zhijian::event::CloseReason::Idle))
        .count();
    assert_eq!(summaries, N);
    assert_eq!(
        metric(daemon.metrics_port, "zhijian_output_pending_events").await,
        0.0
    );
    daemon.stop().await;
}

/// Defects 1 and 4: one agent segment of 急什么 × 5,010 made 5,010
/// violations (and hung the daemon). Now it is one violation with a count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_segment_with_thousands_of_hits_is_one_stored_violation() {
    let nats = NatsServer::start();
    let daemon = Daemon::start(config(&nats, &lexicons(), "")).await;
    let text = "急什么".repeat(5010);
    let lines = vec![
        format!(
            r#"{{"conversation_id":"h","tenant":"acme","seq":0,"speaker":"agent","text":"{text}"}}"#
        ),
        r#"{"conversation_id":"h","tenant":"acme","type":"end"}"#.to_string(),
    ];
    publish(&nats, &lines).await;
    let js = js(&nats).await;
    let got = wait_done(&js, 1).await;
    assert_same(&got, &scan(&lines), "one huge segment");
    let forbidden = crate::support::violations_of(&got, "forbidden");
    assert_eq!(forbidden.len(), 1);
    assert_eq!(forbidden[0].count, 5010);
    assert!(forbidden[0].text.chars().count() <= 256);
    let m = daemon.metrics();
    assert!(
        m.contains("zhijian_limits_applied_total{limit=\"repeated_hits\"} 5009"),
        "{m}"
    );
    assert!(
        m.contains("zhijian_limits_applied_total{limit=\"excerpt\"} "),
        "{m}"
    );
    daemon.stop().await;
}

/// Defect 2: a bad message of exactly the maximum payload made a dead
/// letter (payload + headers) over the limit; it was Nak'ed forever. Now
/// it is cut to fit, stored, and the partition goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_message_of_the_maximum_payload_is_dead_lettered_and_the_partition_goes_on() {
    let nats = NatsServer::start();
    let daemon = Daemon::start(config(&nats, &lexicons(), "[cluster]\npartitions = 1\n")).await;
    let client = async_nats::connect(nats.url()).await.expect("connect");
    let max = client.server_info().max_payload;
    let jsx = jetstream::new(client);
    let payload = vec![b'x'; max];
    jsx.publish("transcripts.acme.big", payload.into())
        .await
        .expect("publish")
        .await
        .expect("stored");
    let good = vec![
        r#"{"conversation_id":"g","tenant":"acme","seq":0,"speaker":"agent","text":"您好，急什么"}"#.to_string(),
        r#"{"conversation_id":"g","tenant":"acme","type":"end"}"#.to_string(),
    ];
    publish(&nats, &good).await;
    let js = js(&nats).await;
    let letter = the_dead_letter(&js).await;
    let h = letter.headers.as_ref().expect("headers");
    assert_eq!(
        h.get("Zhijian-Error").map(|v| v.as_str()),
        Some("invalid_json")
    );
    assert_eq!(
        h.get("Zhijian-Truncated").map(|v| v.as_str()),
        Some(max.to_string().as_str())
    );
    assert_eq!(
        h.get("Zhijian-Original-Sequence").map(|v| v.as_str()),
        Some("1")
    );
    assert!(letter.payload.len() < max);
    assert_same(&wait_done(&js, 1).await, &scan(&good), "the input after it");
    assert_eq!(
        metric(
            daemon.metrics_port,
            "zhijian_limits_applied_total{limit=\"deadletter_truncated\"}"
        )
        .await,
        1.0
    );
    daemon.stop().await;
}

/// Publishes raw bytes as a subject, as a client without UTF-8 checks can.
pub(crate) fn publish_raw_subject(nats: &NatsServer, subject: &[u8], payload: &str) {
    let port: u16 = nats
        .url()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port");
    let stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut line = String::new();
    reader.read_line(&mut line).expect("INFO");
    assert!(line.starts_with("INFO"), "{line}");
    let mut w = stream;
    let mut msg = b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\nPUB ".to_vec();
    msg.extend_from_slice(subject);
    msg.extend_from_slice(format!(" {}\r\n{payload}\r\nPING\r\n", payload.len()).as_bytes());
    w.write_all(&msg).expect("write");
    loop {
        line.clear();
        reader.read_line(&mut line).expect("PONG");
        assert!(!line.starts_with("-ERR"), "{line}");
        if line.starts_with("PONG") {
            return;
        }
    }
}

/// A message on a subject that is not UTF-8, then a good conversation;
/// returns the bad payload and the good lines.
pub(crate) async fn publish_poison_then_good(nats: &NatsServer) -> (&'static str, Vec<String>) {
    let bad =
        r#"{"conversation_id":"x","tenant":"acme","seq":0,"speaker":"agent","text":"急什么"}"#;
    publish_raw_subject(nats, b"transcripts.acme.\xff\xfe", bad);
    let good = vec![
        r#"{"conversation_id":"g","tenant":"acme","seq":0,"speaker":"agent","text":"您好，急什么"}"#.to_string(),
        r#"{"conversation_id":"g","tenant":"acme","type":"end"}"#.to_string(),
    ];
    publish(nats, &good).await;
    (bad, good)
}

/// Defect 3: a subject that is not UTF-8 made the client drop the
/// connection on each delivery, forever; it was never dead-lettered. Now
/// the partition's holder finds it from the server's side, and it costs
/// the input connection one reconnect, the output connection none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_partitions_a_non_utf8_subject_is_dead_lettered_and_removed() {
    let nats = NatsServer::start();
    let daemon = Daemon::start(config(&nats, &lexicons(), &fast_partitions(2))).await;
    let (bad, good) = publish_poison_then_good(&nats).await;
    let js = js(&nats).await;
    wait_for("the good conversation's summary", async || {
        output_events(&js)
            .await
            .iter()
            .any(|e| matches!(e, Event::Summary(_)))
    })
    .await;
    assert_same(
        &output_events(&js).await,
        &scan(&good),
        "the good conversation",
    );
    let letter = the_dead_letter(&js).await;
    let error = letter.headers.as_ref().and_then(|h| h.get("Zhijian-Error"));
    assert_eq!(error.map(|v| v.as_str()), Some("invalid_subject"));
    assert_eq!(&letter.payload[..], bad.as_bytes());
    let port = daemon.metrics_port;
    wait_for("the message removed", async || {
        metric(port, "zhijian_undecodable_messages_removed_total").await == 1.0
    })
    .await;
    let input_drops = "zhijian_nats_reader_disconnects_total{connection=\"input\"}";
    assert!(metric(port, input_drops).await <= 1.0);
    assert_eq!(metric(port, "zhijian_nats_disconnects_total").await, 0.0);
    daemon.stop().await;
}

/// The same where a partitioned stream cannot take the subject (four
/// tokens): the stream of unroutable inputs keeps it, and its sweep
/// dead-letters and removes it before its consumer would drop the
/// connection at every delivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_partitions_a_non_utf8_unroutable_subject_is_dead_lettered_and_removed() {
    let nats = NatsServer::start();
    let daemon = Daemon::start(config(&nats, &lexicons(), "")).await;
    let bad =
        r#"{"conversation_id":"x.y","tenant":"acme","seq":0,"speaker":"agent","text":"急什么"}"#;
    publish_raw_subject(&nats, b"transcripts.acme.\xff\xfe.y", bad);
    let js = js(&nats).await;
    let letter = the_dead_letter(&js).await;
    let h = letter.headers.as_ref().expect("headers");
    assert_eq!(
        h.get("Zhijian-Error").map(|v| v.as_str()),
        Some("invalid_subject")
    );
    assert_eq!(&letter.payload[..], bad.as_bytes());
    let port = daemon.metrics_port;
    wait_for("the message removed", async || {
        metric(port, "zhijian_undecodable_messages_removed_total").await == 1.0
    })
    .await;
    // Good input goes on.
    let good = vec![
        r#"{"conversation_id":"g","tenant":"acme","seq":0,"speaker":"agent","text":"您好，急什么"}"#.to_string(),
        r#"{"conversation_id":"g","tenant":"acme","type":"end"}"#.to_string(),
    ];
    publish(&nats, &good).await;
    assert_same(
        &wait_done(&js, 1).await,
        &scan(&good),
        "the good conversation",
    );
    let input_drops = "zhijian_nats_reader_disconnects_total{connection=\"input\"}";
    assert!(metric(port, input_drops).await <= 1.0);
    assert_eq!(metric(port, "zhijian_nats_disconnects_total").await, 0.0);
    daemon.stop().await;
}

/// Resident memory of a process, in MiB.
fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .expect("VmRSS")
        / 1024.0
}

/// Defect 4 (console): 500 browsers that asked for the whole history and
/// never read took RSS from 70 MB to 1.3 GB (each got its own copy of the
/// replay), and it stayed after they left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsers_that_never_read_cost_little_memory_and_return_it() {
    const EVENTS: usize = 3_000;
    const BROWSERS: usize = 200;
    let nats = NatsServer::start();
    // A history of 3,000 events with 4 KB of text each (12 MB), stored
    // before the daemon starts: its console loads them into its ring.
    {
        let mut cfg = config(&nats, &lexicons(), "");
        cfg.console = None;
        let d = Daemon::start(cfg).await;
        d.stop().await;
    }
    let js = js(&nats).await;
    let text = "您好".repeat(2048);
    let mut acks = Vec::new();
    for i in 0..EVENTS {
        let v = serde_json::json!({"type":"violation","id":format!("{i:032x}"),"conversation_id":format!("m{i}"),
            "tenant":"acme","channel":"chat","agent_id":"a1","seq":0,"rule_id":"forbidden.x","category":"forbidden",
            "severity":"high","deduct":1.0,"matched":"您好","start":0,"end":2,"text":text,"lexicon_version":"t","ts_ms":1});
        acks.push(
            js.publish("violations.acme.forbidden", v.to_string().into())
                .await
                .expect("publish"),
        );
    }
    for a in acks {
        a.await.expect("stored");
    }
    let metrics_port = free_port();
    let console_port = free_port();
    let dir = tempdir("stalled-browsers");
    let file = dir.join("zhijian.toml");
    let toml = config_toml(&nats, &lexicons(), metrics_port, "").replace(
        "[console]\naddr = \"127.0.0.1:0\"",
        &format!("[console]\naddr = \"127.0.0.1:{console_port}\""),
    );
    std::fs::write(&file, toml).expect("config");
    let daemon = ChildDaemon::start(&file, metrics_port).await;
    wait_for("the console's history", async || {
        metric(metrics_port, "zhijian_console_events_total").await >= EVENTS as f64
    })
    .await;
    let before = rss_mib(daemon.pid());
    let mut browsers = Vec::new();
    for _ in 0..BROWSERS {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", console_port)).expect("connect");
        // A tiny receive buffer, and never read: the server's writes stall.
        write!(
            s,
            "GET /api/events?after=0 HTTP/1.1\r\nHost: 127.0.0.1:{console_port}\r\nAccept: text/event-stream\r\n\r\n"
        )
        .expect("send");
        browsers.push(s);
    }
    wait_for("every browser connected", async || {
        metric(metrics_port, "zhijian_console_clients").await == BROWSERS as f64
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during = rss_mib(daemon.pid());
    drop(browsers);
    wait_for("every browser gone", async || {
        metric(metrics_port, "zhijian_console_clients").await == 0.0
    })
    .await;
    let after = rss_mib(daemon.pid());
    eprintln!(
        "console RSS: {before:.0} MiB idle, {during:.0} MiB with {BROWSERS} stalled browsers, {after:.0} MiB after"
    );
    // A copy of the history each would be 200 x 12 MB.
    assert!(during - before < 150.0, "{before:.0} -> {during:.0} MiB");
    assert!(
        after - before < 150.0,
        "{before:.0} -> {after:.0} MiB after they left"
    );
    daemon.signal("-TERM");
    assert!(daemon.wait().await.success());
}

/// Segment length is a configurable limit: over it, a dead letter naming
/// the limit; under it, judged as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_text_limit_is_configurable() {
    let nats = NatsServer::start();
    let mut cfg = config(&nats, &lexicons(), "");
    cfg.max_text_bytes = 64;
    let daemon = Daemon::start(cfg).await;
    let long = "急什么".repeat(10); // 90 bytes
    let lines = vec![
        format!(
            r#"{{"conversation_id":"t1","tenant":"acme","seq":0,"speaker":"agent","text":"{long}"}}"#
        ),
        r#"{"conversation_id":"t2","tenant":"acme","seq":0,"speaker":"agent","text":"急什么"}"#
            .to_string(),
        r#"{"conversation_id":"t2","tenant":"acme","type":"end"}"#.to_string(),
    ];
    publish(&nats, &lines).await;
    let js = js(&nats).await;
    let got = wait_done(&js, 1).await;
    assert_same(&got, &scan(&lines[1..]), "the short segment is judged");
    let letter = the_dead_letter(&js).await;
    let h = letter.headers.as_ref().expect("headers");
    assert_eq!(
        h.get("Zhijian-Error").map(|v| v.as_str()),
        Some("text_too_long")
    );
    assert_eq!(
        h.get("Zhijian-Error-Detail").map(|v| v.as_str()),
        Some("text is 90 bytes, over the limit of 64")
    );
    daemon.stop().await;
}

/// A subject the partitioned stream cannot take (a conversation id with an
/// unescaped `.`, or none): such publishes, core NATS or JetStream, are
/// kept by a stream of their own and dead-lettered (`unroutable_subject`),
/// never lost without a trace; good input goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_partitions_an_unroutable_subject_is_dead_lettered() {
    let nats = NatsServer::start();
    let daemon = Daemon::start(config(&nats, &lexicons(), "")).await;
    let client = async_nats::connect(nats.url()).await.expect("connect");
    let dotted =
        r#"{"conversation_id":"a.b","tenant":"acme","seq":0,"speaker":"agent","text":"您好"}"#;
    client
        .publish("transcripts.acme.a.b", dotted.into())
        .await
        .expect("core publish");
    client
        .publish("transcripts.acme", "no id".into())
        .await
        .expect("core publish");
    client.flush().await.expect("flush");
    // A JetStream publish of an id with an unescaped '.': stored, then
    // dead-lettered; `zhijian publish` escapes it (judged).
    let jsx = jetstream::new(client.clone());
    jsx.publish("transcripts.acme.x.y", dotted.replace("a.b", "x.y").into())
        .await
        .expect("publish")
        .await
        .expect("stored");
    let lines = vec![
        r#"{"conversation_id":"ok.1","tenant":"acme","seq":0,"speaker":"agent","text":"不关我的事"}"#.to_string(),
        r#"{"conversation_id":"ok.1","tenant":"acme","type":"end"}"#.to_string(),
    ];
    publish(&nats, &lines).await;
    let js = js(&nats).await;
    wait_for("three dead letters", async || {
        stream_messages(&js, "ZHIJIAN_DEADLETTER").await.len() >= 3
    })
    .await;
    let letters = stream_messages(&js, "ZHIJIAN_DEADLETTER").await;
    assert_eq!(letters.len(), 3);
    let mut subjects: Vec<String> = letters
        .iter()
        .map(|l| {
            let h = l.headers.as_ref().expect("headers");
            assert_eq!(
                h.get("Zhijian-Error").map(|v| v.as_str()),
                Some("unroutable_subject")
            );
            h.get("Zhijian-Original-Subject")
                .map(|v| v.as_str().to_string())
                .unwrap_or_default()
        })
        .collect();
    subjects.sort();
    assert_eq!(
        subjects,
        [
            "transcripts.acme",
            "transcripts.acme.a.b",
            "transcripts.acme.x.y"
        ]
    );
    assert_eq!(
        metric(
            daemon.metrics_port,
            "zhijian_deadlettered_total{reason=\"unroutable_subject\"}"
        )
        .await,
        3.0
    );
    let got = wait_done(&js, 1).await;
    assert_same(&got, &scan(&lines), "the good conversation");
    daemon.stop().await;
}
