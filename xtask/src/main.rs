//! `cargo xtask <command>`: the project's own build, test and setup entry points.
//!
//! - `setup`: installs what a fresh Debian 12 machine of this kind lacks (root only).
//! - `build`: setup (fast when nothing is missing), then builds the workspace.
//! - `lint`:  the quality gate (`lint.rs`): rustfmt, clippy -D warnings (host
//!   and eBPF crates), rustdoc -D warnings.
//! - `test`:  setup, the quality gate, then the whole test suite (root only: it
//!   attaches XDP programs and creates network namespaces), after building the
//!   Debian package that tests/tests/deb.rs installs (AMPGUARD_DEB names it).
//! - `demo`:  setup, then runs the demo binary of `ampguard-tests`.
//! - `bench`: setup, then runs the benchmarks (`ampguard-tests`' `bench` binary,
//!   release build) and writes BENCHMARKS.md at the workspace root (root only).
//! - `soak`:  setup, then the soak binary of `ampguard-tests` (release): the daemon
//!   under churn and traffic for N minutes, RSS and fds watched; writes SOAK.md (root only).
//! - `fuzz`:  setup, then every libFuzzer target of `fuzz/` for a bounded time
//!   (`fuzz.rs`; CI runs it after `test`). `fuzz-xdp`: a long differential run
//!   of the XDP program against the model (root only; not in CI).
//! - `install`: builds release and installs the binary, the systemd unit, the
//!   notify wrapper, a config and a token (never overwriting them); `install.rs`.
//! - `deb`: builds release and packages `target/debian/ampguard_<version>_amd64.deb`
//!   with cargo-deb (`deb.rs`); `test` builds it first for tests/tests/deb.rs.
//!
//! One file per concern: `cmd.rs` runs and prints commands, `preflight.rs`
//! refuses early on machines that cannot work, `setup.rs` installs, `cargo.rs`
//! wraps the cargo invocations.

