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
        dispatcher::{self, Component, Slot, SlotHealth},
        libxdp, netdev,
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
    /// Dispatcher mode: libxdp's dispatcher on the interface and every
    /// program of its chain (ampguard's and the others), in run order.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dispatcher: Option<libxdp::Dispatcher>,
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

/// How the program is on an interface: through ampguard's own pinned bpf
/// link (the default), or as one program of libxdp's dispatcher.
enum Link {
    Direct(Attachment),
    Chain(Slot),
}

impl Link {
    fn ifindex(&self) -> u32 {
        match self {
            Link::Direct(a) => a.ifindex,
            Link::Chain(s) => s.ifindex,
        }
    }

    fn mode(&self) -> &'static str {
        match self {
            Link::Direct(a) => a.mode,
            Link::Chain(s) => s.mode,
        }
    }
}

struct Iface {
    name: String,
    link: Option<Link>,
    status: IfaceStatus,
}

pub struct Enforcement {
    ifaces: Vec<Iface>,
    /// The id of the program this daemon attaches (in dispatcher mode, the extension's).
    our_prog: u32,
    /// Dispatcher mode: ampguard's program as a dispatcher component.
    chain: Option<Component>,
    mode: XdpModeSetting,
    pin_dir: PathBuf,
    marker: PathBuf,
    detached: Option<OperatorDetach>,
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

fn status_of(name: &str, l: &Link, our_prog: u32) -> IfaceStatus {
    enforcing(name, l.ifindex(), l.mode(), our_prog)
}

fn enforcing(name: &str, ifindex: u32, mode: &str, our_prog: u32) -> IfaceStatus {
    IfaceStatus {
        name: name.into(),
        ifindex,
        mode: mode.into(),
        attached: true,
        state: "enforcing",
        program_id: Some(our_prog),
        problem: None,
        dispatcher: None,
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
        dispatcher: None,
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
    pub fn start(
        program: &mut Xdp,
        names: &[String],
        mode: XdpModeSetting,
        pin_dir: &Path,
        state_dir: &Path,
        chain: Option<Component>,
    ) -> anyhow::Result<Self> {
        let our_prog = match &chain {
            Some(c) => c.id,
            None => program.info()?.id(),
        };
        let marker = state_dir.join("detached");
        let detached = match std::fs::read(&marker) {
            Ok(b) => Some(serde_json::from_slice::<OperatorDetach>(&b).unwrap_or(OperatorDetach { since: "?".into(), by: "?".into() })),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => anyhow::bail!("cannot read {}: {e}", marker.display()),
        };
        let mut me = Self { ifaces: Vec::new(), our_prog, chain, mode, pin_dir: pin_dir.into(), marker, detached };
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
                    let l = attach_one(me.chain.as_ref(), me.mode, &me.pin_dir, program, name)?;
                    Iface { name: name.clone(), status: status_of(name, &l, our_prog), link: Some(l) }
                }
            };
            me.ifaces.push(iface);
        }
        Ok(me)
    }

    pub fn statuses(&self) -> Vec<IfaceStatus> {
        self.ifaces
            .iter()
            .map(|i| {
                let mut s = i.status.clone();
                if self.chain.is_some() && s.ifindex != 0 {
                    // Read now: other tools change the chain without telling us.
                    s.dispatcher = dispatcher::programs_on(s.ifindex).ok().flatten();
                }
                s
            })
            .collect()
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
            let Some(Link::Direct(link)) = i.link.as_mut() else {
                if let (Some(Link::Chain(slot)), Some(c)) = (i.link.as_mut(), self.chain.as_ref()) {
                    if let Some(r) = check_slot(&i.name, slot, &mut i.status, c, self.mode, &self.pin_dir) {
                        repairs.push(r);
                    }
                }
                continue;
            };
            let was = i.status.state;
            match link.health(self.our_prog) {
                Health::Enforcing => i.status = enforcing(&i.name, link.ifindex, link.mode, self.our_prog),
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
                            i.status = enforcing(&i.name, link.ifindex, link.mode, self.our_prog);
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
                            i.status = enforcing(&i.name, link.ifindex, link.mode, self.our_prog);
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
            match i.link.take() {
                Some(Link::Direct(link)) => {
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
                Some(Link::Chain(slot)) => {
                    let ifindex = slot.ifindex;
                    // Only ampguard's program leaves the chain; the others stay.
                    slot.detach().map_err(|e| anyhow::anyhow!("removing ampguard from the dispatcher of {}: {e}", i.name))?;
                    if let Ok(Some(d)) = dispatcher::programs_on(ifindex) {
                        if d.programs.iter().any(|p| p.id == self.our_prog) {
                            anyhow::bail!("{} still runs this daemon's program in its dispatcher after libxdp removed it", i.name);
                        }
                    }
                    done.push(i.name.clone());
                }
                None => {}
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
            let l = attach_one(self.chain.as_ref(), self.mode, &self.pin_dir, program, &i.name)?;
            tracing::info!(iface = i.name, mode = l.mode(), "attached by operator");
            i.status = status_of(&i.name, &l, self.our_prog);
            i.link = Some(l);
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
            let ok = match &i.link {
                Some(Link::Direct(l)) => matches!(l.health(self.our_prog), Health::Enforcing),
                Some(Link::Chain(s)) => matches!(s.health(), SlotHealth::Enforcing),
                None => false,
            };
            if ok {
                yes.push(i.name.clone());
            } else {
                no.push(i.name.clone());
            }
        }
        (yes, no)
    }
}

/// The watchdog's round for a dispatcher slot: the same repairs as for a
/// link (pin again; put the program back in the chain when it was removed).
fn check_slot(
    name: &str,
    slot: &mut Slot,
    status: &mut IfaceStatus,
    c: &Component,
    mode: XdpModeSetting,
    pin_dir: &Path,
) -> Option<Repair> {
    let was = status.state;
    match slot.health() {
        SlotHealth::Enforcing => {
            *status = enforcing(name, slot.ifindex, slot.mode, c.id);
            None
        }
        SlotHealth::Unknown(e) => {
            if was != "unchecked" {
                tracing::warn!(iface = name, "cannot read the dispatcher ({e}); assuming nothing changed, not touching it");
            }
            status.state = "unchecked";
            status.problem = Some(format!("the last check failed: {e}"));
            None
        }
        SlotHealth::PinMissing => match super::pins::ensure_bpffs(pin_dir).and_then(|()| slot.repin(c).map_err(anyhow::Error::from)) {
            Ok(()) => {
                tracing::info!(iface = name, "pinned the dispatcher component again");
                *status = enforcing(name, slot.ifindex, slot.mode, c.id);
                Some(Repair::Repinned(name.into()))
            }
            Err(e) => {
                status.problem = Some(format!(
                    "enforcing, but the pin in {} could not be made again ({e:#}): a new daemon would not find this program to replace",
                    pin_dir.display()
                ));
                None
            }
        },
        SlotHealth::Removed => {
            tracing::error!(
                iface = name,
                "ampguard's program is no longer in the dispatcher chain of {name} (`xdp-loader unload`?); adding it again"
            );
            match dispatcher::attach(c, name, mode, pin_dir) {
                Ok(s) => {
                    *slot = s;
                    *status = enforcing(name, slot.ifindex, slot.mode, c.id);
                    Some(Repair::Reattached(name.into()))
                }
                Err(e) => {
                    let e = e.to_string();
                    if status.problem.as_deref() != Some(e.as_str()) {
                        tracing::error!(iface = name, "cannot add ampguard to the dispatcher again: {e}");
                    }
                    *status = IfaceStatus { attached: false, state: "not_enforcing", program_id: None, problem: Some(e), ..status.clone() };
                    None
                }
            }
        }
    }
}

/// Attach to `name` the way the config says, logging what was done.
fn attach_one(chain: Option<&Component>, mode: XdpModeSetting, pin_dir: &Path, program: &mut Xdp, name: &str) -> anyhow::Result<Link> {
    match chain {
        None => {
            let a = attach::attach_or_replace(program, name, mode, pin_dir)?;
            if a.replaced {
                tracing::info!(iface = name, ifindex = a.ifindex, "swapped the new program into the pinned link (no gap)");
            } else {
                tracing::info!(iface = name, ifindex = a.ifindex, mode = a.mode, "attached and pinned");
            }
            Ok(Link::Direct(a))
        }
        Some(c) => {
            let s = dispatcher::attach(c, name, mode, pin_dir)?;
            match s.replaced {
                Some(old) => tracing::info!(
                    iface = name,
                    ifindex = s.ifindex,
                    priority = c.priority,
                    "added the new program (id {}) to the dispatcher chain, then removed the previous run's (id {old}); both ran in between",
                    c.id
                ),
                None => tracing::info!(iface = name, ifindex = s.ifindex, mode = s.mode, priority = c.priority, "in the dispatcher chain (libxdp)"),
            }
            Ok(Link::Chain(s))
        }
    }
}
