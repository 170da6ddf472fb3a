//! Baseline programs for benchmarks, built beside ampguard's program and
//! measured in the same run: `xdp_pass` returns XDP_PASS and does nothing
//! else (the floor of BPF_PROG_TEST_RUN); `xdp_count_drop` counts each packet
//! in a per-CPU array and drops it (the best any filter can do);
//! `xdp_gen_tx` returns XDP_TX: run with BPF_PROG_TEST_RUN in live-frames
//! mode it is an in-kernel packet generator that transmits each frame out of
//! the interface named in the context.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::PerCpuArray,
    programs::XdpContext,
};

#[map]
static BASE_COUNT: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[xdp(frags)]
pub fn xdp_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[xdp(frags)]
pub fn xdp_count_drop(_ctx: XdpContext) -> u32 {
    if let Some(c) = BASE_COUNT.get_ptr_mut(0) {
        unsafe { *c += 1 };
    }
    xdp_action::XDP_DROP
}

#[xdp]
pub fn xdp_gen_tx(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_TX
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