mod cargo;
mod cmd;
mod deb;
mod fuzz;
mod install;
mod lint;
mod preflight;
mod setup;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "ampguard build, test and setup tasks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what this machine lacks to build and test (apt packages, rust-src,
    /// bpf-linker 0.13.0, bpffs). Needs root. A second run only checks.
    Setup,
    /// Check the toolchain (installing what is missing when root), then build the workspace.
    Build {
        /// Extra arguments passed to `cargo build`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// The quality gate: `cargo fmt --check`, clippy with warnings as errors
    /// (host crates and the eBPF crate), `cargo doc` without warnings.
    Lint,
    /// Setup, then the quality gate (`lint`), `deb` (the package tests/tests/deb.rs
    /// installs), then `cargo test` over the workspace. Needs root.
    Test {
        /// Extra arguments passed to `cargo test` (e.g. `-- --nocapture`, or a test name filter).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Setup, then run the demo (`ampguard-tests`' `demo` binary). Needs root.
    Demo {
        /// Extra arguments passed to the demo binary.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Setup, then run the benchmarks (release build) and write BENCHMARKS.md at the
    /// workspace root. Needs root. Not part of `test`.
    Bench {
        /// Extra arguments passed to the bench binary (e.g. `-- --skip-live`, `-- --help`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Setup, then run every fuzz target (fuzz/) for a bounded time from its
    /// committed seeds; fails on any crash. Needs the nightly toolchain and cargo-fuzz.
    Fuzz(FuzzArgs),
    /// A long differential run of the XDP program against the model (release build,
    /// fresh random seed). Needs root. Not part of `test` or CI.
    FuzzXdp(FuzzXdpArgs),
    /// Setup, then run the daemon under policy churn, alerts and traffic for N minutes,
    /// sampling its RSS and open fds; fails if they grow past their bounds. Writes
    /// SOAK.md at the workspace root. Needs root. Not part of `test`.
    Soak {
        /// Length of the run in minutes.
        #[arg(long, default_value_t = 5.0)]
        minutes: f64,
        /// Extra arguments passed to the soak binary (e.g. `-- --interval 5`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Build release and package `target/debian/ampguard_<version>_amd64.deb` (cargo-deb):
    /// /usr/sbin/ampguard, the unit, /etc/ampguard/ampguard.toml as a conffile (no
    /// interface), the notify wrapper, Prometheus and Grafana files, man pages, completions.
    Deb {
        /// Package target/release/ampguard as it is, without `cargo build --release` first.
        #[arg(long)]
        no_build: bool,
    },
    /// Build release and install ampguard as a systemd service (binary, unit, FastNetMon
    /// wrapper, /etc/ampguard config and token only if absent, /var/lib/ampguard).
    Install {
        /// Installation prefix for bin/ and share/.
        #[arg(long, default_value = "/usr/local")]
        prefix: std::path::PathBuf,
        /// Staging root: install into DIR/... instead of / (no root needed).
        #[arg(long, value_name = "DIR")]
        dest_dir: Option<std::path::PathBuf>,
        /// Install this ampguard binary instead of building target/release/ampguard.
        #[arg(long, value_name = "FILE")]
        bin: Option<std::path::PathBuf>,
    },
}

#[derive(clap::Args)]
struct FuzzArgs {
    /// Seconds per target.
    #[arg(long, default_value_t = 45)]
    seconds: u64,
    /// Targets run at a time (default: one per CPU).
    #[arg(long)]
    jobs: Option<usize>,
    /// Only these targets (default: all).
    targets: Vec<String>,
}

#[derive(clap::Args)]
struct FuzzXdpArgs {
    /// Packets through the program and the model.
    #[arg(long, default_value_t = 10_000_000)]
    packets: u64,
    /// Seed (default: a fresh random one, printed).
    #[arg(long)]
    seed: Option<u64>,
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Setup => setup::run(setup::Mode::Install),
        Command::Build { args } => build(&args),
        Command::Lint => setup_if_root().and_then(|()| lint::run()),
        Command::Test { args } => test(&args),
        Command::Demo { args } => demo(&args),
        Command::Bench { args } => bench(&args),
        Command::Soak { minutes, args } => soak(minutes, &args),
        Command::Fuzz(a) => fuzz(a),
        Command::FuzzXdp(a) => fuzz_xdp(a),
        Command::Deb { no_build } => setup_if_root().and_then(|()| deb::run(no_build)).map(|_| ()),
        Command::Install { prefix, dest_dir, bin } => install::run(install::Options { prefix, dest_dir, bin }),
    };
    if let Err(e) = result {
        eprintln!("xtask: error: {e:#}");
        std::process::exit(1);
    }
}

/// Refuse at once unless root (saying what needs it and the command to run),
/// then install whatever setup finds missing.
fn as_root(needs: &str, command: &str) -> anyhow::Result<()> {
    if !preflight::is_root() {
        anyhow::bail!("{needs}: run as root (sudo cargo xtask {command})");
    }
    setup::run(setup::Mode::Install)
}

/// Root installs what is missing; anyone else gets a check that says what to run.
fn setup_if_root() -> anyhow::Result<()> {
    setup::run(if preflight::is_root() { setup::Mode::Install } else { setup::Mode::CheckOnly })
}

fn build(args: &[String]) -> anyhow::Result<()> {
    setup_if_root()?;
    cargo::build(args)
}

fn test(args: &[String]) -> anyhow::Result<()> {
    as_root("the test suite attaches XDP programs and creates network namespaces", "test")?;
    lint::run()?;
    // The package test (tests/tests/deb.rs) installs this .deb; built once here
    // (a release build) rather than by the test, whose cargo holds target/'s lock.
    let deb = deb::run(false)?;
    std::env::set_var("AMPGUARD_DEB", &deb);
    cargo::test(args)
}

fn demo(args: &[String]) -> anyhow::Result<()> {
    as_root("the demo attaches an XDP program and creates network namespaces", "demo")?;
    cargo::demo(args)
}

fn bench(args: &[String]) -> anyhow::Result<()> {
    as_root("the benchmarks load XDP programs, create network namespaces and run nft", "bench")?;
    cargo::bench(args)
}

fn fuzz(a: FuzzArgs) -> anyhow::Result<()> {
    // Root installs what is missing (cargo-fuzz among it); anyone else gets a check.
    setup_if_root()?;
    fuzz::run(a.seconds, a.jobs, &a.targets)
}

fn fuzz_xdp(a: FuzzXdpArgs) -> anyhow::Result<()> {
    as_root("the differential test loads the XDP program", "fuzz-xdp")?;
    fuzz::xdp(a.packets, a.seed)
}

fn soak(minutes: f64, args: &[String]) -> anyhow::Result<()> {
    as_root("the soak test attaches XDP and creates network namespaces", "soak")?;
    cargo::soak(minutes, args)
}
