//! Reflection signatures: what an amplified reply looks like, per vector, at
//! fixed offsets after the UDP header. Legitimate replies of the same protocol
//! (an NTP server's mode 4 answer, a small DNS A answer) do not match, so a
//! policy can drop the attack and keep the victim's own DNS and clock working.
//!
//! The predicates below are the contract, written once over fixed-size byte
//! arrays (no reads, no pointers) and unit-tested on the host; the XDP program
//! (xdp-ebpf/src/signature.rs) does the bounds-checked reads and calls them.
//! The reference model (xdp-user/src/model.rs) has its own implementation,
//! written from the RFCs, so the differential test compares two independent
//! readings of the same rules. [`SIGNATURES`] says what they match, for the API
//! and docs.

use crate::vector;

/// Built-in vector ids with a signature, and what it matches.
pub const SIGNATURES: &[(u8, &str)] = &[
    (1, "chargen: any payload (no legitimate chargen replies are expected)"),
    (2, "qotd: any payload (no legitimate qotd replies are expected)"),
    (3, "dns: a response (QR set) that is large (UDP payload over dns_large_bytes, default 512), answers ANY (qtype 255), or has many answer records (ANCOUNT >= dns_many_answers, default 10)"),
    (6, "ntp: a mode 7 (private: monlist / MON_GETLIST_1) or mode 6 (control) packet of 8 bytes or more, not an ordinary mode 4 server reply"),
    (8, "snmp: a GetResponse PDU (BER tag 0xa2 after version and a community of at most 48 bytes); pair it with min_bytes for 'large'"),
    (9, "cldap: an LDAP searchResEntry (BER: SEQUENCE, messageID, [APPLICATION 4] 0x64), the rootDSE reply"),
    (11, "ssdp: an 'HTTP/1.1 200 OK' reply to M-SEARCH"),
    (16, "memcached: the 8-byte UDP frame header followed by 'VALUE ' or 'STAT '"),
];

pub fn describe(id: u8) -> Option<&'static str> {
    SIGNATURES.iter().find(|(v, _)| *v == id).map(|(_, d)| *d)
}

pub fn has_signature(id: u8) -> bool {
    describe(id).is_some()
}

pub const CHARGEN: u8 = 1;
pub const QOTD: u8 = 2;
pub const DNS: u8 = 3;
pub const NTP: u8 = 6;
pub const SNMP: u8 = 8;
pub const CLDAP: u8 = 9;
pub const SSDP: u8 = 11;
pub const MEMCACHED: u8 = 16;

/// NTP: bytes the signature needs (the mode 7 header is 8 bytes).
pub const NTP_WINDOW: usize = 8;
/// CLDAP: the BER header, messageID and protocolOp tag lie in the first 16 bytes.
pub const CLDAP_WINDOW: usize = 16;
/// SNMP: the signature looks at the first 64 bytes; the community string may
/// be at most 48 bytes long (longer ones do not match).
pub const SNMP_WINDOW: usize = 64;
pub const SNMP_MAX_COMMUNITY: usize = 48;

/// The SSDP reply prefix.
pub const SSDP_OK: &[u8; 15] = b"HTTP/1.1 200 OK";
/// DNS question name: at most this many labels (the root label not counted)
/// are walked to find the qtype; a longer name does not match.
pub const DNS_MAX_LABELS: usize = 16;
/// DNS: the fixed header (RFC 1035 section 4.1.1).
pub const DNS_HEADER: usize = 12;
/// memcached: the 8-byte UDP frame header and "STAT " (13), or "VALUE " (14).
pub const MEMCACHED_STAT_WINDOW: usize = 13;
pub const MEMCACHED_VALUE_WINDOW: usize = 14;
/// Frame offsets past this are never read by a signature: a payload starting
/// later does not match, and the DNS question walk stops there.
pub const MAX_SIG_OFFSET: usize = 1024;

/// The answer of a check that the first window does not always settle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    Match,
    NoMatch,
    /// Read further (the DNS question, memcached's 14th byte) and decide there.
    More,
}

