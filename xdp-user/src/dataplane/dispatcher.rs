//! The opt-in dispatcher mode (`[xdp_dispatcher] enabled = true`): ampguard
//! runs as one program of libxdp's multi-prog dispatcher, the chain that
//! xdp-loader, xdp-filter and other libxdp users share, at a configured
//! priority, continuing the chain after XDP_PASS.
//!
//! How: ampguard's program is loaded a second time, as a freplace
//! (BPF_PROG_TYPE_EXT) program on the very maps of the daemon's data plane
//! (aya reuses them from pins made for the load, and the map ids are
//! checked); libxdp (dlopened, `libxdp`) takes that program by fd and does
//! the dispatcher protocol: a new dispatcher with every program of the
//! chain, swapped in atomically, pinned under /sys/fs/bpf/xdp, under its
//! lock. libbpf (and so libxdp) cannot open aya's ELF itself: its maps are
//! legacy `maps`-section definitions, which libbpf 1.x refuses.
//!
//! ampguard's program stays in the chain through libxdp's pins while the
//! daemon is down. The daemon also pins its program as
//! `pin_dir/dispatched_<iface>`, which is how a new daemon (or an offline
//! `ampguard detach`) finds the program of the previous run to remove.

use std::{
    os::fd::{AsFd, OwnedFd},
    path::{Path, PathBuf},
};

use aya::{
    programs::{Extension, Xdp},
    EbpfLoader,
};
use serde::Deserialize;
use xdp_common::maps as names;

use super::{
    attach,
    libxdp::{self, AttachMode, LibxdpError},
    linkinfo, DataPlane, DpError, BASELINE_OBJECT, XDP_OBJECT,
};
use crate::config::XdpModeSetting;

/// `[xdp_dispatcher]` in the config.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DispatcherConfig {
    /// Run as one program of libxdp's dispatcher instead of owning the XDP hook through a bpf link.
    pub enabled: bool,
    /// libxdp run priority: lower runs first (xdp-loader's `--prio`; libxdp's default is 50).
    pub priority: u32,
}

impl Default for DispatcherConfig {
    fn default() -> Self {
        // Before most others by default: dropping a flood early spares the programs after it.
        Self { enabled: false, priority: 10 }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error(transparent)]
    Libxdp(#[from] LibxdpError),
    #[error("loading ampguard's program as a dispatcher component failed: {0}")]
    Load(String),
    #[error("interface {0} does not exist in this network namespace")]
    NoInterface(String),
    #[error("cannot look up interface {iface}: {source}")]
    Lookup { iface: String, source: std::io::Error },
    #[error(
        "interface {iface} runs XDP program id {id} ({name}) without libxdp's dispatcher; the dispatcher mode can only join \
         a dispatcher or create one on a free hook: unload it (`ampguard detach` for a direct-mode ampguard, \
         `xdp-loader unload {iface} --all`, `ip link set dev {iface} xdp off`), or set `[xdp_dispatcher] enabled = false`"
    )]
    NotDispatcher { iface: String, id: u32, name: String },
    #[error(
        "{iface} has ampguard's direct (bpf link) attachment pinned at {pin}; detach it first (`ampguard detach`, \
         with the daemon stopped) to move {iface} to the dispatcher mode"
    )]
    DirectPinned { iface: String, pin: PathBuf },
    #[error(
        "ampguard's program pinned at {pin} is in the dispatcher of {iface}, which is not in this network namespace: run \
         `nsenter --net=/var/run/netns/NAME ampguard detach` there (if {iface} was deleted, its dispatcher went with it: `rm {pin}`)"
    )]
    NotHere { iface: String, pin: PathBuf },
    #[error("cannot pin ampguard's dispatcher component of {iface} at {path}: {source}")]
    Pin { iface: String, path: PathBuf, source: std::io::Error },
}

/// bpffs names cannot hold a dot (see attach.rs).
fn pin_name(iface: &str) -> String {
    iface.replace('%', "%25").replace('.', "%2e")
}

pub fn program_pin_path(pin_dir: &Path, iface: &str) -> PathBuf {
    pin_dir.join(format!("dispatched_{}", pin_name(iface)))
}

/// Every interface with a dispatcher component pinned under `pin_dir`.
pub fn pinned_interfaces(pin_dir: &Path) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(pin_dir) else { return Vec::new() };
    let mut v: Vec<String> = rd
        .filter_map(|e| e.ok()?.file_name().to_str()?.strip_prefix("dispatched_").map(|n| n.replace("%2e", ".").replace("%25", "%")))
        .collect();
    v.sort();
    v
}

