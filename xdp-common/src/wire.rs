//! What the parser recognises on the wire, and how far it looks: EtherTypes,
//! the IP protocol number of UDP, and the parsing limits. The XDP program
//! (xdp-ebpf/src/parse.rs) enforces them; the reference model
//! (xdp-user/src/model.rs) implements the same limits with its own parser.

/// IPv4 (RFC 894).
pub const ETH_P_IPV4: u16 = 0x0800;
/// IPv6 (RFC 2464).
pub const ETH_P_IPV6: u16 = 0x86dd;
/// A customer VLAN tag (IEEE 802.1Q).
pub const ETH_P_8021Q: u16 = 0x8100;
/// A service VLAN tag (IEEE 802.1ad, "QinQ").
pub const ETH_P_8021AD: u16 = 0x88a8;
/// UDP's IP protocol number / IPv6 next header.
pub const IPPROTO_UDP: u8 = 17;

/// VLAN tags parsed before the EtherType; one more is a parse error (passed).
pub const MAX_VLAN_TAGS: usize = 2;
/// IPv6 extension headers walked to reach UDP; a longer chain is a parse error.
pub const MAX_EXT_HEADERS: usize = 8;
/// The UDP header (or the IPv6 fragment header) must start before this frame offset.
pub const MAX_L4_OFFSET: usize = 512;

/// A VLAN tag's EtherType (the outer 802.1ad or the inner 802.1Q).
#[inline(always)]
pub fn is_vlan(ethertype: u16) -> bool {
    ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vlan_ethertypes_are_the_two_tags_only() {
        assert!(is_vlan(ETH_P_8021Q) && is_vlan(ETH_P_8021AD));
        assert!(!is_vlan(ETH_P_IPV4) && !is_vlan(ETH_P_IPV6) && !is_vlan(0x9100));
    }
}
