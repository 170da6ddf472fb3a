//! Faults injected into a running daemon in the lab: SIGKILL loops under
//! attack, corrupt state files, the XDP link removed or detached by hand, the
//! pin directory's bpffs unmounted, and tables filled to capacity. Each test
//! is privileged and bounded in time (waits are polls with deadlines).

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use ampguard::daemon::pins::is_bpffs;
use ampguard_tests::{
    daemon::{ampguard_bin, flood_while, lab_with_daemon, Daemon, Flood},
    lab::{deliver, Lab},
    require_root,
};
use serde_json::{json, Value};

fn start(tag: &str, extra: &str) -> (Lab, Daemon) {
    lab_with_daemon(tag, extra)
}

/// Polls `f` every 100 ms until it returns Some, or panics after `limit`.
fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let t = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(t.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `ampguard_xdp_reattachments_total{interface="edge0"}` (0 before the first).
fn reattachments(d: &Daemon) -> u64 {
    let (st, m) = d.call_with("GET", "/metrics", None, None).unwrap();
    assert_eq!(st, 200);
    let m = m.as_str().unwrap_or_default().to_string();
    m.lines()
        .find_map(|l| l.strip_prefix(r#"ampguard_xdp_reattachments_total{interface="edge0"} "#))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0)
}

fn edge0_status(d: &Daemon) -> Value {
    let (st, s) = d.call("GET", "/v1/status", None).unwrap();
    assert_eq!(st, 200, "{s}");
    s["interfaces"].as_array().unwrap().iter().find(|i| i["name"] == "edge0").cloned().expect("edge0 in status")
}

/// The XDP program id on edge0 as `ip link` reports it (None: nothing attached).
fn xdp_prog_on_edge0(lab: &Lab) -> Option<u64> {
    let out = lab.edge.ip(&["-j", "-d", "link", "show", "edge0"]).unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v[0]["xdp"]["prog"]["id"].as_u64().or_else(|| v[0]["xdp"]["attached"][0]["prog"]["id"].as_u64())
}

// ---------------------------------------------------------------------------
// SIGKILL under attack, several kinds of state, repeated

/// The snapshot and the journal, as bytes: what a refusal must leave alone.
fn state_files(d: &Daemon) -> (Vec<u8>, Vec<u8>) {
    let read = |f: &str| std::fs::read(d.dir.join("state").join(f)).unwrap_or_default();
    (read("state.json"), read("state.journal"))
}

#[test]
fn repeated_sigkill_under_attack_keeps_v4_v6_prefix_policies_and_the_allowlist() {
    let (lab, mut d) = start("kill3", "");
    for body in [
        r#"{"victim": "203.0.113.10", "ttl_secs": 600}"#,
        r#"{"victim": "203.0.113.0/24", "rules": {"memcached": {"action": "drop"}}, "ttl_secs": 0, "comment": "the /24"}"#,
        r#"{"victim": "2001:db8:2::10", "rules": {"memcached": {"action": "drop"}, "ntp": {"action": "limit", "pps": 5}}}"#,
    ] {
        let (st, p) = d.call("POST", "/v1/policies", Some(body)).unwrap();
        assert_eq!(st, 201, "{body}: {p}");
    }
    let (st, a) = d.call("POST", "/v1/allowlist", Some(r#"{"prefix": "198.51.100.53/32", "comment": "trusted resolver"}"#)).unwrap();
    assert_eq!(st, 201, "{a}");

    // Flows (each bounded to 9 s): memcached to the /32 victim, to a host only
    // the /24 covers, to the IPv6 victim; memcached from the allowlisted
    // source (must pass) and ordinary UDP (must pass).
    let flows = [
        ("198.51.100.7:11211", "203.0.113.10:40001"),
        ("198.51.100.7:11211", "203.0.113.20:40001"),
        ("[2001:db8:1::7]:11211", "[2001:db8:2::10]:40001"),
        ("198.51.100.53:11211", "203.0.113.20:40002"),
        ("198.51.100.7:40000", "203.0.113.10:40003"),
    ];
    let flood = Flood { burst: 20, gap: Duration::from_millis(5), max: Duration::from_secs(9) };
    let (flowed, ()) = flood_while(&lab, &flows, flood, || {
        std::thread::sleep(Duration::from_millis(300));
        for round in 0..3 {
            // Policies and allowlist as before each SIGKILL.
            d.kill9_and_restart(Duration::from_millis(300)).unwrap_or_else(|e| panic!("restart {round}: {e}"));
        }
        std::thread::sleep(Duration::from_millis(300));
    });
    let sent: Vec<usize> = flowed.iter().map(|f| f.sent).collect();
    let got: Vec<usize> = flowed.iter().map(|f| f.arrived).collect();
    for (i, (src, dst)) in flows.iter().enumerate() {
        assert!(sent[i] > 300, "{src} -> {dst} flowed ({} sent)", sent[i]);
    }
    assert_eq!(got[0], 0, "memcached leaked to the /32 victim ({} sent)", sent[0]);
    assert_eq!(got[1], 0, "memcached leaked to the host covered by the /24 ({} sent)", sent[1]);
    assert_eq!(got[2], 0, "memcached leaked to the IPv6 victim ({} sent)", sent[2]);
    assert_eq!(got[3], sent[3], "the allowlisted source passed throughout");
    assert_eq!(got[4], sent[4], "ordinary traffic passed throughout");
    assert_eq!(d.log().matches("no gap").count(), 3, "each restart swapped into the pinned link:\n{}", d.log());
}

// ---------------------------------------------------------------------------
// Corrupt state files

/// Runs `ampguard run` on the daemon's config (not via `spawn`, which waits
/// for the API) and returns (success, stderr+stdout, elapsed); killed after 20 s.
fn run_once(d: &Daemon) -> (bool, String, Duration) {
    let t = Instant::now();
    let mut child = Command::new("nsenter")
        .arg(format!("--net=/var/run/netns/{}", d.ns.name))
        .arg(ampguard_bin())
        .args(["run", "--config"])
        .arg(&d.config)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    loop {
        if child.try_wait().unwrap().is_some() {
            let out = child.wait_with_output().unwrap();
            let text = format!("{}{}", String::from_utf8_lossy(&out.stderr), String::from_utf8_lossy(&out.stdout));
            return (out.status.success(), text, t.elapsed());
        }
        if t.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("ampguard run with a bad state file was still running after 20 s:\n{}", String::from_utf8_lossy(&out.stderr));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn garbage_or_wrongly_shaped_state_file_stops_run_at_once_with_the_reason() {
    let (lab, mut d) = start("corrupt2", "");
    assert_eq!(d.call("POST", "/v1/policies", Some(r#"{"victim": "203.0.113.10"}"#)).unwrap().0, 201);
    d.kill9();
    let state = d.dir.join("state/state.json");
    let good = std::fs::read(&state).unwrap();
    // Deterministic garbage: not UTF-8, not JSON.
    let garbage: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8 | 0x80).collect();
    let cases: Vec<(&str, Vec<u8>, &[&str])> = vec![
        ("garbage bytes", garbage, &["corrupt", "state.json.bak"]),
        ("empty file", Vec::new(), &["corrupt", "state.json.bak"]),
        ("a JSON array", b"[1, 2, 3]".to_vec(), &["corrupt", "state.json.bak"]),
        (
            "policies is a string",
            br#"{"version": 1, "next_id": 2, "policies": "p-1", "allowlist": []}"#.to_vec(),
            &["corrupt", "state.json.bak"],
        ),
        (
            "a policy of the wrong shape",
            br#"{"version": 1, "next_id": 2, "policies": [{"id": 1, "victim": "not an address"}], "allowlist": []}"#.to_vec(),
            &["corrupt", "state.json.bak"],
        ),
        (
            "an unknown field",
            br#"{"version": 1, "next_id": 2, "policies": [], "allowlist": [], "extra": true}"#.to_vec(),
            &["corrupt", "state.json.bak"],
        ),
        ("a future version", br#"{"version": 99, "next_id": 2, "policies": [], "allowlist": []}"#.to_vec(), &["version 99"]),
    ];
    for (what, bytes, needles) in &cases {
        std::fs::write(&state, bytes).unwrap();
        let (ok, text, took) = run_once(&d);
        assert!(!ok, "{what}: ampguard run must fail:\n{text}");
        for n in *needles {
            assert!(text.contains(n), "{what}: the error names {n:?}:\n{text}");
        }
        assert!(took < Duration::from_secs(10), "{what}: took {took:?} to refuse");
        assert!(&std::fs::read(&state).unwrap() == bytes, "{what}: the bad file is kept as it was");
        assert_eq!(deliver(&lab, "198.51.100.7:11211", "203.0.113.10:40001", 50), 0, "{what}: the old program still enforces");
    }
    std::fs::write(&state, &good).unwrap();

    // The journal (the policy is there, not yet in a snapshot): a line that
    // does not read stops the start the same way, naming the journal.
    let journal = d.dir.join("state/state.journal");
    let jgood = std::fs::read(&journal).unwrap();
    assert!(String::from_utf8_lossy(&jgood).contains("203.0.113.10/32"), "the change is in the journal");
    for (what, tail) in
        [("a garbage line", &b"{\"seq\": oops}\n"[..]), ("a line that skips a change", &b"{\"seq\":99,\"del_policy\":\"p-1\"}\n"[..])]
    {
        let bad = [jgood.as_slice(), tail].concat();
        std::fs::write(&journal, &bad).unwrap();
        let (ok, text, _) = run_once(&d);
        assert!(!ok && text.contains("corrupt") && text.contains("state.journal"), "{what}: refused, naming the journal:\n{text}");
        assert_eq!(std::fs::read(&journal).unwrap(), bad, "{what}: kept as it was");
    }
    // A last line cut short is a write a crash interrupted before it was
    // acknowledged: dropped, and the start goes on.
    std::fs::write(&journal, [jgood.as_slice(), b"{\"seq\":3,\"del_pol"].concat()).unwrap();
    d.spawn().expect("starts with a torn last journal line");
    assert_eq!(d.call("GET", "/v1/policies", None).unwrap().1["policies"][0]["victim"], "203.0.113.10/32");
}

// ---------------------------------------------------------------------------
// The link detached by hand

/// Waits until the watchdog has re-attached (counter above `before`, status
/// attached, a program on edge0) and the attack is dropped again.
fn expect_reattached(lab: &Lab, d: &Daemon, before: u64, what: &str) {
    let n = wait_for(&format!("{what}: the watchdog re-attaching"), Duration::from_secs(8), || {
        let n = reattachments(d);
        (n > before).then_some(n)
    });
    assert_eq!(n, before + 1, "{what}: one re-attachment");
    let st = edge0_status(d);
    assert_eq!(st["attached"], true, "{what}: {st}");
    assert!(xdp_prog_on_edge0(lab).is_some(), "{what}: a program is on edge0 again");
    assert!(d.log().contains("the XDP link is gone"), "{what}: the log says what happened:\n{}", d.log());
    assert_eq!(deliver(lab, "198.51.100.7:11211", "203.0.113.10:40001", 100), 0, "{what}: attack dropped again");
    assert_eq!(deliver(lab, "198.51.100.7:40000", "203.0.113.10:40002", 100), 100, "{what}: ordinary traffic passes");
}

/// `ampguard_xdp_repins_total{interface="edge0"}` (0 before the first).
fn repins(d: &Daemon) -> u64 {
    let (_, m) = d.call_with("GET", "/metrics", None, None).unwrap();
    let m = m.as_str().unwrap_or_default().to_string();
    m.lines()
        .find_map(|l| l.strip_prefix(r#"ampguard_xdp_repins_total{interface="edge0"} "#))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0)
}

/// The daemon holds its own fd of each link, so a pin removed by hand (rm,
/// or its bpffs unmounted) detaches nothing while it runs; the watchdog
/// pins the same link again, so a later crash or restart still finds it.
fn expect_repinned(lab: &Lab, d: &Daemon, before: u64, prog: u64, what: &str) {
    assert_eq!(xdp_prog_on_edge0(lab), Some(prog), "{what}: the program stays on edge0");
    assert_eq!(deliver(lab, "198.51.100.7:11211", "203.0.113.10:40001", 100), 0, "{what}: attack dropped throughout");
    let n = wait_for(&format!("{what}: the watchdog pinning the link again"), Duration::from_secs(8), || {
        let n = repins(d);
        (n > before).then_some(n)
    });
    assert_eq!(n, before + 1, "{what}: one re-pin");
    assert!(d.pin_dir.join("link_edge0").exists(), "{what}: pinned again");
    assert_eq!(edge0_status(d)["state"], "enforcing", "{what}");
    assert!(d.log().contains("pinned again"), "{what}: the log says what happened:\n{}", d.log());
    assert_eq!(reattachments(d), 0, "{what}: nothing was detached, nothing re-attached");
    assert_eq!(xdp_prog_on_edge0(lab), Some(prog), "{what}: the same program");
}

#[test]
fn link_pin_removed_by_hand_is_pinned_again_without_a_gap() {
    let (lab, mut d) = start("rmlink", "");
    assert_eq!(d.call("POST", "/v1/policies", Some(r#"{"victim": "203.0.113.10"}"#)).unwrap().0, 201);
    assert_eq!(deliver(&lab, "198.51.100.7:11211", "203.0.113.10:40001", 50), 0);
    let prog = xdp_prog_on_edge0(&lab).expect("attached");
    let pin = d.pin_dir.join("link_edge0");
    std::fs::remove_file(&pin).unwrap();
    expect_repinned(&lab, &d, 0, prog, "rm link_edge0");
    std::fs::remove_file(&pin).unwrap();
    expect_repinned(&lab, &d, 1, prog, "rm link_edge0 again");
    // The new pin holds the link: it enforces through a SIGKILL.
    d.kill9();
    assert_eq!(deliver(&lab, "198.51.100.7:11211", "203.0.113.10:40001", 100), 0, "enforcing after SIGKILL");
}

fn bpftool() -> &'static str {
    let ok = Command::new("bpftool").arg("version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success());
    assert!(ok, "bpftool is missing: run `sudo cargo xtask setup` (it installs Debian's bpftool package)");
    "bpftool"
}

#[test]
fn link_detached_with_bpftool_is_detected_and_reattached() {
    let (lab, d) = start("bpftool", "");
    let bpftool = bpftool();
    assert_eq!(d.call("POST", "/v1/policies", Some(r#"{"victim": "203.0.113.10"}"#)).unwrap().0, 201);
    let pin = d.pin_dir.join("link_edge0");
    let out = Command::new(bpftool).args(["-j", "link", "show", "pinned"]).arg(&pin).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let link: Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = link["id"].as_u64().unwrap_or_else(|| panic!("link id in {link}"));
    let out = Command::new(bpftool).args(["link", "detach", "id", &id.to_string()]).output().unwrap();
    assert!(out.status.success(), "bpftool link detach: {}", String::from_utf8_lossy(&out.stderr));
    // The link and its pin stay, but it no longer points at edge0.
    assert!(pin.exists());
    assert_eq!(xdp_prog_on_edge0(&lab), None, "bpftool detached the program");
    expect_reattached(&lab, &d, 0, "bpftool link detach");
    let out = Command::new(bpftool).args(["-j", "link", "show", "pinned"]).arg(&pin).output().unwrap();
    let link: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_ne!(link["id"].as_u64(), Some(id), "a new link is pinned: {link}");
}

/// Unmounts (lazily) and removes a bpffs mount point on drop.
struct MountGuard(PathBuf);

impl Drop for MountGuard {
    fn drop(&mut self) {
        let c = std::ffi::CString::new(self.0.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The daemon's pin_dir is its own bpffs (a directory under /tmp, on which
/// `ensure_bpffs` mounts one). A plain `umount` is refused while the daemon
/// runs (it holds the directory locked); a lazy one (`umount -l`) hides every
/// pin. The daemon's own fds keep the link attached meanwhile, and the
/// watchdog mounts a bpffs again and pins the link and maps there.
#[test]
fn bpffs_of_the_pin_dir_unmounted_is_mounted_and_pinned_again() {
    require_root();
    let lab = Lab::new("umount").expect("lab");
    let mnt = std::env::temp_dir().join(format!("ag-test-bpffs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&mnt);
    let guard = MountGuard(mnt.clone());
    // Start with the harness's pin dir, then move the daemon to one of its own.
    let mut d = Daemon::start(&lab, "").expect("daemon");
    d.kill9();
    let out = Command::new(ampguard_bin()).args(["detach", "--pin-dir"]).arg(&d.pin_dir).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let _ = std::fs::remove_dir_all(&d.pin_dir);
    let cfg = std::fs::read_to_string(&d.config).unwrap();
    let cfg = cfg.replace(&format!("pin_dir = \"{}\"", d.pin_dir.display()), &format!("pin_dir = \"{}\"", mnt.display()));
    assert!(cfg.contains(&mnt.display().to_string()));
    std::fs::write(&d.config, cfg).unwrap();
    d.pin_dir = mnt.clone();
    d.spawn().expect("daemon on its own bpffs");
    assert!(is_bpffs(&mnt), "ensure_bpffs mounted a bpffs at {}:\n{}", mnt.display(), d.log());
    assert_eq!(d.call("POST", "/v1/policies", Some(r#"{"victim": "203.0.113.10"}"#)).unwrap().0, 201);
    assert_eq!(deliver(&lab, "198.51.100.7:11211", "203.0.113.10:40001", 50), 0);
    let prog = xdp_prog_on_edge0(&lab).expect("attached");

    let c = std::ffi::CString::new(mnt.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    let rc = unsafe { libc::umount2(c.as_ptr(), 0) };
    assert_eq!(
        (rc, std::io::Error::last_os_error().raw_os_error()),
        (-1, Some(libc::EBUSY)),
        "a plain umount is refused while the daemon runs"
    );
    // SAFETY: as above.
    let rc = unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    assert_eq!(rc, 0, "umount -l {}: {}", mnt.display(), std::io::Error::last_os_error());
    assert!(!is_bpffs(&mnt));
    expect_repinned(&lab, &d, 0, prog, "bpffs unmounted");
    assert!(is_bpffs(&mnt), "the pin dir is a bpffs again");
    assert!(mnt.join("maps").join(xdp_common::maps::POLICIES).exists(), "the maps are pinned again");
    drop(d);
    drop(guard);
}

// ---------------------------------------------------------------------------
// Tables full

fn error_of(v: &Value) -> (&str, &str) {
    (v["error"]["code"].as_str().unwrap_or_default(), v["error"]["message"].as_str().unwrap_or_default())
}

#[test]
fn full_policy_table_answers_507_and_existing_policies_keep_working() {
    // max_policies counts policies (the data plane adds its reserved slot 0): 3 fit.
    let (lab, d) = start("fullpol", "[capacity]\nmax_policies = 3\n");
    for v in ["203.0.113.10", "203.0.113.20", "2001:db8:2::10"] {
        let (st, p) = d.call("POST", "/v1/policies", Some(&json!({"victim": v}).to_string())).unwrap();
        assert_eq!(st, 201, "{v}: {p}");
    }
    let (_, status) = d.call("GET", "/v1/status", None).unwrap();
    assert_eq!(status["policies"]["capacity"], 3, "{status}");
    let before = d.call("GET", "/v1/policies", None).unwrap().1;
    let state_before = state_files(&d);

    let (st, e) = d.call("POST", "/v1/policies", Some(r#"{"victim": "203.0.113.30"}"#)).unwrap();
    assert_eq!(st, 507, "{e}");
    let (code, msg) = error_of(&e);
    assert_eq!(code, "table_full", "{e}");
    assert!(msg.contains("full") && msg.contains("max_policies"), "the message says which table and which knob: {msg}");
    // An alert for a new victim meets the same wall.
    let (st, e) = d.call("POST", "/v1/alerts", Some(r#"{"victim": "203.0.113.31", "action": "ban"}"#)).unwrap();
    assert_eq!((st, error_of(&e).0), (507, "table_full"), "{e}");
    assert!(state_files(&d) == state_before, "the refusals did not touch the state file");
    // Replacing an existing policy still works when full.
    let id = before["policies"][0]["id"].as_str().unwrap();
    let (st, p) = d.call("PUT", &format!("/v1/policies/{id}"), Some(r#"{"victim": "203.0.113.10", "comment": "replaced"}"#)).unwrap();
    assert_eq!(st, 200, "{p}");
    let (st, _) = d.call("PUT", &format!("/v1/policies/{id}"), Some(r#"{"victim": "203.0.113.10"}"#)).unwrap();
    assert_eq!(st, 200);

    assert_eq!(deliver(&lab, "198.51.100.7:11211", "203.0.113.10:40001", 100), 0, "existing v4 policy still drops");
    assert_eq!(deliver(&lab, "198.51.100.7:11211", "203.0.113.20:40001", 100), 0, "existing v4 policy still drops");
    assert_eq!(deliver(&lab, "[2001:db8:1::7]:11211", "[2001:db8:2::10]:40001", 100), 0, "existing v6 policy still drops");
    let after = d.call("GET", "/v1/policies", None).unwrap().1;
    let ids = |v: &Value| v["policies"].as_array().unwrap().iter().map(|p| p["victim"].clone()).collect::<Vec<_>>();
    assert_eq!(ids(&after), ids(&before), "the refusals changed nothing");

    // Room again after a delete.
    let id = before["policies"][1]["id"].as_str().unwrap();
    assert_eq!(d.call("DELETE", &format!("/v1/policies/{id}"), None).unwrap().0, 204);
    assert_eq!(d.call("POST", "/v1/policies", Some(r#"{"victim": "203.0.113.30"}"#)).unwrap().0, 201);
}

#[test]
fn full_v4_chunk_table_answers_507_and_existing_policies_keep_working() {
    // One level-2 chunk: one /16 may hold prefixes longer than /16.
    let (lab, d) = start("fullchunk", "[capacity]\nv4_chunks = 1\n");
    assert_eq!(d.call("POST", "/v1/policies", Some(r#"{"victim": "203.0.113.10"}"#)).unwrap().0, 201);
    assert_eq!(d.call("POST", "/v1/policies", Some(r#"{"victim": "203.0.113.20"}"#)).unwrap().0, 201, "same /16, same chunk");
    let before = d.call("GET", "/v1/policies", None).unwrap().1;
    let state_before = state_files(&d);
    for v in ["198.18.0.10", "198.18.7.0/24"] {
        let (st, e) = d.call("POST", "/v1/policies", Some(&json!({"victim": v}).to_string())).unwrap();
        assert_eq!(st, 507, "{v}: {e}");
        let (code, msg) = error_of(&e);
        assert_eq!(code, "table_full", "{e}");
        assert!(msg.contains("chunk") && msg.contains("v4_chunks"), "{v}: the message names the table and the knob: {msg}");
    }
    assert_eq!(d.call("GET", "/v1/policies", None).unwrap().1, before, "refusals changed nothing");
    assert!(state_files(&d) == state_before, "nor the state file");
    assert_eq!(deliver(&lab, "198.51.100.7:11211", "203.0.113.10:40001", 100), 0, "existing policy still drops");
    assert_eq!(deliver(&lab, "198.51.100.7:11211", "203.0.113.20:40001", 100), 0, "existing policy still drops");
    // A /16 needs no chunk; IPv6 has its own table.
    assert_eq!(d.call("POST", "/v1/policies", Some(r#"{"victim": "198.18.0.0/16"}"#)).unwrap().0, 201);
    assert_eq!(d.call("POST", "/v1/policies", Some(r#"{"victim": "2001:db8:2::10"}"#)).unwrap().0, 201);
    assert_eq!(deliver(&lab, "[2001:db8:1::7]:11211", "[2001:db8:2::10]:40001", 100), 0);
    // Freeing the chunk's last prefix frees the chunk.
    for p in before["policies"].as_array().unwrap() {
        assert_eq!(d.call("DELETE", &format!("/v1/policies/{}", p["id"].as_str().unwrap()), None).unwrap().0, 204);
    }
    let (st, e) = d.call("POST", "/v1/policies", Some(r#"{"victim": "198.18.0.10"}"#)).unwrap();
    assert_eq!(st, 201, "the chunk is free again: {e}");
}

#[test]
fn full_allowlist_answers_507_and_existing_entries_keep_working() {
    let (lab, d) = start("fullallow", "[capacity]\nmax_allow = 2\n");
    assert_eq!(d.call("POST", "/v1/policies", Some(r#"{"victim": "203.0.113.10"}"#)).unwrap().0, 201);
    for p in ["198.51.100.53/32", "2001:db8:1::7/128"] {
        let (st, a) = d.call("POST", "/v1/allowlist", Some(&json!({"prefix": p}).to_string())).unwrap();
        assert_eq!(st, 201, "{p}: {a}");
    }
    let before = d.call("GET", "/v1/allowlist", None).unwrap().1;
    let (st, e) = d.call("POST", "/v1/allowlist", Some(r#"{"prefix": "198.51.100.123/32"}"#)).unwrap();
    assert_eq!(st, 507, "{e}");
    let (code, msg) = error_of(&e);
    assert_eq!(code, "table_full", "{e}");
    assert!(msg.contains("allowlist") && msg.contains("max_allow"), "{msg}");
    assert_eq!(d.call("GET", "/v1/allowlist", None).unwrap().1, before, "the refusal changed nothing");
    assert_eq!(deliver(&lab, "198.51.100.53:11211", "203.0.113.10:40001", 100), 100, "allowlisted source still passes");
    assert_eq!(deliver(&lab, "198.51.100.123:11211", "203.0.113.10:40001", 100), 0, "the refused one is not allowlisted");
    assert_eq!(deliver(&lab, "198.51.100.7:11211", "203.0.113.10:40001", 100), 0, "the policy still drops");
}

// ---------------------------------------------------------------------------
// Threat model (README): what the token guards, what an alert source is held to

#[test]
fn every_v1_route_needs_the_token_and_the_open_routes_are_read_only() {
    let (_lab, d) = start("token", "");
    let routes = [
        ("GET", "/v1/status"),
        ("GET", "/v1/vectors"),
        ("GET", "/v1/policies"),
        ("POST", "/v1/policies"),
        ("GET", "/v1/policies/p-1"),
        ("PUT", "/v1/policies/p-1"),
        ("DELETE", "/v1/policies/p-1"),
        ("GET", "/v1/allowlist"),
        ("POST", "/v1/allowlist"),
        ("DELETE", "/v1/allowlist/a-1"),
        ("POST", "/v1/alerts"),
        ("POST", "/v1/alerts/fastnetmon"),
    ];
    let body = r#"{"victim": "203.0.113.10", "action": "ban", "prefix": "192.0.2.0/24"}"#;
    for (m, path) in routes {
        for token in [None, Some("wrong-token-wrong-token")] {
            let (st, v) = d.call_with(m, path, (m != "GET" && m != "DELETE").then_some(body), token).unwrap();
            assert_eq!(st, 401, "{m} {path} with token {token:?}: {v}");
        }
    }
    for path in ["/healthz", "/metrics"] {
        assert_eq!(d.call_with("GET", path, None, None).unwrap().0, 200, "GET {path} is open");
        for m in ["POST", "PUT", "DELETE"] {
            let (st, _) = d.call_with(m, path, Some("{}"), None).unwrap();
            assert_eq!(st, 405, "{m} {path}: open routes only read");
        }
    }
    assert_eq!(d.call("GET", "/v1/policies", None).unwrap().1["policies"], json!([]), "nothing was created");
}

#[test]
fn an_alert_source_is_held_to_hosts_ttls_its_budget_and_the_allowlist() {
    let (lab, d) = start("alertlim", "max_alerts_per_minute = 3\nallowlist = [\"203.0.113.128/25\"]\n");
    // Hosts only: a prefix is refused, whatever its length.
    for v in ["203.0.113.0/24", "0.0.0.0/0", "2001:db8:2::/64"] {
        let (st, e) = d.call("POST", "/v1/alerts", Some(&json!({"victim": v, "action": "ban"}).to_string())).unwrap();
        assert_eq!(st, 400, "{v}: {e}");
    }
    // Every alert policy has a TTL, within max_ttl_secs.
    for ttl in [0u64, 7 * 24 * 3600 + 1] {
        let (st, e) =
            d.call("POST", "/v1/alerts", Some(&json!({"victim": "203.0.113.10", "action": "ban", "ttl_secs": ttl}).to_string())).unwrap();
        assert_eq!(st, 400, "ttl {ttl}: {e}");
    }
    // Victims in allowlisted space are refused (409), and use no budget.
    let (st, e) = d.call("POST", "/v1/alerts", Some(r#"{"victim": "203.0.113.200", "action": "ban"}"#)).unwrap();
    assert_eq!((st, error_of(&e).0), (409, "conflict"), "{e}");
    // The budget: 3 changes a minute from this source, then 429 and nothing changes.
    let (_, op) =
        d.call("POST", "/v1/policies", Some(r#"{"victim": "203.0.113.20", "rules": {"ntp": {"action": "drop"}}, "ttl_secs": 0}"#)).unwrap();
    for v in ["203.0.113.10", "203.0.113.11", "2001:db8:2::10"] {
        let (st, r) = d.call("POST", "/v1/alerts", Some(&json!({"victim": v, "action": "ban"}).to_string())).unwrap();
        assert_eq!((st, r["result"].as_str()), (200, Some("created")), "{v}: {r}");
        assert!(r["policy"]["expires_at"].is_string(), "{r}");
    }
    let before = d.call("GET", "/v1/policies", None).unwrap().1;
    let (st, e) = d.call("POST", "/v1/alerts", Some(r#"{"victim": "203.0.113.12", "action": "ban"}"#)).unwrap();
    assert_eq!((st, error_of(&e).0), (429, "rate_limited"), "{e}");
    let (st, _) = d.call("POST", "/v1/alerts", Some(r#"{"victim": "203.0.113.10", "action": "unban"}"#)).unwrap();
    assert_eq!(st, 429, "unbans count too");
    assert_eq!(d.call("GET", "/v1/policies", None).unwrap().1, before, "refused alerts changed nothing");
    // An unban never removes the operator's policy (and uses no budget doing nothing).
    let (st, r) = d.call("POST", "/v1/alerts", Some(r#"{"victim": "203.0.113.20", "action": "unban"}"#)).unwrap();
    assert_eq!((st, r["result"].as_str()), (200, Some("ignored")), "{r}");
    assert_eq!(d.call("GET", &format!("/v1/policies/{}", op["id"].as_str().unwrap()), None).unwrap().0, 200);
    // Allowlisted sources pass even to a banned victim.
    assert_eq!(d.call("POST", "/v1/allowlist", Some(r#"{"prefix": "198.51.100.53/32"}"#)).unwrap().0, 201);
    assert_eq!(deliver(&lab, "198.51.100.53:11211", "203.0.113.10:40001", 50), 50);
    assert_eq!(deliver(&lab, "198.51.100.7:11211", "203.0.113.10:40001", 50), 0);
}

/// `chattr` on a state file, panicking with the reason if the filesystem
/// cannot (the test needs immutable flags: ext4, xfs, btrfs; not tmpfs).
fn chattr(flag: &str, path: &std::path::Path) {
    let out = Command::new("chattr").arg(flag).arg(path).output().expect("chattr (e2fsprogs) is installed");
    assert!(
        out.status.success(),
        "chattr {flag} {} failed ({}); this test needs the temp dir on a filesystem with immutable flags",
        path.display(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

#[test]
fn a_state_file_that_cannot_be_written_fails_the_request_loudly_and_recovers() {
    let (lab, mut d) = start("unwritable", "");
    assert_eq!(d.call("POST", "/v1/policies", Some(r#"{"victim": "203.0.113.10"}"#)).unwrap().0, 201);
    // An immutable journal: appends fail with EPERM, as on a read-only or broken disk.
    let journal = d.dir.join("state/state.journal");
    chattr("+i", &journal);
    let (st, e) = d.call("POST", "/v1/policies", Some(r#"{"victim": "203.0.113.20"}"#)).unwrap();
    let (code, msg) = error_of(&e);
    if st != 500 {
        chattr("-i", &journal);
    }
    assert_eq!((st, code), (500, "state_file"), "{e}");
    assert!(msg.contains("in force") && msg.contains("retried"), "the message says where the change stands: {msg}");
    assert_eq!(deliver(&lab, "198.51.100.7:11211", "203.0.113.20:40001", 100), 0, "the change is in force");
    let (_, m) = d.call_with("GET", "/metrics", None, None).unwrap();
    let failures =
        m.as_str().unwrap().lines().find_map(|l| l.strip_prefix("ampguard_state_write_failures_total ")).map(|v| v.parse::<u64>().unwrap());
    chattr("-i", &journal);
    assert!(failures.is_some_and(|n| n >= 1), "the failure is counted: {failures:?}");

    // Writable again: the next change waits for the retry (a full snapshot) and succeeds.
    let (st, e) = d.call("POST", "/v1/policies", Some(r#"{"victim": "203.0.113.30"}"#)).unwrap();
    assert_eq!(st, 201, "{e}");
    d.kill9_and_restart(Duration::ZERO).expect("restarts with the same policies");
    let (_, list) = d.call("GET", "/v1/policies", None).unwrap();
    let victims: Vec<&str> = list["policies"].as_array().unwrap().iter().map(|p| p["victim"].as_str().unwrap()).collect();
    assert_eq!(victims, ["203.0.113.10/32", "203.0.113.20/32", "203.0.113.30/32"], "nothing was lost across the failure");
}

// ---------------------------------------------------------------------------
// Validation and resource bounds: what a request can cover, what it can exhaust

/// POST a body, returning (status, error code or "", the JSON answer).
fn post(d: &Daemon, path: &str, body: &Value) -> (u16, String, Value) {
    let (st, v) = d.call("POST", path, Some(&body.to_string())).unwrap();
    (st, error_of(&v).0.to_string(), v)
}

#[test]
fn breadth_is_judged_on_both_branches_and_totals_are_bounded_even_with_force() {
    let (lab, d) = start("breadth", "");
    // A pass whose `otherwise` drops is a drop: refused on every address even
    // with force, and on a broad prefix without it.
    let sneaky = json!({"memcached": {"action": "pass", "max_bytes": 0, "otherwise": "drop"}});
    for (victim, force, code, needle) in
        [("0.0.0.0/0", true, 422, "every address"), ("::/0", true, 422, "every address"), ("10.0.0.0/8", false, 422, "force")]
    {
        let (st, c, v) = post(&d, "/v1/policies", &json!({"victim": victim, "rules": sneaky, "force": force}));
        assert_eq!((st, c.as_str()), (code, "too_broad"), "{victim}: {v}");
        assert!(v["error"]["message"].as_str().unwrap().contains(needle), "{victim}: {v}");
    }
    // Each prefix within its bound with force, but together at most one /8
    // (policy_coverage_v4): 0.0.0.0/1 + 128.0.0.0/1 can no longer cover everything.
    for half in ["0.0.0.0/1", "128.0.0.0/1"] {
        let (st, c, v) = post(&d, "/v1/policies", &json!({"victim": half, "rules": {"memcached": {"action": "drop"}}, "force": true}));
        assert_eq!((st, c.as_str()), (422, "too_broad"), "{half}: {v}");
        assert!(v["error"]["message"].as_str().unwrap().contains("policy_coverage_v4"), "{v}");
    }
    let drop = json!({"memcached": {"action": "drop"}});
    for v in ["10.0.0.0/9", "100.0.0.0/9"] {
        let (st, _, r) = post(&d, "/v1/policies", &json!({"victim": v, "rules": drop, "force": true}));
        assert_eq!(st, 201, "{v}: two halves of one /8 fit: {r}");
    }
    let (st, _, r) = post(&d, "/v1/policies", &json!({"victim": "198.18.0.0/16", "rules": drop}));
    assert_eq!((st, r["error"]["message"].as_str().is_some_and(|m| m.contains("policy_coverage_v4"))), (422, true), "{r}");
    // The `otherwise` branch counts here too; rules that only pass do not.
    let (st, _, r) = post(&d, "/v1/policies", &json!({"victim": "198.18.0.0/16", "rules": sneaky}));
    assert_eq!(st, 422, "{r}");
    let (st, _, r) =
        post(&d, "/v1/policies", &json!({"victim": "172.16.0.0/12", "rules": {"memcached": {"action": "pass"}}, "force": true}));
    assert_eq!(st, 201, "a policy that only passes covers nothing: {r}");
    // IPv6: one /32 in all.
    let (st, _, r) = post(&d, "/v1/policies", &json!({"victim": "2001:db8::/33", "rules": drop, "force": true}));
    assert_eq!(st, 201, "{r}");
    let (st, _, r) = post(&d, "/v1/policies", &json!({"victim": "2001:db8:8000::/33", "rules": drop, "force": true}));
    assert_eq!(st, 201, "{r}");
    let (st, _, r) = post(&d, "/v1/policies", &json!({"victim": "2001:db9::/48", "rules": drop}));
    assert_eq!((st, r["error"]["message"].as_str().is_some_and(|m| m.contains("policy_coverage_v6"))), (422, true), "{r}");
    // Room again once a broad policy goes; a delete is never refused.
    let (_, list) = d.call("GET", "/v1/policies", None).unwrap();
    let id =
        list["policies"].as_array().unwrap().iter().find(|p| p["victim"] == "100.0.0.0/9").unwrap()["id"].as_str().unwrap().to_string();
    assert_eq!(d.call("DELETE", &format!("/v1/policies/{id}"), None).unwrap().0, 204);
    assert_eq!(post(&d, "/v1/policies", &json!({"victim": "198.18.0.0/16", "rules": drop})).0, 201);

    // IPv4-mapped IPv6 is the IPv4 host or prefix: protected as IPv4, and
    // the allowlist sees it.
    let (st, _, p) = post(&d, "/v1/policies", &json!({"victim": "::ffff:203.0.113.10"}));
    assert_eq!((st, p["victim"].as_str()), (201, Some("203.0.113.10/32")), "{p}");
    assert_eq!(deliver(&lab, "198.51.100.7:11211", "203.0.113.10:40001", 50), 0, "IPv4 traffic to the host is protected");
    let (st, c, v) = post(&d, "/v1/policies", &json!({"victim": "::ffff:0:0/96"}));
    assert_eq!((st, c.as_str()), (422, "too_broad"), "::ffff:0:0/96 is 0.0.0.0/0: {v}");
    let (st, _, p) = post(&d, "/v1/policies", &json!({"victim": "::ffff:203.0.113.0/120"}));
    assert_eq!((st, p["victim"].as_str()), (201, Some("203.0.113.0/24")), "{p}");
    let (st, c, v) = post(&d, "/v1/allowlist", &json!({"prefix": "::ffff:203.0.113.10/128"}));
    assert_eq!((st, c.as_str()), (409, "conflict"), "overlaps the victim: {v}");
    let (st, _, a) = post(&d, "/v1/allowlist", &json!({"prefix": "::ffff:198.51.100.53"}));
    assert_eq!((st, a["prefix"].as_str()), (201, Some("198.51.100.53/32")), "{a}");
    assert_eq!(deliver(&lab, "198.51.100.53:11211", "203.0.113.10:40001", 50), 50, "the allowlisted IPv4 source passes");

    // The allowlist: IPv6 entries no broader than /32, and in all at most
    // one /8 and one /32 (allow_coverage_v4 / _v6).
    let (st, c, v) = post(&d, "/v1/allowlist", &json!({"prefix": "2000::/8"}));
    assert_eq!((st, c.as_str()), (422, "too_broad"), "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("/32"), "{v}");
    assert_eq!(post(&d, "/v1/allowlist", &json!({"prefix": "2001:db9::/32"})).0, 201);
    let (st, _, v) = post(&d, "/v1/allowlist", &json!({"prefix": "2001:dba::/48"}));
    assert_eq!((st, v["error"]["message"].as_str().is_some_and(|m| m.contains("allow_coverage_v6"))), (422, true), "{v}");
    // 255 separate /8s were accepted: now half a /8 and a host, then not another half.
    assert_eq!(post(&d, "/v1/allowlist", &json!({"prefix": "11.0.0.0/9"})).0, 201);
    let (st, _, v) = post(&d, "/v1/allowlist", &json!({"prefix": "12.0.0.0/9"}));
    assert_eq!((st, v["error"]["message"].as_str().is_some_and(|m| m.contains("allow_coverage_v4"))), (422, true), "{v}");
    let (st, _, v) = post(&d, "/v1/allowlist", &json!({"prefix": "13.0.0.0/8"}));
    assert_eq!(st, 422, "{v}");
    let allow = d.call("GET", "/v1/allowlist", None).unwrap().1;
    let prefixes: Vec<&str> = allow["allowlist"].as_array().unwrap().iter().map(|a| a["prefix"].as_str().unwrap()).collect();
    assert_eq!(prefixes, ["198.51.100.53/32", "2001:db9::/32", "11.0.0.0/9"], "the refusals added nothing");
    let list = d.call("GET", "/v1/policies", None).unwrap().1;
    let victims: Vec<&str> = list["policies"].as_array().unwrap().iter().map(|p| p["victim"].as_str().unwrap()).collect();
    assert_eq!(
        victims,
        ["10.0.0.0/9", "172.16.0.0/12", "2001:db8::/33", "2001:db8:8000::/33", "198.18.0.0/16", "203.0.113.10/32", "203.0.113.0/24"],
        "the refusals created nothing"
    );
}

#[test]
fn alerts_keep_to_their_share_of_chunks_limiters_rules_and_v6_entries_and_operators_keep_the_rest() {
    require_root();
    let lab = Lab::new("alertshare").expect("lab");
    let ban = |d: &Daemon, v: &str| post(d, "/v1/alerts", &json!({"victim": v, "action": "ban"}));
    let operator = |d: &Daemon, v: &str| post(d, "/v1/policies", &json!({"victim": v})).0;
    // (table size, alert bans that fit, the ban refused, the operators' policies
    // that still fit, the alert bans lifted, and a ban that then fits again)
    type Case<'a> = (&'a str, &'a [&'a str], &'a str, &'a str, &'a [&'a str], &'a [&'a str], &'a str);
    let cases: [Case; 4] = [
        // 4 chunks, alerts may hold 2 (half, like the policy table): one per /16.
        (
            "[capacity]\nv4_chunks = 4\n",
            &["198.18.0.10", "198.19.0.10", "198.18.0.11"],
            "198.20.0.10",
            "v4_chunks",
            &["198.20.0.10", "198.21.0.10"],
            &["198.18.0.10", "198.18.0.11"],
            "198.22.0.10",
        ),
        (
            "[capacity]\nmax_v6_victims = 4\n",
            &["2001:db8:2::10", "2001:db8:2::11"],
            "2001:db8:2::12",
            "max_v6_victims",
            &["2001:db8:2::12", "2001:db8:2::13"],
            &["2001:db8:2::10"],
            "2001:db8:2::99",
        ),
        // The default profile limits 5 vectors: 21 limiters (20 usable), alerts may hold 10.
        (
            "[capacity]\nmax_limiters = 21\n",
            &["203.0.113.10", "203.0.113.11"],
            "203.0.113.12",
            "max_limiters",
            &["203.0.113.12", "203.0.113.13"],
            &["203.0.113.10"],
            "203.0.113.99",
        ),
        // The default profile names 19 vectors: 20 rule entries a policy; alerts may hold 41 of 81.
        (
            "[capacity]\nmax_rules = 81\n",
            &["203.0.113.10", "203.0.113.11"],
            "203.0.113.12",
            "max_rules",
            &["203.0.113.12", "203.0.113.13"],
            &["203.0.113.10"],
            "203.0.113.99",
        ),
    ];
    for (config, fit, refused, knob, theirs, lifted, again) in cases {
        let d = Daemon::start(&lab, config).expect("daemon");
        for v in fit {
            let (st, _, r) = ban(&d, v);
            assert_eq!((st, r["result"].as_str()), (200, Some("created")), "{knob}: ban {v}: {r}");
        }
        let before = d.call("GET", "/v1/policies", None).unwrap().1;
        let (st, code, e) = ban(&d, refused);
        assert_eq!((st, code.as_str()), (507, "table_full"), "{knob}: ban {refused}: {e}");
        let msg = e["error"]["message"].as_str().unwrap();
        assert!(msg.contains(knob) && msg.contains("operators"), "{knob}: the message names the table: {msg}");
        assert_eq!(d.call("GET", "/v1/policies", None).unwrap().1, before, "{knob}: the refusal changed nothing");
        for v in theirs {
            assert_eq!(operator(&d, v), 201, "{knob}: operators still have room for {v}");
        }
        // An unban gives the room back.
        for v in lifted {
            let (st, _, r) = post(&d, "/v1/alerts", &json!({"victim": v, "action": "unban"}));
            assert_eq!((st, r["result"].as_str()), (200, Some("removed")), "{knob}: unban {v}: {r}");
        }
        let (st, _, r) = ban(&d, again);
        assert_eq!((st, r["result"].as_str()), (200, Some("created")), "{knob}: ban {again} after the unbans: {r}");
        drop(d);
    }
}

#[test]
fn detector_text_is_cut_to_fit_and_never_blocks_a_ban() {
    let (lab, d) = start("alerttext", "");
    // 200 "é" are 400 bytes: the comment keeps 128 of them (256 bytes).
    let (st, _, r) = post(&d, "/v1/alerts", &json!({"victim": "203.0.113.10", "action": "ban", "comment": "é".repeat(200)}));
    assert_eq!((st, r["result"].as_str()), (200, Some("created")), "{r}");
    assert_eq!(r["policy"]["comment"].as_str(), Some("é".repeat(128).as_str()));
    // Control characters are dropped, not refused.
    let (st, _, r) = post(
        &d,
        "/v1/alerts",
        &json!({"victim": "203.0.113.11", "action": "ban", "comment": "line\nforged\u{1b}[2J", "attack_type": "😀".repeat(64)}),
    );
    assert_eq!((st, r["policy"]["comment"].as_str()), (200, Some("lineforged[2J")), "{r}");
    // FastNetMon's JSON callback and its notify script with 64 emoji as the attack type.
    let fnm = json!({"ip": "203.0.113.12", "action": "ban", "alert_scope": "host",
        "attack_details": {"attack_type": "😀".repeat(64), "attack_direction": "incoming", "attack_protocol": "😀".repeat(64), "initial_attack_power": u64::MAX}});
    let (st, _, r) = post(&d, "/v1/alerts/fastnetmon", &fnm);
    assert_eq!((st, r["result"].as_str()), (200, Some("created")), "{r}");
    assert!(r["policy"]["comment"].as_str().unwrap().starts_with("fastnetmon: 😀"), "{r}");
    let stdin = format!("Attack type: {}\nAttack protocol: udp\n", "😀".repeat(64));
    let out = d.cli(&["alert", "fastnetmon", "203.0.113.13", "incoming", "18446744073709551615", "ban"], Some(&stdin)).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let list = d.call("GET", "/v1/policies", None).unwrap().1;
    let policies = list["policies"].as_array().unwrap();
    assert_eq!(policies.len(), 4, "{list}");
    assert!(policies.iter().all(|p| p["comment"].as_str().is_some_and(|c| c.len() <= 256)), "{list}");
    assert_eq!(deliver(&lab, "198.51.100.7:11211", "203.0.113.13:40001", 50), 0, "the script's ban is in force");
}

/// A raw HTTP/1.1 request from the edge namespace (any method, even one no
/// client library would send); returns the status code.
fn raw_request(d: &Daemon, method: &str, path: &str) -> u16 {
    use std::io::{Read, Write};
    let req = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    let port = d.port;
    d.ns.enter(move || {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(req.as_bytes()).unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        String::from_utf8_lossy(&out).split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
    })
    .unwrap()
}

#[test]
fn metric_labels_stay_a_fixed_set_whatever_unauthenticated_clients_send() {
    let (_lab, d) = start("labels", "");
    for i in 0..40 {
        let method = format!("X{i:03}{}", "M".repeat(20_000));
        for path in ["/healthz", "/metrics", "/v1/policies", "/no/such/route"] {
            let st = raw_request(&d, &method, path);
            assert!((400..500).contains(&st), "{path}: status {st}");
        }
    }
    assert_eq!(raw_request(&d, "GET", "/healthz"), 200);
    let (_, m) = d.call_with("GET", "/metrics", None, None).unwrap();
    let m = m.as_str().unwrap();
    assert!(m.len() < 200_000, "/metrics is {} bytes", m.len());
    let series: Vec<&str> = m.lines().filter(|l| l.starts_with("ampguard_api_requests_total{")).collect();
    assert!(!m.contains("X000") && series.iter().any(|l| l.contains(r#"method="other""#)), "{series:#?}");
    assert!(series.len() <= 8, "a handful of series, not one per method: {series:#?}");
    for l in &series {
        let method = l.split(r#"method=""#).nth(1).and_then(|r| r.split('"').next()).unwrap();
        assert!(["GET", "HEAD", "POST", "PUT", "DELETE", "other"].contains(&method), "{l}");
    }
}

#[test]
fn config_values_are_bounded_at_load_and_a_state_file_reusing_ids_is_refused() {
    require_root();
    let lab = Lab::new("loadchk").expect("lab");
    // A TTL bound whose expiries cannot be written (past year 9999): refused at load.
    let e = Daemon::start(&lab, "max_ttl_secs = 18446744073709551615").err().expect("refused").to_string();
    assert!(e.contains("max_ttl_secs") && e.contains("ttl_secs 0"), "{e}");
    // At the largest accepted bound a long TTL is served, listed, and survives a restart.
    let mut d = Daemon::start(&lab, "max_ttl_secs = 315360000").expect("daemon");
    let (st, _, e) = post(&d, "/v1/policies", &json!({"victim": "203.0.113.10", "ttl_secs": 300_000_000_000u64}));
    assert_eq!(st, 400, "{e}");
    let (st, _, p) = post(&d, "/v1/policies", &json!({"victim": "203.0.113.10", "ttl_secs": 315_360_000}));
    assert_eq!(st, 201, "{p}");
    assert_eq!(d.call("GET", "/v1/policies", None).unwrap().0, 200);
    d.kill9_and_restart(Duration::ZERO).expect("restarts: the journal has no gap");
    assert_eq!(d.call("GET", "/v1/policies", None).unwrap().1["policies"][0]["id"], p["id"]);
    // The state files are the daemon's alone; the harness's token file is 0644.
    use std::os::unix::fs::PermissionsExt;
    for f in ["state.json", "state.journal"] {
        let mode = std::fs::metadata(d.dir.join("state").join(f)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{f}");
    }
    assert!(d.log().contains("has mode 0644") && d.log().contains("chmod 600"), "the token file's mode is warned about:\n{}", d.log());

    // next_id at or below an id in use: a new policy would reuse p-1 and hide it.
    d.kill9();
    let state = d.dir.join("state/state.json");
    let text = std::fs::read_to_string(&state).unwrap();
    assert!(text.contains(r#""next_id":2"#), "{text}");
    let bad = text.replace(r#""next_id":2"#, r#""next_id":1"#);
    std::fs::write(&state, &bad).unwrap();
    let (ok, out, _) = run_once(&d);
    assert!(!ok && out.contains("next_id") && out.contains("p-1") && out.contains("state.json.bak"), "{out}");
    assert_eq!(std::fs::read_to_string(&state).unwrap(), bad, "kept as it was");
    assert_eq!(deliver(&lab, "198.51.100.7:11211", "203.0.113.10:40001", 50), 0, "the old program still enforces");
}

/// Runs the shipped FastNetMon wrapper (pointed at the built binary) in the
/// edge namespace with `stdin_bytes` on stdin: the fixture's ban details, then
/// filler lines. Returns (exit success, output, bytes written to it, the
/// largest RSS in KiB of the wrapper and everything it ran).
fn run_wrapper(d: &Daemon, args: &[&str], stdin_bytes: usize) -> (bool, String, usize, i64) {
    let shipped = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/fastnetmon-notify.sh")).unwrap();
    run_notify_script(d, &shipped.replace("/usr/local/bin/ampguard", ampguard_bin().to_str().unwrap()), args, stdin_bytes)
}

/// Runs `script` as FastNetMon runs its notify script, feeding it the real
/// attack details and then filler up to `stdin_bytes`: (ok, stdout+stderr,
/// bytes written to its stdin, peak RSS in KiB of it and its children).
fn run_notify_script(d: &Daemon, script: &str, args: &[&str], stdin_bytes: usize) -> (bool, String, usize, i64) {
    use std::io::Write;
    let wrapper = d.dir.join("ampguard-fastnetmon-notify");
    std::fs::write(&wrapper, script).unwrap();
    let out_file = d.dir.join("wrapper.out");
    let mut child = Command::new("nsenter")
        .arg(format!("--net=/var/run/netns/{}", d.ns.name))
        .arg("/bin/sh")
        .arg(&wrapper)
        .args(args)
        .env("AMPGUARD_API", format!("http://127.0.0.1:{}", d.port))
        .env("AMPGUARD_TOKEN_FILE", &d.token_file)
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::piped())
        .stdout(std::fs::File::create(&out_file).unwrap())
        .stderr(std::fs::File::create(d.dir.join("wrapper.err")).unwrap())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        let details = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../xdp-user/tests/fixtures/fastnetmon/ban-stdin.txt")).unwrap();
        let mut sent = 0;
        if stdin.write_all(&details).is_ok() {
            sent += details.len();
            let filler = "filler: the rest of a very long attack report\n".repeat(20_000);
            while sent < stdin_bytes {
                let n = filler.len().min(stdin_bytes - sent);
                if stdin.write_all(&filler.as_bytes()[..n]).is_err() {
                    break;
                }
                sent += n;
            }
        }
        sent
    });
    // A watchdog: the wrapper gets 60 s.
    let done = std::sync::Arc::new(AtomicBool::new(false));
    let watchdog = {
        let done = done.clone();
        std::thread::spawn(move || {
            let t = Instant::now();
            while !done.load(Ordering::SeqCst) {
                if t.elapsed() > Duration::from_secs(60) {
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    // wait4: the child's rusage covers the processes it waited for (the pipeline).
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    done.store(true, Ordering::SeqCst);
    watchdog.join().unwrap();
    std::mem::forget(child); // reaped above
    assert_eq!(r, pid, "wait4");
    let sent = writer.join().unwrap();
    let out = format!(
        "{}{}",
        std::fs::read_to_string(&out_file).unwrap_or_default(),
        std::fs::read_to_string(d.dir.join("wrapper.err")).unwrap_or_default()
    );
    (libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, out, sent, usage.ru_maxrss)
}

#[test]
fn the_notify_wrapper_drains_a_huge_stdin_in_bounded_memory_and_takes_no_options() {
    let (lab, d) = start("fnmwrap", "");
    // 100 MB on stdin: all of it read (FastNetMon waits for that), the ban made,
    // and the whole pipeline stays small (reading it whole took 200 MB).
    let total = 100 << 20;
    let (ok, out, sent, rss_kib) = run_wrapper(&d, &["203.0.113.10", "incoming", "3209", "ban"], total);
    assert!(ok, "{out}");
    assert_eq!(sent, total, "FastNetMon could write all of its stdin");
    assert!(rss_kib < 64 * 1024, "the wrapper and ampguard peaked at {rss_kib} KiB");
    let list = d.call("GET", "/v1/policies", None).unwrap().1;
    assert_eq!(list["policies"][0]["source"], "fastnetmon_script", "{list}");
    assert_eq!(deliver(&lab, "198.51.100.7:11211", "203.0.113.10:40001", 50), 0);
    // `--`: an "IP" that looks like an option is refused as an address, not obeyed.
    let (ok, out, _, _) = run_wrapper(&d, &["--api=http://127.0.0.1:1", "incoming", "1", "ban"], 0);
    assert!(!ok && out.contains("not an IPv4 or IPv6 address"), "{out}");
    // unban reads nothing and removes the ban.
    let (ok, out, _, _) = run_wrapper(&d, &["203.0.113.10", "incoming", "3209", "unban"], 0);
    assert!(ok, "{out}");
    assert_eq!(d.call("GET", "/v1/policies", None).unwrap().1["policies"], json!([]));
}

/// `ampguard alert fastnetmon` called directly (a notify script of one's own)
/// reads all of stdin too, but keeps only its first 4 MiB.
#[test]
fn alert_fastnetmon_itself_drains_a_huge_stdin_in_bounded_memory() {
    let (lab, d) = start("fnmdirect", "");
    let script = format!("#!/bin/sh\nexec {} alert fastnetmon -- \"$@\"\n", ampguard_bin().display());
    let total = 100 << 20;
    let (ok, out, sent, rss_kib) = run_notify_script(&d, &script, &["203.0.113.10", "incoming", "3209", "ban"], total);
    assert!(ok, "{out}");
    assert_eq!(sent, total, "FastNetMon could write all of its stdin");
    assert!(rss_kib < 64 * 1024, "ampguard alert fastnetmon peaked at {rss_kib} KiB");
    assert_eq!(deliver(&lab, "198.51.100.7:11211", "203.0.113.10:40001", 50), 0, "the ban was made");
}
