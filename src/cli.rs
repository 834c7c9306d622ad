//! The command line: flags are parsed by clap into raw structs, then each
//! command loads what it needs and runs. Exit codes: 0 success, 1 runtime
//! failure (I/O), 2 bad usage, configuration or lexicon.

use crate::config::{Config, Overrides, RawConfig};
use crate::engine::{Engine, EngineConfig};
use crate::event::Speaker;
use crate::matcher::{Scanner, Scanners, Scratch};
use crate::normalize::char_offset;
use crate::scan;
use clap::{Parser, Subcommand, ValueEnum};
use std::io::{self, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Parser)]
#[command(
    name = "zhijian",
    version,
    about = "质检: live compliance scanning of Chinese contact-centre conversations"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Label a sample of conversations in the terminal (digits masked),
    /// in the format `lexicon eval` reads (docs/labelling.md); resumes
    /// where an earlier session stopped.
    Label {
        /// The labels file: appended to, its conversations skipped.
        #[arg(long)]
        out: PathBuf,
        /// Label at most N conversations, in a fixed sample order.
        #[arg(long)]
        sample: Option<usize>,
        /// The transcripts (JSONL).
        input: PathBuf,
    },
    /// Judge a JSONL file of input events offline; output events go to
    /// stdout as JSONL, bad lines to stderr.
    Scan {
        /// Lexicon directory.
        #[arg(long, default_value = "lexicons")]
        lexicons: PathBuf,
        /// Input file, or - for standard input.
        #[arg(default_value = "-")]
        file: String,
        /// Longest input line, in bytes (without the newline). A longer
        /// line is reported as `line_too_long` with its line number, counted
        /// as a bad line and skipped without being held in memory; the scan
        /// goes on. The default (1 MiB) is far above any valid event.
        #[arg(long, default_value_t = scan::DEFAULT_MAX_LINE_BYTES, value_name = "BYTES")]
        max_line_bytes: usize,
    },
    /// What a lexicon change does: judge the same JSONL conversations with
    /// the old and the new lexicon and report, per rule and category, the
    /// violations added and removed (with masked examples), alerts per
    /// 1,000 conversations and the change in scores.
    Diff {
        /// The lexicon in use.
        #[arg(long)]
        old: PathBuf,
        /// The candidate.
        #[arg(long)]
        new: PathBuf,
        /// text (default), json, or html (a self-contained page to send
        /// around).
        #[arg(long, value_enum, default_value = "text")]
        format: DiffFormat,
        /// Instead of a file: the conversations stored in the TRANSCRIPTS
        /// stream over the last N minutes (read with an ordered consumer of
        /// its own; --config / --nats-url say where).
        #[arg(long, value_name = "N", conflicts_with = "input")]
        last_minutes: Option<u64>,
        #[command(flatten)]
        common: Common,
        /// The transcripts (JSONL).
        #[arg(required_unless_present = "last_minutes")]
        input: Option<PathBuf>,
    },
    /// Lexicon tools.
    Lexicon {
        #[command(subcommand)]
        command: LexiconCommand,
    },
    /// Run the daemon: NATS JetStream in, violations and summaries out,
    /// Prometheus metrics on HTTP.
    Run {
        #[command(flatten)]
        common: Common,
        /// Lexicon directory (overrides [engine] lexicons, default
        /// `lexicons` in the working directory, and ZHIJIAN_ENGINE_LEXICONS)
        #[arg(long)]
        lexicons: Option<PathBuf>,
        /// host:port for /metrics, /healthz and /readyz (overrides
        /// [metrics] addr, default 127.0.0.1:9464, and ZHIJIAN_METRICS_ADDR)
        #[arg(long)]
        metrics_addr: Option<String>,
        /// Log format: text or json.
        #[arg(long)]
        log_format: Option<String>,
    },
    /// Replay a JSONL file of input events onto the input subjects.
    Publish {
        #[command(flatten)]
        common: Common,
        /// Lines per second (0: as fast as acks allow).
        #[arg(long, default_value_t = 0.0)]
        rate: f64,
        /// JSONL file, or - for standard input.
        file: PathBuf,
    },
    #[cfg(feature = "bench-tools")]
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
    #[cfg(feature = "bench-tools")]
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
    #[cfg(feature = "bench-tools")]
    /// The pass-through consumer the bench compares against (consume,
    /// publish one small event, ack; no scanning).
    #[command(hide = true)]
    Passthrough {
        #[command(flatten)]
        common: Common,
    },
    #[cfg(feature = "bench-tools")]
    /// Write generated conversations as input JSONL to stdout (for
    /// benchmarks and peer comparisons).
    #[command(hide = true)]
    Synth {
        #[arg(long, default_value_t = 2000)]
        conversations: usize,
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
    #[cfg(feature = "bench-tools")]
    /// Time `Scanner::scan` over the agent segments of a JSONL file (one
    /// thread, no JSON in the timed loop): the engine side of the peer
    /// comparison in benches/peers.py.
    #[command(hide = true)]
    ScanBench {
        #[arg(long, default_value = "lexicons")]
        lexicons: PathBuf,
        /// Timed passes over the file.
        #[arg(long, default_value_t = 20)]
        passes: usize,
        file: PathBuf,
    },
    /// Export the alerts supervisors marked as false alarms on the console
    /// (from the NATS key-value bucket `<state_bucket>_desk`), with their
    /// rule, spans, (masked) text and lexicon version, oldest mark first.
    FalseAlarms {
        #[command(flatten)]
        common: Common,
        /// Output format: csv (a header line, then one alert a line) or
        /// jsonl (one alert state a line).
        #[arg(long, value_enum, default_value = "csv")]
        format: ExportFormat,
    },
    /// Print violations and summaries from NATS as they are published.
    Tail {
        #[command(flatten)]
        common: Common,
        /// Print raw JSON events (one per line, for scripts).
        #[arg(long)]
        json: bool,
        /// Only these tenants (comma-separated).
        #[arg(long)]
        tenant: Option<String>,
        /// Only these agents (comma-separated).
        #[arg(long)]
        agent: Option<String>,
        /// Only these category ids, as the lexicon defines them (e.g.
        /// forbidden, escalation; comma-separated; hides summaries).
        #[arg(long)]
        category: Option<String>,
        /// Only these severities: low, medium, high, critical
        /// (comma-separated; hides summaries).
        #[arg(long)]
        severity: Option<String>,
        /// Colour by severity: auto (a terminal, and NO_COLOR unset),
        /// always, never.
        #[arg(long, value_enum, default_value = "auto")]
        color: ColorChoice,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ExportFormat {
    Csv,
    Jsonl,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ColorChoice {
    Auto,
    Always,
    Never,
}

/// Flags shared by the commands that talk to NATS.
#[derive(clap::Args)]
struct Common {
    /// Config file (TOML); see deploy/zhijian.toml.
    #[arg(long)]
    config: Option<PathBuf>,
    /// NATS server URL (overrides the config file and ZHIJIAN_NATS_URL).
    #[arg(long)]
    nats_url: Option<String>,
}

#[derive(Subcommand)]
enum LexiconCommand {
    /// Validate a lexicon directory and print counts per category.
    Check {
        #[arg(default_value = "lexicons")]
        dir: PathBuf,
    },
    /// Show how utterances are normalised, segmented and judged: one
    /// utterance, or a short conversation (each TEXT may start with
    /// `agent:`, `customer:` or `system:`), judged by every rule kind and
    /// closed at the end, with the reason for each decision.
    Test {
        #[arg(long, default_value = "lexicons")]
        lexicons: PathBuf,
        /// The speaker of utterances without a `speaker:` prefix.
        #[arg(long, value_enum, default_value = "agent")]
        speaker: SpeakerArg,
        /// Judge with this tenant's lexicon (its overlay under
        /// tenants/<tenant>/; an unknown tenant uses the base).
        #[arg(long)]
        tenant: Option<String>,
        /// The conversation's channel (rules may apply to one channel only).
        #[arg(long, value_enum)]
        channel: Option<ChannelArg>,
        /// Seconds between utterances (for timing and response rules).
        #[arg(long, default_value_t = 5.0)]
        gap: f64,
        /// Run the lexicon's test suite in DIR (`*.toml` cases, see
        /// lexicons/tests/) instead: print each failure with a diff, exit 1
        /// if any fails.
        #[arg(long, value_name = "DIR")]
        suite: Option<PathBuf>,
        /// The utterances, in order.
        #[arg(required_unless_present = "suite")]
        text: Vec<String>,
    },
    /// What the rules find and keep quiet: the most frequent kept and
    /// dropped hits per rule over INPUT (JSONL), with examples; with
    /// --labels, the phrases whose hits are mostly false alarms and the
    /// exceptions to consider.
    Audit {
        #[arg(long, default_value = "lexicons")]
        lexicons: PathBuf,
        /// Reviewer labels (as for `lexicon eval`).
        #[arg(long)]
        labels: Option<PathBuf>,
        /// Lines per table.
        #[arg(long, default_value_t = 20)]
        top: usize,
        /// The transcripts (JSONL).
        input: PathBuf,
    },
    /// A candidate tenant overlay from reviewer labels and the desk's
    /// false-alarm marks: exceptions for wording that is mostly false
    /// alarms, phrase variants and gap patterns for labelled misses, each
    /// with what it fixes. Learns from one half of the labelled
    /// conversations (a fixed hash of the id) and reports precision,
    /// recall and agreement before and after on the other half.
    Suggest {
        #[arg(long, default_value = "lexicons")]
        lexicons: PathBuf,
        /// Reviewer labels (the format of `lexicon eval`, docs/labelling.md).
        #[arg(long)]
        labels: Option<PathBuf>,
        /// The desk's false alarms (`zhijian false-alarms --format csv`).
        #[arg(long)]
        false_alarms: Option<PathBuf>,
        /// Learn from half `a` or `b` (evaluated on the other), or `all`.
        #[arg(long, value_enum, default_value = "a")]
        learn: LearnArg,
        /// How many conversations must show a wording before it is
        /// suggested (1 learns from single cases: expect it to overfit).
        #[arg(long, default_value_t = 2)]
        min_support: usize,
        /// Write the overlay here (e.g. lexicons/tenants/<tenant>/suggested.toml);
        /// without it, it is printed.
        #[arg(long)]
        out: Option<PathBuf>,
        /// The transcripts (JSONL).
        input: PathBuf,
    },
    /// Precision and recall against reviewer labels: judge INPUT (JSONL,
    /// as `scan` does) and compare with LABELS (format: docs/labelling.md); print the
    /// tables and every miss and false alarm with its text.
    Eval {
        #[arg(long, default_value = "lexicons")]
        lexicons: PathBuf,
        /// The labels (JSONL of ids and categories).
        #[arg(long)]
        labels: PathBuf,
        /// Print the tables only, not the list of disagreements.
        #[arg(long)]
        summary_only: bool,
        /// The transcripts (JSONL).
        input: PathBuf,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LearnArg {
    A,
    B,
    All,
}

#[derive(Clone, Copy, ValueEnum)]
enum SpeakerArg {
    Agent,
    Customer,
    System,
}

#[derive(Clone, Copy, ValueEnum)]
enum DiffFormat {
    Text,
    Json,
    Html,
}

#[derive(Clone, Copy, ValueEnum)]
enum ChannelArg {
    Call,
    Chat,
    Social,
    Email,
}

impl From<ChannelArg> for crate::event::Channel {
    fn from(c: ChannelArg) -> crate::event::Channel {
        match c {
            ChannelArg::Call => crate::event::Channel::Call,
            ChannelArg::Chat => crate::event::Channel::Chat,
            ChannelArg::Social => crate::event::Channel::Social,
            ChannelArg::Email => crate::event::Channel::Email,
        }
    }
}

impl From<SpeakerArg> for Speaker {
    fn from(s: SpeakerArg) -> Speaker {
        match s {
            SpeakerArg::Agent => Speaker::Agent,
            SpeakerArg::Customer => Speaker::Customer,
            SpeakerArg::System => Speaker::System,
        }
    }
}

/// Entry point of the `zhijian` binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Label { out, sample, input } => cmd_label(&out, sample, &input),
        Command::Scan {
            lexicons,
            file,
            max_line_bytes,
        } => cmd_scan(&lexicons, &file, max_line_bytes),
        Command::Diff {
            old,
            new,
            format,
            last_minutes,
            common,
            input,
        } => cmd_diff(&old, &new, format, input.as_deref(), last_minutes, &common),
        Command::Lexicon {
            command: LexiconCommand::Check { dir },
        } => cmd_check(&dir),
        Command::Lexicon {
            command:
                LexiconCommand::Test {
                    lexicons,
                    suite: Some(dir),
                    ..
                },
        } => cmd_suite(&lexicons, &dir),
        Command::Lexicon {
            command:
                LexiconCommand::Test {
                    lexicons,
                    speaker,
                    tenant,
                    channel,
                    gap,
                    text,
                    suite: None,
                },
        } => cmd_test(
            &lexicons,
            TestOptions {
                speaker: speaker.into(),
                tenant,
                channel: channel.map(Into::into),
                gap_ms: (gap.max(0.0) * 1000.0) as u64,
            },
            &text,
        ),
        Command::Lexicon {
            command:
                LexiconCommand::Eval {
                    lexicons,
                    labels,
                    summary_only,
                    input,
                },
        } => cmd_eval(&lexicons, &labels, &input, !summary_only),
        Command::Lexicon {
            command:
                LexiconCommand::Suggest {
                    lexicons,
                    labels,
                    false_alarms,
                    learn,
                    min_support,
                    out,
                    input,
                },
        } => cmd_suggest(
            &lexicons,
            labels.as_deref(),
            false_alarms.as_deref(),
            learn,
            min_support,
            out.as_deref(),
            &input,
        ),
        Command::Lexicon {
            command:
                LexiconCommand::Audit {
                    lexicons,
                    labels,
                    top,
                    input,
                },
        } => cmd_audit(&lexicons, labels.as_deref(), top, &input),
        Command::Run {
            common,
            lexicons,
            metrics_addr,
            log_format,
        } => cmd_run(
            &common,
            Overrides {
                nats_url: common.nats_url.clone(),
                lexicons,
                metrics_addr,
                log_format,
            },
        ),
        Command::Publish { common, rate, file } => cmd_publish(&common, rate, &file),
        Command::FalseAlarms { common, format } => cmd_false_alarms(&common, format),
        Command::Tail {
            common,
            json,
            tenant,
            agent,
            category,
            severity,
            color,
        } => cmd_tail(&common, [tenant, agent, category, severity], json, color),
        #[cfg(feature = "bench-tools")]
        Command::Passthrough { common } => cmd_passthrough(&common),
        #[cfg(feature = "bench-tools")]
        Command::Synth {
            conversations,
            seed,
        } => {
            let convs = crate::synth::conversations(
                seed,
                conversations,
                "synth-",
                &crate::synth::Mix::default(),
            );
            let mut out = io::stdout().lock();
            crate::synth::jsonl(&convs, "bench", "call")
                .iter()
                .try_for_each(|l| writeln!(out, "{l}"))
                .map_err(Failure::from)
        }
        #[cfg(feature = "bench-tools")]
        Command::ScanBench {
            lexicons,
            passes,
            file,
        } => cmd_scan_bench(&lexicons, passes, &file),
        #[cfg(feature = "bench-tools")]
        Command::Soak {
            nats_url,
            lexicons,
            seconds,
            rate,
            open,
            sample_every_s,
        } => cmd_soak(crate::loadgen::SoakOptions {
            nats_url,
            lexicons: std::fs::canonicalize(&lexicons).unwrap_or(lexicons),
            seconds,
            rate,
            open,
            sample_every: std::time::Duration::from_secs(sample_every_s.max(1)),
        }),
        #[cfg(feature = "bench-tools")]
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
        } => cmd_bench(crate::loadgen::BenchOptions {
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
            eprintln!("zhijian: {msg}");
            ExitCode::from(2)
        }
        Err(Failure::Runtime(msg)) => {
            eprintln!("zhijian: {msg}");
            ExitCode::from(1)
        }
    }
}

/// Why a command failed, which decides the exit code.
pub enum Failure {
    /// Bad configuration or lexicon: exit 2.
    Config(String),
    /// Anything else: exit 1.
    Runtime(String),
}

impl From<crate::matcher::LoadError> for Failure {
    fn from(e: crate::matcher::LoadError) -> Failure {
        Failure::Config(e.to_string())
    }
}

impl From<crate::config::ParseError> for Failure {
    fn from(e: crate::config::ParseError) -> Failure {
        Failure::Config(e.to_string())
    }
}

impl From<crate::config::InvalidConfig> for Failure {
    fn from(e: crate::config::InvalidConfig) -> Failure {
        Failure::Config(e.to_string())
    }
}

impl From<crate::client::ClientError> for Failure {
    fn from(e: crate::client::ClientError) -> Failure {
        Failure::Runtime(e.to_string())
    }
}

impl From<crate::nats_conn::ConnectError> for Failure {
    fn from(e: crate::nats_conn::ConnectError) -> Failure {
        Failure::Runtime(e.to_string())
    }
}

impl From<crate::console::desk::ReadError> for Failure {
    fn from(e: crate::console::desk::ReadError) -> Failure {
        Failure::Runtime(e.to_string())
    }
}

#[cfg(feature = "bench-tools")]
impl From<crate::loadgen::BenchError> for Failure {
    fn from(e: crate::loadgen::BenchError) -> Failure {
        Failure::Runtime(e.to_string())
    }
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Failure {
        Failure::Runtime(e.to_string())
    }
}

/// Loads and compiles a lexicon directory.
pub fn load_scanner(dir: &Path) -> Result<Arc<Scanner>, Failure> {
    Ok(crate::matcher::load_base(dir)?)
}

fn cmd_scan(lexicons: &Path, file: &str, max_line_bytes: usize) -> Result<(), Failure> {
    let scanners = Arc::new(Scanners::load(lexicons)?);
    let mut engine = Engine::with_scanners(scanners, EngineConfig::default());
    let stdout = io::stdout();
    let mut out = io::BufWriter::with_capacity(1 << 16, stdout.lock());
    let stderr = io::stderr();
    let mut err = stderr.lock();
    let stats = if file == "-" {
        scan::scan_limited(
            &mut engine,
            io::stdin().lock(),
            &mut out,
            &mut err,
            max_line_bytes,
        )?
    } else {
        if Path::new(file).is_dir() {
            return Err(Failure::Runtime(format!(
                "{file} is a directory: give a JSONL file, or - for standard input"
            )));
        }
        let f = std::fs::File::open(file)
            .map_err(|e| Failure::Runtime(format!("cannot open {file}: {e}")))?;
        scan::scan_limited(
            &mut engine,
            BufReader::with_capacity(1 << 16, f),
            &mut out,
            &mut err,
            max_line_bytes,
        )?
    };
    writeln!(
        err,
        "zhijian scan: {} lines, {} bad, {} segments judged, {} violations, {} summaries",
        stats.lines, stats.bad_lines, stats.judged, stats.violations, stats.summaries
    )?;
    Ok(())
}

fn cmd_check(dir: &Path) -> Result<(), Failure> {
    let scanners = Scanners::load(dir)?;
    let scanner = scanners.base();
    let lex = scanner.lexicon();
    // Not println!: a closed pipe (`| head`) is an error, not a panic.
    let mut out = io::stdout().lock();
    writeln!(out, "lexicon {:?} version {}", lex.name, lex.version)?;
    for kind in crate::rules::KINDS {
        let (rules, phrases) = lex.count(kind);
        if rules > 0 {
            writeln!(
                out,
                "  {kind:<10} {rules:>3} rules {phrases:>5} phrases/patterns"
            )?;
        }
    }
    for c in &lex.categories {
        let rules: Vec<&str> = lex
            .rules
            .iter()
            .filter(|r| lex.categories[r.category].id == c.id)
            .map(|r| r.id.as_str())
            .collect();
        writeln!(
            out,
            "  category {} ({}): {}",
            c.id,
            c.name,
            rules.join(", ")
        )?;
    }
    for s in &lex.sections {
        writeln!(
            out,
            "  section {} ({}) max deduct {}",
            s.id, s.name, s.max_deduct
        )?;
    }
    for r in &lex.rules {
        let score = match r.section {
            Some(s) if r.deduct > 0.0 => format!("-{} in {}", r.deduct, lex.sections[s].id),
            _ => "alert only".into(),
        };
        writeln!(
            out,
            "  rule {:<28} {:<10} {:<8} {score}: {}",
            r.id,
            r.kind(),
            r.severity.as_str(),
            r.spec.describe()
        )?;
    }
    writeln!(
        out,
        "  {} distinct phrases; {}",
        scanner.pattern_count(),
        scanner.automaton_summary()
    )?;
    for (tenant, s) in scanners.tenants() {
        let t = s.lexicon();
        writeln!(
            out,
            "tenant {tenant}: version {}, {} rules ({:+} against the base)",
            t.version,
            t.rules.len(),
            t.rules.len() as i64 - lex.rules.len() as i64
        )?;
    }
    Ok(())
}

fn cmd_eval(lexicons: &Path, labels: &Path, input: &Path, misses: bool) -> Result<(), Failure> {
    let read = |p: &Path| {
        std::fs::read_to_string(p)
            .map_err(|e| Failure::Runtime(format!("cannot read {}: {e}", p.display())))
    };
    let labels = crate::eval::Labels::parse(&read(labels)?).map_err(Failure::Config)?;
    let input = read(input)?;
    let scanners = Arc::new(Scanners::load(lexicons)?);
    let mut engine = Engine::with_scanners(Arc::clone(&scanners), EngineConfig::default());
    let report = crate::eval::evaluate(&mut engine, &input, &labels)
        .map_err(|e| Failure::Runtime(e.to_string()))?;
    if let Some(w) = report.warning(&labels) {
        eprintln!("zhijian: {w}");
    }
    let mut out = io::stdout().lock();
    writeln!(
        out,
        "lexicon {}; {} labelled segments, {} labelled conversations\n",
        scanners.base().version(),
        labels.segment_count(),
        labels.conversation_count()
    )?;
    write!(out, "{}", report.render(misses))?;
    Ok(())
}

fn cmd_label(out: &Path, sample: Option<usize>, input: &Path) -> Result<(), Failure> {
    let text = std::fs::read_to_string(input)
        .map_err(|e| Failure::Runtime(format!("cannot read {}: {e}", input.display())))?;
    let existing = match std::fs::read_to_string(out) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
        Err(e) => {
            return Err(Failure::Runtime(format!(
                "cannot read {}: {e}",
                out.display()
            )));
        }
    };
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(out)?;
    let summary = crate::label::run(
        &text,
        &existing,
        sample,
        &mut io::stdin().lock(),
        &mut io::stdout().lock(),
        &mut file,
    )
    .map_err(|e| Failure::Runtime(e.to_string()))?;
    eprintln!(
        "zhijian: {} conversation(s) labelled, {} skipped, {} labelled before; labels in {}",
        summary.labelled,
        summary.skipped,
        summary.already,
        out.display()
    );
    Ok(())
}

fn cmd_suggest(
    lexicons: &Path,
    labels: Option<&Path>,
    false_alarms: Option<&Path>,
    learn: LearnArg,
    min_support: usize,
    out_path: Option<&Path>,
    input: &Path,
) -> Result<(), Failure> {
    use crate::suggest::{Half, Suggestion};
    let read = |p: &Path| {
        std::fs::read_to_string(p)
            .map_err(|e| Failure::Runtime(format!("cannot read {}: {e}", p.display())))
    };
    let all = match labels {
        Some(p) => crate::eval::Labels::parse(&read(p)?).map_err(Failure::Config)?,
        None => crate::eval::Labels::default(),
    };
    let mut marks = match false_alarms {
        Some(p) => crate::suggest::parse_false_alarms_csv(&read(p)?)
            .map_err(|e| Failure::Config(e.to_string()))?,
        None => Vec::new(),
    };
    let half = match learn {
        LearnArg::A => Some(Half::A),
        LearnArg::B => Some(Half::B),
        LearnArg::All => None,
    };
    let mut train = all.clone();
    if let Some(h) = half {
        train.retain(|c| Half::of(c) == h);
        marks.retain(|m| Half::of(&m.conversation_id) == h);
    }
    let input = read(input)?;
    let scanners = Arc::new(Scanners::load(lexicons)?);
    let lexicon = scanners.base().lexicon();
    let mut engine = Engine::with_scanners(Arc::clone(&scanners), EngineConfig::default());
    let (events, _, _) = scan::judge_text(&mut engine, &input);
    let mut suggestions =
        crate::suggest::suggest(lexicon, &events, &input, &train, &marks, min_support);
    let note = match half {
        Some(Half::A) => "learnt from half a of the labelled conversations",
        Some(Half::B) => "learnt from half b of the labelled conversations",
        None => "learnt from every labelled conversation",
    };
    // The overlay must load: a suggestion the lexicon refuses (a piece
    // that repeats a phrase after normalisation…) is dropped, and said so.
    let work = std::env::temp_dir().join(format!("zhijian-suggest-{}", std::process::id()));
    let candidate = (|| -> Result<Option<Arc<Scanners>>, Failure> {
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(work.join("tenants/default"))?;
        for e in std::fs::read_dir(lexicons)? {
            let p = e?.path();
            if p.extension().is_some_and(|x| x == "toml")
                && let Some(name) = p.file_name()
            {
                std::fs::copy(&p, work.join(name))?;
            }
        }
        for _ in 0..8 {
            let toml = crate::suggest::overlay_toml(lexicon, &suggestions, note);
            std::fs::write(work.join("tenants/default/suggested.toml"), &toml)?;
            match Scanners::load(&work) {
                Ok(s) => return Ok(Some(Arc::new(s))),
                Err(e) => {
                    let why = e.to_string();
                    let before = suggestions.len();
                    suggestions.retain(|x: &Suggestion| {
                        let refused = why.contains(&format!("{:?}", x.text));
                        if refused {
                            eprintln!(
                                "zhijian: dropped {:?} for {}: refused by the lexicon",
                                x.text, x.rule
                            );
                        }
                        !refused
                    });
                    if suggestions.len() == before {
                        eprintln!("zhijian: the candidate overlay does not load: {why}");
                        return Ok(None);
                    }
                }
            }
        }
        Ok(None)
    })();
    let mut out = io::stdout().lock();
    writeln!(
        out,
        "lexicon {}; {note}: {} labelled segments, {} false-alarm marks\n",
        scanners.base().version(),
        train.segment_count(),
        marks.len()
    )?;
    for x in &suggestions {
        let what = match x.change {
            crate::suggest::Change::Exception => {
                format!("exception  removes {} false alarm(s)", x.fixes)
            }
            crate::suggest::Change::Phrase => {
                format!("phrase     finds {} labelled miss(es)", x.fixes)
            }
        };
        writeln!(out, "  {:<26} {what:<36} {}", x.rule, x.text)?;
    }
    let toml = crate::suggest::overlay_toml(lexicon, &suggestions, note);
    match out_path {
        Some(p) => {
            std::fs::write(p, &toml)?;
            writeln!(out, "\noverlay written to {}", p.display())?;
        }
        None => writeln!(out, "\n{toml}")?,
    }
    if let (Some(h), Ok(Some(after))) = (half, &candidate) {
        let mut test = all.clone();
        test.retain(|c| Half::of(c) == h.other());
        let run = |s: &Arc<Scanners>| {
            let mut engine = Engine::with_scanners(Arc::clone(s), EngineConfig::default());
            crate::eval::evaluate(&mut engine, &input, &test)
        };
        let before = run(&scanners)?;
        let after = run(after)?;
        let other = if h == Half::A { "b" } else { "a" };
        writeln!(
            out,
            "\nOn half {other} (not learnt from: {} labelled segments, {} conversations):\n",
            test.segment_count(),
            test.conversation_count()
        )?;
        write!(out, "{}", crate::eval::before_after(&before, &after))?;
    }
    let _ = std::fs::remove_dir_all(&work);
    candidate.map(|_| ())
}

fn cmd_audit(
    lexicons: &Path,
    labels: Option<&Path>,
    top: usize,
    input: &Path,
) -> Result<(), Failure> {
    let read = |p: &Path| {
        std::fs::read_to_string(p)
            .map_err(|e| Failure::Runtime(format!("cannot read {}: {e}", p.display())))
    };
    let labels = match labels {
        Some(p) => Some(crate::eval::Labels::parse(&read(p)?).map_err(Failure::Config)?),
        None => None,
    };
    let scanner = load_scanner(lexicons)?;
    let report = crate::audit::audit(&scanner, &read(input)?, labels.as_ref(), top);
    write!(io::stdout().lock(), "{report}")?;
    Ok(())
}

fn cmd_diff(
    old: &Path,
    new: &Path,
    format: DiffFormat,
    input: Option<&Path>,
    last_minutes: Option<u64>,
    common: &Common,
) -> Result<(), Failure> {
    let load = |d: &Path| Scanners::load(d).map(Arc::new).map_err(Failure::from);
    let (old, new) = (load(old)?, load(new)?);
    let text = match (input, last_minutes) {
        (Some(input), _) => std::fs::read_to_string(input)
            .map_err(|e| Failure::Runtime(format!("cannot read {}: {e}", input.display())))?,
        (None, Some(minutes)) => {
            let flags = Overrides {
                nats_url: common.nats_url.clone(),
                ..Overrides::default()
            };
            let config = load_config(common, &flags)?;
            let since = crate::daemon::now_ms().saturating_sub(minutes.saturating_mul(60_000));
            runtime()?
                .block_on(crate::client::read_transcripts(&config, since))?
                .join("\n")
        }
        (None, None) => return Err(Failure::Config("give INPUT or --last-minutes".into())),
    };
    let report = crate::diff::compare(old, new, &text);
    let mut out = io::stdout().lock();
    match format {
        DiffFormat::Text => write!(out, "{}", report.text())?,
        DiffFormat::Html => write!(out, "{}", report.html())?,
        DiffFormat::Json => {
            serde_json::to_writer_pretty(&mut out, &report)
                .map_err(|e| Failure::Runtime(e.to_string()))?;
            writeln!(out)?;
        }
    }
    Ok(())
}

fn cmd_suite(lexicons: &Path, dir: &Path) -> Result<(), Failure> {
    let scanners = Arc::new(Scanners::load(lexicons)?);
    let outcome = crate::suite::run(dir, &scanners).map_err(Failure::Config)?;
    let mut out = io::stdout().lock();
    write!(out, "{}", outcome.report)?;
    writeln!(
        out,
        "lexicon {}: {} cases, {} failed",
        scanners.base().version(),
        outcome.cases,
        outcome.failed
    )?;
    if outcome.failed > 0 {
        return Err(Failure::Runtime(format!(
            "{} of {} lexicon test cases failed",
            outcome.failed, outcome.cases
        )));
    }
    Ok(())
}

struct TestOptions {
    speaker: Speaker,
    tenant: Option<String>,
    channel: Option<crate::event::Channel>,
    gap_ms: u64,
}

/// Splits `agent:您好` into its speaker and text.
fn speaker_prefix(text: &str, default: Speaker) -> (Speaker, &str) {
    for s in Speaker::ALL {
        if let Some(rest) = text
            .strip_prefix(s.as_str())
            .and_then(|r| r.strip_prefix(':').or_else(|| r.strip_prefix('：')))
        {
            return (s, rest.trim_start());
        }
    }
    (default, text)
}

fn cmd_test(lexicons: &Path, opts: TestOptions, texts: &[String]) -> Result<(), Failure> {
    use crate::event::{InputKind, Segment};
    use crate::matcher::Suppression;
    let scanners = Arc::new(Scanners::load(lexicons)?);
    let tenant = opts.tenant.as_deref().unwrap_or("default");
    let scanner = Arc::clone(scanners.for_tenant(tenant));
    let mut engine = Engine::with_scanners(Arc::clone(&scanners), EngineConfig::default());
    let mut scratch = Scratch::default();
    let mut out = io::stdout().lock();
    writeln!(out, "lexicon:    {}", scanner.version())?;
    if opts.tenant.is_some() && !scanners.has_tenant(tenant) {
        writeln!(
            out,
            "tenant {tenant} has no overlay: the base lexicon judges it"
        )?;
    }
    let mut events = Vec::new();
    let mut ts = 0u64;
    let mut explain = Vec::new();
    for (seq, raw) in texts.iter().enumerate() {
        let (speaker, text) = speaker_prefix(raw, opts.speaker);
        let suppressed = scanner.scan_explained(text, speaker, &mut scratch);
        let norm = &scratch.norm;
        writeln!(
            out,
            "\n[{seq}] {} at {} s: {text}",
            speaker.as_str(),
            ts / 1000
        )?;
        writeln!(out, "  normalised: {}", norm.text)?;
        writeln!(out, "  tokens:     {}", scanner.tokens(norm).join(" / "))?;
        if !scanner.judges(speaker) {
            writeln!(out, "  no rule reads speaker {}", speaker.as_str())?;
        }
        let span = |(s, e): (usize, usize)| {
            let start = char_offset(text, s);
            (start, start + char_offset(&text[s..], e - s))
        };
        for h in &scratch.hits {
            let r = scanner.rule(scanner.group_rule(h.group));
            let orig = norm.original_range(text, h.norm.0, h.norm.1);
            let (s, e) = span(orig);
            let channel = match (r.applies_on(opts.channel), opts.channel) {
                (false, Some(c)) => format!(" (the rule does not apply on {})", c.as_str()),
                _ => String::new(),
            };
            writeln!(
                out,
                "  FOUND {:<28} {:<10} chars {s}..{e} {:?}{channel}",
                r.id,
                r.kind(),
                &text[orig.0..orig.1]
            )?;
        }
        for x in &suppressed {
            let r = scanner.rule(scanner.group_rule(x.group));
            let (s, e) = span(x.orig);
            let why = match x.why {
                Suppression::Exception { norm: (a, b) } => {
                    format!("inside exception {:?}", &norm.text[a..b])
                }
                Suppression::WordBoundary => "inside a longer word (jieba)".to_string(),
                Suppression::Position => {
                    "not at the start of a clause (sentence-final particle or mid-clause)"
                        .to_string()
                }
                Suppression::Overlap => "covered by another hit of the same rule".to_string(),
            };
            writeln!(
                out,
                "  DROP  {:<28} {:<10} chars {s}..{e} {:?}: {why}",
                r.id,
                r.kind(),
                &text[x.orig.0..x.orig.1]
            )?;
        }
        let input = test_input(
            tenant,
            opts.channel,
            ts,
            InputKind::Segment(Segment {
                seq: seq as u64,
                speaker,
                text: text.into(),
                is_final: true,
            }),
        );
        explain.clear();
        engine.handle_explained(&input, ts, &mut events, Some(&mut explain));
        for line in &explain {
            writeln!(out, "  RULE  {line}")?;
        }
        print_events(&mut out, &mut events)?;
        ts += opts.gap_ms;
    }
    let end = test_input(tenant, opts.channel, ts, InputKind::End);
    explain.clear();
    writeln!(out, "\n[end] the conversation closes")?;
    engine.handle_explained(&end, ts, &mut events, Some(&mut explain));
    for line in &explain {
        writeln!(out, "  RULE  {line}")?;
    }
    print_events(&mut out, &mut events)?;
    Ok(())
}

/// An event of the conversation `lexicon test` plays.
fn test_input<'a>(
    tenant: &'a str,
    channel: Option<crate::event::Channel>,
    ts: u64,
    kind: crate::event::InputKind<'a>,
) -> crate::event::Input<'a> {
    crate::event::Input {
        conversation_id: "test".into(),
        tenant: tenant.into(),
        channel,
        agent_id: None,
        ts_ms: Some(ts),
        continued: false,
        kind,
    }
}

