//! Code generation options for the XDP program, passed to bpf-linker (which
//! runs LLVM's BPF backend on the linked bitcode).
//!
//! `+allows-misaligned-mem-access` (LLVM 22): without it the BPF backend
//! assumes strict alignment and splits every `read_unaligned` of a packet
//! field into byte loads, shifts and ORs (an IPv4 address: 4 loads and 6 ALU
//! instructions instead of one load). The kernel's verifier allows misaligned
//! packet and map value access on architectures with efficient unaligned
//! access (x86-64, arm64: CONFIG_HAVE_EFFICIENT_UNALIGNED_ACCESS); stack
//! accesses must still be aligned, which the verifier checks at load time.
fn main() {
    // Only for the BPF target: a host build of this crate (xdp-user's build
    // dependency) links nothing with bpf-linker.
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("bpf") {
        println!("cargo:rustc-link-arg-bins=--cpu-features=+allows-misaligned-mem-access");
    }
}