/// Whether this kernel loads freplace (BPF_PROG_TYPE_EXT) programs, which
/// libxdp's dispatcher is made of: a small extension of the baseline
/// objects is loaded against `xdp_pass`, and both are unloaded. Some kernels
/// refuse the type (a sandbox's policy, or no BPF trampoline); there libxdp
/// falls back to one program per interface for every tool.
pub fn freplace_supported() -> Result<(), String> {
    let mut base = aya::Ebpf::load(BASELINE_OBJECT).map_err(|e| format!("loading the baseline object: {e}"))?;
    let target: &mut Xdp = base.program_mut("xdp_pass").ok_or("no xdp_pass")?.try_into().map_err(|e| format!("{e}"))?;
    target.load().map_err(|e| format!("loading xdp_pass: {e}"))?;
    let target_fd = target.fd().map_err(|e| e.to_string())?.try_clone().map_err(|e| e.to_string())?;
    let mut probe = EbpfLoader::new().extension("xdp_count_drop").load(BASELINE_OBJECT).map_err(|e| format!("{e}"))?;
    let ext: &mut Extension = probe.program_mut("xdp_count_drop").ok_or("no xdp_count_drop")?.try_into().map_err(|e| format!("{e}"))?;
    ext.load(target_fd, "xdp_pass").map_err(|e| format!("the kernel refuses freplace (BPF_PROG_TYPE_EXT) programs: {e}"))
}

/// ampguard's program loaded as a freplace program on the data plane's maps.
pub struct Component {
    /// Holds the program (and its map fds) while the daemon runs.
    ebpf: aya::Ebpf,
    pub id: u32,
    pub priority: u32,
}

fn ext(ebpf: &aya::Ebpf) -> &Extension {
    ebpf.program(names::PROGRAM).expect("loaded").try_into().expect("extension")
}

impl Component {
    /// Load ampguard's program as an extension that uses `dp`'s maps. `scratch`
    /// (a new directory on a bpffs) holds pins of the maps for the load, and is
    /// removed after.
    pub fn load(dp: &DataPlane, scratch: &Path, priority: u32) -> Result<Self, DispatchError> {
        let load_err = |e: String| DispatchError::Load(e);
        let _ = std::fs::remove_dir_all(scratch);
        dp.pin_maps(scratch).map_err(|e| load_err(format!("pinning the maps in {}: {e}", scratch.display())))?;
        let r = Self::load_on_pins(dp, scratch, priority);
        let _ = std::fs::remove_dir_all(scratch);
        r
    }

    fn load_on_pins(dp: &DataPlane, scratch: &Path, priority: u32) -> Result<Self, DispatchError> {
        let load_err = |e: String| DispatchError::Load(e);
        // An extension is verified against a target function of the same
        // signature; the baseline `xdp_pass` is one. libxdp re-attaches it to
        // the dispatcher's slot, after which the target is no longer referenced.
        let mut base = aya::Ebpf::load(BASELINE_OBJECT).map_err(|e| load_err(format!("the load target: {e}")))?;
        let target: &mut Xdp =
            base.program_mut("xdp_pass").ok_or_else(|| load_err("no xdp_pass".into()))?.try_into().map_err(|e| load_err(format!("{e}")))?;
        target.load().map_err(|e| load_err(format!("the load target: {e}")))?;
        let target_fd = target.fd().map_err(|e| load_err(e.to_string()))?.try_clone().map_err(|e| load_err(e.to_string()))?;

        let paths: Vec<(&str, PathBuf)> = names::ALL.iter().map(|n| (*n, scratch.join(n))).collect();
        let mut loader = EbpfLoader::new();
        loader.extension(names::PROGRAM);
        for (n, p) in &paths {
            loader.map_pin_path(n, p.as_path());
        }
        let mut ebpf = loader.load(XDP_OBJECT).map_err(|e| load_err(e.to_string()))?;
        let prog: &mut Extension = ebpf
            .program_mut(names::PROGRAM)
            .ok_or_else(|| load_err("no program".into()))?
            .try_into()
            .map_err(|e| load_err(format!("{e}")))?;
        prog.load(target_fd, "xdp_pass").map_err(|e| load_err(format!("{e} (the kernel needs BTF and freplace support)")))?;
        let info = prog.info().map_err(|e| load_err(e.to_string()))?;
        let id = info.id();

        // The extension must write and read the daemon's maps, not copies.
        let mut ours: Vec<u32> = info.map_ids().map_err(|e| load_err(e.to_string()))?.unwrap_or_default();
        let mut theirs: Vec<u32> = dp.program().info().and_then(|i| i.map_ids()).map_err(|e| load_err(e.to_string()))?.unwrap_or_default();
        ours.sort_unstable();
        theirs.sort_unstable();
        if ours != theirs {
            return Err(load_err(format!(
                "the extension uses maps {ours:?}, not the data plane's {theirs:?} (a map the loader did not pin?); refusing to run on copies"
            )));
        }
        Ok(Self { ebpf, id, priority })
    }

