//! The reference model: the XDP program's decision written as plain Rust over
//! byte slices, from the same tables. The differential test (tests/) runs
//! generated packets through both and requires the same verdict every time.
//!
//! It is written from the contract in xdp-ebpf/src/parse.rs and verdict.rs,
//! not by copying their code: slices and early returns here, bounds-checked
//! pointer reads there. Shared on purpose: the token bucket maths
//! (`xdp_common::bucket`) and the vector ids.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use ipnet::IpNet;
use xdp_common::{
    bucket::{self, BucketState},
    counters::{reason, verdict},
    policy::NO_SLOT,
    vector::{self, MAX_VECTORS},
};

use crate::dataplane::rules::{Conditions, DpPolicy, Mode, Rule, Verb};

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;

/// What the program did with a packet and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Met no policy; `reason::*`.
    Reason(usize),
    /// Met a policy: slot, vector, `verdict::*`.
    Verdict { slot: u32, vector: u8, verdict: usize },
}

impl Outcome {
    pub fn action(&self) -> u32 {
        match self {
            Outcome::Verdict { verdict: v, .. } if *v == verdict::DROPPED || *v == verdict::RATE_LIMITED => XDP_DROP,
            _ => XDP_PASS,
        }
    }
}

/// What the parser finds (see xdp-ebpf/src/parse.rs for the contract).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// `l4`: offset of the UDP header.
    Udp {
        src: IpAddr,
        dst: IpAddr,
        sport: u16,
        l4: usize,
    },
    Fragment {
        src: IpAddr,
        dst: IpAddr,
    },
    NotUdp,
    ParseError,
}

const MAX_EXT_HEADERS: usize = 8;
const MAX_L4_OFFSET: usize = 512;

fn be16(p: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*p.get(off)?, *p.get(off + 1)?]))
}

pub fn parse(p: &[u8]) -> Parsed {
    let mut off = 14;
    let Some(mut ethertype) = be16(p, 12) else { return Parsed::ParseError };
    let mut tags = 0;
    while ethertype == 0x8100 || ethertype == 0x88a8 {
        tags += 1;
        if tags > 2 {
            return Parsed::ParseError;
        }
        let Some(inner) = be16(p, off + 2) else { return Parsed::ParseError };
        ethertype = inner;
        off += 4;
    }
    match ethertype {
        0x0800 => parse_v4(p, off),
        0x86dd => parse_v6(p, off),
        _ => Parsed::NotUdp,
    }
}

fn parse_v4(p: &[u8], off: usize) -> Parsed {
    let Some(h) = p.get(off..off + 20) else { return Parsed::ParseError };
    let ihl = (h[0] & 15) as usize;
    if h[0] >> 4 != 4 || ihl < 5 {
        return Parsed::ParseError;
    }
    let src = IpAddr::V4(Ipv4Addr::new(h[12], h[13], h[14], h[15]));
    let dst = IpAddr::V4(Ipv4Addr::new(h[16], h[17], h[18], h[19]));
    if u16::from_be_bytes([h[6], h[7]]) & 0x1fff != 0 {
        return Parsed::Fragment { src, dst };
    }
    if h[9] != 17 {
        return Parsed::NotUdp;
    }
    match be16(p, off + ihl * 4) {
        Some(sport) => Parsed::Udp { src, dst, sport, l4: off + ihl * 4 },
        None => Parsed::ParseError,
    }
}

fn parse_v6(p: &[u8], off: usize) -> Parsed {
    let Some(h) = p.get(off..off + 40) else { return Parsed::ParseError };
    if h[0] >> 4 != 6 {
        return Parsed::ParseError;
    }
    let addr = |b: &[u8]| IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(b).unwrap()));
    let (src, dst) = (addr(&h[8..24]), addr(&h[24..40]));
    let mut next = h[6];
    let mut off = off + 40;
    // One step per extension header, and one more for the header after the
    // last of them: MAX_EXT_HEADERS headers pass, one more is a parse error.
    for _ in 0..=MAX_EXT_HEADERS {
        if off >= MAX_L4_OFFSET {
            return Parsed::ParseError;
        }
        match next {
            17 => {
                return match be16(p, off) {
                    Some(sport) => Parsed::Udp { src, dst, sport, l4: off },
                    None => Parsed::ParseError,
                }
            }
            0 | 43 | 60 => {
                let Some(e) = p.get(off..off + 2) else { return Parsed::ParseError };
                next = e[0];
                off += (e[1] as usize + 1) * 8;
            }
            44 => {
                let Some(e) = p.get(off..off + 4) else { return Parsed::ParseError };
                if u16::from_be_bytes([e[2], e[3]]) >> 3 != 0 {
                    return Parsed::Fragment { src, dst };
                }
                next = e[0];
                off += 8;
            }
            _ => return Parsed::NotUdp,
        }
    }
    Parsed::ParseError
}

