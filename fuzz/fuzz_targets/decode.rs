//! Input decoding: any bytes, checked by `zhijian_tools::invariants::check_decode`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    zhijian_tools::invariants::check_decode(data);
});