    fn fd(&self) -> Result<std::os::fd::BorrowedFd<'_>, DispatchError> {
        Ok(ext(&self.ebpf).fd().map_err(|e| DispatchError::Load(e.to_string()))?.as_fd())
    }

    fn libxdp_program(&self) -> Result<libxdp::Program, DispatchError> {
        let mut p = libxdp::Program::from_fd(self.fd()?)?;
        p.set_priority(self.priority)?;
        p.chain_on_pass_only()?;
        // ampguard's program is built for multi-buffer frames (`#[xdp(frags)]`).
        p.set_frags(true)?;
        Ok(p)
    }
}

/// ampguard's component in one interface's dispatcher.
#[derive(Debug)]
pub struct Slot {
    pub iface: String,
    pub ifindex: u32,
    pub mode: &'static str,
    /// The program of a previous run that this one took over from.
    pub replaced: Option<u32>,
    prog_id: u32,
    pin: PathBuf,
}

fn ifindex_of(iface: &str) -> Result<u32, DispatchError> {
    attach::ifindex(iface)
        .map_err(|source| DispatchError::Lookup { iface: iface.into(), source })?
        .ok_or_else(|| DispatchError::NoInterface(iface.into()))
}

/// The id of the program pinned at `path`, if one is.
fn pinned_prog_id(path: &Path) -> Option<u32> {
    let fd: OwnedFd = linkinfo::open_pinned(path).ok()?;
    Some(libxdp::Program::from_fd(fd.as_fd()).ok()?.id())
}

fn modes(setting: XdpModeSetting) -> &'static [AttachMode] {
    match setting {
        XdpModeSetting::Native => &[AttachMode::Native],
        XdpModeSetting::Generic => &[AttachMode::Skb],
        XdpModeSetting::Auto => &[AttachMode::Native, AttachMode::Skb],
    }
}

/// Add `c` to the dispatcher of `iface` (creating one on a free hook, or
/// joining the one another tool made). A program of a previous run (found
/// through its pin) is removed only after the new one is in the chain: in
/// between both run, so no packet meets a chain without ampguard.
pub fn attach(c: &Component, iface: &str, setting: XdpModeSetting, pin_dir: &Path) -> Result<Slot, DispatchError> {
    let ifindex = ifindex_of(iface)?;
    let direct = attach::link_pin_path(pin_dir, iface);
    if direct.exists() {
        return Err(DispatchError::DirectPinned { iface: iface.into(), pin: direct });
    }
    let pin = program_pin_path(pin_dir, iface);
    let previous = pinned_prog_id(&pin).filter(|id| *id != c.id);
    let current = libxdp::dispatcher(ifindex)?;
    let tries: Vec<AttachMode> = match &current {
        Some(d) if d.legacy => {
            let name = d.programs.first().map(|p| p.name.clone()).unwrap_or_default();
            return Err(DispatchError::NotDispatcher { iface: iface.into(), id: d.id, name });
        }
        // Joining a dispatcher: in its mode.
        Some(d) if d.programs.iter().any(|p| p.id == c.id) => Vec::new(),
        Some(_) => vec![AttachMode::Unspec],
        None => modes(setting).to_vec(),
    };
    let mut last = None;
    for m in tries {
        match c.libxdp_program()?.attach(ifindex, m) {
            Ok(()) => {
                last = None;
                break;
            }
            Err(e) => last = Some(e),
        }
    }
    if let Some(e) = last {
        return Err(e.into());
    }
    let mode = libxdp::dispatcher(ifindex).ok().flatten().map_or("kept", |d| d.mode);
    // Pin (replacing the previous run's pin in one rename).
    let tmp = pin_dir.join(format!("new_dispatched_{}", pin_name(iface)));
    let _ = std::fs::remove_file(&tmp);
    let pinned = linkinfo::pin_fd(c.fd()?, &tmp).and_then(|()| std::fs::rename(&tmp, &pin));
    if let Err(source) = pinned {
        let _ = std::fs::remove_file(&tmp);
        // The chain holds the program through libxdp's pins; say so rather than undo.
        return Err(DispatchError::Pin { iface: iface.into(), path: pin, source });
    }
    let mut replaced = None;
    if let Some(old) = previous {
        let in_chain = libxdp::dispatcher(ifindex).ok().flatten().is_some_and(|d| d.programs.iter().any(|p| p.id == old));
        if in_chain {
            match libxdp::Program::from_id(old).and_then(|mut p| p.detach(ifindex)) {
                Ok(()) => replaced = Some(old),
                Err(e) => tracing::error!(
                    iface,
                    "cannot remove the previous run's program id {old} from the dispatcher: {e}; it runs beside this one"
                ),
            }
        }
    }
    Ok(Slot { iface: iface.into(), ifindex, mode, replaced, prog_id: c.id, pin })
}

