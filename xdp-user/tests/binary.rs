//! The `ampguard` binary as any user runs it, no root needed: `--version` names
//! the version, the commit and the build date; a mistyped subcommand is refused
//! with the one meant. Being an integration test of xdp-user, it is also what
//! makes `cargo test --workspace` build the binary (cargo builds a package's
//! binaries for its integration tests only) that the lab and daemon tests in
//! tests/ run: without it they would run a stale one, or none.

use std::process::{Command, Output};

fn ampguard(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ampguard")).args(args).output().expect("run the ampguard binary")
}

#[test]
fn version_names_the_commit_and_the_build_date() {
    let out = ampguard(&["--version"]);
    let line = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{line}");
    assert!(line.starts_with(concat!("ampguard ", env!("CARGO_PKG_VERSION"), " (commit ")), "{line}");
    assert!(line.trim_end().ends_with("Z)") && line.contains(", built 20"), "{line}");
}

#[test]
fn a_mistyped_subcommand_is_refused_naming_the_right_one() {
    let out = ampguard(&["stauts"]);
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("'stauts'") && err.contains("'status'"), "{err}");
}
