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
//!
//! Counted is what the receiver saw (program or nft counters), not what the
//! generator sent; the rate is counted / wall time of the generator call. Every
//! call is bounded by its frame count (u32), sized to last about `secs`.

use std::fs;
use std::time::Instant;

use ampguard::dataplane::DataPlane;
use ampguard_test_support::packet::PacketBuilder as P;
use ampguard_tests::lab::{Lab, EDGE_IF};
use anyhow::{bail, Context, Result};
use aya::{
    maps::PerCpuArray,
    programs::{TestRun, TestRunAttrs, TestRunOptions, Xdp, XdpMode},
    Ebpf,
};
use xdp_common::counters::verdict;

use super::cost::{BenchSlots, LIMIT_BURST, LIMIT_PPS, PAYLOAD_64};
use super::tables::vid;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Receiver {
    AmpguardDrop,
    CountDrop,
    NftDrop,
    AmpguardLimit,
    NftLimit,
}

impl Receiver {
    pub const ALL: [Receiver; 5] =
        [Receiver::AmpguardDrop, Receiver::CountDrop, Receiver::NftDrop, Receiver::AmpguardLimit, Receiver::NftLimit];

    pub fn label(self) -> &'static str {
        match self {
            Receiver::AmpguardDrop => "ampguard XDP, drop memcached",
            Receiver::CountDrop => "xdp_count_drop (count and drop)",
            Receiver::NftDrop => "nftables ingress, drop memcached",
            Receiver::AmpguardLimit => "ampguard XDP, limit ntp 10,000/s",
            Receiver::NftLimit => "nftables ingress, `limit rate over 10000/second`",
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

fn nft_ruleset(r: Receiver) -> String {
    let rules = if r.is_ntp() {
        format!(
            "udp sport 123 ip daddr 203.0.113.11 limit rate over {LIMIT_PPS}/second burst {LIMIT_BURST} packets counter drop\n\
             \t\tudp sport 123 ip daddr 203.0.113.11 counter"
        )
    } else {
        "udp sport 11211 ip daddr 203.0.113.10 counter drop".to_string()
    };
    format!(
        "table netdev {NFT_TABLE} {{\n\tchain ingress {{\n\t\ttype filter hook ingress device \"{EDGE_IF}\" priority 0;\n\t\t{rules}\n\t}}\n}}\n"
    )
}

/// The ruleset text of a receiver (for the report).
pub fn nft_rules_for_report(r: Receiver) -> String {
    nft_ruleset(r)
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
    pub wan_ifindex: u32,
    memcached_frame: Vec<u8>,
    ntp_frame: Vec<u8>,
}

fn lab_frame(b: P) -> Vec<u8> {
    let mut f = b.payload(PAYLOAD_64).build();
    // The lab's veth MACs, so frames that reach the stack are addressed to edge0.
    f[0..6].copy_from_slice(&[0x02, 0xa9, 0, 0, 0, 0x02]);
    f[6..12].copy_from_slice(&[0x02, 0xa9, 0, 0, 0, 0x01]);
    f
}

impl<'a> Live<'a> {
    pub fn new(lab: &'a Lab, dp: &'a mut DataPlane, base: &'a mut Ebpf, slots: &'a BenchSlots) -> Result<Self> {
        let wan_ifindex = lab.wan_ifindex()?;
        Ok(Self {
            lab,
            dp,
            base,
            slots,
            wan_ifindex,
            memcached_frame: lab_frame(P::udp4("198.51.100.7:11211", "203.0.113.10:40001")),
            ntp_frame: lab_frame(P::udp4("198.51.100.123:123", "203.0.113.11:40001")),
        })
    }

    pub fn frame_len(&self) -> usize {
        self.memcached_frame.len()
    }

    fn xdp<'e>(ebpf: &'e mut Ebpf, name: &str) -> Result<&'e mut Xdp> {
        Ok(ebpf.program_mut(name).with_context(|| format!("no program {name}"))?.try_into()?)
    }

    /// (dropped, passed) so far for a receiver.
    fn counters(&self, r: Receiver) -> Result<(u64, u64)> {
        Ok(match r {
            Receiver::AmpguardDrop => {
                let c = self.dp.policy_counters(self.slots.drop)?[vid("memcached") as usize];
                (c.by_verdict[verdict::DROPPED].packets, c.by_verdict[verdict::PASSED].packets)
            }
            Receiver::AmpguardLimit => {
                let c = self.dp.policy_counters(self.slots.limited)?[vid("ntp") as usize];
                (c.by_verdict[verdict::RATE_LIMITED].packets, c.by_verdict[verdict::PASSED].packets)
            }
            Receiver::CountDrop => (sum_percpu(self.base, "BASE_COUNT")?, 0),
            Receiver::NftDrop | Receiver::NftLimit => {
                let c = nft_counters(self.lab)?;
                (c.first().copied().unwrap_or(0), c.get(1).copied().unwrap_or(0))
            }
        })
    }

