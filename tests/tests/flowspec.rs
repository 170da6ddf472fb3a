//! Flowspec in, end to end with real BGP speakers (root; gobgpd 3.x from
//! Debian, `cargo xtask setup` installs it).
//!
//! ```text
//!   ns ag-fsrr-rr-<pid>: gobgpd, AS 64512, route reflector, gRPC 127.0.0.1:50051
//!      rr0 192.0.2.241/30 ---- bgp0 192.0.2.242/30   ns ag-fs-edge-<pid>:  gobgpd (RR client) + ampguard, XDP on edge0
//!      rr1 192.0.2.245/30 ---- bgp0 192.0.2.246/30   ns ag-fs2-edge-<pid>: gobgpd (RR client) + ampguard, XDP on edge0
//! ```
//! Each edge is a lab (tests/src/lab.rs: its wan namespace sends the floods);
//! the BGP links are /30s of 192.0.2.0/24 (more specific than the edge's
//! route to the lab client's 192.0.2.0/24), with no route anywhere else. Routes are announced
//! on the reflector with the `gobgp` CLI, as an operator or a detector would.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use ampguard_tests::{
    daemon::{Daemon, Launch},
    lab::{deliver, sa, send_udp, Lab, Netns, UdpSink},
    require_root,
};
use serde_json::Value;

const RR_ASN: u32 = 64512;

/// The reflector's namespace: deleted on drop (and by the next run's stale cleanup, by its pid suffix).
struct RrNs(Netns);

impl Drop for RrNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0.name]).output();
    }
}

