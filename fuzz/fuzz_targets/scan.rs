//! Scanning: the input as JSONL lines, decoded and judged by a fresh engine
//! with the default lexicon, checked by `zhijian_tools::invariants::check_scan`
//! (spans within the text, unique event ids, one summary per conversation).
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use zhijian::matcher::{Scanner, default_segmenter};

fn scanner() -> Arc<Scanner> {
    static S: OnceLock<Arc<Scanner>> = OnceLock::new();
    S.get_or_init(|| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../lexicons");
        let lexicon = zhijian::lexicon::load_dir(&dir)
            .unwrap_or_else(|e| panic!("default lexicon {}: {e}", dir.display()));
        Arc::new(Scanner::new(lexicon, default_segmenter()).expect("default lexicon compiles"))
    })
    .clone()
}

fuzz_target!(|data: &[u8]| {
    let mut engine = zhijian_tools::invariants::engine_for_checks(scanner());
    zhijian_tools::invariants::check_scan(&mut engine, data.split(|&b| b == b'\n'));
});
