//! ampguard's XDP program: stops reflection/amplification floods per victim.
//!
//! The pipeline, one stage per file, read top to bottom:
//! parse (`parse.rs`) -> classify the vector and find the victim's policy
//! (`classify.rs`) -> decide: allowlist, rule conditions (`signature.rs`),
//! expiry, action (`verdict.rs`) -> count, and meter what reaches the
//! victim for built-in detection (`meter.rs`).
//!
//! Fail open: a packet the program cannot parse is passed and counted as
//! `parse_error`; nothing is dropped unless a policy's rule says so.
//!
//! Needs Linux 5.18+ (`xdp.frags`, commit c2f2cdbeffda "bpf: introduce
//! BPF_F_XDP_HAS_FRAGS flag in prog_flags loading the ebpf program");
//! bpf_ktime_get_coarse_ns needs 5.11 and bounded loops 5.3.
#![no_std]
#![no_main]
// atomic_xadd and atomic_cxchg: the counters' folds and the limiters (verdict.rs).
#![allow(internal_features)]
#![feature(core_intrinsics)]

mod classify;
mod maps;
mod meter;
mod parse;
mod signature;
mod verdict;

use aya_ebpf::{macros::xdp, programs::XdpContext};

/// Declared `frags` so that drivers which require a multi-buffer aware program
/// for jumbo MTUs accept it in native mode; headers are parsed in the linear part.
#[xdp(frags)]
pub fn ampguard(ctx: XdpContext) -> u32 {
    verdict::decide(&ctx)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
