//! What zhijian's end-to-end tests stand on: a real nats-server on ports it
//! picks itself ([`nats`]), the daemon in-process or as a child process and
//! the streams it writes ([`daemon`]), the engine over the fixture lexicon
//! ([`engine`]), temporary directories removed also when a test fails
//! ([`tmp`]), and waiting on a condition instead of a fixed sleep
//! ([`wait`]). The invariants any input must keep are in `zhijian-tools`.

pub mod daemon;
pub mod engine;
pub mod nats;
pub mod tmp;
pub mod wait;

use std::path::{Path, PathBuf};

/// The repository's root (lexicons, fixtures, examples, `.local/`).
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}
