//! Packet samples: a task reads the XDP program's ring buffer of dropped,
//! limited and monitored packets and fans them out to captures
//! (`GET /v1/capture`, `ampguard capture`). Sampling is switched on in the
//! data plane only while a capture runs, so it costs nothing otherwise.
//! `dest` reads where a sample was going, for a victim's capture.

mod dest;

use std::{
    net::IpAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, SystemTime},
};

use aya::maps::{MapData, RingBuf};

use crate::dataplane::{DataPlane, DpError};
use ipnet::IpNet;
use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
use tokio::{io::unix::AsyncFd, sync::broadcast};
use xdp_common::policy::{Sample, SAMPLE_BYTES};

use crate::clock;

/// A sample as captures see it.
#[derive(Clone, Debug)]
pub(crate) struct Captured {
    pub at: SystemTime,
    pub slot: u32,
    pub vector: u8,
    pub verdict: u8,
    pub orig_len: u32,
    pub data: Vec<u8>,
}

impl Captured {
    /// Destination address of the sampled packet.
    pub(crate) fn dst(&self) -> Option<IpAddr> {
        dest::destination(&self.data)
    }
}

pub struct CaptureHub {
    tx: broadcast::Sender<Arc<Captured>>,
    active: AtomicUsize,
}

impl Default for CaptureHub {
    fn default() -> Self {
        Self { tx: broadcast::channel(4096).0, active: AtomicUsize::new(0) }
    }
}

impl CaptureHub {
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Arc<Captured>> {
        self.tx.subscribe()
    }

    /// Register a capture, turning sampling on for the first one. Call it,
    /// and `stop`, with the store locked: the count and the data plane's
    /// switch then change together, so a capture that ends while another
    /// starts can never leave sampling off under a running capture. On error
    /// nothing is registered.
    pub fn start(&self, dp: &mut DataPlane, per_sec: u32) -> Result<(), DpError> {
        if self.active.load(Ordering::SeqCst) == 0 {
            dp.set_sampling(per_sec)?;
        }
        self.active.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    /// Unregister, turning sampling off after the last one.
    pub fn stop(&self, dp: &mut DataPlane) {
        if self.active.fetch_sub(1, Ordering::SeqCst) == 1 {
            if let Err(e) = dp.set_sampling(0) {
                tracing::error!("turning packet sampling off: {e}");
            }
        }
    }

    /// Captures running now.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::SeqCst)
    }

    /// Read the ring buffer for as long as the daemon runs.
    pub(crate) async fn run(self: Arc<Self>, ring: RingBuf<MapData>) {
        // Safety: the RingBuf owns its fd and moves into the AsyncFd, which
        // deregisters before the fd closes.
        let mut fd = match unsafe { AsyncFd::register(ring) }.map_err(std::io::Error::from) {
            Ok(fd) => fd,
            Err(e) => {
                tracing::error!("cannot poll the sample ring buffer: {e}; captures will be empty");
                return;
            }
        };
        loop {
            let Ok(mut guard) = fd.readable_mut().await else { return };
            let ring = guard.get_inner_mut();
            while let Some(item) = ring.next() {
                if item.len() < std::mem::size_of::<Sample>() {
                    continue;
                }
                // Safety: the program writes whole `Sample`s; read_unaligned copies one.
                let s: Sample = unsafe { std::ptr::read_unaligned(item.as_ptr() as *const Sample) };
                let cap = (s.cap_len as usize).min(SAMPLE_BYTES);
                let c = Captured {
                    at: clock::monotonic_to_wall(s.ts_ns),
                    slot: s.slot,
                    vector: s.vector,
                    verdict: s.verdict,
                    orig_len: s.orig_len,
                    data: s.data[..cap].to_vec(),
                };
                let _ = self.tx.send(Arc::new(c));
            }
            guard.clear_ready();
        }
    }
}

