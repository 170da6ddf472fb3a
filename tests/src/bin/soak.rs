//! `soak`: the daemon under steady churn for N minutes, watching for leaks.
//! Run it with `sudo cargo xtask soak --minutes N` (root: it creates network
//! namespaces and attaches XDP). Not part of `cargo xtask test`.
//!
//! In a lab (see `ampguard_tests::lab`), the real daemon gets, for the whole
//! run and all at once:
//! - policy churn through the API: create, replace and delete /32 policies
//!   for 198.18.0.0/15 hosts (about 100 live at a time);
//! - generic alerts (`POST /v1/alerts`): bans with a 20 s TTL and unbans for
//!   203.0.113.100-149, so both unbans and the expiry sweeper remove policies;
//! - scrapes of /v1/status and /metrics;
//! - a memcached flood to the protected 203.0.113.10 (none may arrive) and
//!   ordinary UDP to it (all of it should arrive).
//!
//! Every `--interval` seconds it samples the daemon's RSS (VmRSS in
//! /proc/PID/status) and open file descriptors (/proc/PID/fd). It prints a
//! table and fails if, after the warm-up, RSS grows by more than 20 % or the
//! descriptors by more than 10, if any attack packet arrives, or if any API
//! request fails. `--out FILE` also writes the table and figures as Markdown.
//! Only documentation and benchmarking prefixes carry traffic, inside the lab.

use std::{
    fmt::Write as _,
    net::SocketAddr,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::{Duration, Instant},
};

use ampguard_tests::{
    daemon::Daemon,
    lab::{send_udp, Lab, UdpSink},
};
use anyhow::{bail, Context, Result};
use serde_json::json;

const USAGE: &str = "usage: soak [--minutes M] [--interval S] [--warmup S] [--out FILE] [--command TEXT]
  --minutes M    length of the run (default 5; fractions allowed)
  --interval S   seconds between samples of RSS and fds (default 10)
  --warmup S     seconds before the baseline sample (default 60, at most a fifth of the run)
  --out FILE     also write the results as Markdown to FILE
  --command TEXT the command line to record in FILE";

/// RSS may grow this much over the baseline (after warm-up).
const RSS_GROWTH_MAX: f64 = 0.20;
/// Open descriptors may grow this much over the baseline.
const FD_GROWTH_MAX: i64 = 10;

struct Args {
    minutes: f64,
    interval: u64,
    warmup: Option<u64>,
    out: Option<String>,
    command: String,
}

fn parse_args() -> Result<Args> {
    let mut a = Args { minutes: 5.0, interval: 10, warmup: None, out: None, command: "sudo cargo xtask soak".into() };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().with_context(|| format!("{arg} needs a value\n{USAGE}"));
        match arg.as_str() {
            "--minutes" => a.minutes = value()?.parse().context("--minutes")?,
            "--interval" => a.interval = value()?.parse().context("--interval")?,
            "--warmup" => a.warmup = Some(value()?.parse().context("--warmup")?),
            "--out" => a.out = Some(value()?),
            "--command" => a.command = value()?,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    if !(a.minutes > 0.0 && a.minutes <= 24.0 * 60.0) {
        bail!("--minutes must be in (0, 1440]");
    }
    if a.interval == 0 {
        bail!("--interval must be at least 1");
    }
    Ok(a)
}

#[derive(Default)]
struct Counts {
    requests: AtomicU64,
    failed: AtomicU64,
    policies_created: AtomicU64,
    policies_deleted: AtomicU64,
    policies_replaced: AtomicU64,
    alerts: AtomicU64,
    attack_sent: AtomicU64,
    normal_sent: AtomicU64,
}

struct Sample {
    at: Duration,
    rss_kib: u64,
    fds: i64,
    requests: u64,
    packets: u64,
}

fn rss_kib(pid: u32) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:")).context("no VmRSS")?;
    Ok(line.split_whitespace().nth(1).context("VmRSS value")?.parse()?)
}

