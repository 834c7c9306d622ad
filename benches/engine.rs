//! Engine throughput on generated agent speech (see `zhijian_tools::synth`):
//! each stage alone, then the whole pipeline, with the default lexicon, with
//! 20,000 extra phrases, and with a generated 200-rule rulebook of every
//! kind and five tenant overlays (`synth::large_rulebook`). Every bench
//! first checks its hit count against what the generator injected, so a
//! broken bench fails loudly.
//!
//! Run: `cargo bench --bench engine` (criterion prints time and throughput;
//! compare stages within one run — this 2-core machine is noisy).

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use zhijian::engine::{Engine, EngineConfig};
use zhijian::event::{CloseReason, Event, Speaker, decode_str};
use zhijian::lexicon;
use zhijian::matcher::{Scanner, Scanners, Scratch, default_segmenter};
use zhijian::normalize::Normalized;
use zhijian_tools::synth::{self, Mix};

const CONVERSATIONS: usize = 2_000;

fn lexicon_sources(extra_phrases: usize) -> Vec<(PathBuf, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("lexicons");
    let mut files: Vec<(PathBuf, String)> = std::fs::read_dir(&dir)
        .expect("lexicons/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).expect("read lexicon");
            (p, text)
        })
        .collect();
    files.sort();
    if extra_phrases > 0 {
        files.push((
            dir.join("zz-synthetic.toml"),
            synth::large_rule_toml(extra_phrases, 1),
        ));
    }
    files
}

fn scanner(extra_phrases: usize) -> Arc<Scanner> {
    let lex = lexicon::load_sources(lexicon_sources(extra_phrases)).expect("valid lexicon");
    Arc::new(Scanner::new(lex, default_segmenter()).expect("compiles"))
}

/// The 200-rule rulebook: the base and its five tenant overlays.
fn rulebook() -> Arc<Scanners> {
    let (base, overlays) = synth::large_rulebook(1);
    let set = lexicon::load_set_sources(base, overlays).expect("valid rulebook");
    Arc::new(Scanners::new(set, default_segmenter()).expect("compiles"))
}

/// Tenants of the rulebook's traffic, one per conversation in turn.
const RULEBOOK_TRAFFIC: [&str; 8] = synth::rulebook::TRAFFIC_TENANTS;

/// The corpus's conversations as input lines spread over
/// [`RULEBOOK_TRAFFIC`], calls and chats alternating every eight.
fn rulebook_lines(convs: &[synth::Conversation]) -> Vec<String> {
    convs
        .iter()
        .enumerate()
        .flat_map(|(i, c)| {
            let channel = if (i / RULEBOOK_TRAFFIC.len()).is_multiple_of(2) {
                "call"
            } else {
                "chat"
            };
            synth::jsonl(
                std::slice::from_ref(c),
                RULEBOOK_TRAFFIC[i % RULEBOOK_TRAFFIC.len()],
                channel,
            )
        })
        .collect()
}

struct Corpus {
    convs: Vec<synth::Conversation>,
    agent_texts: Vec<String>,
    lines: Vec<String>,
    injected: usize,
}

fn corpus() -> Corpus {
    let convs = synth::conversations(42, CONVERSATIONS, "bench-", &Mix::default());
    let agent_texts = convs
        .iter()
        .flat_map(|c| {
            c.turns
                .iter()
                .filter(|t| t.speaker == Speaker::Agent)
                .map(|t| t.text.clone())
        })
        .collect();
    let lines = synth::jsonl(&convs, "bench", "call");
    let injected = convs.iter().map(synth::Conversation::injected).sum();
    Corpus {
        convs,
        agent_texts,
        lines,
        injected,
    }
}

/// Forbidden + filler hits of the scanner over the corpus.
fn phrase_hits(scanner: &Scanner, texts: &[String], scratch: &mut Scratch) -> usize {
    let mut n = 0;
    for t in texts {
        scanner.scan(t, Speaker::Agent, scratch);
        n += scratch
            .hits
            .iter()
            .filter(|h| {
                matches!(
                    scanner.category_id(scanner.hit_rule(h)),
                    "forbidden" | "filler"
                )
            })
            .count();
    }
    n
}

