//! Rate-limit accuracy with the real kernel clock: with a limit of R per second,
//! packets offered far above R for a measured time T pass R x T (+ burst)
//! within 10%. On one CPU, and on every CPU at once (the bucket is shared by
//! all CPUs: see README, "Rate limits and CPUs").

mod common;
use common::*;

use std::time::{Duration, Instant};

use ampguard::dataplane::rules::{Limit, Rule};
use aya::programs::{TestRun, TestRunOptions};

const RUN: Duration = Duration::from_millis(1500);

/// One test at a time: each floods the CPUs it pins to, and a flood of a
/// test next to it would make the offered load clumpier than the buckets
/// allow for (the accuracy tests would then pass less than the limit).
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn pin_to_cpu(cpu: usize) {
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Offer `pkt` as fast as BPF_PROG_TEST_RUN allows on `cpus` CPUs for RUN;
/// returns the measured duration. Each test run call replays the packet 10,000
/// times (~0.3 ms) and costs ~15 ms of fixed overhead on this kernel, so the
/// offered load comes in clumps: the buckets here take 50 ms or more to fill,
/// longer than the gaps, so no tokens overflow between clumps.
fn flood(f: &Fixture, pkt: &[u8], cpus: usize) -> Duration {
    let start = Instant::now();
    std::thread::scope(|s| {
        for cpu in 0..cpus {
            s.spawn(move || {
                pin_to_cpu(cpu);
                while start.elapsed() < RUN {
                    f.dp.program().test_run(TestRunOptions { data_in: Some(pkt), repeat: 10_000, ..Default::default() }).expect("test run");
                }
            });
        }
    });
    start.elapsed()
}

fn check(what: &str, passed: u64, expected: f64, offered: u64) {
    let ratio = passed as f64 / expected;
    eprintln!("{what}: passed {passed} of {offered} offered, expected {expected:.0}, ratio {ratio:.3}");
    assert!((0.9..=1.1).contains(&ratio), "{what}: passed {passed}, expected {expected:.0} within 10% (ratio {ratio:.3})");
}

fn run_case(what: &str, rule: Rule, cpus: usize) {
    let _one_at_a_time = serial();
    let mut f = Fixture::new();
    let slot = f.policy("203.0.113.0/24", policy(Enforce, 0, &[("ntp", rule)]));
    let pkt = P::udp4("198.51.100.123:123", "203.0.113.10:40001").payload(458).build();
    let t = flood(&f, &pkt, cpus);
    let c = f.dp.policy_counters(slot).unwrap()[v("ntp") as usize];
    let passed = c.by_verdict[verdict::PASSED].packets;
    let offered = passed + c.by_verdict[verdict::RATE_LIMITED].packets;
    assert!(offered as f64 > 5.0 * passed as f64, "{what}: offered load too low to test a limit ({offered})");
    let Rule::Limit(l) = rule else { unreachable!() };
    let expected = if l.pps != 0 {
        l.pps as f64 * t.as_secs_f64() + l.burst_packets as f64
    } else {
        (l.bytes_per_sec as f64 * t.as_secs_f64() + l.burst_bytes as f64) / pkt.len() as f64
    };
    check(what, passed, expected, offered);
}

#[test]
fn packets_per_second_on_one_cpu() {
    run_case("10,000 pps, burst 500, one CPU", Rule::Limit(Limit { pps: 10_000, bytes_per_sec: 0, burst_packets: 500, burst_bytes: 0 }), 1);
}

#[test]
fn bytes_per_second_on_one_cpu() {
    run_case(
        "4 MB/s, burst 1 MB, one CPU",
        Rule::Limit(Limit { pps: 0, bytes_per_sec: 4_000_000, burst_packets: 0, burst_bytes: 1_000_000 }),
        1,
    );
}

#[test]
fn packets_per_second_on_all_cpus() {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    run_case(
        "10,000 pps, burst 500, all CPUs at once",
        Rule::Limit(Limit { pps: 10_000, bytes_per_sec: 0, burst_packets: 500, burst_bytes: 0 }),
        cpus,
    );
}

/// Two CPUs racing on one bucket admit exactly what the limit allows: with the
/// test clock frozen, a flood from both CPUs at once passes the burst and not
/// one packet more; each step of the clock passes exactly the tokens it adds.
/// (A non-atomic bucket update lets both CPUs spend the same token.)
#[test]
fn two_cpus_racing_on_one_bucket_spend_each_token_once() {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    assert!(cpus >= 2, "this test needs two CPUs to race on the bucket (found {cpus})");
    let _one_at_a_time = serial();
    let mut f = Fixture::new();
    // A deep bucket, so that both CPUs spend it at once for tens of ms.
    const BURST: u64 = 1_000_000;
    let rule = Rule::Limit(Limit { pps: 10_000, bytes_per_sec: 0, burst_packets: BURST, burst_bytes: 0 });
    let slot = f.policy("203.0.113.0/24", policy(Enforce, 0, &[("ntp", rule)]));
    let pkt = P::udp4("198.51.100.123:123", "203.0.113.10:40001").payload(458).build();
    let mut now = 100 * SEC;
    f.set_now(now);
    let passed = |f: &Fixture| f.dp.policy_counters(slot).unwrap()[v("ntp") as usize].by_verdict[verdict::PASSED].packets;
    let race = |f: &Fixture, repeat: u32| {
        let start = std::sync::Barrier::new(2);
        std::thread::scope(|s| {
            for cpu in 0..2 {
                let (pkt, start) = (&pkt, &start);
                s.spawn(move || {
                    pin_to_cpu(cpu);
                    start.wait();
                    f.dp.program().test_run(TestRunOptions { data_in: Some(pkt), repeat, ..Default::default() }).expect("test run");
                });
            }
        })
    };
    race(&f, 1_500_000);
    assert_eq!(passed(&f), BURST, "a full bucket: the burst, once");
    let mut want = BURST;
    for step in 1..=20u64 {
        // 1 ms at 10,000/s: 10 tokens; the tokens of a step are spent at once by both CPUs.
        now += SEC / 1000;
        f.set_now(now);
        race(&f, 20_000);
        want += 10;
        assert_eq!(passed(&f), want, "after step {step}: each refilled token spent once");
    }
}
