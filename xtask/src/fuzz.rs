//! `cargo xtask fuzz`: every libFuzzer target of `fuzz/` for a bounded time,
//! and `cargo xtask fuzz-xdp`: a long run of the XDP differential test.
//!
//! `fuzz` builds the targets once (`cargo fuzz build` with the nightly
//! toolchain, release with debug assertions and overflow checks, no sanitizer:
//! the parsers are safe Rust, so a bug shows as a panic, and the sanitizer
//! would only slow the build and the runs), with AYA_BUILD_SKIP=1 (nothing
//! here loads an XDP program), into target/fuzz. Then it runs the targets, as
//! many at a time as there are CPUs, each for `--seconds`, starting from its
//! committed seeds (copied into `target/fuzz/corpus/<target>`, which keeps what
//! earlier runs found, so the repository is never written) plus the committed
//! crash inputs of `fuzz/regressions/<target>` (read, never written). Logs go
//! to `target/fuzz/logs/<target>.log`, crash inputs to
//! `target/fuzz/artifacts/<target>/.` Any crash, leak or timeout fails the task.

use crate::cmd;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Instant;

/// The targets (binaries of fuzz/Cargo.toml), in the order they run.
pub const TARGETS: &[&str] = &["fastnetmon_script", "fastnetmon_json", "generic_alert", "policy_json", "config_toml", "state_file"];

/// An input taking longer than this (seconds) is reported as a hang.
const INPUT_TIMEOUT_SECS: u64 = 20;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask/ is inside the workspace").to_path_buf()
}

/// `rustup run nightly cargo ...`, without the variables the stable cargo
/// that runs xtask set (they would pin the inner cargo to stable).
fn nightly_cargo() -> Command {
    let mut c = Command::new("rustup");
    c.args(["run", "nightly", "cargo"]);
    for v in ["CARGO", "RUSTC", "RUSTDOC", "RUSTUP_TOOLCHAIN", "CARGO_MANIFEST_DIR", "CARGO_PKG_NAME"] {
        c.env_remove(v);
    }
    c
}

