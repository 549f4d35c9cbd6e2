#![no_main]
//! The `decode` harness (`fuzz/harness/decode.rs`) under libFuzzer.

#[path = "../harness/decode.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::run(data));
