//! The reference model: the XDP program's decision written as plain Rust over
//! byte slices, from the same tables. The differential test (tests/) runs
//! generated packets through both and requires the same verdict every time.
//!
//! The parser and the signatures are written from the RFCs and the
//! protocols' specifications (cited in place), within the contract's limits
//! (`xdp_common::wire`, the windows in `xdp_common::signature`), not by
//! copying the program or calling `xdp_common::signature`'s predicates: two
//! independent readings, so that the differential test finds a bug in either.
//! Shared on purpose: the token bucket maths (`xdp_common::bucket`), the
//! vector ids and the limits.

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
    wire,
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

fn be16(p: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*p.get(off)?, *p.get(off + 1)?]))
}

/// Ethernet II (RFC 894, RFC 2464): destination, source, EtherType at octet
/// 12. A VLAN tag (IEEE 802.1Q, TPID 0x8100; 802.1ad, 0x88a8) inserts 4 octets
/// (TPID, TCI) before the EtherType; the contract allows `MAX_VLAN_TAGS`.
pub fn parse(p: &[u8]) -> Parsed {
    let mut off = 14;
    let Some(mut ethertype) = be16(p, 12) else { return Parsed::ParseError };
    let mut tags = 0;
    while ethertype == 0x8100 || ethertype == 0x88a8 {
        tags += 1;
        if tags > wire::MAX_VLAN_TAGS {
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

/// RFC 791 section 3.1: version and IHL (32-bit words, at least 5) in octet 0,
/// flags and fragment offset in octets 6-7 (offset: the low 13 bits),
/// protocol in octet 9, addresses at 12 and 16; the header is IHL * 4 octets.
fn parse_v4(p: &[u8], off: usize) -> Parsed {
    let Some(h) = p.get(off..off + 20) else { return Parsed::ParseError };
    let (version, ihl) = (h[0] >> 4, usize::from(h[0] & 0x0f));
    if version != 4 || ihl < 5 {
        return Parsed::ParseError;
    }
    let src = IpAddr::V4(Ipv4Addr::new(h[12], h[13], h[14], h[15]));
    let dst = IpAddr::V4(Ipv4Addr::new(h[16], h[17], h[18], h[19]));
    let fragment_offset = u16::from_be_bytes([h[6], h[7]]) & 0x1fff;
    if fragment_offset != 0 {
        return Parsed::Fragment { src, dst };
    }
    if h[9] != 17 {
        return Parsed::NotUdp;
    }
    let l4 = off + ihl * 4;
    match be16(p, l4) {
        Some(sport) => Parsed::Udp { src, dst, sport, l4 },
        None => Parsed::ParseError,
    }
}

/// RFC 8200 section 3: version 6 in the top 4 bits of octet 0, Next Header
/// in octet 6, addresses at 8 and 24, 40 octets. Extension headers (section
/// 4) chain by their first octet, Next Header. The contract walks at most
/// `MAX_EXT_HEADERS` of them, each starting before `MAX_L4_OFFSET`; a longer
/// chain is a parse error, a header it does not walk (AH, ESP, ...) "not UDP".
fn parse_v6(p: &[u8], off: usize) -> Parsed {
    let Some(h) = p.get(off..off + 40) else { return Parsed::ParseError };
    if h[0] >> 4 != 6 {
        return Parsed::ParseError;
    }
    let addr = |b: &[u8]| IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(b).unwrap()));
    let (src, dst) = (addr(&h[8..24]), addr(&h[24..40]));
    let mut next = h[6];
    let mut at = off + 40;
    let mut walked = 0;
    loop {
        if at >= wire::MAX_L4_OFFSET {
            return Parsed::ParseError;
        }
        let is_extension = matches!(next, 0 | 43 | 44 | 60);
        if is_extension && walked == wire::MAX_EXT_HEADERS {
            return Parsed::ParseError;
        }
        match next {
            17 => {
                return match be16(p, at) {
                    Some(sport) => Parsed::Udp { src, dst, sport, l4: at },
                    None => Parsed::ParseError,
                };
            }
            // Hop-by-Hop Options (4.3), Routing (4.4), Destination Options
            // (4.6): Next Header, then Hdr Ext Len "in 8-octet units, not
            // including the first 8 octets".
            0 | 43 | 60 => {
                let Some(&[nh, hdr_ext_len]) = p.get(at..at + 2) else { return Parsed::ParseError };
                next = nh;
                at += 8 + 8 * usize::from(hdr_ext_len);
            }
            // Fragment (4.5): Next Header, Reserved, then Fragment Offset (13
            // bits), Res (2), M (1); 8 octets. A non-first fragment carries
            // no UDP header.
            44 => {
                let Some(&[nh, _, hi, lo]) = p.get(at..at + 4) else { return Parsed::ParseError };
                if u16::from_be_bytes([hi, lo]) >> 3 != 0 {
                    return Parsed::Fragment { src, dst };
                }
                next = nh;
                at += 8;
            }
            _ => return Parsed::NotUdp,
        }
        walked += 1;
    }
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

/// The reflection signatures over a byte slice (`payload` = everything after
/// the UDP header, which starts at frame offset `at`; `plen` = the UDP
/// header's payload length).
///
/// Written from the protocols' specifications (cited per vector), not from
/// the XDP program or `xdp_common::signature`'s predicates, so that the
/// differential test compares two independent readings. What is shared is
/// the contract's numbers: the vector ids, the window sizes the program reads
/// (a payload shorter than a vector's window does not match) and the limits.
pub fn signature_matches(vector: u8, payload: &[u8], at: usize, plen: usize, dns_large: u16, dns_many: u16) -> bool {
    use xdp_common::signature::{self as sig, CHARGEN, CLDAP, DNS, MEMCACHED, NTP, QOTD, SNMP, SSDP};
    if at > sig::MAX_SIG_OFFSET {
        return false;
    }
    match vector {
        // RFC 864 / RFC 865: the reply is the whole service; any payload is one.
        CHARGEN | QOTD => plen > 0,
        NTP => ntp_control_or_private(payload),
        SSDP => ssdp_search_response(payload),
        MEMCACHED => memcached_udp_reply(payload),
        DNS => dns_amplified_response(payload, at, plen, dns_large, dns_many),
        CLDAP => ldap_search_res_entry(payload),
        SNMP => snmp_get_response(payload),
        _ => false,
    }
}

/// RFC 5905 section 7.3: the first octet is LI (2 bits), VN (3 bits), Mode
/// (3 bits, the low ones). Mode 6 is "NTP control message" (RFC 9327), mode 7
/// "reserved for private use" (ntpd's monlist). The program reads an 8-octet
/// window (the mode 7 header).
fn ntp_control_or_private(payload: &[u8]) -> bool {
    if payload.len() < xdp_common::signature::NTP_WINDOW {
        return false;
    }
    let mode = payload[0] & 0b111;
    mode == 6 || mode == 7
}

/// UPnP Device Architecture 2.0 section 1.3.3, "Search response": the reply to
/// an M-SEARCH is an HTTPU response whose status line is "HTTP/1.1 200 OK".
fn ssdp_search_response(payload: &[u8]) -> bool {
    payload.starts_with(b"HTTP/1.1 200 OK")
}

/// memcached's protocol.txt, "UDP protocol": each datagram starts with an
/// 8-byte frame header (request id, sequence number, total datagrams, and a
/// 2-byte reserved field that "must be 0"), then text as over TCP: a get's
/// reply starts "VALUE <key> ...", a stats reply "STAT <name> ...".
fn memcached_udp_reply(payload: &[u8]) -> bool {
    let Some((frame, text)) = payload.split_at_checked(8) else { return false };
    let reserved = u16::from_be_bytes([frame[6], frame[7]]);
    reserved == 0 && (text.starts_with(b"STAT ") || text.starts_with(b"VALUE "))
}

/// RFC 1035 section 4.1.1 (header), 4.1.2 (question), 3.1 (names): a response
/// (QR, the top bit of the third octet, set) that is large, carries many
/// answers (ANCOUNT), or whose first question asks for QTYPE 255 ("*", ANY:
/// section 3.2.3, RFC 8482). The question name is walked as labels only; a
/// compression pointer (section 4.1.4, top bits 11) or a reserved label type
/// (10, 01) ends the walk without a match, as does a name of more than
/// DNS_MAX_LABELS labels or one reaching past MAX_SIG_OFFSET in the frame.
fn dns_amplified_response(payload: &[u8], at: usize, plen: usize, dns_large: u16, dns_many: u16) -> bool {
    use xdp_common::signature::{DNS_MAX_LABELS, MAX_SIG_OFFSET};
    let Some(header) = payload.get(..12) else { return false };
    let is_response = header[2] >> 7 == 1;
    let qdcount = u16::from_be_bytes([header[4], header[5]]);
    let ancount = u16::from_be_bytes([header[6], header[7]]);
    if !is_response {
        return false;
    }
    if plen > usize::from(dns_large) || (dns_many > 0 && ancount >= dns_many) {
        return true;
    }
    if qdcount == 0 {
        return false;
    }
    // QNAME: length-prefixed labels (at most 63 octets, section 2.3.4) ending
    // with the zero-length root label; QTYPE follows it.
    let mut pos = 12;
    let mut labels = 0;
    loop {
        if at + pos > MAX_SIG_OFFSET {
            return false;
        }
        let Some(&len) = payload.get(pos) else { return false };
        if len == 0 {
            return payload.get(pos + 1..pos + 3).is_some_and(|qtype| u16::from_be_bytes([qtype[0], qtype[1]]) == 255);
        }
        if len >> 6 != 0b00 {
            return false;
        }
        labels += 1;
        if labels > DNS_MAX_LABELS {
            return false;
        }
        pos += 1 + usize::from(len);
    }
}

/// X.690 section 8.1.3, the length octets after a one-octet identifier:
/// definite short form (8.1.3.4, bit 8 zero: one octet) or definite long form
/// (8.1.3.5: 0x80 | n, then n octets), with at most 4 length octets (the
/// appliance's limit). 0x80 is the indefinite form (8.1.3.6), which LDAP
/// (RFC 4511 section 5.1) and SNMP (RFC 3417 section 8) do not use. Returns
/// where the contents start, from the identifier octet.
fn ber_contents_start(length_octet: u8) -> Option<usize> {
    if length_octet & 0x80 == 0 {
        return Some(2);
    }
    let n = usize::from(length_octet & 0x7f);
    (1..=4).contains(&n).then_some(2 + n)
}

/// RFC 4511 section 4.1.1: LDAPMessage ::= SEQUENCE { messageID MessageID,
/// protocolOp CHOICE { ..., searchResEntry SearchResultEntry, ... } }, with
/// MessageID ::= INTEGER (0 .. maxInt), maxInt 2^31-1, so 1 to 4 content
/// octets in a one-octet length; SearchResultEntry ::= `[APPLICATION 4]`
/// (section 4.5.2), constructed: 0x64. CLDAP (RFC 1798) replies to a rootDSE
/// query with one. The program reads a CLDAP_WINDOW-octet window.
fn ldap_search_res_entry(payload: &[u8]) -> bool {
    let Some(msg) = payload.get(..xdp_common::signature::CLDAP_WINDOW) else { return false };
    // SEQUENCE: universal, constructed, tag 16 (X.690 section 8.9).
    if msg[0] != 0x30 {
        return false;
    }
    let Some(id) = ber_contents_start(msg[1]) else { return false };
    // INTEGER: universal 2.
    if msg[id] != 0x02 {
        return false;
    }
    let id_len = usize::from(msg[id + 1]);
    if !(1..=4).contains(&id_len) {
        return false;
    }
    msg.get(id + 2 + id_len) == Some(&0x64)
}

/// RFC 1157 section 4.1 (and RFC 1901 section 3 for v2c, the same layout):
/// Message ::= SEQUENCE { version INTEGER, community OCTET STRING, data },
/// version a one-octet INTEGER; the PDU a GetResponse-PDU ::= `[2] IMPLICIT`
/// (RFC 1157 section 4.1.4; RFC 3416 section 3's Response-PDU), context
/// class, constructed: 0xa2. The program reads an SNMP_WINDOW-octet window
/// and takes communities of at most SNMP_MAX_COMMUNITY octets.
fn snmp_get_response(payload: &[u8]) -> bool {
    use xdp_common::signature::{SNMP_MAX_COMMUNITY, SNMP_WINDOW};
    let Some(msg) = payload.get(..SNMP_WINDOW) else { return false };
    if msg[0] != 0x30 {
        return false;
    }
    let Some(version) = ber_contents_start(msg[1]) else { return false };
    // version: INTEGER (2), length 1, any value.
    if msg[version..version + 2] != [0x02, 0x01] {
        return false;
    }
    // community: OCTET STRING (4), short-form length.
    let community = version + 3;
    if msg[community] != 0x04 {
        return false;
    }
    let community_len = usize::from(msg[community + 1]);
    if community_len > SNMP_MAX_COMMUNITY {
        return false;
    }
    msg.get(community + 2 + community_len) == Some(&0xa2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ampguard_test_support::{packet::PacketBuilder, payloads};

    /// The payloads test support builds, against the model's signatures.
    mod real_format_replies {
        use crate::model::signature_matches;
        use ampguard_test_support::payloads::*;
        use xdp_common::signature::*;

        fn sig(v: u8, p: &[u8]) -> bool {
            signature_matches(v, p, 42, p.len(), 512, 10)
        }

        #[test]
        fn attack_replies_match_and_ordinary_replies_do_not() {
            assert!(sig(NTP, &ntp_monlist_reply()) && ntp_monlist_reply().len() == 440);
            assert!(sig(NTP, &ntp_mode6_reply()));
            assert!(!sig(NTP, &ntp_mode4_reply()));
            let any = dns_any_answer();
            assert!(any.len() > 1000 && sig(DNS, &any));
            assert!(signature_matches(DNS, &any, 42, 400, 512, 10), "ANY matches even when small");
            assert!(!sig(DNS, &dns_a_answer()));
            assert!(!sig(DNS, &dns_query()));
            assert!(sig(DNS, &dns_response("example.com", 1, 12, 0)), "many answers");
            assert!(sig(MEMCACHED, &memcached_stat_reply()) && sig(MEMCACHED, &memcached_value_reply()));
            assert!(!sig(MEMCACHED, b"\x12\x34\0\0\0\x01\0\0get foo\r\n"));
            assert!(sig(SSDP, &ssdp_ok_reply()) && !sig(SSDP, b"NOTIFY * HTTP/1.1\r\n"));
            assert!(sig(CLDAP, &cldap_search_res_entry()));
            assert!(sig(SNMP, &snmp_get_response(40)) && snmp_get_response(40).len() > 512);
            assert!(sig(CHARGEN, &chargen_reply()) && sig(QOTD, &qotd_reply()));
            assert!(!sig(CHARGEN, &[]));
        }
    }

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

    #[test]
    fn ipv6_chains_stop_at_the_limit_even_at_a_fragment_header() {
        let v6 = |chain: &[u8]| PacketBuilder::udp6("[2001:db8:1::7]:53", "[2001:db8:2::10]:4000").ext_headers(chain);
        let eight = [0u8, 60, 43, 60, 60, 43, 60, 60];
        assert!(matches!(parse(&v6(&eight).build()), Parsed::Udp { sport: 53, .. }));
        let nine = [0u8, 60, 43, 60, 60, 43, 60, 60, 60];
        assert_eq!(parse(&v6(&nine).build()), Parsed::ParseError);
        // The ninth header is one too many whatever it is, a non-first fragment included.
        assert_eq!(parse(&v6(&eight).fragment_offset(185).build()), Parsed::ParseError);
        let seven = [0u8, 60, 43, 60, 60, 43, 60];
        assert!(matches!(parse(&v6(&seven).fragment_offset(185).build()), Parsed::Fragment { .. }));
    }

    #[test]
    fn signature_limits() {
        let dns = |labels: usize| {
            let name = vec!["a"; labels].join(".");
            signature_matches(xdp_common::signature::DNS, &payloads::dns_response(&name, 255, 1, 0), 42, 100, 512, 10)
        };
        assert!(dns(1) && dns(16), "ANY with up to 16 labels");
        assert!(!dns(17), "a 17-label name is not walked");
        let snmp = |community: usize| {
            // SEQUENCE (long-form length), version 1 (v2c), community, GetResponse.
            let mut p = vec![0x30, 0x82, 0x01, 0x00, 0x02, 0x01, 0x01, 0x04, community as u8];
            p.extend(std::iter::repeat_n(b'c', community));
            p.extend([0xa2, 0x82, 0x00, 0xf0]);
            p.resize(300, 0);
            signature_matches(xdp_common::signature::SNMP, &p, 42, p.len(), 512, 10)
        };
        assert!(snmp(48) && !snmp(49));
        // Past MAX_SIG_OFFSET nothing matches, not even chargen.
        let off = xdp_common::signature::MAX_SIG_OFFSET;
        assert!(signature_matches(xdp_common::signature::CHARGEN, b"x", off, 1, 512, 10));
        assert!(!signature_matches(xdp_common::signature::CHARGEN, b"x", off + 1, 1, 512, 10));
    }
}
