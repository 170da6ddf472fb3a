//! `ampguard run`: the daemon. Builds the complete data plane in fresh maps
//! from the state file, then swaps it onto each interface's pinned XDP link in
//! one atomic step (the previous run's program enforces until that moment),
//! pins the new maps, serves the API, expires policies, and watches the links.
//! On SIGTERM it leaves the pinned links in place: enforcement continues while
//! the daemon is down or being upgraded. `--detach-on-exit` removes everything.
//!
//! One file per concern: `pins.rs` (where pins go so they outlive the
//! process), `lock.rs` (one daemon per state and pin directory),
//! `enforcement.rs` (links held, watchdog checks, operator detach),
//! `server.rs` (the API's bounded accept loop), `tls.rs` (HTTPS, reloaded on SIGHUP).

pub(crate) mod enforcement;
pub(crate) mod lock;
pub mod pins;
mod server;
pub mod tls;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use clap::Args;

use self::enforcement::{Enforcement, Repair};
use crate::{
    api::{self, AppState},
    config::{Config, XdpModeSetting},
    dataplane::{attach, DataPlane},
    logging::LogFormat,
    store::Store,
};

#[derive(Args, Debug)]
pub(crate) struct RunArgs {
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
    /// Log lines as text (default; no timestamp of its own under systemd) or JSON objects; overrides `log_format`.
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
}

#[derive(Args, Debug)]
pub(crate) struct DetachArgs {
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// bpffs directory of the pins (default: the config's pin_dir).
    #[arg(long)]
    pub pin_dir: Option<PathBuf>,
}

fn init_tracing(format: LogFormat) {
    crate::logging::init_daemon(format);
}

pub(crate) fn load_config(path: Option<&Path>) -> anyhow::Result<Config> {
    Ok(match path {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    })
}