/// What the watchdog sees of a slot.
#[derive(Debug)]
pub enum SlotHealth {
    Enforcing,
    /// Not in the interface's chain (unloaded with xdp-loader, the hook cleared).
    Removed,
    PinMissing,
    Unknown(String),
}

impl Slot {
    pub fn health(&self) -> SlotHealth {
        match libxdp::dispatcher(self.ifindex) {
            Err(e) => SlotHealth::Unknown(e.to_string()),
            Ok(Some(d)) if d.programs.iter().any(|p| p.id == self.prog_id) => match std::fs::symlink_metadata(&self.pin) {
                Ok(_) => SlotHealth::Enforcing,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => SlotHealth::PinMissing,
                Err(e) => SlotHealth::Unknown(e.to_string()),
            },
            Ok(_) => SlotHealth::Removed,
        }
    }

    pub fn repin(&self, c: &Component) -> Result<(), DispatchError> {
        linkinfo::pin_fd(c.fd()?, &self.pin).map_err(|source| DispatchError::Pin {
            iface: self.iface.clone(),
            path: self.pin.clone(),
            source,
        })
    }

    /// Remove ampguard's program from the chain (the others stay) and its pin.
    pub fn detach(self) -> Result<(), DispatchError> {
        let _ = std::fs::remove_file(&self.pin);
        remove_from_chain(self.ifindex, self.prog_id)
    }
}

fn remove_from_chain(ifindex: u32, id: u32) -> Result<(), DispatchError> {
    let in_chain = libxdp::dispatcher(ifindex)?.is_some_and(|d| !d.legacy && d.programs.iter().any(|p| p.id == id));
    if in_chain {
        libxdp::Program::from_id(id)?.detach(ifindex)?;
    }
    Ok(())
}

/// With no daemon running: remove ampguard's component (pinned by a previous
/// run) from the dispatcher of `iface`, and its pin. Returns whether there was one.
pub fn detach_pinned(pin_dir: &Path, iface: &str) -> Result<bool, DispatchError> {
    let pin = program_pin_path(pin_dir, iface);
    let Some(id) = pinned_prog_id(&pin) else { return Ok(false) };
    match attach::ifindex(iface) {
        Ok(Some(ifindex)) => remove_from_chain(ifindex, id)?,
        // Another network namespace's interface, or one deleted: nothing here can tell.
        Ok(None) => return Err(DispatchError::NotHere { iface: iface.into(), pin }),
        Err(source) => return Err(DispatchError::Lookup { iface: iface.into(), source }),
    }
    std::fs::remove_file(&pin).map_err(|source| DispatchError::Pin { iface: iface.into(), path: pin, source })?;
    Ok(true)
}

/// The programs on `iface` as libxdp sees them, for status (None: nothing attached).
pub fn programs_on(ifindex: u32) -> Result<Option<libxdp::Dispatcher>, LibxdpError> {
    libxdp::dispatcher(ifindex)
}

impl From<DispatchError> for DpError {
    fn from(e: DispatchError) -> Self {
        DpError::Io(std::io::Error::other(e.to_string()))
    }
}
