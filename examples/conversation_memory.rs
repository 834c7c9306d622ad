//! Memory per open conversation: opens N generated conversations through
//! `Engine::handle` (2 or 3 segments each: customer, agent, and every other
//! one the customer again; none is closed) and reports the growth of the
//! process's resident memory per conversation, for the default lexicon and
//! for the generated 200-rule rulebook with five tenant overlays
//! (`synth::large_rulebook`, traffic spread over its tenants and three
//! without an overlay).
//!
//! Each lexicon is measured in a child process of its own: memory freed
//! after one measurement is not reliably returned to the system, so a
//! second measurement in the same process would read low.
//!
//! Run: `cargo run --release --example conversation_memory [-- N]`
//! (N defaults to 100,000).

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use zhijian::engine::{Conversation, Engine, EngineConfig};
use zhijian::event::decode_str;
use zhijian::lexicon;
use zhijian::matcher::{Scanners, default_segmenter};
use zhijian::rules::State;
use zhijian_tools::synth::{self, Mix};

const LEXICONS: [&str; 2] = ["default", "rules200_tenants5"];

/// Tenants of the rulebook's traffic (as in `benches/engine.rs`).
const RULEBOOK_TRAFFIC: [&str; 8] = synth::rulebook::TRAFFIC_TENANTS;

/// Resident memory of this process in bytes (`VmRSS`).
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS");
    kib * 1024
}

fn scanners(which: &str) -> Arc<Scanners> {
    let set = match which {
        "default" => lexicon::load_set(&Path::new(env!("CARGO_MANIFEST_DIR")).join("lexicons")),
        _ => {
            let (base, overlays) = synth::large_rulebook(1);
            lexicon::load_set_sources(base, overlays)
        }
    }
    .unwrap_or_else(|e| panic!("{e}"));
    Arc::new(Scanners::new(set, default_segmenter()).expect("compiles"))
}

/// Measures one lexicon; prints `lexicon n rss_before rss_after`.
fn child(which: &str, n: usize) {
    let scanners = scanners(which);
    let mix = Mix {
        agent_turns: 2,
        ..Mix::default()
    };
    let convs = synth::conversations(9, n, "mem-", &mix);
    let mut lines = Vec::with_capacity(n * 3);
    for (i, c) in convs.iter().enumerate() {
        let mut c = c.clone();
        c.turns.truncate(2 + i % 2);
        let tenant = match which {
            "default" => "bench",
            _ => RULEBOOK_TRAFFIC[i % RULEBOOK_TRAFFIC.len()],
        };
        let mut l = synth::jsonl(std::slice::from_ref(&c), tenant, "call");
        l.pop(); // the `end` event: the conversation stays open
        lines.extend(l);
    }
    drop(convs);
    let inputs: Vec<_> = lines
        .iter()
        .map(|l| decode_str(l).expect("valid"))
        .collect();
    let mut engine = Engine::with_scanners(scanners, EngineConfig::default());
    let mut events = Vec::with_capacity(1024);
    let before = rss_bytes();
    for i in &inputs {
        engine.handle(i, 0, &mut events);
        events.clear();
    }
    let after = rss_bytes();
    assert_eq!(engine.open_conversations(), n);
    println!("{which} {n} {before} {after} {}", inputs.len());
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--child") {
        let n = args[3].parse().expect("N");
        child(&args[2], n);
        return;
    }
    let n: usize = args.get(1).map_or(100_000, |a| a.parse().expect("N"));
    let exe = std::env::current_exe().expect("current exe");
    println!(
        "size_of: Conversation {} B, rule State {} B (plus heap: the state vector, seq set, excerpt, counts)",
        std::mem::size_of::<Conversation>(),
        std::mem::size_of::<State>()
    );
    println!("| lexicon | open conversations | segments | RSS growth | bytes per conversation |");
    println!("|---|---|---|---|---|");
    for which in LEXICONS {
        let out = Command::new(&exe)
            .args(["--child", which, &n.to_string()])
            .output()
            .expect("run child");
        assert!(
            out.status.success(),
            "{which}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line = String::from_utf8_lossy(&out.stdout);
        let f: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .map(|x| x.parse().expect("number"))
            .collect();
        let (n, before, after, segments) = (f[0], f[1], f[2], f[3]);
        let grown = after.saturating_sub(before);
        println!(
            "| {which} | {n} | {segments} | {:.1} MiB | {} |",
            grown as f64 / (1024.0 * 1024.0),
            grown / n
        );
    }
}
