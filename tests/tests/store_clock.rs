//! The store driven by a hand-moved clock (`store::time::ManualClock`): TTLs,
//! the expiry sweeper, the alerts' one-minute budget and a ban's extension,
//! through the real `Store` and data plane, in milliseconds instead of the
//! minutes a daemon test would wait. Needs root (the XDP program's maps are
//! loaded; nothing is attached, no traffic).

use std::{
    net::IpAddr,
    sync::Arc,
    time::{Duration, SystemTime},
};

use ampguard::{
    alerts::{Alert, AlertAction, AlertSource},
    config::Config,
    dataplane::{Capacity, DataPlane},
    store::{record::Origin, time::ManualClock, PolicyRequest, Store, StoreError},
};

fn t0() -> SystemTime {
    humantime::parse_rfc3339("2026-12-01T12:00:00Z").unwrap()
}

/// A store on a fresh state directory whose clock starts at `t0`.
fn store(tag: &str, edit: impl FnOnce(&mut Config)) -> (Store, Arc<ManualClock>) {
    ampguard_tests::require_root();
    let dir = std::env::temp_dir().join(format!("ampguard-store-clock-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let capacity = Capacity { max_policies: 64, max_limiters: 512, ..Capacity::default() };
    let mut cfg = Config { state_dir: dir, capacity: capacity.clone(), ..Config::default() };
    edit(&mut cfg);
    let dp = DataPlane::load(&capacity).expect("load the XDP program's maps");
    let clock = Arc::new(ManualClock::new(t0()));
    let s = Store::open_with_clock(cfg, dp, clock.clone()).expect("store opens on an empty state directory");
    (s, clock)
}

fn request(victim: &str, ttl_secs: u64) -> PolicyRequest {
    PolicyRequest { victim: victim.into(), ttl_secs: Some(ttl_secs), ..Default::default() }
}

fn ban(victim: &str, ttl_secs: Option<u64>) -> Alert {
    Alert {
        source: AlertSource::Generic,
        victim: victim.parse::<IpAddr>().unwrap(),
        action: AlertAction::Ban,
        vectors: Vec::new(),
        ttl_secs,
        pps: None,
        attack_type: None,
        comment: None,
    }
}

const S: fn(u64) -> Duration = Duration::from_secs;

#[test]
fn a_ttl_expires_on_the_store_clock_and_the_sweeper_removes_it_then() {
    let (mut s, clock) = store("ttl", |_| {});
    let short = s.create_policy(request("203.0.113.10", 60), Origin::Api).unwrap();
    let forever = s.create_policy(request("203.0.113.11", 0), Origin::Api).unwrap();
    assert_eq!((short.created_at, short.expires_at), (t0(), Some(t0() + S(60))), "times are the store clock's");
    assert_eq!(forever.expires_at, None);
    clock.advance(S(59));
    assert!(s.sweep_expired().unwrap().is_empty(), "59 s into a 60 s TTL: still in force");
    assert_eq!(s.policies().len(), 2);
    clock.advance(S(1));
    assert_eq!(s.sweep_expired().unwrap(), std::slice::from_ref(&short.id), "at 60 s it is removed");
    assert!(s.policy(&short.id).is_err() && s.policy_by_victim(&short.victim).is_none());
    assert_eq!(s.policies().map(|p| p.id.as_str()).collect::<Vec<_>>(), [forever.id.as_str()], "no TTL: stays");
    clock.advance(S(365 * 24 * 3600));
    assert!(s.sweep_expired().unwrap().is_empty());
}

#[test]
fn a_patch_extends_from_the_expiry_or_from_now_once_it_passed() {
    let (mut s, clock) = store("extend", |_| {});
    let p = s.create_policy(request("203.0.113.10", 100), Origin::Api).unwrap();
    clock.advance(S(40));
    let patch = |secs| ampguard::store::PolicyPatch { extend_secs: Some(secs), ..Default::default() };
    let p2 = s.patch_policy(&p.id, patch(50)).unwrap();
    assert_eq!((p2.expires_at, p2.updated_at), (Some(t0() + S(150)), t0() + S(40)), "added to the expiry");
    clock.advance(S(200)); // t0 + 240: expired, not yet swept
    let p3 = s.patch_policy(&p.id, patch(50)).unwrap();
    assert_eq!(p3.expires_at, Some(t0() + S(290)), "an expiry that has passed counts from now");
}

#[test]
fn alerts_get_max_alerts_per_minute_changes_a_minute_on_the_store_clock() {
    let (mut s, clock) = store("budget", |c| c.max_alerts_per_minute = 2);
    assert_eq!(s.apply_alert(&ban("203.0.113.10", None)).unwrap().result, "created");
    clock.advance(S(30));
    assert_eq!(s.apply_alert(&ban("203.0.113.11", None)).unwrap().result, "created");
    clock.advance(S(29)); // 59 s into the minute
    let e = s.apply_alert(&ban("203.0.113.12", None)).unwrap_err();
    assert!(matches!(e, StoreError::RateLimited(_)) && e.to_string().contains("max_alerts_per_minute"), "{e}");
    assert!(s.policy_by_victim(&"203.0.113.12/32".parse().unwrap()).is_none(), "a refused alert changes nothing");
    clock.advance(S(1)); // 60 s: a new minute
    let r = s.apply_alert(&ban("203.0.113.12", None)).unwrap();
    assert_eq!(r.result, "created");
    let policy = r.policy.unwrap();
    assert_eq!(policy.source, Origin::Alert(AlertSource::Generic));
    assert_eq!(policy.expires_at, Some(t0() + S(60) + S(s.config().alert_ttl_secs)), "the alert TTL from the store clock");
}

#[test]
fn a_repeated_ban_extends_to_a_later_expiry_and_never_shortens_one() {
    let (mut s, clock) = store("ban", |_| {});
    let first = s.apply_alert(&ban("203.0.113.10", Some(300))).unwrap();
    assert_eq!((first.result, first.policy.unwrap().expires_at), ("created", Some(t0() + S(300))));
    clock.advance(S(100));
    let again = s.apply_alert(&ban("203.0.113.10", Some(300))).unwrap();
    let p = again.policy.unwrap();
    assert_eq!((again.result, p.expires_at, p.updated_at), ("extended", Some(t0() + S(400)), t0() + S(100)));
    let shorter = s.apply_alert(&ban("203.0.113.10", Some(60))).unwrap();
    assert_eq!((shorter.result, shorter.policy.unwrap().expires_at), ("ignored", Some(t0() + S(400))), "a later expiry is kept");
    // An operator's policy without expiry keeps having none.
    let op = s.create_policy(request("203.0.113.20", 0), Origin::Api).unwrap();
    let r = s.apply_alert(&ban("203.0.113.20", Some(300))).unwrap();
    assert_eq!((r.result, s.policy(&op.id).unwrap().expires_at), ("ignored", None));
}

/// Flowspec policies (store/flowspec.rs): held to the alerts' share, never
/// changed by an alert's ban or unban, and never allowed to touch a policy of
/// another origin.
#[test]
fn flowspec_policies_alerts_and_operators_leave_each_other_alone() {
    use std::collections::BTreeMap;

    use ampguard::{dataplane::rules::Verb, profiles::RuleSpec};
    let (mut s, _clock) = store("flowspec", |c| {
        c.max_alert_policies = Some(2);
        c.min_prefix_len_v4 = 28;
    });
    let drop = |v: &str| BTreeMap::from([(v.to_string(), RuleSpec::simple(Verb::Drop))]);
    let fs = s.put_flowspec("203.0.113.10/32".parse().unwrap(), drop("memcached"), "192.0.2.1", "flowspec: r1").unwrap();
    assert_eq!(fs.source, Origin::Flowspec { peer: "192.0.2.1".into() });
    assert_eq!(String::from(fs.source.clone()), "flowspec:192.0.2.1");
    assert_eq!(Origin::from("flowspec:192.0.2.1".to_string()), fs.source, "read back from the state files");
    assert_eq!(fs.expires_at, None, "lives as long as the route");
    // The same route again changes nothing (same id, same record).
    let again = s.put_flowspec("203.0.113.10/32".parse().unwrap(), drop("memcached"), "192.0.2.1", "flowspec: r1").unwrap();
    assert_eq!(again, fs);

    // An alert's unban does not remove it, a ban does not change it.
    let mut unban = ban("203.0.113.10", None);
    unban.action = AlertAction::Unban;
    assert_eq!(s.apply_alert(&unban).unwrap().result, "ignored");
    let b = s.apply_alert(&ban("203.0.113.10", Some(60))).unwrap();
    assert_eq!(b.result, "ignored", "{}", b.message);
    assert_eq!(**s.policy(&fs.id).unwrap(), *fs);

    // An operator's victim: refused, the operator's policy unchanged.
    let op = s.create_policy(request("203.0.113.20", 0), Origin::Api).unwrap();
    let e = s.put_flowspec("203.0.113.20/32".parse().unwrap(), drop("memcached"), "192.0.2.1", "x").unwrap_err();
    assert!(matches!(e, StoreError::Conflict(_)), "{e}");
    assert_eq!(s.remove_flowspec(&op.id).unwrap_err().code(), "invalid");
    assert_eq!(**s.policy(&op.id).unwrap(), *op);

    // The alerts' share holds routes too: 2 (one alert, one route), then full.
    s.apply_alert(&ban("203.0.113.30", Some(60))).unwrap();
    let e = s.put_flowspec("203.0.113.40/32".parse().unwrap(), drop("ntp"), "192.0.2.1", "x").unwrap_err();
    assert!(matches!(e, StoreError::Full(_)), "{e}");
    // Broader than min_prefix_len_v4 (28 here): refused, as a policy without force.
    s.remove_flowspec(&fs.id).unwrap();
    let e = s.put_flowspec("203.0.113.0/24".parse().unwrap(), drop("ntp"), "192.0.2.1", "x").unwrap_err();
    assert!(matches!(e, StoreError::TooBroad(_)), "{e}");
}
