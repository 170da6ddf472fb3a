//! Reaction time: from an attack's first packet to its first dropped packet,
//! for ampguard's built-in detection and for FastNetMon (Debian's package,
//! check_period 1) -> its notify script -> ampguard, in the same lab, in the
//! same run, with the same flood.
//!
//! Each attack is a flood of numbered 1,200-byte memcached replies at about
//! 5,000 packets a second towards a fresh victim (so no ban, hold or
//! FastNetMon's own ban list carries over), sent until nothing has arrived
//! for 300 ms (or 8 s). The first dropped packet is the one after the last
//! that arrived; its send time minus the first packet's is the sample.

use std::{
    net::{SocketAddr, UdpSocket},
    path::Path,
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::{Duration, Instant},
};

use ampguard::clock;
use ampguard_tests::{
    daemon::{ampguard_bin, Daemon},
    lab::{Lab, UdpSink, EDGE_IF, EDGE_MAC, WAN_IF},
    TempDir,
};
use anyhow::{bail, Context, Result};

use super::control::percentile;

/// One way of reacting, measured over `samples_ms` attacks.
pub struct Reaction {
    pub label: &'static str,
    pub samples_ms: Vec<f64>,
    /// Attacks that were never stopped within the bound.
    pub missed: usize,
}

impl Reaction {
    pub fn p(&self, q: f64) -> f64 {
        percentile(&self.samples_ms, q)
    }
}

/// One packet's cost with detection off and on (BPF_PROG_TEST_RUN), ns over bare.
pub struct MeterCost {
    pub label: &'static str,
    pub off_ns: f64,
    pub on_ns: f64,
}

pub struct ReactionSection {
    /// What metering costs per packet, medians over rounds, ns over a bare XDP_PASS.
    pub meter_cost: Vec<MeterCost>,
    pub meter_rounds: usize,
    /// Kernel memory of every map with detection off and on (default
    /// capacity otherwise), for (possible CPUs here, 2, 64, 128): (cpus, off, on) bytes.
    pub memory: Vec<(u64, u64, u64)>,
    /// The same measured here (memlock, summed): off, on.
    pub memlock_here: (u64, u64),
    pub attacks: usize,
    pub pps: f64,
    pub results: Vec<Reaction>,
    pub detection_toml: String,
}

const FLOOD_GAP_US: u64 = 200;
const QUIET: Duration = Duration::from_millis(300);
const MAX_FLOOD: Duration = Duration::from_secs(8);

/// The victims: 203.0.113.100 + i, on the lab's edge interface.
fn victim(i: usize) -> String {
    format!("203.0.113.{}", 100 + i)
}

fn add_victims(lab: &Lab, n: usize) -> Result<()> {
    for i in 0..n {
        let v = victim(i);
        lab.edge.ip(&["addr", "add", &format!("{v}/32"), "dev", EDGE_IF])?;
        lab.wan.ip(&["neigh", "replace", &v, "lladdr", EDGE_MAC, "dev", WAN_IF, "nud", "permanent"])?;
    }
    Ok(())
}

/// One attack on `dst`: the reaction in ms (None if it was never stopped), and the flood's rate.
fn attack(lab: &Lab, dst: &str) -> Result<(Option<f64>, f64)> {
    let dst: SocketAddr = format!("{dst}:40001").parse()?;
    let sink = UdpSink::bind(&lab.edge, dst)?;
    let tx: UdpSocket = lab.wan.enter(|| UdpSocket::bind("198.51.100.7:11211"))??;
    let stop = AtomicBool::new(false);
    let last_arrival = AtomicU64::new(0);
    let (sent, got) = std::thread::scope(|s| {
        let rx = s.spawn(|| {
            let mut got = Vec::new();
            let mut buf = [0u8; 2048];
            let _ = sink.socket().set_read_timeout(Some(Duration::from_millis(20)));
            loop {
                match sink.socket().recv(&mut buf) {
                    Ok(n) if n >= 8 => {
                        got.push(u64::from_le_bytes(buf[..8].try_into().expect("8 bytes")));
                        last_arrival.store(clock::monotonic_ns(), Ordering::Relaxed);
                    }
                    _ if stop.load(Ordering::Relaxed) => break,
                    _ => {}
                }
            }
            got
        });
        // SAFETY: prctl with an integer argument; 1 ns timer slack for the pacing.
        unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) };
        let mut sent = Vec::new();
        let mut pkt = [0u8; 1200];
        let start = Instant::now();
        loop {
            let seq = sent.len() as u64;
            pkt[..8].copy_from_slice(&seq.to_le_bytes());
            let now = clock::monotonic_ns();
            sent.push(now);
            let _ = tx.send_to(&pkt, dst);
            let last = last_arrival.load(Ordering::Relaxed);
            if (last != 0 && now.saturating_sub(last) > QUIET.as_nanos() as u64) || start.elapsed() > MAX_FLOOD {
                break;
            }
            std::thread::sleep(Duration::from_micros(FLOOD_GAP_US));
        }
        std::thread::sleep(Duration::from_millis(50));
        stop.store(true, Ordering::Relaxed);
        (sent, rx.join().expect("receiver"))
    });
    let Some(&last) = got.iter().max() else { bail!("no packet of the flood to {dst} arrived: is the lab up?") };
    let pps = (sent.len() - 1) as f64 / ((sent[sent.len() - 1] - sent[0]) as f64 / 1e9).max(1e-9);
    let first_dropped = last as usize + 1;
    if first_dropped >= sent.len() || clock::monotonic_ns().saturating_sub(sent[first_dropped]) < QUIET.as_nanos() as u64 / 2 {
        return Ok((None, pps));
    }
    Ok((Some((sent[first_dropped] - sent[0]) as f64 / 1e6), pps))
}

