//! The Debian package `cargo xtask deb` builds, on this machine: lintian finds
//! no error (and no warning without an override that says why), `dpkg -i`
//! installs every file with its mode and creates the state directory (0700)
//! and a token (0600), the installed /usr/sbin/ampguard passes a daemon test in
//! the lab, a reinstall and an upgrade keep an edited config, the token and the
//! state, `dpkg -r` leaves the config and state, and `dpkg -P` removes them.
//!
//! The package is the one AMPGUARD_DEB names (`cargo xtask test` builds it and
//! sets it). The test refuses to run where an ampguard package or an
//! installation is already present, and purges what it installed at the end,
//! even when it fails.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

use ampguard_tests::{require_root, TempDir};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e} (run `sudo cargo xtask setup`)"))
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn ok(program: &str, args: &[&str]) -> String {
    let o = run(program, args);
    assert!(o.status.success(), "{program} {}: {}\n{}", args.join(" "), o.status, text(&o));
    text(&o)
}

fn mode(p: &str) -> u32 {
    std::fs::metadata(p).unwrap_or_else(|e| panic!("{p}: {e}")).permissions().mode() & 0o7777
}

fn read(p: &str) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{p}: {e}"))
}

/// dpkg's status of the package: "install ok installed", "deinstall ok
/// config-files", or "" when dpkg knows nothing of it.
fn status() -> String {
    let o = run("dpkg-query", &["-W", "-f=${Status}", "ampguard"]);
    if o.status.success() {
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    } else {
        String::new()
    }
}

/// What the test would overwrite or purge: it runs only where none exists.
const OURS: &[&str] =
    &["/usr/sbin/ampguard", "/etc/ampguard", "/var/lib/ampguard", "/sys/fs/bpf/ampguard", "/lib/systemd/system/ampguard.service"];

/// Purges the package on drop, so a failing assertion leaves the machine as it was.
struct Purge;

impl Drop for Purge {
    fn drop(&mut self) {
        let o = run("dpkg", &["--purge", "ampguard"]);
        if !o.status.success() {
            eprintln!("dpkg --purge ampguard: {}", text(&o));
        }
    }
}

fn deb() -> PathBuf {
    let p = std::env::var_os("AMPGUARD_DEB").map(PathBuf::from).unwrap_or_else(|| {
        panic!(
            "AMPGUARD_DEB is not set: `sudo cargo xtask test` builds the package and sets it; by hand, `sudo cargo xtask deb`, then \
             AMPGUARD_DEB=target/debian/ampguard_<version>_amd64.deb cargo test -p ampguard-tests --test deb"
        )
    });
    assert!(p.is_file(), "AMPGUARD_DEB={} is not a file", p.display());
    p
}

/// The daemon test binary cargo built beside this one (target/debug/deps/daemon-HASH).
fn daemon_test_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    let mut found: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(deps)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            name.strip_prefix("daemon-").is_some_and(|h| h.len() == 16 && h.chars().all(|c| c.is_ascii_hexdigit()))
                && std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .map(|p| (std::fs::metadata(&p).unwrap().modified().unwrap(), p))
        .collect();
    found.sort();
    found.pop().map(|(_, p)| p).unwrap_or_else(|| {
        panic!("no daemon test binary in {}: build it with `cargo test -p ampguard-tests --no-run` (cargo xtask test does)", deps.display())
    })
}

/// deploy/ampguard.toml with the packaged `interfaces = []` (xtask/src/deb.rs):
/// every other line is deploy's.
fn assert_is_the_packaged_config(installed: &str) {
    let deploy = read(root().join("deploy/ampguard.toml").to_str().unwrap());
    assert!(installed.lines().any(|l| l == "interfaces = []"), "the packaged config protects no interface:\n{installed}");
    let kept: Vec<&str> = installed.lines().filter(|l| !l.starts_with("# Packaged:") && !l.starts_with("interfaces =")).collect();
    let orig: Vec<&str> = deploy.lines().filter(|l| !l.starts_with("interfaces =")).collect();
    assert_eq!(kept, orig, "the packaged config is deploy/ampguard.toml but for its interfaces");
}

