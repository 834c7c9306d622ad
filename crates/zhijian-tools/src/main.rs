//! `zhijian-tools`: the load generator and its pass-through baseline, the
//! soak, synthetic traffic and the scanner's own timing. Not in the product
//! binary; `./dev bench` and `./dev soak` run it. The daemon under test is
//! the product binary `zhijian` beside this one (or `--daemon-bin`).

use clap::{Parser, Subcommand};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use zhijian::cli::Common;
use zhijian::config::{Config, Overrides, RawConfig};
use zhijian::event::Speaker;
use zhijian::matcher::Scratch;

#[derive(Parser)]
#[command(
    name = "zhijian-tools",
    version,
    about = "zhijian's load generator, soak and synthetic traffic"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load generator: drive the daemon and a pass-through consumer through
    /// a real nats-server and report throughput, latency, loss, duplicates.
    Bench {
        /// NATS server (JetStream) to use; its zhijian streams are reset.
        #[arg(long, default_value = "nats://127.0.0.1:4222")]
        nats_url: String,
        #[arg(long, default_value = "lexicons")]
        lexicons: PathBuf,
        /// Conversations in the run.
        #[arg(long, default_value_t = 8000)]
        conversations: usize,
        /// Conversations in progress at any time (a new one starts when
        /// one ends).
        #[arg(long, default_value_t = 2000)]
        open: usize,
        /// Agent turns per conversation (plus as many customer turns).
        #[arg(long, default_value_t = 6)]
        agent_turns: usize,
        /// Input segments per second (0: as fast as JetStream acks allow).
        #[arg(long, default_value_t = 0.0)]
        rate: f64,
        /// Comma-separated: passthrough, daemon, daemon-shadow (the daemon
        /// with the same lexicon as a shadow candidate: every segment
        /// judged twice).
        #[arg(long, default_value = "passthrough,daemon")]
        modes: String,
        /// Add a rule of this many generated phrases to (a copy of) the
        /// lexicon.
        #[arg(long, default_value_t = 0)]
        extra_phrases: usize,
        /// Daemon mode: change (a copy of) the lexicon this often during the
        /// run, so the daemon reloads it under load (0: never).
        #[arg(long, default_value_t = 0)]
        reload_every_ms: u64,
        /// Daemon mode: run this `zhijian` binary as the daemon (another
        /// build, for an A/B in one run) instead of this one.
        #[arg(long)]
        daemon_bin: Option<PathBuf>,
    },
    /// Soak: the daemon under steady load for a long time, with
    /// conversations opening and closing; its RSS sampled, loss and
    /// duplicates counted.
    Soak {
        /// NATS server (JetStream) to use; its zhijian streams are reset.
        #[arg(long, default_value = "nats://127.0.0.1:4222")]
        nats_url: String,
        #[arg(long, default_value = "lexicons")]
        lexicons: PathBuf,
        /// How long to publish (seconds).
        #[arg(long, default_value_t = 1800)]
        seconds: u64,
        /// Input segments per second.
        #[arg(long, default_value_t = 20_000.0)]
        rate: f64,
        /// Conversations in progress at any time.
        #[arg(long, default_value_t = 2000)]
        open: usize,
        /// Sample the daemon's RSS this often (seconds).
        #[arg(long, default_value_t = 10)]
        sample_every_s: u64,
    },
    /// The pass-through consumer the bench compares against (consume,
    /// publish one small event, ack; no scanning).
    Passthrough {
        #[command(flatten)]
        common: Common,
    },
    /// Write generated conversations as input JSONL to stdout (for
    /// benchmarks and peer comparisons).
    Synth {
        #[arg(long, default_value_t = 2000)]
        conversations: usize,
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
    /// Time `Scanner::scan` over the agent segments of a JSONL file (one
    /// thread, no JSON in the timed loop): the engine side of the peer
    /// comparison in benches/peers.py.
    ScanBench {
        #[arg(long, default_value = "lexicons")]
        lexicons: PathBuf,
        /// Timed passes over the file.
        #[arg(long, default_value_t = 20)]
        passes: usize,
        file: PathBuf,
    },
}