/// The events of `lexicon test`, one line each (and drains them).
fn print_events(out: &mut impl Write, events: &mut Vec<crate::event::Event>) -> io::Result<()> {
    use crate::event::Event;
    for e in events.drain(..) {
        match e {
            Event::Violation(v) => {
                let what = match (&v.matched, &v.note) {
                    (Some(m), _) => format!("{m:?} x{}", v.count),
                    (None, Some(n)) => n.clone(),
                    (None, None) => String::new(),
                };
                let also: Vec<String> = v.also.iter().map(|a| a.rule_id.clone()).collect();
                writeln!(
                    out,
                    "  VIOLATION {} {} ({}) {} deduct {} at seq {}: {what}{}",
                    v.rule_id,
                    v.category,
                    v.category_name,
                    v.severity.as_str(),
                    v.deduct,
                    v.seq,
                    if also.is_empty() {
                        String::new()
                    } else {
                        format!(" (also matched: {})", also.join(", "))
                    }
                )?;
            }
            Event::Summary(s) => {
                let counts: Vec<String> = s
                    .counts
                    .iter()
                    .filter(|(_, n)| *n > 0)
                    .map(|(c, n)| format!("{c}={n}"))
                    .collect();
                writeln!(
                    out,
                    "  SUMMARY score {} greeted {:?} closed {:?} {}",
                    s.score,
                    s.greeted,
                    s.closed,
                    counts.join(" ")
                )?;
            }
        }
    }
    Ok(())
}

