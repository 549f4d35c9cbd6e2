//! The fuzz harnesses of `fuzz/harness/` (decode, topics, shard), each run for a bounded
//! time on stable Rust with random inputs from a seeded generator. This is the short run
//! every `cargo test` makes; the long, coverage-guided runs use libFuzzer through
//! `cargo +nightly fuzz run <target>` (see `fuzz/`). A failure prints the seed and the
//! input; `FUZZ_SEED=<seed>` replays a run, `FUZZ_SECONDS=<s>` changes its length.

use std::time::{Duration, Instant};

#[path = "../fuzz/harness/decode.rs"]
mod decode;
#[path = "../fuzz/harness/shard.rs"]
mod shard;
#[path = "../fuzz/harness/topics.rs"]
mod topics;

/// Default seconds per harness: about a minute for the three.
const SECONDS_PER_HARNESS: u64 = 20;
const INPUT_BYTES_MAX: usize = 1024;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Runs `harness` on random inputs until the time is up; returns how many it ran.
fn fuzz_for(name: &str, harness: fn(&[u8])) -> u64 {
    let seed: u64 = std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |since| since.as_nanos() as u64));
    if let Some(path) = std::env::var_os("FUZZ_INPUT") {
        let input = std::fs::read(path).expect("FUZZ_INPUT file");
        harness(&input);
        return 1;
    }
    let seconds = std::env::var("FUZZ_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(SECONDS_PER_HARNESS);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut rng = Rng(seed | 1);
    let mut runs = 0;
    let mut input = Vec::with_capacity(INPUT_BYTES_MAX);
    while Instant::now() < deadline {
        let length = (rng.next() % INPUT_BYTES_MAX as u64) as usize;
        input.clear();
        input.extend((0..length).map(|_| rng.next() as u8));
        let outcome = std::panic::catch_unwind(|| harness(&input));
        if outcome.is_err() {
            let saved = std::env::temp_dir().join(format!("fuzz-{name}-{seed}.bin"));
            let _ = std::fs::write(&saved, &input);
            eprintln!("{name}: failing input saved to {} (replay: FUZZ_INPUT=<file>)", saved.display());
            panic!("{name}: failed with FUZZ_SEED={seed} after {runs} inputs; input: {input:?}");
        }
        runs += 1;
    }
    println!("{name}: {runs} inputs in {seconds} s (FUZZ_SEED={seed})");
    runs
}

#[test]
fn the_decoder_survives_random_input() {
    assert!(fuzz_for("decode", decode::run) > 0);
}

#[test]
fn the_topic_trees_agree_with_their_model_on_random_operations() {
    assert!(fuzz_for("topics", topics::run) > 0);
}

#[test]
fn shards_survive_random_client_sequences_and_end_clean() {
    assert!(fuzz_for("shard", shard::run) > 0);
}
