//! Header parsing.
//!
//! Contract (after xdp-tools' parsing helpers): every read is bounds-checked
//! against `data_end` first, by [`ptr_at`] (which returns `None` when the
//! packet is too short) or, for the fixed layouts, by one check covering all
//! the bytes read from them (the fast path of [`parse`], the IP header behind
//! [`L3`]); a parse function either returns what the packet holds or
//! [`Parsed::ParseError`]. Nothing here drops anything.
//!
//! Limits (`xdp_common::wire`, implemented again by the reference model in
//! xdp-user/src/model.rs):
//! - Ethernet with up to [`MAX_VLAN_TAGS`] VLAN tags (802.1Q 0x8100, 802.1ad
//!   0x88a8); one more tag is a parse error (passed).
//! - IPv4 with options (IHL 5..15); IHL < 5 or a version other than 4 is a parse
//!   error. Length fields other than the IHL are not trusted or needed.
//! - IPv6 with up to [`MAX_EXT_HEADERS`] extension headers (hop-by-hop, routing,
//!   destination options, fragment); a longer chain, or headers reaching past
//!   [`MAX_L4_OFFSET`], is a parse error. Other next headers (AH, ESP, ...)
//!   are "not UDP".
//! - A non-first fragment (IPv4 offset != 0, or an IPv6 fragment header with
//!   offset != 0) carries no UDP header: it is reported as a fragment.

use aya_ebpf::programs::XdpContext;
use xdp_common::wire::{is_vlan, ETH_P_IPV4, ETH_P_IPV6, IPPROTO_UDP, MAX_EXT_HEADERS, MAX_L4_OFFSET, MAX_VLAN_TAGS};

// parse_general unrolls the VLAN tags by hand (for the verifier): two of them.
const _: () = assert!(MAX_VLAN_TAGS == 2);

/// The IP header and its family. `hdr` points at the IP header and was
/// bounds-checked by the parser for the whole fixed header (20 bytes for IPv4,
/// 40 for IPv6), so the addresses are read from it without a second check.
/// The later stages must use this pointer, not one rebuilt from `ctx.data()`:
/// the verifier knows the range of the register that was checked, and a
/// reloaded `ctx.data()` would need the check (and the reload) again.
/// Addresses are read only by the stages that need them (most packets never do).
#[derive(Clone, Copy)]
pub struct L3 {
    hdr: *const u8,
    pub v6: bool,
}

pub enum Parsed {
    /// `l4`: offset of the UDP header.
    Udp {
        l3: L3,
        l4: usize,
        sport: u16,
    },
    Fragment {
        l3: L3,
    },
    NotUdp,
    ParseError,
}

#[inline(always)]
fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*const T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *const T)
}

#[inline(always)]
pub fn read<T: Copy>(ctx: &XdpContext, offset: usize) -> Option<T> {
    // Safety: ptr_at checked the bounds; packet data has no alignment guarantee.
    ptr_at::<T>(ctx, offset).map(|p| unsafe { core::ptr::read_unaligned(p) })
}

#[inline(always)]
pub fn be16(ctx: &XdpContext, offset: usize) -> Option<u16> {
    read::<[u8; 2]>(ctx, offset).map(u16::from_be_bytes)
}

impl L3 {
    /// Safety: `off + size_of::<T>()` is within the fixed header checked by the parser.
    #[inline(always)]
    unsafe fn at<T: Copy>(&self, off: usize) -> T {
        unsafe { core::ptr::read_unaligned(self.hdr.add(off) as *const T) }
    }
    /// Destination address, network byte order.
    #[inline(always)]
    pub fn dst4(&self) -> [u8; 4] {
        // Safety: bytes 16..20 of a checked IPv4 header.
        unsafe { self.at(16) }
    }
    #[inline(always)]
    pub fn src4(&self) -> [u8; 4] {
        // Safety: bytes 12..16 of a checked IPv4 header.
        unsafe { self.at(12) }
    }
    #[inline(always)]
    pub fn dst6(&self) -> [u8; 16] {
        // Safety: bytes 24..40 of a checked IPv6 header.
        unsafe { self.at(24) }
    }
    #[inline(always)]
    pub fn src6(&self) -> [u8; 16] {
        // Safety: bytes 8..24 of a checked IPv6 header.
        unsafe { self.at(8) }
    }
}

/// Ethernet without VLAN tags (14) + IPv4 without options (20) + the UDP
/// header (8): the layout of almost every packet, parsed by [`parse`] with one
/// bounds check; anything else (tags, options, IPv6, short frames) goes through
/// [`parse_general`], which gives the same answer for these packets too.
const FAST_LEN: usize = 14 + 20 + 8;

