//! `ampguard run`: the daemon. Builds the complete data plane in fresh maps
//! from the state file, then swaps it onto each interface's pinned XDP link in
//! one atomic step (the previous run's program enforces until that moment),
//! pins the new maps, serves the API, expires policies, and watches the links.
//! On SIGTERM it leaves the pinned links in place: enforcement continues while
//! the daemon is down or being upgraded. `--detach-on-exit` removes everything.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use clap::Args;

use crate::{
    api::{self, AppState, IfaceStatus},
    config::{Config, XdpModeSetting},
    dataplane::{attach, DataPlane, LoadOptions},
    store::Store,
};

#[derive(Args, Debug)]
pub struct RunArgs {
    /// TOML configuration file (see deploy/ampguard.toml).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Interface to protect (repeat for several); adds to the config's list.
    #[arg(long = "iface")]
    pub ifaces: Vec<String>,
    /// XDP mode: auto (native where the driver supports it, else generic), native, generic.
    #[arg(long, value_enum)]
    pub xdp_mode: Option<XdpModeSetting>,
    /// API listen address (default 127.0.0.1:9470).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// File holding the API bearer token.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Directory of the state file.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// bpffs directory for pinned links and maps (mounted if it is not bpffs).
    #[arg(long)]
    pub pin_dir: Option<PathBuf>,
    /// On exit, detach XDP and remove the pins (enforcement stops).
    #[arg(long)]
    pub detach_on_exit: bool,
}

#[derive(Args, Debug)]
pub struct DetachArgs {
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// bpffs directory of the pins (default: the config's pin_dir).
    #[arg(long)]
    pub pin_dir: Option<PathBuf>,
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_target(false).with_ansi(ansi).with_writer(std::io::stderr).try_init();
}

fn load_config(path: Option<&Path>) -> anyhow::Result<Config> {
    Ok(match path {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    })
}

const BPF_FS_MAGIC: i64 = 0xcafe4a11;

fn is_bpffs(p: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()) else { return false };
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // Safety: valid path and out pointer.
    unsafe { libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC }
}

fn mount_bpffs(p: &Path) -> anyhow::Result<()> {
    let target = std::ffi::CString::new(p.as_os_str().as_encoded_bytes())?;
    // Safety: valid NUL-terminated strings.
    let rc = unsafe { libc::mount(c"bpf".as_ptr(), target.as_ptr(), c"bpf".as_ptr(), 0, c"mode=0700".as_ptr().cast()) };
    if rc != 0 {
        bail!("cannot mount a bpffs at {}: {}", p.display(), std::io::Error::last_os_error());
    }
    tracing::info!("mounted a bpffs at {}", p.display());
    Ok(())
}

/// Make `dir` a directory on a bpffs, mounting one where there is none (a
/// fresh machine has nothing at /sys/fs/bpf; `ip netns exec` hides it).
pub fn ensure_bpffs(dir: &Path) -> anyhow::Result<()> {
    if !dir.exists() {
        if let Some(parent) = dir.parent() {
            if parent == Path::new("/sys/fs/bpf") && !is_bpffs(parent) {
                mount_bpffs(parent)?;
            }
        }
        std::fs::create_dir_all(dir).with_context(|| format!("creating the pin directory {}", dir.display()))?;
    }
    if !is_bpffs(dir) {
        mount_bpffs(dir)?;
    }
    Ok(())
}

