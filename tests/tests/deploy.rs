//! The deploy/ kit: Prometheus config and alert rules pass promtool (with the
//! rules' unit tests), the systemd unit passes `systemd-analyze verify` and its
//! offline security check, the daemon works in the lab with exactly the unit's
//! capability bounding set and only system calls its SystemCallFilter allows,
//! and `cargo xtask install --dest-dir` stages every file with the right modes
//! without overwriting an operator's config or token.

use std::{
    collections::BTreeSet,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use ampguard_tests::{
    daemon::{ampguard_bin, Daemon},
    lab::{deliver, Lab},
    require_root, TempDir,
};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn deploy(name: &str) -> PathBuf {
    root().join("deploy").join(name)
}

/// A temporary directory removed on drop (kept with AMPGUARD_KEEP_TEST_DIRS).
fn run(program: &str, args: &[&str], cwd: &Path) -> Output {
    Command::new(program)
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e} (run `sudo cargo xtask setup`)"))
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[test]
fn promtool_accepts_the_prometheus_config_and_alert_rules_and_their_unit_tests_pass() {
    require_root();
    let dir = root().join("deploy");
    for args in [
        &["check", "config", "prometheus.yml"][..],
        &["check", "rules", "ampguard-alerts.yml"],
        &["test", "rules", "ampguard-alerts.test.yml"],
    ] {
        let o = run("promtool", args, &dir);
        assert!(o.status.success(), "promtool {}:\n{}", args.join(" "), text(&o));
    }
    let o = run("promtool", &["check", "config", "prometheus.yml"], &dir);
    assert!(text(&o).contains("1 rule files found"), "{}", text(&o));
    let o = run("promtool", &["check", "rules", "ampguard-alerts.yml"], &dir);
    assert!(text(&o).contains("6 rules found"), "{}", text(&o));
}

/// The shipped unit with ExecStart naming the built binary (systemd-analyze
/// verify checks that the binary exists).
fn unit_for_built_binary(dir: &Path) -> PathBuf {
    let unit = std::fs::read_to_string(deploy("ampguard.service")).unwrap();
    let exec = "ExecStart=/usr/local/bin/ampguard run --config /etc/ampguard/ampguard.toml";
    assert!(unit.lines().any(|l| l == exec), "the unit runs {exec}");
    let p = dir.join("ampguard.service");
    std::fs::write(&p, unit.replace("/usr/local/bin/ampguard", ampguard_bin().to_str().unwrap())).unwrap();
    p
}

fn unit_value(key: &str) -> String {
    let unit = std::fs::read_to_string(deploy("ampguard.service")).unwrap();
    let prefix = format!("{key}=");
    unit.lines().find_map(|l| l.strip_prefix(&prefix)).unwrap_or_else(|| panic!("the unit has no {key}=")).to_string()
}

#[test]
fn systemd_analyze_verifies_the_unit_without_warnings_and_rates_it_ok() {
    require_root();
    let dir = TempDir::new("deploy-verify");
    let unit = unit_for_built_binary(&dir.0);
    let o = run("systemd-analyze", &["verify", unit.to_str().unwrap()], &dir.0);
    // Unknown keys are only warnings (exit 0): any output at all is a failure.
    assert!(o.status.success() && text(&o).trim().is_empty(), "systemd-analyze verify:\n{}", text(&o));

    for (k, v) in [
        ("Restart", "on-failure"),
        ("KillSignal", "SIGTERM"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ReadWritePaths", "/var/lib/ampguard /sys/fs/bpf"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6 AF_NETLINK"),
        ("SystemCallArchitectures", "native"),
        ("CapabilityBoundingSet", "CAP_BPF CAP_NET_ADMIN CAP_PERFMON"),
    ] {
        assert_eq!(unit_value(k), v, "{k}");
    }

    let o = run("systemd-analyze", &["security", "--offline=true", "--no-pager", unit.to_str().unwrap()], &dir.0);
    let out = text(&o);
    let level: f64 = out
        .lines()
        .find_map(|l| l.split("Overall exposure level for ampguard.service: ").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{out}"));
    assert!(level <= 3.0, "exposure {level} (was 2.1 when written; a root service with CAP_BPF/NET_ADMIN cannot go much lower):\n{out}");
}

/// `ampguard run` started in the lab's edge namespace the way systemd would
/// run the unit: root with the unit's capability bounding set, no new
/// privileges; optionally under strace. SIGKILL on drop.
struct Restricted {
    child: Child,
    traced: bool,
}

impl Restricted {
    fn start(d: &Daemon, caps: &[&str], strace_to: Option<&Path>) -> Restricted {
        let bounding = std::iter::once("-all".to_string())
            .chain(caps.iter().map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase())))
            .collect::<Vec<_>>()
            .join(",");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(d.dir.join("daemon.log")).unwrap();
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/var/run/netns/{}", d.ns.name)).args([
            "setpriv",
            "--no-new-privs",
            "--inh-caps=-all",
            &format!("--bounding-set={bounding}"),
            "--",
        ]);
        if let Some(p) = strace_to {
            c.args(["strace", "-f", "-qq", "-o"]).arg(p).arg("--");
        }
        c.arg(ampguard_bin()).args(["run", "--config"]).arg(&d.config).stdin(Stdio::null()).stdout(log.try_clone().unwrap()).stderr(log);
        Restricted { child: c.spawn().expect("nsenter setpriv ampguard run"), traced: strace_to.is_some() }
    }

    /// The daemon's pid: nsenter and setpriv exec, strace forks it.
    fn daemon_pid(&self) -> Option<i32> {
        let pid = self.child.id();
        if !self.traced {
            return Some(pid as i32);
        }
        let kids = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?;
        kids.split_whitespace().next()?.parse().ok()
    }

    /// Wait for the API (true), or for the process to exit (false); bounded.
    fn ready(&mut self, d: &Daemon) -> bool {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok((200, _)) = d.call("GET", "/healthz", None) {
                return true;
            }
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("restricted daemon neither answered nor exited within 30 s:\n{}", d.log());
    }

    fn term(&mut self) {
        let pid = self.daemon_pid().expect("the daemon runs");
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("the daemon did not exit within 10 s of SIGTERM");
    }
}

