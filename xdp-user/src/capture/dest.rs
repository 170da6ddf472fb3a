//! Where a sampled frame was going: the destination address in its IP header,
//! read past the Ethernet header and up to `MAX_VLAN_TAGS` VLAN tags (802.1Q,
//! 802.1ad QinQ), as the XDP program parses them. Only the fixed IPv4 or IPv6
//! header is read: options, extension headers and fragment headers come after
//! the address, so a sample cut at `SAMPLE_BYTES` inside a long IPv6 chain
//! still names its victim, and a non-first fragment (no UDP header) too.
//! Written here for captures; the reference model (model.rs) keeps its own
//! parser so that the differential test compares two independent readings.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use xdp_common::wire::{is_vlan, ETH_P_IPV4, ETH_P_IPV6, MAX_VLAN_TAGS};

/// The destination address of an Ethernet frame carrying IPv4 or IPv6. None
/// for another EtherType, more VLAN tags than the program parses, an IP header
/// cut short, or one whose version (or IPv4 header length) is invalid: frames
/// the program passes without looking further, so never sampled.
pub(crate) fn destination(frame: &[u8]) -> Option<IpAddr> {
    let be16 = |at: usize| frame.get(at..at + 2).map(|b| u16::from_be_bytes([b[0], b[1]]));
    // Octet 12: the EtherType, or a VLAN tag's TPID followed by its TCI.
    let mut at = 12;
    let mut ethertype = be16(at)?;
    let mut tags = 0;
    while is_vlan(ethertype) {
        tags += 1;
        if tags > MAX_VLAN_TAGS {
            return None;
        }
        at += 4;
        ethertype = be16(at)?;
    }
    let ip = at + 2;
    match ethertype {
        // RFC 791: version and IHL in octet 0, destination at octet 16.
        ETH_P_IPV4 => {
            let h = frame.get(ip..ip + 20)?;
            (h[0] >> 4 == 4 && h[0] & 0x0f >= 5).then(|| IpAddr::V4(Ipv4Addr::new(h[16], h[17], h[18], h[19])))
        }
        // RFC 8200: version in the top 4 bits of octet 0, destination at octet 24.
        ETH_P_IPV6 => {
            let h = frame.get(ip..ip + 40)?;
            let dst: [u8; 16] = h[24..40].try_into().ok()?;
            (h[0] >> 4 == 6).then(|| IpAddr::V6(Ipv6Addr::from(dst)))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ampguard_test_support::packet::PacketBuilder as P;
    use xdp_common::policy::SAMPLE_BYTES;

    const V4: &str = "203.0.113.10";
    const V6: &str = "2001:db8:2::10";

    #[test]
    fn plain_tagged_and_double_tagged_frames() {
        let want4: Option<IpAddr> = Some(V4.parse().unwrap());
        let want6: Option<IpAddr> = Some(V6.parse().unwrap());
        let p4 = || P::udp4("198.51.100.7:11211", "203.0.113.10:40001");
        let p6 = || P::udp6("[2001:db8:1::7]:53", "[2001:db8:2::10]:4000");
        assert_eq!(destination(&p4().build()), want4);
        assert_eq!(destination(&p6().build()), want6);
        for tags in [&[(0x8100, 10)][..], &[(0x88a8, 10), (0x8100, 20)], &[(0x8100, 10), (0x8100, 20)]] {
            assert_eq!(destination(&p4().vlans(tags).build()), want4, "{tags:?}");
            assert_eq!(destination(&p6().vlans(tags).build()), want6, "{tags:?}");
        }
        // A third tag is past what the program parses (it passes the frame).
        assert_eq!(destination(&p4().vlans(&[(0x88a8, 10), (0x8100, 20), (0x8100, 30)]).build()), None);
    }

    #[test]
    fn options_extension_headers_and_fragments() {
        let want4: Option<IpAddr> = Some(V4.parse().unwrap());
        let want6: Option<IpAddr> = Some(V6.parse().unwrap());
        let p4 = || P::udp4("198.51.100.7:11211", "203.0.113.10:40001");
        let p6 = || P::udp6("[2001:db8:1::7]:53", "[2001:db8:2::10]:4000");
        assert_eq!(destination(&p4().ipv4_options(10).build()), want4);
        assert_eq!(destination(&p4().fragment_offset(185).build()), want4, "non-first fragment");
        assert_eq!(destination(&p4().more_fragments().build()), want4, "first fragment");
        assert_eq!(destination(&p6().ext_headers(&[0, 60, 43, 60, 60, 43, 60, 60]).build()), want6);
        assert_eq!(destination(&p6().ext_headers(&[0, 60]).fragment_offset(185).build()), want6, "non-first fragment");
        assert_eq!(destination(&p6().vlans(&[(0x88a8, 10), (0x8100, 20)]).ext_headers(&[0, 44]).more_fragments().build()), want6);
    }

    /// A sample holds the first `SAMPLE_BYTES` of the frame. A segment-routing
    /// header with 7 segments (8 + 7 * 16 octets) ends past them: the UDP
    /// header is not in the sample, the destination is.
    #[test]
    fn a_sample_cut_inside_the_extension_headers_names_its_destination() {
        let mut frame =
            P::udp6("[2001:db8:1::7]:53", "[2001:db8:2::10]:4000").vlans(&[(0x88a8, 10)]).ext_headers(&[43]).payload(300).build();
        let routing = 18 + 40;
        frame[routing + 1] = 14; // Hdr Ext Len: 8-octet units after the first 8
        frame.truncate(SAMPLE_BYTES);
        assert_eq!(destination(&frame), Some(V6.parse().unwrap()));
    }

    #[test]
    fn not_ip_or_cut_short() {
        let udp4 = P::udp4("198.51.100.7:11211", "203.0.113.10:40001").build();
        for cut in 0..14 + 20 {
            assert_eq!(destination(&udp4[..cut]), None, "cut at {cut}");
        }
        assert!(destination(&udp4[..14 + 20]).is_some());
        let udp6 = P::udp6("[2001:db8:1::7]:53", "[2001:db8:2::10]:4000").vlans(&[(0x8100, 10)]).build();
        for cut in 0..18 + 40 {
            assert_eq!(destination(&udp6[..cut]), None, "cut at {cut}");
        }
        assert!(destination(&udp6[..18 + 40]).is_some());
        let mut arp = udp4.clone();
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        assert_eq!(destination(&arp), None);
        let mut v6_in_v4 = udp4.clone();
        v6_in_v4[14] = 0x65; // version 6 under EtherType IPv4
        assert_eq!(destination(&v6_in_v4), None);
        let mut short_ihl = udp4.clone();
        short_ihl[14] = 0x44;
        assert_eq!(destination(&short_ihl), None);
        let mut v4_in_v6 = udp6.clone();
        v4_in_v6[18] = 0x45;
        assert_eq!(destination(&v4_in_v6), None);
    }
}