/// BER (X.690 section 8.1.3): the size of a tag and its length octets, from the
/// first length octet: short form, or long form with 1 to 4 length octets.
/// Indefinite (0x80), reserved (0xff) and longer forms are `None`.
#[inline(always)]
pub fn ber_header(len_byte: u8) -> Option<usize> {
    match len_byte {
        0..=0x7f => Some(2),
        0x81..=0x84 => Some(2 + (len_byte & 0x7f) as usize),
        _ => None,
    }
}

/// NTP: a mode 6 (control) or mode 7 (private, monlist) packet.
#[inline(always)]
pub fn ntp(h: &[u8; NTP_WINDOW]) -> bool {
    h[0] & 7 == 6 || h[0] & 7 == 7
}

/// SSDP: a reply to M-SEARCH.
#[inline(always)]
pub fn ssdp(h: &[u8; 15]) -> bool {
    *h == *SSDP_OK
}

/// memcached: the frame header's reserved field is 0 and the text is "STAT "
/// (`Match`), or it may be "VALUE " (`More`: check [`memcached_value`]).
#[inline(always)]
pub fn memcached_stat(h: &[u8; MEMCACHED_STAT_WINDOW]) -> Step {
    if h[6] != 0 || h[7] != 0 {
        return Step::NoMatch;
    }
    if &h[8..13] == b"STAT " {
        return Step::Match;
    }
    Step::More
}

/// memcached, after [`memcached_stat`] said `More`: the text is "VALUE ".
#[inline(always)]
pub fn memcached_value(h: &[u8; MEMCACHED_VALUE_WINDOW]) -> bool {
    &h[8..14] == b"VALUE "
}

/// DNS header checks: a response (QR set) that is large (`plen` over
/// `large`) or has `many` answers or more (0: off) matches; one with no
/// question does not; otherwise the first question decides (`More`: walk it
/// with [`dns_label`], then [`dns_qtype_any`]).
#[inline(always)]
pub fn dns_header(h: &[u8; DNS_HEADER], plen: usize, large: u16, many: u16) -> Step {
    if h[2] & 0x80 == 0 {
        return Step::NoMatch; // a query, not a response
    }
    if plen > large as usize {
        return Step::Match;
    }
    let ancount = u16::from_be_bytes([h[6], h[7]]);
    if many != 0 && ancount >= many {
        return Step::Match;
    }
    if u16::from_be_bytes([h[4], h[5]]) == 0 {
        return Step::NoMatch;
    }
    Step::More
}

/// One label of the question name, from its length octet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Label {
    /// The root label: the QTYPE follows.
    Root,
    /// An ordinary label: skip this many bytes (the length octet included).
    Skip(usize),
    /// A compression pointer or a reserved label type: not an ordinary question.
    Other,
}

#[inline(always)]
pub fn dns_label(len: u8) -> Label {
    match len {
        0 => Label::Root,
        1..=63 => Label::Skip(1 + len as usize),
        _ => Label::Other,
    }
}

/// The QTYPE is ANY (255).
#[inline(always)]
pub fn dns_qtype_any(t: [u8; 2]) -> bool {
    u16::from_be_bytes(t) == 255
}

/// CLDAP: SEQUENCE { messageID INTEGER (1-4 bytes), `[APPLICATION 4]`
/// searchResEntry }, all within the window.
#[inline(always)]
pub fn cldap(w: &[u8; CLDAP_WINDOW]) -> bool {
    if w[0] != 0x30 {
        return false;
    }
    let Some(hdr) = ber_header(w[1]) else { return false };
    // hdr <= 6, so every index below stays inside the window; the masks say
    // so to the compiler (no bounds checks, which the eBPF target cannot have).
    if w[hdr & 7] != 0x02 || w[(hdr + 1) & 7] == 0 || w[(hdr + 1) & 7] > 4 {
        return false;
    }
    w[(hdr + 2 + w[(hdr + 1) & 7] as usize) & 15] == 0x64
}

