//! The daemon for tests: in-process (its shutdown future) or as a child
//! process (the real binary, signals and all), its configuration, the
//! streams it writes read back, and comparisons with `zhijian scan`.

use crate::engine::scan_jsonl;
use crate::nats::{NatsServer, free_port, http_get};
use crate::tmp::tempdir;
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

pub use crate::wait::DEADLINE;

pub fn lexicons() -> PathBuf {
    crate::repo().join("lexicons")
}

/// The daemon's config as a TOML file's text (for child processes and
/// in-process runs alike).
pub fn config_toml(nats: &NatsServer, lexicons: &Path, metrics_port: u16, extra: &str) -> String {
    format!(
        "[nats]\nurl = \"{}\"\n[streams]\nack_wait_s = 2\nduplicate_window_s = 600\n[engine]\nlexicons = \"{}\"\nreload_poll_ms = 100\n[daemon]\nshutdown_grace_s = 15\n[metrics]\naddr = \"127.0.0.1:{metrics_port}\"\n[console]\naddr = \"127.0.0.1:0\"\n[log]\nlevel = \"warn\"\n{extra}",
        nats.url(),
        lexicons.display()
    )
}

pub fn config(nats: &NatsServer, lexicons: &Path, extra: &str) -> Config {
    RawConfig::parse(&config_toml(nats, lexicons, free_port(), extra))
        .expect("test config parses")
        .validate(&Overrides::default())
        .expect("test config")
}

/// The daemon running in-process, stopped through its shutdown future.
pub struct Daemon {
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), DaemonError>>,
    pub metrics_port: u16,
}

impl Daemon {
    pub async fn start(config: Config) -> Daemon {
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

    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let r = tokio::time::timeout(DEADLINE, &mut self.task).await;
        match r {
            Ok(Ok(Ok(()))) => {}
            other => panic!("daemon did not stop cleanly: {other:?}"),
        }
    }

    pub fn metrics(&self) -> String {
        http_get(self.metrics_port, "/metrics")
            .expect("metrics answer")
            .1
    }
}

pub async fn wait_ready(metrics_port: u16) {
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
pub async fn publish(nats: &NatsServer, lines: &[String]) {
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

pub async fn js(nats: &NatsServer) -> jetstream::Context {
    let client = async_nats::connect(nats.url()).await.expect("connect");
    jetstream::new(client)
}

/// Every message stored in a stream, in order.
pub async fn stream_messages(js: &jetstream::Context, stream: &str) -> Vec<async_nats::Message> {
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

pub async fn output_events(js: &jetstream::Context) -> Vec<Event> {
    stream_messages(js, "VIOLATIONS")
        .await
        .iter()
        .map(|m| serde_json::from_slice(&m.payload).expect("event JSON"))
        .collect()
}

/// Waits until `n` summaries are stored and every input is judged (each
/// partition's checkpoint covers its last input).
pub async fn wait_done(js: &jetstream::Context, summaries: usize) -> Vec<Event> {
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
pub async fn input_partitions(js: &jetstream::Context) -> u32 {
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
pub async fn all_judged(js: &jetstream::Context) -> bool {
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
pub async fn wait_events(
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
pub fn assert_same(got: &[Event], want: &[Event], what: &str) {
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

pub fn assert_no_duplicate_ids(events: &[Event]) {
    let mut seen = HashMap::new();
    for e in events {
        *seen.entry(e.id().to_string()).or_insert(0) += 1;
    }
    let dups: Vec<_> = seen.into_iter().filter(|(_, n)| *n > 1).collect();
    assert!(dups.is_empty(), "duplicate event ids stored: {dups:?}");
}

pub fn scan(lines: &[String]) -> Vec<Event> {
    let scanner = std::sync::Arc::new(crate::engine::compile(&lexicons()));
    let mut engine = Engine::new(scanner, EngineConfig::default());
    scan_jsonl(&mut engine, &lines.join("\n")).0
}

pub fn traffic(n: usize, seed: u64) -> Vec<String> {
    let convs = synth::conversations(seed, n, &format!("conv-{seed}-"), &Mix::default());
    let mut lines = synth::interleaved_jsonl(&convs, "acme", "call");
    let examples = std::fs::read_to_string(crate::repo().join("examples/conversations.jsonl"))
        .expect("examples");
    lines.extend(examples.lines().map(str::to_string));
    lines
}

pub fn summaries_in(lines: &[String]) -> usize {
    lines
        .iter()
        .filter(|l| l.contains("\"type\":\"end\""))
        .count()
}

/// `/readyz`'s body (its checks by name).
pub async fn ready_body(port: u16) -> String {
    tokio::task::spawn_blocking(move || http_get(port, "/readyz"))
        .await
        .ok()
        .flatten()
        .map(|(_, b)| b)
        .unwrap_or_default()
}

/// [`crate::wait::wait_for`] under the name the daemon tests use.
pub use crate::wait::wait_for as wait_until;

/// Copies the default lexicon's files (not its tests or overlays) into
/// `dir`, for tests that change a lexicon.
pub fn copy_lexicons(dir: &Path) {
    for e in std::fs::read_dir(lexicons()).expect("lexicons") {
        let p = e.expect("entry").path();
        if p.extension().is_some_and(|x| x == "toml") {
            std::fs::copy(&p, dir.join(p.file_name().expect("name"))).expect("copy");
        }
    }
}

/// The real binary, as a deployment runs it.
pub struct ChildDaemon {
    child: Child,
    pub metrics_port: u16,
}

/// The binary the child daemons run: `$ZJ_BIN` when set (to run these
/// tests against another build, such as an older one, to see which fail),
/// else this build's.
pub fn zj_bin() -> PathBuf {
    std::env::var_os("ZJ_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            // The test binary is target/<profile>/deps/<test>-<hash>; cargo
            // builds the package's own binary beside deps/ before its tests.
            std::env::current_exe()
                .ok()
                .and_then(|exe| Some(exe.parent()?.parent()?.join("zhijian")))
                .unwrap_or_else(|| PathBuf::from("zhijian"))
        })
}

/// A child daemon's files: its temporary directory (removed when dropped),
/// config file and metrics port, for starting it again.
pub struct ChildFiles {
    pub _dir: crate::tmp::TempDir,
    pub cfg: PathBuf,
    pub metrics_port: u16,
}

impl ChildDaemon {
    /// Writes the test configuration (with `extra`, a shutdown grace of
    /// `grace_s` seconds) into a new temporary directory named after
    /// `what`, and starts `zhijian run` with it.
    pub async fn with_config(
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

    pub async fn start(config_file: &Path, metrics_port: u16) -> ChildDaemon {
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

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill {sig} failed");
    }

    pub async fn wait(mut self) -> std::process::ExitStatus {
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

/// The value of an unlabelled metric of the daemon on `port` (0 if absent).
pub async fn metric(port: u16, name: &str) -> f64 {
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

/// Every series' value of a metric of the daemon on `port`, or `None` when
/// it does not answer.
pub async fn metric_series(port: u16, name: &str) -> Option<Vec<f64>> {
    let name = name.to_string();
    let (_, body) = tokio::task::spawn_blocking(move || http_get(port, "/metrics"))
        .await
        .ok()
        .flatten()?;
    Some(
        body.lines()
            .filter(|l| {
                l.strip_prefix(name.as_str())
                    .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .collect(),
    )
}
