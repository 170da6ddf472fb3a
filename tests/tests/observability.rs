//! Observability with the real tools, in the lab: Debian's Prometheus scrapes
//! the daemon (config derived from deploy/prometheus.yml, rules from
//! deploy/ampguard-alerts.yml, every Grafana panel's query evaluated), and
//! Debian's FastNetMon detects a memcached flood and bans/unbans through
//! deploy/fastnetmon-notify.sh.
//!
//! Prometheus and FastNetMon run only inside the lab's edge namespace (started
//! with `nsenter --net`), listen only on that namespace's loopback, and every
//! phone-home feature is off (FastNetMon's `disable_usage_report = on`;
//! Prometheus has none). Every process and temp dir is removed on drop, also
//! when a test fails; every wait is bounded.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use ampguard_tests::{
    daemon::{ampguard_bin, Daemon},
    lab::{sa, send_udp, Lab, Netns, UdpSink},
    require_root, TempDir,
};
use serde_json::Value;

fn deploy(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy").join(name)
}

/// A temporary directory removed on drop (kept with AMPGUARD_KEEP_TEST_DIRS).
/// A child process killed (SIGTERM, then SIGKILL after 5 s) on drop.
struct Proc {
    child: Child,
    what: &'static str,
    log: PathBuf,
}

