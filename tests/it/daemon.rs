//! The daemon end to end against a real nats-server: parity with `zhijian
//! scan`, idempotence under duplicates and redeliveries, dead letters, NATS
//! restarts, SIGTERM and restart, idle timeouts, hot reload, metrics.

use crate::nats_support::{NatsServer, free_port, http_get, tempdir};
use crate::support::scan_jsonl;
use async_nats::jetstream::{self, consumer::DeliverPolicy, stream::LastRawMessageErrorKind};
use futures_util::StreamExt;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use zhijian::config::{Config, Overrides, RawConfig};
use zhijian::daemon::DaemonError;
use zhijian::engine::{Engine, EngineConfig};
use zhijian::event::Event;
use zhijian_tools::synth::{self, Mix};

pub(crate) const DEADLINE: Duration = Duration::from_secs(60);

pub(crate) fn lexicons() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("lexicons")
}

/// The daemon's config as a TOML file's text (for child processes and
/// in-process runs alike).
pub(crate) fn config_toml(
    nats: &NatsServer,
    lexicons: &Path,
    metrics_port: u16,
    extra: &str,
) -> String {
    format!(
        "[nats]\nurl = \"{}\"\n[streams]\nack_wait_s = 2\nduplicate_window_s = 600\n[engine]\nlexicons = \"{}\"\nreload_poll_ms = 100\n[daemon]\nshutdown_grace_s = 15\n[metrics]\naddr = \"127.0.0.1:{metrics_port}\"\n[console]\naddr = \"127.0.0.1:0\"\n[log]\nlevel = \"warn\"\n{extra}",
        nats.url(),
        lexicons.display()
    )
}

pub(crate) fn config(nats: &NatsServer, lexicons: &Path, extra: &str) -> Config {
    RawConfig::parse(&config_toml(nats, lexicons, free_port(), extra))
        .expect("test config parses")
        .validate(&Overrides::default())
        .expect("test config")
}

/// The daemon running in-process, stopped through its shutdown future.
pub(crate) struct Daemon {
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), DaemonError>>,
    pub(crate) metrics_port: u16,
}

impl Daemon {
    pub(crate) async fn start(config: Config) -> Daemon {
        let metrics_port = config.metrics_addr.port();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(zhijian::daemon::run(config, async {
            let _ = stopped.await;
        }));
        wait_ready(metrics_port).await;
        Daemon {
            stop: Some(stop),
            task,
            metrics_port,
        }
    }

    pub(crate) async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let r = tokio::time::timeout(DEADLINE, &mut self.task).await;
        match r {
            Ok(Ok(Ok(()))) => {}
            other => panic!("daemon did not stop cleanly: {other:?}"),
        }
    }

    pub(crate) fn metrics(&self) -> String {
        http_get(self.metrics_port, "/metrics")
            .expect("metrics answer")
            .1
    }
}

async fn wait_ready(metrics_port: u16) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let ready = tokio::task::spawn_blocking(move || http_get(metrics_port, "/readyz"))
            .await
            .ok()
            .flatten();
        if ready.is_some_and(|(code, _)| code == 200) {
            return;
        }
        assert!(Instant::now() < deadline, "daemon not ready");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Publishes input lines on their subjects (as `zhijian publish` does).
pub(crate) async fn publish(nats: &NatsServer, lines: &[String]) {
    let dir = tempdir("publish");
    let file = dir.join("input.jsonl");
    std::fs::write(&file, lines.join("\n")).expect("write input");
    let cfg = RawConfig::parse(&format!("[nats]\nurl = \"{}\"\n", nats.url()))
        .expect("client config parses")
        .validate(&Overrides::default())
        .expect("client config");
    zhijian::client::publish(&cfg, &file, 0.0)
        .await
        .expect("publish");
}

pub(crate) async fn js(nats: &NatsServer) -> jetstream::Context {
    let client = async_nats::connect(nats.url()).await.expect("connect");
    jetstream::new(client)
}

/// Every message stored in a stream, in order.
pub(crate) async fn stream_messages(
    js: &jetstream::Context,
    stream: &str,
) -> Vec<async_nats::Message> {
    let mut s = js.get_stream(stream).await.expect("stream exists");
    let n = s.info().await.expect("stream info").state.messages as usize;
    if n == 0 {
        return Vec::new();
    }
    let consumer = s
        .create_consumer(jetstream::consumer::pull::Config {
            deliver_policy: DeliverPolicy::All,
            ack_policy: jetstream::consumer::AckPolicy::None,
            inactive_threshold: Duration::from_secs(5),
            ..Default::default()
        })
        .await
        .expect("ephemeral consumer");
    let mut out = Vec::with_capacity(n);
    let mut batch = consumer
        .fetch()
        .max_messages(n)
        .messages()
        .await
        .expect("fetch");
    while let Some(m) = batch.next().await {
        out.push(m.expect("message").message);
        if out.len() == n {
            break;
        }
    }
    out
}

pub(crate) async fn output_events(js: &jetstream::Context) -> Vec<Event> {
    stream_messages(js, "VIOLATIONS")
        .await
        .iter()
        .map(|m| serde_json::from_slice(&m.payload).expect("event JSON"))
        .collect()
}

