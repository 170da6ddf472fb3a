#![no_main]
// Body in fuzz/src/lib.rs (shared with the regression replay in tests/tests/fuzz_regressions.rs).
libfuzzer_sys::fuzz_target!(|data: &[u8]| ampguard_fuzz::generic_alert(data));
