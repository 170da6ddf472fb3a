//! Part 2: live traffic across the lab's veth pair.
//!
//! Generator: `xdp_gen_tx` (returns XDP_TX) run by BPF_PROG_TEST_RUN in
//! live-frames mode with the context's ingress_ifindex = wan0, from this
//! (pinned) thread inside the wan namespace: the kernel turns each XDP_TX into
//! a redirect out of wan0, so the frames arrive on edge0 through veth's XDP
//! receive path. The receive side runs in NET_RX softirq on the same CPU when
//! each batch is flushed, so a figure is what one core does, generator included.
//!
//! Receivers on edge0 (one at a time, interleaved over rounds):
//! - ampguard's program (native XDP, the full tables of part 1): drop memcached
//!   to 203.0.113.10; rate-limit ntp to 203.0.113.11 at 10,000/s;
//! - `xdp_count_drop` (native XDP): the floor of any XDP filter;
//! - nftables netdev ingress on edge0, the same two jobs. veth only receives
//!   XDP frames from its peer when it has an XDP program (or GRO) on, and the
//!   image has no ethtool, so edge0 carries `xdp_pass` for these runs: the
//!   frames go "XDP_PASS into the stack" and meet the ingress hook.
//! - `--only generic`: ampguard's program in generic (skb) mode beside the same
//!   program in native mode, same job (drop memcached). edge0 has GRO on for
//!   these runs (`enable_gro`), so veth builds an skb for each frame and the
//!   program runs on it in the stack's receive path.
//!
//! Counted is what the receiver saw (program or nft counters), not what the
//! generator sent; the rate is counted / wall time of the generator call. Every
//! call is bounded by its frame count (u32), sized to last about `secs`.

use std::collections::HashSet;
use std::fs;
use std::net::Ipv4Addr;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use ampguard::dataplane::DataPlane;
use ampguard_test_support::packet::PacketBuilder as P;
use ampguard_tests::lab::{Lab, EDGE_IF};
use anyhow::{bail, ensure, Context, Result};
use aya::{
    maps::PerCpuArray,
    programs::{TestRun, TestRunAttrs, TestRunOptions, Xdp, XdpMode},
    Ebpf,
};
use xdp_common::counters::verdict;

use super::cost::{BenchSlots, LIMIT_BURST, LIMIT_PPS, PAYLOAD_64};
use super::peer::{Bpffs, XdpFilter};
use super::tables::vid;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Receiver {
    AmpguardDrop,
    CountDrop,
    XdpFilter,
    NftDrop,
    AmpguardLimit,
    NftLimit,
    /// ampguard's program attached in generic (skb) mode, dropping memcached
    /// (`bench --only generic`, beside AmpguardDrop in native mode).
    AmpguardDropGeneric,
}

impl Receiver {
    /// One core: every receiver.
    pub const ALL: [Receiver; 6] =
        [Receiver::AmpguardDrop, Receiver::CountDrop, Receiver::XdpFilter, Receiver::NftDrop, Receiver::AmpguardLimit, Receiver::NftLimit];
    /// Every core: the XDP receivers (nftables is 3x slower and has its own rows above).
    pub const EVERY_CORE: [Receiver; 4] = [Receiver::AmpguardDrop, Receiver::CountDrop, Receiver::XdpFilter, Receiver::AmpguardLimit];
    /// `--only generic`: the same program and job, native against generic mode.
    pub const GENERIC: [Receiver; 2] = [Receiver::AmpguardDrop, Receiver::AmpguardDropGeneric];

    pub fn label(self) -> &'static str {
        match self {
            Receiver::AmpguardDrop => "ampguard XDP, drop memcached",
            Receiver::CountDrop => "xdp_count_drop (count and drop)",
            Receiver::XdpFilter => "xdp-filter (peer), drop memcached",
            Receiver::NftDrop => "nftables ingress, drop memcached",
            Receiver::AmpguardLimit => "ampguard XDP, limit ntp 10,000/s",
            Receiver::NftLimit => "nftables ingress, `limit rate over 10000/second`",
            Receiver::AmpguardDropGeneric => "ampguard XDP generic (skb) mode, drop memcached",
        }
    }

    fn is_ntp(self) -> bool {
        matches!(self, Receiver::AmpguardLimit | Receiver::NftLimit)
    }
}

/// One timed generator call.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    pub sent: u64,
    /// Dropped by the receiver (rate-limited, for the limit receivers).
    pub dropped: u64,
    /// Passed by a limit receiver (under the limit).
    pub passed: u64,
    pub secs: f64,
}