    /// Attaches the receiver, runs `frames` through the generator, detaches.
    fn run_once(&mut self, r: Receiver, frames: u32, batch: u32) -> Result<Sample> {
        let lab = self.lab;
        // Attach.
        let attached = match r {
            Receiver::AmpguardDrop | Receiver::AmpguardLimit => {
                let p = self.dp.program_mut();
                lab.edge.enter(|| p.attach(EDGE_IF, XdpMode::Driver))?.context("attach ampguard to edge0")?
            }
            Receiver::CountDrop => {
                let p = Self::xdp(self.base, "xdp_count_drop")?;
                lab.edge.enter(|| p.attach(EDGE_IF, XdpMode::Driver))?.context("attach xdp_count_drop")?
            }
            Receiver::NftDrop | Receiver::NftLimit => {
                let path = std::env::temp_dir().join(format!("ampguard-bench-{}.nft", std::process::id()));
                fs::write(&path, nft_ruleset(r))?;
                let loaded = lab.edge.exec(&["nft", "-f", &path.to_string_lossy()]);
                let _ = fs::remove_file(&path);
                loaded.context("loading the nftables ruleset")?;
                let p = Self::xdp(self.base, "xdp_pass")?;
                lab.edge.enter(|| p.attach(EDGE_IF, XdpMode::Driver))?.context("attach xdp_pass")?
            }
        };
        let result = self.generate_and_count(r, frames, batch);
        // Detach, whatever happened.
        let detached = match r {
            Receiver::AmpguardDrop | Receiver::AmpguardLimit => self.dp.program_mut().detach(attached),
            Receiver::CountDrop => Self::xdp(self.base, "xdp_count_drop")?.detach(attached),
            Receiver::NftDrop | Receiver::NftLimit => Self::xdp(self.base, "xdp_pass")?.detach(attached),
        };
        if r == Receiver::NftDrop || r == Receiver::NftLimit {
            lab.edge.exec(&["nft", "delete", "table", "netdev", NFT_TABLE]).context("deleting the nft table")?;
        }
        detached.context("detaching from edge0")?;
        result
    }

    fn generate_and_count(&self, r: Receiver, frames: u32, batch: u32) -> Result<Sample> {
        let frame = if r.is_ntp() { &self.ntp_frame } else { &self.memcached_frame };
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex.
        let md: [u32; 6] = [0, frame.len() as u32, 0, self.wan_ifindex, 0, 0];
        let ctx: Vec<u8> = md.iter().flat_map(|v| v.to_ne_bytes()).collect();
        let gen: &Xdp = self.base.program("xdp_gen_tx").context("no xdp_gen_tx")?.try_into()?;
        let (d0, p0) = self.counters(r)?;
        let (elapsed, res) = self.lab.wan.enter(|| {
            let t = Instant::now();
            let res = gen.test_run(TestRunOptions {
                data_in: Some(frame),
                ctx_in: Some(&ctx),
                repeat: frames,
                attrs: TestRunAttrs::new().xdp_live_frames(batch),
                ..Default::default()
            });
            (t.elapsed(), res)
        })?;
        res.context("live-frames BPF_PROG_TEST_RUN (xdp_gen_tx out of wan0)")?;
        let (d1, p1) = self.counters(r)?;
        Ok(Sample { sent: frames as u64, dropped: d1 - d0, passed: p1 - p0, secs: elapsed.as_secs_f64() })
    }

    /// Calibrates each receiver, then measures all of them `rounds` times, interleaved.
    pub fn measure(&mut self, cfg: &LiveConfig) -> Result<Vec<LiveResult>> {
        const CALIBRATION_FRAMES: u32 = 1_000_000;
        const MIN_FRAMES: f64 = 1e6;
        const MAX_FRAMES: f64 = 60e6;
        let mut frames = Vec::new();
        for r in Receiver::ALL {
            let s = self.run_once(r, CALIBRATION_FRAMES, cfg.batch)?;
            if s.dropped == 0 {
                bail!("{}: the receiver dropped none of {} frames (do frames cross the veth? passed {})", r.label(), s.sent, s.passed);
            }
            let rate = (s.dropped + s.passed) as f64 / s.secs;
            let n = (rate * cfg.secs).clamp(MIN_FRAMES, MAX_FRAMES) as u32;
            eprintln!("  calibration: {:<50} {:>6.2} Mpps -> {n} frames a round", r.label(), rate / 1e6);
            frames.push(n);
        }
        let mut results: Vec<LiveResult> = Receiver::ALL.iter().map(|r| LiveResult { receiver: *r, samples: Vec::new() }).collect();
        let n = Receiver::ALL.len();
        for round in 0..cfg.rounds {
            for k in 0..n {
                let i = (k + round) % n;
                let s = self.run_once(Receiver::ALL[i], frames[i], cfg.batch)?;
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

    /// Wall time of a live-frames call too short to matter: the fixed cost of a call.
    pub fn call_overhead_ms(&mut self, batch: u32) -> Result<f64> {
        let s = self.run_once(Receiver::CountDrop, 1_000, batch)?;
        Ok(s.secs * 1e3)
    }
}
