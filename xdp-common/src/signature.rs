//! Reflection signatures: what an amplified reply looks like, per vector, at
//! fixed offsets after the UDP header. Legitimate replies of the same protocol
//! (an NTP server's mode 4 answer, a small DNS A answer) do not match, so a
//! policy can drop the attack and keep the victim's own DNS and clock working.
//!
//! The XDP program (xdp-ebpf/src/signature.rs) and the reference model
//! (xdp-user/src/model.rs) each implement these; this module says what they
//! match, for the API and docs, and names the vectors that have one.

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
/// DNS question name: at most this many labels are walked to find the qtype.
pub const DNS_MAX_LABELS: usize = 16;

const _: () = assert!((vector::FRAGMENT as usize) < vector::MAX_VECTORS);
