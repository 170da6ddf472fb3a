//! Attaching the program to interfaces through pinned bpf links, so that the
//! data plane outlives the daemon, and a new daemon swaps its program in
//! atomically (BPF_LINK_UPDATE) instead of detaching and re-attaching.
//!
//! While the daemon runs it also holds an fd of each link: the link then
//! lives while either the fd or the pin does, so a pin removed by hand is put
//! back from the fd with nothing detached, and the link's health is read from
//! the fd without opening anything (it answers even at the file limit).
//! Only two observations mean "not enforcing": the kernel reports the link
//! detached (ifindex 0), or it holds another program. Anything else that
//! fails (EMFILE, EPERM, ...) is "unknown", and nothing is touched for it.

use std::{
    os::fd::{AsFd, OwnedFd},
    path::{Path, PathBuf},
};

use aya::programs::{
    links::{FdLink, PinnedLink},
    xdp::XdpLink,
    Xdp, XdpMode,
};

use super::{linkinfo, netdev};
use crate::config::XdpModeSetting;

#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("interface {0} does not exist in this network namespace")]
    NoInterface(String),
    #[error("cannot look up interface {iface}: {source}")]
    Lookup { iface: String, source: std::io::Error },
    #[error(
        "interface {iface} already runs {other}, which is not ampguard's pinned link in {pin_dir}; \
         detach it (`ip link set dev {iface} xdp off`, `xdp-loader unload`) or stop the ampguard that owns it"
    )]
    Occupied { iface: String, other: netdev::XdpOnInterface, pin_dir: PathBuf },
    #[error("cannot attach XDP to {iface} in {mode} mode: {source}")]
    Attach { iface: String, mode: &'static str, source: aya::programs::ProgramError },
    #[error("cannot pin the XDP link of {iface} at {path}: {message}")]
    Pin { iface: String, path: PathBuf, message: String },
    #[error("the pinned link {path} is not an XDP link of this kind ({message}); remove it with `ampguard detach`")]
    Foreign { path: PathBuf, message: String },
}

/// The program on one interface, through a pinned link this daemon also holds.
#[derive(Debug)]
pub struct Attachment {
    pub iface: String,
    pub ifindex: u32,
    /// "native", "generic" (as the kernel reports it), or "kept" where it could not tell.
    pub mode: &'static str,
    /// Whether a pinned link from a previous run was updated in place.
    pub replaced: bool,
    link: OwnedFd,
    pin: PathBuf,
}

/// What the watchdog sees of an attachment.
#[derive(Debug)]
pub enum Health {
    Enforcing,
    /// The kernel detached the link (`bpftool link detach`, the interface went away).
    Detached,
    /// The link holds someone else's program (a `bpftool link update`, another daemon).
    Foreign {
        prog_id: u32,
    },
    /// The link is attached, but its pin is gone (removed by hand, bpffs unmounted).
    PinMissing,
    /// The question could not be answered (EMFILE, ...): assume nothing.
    Unknown(std::io::Error),
}

/// bpffs refuses names with a dot (reserved for its own files), and VLAN
/// interfaces are named like `eth0.100`: pin names escape '.' (and '%').
fn pin_name(iface: &str) -> String {
    iface.replace('%', "%25").replace('.', "%2e")
}

fn iface_of_pin_name(name: &str) -> String {
    name.replace("%2e", ".").replace("%25", "%")
}

pub fn link_pin_path(pin_dir: &Path, iface: &str) -> PathBuf {
    pin_dir.join(format!("link_{}", pin_name(iface)))
}

/// The interface's index; Ok(None) only when it does not exist (ENODEV).
pub fn ifindex(iface: &str) -> std::io::Result<Option<u32>> {
    let c = std::ffi::CString::new(iface).map_err(std::io::Error::other)?;
    // Safety: a valid NUL-terminated string.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENODEV) {
                Ok(None)
            } else {
                Err(e)
            }
        }
        i => Ok(Some(i)),
    }
}

fn mode_of(ifindex: u32) -> &'static str {
    match netdev::xdp_program(ifindex) {
        Ok(Some(x)) => x.mode,
        _ => "kept",
    }
}

/// Put `program` on `iface`: swap it into the link pinned by a previous run
/// if there is one (no moment without a program), else attach and pin. An
/// interface running a program that is not behind our pin is refused, naming it.
pub fn attach_or_replace(program: &mut Xdp, iface: &str, mode: XdpModeSetting, pin_dir: &Path) -> Result<Attachment, AttachError> {
    let ifindex = ifindex(iface)
        .map_err(|source| AttachError::Lookup { iface: iface.into(), source })?
        .ok_or_else(|| AttachError::NoInterface(iface.into()))?;
    let path = link_pin_path(pin_dir, iface);
    if path.exists() {
        let foreign = |message: String| AttachError::Foreign { path: path.clone(), message };
        let held = linkinfo::open_pinned(&path).map_err(|e| foreign(e.to_string()))?;
        let (_, link_ifindex) = linkinfo::link_target(held.as_fd()).map_err(|e| foreign(e.to_string()))?;
        if link_ifindex == ifindex {
            let pinned = PinnedLink::from_pin(&path).map_err(|e| foreign(e.to_string()))?;
            let fd: FdLink = pinned.into();
            let link = XdpLink::try_from(fd).map_err(|e| foreign(e.to_string()))?;
            let id = program.attach_to_link(link).map_err(|e| foreign(e.to_string()))?;
            // The pin and `held` keep the link; the program must not own (and close) it.
            let _ = program.take_link(id);
            return Ok(Attachment { iface: iface.into(), ifindex, mode: mode_of(ifindex), replaced: true, link: held, pin: path });
        }
        // A link of an earlier run that the kernel detached (ifindex 0) or that
        // belonged to an interface since re-created: attach anew, and let the
        // new pin replace it.
        tracing::warn!(iface, pin = %path.display(), "the pinned link is no longer attached to {iface}; attaching anew");
    }
    attach_fresh(program, iface, ifindex, mode, pin_dir)
}

