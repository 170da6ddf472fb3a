//! Load: 1,000 concurrent API clients create, replace and delete policies
//! while attack traffic flows; afterwards the API, the state file and the
//! maps must agree exactly. Privileged and bounded in time.

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Barrier,
    },
    time::{Duration, Instant},
};

use ampguard_tests::{
    daemon::{flood_while, Daemon, Flood, Flowed},
    lab::{sa, send_udp, Lab, UdpSink, EDGE_MAC},
    require_root,
};
use aya::maps::{Array, Map, MapData};
use serde_json::{json, Value};
use xdp_common::policy::Policy;

const CLIENTS: usize = 1000;

/// The victim of client `i`: 200 in 203.0.113.0/24, 400 in 2001:db8:2::/64,
/// 400 in 198.18.0.0/15 (documentation and benchmarking prefixes only).
fn victim(i: usize) -> IpAddr {
    match i {
        0..200 => format!("203.0.113.{}", 30 + i),
        200..600 => format!("2001:db8:2::1:{:x}", i),
        _ => format!("198.18.{}.{}", i / 200, i % 200 + 1),
    }
    .parse()
    .unwrap()
}

/// Odd clients delete what they created; every fourth client also replaces it.
fn kept(i: usize) -> bool {
    i.is_multiple_of(2)
}

fn prefix(a: IpAddr) -> String {
    match a {
        IpAddr::V4(_) => format!("{a}/32"),
        IpAddr::V6(_) => format!("{a}/128"),
    }
}

fn raise_nofile() {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: valid out pointer; raising the soft limit to the hard one is always allowed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

/// One client's requests, from inside the edge namespace: (what, expected, got).
fn client(d: &Daemon, i: usize) -> Vec<(String, u16, u16, String)> {
    let agent: ureq::Agent =
        ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(Duration::from_secs(120))).build().into();
    let auth = format!("Bearer {}", d.token);
    let base = format!("http://127.0.0.1:{}", d.port);
    let call = |method: &str, path: &str, body: Option<String>| -> (u16, Value) {
        let req = ureq::http::Request::builder().method(method).uri(format!("{base}{path}")).header("Authorization", &auth);
        let res = match body {
            Some(b) => agent.run(req.header("Content-Type", "application/json").body(b).unwrap()),
            None => agent.run(req.body(()).unwrap()),
        };
        match res {
            Ok(mut r) => {
                let st = r.status().as_u16();
                let text = r.body_mut().read_to_string().unwrap_or_default();
                (st, serde_json::from_str(&text).unwrap_or(Value::String(text)))
            }
            Err(e) => (0, Value::String(e.to_string())),
        }
    };
    let v = victim(i);
    let mut out = Vec::new();
    let body = json!({"victim": v.to_string(), "rules": {"memcached": {"action": "drop"}}, "ttl_secs": 0, "comment": format!("load {i}")});
    let (st, p) = call("POST", "/v1/policies", Some(body.to_string()));
    out.push((format!("client {i}: POST {v}"), 201, st, p.to_string()));
    let Some(id) = p["id"].as_str().map(str::to_string) else { return out };
    if i.is_multiple_of(4) {
        let body = json!({"victim": v.to_string(), "rules": {"memcached": {"action": "drop"}, "ssdp": {"action": "drop"}}, "ttl_secs": 0, "comment": format!("load {i} replaced")});
        let (st, p) = call("PUT", &format!("/v1/policies/{id}"), Some(body.to_string()));
        out.push((format!("client {i}: PUT {id}"), 200, st, p.to_string()));
    }
    if !kept(i) {
        let (st, p) = call("DELETE", &format!("/v1/policies/{id}"), None);
        out.push((format!("client {i}: DELETE {id}"), 204, st, p.to_string()));
    }
    out
}

