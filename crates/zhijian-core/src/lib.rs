//! The pure core of zhijian (质检): what a conversation is, how its Chinese
//! text is folded, what a lexicon says, and how a conversation is judged.
//! No I/O runtime: no tokio, no NATS, no HTTP, no metrics. The daemon, the
//! console and the command line (the `zhijian` crate) are built on it.
//!
//! # Data flow
//!
//! ```text
//! JSON input ─▶ event::decode ─▶ engine::Engine::handle ─▶ Vec<event::Event>
//!                                  │
//!                                  ├─ normalize  fold width/case/script, drop punctuation, keep offsets
//!                                  ├─ matcher    one Aho-Corasick pass + exceptions, jieba boundaries, position
//!                                  ├─ book       the rules that hit, and every stateful rule
//!                                  └─ engine     per-conversation state, verdicts, score
//! ```
//!
//! The engine is synchronous and does no I/O: it takes the clock as an
//! argument, which is what makes it testable without servers and fast
//! without locks.
//!
//! # Layers, bottom up
//!
//! - [`token`]: the checks of a subject token (tenant, conversation id).
//! - [`event`]: the input/output contract (v1.1), decoding and validation.
//! - [`normalize`] (its Unicode tables are generated: `unicode_tables`),
//!   [`chardfa`], [`detect`] (numbers: phone, ID, bank card), [`wording`].
//! - [`fields`]: a lexicon file's located problems and a rule's fields;
//!   [`build_error`]: why a validated lexicon does not compile.
//! - [`rules`]: the rule kinds, one file each, and their registry; they
//!   know nothing of the lexicon.
//! - [`lexicon`]: the TOML lexicon format and its strict validation.
//! - [`book`]: a lexicon's compiled rules, dispatching to the kinds.
//! - [`matcher`]: the compiled lexicon ([`matcher::Scanner`]) and hit filters.
//! - [`engine`]: conversation state, verdicts and events.
//! - [`scan`]: the offline JSONL runner behind `zhijian scan`; [`suite`]:
//!   the lexicon's own test cases; [`filter`]: which output events a
//!   supervisor wants to see.

pub mod book;
pub mod build_error;
pub mod chardfa;
pub mod detect;
pub mod engine;
pub mod event;
pub mod fields;
pub mod filter;
pub mod lexicon;
pub mod matcher;
pub mod normalize;
pub mod privacy;
pub mod rules;
pub mod scan;
pub mod suite;
pub mod token;
mod unicode_tables;
pub mod wording;
