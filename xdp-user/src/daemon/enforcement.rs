//! What the daemon knows and does about enforcement on its interfaces: the
//! links it holds, the watchdog's checks, and an operator's detach.
//!
//! An operator's detach (`ampguard detach`, POST /v1/detach) is written to
//! `state_dir/detached` before any link is touched, so enforcement stays off
//! through restarts (and the watchdog leaves it alone) until an explicit
//! `ampguard attach` (POST /v1/attach). In a false-positive emergency the
//! answer must be "off, and it stays off", not "off for two seconds".

use std::{
    io::Write,
    path::{Path, PathBuf},
    time::SystemTime,
};

use aya::programs::Xdp;
use serde::{Deserialize, Serialize};

use crate::{
    config::XdpModeSetting,
    dataplane::{
        attach::{self, Attachment, Health},
        netdev,
    },
};

/// What /v1/status and /metrics show of an interface.
#[derive(Clone, Debug, Serialize)]
pub struct IfaceStatus {
    pub name: String,
    pub ifindex: u32,
    /// "native", "generic", or "kept" (adopted, mode not readable)
    pub mode: String,
    /// The link holds this daemon's program and is attached.
    pub attached: bool,
    /// "enforcing", "detached_by_operator", "not_enforcing", or "unchecked"
    /// (the last check could not be made; the previous answer stands).
    pub state: &'static str,
    /// The program on the interface, as the kernel reports it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub program_id: Option<u32>,
    /// Why not enforcing (or why unchecked).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// The operator's detach, as kept in `state_dir/detached`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OperatorDetach {
    pub since: String,
    pub by: String,
}

/// What the watchdog did in one round, for metrics.
#[derive(Debug, PartialEq, Eq)]
pub enum Repair {
    Reattached(String),
    Repinned(String),
}

struct Iface {
    name: String,
    link: Option<Attachment>,
    status: IfaceStatus,
}

pub struct Enforcement {
    ifaces: Vec<Iface>,
    our_prog: u32,
    mode: XdpModeSetting,
    pin_dir: PathBuf,
    marker: PathBuf,
    detached: Option<OperatorDetach>,
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

fn status_of(a: &Attachment, our_prog: u32) -> IfaceStatus {
    IfaceStatus {
        name: a.iface.clone(),
        ifindex: a.ifindex,
        mode: a.mode.into(),
        attached: true,
        state: "enforcing",
        program_id: Some(our_prog),
        problem: None,
    }
}

fn detached_status(name: &str, why: &OperatorDetach) -> IfaceStatus {
    IfaceStatus {
        name: name.into(),
        ifindex: attach::ifindex(name).ok().flatten().unwrap_or(0),
        mode: "none".into(),
        attached: false,
        state: "detached_by_operator",
        program_id: None,
        problem: Some(format!("detached by operator ({}) at {}; `ampguard attach` enforces again", why.by, why.since)),
    }
}

/// Write `path` durably (write, fsync, rename, fsync the directory).
fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

impl Enforcement {
    /// Attach to every interface (swapping into pinned links where a
    /// previous run left them), unless an operator's detach is in force.
    pub fn start(program: &mut Xdp, names: &[String], mode: XdpModeSetting, pin_dir: &Path, state_dir: &Path) -> anyhow::Result<Self> {
        let our_prog = program.info()?.id();
        let marker = state_dir.join("detached");
        let detached = match std::fs::read(&marker) {
            Ok(b) => Some(serde_json::from_slice::<OperatorDetach>(&b).unwrap_or(OperatorDetach { since: "?".into(), by: "?".into() })),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => anyhow::bail!("cannot read {}: {e}", marker.display()),
        };
        let mut me = Self { ifaces: Vec::new(), our_prog, mode, pin_dir: pin_dir.into(), marker, detached };
        for name in names {
            let iface = match &me.detached {
                Some(d) => {
                    tracing::warn!(
                        iface = name,
                        "NOT enforcing: detached by operator ({}) at {}; `ampguard attach` enforces again",
                        d.by,
                        d.since
                    );
                    Iface { name: name.clone(), link: None, status: detached_status(name, d) }
                }
                None => {
                    let a = attach::attach_or_replace(program, name, mode, pin_dir)?;
                    if a.replaced {
                        tracing::info!(iface = name, ifindex = a.ifindex, "swapped the new program into the pinned link (no gap)");
                    } else {
                        tracing::info!(iface = name, ifindex = a.ifindex, mode = a.mode, "attached and pinned");
                    }
                    Iface { name: name.clone(), status: status_of(&a, our_prog), link: Some(a) }
                }
            };
            me.ifaces.push(iface);
        }
        Ok(me)
    }

    pub fn statuses(&self) -> Vec<IfaceStatus> {
        self.ifaces.iter().map(|i| i.status.clone()).collect()
    }