#[test]
fn thousand_concurrent_clients_under_attack_leave_api_state_file_and_maps_in_agreement() {
    require_root();
    raise_nofile();
    let t0 = Instant::now();
    let lab = Lab::new("load").expect("lab");
    let d = Daemon::start(&lab, "").expect("daemon");
    let (st, p) = d.call("POST", "/v1/policies", Some(r#"{"victim": "203.0.113.10", "ttl_secs": 0}"#)).unwrap();
    assert_eq!(st, 201, "{p}");

    // 1,000 clients released together by a barrier, while memcached floods
    // the protected victim (bounded: it stops when the clients are done, or
    // after 150 s); a leak at any moment of it counts.
    let barrier = Barrier::new(CLIENTS);
    let failed_to_spawn = AtomicUsize::new(0);
    let attack = [("198.51.100.7:11211", "203.0.113.10:40001")];
    let flood = Flood { burst: 50, gap: Duration::from_millis(2), max: Duration::from_secs(150) };
    let (flowed, (results, took)) = flood_while(&lab, &attack, flood, || {
        std::thread::scope(|s| {
            let start = Instant::now();
            let clients: Vec<_> = (0..CLIENTS)
                .filter_map(|i| {
                    let (d, barrier) = (&d, &barrier);
                    let r = std::thread::Builder::new().stack_size(512 << 10).spawn_scoped(s, move || {
                        d.ns.enter(|| {
                            barrier.wait();
                            client(d, i)
                        })
                        .expect("enter the edge namespace")
                    });
                    r.map_err(|e| {
                        eprintln!("spawning client {i}: {e}");
                        failed_to_spawn.fetch_add(1, Ordering::Relaxed);
                    })
                    .ok()
                })
                .collect();
            let results: Vec<_> = clients.into_iter().flat_map(|h| h.join().unwrap()).collect();
            (results, start.elapsed())
        })
    });
    let [Flowed { sent, arrived: leaked }] = flowed[..] else { unreachable!() };
    assert_eq!(failed_to_spawn.load(Ordering::Relaxed), 0, "every client thread started");
    let requests = results.len();
    let bad: Vec<_> = results.iter().filter(|(_, want, got, _)| want != got).collect();
    eprintln!("load: {CLIENTS} clients, {requests} requests in {took:?}; {sent} attack packets sent, {leaked} leaked");
    assert!(bad.is_empty(), "{} of {requests} requests got an unexpected status, e.g. {:?}", bad.len(), &bad[..bad.len().min(5)]);
    assert_eq!(requests, CLIENTS + CLIENTS / 4 + CLIENTS / 2);
    assert!(sent > 1000, "the attack flowed ({sent} sent)");
    assert_eq!(leaked, 0, "attack packets leaked during the load ({sent} sent)");

    // The API and the state file agree exactly, and hold exactly what should be.
    let (st, list) = d.call("GET", "/v1/policies", None).unwrap();
    assert_eq!(st, 200);
    // What a restart would load: the snapshot with the journal replayed on it.
    let state = ampguard::store::files::StateFile::new(&d.dir.join("state")).load().expect("state files read");
    let on_disk: Vec<Value> = state.policies.iter().map(|p| serde_json::to_value(&**p).unwrap()).collect();
    assert!(list["policies"].as_array().unwrap() == &on_disk, "GET /v1/policies and the state files differ");
    let have: BTreeSet<String> = list["policies"].as_array().unwrap().iter().map(|p| p["victim"].as_str().unwrap().to_string()).collect();
    let want: BTreeSet<String> =
        (0..CLIENTS).filter(|&i| kept(i)).map(|i| prefix(victim(i))).chain(["203.0.113.10/32".to_string()]).collect();
    assert_eq!(have.len(), want.len(), "policy count");
    assert!(
        have == want,
        "policies differ: missing {:?}, extra {:?}",
        want.difference(&have).take(5).collect::<Vec<_>>(),
        have.difference(&want).take(5).collect::<Vec<_>>()
    );
    let replaced = list["policies"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["comment"].as_str().is_some_and(|c| c.ends_with("replaced")) && p["rules"]["ssdp"]["action"] == "drop")
        .count();
    assert_eq!(replaced, CLIENTS / 4, "every PUT is in effect");

    // The maps, read through their pins: one used slot per policy.
    let md = MapData::from_pin(d.pin_dir.join("maps/AG_POLICIES")).expect("pinned AG_POLICIES");
    let arr: Array<MapData, Policy> = Array::try_from(Map::Array(md)).expect("an array of Policy");
    let used = arr.iter().filter(|p| p.as_ref().expect("read slot").mode != 0).count();
    assert_eq!(used, want.len(), "used slots in AG_POLICIES");

    // And by behaviour: probes to 8 kept and 8 deleted victims of each family.
    lab.wan.ip(&["route", "add", "198.18.0.0/15", "dev", "wan0"]).unwrap();
    let mut probes: Vec<(usize, bool)> = Vec::new();
    for range in [0..200, 200..600, 600..1000] {
        let (start, len) = (range.start, range.len());
        for k in 0..16 {
            let i = start + (k * len / 16) / 2 * 2 + (k % 2); // spread out, alternating kept/deleted
            probes.push((i, kept(i)));
        }
    }
    let sinks: Vec<(usize, bool, UdpSink)> = probes
        .iter()
        .map(|&(i, keep)| {
            let v = victim(i);
            let (fam, len) = if v.is_ipv4() { ("-4", "32") } else { ("-6", "128") };
            let mut add = vec![fam, "addr", "add"];
            let a = format!("{v}/{len}");
            add.extend([a.as_str(), "dev", "edge0"]);
            if v.is_ipv6() {
                add.push("nodad");
            }
            lab.edge.ip(&add).unwrap();
            lab.wan.ip(&["neigh", "replace", &v.to_string(), "lladdr", EDGE_MAC, "dev", "wan0", "nud", "permanent"]).unwrap();
            (i, keep, UdpSink::bind(&lab.edge, SocketAddr::new(v, 40001)).unwrap())
        })
        .collect();
    for (i, _, _) in &sinks {
        let v = victim(*i);
        let src = if v.is_ipv4() { sa("198.51.100.7:11211") } else { sa("[2001:db8:1::7]:11211") };
        assert_eq!(send_udp(&lab.wan, src, SocketAddr::new(v, 40001), 20, 200).unwrap(), 20);
    }
    std::thread::sleep(Duration::from_millis(300));
    for (i, keep, sink) in &sinks {
        let got = sink.drain(Duration::from_millis(30), Duration::from_secs(2));
        let want = if *keep { 0 } else { 20 };
        assert_eq!(got, want, "probe to {} (client {i}, policy {})", victim(*i), if *keep { "kept" } else { "deleted" });
    }
    assert!(t0.elapsed() < Duration::from_secs(240), "the load test took {:?}", t0.elapsed());
}
