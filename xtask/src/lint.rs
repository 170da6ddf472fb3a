//! The quality gate, run first by `cargo xtask test` (and alone by `cargo
//! xtask lint`): formatting (rustfmt.toml), clippy with warnings as errors
//! for the host crates and for the eBPF crate (nightly, bpfel-unknown-none,
//! as xdp-user's build.rs builds it), and the docs without warnings.

use std::{path::Path, process::Command};

use anyhow::Result;

use crate::cmd;

fn cargo(toolchain: Option<&str>) -> Command {
    match toolchain {
        // `cargo +nightly` through rustup, as aya-build builds the eBPF crate.
        Some(t) => {
            let mut c = Command::new("cargo");
            c.arg(format!("+{t}"));
            c
        }
        None => Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())),
    }
}

pub fn run() -> Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask/ is inside the workspace");
    cmd::run(cargo(None).current_dir(root).args(["fmt", "--all", "--check"]))?;
    cmd::run(cargo(None).current_dir(root).args([
        "clippy",
        "--workspace",
        "--exclude",
        "xdp-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    cmd::run(cargo(Some("nightly")).current_dir(root.join("xdp-ebpf")).args([
        "clippy",
        "--target",
        "bpfel-unknown-none",
        "-Z",
        "build-std=core",
        "--",
        "-D",
        "warnings",
    ]))?;
    cmd::run(cargo(None).current_dir(root).env("RUSTDOCFLAGS", "-D warnings").args([
        "doc",
        "--workspace",
        "--exclude",
        "xdp-ebpf",
        "--no-deps",
    ]))
}
