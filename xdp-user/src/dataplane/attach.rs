//! Attaching the program to interfaces through pinned bpf links, so that the
//! data plane outlives the daemon, and a new daemon swaps its program in
//! atomically (BPF_LINK_UPDATE) instead of detaching and re-attaching.

use std::path::{Path, PathBuf};

use aya::programs::{
    links::{FdLink, PinnedLink},
    xdp::XdpLink,
    Xdp, XdpMode,
};

use crate::config::XdpModeSetting;

#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("interface {0} does not exist in this network namespace")]
    NoInterface(String),
    #[error("cannot attach XDP to {iface} in {mode} mode: {source}")]
    Attach { iface: String, mode: &'static str, source: aya::programs::ProgramError },
    #[error("cannot pin the XDP link of {iface} at {path}: {message}")]
    Pin { iface: String, path: PathBuf, message: String },
    #[error("the pinned link {path} is not an XDP link of this kind ({message}); remove it with `ampguard detach`")]
    Foreign { path: PathBuf, message: String },
}

/// How the program ended up on an interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attached {
    pub ifindex: u32,
    /// "native", "generic", or "kept" (link from a previous run, mode unchanged).
    pub mode: &'static str,
    /// Whether a pinned link from a previous run was updated in place.
    pub replaced: bool,
}

pub fn link_pin_path(pin_dir: &Path, iface: &str) -> PathBuf {
    pin_dir.join(format!("link_{iface}"))
}

pub fn ifindex(iface: &str) -> Option<u32> {
    let c = std::ffi::CString::new(iface).ok()?;
    // Safety: a valid NUL-terminated string.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => None,
        i => Some(i),
    }
}

/// Put `program` on `iface`: swap it into the link pinned by a previous run
/// if there is one (no moment without a program), else attach and pin.
pub fn attach_or_replace(program: &mut Xdp, iface: &str, mode: XdpModeSetting, pin_dir: &Path) -> Result<Attached, AttachError> {
    let ifindex = ifindex(iface).ok_or_else(|| AttachError::NoInterface(iface.into()))?;
    let path = link_pin_path(pin_dir, iface);
    if path.exists() {
        let foreign = |message: String| AttachError::Foreign { path: path.clone(), message };
        let pinned = PinnedLink::from_pin(&path).map_err(|e| foreign(e.to_string()))?;
        let fd: FdLink = pinned.into();
        let link = XdpLink::try_from(fd).map_err(|e| foreign(e.to_string()))?;
        let id = program.attach_to_link(link).map_err(|e| foreign(e.to_string()))?;
        // The pin keeps the link; the program must not own (and close) it.
        let _ = program.take_link(id);
        return Ok(Attached { ifindex, mode: "kept", replaced: true });
    }
    let tries: &[(XdpMode, &'static str)] = match mode {
        XdpModeSetting::Native => &[(XdpMode::Driver, "native")],
        XdpModeSetting::Generic => &[(XdpMode::Skb, "generic")],
        XdpModeSetting::Auto => &[(XdpMode::Driver, "native"), (XdpMode::Skb, "generic")],
    };
    let mut last = None;
    for (m, name) in tries {
        match program.attach(iface, *m) {
            Ok(id) => {
                if last.is_some() {
                    tracing::warn!(iface, "the driver of {iface} has no native XDP; using generic mode (slower, but enforcing)");
                }
                let link = program.take_link(id).map_err(|e| AttachError::Pin { iface: iface.into(), path: path.clone(), message: e.to_string() })?;
                let fd = FdLink::try_from(link).map_err(|e| AttachError::Pin { iface: iface.into(), path: path.clone(), message: e.to_string() })?;
                fd.pin(&path).map_err(|e| AttachError::Pin { iface: iface.into(), path: path.clone(), message: e.to_string() })?;
                return Ok(Attached { ifindex, mode: name, replaced: false });
            }
            Err(source) => last = Some(AttachError::Attach { iface: iface.into(), mode: name, source }),
        }
    }
    Err(last.expect("at least one mode tried"))
}

/// Whether the link pinned for `iface` still exists, holds a program, and is
/// attached to that interface (a link detached by hand keeps its pin and
/// program but loses its ifindex).
pub fn link_alive(pin_dir: &Path, iface: &str) -> bool {
    match super::linkinfo::xdp_link_target(&link_pin_path(pin_dir, iface)) {
        Ok((prog_id, ifindex)) => prog_id != 0 && ifindex != 0 && Some(ifindex) == self::ifindex(iface),
        Err(_) => false,
    }
}

/// Remove the pinned link of `iface`, detaching the program. Returns whether
/// there was one.
pub fn detach(pin_dir: &Path, iface: &str) -> std::io::Result<bool> {
    let path = link_pin_path(pin_dir, iface);
    match PinnedLink::from_pin(&path) {
        Ok(p) => {
            p.unpin()?;
            Ok(true)
        }
        Err(_) => Ok(false),
    }
}

/// Every interface with a link pinned under `pin_dir`.
pub fn pinned_interfaces(pin_dir: &Path) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(pin_dir) else { return Vec::new() };
    let mut v: Vec<String> =
        rd.filter_map(|e| e.ok()?.file_name().to_str()?.strip_prefix("link_").map(String::from)).collect();
    v.sort();
    v
}