#[test]
fn the_debian_package_installs_runs_the_lab_upgrades_keeping_config_and_token_and_purges() {
    require_root();
    let deb = deb();
    let deb_s = deb.to_str().unwrap();
    let st = status();
    assert!(st.is_empty() || st.ends_with("not-installed"), "an ampguard package is already known to dpkg ({st}): refusing to touch it");
    for p in OURS {
        assert!(std::fs::symlink_metadata(p).is_err(), "{p} exists: ampguard is installed here; this test would overwrite or purge it");
    }

    // lintian: no error, and every warning overridden with a reason
    // (deploy/debian/lintian-overrides, installed where lintian reads it).
    let o = run("lintian", &["--fail-on", "error,warning", "--tag-display-limit", "0", deb_s]);
    let lint = text(&o);
    assert!(o.status.success(), "lintian {deb_s}:\n{lint}");
    assert!(!lint.lines().any(|l| l.starts_with("E:") || l.starts_with("W:")), "lintian:\n{lint}");
    let overrides = read(root().join("deploy/debian/lintian-overrides").to_str().unwrap());
    let mut reason = false;
    for l in overrides.lines() {
        if l.starts_with('#') {
            reason = true;
        } else if !l.trim().is_empty() {
            assert!(reason, "lintian override {l:?} has no comment above it saying why");
            reason = false;
        }
    }

    let version = ok("dpkg-deb", &["-f", deb_s, "Version"]).trim().to_string();
    let _purge = Purge;
    let out = ok("dpkg", &["-i", deb_s]);
    assert_eq!(status(), "install ok installed");
    assert!(out.contains("not started") && out.contains("systemctl enable --now ampguard"), "postinst says what to do next:\n{out}");

    // Files and modes.
    assert_eq!(mode("/usr/sbin/ampguard"), 0o755);
    let v = ok("/usr/sbin/ampguard", &["--version"]);
    assert!(v.starts_with(&format!("ampguard {version} (commit ")), "{v}");
    assert_eq!(mode("/usr/sbin/ampguard-fastnetmon-notify"), 0o755);
    let notify = read("/usr/sbin/ampguard-fastnetmon-notify");
    assert!(notify.contains("/usr/sbin/ampguard alert fastnetmon -- \"$@\"") && !notify.contains("/usr/local"), "{notify}");
    let unit = read("/lib/systemd/system/ampguard.service");
    assert!(unit.lines().any(|l| l == "ExecStart=/usr/sbin/ampguard run --config /etc/ampguard/ampguard.toml"), "{unit}");
    assert_eq!(
        unit,
        read(root().join("deploy/ampguard.service").to_str().unwrap()).replace("/usr/local/bin/ampguard", "/usr/sbin/ampguard")
    );
    ok("systemd-analyze", &["verify", "/lib/systemd/system/ampguard.service"]);
    for f in ["prometheus.yml", "ampguard-alerts.yml", "grafana-dashboard.json"] {
        assert_eq!(mode(&format!("/usr/share/ampguard/{f}")), 0o644, "{f}");
        assert_eq!(read(&format!("/usr/share/ampguard/{f}")), read(root().join("deploy").join(f).to_str().unwrap()), "{f}");
    }
    for f in ["copyright", "changelog.gz"] {
        assert_eq!(mode(&format!("/usr/share/doc/ampguard/{f}")), 0o644, "{f}");
    }
    // cargo-deb gzips man pages and changelogs only.
    assert_eq!(read("/usr/share/doc/ampguard/FASTNETMON.md"), read(root().join("deploy/FASTNETMON.md").to_str().unwrap()));
    for f in [
        "/usr/share/bash-completion/completions/ampguard",
        "/usr/share/zsh/vendor-completions/_ampguard",
        "/usr/share/fish/vendor_completions.d/ampguard.fish",
        "/usr/share/man/man1/ampguard.1.gz",
        "/usr/share/man/man1/ampguard-policy.1.gz",
    ] {
        assert_eq!(mode(f), 0o644, "{f}");
    }
    let complete = "source /usr/share/bash-completion/completions/ampguard; COMP_WORDS=(ampguard pol); COMP_CWORD=1; \
                    COMP_LINE=\"${COMP_WORDS[*]}\"; COMP_POINT=${#COMP_LINE}; _ampguard ampguard pol ampguard; echo \"${COMPREPLY[*]}\"";
    assert_eq!(ok("bash", &["-c", complete]).trim(), "policy");
    assert!(read("/usr/share/zsh/vendor-completions/_ampguard").starts_with("#compdef ampguard"));
    let man = Command::new("man").args(["-l", "/usr/share/man/man1/ampguard.1.gz"]).env("MANPAGER", "cat").output().unwrap();
    assert!(String::from_utf8_lossy(&man.stdout).contains("ampguard-policy(1)"), "{}", text(&man));

    // The config is a conffile, deploy's with no interface; the token and state are the postinst's.
    assert!(ok("dpkg-query", &["-W", "-f=${Conffiles}", "ampguard"]).contains("/etc/ampguard/ampguard.toml"));
    let config = read("/etc/ampguard/ampguard.toml");
    assert_is_the_packaged_config(&config);
    assert_eq!(mode("/etc/ampguard"), 0o700);
    assert_eq!(mode("/etc/ampguard/token"), 0o600);
    let token = read("/etc/ampguard/token");
    assert!(token.len() == 65 && token.ends_with('\n') && token.trim().chars().all(|c| c.is_ascii_hexdigit()), "token {token:?}");
    assert_eq!(mode("/var/lib/ampguard"), 0o700);
    // Unconfigured, the daemon refuses to start and attaches to nothing.
    let o = run("/usr/sbin/ampguard", &["run", "--config", "/etc/ampguard/ampguard.toml"]);
    assert!(!o.status.success() && text(&o).contains("no interface to protect"), "{}", text(&o));
    assert!(std::fs::symlink_metadata("/sys/fs/bpf/ampguard").is_err(), "nothing pinned");

    // The installed binary passes the lab's daemon test: the API, the CLI,
    // XDP dropping memcached and limiting NTP, metrics.
    let test = daemon_test_binary();
    let name = "api_policy_drops_the_attack_passes_the_rest_and_delete_restores";
    let o = Command::new(&test)
        .args([name, "--exact", "--nocapture", "--test-threads", "1"])
        .env("AMPGUARD_BIN", "/usr/sbin/ampguard")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let out = text(&o);
    assert!(
        o.status.success()
            && out.contains("test result: ok. 1 passed")
            && out.contains("ampguard binary from AMPGUARD_BIN: /usr/sbin/ampguard"),
        "{} {name} against /usr/sbin/ampguard:\n{out}",
        test.display()
    );

    // The operator edits the config and the daemon keeps state; a reinstall
    // and an upgrade keep both, and the token (no conffile prompt: stdin is null).
    let edited = config.replace("interfaces = []", "interfaces = [\"eth7\"]") + "# edited by the operator\n";
    std::fs::write("/etc/ampguard/ampguard.toml", &edited).unwrap();
    std::fs::write("/var/lib/ampguard/state.json", "{\"kept\": true}\n").unwrap();
    ok("dpkg", &["-i", deb_s]);
    let dir = TempDir::new("deb-upgrade");
    let tree = dir.0.join("tree");
    let tree_s = tree.to_str().unwrap();
    ok("dpkg-deb", &["-R", deb_s, tree_s]);
    let control = tree.join("DEBIAN/control");
    let newer = format!("{version}+upgrade1");
    std::fs::write(&control, read(control.to_str().unwrap()).replace(&format!("Version: {version}\n"), &format!("Version: {newer}\n")))
        .unwrap();
    let upgrade = dir.0.join("upgrade.deb");
    ok("dpkg-deb", &["--root-owner-group", "-b", tree_s, upgrade.to_str().unwrap()]);
    let out = ok("dpkg", &["-i", upgrade.to_str().unwrap()]);
    assert!(!out.contains("not started"), "an upgrade is not a first install:\n{out}");
    assert_eq!(ok("dpkg-query", &["-W", "-f=${Version}", "ampguard"]), newer);
    assert_eq!(read("/etc/ampguard/ampguard.toml"), edited);
    assert_eq!(read("/etc/ampguard/token"), token);
    assert_eq!(mode("/etc/ampguard/token"), 0o600);
    assert_eq!(read("/var/lib/ampguard/state.json"), "{\"kept\": true}\n");
    assert!(!Path::new("/etc/ampguard/ampguard.toml.dpkg-new").exists() && !Path::new("/etc/ampguard/ampguard.toml.dpkg-dist").exists());

    // Remove: the program goes, the config, token and state stay.
    ok("dpkg", &["-r", "ampguard"]);
    assert_eq!(status(), "deinstall ok config-files");
    assert!(!Path::new("/usr/sbin/ampguard").exists() && !Path::new("/lib/systemd/system/ampguard.service").exists());
    assert_eq!(read("/etc/ampguard/ampguard.toml"), edited);
    assert_eq!(read("/etc/ampguard/token"), token);
    assert_eq!(read("/var/lib/ampguard/state.json"), "{\"kept\": true}\n");

    // Purge: nothing of it is left.
    ok("dpkg", &["-P", "ampguard"]);
    let st = status();
    assert!(st.is_empty() || st.ends_with("not-installed"), "dpkg forgets it: {st}");
    for p in OURS {
        assert!(std::fs::symlink_metadata(p).is_err(), "{p} is left after purge");
    }
}
