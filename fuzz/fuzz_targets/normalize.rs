//! Normalisation: any UTF-8 text, checked by
//! `zhijian_tools::invariants::check_normalize` (offsets map back exactly).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        zhijian_tools::invariants::check_normalize(text);
    }
});
