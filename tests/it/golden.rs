//! Golden tests: `tests/fixtures/golden/NAME.jsonl` through `zhijian scan`
//! with the fixture lexicon must give `NAME.expected.jsonl` (output events)
//! and `NAME.expected.stderr` (bad-line reports). `BLESS=1 cargo test`
//! rewrites the expected files; review the diff before committing.

use crate::support::{engine, fixtures};
use std::fmt::Write as _;
use std::path::Path;

#[test]
fn golden_files() {
    let dir = fixtures().join("golden");
    let mut inputs: Vec<_> = std::fs::read_dir(&dir)
        .expect("golden dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.to_string_lossy().ends_with(".jsonl")
                && !p.to_string_lossy().ends_with(".expected.jsonl")
        })
        .collect();
    inputs.sort();
    assert!(!inputs.is_empty(), "no golden inputs in {}", dir.display());
    let mut failures = String::new();
    for input in &inputs {
        let text = std::fs::read_to_string(input).expect("read input");
        let mut out = Vec::new();
        let mut err = Vec::new();
        zhijian::scan::scan(&mut engine(), text.as_bytes(), &mut out, &mut err).expect("scan");
        let got_out = String::from_utf8(out).expect("utf-8");
        let got_err = String::from_utf8(err).expect("utf-8");
        let stem = input.with_extension("");
        check(
            &stem.with_extension("expected.jsonl"),
            &got_out,
            &mut failures,
        );
        check(
            &stem.with_extension("expected.stderr"),
            &got_err,
            &mut failures,
        );
    }
    assert!(
        failures.is_empty(),
        "golden mismatches (BLESS=1 to accept):\n{failures}"
    );
}

fn check(expected_path: &Path, got: &str, failures: &mut String) {
    if std::env::var_os("BLESS").is_some() {
        std::fs::write(expected_path, got).expect("write expected");
        return;
    }
    // A missing expected file is a failure, not an empty expectation: an
    // input whose expected files were never written (or were deleted)
    // would otherwise pass whenever its output is empty.
    let want = match std::fs::read_to_string(expected_path) {
        Ok(w) => w,
        Err(e) => {
            let _ = writeln!(
                failures,
                "--- {}: cannot read it ({e}); create it with `BLESS=1 cargo test --test it golden` and review what it wrote",
                expected_path.display()
            );
            return;
        }
    };
    if want == got {
        return;
    }
    let _ = writeln!(failures, "--- {}", expected_path.display());
    let (w, g): (Vec<&str>, Vec<&str>) = (want.lines().collect(), got.lines().collect());
    for i in 0..w.len().max(g.len()) {
        match (w.get(i), g.get(i)) {
            (Some(a), Some(b)) if a == b => {}
            (a, b) => {
                let _ = writeln!(
                    failures,
                    "line {}:\n  expected: {}\n  got:      {}",
                    i + 1,
                    a.unwrap_or(&"<none>"),
                    b.unwrap_or(&"<none>")
                );
            }
        }
    }
}