impl Sample {
    pub fn drop_mpps(&self) -> f64 {
        self.dropped as f64 / self.secs / 1e6
    }
}

pub struct LiveResult {
    pub receiver: Receiver,
    pub samples: Vec<Sample>,
}

impl LiveResult {
    /// The sample with the median drop rate.
    pub fn median(&self) -> Sample {
        let mut s = self.samples.clone();
        s.sort_by(|a, b| a.drop_mpps().total_cmp(&b.drop_mpps()));
        s[s.len() / 2]
    }
}

pub struct LiveConfig {
    pub rounds: usize,
    pub secs: f64,
    pub batch: u32,
}

const NFT_TABLE: &str = "agbench";

fn nft_ruleset(r: Receiver, edge_if: &str) -> String {
    let rules = if r.is_ntp() {
        format!(
            "udp sport 123 ip daddr 203.0.113.11 limit rate over {LIMIT_PPS}/second burst {LIMIT_BURST} packets counter drop\n\
             \t\tudp sport 123 ip daddr 203.0.113.11 counter"
        )
    } else {
        "udp sport 11211 ip daddr 203.0.113.10 counter drop".to_string()
    };
    format!(
        "table netdev {NFT_TABLE} {{\n\tchain ingress {{\n\t\ttype filter hook ingress device \"{edge_if}\" priority 0;\n\t\t{rules}\n\t}}\n}}\n"
    )
}

/// The ruleset text of a receiver (for the report).
pub fn nft_rules_for_report(r: Receiver) -> String {
    nft_ruleset(r, EDGE_IF)
}

/// Packet counters of the nft table, in rule order.
fn nft_counters(lab: &Lab) -> Result<Vec<u64>> {
    let out = lab.edge.exec(&["nft", "list", "table", "netdev", NFT_TABLE])?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text.split("counter packets ").skip(1).filter_map(|s| s.split_whitespace().next().and_then(|n| n.parse().ok())).collect())
}

fn sum_percpu(ebpf: &Ebpf, map: &str) -> Result<u64> {
    let m: PerCpuArray<_, u64> = PerCpuArray::try_from(ebpf.map(map).with_context(|| format!("no map {map}"))?)?;
    Ok(m.get(&0, 0)?.iter().sum())
}

/// The live bench: owns nothing, borrows what part 1 built.
pub struct Live<'a> {
    pub lab: &'a Lab,
    pub dp: &'a mut DataPlane,
    pub base: &'a mut Ebpf,
    pub slots: &'a BenchSlots,
    pub bpffs: &'a Bpffs,
    /// The receiving end of the veth pair the frames cross (in the lab's edge namespace).
    pub edge_if: String,
    pub wan_ifindex: u32,
    /// One generator thread per CPU here, each pinned to its CPU.
    pub gen_cpus: Vec<usize>,
    memcached_frame: Vec<u8>,
    ntp_frame: Vec<u8>,
}

/// What is attached to the edge interface for one run.
enum Attached {
    Link(aya::programs::xdp::XdpLinkId),
    Peer(Box<XdpFilter>),
}

/// Distinct IPv4 sources of the generator, its stride and first address:
/// mirrors of xdp-ebpf/src/baseline.rs, checked against frames it wrote
/// ([`check_sources`]).
pub const GEN_SOURCES: u32 = 100_000;
pub const GEN_STRIDE: u32 = 7_919;
pub const GEN_BASE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 0);
pub const GEN_RANGE: &str = "198.18.0.0/15 (RFC 2544's benchmarking range)";

fn gen_next(k: u32) -> u32 {
    (k + GEN_STRIDE) % GEN_SOURCES
}

/// How the generator's sources were checked.
pub struct Sources {
    /// Distinct addresses in one cycle of the generator's sequence.
    pub distinct: usize,
    /// Frames read back and checked (address as predicted, IP and UDP checksums valid).
    pub checked: usize,
    /// Incremental rewrites of one buffer after which its checksums were still valid.
    pub chained: u32,
}

fn ones_sum(data: &[u8]) -> u32 {
    data.chunks(2).map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32).sum()
}

