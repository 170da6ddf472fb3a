//! `[capacity] max_policies = N` holds exactly N policies: the config and the
//! data plane count with one type (the table's reserved slot 0 is the data
//! plane's business, not the operator's).

mod common;
use ampguard::dataplane::{Capacity, DataPlane, DpError};
use common::*;

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
