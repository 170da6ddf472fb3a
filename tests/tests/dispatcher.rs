//! The dispatcher mode (root, xdp-tools): ampguard as one program of
//! libxdp's dispatcher, beside xdp-filter on the same lab veth. Both filter;
//! `xdp-loader status` lists both; either can be unloaded without disturbing
//! the other, in either order of loading; a restart replaces ampguard's
//! program in the chain with no attack packet let through.
//!
//! Every tool runs under `nsenter --net` (the host's mounts: libxdp pins in
//! /sys/fs/bpf/xdp, xdp-filter in /sys/fs/bpf/xdp-filter) on the lab's edge0
//! only. xdp-filter keeps global state (its maps, /run/xdp-filter.lck), so
//! these tests take turns.
//!
//! On a kernel that refuses freplace programs (what the dispatcher is made
//! of) there is no dispatcher for anyone: libxdp falls back to one program
//! per interface. There the tests check what ampguard promises instead: the
//! dispatcher mode refuses to start, saying why, and leaves xdp-filter's
//! program in place.

use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    process::{Command, Output},
    sync::Mutex,
    time::Duration,
};

use ampguard::dataplane::dispatcher::freplace_supported;
use ampguard_tests::{
    daemon::{flood_while, start_timeout, Daemon, Flood},
    lab::{deliver, sa, Lab},
    require_root,
};

static XDP_FILTER: Mutex<()> = Mutex::new(());

const DISPATCHER: &str = "[xdp_dispatcher]\nenabled = true\npriority = 15\n";
const MEMCACHED: (&str, &str) = ("198.51.100.7:11211", "203.0.113.10:40001");
const ORDINARY: (&str, &str) = ("198.51.100.7:40000", "203.0.113.10:40002");

fn nsenter(lab: &Lab, prog: &str, args: &[&str]) -> Output {
    Command::new("nsenter")
        .arg(format!("--net=/var/run/netns/{}", lab.edge.name))
        .arg(prog)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {prog} (xdp-tools installed? `cargo xtask setup`): {e}"))
}

fn ok(lab: &Lab, prog: &str, args: &[&str]) -> String {
    let out = nsenter(lab, prog, args);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{prog} {args:?} failed ({}):\n{text}", out.status);
    text
}

/// xdp-filter on edge0, dropping TCP to port 8080.
fn load_xdp_filter(lab: &Lab) {
    ok(lab, "xdp-filter", &["load", &lab.edge_if]);
    ok(lab, "xdp-filter", &["port", "8080", "--proto", "tcp"]);
}

fn loader_status(lab: &Lab) -> String {
    ok(lab, "xdp-loader", &["status", &lab.edge_if])
}

/// Whether a TCP connection from the wan side to 203.0.113.10:`port` on the
/// edge side is made (bounded: 1 s).
fn tcp_connects(lab: &Lab, port: u16) -> bool {
    let addr: SocketAddr = sa(&format!("203.0.113.10:{port}"));
    let _listener = lab.edge.enter(|| TcpListener::bind(addr)).expect("setns").expect("listen");
    lab.wan.enter(|| TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()).expect("setns")
}

/// Unloads whatever is left on edge0 (libxdp's pins live outside the lab's
/// namespaces, so they would outlive it) before the lab is deleted.
struct Unload<'a>(&'a Lab);

impl Drop for Unload<'_> {
    fn drop(&mut self) {
        let _ = nsenter(self.0, "xdp-filter", &["unload", &self.0.edge_if]);
        let _ = nsenter(self.0, "xdp-loader", &["unload", &self.0.edge_if, "--all"]);
    }
}

fn dispatcher_programs(d: &Daemon) -> Vec<(String, u64)> {
    let (st, v) = d.call("GET", "/v1/status", None).unwrap();
    assert_eq!(st, 200, "{v}");
    v["interfaces"][0]["dispatcher"]["programs"]
        .as_array()
        .unwrap_or_else(|| panic!("no dispatcher in the status: {v}"))
        .iter()
        .map(|p| (p["name"].as_str().unwrap_or_default().to_string(), p["priority"].as_u64().unwrap_or(0)))
        .collect()
}

