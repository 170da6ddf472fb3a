//! Replays every committed fuzz input (the seed corpora in `fuzz/corpus/<target>/`
//! and the crashes found, `fuzz/regressions/<target>/`) through the fuzz
//! targets' bodies, on the stable toolchain, as part of `cargo xtask test`.
//! The bodies are `fuzz/src/lib.rs`, included as they are.

#[path = "../../fuzz/src/lib.rs"]
mod targets;

use std::path::Path;

#[test]
fn committed_fuzz_inputs_replay() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut failed = Vec::new();
    let mut ran = 0;
    for (name, check) in targets::TARGETS {
        for kind in ["corpus", "regressions"] {
            let dir = fuzz.join(kind).join(name);
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            for entry in entries {
                let path = entry.unwrap().path();
                let data = std::fs::read(&path).unwrap();
                ran += 1;
                if std::panic::catch_unwind(|| check(&data)).is_err() {
                    failed.push(path.display().to_string());
                }
            }
        }
    }
    assert!(ran >= 20, "only {ran} inputs under {}", fuzz.display());
    assert!(failed.is_empty(), "fuzz targets panic on: {failed:#?}");
}
