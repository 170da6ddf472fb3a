//! `cargo xtask setup`: make a fresh Debian 12 machine of this kind able to build
//! and test ampguard, installing only what is missing.
//!
//! Each item is checked first (cheaply: dpkg-query, rustup, `bpf-linker
//! --version`, /proc/mounts) and prints "ok: X already present" when there is
//! nothing to do, so a second run takes a second or two. `apt-get update` runs
//! at most once, and only when a package has to be installed.

use crate::cmd::{self, probe};
use crate::preflight;
use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::process::Command;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Install what is missing (root only).
    Install,
    /// Only report what is missing; fail if the build cannot work (non-root `build`).
    CheckOnly,
}

/// Debian packages and why each is needed.
const APT_PACKAGES: &[(&str, &str)] = &[
    ("gcc", "C compiler/linker used by rustc and build scripts"),
    ("libc6-dev", "C library headers for the linker and libc-using crates"),
    ("llvm-22-dev", "LLVM 22 that bpf-linker 0.13 links against (the system LLVM 14 is too old)"),
    ("libpolly-22-dev", "needed to link bpf-linker against LLVM 22"),
    ("libzstd-dev", "needed to link bpf-linker against LLVM 22"),
    ("iproute2", "`ip netns`/veth/XDP plumbing for the test lab and the demo"),
    ("nftables", "the nftables baseline the demo and tests compare against"),
    ("xdp-tools", "xdp-filter: the bench's peer XDP filter, measured beside ampguard (BENCHMARKS.md)"),
    (
        "libxdp1",
        "libxdp.so.1, which the opt-in dispatcher mode opens at run time; xdp-loader/xdp-filter beside it (tests/tests/dispatcher.rs)",
    ),
    ("tcpdump", "inspecting lab traffic when a test fails"),
    ("tshark", "reading the comments of `ampguard capture`'s pcapng (tests/tests/capture_top.rs)"),
    ("jq", "reading ampguard's JSON output in scripts"),
    ("curl", "talking to the daemon's HTTP endpoints from scripts"),
    ("openssl", "openssl s_client and x509: the TLS tests read the certificate the daemon serves (tests/tests/tls.rs)"),
    ("bpftool", "detaching the XDP link by hand in the fault tests (tests/tests/faults.rs)"),
    ("prometheus", "prometheus and promtool: the observability tests scrape the daemon and check deploy/'s config and alert rules"),
    ("fastnetmon", "the detector the FastNetMon end-to-end test runs inside the lab (tests/tests/observability.rs)"),
    ("systemd", "systemd-analyze: verifying deploy/ampguard.service (tests/tests/deploy.rs)"),
    ("strace", "checking the daemon's system calls against the unit's SystemCallFilter (tests/tests/deploy.rs)"),
    ("e2fsprogs", "chattr: the fault tests make a state file immutable to fail its writes (tests/tests/faults.rs)"),
    ("g++", "C++ compiler: the fuzz targets link libFuzzer, which libfuzzer-sys builds from source"),
    ("gobgpd", "gobgpd and the gobgp CLI (3.x): the BGP speakers of the Flowspec lab test (tests/tests/flowspec.rs)"),
    ("lintian", "checks the package `cargo xtask deb` builds (tests/tests/deb.rs)"),
    ("ethtool", "GRO on the bench's veth for `bench --only generic` (generic-mode XDP, tests/src/bench/live.rs)"),
    ("dpkg-dev", "dpkg-shlibdeps: cargo-deb computes the package's library dependencies with it"),
];

const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
const BPFFS: &str = "/sys/fs/bpf";
const CARGO_FUZZ_VERSION: &str = "0.13.2";
pub const CARGO_DEB_VERSION: &str = "3.8.0";

pub fn run(mode: Mode) -> Result<()> {
    if mode == Mode::Install {
        preflight::check_for_install()?;
    }
    let mut missing: Vec<String> = Vec::new();
    apt_packages(mode, &mut missing)?;
    rust_src(mode, &mut missing)?;
    bpf_linker(mode, &mut missing)?;
    bpffs(mode, &mut missing)?;
    cargo_fuzz(mode)?;
    cargo_deb(mode)?;
    if !missing.is_empty() {
        bail!("this machine is missing:\n  {}\nrun `sudo cargo xtask setup` to install it", missing.join("\n  "));
    }
    Ok(())
}

