//! `zhijian-tools bench`: a load generator that drives the real daemon through a
//! real nats-server and, in the same run, a pass-through consumer (consume,
//! publish one small event per input, ack; no scanning), so the scanner's
//! cost is a ratio measured on the same noisy machine, not an absolute.
//!
//! For each mode it resets the streams, starts the consumer as a child
//! process (`zhijian run` / `zhijian-tools passthrough`), publishes interleaved
//! synthetic conversations (thousands open at once) at a fixed rate or as
//! fast as JetStream acks allow, receives the output events, and reports
//! throughput, latency percentiles (input publish → output received),
//! events lost and duplicated, and the child's peak RSS.

use crate::synth::{self, Mix};
use async_nats::jetstream;
use futures_util::StreamExt;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use zhijian::config::{Config, StreamsConfig};
use zhijian::daemon::{SetupError, setup};
use zhijian::engine::{Engine, EngineConfig};
use zhijian::event::Event;
use zhijian::nats_conn;
use zhijian::subject;

mod soak;
pub use soak::*;

mod child;
use child::*;

/// Why a benchmark could not be run or finished, with its source.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Connect(#[from] nats_conn::ConnectError),
    #[error(transparent)]
    Setup(#[from] SetupError),
    #[error("cannot listen for SIGTERM: {0}")]
    Signal(#[source] std::io::Error),
    /// A file, a port or a process of the bench's own.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// The NATS server (connecting, subscribing, publishing, reading a
    /// stream).
    #[error("{what}: {source}")]
    Nats {
        what: String,
        #[source]
        source: async_nats::Error,
    },
    #[error(transparent)]
    Lexicon(#[from] zhijian::matcher::LoadError),
    /// `zhijian scan` over the generated traffic, for the expected events.
    #[error("cannot judge the generated traffic: {0}")]
    Judge(#[source] std::io::Error),
    /// An event of the offline judgement that does not decode (a bug).
    #[error("an expected event does not decode: {0}")]
    Expected(#[source] serde_json::Error),
    #[error("the generated traffic yields no expected events: nothing to measure")]
    NothingToMeasure,
    #[error("unknown mode {0:?} (daemon, daemon-shadow, passthrough)")]
    UnknownMode(String),
    #[error("no lexicon file to change")]
    NoLexiconFile,
    #[error("cannot start zhijian {sub}: {source}")]
    Start {
        sub: String,
        #[source]
        source: std::io::Error,
    },
    #[error("zhijian {0} not ready after 30 s")]
    NotReady(String),
    #[error("generated an invalid line: {0}")]
    InvalidLine(#[source] zhijian::event::InputError),
    #[error("an event id that is not 32 hex digits")]
    EventId,
    /// The output receiver task panicked or was cancelled.
    #[error("the output receiver failed: {0}")]
    Receiver(#[from] tokio::task::JoinError),
    #[error("poisoned")]
    Poisoned,
}

impl BenchError {
    fn io(what: impl Into<String>, source: std::io::Error) -> BenchError {
        BenchError::Io {
            what: what.into(),
            source,
        }
    }

    fn nats(what: impl Into<String>, source: impl Into<async_nats::Error>) -> BenchError {
        BenchError::Nats {
            what: what.into(),
            source: source.into(),
        }
    }
}

/// `zhijian-tools passthrough`: the baseline consumer. The same partitioned
/// stream read the way the daemon reads it (one consumer per partition, no
/// acks), and per input one small event published through JetStream with
/// its ack awaited in a window, like the daemon's; nothing is judged,
/// nothing is checkpointed. What the daemon adds over it is judging and its
/// bookkeeping.
pub async fn passthrough(config: Config) -> Result<(), BenchError> {
    let client = nats_conn::connect(&config.nats).await?;
    nats_conn::check_server(&client)?;
    let setup = setup(&client, &config).await?;
    let input_client = nats_conn::connect(&config.nats).await?;
    let input_js = jetstream::new(input_client.clone());
    let window = config.publish_window;
    let mut workers = Vec::new();
    for p in 0..setup.partitions {
        let js = setup.js.clone();
        let input_js = input_js.clone();
        let streams = config.streams.clone();
        workers.push(tokio::spawn(async move {
            let subject = subject::violation(&streams, "bench", "passthrough");
            let stream = input_js
                .get_stream(&streams.input_stream)
                .await
                .map_err(|e| BenchError::nats("cannot get the input stream", e))?;
            let consumer = stream
                .create_consumer(jetstream::consumer::pull::OrderedConfig {
                    filter_subject: subject::partition_all(&streams, p),
                    ..Default::default()
                })
                .await
                .map_err(|e| BenchError::nats("cannot create a partition consumer", e))?;
            let mut messages = consumer
                .messages()
                .await
                .map_err(|e| BenchError::nats("cannot read a partition", e))?;
            let mut acks = futures_util::stream::FuturesUnordered::new();
            loop {
                tokio::select! {
                    Some(_) = acks.next(), if !acks.is_empty() => {}
                    m = messages.next(), if acks.len() < window => {
                        let Some(Ok(m)) = m else { break };
                        // 0, which no stream sequence is, when the message
                        // has no JetStream info: the bench counts such a
                        // reply as undecodable, nothing is hidden.
                        let seq = m.info().map(|i| i.stream_sequence).unwrap_or(0);
                        let mut headers = async_nats::HeaderMap::new();
                        headers.insert("Nats-Msg-Id", format!("pt.{seq}").as_str());
                        let payload = format!("{{\"type\":\"passthrough\",\"input_seq\":{seq}}}");
                        if let Ok(ack) = js
                            .publish_with_headers(subject.clone(), headers, payload.into())
                            .await
                        {
                            acks.push(ack.into_future());
                        }
                    }
                }
            }
            Ok::<(), BenchError>(())
        }));
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(BenchError::Signal)?;
    term.recv().await;
    for w in workers {
        w.abort();
    }
    let _ = client.drain().await;
    let _ = input_client.drain().await;
    Ok(())
}

/// Settings of one bench run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub nats_url: String,
    pub lexicons: PathBuf,
    pub conversations: usize,
    /// Conversations in progress at any time.
    pub open: usize,
    pub agent_turns: usize,
    /// Segments per second; 0 = as fast as JetStream acks allow.
    pub rate: f64,
    pub modes: Vec<String>,
    /// Phrases of an extra generated rule added to a copy of the lexicon.
    pub extra_phrases: usize,
    /// Daemon mode: rewrite a lexicon file this often during the run.
    pub reload_every: Option<Duration>,
    /// The daemon's binary (None: this one).
    pub daemon_bin: Option<PathBuf>,
}

/// What one mode measured.
#[derive(Debug, Clone)]
pub struct ModeReport {
    pub mode: String,
    pub inputs: usize,
    pub seconds: f64,
    pub inputs_per_second: f64,
    pub latency_samples: usize,
    /// p50, p90, p99, p99.9, max in milliseconds.
    pub latency_ms: [f64; 5],
    pub expected_events: usize,
    pub received_unique: usize,
    pub lost: usize,
    pub duplicated_in_stream: usize,
    pub peak_rss_mb: f64,
    /// Successful lexicon reloads during the run (daemon mode).
    pub reloads: u64,
    /// Outputs received that are neither an event nor a pass-through reply
    /// naming its input (not counted as received).
    pub undecodable: usize,
    /// Messages in the output stream without a `Nats-Msg-Id` (not counted
    /// among the duplicates: they have no id to compare).
    pub without_msg_id: usize,
}

/// What the pass-through consumer publishes per input.
#[derive(serde::Deserialize)]
struct PassthroughReply {
    input_seq: u64,
}

impl ModeReport {
    pub fn row(&self) -> String {
        let l = &self.latency_ms;
        format!(
            "| {} | {} | {:.2} | {:.0} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {} | {:.1} | {} |",
            self.mode,
            self.inputs,
            self.seconds,
            self.inputs_per_second,
            self.latency_samples,
            l[0],
            l[1],
            l[2],
            l[3],
            l[4],
            self.lost,
            self.duplicated_in_stream,
            self.peak_rss_mb,
            self.reloads
        )
    }

    pub const HEADER: &'static str = "| mode | inputs | seconds | inputs/s | latency samples | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | lost | duplicated | peak RSS MB | lexicon reloads |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|";
}

/// A private copy of the lexicon directory (plus the extra rule), so the
/// run can add to it and change it without touching the original.
fn lexicon_copy(opts: &BenchOptions) -> Result<PathBuf, BenchError> {
    let dir = std::env::temp_dir().join(format!("zhijian-bench-lexicon-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)
        .map_err(|e| BenchError::io(format!("cannot create {}", dir.display()), e))?;
    for entry in std::fs::read_dir(&opts.lexicons)
        .map_err(|e| BenchError::io(format!("cannot read {}", opts.lexicons.display()), e))?
    {
        let path = entry
            .map_err(|e| BenchError::io(format!("cannot read {}", opts.lexicons.display()), e))?
            .path();
        if path.extension().is_some_and(|x| x == "toml")
            && let Some(name) = path.file_name()
        {
            std::fs::copy(&path, dir.join(name)).map_err(|e| {
                BenchError::io(
                    format!("cannot copy {} to {}", path.display(), dir.display()),
                    e,
                )
            })?;
        }
    }
    if opts.extra_phrases > 0 {
        std::fs::write(
            dir.join("zz-bench-extra.toml"),
            synth::large_rule_toml(opts.extra_phrases, 1),
        )
        .map_err(|e| {
            BenchError::io(
                format!("cannot write the extra rule into {}", dir.display()),
                e,
            )
        })?;
    }
    Ok(dir)
}

/// Runs every requested mode and returns their reports.
pub async fn bench(opts: &BenchOptions) -> Result<Vec<ModeReport>, BenchError> {
    let mut opts = opts.clone();
    if opts.extra_phrases > 0 || opts.reload_every.is_some() {
        opts.lexicons = lexicon_copy(&opts)?;
    }
    let opts = &opts;
    let mix = Mix {
        agent_turns: opts.agent_turns,
        ..Mix::default()
    };
    let convs = synth::conversations(7, opts.conversations, "bench-", &mix);
    let lines = synth::staggered_jsonl(&convs, opts.open, "bench", "call");
    let lexicon = Arc::new(zhijian::matcher::load_base(&opts.lexicons)?);
    let out = judge_offline(&lexicon, &lines)?;
    let expected: Vec<Event> = out
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(serde_json::from_slice)
        .collect::<Result<_, _>>()
        .map_err(BenchError::Expected)?;
    if expected.is_empty() {
        return Err(BenchError::NothingToMeasure);
    }
    let mut reports = Vec::new();
    for mode in &opts.modes {
        reports.push(run_mode(opts, mode, &lines, &expected).await?);
    }
    Ok(reports)
}

fn config_text(opts: &BenchOptions, metrics_port: u16, shadow: bool) -> String {
    // Shadow mode with the same lexicon as the candidate: every segment is
    // judged twice, the most shadowing can cost.
    let shadow = if shadow {
        format!("[shadow]\nlexicons = \"{}\"\n", opts.lexicons.display())
    } else {
        String::new()
    };
    format!(
        "[nats]\nurl = \"{}\"\n[engine]\nlexicons = \"{}\"\nreload_poll_ms = 100\n[metrics]\naddr = \"127.0.0.1:{metrics_port}\"\n[console]\naddr = \"127.0.0.1:0\"\n[log]\nlevel = \"warn\"\n{shadow}",
        opts.nats_url,
        opts.lexicons.display(),
    )
}

async fn run_mode(
    opts: &BenchOptions,
    mode: &str,
    lines: &[String],
    expected: &[Event],
) -> Result<ModeReport, BenchError> {
    let sub = match mode {
        "daemon" | "daemon-shadow" => "run",
        "passthrough" => "passthrough",
        other => {
            return Err(BenchError::UnknownMode(other.to_string()));
        }
    };
    let Child {
        client,
        js,
        metrics_port,
        mut child,
        dir,
    } = start_child(opts, sub, "bench", mode == "daemon-shadow").await?;
    let pid = child.0.id();

    // Which input line each output answers, to time it.
    let mut line_of: HashMap<String, usize> = HashMap::new();
    for (i, l) in lines.iter().enumerate() {
        if let Ok(input) = zhijian::event::decode_str(l) {
            let key = match &input.kind {
                zhijian::event::InputKind::Segment(s) => {
                    format!("{}#{}", input.conversation_id, s.seq)
                }
                zhijian::event::InputKind::End => format!("{}#end", input.conversation_id),
            };
            line_of.insert(key, i);
        }
    }
    let published: Arc<Mutex<Vec<Option<Instant>>>> = Arc::new(Mutex::new(vec![None; lines.len()]));
    let expected_events = if mode.starts_with("daemon") {
        expected.len()
    } else {
        lines.len()
    };

    // The child runs with the default subjects.
    let streams = StreamsConfig::default();
    let (mut outputs, mut summaries) = subscribe_outputs(&client).await?;
    let pubs = Arc::clone(&published);
    let receiver = tokio::spawn(async move {
        let mut latencies = Vec::new();
        // The same, by what was received (summary, or a violation's
        // category and rule kind): where a tail comes from.
        let mut by_kind: HashMap<String, Vec<f64>> = HashMap::new();
        let mut seen: HashMap<String, u32> = HashMap::new();
        let mut undecodable = 0usize;
        let mut last = Instant::now();
        let deadline = Instant::now() + Duration::from_secs(300);
        while seen.len() < expected_events && Instant::now() < deadline {
            let msg = tokio::select! {
                m = outputs.next() => m,
                m = summaries.next() => m,
                _ = tokio::time::sleep(Duration::from_secs(20)) => break,
            };
            let Some(msg) = msg else { break };
            let now = Instant::now();
            let mut kind = "pass-through".to_string();
            let (id, line) = match serde_json::from_slice::<Event>(&msg.payload) {
                Ok(Event::Violation(v)) => {
                    kind = format!("{} ({})", v.category, v.kind);
                    // A missing closing is decided by the `end` event, though
                    // it points at the last agent segment: time it from `end`.
                    let k = if v.category == "missing_closing" {
                        format!("{}#end", v.conversation_id)
                    } else {
                        format!("{}#{}", v.conversation_id, v.seq)
                    };
                    // Verdicts of `response` and `timing` rules wait by
                    // design (for a reply within N segments or seconds):
                    // received, not timed.
                    let timed = !matches!(v.kind.as_str(), "response" | "timing");
                    (v.id, line_of.get(&k).copied().filter(|_| timed))
                }
                Ok(Event::Summary(s)) => {
                    kind = "summary".into();
                    let k = format!("{}#end", s.conversation_id);
                    (s.id, line_of.get(&k).copied())
                }
                Err(_) => match serde_json::from_slice::<PassthroughReply>(&msg.payload) {
                    // Pass-through: {"input_seq": N}, N = line + 1.
                    Ok(r) if r.input_seq > 0 => (
                        format!("pt.{}", r.input_seq),
                        usize::try_from(r.input_seq - 1).ok(),
                    ),
                    // Neither an event nor a reply naming its input: counted,
                    // and not taken as received (it would stand in for an
                    // output that never came).
                    _ => {
                        undecodable += 1;
                        continue;
                    }
                },
            };
            last = now;
            let first = {
                let c = seen.entry(id).or_insert(0);
                *c += 1;
                *c == 1
            };
            if first
                && let Some(i) = line
                && let Ok(p) = pubs.lock()
                && let Some(Some(t)) = p.get(i)
            {
                let ms = now.duration_since(*t).as_secs_f64() * 1000.0;
                latencies.push(ms);
                by_kind.entry(kind).or_default().push(ms);
            }
        }
        let mut kinds: Vec<_> = by_kind.into_iter().collect();
        kinds.sort_by(|a, b| a.0.cmp(&b.0));
        for (kind, mut ms) in kinds {
            ms.sort_by(|a, b| a.total_cmp(b));
            let at = |p: f64| percentile(&ms, p);
            eprintln!(
                "  latency of {kind}: {} samples, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
                ms.len(),
                at(0.5),
                at(0.99),
                at(1.0)
            );
        }
        (latencies, seen, last, undecodable)
    });

    // Lexicon changes during the run: a comment appended to one file, so
    // the daemon's poll sees a change and rebuilds the whole lexicon.
    let (stop_reloads, mut reloads_stopped) = tokio::sync::watch::channel(false);
    let reloader = match (opts.reload_every, mode) {
        (Some(every), "daemon") => {
            let file = std::fs::read_dir(&opts.lexicons)
                .map_err(|e| BenchError::io(format!("cannot read {}", opts.lexicons.display()), e))?
                .filter_map(Result::ok)
                .map(|e| e.path())
                .find(|p| p.extension().is_some_and(|x| x == "toml"))
                .ok_or(BenchError::NoLexiconFile)?;
            Some(tokio::spawn(async move {
                let mut n = 0u64;
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(every) => {}
                        _ = reloads_stopped.changed() => return,
                    }
                    n += 1;
                    if let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(&file) {
                        let _ = writeln!(f, "# bench reload {n}");
                    }
                }
            }))
        }
        _ => None,
    };

    // Publish.
    let started = Instant::now();
    let mut in_flight = std::collections::VecDeque::new();
    for (i, l) in lines.iter().enumerate() {
        if opts.rate > 0.0 {
            let due = started + Duration::from_secs_f64(i as f64 / opts.rate);
            if due > Instant::now() {
                tokio::time::sleep_until(due.into()).await;
            }
        }
        let subject = match zhijian::event::decode_str(l) {
            Ok(input) => subject::input(&streams, &input.tenant, &input.conversation_id),
            Err(_) => subject::input(&streams, "invalid", "x"),
        };
        if let Ok(mut p) = published.lock() {
            p[i] = Some(Instant::now());
        }
        publish_windowed(&js, &mut in_flight, subject, l).await?;
    }
    for a in in_flight {
        a.await
            .map_err(|e| BenchError::nats("an input was not stored", e))?;
    }
    let published_in = started.elapsed().as_secs_f64();
    let (mut latencies, seen, last, undecodable) = receiver.await?;
    let seconds = last.duration_since(started).as_secs_f64();
    let peak_rss_mb = peak_rss_mb(pid);
    let _ = stop_reloads.send(true);
    if let Some(r) = reloader {
        let _ = r.await;
    }
    let reloads = if mode.starts_with("daemon") {
        reload_count(metrics_port).await
    } else {
        0
    };
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = child.0.wait();

    // Stored duplicates: messages in the output stream vs distinct ids.
    let StoredIds {
        ids: stored,
        without_id,
    } = stream_ids(&js, "VIOLATIONS").await?;
    let distinct: std::collections::HashSet<&String> = stored.iter().collect();
    let want: Vec<String> = if mode.starts_with("daemon") {
        expected.iter().map(|e| e.id().to_string()).collect()
    } else {
        (1..=lines.len()).map(|s| format!("pt.{s}")).collect()
    };
    let lost = want.iter().filter(|id| !seen.contains_key(*id)).count();
    latencies.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| percentile(&latencies, p);
    eprintln!(
        "{mode}: published {} inputs in {published_in:.2} s, last output after {seconds:.2} s",
        lines.len()
    );
    if undecodable > 0 {
        eprintln!(
            "{mode}: {undecodable} outputs received that are neither an event nor a pass-through reply"
        );
    }
    if without_id > 0 {
        eprintln!("{mode}: {without_id} messages stored in VIOLATIONS without a Nats-Msg-Id");
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(ModeReport {
        mode: mode.to_string(),
        inputs: lines.len(),
        seconds,
        inputs_per_second: lines.len() as f64 / seconds,
        latency_samples: latencies.len(),
        latency_ms: [pct(0.5), pct(0.9), pct(0.99), pct(0.999), pct(1.0)],
        expected_events: want.len(),
        received_unique: seen.len(),
        lost,
        duplicated_in_stream: stored.len() - distinct.len(),
        undecodable,
        without_msg_id: without_id,
        peak_rss_mb,
        reloads,
    })
}

/// `zhijian_lexicon_reloads_total{result="success"}` of the daemon.
/// Subscriptions to the child daemon's violations and summaries (it runs
/// with the default subjects).
async fn subscribe_outputs(
    client: &async_nats::Client,
) -> Result<(async_nats::Subscriber, async_nats::Subscriber), BenchError> {
    let streams = StreamsConfig::default();
    let outputs = client
        .subscribe(subject::all(&streams.violations_prefix))
        .await
        .map_err(|e| BenchError::nats("cannot subscribe to the violations", e))?;
    let summaries = client
        .subscribe(subject::all(&streams.summaries_prefix))
        .await
        .map_err(|e| BenchError::nats("cannot subscribe to the summaries", e))?;
    Ok((outputs, summaries))
}

async fn reload_count(metrics_port: u16) -> u64 {
    metric_value(
        metrics_port,
        "zhijian_lexicon_reloads_total{result=\"success\"}",
    )
    .await
    .unwrap_or(0.0) as u64
}

/// The value of one series of the daemon's metrics (None: no answer, or no
/// such series).
async fn metric_value(metrics_port: u16, series: &str) -> Option<f64> {
    let prefix = format!("{series} ");
    let fetch = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", metrics_port))
            .await
            .ok()?;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .await
            .ok()?;
        let mut body = String::new();
        s.read_to_string(&mut body).await.ok()?;
        body.lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .and_then(|v| v.trim().parse::<f64>().ok())
    };
    tokio::time::timeout(Duration::from_secs(5), fetch)
        .await
        .ok()
        .flatten()
}

/// The `Nats-Msg-Id`s of the messages in a stream.
struct StoredIds {
    ids: Vec<String>,
    /// Messages without one.
    without_id: usize,
}

/// The `Nats-Msg-Id` of every message in a stream.
async fn stream_ids(js: &jetstream::Context, stream: &str) -> Result<StoredIds, BenchError> {
    let mut s = js
        .get_stream(stream)
        .await
        .map_err(|e| BenchError::nats(format!("stream {stream}"), e))?;
    let n = s
        .info()
        .await
        .map_err(|e| BenchError::nats(format!("stream {stream}"), e))?
        .state
        .messages as usize;
    let mut out = StoredIds {
        ids: Vec::with_capacity(n),
        without_id: 0,
    };
    if n == 0 {
        return Ok(out);
    }
    let consumer = s
        .create_consumer(jetstream::consumer::pull::Config {
            ack_policy: jetstream::consumer::AckPolicy::None,
            ..Default::default()
        })
        .await
        .map_err(|e| BenchError::nats(format!("cannot read stream {stream}"), e))?;
    let mut msgs = consumer
        .messages()
        .await
        .map_err(|e| BenchError::nats(format!("cannot read stream {stream}"), e))?;
    while out.ids.len() + out.without_id < n {
        match tokio::time::timeout(Duration::from_secs(10), msgs.next()).await {
            Ok(Some(Ok(m))) => match m
                .message
                .headers
                .as_ref()
                .and_then(|h| h.get("Nats-Msg-Id"))
            {
                Some(id) => out.ids.push(id.as_str().to_string()),
                // Every output is published with one: counted, not taken
                // as an empty id (all of them would look like duplicates
                // of each other).
                None => out.without_id += 1,
            },
            _ => break,
        }
    }
    Ok(out)
}

/// Publishes one input line, keeping at most 4,096 acks outstanding (the
/// oldest is awaited first): the load generator's own backpressure.
async fn publish_windowed(
    js: &jetstream::Context,
    in_flight: &mut std::collections::VecDeque<jetstream::context::PublishAckFuture>,
    subject: String,
    line: &str,
) -> Result<(), BenchError> {
    let ack = js
        .publish(subject, line.to_string().into_bytes().into())
        .await
        .map_err(|e| BenchError::nats("cannot publish an input", e))?;
    in_flight.push_back(ack);
    if in_flight.len() >= 4096
        && let Some(a) = in_flight.pop_front()
    {
        a.await
            .map_err(|e| BenchError::nats("an input was not stored", e))?;
    }
    Ok(())
}

/// What `zhijian scan` outputs for these input lines (the events a run
/// must produce), as JSON lines.
fn judge_offline(
    lexicon: &Arc<zhijian::matcher::Scanner>,
    lines: &[String],
) -> Result<Vec<u8>, BenchError> {
    let mut engine = Engine::new(Arc::clone(lexicon), EngineConfig::default());
    let mut out = Vec::new();
    zhijian::scan::scan(
        &mut engine,
        lines.join("\n").as_bytes(),
        &mut out,
        &mut std::io::sink(),
    )
    .map_err(BenchError::Judge)?;
    Ok(out)
}

/// The `p` quantile (0..=1) of sorted samples, nearest rank; NaN when there
/// are none.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}
