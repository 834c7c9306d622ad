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
use std::time::{Duration, Instant};
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

/// One partition, one instance: `open` conversations left open, checkpointed,
/// the instance stopped. Returns the `[cluster]` configuration to restart
/// it with.
async fn checkpointed_partition(nats: &NatsServer, open: usize) -> String {
    let cluster = format!("{}instance = \"one\"\n", fast_partitions(1));
    let daemon = Daemon::start(config(nats, &lexicons(), &cluster)).await;
    let lines: Vec<String> = (0..open)
        .map(|i| format!(r#"{{"conversation_id":"o{i}","tenant":"acme","seq":0,"speaker":"agent","text":"您好"}}"#))
        .collect();
    publish(nats, &lines).await;
    let port = daemon.metrics_port;
    wait_for("a checkpoint", async || {
        metric(port, "zhijian_checkpoints_total{outcome=\"ok\"}").await >= 1.0
    })
    .await;
    daemon.stop().await;
    cluster
}

/// A checkpoint chunk gone (deleted by hand, or by a former holder that
/// had not yet noticed it lost the partition): the next holder loads what
/// is left, counts it, and the partition goes on; it must not stall.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_partitions_a_missing_checkpoint_chunk_does_not_stall_the_partition() {
    let nats = NatsServer::start();
    let cluster = checkpointed_partition(&nats, 3).await;
    let js = js(&nats).await;
    let kv = js.get_key_value("zhijian_cluster").await.expect("bucket");
    let mut keys = kv.keys().await.expect("keys");
    let mut chunks = Vec::new();
    while let Some(k) = futures_util::StreamExt::next(&mut keys).await {
        let k = k.expect("key");
        if k.starts_with("chunk.0.") {
            chunks.push(k);
        }
    }
    assert_eq!(chunks.len(), 1, "{chunks:?}");
    kv.purge(&chunks[0]).await.expect("purge");
    let daemon = Daemon::start(config(&nats, &lexicons(), &cluster)).await;
    let port = daemon.metrics_port;
    let more = vec![
        r#"{"conversation_id":"n","tenant":"acme","seq":0,"speaker":"agent","text":"您好，急什么"}"#.to_string(),
        r#"{"conversation_id":"n","tenant":"acme","type":"end"}"#.to_string(),
    ];
    publish(&nats, &more).await;
    wait_for("the new conversation judged", async || {
        output_events(&js)
            .await
            .iter()
            .any(|e| matches!(e, Event::Summary(s) if s.conversation_id == "n"))
    })
    .await;
    assert_eq!(
        metric(port, "zhijian_checkpoints_total{outcome=\"unreadable\"}").await,
        1.0
    );
    daemon.stop().await;
}

/// Chunks left by a checkpoint cut short (older generations than the head)
/// are removed when a holder takes the partition; those of the former
/// holder's epoch but later than its head (it died between its chunks and
/// its head) once the new holder's first head is written; a later epoch's
/// (a newer holder's) are left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_partitions_leftover_checkpoint_chunks_are_removed_at_take_over() {
    let nats = NatsServer::start();
    let cluster = checkpointed_partition(&nats, 1).await;
    let js = js(&nats).await;
    let kv = js.get_key_value("zhijian_cluster").await.expect("bucket");
    let head: serde_json::Value = serde_json::from_slice(
        &kv.get("ckpt.0")
            .await
            .expect("head read")
            .expect("a checkpoint head"),
    )
    .expect("head JSON");
    let epoch = head["epoch"].as_u64().expect("epoch");
    let cut_short = format!("chunk.0.{epoch}-999999.0");
    for key in ["chunk.0.1-1.0", cut_short.as_str(), "chunk.0.999999-1.0"] {
        kv.put(key, "[]".into()).await.expect("chunk");
    }
    let daemon = Daemon::start(config(&nats, &lexicons(), &cluster)).await;
    wait_for("the old chunk removed", async || {
        kv.get("chunk.0.1-1.0").await.ok().flatten().is_none()
    })
    .await;
    // The new holder's first head: after an input.
    let lines = vec![
        r#"{"conversation_id":"n1","tenant":"acme","seq":0,"speaker":"agent","text":"您好"}"#
            .to_string(),
    ];
    publish(&nats, &lines).await;
    wait_for("the cut-short chunk removed", async || {
        kv.get(&cut_short).await.ok().flatten().is_none()
    })
    .await;
    assert!(kv.get("chunk.0.999999-1.0").await.ok().flatten().is_some());
    daemon.stop().await;
}