struct Speaker {
    ns: Netns,
    conf: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Speaker {
    fn start(ns: &Netns, dir: &Path, name: &str, toml: &str) -> Speaker {
        let conf = dir.join(format!("{name}.toml"));
        std::fs::write(&conf, toml).unwrap();
        let mut s = Speaker { ns: ns.clone(), conf, log: dir.join(format!("{name}.log")), child: None };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let child = Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{}", self.ns.name))
            .args(["gobgpd", "-p", "--pprof-disable", "--api-hosts", "127.0.0.1:50051", "-f"])
            .arg(&self.conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("gobgpd (apt install gobgpd, or cargo xtask setup)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while gobgp(&self.ns, &["global"]).is_err() {
            assert!(Instant::now() < deadline, "gobgpd did not answer in 10 s: {}", std::fs::read_to_string(&self.log).unwrap_or_default());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Speaker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `gobgp ARGS` against the speaker of `ns`.
fn gobgp(ns: &Netns, args: &[&str]) -> Result<String, String> {
    let out = Command::new("nsenter")
        .arg(format!("--net=/var/run/netns/{}", ns.name))
        .args(["gobgp", "-u", "127.0.0.1", "-p", "50051"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("gobgp {}: {}{}", args.join(" "), String::from_utf8_lossy(&out.stderr), String::from_utf8_lossy(&out.stdout)))
    }
}

fn rib(rr: &Netns, family: &str, verb: &str, spec: &str) {
    let mut args = vec!["global", "rib", "-a", family, verb];
    args.extend(spec.split_whitespace());
    gobgp(rr, &args).unwrap();
}

fn ip(ns: Option<&Netns>, args: &[&str]) {
    let mut c = Command::new("ip");
    if let Some(ns) = ns {
        c.args(["-n", &ns.name]);
    }
    let out = c.args(args).output().unwrap();
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

fn neighbor(addr: &str, rr_client: bool) -> String {
    let rr = if rr_client {
        "  [neighbors.route-reflector.config]\n    route-reflector-client = true\n    route-reflector-cluster-id = \"192.0.2.241\"\n"
            .to_string()
    } else {
        String::new()
    };
    format!(
        "[[neighbors]]\n  [neighbors.config]\n    neighbor-address = \"{addr}\"\n    peer-as = {RR_ASN}\n\
         [neighbors.timers.config]\n    connect-retry = 1\n    hold-time = 9\n    keepalive-interval = 3\n\
         {rr}\
         [[neighbors.afi-safis]]\n  [neighbors.afi-safis.config]\n    afi-safi-name = \"ipv4-flowspec\"\n\
         [[neighbors.afi-safis]]\n  [neighbors.afi-safis.config]\n    afi-safi-name = \"ipv6-flowspec\"\n"
    )
}

/// The victim's policy on an edge, if any.
fn policy(d: &Daemon, victim: &str) -> Option<Value> {
    let (st, v) = d.call("GET", &format!("/v1/policies?victim={victim}"), None).unwrap();
    assert_eq!(st, 200, "{v}");
    v["policies"].as_array().and_then(|a| a.first().cloned())
}

fn status(d: &Daemon) -> Value {
    let (st, v) = d.call("GET", "/v1/status", None).unwrap();
    assert_eq!(st, 200, "{v}");
    v["flowspec"].clone()
}

/// Poll until `f` holds (every 10 ms, at most `limit`); the time it took.
fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
    t0.elapsed()
}

fn dropped(d: &Daemon, id: &str, vector: &str) -> u64 {
    let (_, v) = d.call("GET", &format!("/v1/policies/{id}"), None).unwrap();
    v["counters"][vector]["dropped"]["packets"].as_u64().unwrap_or(0)
}

/// A memcached flood (one datagram a millisecond, at most 30 s) from each lab's
/// reflector to 203.0.113.10, while the test measures announce -> first drop.
struct Flood {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Flood {
    fn start(labs: &[&Lab]) -> Flood {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = labs
            .iter()
            .map(|lab| {
                let (wan, stop) = (lab.wan.clone(), stop.clone());
                std::thread::spawn(move || {
                    let t0 = Instant::now();
                    while !stop.load(Ordering::Relaxed) && t0.elapsed() < Duration::from_secs(30) {
                        let _ = send_udp(&wan, sa("198.51.100.7:11211"), sa("203.0.113.10:4000"), 1, 400);
                        std::thread::sleep(Duration::from_millis(1));
                    }
                })
            })
            .collect();
        Flood { stop, threads }
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

const MEMCACHED_ROUTE: &str = "match destination 203.0.113.10/32 protocol udp source-port ==11211 then discard";

#[test]
fn flowspec_routes_from_a_reflector_reach_every_edge() {
    require_root();
    let t_start = Instant::now();
    let labs = [Lab::new("fs").expect("lab"), Lab::new("fs").expect("lab")];
    let rr = RrNs(Netns { name: format!("ag-fsrr-rr-{}", std::process::id()) });
    let _ = Command::new("ip").args(["netns", "del", &rr.0.name]).output();
    ip(None, &["netns", "add", &rr.0.name]);
    ip(Some(&rr.0), &["link", "set", "lo", "up"]);
    let dir = std::env::temp_dir().join(format!("ag-fs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    // The BGP links, and each edge's speaker.
    let mut rr_conf = format!(
        "[global.config]\n  as = {RR_ASN}\n  router-id = \"192.0.2.241\"\n  local-address-list = [\"192.0.2.241\", \"192.0.2.245\"]\n"
    );
    let mut edges = Vec::new();
    for (i, lab) in labs.iter().enumerate() {
        let rr_if = format!("rr{i}");
        let (rr_addr, edge_addr) = (format!("192.0.2.{}", 241 + 4 * i), format!("192.0.2.{}", 242 + 4 * i));
        ip(Some(&rr.0), &["link", "add", &rr_if, "type", "veth", "peer", "name", "bgp0", "netns", &lab.edge.name]);
        ip(Some(&rr.0), &["addr", "add", &format!("{rr_addr}/30"), "dev", &rr_if]);
        ip(Some(&rr.0), &["link", "set", &rr_if, "up"]);
        ip(Some(&lab.edge), &["addr", "add", &format!("{edge_addr}/30"), "dev", "bgp0"]);
        ip(Some(&lab.edge), &["link", "set", "bgp0", "up"]);
        rr_conf.push_str(&neighbor(&edge_addr, true));
        let conf = format!(
            "[global.config]\n  as = {RR_ASN}\n  router-id = \"{edge_addr}\"\n  port = -1\n{}\
             [neighbors.transport.config]\n    local-address = \"{edge_addr}\"\n",
            neighbor(&rr_addr, false)
        );
        edges.push((rr_addr, conf));
    }
    let _rr_speaker = Speaker::start(&rr.0, &dir, "rr", &rr_conf);
    let mut speakers: Vec<Speaker> = labs
        .iter()
        .zip(&edges)
        .enumerate()
        .map(|(i, (lab, (_, conf)))| Speaker::start(&lab.edge, &dir, &format!("edge{i}"), conf))
        .collect();

    // Each edge's daemon: Flowspec from its own speaker, the lab's victims protected;
    // min_prefix_len_v4 = 28 so that a /24 route is "too broad" inside documentation space.
    let extra = "min_prefix_len_v4 = 28\n[flowspec]\nenabled = true\ngobgp = \"127.0.0.1:50051\"\n\
                 networks = [\"203.0.113.0/24\", \"2001:db8:2::/48\"]\ngrace_secs = 2\n";
    let mut daemons: Vec<Daemon> = labs.iter().map(|lab| Daemon::start_with(lab, extra, Launch::Nsenter).expect("daemon")).collect();
    for (d, (rr_addr, _)) in daemons.iter().zip(&edges) {
        wait_for("the edge's BGP session to the reflector", Duration::from_secs(20), || {
            let s = status(d);
            s["session"] == "connected"
                && s["peers"].as_array().is_some_and(|p| p.iter().any(|p| p["peer"] == rr_addr.as_str() && p["up"] == true))
        });
    }
    eprintln!("setup: {:?}", t_start.elapsed());

    // Announce -> first drop on each edge, and withdraw -> policy gone, a few times.
    let mut to_drop: Vec<Vec<Duration>> = vec![Vec::new(); labs.len()];
    let mut to_gone: Vec<Vec<Duration>> = vec![Vec::new(); labs.len()];
    {
        let _flood = Flood::start(&labs.iter().collect::<Vec<_>>());
        for round in 0..5 {
            let t0 = Instant::now();
            rib(&rr.0, "ipv4-flowspec", "add", MEMCACHED_ROUTE);
            for (i, d) in daemons.iter().enumerate() {
                let mut id = None;
                wait_for("the first drop", Duration::from_secs(5), || {
                    if id.is_none() {
                        id = policy(d, "203.0.113.10/32").map(|p| p["id"].as_str().unwrap().to_string());
                    }
                    id.as_ref().is_some_and(|id| dropped(d, id, "memcached") > 0)
                });
                to_drop[i].push(t0.elapsed());
                if round == 0 {
                    let p = policy(d, "203.0.113.10/32").unwrap();
                    assert_eq!(p["source"], format!("flowspec:{}", edges[i].0), "{p}");
                    assert_eq!(p["rules"]["memcached"]["action"], "drop", "{p}");
                    assert_eq!(p["rules"].as_object().unwrap().len(), 1, "only the route's vector: {p}");
                    assert!(p["expires_at"].is_null(), "lives as long as the route: {p}");
                }
            }
            let t1 = Instant::now();
            rib(&rr.0, "ipv4-flowspec", "del", MEMCACHED_ROUTE);
            for (i, d) in daemons.iter().enumerate() {
                wait_for("the withdraw to remove the policy", Duration::from_secs(5), || policy(d, "203.0.113.10/32").is_none());
                to_gone[i].push(t1.elapsed());
            }
        }
    }
    for (i, (drop, gone)) in to_drop.iter_mut().zip(to_gone.iter_mut()).enumerate() {
        drop.sort();
        gone.sort();
        eprintln!(
            "edge {i}: announce -> first drop p50 {:?} p99 {:?} (of {}: {drop:?}); withdraw -> policy removed p50 {:?} p99 {:?}",
            percentile(drop, 0.5),
            percentile(drop, 0.99),
            drop.len(),
            percentile(gone, 0.5),
            percentile(gone, 0.99)
        );
        assert!(percentile(drop, 0.99) < Duration::from_secs(2), "edge {i}: announce -> drop {drop:?}");
    }

    // Installed: the flood dies on every edge, the rest passes.
    rib(&rr.0, "ipv4-flowspec", "add", MEMCACHED_ROUTE);
    for (lab, d) in labs.iter().zip(&daemons) {
        wait_for("the policy", Duration::from_secs(5), || policy(d, "203.0.113.10/32").is_some());
        assert_eq!(deliver(lab, "198.51.100.7:11211", "203.0.113.10:4000", 200), 0, "memcached flood to the victim");
        assert_eq!(deliver(lab, "198.51.100.53:53", "203.0.113.10:4001", 200), 200, "DNS to the victim passes");
        assert_eq!(deliver(lab, "198.51.100.7:11211", "203.0.113.20:4002", 200), 200, "memcached to another host passes");
    }

    // A rate limit, an IPv6 route, and refusals.
    rib(&rr.0, "ipv4-flowspec", "add", "match destination 203.0.113.20/32 protocol udp source-port ==123 then rate-limit 12500");
    rib(&rr.0, "ipv6-flowspec", "add", "match destination 2001:db8:2::10/128 protocol udp source-port ==11211 then discard");
    rib(&rr.0, "ipv4-flowspec", "add", "match destination 203.0.113.0/24 protocol udp source-port ==1900 then discard");
    rib(&rr.0, "ipv4-flowspec", "add", "match destination 198.51.100.99/32 protocol udp source-port ==11211 then discard");
    rib(&rr.0, "ipv4-flowspec", "add", "match destination 203.0.113.30/32 protocol udp source-port ==4444 then discard");
    rib(&rr.0, "ipv4-flowspec", "add", "match destination 203.0.113.31/32 protocol udp source-port ==11211 then redirect 64512:10");
    let expect_refused = [
        ("203.0.113.0/24", "too_broad"),
        ("198.51.100.99/32", "outside_networks"),
        ("203.0.113.30/32", "source_port"),
        ("203.0.113.31/32", "redirect"),
    ];
    for (lab, d) in labs.iter().zip(&daemons) {
        wait_for("the rate-limit and IPv6 routes", Duration::from_secs(5), || {
            policy(d, "203.0.113.20/32").is_some() && policy(d, "2001:db8:2::10/128").is_some()
        });
        let p = policy(d, "203.0.113.20/32").unwrap();
        assert_eq!(p["rules"]["ntp"]["action"], "limit", "{p}");
        assert_eq!(p["rules"]["ntp"]["bps"], 100_000, "12500 bytes/s is 100 kbit/s: {p}");
        // IPv6: the memcached flood to the v6 victim is dropped.
        let sink = UdpSink::bind(&lab.edge, sa("[2001:db8:2::10]:4003")).unwrap();
        send_udp(&lab.wan, sa("[2001:db8:1::7]:11211"), sa("[2001:db8:2::10]:4003"), 200, 300).unwrap();
        assert_eq!(sink.drain(Duration::from_millis(300), Duration::from_secs(3)), 0, "IPv6 memcached flood");
        wait_for("the refusals in /v1/status", Duration::from_secs(5), || {
            let s = status(d);
            let routes = s["routes"].as_array().cloned().unwrap_or_default();
            expect_refused.iter().all(|(dst, reason)| {
                routes.iter().any(|r| r["route"].as_str().unwrap_or("").contains(dst) && r["state"] == "refused" && r["reason"] == *reason)
            })
        });
        for (dst, _) in &expect_refused[..2] {
            assert!(policy(d, dst).is_none(), "no policy for a refused route to {dst}");
        }
        let (_, m) = d.call("GET", "/metrics", None).unwrap();
        let m = m.as_str().unwrap_or_default().to_string();
        assert!(m.contains("ampguard_flowspec_routes{state=\"installed\"} 3"), "{m}");
        assert!(m.contains("ampguard_flowspec_refused_routes{reason=\"too_broad\"} 1"), "{m}");
        assert!(m.contains("ampguard_flowspec_session_up 1"), "{m}");
        let list = d.cli(&["policy", "list"], None).unwrap();
        assert!(String::from_utf8_lossy(&list.stdout).contains("flowspec:192.0.2."), "{list:?}");
    }

    // A restart re-derives the same policies from the speaker's table: no duplicate, same ids.
    let before: Vec<Value> =
        ["203.0.113.10/32", "203.0.113.20/32", "2001:db8:2::10/128"].iter().map(|v| policy(&daemons[1], v).unwrap()).collect();
    daemons[1].kill9();
    daemons[1].spawn().unwrap();
    wait_for("the restarted edge to read the table", Duration::from_secs(10), || status(&daemons[1])["installed"] == 3);
    let (_, all) = daemons[1].call("GET", "/v1/policies", None).unwrap();
    assert_eq!(all["policies"].as_array().unwrap().len(), 3, "{all}");
    for p in &before {
        assert_eq!(policy(&daemons[1], p["victim"].as_str().unwrap()).unwrap()["id"], p["id"]);
    }

    // Session loss: edge 0's speaker dies; after the grace (2 s) its policies go, on that edge only.
    let t_kill = Instant::now();
    speakers[0].kill();
    std::thread::sleep(Duration::from_millis(1000));
    assert!(policy(&daemons[0], "203.0.113.10/32").is_some(), "within the grace the policy stays");
    let gone = wait_for("the grace to end", Duration::from_secs(6), || policy(&daemons[0], "203.0.113.10/32").is_none());
    let after = t_kill.elapsed();
    eprintln!("speaker lost -> policies removed after {after:?} (grace 2 s)");
    assert!(after >= Duration::from_secs(2), "removed before the grace ended: {after:?} ({gone:?})");
    let (_, all) = daemons[0].call("GET", "/v1/policies", None).unwrap();
    assert!(all["policies"].as_array().unwrap().is_empty(), "every Flowspec policy goes: {all}");
    assert!(policy(&daemons[1], "203.0.113.10/32").is_some(), "the other edge keeps its policies");
    assert_eq!(deliver(&labs[0], "198.51.100.7:11211", "203.0.113.10:4000", 100), 100, "no longer dropped on edge 0");
    // ... and they return with the session.
    speakers[0].spawn();
    wait_for("the policies to return", Duration::from_secs(20), || policy(&daemons[0], "203.0.113.10/32").is_some());

    // The BGP session (not the speaker) lost: the reflector disables edge 1's neighbor.
    gobgp(&rr.0, &["neighbor", "192.0.2.246", "disable"]).unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    assert!(policy(&daemons[1], "203.0.113.10/32").is_some(), "within the grace the policy stays");
    wait_for("the grace after the session went down", Duration::from_secs(6), || policy(&daemons[1], "203.0.113.10/32").is_none());
    gobgp(&rr.0, &["neighbor", "192.0.2.246", "enable"]).unwrap();
    wait_for("the policies to return with the session", Duration::from_secs(20), || policy(&daemons[1], "203.0.113.10/32").is_some());

    // An operator's policy is never touched by Flowspec: a route for its victim is refused.
    let (st, v) =
        daemons[0].call("POST", "/v1/policies", Some(r#"{"victim": "203.0.113.40/32", "rules": {"ntp": {"action": "drop"}}}"#)).unwrap();
    assert_eq!(st, 201, "{v}");
    rib(&rr.0, "ipv4-flowspec", "add", "match destination 203.0.113.40/32 protocol udp source-port ==11211 then discard");
    wait_for("the conflict in status", Duration::from_secs(5), || {
        status(&daemons[0])["routes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["route"].as_str().unwrap().contains("203.0.113.40/32") && r["reason"] == "conflict")
    });
    let p = policy(&daemons[0], "203.0.113.40/32").unwrap();
    assert_eq!(p["source"], "api");
    assert!(p["rules"].get("memcached").is_none(), "{p}");
    drop(speakers);
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!("total: {:?}", t_start.elapsed());
}