fn fold(mut sum: u32) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The frame's IPv4 source, after checking its IP and UDP checksums from scratch.
fn checked_source(f: &[u8]) -> Result<Ipv4Addr> {
    ensure!(fold(ones_sum(&f[14..34])) == 0xffff, "generator frame with a bad IPv4 header checksum: {:02x?}", &f[14..34]);
    let udp = &f[34..];
    if udp[6..8] != [0, 0] {
        let mut pseudo = f[26..34].to_vec();
        pseudo.extend_from_slice(&[0, 17]);
        pseudo.extend_from_slice(&(udp.len() as u16).to_be_bytes());
        ensure!(fold(ones_sum(&pseudo) + ones_sum(udp)) == 0xffff, "generator frame with a bad UDP checksum");
    }
    Ok(Ipv4Addr::new(f[26], f[27], f[28], f[29]))
}

/// Runs `xdp_gen_tx` under plain BPF_PROG_TEST_RUN (not live, so its output
/// frame comes back) on this pinned CPU: each of 64 single runs must write the
/// next source of the sequence with valid checksums, and one run of
/// `GEN_SOURCES` repeats (which rewrites the same buffer each time: test_run
/// without live frames reuses it) must leave valid checksums and the address
/// the sequence predicts. The sequence itself is checked to hold GEN_SOURCES
/// distinct addresses.
pub fn check_sources(base: &Ebpf, cpu: usize, frame: &[u8]) -> Result<Sources> {
    const XDP_TX: u32 = 3;
    let gen: &Xdp = base.program("xdp_gen_tx").context("no xdp_gen_tx")?.try_into()?;
    let seq: PerCpuArray<_, u32> = PerCpuArray::try_from(base.map("GEN_SEQ").context("no map GEN_SEQ")?)?;
    let mut k = *seq.get(&0, 0)?.get(cpu).context("GEN_SEQ has no value for the bench's CPU")?;
    let mut out = vec![0u8; frame.len()];
    let expect = |k: u32| Ipv4Addr::from(u32::from(GEN_BASE) + k);
    let mut checked = 0;
    for _ in 0..64 {
        let r = gen.test_run(TestRunOptions { data_in: Some(frame), data_out: Some(&mut out), repeat: 1, ..Default::default() })?;
        ensure!(r.return_value == XDP_TX, "xdp_gen_tx returned {}", r.return_value);
        let src = checked_source(&out)?;
        ensure!(src == expect(k), "generator wrote source {src}, the sequence says {}", expect(k));
        k = gen_next(k);
        checked += 1;
    }
    let r = gen.test_run(TestRunOptions { data_in: Some(frame), data_out: Some(&mut out), repeat: GEN_SOURCES, ..Default::default() })?;
    ensure!(r.return_value == XDP_TX, "xdp_gen_tx returned {}", r.return_value);
    for _ in 0..GEN_SOURCES - 1 {
        k = gen_next(k);
    }
    let src = checked_source(&out)?;
    ensure!(src == expect(k), "after {GEN_SOURCES} rewrites the source is {src}, the sequence says {}", expect(k));
    let mut seen = HashSet::new();
    let mut j = 0;
    for _ in 0..GEN_SOURCES {
        seen.insert(j);
        j = gen_next(j);
    }
    ensure!(u32::from(GEN_BASE) + GEN_SOURCES <= u32::from(Ipv4Addr::new(198, 20, 0, 0)), "sources leave 198.18.0.0/15");
    Ok(Sources { distinct: seen.len(), checked, chained: GEN_SOURCES })
}

fn lab_frame(b: P) -> Vec<u8> {
    let mut f = b.payload(PAYLOAD_64).build();
    // The lab's veth MACs, so frames that reach the stack are addressed to edge0.
    f[0..6].copy_from_slice(&[0x02, 0xa9, 0, 0, 0, 0x02]);
    f[6..12].copy_from_slice(&[0x02, 0xa9, 0, 0, 0, 0x01]);
    f
}

/// Turns GRO on for `edge_if` (ethtool), for the generic-mode runs: veth
/// hands its peer's XDP_TX/redirected frames only to a side whose NAPI runs,
/// which takes a native XDP program or GRO; generic XDP cannot share the
/// interface with a native program, so GRO it is. Native-mode XDP runs before
/// GRO, so the native figure beside it is unchanged by it.
pub fn enable_gro(lab: &Lab, edge_if: &str) -> Result<()> {
    lab.edge.exec(&["ethtool", "-K", edge_if, "gro", "on"]).context("turning GRO on (package ethtool: `sudo cargo xtask setup`)")?;
    Ok(())
}

