//! Deterministic replay of the committed fuzz corpus (`fuzz/corpus/decode`) through the same
//! invariants the fuzz targets check, so every `cargo test` runs what fuzzing found.

use std::path::Path;

use sluice_codec::fixtures::{check_decode, check_round_trip};

#[test]
fn fuzz_corpus_replays_clean() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/decode");
    let entries = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("the fuzz corpus is committed at {}: {e}", dir.display()));
    let mut count = 0;
    for entry in entries {
        let path = entry.expect("corpus entry").path();
        let data = std::fs::read(&path).expect("corpus file");
        check_decode(&data);
        check_round_trip(&data);
        count += 1;
    }
    assert!(
        count >= 10,
        "expected the committed seed corpus, found {count} files"
    );
}