/// The tables the model decides from: a plain copy of what the controller put
/// in the maps, with longest-prefix matches done by brute force.
pub struct Model {
    pub ports: HashMap<u16, u8>,
    pub victims: Vec<(IpNet, u32)>,
    pub policies: HashMap<u32, DpPolicy>,
    pub allow: Vec<IpNet>,
    pub now_ns: u64,
    /// DNS signature thresholds (as in `AG_CONFIG`).
    pub dns_large_bytes: u16,
    pub dns_many_answers: u16,
    buckets: HashMap<(u32, u8), BucketState>,
}

impl Default for Model {
    fn default() -> Self {
        let c = xdp_common::policy::Config::DEFAULT;
        Self {
            ports: HashMap::new(),
            victims: Vec::new(),
            policies: HashMap::new(),
            allow: Vec::new(),
            now_ns: 0,
            dns_large_bytes: c.dns_large_bytes,
            dns_many_answers: c.dns_many_answers,
            buckets: HashMap::new(),
        }
    }
}

impl Model {
    /// Size and signature conditions (see xdp_common::signature). The payload
    /// length comes from the UDP header; a packet without a whole UDP header
    /// (or a fragment) has length 0 and no signature.
    fn conditions_hold(&self, pkt: &[u8], when: &Conditions, vector: u8, l4: Option<usize>) -> bool {
        let (payload, plen) = match l4 {
            Some(o) if pkt.len() >= o + 8 => (&pkt[o + 8..], (u16::from_be_bytes([pkt[o + 4], pkt[o + 5]]) as usize).saturating_sub(8)),
            _ => (&pkt[..0], 0),
        };
        let sized = when.min_bytes.is_some() || when.max_bytes.is_some();
        if sized && (plen < when.min_bytes.unwrap_or(0) as usize || plen > when.max_bytes.unwrap_or(u16::MAX) as usize) {
            return false;
        }
        if when.signature {
            return match l4 {
                Some(o) if pkt.len() >= o + 8 => {
                    signature_matches(vector, payload, o + 8, plen, self.dns_large_bytes, self.dns_many_answers)
                }
                _ => false,
            };
        }
        true
    }

    fn victim_slot(&self, dst: IpAddr) -> u32 {
        self.victims.iter().filter(|(n, _)| n.contains(&dst)).max_by_key(|(n, _)| n.prefix_len()).map(|(_, s)| *s).unwrap_or(NO_SLOT)
    }

    /// Forget a policy's bucket state (the data plane made fresh limiters).
    pub fn reset_buckets(&mut self, slot: u32) {
        self.buckets.retain(|(s, _), _| *s != slot);
    }

    /// For coverage accounting: whether the packet meets a conditional rule with
    /// a signature, and if so whether its conditions hold (no state changes).
    pub fn cond_would_match(&self, pkt: &[u8]) -> Option<bool> {
        let (dst, vector, l4) = match parse(pkt) {
            Parsed::Udp { dst, sport, l4, .. } => (dst, *self.ports.get(&sport)?, Some(l4)),
            Parsed::Fragment { dst, .. } => (dst, vector::FRAGMENT, None),
            _ => return None,
        };
        let policy = self.policies.get(&self.victim_slot(dst))?;
        match policy.rules.iter().find(|(v, _)| *v == vector)?.1 {
            Rule::Cond(c) if c.when.signature => Some(self.conditions_hold(pkt, &c.when, vector, l4)),
            _ => None,
        }
    }

    /// Decide one packet, updating bucket state like the program does.
    pub fn decide(&mut self, pkt: &[u8]) -> Outcome {
        let len = pkt.len() as u64;
        let (src, dst, vector, l4) = match parse(pkt) {
            Parsed::ParseError => return Outcome::Reason(reason::PARSE_ERROR),
            Parsed::NotUdp => return Outcome::Reason(reason::NOT_UDP),
            Parsed::Fragment { src, dst } => (src, dst, vector::FRAGMENT, None),
            Parsed::Udp { src, dst, sport, l4 } => match self.ports.get(&sport) {
                Some(&v) if v != vector::NONE && (v as usize) < MAX_VECTORS => (src, dst, v, Some(l4)),
                _ => return Outcome::Reason(reason::NO_VECTOR),
            },
        };
        let slot = self.victim_slot(dst);
        let Some(policy) = self.policies.get(&slot) else { return Outcome::Reason(reason::NO_POLICY) };
        if self.allow.iter().any(|n| n.contains(&src)) {
            return Outcome::Reason(reason::ALLOWLISTED);
        }
        if policy.expires_ns != 0 && self.now_ns >= policy.expires_ns {
            return Outcome::Reason(reason::EXPIRED);
        }
        let rule = policy.rules.iter().find(|(v, _)| *v == vector).map(|(_, r)| *r).unwrap_or(Rule::Pass);
        let verb = match rule {
            Rule::Pass => Verb::Pass,
            Rule::Drop => Verb::Drop,
            Rule::Limit(_) => Verb::Limit,
            Rule::Cond(c) => {
                if self.conditions_hold(pkt, &c.when, vector, l4) {
                    c.on_match
                } else {
                    c.otherwise
                }
            }
        };
        let mut v = match verb {
            Verb::Pass => verdict::PASSED,
            Verb::Drop => verdict::DROPPED,
            Verb::Limit => {
                let l = rule.limit().expect("a limiting rule has a limit");
                let st = self.buckets.entry((slot, vector)).or_default();
                if bucket::admit(&l.to_cfg(), st, self.now_ns, len) {
                    verdict::PASSED
                } else {
                    verdict::RATE_LIMITED
                }
            }
        };
        if policy.mode == Mode::Monitor && v != verdict::PASSED {
            v = verdict::MONITORED;
        }
        Outcome::Verdict { slot, vector, verdict: v }
    }
}