fn read_token(path: &Path) -> anyhow::Result<String> {
    crate::config::warn_about_token_file(path);
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

/// The config's interfaces, then the command line's, each once, in that order.
fn merge_interfaces(config: &[String], args: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for i in config.iter().chain(args) {
        if !out.contains(i) {
            out.push(i.clone());
        }
    }
    out
}

pub(crate) fn run(args: RunArgs) -> anyhow::Result<()> {
    let mut cfg = load_config(args.config.as_deref())?;
    init_tracing(args.log_format.unwrap_or(cfg.log_format));
    cfg.interfaces = merge_interfaces(&cfg.interfaces, &args.ifaces);
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
    // Again, for a --listen given on the command line.
    cfg.tls.validate(cfg.listen).map_err(|e| anyhow::anyhow!("{e}"))?;
    // Before any link is touched: bad certificate files stop the start here.
    let tls = cfg.tls.enabled().then(|| tls::Acceptor::new(cfg.tls.clone()).map(Arc::new)).transpose()?;
    let token_file = cfg.token_file.clone().unwrap_or_else(|| "/etc/ampguard/token".into());
    let token = read_token(&token_file)?;
    let alert_token = cfg.alert_token_file.as_deref().map(read_token).transpose()?;
    if alert_token.as_deref() == Some(token.as_str()) {
        bail!("alert_token_file holds the same token as token_file; give detectors a token of their own");
    }
    server::raise_fd_limit();
    let pins = pins::resolve(&cfg.pin_dir)?;
    if let Some(note) = &pins.note {
        tracing::warn!("{note}");
    }
    cfg.pin_dir = pins.path.clone();
    // Before any link is touched: a second daemon stops here.
    let _locks = lock::acquire(&cfg.state_dir, &cfg.pin_dir)?;

    // Fresh maps, filled from the state file while the previous program (if
    // any) keeps enforcing through its pinned link.
    cfg.capacity.detection = cfg.detection.enabled;
    let dp = DataPlane::load(&cfg.capacity).map_err(|e| {
        anyhow::anyhow!("{e}; loading XDP needs root, or CAP_BPF + CAP_NET_ADMIN + CAP_PERFMON (+ CAP_SYS_ADMIN to mount bpffs)")
    })?;
    let started = Instant::now();
    let mut store = Store::open(cfg.clone(), dp)?;
    tracing::info!(policies = store.policies().len(), state = %store.state_path().display(), "state loaded into fresh maps");

    let vectors = store.vectors().clone();
    crate::detection::program(store.dataplane_mut(), &cfg.detection, &vectors)?;
    // Before any map is taken out of the data plane: the extension shares them all.
    let chain = dispatcher_component(&cfg, store.dataplane(), pins.note.as_deref())?;
    let meter_events = if cfg.detection.enabled { Some(store.dataplane_mut().take_meter_events()?) } else { None };

    let enforcement =
        Enforcement::start(store.dataplane_mut().program_mut(), &cfg.interfaces, cfg.xdp_mode, &cfg.pin_dir, &cfg.state_dir, chain)?;
    store.dataplane().pin_maps(&cfg.pin_dir.join("maps"))?;
    let samples = store.dataplane_mut().take_samples()?;
    tracing::info!("data plane ready in {:?}", started.elapsed());

    crate::memory::give_back();
    let persist = Arc::new(crate::store::persist::Persister::new(store.generation(), store.state_file(), store.snapshot_due()));
    let metrics = crate::api::metrics::ProcessMetrics::default();
    let names: Vec<String> = store.vectors().all().iter().map(|v| v.name.clone()).collect();
    let detection_metrics = crate::detection::DetectionMetrics::register(&metrics.registry, &names);
    let detection_status = Arc::new(std::sync::Mutex::new(Default::default()));
    let detection = crate::detection::Detection::new(cfg.detection.clone(), &store, detection_status.clone(), detection_metrics)?;
    let app = Arc::new(AppState {
        store: Arc::new(tokio::sync::Mutex::new(store)),
        persist: persist.clone(),
        token,
        alert_token,
        started,
        enforcement: std::sync::Mutex::new(enforcement),
        metrics,
        capture: Default::default(),
        detection: detection_status,
        flowspec: Arc::new(crate::flowspec::sync::Shared::new(&cfg.flowspec)),
    });
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async {
        tokio::spawn(app.capture.clone().run(samples));
        tokio::spawn(persist.run(app.store.clone()));
        if let Some(ring) = meter_events {
            tokio::spawn(detection.run(app.clone(), ring));
        }
        if !cfg.flowspec.enabled && crate::flowspec::sync::remove_orphans(&mut *app.store.lock().await) > 0 {
            app.persist.kick();
        }
        if cfg.flowspec.enabled {
            tracing::info!(speaker = %cfg.flowspec.gobgp, networks = ?cfg.flowspec.networks, "flowspec: taking routes from gobgpd");
            tokio::spawn(crate::flowspec::sync::run(cfg.flowspec.clone(), app.clone()));
        }
        serve(app.clone(), cfg.clone(), tls).await
    })?;

    if args.detach_on_exit {
        let _ = remove_pins(&cfg.pin_dir)?;
        tracing::info!("detached from every interface and removed the pins");
    } else {
        let enf = app.enforcement.lock().expect("not poisoned");
        let (kept, not) = enf.survives_exit();
        if let Some(d) = enf.detached_by_operator() {
            tracing::warn!("exiting; NOT enforcing: detached by operator ({}) at {}", d.by, d.since);
        } else if !not.is_empty() {
            tracing::error!(enforcing = ?kept, not_enforcing = ?not, "exiting; these interfaces are NOT enforcing (see the log above)");
        } else if cfg.xdp_dispatcher.enabled {
            tracing::info!(interfaces = ?kept, "exiting; ampguard's program stays in the dispatcher chains (libxdp's pins in /sys/fs/bpf/xdp)");
        } else {
            tracing::info!(interfaces = ?kept, "exiting; XDP stays attached through the pinned links in {}", cfg.pin_dir.display());
        }
    }
    Ok(())
}

async fn serve(app: api::Shared, cfg: Config, tls: Option<Arc<tls::Acceptor>>) -> anyhow::Result<()> {
    // Before the API answers: SIGHUP's default action would end the daemon.
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let listener = tokio::net::TcpListener::bind(cfg.listen).await.with_context(|| format!("cannot listen on {}", cfg.listen))?;
    match &tls {
        Some(t) => {
            let l = t.loaded();
            tracing::info!(fingerprint = %l.fingerprint, client_auth = l.client_auth, "API listening on https://{}", cfg.listen)
        }
        None if !tls::is_loopback(cfg.listen) => tracing::warn!(
            "API listening on http://{} in plain HTTP off loopback (tls.allow_plaintext_off_loopback): the bearer token crosses the network in the clear",
            cfg.listen
        ),
        None => tracing::info!("API listening on http://{}", cfg.listen),
    }
    let reloader = {
        let tls = tls.clone();
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                match &tls {
                    Some(t) => t.reload_and_log(),
                    None => tracing::info!("SIGHUP: nothing to reload (no [tls] in the config)"),
                }
            }
        })
    };
    let router = api::router(app.clone(), cfg.max_body_bytes, Duration::from_secs(cfg.body_timeout_secs));

    let sweeper = tokio::spawn(sweep(app.clone()));
    let watchdog = tokio::spawn(watch_links(app.clone()));
    let limits = server::Limits { max_connections: cfg.max_connections, header_timeout: Duration::from_secs(cfg.header_timeout_secs) };
    server::serve(listener, router, limits, tls, shutdown_signal()).await?;
    reloader.abort();
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

