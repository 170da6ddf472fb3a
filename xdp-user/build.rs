//! Builds the XDP programs (xdp-ebpf) for bpfel-unknown-none with the nightly
//! toolchain and bpf-linker, so that `cargo build` of the workspace builds both
//! sides; the objects are embedded in the `ampguard` binary. `cargo xtask setup`
//! installs what this needs.
//!
//! AYA_BUILD_SKIP=1 writes empty objects instead, for builds that never load a
//! program (the fuzz targets, which build with sanitizer flags): loading one
//! then fails with a parse error rather than a missing file at compile time.
fn main() -> anyhow::Result<()> {
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