#[inline(always)]
pub fn parse(ctx: &XdpContext) -> Parsed {
    let data = ctx.data();
    if data + FAST_LEN <= ctx.data_end() {
        let p = data as *const u8;
        // Safety: the FAST_LEN bytes at p are inside the packet (checked above).
        unsafe {
            let proto = u16::from_be_bytes(core::ptr::read_unaligned(p.add(12) as *const [u8; 2]));
            // 0x45: version 4, IHL 5 (no options).
            if proto == ETH_P_IPV4 && *p.add(14) == 0x45 {
                let h = p.add(14);
                let frag = u16::from_be_bytes(core::ptr::read_unaligned(h.add(6) as *const [u8; 2]));
                let l3 = L3 { hdr: h, v6: false };
                if frag & 0x1fff != 0 {
                    return Parsed::Fragment { l3 };
                }
                if *h.add(9) != IPPROTO_UDP {
                    return Parsed::NotUdp;
                }
                let sport = u16::from_be_bytes(core::ptr::read_unaligned(h.add(20) as *const [u8; 2]));
                return Parsed::Udp { l3, l4: 14 + 20, sport };
            }
        }
    }
    parse_general(ctx)
}

/// Any layout the contract above allows.
#[inline(always)]
fn parse_general(ctx: &XdpContext) -> Parsed {
    let Some(mut proto) = be16(ctx, 12) else { return Parsed::ParseError };
    let mut off = 14;
    // MAX_VLAN_TAGS (two) tags at most, unrolled for the verifier.
    if is_vlan(proto) {
        let Some(p) = be16(ctx, off + 2) else { return Parsed::ParseError };
        proto = p;
        off += 4;
        if is_vlan(proto) {
            let Some(p) = be16(ctx, off + 2) else { return Parsed::ParseError };
            proto = p;
            off += 4;
            if is_vlan(proto) {
                return Parsed::ParseError;
            }
        }
    }
    match proto {
        ETH_P_IPV4 => parse_ipv4(ctx, off),
        ETH_P_IPV6 => parse_ipv6(ctx, off),
        _ => Parsed::NotUdp,
    }
}

/// Reads the three fields it needs in place (copying the header costs more).
#[inline(always)]
fn parse_ipv4(ctx: &XdpContext, off: usize) -> Parsed {
    let Some(h) = ptr_at::<[u8; 20]>(ctx, off) else { return Parsed::ParseError };
    let h = h as *const u8;
    // Safety: the 20 bytes at h are inside the packet (checked above).
    let (b0, frag, proto) = unsafe { (*h, u16::from_be_bytes([*h.add(6), *h.add(7)]), *h.add(9)) };
    let ihl = (b0 & 0x0f) as usize;
    if b0 >> 4 != 4 || ihl < 5 {
        return Parsed::ParseError;
    }
    let l3 = L3 { hdr: h, v6: false };
    if frag & 0x1fff != 0 {
        return Parsed::Fragment { l3 };
    }
    if proto != IPPROTO_UDP {
        return Parsed::NotUdp;
    }
    match be16(ctx, off + ihl * 4) {
        Some(sport) => Parsed::Udp { l3, l4: off + ihl * 4, sport },
        None => Parsed::ParseError,
    }
}

#[inline(always)]
fn parse_ipv6(ctx: &XdpContext, off: usize) -> Parsed {
    let Some(h) = ptr_at::<[u8; 40]>(ctx, off) else { return Parsed::ParseError };
    let h = h as *const u8;
    // Safety: the 40 bytes at h are inside the packet (checked above).
    let (b0, mut next) = unsafe { (*h, *h.add(6)) };
    if b0 >> 4 != 6 {
        return Parsed::ParseError;
    }
    let l3 = L3 { hdr: h, v6: true };
    let mut off = off + 40;
    // One step per extension header, and one more for the header after the
    // last of them, where only UDP may follow: MAX_EXT_HEADERS headers pass,
    // one more (a non-first fragment's included) is a parse error.
    for i in 0..=MAX_EXT_HEADERS {
        if off >= MAX_L4_OFFSET {
            return Parsed::ParseError;
        }
        match next {
            IPPROTO_UDP => return udp(ctx, l3, off),
            0 | 43 | 44 | 60 if i == MAX_EXT_HEADERS => return Parsed::ParseError,
            // Hop-by-hop, routing, destination options: RFC 8200 section 4.
            0 | 43 | 60 => {
                let Some(e) = read::<[u8; 2]>(ctx, off) else { return Parsed::ParseError };
                next = e[0];
                off += (e[1] as usize + 1) * 8;
            }
            // Fragment header, RFC 8200 section 4.5.
            44 => {
                let Some(e) = read::<[u8; 4]>(ctx, off) else { return Parsed::ParseError };
                if u16::from_be_bytes([e[2], e[3]]) >> 3 != 0 {
                    return Parsed::Fragment { l3 };
                }
                next = e[0];
                off += 8;
            }
            _ => return Parsed::NotUdp,
        }
    }
    Parsed::ParseError
}

#[inline(always)]
fn udp(ctx: &XdpContext, l3: L3, off: usize) -> Parsed {
    match be16(ctx, off) {
        Some(sport) => Parsed::Udp { l3, l4: off, sport },
        None => Parsed::ParseError,
    }
}