/// The input stream deleted and made again (its sequences start anew)
/// while the bucket keeps the old stream's checkpoints: the new stream is
/// judged from its first input, not from the old checkpoint's sequence
/// (which skipped its first inputs, silently).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_partitions_a_recreated_stream_is_not_skipped_by_an_old_checkpoint() {
    let nats = NatsServer::start();
    let cluster = &fast_partitions(1);
    let lines = crate::daemon::traffic(6, 11);
    let want = scan(&lines);
    let summaries = want
        .iter()
        .filter(|e| matches!(e, Event::Summary(_)))
        .count();
    let js = js(&nats).await;
    let daemon = Daemon::start(config(&nats, &lexicons(), cluster)).await;
    publish(&nats, &lines).await;
    assert_same(&wait_done(&js, summaries).await, &want, "first stream");
    daemon.stop().await;
    for s in ["TRANSCRIPTS", "VIOLATIONS"] {
        js.delete_stream(s).await.expect("delete stream");
    }
    let daemon = Daemon::start(config(&nats, &lexicons(), cluster)).await;
    publish(&nats, &lines).await;
    let got = wait_done(&js, summaries).await;
    assert_same(&got, &want, "the stream made again");
    assert_eq!(got.len(), want.len());
    assert_eq!(
        metric(
            daemon.metrics_port,
            "zhijian_checkpoints_total{outcome=\"other_stream\"}"
        )
        .await,
        1.0
    );
    daemon.stop().await;
}

/// Nothing is covered before it is stored: while the output stream refuses
/// events, no checkpoint covers their inputs (the head's sequence stays
/// below them), `/readyz` fails once an event has waited `watchdog_s`, and
/// when the output takes events again every one is stored, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_never_covers_events_the_output_refuses() {
    let nats = NatsServer::start();
    let mut cfg = config(&nats, &lexicons(), &fast_partitions(1));
    cfg.watchdog = Duration::from_secs(1);
    let daemon = Daemon::start(cfg).await;
    let js = js(&nats).await;
    crate::faults::output_refuses(&js, true).await;
    let lines = vec![
        r#"{"conversation_id":"c9","tenant":"acme","seq":0,"speaker":"agent","text":"您好，急什么"}"#.to_string(),
        r#"{"conversation_id":"c9","tenant":"acme","seq":1,"speaker":"agent","text":"不关我的事，再见"}"#.to_string(),
        r#"{"conversation_id":"c9","tenant":"acme","type":"end"}"#.to_string(),
    ];
    publish(&nats, &lines).await;
    let port = daemon.metrics_port;
    wait_for("failed publishes", async || {
        metric(port, "zhijian_publish_failures_total{kind=\"violation\"}").await >= 1.0
    })
    .await;
    // The watchdog: an event waits, nothing stored.
    wait_for("/readyz failing", async || readyz(port).await == 503).await;
    assert!(metric(port, "zhijian_output_stalls_total").await >= 1.0);
    // Judged past the first input, yet no checkpoint covers it: its
    // violation is not stored.
    let kv = js.get_key_value("zhijian_cluster").await.expect("bucket");
    assert_eq!(
        crate::faults::checkpoint_seq(&kv, 0).await,
        0,
        "a checkpoint covers an input whose events are not stored"
    );
    crate::faults::output_refuses(&js, false).await;
    let got = wait_done(&js, 1).await;
    assert_no_duplicate_ids(&got);
    assert_same(&got, &scan(&lines), "after the output came back");
    assert_eq!(got.len(), scan(&lines).len(), "each event stored once");
    wait_for("/readyz passing again", async || readyz(port).await == 200).await;
    assert_eq!(metric(port, "zhijian_output_stalled").await, 0.0);
    daemon.stop().await;
}

