//! The integration tests, as one binary (one link step instead of one per
//! file). They use only fixtures under `tests/fixtures/`, never `../shared`.

mod checkpoints;
mod cli;
mod cluster;
mod console;
mod daemon;
mod default_lexicon;
mod desk;
mod faults;
mod fuzz_smoke;
mod golden;
mod hardening;
mod nats_support;
mod observability;
mod privacy;
mod properties;
mod rules;
mod semantics;
mod support;
mod upgrade;