/// A second veth pair in the lab's namespaces, `wan1` <-> `edge1`, with two
/// queues a side, for the every-core runs: veth hands a frame sent on CPU n to
/// the peer's receive queue n (mod the queue count) and runs that queue's NAPI
/// on CPU n, so two generators pinned to two CPUs make the receiver run on
/// both. Deleted with the lab's namespaces.
pub fn add_two_queue_pair(lab: &Lab) -> Result<(String, String)> {
    let (wan, edge) = ("wan1".to_string(), "edge1".to_string());
    lab.wan
        .ip(&[
            "link",
            "add",
            &wan,
            "numtxqueues",
            "2",
            "numrxqueues",
            "2",
            "type",
            "veth",
            "peer",
            "name",
            &edge,
            "numtxqueues",
            "2",
            "numrxqueues",
            "2",
            "netns",
            &lab.edge.name,
        ])
        .context("creating a two-queue veth pair in the lab")?;
    lab.wan.ip(&["link", "set", &wan, "up"])?;
    lab.edge.ip(&["link", "set", &edge, "up"])?;
    Ok((wan, edge))
}

impl<'a> Live<'a> {
    pub fn new(
        lab: &'a Lab,
        dp: &'a mut DataPlane,
        base: &'a mut Ebpf,
        slots: &'a BenchSlots,
        bpffs: &'a Bpffs,
        (wan_if, edge_if): (&str, &str),
        gen_cpus: Vec<usize>,
    ) -> Result<Self> {
        let c = std::ffi::CString::new(wan_if)?;
        // SAFETY: c is a valid NUL-terminated string.
        let wan_ifindex = lab.wan.enter(|| unsafe { libc::if_nametoindex(c.as_ptr()) })?;
        ensure!(wan_ifindex != 0, "no interface {wan_if} in {}", lab.wan.name);
        ensure!(!gen_cpus.is_empty(), "no generator CPU");
        Ok(Self {
            lab,
            dp,
            base,
            slots,
            bpffs,
            edge_if: edge_if.to_string(),
            gen_cpus,
            wan_ifindex,
            memcached_frame: lab_frame(P::udp4("198.51.100.7:11211", "203.0.113.10:40001")),
            ntp_frame: lab_frame(P::udp4("198.51.100.123:123", "203.0.113.11:40001")),
        })
    }

    /// [`check_sources`] with the memcached frame of the live runs.
    pub fn check_sources(&self, cpu: usize) -> Result<Sources> {
        check_sources(self.base, cpu, &self.memcached_frame)
    }

    pub fn frame_len(&self) -> usize {
        self.memcached_frame.len()
    }