    pub fn detached_by_operator(&self) -> Option<&OperatorDetach> {
        self.detached.as_ref()
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// The watchdog's round: read each link's health from the fd it holds
    /// and repair what can be repaired. Only a detached link or a missing pin
    /// is repaired; a link holding another program is reported, not fought
    /// over; an unanswered question changes nothing.
    pub fn check(&mut self, program: &mut Xdp) -> Vec<Repair> {
        let mut repairs = Vec::new();
        if self.detached.is_some() {
            return repairs;
        }
        for i in &mut self.ifaces {
            let Some(link) = i.link.as_mut() else { continue };
            let was = i.status.state;
            match link.health(self.our_prog) {
                Health::Enforcing => i.status = status_of(link, self.our_prog),
                Health::Unknown(e) => {
                    if was != "unchecked" {
                        tracing::warn!(iface = i.name, "cannot check the XDP link ({e}); assuming nothing changed, not touching it");
                    }
                    i.status.state = "unchecked";
                    i.status.problem = Some(format!("the last check failed: {e}"));
                }
                Health::Foreign { prog_id } => {
                    let name = netdev::program_name(prog_id).unwrap_or_else(|| "?".into());
                    let problem = format!(
                        "the pinned link holds program id {prog_id} ({name}), not this daemon's program id {}: another ampguard \
                         or `bpftool link update` replaced it; this daemon's policies are NOT enforced on {}",
                        self.our_prog, i.name
                    );
                    if was != "not_enforcing" {
                        tracing::error!(iface = i.name, "{problem}");
                    }
                    i.status = IfaceStatus {
                        attached: false,
                        state: "not_enforcing",
                        program_id: Some(prog_id),
                        problem: Some(problem),
                        ..i.status.clone()
                    };
                }
                Health::PinMissing => {
                    tracing::error!(iface = i.name, "the XDP link's pin is gone (removed by hand, or its bpffs unmounted); the link stays attached through this daemon, pinning it again");
                    let r = super::pins::ensure_bpffs(&self.pin_dir).and_then(|()| link.repin().map_err(anyhow::Error::from));
                    match r {
                        Ok(()) => {
                            tracing::info!(iface = i.name, "pinned again");
                            i.status = status_of(link, self.our_prog);
                            repairs.push(Repair::Repinned(i.name.clone()));
                        }
                        Err(e) => {
                            let problem = format!(
                                "enforcing while this daemon runs, but the pin in {} could not be made again ({e:#}): a restart or crash would detach it",
                                self.pin_dir.display()
                            );
                            if i.status.problem.as_deref() != Some(problem.as_str()) {
                                tracing::error!(iface = i.name, "{problem}");
                            }
                            i.status.problem = Some(problem);
                        }
                    }
                }
                Health::Detached => {
                    tracing::error!(iface = i.name, "the XDP link is gone (detached by hand, or the interface went away); re-attaching");
                    let r = super::pins::ensure_bpffs(&self.pin_dir)
                        .map_err(|e| format!("the pin directory {} is not a usable bpffs: {e:#}", self.pin_dir.display()))
                        .and_then(|()| link.reattach(program, self.mode, &self.pin_dir).map_err(|e| e.to_string()));
                    match r {
                        Ok(()) => {
                            tracing::info!(iface = i.name, mode = link.mode, "re-attached");
                            i.status = status_of(link, self.our_prog);
                            repairs.push(Repair::Reattached(i.name.clone()));
                        }
                        Err(e) => {
                            if i.status.problem.as_deref() != Some(e.as_str()) {
                                tracing::error!(iface = i.name, "cannot re-attach: {e}");
                            }
                            i.status = IfaceStatus {
                                attached: false,
                                state: "not_enforcing",
                                program_id: None,
                                problem: Some(e),
                                ..i.status.clone()
                            };
                        }
                    }
                }
            }
        }
        repairs
    }

    /// Stop enforcing on every interface, and keep it stopped (through
    /// restarts) until `attach`. The decision is on disk before any link is
    /// touched. Returns the interfaces detached.
    pub fn detach_by_operator(&mut self, by: &str) -> anyhow::Result<Vec<String>> {
        let d = OperatorDetach { since: now_rfc3339(), by: by.into() };
        if self.detached.is_none() {
            write_durably(&self.marker, &serde_json::to_vec(&d)?)
                .map_err(|e| anyhow::anyhow!("cannot record the detach in {} ({e}); nothing was detached", self.marker.display()))?;
            self.detached = Some(d.clone());
        }
        let d = self.detached.clone().expect("set above");
        let mut done = Vec::new();
        for i in &mut self.ifaces {
            if let Some(link) = i.link.take() {
                let ifindex = link.ifindex;
                link.detach().map_err(|e| anyhow::anyhow!("removing the pin of {}: {e}", i.name))?;
                // The link's last references are gone: the kernel detached it.
                if let Ok(Some(x)) = netdev::xdp_program(ifindex) {
                    if x.prog_id == self.our_prog {
                        anyhow::bail!("{} still runs this daemon's program after its link was released", i.name);
                    }
                }
                done.push(i.name.clone());
            }
            i.status = detached_status(&i.name, &d);
        }
        tracing::warn!(interfaces = ?done, by, "detached by operator: NOT enforcing until `ampguard attach`");
        Ok(done)
    }

    /// Enforce again after an operator's detach.
    pub fn attach_by_operator(&mut self, program: &mut Xdp) -> anyhow::Result<Vec<String>> {
        let mut done = Vec::new();
        for i in &mut self.ifaces {
            if i.link.is_some() {
                continue;
            }
            let a = attach::attach_or_replace(program, &i.name, self.mode, &self.pin_dir)?;
            tracing::info!(iface = i.name, mode = a.mode, "attached by operator");
            i.status = status_of(&a, self.our_prog);
            i.link = Some(a);
            done.push(i.name.clone());
        }
        match std::fs::remove_file(&self.marker) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => anyhow::bail!("enforcing again, but cannot remove {} ({e}): a restart would detach again", self.marker.display()),
        }
        self.detached = None;
        Ok(done)
    }

    /// What stays enforcing once this process is gone: the interfaces whose
    /// link is attached with this daemon's program and pinned.
    pub fn survives_exit(&self) -> (Vec<String>, Vec<String>) {
        let mut yes = Vec::new();
        let mut no = Vec::new();
        for i in &self.ifaces {
            match i.link.as_ref().map(|l| l.health(self.our_prog)) {
                Some(Health::Enforcing) => yes.push(i.name.clone()),
                _ => no.push(i.name.clone()),
            }
        }
        (yes, no)
    }
}
