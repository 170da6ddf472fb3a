//! Builds Ethernet frames byte by byte: for BPF_PROG_TEST_RUN tests, the
//! differential test, the benchmarks and the in-kernel traffic generator.
//! Checksums are correct (IPv4 header, UDP over IPv4 and IPv6), so frames that
//! reach a real stack are accepted.

use std::net::{IpAddr, SocketAddr};

#[derive(Clone, Debug)]
pub struct PacketBuilder {
    src: SocketAddr,
    dst: SocketAddr,
    vlans: Vec<(u16, u16)>,
    protocol: u8,
    payload: Vec<u8>,
    frag_offset: u16,
    more_fragments: bool,
    ipv4_options: usize,
    ext_headers: Vec<u8>,
}

fn checksum_fold(mut sum: u32) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn sum16(data: &[u8]) -> u32 {
    data.chunks(2).map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32).sum()
}

impl PacketBuilder {
    fn new(src: &str, dst: &str) -> Self {
        Self {
            src: src.parse().expect("source socket address"),
            dst: dst.parse().expect("destination socket address"),
            vlans: Vec::new(),
            protocol: 17,
            payload: vec![0xab; 32],
            frag_offset: 0,
            more_fragments: false,
            ipv4_options: 0,
            ext_headers: Vec::new(),
        }
    }

    /// A UDP/IPv4 frame, e.g. `udp4("198.51.100.7:11211", "203.0.113.10:40001")`.
    pub fn udp4(src: &str, dst: &str) -> Self {
        Self::new(src, dst)
    }

    /// A UDP/IPv6 frame, e.g. `udp6("[2001:db8:1::7]:53", "[2001:db8:2::10]:4000")`.
    pub fn udp6(src: &str, dst: &str) -> Self {
        Self::new(src, dst)
    }

    /// Another IP protocol in place of UDP (e.g. 6 for TCP); the "UDP" header
    /// bytes are still written, so the ports look like a vector's.
    pub fn protocol(mut self, p: u8) -> Self {
        self.protocol = p;
        self
    }

    pub fn payload(mut self, len: usize) -> Self {
        self.payload = vec![0xab; len];
        self
    }

    pub fn payload_bytes(mut self, bytes: &[u8]) -> Self {
        self.payload = bytes.to_vec();
        self
    }

    /// VLAN tags outermost first: (TPID, VLAN id).
    pub fn vlans(mut self, tags: &[(u16, u16)]) -> Self {
        self.vlans = tags.to_vec();
        self
    }

    /// Fragment offset in 8-byte units (IPv4 header field; IPv6 adds a fragment header).
    pub fn fragment_offset(mut self, off: u16) -> Self {
        self.frag_offset = off;
        if self.src.is_ipv6() && !self.ext_headers.contains(&44) {
            self.ext_headers.push(44);
        }
        self
    }

    pub fn more_fragments(mut self) -> Self {
        self.more_fragments = true;
        if self.src.is_ipv6() && !self.ext_headers.contains(&44) {
            self.ext_headers.push(44);
        }
        self
    }

    /// IPv4 options, in 4-byte words (NOPs), 0..=10.
    pub fn ipv4_options(mut self, words: usize) -> Self {
        self.ipv4_options = words;
        self
    }

    /// IPv6 extension headers before the UDP header, by next-header number
    /// (0 hop-by-hop, 43 routing, 60 destination options, 44 fragment).
    pub fn ext_headers(mut self, kinds: &[u8]) -> Self {
        self.ext_headers = kinds.to_vec();
        self
    }

