//! Runs the real `ampguard` binary as a daemon inside a lab's edge namespace,
//! and talks to its API and CLI from inside that namespace.
//!
//! The daemon is started with `nsenter --net` (network namespace only), not
//! `ip netns exec`: the latter also gives the process a private mount
//! namespace with a fresh /sys, so its bpffs pins would vanish with it (see
//! shared/docs/TOOLCHAIN.md). Pins go to `/sys/fs/bpf/ag-test-<pid>-<n>`, state
//! and config to a temporary directory; Drop kills the daemon, detaches, and
//! removes both.

use std::{
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicBool, AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

use crate::lab::{sa, send_udp, Lab, Netns, UdpSink};

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// The `ampguard` binary next to the test executable (`cargo test --workspace`
/// builds it, for xdp-user's own integration test xdp-user/tests/binary.rs),
/// or the one AMPGUARD_BIN names (tests/tests/deb.rs runs a daemon test against
/// the packaged /usr/sbin/ampguard so).
pub fn ampguard_bin() -> PathBuf {
    if let Some(b) = std::env::var_os("AMPGUARD_BIN") {
        let b = PathBuf::from(b);
        assert!(b.is_file(), "AMPGUARD_BIN={} is not a file", b.display());
        static SAID: std::sync::Once = std::sync::Once::new();
        SAID.call_once(|| eprintln!("ampguard binary from AMPGUARD_BIN: {}", b.display()));
        return b;
    }
    find_ampguard().unwrap_or_else(|| {
        panic!(
            "the ampguard binary is not next to {:?}: run `cargo build -p xdp-user` (cargo xtask test and demo do)",
            std::env::current_exe()
        )
    })
}

/// Test executables live in target/<profile>/deps, binaries in target/<profile>.
fn find_ampguard() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    [dir.join("ampguard"), dir.parent()?.join("ampguard")].into_iter().find(|p| p.exists())
}

/// A privileged lab test's usual start: root checked, a fresh lab, and the
/// daemon protecting its edge interface with `extra` TOML in its config.
pub fn lab_with_daemon(tag: &str, extra: &str) -> (Lab, Daemon) {
    crate::require_root();
    let lab = Lab::new(tag).expect("lab");
    let d = Daemon::start(&lab, extra).expect("daemon");
    (lab, d)
}

