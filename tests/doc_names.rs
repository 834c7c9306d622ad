//! Every metric and configuration key the documentation names exists: the
//! names drift otherwise (`zhijian_consumer_pending` was documented for
//! months after the metric became `zhijian_consumer_pending_messages`).
//!
//! Metrics: every `zhijian_…` name in the documents is a metric family
//! `src/metrics.rs` registers (a histogram's `_bucket`, `_sum` and `_count`
//! series included), or one of the few non-metric names listed below.
//! Configuration: every `` `[section] key` `` and `ZHIJIAN_SECTION_KEY` the
//! documents name is a key the configuration accepts (asked of the
//! configuration parser itself, as the daemon reads the environment).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use zhijian::config::{EnvError, ParseError, RawConfig};

/// Names that look like metrics and are not: buckets and streams.
const NOT_METRICS: [&str; 3] = ["zhijian_cluster", "zhijian_state", "zhijian_state_desk"];
/// `ZHIJIAN_…` names that are not settings: a stream.
const NOT_SETTINGS: [&str; 1] = ["ZHIJIAN_DEADLETTER"];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The documents a reader is sent to: the README, docs/, the lexicon
/// format, the deployment notes and the Prometheus rules and dashboard.
fn documents() -> Vec<PathBuf> {
    let r = root();
    let mut files = vec![r.join("README.md"), r.join("lexicons/README.md")];
    for dir in [
        "docs",
        "deploy",
        "deploy/prometheus/rules",
        "deploy/grafana",
    ] {
        let Ok(entries) = std::fs::read_dir(r.join(dir)) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.extension()
                .is_some_and(|x| x == "md" || x == "yml" || x == "json")
            {
                files.push(p);
            }
        }
    }
    files.sort();
    files
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Words of `[a-z0-9_]` (or upper case) starting with `prefix`.
fn words_with(text: &str, prefix: &str, upper: bool) -> Vec<String> {
    let ok = |c: char| {
        c == '_'
            || c.is_ascii_digit()
            || if upper {
                c.is_ascii_uppercase()
            } else {
                c.is_ascii_lowercase()
            }
    };
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find(prefix) {
        let before = rest[..i].chars().next_back();
        let tail = &rest[i..];
        let end = tail.find(|c: char| !ok(c)).unwrap_or(tail.len());
        // After `:`, a recording rule's name (`level:metric:operation`).
        // Before `::`, a Rust path (`zhijian_core::engine`).
        let path = tail[end..].starts_with("::");
        if !path && !before.is_some_and(|c| ok(c) || c.is_ascii_alphanumeric() || c == ':') {
            out.push(tail[..end].trim_end_matches('_').to_string());
        }
        rest = &tail[end.max(1)..];
    }
    out
}

/// The metric families `src/metrics.rs` registers: its `"zhijian_…"`
/// string literals.
fn registered_metrics() -> BTreeSet<String> {
    let src = read(&root().join("src/metrics.rs"));
    let names: BTreeSet<String> = src
        .split('"')
        .skip(1)
        .step_by(2)
        .filter(|s| {
            s.starts_with("zhijian_")
                && s.chars()
                    .all(|c| c == '_' || c.is_ascii_lowercase() || c.is_ascii_digit())
        })
        .map(str::to_string)
        .collect();
    assert!(names.len() > 30, "metrics.rs names {} metrics", names.len());
    names
}

#[test]
fn every_metric_the_documents_name_is_registered() {
    let registered = registered_metrics();
    let mut unknown = Vec::new();
    for doc in documents() {
        for name in words_with(&read(&doc), "zhijian_", false) {
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|f| registered.contains(*f)))
                .unwrap_or(&name);
            if !registered.contains(family) && !NOT_METRICS.contains(&family) {
                unknown.push(format!("{}: {name}", doc.display()));
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "documented, not registered:\n{}",
        unknown.join("\n")
    );
}

/// `` `[section] key` `` in a document (the key may be on the next line).
fn section_keys(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for piece in text.split("`[").skip(1) {
        let Some((section, rest)) = piece.split_once(']') else {
            continue;
        };
        let Some((key, _)) = rest.split_once('`') else {
            continue;
        };
        let key = key.trim();
        let plain =
            |s: &str| !s.is_empty() && s.chars().all(|c| c == '_' || c.is_ascii_lowercase());
        if plain(section) && plain(key) {
            out.push((section.to_string(), key.to_string()));
        }
    }
    out
}

fn accepted(section: &str, key: &str) -> bool {
    let name = format!("ZHIJIAN_{}_{}", section.to_uppercase(), key.to_uppercase());
    !matches!(
        RawConfig::parse_with_env("", [(name, "1".to_string())]),
        Err(ParseError::Env {
            source: EnvError::UnknownKey { .. } | EnvError::Shape,
            ..
        })
    )
}

#[test]
fn every_setting_the_documents_name_exists() {
    let mut unknown = Vec::new();
    let mut seen = 0;
    for doc in documents() {
        let text = read(&doc);
        for (section, key) in section_keys(&text) {
            seen += 1;
            if !accepted(&section, &key) {
                unknown.push(format!("{}: [{section}] {key}", doc.display()));
            }
        }
        for name in words_with(&text, "ZHIJIAN_", true) {
            // `ZHIJIAN_<SECTION>_<KEY>` itself.
            if name == "ZHIJIAN" || NOT_SETTINGS.contains(&name.as_str()) {
                continue;
            }
            seen += 1;
            let rest = name.trim_start_matches("ZHIJIAN_").to_lowercase();
            let ok = rest
                .split_once('_')
                .is_some_and(|(section, key)| accepted(section, key));
            if !ok {
                unknown.push(format!("{}: {name}", doc.display()));
            }
        }
    }
    assert!(
        seen > 10,
        "only {seen} settings named: is the parsing right?"
    );
    assert!(
        unknown.is_empty(),
        "documented, not a setting:\n{}",
        unknown.join("\n")
    );
}

/// The checks themselves: a name that does not exist is found.
#[test]
fn the_checks_see_a_wrong_name() {
    assert!(!accepted("daemon", "no_such_key"));
    assert!(!accepted("nosuchsection", "key"));
    assert!(accepted("daemon", "publish_window"));
    assert_eq!(
        section_keys("see `[daemon]\n  publish_window` and `[x] y`"),
        [
            ("daemon".into(), "publish_window".into()),
            ("x".into(), "y".into())
        ]
    );
    let registered = registered_metrics();
    assert!(registered.contains("zhijian_consumer_pending_messages"));
    assert!(!registered.contains("zhijian_consumer_pending"));
    assert_eq!(
        words_with(
            "a `zhijian_x_total{a=\"b\"}` and zhijian_y.",
            "zhijian_",
            false
        ),
        ["zhijian_x_total", "zhijian_y"]
    );
}
