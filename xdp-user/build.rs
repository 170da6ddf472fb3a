//! Builds the XDP programs (xdp-ebpf) for bpfel-unknown-none with the nightly
//! toolchain and bpf-linker, so that `cargo build` of the workspace builds both
//! sides; the objects are embedded in the `ampguard` binary. `cargo xtask setup`
//! installs what this needs.
//!
//! AYA_BUILD_SKIP=1 writes empty objects instead, for builds that never load a
//! program (the fuzz targets, which build with sanitizer flags): loading one
//! then fails with a parse error rather than a missing file at compile time.
fn main() -> anyhow::Result<()> {
    build_info();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../xdp-ebpf");
    let root = root.canonicalize()?;
    let root = root.to_str().expect("utf-8 path");
    if std::env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true")) {
        let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
        for name in ["xdp-ebpf", "xdp-baseline"] {
            std::fs::write(out.join(name), [])?;
        }
        println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
        return Ok(());
    }
    aya_build::build_ebpf([aya_build::Package { name: "xdp-ebpf", root_dir: root, ..Default::default() }], aya_build::Toolchain::default())
}

/// `AMPGUARD_COMMIT` (`git rev-parse --short HEAD`, `-dirty` when the sources
/// built into the binary differ from that commit; "unknown" outside a git
/// checkout) and `AMPGUARD_BUILD_DATE` (UTC, from SOURCE_DATE_EPOCH when set,
/// for reproducible builds). Re-run when HEAD, the branch or the index moves,
/// or those sources change, so the dirty flag stays true.
fn build_info() {
    let manifest = std::path::PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let workspace = manifest.parent().expect("xdp-user/ is inside the workspace").to_path_buf();
    let git = |args: &[&str]| -> Option<String> {
        let o = std::process::Command::new("git").arg("-C").arg(&workspace).args(args).output().ok()?;
        o.status.success().then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    // What the binary is built from (xdp-ebpf's changes already re-run this script).
    let sources = ["xdp-user", "xdp-common", "xdp-ebpf", "Cargo.toml", "Cargo.lock"];
    let commit = match git(&["rev-parse", "--short=12", "HEAD"]) {
        Some(c) if !c.is_empty() => {
            let mut status = vec!["status", "--porcelain", "--"];
            status.extend(sources);
            let dirty = git(&status).is_none_or(|s| !s.is_empty());
            let mut watch = vec![git(&["rev-parse", "--git-path", "HEAD"]), git(&["rev-parse", "--git-path", "index"])];
            if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
                watch.push(git(&["rev-parse", "--git-path", &branch]));
            }
            watch.push(git(&["rev-parse", "--git-path", "packed-refs"]));
            for p in watch.into_iter().flatten() {
                let p = if std::path::Path::new(&p).is_absolute() { std::path::PathBuf::from(p) } else { workspace.join(p) };
                // A path that does not exist would make cargo re-run this on every build.
                if p.exists() {
                    println!("cargo:rerun-if-changed={}", p.display());
                }
            }
            for s in sources {
                let p = if s.contains('.') { workspace.join(s) } else { workspace.join(s).join("src") };
                println!("cargo:rerun-if-changed={}", p.display());
            }
            println!("cargo:rerun-if-changed={}", manifest.join("Cargo.toml").display());
            if dirty {
                format!("{c}-dirty")
            } else {
                c
            }
        }
        _ => "unknown".to_string(),
    };
    let now = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map(|s| std::time::UNIX_EPOCH + std::time::Duration::from_secs(s))
        .unwrap_or_else(std::time::SystemTime::now);
    let date = humantime::format_rfc3339_seconds(now).to_string();
    println!("cargo:rustc-env=AMPGUARD_COMMIT={commit}");
    println!("cargo:rustc-env=AMPGUARD_BUILD_DATE={date}");
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
}
