//! Part 3: the control plane.
//!
//! - Through the typed handle: `DataPlane::upsert_policy` for N distinct /32
//!   victims with the default profile (19 rules, 5 limiters, a TTL), then the
//!   same victims again (replace), then `remove_policy` for all of them.
//! - Through the API of the real daemon (`ampguard run` in a lab's edge
//!   namespace): POST /v1/policies from several concurrent clients, in batches,
//!   so the rate can be followed as the table grows; DELETE likewise.
//! - Ban latency: attack frames flow from the lab's wan side to the victim
//!   the whole time, paced and numbered; a receiver on the victim records which
//!   ones arrive. For each ban alert, the first dropped packet is the one after
//!   the last that arrived; its send time is compared with the alert's request
//!   and response times.
//! - The daemon's memory with 100,000 policies (VmRSS / VmHWM from
//!   /proc/PID/status), and the kernel memory of the maps at that capacity.
//!
//! Victims are 100.64.0.0/15 (/32s, map entries and API requests only; no
//! traffic is sent to them) and the lab's 203.0.113.10 (ban latency).

use std::{
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant, SystemTime},
};

use ampguard::store::{codec::State, files::StateFile};
use ampguard::{
    clock,
    dataplane::{rules::DpPolicy, rules::Mode, Capacity, DataPlane},
    profiles, vectors,
};
use ampguard_tests::{
    daemon::Daemon,
    lab::{Lab, UdpSink},
};
use anyhow::{bail, Context, Result};
use ipnet::{IpNet, Ipv4Net};
use serde_json::Value;

use super::sys::{self, MapFacts};

/// Capacity of the handle test and of the daemon (same maps, same memory).
pub const MAX_POLICIES: u32 = 131_072;
/// The default profile limits 5 vectors per policy (dns, ntp, snmp, mdns, fragments).
pub const MAX_LIMITERS: u32 = 524_288;
/// Policies for the handle and the RSS figures.
pub const N_POLICIES: usize = 100_000;
const BAN_VICTIM: &str = "203.0.113.10";
const ATTACK_SRC: &str = "198.51.100.7:11211";
const ATTACK_DST: &str = "203.0.113.10:40001";

fn daemon_extra() -> String {
    format!("max_alerts_per_minute = 1000000\n[capacity]\nmax_policies = {MAX_POLICIES}\nmax_limiters = {MAX_LIMITERS}\n")
}

/// The i-th bench victim: 100.64.0.0 + i, /32.
fn victim(i: usize) -> Ipv4Net {
    let a = u32::from(Ipv4Addr::new(100, 64, 0, 0)) + i as u32;
    Ipv4Net::new(Ipv4Addr::from(a), 32).expect("valid")
}

/// The default profile as the daemon installs it (ttl: expiry in ns from now).
pub fn default_policy(ttl_ns: u64) -> Result<DpPolicy> {
    let mut rules = Vec::new();
    for (name, spec) in profiles::builtin_default() {
        let id = vectors::id_of(&name).with_context(|| format!("vector {name}"))?;
        rules.push((id, spec.resolve().map_err(|e| anyhow::anyhow!("{name}: {e}"))?));
    }
    Ok(DpPolicy { mode: Mode::Enforce, expires_ns: clock::monotonic_ns() + ttl_ns, rules })
}

pub struct HandleResult {
    pub n: usize,
    pub rules: usize,
    pub limiters_per_policy: usize,
    pub add_secs: f64,
    pub replace_n: usize,
    pub replace_secs: f64,
    pub remove_secs: f64,
    pub maps: Vec<MapFacts>,
    pub capacity: Capacity,
}

