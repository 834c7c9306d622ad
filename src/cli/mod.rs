//! The command line: flags are parsed by clap into raw structs, then each
//! command loads what it needs and runs. Exit codes: 0 success, 1 runtime
//! failure (I/O), 2 bad usage, configuration or lexicon.

use crate::config::{Config, Overrides, RawConfig};
use crate::engine::{Engine, EngineConfig};
use crate::event::Speaker;
use crate::matcher::{Scanner, Scanners, Scratch};
use crate::normalize::char_offset;
use clap::{Parser, Subcommand, ValueEnum};
use std::io::{self, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

mod diff;
mod false_alarms;
mod healthcheck;
mod label;
mod lexicon;
mod lexicon_test;
mod publish;
pub(crate) mod run;
mod scan;
mod tail;
use self::scan::*;
use diff::*;
use false_alarms::*;
use healthcheck::*;
use label::*;
use lexicon::*;
use lexicon_test::*;
use publish::*;
pub use run::init_logging;
use run::*;
use tail::*;

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
        #[arg(long, default_value_t = crate::scan::DEFAULT_MAX_LINE_BYTES, value_name = "BYTES")]
        max_line_bytes: usize,
        /// Events carry personal numbers (mobile, identity card, bank card)
        /// as said; by default every digit of one but the last four is `*`.
        #[arg(long)]
        raw_events: bool,
        /// Exit 1 when a violation of this severity or above was found
        /// (low, medium, high, critical): for CI jobs that judge a sample.
        #[arg(long, value_enum, value_name = "SEVERITY")]
        fail_on: Option<SeverityArg>,
        /// json (default: one event a line, the contract) or text (one
        /// readable line an event, as `zhijian tail` prints them).
        #[arg(long, value_enum, default_value = "json")]
        format: ScanFormat,
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
    /// Ask a running daemon (its `[metrics] addr`, from the config file and
    /// ZHIJIAN_METRICS_ADDR) whether it is alive, or with --ready whether it
    /// is judging: exit 0 on 200, 1 otherwise. For container health checks.
    Healthcheck {
        #[command(flatten)]
        common: Common,
        /// Ask /readyz (judging every assigned partition) instead of
        /// /healthz (alive).
        #[arg(long)]
        ready: bool,
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

/// Flags shared by the commands that talk to NATS (`zhijian-tools` too).
#[derive(clap::Args)]
pub struct Common {
    /// Config file (TOML); see deploy/zhijian.toml.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// NATS server URL (overrides the config file and ZHIJIAN_NATS_URL).
    #[arg(long)]
    pub nats_url: Option<String>,
}

/// What `zhijian scan` writes.
#[derive(Clone, Copy, ValueEnum)]
enum ScanFormat {
    Json,
    Text,
}

/// A severity on the command line.
#[derive(Clone, Copy, ValueEnum)]
enum SeverityArg {
    Low,
    Medium,
    High,
    Critical,
}

impl SeverityArg {
    fn severity(self) -> crate::event::Severity {
        use crate::event::Severity;
        match self {
            SeverityArg::Low => Severity::Low,
            SeverityArg::Medium => Severity::Medium,
            SeverityArg::High => Severity::High,
            SeverityArg::Critical => Severity::Critical,
        }
    }
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
            raw_events,
            fail_on,
            format,
        } => cmd_scan(
            &lexicons,
            &file,
            max_line_bytes,
            raw_events,
            fail_on.map(SeverityArg::severity),
            matches!(format, ScanFormat::Text),
        ),
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
        Command::Healthcheck { common, ready } => cmd_healthcheck(&common, ready),
        Command::Tail {
            common,
            json,
            tenant,
            agent,
            category,
            severity,
            color,
        } => cmd_tail(&common, [tenant, agent, category, severity], json, color),
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

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Failure {
        Failure::Runtime(e.to_string())
    }
}

/// Loads and compiles a lexicon directory.
pub fn load_scanner(dir: &Path) -> Result<Arc<Scanner>, Failure> {
    Ok(crate::matcher::load_base(dir)?)
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