fn read_token(path: &Path) -> anyhow::Result<String> {
    let t = std::fs::read_to_string(path).with_context(|| {
        format!(
            "cannot read the API token file {}; create one, e.g. `head -c 32 /dev/urandom | base64 > {} && chmod 600 {}`",
            path.display(),
            path.display(),
            path.display()
        )
    })?;
    let t = t.trim().to_string();
    if t.len() < 16 {
        bail!("the API token in {} is shorter than 16 characters; use a long random token", path.display());
    }
    Ok(t)
}

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    init_tracing();
    let mut cfg = load_config(args.config.as_deref())?;
    cfg.interfaces.extend(args.ifaces.iter().cloned());
    cfg.interfaces.dedup();
    if let Some(m) = args.xdp_mode {
        cfg.xdp_mode = m;
    }
    if let Some(l) = args.listen {
        cfg.listen = l;
    }
    if let Some(t) = args.token_file {
        cfg.token_file = Some(t);
    }
    if let Some(d) = args.state_dir {
        cfg.state_dir = d;
    }
    if let Some(d) = args.pin_dir {
        cfg.pin_dir = d;
    }
    if cfg.interfaces.is_empty() {
        bail!("no interface to protect: give --iface IF or `interfaces` in the config");
    }
    let token_file = cfg.token_file.clone().unwrap_or_else(|| "/etc/ampguard/token".into());
    let token = read_token(&token_file)?;
    let alert_token = cfg.alert_token_file.as_deref().map(read_token).transpose()?;
    if alert_token.as_deref() == Some(token.as_str()) {
        bail!("alert_token_file holds the same token as token_file; give detectors a token of their own");
    }
    ensure_bpffs(&cfg.pin_dir)?;

    // Fresh maps, filled from the state file while the previous program (if
    // any) keeps enforcing through its pinned link.
    let dp = DataPlane::load(&LoadOptions { capacity: (&cfg.capacity).into(), pin_dir: None }).map_err(|e| {
        anyhow::anyhow!("{e}; loading XDP needs root, or CAP_BPF + CAP_NET_ADMIN + CAP_PERFMON (+ CAP_SYS_ADMIN to mount bpffs)")
    })?;
    let started = Instant::now();
    let mut store = Store::open(cfg.clone(), dp)?;
    tracing::info!(policies = store.policies().len(), state = %store.state_path().display(), "state loaded into fresh maps");

    let mut interfaces = Vec::new();
    for iface in &cfg.interfaces {
        let a = attach::attach_or_replace(store.dataplane_mut().program_mut(), iface, cfg.xdp_mode, &cfg.pin_dir)?;
        if a.replaced {
            tracing::info!(iface, ifindex = a.ifindex, "swapped the new program into the pinned link (no gap)");
        } else {
            tracing::info!(iface, ifindex = a.ifindex, mode = a.mode, "attached and pinned");
        }
        interfaces.push(IfaceStatus { name: iface.clone(), ifindex: a.ifindex, mode: a.mode.into(), attached: true, problem: None });
    }
    store.dataplane().pin_maps(&cfg.pin_dir.join("maps"))?;
    let samples = store.dataplane_mut().take_samples()?;
    tracing::info!("data plane ready in {:?}", started.elapsed());

    crate::memory::give_back();
    let persist = Arc::new(crate::store::persist::Persister::new(store.generation(), store.state_file()));
    let app = Arc::new(AppState {
        store: Arc::new(tokio::sync::Mutex::new(store)),
        persist: persist.clone(),
        token,
        alert_token,
        started,
        interfaces: std::sync::Mutex::new(interfaces),
        metrics: Default::default(),
        capture: Default::default(),
    });
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async {
        tokio::spawn(app.capture.clone().run(samples));
        tokio::spawn(persist.run(app.store.clone()));
        serve(app.clone(), cfg.clone()).await
    })?;

    if args.detach_on_exit {
        remove_pins(&cfg.pin_dir)?;
        tracing::info!("detached from every interface and removed the pins");
    } else {
        tracing::info!("exiting; XDP stays attached through the pinned links in {}", cfg.pin_dir.display());
    }
    Ok(())
}