/// Why a command failed: a usage error (exit 2) or a failed run (exit 1).
enum Failure {
    Config(String),
    Runtime(String),
}

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Failure {
        Failure::Runtime(e.to_string())
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Runtime(format!("cannot start the async runtime: {e}")))
}

fn load_config(common: &Common, flags: &Overrides) -> Result<Config, Failure> {
    let raw = RawConfig::load_with_env(common.config.as_deref(), std::env::vars())
        .map_err(|e| Failure::Config(e.to_string()))?;
    raw.validate(flags)
        .map_err(|e| Failure::Config(e.to_string()))
}

fn load_scanner(dir: &Path) -> Result<std::sync::Arc<zhijian::matcher::Scanner>, Failure> {
    zhijian::matcher::load_base(dir).map_err(|e| Failure::Config(e.to_string()))
}

fn init_logging(config: &Config) {
    zhijian::cli::init_logging(config)
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Passthrough { common } => cmd_passthrough(&common),
        Command::Synth {
            conversations,
            seed,
        } => {
            let convs = zhijian_tools::synth::conversations(
                seed,
                conversations,
                "synth-",
                &zhijian_tools::synth::Mix::default(),
            );
            let mut out = io::stdout().lock();
            zhijian_tools::synth::jsonl(&convs, "bench", "call")
                .iter()
                .try_for_each(|l| writeln!(out, "{l}"))
                .map_err(Failure::from)
        }
        Command::ScanBench {
            lexicons,
            passes,
            file,
        } => cmd_scan_bench(&lexicons, passes, &file),
        Command::Soak {
            nats_url,
            lexicons,
            seconds,
            rate,
            open,
            sample_every_s,
        } => cmd_soak(zhijian_tools::loadgen::SoakOptions {
            nats_url,
            lexicons: std::fs::canonicalize(&lexicons).unwrap_or(lexicons),
            seconds,
            rate,
            open,
            sample_every: std::time::Duration::from_secs(sample_every_s.max(1)),
        }),
        Command::Bench {
            nats_url,
            lexicons,
            conversations,
            open,
            agent_turns,
            rate,
            modes,
            extra_phrases,
            reload_every_ms,
            daemon_bin,
        } => cmd_bench(zhijian_tools::loadgen::BenchOptions {
            nats_url,
            lexicons: std::fs::canonicalize(&lexicons).unwrap_or(lexicons),
            conversations,
            open,
            agent_turns,
            rate,
            modes: modes.split(',').map(|m| m.trim().to_string()).collect(),
            extra_phrases,
            reload_every: (reload_every_ms > 0)
                .then(|| std::time::Duration::from_millis(reload_every_ms)),
            daemon_bin,
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Config(msg)) => {
            eprintln!("zhijian-tools: {msg}");
            ExitCode::from(2)
        }
        Err(Failure::Runtime(msg)) => {
            eprintln!("zhijian-tools: {msg}");
            ExitCode::from(1)
        }
    }
}

fn cmd_passthrough(common: &Common) -> Result<(), Failure> {
    let flags = Overrides {
        nats_url: common.nats_url.clone(),
        ..Overrides::default()
    };
    let config = load_config(common, &flags)?;
    init_logging(&config);
    Ok(runtime()?.block_on(zhijian_tools::loadgen::passthrough(config))?)
}

fn cmd_soak(opts: zhijian_tools::loadgen::SoakOptions) -> Result<(), Failure> {
    if opts.rate <= 0.0 {
        return Err(Failure::Config("--rate must be > 0".into()));
    }
    let r = runtime()?.block_on(zhijian_tools::loadgen::soak(&opts))?;
    println!("| t (s) | daemon RSS (MB) | inputs published | events received |");
    println!("|---|---|---|---|");
    for s in &r.samples {
        println!(
            "| {:.0} | {:.1} | {} | {} |",
            s.t_s, s.rss_mb, s.published, s.received
        );
    }
    println!(
        "soak: {} inputs ({} conversations) at {}/s over {:.0} s; events expected {}, received {}, lost {}, unexpected {}, stored {}, duplicated in stream {}",
        r.published,
        r.conversations,
        opts.rate,
        r.seconds,
        r.expected,
        r.received_unique,
        r.lost,
        r.unexpected,
        r.stored,
        r.duplicated_in_stream
    );
    if r.lost > 0 || r.duplicated_in_stream != 0 || r.unexpected > 0 {
        return Err(Failure::Runtime(
            "the soak lost or duplicated events".into(),
        ));
    }
    if r.undecodable > 0 {
        return Err(Failure::Runtime(format!(
            "the soak received {} outputs without a readable event id",
            r.undecodable
        )));
    }
    Ok(())
}