pub fn handle(n: usize) -> Result<HandleResult> {
    let capacity = Capacity { max_policies: MAX_POLICIES, max_limiters: MAX_LIMITERS, ..Capacity::default() };
    let mut dp = DataPlane::load(&capacity).context("loading ampguard")?;
    dp.set_vectors(&vectors::default_port_table())?;
    let p = default_policy(3600 * 1_000_000_000)?;
    let limiters_per_policy = p.rules.iter().filter(|(_, r)| r.limit().is_some()).count();
    let victims: Vec<IpNet> = (0..n).map(|i| IpNet::V4(victim(i))).collect();
    let t = Instant::now();
    for v in &victims {
        dp.upsert_policy(*v, &p).with_context(|| format!("adding {v}"))?;
    }
    let add_secs = t.elapsed().as_secs_f64();
    // Replace: same victims, a new expiry (limits unchanged, so limiters are kept).
    let replace_n = n.min(20_000);
    let p2 = DpPolicy { expires_ns: p.expires_ns + 1_000_000_000, ..p.clone() };
    let t = Instant::now();
    for v in &victims[..replace_n] {
        dp.upsert_policy(*v, &p2)?;
    }
    let replace_secs = t.elapsed().as_secs_f64();
    let maps = sys::map_facts(dp.program())?;
    let t = Instant::now();
    for v in &victims {
        if !dp.remove_policy(v)? {
            bail!("{v} had no policy");
        }
    }
    let remove_secs = t.elapsed().as_secs_f64();
    Ok(HandleResult { n, rules: p.rules.len(), limiters_per_policy, add_secs, replace_n, replace_secs, remove_secs, maps, capacity })
}

/// One batch of API calls.
pub struct Batch {
    pub what: &'static str,
    pub table_before: usize,
    pub calls: usize,
    pub clients: usize,
    pub secs: f64,
    /// Per-call latency, ms.
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// State file size after the batch.
    pub state_bytes: u64,
}

pub struct Bans {
    pub table: usize,
    pub n: usize,
    /// Per ban, ms: request sent -> response; request sent -> first dropped
    /// packet sent; response -> first dropped packet (negative: before it).
    pub resp_ms: Vec<f64>,
    pub req_to_drop_ms: Vec<f64>,
    pub resp_to_drop_ms: Vec<f64>,
    /// Gap between the last packet that passed and the first dropped (the resolution), ms.
    pub gap_ms: Vec<f64>,
    pub pps: f64,
    pub skipped: usize,
}

pub struct Rss {
    pub what: String,
    pub policies: usize,
    pub rss_kb: u64,
    pub hwm_kb: u64,
}

pub struct ApiResult {
    pub batches: Vec<Batch>,
    pub bans: Vec<Bans>,
    pub rss: Vec<Rss>,
    /// Restart with the 100,000-policy state file: seconds until /healthz answered.
    pub restart_secs: f64,
    pub state_bytes_100k: u64,
    /// Policies added through the API before the restart.
    pub through_api: usize,
    /// `StateFile::save` of an empty state, ms each (the save protocol's floor on this disk).
    pub save_floor_ms: f64,
    pub extra_toml: String,
}

pub struct Control {
    pub handle: HandleResult,
    pub api: Option<ApiResult>,
}

pub fn percentile(v: &[f64], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    if s.is_empty() {
        return f64::NAN;
    }
    let i = ((p * s.len() as f64).ceil() as usize).clamp(1, s.len()) - 1;
    s[i]
}

fn proc_status(pid: u32) -> Result<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).with_context(|| format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> u64 {
        text.lines().find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())).unwrap_or(0)
    };
    Ok((field("VmRSS:"), field("VmHWM:")))
}

fn daemon_pid(d: &Daemon) -> Result<u32> {
    let pid = d.pid().context("daemon not running")?;
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    if comm.trim() != "ampguard" {
        bail!("pid {pid} is {comm:?}, not ampguard (nsenter did not exec?)");
    }
    Ok(pid)
}

fn rss(d: &Daemon, what: &str, policies: usize) -> Result<Rss> {
    let (rss_kb, hwm_kb) = proc_status(daemon_pid(d)?)?;
    eprintln!("  daemon RSS {what}: {rss_kb} kB (peak {hwm_kb} kB)");
    Ok(Rss { what: what.into(), policies, rss_kb, hwm_kb })
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(Duration::from_secs(120))).build().into()
}