async fn serve(app: api::Shared, cfg: Config) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(cfg.listen).await.with_context(|| format!("cannot listen on {}", cfg.listen))?;
    tracing::info!("API listening on http://{}", cfg.listen);
    let router = api::router(app.clone(), cfg.max_body_bytes);

    let sweeper = tokio::spawn(sweep(app.clone()));
    let watchdog = tokio::spawn(watch_links(app.clone(), cfg.clone()));
    axum::serve(listener, router).with_graceful_shutdown(shutdown_signal()).await?;
    sweeper.abort();
    watchdog.abort();
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM"),
        _ = int.recv() => tracing::info!("SIGINT"),
    }
}

/// Free the slots of expired policies (the XDP program already ignores them).
async fn sweep(app: api::Shared) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        match app.store.lock().await.sweep_expired() {
            Ok(ids) if !ids.is_empty() => {
                tracing::info!(?ids, "expired policies removed");
                app.persist.kick();
            }
            Ok(_) => {}
            Err(e) => tracing::error!("removing expired policies: {e}"),
        }
    }
}

/// Every 2 s: is each interface's link still there? If someone detached it
/// (or removed the pin), say so in status and put the program back.
async fn watch_links(app: api::Shared, cfg: Config) {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tick.tick().await;
        for iface in &cfg.interfaces {
            if attach::link_alive(&cfg.pin_dir, iface) {
                continue;
            }
            tracing::error!(iface, "the XDP link is gone (detached by hand, or pins removed); re-attaching");
            let mut store = app.store.lock().await;
            // The pins live on a bpffs: if it was unmounted, mount it again.
            let result = ensure_bpffs(&cfg.pin_dir)
                .map_err(|e| format!("the pin directory {} is not a usable bpffs: {e:#}", cfg.pin_dir.display()))
                .and_then(|()| {
                    let _ = std::fs::remove_file(attach::link_pin_path(&cfg.pin_dir, iface));
                    attach::attach_or_replace(store.dataplane_mut().program_mut(), iface, cfg.xdp_mode, &cfg.pin_dir)
                        .map_err(|e| e.to_string())
                });
            if result.is_ok() {
                if let Err(e) = store.dataplane().pin_maps(&cfg.pin_dir.join("maps")) {
                    tracing::warn!("re-pinning the maps under {}: {e}", cfg.pin_dir.display());
                }
            }
            let mut ifs = app.interfaces.lock().expect("not poisoned");
            if let Some(st) = ifs.iter_mut().find(|s| &s.name == iface) {
                match result {
                    Ok(a) => {
                        tracing::info!(iface, mode = a.mode, "re-attached");
                        app.metrics.reattachments.with_label_values(&[iface.as_str()]).inc();
                        *st = IfaceStatus { name: iface.clone(), ifindex: a.ifindex, mode: a.mode.into(), attached: true, problem: None };
                    }
                    Err(e) => {
                        tracing::error!(iface, "cannot re-attach: {e}");
                        st.attached = false;
                        st.problem = Some(e);
                    }
                }
            }
        }
    }
}

fn remove_pins(pin_dir: &Path) -> anyhow::Result<()> {
    for iface in attach::pinned_interfaces(pin_dir) {
        attach::detach(pin_dir, &iface).with_context(|| format!("detaching {iface}"))?;
    }
    let maps = pin_dir.join("maps");
    if maps.exists() {
        std::fs::remove_dir_all(&maps).with_context(|| format!("removing {}", maps.display()))?;
    }
    Ok(())
}

/// `ampguard detach`: stop enforcing, remove every pin.
pub fn detach(args: DetachArgs) -> anyhow::Result<()> {
    init_tracing();
    let cfg = load_config(args.config.as_deref())?;
    let pin_dir = args.pin_dir.unwrap_or(cfg.pin_dir);
    let ifaces = attach::pinned_interfaces(&pin_dir);
    remove_pins(&pin_dir)?;
    if ifaces.is_empty() {
        println!("nothing was attached (no pinned links in {})", pin_dir.display());
    } else {
        println!("detached from {} and removed the pins in {}", ifaces.join(", "), pin_dir.display());
    }
    Ok(())
}
