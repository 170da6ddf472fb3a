//! Loading the data plane: `[capacity] max_policies = N` holds exactly N
//! policies (the config and the data plane count with one type; the table's
//! reserved slot 0 is the data plane's business, not the operator's), and
//! `pin_maps` pins every map, through which bpftool and operators see what
//! is enforced.

mod common;
use ampguard::dataplane::{Capacity, DataPlane, DpError};
use aya::maps::{Array, Map, MapData};
use common::*;
use xdp_common::{maps as names, policy::Policy};

#[test]
fn max_policies_is_the_number_of_policies_that_fit() {
    require_root();
    let capacity = Capacity { max_policies: 3, ..Capacity::default() };
    let mut dp = DataPlane::load(&capacity).expect("load the XDP program");
    let p = policy(Enforce, 0, &[("memcached", Drop)]);
    for i in 1..=3 {
        dp.upsert_policy(format!("192.0.2.{i}/32").parse().unwrap(), &p).unwrap_or_else(|e| panic!("policy {i} of 3: {e}"));
    }
    assert_eq!(dp.free_entries().0, 0, "no slot left after 3 policies");
    let err = dp.upsert_policy("192.0.2.4/32".parse().unwrap(), &p).unwrap_err();
    assert!(matches!(err, DpError::Full { knob: "max_policies", capacity: 3, .. }), "the 4th is refused, naming 3 and the knob: {err}");
    assert_eq!(dp.capacity(), &capacity, "status and metrics report what the config says");
}

/// Removes the test's pin directory however the test ends.
struct PinDir(std::path::PathBuf);

impl std::ops::Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn pin_maps_pins_every_map_but_the_samples_handed_out() {
    let mut f = Fixture::new();
    let dir = PinDir(std::path::PathBuf::from(format!("/sys/fs/bpf/ag-test-pins-{}", std::process::id())));
    let _samples = f.dp.take_samples().expect("the ring buffer");
    f.dp.pin_maps(&dir.0).expect("pin");
    // Twice: a restart replaces the pins of the previous run.
    f.dp.pin_maps(&dir.0).expect("pin over existing pins");
    for name in names::ALL {
        assert_eq!(dir.0.join(name).exists(), *name != names::SAMPLES, "pin of {name}");
    }
    // The pins are the live maps: a policy installed after pinning shows in AG_POLICIES.
    let slot = f.policy("203.0.113.0/24", policy(Enforce, 0, &[("memcached", Drop)]));
    let md = MapData::from_pin(dir.0.join(names::POLICIES)).expect("pinned AG_POLICIES");
    let arr: Array<MapData, Policy> = Array::try_from(Map::Array(md)).expect("an array of Policy");
    assert_ne!(arr.get(&slot, 0).expect("read the slot").mode, 0, "the pinned map holds the policy");
}
