//! Builds the XDP program (xdp-ebpf) for bpfel-unknown-none with the nightly
//! toolchain and bpf-linker, so that `cargo build` of the workspace builds both
//! sides; the object is embedded in the `ampguard` binary. `cargo xtask setup`
//! installs what this needs. AYA_BUILD_SKIP=1 skips it (host-only checks).
fn main() -> anyhow::Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../xdp-ebpf");
    let root = root.canonicalize()?;
    let root = root.to_str().expect("utf-8 path");
    aya_build::build_ebpf(
        [aya_build::Package { name: "xdp-ebpf", root_dir: root, ..Default::default() }],
        aya_build::Toolchain::default(),
    )
}
