//! Per-policy counters (shared totals behind a per-CPU cache, see
//! xdp_common::counters): exact when rule entries share a cache entry and
//! fold on every packet, nothing inherited by a policy that reuses a removed
//! one's entries, and exact on two CPUs at once with reads that never go
//! down while packets flow.

mod common;
use ampguard::dataplane::{Capacity, DataPlane};
use aya::programs::{TestRun, TestRunOptions};
use common::*;
use xdp_common::counters::CACHE_ENTRIES;

fn memcached_to(dst: &str) -> Vec<u8> {
    P::udp4("198.51.100.7:11211", &format!("{dst}:40001")).build()
}

fn ntp_to(dst: &str) -> Vec<u8> {
    P::udp4("198.51.100.123:123", &format!("{dst}:40001")).build()
}

fn run_n(dp: &DataPlane, pkt: &[u8], n: u32) -> u32 {
    dp.program().test_run(TestRunOptions { data_in: Some(pkt), repeat: n, ..Default::default() }).expect("BPF_PROG_TEST_RUN").return_value
}

fn dropped(dp: &DataPlane, slot: u32) -> (u64, u64) {
    let c = dp.policy_counters(slot).unwrap()[v("memcached") as usize].by_verdict[verdict::DROPPED];
    (c.packets, c.bytes)
}

/// Two policies whose memcached rule entries are CACHE_ENTRIES apart: they
/// share one cache entry per CPU, so alternating between them folds on every
/// packet. Installs fillers in between to get there (entries are handed out
/// in order on a fresh data plane).
fn colliding_pair(f: &mut Fixture) -> (u32, u32) {
    let a = f.policy("203.0.113.10/32", policy(Enforce, 0, &[("memcached", Drop)]));
    // a holds entries 1 (its shared pass) and 2 (memcached); each filler two more.
    for i in 0..(CACHE_ENTRIES - 2) / 2 {
        let victim = format!("198.18.{}.{}/32", i / 256, i % 256);
        f.policy(&victim, policy(Enforce, 0, &[("memcached", Drop)]));
    }
    let b = f.policy("203.0.113.20/32", policy(Enforce, 0, &[("memcached", Drop)]));
    (a, b)
}

#[test]
fn counts_are_exact_when_rule_entries_fold_on_every_packet() {
    let mut f = Fixture::new();
    let (a, b) = colliding_pair(&mut f);
    let (pa, pb) = (memcached_to("203.0.113.10"), memcached_to("203.0.113.20"));
    let mut want = (0u64, 0u64);
    // Alternate single packets (a fold each), then runs (one fold, then hits).
    for round in 0..200u32 {
        let (na, nb) = if round % 2 == 0 { (1, 1) } else { (round, 3) };
        assert_eq!(run_n(&f.dp, &pa, na), XDP_DROP);
        assert_eq!(run_n(&f.dp, &pb, nb), XDP_DROP);
        want.0 += na as u64;
        want.1 += nb as u64;
        // Exact at every point where no packet is in flight.
        assert_eq!(dropped(&f.dp, a), (want.0, want.0 * pa.len() as u64), "policy a after round {round}");
        assert_eq!(dropped(&f.dp, b), (want.1, want.1 * pb.len() as u64), "policy b after round {round}");
    }
    let per_vec = f.dp.vector_counters().unwrap()[v("memcached") as usize].by_verdict[verdict::DROPPED].packets;
    assert_eq!(per_vec, want.0 + want.1, "the per-vector total agrees");
}

