//! The cargo invocations behind `build`, `test` and `demo`.
//!
//! Debug profile for `build` and `test` (so `cargo xtask build` prebuilds what
//! `cargo xtask test` runs); the demo runs in release as a user would.
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
    cmd::run(
        cargo()
            .args(["test", "--workspace", "--exclude", "xdp-ebpf", "--no-fail-fast"])
            .args(args),
    )
}

pub fn demo(args: &[String]) -> Result<()> {
    let mut c = cargo();
    c.args(["run", "--release", "-p", "ampguard-tests", "--bin", "demo"]);
    if !args.is_empty() {
        c.arg("--").args(args);
    }
    cmd::run(&mut c)
}