    fn xdp<'e>(ebpf: &'e mut Ebpf, name: &str) -> Result<&'e mut Xdp> {
        Ok(ebpf.program_mut(name).with_context(|| format!("no program {name}"))?.try_into()?)
    }

    /// (dropped, passed) so far for a receiver.
    fn counters(&self, r: Receiver, peer: Option<&XdpFilter>) -> Result<(u64, u64)> {
        Ok(match r {
            Receiver::AmpguardDrop | Receiver::AmpguardDropGeneric => {
                let c = self.dp.policy_counters(self.slots.drop)?[vid("memcached") as usize];
                (c.by_verdict[verdict::DROPPED].packets, c.by_verdict[verdict::PASSED].packets)
            }
            Receiver::AmpguardLimit => {
                let c = self.dp.policy_counters(self.slots.limited)?[vid("ntp") as usize];
                (c.by_verdict[verdict::RATE_LIMITED].packets, c.by_verdict[verdict::PASSED].packets)
            }
            Receiver::CountDrop => (sum_percpu(self.base, "BASE_COUNT")?, 0),
            Receiver::XdpFilter => (peer.context("xdp-filter is not loaded")?.dropped()?, 0),
            Receiver::NftDrop | Receiver::NftLimit => {
                let c = nft_counters(self.lab)?;
                (c.first().copied().unwrap_or(0), c.get(1).copied().unwrap_or(0))
            }
        })
    }

    /// Attaches the receiver, runs `frames` through the generator(s), detaches.
    fn run_once(&mut self, r: Receiver, frames: u32, batch: u32) -> Result<Sample> {
        let lab = self.lab;
        let edge_if = self.edge_if.clone();
        // Attach.
        let attached = match r {
            Receiver::AmpguardDrop | Receiver::AmpguardLimit => {
                let p = self.dp.program_mut();
                Attached::Link(lab.edge.enter(|| p.attach(&edge_if, XdpMode::Driver))?.context("attach ampguard")?)
            }
            Receiver::AmpguardDropGeneric => {
                let p = self.dp.program_mut();
                Attached::Link(lab.edge.enter(|| p.attach(&edge_if, XdpMode::Skb))?.context("attach ampguard in generic mode")?)
            }
            Receiver::CountDrop => {
                let p = Self::xdp(self.base, "xdp_count_drop")?;
                Attached::Link(lab.edge.enter(|| p.attach(&edge_if, XdpMode::Driver))?.context("attach xdp_count_drop")?)
            }
            Receiver::XdpFilter => Attached::Peer(Box::new(XdpFilter::load(&lab.edge, &edge_if, self.bpffs)?)),
            Receiver::NftDrop | Receiver::NftLimit => {
                let path = std::env::temp_dir().join(format!("ampguard-bench-{}.nft", std::process::id()));
                fs::write(&path, nft_ruleset(r, &edge_if))?;
                let loaded = lab.edge.exec(&["nft", "-f", &path.to_string_lossy()]);
                let _ = fs::remove_file(&path);
                loaded.context("loading the nftables ruleset")?;
                let p = Self::xdp(self.base, "xdp_pass")?;
                Attached::Link(lab.edge.enter(|| p.attach(&edge_if, XdpMode::Driver))?.context("attach xdp_pass")?)
            }
        };
        let peer = match &attached {
            Attached::Peer(p) => Some(&**p),
            Attached::Link(_) => None,
        };
        let result = self.generate_and_count(r, peer, frames, batch);
        // Detach, whatever happened.
        let detached = match (r, attached) {
            (_, Attached::Peer(p)) => (*p).detach_keep().map(drop),
            (Receiver::AmpguardDrop | Receiver::AmpguardLimit | Receiver::AmpguardDropGeneric, Attached::Link(l)) => {
                self.dp.program_mut().detach(l).map_err(Into::into)
            }
            (Receiver::CountDrop, Attached::Link(l)) => Self::xdp(self.base, "xdp_count_drop")?.detach(l).map_err(Into::into),
            (_, Attached::Link(l)) => Self::xdp(self.base, "xdp_pass")?.detach(l).map_err(Into::into),
        };
        if r == Receiver::NftDrop || r == Receiver::NftLimit {
            lab.edge.exec(&["nft", "delete", "table", "netdev", NFT_TABLE]).context("deleting the nft table")?;
        }
        detached.with_context(|| format!("detaching from {edge_if}"))?;
        result
    }

    fn generate_and_count(&self, r: Receiver, peer: Option<&XdpFilter>, frames: u32, batch: u32) -> Result<Sample> {
        let frame = if r.is_ntp() { &self.ntp_frame } else { &self.memcached_frame };
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex.
        let md: [u32; 6] = [0, frame.len() as u32, 0, self.wan_ifindex, 0, 0];
        let ctx: Vec<u8> = md.iter().flat_map(|v| v.to_ne_bytes()).collect();
        let gen: &Xdp = self.base.program("xdp_gen_tx").context("no xdp_gen_tx")?.try_into()?;
        let (d0, p0) = self.counters(r, peer)?;
        let n = self.gen_cpus.len();
        let per_thread = frames / n as u32;
        let run = |wait: &Barrier| -> Result<Duration> {
            self.lab.wan.enter(|| {
                wait.wait();
                let t = Instant::now();
                let res = gen.test_run(TestRunOptions {
                    data_in: Some(frame),
                    ctx_in: Some(&ctx),
                    repeat: per_thread,
                    attrs: TestRunAttrs::new().xdp_live_frames(batch),
                    ..Default::default()
                });
                res.map(|_| t.elapsed()).context("live-frames BPF_PROG_TEST_RUN (xdp_gen_tx)")
            })?
        };
        let elapsed = if n == 1 {
            // This thread, already pinned to the bench's CPU.
            run(&Barrier::new(1))?
        } else {
            // One thread per CPU; the slowest sets the wall time (they start together).
            let wait = Barrier::new(n);
            let times: Vec<Result<Duration>> = std::thread::scope(|s| {
                let hs: Vec<_> = self
                    .gen_cpus
                    .iter()
                    .map(|&cpu| {
                        let (run, wait) = (&run, &wait);
                        s.spawn(move || {
                            super::sys::pin_to_cpu(cpu)?;
                            run(wait)
                        })
                    })
                    .collect();
                hs.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("generator thread panicked")))).collect()
            });
            let mut max = Duration::ZERO;
            for t in times {
                max = max.max(t?);
            }
            max
        };
        let (d1, p1) = self.counters(r, peer)?;
        Ok(Sample { sent: per_thread as u64 * n as u64, dropped: d1 - d0, passed: p1 - p0, secs: elapsed.as_secs_f64() })
    }

    /// Calibrates each receiver, then measures all of them `rounds` times, interleaved.
    pub fn measure(&mut self, cfg: &LiveConfig, receivers: &[Receiver]) -> Result<Vec<LiveResult>> {
        const CALIBRATION_FRAMES: u32 = 1_000_000;
        const MIN_FRAMES: f64 = 1e6;
        const MAX_FRAMES: f64 = 60e6;
        let mut frames = Vec::new();
        for &r in receivers {
            let s = self.run_once(r, CALIBRATION_FRAMES, cfg.batch)?;
            if s.dropped == 0 {
                bail!("{}: the receiver dropped none of {} frames (do frames cross the veth? passed {})", r.label(), s.sent, s.passed);
            }
            let rate = (s.dropped + s.passed) as f64 / s.secs;
            let n = (rate * cfg.secs).clamp(MIN_FRAMES, MAX_FRAMES) as u32;
            eprintln!("  calibration: {:<50} {:>6.2} Mpps -> {n} frames a round", r.label(), rate / 1e6);
            frames.push(n);
        }
        let mut results: Vec<LiveResult> = receivers.iter().map(|r| LiveResult { receiver: *r, samples: Vec::new() }).collect();
        let n = receivers.len();
        for round in 0..cfg.rounds {
            for k in 0..n {
                let i = (k + round) % n;
                let s = self.run_once(receivers[i], frames[i], cfg.batch)?;
                results[i].samples.push(s);
            }
            eprint!(".");
        }
        eprintln!();
        Ok(results)
    }

    /// ns per packet spent inside the XDP program on edge0 during a live run,
    /// from the kernel's run-time stats (BPF_ENABLE_STATS, the figures `bpftool
    /// prog show` prints as run_time_ns / run_cnt). Stats are on only for these
    /// runs: they add their own clock reads to every packet.
    pub fn in_program_ns(&mut self, frames: u32, batch: u32) -> Result<Vec<(Receiver, &'static str, f64)>> {
        let mut out = Vec::new();
        let subjects = [
            (Receiver::AmpguardDrop, "ampguard"),
            (Receiver::AmpguardLimit, "ampguard"),
            (Receiver::CountDrop, "xdp_count_drop"),
            (Receiver::NftDrop, "xdp_pass"),
        ];
        for (r, prog) in subjects {
            let stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).context("BPF_ENABLE_STATS")?;
            let read = |me: &mut Self| -> Result<(u64, u64)> {
                let info = if prog == "ampguard" { me.dp.program().info()? } else { Self::xdp(me.base, prog)?.info()? };
                Ok((info.run_time().as_nanos() as u64, info.run_count()))
            };
            let (t0, c0) = read(self)?;
            self.run_once(r, frames, batch)?;
            let (t1, c1) = read(self)?;
            drop(stats);
            if c1 > c0 {
                out.push((r, prog, (t1 - t0) as f64 / (c1 - c0) as f64));
            }
        }
        Ok(out)
    }

    /// The per-CPU shares of one count-and-drop run (BASE_COUNT's per-CPU
    /// deltas): each generator CPU must have received part of the flood, or
    /// it did not spread.
    pub fn count_drop_split(&mut self, frames: u32, batch: u32) -> Result<Vec<(usize, u64)>> {
        let read = |me: &Self| -> Result<Vec<u64>> {
            let m: PerCpuArray<_, u64> = PerCpuArray::try_from(me.base.map("BASE_COUNT").context("no map BASE_COUNT")?)?;
            Ok(m.get(&0, 0)?.iter().copied().collect())
        };
        let before = read(self)?;
        self.run_once(Receiver::CountDrop, frames, batch)?;
        let after = read(self)?;
        let split: Vec<(usize, u64)> =
            self.gen_cpus.iter().map(|&c| (c, after.get(c).copied().unwrap_or(0) - before.get(c).copied().unwrap_or(0))).collect();
        for (c, n) in &split {
            ensure!(*n > 0, "CPU {c} received none of the flood on {}: the receiver did not run on every CPU", self.edge_if);
        }
        Ok(split)
    }

    /// Wall time of a live-frames call too short to matter: the fixed cost of a call.
    pub fn call_overhead_ms(&mut self, batch: u32) -> Result<f64> {
        let s = self.run_once(Receiver::CountDrop, 1_000, batch)?;
        Ok(s.secs * 1e3)
    }
}
