//! The bodies of the fuzz targets: one function per parser that takes outside
//! input, each of which must return (never panic) for any bytes, and check a
//! property on what the parser accepts.
//!
//! Shared by the libFuzzer binaries in `fuzz/fuzz_targets/` and by the
//! regression replay `tests/tests/fuzz_regressions.rs` (which includes this
//! file with `#[path]` and runs every committed input of `fuzz/corpus/<target>/`
//! and `fuzz/regressions/<target>/` under `cargo xtask test`). So: only the
//! `ampguard` and `serde_json` crates, no `crate::` paths.

use std::sync::OnceLock;

use ampguard::{
    alerts::{self, fastnetmon, generic::parse_generic, Alert, MAX_ATTACK_TYPE_BYTES},
    config::{self, Config},
    profiles::RuleSpec,
    store::{self, codec, PolicyRequest},
    vectors::VectorTable,
};

/// Every target, by the name of its binary and its corpus directory.
pub const TARGETS: &[(&str, fn(&[u8]))] = &[
    ("fastnetmon_script", fastnetmon_script),
    ("fastnetmon_json", fastnetmon_json),
    ("generic_alert", generic_alert),
    ("policy_json", policy_json),
    ("config_toml", config_toml),
    ("state_file", state_file),
];

fn vectors() -> &'static VectorTable {
    static TABLE: OnceLock<VectorTable> = OnceLock::new();
    TABLE.get_or_init(VectorTable::default)
}

fn port_vector(port: u16) -> Option<String> {
    vectors().name_of_port(port)
}

/// What `ampguard alert fastnetmon` and every other sender rely on: an alert
/// sent as `to_generic_json` to `POST /v1/alerts` is accepted and means the
/// same; and its text fits what the store keeps, so it never blocks the ban.
fn assert_generic_round_trip(alert: &Alert) {
    for (what, text, max) in
        [("comment", &alert.comment, ampguard::text::MAX_COMMENT_BYTES), ("attack_type", &alert.attack_type, MAX_ATTACK_TYPE_BYTES)]
    {
        if let Some(t) = text {
            assert!(t.len() <= max && !t.chars().any(char::is_control), "{what} {t:?} is over {max} bytes or has control characters");
        }
    }
    let body = serde_json::to_vec(&alerts::to_generic_json(alert)).expect("a JSON value serializes");
    match parse_generic(&body) {
        Ok(back) => assert_eq!(&back, alert, "alert changed through to_generic_json -> parse_generic"),
        Err(e) => panic!(
            "parse_generic refuses to_generic_json of an accepted alert: {e}\nalert: {alert:?}\nbody: {}",
            String::from_utf8_lossy(&body)
        ),
    }
}

/// `ampguard alert fastnetmon IP DIRECTION PPS ACTION` with details on stdin.
/// Input: the 4 arguments on the first 4 lines, stdin is the rest (lossy
/// UTF-8, as the CLI reads it).
pub fn fastnetmon_script(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(5, '\n');
    let argv: Vec<String> = parts.by_ref().take(4).map(str::to_owned).collect();
    let stdin = parts.next().unwrap_or("");
    if let Ok(Some(alert)) = fastnetmon::parse_script(&argv, stdin, &port_vector) {
        assert_generic_round_trip(&alert);
    }
}

/// FastNetMon Advanced's JSON callback (`POST /v1/alerts/fastnetmon`).
pub fn fastnetmon_json(data: &[u8]) {
    if let Ok(alert) = fastnetmon::parse_json(data, &port_vector) {
        assert_generic_round_trip(&alert);
    }
}

/// The generic alert body (`POST /v1/alerts`); an accepted alert round-trips.
pub fn generic_alert(data: &[u8]) {
    if let Ok(alert) = parse_generic(data) {
        assert_generic_round_trip(&alert);
    }
}

/// A policy request (`POST /v1/policies`, `PUT /v1/policies/{id}`): the
/// victim prefix and every rule. A resolved rule's canonical form (what the
/// API shows back, and what the state file stores) resolves to the same rule;
/// an accepted prefix, printed, parses back to itself.
pub fn policy_json(data: &[u8]) {
    let Ok(req) = serde_json::from_slice::<PolicyRequest>(data) else {
        return;
    };
    if let Ok(net) = store::parse_prefix(&req.victim) {
        let again = store::parse_prefix(&net.to_string()).ok();
        assert_eq!(again, Some(net), "victim {:?} -> {net} does not parse back", req.victim);
        // IPv4-mapped IPv6 is the IPv4 prefix: the data plane sees that traffic as IPv4.
        if let std::net::IpAddr::V6(a) = net.addr() {
            assert!(net.prefix_len() < 96 || a.to_ipv4_mapped().is_none(), "victim {:?} -> {net} is IPv4-mapped", req.victim);
        }
    }
    for (vector, spec) in req.rules.iter().flatten() {
        let Ok(rule) = spec.resolve() else { continue };
        let canonical = RuleSpec::from_rule(&rule);
        assert_eq!(
            canonical.resolve(),
            Ok(rule),
            "rule {vector}: {spec:?} resolves to {rule:?}, its canonical form {canonical:?} does not"
        );
    }
}

/// The daemon's TOML configuration (lossy UTF-8: a config file is text).
/// An accepted config's TTLs give expiries a timestamp can hold, and its
/// allowlist is canonical (no IPv4-mapped IPv6).
pub fn config_toml(data: &[u8]) {
    let Ok(c) = Config::parse(&String::from_utf8_lossy(data)) else { return };
    for (name, v) in [("max_ttl_secs", c.max_ttl_secs), ("max_alert_ttl_secs", c.max_alert_ttl_secs), ("alert_ttl_secs", c.alert_ttl_secs)]
    {
        assert!((1..=config::MAX_TTL_SECS).contains(&v), "{name} {v} accepted");
    }
    for p in &c.allowlist {
        assert_eq!(store::canonical(*p), *p, "allowlist entry {p} is IPv4-mapped");
    }
}

/// The state snapshot, read at every start: an accepted state is written the
/// way the daemon writes it (`codec::encode`, the bytes `StateFile::save`
/// streams) and reads back equal; and the same bytes as a journal never panic.
/// (Timestamps have whole-second resolution: a fraction written by hand is
/// dropped on reading; fuzz/regressions/state_file/fractional-seconds.json.)
pub fn state_file(data: &[u8]) {
    let mut empty = codec::State::empty();
    let _ = codec::replay(&mut empty, data);
    let Ok(st) = codec::parse(data) else { return };
    // Every id in use is below next_id: a new one never reuses it.
    let ids = st.policies.iter().map(|p| p.id.as_str()).chain(st.allowlist.iter().map(|a| a.id.as_str()));
    for id in ids {
        if let Some(n) = id.rsplit('-').next().and_then(|n| n.parse::<u64>().ok()) {
            assert!(n < st.next_id, "id {id} in use with next_id {}", st.next_id);
        }
    }
    let bytes = codec::encode(&st);
    match codec::parse(&bytes) {
        Ok(back) => {
            assert_eq!(back, st, "state changed through a save and load");
            let again = codec::encode(&back);
            assert_eq!(codec::parse(&again).ok().as_ref(), Some(&back), "a saved state changed through a second save");
        }
        Err(e) => panic!("a saved state is refused: {e}\nstate: {st:?}\nfile: {}", String::from_utf8_lossy(&bytes)),
    }
}