/// One API call on `agent` (must run inside the edge namespace): (status, body).
fn call(agent: &ureq::Agent, d: &Daemon, method: &str, path: &str, body: Option<&str>) -> Result<(u16, Value)> {
    let url = format!("http://127.0.0.1:{}{}", d.port, path);
    let req = ureq::http::Request::builder().method(method).uri(&url).header("Authorization", format!("Bearer {}", d.token));
    let mut res = match body {
        Some(b) => agent.run(req.header("Content-Type", "application/json").body(b.to_string())?)?,
        None => agent.run(req.body(())?)?,
    };
    let status = res.status().as_u16();
    // ureq reads at most 10 MB by default; a list of thousands of policies is more.
    let text = res.body_mut().with_config().limit(1 << 30).read_to_string().context("reading the response")?;
    Ok((status, serde_json::from_str(&text).unwrap_or(Value::String(text))))
}

/// Bytes of the state files: the snapshot and the journal.
fn state_bytes(d: &Daemon) -> u64 {
    let len = |f: &str| std::fs::metadata(d.dir.join("state").join(f)).map(|m| m.len()).unwrap_or(0);
    len("state.json") + len("state.journal")
}

/// `calls` requests split over `clients` threads; `req(i)` gives (method, path, body, expected status).
fn batch(
    d: &Daemon,
    what: &'static str,
    table_before: usize,
    clients: usize,
    calls: usize,
    req: &(dyn Fn(usize) -> (String, String, Option<String>, u16) + Sync),
) -> Result<Batch> {
    let t = Instant::now();
    let lat: Vec<f64> = std::thread::scope(|s| -> Result<Vec<f64>> {
        let handles: Vec<_> = (0..clients)
            .map(|c| {
                s.spawn(move || -> Result<Vec<f64>> {
                    d.ns.enter(|| -> Result<Vec<f64>> {
                        let a = agent();
                        let mut lat = Vec::new();
                        for i in (c..calls).step_by(clients) {
                            let (m, path, body, want) = req(i);
                            let t = Instant::now();
                            let (st, v) = call(&a, d, &m, &path, body.as_deref())?;
                            lat.push(t.elapsed().as_secs_f64() * 1e3);
                            if st != want {
                                bail!("{m} {path}: {st} (wanted {want}): {v}");
                            }
                        }
                        Ok(lat)
                    })?
                })
            })
            .collect();
        let mut all = Vec::new();
        for h in handles {
            all.extend(h.join().expect("client thread")?);
        }
        Ok(all)
    })?;
    let secs = t.elapsed().as_secs_f64();
    let b = Batch {
        what,
        table_before,
        calls,
        clients,
        secs,
        p50_ms: percentile(&lat, 0.5),
        p99_ms: percentile(&lat, 0.99),
        state_bytes: state_bytes(d),
    };
    eprintln!(
        "  {what}: {calls} calls, {clients} clients, table {table_before}: {:.0}/s (p50 {:.1} ms, p99 {:.1} ms), state file {} KiB",
        calls as f64 / secs,
        b.p50_ms,
        b.p99_ms,
        b.state_bytes / 1024
    );
    Ok(b)
}

