//! zhijian (质检, "quality inspection") judges live Chinese contact-centre
//! conversations against a service standard: forbidden phrases (服务忌语),
//! filler words used as interjections (语气词), and missing greetings
//! (开头语) and closings (结束语), with a QA score per conversation.
//!
//! The pure core (events, text folding, lexicon, rules, matcher, engine,
//! scan) is the crate `zhijian-core` (`crates/zhijian-core`), re-exported
//! here under the same module names; this crate is the product around it:
//! the daemon, the console and the command line.
//!
//! # Modules
//!
//! - [`event`], [`normalize`], [`lexicon`], [`rules`], [`book`], [`matcher`],
//!   [`engine`], [`scan`], [`filter`] …: the core, from `zhijian-core`.
//! - `eval`, `suggest`, `label`: measuring a lexicon against reviewer
//!   labels (`lexicon eval`), proposing a tenant overlay from them and from
//!   the desk's false alarms (`lexicon suggest`), and labelling a sample in
//!   the terminal (`zhijian label`); the format is in docs/labelling.md.
//! - [`daemon`]: `zhijian run`: NATS JetStream in and out; a partitioned
//!   input whose partitions are leased among the instances of a cluster
//!   (one instance is a cluster of one); per partition a worker that judges,
//!   stores its events through a bounded window and checkpoints only what
//!   is stored; dead letters (also for messages the client cannot decode),
//!   lexicon reload, watchdog, metrics and health.
//! - [`console`]: the live-alerts web console for QA supervisors: the feed,
//!   the live conversations board (`console::board`) and the desk where
//!   alerts are worked, shared through NATS (`console::desk`).
//! - [`config`]: the daemon's TOML configuration and its overrides.
//! - `subject`: the NATS subjects, built and parsed in one place, and the
//!   checks of the tokens that go into them.
//! - `metrics`: the Prometheus metrics.
//! - `listen`: binding the daemon's and the console's HTTP listeners.
//! - [`nats_conn`]: connecting to NATS (authentication, TLS, the server
//!   check), for the daemon and every command that talks to the server.
//! - [`client`]: `zhijian publish` and `zhijian tail`.
//! - [`cli`]: the command line.
//! - The load generator, the soak, synthetic traffic and the invariants the
//!   fuzz targets check are the crate `zhijian-tools` (`crates/zhijian-tools`),
//!   not in the product.
//!
//! # Errors
//!
//! Configuration and lexicon errors stop start-up with a message naming
//! file, line and entry (exit code 2). Bad input is data: it is rejected with
//! a stable error code, counted, reported with its line or message, and
//! processing goes on. Nothing on the input path panics.

// Items are `pub(crate)` unless another crate (the tools, the tests) uses
// them; the compiler says so of every `pub` nothing outside can reach.
#![warn(unreachable_pub)]

mod audit;
pub mod cli;
pub mod client;
pub mod config;
pub mod console;
pub mod daemon;
mod diff;
mod eval;
mod label;
mod listen;
mod metrics;
pub mod nats_conn;
mod process_metrics;
pub mod subject;
mod suggest;

pub use zhijian_core::{
    book, chardfa, detect, engine, event, fields, filter, lexicon, matcher, normalize, privacy,
    rules, scan, suite, wording,
};