/// Collect up to `count` samples (to addresses in `victim`, if given) for at most `max`.
pub(crate) async fn collect(
    rx: &mut broadcast::Receiver<Arc<Captured>>,
    count: usize,
    victim: Option<IpNet>,
    max: Duration,
) -> Vec<Arc<Captured>> {
    let deadline = tokio::time::Instant::now() + max;
    let mut out = Vec::new();
    while out.len() < count {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Ok(c)) => {
                if victim.is_none_or(|v| c.dst().is_some_and(|d| v.contains(&d))) {
                    out.push(c);
                }
            }
            Ok(Err(broadcast::error::RecvError::Lagged(_))) => continue,
            Ok(Err(_)) | Err(_) => break,
        }
    }
    out
}

/// What a capture is written as.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Format {
    /// pcapng, with a comment on each packet saying what ampguard did with it.
    #[default]
    Pcapng,
    /// Classic pcap (no comments), for tools that read nothing else.
    Pcap,
}

impl Format {
    pub(crate) fn content_type(self) -> &'static str {
        match self {
            Format::Pcapng => "application/x-pcapng",
            Format::Pcap => "application/vnd.tcpdump.pcap",
        }
    }
}

/// What ampguard did with a sampled packet, as its pcapng comment says it:
/// `verdict=dropped vector=memcached policy=p-1 victim=203.0.113.10/32`.
pub(crate) fn comment(verdict: &str, vector: &str, policy: Option<(&str, &IpNet)>) -> String {
    match policy {
        Some((id, victim)) => format!("verdict={verdict} vector={vector} policy={id} victim={victim}"),
        // The slot's policy was removed (or replaced by another victim's) before the capture ended.
        None => format!("verdict={verdict} vector={vector} policy=unknown victim=unknown"),
    }
}

/// A pcapng file (one Ethernet interface, nanosecond timestamps) of the
/// samples, each with its comment (Wireshark's packet comments,
/// `tshark -T fields -e frame.comment`). `orig_len` keeps the real frame length.
pub(crate) fn to_pcapng(samples: &[Arc<Captured>], comments: &[String]) -> Vec<u8> {
    use pcap_file::pcapng::{
        blocks::{
            enhanced_packet::{EnhancedPacketBlock, EnhancedPacketOption},
            interface_description::{InterfaceDescriptionBlock, InterfaceDescriptionOption},
            section_header::{SectionHeaderBlock, SectionHeaderOption},
        },
        PcapNgWriter,
    };
    use std::borrow::Cow;
    let shb = SectionHeaderBlock {
        endianness: pcap_file::Endianness::Little,
        options: vec![SectionHeaderOption::UserApplication(Cow::Owned(format!("ampguard {}", crate::LONG_VERSION)))],
        ..Default::default()
    };
    let mut w = PcapNgWriter::with_section_header(Vec::new(), shb).expect("writing to memory");
    let idb = InterfaceDescriptionBlock {
        linktype: pcap_file::DataLink::ETHERNET,
        snaplen: SAMPLE_BYTES as u32,
        // pcap-file writes EPB timestamps in nanoseconds: say so (the default is microseconds).
        options: vec![InterfaceDescriptionOption::IfName(Cow::Borrowed("ampguard-xdp")), InterfaceDescriptionOption::IfTsResol(9)],
    };
    w.write_pcapng_block(idb).expect("writing to memory");
    for (s, c) in samples.iter().zip(comments) {
        let epb = EnhancedPacketBlock {
            interface_id: 0,
            timestamp: s.at.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default(),
            original_len: s.orig_len.max(s.data.len() as u32),
            data: Cow::Borrowed(&s.data),
            options: vec![EnhancedPacketOption::Comment(Cow::Borrowed(c))],
        };
        w.write_pcapng_block(epb).expect("writing to memory");
    }
    w.into_inner()
}

