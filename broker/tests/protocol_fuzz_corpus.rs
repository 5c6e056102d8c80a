//! Deterministic replay of the protocol fuzz target's committed corpus (`fuzz/corpus/protocol`)
//! through the same harness (`fuzz/harness/protocol.rs`), plus its seeds and a bounded batch of
//! pseudo-random inputs, so every `cargo test` runs what fuzzing found.

#[path = "../../fuzz/harness/protocol.rs"]
mod harness;

use std::path::{Path, PathBuf};

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/protocol")
}

#[test]
fn protocol_fuzz_corpus_replays_clean() {
    let dir = corpus_dir();
    let entries = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("the fuzz corpus is committed at {}: {e}", dir.display()));
    let mut count = 0;
    for entry in entries {
        let path = entry.expect("corpus entry").path();
        let data = std::fs::read(&path).expect("corpus file");
        eprintln!("{}", path.display());
        harness::run(&data);
        count += 1;
    }
    assert!(
        count >= 4,
        "expected the committed seed corpus, found {count} files"
    );
}

/// The hand-written seeds run clean; `SLUICE_WRITE_PROTOCOL_SEEDS=1` (re)writes them into the
/// corpus directory.
#[test]
fn protocol_fuzz_seeds_run_clean() {
    let write = std::env::var_os("SLUICE_WRITE_PROTOCOL_SEEDS").is_some();
    for (name, data) in harness::seeds() {
        let reached = harness::run(&data);
        eprintln!("{name}: {reached:?}");
        assert!(reached.connected >= 1, "{name} connects: {reached:?}");
        if name != "connect_then_garbage" {
            assert!(reached.delivered >= 1, "{name} delivers: {reached:?}");
        }
        if write {
            std::fs::create_dir_all(corpus_dir()).expect("corpus dir");
            std::fs::write(corpus_dir().join(format!("seed_{name}")), &data).expect("seed");
        }
    }
}

/// A bounded, deterministic batch of arbitrary inputs: random bytes, and seeds with random
/// bytes flipped (a poor man's fuzzer for machines without cargo-fuzz).
#[test]
fn protocol_random_inputs_run_clean() {
    let mut x: u64 = 0x5eed_1234_abcd_0001;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let seeds = harness::seeds();
    for i in 0..400 {
        let data: Vec<u8> = if i % 2 == 0 {
            let len = (next() % 512) as usize;
            (0..len).map(|_| next() as u8).collect()
        } else {
            let mut d = seeds[i / 2 % seeds.len()].1.clone();
            for _ in 0..1 + next() % 4 {
                let at = (next() as usize) % d.len();
                d[at] = next() as u8;
            }
            d
        };
        harness::run(&data);
    }
}