/// Defect 7: SIGTERM with 20k open conversations exited 1 after 5.3 s with
/// 794 conversations unsaved (one KV round trip each).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_20k_open_conversations_saves_every_one_in_time() {
    const N: usize = 20_000;
    let nats = NatsServer::start();
    // A short grace period: one KV round trip per conversation (the old
    // save) cannot make it; 20k conversations in chunks can.
    let (files, daemon) = ChildDaemon::with_config(&nats, "sigterm20k", "", 5).await;
    let (cfg, metrics_port) = (&files.cfg, files.metrics_port);
    let lines: Vec<String> = (0..N)
        .map(|i| {
            format!(r#"{{"conversation_id":"o{i}","tenant":"acme","seq":0,"speaker":"agent","text":"您好，请问有什么可以帮您"}}"#)
        })
        .collect();
    publish(&nats, &lines).await;
    wait_for("every conversation open", async || {
        metric(metrics_port, "zhijian_open_conversations").await == N as f64
    })
    .await;
    let stopping = Instant::now();
    daemon.signal("-TERM");
    let status = daemon.wait().await;
    let took = stopping.elapsed();
    assert!(status.success(), "exit status after SIGTERM: {status}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    let daemon = ChildDaemon::start(cfg, metrics_port).await;
    // Partitions are taken a heartbeat or two after start-up.
    wait_for("every conversation restored", async || {
        metric(metrics_port, "zhijian_state_restored_conversations_total").await >= N as f64
    })
    .await;
    assert_eq!(
        metric(metrics_port, "zhijian_state_restored_conversations_total").await,
        N as f64
    );
    assert_eq!(
        metric(metrics_port, "zhijian_open_conversations").await,
        N as f64
    );
    // Their state came back: closing one judges it with its greeting.
    let end = vec![r#"{"conversation_id":"o7","tenant":"acme","type":"end"}"#.to_string()];
    publish(&nats, &end).await;
    let js = js(&nats).await;
    wait_for("the summary", async || {
        output_events(&js)
            .await
            .iter()
            .any(|e| matches!(e, Event::Summary(s) if s.conversation_id == "o7" && s.greeted == Some(true)))
    })
    .await;
    daemon.signal("-TERM");
    assert!(daemon.wait().await.success());
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

/// SIGTERM with NATS gone exits within the grace period, saying which
/// partitions were not checkpointed; nothing is lost, as the next start replays them from
/// their last checkpoint: the conversation's greeting is still known when
/// it ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_partitions_sigterm_with_nats_gone_exits_in_time_and_loses_nothing() {
    let mut nats = NatsServer::start();
    // No checkpoint between the segment and the signal (one taken in
    // between would leave nothing unsaved, and exit 0 would be right).
    let (files, daemon) = ChildDaemon::with_config(
        &nats,
        "natsgone-partitions",
        "[cluster]\ncheckpoint_ms = 600000\n",
        4,
    )
    .await;
    let (cfg, metrics_port) = (&files.cfg, files.metrics_port);
    let lines = vec![
        r#"{"conversation_id":"gone","tenant":"acme","seq":0,"speaker":"agent","text":"您好，请问有什么可以帮您"}"#
            .to_string(),
    ];
    publish(&nats, &lines).await;
    wait_for("the conversation open", async || {
        metric(metrics_port, "zhijian_open_conversations").await == 1.0
    })
    .await;
    let (port, monitor, store) = (nats.port, nats.monitor, nats.store.clone());
    nats.stop_gracefully();
    let stopping = Instant::now();
    daemon.signal("-TERM");
    let status = daemon.wait().await;
    let took = stopping.elapsed();
    assert!(took < Duration::from_millis(4500), "took {took:?}");
    assert!(
        !status.success(),
        "no checkpoint could be written, yet exit 0"
    );
    // Back, and a new instance (checkpointing as usual): the segment is
    // judged again or restored.
    let toml = std::fs::read_to_string(cfg).expect("config");
    std::fs::write(cfg, toml.replace("checkpoint_ms = 600000", "")).expect("config");
    let nats = NatsServer::start_at(port, monitor, store);
    let daemon = ChildDaemon::start(cfg, metrics_port).await;
    let end = vec![r#"{"conversation_id":"gone","tenant":"acme","type":"end"}"#.to_string()];
    publish(&nats, &end).await;
    let js = js(&nats).await;
    let got = wait_done(&js, 1).await;
    assert_no_duplicate_ids(&got);
    let summary = got
        .iter()
        .find_map(|e| match e {
            Event::Summary(s) => Some(s),
            Event::Violation(_) => None,
        })
        .expect("a summary");
    assert_eq!(summary.greeted, Some(true), "{summary:?}");
    let mut all = lines.clone();
    all.extend(end);
    assert_same(&got, &scan(&all), "after NATS came back");
    daemon.signal("-TERM");
    assert!(daemon.wait().await.success());
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

/// A checkpoint writes what changed since the last one (a delta over the
/// last base), not every open conversation: one conversation changed among
/// 300 writes a small delta; a closed one is recorded as closed; a new
/// holder restores base and deltas to the same verdicts as `scan`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_partitions_a_checkpoint_writes_what_changed() {
    const N: usize = 300;
    let nats = NatsServer::start();
    let cluster = &fast_partitions(1);
    let (files, daemon) = ChildDaemon::with_config(&nats, "deltas", cluster, 15).await;
    let (cfg, metrics_port) = (&files.cfg, files.metrics_port);
    let mut lines: Vec<String> = (0..N)
        .map(|i| {
            format!(r#"{{"conversation_id":"d{i}","tenant":"acme","seq":0,"speaker":"agent","text":"您好，请问有什么可以帮您"}}"#)
        })
        .collect();
    publish(&nats, &lines).await;
    // Read from the checkpoint head itself: the conversations it covers,
    // its bytes, and the bytes of each delta over its base.
    let js = js(&nats).await;
    let kv = js.get_key_value("zhijian_cluster").await.expect("bucket");
    let head = async || -> serde_json::Value {
        kv.get("ckpt.0")
            .await
            .ok()
            .flatten()
            .and_then(|h| serde_json::from_slice(&h).ok())
            .unwrap_or_default()
    };
    wait_for("a checkpoint of every conversation", async || {
        head().await["conversations"].as_u64() == Some(N as u64)
    })
    .await;
    let covered = head().await;
    let total = covered["bytes"].as_u64().expect("bytes");
    let deltas_before = covered["deltas"].as_array().map_or(0, Vec::len);
    let more = vec![
        r#"{"conversation_id":"d7","tenant":"acme","seq":1,"speaker":"agent","text":"不关我的事"}"#
            .to_string(),
        r#"{"conversation_id":"d8","tenant":"acme","type":"end"}"#.to_string(),
    ];
    publish(&nats, &more).await;
    wait_for("the delta", async || {
        head().await["conversations"].as_u64() == Some(N as u64 - 1)
    })
    .await;
    let after = head().await;
    let deltas = after["deltas"].as_array().cloned().unwrap_or_default();
    assert!(deltas.len() > deltas_before, "no delta written: {after}");
    let delta = deltas
        .last()
        .and_then(|d| d["bytes"].as_u64())
        .expect("delta bytes");
    assert!(
        delta * 20 < total,
        "a delta of 2 conversations wrote {delta} bytes, the checkpoint of {N} {total}"
    );
    lines.extend(more);
    daemon.signal("-KILL");
    let _ = daemon.wait().await;
    let daemon = ChildDaemon::start(cfg, metrics_port).await;
    wait_for("the restore", async || {
        metric(metrics_port, "zhijian_state_restored_conversations_total").await > 0.0
    })
    .await;
    assert_eq!(
        metric(metrics_port, "zhijian_state_restored_conversations_total").await,
        (N - 1) as f64,
        "d8 ended: not restored"
    );
    let ends: Vec<String> = (0..N)
        .filter(|i| *i != 8)
        .map(|i| format!(r#"{{"conversation_id":"d{i}","tenant":"acme","type":"end"}}"#))
        .collect();
    publish(&nats, &ends).await;
    lines.extend(ends);
    let got = wait_done(&js, N).await;
    assert_no_duplicate_ids(&got);
    assert_same(&got, &scan(&lines), "after base, delta and kill -9");
    // Replaced chunks leave nothing behind: the bucket's stream holds its
    // live keys only, no purge markers piling up with every checkpoint.
    let kv = js.get_key_value("zhijian_cluster").await.expect("bucket");
    let mut keys = kv.keys().await.expect("keys");
    let mut live = 0u64;
    while let Some(k) = futures_util::StreamExt::next(&mut keys).await {
        k.expect("key");
        live += 1;
    }
    let mut stream = js.get_stream("KV_zhijian_cluster").await.expect("stream");
    let stored = stream.info().await.expect("info").state.messages;
    assert_eq!(
        stored, live,
        "messages in the bucket's stream against live keys"
    );
    assert!(metric(metrics_port, "zhijian_checkpoints_total{outcome=\"ok\"}").await >= 1.0);
    daemon.signal("-TERM");
    assert!(daemon.wait().await.success());
}
