//! Operational safety: ordinary situations that must never switch
//! enforcement off while ampguard says it protects. Each test is one
//! situation an operator (or a hostile local user) can cause: idle API
//! connections at the file limit, a start with `ip netns exec`, a second
//! daemon, `ampguard detach` while the daemon runs, a full state disk.
//! Privileged, in the lab's namespaces, every wait bounded.

use std::{
    io::{Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use ampguard_tests::{
    daemon::{ampguard_bin, Daemon, Launch},
    lab::{deliver, Lab},
    require_root,
};
use serde_json::Value;

fn lab(tag: &str) -> Lab {
    require_root();
    Lab::new(tag).expect("lab")
}

/// Polls `f` every 100 ms until it returns Some, or panics after `limit`.
fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn memcached_dropped(lab: &Lab, n: usize) -> usize {
    deliver(lab, "198.51.100.7:11211", "203.0.113.10:40001", n)
}

fn add_victim(d: &Daemon) {
    let (st, p) = d.call("POST", "/v1/policies", Some(r#"{"victim": "203.0.113.10"}"#)).unwrap();
    assert_eq!(st, 201, "{p}");
}

fn status(d: &Daemon) -> Value {
    let (st, s) = d.call("GET", "/v1/status", None).unwrap();
    assert_eq!(st, 200, "{s}");
    s
}

/// The XDP program id on edge0 as `ip link` reports it (None: nothing attached).
fn xdp_prog_on_edge0(lab: &Lab) -> Option<u64> {
    let out = lab.edge.ip(&["-j", "-d", "link", "show", "edge0"]).unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v[0]["xdp"]["prog"]["id"].as_u64().or_else(|| v[0]["xdp"]["attached"][0]["prog"]["id"].as_u64())
}

fn metric(d: &Daemon, line_prefix: &str) -> Option<String> {
    let (_, m) = d.call_with("GET", "/metrics", None, None).unwrap();
    m.as_str()?.lines().find_map(|l| l.strip_prefix(line_prefix).map(|v| v.trim().to_string()))
}

/// The test process opens more sockets than the usual soft limit of 1,024.
fn raise_own_fd_limit() {
    let mut rl = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl);
        rl.rlim_cur = rl.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &rl);
    }
}

/// Opens `n` TCP connections to the daemon's API from inside the edge
/// namespace and holds them, sending nothing, for `hold`; meanwhile checks
/// every second that a memcached flood is still dropped. Returns how many
/// connections were made.
fn idle_connections_under_flood(lab: &Lab, d: &Daemon, n: usize, hold: Duration) -> usize {
    raise_own_fd_limit();
    let port = d.port;
    let conns =
        d.ns.enter(move || {
            let addr = format!("127.0.0.1:{port}").parse().unwrap();
            (0..n).filter_map(|_| TcpStream::connect_timeout(&addr, Duration::from_millis(300)).ok()).collect::<Vec<_>>()
        })
        .unwrap();
    let made = conns.len();
    let end = Instant::now() + hold;
    while Instant::now() < end {
        assert_eq!(memcached_dropped(lab, 100), 0, "the flood arrived while {made} idle connections were open:\n{}", d.log());
        std::thread::sleep(Duration::from_millis(1000));
    }
    drop(conns);
    made
}

fn api_recovers(d: &Daemon) {
    wait_for("the API answering again once the connections closed", Duration::from_secs(30), || {
        matches!(d.call("GET", "/healthz", None), Ok((200, _))).then_some(())
    });
    let s = status(d);
    assert_eq!(s["interfaces"][0]["state"], "enforcing", "{s}");
    assert_eq!(s["healthy"], true, "{s}");
}

// ---------------------------------------------------------------------------
// 1. Idle connections at the file limit

#[test]
fn idle_connections_at_the_file_limit_leave_xdp_attached() {
    let lab = lab("idle");
    let d = Daemon::start_with(&lab, "", Launch::FileLimit(1024)).expect("daemon at 1,024 files");
    add_victim(&d);
    let prog = xdp_prog_on_edge0(&lab).expect("attached");
    let made = idle_connections_under_flood(&lab, &d, 1100, Duration::from_secs(8));
    assert!(made >= 1000, "only {made} connections could be made");
    assert_eq!(xdp_prog_on_edge0(&lab), Some(prog), "the program on edge0 changed:\n{}", d.log());
    api_recovers(&d);
    assert_eq!(memcached_dropped(&lab, 100), 0);
    assert!(!d.log().contains("link is gone"), "the watchdog acted on a false alarm:\n{}", d.log());
}

/// The same with the connection cap lifted above the file limit, so that the
/// daemon does run out of file descriptors: the watchdog must still not take
/// an unanswerable question for a detach (it read EMFILE as "link gone").
#[test]
fn running_out_of_file_descriptors_does_not_detach() {
    let lab = lab("emfile");
    let d = Daemon::start_with(&lab, "max_connections = 4096\nheader_timeout_secs = 60", Launch::FileLimit(1024)).expect("daemon");
    add_victim(&d);
    let prog = xdp_prog_on_edge0(&lab).expect("attached");
    let made = idle_connections_under_flood(&lab, &d, 1100, Duration::from_secs(7));
    assert!(made >= 1000, "only {made} connections could be made");
    assert!(
        d.log().contains("accepting API connections fails"),
        "the daemon never hit its file limit, so this test proved nothing:\n{}",
        d.log()
    );
    assert_eq!(xdp_prog_on_edge0(&lab), Some(prog), "the program on edge0 changed:\n{}", d.log());
    api_recovers(&d);
    assert_eq!(memcached_dropped(&lab, 100), 0);
    assert!(!d.log().contains("link is gone"), "the watchdog acted on EMFILE:\n{}", d.log());
}

/// Idle and half-sent connections are closed after `header_timeout_secs`, a
/// body that does not arrive after `body_timeout_secs` (they stayed open 90 s).
#[test]
fn idle_and_half_sent_connections_are_closed() {
    let lab = lab("slow");
    let d = Daemon::start(&lab, "header_timeout_secs = 2\nbody_timeout_secs = 2").expect("daemon");
    let port = d.port;
    let token = d.token.clone();
    let results = d
        .ns
        .enter(move || {
            let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            let mut conns: Vec<(&str, TcpStream)> = Vec::new();
            for i in 0..45 {
                let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
                let kind = match i % 3 {
                    0 => "idle",
                    1 => {
                        c.write_all(b"POST /v1/policies HTTP/1.1\r\nHost: x\r\n").unwrap();
                        "half-sent headers"
                    }
                    _ => {
                        let head = format!("POST /v1/policies HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"victim\"");
                        c.write_all(head.as_bytes()).unwrap();
                        "half-sent body"
                    }
                };
                c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                conns.push((kind, c));
            }
            let start = Instant::now();
            conns
                .into_iter()
                .map(|(kind, mut c)| {
                    let mut buf = Vec::new();
                    let closed = c.read_to_end(&mut buf).is_ok();
                    (kind, closed, start.elapsed(), String::from_utf8_lossy(&buf).lines().next().unwrap_or("").to_string())
                })
                .collect::<Vec<_>>()
        })
        .unwrap();
    for (kind, closed, after, first_line) in results {
        assert!(closed && after < Duration::from_secs(8), "a {kind} connection was not closed within 8 s (closed: {closed}, {after:?})");
        if kind == "half-sent body" {
            assert!(first_line.contains("408"), "a body that never arrives gets 408, got {first_line:?}");
        }
    }
    assert!(matches!(d.call("GET", "/healthz", None), Ok((200, _))));
}

// ---------------------------------------------------------------------------
// 2. Started with `ip netns exec`

#[test]
fn started_with_ip_netns_exec_the_pins_outlive_the_process() {
    let lab = lab("ipnetns");
    let mut d = Daemon::start_with(&lab, "", Launch::IpNetnsExec).expect("daemon under ip netns exec");
    let log = d.log();
    assert!(!log.contains("mounted a bpffs at /sys/fs/bpf"), "a private bpffs dies with the process:\n{log}");
    assert!(log.contains("private mount namespace"), "the log says where the pins went:\n{log}");
    // The pins are in the host's bpffs, where this test (in the host's mount namespace) sees them.
    assert!(d.pin_dir.join("link_edge0").exists(), "no pin in the host's {}:\n{log}", d.pin_dir.display());
    add_victim(&d);
    assert_eq!(memcached_dropped(&lab, 200), 0);

    d.kill9();
    assert_eq!(memcached_dropped(&lab, 200), 0, "after SIGKILL the flood arrives: the pins died with the process");
    d.spawn().expect("restart under ip netns exec");
    assert!(d.log().contains("swapped the new program into the pinned link"), "the restart adopts the link:\n{}", d.log());
    assert_eq!(memcached_dropped(&lab, 200), 0);

    d.stop().expect("SIGTERM");
    assert!(d.log().contains("XDP stays attached through the pinned links"), "{}", d.log());
    assert!(xdp_prog_on_edge0(&lab).is_some(), "the log said attached; ip link must agree");
    assert_eq!(memcached_dropped(&lab, 200), 0, "still enforcing after SIGTERM");
}

/// Started with `ip netns exec` from a subshell that exits at once (its
/// parent is gone before the daemon looks for the host's mounts): the daemon
/// pins through pid 1's mount namespace where it can read it, and otherwise
/// refuses naming nsenter. It never pins in a bpffs that dies with it.
#[test]
fn started_with_ip_netns_exec_by_a_vanished_parent_it_pins_outside_or_refuses() {
    let lab = lab("ipnetns2");
    let mut d = Daemon::start(&lab, "").expect("daemon");
    d.kill9();
    let _ = Command::new(ampguard_bin()).args(["detach", "--pin-dir"]).arg(&d.pin_dir).output();
    let log = d.dir.join("orphan.log");
    let script = format!(
        "(ip netns exec {} {} run --config {} > {} 2>&1 &)",
        d.ns.name,
        ampguard_bin().display(),
        d.config.display(),
        log.display()
    );
    assert!(Command::new("sh").args(["-c", &script]).status().unwrap().success());
    let text = wait_for("the orphaned daemon to pin or refuse", Duration::from_secs(20), || {
        let t = std::fs::read_to_string(&log).unwrap_or_default();
        (t.contains("API listening") || t.contains("Error")).then_some(t)
    });
    if text.contains("API listening") {
        assert!(text.contains("mount namespace of pid 1"), "{text}");
        assert!(d.pin_dir.join("link_edge0").exists(), "pinned where the host sees it:\n{text}");
        let _ = Command::new("pkill").args(["-9", "-f", &d.config.display().to_string()]).status();
    } else {
        assert!(text.contains("nsenter --net=/run/netns/"), "the refusal says how to start it:\n{text}");
        assert!(!text.contains("mounted a bpffs"), "{text}");
        assert_eq!(xdp_prog_on_edge0(&lab), None, "a refused start attached nothing");
    }
}

// ---------------------------------------------------------------------------
// 3. Two daemons

fn second_daemon(d: &Daemon, config: &Path) -> (bool, String) {
    let mut c = d.command();
    c.args(["run", "--config"]).arg(config);
    let out = c.output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn a_second_daemon_refuses_and_the_first_keeps_enforcing() {
    let lab = lab("twice");
    let d = Daemon::start(&lab, "").expect("daemon");
    add_victim(&d);
    let prog = xdp_prog_on_edge0(&lab).expect("attached");
    let pid = d.pid().unwrap().to_string();

    // The same arguments (a hand run beside systemd).
    let started = Instant::now();
    let (ok, out) = second_daemon(&d, &d.config);
    assert!(!ok, "a second daemon on the same dirs started:\n{out}");
    assert!(started.elapsed() < Duration::from_secs(10), "the refusal took {:?}", started.elapsed());
    assert!(out.contains("another ampguard") && out.contains(&pid), "the refusal names the running daemon (pid {pid}):\n{out}");
    assert_eq!(xdp_prog_on_edge0(&lab), Some(prog), "the second daemon touched the link");

    // Other state and pin dirs, same interface: someone else's program is named.
    let other = d.dir.join("other");
    std::fs::create_dir_all(&other).unwrap();
    let cfg = std::fs::read_to_string(&d.config)
        .unwrap()
        .replace(&d.pin_dir.display().to_string(), &format!("{}-other", d.pin_dir.display()))
        .replace(&d.dir.join("state").display().to_string(), &other.join("state").display().to_string())
        .replace("127.0.0.1:9470", "127.0.0.1:9471");
    let other_cfg = other.join("ampguard.toml");
    std::fs::write(&other_cfg, cfg).unwrap();
    let (ok, out) = second_daemon(&d, &other_cfg);
    let _ = std::fs::remove_dir_all(format!("{}-other", d.pin_dir.display()));
    assert!(!ok, "a second daemon on edge0 started:\n{out}");
    assert!(out.contains(&format!("XDP program id {prog}")) && out.contains("ampguard"), "the refusal names the program on edge0:\n{out}");
    assert!(!out.contains("generic"), "auto mode must not fall back to generic over someone's program:\n{out}");
    assert_eq!(xdp_prog_on_edge0(&lab), Some(prog));

    // The first is still the one enforcing: a new policy takes effect.
    let (st, p) = d.call("POST", "/v1/policies", Some(r#"{"victim": "203.0.113.20"}"#)).unwrap();
    assert_eq!(st, 201, "{p}");
    assert_eq!(deliver(&lab, "198.51.100.7:11211", "203.0.113.20:40001", 100), 0);
    assert_eq!(status(&d)["healthy"], true);
}

/// Someone swaps another program into the daemon's link (what a second
/// daemon used to do): the daemon says so in status, metrics and the log.
#[test]
fn a_link_holding_another_program_is_reported() {
    let lab = lab("swap");
    let d = Daemon::start(&lab, "").expect("daemon");
    add_victim(&d);
    let ours = xdp_prog_on_edge0(&lab).expect("attached");
    let pin = d.pin_dir.join("link_edge0");
    let mut other = aya::EbpfLoader::new().load(ampguard::dataplane::BASELINE_OBJECT).expect("baseline object");
    let prog: &mut aya::programs::Xdp = other.program_mut("xdp_pass").expect("xdp_pass").try_into().unwrap();
    prog.load().unwrap();
    let link = aya::programs::links::PinnedLink::from_pin(&pin).unwrap();
    let link = aya::programs::xdp::XdpLink::try_from(aya::programs::links::FdLink::from(link)).unwrap();
    let id = prog.attach_to_link(link).expect("swap xdp_pass into the daemon's link");
    let _ = prog.take_link(id);
    assert_ne!(xdp_prog_on_edge0(&lab), Some(ours));
    let s = wait_for("status reporting the foreign program", Duration::from_secs(6), || {
        let s = status(&d);
        (s["interfaces"][0]["state"] == "not_enforcing").then_some(s)
    });
    assert_eq!(s["healthy"], false, "{s}");
    assert!(s["interfaces"][0]["problem"].as_str().unwrap().contains("NOT enforced"), "{s}");
    assert_eq!(metric(&d, r#"ampguard_interface_attached{interface="edge0""#).as_deref().map(|v| v.ends_with('0')), Some(true));
    assert!(d.log().contains("not this daemon's program"), "{}", d.log());
    drop(other);
}

// ---------------------------------------------------------------------------
// 4. `ampguard detach` while the daemon runs

#[test]
fn detach_while_running_stays_detached_until_attach() {
    let lab = lab("detach");
    let mut d = Daemon::start(&lab, "").expect("daemon");
    add_victim(&d);
    assert_eq!(memcached_dropped(&lab, 100), 0);
    let pin_dir = d.pin_dir.display().to_string();
    let out = d.cli(&["detach", "--pin-dir", &pin_dir], None).unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("until `ampguard attach`"), "{text}");
    assert_eq!(xdp_prog_on_edge0(&lab), None, "detach detached");
    std::thread::sleep(Duration::from_secs(5)); // two watchdog rounds and more
    assert_eq!(xdp_prog_on_edge0(&lab), None, "the watchdog re-attached after an operator's detach:\n{}", d.log());
    assert_eq!(memcached_dropped(&lab, 100), 100, "detached means the traffic arrives");
    let s = status(&d);
    assert_eq!(s["enforcement"], "detached_by_operator", "{s}");
    assert_eq!(s["healthy"], false, "{s}");
    assert_eq!(s["interfaces"][0]["state"], "detached_by_operator", "{s}");
    assert_eq!(metric(&d, "ampguard_detached_by_operator ").as_deref(), Some("1"));

    // A restart (a crash, systemd) keeps the operator's decision.
    d.kill9_and_restart(Duration::ZERO).unwrap();
    assert_eq!(xdp_prog_on_edge0(&lab), None, "a restart re-attached:\n{}", d.log());
    assert_eq!(status(&d)["enforcement"], "detached_by_operator");

    let out = d.cli(&["attach"], None).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(xdp_prog_on_edge0(&lab).is_some());
    assert_eq!(memcached_dropped(&lab, 100), 0, "enforcing again");
    assert_eq!(status(&d)["enforcement"], "enforcing");
    d.kill9_and_restart(Duration::ZERO).unwrap();
    assert_eq!(memcached_dropped(&lab, 100), 0, "and after a restart");
}

/// With no daemon running, detach removes the pins itself, as before.
#[test]
fn detach_without_a_daemon_removes_the_pins() {
    let lab = lab("detach0");
    let mut d = Daemon::start(&lab, "").expect("daemon");
    add_victim(&d);
    d.kill9();
    assert_eq!(memcached_dropped(&lab, 100), 0, "the pins enforce while the daemon is down");
    let out = Command::new(ampguard_bin()).args(["detach", "--pin-dir"]).arg(&d.pin_dir).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("no daemon was running"), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(xdp_prog_on_edge0(&lab), None);
}

// ---------------------------------------------------------------------------
// 6. A full state disk

/// A small tmpfs for the state directory, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let st = Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"]).arg(dir).status().unwrap();
        assert!(st.success(), "mount tmpfs on {}", dir.display());
        Tmpfs(dir.into())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the filesystem of `dir` with one file until ENOSPC.
fn fill(dir: &Path) -> PathBuf {
    let f = dir.join("filler");
    let mut file = std::fs::File::create(&f).unwrap();
    let block = vec![0u8; 64 * 1024];
    loop {
        if file.write_all(&block).is_err() {
            break;
        }
    }
    // Whatever is left in smaller pieces too.
    while file.write_all(&block[..512]).is_ok() {}
    f
}

#[test]
fn a_full_state_disk_does_not_block_the_restart() {
    let lab = lab("full");
    let mut d = Daemon::start(&lab, "").expect("daemon");
    // Move the state onto a small tmpfs of its own (the lock file comes along).
    d.kill9();
    let state = d.dir.join("state");
    let _ = std::fs::remove_dir_all(&state);
    let _fs = Tmpfs::mount(&state, "1m");
    d.spawn().unwrap();
    add_victim(&d);
    for v in ["203.0.113.11", "203.0.113.12", "2001:db8::12"] {
        assert_eq!(d.call("POST", "/v1/policies", Some(&format!(r#"{{"victim": "{v}"}}"#))).unwrap().0, 201);
    }
    let filler = fill(&state);
    // The journal's last page may still have room for a line or two.
    let mut saved =
        vec!["203.0.113.10/32", "203.0.113.11/32", "203.0.113.12/32", "2001:db8::12/128"].into_iter().map(String::from).collect::<Vec<_>>();
    let refused = (13..60).find_map(|i| {
        let (st, e) = d.call("POST", "/v1/policies", Some(&format!(r#"{{"victim": "203.0.113.{i}"}}"#))).unwrap();
        match st {
            201 => {
                saved.push(format!("203.0.113.{i}/32"));
                None
            }
            _ => Some((st, e)),
        }
    });
    let (st, e) = refused.expect("the full disk never refused a change");
    assert_eq!(st, 500, "{e}");
    assert!(e["error"]["message"].as_str().unwrap().contains("in force but"), "{e}");

    d.kill9();
    d.spawn().expect("the daemon starts on a full state disk");
    for dst in ["203.0.113.10", "203.0.113.11", "203.0.113.12"] {
        assert_eq!(deliver(&lab, "198.51.100.7:11211", &format!("{dst}:40001"), 100), 0, "{dst} enforced after the restart");
    }
    let s = status(&d);
    assert_eq!(s["state_writer"]["snapshot_due"], true, "{s}");
    assert_eq!(s["healthy"], false, "a state that cannot be saved is not healthy: {s}");
    assert_eq!(metric(&d, "ampguard_state_snapshot_due ").as_deref(), Some("1"));

    // Space again: the owed snapshot is written within a few retries.
    std::fs::remove_file(&filler).unwrap();
    wait_for("the snapshot written once there is space", Duration::from_secs(8), || {
        (status(&d)["state_writer"]["snapshot_due"] == false).then_some(())
    });
    assert_eq!(status(&d)["healthy"], true);
    // Everything in force is on disk now: a restart lists it all.
    d.kill9_and_restart(Duration::ZERO).unwrap();
    let (_, list) = d.call("GET", "/v1/policies", None).unwrap();
    let victims: Vec<&str> = list["policies"].as_array().unwrap().iter().map(|p| p["victim"].as_str().unwrap()).collect();
    for v in &saved {
        assert!(victims.contains(&v.as_str()), "{v} lost: {victims:?}");
    }
}