/// Waits until `n` summaries are stored and every input is judged (each
/// partition's checkpoint covers its last input).
pub(crate) async fn wait_done(js: &jetstream::Context, summaries: usize) -> Vec<Event> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let events = output_events(js).await;
        let got = events
            .iter()
            .filter(|e| matches!(e, Event::Summary(_)))
            .count();
        if got >= summaries && all_judged(js).await {
            return output_events(js).await;
        }
        assert!(
            Instant::now() < deadline,
            "only {got} of {summaries} summaries (or inputs not all judged) after {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The partition count of the input stream (0: not partitioned), read from
/// its transform as the daemon reads it.
pub(crate) async fn input_partitions(js: &jetstream::Context) -> u32 {
    let mut stream = js.get_stream("TRANSCRIPTS").await.expect("input stream");
    let info = stream.info().await.expect("input stream info");
    info.config
        .subject_transform
        .as_ref()
        .and_then(|t| t.destination.split("{{partition(").nth(1))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// Every input stored so far is judged and its events stored: each
/// partition's checkpoint covers its last input.
pub(crate) async fn all_judged(js: &jetstream::Context) -> bool {
    let partitions = input_partitions(js).await;
    let stream = js.get_stream("TRANSCRIPTS").await.expect("input stream");
    let Ok(kv) = js.get_key_value("zhijian_cluster").await else {
        return false;
    };
    for p in 0..partitions {
        let last = match stream
            .get_last_raw_message_by_subject(&format!("transcripts.{p}.>"))
            .await
        {
            Ok(m) => m.sequence,
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => 0,
            Err(_) => return false,
        };
        if last == 0 {
            continue;
        }
        let judged = match kv.get(format!("ckpt.{p}")).await {
            Ok(Some(head)) => serde_json::from_slice::<serde_json::Value>(&head)
                .ok()
                .and_then(|h| h["seq"].as_u64())
                .unwrap_or(0),
            _ => 0,
        };
        if judged < last {
            return false;
        }
    }
    true
}

/// Waits until the stored events satisfy `done` (for instances without the
/// durable consumer `wait_done` asks, i.e. with `[cluster]`).
pub(crate) async fn wait_events(
    js: &jetstream::Context,
    what: &str,
    done: impl Fn(&[Event]) -> bool,
) -> Vec<Event> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let events = output_events(js).await;
        if done(&events) {
            return events;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not there after {DEADLINE:?} ({} events)",
            events.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What must match between scan and daemon: everything but the clocks.
type Key = (
    String,
    String,
    u64,
    String,
    Option<String>,
    Option<usize>,
    String,
);

fn keys(events: &[Event]) -> BTreeMap<String, Key> {
    events
        .iter()
        .map(|e| {
            let k = match e {
                Event::Violation(v) => (
                    "violation".to_string(),
                    v.conversation_id.clone(),
                    v.seq,
                    v.rule_id.clone(),
                    v.matched.clone(),
                    v.start,
                    v.category.as_str().to_string(),
                ),
                Event::Summary(s) => (
                    "summary".to_string(),
                    s.conversation_id.clone(),
                    u64::from(s.segments),
                    format!("{:?}", s.counts),
                    Some(format!("{}", s.score)),
                    None,
                    format!("{:?}/{:?}", s.greeted, s.closed),
                ),
            };
            (e.id().to_string(), k)
        })
        .collect()
}

/// Compares scan and daemon output, listing only the differences.
pub(crate) fn assert_same(got: &[Event], want: &[Event], what: &str) {
    let (g, w) = (keys(got), keys(want));
    let mut diff = String::new();
    for (id, k) in &w {
        match g.get(id) {
            None => diff.push_str(&format!("missing {id} {k:?}\n")),
            Some(x) if x != k => {
                diff.push_str(&format!("differs {id}\n  want {k:?}\n  got  {x:?}\n"))
            }
            _ => {}
        }
    }
    for (id, k) in &g {
        if !w.contains_key(id) {
            diff.push_str(&format!("extra {id} {k:?}\n"));
        }
    }
    assert!(diff.is_empty(), "{what}:\n{diff}");
}

pub(crate) fn assert_no_duplicate_ids(events: &[Event]) {
    let mut seen = HashMap::new();
    for e in events {
        *seen.entry(e.id().to_string()).or_insert(0) += 1;
    }
    let dups: Vec<_> = seen.into_iter().filter(|(_, n)| *n > 1).collect();
    assert!(dups.is_empty(), "duplicate event ids stored: {dups:?}");
}

pub(crate) fn scan(lines: &[String]) -> Vec<Event> {
    let scanner = std::sync::Arc::new(crate::support::compile(&lexicons()));
    let mut engine = Engine::new(scanner, EngineConfig::default());
    scan_jsonl(&mut engine, &lines.join("\n")).0
}

pub(crate) fn traffic(n: usize, seed: u64) -> Vec<String> {
    let convs = synth::conversations(seed, n, &format!("conv-{seed}-"), &Mix::default());
    let mut lines = synth::interleaved_jsonl(&convs, "acme", "call");
    let examples = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/conversations.jsonl"),
    )
    .expect("examples");
    lines.extend(examples.lines().map(str::to_string));
    lines
}

pub(crate) fn summaries_in(lines: &[String]) -> usize {
    lines
        .iter()
        .filter(|l| l.contains("\"type\":\"end\""))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_matches_scan_and_ignores_duplicate_publishes() {
    let nats = NatsServer::start();
    let daemon = Daemon::start(config(&nats, &lexicons(), "")).await;
    let lines = traffic(40, 1);
    publish(&nats, &lines).await;
    // The same input again: every segment a duplicate, every end late.
    publish(&nats, &lines).await;
    let js = js(&nats).await;
    let got = wait_done(&js, summaries_in(&lines)).await;
    assert_no_duplicate_ids(&got);
    let want = scan(&lines);
    assert_same(&got, &want, "daemon and scan disagree");
    assert!(got.iter().any(|e| matches!(e, Event::Violation(_))));

    // Metrics parse as Prometheus text and count what was sent.
    let text = daemon.metrics();
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .expect("Prometheus text format");
    let value = |name: &str, labels: &[(&str, &str)]| -> f64 {
        scrape
            .samples
            .iter()
            .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => 0.0,
            })
            .sum()
    };
    let segments = lines
        .iter()
        .filter(|l| !l.contains("\"type\":\"end\""))
        .count();
    let provisional = lines
        .iter()
        .filter(|l| l.contains("\"final\":false"))
        .count();
    assert_eq!(
        value("zhijian_segments_received_total", &[]) as usize,
        2 * segments
    );
    assert_eq!(
        value("zhijian_input_events_total", &[("outcome", "provisional")]) as usize,
        2 * provisional
    );
    // The second time round every conversation is closed: its segments are
    // duplicates (the tombstone remembers them), its end is late.
    assert_eq!(
        value("zhijian_input_events_total", &[("outcome", "duplicate")]) as usize,
        segments - provisional
    );
    assert_eq!(
        value("zhijian_input_events_total", &[("outcome", "late")]) as usize,
        summaries_in(&lines)
    );
    let violations = want
        .iter()
        .filter(|e| matches!(e, Event::Violation(_)))
        .count();
    assert_eq!(value("zhijian_violations_total", &[]) as usize, violations);
    assert_eq!(
        value("zhijian_conversations_closed_total", &[("reason", "end")]) as usize,
        summaries_in(&lines)
    );
    assert_eq!(value("zhijian_open_conversations", &[]), 0.0);
    assert_eq!(value("zhijian_nats_connected", &[]), 1.0);
    assert!(value("zhijian_scan_duration_seconds_count", &[]) >= segments as f64);
    assert!(
        text.contains("zhijian_lexicon_info{version=\"2026."),
        "{text}"
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_goes_to_the_dead_letter_subject_and_the_next_message_is_processed() {
    let nats = NatsServer::start();
    let daemon = Daemon::start(config(&nats, &lexicons(), "")).await;
    let js = js(&nats).await;
    let garbage = b"\xff\xfenot json".to_vec();
    js.publish("transcripts.acme.c1", garbage.clone().into())
        .await
        .expect("publish")
        .await
        .expect("ack");
    js.publish(
        "transcripts.acme.c1",
        r#"{"conversation_id":"c1","tenant":"acme","seq":0}"#.into(),
    )
    .await
    .expect("publish")
    .await
    .expect("ack");
    // Valid, but on another conversation's subject.
    js.publish(
        "transcripts.acme.other",
        r#"{"conversation_id":"c1","tenant":"acme","seq":5,"speaker":"agent","text":"不知道"}"#
            .into(),
    )
    .await
    .expect("publish")
    .await
    .expect("ack");
    let good = vec![
        r#"{"conversation_id":"c1","tenant":"acme","seq":0,"speaker":"agent","text":"急什么"}"#
            .to_string(),
        r#"{"conversation_id":"c1","tenant":"acme","type":"end"}"#.to_string(),
    ];
    publish(&nats, &good).await;
    let got = wait_done(&js, 1).await;
    assert!(
        got.iter()
            .any(|e| matches!(e, Event::Violation(v) if v.matched.as_deref() == Some("急什么")))
    );
    let dead = stream_messages(&js, "ZHIJIAN_DEADLETTER").await;
    let reason = |m: &async_nats::Message| {
        m.headers
            .as_ref()
            .and_then(|h| h.get("Zhijian-Error"))
            .map(|v| v.as_str().to_string())
            .unwrap_or_default()
    };
    // Two subjects, possibly two shards: the dead letters' order between
    // them is not defined.
    let mut reasons: Vec<String> = dead.iter().map(reason).collect();
    reasons.sort();
    assert_eq!(
        reasons,
        ["invalid_utf8", "missing_field", "subject_mismatch"]
    );
    let bad_utf8 = dead
        .iter()
        .find(|m| reason(m) == "invalid_utf8")
        .expect("the garbage was dead-lettered");
    assert_eq!(bad_utf8.payload.to_vec(), garbage, "payload untouched");
    assert!(
        !got.iter()
            .any(|e| matches!(e, Event::Violation(v) if v.seq == 5)),
        "a mismatched message was judged"
    );
    let metrics = daemon.metrics();
    assert!(
        metrics.contains("zhijian_deadlettered_total{reason=\"invalid_utf8\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("zhijian_bad_messages_total{reason=\"missing_field\"} 1"),
        "{metrics}"
    );
    daemon.stop().await;
}

/// More instances than partitions: the one the assignment gives nothing
/// is a hot standby, ready (its `/readyz` says so, and that it holds no
/// partition), and takes the partition over when its holder stops; the
/// verdicts are those of one instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_without_partitions_is_a_ready_standby_that_takes_over() {
    let nats = NatsServer::start();
    let cluster =
        "[cluster]\npartitions = 1\nheartbeat_ms = 100\nlease_ms = 400\ncheckpoint_ms = 100\n";
    let first = Daemon::start(config(
        &nats,
        &lexicons(),
        &format!("{cluster}instance = \"a\"\n"),
    ))
    .await;
    let second = Daemon::start(config(
        &nats,
        &lexicons(),
        &format!("{cluster}instance = \"b\"\n"),
    ))
    .await;
    let (a, b) = (first.metrics_port, second.metrics_port);
    wait_until("both members, one holding the partition", async || {
        metric(a, "zhijian_cluster_members").await == 2.0
            && metric(b, "zhijian_cluster_members").await == 2.0
            && metric(a, "zhijian_partitions_owned").await
                + metric(b, "zhijian_partitions_owned").await
                == 1.0
    })
    .await;
    let (holder, standby) = if metric(a, "zhijian_partitions_owned").await == 1.0 {
        (first, second)
    } else {
        (second, first)
    };
    // Ready, and holding nothing because nothing is assigned to it.
    let body = ready_body(standby.metrics_port).await;
    assert!(body.contains("partitions_judging true"), "{body}");
    assert_eq!(
        metric(standby.metrics_port, "zhijian_partitions_assigned").await,
        0.0
    );
    let lines = traffic(40, 11);
    let (x, y) = lines.split_at(lines.len() / 2);
    publish(&nats, x).await;
    holder.stop().await;
    let port = standby.metrics_port;
    wait_until("the standby holds the partition", async || {
        metric(port, "zhijian_partitions_owned").await == 1.0
    })
    .await;
    publish(&nats, y).await;
    let js = js(&nats).await;
    let got = wait_done(&js, summaries_in(&lines)).await;
    assert_no_duplicate_ids(&got);
    assert_same(&got, &scan(&lines), "one instance, then the standby");
    standby.stop().await;
}

/// `/readyz`'s body (its checks by name).
pub(crate) async fn ready_body(port: u16) -> String {
    tokio::task::spawn_blocking(move || http_get(port, "/readyz"))
        .await
        .ok()
        .flatten()
        .map(|(_, b)| b)
        .unwrap_or_default()
}

/// Waits until `check` holds (at most [`DEADLINE`]).
pub(crate) async fn wait_until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_restart_mid_stream_loses_nothing() {
    let mut nats = NatsServer::start();
    let daemon = Daemon::start(config(&nats, &lexicons(), "")).await;
    let lines = traffic(30, 2);
    let (first, second) = lines.split_at(lines.len() / 2);
    publish(&nats, first).await;
    let (port, monitor, store) = (nats.port, nats.monitor, nats.store.clone());
    nats.stop_gracefully();
    // The outage shows on /readyz.
    let metrics_port = daemon.metrics_port;
    let deadline = Instant::now() + DEADLINE;
    loop {
        let r = tokio::task::spawn_blocking(move || http_get(metrics_port, "/readyz"))
            .await
            .ok()
            .flatten();
        if let Some((503, body)) = r {
            assert!(body.contains("nats_connected false"), "{body}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz never reported the outage"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let nats = NatsServer::start_at(port, monitor, store);
    wait_ready(daemon.metrics_port).await;
    publish(&nats, second).await;
    let js = js(&nats).await;
    let got = wait_done(&js, summaries_in(&lines)).await;
    assert_no_duplicate_ids(&got);
    assert_same(&got, &scan(&lines), "after a NATS restart");
    let metrics = daemon.metrics();
    assert!(
        metrics.contains("zhijian_nats_disconnects_total 1"),
        "{metrics}"
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_conversations_close_with_reason_idle() {
    let nats = NatsServer::start();
    let mut cfg = config(&nats, &lexicons(), "");
    cfg.idle_timeout = Duration::from_secs(1);
    let daemon = Daemon::start(cfg).await;
    let lines = vec![
        r#"{"conversation_id":"quiet","tenant":"acme","seq":0,"speaker":"agent","text":"您好"}"#
            .to_string(),
        r#"{"conversation_id":"quiet","tenant":"acme","seq":1,"speaker":"agent","text":"好的"}"#
            .to_string(),
    ];
    publish(&nats, &lines).await;
    let js = js(&nats).await;
    let got = wait_done(&js, 1).await;
    let Some(Event::Summary(s)) = got.iter().find(|e| matches!(e, Event::Summary(_))) else {
        panic!("no summary: {got:?}")
    };
    assert_eq!(s.reason, zhijian::event::CloseReason::Idle);
    assert_eq!(s.closed, Some(false));
    assert!(daemon.metrics().contains("zhijian_open_conversations 0"));
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_reload_swaps_a_good_lexicon_and_rejects_a_bad_one() {
    let nats = NatsServer::start();
    let dir = tempdir("lexicon");
    copy_lexicons(&dir);
    let daemon = Daemon::start(config(&nats, &dir, "")).await;
    let js = js(&nats).await;
    let seg = |conv: &str, text: &str| {
        vec![
            format!(
                r#"{{"conversation_id":"{conv}","tenant":"acme","seq":0,"speaker":"agent","text":"{text}"}}"#
            ),
            format!(r#"{{"conversation_id":"{conv}","tenant":"acme","type":"end"}}"#),
        ]
    };
    publish(&nats, &seg("before", "这个要排队")).await;
    let before = wait_done(&js, 1).await;
    let v0 = match &before[before.len() - 1] {
        Event::Summary(s) => s.lexicon_version.clone(),
        other => panic!("want summary, got {other:?}"),
    };

    // A bad lexicon is rejected; the old one keeps serving.
    std::fs::write(dir.join("zz-bad.toml"), "[[rule]]\nid = \"Bad Id\"\n").expect("write");
    let deadline = Instant::now() + DEADLINE;
    while !daemon
        .metrics()
        .contains("zhijian_lexicon_reloads_total{result=\"failure\"} 1")
    {
        assert!(Instant::now() < deadline, "bad lexicon not rejected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        daemon
            .metrics()
            .contains(&format!("zhijian_lexicon_info{{version=\"{v0}\"}} 1"))
    );

    // A good one is swapped in: the new phrase hits, events carry the new version.
    std::fs::write(
        dir.join("zz-bad.toml"),
        "[[rule]]\nid = \"forbidden.queue\"\ncategory = \"forbidden\"\nseverity = \"low\"\ndeduct = 1\nsection = \"service_language\"\nphrases = [\"要排队\"]\n",
    )
    .expect("write");
    while !daemon
        .metrics()
        .contains("zhijian_lexicon_reloads_total{result=\"success\"} 1")
    {
        assert!(Instant::now() < deadline, "good lexicon not loaded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    publish(&nats, &seg("after", "这个要排队")).await;
    let after = wait_done(&js, 2).await;
    let hit = after
        .iter()
        .find_map(|e| match e {
            Event::Violation(v) if v.rule_id == "forbidden.queue" => Some(v),
            _ => None,
        })
        .expect("the reloaded rule hits");
    assert_eq!(hit.conversation_id, "after");
    assert_ne!(hit.lexicon_version, v0);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_whose_lexicon_tests_fail_is_refused_until_they_pass() {
    let nats = NatsServer::start();
    let dir = tempdir("lexicon-tests");
    copy_lexicons(&dir);
    let tests = dir.join("tests");
    std::fs::create_dir(&tests).expect("mkdir");
    let case = |expect: &str| {
        format!("[[case]]\nname = \"queueing\"\ntext = \"这个要排队\"\nexpect = [{expect}]\n")
    };
    std::fs::write(tests.join("queue.toml"), case("")).expect("write");
    let daemon = Daemon::start(config(&nats, &dir, "")).await;
    let reloads = |result: &str| format!("zhijian_lexicon_reloads_total{{result=\"{result}\"}} 1");
    // A new rule breaks the suite (the case expects no violation): refused.
    std::fs::write(
        dir.join("zz-queue.toml"),
        "[[rule]]\nid = \"forbidden.queue\"\ncategory = \"forbidden\"\nseverity = \"low\"\ndeduct = 1\nsection = \"service_language\"\nphrases = [\"要排队\"]\n",
    )
    .expect("write");
    let deadline = Instant::now() + DEADLINE;
    while !daemon.metrics().contains(&reloads("failure")) {
        assert!(Instant::now() < deadline, "a failing suite was not refused");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!daemon.metrics().contains(&reloads("success")));
    // The QA lead updates the case: the same lexicon now loads.
    std::fs::write(
        tests.join("queue.toml"),
        case("{ rule = \"forbidden.queue\" }"),
    )
    .expect("write");
    while !daemon.metrics().contains(&reloads("success")) {
        assert!(
            Instant::now() < deadline,
            "the fixed suite did not let the reload through"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    daemon.stop().await;
}

/// Copies the default lexicon's files (not its tests or overlays) into
/// `dir`, for tests that change a lexicon.
pub(crate) fn copy_lexicons(dir: &Path) {
    for e in std::fs::read_dir(lexicons()).expect("lexicons") {
        let p = e.expect("entry").path();
        if p.extension().is_some_and(|x| x == "toml") {
            std::fs::copy(&p, dir.join(p.file_name().expect("name"))).expect("copy");
        }
    }
}

/// The real binary, as a deployment runs it.
pub(crate) struct ChildDaemon {
    child: Child,
    metrics_port: u16,
}

/// The binary the child daemons run: `$ZJ_BIN` when set (to run these
/// tests against another build, such as an older one, to see which fail),
/// else this build's.
pub(crate) fn zj_bin() -> PathBuf {
    std::env::var_os("ZJ_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_zhijian")))
}

/// A child daemon's files: its temporary directory (removed when dropped),
/// config file and metrics port, for starting it again.
pub(crate) struct ChildFiles {
    pub(crate) _dir: crate::support::TempDir,
    pub(crate) cfg: PathBuf,
    pub(crate) metrics_port: u16,
}

impl ChildDaemon {
    /// Writes the test configuration (with `extra`, a shutdown grace of
    /// `grace_s` seconds) into a new temporary directory named after
    /// `what`, and starts `zhijian run` with it.
    pub(crate) async fn with_config(
        nats: &NatsServer,
        what: &str,
        extra: &str,
        grace_s: u32,
    ) -> (ChildFiles, ChildDaemon) {
        let metrics_port = free_port();
        let dir = tempdir(what);
        let cfg = dir.join("zhijian.toml");
        let toml = config_toml(nats, &lexicons(), metrics_port, extra).replace(
            "shutdown_grace_s = 15",
            &format!("shutdown_grace_s = {grace_s}"),
        );
        assert!(toml.contains(&format!("shutdown_grace_s = {grace_s}")));
        std::fs::write(&cfg, toml).expect("config");
        let daemon = ChildDaemon::start(&cfg, metrics_port).await;
        let files = ChildFiles {
            _dir: dir,
            cfg,
            metrics_port,
        };
        (files, daemon)
    }

    pub(crate) async fn start(config_file: &Path, metrics_port: u16) -> ChildDaemon {
        let child = Command::new(zj_bin())
            .args(["run", "--config"])
            .arg(config_file)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn zhijian run");
        wait_ready(metrics_port).await;
        ChildDaemon {
            child,
            metrics_port,
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill {sig} failed");
    }

    pub(crate) async fn wait(mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "daemon did not exit");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for ChildDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_stream_then_restart_loses_and_duplicates_nothing() {
    let nats = NatsServer::start();
    let metrics_port = free_port();
    let dir = tempdir("sigterm");
    let cfg = dir.join("zhijian.toml");
    std::fs::write(&cfg, config_toml(&nats, &lexicons(), metrics_port, "")).expect("config");
    let lines = traffic(60, 3);
    let daemon = ChildDaemon::start(&cfg, metrics_port).await;
    // Publish while the daemon works, and stop it half-way.
    let (first, second) = lines.split_at(lines.len() / 2);
    publish(&nats, first).await;
    // Stop it while conversations are open, so saving them is exercised.
    let deadline = Instant::now() + DEADLINE;
    while metric(daemon.metrics_port, "zhijian_open_conversations").await <= 0.0 {
        assert!(
            Instant::now() < deadline,
            "the daemon never opened a conversation"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    daemon.signal("-TERM");
    let status = daemon.wait().await;
    assert!(status.success(), "exit status after SIGTERM: {status}");
    publish(&nats, second).await;
    let daemon = ChildDaemon::start(&cfg, metrics_port).await;
    let js = js(&nats).await;
    let got = wait_done(&js, summaries_in(&lines)).await;
    assert_no_duplicate_ids(&got);
    assert_same(&got, &scan(&lines), "verdicts changed across the restart");
    let restored = metric(
        daemon.metrics_port,
        "zhijian_state_restored_conversations_total",
    )
    .await;
    assert!(restored > 0.0, "no conversation was saved and restored");
    daemon.signal("-TERM");
    assert!(daemon.wait().await.success());
}

/// `kill -9` while the input is judged, then a new instance: it replays
/// from the last checkpoints, and the result equals `scan`'s, each event
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_loses_no_state_and_duplicates_nothing() {
    let nats = NatsServer::start();
    let lines = traffic(60, 4);
    let (files, daemon) = ChildDaemon::with_config(&nats, "sigkill", "", 15).await;
    let (cfg, metrics_port) = (&files.cfg, files.metrics_port);
    publish(&nats, &lines).await;
    daemon.signal("-KILL");
    let _ = daemon.wait().await;
    let daemon = ChildDaemon::start(cfg, metrics_port).await;
    let js = js(&nats).await;
    let want = scan(&lines);
    let summaries = want
        .iter()
        .filter(|e| matches!(e, Event::Summary(_)))
        .count();
    let got = wait_done(&js, summaries).await;
    assert_no_duplicate_ids(&got);
    assert_same(&got, &want, "after kill -9 and a new instance");
    assert_eq!(got.len(), want.len(), "each event stored once");
    daemon.signal("-TERM");
    assert!(daemon.wait().await.success());
}

/// The partition count is the input stream's: chosen once when it is
/// created, read back by every instance whatever it is configured with.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_partition_count_is_the_input_streams() {
    let lines = vec![
        r#"{"conversation_id":"p1","tenant":"acme","seq":0,"speaker":"agent","text":"不关我的事"}"#
            .to_string(),
        r#"{"conversation_id":"p1","tenant":"acme","type":"end"}"#.to_string(),
    ];
    // Created with 4; an instance configured with 8, or not at all, uses 4.
    let nats = NatsServer::start();
    let first = Daemon::start(config(&nats, &lexicons(), "[cluster]\npartitions = 4\n")).await;
    let js4 = js(&nats).await;
    assert_eq!(input_partitions(&js4).await, 4);
    first.stop().await;
    for extra in ["[cluster]\npartitions = 8\n", ""] {
        let daemon = Daemon::start(config(&nats, &lexicons(), extra)).await;
        let port = daemon.metrics_port;
        let deadline = Instant::now() + DEADLINE;
        while metric(port, "zhijian_partitions_owned").await != 4.0 {
            assert!(
                Instant::now() < deadline,
                "{extra:?}: 4 partitions not taken"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        daemon.stop().await;
    }
    assert_eq!(input_partitions(&js4).await, 4);
    publish(&nats, &lines).await;
    let daemon = Daemon::start(config(&nats, &lexicons(), "")).await;
    assert_same(&wait_done(&js4, 1).await, &scan(&lines), "partitioned");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_create_a_missing_stream_fails_start_up_with_a_clear_message() {
    let nats = NatsServer::start();
    let mut cfg = config(&nats, &lexicons(), "");
    cfg.streams.create = false;
    let err = zhijian::daemon::run(cfg, std::future::pending::<()>())
        .await
        .expect_err("must refuse to start");
    let msg = err.to_string();
    assert!(
        msg.contains("stream \"TRANSCRIPTS\" is missing") && msg.contains("create = true"),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_lexicon_refuses_start_up_as_a_config_error() {
    let nats = NatsServer::start();
    let dir = tempdir("badlex");
    std::fs::write(dir.join("a.toml"), "[lexicon]\nname = \"x\"\n").expect("write");
    let err = zhijian::daemon::run(config(&nats, &dir, ""), std::future::pending::<()>())
        .await
        .expect_err("must refuse to start");
    assert!(matches!(err, DaemonError::Config(_)), "{err:?}");
    assert!(err.to_string().contains("a.toml"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_and_password_authentication() {
    let dir = tempdir("auth");
    let (port, monitor) = (free_port(), free_port());
    let mut child = Command::new(crate::nats_support::nats_server_bin())
        .args([
            "-a",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-m",
            &monitor.to_string(),
            "-js",
            "-sd",
        ])
        .arg(dir.join("store"))
        .args(["--user", "qa", "--pass", "s3cret-pw"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nats-server");
    let deadline = Instant::now() + DEADLINE;
    while http_get(monitor, "/healthz?js-enabled-only=true").is_none_or(|(c, _)| c != 200) {
        assert!(Instant::now() < deadline, "nats-server not ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let toml = |password: &str| {
        format!(
            "[nats]\nurl = \"nats://127.0.0.1:{port}\"\nuser = \"qa\"\npassword = \"{password}\"\nconnect_timeout_ms = 2000\n[engine]\nlexicons = \"{}\"\n[metrics]\naddr = \"127.0.0.1:{}\"\n",
            lexicons().display(),
            free_port()
        )
    };
    let parse = |t: String| {
        RawConfig::parse(&t)
            .expect("config parses")
            .validate(&Overrides::default())
            .expect("config")
    };
    let err = zhijian::daemon::run(parse(toml("wrong")), std::future::pending::<()>())
        .await
        .expect_err("a wrong password must fail");
    assert!(
        !err.to_string().contains("wrong"),
        "the password leaked into the error: {err}"
    );
    let daemon = Daemon::start(parse(toml("s3cret-pw"))).await;
    daemon.stop().await;
    let _ = child.kill();
    let _ = child.wait();
}

/// The value of an unlabelled metric of the daemon on `port` (0 if absent).
pub(crate) async fn metric(port: u16, name: &str) -> f64 {
    let prefix = format!("{name} ");
    tokio::task::spawn_blocking(move || http_get(port, "/metrics"))
        .await
        .ok()
        .flatten()
        .and_then(|(_, body)| {
            body.lines().find_map(|l| {
                l.strip_prefix(prefix.as_str())
                    .and_then(|v| v.trim().parse::<f64>().ok())
            })
        })
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_hits_are_counted_per_rule_and_reason() {
    let nats = NatsServer::start();
    let daemon = Daemon::start(config(&nats, &lexicons(), "")).await;
    let lines = [
        r#"{"conversation_id":"s1","seq":0,"speaker":"agent","text":"暂时不知道您的问题我是否为您解决完毕"}"#,
        r#"{"conversation_id":"s1","seq":1,"speaker":"agent","text":"好的啊，宝宝喂养要注意"}"#,
        r#"{"conversation_id":"s1","type":"end"}"#,
    ]
    .map(String::from);
    publish(&nats, &lines).await;
    wait_done(&js(&nats).await, 1).await;
    let text = daemon.metrics();
    for want in [
        r#"zhijian_suppressed_hits_total{reason="exception",rule="forbidden.ignorance"} 1"#,
        r#"zhijian_suppressed_hits_total{reason="position",rule="filler.interjection"} 1"#,
        r#"zhijian_suppressed_hits_total{reason="position",rule="forbidden.wei"} 1"#,
    ] {
        assert!(text.contains(want), "missing {want} in:\n{text}");
    }
    daemon.stop().await;
}

/// Shadow mode against a real nats-server: the candidate judges every
/// segment, its events reach only the shadow subjects, and agreement is
/// counted per rule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_mode_keeps_the_candidate_apart_and_counts_agreement() {
    let nats = NatsServer::start();
    let candidate = tempdir("shadow");
    copy_lexicons(&candidate);
    std::fs::write(
        candidate.join("zz-queue.toml"),
        "[[rule]]\nid = \"forbidden.queue\"\ncategory = \"forbidden\"\nseverity = \"low\"\ndeduct = 1\nsection = \"service_language\"\nphrases = [\"要排队\"]\n",
    )
    .expect("write");
    let extra = format!("[shadow]\nlexicons = \"{}\"\n", candidate.display());
    let daemon = Daemon::start(config(&nats, &lexicons(), &extra)).await;
    let lines = [
        r#"{"conversation_id":"q1","seq":0,"speaker":"agent","text":"您好，这个不归我管，要排队"}"#,
        r#"{"conversation_id":"q1","seq":1,"speaker":"agent","text":"再见"}"#,
        r#"{"conversation_id":"q1","type":"end"}"#,
    ]
    .map(String::from);
    publish(&nats, &lines).await;
    let js = js(&nats).await;
    let live = wait_done(&js, 1).await;
    let live_rules: Vec<&str> = live
        .iter()
        .filter_map(|e| match e {
            Event::Violation(v) => Some(v.rule_id.as_str()),
            Event::Summary(_) => None,
        })
        .collect();
    assert_eq!(live_rules, ["forbidden.shirking"]);
    // The shadow's events, on their own subjects.
    let deadline = Instant::now() + DEADLINE;
    let shadow = loop {
        let msgs = stream_messages(&js, "SHADOW").await;
        if msgs
            .iter()
            .any(|m| m.subject.starts_with("shadow.summaries."))
        {
            break msgs;
        }
        assert!(Instant::now() < deadline, "no shadow summary");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let subjects: Vec<String> = shadow.iter().map(|m| m.subject.to_string()).collect();
    assert!(
        subjects.contains(&"shadow.violations.default.forbidden".to_string()),
        "{subjects:?}"
    );
    let shadow_rules: Vec<String> = shadow
        .iter()
        .filter_map(|m| match serde_json::from_slice::<Event>(&m.payload) {
            Ok(Event::Violation(v)) => Some(v.rule_id),
            _ => None,
        })
        .collect();
    assert_eq!(shadow_rules, ["forbidden.shirking", "forbidden.queue"]);
    // Nothing of the candidate in the live stream, nor in live metrics.
    let text = daemon.metrics();
    for want in [
        r#"zhijian_shadow_violations_total{agreement="both",rule="forbidden.shirking"} 1"#,
        r#"zhijian_shadow_violations_total{agreement="shadow_only",rule="forbidden.queue"} 1"#,
    ] {
        assert!(text.contains(want), "missing {want} in:\n{text}");
    }
    assert!(
        !text.contains(r#"rule="forbidden.queue",severity"#),
        "{text}"
    );
    assert!(!text.contains("agreement=\"live_only\""), "{text}");
    daemon.stop().await;
}

/// `zhijian diff --last-minutes` reads what the TRANSCRIPTS stream holds
/// with an ordered consumer of its own, beside the running daemon.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diff_reads_the_last_minutes_of_the_transcripts_stream() {
    let nats = NatsServer::start();
    let daemon = Daemon::start(config(&nats, &lexicons(), "")).await;
    let candidate = tempdir("diff-stream");
    copy_lexicons(&candidate);
    std::fs::write(
        candidate.join("zz-queue.toml"),
        "[[rule]]\nid = \"forbidden.queue\"\ncategory = \"forbidden\"\nseverity = \"low\"\ndeduct = 1\nsection = \"service_language\"\nphrases = [\"要排队\"]\n",
    )
    .expect("write");
    let lines = [
        r#"{"conversation_id":"d1","seq":0,"speaker":"agent","text":"您好，要排队"}"#,
        r#"{"conversation_id":"d1","seq":1,"speaker":"agent","text":"再见"}"#,
        r#"{"conversation_id":"d1","type":"end"}"#,
    ]
    .map(String::from);
    publish(&nats, &lines).await;
    wait_done(&js(&nats).await, 1).await;
    let out = tokio::task::spawn_blocking({
        let (url, candidate) = (nats.url(), candidate.to_path_buf());
        move || {
            Command::new(env!("CARGO_BIN_EXE_zhijian"))
                .args(["diff", "--old"])
                .arg(lexicons())
                .arg("--new")
                .arg(&candidate)
                .args(["--last-minutes", "5", "--nats-url", &url])
                .output()
                .expect("run")
        }
    })
    .await
    .expect("diff");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "1 conversations (3 lines, 0 bad)",
        "forbidden.queue (forbidden): +1 added, -0 removed",
    ] {
        assert!(stdout.contains(want), "missing {want:?} in:\n{stdout}");
    }
    daemon.stop().await;
}
