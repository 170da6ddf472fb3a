//! Where the pins go, so that they outlive the process.
//!
//! Pins hold enforcement while the daemon is down, but only if they live on
//! a bpffs that outlives the daemon's mount namespace. `ip netns exec` gives
//! its command a private mount namespace with a fresh /sys and no bpffs; a
//! bpffs mounted there dies with the process, and with it every pin. So when
//! the daemon's mount namespace is not that of the process that started it
//! (or of pid 1), it pins in that outer namespace's bpffs instead, reached
//! through /proc/PID/root, or refuses to start.

use std::{
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context};

const BPF_FS_MAGIC: i64 = 0xcafe4a11;

pub fn is_bpffs(p: &Path) -> bool {
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
/// fresh machine has nothing at /sys/fs/bpf). Only for a mount namespace whose
/// mounts outlive the process (see `resolve`).
pub(crate) fn ensure_bpffs(dir: &Path) -> anyhow::Result<()> {
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

fn mount_ns(pid: &str) -> Option<(u64, u64)> {
    let m = std::fs::metadata(format!("/proc/{pid}/ns/mnt")).ok()?;
    Some((m.dev(), m.ino()))
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
    stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
}

/// The nearest process (an ancestor, else pid 1) whose mount namespace we can
/// read and is not ours: where the mounts that outlive us are. None when every
/// readable one shares ours (the usual case: a shell, systemd) or none is
/// readable (pid 1 without CAP_SYS_PTRACE, as under the shipped unit, whose
/// private mounts are copies of the host's anyway).
fn outer_namespace_process() -> Option<u32> {
    let ours = mount_ns("self")?;
    let mut pid = std::process::id();
    for _ in 0..64 {
        pid = parent_of(pid).filter(|p| *p > 0)?;
        match mount_ns(&pid.to_string()) {
            Some(ns) if ns != ours => return Some(pid),
            Some(_) => {}
            None => break,
        }
        if pid == 1 {
            return None;
        }
    }
    mount_ns("1").filter(|ns| *ns != ours).map(|_| 1)
}

/// `ip netns exec NS` mounts a fresh sysfs on /sys whose source is the
/// namespace's name: that name, if this process's /sys is such a mount.
fn ip_netns_exec_sysfs() -> Option<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        (left.split_whitespace().nth(4)? == "/sys").then_some(())?;
        let mut r = right.split_whitespace();
        (r.next()? == "sysfs").then_some(())?;
        let source = r.next()?;
        Path::new("/run/netns").join(source).exists().then(|| source.to_string())
    })
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Where the pins actually go for a configured `pin_dir`.
pub(crate) struct PinDir {
    /// A path to pin under. Reaching into another mount namespace it is
    /// /proc/self/fd/N, an fd opened at start, so it stays valid when the
    /// process it was found through exits.
    pub path: PathBuf,
    /// Why it is not `pin_dir` itself, when it is not.
    pub note: Option<String>,
    _dir: Option<std::fs::File>,
}

/// The host's view of `pin_dir` through another process's root, if this
/// process runs in a private mount namespace.
fn outer_view(pin_dir: &Path) -> Option<(u32, PathBuf)> {
    let pid = outer_namespace_process()?;
    Some((pid, Path::new(&format!("/proc/{pid}/root")).join(pin_dir.strip_prefix("/").unwrap_or(pin_dir))))
}

/// Resolve (and create, mounting a bpffs where that lasts) the pin directory.
pub(crate) fn resolve(pin_dir: &Path) -> anyhow::Result<PinDir> {
    let Some((pid, outer)) = outer_view(pin_dir) else {
        if let Some(ns) = ip_netns_exec_sysfs() {
            if !is_bpffs(pin_dir) {
                bail!(
                    "this process runs under `ip netns exec {ns}`: a bpffs mounted for {} would die with its private \
                     mount namespace, and no process outside it could be found to pin through (the one that started this \
                     one has exited). Start the daemon with `nsenter --net=/run/netns/{ns} ampguard run ...`, which keeps \
                     the host's mounts, or from a shell that stays running",
                    pin_dir.display()
                );
            }
        }
        ensure_bpffs(pin_dir)?;
        return Ok(PinDir { path: pin_dir.into(), note: None, _dir: None });
    };
    // A private mount namespace whose bpffs is the outer one (a copy of its
    // mounts, as `unshare -m` makes): the pins last as they are.
    if is_bpffs(pin_dir) && same_file(pin_dir, &outer) {
        return Ok(PinDir { path: pin_dir.into(), note: None, _dir: None });
    }
    if !outer.exists() && outer.parent().is_some_and(is_bpffs) {
        std::fs::create_dir_all(&outer).with_context(|| format!("creating the pin directory {}", outer.display()))?;
    }
    if is_bpffs(&outer) {
        let dir = std::fs::File::open(&outer).with_context(|| format!("opening {}", outer.display()))?;
        let path = PathBuf::from(format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&dir)));
        return Ok(PinDir {
            path,
            note: Some(format!(
                "this process runs in a private mount namespace (started with `ip netns exec`?) where a bpffs would die with it; \
                 pinning in {} of the mount namespace of pid {pid} instead, so enforcement outlives the process",
                pin_dir.display()
            )),
            _dir: Some(dir),
        });
    }
    bail!(
        "the pin directory {} would be on a bpffs that dies with this process's private mount namespace \
         (started with `ip netns exec`?), and {} of the mount namespace outside it (pid {pid}) is not on a bpffs either: \
         enforcement would stop when the daemon exits. Mount one there (`mount -t bpf bpf /sys/fs/bpf`), or start the \
         daemon with `nsenter --net=/run/netns/NAME ampguard run ...`, which keeps the host's mounts",
        pin_dir.display(),
        pin_dir.display()
    )
}

/// Where a running or earlier daemon put its pins for `pin_dir`, without
/// creating or mounting anything (for `ampguard detach`).
pub(crate) fn locate(pin_dir: &Path) -> PathBuf {
    match outer_view(pin_dir) {
        Some((_, outer)) if is_bpffs(&outer) && !same_file(pin_dir, &outer) => outer,
        _ => pin_dir.into(),
    }
}
