//! BENCHMARKS.md: written whole by each run, except the hand-written notes
//! between the markers below, which are carried over from the previous file.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::control::{percentile, Control};
use super::cost::{Measured, PEER_LABEL};
use super::diag::Diag;
use super::live::{nft_rules_for_report, LiveResult, Receiver, Sources, GEN_RANGE};
use super::memory::MapMem;
use super::sys::{Machine, MapFacts, ProgFacts};

pub const NOTES_BEGIN: &str = "<!-- notes:begin (hand-written; `cargo xtask bench` keeps this part) -->";
pub const NOTES_END: &str = "<!-- notes:end -->";

pub struct Report {
    pub command: String,
    pub rev: String,
    pub machine: Machine,
    pub cpu: usize,
    pub rounds: usize,
    pub repeat: u32,
    pub v4_hist: BTreeMap<u8, usize>,
    pub v6_hist: BTreeMap<u8, usize>,
    pub allow_v4: usize,
    pub allow_v6: usize,
    pub v4_chunks: u32,
    pub max_policies: u32,
    pub limiters: u32,
    pub populate_secs: f64,
    pub cost: Vec<Measured>,
    pub diag: Option<Diag>,
    pub live: Option<LiveSection>,
    pub every_core: Option<EveryCoreSection>,
    pub memory: Option<MemorySection>,
    pub progs: Vec<ProgFacts>,
    pub maps: Vec<MapFacts>,
    pub control: Option<Control>,
    pub reaction: Option<super::reaction::ReactionSection>,
    pub notes: String,
}

pub struct LiveSection {
    pub results: Vec<LiveResult>,
    pub rounds: usize,
    pub batch: u32,
    pub frame_len: usize,
    pub call_overhead_ms: f64,
    /// (receiver, XDP program on edge0, ns per packet inside it with run-time stats on).
    pub in_program: Vec<(Receiver, &'static str, f64)>,
    pub sources: Sources,
}

/// The live run with one generator per CPU on a two-queue veth.
pub struct EveryCoreSection {
    pub results: Vec<LiveResult>,
    pub cpus: Vec<usize>,
    pub rounds: usize,
    pub batch: u32,
    /// (CPU, packets) of one count-and-drop run: the receiver ran on each.
    pub split: Vec<(usize, u64)>,
}

impl EveryCoreSection {
    fn get(&self, r: Receiver) -> Option<&LiveResult> {
        self.results.iter().find(|x| x.receiver == r)
    }

    /// The limiter's admitted rate (passed per second) over the rounds, median,
    /// and its error against the configured rate after taking out the burst a
    /// full bucket starts with.
    pub fn limiter(&self) -> Option<(f64, f64)> {
        let l = self.get(Receiver::AmpguardLimit)?;
        let mut errs: Vec<f64> = Vec::new();
        let mut rates: Vec<f64> = Vec::new();
        for s in &l.samples {
            let admitted = s.passed as f64 - super::cost::LIMIT_BURST as f64;
            let rate = admitted / s.secs;
            rates.push(rate);
            errs.push(rate / super::cost::LIMIT_PPS as f64 - 1.0);
        }
        Some((super::cost::median(&rates), super::cost::median(&errs)))
    }
}

/// Kernel memory of ampguard's maps as the bench loaded them.
pub struct MemorySection {
    pub maps: Vec<MapMem>,
    /// Possible CPUs of this machine (what per-CPU maps are sized by).
    pub possible: u64,
    pub policies: usize,
}

/// The CPU counts the memory table is printed for.
const MEM_CPUS: [u64; 3] = [2, 64, 128];

impl MemorySection {
    fn total(&self, n: u64) -> u64 {
        self.maps.iter().map(|m| m.bytes(n)).sum()
    }

    fn measured(&self) -> u64 {
        self.maps.iter().filter_map(|m| m.memlock).sum()
    }
}

/// The notes part of an existing BENCHMARKS.md, if it has one.
pub fn existing_notes(old: &str) -> Option<String> {
    let start = old.find(NOTES_BEGIN)? + NOTES_BEGIN.len();
    let end = old[start..].find(NOTES_END)? + start;
    Some(old[start..end].trim_matches('\n').to_string())
}

fn met(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "**missed**"
    }
}

fn hist(h: &BTreeMap<u8, usize>) -> String {
    h.iter().map(|(len, n)| format!("/{len}: {n}")).collect::<Vec<_>>().join(", ")
}

/// The maps' facts as a markdown table, followed by a blank line.
fn map_table(w: &mut String, maps: &[MapFacts]) {
    let _ = writeln!(w, "| map | type | max entries | value bytes | memlock |\n| --- | --- | --- | --- | --- |");
    for mp in maps {
        let memlock = mp.memlock.map(mib).unwrap_or("?".into());
        let _ = writeln!(w, "| {} | {} | {} | {} | {} |", mp.name, mp.kind, mp.max_entries, mp.value_size, memlock);
    }
    let _ = writeln!(w);
}

