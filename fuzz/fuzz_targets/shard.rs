#![no_main]
//! The `shard` harness (`fuzz/harness/shard.rs`) under libFuzzer.

#[path = "../harness/shard.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::run(data));