/// Attach a new link and pin it at the interface's pin path, replacing a
/// stale pin there with one rename (the old pin is never removed first).
fn attach_fresh(program: &mut Xdp, iface: &str, ifindex: u32, mode: XdpModeSetting, pin_dir: &Path) -> Result<Attachment, AttachError> {
    let path = link_pin_path(pin_dir, iface);
    let occupied = || match netdev::xdp_program(ifindex) {
        Ok(Some(other)) => Some(AttachError::Occupied { iface: iface.into(), other, pin_dir: pin_dir.into() }),
        Ok(None) => None,
        Err(e) => {
            tracing::warn!(iface, "cannot ask rtnetlink which XDP program {iface} runs: {e}");
            None
        }
    };
    if let Some(e) = occupied() {
        return Err(e);
    }
    let tries: &[(XdpMode, &'static str)] = match mode {
        XdpModeSetting::Native => &[(XdpMode::Driver, "native")],
        XdpModeSetting::Generic => &[(XdpMode::Skb, "generic")],
        XdpModeSetting::Auto => &[(XdpMode::Driver, "native"), (XdpMode::Skb, "generic")],
    };
    let pin_err = |message: String| AttachError::Pin { iface: iface.into(), path: path.clone(), message };
    let mut last = None;
    for (m, name) in tries {
        match program.attach(iface, *m) {
            Ok(id) => {
                if last.is_some() {
                    tracing::warn!(iface, "the driver of {iface} has no native XDP; using generic mode (slower, but enforcing)");
                }
                let link = program.take_link(id).map_err(|e| pin_err(e.to_string()))?;
                let fd = FdLink::try_from(link).map_err(|e| pin_err(e.to_string()))?;
                let tmp = pin_dir.join(format!("new_link_{}", pin_name(iface)));
                let _ = std::fs::remove_file(&tmp);
                let pinned = fd.pin(&tmp).map_err(|e| pin_err(e.to_string()))?;
                let held = linkinfo::open_pinned(&tmp).and_then(|held| std::fs::rename(&tmp, &path).map(|()| held));
                drop(pinned);
                return match held {
                    Ok(held) => Ok(Attachment { iface: iface.into(), ifindex, mode: name, replaced: false, link: held, pin: path }),
                    Err(e) => {
                        // Nothing else holds the new link: removing its pin detaches it.
                        let _ = std::fs::remove_file(&tmp);
                        Err(pin_err(format!("{e} (pinning at {} and renaming it over the pin)", tmp.display())))
                    }
                };
            }
            Err(source) => {
                // Someone attached meanwhile, or native failed because a
                // program is there: name it, and do not try generic on top.
                if let Some(e) = occupied() {
                    return Err(e);
                }
                last = Some(AttachError::Attach { iface: iface.into(), mode: name, source })
            }
        }
    }
    Err(last.expect("at least one mode tried"))
}

impl Attachment {
    /// What the kernel says of this link now, compared with `our_prog` (the
    /// id of the program this daemon loaded). Opens no file descriptor.
    pub fn health(&self, our_prog: u32) -> Health {
        let (prog, ifindex) = match linkinfo::link_target(self.link.as_fd()) {
            Ok(t) => t,
            Err(e) => return Health::Unknown(e),
        };
        if ifindex == 0 {
            return Health::Detached;
        }
        if prog != our_prog {
            return Health::Foreign { prog_id: prog };
        }
        match std::fs::symlink_metadata(&self.pin) {
            Ok(_) => Health::Enforcing,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Health::PinMissing,
            Err(e) => Health::Unknown(e),
        }
    }

    /// Pin the held link again (its pin was removed; nothing was detached).
    pub fn repin(&self) -> std::io::Result<()> {
        linkinfo::pin_fd(self.link.as_fd(), &self.pin)
    }

    /// After the kernel detached the link: attach `program` anew; the new pin
    /// replaces the dead one in one rename.
    pub fn reattach(&mut self, program: &mut Xdp, mode: XdpModeSetting, pin_dir: &Path) -> Result<(), AttachError> {
        let ifindex = ifindex(&self.iface)
            .map_err(|source| AttachError::Lookup { iface: self.iface.clone(), source })?
            .ok_or_else(|| AttachError::NoInterface(self.iface.clone()))?;
        *self = attach_fresh(program, &self.iface, ifindex, mode, pin_dir)?;
        Ok(())
    }

    /// Stop enforcing here: remove the pin and close the held fd, which
    /// releases the link and detaches the program.
    pub fn detach(self) -> std::io::Result<()> {
        match std::fs::remove_file(&self.pin) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// Remove the pinned link of `iface`, detaching the program (when no running
/// daemon holds it too). Returns whether there was one.
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
    let mut v: Vec<String> = rd.filter_map(|e| e.ok()?.file_name().to_str()?.strip_prefix("link_").map(iface_of_pin_name)).collect();
    v.sort();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_names_of_vlan_interfaces_have_no_dot() {
        let p = link_pin_path(Path::new("/sys/fs/bpf/ampguard"), "eth0.100");
        assert_eq!(p, Path::new("/sys/fs/bpf/ampguard/link_eth0%2e100"));
        for i in ["eth0", "eth0.100", "bond0.7.9", "we%ird.1"] {
            assert_eq!(iface_of_pin_name(&pin_name(i)), i);
        }
    }
}