fn add_req(i: usize) -> (String, String, Option<String>, u16) {
    ("POST".into(), "/v1/policies".into(), Some(format!(r#"{{"victim": "{}", "ttl_secs": 3600, "comment": "bench"}}"#, victim(i))), 201)
}

/// Numbered attack frames paced at ~`gap_us`, with their send times; the
/// receiver's list of sequence numbers that arrived.
struct Flow {
    sent: Vec<u64>,
    got: Vec<u64>,
}

/// Runs `f` while the flow runs; returns f's result and the flow.
fn with_flow<T>(lab: &Lab, gap_us: u64, f: impl FnOnce() -> Result<T>) -> Result<(T, Flow)> {
    let sink = UdpSink::bind(&lab.edge, ATTACK_DST.parse()?)?;
    let tx: UdpSocket = lab.wan.enter(|| UdpSocket::bind(ATTACK_SRC))??;
    let dst: SocketAddr = ATTACK_DST.parse()?;
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let rx = s.spawn(|| {
            let mut got = Vec::new();
            let mut buf = [0u8; 2048];
            let _ = sink.socket().set_read_timeout(Some(Duration::from_millis(50)));
            while !stop.load(Ordering::Relaxed) {
                if let Ok(n) = sink.socket().recv(&mut buf) {
                    if n >= 8 {
                        got.push(u64::from_le_bytes(buf[..8].try_into().expect("8 bytes")));
                    }
                }
            }
            // What is still queued.
            let _ = sink.socket().set_read_timeout(Some(Duration::from_millis(20)));
            while let Ok(n) = sink.socket().recv(&mut buf) {
                if n >= 8 {
                    got.push(u64::from_le_bytes(buf[..8].try_into().expect("8 bytes")));
                }
            }
            got
        });
        let txh = s.spawn(|| {
            // SAFETY: prctl with an integer argument; 1 ns timer slack so the pacing sleep is short.
            unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) };
            let mut sent = Vec::new();
            let mut pkt = [0u8; 64];
            while !stop.load(Ordering::Relaxed) {
                let seq = sent.len() as u64;
                pkt[..8].copy_from_slice(&seq.to_le_bytes());
                sent.push(clock::monotonic_ns());
                let _ = tx.send_to(&pkt, dst);
                std::thread::sleep(Duration::from_micros(gap_us));
            }
            sent
        });
        std::thread::sleep(Duration::from_millis(100));
        let r = f();
        std::thread::sleep(Duration::from_millis(50));
        stop.store(true, Ordering::Relaxed);
        let sent = txh.join().expect("sender");
        let got = rx.join().expect("receiver");
        r.map(|r| (r, Flow { sent, got }))
    })
}