/// Bytes in the unit that reads best.
fn bytes(b: u64) -> String {
    if b >= 1024 * 1024 {
        mib(b)
    } else if b >= 1024 {
        format!("{:.1} KiB", b as f64 / 1024.0)
    } else {
        format!("{b} B")
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

impl Report {
    fn bare(&self) -> f64 {
        self.cost.first().map(|c| c.median()).unwrap_or(f64::NAN)
    }

    fn cost(&self, label: &str) -> Option<&Measured> {
        self.cost.iter().find(|c| c.label == label)
    }

    fn ratio(&self, m: &Measured) -> f64 {
        m.ratio()
    }

    /// Median over rounds of a's rate / b's in the same round (a round runs
    /// every receiver one after the other, so a slow phase of the machine
    /// meets both of a pair more often than the medians of each would).
    fn live_ratio(&self, a: Receiver, b: Receiver) -> Option<f64> {
        let l = self.live.as_ref()?;
        let get = |r| l.results.iter().find(|x| x.receiver == r);
        let (x, y) = (get(a)?, get(b)?);
        let ratios: Vec<f64> = x.samples.iter().zip(&y.samples).map(|(p, q)| p.drop_mpps() / q.drop_mpps()).collect();
        Some(super::cost::median(&ratios))
    }

    fn live(&self, r: Receiver) -> Option<f64> {
        let l = self.live.as_ref()?;
        l.results.iter().find(|x| x.receiver == r).map(|x| x.median().drop_mpps())
    }

    fn part1(&self, w: &mut String) {
        // Part 1.
        let _ = writeln!(w, "## 1. Per-packet cost through BPF_PROG_TEST_RUN\n");
        if self.cost.is_empty() {
            let _ = writeln!(w, "Not run in this report (`--only` without part1).\n");
            return;
        }
        let _ = writeln!(
            w,
            "Tables loaded in ampguard's maps while measuring (seeded PRNG, identical every run; \
             `tests/src/bench/tables.rs`):\n"
        );
        let v4: usize = self.v4_hist.values().sum();
        let v6: usize = self.v6_hist.values().sum();
        let _ = writeln!(
            w,
            "- {v4} IPv4 victim prefixes in 40 /16s of 100.64.0.0/10 plus the bench's own in 203.0.113.0/24: {}",
            hist(&self.v4_hist)
        );
        let _ = writeln!(w, "- {v6} IPv6 victim prefixes in 2001:db8::/32: {}", hist(&self.v6_hist));
        let _ = writeln!(
            w,
            "- {} allowlist entries ({} IPv4 in 10/8, 172.16/12 and 192.0.2.10/32; {} IPv6 in fd00::/8)",
            self.allow_v4 + self.allow_v6,
            self.allow_v4,
            self.allow_v6
        );
        let _ = writeln!(
            w,
            "- capacity: max_policies {}, v4_chunks {} (one per /16 holding prefixes longer than /16), \
             {} limiters in use; every policy drops 5 vectors and non-first fragments, a quarter also limit \
             NTP and DNS, 5% are in monitor mode",
            self.max_policies, self.v4_chunks, self.limiters
        );
        let _ = writeln!(w, "- loading all of it through the `DataPlane` handle took {:.1} s\n", self.populate_secs);
        let _ = writeln!(
            w,
            "| path | packet | frame | ns/run (median of {}) | min - max | x bare | ns over bare | target | checked |\n\
             | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
            self.rounds
        );
        for c in &self.cost {
            let lo = c.samples.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = c.samples.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let target = match c.target {
                Some(t) => format!("<= {t:.1}x: {}", met(self.ratio(c) <= t)),
                None => "-".into(),
            };
            let _ = writeln!(
                w,
                "| {} | {} | {} B | {:.1} | {lo:.1} - {hi:.1} | {:.2} | {:+.1} | {target} | {} |",
                c.label,
                c.what,
                c.frame_len,
                c.median(),
                self.ratio(c),
                c.over_bare(),
                c.checked
            );
        }
        let _ = writeln!(w);
        let samples: Vec<String> = self
            .cost
            .iter()
            .map(|c| format!("{}: [{}]", c.label, c.samples.iter().map(|x| format!("{x:.1}")).collect::<Vec<_>>().join(", ")))
            .collect();
        let _ = writeln!(
            w,
            "The peer, \"{PEER_LABEL}\": xdp-filter from Debian's xdp-tools, loaded by its own tool on a lab veth \
             (`{}`, libxdp pointed at a private bpffs), its program opened by id and run through the same \
             in-process BPF_PROG_TEST_RUN with the same 64-byte memcached packet as \"attack, dropped\", paired \
             with bare like every subject, then unloaded. Its filter is one per-CPU array lookup by port.\n",
            super::peer::COMMANDS
        );
        let _ = writeln!(w, "<details><summary>every round (ns/run)</summary>\n\n```\n{}\n```\n</details>\n", samples.join("\n"));

        // Diagnostics.
        let Some(d) = &self.diag else { return };
        let _ = writeln!(
            w,
            "### Where the time goes
"
        );
        let _ = writeln!(
            w,
            "The same packets again ({} more interleaved rounds; bare = {:.1} ns in these rounds): with the \
             test clock set (`set_time_override`: `now_ns()` returns the AG_CONFIG value it reads first anyway, \
             instead of reading `bpf_jiffies64` and the per-CPU clock cache, which calls \
             `bpf_ktime_get_coarse_ns` once per tick), and through a second ampguard whose tables hold only the \
             bench's {} IPv4 + {} IPv6 victims and 1 allowlist entry. Column differences are the real clock's \
             cost (on paths that read it: an expiring policy or a limit) and the table size.\n",
            d.rounds,
            d.bare,
            super::cost::BENCH_V4_VICTIMS,
            super::cost::BENCH_V6_VICTIMS
        );
        let _ = writeln!(
            w,
            "| path | full tables, real clock | full tables, test clock | small tables, real clock |\n| --- | --- | --- | --- |"
        );
        for r in &d.rows {
            let _ = writeln!(
                w,
                "| {} | {:.1} ns ({:.2}x) | {:.1} ns ({:.2}x) | {:.1} ns ({:.2}x) |",
                r.label,
                r.full,
                r.full / d.bare,
                r.test_clock,
                r.test_clock / d.bare,
                r.small,
                r.small / d.bare
            );
        }
        let _ = writeln!(w);
    }

    fn every_core_section(&self, w: &mut String) {
        let _ = writeln!(w, "## 2b. Live traffic on every core\n");
        let Some(e) = &self.every_core else {
            let _ = writeln!(w, "Not run in this report.\n");
            return;
        };
        let _ = writeln!(
            w,
            "A second veth pair in the lab's namespaces, `wan1` <-> `edge1`, with two queues a side \
             (`numtxqueues 2 numrxqueues 2`), and one generator thread per CPU ({:?}), each pinned to its CPU \
             and running `xdp_gen_tx` in live-frames mode (batch {}) out of wan1; they start together at a barrier. \
             veth puts a frame sent on CPU n on the peer's receive queue n and runs that queue's NAPI on CPU n, so \
             the receiver on edge1 runs on both CPUs at once, each CPU's share generator included. The aggregate \
             rate is everything the receiver counted over the wall time of the slower generator; {} rounds, \
             interleaved, median. Same 100,000 sources per CPU as above. The limiter (ampguard, ntp to \
             203.0.113.11 at {}/s, burst {}) sees both CPUs' floods at once: its admitted rate is passed packets \
             minus the burst a full bucket starts with, over the round's wall time.\n",
            e.cpus,
            e.batch,
            e.rounds,
            super::cost::LIMIT_PPS,
            super::cost::LIMIT_BURST
        );
        let _ = writeln!(
            w,
            "| receiver | dropped, Mpps on {} CPUs (median) | rounds (Mpps) | dropped / sent | passed (limit) |\n| --- | --- | --- | --- | --- |",
            e.cpus.len()
        );
        for r in &e.results {
            let md = r.median();
            let rounds: Vec<String> = r.samples.iter().map(|s| format!("{:.2}", s.drop_mpps())).collect();
            let passed = if r.receiver == Receiver::AmpguardLimit {
                format!("{} in {:.2} s ({:.0}/s)", md.passed, md.secs, md.passed as f64 / md.secs)
            } else {
                "-".into()
            };
            let _ = writeln!(
                w,
                "| {} | {:.2} | {} | {:.4} | {passed} |",
                r.receiver.label(),
                md.drop_mpps(),
                rounds.join(", "),
                md.dropped as f64 / md.sent as f64
            );
        }
        let split: Vec<String> = e.split.iter().map(|(c, n)| format!("CPU {c}: {n}")).collect();
        let _ = writeln!(w, "\nThe flood spread: one count-and-drop run counted, per CPU, {} packets.", split.join(", "));
        if let Some((rate, err)) = e.limiter() {
            let errs: Vec<String> = e
                .get(Receiver::AmpguardLimit)
                .map(|l| {
                    l.samples
                        .iter()
                        .map(|s| {
                            format!(
                                "{:+.1}%",
                                ((s.passed as f64 - super::cost::LIMIT_BURST as f64) / s.secs / super::cost::LIMIT_PPS as f64 - 1.0)
                                    * 100.0
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            let _ = writeln!(
                w,
                "\nThe limiter on {} CPUs: admitted **{rate:.0}/s** against its configured {}/s, error **{:+.1}%** \
                 (median; per round: {}); the issue's target is within 2%, today's documented bound 10%.",
                e.cpus.len(),
                super::cost::LIMIT_PPS,
                err * 100.0,
                errs.join(", ")
            );
        }
        let _ = writeln!(w);
    }

    fn memory_section(&self, w: &mut String) {
        let _ = writeln!(w, "## Kernel memory for N CPUs\n");
        let Some(m) = &self.memory else {
            let _ = writeln!(w, "Not run in this report.\n");
            return;
        };
        let _ = writeln!(
            w,
            "Every map of ampguard's program as the bench loaded it ({} policies in max_policies {}), read from \
             the kernel: type, key and value size, max_entries and flags from BPF_OBJ_GET_INFO_BY_FD, the \
             measured `memlock` from /proc/self/fdinfo, and the entries of maps that allocate per element (LPM \
             tries) counted with BPF_MAP_GET_NEXT_KEY. Each map's size for N CPUs follows its type's formula, \
             after the kernel's `*_map_mem_usage` (E = max_entries, N = possible CPUs; values rounded up to 8 B; \
             312 B is `struct bpf_array`, 48 B `struct htab_elem`, 24 B `struct lpm_trie_node`, x86-64): \
             per-CPU arrays `312 + 8·E + round_up(V,8)·E·N`, arrays `312 + round_up(V,8)·E`, preallocated hashes \
             `16·buckets + 32·N + (48 + round_up(K,8) + round_up(V,8))·(E + N) + 8·N`, LPM tries \
             `(24 + K - 4 + V)·entries`, ring buffers `E + 3 pages + page pointers`. Per-CPU maps are sized by \
             *possible* CPUs (/sys/devices/system/cpu/possible), not online ones: here {} possible.\n",
            m.policies, self.max_policies, m.possible
        );
        let measured = m.measured();
        let here = m.total(m.possible);
        let _ = writeln!(
            w,
            "Check on this machine ({} possible CPUs): the formulas give **{}**, the kernel's memlock is **{}** \
             ({:.4}x; per map in the table).\n",
            m.possible,
            mib(here),
            mib(measured),
            here as f64 / measured.max(1) as f64
        );
        let _ = writeln!(
            w,
            "| map | type | key | value | max_entries | flags | entries | formula | memlock here | formula here | {} |\n|{}",
            MEM_CPUS.iter().map(|n| format!("{n} CPUs")).collect::<Vec<_>>().join(" | "),
            " --- |".repeat(10 + MEM_CPUS.len())
        );
        for x in &m.maps {
            let memlock = x.memlock.map(bytes).unwrap_or("?".into());
            let here = x.bytes(m.possible);
            let closeness = match x.memlock {
                Some(ml) if ml > 0 => format!(" ({:.3}x)", here as f64 / ml as f64),
                _ => String::new(),
            };
            let _ = writeln!(
                w,
                "| {} | {} | {} | {} | {} | {:#x} | {} | `{}` | {memlock} | {}{closeness} | {} |",
                x.name,
                x.kind,
                x.key_size,
                x.value_size,
                x.max_entries,
                x.flags,
                x.entries.map(|n| n.to_string()).unwrap_or("-".into()),
                x.formula(),
                bytes(here),
                MEM_CPUS.iter().map(|&n| bytes(x.bytes(n))).collect::<Vec<_>>().join(" | ")
            );
        }
        let _ = writeln!(
            w,
            "| **total** | | | | | | | | **{}** | **{}** | {} |\n",
            mib(measured),
            mib(here),
            MEM_CPUS.iter().map(|&n| format!("**{}**", mib(m.total(n)))).collect::<Vec<_>>().join(" | ")
        );
        let per_cpu: Vec<&str> =
            m.maps.iter().filter(|x| x.per_cpu() && x.bytes(128) > x.bytes(2) + 1024 * 1024).map(|x| x.name.as_str()).collect();
        if !per_cpu.is_empty() {
            let _ = writeln!(w, "Maps that grow by more than 1 MiB from 2 to 128 CPUs: {}.\n", per_cpu.join(", "));
        }
    }

    pub fn render(&self) -> String {
        let mut s = String::new();
        let w = &mut s;
        let m = &self.machine;
        let _ = writeln!(w, "# ampguard benchmarks\n");
        let _ = writeln!(
            w,
            "Written by `{}` (which builds and runs `cargo run --release -p ampguard-tests --bin bench`; \
             source in `tests/src/bin/bench.rs` and `tests/src/bench/`). Everything above the notes at the \
             end is regenerated on each run.\n",
            self.command
        );
        let _ = writeln!(w, "| | |\n| --- | --- |");
        let _ = writeln!(w, "| command | `{}` |", self.command);
        let _ = writeln!(w, "| date | {} |", m.date);
        let _ = writeln!(w, "| source | {} |", self.rev);
        let _ = writeln!(w, "| kernel (`uname -r`) | {} |", m.kernel);
        let _ = writeln!(w, "| CPU (`/proc/cpuinfo`) | {} ({} vCPUs) |", m.cpu_model, m.cpus);
        let _ = writeln!(w, "| memory | {} |", m.mem_total);
        let _ = writeln!(w, "| load average at start | {} |", m.loadavg);
        let _ = writeln!(w, "| bench pinned to | CPU {} |\n", self.cpu);

        let _ = writeln!(w, "## How to read\n");
        let _ = writeln!(
            w,
            "Part 1 runs each packet through BPF_PROG_TEST_RUN {} times per call; the kernel reports the mean \
             ns per run (whole ns, truncated: on a CPU where the bare program takes 8 ns, a 1 ns step is 0.12 \
             of a ratio, so compare \"ns over bare\" too; the call's wall time is no better, with milliseconds \
             of fixed cost per call here). Each figure is the median of {} rounds, and rounds interleave all \
             subjects. Every subject's run is paired with a run of a program that only returns XDP_PASS \
             (\"bare\") right before it: this shared VM has slow phases that last seconds and double a \
             figure, and a pair meets the same phase. \"x bare\" is the median of the pairs' ratios, and \
             \"ns over bare\" the median of their differences (the program's own work, which compares across \
             CPUs better than the ratio: the bare program is 21 ns on the AMD EPYC of PERF-FACTS.md and 8 ns \
             on this kind's Intel Xeon). test_run replays one packet \
             against unchanging maps, so every lookup is cache-hot: these are best-case per-packet costs of \
             the code path, not of a cache-cold table walk. Part 2 sends real frames across a veth pair with \
             an in-kernel generator and counts what the receiver dropped; generator and receiver share one \
             core, so Mpps there is \"per core, generator included\" and the generator's own cost is in every \
             figure (it caps the fastest receivers). Targets are reported, not asserted.\n",
            self.repeat, self.rounds
        );
        let _ = writeln!(
            w,
            "**The peer.** xdp-filter (Debian's xdp-tools), set up as a memcached source-port filter, is measured \
             in the same run as ampguard: under test_run with the same packet (its \"ns over bare\" is the yardstick \
             for \"within 1.25x of the peer\") and as a live receiver in the same veth harness. It does one port \
             lookup and no per-victim work, so it is the cost of a filter that knows nothing about victims.\n\n\
             **Real sources.** Every live flood comes from 100,000 distinct reflector addresses in 198.18.0.0/15 \
             (the generator rewrites each frame's source and fixes its checksums), so the allowlist lookups on \
             the source meet 100,000 different cache lines' worth of keys instead of one.\n\n\
             **Every core** (section 2b) spreads the flood over both CPUs through a two-queue veth with one pinned \
             generator per CPU: the receiver runs on both at once, so shared state (a token bucket, a shared \
             counter) is contended as on a real host; the rates there are aggregates over all CPUs, generators \
             included, and the limiter's admitted rate is compared with its configured 10,000/s.\n\n\
             **Kernel memory for N CPUs** lists every map the program has as the kernel reports it, a formula per \
             map type for N possible CPUs checked against the measured memlock on this machine, and the totals \
             for 2, 64 and 128 CPUs that the memory targets are judged on.\n"
        );

        // Summary.
        let _ = writeln!(w, "## Targets\n");
        let _ = writeln!(w, "| target | measured | |\n| --- | --- | --- |");
        for c in self.cost.iter().skip(2) {
            if let Some(t) = c.target {
                let r = self.ratio(c);
                let _ = writeln!(
                    w,
                    "| {} <= {t:.1}x bare | {r:.2}x ({:.1} ns vs {:.1} ns; {:+.1} ns) | {} |",
                    c.label,
                    c.median(),
                    self.bare(),
                    c.over_bare(),
                    met(r <= t)
                );
            }
        }
        if let (Some(d), Some(p)) = (self.cost("attack, dropped"), self.cost(PEER_LABEL)) {
            let (a, q) = (d.over_bare(), p.over_bare());
            let _ = writeln!(w, "| attack, dropped: within +12 ns of bare | {a:+.1} ns over bare | {} |", met(a <= 12.0));
            let r = a / q;
            let _ = writeln!(
                w,
                "| attack, dropped: within 1.25x of the peer (ns over bare, ampguard / xdp-filter) | {r:.2}x ({a:+.1} ns vs {q:+.1} ns) | {} |",
                met(q > 0.0 && r <= 1.25)
            );
        } else {
            let _ = writeln!(w, "| part 1 (test_run) | not run (`--only` without part1) | |");
        }
        match (self.live(Receiver::AmpguardDrop), self.live(Receiver::NftDrop), self.live(Receiver::CountDrop)) {
            (Some(a), Some(n), Some(c)) => {
                let rn = self.live_ratio(Receiver::AmpguardDrop, Receiver::NftDrop).unwrap_or(a / n);
                let rc = self.live_ratio(Receiver::AmpguardDrop, Receiver::CountDrop).unwrap_or(a / c);
                let _ = writeln!(
                    w,
                    "| live drop rate >= 3x nftables per core | {rn:.2}x (medians {a:.2} vs {n:.2} Mpps) | {} |",
                    met(rn >= 3.0)
                );
                let _ = writeln!(
                    w,
                    "| live drop at least 0.9x count-and-drop | {rc:.2}x (medians {a:.2} vs {c:.2} Mpps) | {} |",
                    met(rc >= 0.9)
                );
                if let (Some(p), Some(rp)) = (self.live(Receiver::XdpFilter), self.live_ratio(Receiver::AmpguardDrop, Receiver::XdpFilter))
                {
                    let _ =
                        writeln!(w, "| live drop vs xdp-filter (the peer; no target set) | {rp:.2}x (medians {a:.2} vs {p:.2} Mpps) | |");
                }
            }
            _ => {
                let _ = writeln!(w, "| live traffic, one core | not run | |");
            }
        }
        if let (Some(a), Some(n), Some(r)) = (
            self.live(Receiver::AmpguardLimit),
            self.live(Receiver::NftLimit),
            self.live_ratio(Receiver::AmpguardLimit, Receiver::NftLimit),
        ) {
            let _ =
                writeln!(w, "| live rate-limit, vs nftables `limit rate` (no target set) | {r:.2}x (medians {a:.2} vs {n:.2} Mpps) | |");
        }
        match &self.every_core {
            Some(e) => {
                for r in [Receiver::AmpguardDrop, Receiver::CountDrop, Receiver::XdpFilter] {
                    if let Some(x) = e.get(r) {
                        let _ = writeln!(
                            w,
                            "| every core ({} CPUs): aggregate drop rate, {} (no target set) | {:.2} Mpps | |",
                            e.cpus.len(),
                            r.label(),
                            x.median().drop_mpps()
                        );
                    }
                }
                if let Some((rate, err)) = e.limiter() {
                    let one = self
                        .live
                        .as_ref()
                        .and_then(|l| l.results.iter().find(|x| x.receiver == Receiver::AmpguardLimit))
                        .map(|x| {
                            let m = x.median();
                            let r = (m.passed as f64 - super::cost::LIMIT_BURST as f64) / m.secs;
                            format!("; one core in part 2: {r:.0}/s ({:+.1}%)", (r / super::cost::LIMIT_PPS as f64 - 1.0) * 100.0)
                        })
                        .unwrap_or_default();
                    let _ = writeln!(
                        w,
                        "| every core: the limiter holds within 2% of its 10,000/s with the flood on {} CPUs | admitted {rate:.0}/s ({:+.1}%{one}) | {} |",
                        e.cpus.len(),
                        err * 100.0,
                        met(err.abs() <= 0.02)
                    );
                }
            }
            None => {
                let _ = writeln!(w, "| live traffic, every core | not run | |");
            }
        }
        if let Some(m) = &self.memory {
            for (n, cap) in [(64u64, 128u64), (128, 160)] {
                let t = m.total(n);
                let _ = writeln!(
                    w,
                    "| kernel memory at {} policies, {n} CPUs <= {cap} MiB (computed from the maps' real sizes) | {} | {} |",
                    m.policies,
                    mib(t),
                    met(t <= cap * 1024 * 1024)
                );
            }
        }
        if let Some(c) = &self.control {
            control_targets(w, c);
        }
        let _ = writeln!(w);

        self.part1(w);

        // Part 2.
        let _ = writeln!(w, "## 2. Live traffic across a veth pair\n");
        match &self.live {
            None => {
                let _ = writeln!(w, "Not run in this report (`--skip-live`).\n");
            }
            Some(l) => {
                let _ = writeln!(
                    w,
                    "Generator: `xdp_gen_tx` (XDP_TX) under BPF_PROG_TEST_RUN with live frames (batch {}), \
                     ingress wan0 in the lab's wan namespace, on CPU {}; {}-byte UDP frames out of wan0 into \
                     edge0. Receivers attached to edge0 in native (driver) mode, one at a time, interleaved over \
                     {} rounds of about equal length; the figure is the median round. \"dropped\" is what the \
                     receiver counted (ampguard's policy counters, BASE_COUNT, nft counters), divided by the \
                     wall time of the generator call (a live-frames call has {:.1} ms of fixed cost, measured \
                     with 1,000 frames; that is {:.1}% of the shortest median round and is not subtracted). ampguard runs with the full tables of part 1 and the real clock. The nftables \
                     runs have `xdp_pass` on edge0 so veth accepts the XDP frames (see `live.rs`); its few ns are \
                     in their figures.\n",
                    l.batch,
                    self.cpu,
                    l.frame_len,
                    l.rounds,
                    l.call_overhead_ms,
                    100.0 * l.call_overhead_ms / 1e3
                        / l.results.iter().map(|r| r.median().secs).fold(f64::INFINITY, f64::min)
                );
                let sr = &l.sources;
                let _ = writeln!(
                    w,
                    "Real sources: the generator rewrites each frame's IPv4 source, so the floods come from **{} \
                     distinct reflector addresses** in {GEN_RANGE}, outside the allowlist and the victims (source k \
                     of a CPU: 198.18.0.0 + (k · 7,919 mod 100,000), a permutation, so every 100,000 consecutive \
                     frames of a CPU carry each address once), with the IP and UDP checksums fixed incrementally \
                     (RFC 1624). Live-frames mode copies the caller's frame into a page only when the page is first \
                     allocated and later resets only the pointers (net/bpf/test_run.c), so the program reads the \
                     address and checksums the frame holds and updates from those: valid either way. Checked before \
                     the runs: {} frames read back (address as the sequence predicts, both checksums recomputed from \
                     scratch), and valid checksums after {} chained rewrites of one buffer.\n",
                    sr.distinct, sr.checked, sr.chained
                );
                let _ = writeln!(
                    w,
                    "| receiver | dropped, Mpps per core (median) | ns per packet | rounds (Mpps) | dropped / sent | passed (limit) |\n\
                     | --- | --- | --- | --- | --- | --- |"
                );
                for r in &l.results {
                    let md = r.median();
                    let rounds: Vec<String> = r.samples.iter().map(|s| format!("{:.2}", s.drop_mpps())).collect();
                    let passed = if matches!(r.receiver, Receiver::AmpguardLimit | Receiver::NftLimit) {
                        format!("{} ({:.0}/s)", md.passed, md.passed as f64 / md.secs)
                    } else {
                        "-".into()
                    };
                    let _ = writeln!(
                        w,
                        "| {} | {:.2} | {:.0} | {} | {:.4} | {passed} |",
                        r.receiver.label(),
                        md.drop_mpps(),
                        1e3 / md.drop_mpps(),
                        rounds.join(", "),
                        md.dropped as f64 / md.sent as f64
                    );
                }
                let _ = writeln!(w);
                let pairs = [
                    ("ampguard drop / nftables drop", Receiver::AmpguardDrop, Receiver::NftDrop),
                    ("ampguard drop / count-and-drop", Receiver::AmpguardDrop, Receiver::CountDrop),
                    ("ampguard drop / xdp-filter (peer)", Receiver::AmpguardDrop, Receiver::XdpFilter),
                    ("xdp-filter / count-and-drop", Receiver::XdpFilter, Receiver::CountDrop),
                    ("ampguard limit / nftables limit", Receiver::AmpguardLimit, Receiver::NftLimit),
                    ("ampguard limit / count-and-drop", Receiver::AmpguardLimit, Receiver::CountDrop),
                ];
                for (what, a, b) in pairs {
                    if let (Some(x), Some(y), Some(r)) = (self.live(a), self.live(b), self.live_ratio(a, b)) {
                        let _ = writeln!(w, "- {what}: **{r:.2}x** (median of the rounds' ratios; ratio of the medians {:.2}x)", x / y);
                    }
                }
                if !l.in_program.is_empty() {
                    let _ = writeln!(
                        w,
                        "\nTime inside the XDP program on edge0 during a live run, from the kernel's run-time \
                         stats (run_time_ns / run_cnt, what `bpftool prog show` prints; stats on for these runs \
                         only, and their own clock reads are partly inside the figure):\n"
                    );
                    let _ = writeln!(w, "| receiver | program on edge0 | ns per packet inside it |\n| --- | --- | --- |");
                    for (r, prog, ns) in &l.in_program {
                        let _ = writeln!(w, "| {} | {prog} | {ns:.1} |", r.label());
                    }
                }
                let _ = writeln!(w, "\nThe nftables rulesets (netdev family, loaded with `nft -f` in the edge namespace):\n");
                let _ = writeln!(w, "```\n{}{}```\n", nft_rules_for_report(Receiver::NftDrop), nft_rules_for_report(Receiver::NftLimit));
            }
        }

        self.every_core_section(w);

        // Programs and memory.
        let _ = writeln!(w, "## Programs and kernel memory\n");
        let _ = writeln!(
            w,
            "From BPF_OBJ_GET_INFO_BY_FD and /proc/self/fdinfo (the fields `bpftool prog show` and `bpftool \
             map show` print; bpftool itself is not on this image).\n"
        );
        let _ = writeln!(w, "| program | instructions processed by the verifier | xlated bytes | JITed bytes |\n| --- | --- | --- | --- |");
        for p in &self.progs {
            let _ = writeln!(
                w,
                "| {} | {} | {} | {} |",
                p.name,
                p.verified_insns.map(|n| n.to_string()).unwrap_or("?".into()),
                p.xlated_bytes.map(|n| n.to_string()).unwrap_or("?".into()),
                p.jited_bytes
            );
        }
        let total: u64 = self.maps.iter().filter_map(|m| m.memlock).sum();
        let _ = writeln!(w, "\nampguard's maps at this capacity (total memlock **{}**):\n", mib(total));
        map_table(w, &self.maps);

        self.memory_section(w);

        let _ = writeln!(w, "## 3. Control plane\n");
        match &self.control {
            None => {
                let _ = writeln!(w, "Not run in this report (`--skip-control`).\n");
            }
            Some(c) => control_section(w, c, self.machine.cpus),
        }

        match &self.reaction {
            Some(r) => {
                let _ = write!(w, "{}", render_reaction(r, &self.rev));
            }
            None => {
                let _ = writeln!(w, "## 4. Built-in detection: time to the first dropped packet\n\nNot run (`--only` without reaction).\n");
            }
        }
        let _ = writeln!(w, "## Notes\n");
        let _ = writeln!(w, "{NOTES_BEGIN}\n{}\n{NOTES_END}", self.notes);
        s
    }
}

fn mb(kb: u64) -> String {
    format!("{:.1} MB ({:.1} MiB)", kb as f64 * 1024.0 / 1e6, kb as f64 / 1024.0)
}

fn ms(v: f64) -> String {
    format!("{v:.2} ms")
}

fn control_targets(w: &mut String, c: &Control) {
    let h = &c.handle;
    let rate = h.n as f64 / h.add_secs;
    let _ = writeln!(
        w,
        "| policy adds through the `DataPlane` handle >= 20,000/s | {rate:.0}/s ({} adds in {:.2} s) | {} |",
        h.n,
        h.add_secs,
        met(rate >= 20_000.0)
    );
    let Some(a) = &c.api else { return };
    let adds: Vec<_> = a.batches.iter().filter(|b| b.what.starts_with("POST")).collect();
    if let Some(b) = adds.iter().find(|b| b.clients > 1) {
        let r = b.calls as f64 / b.secs;
        let _ = writeln!(
            w,
            "| policy adds through the API >= 2,000/s, small table | {r:.0}/s ({} clients, {} to {} policies) | {} |",
            b.clients,
            b.table_before,
            b.table_before + b.calls,
            met(r >= 2_000.0)
        );
    }
    if let Some(b) = adds.iter().rfind(|b| b.clients > 1) {
        let r = b.calls as f64 / b.secs;
        let _ = writeln!(
            w,
            "| policy adds through the API >= 2,000/s, at {} policies | {r:.0}/s ({} clients) | {} |",
            b.table_before,
            b.clients,
            met(r >= 2_000.0)
        );
    }
    if let Some(b) = adds.last().filter(|b| b.clients == 1 && b.table_before >= 100_000) {
        let r = b.calls as f64 / b.secs;
        let _ = writeln!(
            w,
            "| policy adds through the API, one client alone, at {} policies (no target: it waits for one `fdatasync` per request) | {r:.0}/s | |",
            b.table_before,
        );
    }
    for b in &a.bans {
        let p99 = percentile(&b.req_to_drop_ms, 0.99);
        let p99r = percentile(&b.resp_to_drop_ms, 0.99);
        let _ = writeln!(
            w,
            "| ban alert to first dropped packet p99 < 10 ms, {} policies ({} bans) | from the request: p99 {}, p50 {}; from the response: p99 {} | {} |",
            b.table,
            b.req_to_drop_ms.len(),
            ms(p99),
            ms(percentile(&b.req_to_drop_ms, 0.5)),
            ms(p99r),
            met(p99 < 10.0)
        );
    }
    if let Some(r) = a.rss.iter().find(|r| r.policies >= 100_000) {
        let _ = writeln!(
            w,
            "| daemon RSS with 100,000 policies < 100 MB | {} (peak {}) | {} |",
            mb(r.rss_kb),
            mb(r.hwm_kb),
            met((r.rss_kb as f64) * 1024.0 < 100e6)
        );
    }
}

fn control_section(w: &mut String, c: &Control, cpus: usize) {
    let h = &c.handle;
    let _ = writeln!(w, "### Through the typed handle\n");
    let _ = writeln!(
        w,
        "`DataPlane::upsert_policy` for {} distinct /32 victims (100.64.0.0/15, two level-2 chunks) with the \
         default profile as the daemon installs it ({} rules, {} of them with a token bucket, a 1 h expiry), \
         into a fresh ampguard with max_policies {} and max_limiters {}; one thread on the bench's CPU. \
         Replace = the same call for a victim that has a policy (new expiry, limits unchanged: no counters \
         to reset, no victim entry to write, limiters kept: each one's limit is read back and compared). \
         Every call is a few single-element map updates (`bpf(BPF_MAP_UPDATE_ELEM)`: the policy, each new \
         limiter, the victim table); a fresh add also zeroes the policy's 32 per-CPU counter entries with \
         one `BPF_MAP_UPDATE_BATCH`.\n",
        h.n, h.rules, h.limiters_per_policy, h.capacity.max_policies, h.capacity.max_limiters
    );
    let _ = writeln!(w, "| operation | count | seconds | per second | µs each |\n| --- | --- | --- | --- | --- |");
    for (what, n, secs) in [
        ("add (`upsert_policy`, new victim)", h.n, h.add_secs),
        ("replace (`upsert_policy`, existing victim)", h.replace_n, h.replace_secs),
        ("remove (`remove_policy`)", h.n, h.remove_secs),
    ] {
        let _ = writeln!(w, "| {what} | {n} | {secs:.2} | {:.0} | {:.1} |", n as f64 / secs, secs * 1e6 / n as f64);
    }
    let total: u64 = h.maps.iter().filter_map(|m| m.memlock).sum();
    let _ = writeln!(
        w,
        "\nKernel memory of the maps at this capacity (the daemon below has the same), with {} policies \
         loaded: total memlock **{}** on this {}-CPU machine.\n",
        h.n,
        mib(total),
        cpus
    );
    map_table(w, &h.maps);
    let Some(a) = &c.api else { return };
    let _ = writeln!(w, "### Through the daemon's API\n");
    let _ = writeln!(
        w,
        "The release `ampguard run` in a lab's edge namespace (XDP on edge0, native mode), started by \
         `ampguard_tests::daemon::Daemon` with this TOML added to its minimal config:\n\n```toml\n{}```\n\n\
         Clients are threads of the bench in the same namespace, one keep-alive HTTP connection each, \
         POSTing `{{\"victim\": \"100.64.x.y/32\", \"ttl_secs\": 3600, \"comment\": \"bench\"}}` (the \
         default profile). The bench and the daemon are not pinned in this part (2 vCPUs shared). A request \
         applies its change to the maps and the in-memory state under the store's lock, then waits for its \
         line in the state journal to be on disk: a writer appends every pending line with one `fdatasync` \
         whenever it is behind, and that one write answers every request it covers (group commit); when the \
         journal has outgrown the snapshot (and 8 MiB), the writer writes a new snapshot instead and starts \
         an empty journal. \"state files after\" is snapshot + journal after each batch. A snapshot of an \
         empty state (write, fsync, hard link of the backup, rename, fsync of the directory, new journal), \
         on the same filesystem, takes **{:.2} ms** (`StateFile::save`, 50 times).\n",
        a.extra_toml, a.save_floor_ms
    );
    let _ = writeln!(
        w,
        "| requests | table before | calls | clients | per second | latency p50 | latency p99 | state files after |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- |"
    );
    for b in &a.batches {
        let _ = writeln!(
            w,
            "| {} | {} | {} | {} | {:.0} | {} | {} | {:.1} MiB |",
            b.what,
            b.table_before,
            b.calls,
            b.clients,
            b.calls as f64 / b.secs,
            ms(b.p50_ms),
            ms(b.p99_ms),
            b.state_bytes as f64 / (1024.0 * 1024.0)
        );
    }
    let _ = writeln!(w);

    let _ = writeln!(w, "### From a ban alert to the first dropped packet\n");
    let _ = writeln!(
        w,
        "Attack frames (memcached, 198.51.100.7:11211 -> 203.0.113.10:40001, numbered) flow from the lab's \
         wan side the whole time, paced by a 50 µs sleep; the bench records each one's send time \
         (CLOCK_MONOTONIC, just before `sendto`), and a socket on the victim records which arrive. Each \
         cycle: `POST /v1/alerts {{\"victim\": \"203.0.113.10\", \"action\": \"ban\"}}`, 25 ms, the unban, \
         25 ms. The first dropped packet of a ban is the one after the last that arrived before the unban \
         was sent; the policy took effect between the send times of those two (their gap, the resolution, \
         is shown), and the later one is used: an upper bound. veth runs the XDP program in the sender's \
         softirq right after `sendto`, so a send time is within microseconds of the XDP verdict. The daemon \
         writes the maps before it writes the journal line and answers, so the drop usually starts **before** \
         the response: \"from the response\" is then negative, and \"from the request\" is the figure that \
         bounds what a detector waits for.\n"
    );
    let _ = writeln!(
        w,
        "| policies in the table | bans timed | flow (pps) | request -> response p50 / p99 | request -> first drop p50 / p99 / max | response -> first drop p50 / p99 | resolution (gap) p50 / max |\n\
         | --- | --- | --- | --- | --- | --- | --- |"
    );
    for b in &a.bans {
        let mx = b.req_to_drop_ms.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let gx = b.gap_ms.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let _ = writeln!(
            w,
            "| {} | {} of {}{} | {:.0} | {} / {} | {} / {} / {} | {} / {} | {} / {} |",
            b.table,
            b.req_to_drop_ms.len(),
            b.n,
            if b.skipped > 0 { format!(" ({} unclean, skipped)", b.skipped) } else { String::new() },
            b.pps,
            ms(percentile(&b.resp_ms, 0.5)),
            ms(percentile(&b.resp_ms, 0.99)),
            ms(percentile(&b.req_to_drop_ms, 0.5)),
            ms(percentile(&b.req_to_drop_ms, 0.99)),
            ms(mx),
            ms(percentile(&b.resp_to_drop_ms, 0.5)),
            ms(percentile(&b.resp_to_drop_ms, 0.99)),
            ms(percentile(&b.gap_ms, 0.5)),
            ms(gx)
        );
    }
    let _ = writeln!(w);

    let _ = writeln!(w, "### Daemon memory\n");
    let _ = writeln!(
        w,
        "VmRSS and VmHWM (peak) of the `ampguard run` process from /proc/PID/status. {} policies were added \
         through the API above{}. Then the daemon is restarted on its state files (it loads snapshot + journal into fresh \
         maps and swaps them into the pinned XDP link): **{:.1} s** to a healthy API. Then {} more API calls \
         and bans run at that size. Kernel memory for the maps is in the handle section above (BPF map \
         memory is not in the process's RSS).\n",
        a.through_api,
        if a.through_api < 100_000 {
            format!(
                " (the time budget, `--api-secs`, ran out first); the stopped daemon's state file was extended to \
                 100,000 records of exactly the shape the API wrote ({:.1} MiB)",
                a.state_bytes_100k as f64 / (1024.0 * 1024.0)
            )
        } else {
            format!(" (state files {:.1} MiB)", a.state_bytes_100k as f64 / (1024.0 * 1024.0))
        },
        a.restart_secs,
        a.batches.iter().rev().take(2).map(|b| b.calls).sum::<usize>()
    );
    let _ = writeln!(w, "| when | policies | VmRSS | VmHWM (peak) |\n| --- | --- | --- | --- |");
    for r in &a.rss {
        let _ = writeln!(w, "| {} | {} | {} | {} |", r.what, r.policies, mb(r.rss_kb), mb(r.hwm_kb));
    }
    let _ = writeln!(w);
}

/// Part 4: reaction time to an attack, built-in detection beside FastNetMon.
pub fn render_reaction(r: &super::reaction::ReactionSection, rev: &str) -> String {
    let mut s = String::new();
    let w = &mut s;
    let _ = writeln!(w, "## 4. Built-in detection: time to the first dropped packet\n");
    let _ = writeln!(
        w,
        "{} attacks per detector (source {rev}), each a flood of numbered 1,200-byte memcached replies at ~{:.0} pps to a fresh \
         victim in the lab, from its first packet to the first packet that did not arrive (the one after the last that did). \
         ampguard with `{}` and every other detection setting at its default; FastNetMon (Debian's package) with \
         check_period 1, threshold_pps 1000, calling deploy/fastnetmon-notify.sh, which calls `ampguard alert`.\n",
        r.attacks,
        r.pps,
        r.detection_toml.replace('\n', " ").trim()
    );
    let _ = writeln!(w, "| detector | p50 | p99 | min | max | attacks stopped |\n| --- | --- | --- | --- | --- | --- |");
    for x in &r.results {
        let (min, max) = (x.samples_ms.iter().cloned().fold(f64::INFINITY, f64::min), x.samples_ms.iter().cloned().fold(0.0, f64::max));
        let _ = writeln!(
            w,
            "| {} | {:.0} ms | {:.0} ms | {min:.0} ms | {max:.0} ms | {} of {} |",
            x.label,
            x.p(0.5),
            x.p(0.99),
            x.samples_ms.len(),
            x.samples_ms.len() + x.missed
        );
    }
    if let Some(a) = r.results.first() {
        let _ = writeln!(
            w,
            "\nTargets: p50 under 250 ms: {:.0} ms, {}; p99 under 500 ms: {:.0} ms, {}.\n",
            a.p(0.5),
            met(a.p(0.5) < 250.0 && a.missed == 0),
            a.p(0.99),
            met(a.p(0.99) < 500.0 && a.missed == 0)
        );
    }
    let _ = writeln!(
        w,
        "Metering's cost per packet under BPF_PROG_TEST_RUN: the same packet through two data planes holding the same \
         policy, detection off and on (203.0.113.0/24 protected, 203.0.113.30 tracked), interleaved, medians of {} rounds, \
         ns over the bare program.\n",
        r.meter_rounds
    );
    let _ = writeln!(w, "| packet | detection off | detection on | metering's cost |\n| --- | --- | --- | --- |");
    for m in &r.meter_cost {
        let _ = writeln!(w, "| {} | {:+.1} ns | {:+.1} ns | {:+.1} ns |", m.label, m.off_ns, m.on_ns, m.on_ns - m.off_ns);
    }
    if let Some(d) = r.meter_cost.first() {
        let c = d.on_ns - d.off_ns;
        let _ = writeln!(w, "\nTarget: metering adds at most 8 ns to the drop path: {c:+.1} ns, {}.\n", met(c <= 8.0));
    }
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    let _ = writeln!(
        w,
        "Kernel memory of every map at the default capacity, detection off and on (measured here as memlock: {:.1} and \
         {:.1} MiB; per CPU count from the formulas of the memory table). Fixed whatever arrives: a storm fills the \
         sketch, never grows it, and tracking stops at `capacity.max_tracked`.\n",
        mib(r.memlock_here.0),
        mib(r.memlock_here.1)
    );
    let _ = writeln!(w, "| CPUs | detection off | detection on | detection's share |\n| --- | --- | --- | --- |");
    for (n, off, on) in &r.memory {
        let _ = writeln!(w, "| {n} | {:.1} MiB | {:.1} MiB | {:.1} MiB |", mib(*off), mib(*on), mib(on.saturating_sub(*off)));
    }
    let _ = writeln!(w);
    let _ = writeln!(
        w,
        "What bounds ampguard's figure: the sketch's window (67 ms) and trigger (a quarter of the threshold's rate) \
         before the destination is tracked, then half a rate window (100 ms) of exact readings, read every 50 ms, then \
         the policy's install (a few ms). Lower would take a shorter window (noisier rates: a burst of a few packets must \
         not look like a flood) or deciding from the sketch's estimate directly.\n"
    );
    s
}