impl Drop for Restricted {
    fn drop(&mut self) {
        // The traced daemon first: killing strace alone would leave it running.
        if self.traced {
            if let Some(pid) = self.daemon_pid() {
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn detach(d: &Daemon) {
    let o = Command::new(ampguard_bin()).args(["detach", "--pin-dir"]).arg(&d.pin_dir).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
}

/// Every system call name in an `strace -f -o` log.
fn syscalls_in(log: &str) -> BTreeSet<String> {
    log.lines()
        .filter_map(|l| {
            let rest = l.split_once(' ')?.1.trim_start();
            let name: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            (!name.is_empty() && rest[name.len()..].starts_with('(')).then_some(name)
        })
        .collect()
}

/// The system calls `SystemCallFilter=` allows: groups expanded by systemd-analyze.
fn allowed_syscalls(filter: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut todo: Vec<String> = filter.split_whitespace().map(str::to_string).collect();
    let mut seen = BTreeSet::new();
    while let Some(item) = todo.pop() {
        if !item.starts_with('@') {
            out.insert(item);
            continue;
        }
        if !seen.insert(item.clone()) {
            continue;
        }
        let o = run("systemd-analyze", &["syscall-filter", "--no-pager", &item], Path::new("/"));
        assert!(o.status.success(), "{}", text(&o));
        for l in String::from_utf8_lossy(&o.stdout).lines().skip(1) {
            let t = l.trim();
            if !t.is_empty() && !t.starts_with('#') {
                todo.push(t.to_string());
            }
        }
    }
    out
}

#[test]
fn the_daemon_works_with_only_the_units_capabilities_and_system_calls() {
    require_root();
    let lab = Lab::new("caps").expect("lab");
    // The harness writes the config; its unrestricted daemon is replaced.
    let mut d = Daemon::start(&lab, "").expect("daemon");
    d.kill9();
    detach(&d);
    let caps: Vec<String> = unit_value("CapabilityBoundingSet").split_whitespace().map(str::to_string).collect();
    let caps: Vec<&str> = caps.iter().map(String::as_str).collect();

    // Without CAP_PERFMON the verifier refuses the program: the unit needs it.
    let without: Vec<&str> = caps.iter().copied().filter(|c| *c != "CAP_PERFMON").collect();
    let mut r = Restricted::start(&d, &without, None);
    assert!(!r.ready(&d), "the daemon started without CAP_PERFMON: drop it from the unit");
    drop(r);
    assert!(d.log().contains("Permission denied") || d.log().contains("Operation not permitted"), "{}", d.log());
    detach(&d);

    // With the unit's bounding set, fresh start (under strace), enforcing.
    let dir = TempDir::new("deploy-caps");
    let trace = dir.0.join("strace.log");
    let mut r = Restricted::start(&d, &caps, Some(&trace));
    assert!(r.ready(&d), "the daemon did not start with {caps:?}:\n{}", d.log());
    let (st, p) = d.call("POST", "/v1/policies", Some(r#"{"victim": "203.0.113.10"}"#)).unwrap();
    assert_eq!(st, 201, "{p}");
    assert_eq!(deliver(&lab, "198.51.100.7:11211", "203.0.113.10:40001", 200), 0, "memcached dropped");
    let (st, m) = d.call_with("GET", "/metrics", None, None).unwrap();
    assert_eq!(st, 200);
    assert!(m.as_str().unwrap().contains(r#"ampguard_interface_attached{interface="edge0",mode="native"} 1"#), "{m}");
    r.term();
    drop(r);
    // SIGTERM left the program enforcing.
    assert_eq!(deliver(&lab, "198.51.100.7:11211", "203.0.113.10:40001", 200), 0, "still dropped after SIGTERM");

    // Restart with the same set: the swap into the pinned link works too.
    let mut r = Restricted::start(&d, &caps, Some(&dir.0.join("strace2.log")));
    assert!(r.ready(&d), "the restricted restart failed:\n{}", d.log());
    assert!(d.log().contains("no gap"), "the restart swapped into the pinned link:\n{}", d.log());
    assert_eq!(deliver(&lab, "198.51.100.7:11211", "203.0.113.10:40001", 200), 0);
    assert_eq!(deliver(&lab, "198.51.100.7:40000", "203.0.113.10:40002", 100), 100, "ordinary traffic passes");
    let out = d.cli(&["status"], None).unwrap();
    assert!(out.status.success(), "{}", text(&out));
    r.term();
    drop(r);

    // Every system call the daemon made (start, API, SIGTERM, restart) is in
    // the unit's SystemCallFilter, which is otherwise only enforced by systemd.
    let allowed = allowed_syscalls(&unit_value("SystemCallFilter"));
    let mut used = syscalls_in(&std::fs::read_to_string(&trace).unwrap());
    used.extend(syscalls_in(&std::fs::read_to_string(dir.0.join("strace2.log")).unwrap()));
    assert!(used.contains("bpf") && used.len() > 20, "strace saw {used:?}");
    let outside: Vec<&String> = used.iter().filter(|s| !allowed.contains(*s)).collect();
    assert!(outside.is_empty(), "system calls outside SystemCallFilter={}: {outside:?}", unit_value("SystemCallFilter"));
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).permissions().mode() & 0o7777
}

/// `cargo xtask install` runs the xtask binary; cargo's lock on target/ is held
/// by this test run, so xtask is built in its own target directory.
fn xtask_install(dest: &Path, target: &Path) -> Output {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    Command::new(cargo)
        .current_dir(root())
        .env("CARGO_TARGET_DIR", target)
        .args(["run", "--quiet", "-p", "xtask", "--", "install", "--dest-dir"])
        .arg(dest)
        .arg("--bin")
        .arg(ampguard_bin())
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn xtask_install_stages_every_file_with_its_mode_and_never_overwrites_config_or_token() {
    require_root();
    let dir = TempDir::new("deploy-install");
    let dest = dir.0.join("root");
    // A stable place for xtask's own build, so later runs are quick.
    let target = root().join("target/xtask-install-test");

    let o = xtask_install(&dest, &target);
    let out = text(&o);
    assert!(o.status.success(), "cargo xtask install --dest-dir:\n{out}");
    for f in ["usr/local/bin/ampguard", "usr/local/bin/ampguard-fastnetmon-notify"] {
        assert_eq!(mode(&dest.join(f)), 0o755, "{f}");
    }
    assert_eq!(std::fs::read(dest.join("usr/local/bin/ampguard")).unwrap(), std::fs::read(ampguard_bin()).unwrap());
    let notify = std::fs::read_to_string(dest.join("usr/local/bin/ampguard-fastnetmon-notify")).unwrap();
    assert!(notify.contains("/usr/local/bin/ampguard alert fastnetmon -- \"$@\""), "{notify}");
    assert_eq!(mode(&dest.join("etc/systemd/system/ampguard.service")), 0o644);
    assert_eq!(
        std::fs::read_to_string(dest.join("etc/systemd/system/ampguard.service")).unwrap(),
        std::fs::read_to_string(deploy("ampguard.service")).unwrap()
    );
    for f in ["prometheus.yml", "ampguard-alerts.yml", "grafana-dashboard.json", "FASTNETMON.md"] {
        assert_eq!(mode(&dest.join("usr/local/share/ampguard").join(f)), 0o644, "{f}");
    }
    assert_eq!(mode(&dest.join("etc/ampguard")), 0o700);
    assert_eq!(mode(&dest.join("var/lib/ampguard")), 0o700);
    // Completions where each shell looks for them, and man pages.
    let share = dest.join("usr/local/share");
    for f in [
        "bash-completion/completions/ampguard",
        "zsh/site-functions/_ampguard",
        "fish/vendor_completions.d/ampguard.fish",
        "man/man1/ampguard.1",
        "man/man1/ampguard-policy.1",
        "man/man1/ampguard-completions.1",
    ] {
        assert_eq!(mode(&share.join(f)), 0o644, "{f}");
    }
    assert!(std::fs::read_to_string(share.join("zsh/site-functions/_ampguard")).unwrap().starts_with("#compdef ampguard"));
    assert!(std::fs::read_to_string(share.join("fish/vendor_completions.d/ampguard.fish")).unwrap().contains("complete -c ampguard"));
    // Bash, sourcing the installed script, completes `ampguard pol` and `ampguard policy a`.
    let bash = share.join("bash-completion/completions/ampguard");
    let complete = |words: &str| {
        let script = format!(
            "source {}; COMP_WORDS=({words}); COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1)); COMP_LINE=\"${{COMP_WORDS[*]}}\"; COMP_POINT=${{#COMP_LINE}}; _ampguard ampguard \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"; echo \"${{COMPREPLY[*]}}\"",
            bash.display()
        );
        let o = run("bash", &["-c", &script], &root());
        assert!(o.status.success(), "bash completion: {}", text(&o));
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    assert_eq!(complete("ampguard pol"), "policy");
    assert_eq!(complete("ampguard policy a"), "add");
    assert_eq!(complete("ampguard completions f"), "fish");
    // man renders the installed page.
    let man = Command::new("man")
        .arg("-l")
        .arg(share.join("man/man1/ampguard.1"))
        .env("MANPAGER", "cat")
        .env("MANWIDTH", "100")
        .output()
        .expect("man");
    let page = String::from_utf8_lossy(&man.stdout);
    assert!(
        man.status.success() && page.contains("ampguard-policy(1)") && page.contains("Stops reflection"),
        "man -l:\n{page}{}",
        String::from_utf8_lossy(&man.stderr)
    );
    assert_eq!(mode(&dest.join("etc/ampguard/ampguard.toml")), 0o600);
    assert_eq!(
        std::fs::read_to_string(dest.join("etc/ampguard/ampguard.toml")).unwrap(),
        std::fs::read_to_string(deploy("ampguard.toml")).unwrap()
    );
    let token = std::fs::read_to_string(dest.join("etc/ampguard/token")).unwrap();
    assert_eq!(mode(&dest.join("etc/ampguard/token")), 0o600);
    assert!(token.trim().len() >= 32 && token.trim().chars().all(|c| c.is_ascii_hexdigit()), "token {token:?}");
    for what in ["systemctl daemon-reload", "systemctl enable --now ampguard", "edit /etc/ampguard/ampguard.toml"] {
        assert!(out.contains(what), "install does not say {what:?}:\n{out}");
    }
    // Nothing outside the staging root: the paths it reports are all under it.
    for l in out.lines().filter(|l| l.starts_with("installed ") || l.starts_with("created ")) {
        assert!(l.contains(dest.to_str().unwrap()), "{l}");
    }

    // The operator edits the config; a second run (an upgrade) keeps it and the token.
    std::fs::write(dest.join("etc/ampguard/ampguard.toml"), "interfaces = [\"eth7\"]\n").unwrap();
    let o = xtask_install(&dest, &target);
    let out = text(&o);
    assert!(o.status.success(), "second run:\n{out}");
    assert_eq!(std::fs::read_to_string(dest.join("etc/ampguard/ampguard.toml")).unwrap(), "interfaces = [\"eth7\"]\n");
    assert_eq!(std::fs::read_to_string(dest.join("etc/ampguard/token")).unwrap(), token);
    assert_eq!(mode(&dest.join("etc/ampguard/token")), 0o600);
    assert!(out.contains("not overwritten"), "{out}");
    assert_eq!(mode(&dest.join("usr/local/bin/ampguard")), 0o755);
    assert!(
        !std::fs::read_dir(dest.join("usr/local/bin")).unwrap().any(|e| e.unwrap().file_name().to_string_lossy().starts_with('.')),
        "no temp files left"
    );
}