impl Proc {
    /// Start `argv` inside `ns` (network namespace only), output to `log`.
    fn spawn_in(ns: &Netns, what: &'static str, argv: &[&str], log: PathBuf) -> Proc {
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{}", ns.name))
            .arg("--")
            .args(argv)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {what}: {e} (run `sudo cargo xtask setup`)"));
        Proc { child, what, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Panics (with its log) if the process has exited.
    fn check_alive(&mut self) {
        if let Ok(Some(st)) = self.child.try_wait() {
            panic!("{} exited with {st}:\n{}", self.what, self.log());
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// GET `url` from inside `ns`: (status, body). Status 0: no answer.
fn get_in(ns: &Netns, url: &str) -> (u16, String) {
    let url = url.to_string();
    ns.enter(move || {
        let agent: ureq::Agent =
            ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(Duration::from_secs(5))).build().into();
        match agent.get(&url).call() {
            Ok(mut r) => (r.status().as_u16(), r.body_mut().read_to_string().unwrap_or_default()),
            Err(_) => (0, String::new()),
        }
    })
    .unwrap()
}

/// A free TCP port on the namespace's loopback (bound and released).
fn free_port(ns: &Netns) -> u16 {
    ns.enter(|| std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()).unwrap()
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

/// Poll `f` every 200 ms until it returns Some, or panic with `what` after `limit`.
fn wait_for<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

// ---------------------------------------------------------------------------
// Prometheus

struct Prometheus {
    ns: Netns,
    port: u16,
    proc: Proc,
}

impl Prometheus {
    /// Debian's prometheus in `ns` on 127.0.0.1:<free port>, scraping every
    /// second with a config derived from deploy/prometheus.yml, the alert rules
    /// next to it, storage in `dir`.
    fn start(ns: &Netns, dir: &Path) -> Prometheus {
        let shipped = std::fs::read_to_string(deploy("prometheus.yml")).unwrap();
        assert!(shipped.contains("targets: [\"127.0.0.1:9470\"]") && shipped.contains("- ampguard-alerts.yml"), "{shipped}");
        let cfg = shipped
            .replace("scrape_interval: 15s", "scrape_interval: 1s")
            .replace("evaluation_interval: 15s", "evaluation_interval: 1s")
            .replace("scrape_interval: 5s", "scrape_interval: 1s")
            .replace("scrape_timeout: 4s", "scrape_timeout: 1s");
        assert_ne!(cfg, shipped, "the shipped intervals changed: update this test");
        std::fs::write(dir.join("prometheus.yml"), cfg).unwrap();
        std::fs::copy(deploy("ampguard-alerts.yml"), dir.join("ampguard-alerts.yml")).unwrap();
        let port = free_port(ns);
        let data = dir.join("data");
        let proc = Proc::spawn_in(
            ns,
            "prometheus",
            &[
                "prometheus",
                &format!("--config.file={}", dir.join("prometheus.yml").display()),
                &format!("--storage.tsdb.path={}", data.display()),
                &format!("--web.listen-address=127.0.0.1:{port}"),
                "--storage.tsdb.retention.time=1h",
                "--log.level=warn",
            ],
            dir.join("prometheus.log"),
        );
        let mut p = Prometheus { ns: ns.clone(), port, proc };
        wait_for(Duration::from_secs(30), "prometheus /-/ready", || {
            p.proc.check_alive();
            (get_in(&p.ns, &format!("http://127.0.0.1:{}/-/ready", p.port)).0 == 200).then_some(())
        });
        p
    }

    fn api(&self, path: &str) -> Value {
        let (st, body) = get_in(&self.ns, &format!("http://127.0.0.1:{}{path}", self.port));
        assert_eq!(st, 200, "prometheus {path}: {body}\n{}", self.proc.log());
        serde_json::from_str(&body).unwrap()
    }

    /// An instant query; the `data.result` vector.
    fn query(&self, q: &str) -> Vec<Value> {
        let v = self.api(&format!("/api/v1/query?query={}", percent_encode(q)));
        assert_eq!(v["status"], "success", "{q}: {v}");
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// The single value of a query returning one sample, if it does.
    fn scalar(&self, q: &str) -> Option<f64> {
        let r = self.query(q);
        (r.len() == 1).then(|| r[0]["value"][1].as_str().unwrap().parse().unwrap())
    }
}

#[test]
fn prometheus_scrapes_the_daemon_and_counts_every_dropped_attack_packet() {
    require_root();
    let lab = Lab::new("prom").expect("lab");
    let d = Daemon::start(&lab, "").expect("daemon");
    let dir = TempDir::new("obs-prom");
    let prom = Prometheus::start(&lab.edge, &dir.0);

    wait_for(Duration::from_secs(20), "up{job=\"ampguard\"} == 1", || (prom.scalar(r#"up{job="ampguard"}"#) == Some(1.0)).then_some(()));
    assert_eq!(prom.scalar(r#"ampguard_interface_attached{job="ampguard",interface="edge0"}"#), Some(1.0));

    // A policy with a TTL under 5 minutes (the near-expiry alert must fire).
    let (st, p) = d.call("POST", "/v1/policies", Some(r#"{"victim": "203.0.113.10/32", "ttl_secs": 200}"#)).unwrap();
    assert_eq!(st, 201, "{p}");
    let id = p["id"].as_str().unwrap().to_string();

    // The attack flows while Prometheus scrapes: 30 bursts of 100 (about 3 s).
    let sink = UdpSink::bind(&lab.edge, sa("203.0.113.10:40001")).unwrap();
    let mut sent = 0;
    for _ in 0..30 {
        sent += send_udp(&lab.wan, sa("198.51.100.7:11211"), sa("203.0.113.10:40001"), 100, 1200).unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(sent, 3000);
    assert_eq!(sink.drain(Duration::from_millis(300), Duration::from_secs(3)), 0, "the attack was dropped");
    // Ordinary traffic to the same victim, for the `no_vector` series.
    send_udp(&lab.wan, sa("198.51.100.7:40000"), sa("203.0.113.10:40002"), 50, 100).unwrap();

    let total = r#"sum(ampguard_packets_total{job="ampguard",vector="memcached",verdict="dropped"})"#;
    let per_policy = format!(
        r#"sum(ampguard_policy_packets_total{{job="ampguard",policy="{id}",victim="203.0.113.10/32",vector="memcached",verdict="dropped"}})"#
    );
    let seen = wait_for(Duration::from_secs(20), "the scrape to catch up with 3000 dropped packets", || {
        let v = prom.scalar(total)?;
        assert!(v <= 3000.0, "Prometheus counts more dropped packets ({v}) than were sent (3000)");
        (v == 3000.0).then_some(v)
    });
    assert_eq!(seen, 3000.0);
    assert_eq!(prom.scalar(&per_policy), Some(3000.0), "{per_policy}");
    assert_eq!(prom.scalar(r#"sum(ampguard_policies{job="ampguard",mode="enforce"})"#), Some(1.0));

    // The shipped rules loaded and evaluate without error against the real series.
    let names = [
        "AmpguardAttackInProgress",
        "AmpguardPolicyNearExpiry",
        "AmpguardDaemonDown",
        "AmpguardXdpDetached",
        "AmpguardPolicyTableNearlyFull",
        "AmpguardStateNotSaved",
    ];
    let rules = wait_for(Duration::from_secs(15), "every rule evaluated", || {
        let v = prom.api("/api/v1/rules");
        let rules: Vec<Value> =
            v["data"]["groups"].as_array()?.iter().flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default()).collect();
        rules.iter().all(|r| r["lastEvaluation"].as_str().is_some_and(|t| !t.starts_with("0001"))).then_some(rules)
    });
    for n in names {
        let r = rules.iter().find(|r| r["name"] == n).unwrap_or_else(|| panic!("rule {n} not loaded: {rules:?}"));
        assert_eq!(r["health"], "ok", "{r}");
    }
    // The near-expiry alert fires for the 200 s policy (no `for:`), with its labels.
    let alert = wait_for(Duration::from_secs(15), "AmpguardPolicyNearExpiry firing", || {
        let v = prom.api("/api/v1/alerts");
        v["data"]["alerts"]
            .as_array()?
            .iter()
            .find(|a| a["labels"]["alertname"] == "AmpguardPolicyNearExpiry" && a["state"] == "firing")
            .cloned()
    });
    assert_eq!(alert["labels"]["policy"], id.as_str(), "{alert}");
    assert_eq!(alert["labels"]["victim"], "203.0.113.10/32", "{alert}");

    // Every Grafana panel's query is valid PromQL over the real series; the
    // panels that must show this lab's state are not empty.
    let dash: Value = serde_json::from_str(&std::fs::read_to_string(deploy("grafana-dashboard.json")).unwrap()).unwrap();
    let panels = dash["panels"].as_array().unwrap();
    let mut empty = Vec::new();
    for p in panels {
        for t in p["targets"].as_array().unwrap() {
            let q = t["expr"].as_str().unwrap().replace("$__rate_interval", "30s").replace("$instance", ".*");
            if prom.query(&q).is_empty() {
                empty.push(format!("{}: {q}", p["title"]));
            }
        }
    }
    // Only the alert and re-attachment panels may be empty: no alert was sent
    // and nothing detached the program in this test.
    assert!(
        empty.iter().all(|e| e.contains("ampguard_alerts_total") || e.contains("ampguard_xdp_reattachments_total")),
        "Grafana panels with no data: {empty:#?}"
    );
    assert!(panels.len() >= 9 && dash["schemaVersion"] == 39, "{dash}");
}

// ---------------------------------------------------------------------------
// FastNetMon

#[test]
fn fastnetmon_detects_the_flood_and_its_notify_script_bans_and_unbans() {
    require_root();
    let ban_time = 10;
    let lab = Lab::new("fnm").expect("lab");
    let d = Daemon::start(&lab, "").expect("daemon");
    let dir = TempDir::new("obs-fnm");
    let t = &dir.0;
    std::fs::write(t.join("networks_list"), "203.0.113.0/24\n").unwrap();
    std::fs::write(t.join("networks_whitelist"), "").unwrap();

    // The shipped wrapper, pointed at the built binary and this daemon's token;
    // a logger in front of it records every call FastNetMon makes.
    let shipped = std::fs::read_to_string(deploy("fastnetmon-notify.sh")).unwrap();
    let wrapper = shipped
        .replace("/usr/local/bin/ampguard", ampguard_bin().to_str().unwrap())
        .replace("/etc/ampguard/token", d.token_file.to_str().unwrap());
    assert_ne!(wrapper, shipped);
    let calls = t.join("notify-calls.log");
    write_exec(&t.join("ampguard-fastnetmon-notify"), &wrapper);
    write_exec(
        &t.join("notify-logger"),
        &format!(
            "#!/bin/sh\necho \"$(date +%s.%N) $*\" >> {calls}\n\"{wrapper}\" \"$@\" >> {calls} 2>&1\necho \"exit $?\" >> {calls}\n",
            calls = calls.display(),
            wrapper = t.join("ampguard-fastnetmon-notify").display()
        ),
    );
    std::fs::write(t.join("fastnetmon.conf"), ampguard_tests::fastnetmon::conf(t, &t.join("notify-logger"), ban_time)).unwrap();

    let conf = t.join("fastnetmon.conf");
    let log_file = t.join("fastnetmon.log");
    let mut fnm = Proc::spawn_in(
        &lab.edge,
        "fastnetmon",
        &["fastnetmon", "--configuration_file", conf.to_str().unwrap(), "--log_file", log_file.to_str().unwrap(), "--disable_pid_logic"],
        t.join("fastnetmon.out"),
    );
    let fnm_log = || {
        format!(
            "{}\n{}",
            std::fs::read_to_string(&log_file).unwrap_or_default(),
            std::fs::read_to_string(t.join("fastnetmon.out")).unwrap_or_default()
        )
    };
    // Ready when its own metrics endpoint (on the namespace's loopback) answers.
    wait_for(Duration::from_secs(30), "FastNetMon's metrics endpoint", || {
        fnm.check_alive();
        (get_in(&lab.edge, "http://127.0.0.1:9209/metrics").0 == 200).then_some(())
    });
    std::thread::sleep(Duration::from_secs(2)); // capture threads start after the endpoint

    // The flood: memcached replies from the wan side at about 5,000 packets/s
    // (bursts of 50 every 10 ms) until the ban lands, at most 30 s.
    let sink = UdpSink::bind(&lab.edge, sa("203.0.113.10:40001")).unwrap();
    let start = Instant::now();
    let mut sent = 0;
    let policy = loop {
        for _ in 0..20 {
            sent += send_udp(&lab.wan, sa("198.51.100.7:11211"), sa("203.0.113.10:40001"), 50, 1200).unwrap();
            std::thread::sleep(Duration::from_millis(10));
        }
        let (_, list) = d.call("GET", "/v1/policies", None).unwrap();
        if let Some(p) = list["policies"].as_array().and_then(|a| a.first()).cloned() {
            break p;
        }
        fnm.check_alive();
        if start.elapsed() > Duration::from_secs(30) {
            panic!(
                "no ban after 30 s ({sent} packets sent); notify calls:\n{}\nFastNetMon:\n{}",
                std::fs::read_to_string(&calls).unwrap_or_default(),
                fnm_log()
            );
        }
    };
    let detected_after = start.elapsed();
    let _ = sink.drain(Duration::from_millis(200), Duration::from_secs(3));
    assert_eq!(policy["victim"], "203.0.113.10/32", "{policy}");
    assert_eq!(policy["source"], "fastnetmon_script", "{policy}");
    assert_eq!(policy["rules"]["memcached"]["action"], "drop", "{policy}");
    eprintln!("FastNetMon banned 203.0.113.10 after {detected_after:?} ({sent} attack packets sent)");

    // Now the flood dies at the edge: exactly what was sent is dropped.
    let id = policy["id"].as_str().unwrap().to_string();
    let before =
        d.call("GET", &format!("/v1/policies/{id}"), None).unwrap().1["counters"]["memcached"]["dropped"]["packets"].as_u64().unwrap_or(0);
    let mut sent2 = 0;
    for _ in 0..20 {
        sent2 += send_udp(&lab.wan, sa("198.51.100.7:11211"), sa("203.0.113.10:40001"), 50, 1200).unwrap();
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(sink.drain(Duration::from_millis(300), Duration::from_secs(3)), 0, "banned: the attack is dropped");
    // (Within a second or two of the ban: far inside ban_time.)
    let (st, shown) = d.call("GET", &format!("/v1/policies/{id}"), None).unwrap();
    assert_eq!(st, 200, "the ban is still on: {shown}");
    let after = shown["counters"]["memcached"]["dropped"]["packets"].as_u64().unwrap();
    assert_eq!(after - before, sent2 as u64, "every attack packet sent during the ban was dropped: {shown}");

    // attack_details follows the ban (the packet dump), then after ban_time the unban removes the policy.
    let unbanned_in = wait_for(Duration::from_secs(ban_time as u64 + 90), "FastNetMon's unban to remove the policy", || {
        fnm.check_alive();
        let (_, list) = d.call("GET", "/v1/policies", None).unwrap();
        list["policies"].as_array().is_some_and(|a| a.is_empty()).then(|| start.elapsed())
    });
    let log = std::fs::read_to_string(&calls).unwrap();
    eprintln!("unbanned {unbanned_in:?} after the flood started; notify calls:\n{log}");
    let actions: Vec<&str> =
        log.lines().filter(|l| l.contains("203.0.113.10 incoming")).filter_map(|l| l.split_whitespace().last()).collect();
    assert_eq!(actions.first(), Some(&"ban"), "{log}");
    assert_eq!(actions.last(), Some(&"unban"), "{log}");
    assert!(!log.lines().any(|l| l.starts_with("exit ") && l != "exit 0"), "a notify call failed:\n{log}");
    let (_, alerts) = d.call_with("GET", "/metrics", None, None).unwrap();
    let m = alerts.as_str().unwrap();
    assert!(
        m.lines().any(|l| l.starts_with(r#"ampguard_alerts_total{action="unban",result="removed",source="fastnetmon_script"}"#)),
        "{m}"
    );

    // Unbanned: traffic flows again.
    assert_eq!(send_udp(&lab.wan, sa("198.51.100.7:11211"), sa("203.0.113.10:40001"), 100, 1200).unwrap(), 100);
    assert_eq!(sink.drain(Duration::from_millis(300), Duration::from_secs(3)), 100, "after the unban");
    drop(fnm);
}

fn write_exec(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}