fn run_attacks(lab: &Lab, label: &'static str, victims: std::ops::Range<usize>, rates: &mut Vec<f64>) -> Result<Reaction> {
    let mut r = Reaction { label, samples_ms: Vec::new(), missed: 0 };
    for i in victims {
        let (ms, pps) = attack(lab, &victim(i))?;
        rates.push(pps);
        match ms {
            Some(ms) => r.samples_ms.push(ms),
            None => r.missed += 1,
        }
        eprintln!("  {label}: attack {} -> {:?} ms", r.samples_ms.len() + r.missed, r.samples_ms.last());
        std::thread::sleep(Duration::from_millis(300));
    }
    Ok(r)
}

/// FastNetMon inside the edge namespace, calling the shipped notify wrapper
/// pointed at `d`.
struct Fnm(Child);

impl Fnm {
    fn start(lab: &Lab, d: &Daemon, dir: &Path) -> Result<Fnm> {
        std::fs::write(dir.join("networks_list"), "203.0.113.0/24\n")?;
        std::fs::write(dir.join("networks_whitelist"), "")?;
        let shipped = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/fastnetmon-notify.sh"))?;
        let wrapper = shipped
            .replace("/usr/local/bin/ampguard", ampguard_bin().to_str().context("utf-8 path")?)
            .replace("/etc/ampguard/token", d.token_file.to_str().context("utf-8 path")?);
        let notify = dir.join("notify");
        std::fs::write(&notify, wrapper)?;
        std::fs::set_permissions(&notify, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        // ban_time longer than the run: no unban in the middle.
        std::fs::write(dir.join("fastnetmon.conf"), ampguard_tests::fastnetmon::conf(dir, &notify, 600))?;
        let out = std::fs::File::create(dir.join("fastnetmon.out"))?;
        let child = Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{}", lab.edge.name))
            .args(["--", "fastnetmon", "--configuration_file"])
            .arg(dir.join("fastnetmon.conf"))
            .arg("--log_file")
            .arg(dir.join("fastnetmon.log"))
            .arg("--disable_pid_logic")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("starting fastnetmon (run `sudo cargo xtask setup`)")?;
        let fnm = Fnm(child);
        // Ready when its metrics endpoint (the namespace's loopback) answers; its capture starts after.
        let t = Instant::now();
        loop {
            let up = lab.edge.enter(|| std::net::TcpStream::connect("127.0.0.1:9209").is_ok())?;
            if up {
                break;
            }
            if t.elapsed() > Duration::from_secs(30) {
                bail!("FastNetMon did not start: {}", std::fs::read_to_string(dir.join("fastnetmon.out")).unwrap_or_default());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        std::thread::sleep(Duration::from_secs(2));
        Ok(fnm)
    }
}

impl Drop for Fnm {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The maps' memory with detection off and on (the meters are fixed-size:
/// a storm of any size changes none of it; tests/tests/meters.rs and
/// detection.rs check that nothing grows).
fn detection_memory() -> Result<(Vec<(u64, u64, u64)>, (u64, u64))> {
    use ampguard::dataplane::{Capacity, DataPlane};
    let read = |detection: bool| -> Result<Vec<super::memory::MapMem>> {
        let mut dp = DataPlane::load(&Capacity { detection, ..Capacity::default() })?;
        if detection {
            dp.set_protected(&["203.0.113.0/24".parse()?, "2001:db8:2::/48".parse()?])?;
        }
        super::memory::read(dp.program())
    };
    let (off, on) = (read(false)?, read(true)?);
    let possible = super::memory::possible_cpus()?;
    let total = |m: &[super::memory::MapMem], n: u64| m.iter().map(|x| x.bytes(n)).sum::<u64>();
    let here = |m: &[super::memory::MapMem]| m.iter().filter_map(|x| x.memlock).sum::<u64>();
    let mut cpus = vec![possible, 2, 64, 128];
    cpus.sort_unstable();
    cpus.dedup();
    let rows = cpus.iter().map(|&n| (n, total(&off, n), total(&on, n))).collect();
    Ok((rows, (here(&off), here(&on))))
}

/// Metering's cost under test_run: the same packets through two data planes
/// with the same policy, detection off and on (203.0.113.0/24 protected),
/// interleaved, `rounds` medians, as ns over the bare program.
fn meter_cost(rounds: usize) -> Result<Vec<MeterCost>> {
    use ampguard::dataplane::{
        rules::{DpPolicy, Mode, Rule},
        Capacity, DataPlane, BASELINE_OBJECT,
    };
    use ampguard_test_support::packet::PacketBuilder as P;
    let mut base = aya::Ebpf::load(BASELINE_OBJECT)?;
    let bare: &mut aya::programs::Xdp = base.program_mut("xdp_pass").context("xdp_pass")?.try_into()?;
    bare.load()?;
    let load = |detection: bool| -> Result<DataPlane> {
        let mut dp = DataPlane::load(&Capacity { detection, ..Capacity::default() })?;
        dp.set_vectors(&ampguard::vectors::default_port_table())?;
        let mc = ampguard::vectors::id_of("memcached").context("memcached")?;
        let drop = DpPolicy { mode: Mode::Enforce, expires_ns: 0, rules: [(mc, Rule::Drop)].into_iter().collect() };
        dp.upsert_policy("203.0.113.10/32".parse()?, &drop)?;
        if detection {
            dp.set_protected(&["203.0.113.0/24".parse()?])?;
            let c = ampguard::detection::config::DetectionConfig::default();
            let t = c.thresholds(&ampguard::vectors::VectorTable::default());
            dp.set_meter_cfg(ampguard::detection::meter_cfg_for(&t, 2))?;
            dp.track(xdp_common::meter::MeterKey::v4(u32::from(std::net::Ipv4Addr::new(203, 0, 113, 30))))?;
        }
        Ok(dp)
    };
    let (off, on) = (load(false)?, load(true)?);
    let paths: [(&'static str, Vec<u8>); 3] = [
        ("attack, dropped by a policy", P::udp4("198.51.100.7:11211", "203.0.113.10:40001").payload(64).build()),
        ("attack, no policy: the sketch", P::udp4("198.51.100.7:11211", "203.0.113.20:40001").payload(64).build()),
        ("attack, no policy: a tracked destination's exact meter", P::udp4("198.51.100.7:11211", "203.0.113.30:40001").payload(64).build()),
    ];
    let repeat = 2_000_000;
    let bare: &aya::programs::Xdp = base.program("xdp_pass").context("xdp_pass")?.try_into()?;
    let mut samples: Vec<(Vec<f64>, Vec<f64>)> = vec![(Vec::new(), Vec::new()); paths.len()];
    for _ in 0..rounds {
        for (i, (_, pkt)) in paths.iter().enumerate() {
            let b = super::cost::run(bare, pkt, repeat)?.1;
            let a = super::cost::run(off.program(), pkt, repeat)?.1;
            let c = super::cost::run(on.program(), pkt, repeat)?.1;
            samples[i].0.push(a - b);
            samples[i].1.push(c - b);
        }
    }
    Ok(paths
        .iter()
        .zip(samples)
        .map(|((label, _), (a, c))| MeterCost { label, off_ns: percentile(&a, 0.5), on_ns: percentile(&c, 0.5) })
        .collect())
}

pub fn measure(attacks: usize) -> Result<ReactionSection> {
    let meter_rounds = 9;
    eprintln!("bench: detection, metering's cost under test_run ({meter_rounds} rounds)");
    let meter_cost = meter_cost(meter_rounds)?;
    for m in &meter_cost {
        eprintln!("  {:<56} off {:+.1} ns, on {:+.1} ns over bare", m.label, m.off_ns, m.on_ns);
    }
    let (memory, memlock_here) = detection_memory()?;
    let lab = Lab::new("react").context("creating the lab")?;
    add_victims(&lab, 2 * attacks)?;
    let detection_toml = "[detection]\nenabled = true\nnetworks = [\"203.0.113.0/24\"]\nban_ttl_secs = 600\n".to_string();
    let mut results = Vec::new();
    let mut rates = Vec::new();
    {
        eprintln!("bench: reaction, built-in detection (defaults: interval 50 ms, window 200 ms), {attacks} attacks");
        let d = Daemon::start(&lab, &detection_toml)?;
        results.push(run_attacks(&lab, "ampguard built-in detection", 0..attacks, &mut rates)?);
        drop(d);
    }
    {
        eprintln!("bench: reaction, FastNetMon (check_period 1) -> notify script -> ampguard, {attacks} attacks");
        let d = Daemon::start(&lab, "")?;
        let dir = TempDir::new("react-fnm");
        let fnm = Fnm::start(&lab, &d, &dir.0)?;
        results.push(run_attacks(&lab, "FastNetMon -> notify script -> ampguard", attacks..2 * attacks, &mut rates)?);
        drop(fnm);
    }
    Ok(ReactionSection { meter_cost, meter_rounds, memory, memlock_here, attacks, pps: percentile(&rates, 0.5), results, detection_toml })
}
