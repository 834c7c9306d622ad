//! The daemon end to end against a real nats-server: parity with `zhijian
//! scan`, idempotence under duplicates and redeliveries, dead letters, NATS
//! restarts, SIGTERM and restart, idle timeouts, hot reload, metrics. The
//! helpers are the test kit's (`zhijian_test_kit::daemon`), re-exported for
//! the other test files.

pub(crate) use zhijian_test_kit::daemon::*;

use crate::nats_support::{NatsServer, free_port, http_get, tempdir};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use zhijian::config::{Overrides, RawConfig};
use zhijian::daemon::DaemonError;
use zhijian::event::Event;

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
    // The process's own figures, as Prometheus clients export them.
    for name in [
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_cpu_seconds_total",
        "process_start_time_seconds",
    ] {
        assert!(value(name, &[]) > 0.0, "{name} in:\n{text}");
    }
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
        r#"{"conversation_id":"c1","tenant":"acme","seq":0,"text":"我的手机13812345678"}"#.into(),
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
    // No personal data leaves in a dead letter: bytes that are not text
    // are replaced by their length and digest, text is masked.
    let header = |m: &async_nats::Message, name: &str| {
        m.headers
            .as_ref()
            .and_then(|h| h.get(name))
            .map(|v| v.as_str().to_string())
    };
    assert!(bad_utf8.payload.is_empty(), "{:?}", bad_utf8.payload);
    assert_eq!(
        header(bad_utf8, "Zhijian-Payload-Bytes"),
        Some(garbage.len().to_string())
    );
    assert_eq!(
        header(bad_utf8, "Zhijian-Payload-Fnv128"),
        Some(zhijian::event::event_id(&[&garbage]))
    );
    let missing = dead
        .iter()
        .find(|m| reason(m) == "missing_field")
        .expect("the line without a speaker was dead-lettered");
    let text = String::from_utf8_lossy(&missing.payload);
    assert!(
        text.contains("我的手机*******5678") && !text.contains("13812345678"),
        "{text}"
    );
    assert_eq!(header(missing, "Zhijian-Masked").as_deref(), Some("true"));
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
        // Not ready, and for the server's sake (the input connection may
        // say so a moment before the probe does).
        if let Some((503, body)) = &r
            && body.contains("nats_connected false")
        {
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

/// Every stored event says its contract version and carries the
/// CloudEvents attributes (NATS binding, binary mode): `ce-id` is the
/// event id, `ce-type` its kind, `ce-source` its tenant; the payload is the
/// event, unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_events_carry_the_contract_version_and_cloudevents_headers() {
    let nats = NatsServer::start();
    let daemon = Daemon::start(config(&nats, &lexicons(), "")).await;
    let lines = vec![
        r#"{"conversation_id":"ce","tenant":"acme","seq":0,"speaker":"agent","text":"急什么"}"#
            .to_string(),
        r#"{"conversation_id":"ce","tenant":"acme","type":"end"}"#.to_string(),
    ];
    publish(&nats, &lines).await;
    let js = js(&nats).await;
    wait_done(&js, 1).await;
    let stored = stream_messages(&js, "VIOLATIONS").await;
    daemon.stop().await;
    assert!(stored.len() >= 2, "{stored:?}");
    for m in &stored {
        let event: Event = serde_json::from_slice(&m.payload).expect("an event");
        let header = |name: &str| {
            m.headers
                .as_ref()
                .and_then(|h| h.get(name))
                .map(|v| v.as_str().to_string())
                .unwrap_or_default()
        };
        let kind = match event {
            Event::Violation(_) => "io.zhijian.violation.v1",
            Event::Summary(_) => "io.zhijian.summary.v1",
        };
        assert_eq!(
            [
                header("Zhijian-Contract"),
                header("ce-specversion"),
                header("ce-id"),
                header("ce-type"),
                header("ce-source"),
                header("content-type"),
            ],
            [
                zhijian::event::CONTRACT_VERSION,
                "1.0",
                event.id(),
                kind,
                "/zhijian/acme",
                "application/json"
            ]
            .map(String::from)
        );
    }
}