/// SNMP: SEQUENCE { version INTEGER (1 byte), community OCTET STRING (at most
/// SNMP_MAX_COMMUNITY bytes), GetResponse-PDU `[2]` }, all within the window.
#[inline(always)]
pub fn snmp(w: &[u8; SNMP_WINDOW]) -> bool {
    if w[0] != 0x30 {
        return false;
    }
    let Some(hdr) = ber_header(w[1]) else { return false };
    let h = hdr & 7;
    if w[h] != 0x02 || w[h + 1] != 0x01 || w[h + 3] != 0x04 || w[h + 4] as usize > SNMP_MAX_COMMUNITY {
        return false;
    }
    // h + 5 + 48 < 64: the mask changes nothing but drops the bounds check.
    w[(h + 5 + w[h + 4] as usize) & 63] == 0xa2
}

const _: () = assert!((vector::FRAGMENT as usize) < vector::MAX_VECTORS);
const _: () = assert!(6 + 5 + SNMP_MAX_COMMUNITY < SNMP_WINDOW);

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use super::*;

    /// `bytes` at the start of an N-byte window, the rest zero.
    fn win<const N: usize>(bytes: &[u8]) -> [u8; N] {
        let mut w = [0u8; N];
        w[..bytes.len()].copy_from_slice(bytes);
        w
    }

    #[test]
    fn ber_header_sizes() {
        assert_eq!(ber_header(0x00), Some(2));
        assert_eq!(ber_header(0x7f), Some(2));
        assert_eq!(ber_header(0x81), Some(3));
        assert_eq!(ber_header(0x84), Some(6));
        for b in [0x80, 0x85, 0xff] {
            assert_eq!(ber_header(b), None, "{b:#x}");
        }
    }

    #[test]
    fn ntp_modes_6_and_7_only() {
        // LI 0, VN 2, mode 7 (0x17); VN 3 mode 6 (0x1e); VN 4 mode 4, a server reply (0x24).
        assert!(ntp(&win(&[0x17, 0x80, 0x03, 0x2a])));
        assert!(ntp(&win(&[0x1e])));
        for m in [0u8, 1, 2, 3, 4, 5] {
            assert!(!ntp(&win(&[0x20 | m])), "mode {m}");
        }
    }

    #[test]
    fn ssdp_ok_only() {
        assert!(ssdp(SSDP_OK));
        assert!(!ssdp(b"HTTP/1.1 404 No"));
        assert!(!ssdp(b"NOTIFY * HTTP/1"));
    }

    #[test]
    fn memcached_frame_then_text() {
        let stat = win::<13>(b"\x12\x34\0\0\0\x01\0\0STAT ");
        assert_eq!(memcached_stat(&stat), Step::Match);
        let value = win::<14>(b"\x12\x34\0\0\0\x01\0\0VALUE ");
        assert_eq!(memcached_stat(&value[..13].try_into().unwrap()), Step::More);
        assert!(memcached_value(&value));
        // The reserved field must be 0.
        assert_eq!(memcached_stat(&win(b"\x12\x34\0\0\0\x01\0\x01STAT ")), Step::NoMatch);
        // A request is not a reply.
        let get = win::<14>(b"\x12\x34\0\0\0\x01\0\0get fo");
        assert_eq!(memcached_stat(&get[..13].try_into().unwrap()), Step::More);
        assert!(!memcached_value(&get));
    }

    #[test]
    fn dns_header_decides_what_it_can() {
        // id, flags (QR set), qdcount, ancount, nscount, arcount.
        let resp = |qd: u16, an: u16| win::<12>(&[0, 1, 0x81, 0x80, (qd >> 8) as u8, qd as u8, (an >> 8) as u8, an as u8]);
        let query = win::<12>(&[0, 1, 0x01, 0x00, 0, 1]);
        assert_eq!(dns_header(&query, 4000, 512, 10), Step::NoMatch, "a query never matches");
        assert_eq!(dns_header(&resp(1, 1), 513, 512, 10), Step::Match, "large");
        assert_eq!(dns_header(&resp(1, 1), 512, 512, 10), Step::More, "512 is not over 512");
        assert_eq!(dns_header(&resp(1, 10), 100, 512, 10), Step::Match, "many answers");
        assert_eq!(dns_header(&resp(1, 9), 100, 512, 10), Step::More);
        assert_eq!(dns_header(&resp(1, 500), 100, 512, 0), Step::More, "0 turns the answer count off");
        assert_eq!(dns_header(&resp(0, 1), 100, 512, 10), Step::NoMatch, "no question");
    }

    #[test]
    fn dns_labels_and_qtype() {
        assert_eq!(dns_label(0), Label::Root);
        assert_eq!(dns_label(1), Label::Skip(2));
        assert_eq!(dns_label(63), Label::Skip(64));
        for l in [64u8, 0x80, 0xc0, 0xff] {
            assert_eq!(dns_label(l), Label::Other, "{l:#x}");
        }
        assert!(dns_qtype_any([0, 255]));
        assert!(!dns_qtype_any([0, 1]) && !dns_qtype_any([1, 255]));
    }

    #[test]
    fn cldap_search_res_entry() {
        // SEQUENCE (short length), messageID 1, [APPLICATION 4].
        assert!(cldap(&win(&[0x30, 0x84, 0, 0, 0x0b, 0x2c, 0x02, 0x01, 0x01, 0x64])));
        assert!(cldap(&win(&[0x30, 0x40, 0x02, 0x04, 1, 2, 3, 4, 0x64])), "4-byte messageID");
        assert!(cldap(&win(&[0x30, 0x81, 0x90, 0x02, 0x01, 0x07, 0x64])), "1 length octet");
        assert!(!cldap(&win(&[0x30, 0x40, 0x02, 0x05, 1, 2, 3, 4, 5, 0x64])), "messageID over 4 bytes");
        assert!(!cldap(&win(&[0x30, 0x40, 0x02, 0x00, 0x64])), "empty messageID");
        assert!(!cldap(&win(&[0x30, 0x40, 0x02, 0x01, 0x01, 0x65])), "searchResDone is not an entry");
        assert!(!cldap(&win(&[0x30, 0x80, 0x02, 0x01, 0x01, 0x64])), "indefinite length");
        assert!(!cldap(&win(&[0x31, 0x40, 0x02, 0x01, 0x01, 0x64])), "a SET");
    }

    #[test]
    fn snmp_get_response() {
        let msg = |seq: &[u8], community: usize, pdu: u8| {
            let mut b = seq.to_vec();
            b.extend([0x02, 0x01, 0x01, 0x04, community as u8]);
            b.extend(core::iter::repeat_n(b'p', community));
            b.push(pdu);
            b
        };
        let w = |b: Vec<u8>| -> [u8; SNMP_WINDOW] { win(&b[..b.len().min(SNMP_WINDOW)]) };
        assert!(snmp(&w(msg(&[0x30, 0x29], 6, 0xa2))));
        assert!(snmp(&w(msg(&[0x30, 0x82, 0x05, 0xdc], 6, 0xa2))), "long-form length");
        assert!(snmp(&w(msg(&[0x30, 0x84, 0, 0, 0x05, 0xdc], SNMP_MAX_COMMUNITY, 0xa2))), "longest header, longest community");
        assert!(!snmp(&w(msg(&[0x30, 0x29], SNMP_MAX_COMMUNITY + 1, 0xa2))), "community too long");
        assert!(!snmp(&w(msg(&[0x30, 0x29], 6, 0xa0))), "a GetRequest");
        assert!(!snmp(&w(msg(&[0x30, 0x80], 6, 0xa2))), "indefinite length");
        let mut v2 = msg(&[0x30, 0x29], 6, 0xa2);
        v2[3] = 2; // version INTEGER of 2 bytes
        assert!(!snmp(&w(v2)));
    }
}
