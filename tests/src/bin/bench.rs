//! `bench`: ampguard's benchmarks (parts 1 to 3 of the benchmark issue),
//! written to BENCHMARKS.md. Run it with `sudo cargo xtask bench`; it needs
//! root (it loads XDP programs, creates network namespaces, runs nft).
//!
//! 1. Per-packet cost through BPF_PROG_TEST_RUN for each path of the program,
//!    with 100,000 IPv4 / 10,000 IPv6 victim prefixes and 1,000 allowlist
//!    entries loaded, as a ratio to a bare XDP_PASS program in the same run,
//!    beside a peer (xdp-filter from xdp-tools) with the same packet.
//! 2. Live traffic: an in-kernel generator sends attack frames from 100,000
//!    distinct sources across the lab's veth pair; ampguard's drop rate per
//!    core against nftables, xdp-filter and a count-and-drop program, in the
//!    same run; then the same on every CPU at once (a two-queue veth, one
//!    generator per CPU), with the rate limiter's error.
//!
//! Then the kernel memory of ampguard's maps, read from the kernel, with a
//! formula per map type for 2, 64 and 128 CPUs.
//! 3. Control plane: policy adds and removes per second through the
//!    `DataPlane` handle and through the real daemon's API, the time from a ban
//!    alert to the first dropped attack packet, and the daemon's memory with
//!    100,000 policies.
//!
//! Nothing leaves the lab namespaces; only documentation prefixes carry traffic.

#[path = "../bench/mod.rs"]
mod bench;

use std::time::Instant;

use ampguard::dataplane::{Capacity, DataPlane, BASELINE_OBJECT};
use ampguard_tests::lab::{Lab, EDGE_IF, WAN_IF};
use anyhow::{bail, Context, Result};
use aya::{programs::Xdp, Ebpf};
use ipnet::IpNet;

use bench::{
    control,
    cost::{self, BENCH_ALLOW, BENCH_V4_VICTIMS, BENCH_V6_VICTIMS},
    diag,
    live::{self, Live, LiveConfig, Receiver},
    memory,
    peer::{Bpffs, XdpFilter},
    reaction,
    report::{self, EveryCoreSection, LiveSection, MemorySection, Report},
    sys,
    tables::{self, Tables},
};