#[test]
fn a_policy_reusing_rule_entries_inherits_nothing_still_cached() {
    require_root();
    // Two rule entries in all: the second policy gets exactly the first one's.
    let cap = Capacity { max_policies: 4, max_rules: Some(2), ..Capacity::default() };
    let mut dp = DataPlane::load(&cap).expect("load");
    dp.set_vectors(&ampguard::vectors::default_port_table()).unwrap();
    let p = policy(Enforce, 0, &[("memcached", Drop)]);
    let a = dp.upsert_policy("203.0.113.10/32".parse().unwrap(), &p).unwrap();
    assert_eq!(run_n(&dp, &memcached_to("203.0.113.10"), 10), XDP_DROP);
    assert_eq!(run_n(&dp, &ntp_to("203.0.113.10"), 7), XDP_PASS);
    // Still in this CPU's cache (nothing else ran), and read exactly.
    let counts = dp.policy_counts(a).unwrap();
    assert_eq!(counts.by_vector[v("memcached") as usize].by_verdict[verdict::DROPPED].packets, 10);
    assert_eq!(counts.unlisted.by_verdict[verdict::PASSED].packets, 7, "ntp has no rule: counted with the unlisted vectors");
    assert!(dp.remove_policy(&"203.0.113.10/32".parse().unwrap()).unwrap());
    assert_eq!(dp.free_entries().3, 2, "both rule entries are free again");

    let b = dp.upsert_policy("203.0.113.20/32".parse().unwrap(), &p).unwrap();
    assert_eq!(dp.free_entries().3, 0, "the new policy took both entries back");
    let zero = dp.policy_counts(b).unwrap();
    assert_eq!(zero, ampguard::dataplane::PolicyCounts { by_vector: vec![Default::default(); zero.by_vector.len()], ..Default::default() });
    // Its packets go through the cache entries that still hold a's counts:
    // those are folded away (into nothing: their generation is a's), not into b.
    assert_eq!(run_n(&dp, &memcached_to("203.0.113.20"), 3), XDP_DROP);
    assert_eq!(run_n(&dp, &ntp_to("203.0.113.20"), 2), XDP_PASS);
    assert_eq!(run_n(&dp, &memcached_to("203.0.113.20"), 1), XDP_DROP);
    let counts = dp.policy_counts(b).unwrap();
    assert_eq!(counts.by_vector[v("memcached") as usize].by_verdict[verdict::DROPPED].packets, 4);
    assert_eq!(counts.unlisted.by_verdict[verdict::PASSED].packets, 2);
    let other: u64 = counts.by_vector.iter().flat_map(|c| c.by_verdict.iter()).map(|c| c.packets).sum::<u64>();
    assert_eq!(other, 4, "nothing else counted for b");
}

fn pin_to_cpu(cpu: usize) {
    // Safety: a zeroed cpu_set_t with one bit set, for this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        assert_eq!(libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set), 0, "pin to CPU {cpu}");
    }
}

#[test]
fn two_cpus_count_exactly_and_reads_never_go_down() {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    assert!(cpus >= 2, "this test needs two CPUs to run the program on both at once (found {cpus})");
    let mut f = Fixture::new();
    let (a, b) = colliding_pair(&mut f);
    let (pa, pb) = (memcached_to("203.0.113.10"), memcached_to("203.0.113.20"));
    const ROUNDS: u32 = 400;
    let done = std::sync::atomic::AtomicUsize::new(0);
    let dp = &f.dp;
    let reads = std::thread::scope(|s| {
        for cpu in 0..2 {
            let (pa, pb, done) = (&pa, &pb, &done);
            s.spawn(move || {
                pin_to_cpu(cpu);
                // Folds on both CPUs into the same two totals, with runs of hits between.
                for round in 0..ROUNDS {
                    run_n(dp, pa, 1 + round % 5);
                    run_n(dp, pb, 1);
                }
                done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            });
        }
        // Read while they run: a reading never goes below the one before.
        let mut last = (0, 0);
        let mut reads = 0u32;
        while done.load(std::sync::atomic::Ordering::SeqCst) < 2 {
            let now = (dropped(dp, a).0, dropped(dp, b).0);
            assert!(now.0 >= last.0 && now.1 >= last.1, "a read went down: {last:?} then {now:?}");
            last = now;
            reads += 1;
        }
        reads
    });
    let per_cpu_a: u64 = (0..ROUNDS as u64).map(|r| 1 + r % 5).sum();
    assert_eq!(dropped(dp, a).0, 2 * per_cpu_a, "policy a: every packet of both CPUs, once");
    assert_eq!(dropped(dp, b).0, 2 * ROUNDS as u64, "policy b: every packet of both CPUs, once");
    assert!(reads > 10, "the reader ran alongside ({reads} reads)");
}
