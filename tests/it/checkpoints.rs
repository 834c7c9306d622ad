//! Checkpoints against a real nats-server: a missing or leftover chunk, a
//! recreated stream, an output that refuses events, SIGTERM with 20k open
//! conversations or with NATS gone, and a checkpoint that writes only what
//! changed, and a checkpoint refused at shutdown. Each test is named
//! after the defect it pins.

use crate::daemon::{
    ChildDaemon, Daemon, assert_no_duplicate_ids, assert_same, config, js, lexicons, metric,
    output_events, publish, scan, wait_done,
};
use crate::hardening::{fast_partitions, readyz, wait_for};
use crate::nats_support::NatsServer;
use std::time::{Duration, Instant};
use zhijian::event::Event;

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

/// Narrows the cluster bucket's subjects so that checkpoint writes (keys
/// `ckpt.*` and `chunk.*`) find no stream while leases and members still
/// do (`block`), or gives them back: a state bucket that refuses
/// checkpoints for a while, as one electing a leader after a server
/// restart does.
async fn checkpoints_refused(js: &async_nats::jetstream::Context, block: bool) {
    let mut stream = js
        .get_stream("KV_zhijian_cluster")
        .await
        .expect("bucket stream");
    let mut config = stream.info().await.expect("info").config.clone();
    config.subjects = if block {
        ["lease", "member", "lexicon"]
            .iter()
            .map(|k| format!("$KV.zhijian_cluster.{k}.>"))
            .collect()
    } else {
        vec!["$KV.zhijian_cluster.>".into()]
    };
    js.update_stream(config).await.expect("update the bucket");
}

/// A checkpoint refused at shutdown (the state bucket unavailable for a
/// moment) is tried again until the grace period ends: once the bucket
/// takes writes again the instance saves everything and exits 0. It used
/// to try once more and exit 1, leaving the next holder a replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_refused_at_shutdown_is_tried_again_until_the_deadline() {
    let nats = NatsServer::start();
    let dir = crate::nats_support::tempdir("refused-at-shutdown");
    let port = crate::nats_support::free_port();
    let cfg = crate::faults::config_file(
        &nats,
        &dir,
        &lexicons(),
        port,
        &format!("{}instance = \"one\"\n", fast_partitions(1)),
        10,
    );
    // Info, for the line that says the signal came.
    let toml = std::fs::read_to_string(&cfg).expect("config");
    std::fs::write(&cfg, toml.replace("level = \"warn\"", "level = \"info\"")).expect("config");
    let log = dir.join("stderr.log");
    let mut daemon = crate::faults::Logged::start(&cfg, port, log.clone()).await;
    let open = |k: usize| {
        format!(
            r#"{{"conversation_id":"r{k}","tenant":"acme","seq":0,"speaker":"agent","text":"您好"}}"#
        )
    };
    publish(&nats, &[open(0)]).await;
    wait_for("a checkpoint", async || {
        metric(port, "zhijian_checkpoints_total{outcome=\"ok\"}").await >= 1.0
    })
    .await;
    let js = js(&nats).await;
    checkpoints_refused(&js, true).await;
    publish(&nats, &[open(1), open(2)]).await;
    wait_for("a refused checkpoint", async || {
        metric(port, "zhijian_checkpoints_total{outcome=\"failed\"}").await >= 1.0
    })
    .await;
    let refused = |text: &str| text.matches("checkpoint not written").count();
    daemon.signal("-TERM");
    // The final checkpoint refused at least once, after the signal.
    wait_for("a checkpoint refused after SIGTERM", async || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.split_once("SIGTERM received")
            .is_some_and(|(_, after)| refused(after) >= 1)
    })
    .await;
    checkpoints_refused(&js, false).await;
    let (status, _, text) = daemon.exit(Duration::from_secs(30)).await;
    assert!(status.success(), "{text}");
    assert!(!text.contains("not saved at shutdown"), "{text}");
    // The checkpoint covers every input: a restart replays nothing.
    let kv = js.get_key_value("zhijian_cluster").await.expect("bucket");
    assert_eq!(crate::faults::checkpoint_seq(&kv, 0).await, 3);
}