/// `ampguard detach`, which goes through the running daemon's API.
fn detach(d: &Daemon) {
    let out = d.cli(&["detach", "--pin-dir", &d.pin_dir.display().to_string()], None).unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("detached from edge0"), "{text}{}", String::from_utf8_lossy(&out.stderr));
}

fn add_policy(d: &Daemon) {
    let (st, v) = d.call("POST", "/v1/policies", Some(r#"{"victim": "203.0.113.10/32"}"#)).unwrap();
    assert_eq!(st, 201, "{v}");
}

/// Both filter: the memcached flood is dropped by ampguard, TCP 8080 by
/// xdp-filter; what neither drops passes the whole chain.
fn both_filter(lab: &Lab) {
    assert_eq!(deliver(lab, MEMCACHED.0, MEMCACHED.1, 200), 0, "ampguard drops the memcached flood");
    assert_eq!(deliver(lab, ORDINARY.0, ORDINARY.1, 200), 200, "ordinary UDP passes both");
    assert!(!tcp_connects(lab, 8080), "xdp-filter drops TCP 8080");
    assert!(tcp_connects(lab, 8081), "other TCP passes both");
}

/// Where freplace is refused: no dispatcher mode, and xdp-filter is untouched.
fn check_refusal(lab: &Lab, why: &str) {
    load_xdp_filter(lab);
    let err = match Daemon::start(lab, DISPATCHER) {
        Ok(d) => panic!("the dispatcher mode started on a kernel without freplace ({why}):\n{}", d.log()),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("cannot run on this kernel") && err.contains("enabled = false"), "{err}");
    assert!(loader_status(lab).contains("xdpfilt_"), "xdp-filter's program stays");
    assert!(!tcp_connects(lab, 8080), "xdp-filter still drops TCP 8080");
    assert_eq!(deliver(lab, MEMCACHED.0, MEMCACHED.1, 100), 100, "nothing of ampguard's was attached");
    eprintln!("this kernel has no freplace ({why}): checked that the dispatcher mode refuses and leaves xdp-filter alone");
}

#[test]
fn xdp_filter_first_then_ampguard_both_filter_and_each_unloads_alone() {
    require_root();
    let _turn = XDP_FILTER.lock().unwrap_or_else(|e| e.into_inner());
    let lab = Lab::new("dispa").expect("lab");
    let _unload = Unload(&lab);
    if let Err(why) = freplace_supported() {
        return check_refusal(&lab, &why);
    }
    load_xdp_filter(&lab);
    assert!(!tcp_connects(&lab, 8080), "xdp-filter alone drops TCP 8080");

    // ampguard joins the dispatcher xdp-filter made.
    let d = Daemon::start(&lab, DISPATCHER).expect("daemon");
    add_policy(&d);
    both_filter(&lab);
    let status = loader_status(&lab);
    assert!(status.contains("ampguard") && status.contains("xdpfilt_"), "xdp-loader lists both:\n{status}");
    let progs = dispatcher_programs(&d);
    assert!(progs.contains(&("ampguard".into(), 15)), "ampguard at its priority: {progs:?}");
    assert!(progs.iter().any(|(n, _)| n.starts_with("xdpfilt_")), "the status shows xdp-filter: {progs:?}");
    let out = d.cli(&["status"], None).unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("libxdp dispatcher chains") && text.contains("xdpfilt_") && text.contains("(this daemon)"), "{text}");

    // xdp-filter leaves: ampguard still drops, TCP 8080 passes.
    ok(&lab, "xdp-filter", &["unload", &lab.edge_if]);
    assert_eq!(deliver(&lab, MEMCACHED.0, MEMCACHED.1, 200), 0, "ampguard still drops after xdp-filter's unload");
    assert!(tcp_connects(&lab, 8080), "TCP 8080 passes without xdp-filter");

    // xdp-filter back, then ampguard leaves: xdp-filter still drops.
    load_xdp_filter(&lab);
    both_filter(&lab);
    detach(&d);
    let status = loader_status(&lab);
    assert!(!status.contains("ampguard") && status.contains("xdpfilt_"), "only ampguard left:\n{status}");
    assert!(!tcp_connects(&lab, 8080), "xdp-filter still drops TCP 8080");
    assert_eq!(deliver(&lab, MEMCACHED.0, MEMCACHED.1, 100), 100, "ampguard detached: memcached passes");
}

#[test]
fn ampguard_first_then_xdp_filter_and_a_restart_lets_nothing_through() {
    require_root();
    let _turn = XDP_FILTER.lock().unwrap_or_else(|e| e.into_inner());
    let lab = Lab::new("dispb").expect("lab");
    let _unload = Unload(&lab);
    if let Err(why) = freplace_supported() {
        return check_refusal(&lab, &why);
    }
    let mut d = Daemon::start(&lab, DISPATCHER).expect("daemon");
    add_policy(&d);
    assert_eq!(deliver(&lab, MEMCACHED.0, MEMCACHED.1, 200), 0, "ampguard alone drops");
    assert!(loader_status(&lab).contains("ampguard"), "ampguard made a dispatcher");

    // xdp-filter joins the dispatcher ampguard made.
    load_xdp_filter(&lab);
    both_filter(&lab);
    let status = loader_status(&lab);
    assert!(status.contains("ampguard") && status.contains("xdpfilt_"), "xdp-loader lists both:\n{status}");

    // A restart (SIGKILL, a new daemon with a new program) under a bounded
    // flood: the new program joins the chain before the old one leaves.
    // Long enough to cover the whole restart, also on a slow (emulated) machine.
    let flood = Flood { burst: 50, gap: Duration::from_millis(5), max: Duration::from_secs(8) + start_timeout() };
    let (flowed, ()) = flood_while(&lab, &[MEMCACHED, ORDINARY], flood, || {
        std::thread::sleep(Duration::from_millis(300));
        d.kill9_and_restart(Duration::from_millis(500)).expect("restart");
        std::thread::sleep(Duration::from_millis(300));
    });
    let [attack, normal] = flowed[..] else { unreachable!() };
    eprintln!("restart in the dispatcher chain: attack {attack:?}, ordinary {normal:?}");
    assert!(attack.sent > 1000, "the attack flowed ({} sent)", attack.sent);
    assert_eq!(attack.arrived, 0, "attack packets leaked across the restart ({} sent)", attack.sent);
    assert_eq!(normal.arrived, normal.sent, "ordinary traffic passed throughout");
    assert!(d.log().contains("removed the previous run's"), "the old program left the chain:\n{}", d.log());
    let progs = dispatcher_programs(&d);
    assert_eq!(progs.iter().filter(|(n, _)| n == "ampguard").count(), 1, "one ampguard in the chain: {progs:?}");
    both_filter(&lab);

    // ampguard leaves (xdp-filter stays), comes back, then xdp-filter leaves.
    detach(&d);
    assert!(!tcp_connects(&lab, 8080), "xdp-filter still drops TCP 8080");
    assert_eq!(deliver(&lab, MEMCACHED.0, MEMCACHED.1, 100), 100, "ampguard detached");
    assert!(d.cli(&["attach"], None).unwrap().status.success());
    both_filter(&lab);
    ok(&lab, "xdp-filter", &["unload", &lab.edge_if]);
    assert_eq!(deliver(&lab, MEMCACHED.0, MEMCACHED.1, 200), 0, "ampguard still drops after xdp-filter's unload");
    assert!(tcp_connects(&lab, 8080), "TCP 8080 passes without xdp-filter");

    // Stopped, ampguard's program stays in the chain (libxdp's pins hold it).
    assert!(d.stop().unwrap().success());
    assert_eq!(deliver(&lab, MEMCACHED.0, MEMCACHED.1, 200), 0, "enforcing with the daemon stopped");
}