/// File, then environment, then flags.
fn load_config(common: &Common, flags: &Overrides) -> Result<Config, Failure> {
    let raw = RawConfig::load_with_env(common.config.as_deref(), std::env::vars())?;
    Ok(raw.validate(flags)?)
}

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Runtime(format!("cannot start the async runtime: {e}")))
}

fn init_logging(config: &Config) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_new(&config.log_level).unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(io::stderr().is_terminal())
        .with_writer(io::stderr);
    if config.log_json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn terminate_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = int.recv() => tracing::info!("SIGINT received"),
            }
        }
        _ => {
            tracing::warn!("cannot listen for SIGTERM/SIGINT; only Ctrl-C stops the daemon");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn cmd_run(common: &Common, flags: Overrides) -> Result<(), Failure> {
    let config = load_config(common, &flags)?;
    init_logging(&config);
    let rt = runtime()?;
    let result = rt.block_on(async {
        use crate::daemon::DaemonError;
        crate::daemon::run(config, terminate_signal())
            .await
            .map_err(|e| match e {
                e @ DaemonError::Config(_) => Failure::Config(e.to_string()),
                e @ (DaemonError::Unclean(_)
                | DaemonError::Nats(_)
                | DaemonError::Setup(_)
                | DaemonError::Listen(_)) => Failure::Runtime(e.to_string()),
            })
    });
    // The daemon has finished its shutdown within the grace period; what
    // is left (the NATS client reconnecting to a server that is gone, a
    // blocking lookup) must not hold the exit.
    rt.shutdown_timeout(std::time::Duration::from_millis(200));
    result
}

fn cmd_publish(common: &Common, rate: f64, file: &Path) -> Result<(), Failure> {
    let flags = Overrides {
        nats_url: common.nats_url.clone(),
        ..Overrides::default()
    };
    let config = load_config(common, &flags)?;
    let sent = runtime()?.block_on(crate::client::publish(&config, file, rate))?;
    eprintln!("zhijian publish: {sent} messages published and acknowledged");
    Ok(())
}

fn cmd_false_alarms(common: &Common, format: ExportFormat) -> Result<(), Failure> {
    use crate::console::desk;
    let flags = Overrides {
        nats_url: common.nats_url.clone(),
        ..Overrides::default()
    };
    let config = load_config(common, &flags)?;
    let bucket = format!("{}{}", config.streams.state_bucket, desk::BUCKET_SUFFIX);
    let marked = runtime()?.block_on(async {
        let client = crate::nats_conn::connect(&config.nats).await?;
        let js = async_nats::jetstream::new(client);
        Ok::<_, Failure>(desk::read_false_alarms(&js, &bucket).await?)
    })?;
    let out = match format {
        ExportFormat::Csv => desk::false_alarms_csv(&marked),
        ExportFormat::Jsonl => desk::false_alarms_jsonl(&marked),
    };
    io::stdout()
        .write_all(out.as_bytes())
        .map_err(|e| Failure::Runtime(format!("cannot write the export: {e}")))?;
    eprintln!("zhijian false-alarms: {} from {bucket:?}", marked.len());
    Ok(())
}

fn cmd_tail(
    common: &Common,
    [tenant, agent, category, severity]: [Option<String>; 4],
    json: bool,
    color: ColorChoice,
) -> Result<(), Failure> {
    let filter = &crate::filter::Filter::parse(
        tenant.as_deref(),
        agent.as_deref(),
        category.as_deref(),
        severity.as_deref(),
    )
    .map_err(|e| Failure::Config(e.to_string()))?;
    let colour = match color {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => {
            use std::io::IsTerminal;
            io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
        }
    };
    let style = if json {
        crate::client::Style::Json
    } else if colour {
        crate::client::Style::Colour
    } else {
        crate::client::Style::Plain
    };
    let flags = Overrides {
        nats_url: common.nats_url.clone(),
        ..Overrides::default()
    };
    let config = load_config(common, &flags)?;
    runtime()?.block_on(async {
        tokio::select! {
            r = crate::client::tail(&config, filter, style) => Ok(r?),
            _ = terminate_signal() => Ok(()),
        }
    })
}

#[cfg(feature = "bench-tools")]
fn cmd_passthrough(common: &Common) -> Result<(), Failure> {
    let flags = Overrides {
        nats_url: common.nats_url.clone(),
        ..Overrides::default()
    };
    let config = load_config(common, &flags)?;
    init_logging(&config);
    Ok(runtime()?.block_on(crate::loadgen::passthrough(config))?)
}

#[cfg(feature = "bench-tools")]
fn cmd_soak(opts: crate::loadgen::SoakOptions) -> Result<(), Failure> {
    if opts.rate <= 0.0 {
        return Err(Failure::Config("--rate must be > 0".into()));
    }
    let r = runtime()?.block_on(crate::loadgen::soak(&opts))?;
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

#[cfg(feature = "bench-tools")]
fn cmd_bench(opts: crate::loadgen::BenchOptions) -> Result<(), Failure> {
    let reports = runtime()?.block_on(crate::loadgen::bench(&opts))?;
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
    println!("{}", crate::loadgen::ModeReport::HEADER);
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
    let bad: Vec<&crate::loadgen::ModeReport> = reports
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

#[cfg(feature = "bench-tools")]
fn cmd_scan_bench(lexicons: &Path, passes: usize, file: &Path) -> Result<(), Failure> {
    let scanner = load_scanner(lexicons)?;
    let text = std::fs::read_to_string(file)
        .map_err(|e| Failure::Runtime(format!("cannot read {}: {e}", file.display())))?;
    let agent: Vec<String> = text
        .lines()
        .filter_map(|l| crate::event::decode_str(l).ok())
        .filter_map(|i| match i.kind {
            crate::event::InputKind::Segment(s) if s.speaker == Speaker::Agent => {
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