/// Every 2 s: is each interface's link still attached, holding our program,
/// and pinned? Repair what was detached or unpinned; report the rest.
async fn watch_links(app: api::Shared) {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tick.tick().await;
        let mut store = app.store.lock().await;
        let mut enf = app.enforcement.lock().expect("not poisoned");
        let repairs = enf.check(store.dataplane_mut().program_mut());
        for r in &repairs {
            match r {
                Repair::Reattached(i) => app.metrics.reattachments.with_label_values(&[i.as_str()]).inc(),
                Repair::Repinned(i) => app.metrics.repins.with_label_values(&[i.as_str()]).inc(),
            }
        }
        if !repairs.is_empty() {
            if let Err(e) = store.dataplane().pin_maps(&enf.pin_dir().join("maps")) {
                tracing::warn!("re-pinning the maps under {}: {e}", enf.pin_dir().display());
            }
        }
    }
}

/// Detach and unpin every link under `pin_dir`, and remove the map pins.
/// Returns the interfaces that had a link.
/// Dispatcher mode: ampguard's program loaded as a dispatcher component on
/// the data plane's maps (None in the default, direct mode).
fn dispatcher_component(
    cfg: &Config,
    dp: &crate::dataplane::DataPlane,
    private_mounts: Option<&str>,
) -> anyhow::Result<Option<crate::dataplane::dispatcher::Component>> {
    use crate::dataplane::{dispatcher::Component, libxdp};
    if !cfg.xdp_dispatcher.enabled {
        return Ok(None);
    }
    if let Some(note) = private_mounts {
        // libxdp pins the chain in this mount namespace's /sys/fs/bpf/xdp, which dies with it.
        bail!("the dispatcher mode cannot run here: {note}; libxdp's pins in /sys/fs/bpf/xdp would not outlive this process");
    }
    libxdp::available()?;
    libxdp::quiet()?;
    if let Err(e) = crate::dataplane::dispatcher::freplace_supported() {
        bail!(
            "the dispatcher mode cannot run on this kernel: {e}. libxdp's dispatcher is made of such programs (here xdp-loader \
             and xdp-filter fall back to one program per interface, without a dispatcher, too); set `[xdp_dispatcher] enabled = false` \
             to attach directly"
        );
    }
    let c = Component::load(dp, &cfg.pin_dir.join("dispatcher-load"), cfg.xdp_dispatcher.priority)?;
    tracing::info!(program_id = c.id, priority = c.priority, "dispatcher mode: loaded ampguard's program as a libxdp dispatcher component");
    Ok(Some(c))
}

pub(crate) fn remove_pins(pin_dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut ifaces = attach::pinned_interfaces(pin_dir);
    for iface in &ifaces {
        attach::detach(pin_dir, iface).with_context(|| format!("detaching {iface}"))?;
    }
    for iface in crate::dataplane::dispatcher::pinned_interfaces(pin_dir) {
        // Only ampguard's program leaves the interface's dispatcher chain.
        crate::dataplane::dispatcher::detach_pinned(pin_dir, &iface)
            .with_context(|| format!("removing ampguard from the dispatcher of {iface}"))?;
        ifaces.push(iface);
    }
    ifaces.sort();
    ifaces.dedup();
    let maps = pin_dir.join("maps");
    if maps.exists() {
        std::fs::remove_dir_all(&maps).with_context(|| format!("removing {}", maps.display()))?;
    }
    Ok(ifaces)
}

#[cfg(test)]
mod tests {
    use super::merge_interfaces;

    #[test]
    fn each_interface_once_in_order() {
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        // `--iface eth0` with a config of [eth0, eth1] attached eth0 twice (dedup drops adjacent repeats only).
        assert_eq!(merge_interfaces(&s(&["eth0", "eth1"]), &s(&["eth0"])), s(&["eth0", "eth1"]));
        assert_eq!(merge_interfaces(&s(&["eth0", "eth1", "eth0"]), &s(&["eth2", "eth1"])), s(&["eth0", "eth1", "eth2"]));
        assert_eq!(merge_interfaces(&[], &s(&["eth0", "eth0"])), s(&["eth0"]));
    }
}