/// How long a daemon may take to answer after its start: 20 s, or
/// AMPGUARD_TEST_START_SECS (an emulated VM loads the program many times slower).
pub fn start_timeout() -> Duration {
    Duration::from_secs(std::env::var("AMPGUARD_TEST_START_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(20))
}

/// How the daemon process is started.
#[derive(Clone, Debug, Default)]
pub enum Launch {
    /// `nsenter --net=...`: the network namespace only (the host's mounts).
    #[default]
    Nsenter,
    /// `ip netns exec NS`: as network engineers start things in a namespace;
    /// it also gives the process a private mount namespace and a fresh /sys.
    IpNetnsExec,
    /// `prlimit --nofile=N:N nsenter ...`: a hard limit on open files (the
    /// systemd default soft limit is 1,024).
    FileLimit(u32),
}

pub struct Daemon {
    pub launch: Launch,
    pub ns: Netns,
    pub dir: PathBuf,
    pub pin_dir: PathBuf,
    pub config: PathBuf,
    pub token_file: PathBuf,
    pub token: String,
    pub port: u16,
    /// The API's base URL for [`Daemon::call`] and [`Daemon::cli`] (default `http://127.0.0.1:PORT`).
    pub api: String,
    /// TLS settings of [`Daemon::call`]'s client (CA, client certificate), for an `https://` api.
    pub tls: Option<ureq::tls::TlsConfig>,
    /// Extra arguments to `ampguard run` and environment of the daemon.
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    child: Option<Child>,
}

impl Daemon {
    /// Start a daemon protecting the lab's edge interface, with `extra` TOML
    /// appended to a minimal config.
    pub fn start(lab: &Lab, extra: &str) -> Result<Daemon> {
        Self::start_with(lab, extra, Launch::default())
    }

    /// `start`, launched as `launch` says.
    pub fn start_with(lab: &Lab, extra: &str, launch: Launch) -> Result<Daemon> {
        Self::start_full(lab, extra, launch, &[], &[])
    }

    /// [`Daemon::start`], with more `ampguard run` arguments and environment
    /// variables (in their values `{log_dev_ino}` stands for the daemon log's
    /// `device:inode`, what systemd puts in JOURNAL_STREAM).
    pub fn start_with_args(lab: &Lab, extra: &str, args: &[&str], env: &[(&str, &str)]) -> Result<Daemon> {
        Self::start_full(lab, extra, Launch::default(), args, env)
    }

    /// [`Daemon::start_with_args`], the tests reaching its API at `api` (e.g.
    /// `https://203.0.113.1:9470`, with `--listen` in `args`) with `tls`.
    pub fn start_at(
        lab: &Lab,
        extra: &str,
        args: &[&str],
        env: &[(&str, &str)],
        api: &str,
        tls: Option<ureq::tls::TlsConfig>,
    ) -> Result<Daemon> {
        let mut d = Self::prepare(lab, extra, Launch::default(), args, env)?;
        d.api = api.to_string();
        d.tls = tls;
        d.spawn()?;
        Ok(d)
    }

    fn start_full(lab: &Lab, extra: &str, launch: Launch, args: &[&str], env: &[(&str, &str)]) -> Result<Daemon> {
        let mut d = Self::prepare(lab, extra, launch, args, env)?;
        d.spawn()?;
        Ok(d)
    }

    fn prepare(lab: &Lab, extra: &str, launch: Launch, args: &[&str], env: &[(&str, &str)]) -> Result<Daemon> {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let tag = format!("ag-test-{}-{n}", std::process::id());
        let dir = std::env::temp_dir().join(&tag);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let token = format!("test-token-{tag}-0123456789abcdef");
        let token_file = dir.join("token");
        std::fs::write(&token_file, format!("{token}\n"))?;
        let pin_dir = PathBuf::from("/sys/fs/bpf").join(&tag);
        let port = 9470;
        let config = dir.join("ampguard.toml");
        std::fs::write(
            &config,
            format!(
                "interfaces = [\"{}\"]\nlisten = \"127.0.0.1:{port}\"\ntoken_file = \"{}\"\nstate_dir = \"{}\"\npin_dir = \"{}\"\n{extra}\n",
                lab.edge_if,
                token_file.display(),
                dir.join("state").display(),
                pin_dir.display()
            ),
        )?;
        let args = args.iter().map(|a| a.to_string()).collect();
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let api = format!("http://127.0.0.1:{port}");
        Ok(Daemon { launch, ns: lab.edge.clone(), dir, pin_dir, config, token_file, token, port, api, tls: None, args, env, child: None })
    }

    /// The command that starts `ampguard ARGS` the way `self.launch` says.
    pub fn command(&self) -> Command {
        let netns = format!("--net=/var/run/netns/{}", self.ns.name);
        let mut c = match &self.launch {
            Launch::Nsenter => {
                let mut c = Command::new("nsenter");
                c.arg(netns);
                c
            }
            Launch::IpNetnsExec => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", &self.ns.name]);
                c
            }
            Launch::FileLimit(n) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={n}:{n}")).arg("nsenter").arg(netns);
                c
            }
        };
        c.arg(ampguard_bin());
        c
    }

    /// (Re)start the daemon process and wait until its API answers.
    pub fn spawn(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("daemon.log"))?;
        let dev_ino = {
            use std::os::unix::fs::MetadataExt;
            let m = log.metadata()?;
            format!("{}:{}", m.dev(), m.ino())
        };
        let child = self
            .command()
            .args(["run", "--config"])
            .arg(&self.config)
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v.replace("{log_dev_ino}", &dev_ino))))
            .stdout(log.try_clone()?)
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .context("spawning ampguard run")?;
        self.child = Some(child);
        let deadline = Instant::now() + start_timeout();
        loop {
            if let Ok((200, _)) = self.call("GET", "/healthz", None) {
                return Ok(());
            }
            if let Some(c) = self.child.as_mut() {
                if let Some(status) = c.try_wait()? {
                    bail!("ampguard run exited with {status} during start:\n{}", self.log());
                }
            }
            if Instant::now() > deadline {
                bail!("ampguard run did not answer within {:?}:\n{}", start_timeout(), self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// SIGKILL: no chance to clean up (the pinned link must keep enforcing).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The policies and the allowlist as the API lists them: what a restart
    /// must give back unchanged.
    pub fn state(&self) -> Result<(Value, Value)> {
        let list = |path: &str| -> Result<Value> {
            let (st, v) = self.call("GET", path, None)?;
            ensure!(st == 200, "GET {path}: {st} {v}");
            Ok(v)
        };
        Ok((list("/v1/policies")?, list("/v1/allowlist")?))
    }

    /// SIGKILL, `pause`, start again: an error unless the new process lists
    /// the same policies and allowlist as the killed one did.
    pub fn kill9_and_restart(&mut self, pause: Duration) -> Result<()> {
        let before = self.state()?;
        self.kill9();
        std::thread::sleep(pause);
        self.spawn().context("restart after SIGKILL")?;
        let after = self.state()?;
        ensure!(after == before, "the restarted daemon lists other state:\nbefore {before:?}\nafter  {after:?}");
        Ok(())
    }

    /// SIGTERM and wait (bounded).
    pub fn stop(&mut self) -> Result<std::process::ExitStatus> {
        let mut c = self.child.take().context("not running")?;
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(s) = c.try_wait()? {
                return Ok(s);
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                bail!("ampguard did not exit within 10 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// An API call from inside the edge namespace: (status, JSON body).
    pub fn call(&self, method: &str, path: &str, body: Option<&str>) -> Result<(u16, Value)> {
        self.call_with(method, path, body, Some(&self.token))
    }

    pub fn call_with(&self, method: &str, path: &str, body: Option<&str>, token: Option<&str>) -> Result<(u16, Value)> {
        let url = format!("{}{}", self.api, path);
        let tls = self.tls.clone();
        let body = body.map(str::to_string);
        let token = token.map(str::to_string);
        let method = method.to_string();
        self.ns.enter(move || -> Result<(u16, Value)> {
            let mut config = ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(Duration::from_secs(5)));
            if let Some(tls) = tls {
                config = config.tls_config(tls);
            }
            let agent: ureq::Agent = config.build().into();
            let auth = token.map(|t| format!("Bearer {t}"));
            let mut req = ureq::http::Request::builder().method(method.as_str()).uri(&url);
            if let Some(a) = &auth {
                req = req.header("Authorization", a);
            }
            let mut res = match body {
                Some(b) => agent.run(req.header("Content-Type", "application/json").body(b)?)?,
                None => agent.run(req.body(())?)?,
            };
            let status = res.status().as_u16();
            let text = res.body_mut().read_to_string().unwrap_or_default();
            Ok((status, serde_json::from_str(&text).unwrap_or(Value::String(text))))
        })?
    }

    /// Run `ampguard ARGS` (a client subcommand) inside the edge namespace.
    pub fn cli(&self, args: &[&str], stdin: Option<&str>) -> Result<Output> {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/var/run/netns/{}", self.ns.name))
            .arg(ampguard_bin())
            .args(args)
            .env("AMPGUARD_API", &self.api)
            .env("AMPGUARD_TOKEN_FILE", &self.token_file)
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn()?;
        if let Some(s) = stdin {
            use std::io::Write;
            child.stdin.take().expect("stdin").write_all(s.as_bytes())?;
        }
        Ok(child.wait_with_output()?)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
        if let Some(bin) = find_ampguard() {
            let _ = Command::new(bin).args(["detach", "--pin-dir"]).arg(&self.pin_dir).output();
        }
        let _ = std::fs::remove_dir_all(&self.pin_dir);
        if std::env::var_os("AMPGUARD_KEEP_TEST_DIRS").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// How [`flood_while`] sends: bursts of `burst` 200-byte datagrams, `gap`
/// apart, for at most `max` whatever happens meanwhile.
#[derive(Clone, Copy, Debug)]
pub struct Flood {
    pub burst: usize,
    pub gap: Duration,
    pub max: Duration,
}

/// What one flow of [`flood_while`] sent, and how much of it arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flowed {
    pub sent: usize,
    pub arrived: usize,
}

/// Run `during` (a SIGKILL and restart, a load) while UDP flows go from the
/// lab's wan side to its edge: each `(src, dst)` is sent as `flood` says until
/// `during` returns, and a sink bound at `dst` counts arrivals for the whole
/// run and a second after the last send, so a leak at any moment counts. If
/// `during` panics (an assertion), the flows stop and the panic goes on.
pub fn flood_while<R>(lab: &Lab, flows: &[(&str, &str)], flood: Flood, during: impl FnOnce() -> R) -> (Vec<Flowed>, R) {
    let sinks: Vec<UdpSink> =
        flows.iter().map(|(_, dst)| UdpSink::bind(&lab.edge, sa(dst)).unwrap_or_else(|e| panic!("sink at {dst}: {e}"))).collect();
    let stop = AtomicBool::new(false);
    let sending = AtomicUsize::new(flows.len());
    // Set on the way out of `during`, even by a panic.
    struct Stop<'a>(&'a AtomicBool);
    impl Drop for Stop<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    struct Done<'a>(&'a AtomicUsize);
    impl Drop for Done<'_> {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::Relaxed);
        }
    }
    std::thread::scope(|s| {
        let (stop, sending) = (&stop, &sending);
        let rx: Vec<_> = sinks.iter().map(|sink| s.spawn(move || count_until_quiet(sink, sending, flood.max))).collect();
        let tx: Vec<_> = flows
            .iter()
            .map(|&(src, dst)| {
                s.spawn(move || {
                    let _done = Done(sending);
                    let (mut sent, t) = (0, Instant::now());
                    while !stop.load(Ordering::Relaxed) && t.elapsed() < flood.max {
                        sent += send_udp(&lab.wan, sa(src), sa(dst), flood.burst, 200).unwrap();
                        std::thread::sleep(flood.gap);
                    }
                    sent
                })
            })
            .collect();
        let out = {
            let _stop = Stop(stop);
            during()
        };
        let sent = tx.into_iter().map(|h| h.join().unwrap());
        let flowed = sent.zip(rx).map(|(sent, h)| Flowed { sent, arrived: h.join().unwrap() }).collect();
        (flowed, out)
    })
}

/// Datagrams received on `sink` until `sending` is 0 and a second more has
/// passed (bounded: `max` and 10 s more).
fn count_until_quiet(sink: &UdpSink, sending: &AtomicUsize, max: Duration) -> usize {
    let (start, mut n, mut done_at) = (Instant::now(), 0, None);
    let mut buf = vec![0u8; 65536];
    sink.socket().set_read_timeout(Some(Duration::from_millis(100))).expect("a read timeout");
    while start.elapsed() < max + Duration::from_secs(10) {
        if sink.socket().recv_from(&mut buf).is_ok() {
            n += 1;
            continue;
        }
        if sending.load(Ordering::Relaxed) == 0 {
            let t = *done_at.get_or_insert_with(Instant::now);
            if t.elapsed() >= Duration::from_secs(1) {
                break;
            }
        }
    }
    n
}