fn dpkg_installed(pkg: &str) -> bool {
    probe("dpkg-query", &["-W", "-f=${Status}", pkg])
        .map(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "install ok installed")
        .unwrap_or(false)
}

fn apt_packages(mode: Mode, missing: &mut Vec<String>) -> Result<()> {
    let mut to_install = Vec::new();
    for (pkg, why) in APT_PACKAGES {
        if dpkg_installed(pkg) {
            println!("ok: {pkg} already present");
        } else if mode == Mode::CheckOnly {
            missing.push(format!("apt package {pkg} ({why})"));
        } else {
            println!("installing {pkg}: {why}");
            to_install.push(*pkg);
        }
    }
    if to_install.is_empty() {
        return Ok(());
    }
    let apt = |args: &[&str]| {
        let mut c = Command::new("apt-get");
        c.env("DEBIAN_FRONTEND", "noninteractive").args(args);
        c
    };
    mask_test_only_services(&to_install)?;
    preseed(&to_install)?;
    cmd::run(&mut apt(&["update"]))?;
    let mut install = apt(&["install", "-y", "--no-install-recommends"]);
    install.args(&to_install);
    cmd::run(&mut install)
}

/// rustup: on PATH, else in $CARGO_HOME/bin or ~/.cargo/bin (sudo often drops it from PATH).
fn cargo_bin_dir() -> Option<PathBuf> {
    if let Some(h) = std::env::var_os("CARGO_HOME") {
        return Some(PathBuf::from(h).join("bin"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin"))
}

pub fn find_tool(name: &str) -> Option<PathBuf> {
    cmd::find_on_path(name).or_else(|| {
        let p = cargo_bin_dir()?.join(name);
        p.is_file().then_some(p)
    })
}

fn rust_src(mode: Mode, missing: &mut Vec<String>) -> Result<()> {
    let rustup = find_tool("rustup").context(
        "rustup not found (on PATH, in $CARGO_HOME/bin or ~/.cargo/bin): \
         the nightly toolchain that builds the eBPF program is managed by rustup",
    )?;
    let toolchains = probe(&rustup, &["toolchain", "list"]).map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
    if toolchains.lines().any(|l| l.starts_with("nightly")) {
        println!("ok: nightly toolchain already present");
    } else if mode == Mode::CheckOnly {
        missing.push("rust nightly toolchain (builds the eBPF program with -Z build-std)".into());
        return Ok(());
    } else {
        println!(
            "the nightly toolchain is missing (it should be preinstalled on these machines; \
             it builds the eBPF program with -Z build-std=core): trying to install it"
        );
        cmd::run(Command::new(&rustup).args(["toolchain", "install", "nightly", "--profile", "minimal"]))
            .context("could not install the nightly toolchain")?;
    }
    // rust-src: the bpfel-unknown-none target builds core from source; clippy
    // and rustfmt: the quality gate (xtask/src/lint.rs) on both toolchains.
    let components: [(&str, &str, &str); 4] = [
        ("nightly", "rust-src", "the bpfel-unknown-none target builds core from source"),
        ("nightly", "clippy", "the quality gate lints the eBPF crate"),
        ("stable", "clippy", "the quality gate lints the host crates"),
        ("stable", "rustfmt", "the quality gate checks formatting"),
    ];
    for (toolchain, component, why) in components {
        let installed = probe(&rustup, &["component", "list", "--toolchain", toolchain, "--installed"])
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        if installed.lines().any(|l| l.starts_with(component)) {
            println!("ok: {component} ({toolchain}) already present");
        } else if mode == Mode::CheckOnly {
            missing.push(format!("{component} for {toolchain} ({why})"));
        } else {
            println!("installing {component} for {toolchain}: {why}");
            cmd::run(Command::new(&rustup).args(["component", "add", component, "--toolchain", toolchain]))?;
        }
    }
    Ok(())
}

fn bpf_linker_version() -> Option<String> {
    let bin = find_tool("bpf-linker")?;
    let out = probe(&bin, &["--version"])?;
    // "bpf-linker 0.13.0"
    String::from_utf8_lossy(&out.stdout).split_whitespace().nth(1).map(str::to_owned)
}

fn bpf_linker(mode: Mode, missing: &mut Vec<String>) -> Result<()> {
    let found = bpf_linker_version();
    if found.as_deref() == Some(BPF_LINKER_VERSION) {
        println!("ok: bpf-linker {BPF_LINKER_VERSION} already present");
        if !cmd::on_path("bpf-linker") {
            println!(
                "note: bpf-linker is in {} but not on PATH; add that directory to PATH for builds",
                cargo_bin_dir().map(|p| p.display().to_string()).unwrap_or_default()
            );
        }
        return Ok(());
    }
    let why = format!(
        "links the eBPF program (found: {}; pinned: {BPF_LINKER_VERSION}, built against LLVM 22)",
        found.as_deref().unwrap_or("none")
    );
    if mode == Mode::CheckOnly {
        missing.push(format!("bpf-linker {BPF_LINKER_VERSION}: {why}"));
        return Ok(());
    }
    println!("installing bpf-linker {BPF_LINKER_VERSION}: {why}; takes about a minute");
    let path = std::env::var("PATH").unwrap_or_default();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    cmd::run(Command::new(cargo).env("LLVM_SYS_221_PREFIX", LLVM_PREFIX).env("PATH", format!("{LLVM_PREFIX}/bin:{path}")).args([
        "install",
        "bpf-linker",
        "--version",
        BPF_LINKER_VERSION,
        "--locked",
        "--no-default-features",
        "--features",
        "llvm-22",
    ]))?;
    match bpf_linker_version() {
        Some(v) if v == BPF_LINKER_VERSION => Ok(()),
        other => bail!("bpf-linker still reports {other:?} after installing {BPF_LINKER_VERSION}"),
    }
}

fn bpffs_mounted() -> bool {
    std::fs::read_to_string("/proc/mounts")
        .map(|m| {
            m.lines().any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.len() > 2 && f[1] == BPFFS && f[2] == "bpf"
            })
        })
        .unwrap_or(false)
}

fn bpffs(mode: Mode, _missing: &mut Vec<String>) -> Result<()> {
    if bpffs_mounted() {
        println!("ok: bpffs already mounted at {BPFFS}");
        return Ok(());
    }
    if mode == Mode::CheckOnly {
        // Not needed to build; only to pin maps at run time.
        println!("note: bpffs is not mounted at {BPFFS} (needed to pin maps; `sudo cargo xtask setup` mounts it)");
        return Ok(());
    }
    println!("mounting bpffs at {BPFFS}: ampguard pins its maps there");
    cmd::run(Command::new("mount").args(["-t", "bpf", "bpf", BPFFS]))
}

fn cargo_fuzz_version() -> Option<String> {
    let bin = find_tool("cargo-fuzz")?;
    // `cargo-fuzz --version`: "cargo-fuzz 0.13.2"
    let out = probe(&bin, &["--version"])?;
    String::from_utf8_lossy(&out.stdout).split_whitespace().nth(1).map(str::to_owned)
}

/// cargo-fuzz, for `cargo xtask fuzz` (and CI). Only needed to fuzz, so a
/// non-root check only notes it; `xtask fuzz` fails clearly without it.
fn cargo_fuzz(mode: Mode) -> Result<()> {
    pinned_cargo_tool(
        mode,
        "cargo-fuzz",
        CARGO_FUZZ_VERSION,
        cargo_fuzz_version,
        "builds and runs the libFuzzer targets of fuzz/ for `cargo xtask fuzz`",
        "about a minute",
    )
}

fn cargo_deb_version() -> Option<String> {
    let bin = find_tool("cargo-deb")?;
    // `cargo-deb --version`: "3.8.0"
    let out = probe(&bin, &["--version"])?;
    String::from_utf8_lossy(&out.stdout).split_whitespace().last().map(str::to_owned)
}

/// cargo-deb, for `cargo xtask deb` (and the package test in CI). Like
/// cargo-fuzz: a non-root check only notes it; `xtask deb` fails clearly without it.
fn cargo_deb(mode: Mode) -> Result<()> {
    pinned_cargo_tool(
        mode,
        "cargo-deb",
        CARGO_DEB_VERSION,
        cargo_deb_version,
        "builds the Debian package for `cargo xtask deb`",
        "about two minutes",
    )
}

/// A cargo subcommand at a pinned version, `cargo install`ed when missing
/// or of another version; a non-root check only notes it.
fn pinned_cargo_tool(mode: Mode, name: &str, pinned: &str, version: fn() -> Option<String>, what: &str, takes: &str) -> Result<()> {
    let found = version();
    if found.as_deref() == Some(pinned) {
        println!("ok: {name} {pinned} already present");
        return Ok(());
    }
    let why = format!("{what} (found: {}; pinned: {pinned})", found.as_deref().unwrap_or("none"));
    if mode == Mode::CheckOnly {
        println!("note: {name} {pinned} missing: {why}; `sudo cargo xtask setup` installs it");
        return Ok(());
    }
    println!("installing {name} {pinned}: {why}; takes {takes}");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    cmd::run(Command::new(cargo).args(["install", name, "--version", pinned, "--locked"]))?;
    match version() {
        Some(v) if v == pinned => Ok(()),
        other => bail!("{name} still reports {other:?} after installing {pinned}"),
    }
}

/// Packages installed only for the tests, whose Debian service would start at
/// once with the packaged config: FastNetMon sniffing the host's interfaces and
/// (with its default `disable_usage_report = off`) reporting usage to the
/// internet, Prometheus listening on :9090. The tests run their own instances
/// inside lab namespaces, so the services are masked (a symlink to /dev/null,
/// only when nothing is there yet) before installing; `systemctl unmask` undoes it.
const TEST_ONLY_SERVICES: &[(&str, &str)] = &[("fastnetmon", "fastnetmon.service"), ("prometheus", "prometheus.service")];

/// Answers to the questions packages would ask (DEBIAN_FRONTEND=noninteractive
/// takes the defaults; these make the choice explicit and keep it if a later
/// install is interactive).
const DEBCONF: &[(&str, &str)] = &[
    // tshark pulls in wireshark-common, which asks whether non-root users may
    // capture (a setuid dumpcap); the tests run as root, so: no.
    ("tshark", "wireshark-common wireshark-common/install-setuid boolean false\n"),
];

fn preseed(to_install: &[&str]) -> Result<()> {
    for (pkg, answer) in DEBCONF {
        if !to_install.contains(pkg) {
            continue;
        }
        println!("+ debconf-set-selections <<< '{}'", answer.trim());
        let mut child = Command::new("debconf-set-selections")
            .stdin(std::process::Stdio::piped())
            .spawn()
            .context("could not start debconf-set-selections (package debconf)")?;
        std::io::Write::write_all(&mut child.stdin.take().context("stdin")?, answer.as_bytes())?;
        let status = child.wait()?;
        if !status.success() {
            bail!("debconf-set-selections failed ({status}) on {}", answer.trim());
        }
    }
    Ok(())
}

fn mask_test_only_services(to_install: &[&str]) -> Result<()> {
    for (pkg, unit) in TEST_ONLY_SERVICES {
        let link = std::path::Path::new("/etc/systemd/system").join(unit);
        if to_install.contains(pkg) && std::fs::symlink_metadata(&link).is_err() {
            println!("masking {unit} before installing {pkg}: the tests start their own {pkg} inside lab namespaces; the packaged service must not run on this host");
            std::fs::create_dir_all("/etc/systemd/system")?;
            std::os::unix::fs::symlink("/dev/null", &link).with_context(|| format!("masking {}", link.display()))?;
        }
    }
    Ok(())
}
