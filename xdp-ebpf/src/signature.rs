//! Reflection signatures, checked in place at fixed offsets after the UDP
//! header; what each matches is documented in `xdp_common::signature`. Every
//! read is bounds-checked; a packet too short for a signature does not match.
//!
//! Reads are windows of at least 2 bytes: for a 1-byte read LLVM turns the
//! bounds check into `pkt_end > pkt`, from which the verifier learns no range
//! (kernel/bpf/verifier.c, find_good_pkt_pointers: "off == 0 &&
//! range_right_open ... doesn't give us any range").

use aya_ebpf::programs::XdpContext;
use xdp_common::{policy::Config, signature::*};

use crate::parse::read;

/// Offsets past this (from the frame start) are never read by a signature.
const MAX_SIG_OFFSET: usize = 1024;

/// BER length octets after a tag: the header size (tag + length), short form
/// or long form up to 4 length bytes.
#[inline(always)]
fn ber_header(len_byte: u8) -> Option<usize> {
    match len_byte {
        0..=0x7f => Some(2),
        0x81..=0x84 => Some(2 + (len_byte & 0x7f) as usize),
        _ => None,
    }
}

/// `p` = offset of the UDP payload, `plen` = payload length per the UDP header.
#[inline(always)]
pub fn matches(ctx: &XdpContext, vector: u8, p: usize, plen: usize, cfg: &Config) -> bool {
    if p > MAX_SIG_OFFSET {
        return false;
    }
    match vector {
        CHARGEN | QOTD => plen > 0,
        NTP => match read::<[u8; NTP_WINDOW]>(ctx, p) {
            Some(h) => h[0] & 7 == 6 || h[0] & 7 == 7,
            None => false,
        },
        DNS => dns(ctx, p, plen, cfg),
        MEMCACHED => memcached(ctx, p),
        SSDP => read::<[u8; 15]>(ctx, p) == Some(*SSDP_OK),
        CLDAP => cldap(ctx, p),
        SNMP => snmp(ctx, p),
        _ => false,
    }
}

#[inline(always)]
fn dns(ctx: &XdpContext, p: usize, plen: usize, cfg: &Config) -> bool {
    let Some(h) = read::<[u8; 12]>(ctx, p) else { return false };
    if h[2] & 0x80 == 0 {
        return false; // a query, not a response
    }
    if plen > cfg.dns_large_bytes as usize {
        return true;
    }
    let ancount = u16::from_be_bytes([h[6], h[7]]);
    if cfg.dns_many_answers != 0 && ancount >= cfg.dns_many_answers {
        return true;
    }
    if u16::from_be_bytes([h[4], h[5]]) == 0 {
        return false;
    }
    // Walk the first question's name (uncompressed labels) to its QTYPE.
    let mut off = p + 12;
    for _ in 0..=DNS_MAX_LABELS {
        if off > MAX_SIG_OFFSET {
            return false;
        }
        let Some([l, _]) = read::<[u8; 2]>(ctx, off) else { return false };
        if l == 0 {
            return match read::<[u8; 2]>(ctx, off + 1) {
                Some(t) => u16::from_be_bytes(t) == 255,
                None => false,
            };
        }
        if l >= 64 {
            return false; // a compression pointer or garbage: not an ordinary question
        }
        off += 1 + l as usize;
    }
    false
}

#[inline(always)]
fn memcached(ctx: &XdpContext, p: usize) -> bool {
    // Frame header: request id, sequence, datagram count, reserved (0).
    let Some(h) = read::<[u8; 13]>(ctx, p) else { return false };
    if h[6] != 0 || h[7] != 0 {
        return false;
    }
    if &h[8..13] == b"STAT " {
        return true;
    }
    matches!(read::<[u8; 14]>(ctx, p), Some(v) if &v[8..14] == b"VALUE ")
}

/// SEQUENCE { messageID INTEGER (1-4 bytes), [APPLICATION 4] searchResEntry }:
/// all within the first CLDAP_WINDOW bytes.
#[inline(always)]
fn cldap(ctx: &XdpContext, p: usize) -> bool {
    let Some(w) = read::<[u8; CLDAP_WINDOW]>(ctx, p) else { return false };
    if w[0] != 0x30 {
        return false;
    }
    let Some(hdr) = ber_header(w[1]) else { return false };
    // hdr <= 6, so every index below stays inside the window.
    if w[hdr & 7] != 0x02 || w[(hdr + 1) & 7] == 0 || w[(hdr + 1) & 7] > 4 {
        return false;
    }
    w[(hdr + 2 + w[(hdr + 1) & 7] as usize) & 15] == 0x64
}

/// SEQUENCE { version INTEGER (1 byte), community OCTET STRING (at most
/// SNMP_MAX_COMMUNITY bytes), GetResponse-PDU [2] }: within SNMP_WINDOW bytes.
#[inline(always)]
fn snmp(ctx: &XdpContext, p: usize) -> bool {
    let Some(w) = read::<[u8; SNMP_WINDOW]>(ctx, p) else { return false };
    if w[0] != 0x30 {
        return false;
    }
    let Some(hdr) = ber_header(w[1]) else { return false };
    let h = hdr & 7;
    if w[h] != 0x02 || w[h + 1] != 0x01 || w[h + 3] != 0x04 || w[h + 4] as usize > SNMP_MAX_COMMUNITY {
        return false;
    }
    w[(h + 5 + w[h + 4] as usize) & 63] == 0xa2
}