    pub fn build(&self) -> Vec<u8> {
        let mut l4 = Vec::with_capacity(8 + self.payload.len());
        l4.extend_from_slice(&self.src.port().to_be_bytes());
        l4.extend_from_slice(&self.dst.port().to_be_bytes());
        l4.extend_from_slice(&((8 + self.payload.len()) as u16).to_be_bytes());
        l4.extend_from_slice(&[0, 0]);
        l4.extend_from_slice(&self.payload);

        let mut f = Vec::with_capacity(64 + l4.len());
        f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x02]); // dst MAC (locally administered)
        f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01]); // src MAC
        let ethertype: u16 = if self.src.is_ipv4() { 0x0800 } else { 0x86dd };
        for (tpid, vid) in &self.vlans {
            f.extend_from_slice(&tpid.to_be_bytes());
            f.extend_from_slice(&vid.to_be_bytes());
        }
        f.extend_from_slice(&ethertype.to_be_bytes());

        match (self.src.ip(), self.dst.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                if self.protocol == 17 {
                    let mut pseudo = Vec::new();
                    pseudo.extend_from_slice(&s.octets());
                    pseudo.extend_from_slice(&d.octets());
                    pseudo.extend_from_slice(&[0, 17]);
                    pseudo.extend_from_slice(&(l4.len() as u16).to_be_bytes());
                    let c = checksum_fold(sum16(&pseudo) + sum16(&l4));
                    l4[6..8].copy_from_slice(&(if c == 0 { 0xffff } else { c }).to_be_bytes());
                }
                let ihl = 5 + self.ipv4_options;
                let total = ihl * 4 + l4.len();
                let flags_frag = (self.frag_offset & 0x1fff) | if self.more_fragments { 0x2000 } else { 0 };
                let mut h = vec![0x40 | ihl as u8, 0];
                h.extend_from_slice(&(total as u16).to_be_bytes());
                h.extend_from_slice(&[0x12, 0x34]);
                h.extend_from_slice(&flags_frag.to_be_bytes());
                h.extend_from_slice(&[64, self.protocol, 0, 0]);
                h.extend_from_slice(&s.octets());
                h.extend_from_slice(&d.octets());
                h.extend(std::iter::repeat_n(1u8, self.ipv4_options * 4)); // NOP options
                let c = checksum_fold(sum16(&h));
                h[10..12].copy_from_slice(&c.to_be_bytes());
                f.extend_from_slice(&h);
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                if self.protocol == 17 {
                    let mut pseudo = Vec::new();
                    pseudo.extend_from_slice(&s.octets());
                    pseudo.extend_from_slice(&d.octets());
                    pseudo.extend_from_slice(&(l4.len() as u32).to_be_bytes());
                    pseudo.extend_from_slice(&[0, 0, 0, 17]);
                    let c = checksum_fold(sum16(&pseudo) + sum16(&l4));
                    l4[6..8].copy_from_slice(&(if c == 0 { 0xffff } else { c }).to_be_bytes());
                }
                let mut ext = Vec::new();
                for (i, kind) in self.ext_headers.iter().enumerate() {
                    let next = *self.ext_headers.get(i + 1).unwrap_or(&self.protocol);
                    if *kind == 44 {
                        let off = (self.frag_offset << 3) | self.more_fragments as u16;
                        ext.extend_from_slice(&[next, 0]);
                        ext.extend_from_slice(&off.to_be_bytes());
                        ext.extend_from_slice(&[0, 0, 0, 1]);
                    } else {
                        // 8 bytes: next header, length 0 (= 8 bytes), PadN option.
                        ext.extend_from_slice(&[next, 0, 1, 4, 0, 0, 0, 0]);
                    }
                }
                let first = *self.ext_headers.first().unwrap_or(&self.protocol);
                let mut h = vec![0x60, 0, 0, 0];
                h.extend_from_slice(&((ext.len() + l4.len()) as u16).to_be_bytes());
                h.extend_from_slice(&[first, 64]);
                h.extend_from_slice(&s.octets());
                h.extend_from_slice(&d.octets());
                f.extend_from_slice(&h);
                f.extend_from_slice(&ext);
            }
            _ => panic!("source and destination must be the same family"),
        }
        f.extend_from_slice(&l4);
        f
    }
}