const USAGE: &str = "usage: bench [--out FILE] [--only PART]... [--rounds N] [--repeat N] [--live-rounds N] [--live-secs S]
             [--batch N] [--cpu N] [--skip-live] [--skip-every-core] [--skip-control] [--bans N] [--api-secs S]
             [--attacks N] [--command TEXT] [--rev TEXT]
  --out FILE        where to write the report (default BENCHMARKS.md)
  --only PART       run only these parts (repeatable): part1 (test_run costs, the peer, where the time
                    goes), live (part 2 on one core), every-core (part 2 on every CPU), memory (the
                    maps' memory table), control (part 3), reaction (part 4: built-in detection's
                    and FastNetMon's time to the first drop; alone, printed, BENCHMARKS.md untouched),
                    generic (ampguard dropping memcached in native and in generic (skb) mode on the
                    lab veth, interleaved; alone, printed, BENCHMARKS.md untouched);
                    the rest is reported as not run
  --rounds N        rounds of part 1, median taken (default 15)
  --repeat N        BPF_PROG_TEST_RUN repeats per call in part 1 (default 2000000)
  --live-rounds N   rounds of part 2, median taken (default 9)
  --live-secs S     length of one live round per receiver, seconds (default 3)
  --batch N         live-frames batch size (default 64)
  --cpu N           CPU to pin the bench (and the generator) to (default: the last)
  --skip-live       no part 2 (live traffic, one core and every core)
  --skip-every-core no every-core live run
  --skip-control    no part 3 (control plane)
  --bans N          ban alerts timed in part 3 (default 200)
  --api-secs S      how long part 3 keeps adding policies through the API (default 150)
  --attacks N       attacks timed per detector in part 4 (default 20)
  --command TEXT    the command line to record in the report
  --rev TEXT        the source revision to record (default: git of the workspace)";

struct Args {
    out: String,
    rounds: usize,
    repeat: u32,
    live_rounds: usize,
    live_secs: f64,
    batch: u32,
    cpu: usize,
    part1: bool,
    live: bool,
    every_core: bool,
    memory: bool,
    control: bool,
    reaction: bool,
    attacks: usize,
    generic: bool,
    bans: usize,
    api_secs: f64,
    command: String,
    rev: Option<String>,
}

fn parse_args() -> Result<Args> {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let mut a = Args {
        out: "BENCHMARKS.md".into(),
        rounds: 15,
        repeat: 2_000_000,
        live_rounds: 9,
        live_secs: 3.0,
        batch: 64,
        cpu: cpus - 1,
        part1: true,
        live: true,
        every_core: true,
        memory: true,
        control: true,
        reaction: true,
        attacks: 20,
        generic: false,
        bans: 200,
        api_secs: 150.0,
        command: "sudo cargo xtask bench".into(),
        rev: None,
    };
    let mut only: Vec<String> = Vec::new();
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value\n{USAGE}"));
        match flag.as_str() {
            "--out" => a.out = value()?,
            "--rounds" => a.rounds = value()?.parse()?,
            "--repeat" => a.repeat = value()?.parse()?,
            "--live-rounds" => a.live_rounds = value()?.parse()?,
            "--live-secs" => a.live_secs = value()?.parse()?,
            "--batch" => a.batch = value()?.parse()?,
            "--cpu" => a.cpu = value()?.parse()?,
            "--command" => a.command = value()?,
            "--rev" => a.rev = Some(value()?),
            "--only" => only.push(value()?),
            "--skip-live" => {
                a.live = false;
                a.every_core = false;
            }
            "--skip-every-core" => a.every_core = false,
            "--skip-control" => a.control = false,
            "--bans" => a.bans = value()?.parse()?,
            "--attacks" => a.attacks = value()?.parse()?,
            "--api-secs" => a.api_secs = value()?.parse()?,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    if !only.is_empty() {
        for o in &only {
            if !["part1", "live", "every-core", "memory", "control", "reaction", "generic"].contains(&o.as_str()) {
                bail!("--only {o:?}: the parts are part1, live, every-core, memory, control, reaction, generic\n{USAGE}");
            }
        }
        let has = |p: &str| only.iter().any(|o| o == p);
        a.part1 = has("part1");
        a.live &= has("live");
        a.every_core &= has("every-core");
        a.memory = has("memory");
        a.control &= has("control");
        a.reaction = has("reaction");
        a.generic = has("generic");
    }
    if a.rounds == 0 || a.live_rounds == 0 || a.repeat < 1000 || !(1..=256).contains(&a.batch) {
        bail!("rounds must be >= 1, repeat >= 1000 (repeat=1 adds ~90 ns of timer overhead), batch 1..=256");
    }
    if a.cpu >= cpus {
        bail!("--cpu {} but this machine has {cpus} CPUs", a.cpu);
    }
    Ok(a)
}

fn xdp<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Xdp> {
    Ok(ebpf.program_mut(name).with_context(|| format!("baseline object has no {name}"))?.try_into()?)
}

/// `--only generic`: ampguard's program dropping memcached on the lab's veth
/// in native mode and in generic (skb) mode, interleaved rounds, one core.
fn generic(args: &Args, dp: &mut ampguard::dataplane::DataPlane, base: &mut Ebpf, slots: &cost::BenchSlots, bpffs: &Bpffs) -> Result<()> {
    let lab = Lab::new("bench-gen").context("creating the lab namespaces")?;
    live::enable_gro(&lab, EDGE_IF)?;
    eprintln!("bench: generic against native mode, live traffic on CPU {}, {} rounds (GRO on {EDGE_IF})", args.cpu, args.live_rounds);
    let mut live = Live::new(&lab, dp, base, slots, bpffs, (WAN_IF, EDGE_IF), vec![args.cpu])?;
    let frame_len = live.frame_len();
    let results = live.measure(&LiveConfig { rounds: args.live_rounds, secs: args.live_secs, batch: args.batch }, &Receiver::GENERIC)?;
    println!("{frame_len}-byte frames, one core (CPU {}), median of {} rounds, generator included:", args.cpu, args.live_rounds);
    for r in &results {
        let m = r.median();
        println!("  {:<50} {:>10.0} pps dropped  {:>6.0} ns/packet", r.receiver.label(), m.drop_mpps() * 1e6, 1e3 / m.drop_mpps());
    }
    let (n, g) = (results[0].median().drop_mpps(), results[1].median().drop_mpps());
    println!("  generic mode: {:.2}x the time per packet of native ({:+.0} ns/packet)", n / g, 1e3 / g - 1e3 / n);
    Ok(())
}

fn main() {
    if let Err(e) = run() {
        eprintln!("bench: error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let args = parse_args()?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the bench loads XDP programs and creates network namespaces: run `sudo cargo xtask bench`");
    }
    let machine = sys::Machine::probe();
    let rev = sys::source_rev(args.rev.as_deref());
    sys::pin_to_cpu(args.cpu)?;
    eprintln!("bench: kernel {}, {}, pinned to CPU {}", machine.kernel, machine.cpu_model, args.cpu);

    // Part 4 first: it needs none of the tables below.
    let reaction = if args.reaction {
        let r = reaction::measure(args.attacks)?;
        if !(args.part1 || args.live || args.every_core || args.memory || args.control || args.generic) {
            println!("{}", report::render_reaction(&r, &rev));
            return Ok(());
        }
        Some(r)
    } else {
        None
    };

    let mut base = Ebpf::load(BASELINE_OBJECT).context("loading the baseline programs")?;
    for name in ["xdp_pass", "xdp_count_drop", "xdp_gen_tx"] {
        xdp(&mut base, name)?.load().with_context(|| format!("loading {name}"))?;
    }

    // Tables: the generated population plus the bench's own victims.
    let t = Tables::generate(tables::V4_TOTAL - BENCH_V4_VICTIMS, tables::V6_TOTAL - BENCH_V6_VICTIMS, tables::ALLOW_TOTAL - BENCH_ALLOW);
    let bench_v4: Vec<IpNet> = cost::BENCH_V4.iter().map(|s| s.parse().expect("bench victim")).collect();
    let bench_v6: IpNet = cost::V6_DROP.parse().expect("bench victim");
    let v4_chunks = Tables::chunks_needed(t.v4.iter().map(|(n, _)| n).chain(bench_v4.iter()));
    let limiters = Tables::limiters_needed(t.v4.iter().chain(t.v6.iter()).map(|(_, p)| p)) + cost::BENCH_LIMITERS;
    // Rule entries as an operator would size them for this mix: one per vector
    // a policy names plus its shared pass, and room for the bench's own.
    let rules: u32 = t.v4.iter().chain(t.v6.iter()).map(|(_, p)| p.rules.len() as u32 + 1).sum::<u32>() + 64 * 21;
    let capacity = Capacity {
        max_policies: 131_072,
        // Index 0 is reserved; headroom for a policy replacing its limiters.
        max_limiters: limiters + 64,
        max_rules: Some(rules),
        v4_chunks,
        ..Capacity::default()
    };
    eprintln!("bench: loading ampguard with {capacity:?}");
    let mut dp = DataPlane::load(&capacity).context("loading ampguard")?;
    dp.set_vectors(&tables::port_table())?;
    let started = Instant::now();
    for (i, (net, p)) in t.v4.iter().chain(t.v6.iter()).enumerate() {
        dp.upsert_policy(*net, p).with_context(|| format!("policy for {net}"))?;
        if i % 20_000 == 0 {
            eprintln!("  {i} policies ({:.1} s)", started.elapsed().as_secs_f64());
        }
    }
    for a in &t.allow {
        dp.add_allow(*a).with_context(|| format!("allowlist {a}"))?;
    }
    let slots = cost::install(&mut dp)?;
    let populate_secs = started.elapsed().as_secs_f64();
    eprintln!("bench: {} policies, {} allowlist entries loaded in {populate_secs:.1} s", dp.policy_count(), dp.allowlist().count());

    let mut v4_hist = Tables::histogram(t.v4.iter().map(|(n, _)| n).chain(bench_v4.iter()));
    v4_hist.retain(|_, n| *n > 0);
    let v6_hist = Tables::histogram(t.v6.iter().map(|(n, _)| n).chain(std::iter::once(&bench_v6)));
    let allow_v4 = dp.allowlist().filter(|n| matches!(n, IpNet::V4(_))).count();
    let allow_v6 = dp.allowlist().count() - allow_v4;

    // libxdp (xdp-filter, the peer) pins its state in a bpffs of its own.
    let bpffs = Bpffs::mount()?;

    // Part 1.
    let paths = cost::paths(&slots);
    let (measured, diag) = if args.part1 {
        // The peer's program: loaded by xdp-filter on a lab veth, opened by id,
        // unloaded from the veth (the fd keeps program and statistics alive).
        let (peer_prog, peer_stats) = {
            let lab = Lab::new("peer").context("creating a lab for xdp-filter")?;
            XdpFilter::load(&lab.edge, EDGE_IF, &bpffs)?.detach_keep()?
        };
        eprintln!("bench: part 1, {} rounds x {} repeats", args.rounds, args.repeat);
        let measured = {
            let bare: &Xdp = base.program("xdp_pass").context("xdp_pass")?.try_into()?;
            let count_drop: &Xdp = base.program("xdp_count_drop").context("xdp_count_drop")?.try_into()?;
            cost::measure(&dp, bare, count_drop, (&peer_prog, &peer_stats), &paths, args.rounds, args.repeat)?
        };
        drop(peer_prog);
        for m in &measured {
            eprintln!("  {:<36} {:>5.1} ns  x{:.2}  {:+.1} ns", m.label, m.median(), m.ratio(), m.over_bare());
        }

        // Where the time goes: test clock, and tables holding only the bench's victims.
        eprintln!("bench: diagnostics (test clock; small tables), {} rounds", args.rounds);
        let mut small = DataPlane::load(&Capacity::default()).context("loading a second ampguard")?;
        small.set_vectors(&tables::port_table())?;
        cost::install(&mut small)?;
        let diag = {
            let bare: &Xdp = base.program("xdp_pass").context("xdp_pass")?.try_into()?;
            diag::measure(
                &mut dp,
                &small,
                bare,
                &paths,
                &[
                    "UDP, non-vector port",
                    "attack, dropped",
                    "attack, dropped, policy without expiry",
                    "attack, rate-limited",
                    "NTP monlist reply dropped by signature",
                    "small DNS A answer under the signature rule",
                    "IPv6 attack, dropped",
                    "allowlisted source",
                ],
                args.rounds,
                args.repeat,
            )?
        };
        drop(small);
        (measured, Some(diag))
    } else {
        (Vec::new(), None)
    };

    // Part 2: one core, then every core (a two-queue veth, a generator per CPU).
    if args.generic {
        generic(&args, &mut dp, &mut base, &slots, &bpffs)?;
        if !(args.part1 || args.live || args.every_core || args.memory || args.control) {
            if let Some(r) = &reaction {
                println!("{}", report::render_reaction(r, &rev));
            }
            eprintln!("bench: --only generic: nothing written to {} (the figures above are the result)", args.out);
            return Ok(());
        }
    }

    let (live, every_core) = if args.live || args.every_core {
        let lab = Lab::new("bench").context("creating the lab namespaces")?;
        let live = if args.live {
            eprintln!("bench: part 2, live traffic on CPU {}, {} rounds", args.cpu, args.live_rounds);
            let mut live = Live::new(&lab, &mut dp, &mut base, &slots, &bpffs, (WAN_IF, EDGE_IF), vec![args.cpu])?;
            let sources = live.check_sources(args.cpu)?;
            eprintln!(
                "  generator: {} distinct sources in {}; {} frames read back, checksums valid after {} chained rewrites",
                sources.distinct,
                live::GEN_RANGE,
                sources.checked,
                sources.chained
            );
            let call_overhead_ms = live.call_overhead_ms(args.batch)?;
            let frame_len = live.frame_len();
            let results =
                live.measure(&LiveConfig { rounds: args.live_rounds, secs: args.live_secs, batch: args.batch }, &Receiver::ALL)?;
            for r in &results {
                let m = r.median();
                eprintln!("  {:<50} {:>6.2} Mpps dropped ({:.0} ns/packet)", r.receiver.label(), m.drop_mpps(), 1e3 / m.drop_mpps());
            }
            eprintln!("bench: part 2, in-program time with BPF run-time stats on");
            let in_program = live.in_program_ns(2_000_000, args.batch)?;
            Some(LiveSection { results, rounds: args.live_rounds, batch: args.batch, frame_len, call_overhead_ms, in_program, sources })
        } else {
            None
        };
        let every_core = if args.every_core {
            let cpus: Vec<usize> = (0..machine.cpus).collect();
            eprintln!("bench: part 2, every core: generators on CPUs {cpus:?}, a two-queue veth, {} rounds", args.live_rounds);
            let (wan, edge) = live::add_two_queue_pair(&lab)?;
            let mut live = Live::new(&lab, &mut dp, &mut base, &slots, &bpffs, (&wan, &edge), cpus.clone())?;
            let results =
                live.measure(&LiveConfig { rounds: args.live_rounds, secs: args.live_secs, batch: args.batch }, &Receiver::EVERY_CORE)?;
            for r in &results {
                let m = r.median();
                eprintln!("  {:<50} {:>6.2} Mpps dropped, {} passed in {:.2} s", r.receiver.label(), m.drop_mpps(), m.passed, m.secs);
            }
            let split = live.count_drop_split(2_000_000, args.batch)?;
            eprintln!("  count-and-drop per CPU: {split:?}");
            Some(EveryCoreSection { results, cpus, rounds: args.live_rounds, batch: args.batch, split })
        } else {
            None
        };
        (live, every_core)
    } else {
        (None, None)
    };

    let mut progs = vec![sys::prog_facts("ampguard", dp.program())?];
    for name in ["xdp_pass", "xdp_count_drop", "xdp_gen_tx"] {
        let p: &Xdp = base.program(name).context("baseline")?.try_into()?;
        progs.push(sys::prog_facts(name, p)?);
    }
    let maps = sys::map_facts(dp.program())?;
    let memory = if args.memory {
        let possible = memory::possible_cpus()?;
        Some(MemorySection { maps: memory::read(dp.program())?, possible, policies: dp.policy_count() })
    } else {
        None
    };
    drop(dp);
    drop(bpffs);

    // Part 3. The benchmark stays pinned to its CPU; the daemon runs unpinned.
    let control = if !args.control {
        None
    } else {
        eprintln!("bench: part 3, control plane: {} policies through the DataPlane handle", control::N_POLICIES);
        let handle = control::handle(control::N_POLICIES)?;
        eprintln!(
            "  add {:.0}/s, replace {:.0}/s, remove {:.0}/s",
            handle.n as f64 / handle.add_secs,
            handle.replace_n as f64 / handle.replace_secs,
            handle.n as f64 / handle.remove_secs
        );
        eprintln!("bench: part 3, the daemon's API in a lab ({} bans)", args.bans);
        let api = control::api(args.bans, std::time::Duration::from_secs_f64(args.api_secs))?;
        Some(control::Control { handle, api: Some(api) })
    };

    let notes = std::fs::read_to_string(&args.out).ok().and_then(|old| report::existing_notes(&old)).unwrap_or_else(|| "(none yet)".into());
    let report = Report {
        command: args.command.clone(),
        rev,
        machine,
        cpu: args.cpu,
        rounds: args.rounds,
        repeat: args.repeat,
        v4_hist,
        v6_hist,
        allow_v4,
        allow_v6,
        v4_chunks,
        max_policies: capacity.max_policies,
        limiters,
        populate_secs,
        cost: measured,
        diag,
        live,
        every_core,
        memory,
        progs,
        maps,
        control,
        reaction,
        notes,
    };
    std::fs::write(&args.out, report.render()).with_context(|| format!("writing {}", args.out))?;
    eprintln!("bench: wrote {}", args.out);
    Ok(())
}
