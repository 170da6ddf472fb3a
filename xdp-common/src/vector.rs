//! Amplification vectors: a small id per reflection protocol.
//!
//! The XDP program maps a UDP source port to a vector id through a 65,536-entry
//! array (`AG_PORTS`), so ordinary traffic pays one array read. Id 0 means "not
//! an amplification port". Non-first fragments carry no UDP header and get the
//! fixed id [`FRAGMENT`].

/// Room for vector ids 0..MAX_VECTORS; per-policy tables are sized by it.
pub const MAX_VECTORS: usize = 32;
/// "Not an amplification vector": the packet passes without a prefix lookup.
pub const NONE: u8 = 0;
/// Non-first IPv4/IPv6 fragments (no ports; matched by victim prefix alone).
pub const FRAGMENT: u8 = (MAX_VECTORS - 1) as u8;

/// A built-in vector: id, name, default UDP source port(s), amplification factor
/// (bandwidth amplification factor as published by US-CERT TA14-017A and the
/// vendors' reports; a range where sources disagree).
#[derive(Clone, Copy, Debug)]
pub struct BuiltinVector {
    pub id: u8,
    pub name: &'static str,
    pub ports: &'static [u16],
    pub amplification: &'static str,
}

/// The built-in table. Ids are stable: they are stored in pinned maps and the
/// state file, so never renumber; add new vectors with new ids.
pub const BUILTIN: &[BuiltinVector] = &[
    BuiltinVector { id: 1, name: "chargen", ports: &[19], amplification: "358.8" },
    BuiltinVector { id: 2, name: "qotd", ports: &[17], amplification: "140.3" },
    BuiltinVector { id: 3, name: "dns", ports: &[53], amplification: "28-54" },
    BuiltinVector { id: 4, name: "tftp", ports: &[69], amplification: "60" },
    BuiltinVector { id: 5, name: "portmap", ports: &[111], amplification: "7-28" },
    BuiltinVector { id: 6, name: "ntp", ports: &[123], amplification: "556.9" },
    BuiltinVector { id: 7, name: "netbios", ports: &[137], amplification: "3.8" },
    BuiltinVector { id: 8, name: "snmp", ports: &[161], amplification: "6.3" },
    BuiltinVector { id: 9, name: "cldap", ports: &[389], amplification: "56-70" },
    BuiltinVector { id: 10, name: "mssql", ports: &[1434], amplification: "25" },
    BuiltinVector { id: 11, name: "ssdp", ports: &[1900], amplification: "30.8" },
    BuiltinVector { id: 12, name: "ard", ports: &[3283], amplification: "35.5" },
    BuiltinVector { id: 13, name: "wsd", ports: &[3702], amplification: "up to 153" },
    BuiltinVector { id: 14, name: "mdns", ports: &[5353], amplification: "2-10" },
    BuiltinVector { id: 15, name: "coap", ports: &[5683], amplification: "34" },
    BuiltinVector { id: 16, name: "memcached", ports: &[11211], amplification: "10000-51000" },
    BuiltinVector { id: 17, name: "ubiquiti", ports: &[10001], amplification: "30-35" },
    BuiltinVector { id: 18, name: "dvr", ports: &[37810], amplification: "up to 153" },
    BuiltinVector { id: FRAGMENT, name: "fragment", ports: &[], amplification: "n/a (non-first fragments of amplified replies)" },
];

/// First id available to vectors defined in the configuration.
pub const FIRST_CUSTOM: u8 = 19;

/// Look a built-in vector up by name.
pub fn builtin_by_name(name: &str) -> Option<&'static BuiltinVector> {
    BUILTIN.iter().find(|v| v.name == name)
}

/// Look a built-in vector up by id.
pub fn builtin_by_id(id: u8) -> Option<&'static BuiltinVector> {
    BUILTIN.iter().find(|v| v.id == id)
}
