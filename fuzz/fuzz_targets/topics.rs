#![no_main]
//! The `topics` harness (`fuzz/harness/topics.rs`) under libFuzzer.

#[path = "../harness/topics.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::run(data));