/// A classic pcap file (Ethernet link type) of the samples; `orig_len` keeps
/// the real frame length, so tools show the packets as truncated captures.
pub(crate) fn to_pcap(samples: &[Arc<Captured>]) -> Vec<u8> {
    // Little-endian, as tcpdump writes on x86 (readers accept both).
    let header = PcapHeader { snaplen: SAMPLE_BYTES as u32, endianness: pcap_file::Endianness::Little, ..Default::default() };
    let mut w = PcapWriter::with_header(Vec::new(), header).expect("writing to memory");
    for s in samples {
        let ts = s.at.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
        w.write_packet(&PcapPacket::new(ts, s.orig_len.max(s.data.len() as u32), &s.data)).expect("writing to memory");
    }
    w.into_writer()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pcap_has_the_header_and_the_records() {
        let pkt = ampguard_test_support::packet::PacketBuilder::udp4("198.51.100.7:11211", "203.0.113.10:1").payload(200).build();
        let c = Arc::new(Captured {
            at: SystemTime::now(),
            slot: 1,
            vector: 16,
            verdict: 1,
            orig_len: pkt.len() as u32,
            data: pkt[..128].to_vec(),
        });
        assert_eq!(c.dst(), Some("203.0.113.10".parse().unwrap()));
        let bytes = to_pcap(&[c.clone(), c]);
        assert_eq!(&bytes[..4], &0xa1b2c3d4u32.to_le_bytes(), "pcap magic");
        assert_eq!(bytes.len(), 24 + 2 * (16 + 128));
        assert_eq!(u32::from_le_bytes(bytes[24 + 12..24 + 16].try_into().unwrap()), pkt.len() as u32, "orig_len");
    }

    #[test]
    fn pcapng_reads_back_with_each_packets_comment_and_time() {
        use pcap_file::pcapng::{blocks::enhanced_packet::EnhancedPacketOption, Block, PcapNgReader};
        let pkt = ampguard_test_support::packet::PacketBuilder::udp4("198.51.100.7:11211", "203.0.113.10:1").payload(200).build();
        let at = SystemTime::UNIX_EPOCH + Duration::new(1_764_000_000, 123_456_789);
        let c = Arc::new(Captured { at, slot: 1, vector: 16, verdict: 1, orig_len: pkt.len() as u32, data: pkt[..128].to_vec() });
        let victim: IpNet = "203.0.113.10/32".parse().unwrap();
        let comments = [comment("dropped", "memcached", Some(("p-1", &victim))), comment("rate_limited", "ntp", None)];
        assert_eq!(comments[0], "verdict=dropped vector=memcached policy=p-1 victim=203.0.113.10/32");
        let bytes = to_pcapng(&[c.clone(), c], &comments);
        let mut r = PcapNgReader::new(&bytes[..]).unwrap();
        let mut seen = Vec::new();
        while let Some(b) = r.next_block() {
            if let Block::EnhancedPacket(p) = b.unwrap() {
                assert_eq!((p.original_len, p.data.len(), p.timestamp), (pkt.len() as u32, 128, Duration::new(1_764_000_000, 123_456_789)));
                seen.extend(p.options.iter().filter_map(|o| match o {
                    EnhancedPacketOption::Comment(c) => Some(c.to_string()),
                    _ => None,
                }));
            }
        }
        assert_eq!(seen, comments);
    }

    /// A victim's capture keeps a sample whose 128 bytes end inside a long
    /// IPv6 extension header chain (a 7-segment routing header): the
    /// destination is in the fixed header, the UDP header is not needed.
    #[test]
    fn a_sample_cut_inside_ipv6_extension_headers_still_reaches_its_victims_capture() {
        let mut pkt = ampguard_test_support::packet::PacketBuilder::udp6("[2001:db8:1::7]:53", "[2001:db8:2::10]:4000")
            .ext_headers(&[43])
            .payload(300)
            .build();
        pkt[14 + 40 + 1] = 14; // the routing header's Hdr Ext Len: 8 + 14 * 8 octets
        let c = Captured {
            at: SystemTime::now(),
            slot: 1,
            vector: 2,
            verdict: 1,
            orig_len: pkt.len() as u32,
            data: pkt[..SAMPLE_BYTES].to_vec(),
        };
        assert_eq!(c.dst(), Some("2001:db8:2::10".parse().unwrap()));
    }
}