/// `n` ban/unban cycles against the lab victim while the flow runs.
fn bans(lab: &Lab, d: &Daemon, n: usize, table: usize) -> Result<Bans> {
    // (request sent, response, unban request sent), monotonic ns.
    let (times, flow) = with_flow(lab, 50, || {
        d.ns.enter(|| -> Result<Vec<(u64, u64, u64)>> {
            let a = agent();
            let mut times = Vec::new();
            let ban = format!(r#"{{"victim": "{BAN_VICTIM}", "action": "ban", "comment": "bench"}}"#);
            let unban = format!(r#"{{"victim": "{BAN_VICTIM}", "action": "unban"}}"#);
            for _ in 0..n {
                let t0 = clock::monotonic_ns();
                let (st, v) = call(&a, d, "POST", "/v1/alerts", Some(&ban))?;
                let t1 = clock::monotonic_ns();
                if st != 200 || v["result"] != "created" {
                    bail!("ban: {st} {v}");
                }
                std::thread::sleep(Duration::from_millis(25));
                let t2 = clock::monotonic_ns();
                let (st, v) = call(&a, d, "POST", "/v1/alerts", Some(&unban))?;
                if st != 200 || v["result"] != "removed" {
                    bail!("unban: {st} {v}");
                }
                std::thread::sleep(Duration::from_millis(25));
                times.push((t0, t1, t2));
            }
            Ok(times)
        })?
    })?;
    let mut arrived = vec![false; flow.sent.len()];
    for s in &flow.got {
        if let Some(a) = arrived.get_mut(*s as usize) {
            *a = true;
        }
    }
    let secs = (flow.sent.last().copied().unwrap_or(0) - flow.sent.first().copied().unwrap_or(0)) as f64 / 1e9;
    let mut b = Bans {
        table,
        n,
        resp_ms: vec![],
        req_to_drop_ms: vec![],
        resp_to_drop_ms: vec![],
        gap_ms: vec![],
        pps: flow.sent.len() as f64 / secs.max(1e-9),
        skipped: 0,
    };
    for (t0, t1, t2) in times {
        // Packets sent before the unban request; the last one that arrived, L.
        let end = flow.sent.partition_point(|&t| t < t2);
        let Some(last) = (0..end).rev().find(|&i| arrived[i]) else {
            b.skipped += 1;
            continue;
        };
        if last + 1 >= end || flow.sent[last] + 50_000_000 < t0 {
            // Nothing was dropped before the unban, or L is far before the ban
            // (the flow stalled): not a clean sample.
            b.skipped += 1;
            continue;
        }
        let first_drop = flow.sent[last + 1];
        let ms = |a: u64, b: u64| (a as f64 - b as f64) / 1e6;
        b.resp_ms.push(ms(t1, t0));
        b.req_to_drop_ms.push(ms(first_drop, t0));
        b.resp_to_drop_ms.push(ms(first_drop, t1));
        b.gap_ms.push(ms(first_drop, flow.sent[last]));
    }
    eprintln!(
        "  {} bans (table {table}): request->first drop p50 {:.2} ms p99 {:.2} ms; response->first drop p50 {:.2} p99 {:.2} ms; response p50 {:.2} ms; flow {:.0} pps; {} skipped",
        b.req_to_drop_ms.len(),
        percentile(&b.req_to_drop_ms, 0.5),
        percentile(&b.req_to_drop_ms, 0.99),
        percentile(&b.resp_to_drop_ms, 0.5),
        percentile(&b.resp_to_drop_ms, 0.99),
        percentile(&b.resp_ms, 0.5),
        b.pps,
        b.skipped
    );
    Ok(b)
}

/// The API figures: ban latency, add/delete rates as the table grows (until
/// `api_budget` has passed), then a restart with 100,000 policies for RSS.
pub fn api(n_bans: usize, api_budget: Duration) -> Result<ApiResult> {
    // The daemon inherits the bench's CPU affinity: let both use every CPU, as in production.
    sys::unpin()?;
    let lab = Lab::new("bctl").context("creating the lab")?;
    let extra = daemon_extra();
    let mut d = Daemon::start(&lab, &extra).context("starting the daemon")?;
    let mut rss_v = vec![rss(&d, "started, no policy", 0)?];
    let mut bans_v = vec![bans(&lab, &d, n_bans, 0)?];

    let mut batches = Vec::new();
    let mut table = 0usize;
    // First 500 with one client, then 4 clients in growing batches, towards
    // N_POLICIES, while the time budget lasts (a batch is shrunk to what the
    // last rate fits in the budget left).
    batches.push(batch(&d, "POST /v1/policies", table, 1, 500, &|i| add_req(i))?);
    table += 500;
    let started = Instant::now();
    let mut rate = 500.0 / batches[0].secs;
    for size in [1000usize, 3500, 5000].into_iter().chain(std::iter::repeat(10_000)) {
        let left = api_budget.saturating_sub(started.elapsed()).as_secs_f64();
        let size = size.min(N_POLICIES - table).min((rate * left) as usize);
        if size < 100 {
            break;
        }
        let base = table;
        let b = batch(&d, "POST /v1/policies", table, 4, size, &move |i| add_req(base + i))?;
        rate = b.calls as f64 / b.secs;
        batches.push(b);
        table += size;
    }
    // Deletes: 500 of the policies just added, then add them back.
    // (Not Daemon::call: its 5 s timeout and ureq's 10 MB body limit are too small for thousands.)
    let (_, list) = d.ns.enter(|| call(&agent(), &d, "GET", "/v1/policies", None))??;
    // (id, victim) of the last 500 listed.
    let del: Vec<(String, String)> = list["policies"]
        .as_array()
        .with_context(|| format!("policy list: {}", list.to_string().chars().take(300).collect::<String>()))?
        .iter()
        .rev()
        .take(500)
        .filter_map(|p| Some((p["id"].as_str()?.to_string(), p["victim"].as_str()?.to_string())))
        .collect();
    let del_ref = &del;
    batches.push(batch(&d, "DELETE /v1/policies/{id}", table, 4, del.len(), &move |i| {
        ("DELETE".into(), format!("/v1/policies/{}", del_ref[i].0), None, 204)
    })?);
    batches.push(batch(&d, "POST /v1/policies", table - del.len(), 4, del.len(), &move |i| {
        (
            "POST".into(),
            "/v1/policies".into(),
            Some(format!(r#"{{"victim": "{}", "ttl_secs": 3600, "comment": "bench"}}"#, del_ref[i].1)),
            201,
        )
    })?);
    let through_api = table;
    rss_v.push(rss(&d, "after the API batches (all added through the API)", table)?);

    // A restart with N_POLICIES: if the API did not get there within the
    // budget, the state file is extended to N_POLICIES records of the shape
    // the API wrote.
    d.stop().context("stopping the daemon")?;
    let sf = StateFile::new(&d.dir.join("state"));
    let mut state: State = sf.load().context("reading the daemon's state file")?;
    let template = (**state.policies.iter().next().context("no policy in the state file")?).clone();
    let have: std::collections::HashSet<IpNet> = state.policies.iter().map(|p| p.victim).collect();
    let now = SystemTime::now();
    let mut i = 0;
    let extended = state.policies.len() < N_POLICIES;
    while state.policies.len() < N_POLICIES {
        let v = IpNet::V4(victim(i));
        i += 1;
        if have.contains(&v) {
            continue;
        }
        let mut p = template.clone();
        p.id = format!("p-{}", state.next_id);
        state.next_id += 1;
        p.victim = v;
        p.created_at = now;
        p.updated_at = now;
        state.policies.put(std::sync::Arc::new(p)).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    }
    if extended {
        state.seq += 1;
        sf.save(state.seq, state.next_id, state.policies.iter(), &state.allowlist).context("writing the 100,000-policy state file")?;
    }
    let state_bytes_100k = state_bytes(&d);
    drop(state);
    // The floor of one save: the same protocol on an empty state, same filesystem.
    let floor_dir = d.dir.join("save-floor");
    let floor = StateFile::new(&floor_dir);
    let empty = State::empty();
    let t = Instant::now();
    for _ in 0..50 {
        floor.save(empty.seq, empty.next_id, empty.policies.iter(), &empty.allowlist)?;
    }
    let save_floor_ms = t.elapsed().as_secs_f64() * 1e3 / 50.0;
    let _ = std::fs::remove_dir_all(&floor_dir);
    eprintln!("  StateFile::save of an empty state: {save_floor_ms:.2} ms");
    let t = Instant::now();
    d.spawn().context("restarting the daemon with 100,000 policies")?;
    let restart_secs = t.elapsed().as_secs_f64();
    let (_, st) = d.call("GET", "/v1/status", None)?;
    let total = st["policies"]["total"].as_u64().unwrap_or(0) as usize;
    if total != N_POLICIES {
        bail!("daemon reports {total} policies after the restart, expected {N_POLICIES}: {st}");
    }
    eprintln!("  restarted with {total} policies in {restart_secs:.1} s");
    rss_v.push(rss(
        &d,
        if extended { "restarted on the state file extended to 100,000" } else { "restarted on its own state file" },
        total,
    )?);
    // Adds at this size, after the restart: 1,000 with 4 clients, then 500
    // with one client alone (which waits for its own fdatasync each time).
    batches.push(batch(&d, "POST /v1/policies", total, 4, 1000, &|i| add_req(N_POLICIES + 1000 + i))?);
    batches.push(batch(&d, "POST /v1/policies", total + 1000, 1, 500, &|i| add_req(N_POLICIES + 2000 + i))?);
    let table_now = total + 1500;
    bans_v.push(bans(&lab, &d, 5, table_now)?);
    rss_v.push(rss(&d, "after those calls", table_now)?);
    Ok(ApiResult { batches, bans: bans_v, rss: rss_v, restart_secs, state_bytes_100k, through_api, save_floor_ms, extra_toml: extra })
}
