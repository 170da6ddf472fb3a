//! Shared by the privileged data-plane tests: root check and a fixture that
//! installs the same tables in the loaded program and in the reference model.
#![allow(dead_code, unused_imports)]

use ampguard::{
    dataplane::{
        rules::{DpPolicy, Limit, Mode, Rule},
        Capacity, DataPlane,
    },
    model::Model,
    vectors,
};
use aya::programs::{TestRun, TestRunOptions};
use ipnet::IpNet;

/// Privileged tests run as root in CI; as anyone else they fail loudly.
pub use ampguard_tests::require_root;

pub fn v(name: &str) -> u8 {
    vectors::id_of(name).unwrap_or_else(|| panic!("no vector {name}"))
}

pub fn limit_pps(pps: u64, burst: u64) -> Rule {
    Rule::Limit(Limit { pps, bytes_per_sec: 0, burst_packets: burst, burst_bytes: 0 })
}

pub fn policy(mode: Mode, expires_ns: u64, rules: &[(&str, Rule)]) -> DpPolicy {
    DpPolicy { mode, expires_ns, rules: rules.iter().map(|(n, r)| (v(n), *r)).collect() }
}

/// A loaded program plus a model holding the same tables.
pub struct Fixture {
    pub dp: DataPlane,
    pub model: Model,
}

impl Fixture {
    pub fn new() -> Self {
        require_root();
        let mut dp = DataPlane::load(&Capacity::default()).expect("load the XDP program");
        let table = vectors::default_port_table();
        dp.set_vectors(&table).expect("vector table");
        let mut model = Model::default();
        model.ports = table.into_iter().collect();
        Self { dp, model }
    }

    pub fn policy(&mut self, victim: &str, p: DpPolicy) -> u32 {
        let victim: IpNet = victim.parse().unwrap();
        let slot = self.dp.upsert_policy(victim, &p).expect("upsert policy");
        self.model.victims.retain(|(n, _)| *n != victim);
        self.model.victims.push((victim, slot));
        self.model.reset_buckets(slot);
        self.model.policies.insert(slot, p);
        slot
    }

    pub fn remove(&mut self, victim: &str) {
        let victim: IpNet = victim.parse().unwrap();
        self.dp.remove_policy(&victim).expect("remove");
        if let Some(i) = self.model.victims.iter().position(|(n, _)| *n == victim) {
            let (_, slot) = self.model.victims.remove(i);
            self.model.policies.remove(&slot);
        }
    }

    pub fn allow(&mut self, prefix: &str) {
        let p: IpNet = prefix.parse().unwrap();
        self.dp.add_allow(p).expect("allow");
        self.model.allow.push(p);
    }

    pub fn set_now(&mut self, ns: u64) {
        self.dp.set_time_override(ns).expect("time override");
        self.model.now_ns = ns;
    }

    /// Run one packet through the program; returns the XDP action.
    pub fn run(&self, pkt: &[u8]) -> u32 {
        self.dp
            .program()
            .test_run(TestRunOptions { data_in: Some(pkt), repeat: 1, ..Default::default() })
            .expect("BPF_PROG_TEST_RUN")
            .return_value
    }
}

pub const SEC: u64 = 1_000_000_000;
pub use ampguard::model::{Outcome, XDP_DROP, XDP_PASS};
pub use ampguard_test_support::packet::PacketBuilder as P;
pub use xdp_common::counters::{reason, verdict};
pub use Mode::{Enforce, Monitor};
pub use Rule::{Drop, Pass};