fn benches(c: &mut Criterion) {
    let corpus = corpus();
    let bytes: usize = corpus.agent_texts.iter().map(String::len).sum();
    let n_agent = corpus.agent_texts.len();
    let chars: usize = corpus.agent_texts.iter().map(|t| t.chars().count()).sum();
    eprintln!(
        "corpus: {} conversations, {} lines, {n_agent} agent segments, {:.1} chars/segment mean, {} injected hits",
        corpus.convs.len(),
        corpus.lines.len(),
        chars as f64 / n_agent as f64,
        corpus.injected
    );
    let small = scanner(0);
    let large = scanner(20_000);
    let mut scratch = Scratch::default();
    for (name, s) in [("default", &small), ("20k", &large)] {
        let hits = phrase_hits(s, &corpus.agent_texts, &mut scratch);
        assert_eq!(
            hits, corpus.injected,
            "{name} lexicon: hit count changed, the bench is broken"
        );
    }

    let mut g = c.benchmark_group("stage");
    g.throughput(Throughput::Bytes(bytes as u64));
    g.bench_function("normalise", |b| {
        let mut n = Normalized::default();
        b.iter(|| {
            for t in &corpus.agent_texts {
                n.fill(black_box(t));
            }
        })
    });
    let normalised: Vec<String> = corpus
        .agent_texts
        .iter()
        .map(|t| zhijian::normalize::normalize(t))
        .collect();
    for (name, s) in [("default", &small), ("20k", &large)] {
        g.bench_with_input(BenchmarkId::new("automaton", name), s, |b, s| {
            b.iter(|| {
                normalised
                    .iter()
                    .map(|t| s.count_raw_matches(black_box(t)))
                    .sum::<usize>()
            })
        });
    }
    // What the boundary check would cost if jieba ran on every utterance
    // (the engine only runs it when a word-boundary rule hits).
    g.bench_function("jieba_every_utterance", |b| {
        let jieba = default_segmenter();
        b.iter(|| {
            normalised
                .iter()
                .map(|t| jieba.cut(black_box(t), false).len())
                .sum::<usize>()
        })
    });
    g.finish();

    let mut g = c.benchmark_group("segment");
    g.throughput(Throughput::Elements(n_agent as u64));
    for (name, s) in [("default", &small), ("20k", &large)] {
        g.bench_with_input(BenchmarkId::new("scan", name), s, |b, s| {
            let mut scratch = Scratch::default();
            b.iter(|| phrase_hits(s, &corpus.agent_texts, &mut scratch))
        });
    }
    g.finish();

    // The full pipeline excluding JSON: state, verdicts, events, summaries.
    let inputs: Vec<_> = corpus
        .lines
        .iter()
        .map(|l| decode_str(l).expect("valid"))
        .collect();
    let book = rulebook();
    let book_lines = rulebook_lines(&corpus.convs);
    let book_inputs: Vec<_> = book_lines
        .iter()
        .map(|l| decode_str(l).expect("valid"))
        .collect();
    check_rulebook(&book, &book_inputs, corpus.injected);
    let mut g = c.benchmark_group("pipeline");
    g.throughput(Throughput::Elements(n_agent as u64));
    let single = |s: &Arc<Scanner>| Arc::new(Scanners::single(Arc::clone(s)));
    let runs = [
        ("default", single(&small), &inputs),
        ("20k", single(&large), &inputs),
        ("rules200_tenants5", book, &book_inputs),
    ];
    for (name, scanners, inputs) in &runs {
        if *name != "rules200_tenants5" {
            let mut events = Vec::new();
            let mut e = Engine::with_scanners(Arc::clone(scanners), EngineConfig::default());
            for i in inputs.iter() {
                e.handle(i, 0, &mut events);
            }
            let phrase_violations = events
                .iter()
                .filter(|e| matches!(e, Event::Violation(v) if v.matched.is_some()))
                .count();
            assert_eq!(
                phrase_violations, corpus.injected,
                "{name}: pipeline hit count"
            );
        }
        g.bench_with_input(
            BenchmarkId::new("engine_agent_segments", name),
            scanners,
            |b, s| {
                b.iter(|| {
                    let mut e = Engine::with_scanners(Arc::clone(s), EngineConfig::default());
                    let mut events = Vec::with_capacity(1024);
                    for i in inputs.iter() {
                        e.handle(black_box(i), 0, &mut events);
                        events.clear();
                    }
                    e.close_all(CloseReason::Eof, 0, &mut events);
                    events.len()
                })
            },
        );
    }
    g.finish();

    // `zhijian scan` end to end: decode, judge, encode (input lines/s).
    let jsonl = corpus.lines.join("\n");
    let mut g = c.benchmark_group("scan_jsonl");
    g.throughput(Throughput::Elements(corpus.lines.len() as u64));
    g.bench_function("default", |b| {
        b.iter(|| {
            let mut e = Engine::new(Arc::clone(&small), EngineConfig::default());
            let mut out = Vec::with_capacity(1 << 20);
            zhijian::scan::scan(&mut e, jsonl.as_bytes(), &mut out, &mut std::io::sink())
                .expect("scan")
        })
    });
    g.finish();
}

/// The rulebook's pipeline: every kind reports violations, the injected
/// forbidden phrases and fillers are each one violation of the core rules
/// (or named by the violation that took their span), and the tenants'
/// own rules fire only for their tenant.
fn check_rulebook(book: &Arc<Scanners>, inputs: &[zhijian::event::Input<'_>], injected: usize) {
    let mut events = Vec::new();
    let mut e = Engine::with_scanners(Arc::clone(book), EngineConfig::default());
    for i in inputs {
        e.handle(i, 0, &mut events);
    }
    e.close_all(CloseReason::Eof, 0, &mut events);
    let mut by_kind = std::collections::BTreeMap::<&str, usize>::new();
    let mut core = 0;
    for ev in &events {
        let Event::Violation(v) = ev else { continue };
        *by_kind.entry(v.kind.as_str()).or_default() += 1;
        core += usize::from(v.rule_id.starts_with("core."))
            + v.also
                .iter()
                .filter(|a| a.rule_id.starts_with("core."))
                .count();
        if v.rule_id.starts_with("tenant.") {
            assert!(
                book.has_tenant(&v.tenant),
                "{} fired for tenant {}",
                v.rule_id,
                v.tenant
            );
        }
    }
    let conversations = events
        .iter()
        .filter(|e| matches!(e, Event::Summary(_)))
        .count();
    let violations: usize = by_kind.values().sum();
    eprintln!(
        "rules200_tenants5: base {} ({} patterns); {:.2} violations per conversation, by kind {by_kind:?}",
        book.base().automaton_summary(),
        book.base().pattern_count(),
        violations as f64 / conversations as f64
    );
    for kind in ["phrase", "pattern", "required", "response"] {
        assert!(
            by_kind.get(kind).copied().unwrap_or(0) > 0,
            "no {kind} violation"
        );
    }
    assert_eq!(core, injected, "rules200_tenants5: core rule hits");
}

criterion_group! {
    name = engine;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(4));
    targets = benches
}
criterion_main!(engine);