/// Frame offsets past this are never read by a signature (as in the program).
pub const MAX_SIG_OFFSET: usize = 1024;

/// The reflection signatures over a byte slice (`payload` = everything after
/// the UDP header, which starts at frame offset `at`; `plen` = the UDP
/// header's payload length).
pub fn signature_matches(vector: u8, payload: &[u8], at: usize, plen: usize, dns_large: u16, dns_many: u16) -> bool {
    if at > MAX_SIG_OFFSET {
        return false;
    }
    use xdp_common::signature::*;
    let ber_header = |b: u8| match b {
        0..=0x7f => Some(2usize),
        0x81..=0x84 => Some(2 + (b & 0x7f) as usize),
        _ => None,
    };
    match vector {
        CHARGEN | QOTD => plen > 0,
        NTP => payload.len() >= NTP_WINDOW && matches!(payload[0] & 7, 6 | 7),
        SSDP => payload.starts_with(SSDP_OK),
        MEMCACHED => {
            payload.len() >= 13
                && payload[6] == 0
                && payload[7] == 0
                && (&payload[8..13] == b"STAT " || payload.get(8..14) == Some(b"VALUE "))
        }
        DNS => {
            if payload.len() < 12 || payload[2] & 0x80 == 0 {
                return false;
            }
            if plen > dns_large as usize {
                return true;
            }
            let ancount = u16::from_be_bytes([payload[6], payload[7]]);
            if dns_many != 0 && ancount >= dns_many {
                return true;
            }
            if u16::from_be_bytes([payload[4], payload[5]]) == 0 {
                return false;
            }
            let mut i = 12;
            for _ in 0..=DNS_MAX_LABELS {
                if at + i > MAX_SIG_OFFSET || payload.len() < i + 2 {
                    return false;
                }
                let l = payload[i];
                if l == 0 {
                    return payload.get(i + 1..i + 3) == Some(&[0, 255]);
                }
                if l >= 64 {
                    return false;
                }
                i += 1 + l as usize;
            }
            false
        }
        CLDAP => {
            let Some(w) = payload.get(..CLDAP_WINDOW) else { return false };
            if w[0] != 0x30 {
                return false;
            }
            let Some(h) = ber_header(w[1]) else { return false };
            w[h] == 0x02 && (1..=4).contains(&w[h + 1]) && w[h + 2 + w[h + 1] as usize] == 0x64
        }
        SNMP => {
            let Some(w) = payload.get(..SNMP_WINDOW) else { return false };
            if w[0] != 0x30 {
                return false;
            }
            let Some(h) = ber_header(w[1]) else { return false };
            w[h] == 0x02
                && w[h + 1] == 0x01
                && w[h + 3] == 0x04
                && (w[h + 4] as usize) <= SNMP_MAX_COMMUNITY
                && w[h + 5 + w[h + 4] as usize] == 0xa2
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::PacketBuilder;

    #[test]
    fn parses_the_documented_shapes() {
        let udp = PacketBuilder::udp4("198.51.100.7:11211", "203.0.113.10:40001").payload(10).build();
        assert!(matches!(parse(&udp), Parsed::Udp { sport: 11211, .. }));
        let v6 = PacketBuilder::udp6("[2001:db8:1::7]:53", "[2001:db8:2::10]:4000").ext_headers(&[0, 60]).build();
        assert!(matches!(parse(&v6), Parsed::Udp { sport: 53, .. }));
        let frag = PacketBuilder::udp4("198.51.100.7:11211", "203.0.113.10:1").fragment_offset(185).build();
        assert!(matches!(parse(&frag), Parsed::Fragment { .. }));
        let qinq = PacketBuilder::udp4("198.51.100.7:123", "203.0.113.10:1").vlans(&[(0x88a8, 10), (0x8100, 20)]).build();
        assert!(matches!(parse(&qinq), Parsed::Udp { sport: 123, .. }));
        let three = PacketBuilder::udp4("198.51.100.7:123", "203.0.113.10:1").vlans(&[(0x88a8, 10), (0x8100, 20), (0x8100, 30)]).build();
        assert_eq!(parse(&three), Parsed::ParseError);
        for cut in 0..udp.len() {
            let p = parse(&udp[..cut]);
            assert!(cut >= 14 + 20 + 2 || p == Parsed::ParseError, "cut {cut}: {p:?}");
        }
    }
}