fn cmd_bench(opts: zhijian_tools::loadgen::BenchOptions) -> Result<(), Failure> {
    let reports = runtime()?.block_on(zhijian_tools::loadgen::bench(&opts))?;
    println!(
        "{} conversations ({} open at once) x {} agent turns, rate {}",
        opts.conversations,
        opts.open,
        opts.agent_turns,
        if opts.rate > 0.0 {
            format!("{}/s", opts.rate)
        } else {
            "max".into()
        }
    );
    println!("{}", zhijian_tools::loadgen::ModeReport::HEADER);
    for r in &reports {
        println!("{}", r.row());
    }
    if let (Some(p), Some(d)) = (
        reports.iter().find(|r| r.mode == "passthrough"),
        reports.iter().find(|r| r.mode == "daemon"),
    ) {
        println!(
            "daemon/passthrough throughput: {:.2}; p99 added: {:.2} ms; p99.9 added: {:.2} ms",
            d.inputs_per_second / p.inputs_per_second,
            d.latency_ms[2] - p.latency_ms[2],
            d.latency_ms[3] - p.latency_ms[3]
        );
    }
    let bad: Vec<&zhijian_tools::loadgen::ModeReport> = reports
        .iter()
        .filter(|r| r.lost > 0 || r.duplicated_in_stream > 0)
        .collect();
    if !bad.is_empty() {
        return Err(Failure::Runtime(format!(
            "{} mode(s) lost or duplicated events",
            bad.len()
        )));
    }
    let garbled = reports
        .iter()
        .filter(|r| r.undecodable > 0 || r.without_msg_id > 0)
        .count();
    if garbled > 0 {
        return Err(Failure::Runtime(format!(
            "{garbled} mode(s) received outputs that do not decode or stored outputs without a Nats-Msg-Id"
        )));
    }
    Ok(())
}

fn cmd_scan_bench(lexicons: &Path, passes: usize, file: &Path) -> Result<(), Failure> {
    let scanner = load_scanner(lexicons)?;
    let text = std::fs::read_to_string(file)
        .map_err(|e| Failure::Runtime(format!("cannot read {}: {e}", file.display())))?;
    let agent: Vec<String> = text
        .lines()
        .filter_map(|l| zhijian::event::decode_str(l).ok())
        .filter_map(|i| match i.kind {
            zhijian::event::InputKind::Segment(s) if s.speaker == Speaker::Agent => {
                Some(s.text.into_owned())
            }
            _ => None,
        })
        .collect();
    let mut scratch = Scratch::default();
    let mut hits = 0usize;
    // One untimed pass warms the caches and the lazily built tables.
    for t in &agent {
        scanner.scan(t, Speaker::Agent, &mut scratch);
    }
    let started = std::time::Instant::now();
    for _ in 0..passes {
        for t in &agent {
            scanner.scan(t, Speaker::Agent, &mut scratch);
            hits += scratch
                .hits
                .iter()
                .filter(|h| {
                    let r = scanner.rule(scanner.group_rule(h.group));
                    scanner.lexicon().categories[r.category].id == "forbidden"
                })
                .count();
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let n = agent.len() * passes;
    println!(
        "{{\"segments\": {n}, \"seconds\": {secs:.6}, \"segments_per_second\": {:.0}, \"forbidden_hits_per_pass\": {}}}",
        n as f64 / secs,
        hits / passes.max(1)
    );
    Ok(())
}
