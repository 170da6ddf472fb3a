//! The cargo invocations behind `build`, `test`, `demo` and `bench`.
//!
//! Debug profile for `build` and `test` (so `cargo xtask build` prebuilds what
//! `cargo xtask test` runs); the demo runs in release as a user would, and so
//! does the bench (timings of a debug build would mean nothing).
//! `--workspace --exclude xdp-ebpf`: the eBPF crate only builds for
//! bpfel-unknown-none, which xdp-user's build.rs does.

use crate::cmd;
use anyhow::Result;
use std::process::Command;

fn cargo() -> Command {
    // The cargo that runs xtask; `cargo` may not be on root's PATH under sudo.
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

pub fn build(args: &[String]) -> Result<()> {
    cmd::run(cargo().args(["build", "--workspace", "--exclude", "xdp-ebpf"]).args(args))
}

pub fn test(args: &[String]) -> Result<()> {
    cmd::run(cargo().args(["test", "--workspace", "--exclude", "xdp-ebpf", "--no-fail-fast"]).args(args))
}

pub fn demo(args: &[String]) -> Result<()> {
    // The demo drives the real `ampguard` binary (daemon and CLI), which
    // `cargo run` of the demo alone would not build.
    cmd::run(cargo().args(["build", "--release", "-p", "xdp-user", "--bins"]))?;
    let mut c = cargo();
    c.args(["run", "--release", "-p", "ampguard-tests", "--bin", "demo"]);
    if !args.is_empty() {
        c.arg("--").args(args);
    }
    cmd::run(&mut c)
}

/// Builds and runs the bench binary in release; it writes BENCHMARKS.md at the
/// workspace root and records the command that made it.
pub fn bench(args: &[String]) -> Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask/ is inside the workspace");
    let out = root.join("BENCHMARKS.md");
    // Part 3 runs the release daemon (target/release/ampguard, next to the bench binary).
    cmd::run(cargo().args(["build", "--release", "-p", "xdp-user", "--bins"]))?;
    let mut c = cargo();
    c.args(["run", "--release", "-p", "ampguard-tests", "--bin", "bench", "--"]);
    c.arg("--out").arg(&out);
    c.args(["--command", "sudo cargo xtask bench"]);
    c.args(args);
    cmd::run(&mut c)
}

/// `cargo build --release -p xdp-user --bins`: target/release/ampguard, for `install`.
pub fn build_release_binary() -> Result<()> {
    cmd::run(cargo().args(["build", "--release", "-p", "xdp-user", "--bins"]))
}

/// Builds the daemon and the soak binary in release and runs the soak; it
/// writes SOAK.md at the workspace root and records the command that made it.
pub fn soak(minutes: f64, args: &[String]) -> Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask/ is inside the workspace");
    cmd::run(cargo().args(["build", "--release", "-p", "xdp-user", "--bins"]))?;
    let mut c = cargo();
    c.args(["run", "--release", "-p", "ampguard-tests", "--bin", "soak", "--"]);
    c.arg("--minutes").arg(minutes.to_string());
    c.arg("--out").arg(root.join("SOAK.md"));
    c.args(["--command", &format!("sudo cargo xtask soak --minutes {minutes}")]);
    c.args(args);
    cmd::run(&mut c)
}