fn fd_count(pid: u32) -> Result<i64> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count() as i64)
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// One API call, counted; a status other than one of `ok` is a failure (printed).
fn call(d: &Daemon, c: &Counts, method: &str, path: &str, body: Option<&str>, ok: &[u16]) -> Option<serde_json::Value> {
    c.requests.fetch_add(1, Ordering::Relaxed);
    match d.call(method, path, body) {
        Ok((st, v)) if ok.contains(&st) => Some(v),
        Ok((st, v)) => {
            c.failed.fetch_add(1, Ordering::Relaxed);
            eprintln!("soak: {method} {path}: {st} {v}");
            None
        }
        Err(e) => {
            c.failed.fetch_add(1, Ordering::Relaxed);
            eprintln!("soak: {method} {path}: {e}");
            None
        }
    }
}

fn main() -> Result<()> {
    let args = parse_args()?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the soak creates network namespaces and attaches XDP: run it as root (sudo cargo xtask soak)");
    }
    let total = Duration::from_secs_f64(args.minutes * 60.0);
    let warmup = Duration::from_secs(args.warmup.unwrap_or(60)).min(total / 5);
    let lab = Lab::new("soak")?;
    let d = Daemon::start(&lab, "")?;
    let pid = d.pid().context("daemon pid")?;
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    if comm.trim() != "ampguard" {
        bail!("pid {pid} is {comm:?}, not the daemon (nsenter should exec it)");
    }
    let (st, p) = d.call("POST", "/v1/policies", Some(r#"{"victim": "203.0.113.10", "ttl_secs": 0}"#))?;
    if st != 201 {
        bail!("protecting 203.0.113.10: {st} {p}");
    }
    println!(
        "soak: {:.1} min, samples every {} s, warm-up {} s; daemon pid {pid}, state in {}",
        args.minutes,
        args.interval,
        warmup.as_secs(),
        d.dir.display()
    );

    let counts = Counts::default();
    let stop = AtomicBool::new(false);
    let attack_sink = UdpSink::bind(&lab.edge, sa("203.0.113.10:40001"))?;
    let normal_sink = UdpSink::bind(&lab.edge, sa("203.0.113.10:40002"))?;
    let start = Instant::now();
    let mut samples: Vec<Sample> = Vec::new();
    let (leaked, normal_got) = std::thread::scope(|s| -> Result<(usize, usize)> {
        let (d, c, stop) = (&d, &counts, &stop);
        let running = move || !stop.load(Ordering::Relaxed) && start.elapsed() < total + Duration::from_secs(5);
        let drain_for = total + Duration::from_secs(10);
        let (attack_sink, normal_sink) = (&attack_sink, &normal_sink);
        let a_rx = s.spawn(move || attack_sink.drain(drain_for, drain_for));
        let n_rx = s.spawn(move || normal_sink.drain(drain_for, drain_for));
        // Policy churn: about 100 live /32s in 198.18.0.0/15, replaced and deleted in turn.
        s.spawn(move || {
            let mut live: std::collections::VecDeque<String> = Default::default();
            let mut n: u64 = 0;
            while running() {
                let v = format!("198.18.{}.{}", (n / 250) % 2, n % 250 + 1);
                let body = json!({"victim": v, "rules": {"memcached": {"action": "drop"}}, "ttl_secs": 0, "comment": format!("soak {n}")});
                if let Some(p) = call(d, c, "POST", "/v1/policies", Some(&body.to_string()), &[201]) {
                    c.policies_created.fetch_add(1, Ordering::Relaxed);
                    let id = p["id"].as_str().unwrap_or_default().to_string();
                    if n.is_multiple_of(3) {
                        let body = json!({"victim": v, "rules": {"memcached": {"action": "drop"}, "ntp": {"action": "limit", "pps": 100}}, "ttl_secs": 0});
                        if call(d, c, "PUT", &format!("/v1/policies/{id}"), Some(&body.to_string()), &[200]).is_some() {
                            c.policies_replaced.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    live.push_back(id);
                }
                while live.len() > 100 {
                    let id = live.pop_front().expect("non-empty");
                    if call(d, c, "DELETE", &format!("/v1/policies/{id}"), None, &[204]).is_some() {
                        c.policies_deleted.fetch_add(1, Ordering::Relaxed);
                    }
                }
                n += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        // Alerts: ~4 a second (the default budget is 600 a minute per source).
        s.spawn(move || {
            let mut n: u64 = 0;
            while running() {
                let victim = format!("203.0.113.{}", 100 + n % 50);
                let action = if n % 100 < 50 || n.is_multiple_of(2) { "ban" } else { "unban" };
                let body = json!({"victim": victim, "action": action, "vectors": ["ssdp"], "ttl_secs": 20, "comment": "soak"});
                if call(d, c, "POST", "/v1/alerts", Some(&body.to_string()), &[200]).is_some() {
                    c.alerts.fetch_add(1, Ordering::Relaxed);
                }
                n += 1;
                std::thread::sleep(Duration::from_millis(250));
            }
        });
        // Scrapes, as Prometheus and an operator would.
        s.spawn(move || {
            while running() {
                call(d, c, "GET", "/v1/status", None, &[200]);
                call(d, c, "GET", "/v1/policies", None, &[200]);
                c.requests.fetch_add(1, Ordering::Relaxed);
                if !matches!(d.call_with("GET", "/metrics", None, None), Ok((200, _))) {
                    c.failed.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        });
        // Traffic: memcached flood (~10k pps) and ordinary UDP (~1k pps).
        let lab = &lab;
        s.spawn(move || -> Result<()> {
            while running() {
                let n = send_udp(&lab.wan, sa("198.51.100.7:11211"), sa("203.0.113.10:40001"), 100, 400)?;
                c.attack_sent.fetch_add(n as u64, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(10));
            }
            Ok(())
        });
        s.spawn(move || -> Result<()> {
            while running() {
                let n = send_udp(&lab.wan, sa("198.51.100.7:40000"), sa("203.0.113.10:40002"), 10, 200)?;
                c.normal_sent.fetch_add(n as u64, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(10));
            }
            Ok(())
        });

        println!("{:>8} {:>10} {:>5} {:>10} {:>12}", "time", "RSS KiB", "fds", "requests", "packets");
        let mut next = Duration::ZERO;
        while next <= total {
            if let Some(wait) = next.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
            let sample = Sample {
                at: start.elapsed(),
                rss_kib: rss_kib(pid)?,
                fds: fd_count(pid)?,
                requests: counts.requests.load(Ordering::Relaxed),
                packets: counts.attack_sent.load(Ordering::Relaxed) + counts.normal_sent.load(Ordering::Relaxed),
            };
            println!(
                "{:>7.0}s {:>10} {:>5} {:>10} {:>12}",
                sample.at.as_secs_f64(),
                sample.rss_kib,
                sample.fds,
                sample.requests,
                sample.packets
            );
            samples.push(sample);
            next += Duration::from_secs(args.interval);
        }
        stop.store(true, Ordering::Relaxed);
        Ok((a_rx.join().expect("attack receiver"), n_rx.join().expect("normal receiver")))
    })?;
    let elapsed = start.elapsed();

    // Verdict.
    let base = samples.iter().find(|s| s.at >= warmup).unwrap_or(&samples[0]);
    let last = samples.last().expect("at least one sample");
    let first = &samples[0];
    let max_rss = samples.iter().map(|s| s.rss_kib).max().unwrap_or(0);
    let max_fds = samples.iter().map(|s| s.fds).max().unwrap_or(0);
    let after: Vec<&Sample> = samples.iter().filter(|s| s.at >= base.at).collect();
    let max_rss_after = after.iter().map(|s| s.rss_kib).max().unwrap_or(0);
    let max_fds_after = after.iter().map(|s| s.fds).max().unwrap_or(0);
    let rss_bound = (base.rss_kib as f64 * (1.0 + RSS_GROWTH_MAX)) as u64;
    let fd_bound = base.fds + FD_GROWTH_MAX;
    let c = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let (attack_sent, normal_sent) = (c(&counts.attack_sent), c(&counts.normal_sent));
    let mut problems = Vec::new();
    if last.rss_kib > rss_bound {
        problems.push(format!(
            "RSS grew from {} KiB (after warm-up) to {} KiB, above the bound of {rss_bound} KiB (+20 %)",
            base.rss_kib, last.rss_kib
        ));
    }
    if max_fds_after > fd_bound {
        problems.push(format!(
            "open fds grew from {} (after warm-up) to {max_fds_after}, above the bound of {fd_bound} (+{FD_GROWTH_MAX})",
            base.fds
        ));
    }
    if leaked > 0 {
        problems.push(format!("{leaked} of {attack_sent} attack packets reached the victim"));
    }
    if c(&counts.failed) > 0 {
        problems.push(format!("{} of {} API requests failed", c(&counts.failed), c(&counts.requests)));
    }

    let mut md = String::new();
    writeln!(md, "# Soak test\n")?;
    writeln!(md, "Command: `{}`  ", args.command)?;
    writeln!(
        md,
        "Duration: {:.1} min ({:.0} s), samples every {} s, warm-up {} s  ",
        args.minutes,
        elapsed.as_secs_f64(),
        args.interval,
        warmup.as_secs()
    )?;
    writeln!(md, "Machine: {} vCPUs, kernel {}  ", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0), kernel())?;
    writeln!(md, "Daemon: `{}` (debug or release as built by the command)\n", ampguard_tests::daemon::ampguard_bin().display())?;
    writeln!(md, "Load, all at once for the whole run (see tests/src/bin/soak.rs):")?;
    writeln!(
        md,
        "- policy churn: {} created, {} replaced, {} deleted (about 100 live /32s in 198.18.0.0/15);",
        c(&counts.policies_created),
        c(&counts.policies_replaced),
        c(&counts.policies_deleted)
    )?;
    writeln!(md, "- {} generic alerts (bans with a 20 s TTL, unbans; the sweeper expires the rest);", c(&counts.alerts))?;
    writeln!(md, "- /v1/status, /v1/policies and /metrics scraped every second;")?;
    writeln!(md, "- {} API requests in all, {} failed;", c(&counts.requests), c(&counts.failed))?;
    writeln!(md, "- {attack_sent} memcached attack packets to the protected 203.0.113.10, {leaked} arrived;")?;
    writeln!(md, "- {normal_sent} ordinary UDP packets to it, {normal_got} arrived.\n")?;
    writeln!(md, "| | RSS (KiB) | open fds |\n| --- | ---: | ---: |")?;
    writeln!(md, "| first sample | {} | {} |", first.rss_kib, first.fds)?;
    writeln!(md, "| baseline (after warm-up, {:.0} s) | {} | {} |", base.at.as_secs_f64(), base.rss_kib, base.fds)?;
    writeln!(md, "| last sample | {} | {} |", last.rss_kib, last.fds)?;
    writeln!(md, "| max | {max_rss} | {max_fds} |")?;
    writeln!(md, "| max after warm-up | {max_rss_after} | {max_fds_after} |")?;
    writeln!(md, "| bound (last RSS / max fds after warm-up) | {rss_bound} (+20 %) | {fd_bound} (+{FD_GROWTH_MAX}) |\n")?;
    writeln!(md, "Result: {}\n", if problems.is_empty() { "**pass**".to_string() } else { format!("**fail**: {}", problems.join("; ")) })?;
    writeln!(md, "Samples:\n\n| time (s) | RSS (KiB) | fds | requests | packets sent |\n| ---: | ---: | ---: | ---: | ---: |")?;
    for s in &samples {
        writeln!(md, "| {:.0} | {} | {} | {} | {} |", s.at.as_secs_f64(), s.rss_kib, s.fds, s.requests, s.packets)?;
    }
    println!("\n{md}");
    if let Some(out) = &args.out {
        std::fs::write(out, &md).with_context(|| format!("writing {out}"))?;
        println!("soak: wrote {out}");
    }
    if !problems.is_empty() {
        bail!("soak failed: {}", problems.join("; "));
    }
    Ok(())
}

fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_default()
}
