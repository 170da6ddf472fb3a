//! Reflection signatures, checked in place at fixed offsets after the UDP
//! header. What each matches is `xdp_common::signature`'s predicates, written
//! once there and unit-tested on the host; this file does only the
//! bounds-checked reads and hands them the bytes. A packet too short for a
//! signature does not match.
//!
//! Reads are windows of at least 2 bytes: for a 1-byte read LLVM turns the
//! bounds check into `pkt_end > pkt`, from which the verifier learns no range
//! (kernel/bpf/verifier.c, find_good_pkt_pointers: "off == 0 &&
//! range_right_open ... doesn't give us any range").

use aya_ebpf::programs::XdpContext;
use xdp_common::{policy::Config, signature::*};

use crate::parse::read;

/// `p` = offset of the UDP payload, `plen` = payload length per the UDP header.
#[inline(always)]
pub fn matches(ctx: &XdpContext, vector: u8, p: usize, plen: usize, cfg: &Config) -> bool {
    if p > MAX_SIG_OFFSET {
        return false;
    }
    match vector {
        CHARGEN | QOTD => plen > 0,
        NTP => matches!(read::<[u8; NTP_WINDOW]>(ctx, p), Some(h) if ntp(&h)),
        DNS => dns(ctx, p, plen, cfg),
        MEMCACHED => memcached(ctx, p),
        SSDP => matches!(read::<[u8; 15]>(ctx, p), Some(h) if ssdp(&h)),
        CLDAP => matches!(read::<[u8; CLDAP_WINDOW]>(ctx, p), Some(w) if cldap(&w)),
        SNMP => matches!(read::<[u8; SNMP_WINDOW]>(ctx, p), Some(w) if snmp(&w)),
        _ => false,
    }
}

#[inline(always)]
fn dns(ctx: &XdpContext, p: usize, plen: usize, cfg: &Config) -> bool {
    let Some(h) = read::<[u8; DNS_HEADER]>(ctx, p) else { return false };
    match dns_header(&h, plen, cfg.dns_large_bytes, cfg.dns_many_answers) {
        Step::Match => return true,
        Step::NoMatch => return false,
        Step::More => {}
    }
    // Walk the first question's name to its QTYPE: DNS_MAX_LABELS labels, and
    // one more step for the root label after the last of them.
    let mut off = p + DNS_HEADER;
    for _ in 0..=DNS_MAX_LABELS {
        if off > MAX_SIG_OFFSET {
            return false;
        }
        let Some([l, _]) = read::<[u8; 2]>(ctx, off) else { return false };
        match dns_label(l) {
            Label::Root => return matches!(read::<[u8; 2]>(ctx, off + 1), Some(t) if dns_qtype_any(t)),
            Label::Skip(n) => off += n,
            Label::Other => return false,
        }
    }
    false
}

#[inline(always)]
fn memcached(ctx: &XdpContext, p: usize) -> bool {
    let Some(h) = read::<[u8; MEMCACHED_STAT_WINDOW]>(ctx, p) else { return false };
    match memcached_stat(&h) {
        Step::Match => true,
        Step::NoMatch => false,
        Step::More => matches!(read::<[u8; MEMCACHED_VALUE_WINDOW]>(ctx, p), Some(v) if memcached_value(&v)),
    }
}