pub fn run(seconds: u64, jobs: Option<usize>, only: &[String]) -> Result<()> {
    for t in only {
        if !TARGETS.contains(&t.as_str()) {
            bail!("unknown fuzz target {t:?}; the targets are {}", TARGETS.join(", "));
        }
    }
    let targets: Vec<&str> = TARGETS.iter().copied().filter(|t| only.is_empty() || only.iter().any(|o| o == t)).collect();
    let root = root();
    let work = root.join("target/fuzz");
    let started = Instant::now();
    cmd::run(
        nightly_cargo()
            .current_dir(root.join("fuzz"))
            .env("AYA_BUILD_SKIP", "1")
            .args(["fuzz", "build", "--release", "--debug-assertions", "--sanitizer", "none"])
            // Faster build of the big dependency tree (tokio, axum, aya) on few CPUs.
            .args(["--codegen-units", "16", "--target-dir"])
            .arg(&work),
    )?;
    let built = started.elapsed().as_secs();
    println!("fuzz: targets built in {built} s");
    let bin_dir = work.join("x86_64-unknown-linux-gnu/release");

    let jobs = jobs.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)).max(1);
    println!("fuzz: {} targets, {seconds} s each, {jobs} at a time (logs in {})", targets.len(), work.join("logs").display());
    let queue = Mutex::new(targets.iter().rev().copied().collect::<Vec<_>>());
    let failures = Mutex::new(Vec::<String>::new());
    std::thread::scope(|s| {
        for _ in 0..jobs.min(targets.len()) {
            s.spawn(|| loop {
                let Some(t) = queue.lock().unwrap().pop() else { break };
                if let Err(e) = run_target(&root, &work, &bin_dir, t, seconds) {
                    println!("fuzz: {t}: FAILED: {e:#}");
                    failures.lock().unwrap().push(t.to_string());
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap();
    println!("fuzz: done in {} s (build {built} s)", started.elapsed().as_secs());
    if !failures.is_empty() {
        bail!(
            "fuzz targets failed: {}. Each crash input is in target/fuzz/artifacts/<target>/: replay it with \
             `target/fuzz/x86_64-unknown-linux-gnu/release/<target> FILE`, fix the parser, and commit the input \
             to fuzz/regressions/<target>/ (tests/tests/fuzz_regressions.rs replays it)",
            failures.join(", ")
        );
    }
    Ok(())
}

fn copy_dir(from: &Path, to: &Path) -> Result<usize> {
    std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    let mut n = 0;
    if let Ok(entries) = std::fs::read_dir(from) {
        for e in entries {
            let e = e?;
            if e.file_type()?.is_file() {
                std::fs::copy(e.path(), to.join(e.file_name()))?;
                n += 1;
            }
        }
    }
    Ok(n)
}

fn run_target(root: &Path, work: &Path, bin_dir: &Path, t: &str, seconds: u64) -> Result<()> {
    let corpus = work.join("corpus").join(t);
    let seeds = copy_dir(&root.join("fuzz/corpus").join(t), &corpus)?;
    if seeds == 0 {
        bail!("no seeds in fuzz/corpus/{t}");
    }
    let artifacts = work.join("artifacts").join(t);
    std::fs::create_dir_all(&artifacts)?;
    let logs = work.join("logs");
    std::fs::create_dir_all(&logs)?;
    let log_path = logs.join(format!("{t}.log"));
    let log = std::fs::File::create(&log_path)?;

    let mut c = Command::new(bin_dir.join(t));
    c.arg(&corpus);
    let regressions = root.join("fuzz/regressions").join(t);
    if regressions.is_dir() {
        c.arg(&regressions);
    }
    c.arg(format!("-max_total_time={seconds}"))
        .arg(format!("-timeout={INPUT_TIMEOUT_SECS}"))
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .arg("-print_final_stats=1")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    println!("+ {} > {}", cmd::display(&c), log_path.display());
    let status = c.status().with_context(|| format!("starting {}", bin_dir.join(t).display()))?;
    let text = std::fs::read_to_string(&log_path).unwrap_or_default();
    if status.success() {
        // "Done 2100913 runs in 41 second(s)" and the last status line's "cov: N ... corp: N/...".
        let done = text.lines().rev().find(|l| l.starts_with("Done ")).unwrap_or("no summary");
        let cov = text
            .lines()
            .rev()
            .find(|l| l.contains(" cov: "))
            .and_then(|l| {
                l.find("cov: ").map(|i| l[i..].split(" lim:").next().unwrap_or("").split(" exec/s").next().unwrap_or("").to_string())
            })
            .unwrap_or_default();
        println!("fuzz: {t}: ok, no crash ({done}; {cov})");
        return Ok(());
    }
    let tail: Vec<&str> = text.lines().filter(|l| !l.starts_with("INFO:") && !l.starts_with("WARNING:")).collect();
    let tail = &tail[tail.len().saturating_sub(40)..];
    println!("---- {t}: last lines of {} ----\n{}\n----", log_path.display(), tail.join("\n"));
    let artifact = text.lines().find_map(|l| l.split("Test unit written to ").nth(1)).unwrap_or("(none written)");
    bail!("{status}; crash input: {artifact}")
}

/// A seed for the differential test: 8 bytes of /dev/urandom, or the clock.
fn random_seed() -> u64 {
    use std::io::Read;
    let mut b = [0u8; 8];
    if std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b)).is_ok() {
        return u64::from_le_bytes(b);
    }
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1)
}

/// `cargo test -p ampguard-tests --release --test differential` with
/// AMPGUARD_DIFF_PACKETS=packets and a fresh AMPGUARD_SEED (or `seed`).
pub fn xdp(packets: u64, seed: Option<u64>) -> Result<()> {
    let seed = seed.unwrap_or_else(random_seed);
    println!("fuzz-xdp: {packets} packets through the XDP program and the model, seed {seed}");
    let started = Instant::now();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let result = cmd::run(
        Command::new(cargo)
            .current_dir(root())
            .env("AMPGUARD_DIFF_PACKETS", packets.to_string())
            .env("AMPGUARD_SEED", seed.to_string())
            .args(["test", "-p", "ampguard-tests", "--release", "--test", "differential", "--", "--nocapture"]),
    );
    let secs = started.elapsed().as_secs();
    match &result {
        Ok(()) => println!("fuzz-xdp: PASSED: {packets} packets, seed {seed}, {secs} s (build included)"),
        Err(_) => println!(
            "fuzz-xdp: FAILED: {packets} packets, seed {seed}, {secs} s; replay with \
             AMPGUARD_SEED={seed} AMPGUARD_DIFF_PACKETS={packets} cargo test -p ampguard-tests --release --test differential"
        ),
    }
    result
}
