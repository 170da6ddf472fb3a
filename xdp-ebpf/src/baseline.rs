//! Baseline programs for benchmarks, built beside ampguard's program and
//! measured in the same run: `xdp_pass` returns XDP_PASS and does nothing
//! else (the floor of BPF_PROG_TEST_RUN); `xdp_count_drop` counts each packet
//! in a per-CPU array and drops it (the best any filter can do);
//! `xdp_gen_tx` returns XDP_TX: run with BPF_PROG_TEST_RUN in live-frames
//! mode it is an in-kernel packet generator that transmits each frame out of
//! the interface named in the context, each from a different reflector.
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

/// The generator's position in its source sequence, per CPU.
#[map]
static GEN_SEQ: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// Distinct IPv4 sources of the generator's frames (the bench's
/// tests/src/bench/live.rs mirrors these three and checks them against
/// frames this program wrote).
const GEN_SOURCES: u32 = 100_000;
/// Source k of a CPU is GEN_BASE + (k * GEN_STRIDE mod GEN_SOURCES): the
/// stride is coprime with GEN_SOURCES, so every 100,000 consecutive frames of
/// a CPU carry each source once, in an order that is not an address walk.
const GEN_STRIDE: u32 = 7_919;
/// 198.18.0.0, RFC 2544's benchmarking range (198.18.0.0/15 holds 131,072).
const GEN_BASE: u32 = 0xc612_0000;

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
pub fn xdp_gen_tx(ctx: XdpContext) -> u32 {
    rewrite_source(&ctx);
    xdp_action::XDP_TX
}

/// RFC 1624 (eqn. 3) for one 32-bit field: HC' = ~(~HC + ~m + m'), on 16-bit words.
#[inline(always)]
fn csum_replace4(csum: u16, old: u32, new: u32) -> u16 {
    let mut sum = (!csum) as u32 + (!(old >> 16) as u16) as u32 + (!(old as u16)) as u32 + (new >> 16) + (new & 0xffff);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// Rewrites the IPv4 source of an Ethernet/IPv4 (no options)/UDP frame to the
/// next of GEN_SOURCES addresses, fixing the IP and UDP checksums
/// incrementally. In live-frames mode the kernel copies the caller's frame
/// into a page only when the page pool first hands that page out
/// (net/bpf/test_run.c, xdp_test_run_init_page) and afterwards resets only
/// the frame's pointers (reset_ctx), so a recycled page still holds what this
/// program wrote the last time. The update reads the address and checksums
/// the frame holds now, whichever they are, so each frame stays valid either way.
#[inline(always)]
fn rewrite_source(ctx: &XdpContext) {
    let (data, end) = (ctx.data(), ctx.data_end());
    if data + 42 > end {
        return;
    }
    let p = data as *mut u8;
    // SAFETY: the 42 bytes from data are inside the frame (checked above).
    unsafe {
        if *p.add(12) != 0x08 || *p.add(13) != 0x00 || *p.add(14) != 0x45 || *p.add(23) != 17 {
            return;
        }
        let Some(seq) = GEN_SEQ.get_ptr_mut(0) else { return };
        let k = *seq;
        let mut next = k + GEN_STRIDE;
        if next >= GEN_SOURCES {
            next -= GEN_SOURCES;
        }
        *seq = next;
        let old = u32::from_be_bytes([*p.add(26), *p.add(27), *p.add(28), *p.add(29)]);
        let new = GEN_BASE + k;
        let ip_csum = u16::from_be_bytes([*p.add(24), *p.add(25)]);
        let ip_new = csum_replace4(ip_csum, old, new).to_be_bytes();
        *p.add(24) = ip_new[0];
        *p.add(25) = ip_new[1];
        // UDP's checksum covers the source through the pseudo-header; 0 means "none".
        let udp_csum = u16::from_be_bytes([*p.add(40), *p.add(41)]);
        if udp_csum != 0 {
            let mut u = csum_replace4(udp_csum, old, new);
            if u == 0 {
                u = 0xffff;
            }
            let u = u.to_be_bytes();
            *p.add(40) = u[0];
            *p.add(41) = u[1];
        }
        let n = new.to_be_bytes();
        *p.add(26) = n[0];
        *p.add(27) = n[1];
        *p.add(28) = n[2];
        *p.add(29) = n[3];
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
