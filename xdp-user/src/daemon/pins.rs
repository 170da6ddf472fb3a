//! Where the pins go, so that they outlive the process.
//!
//! Pins hold enforcement while the daemon is down, but only if they live on
//! a bpffs that outlives the daemon's mount namespace. `ip netns exec` gives
//! its command a private mount namespace with a fresh /sys and no bpffs; a
//! bpffs mounted there dies with the process, and with it every pin. So when
//! the daemon's mount namespace is not the init one, it pins in the host's
//! bpffs instead, reached through /proc/1/root, or refuses to start.

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

/// Whether this process shares pid 1's mount namespace: Some(true/false), or
/// None when /proc/1 cannot be read (no CAP_SYS_PTRACE over pid 1, as under
/// the shipped systemd unit, whose mounts are a copy of the host's anyway).
fn in_init_mount_ns() -> Option<bool> {
    let ours = std::fs::metadata("/proc/self/ns/mnt").ok()?;
    let init = std::fs::metadata("/proc/1/ns/mnt").ok()?;
    Some(ours.ino() == init.ino() && ours.dev() == init.dev())
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Where the pins actually go for a configured `pin_dir`, with a line saying
/// why when it is not `pin_dir` itself.
pub struct PinDir {
    pub path: PathBuf,
    pub note: Option<String>,
}

/// Resolve (and create, mounting a bpffs where that lasts) the pin directory.
pub fn resolve(pin_dir: &Path) -> anyhow::Result<PinDir> {
    if in_init_mount_ns() != Some(false) {
        ensure_bpffs(pin_dir)?;
        return Ok(PinDir { path: pin_dir.into(), note: None });
    }
    let host = Path::new("/proc/1/root").join(pin_dir.strip_prefix("/").unwrap_or(pin_dir));
    // A private mount namespace whose bpffs is the host's own (a copy of the
    // host's mounts, as systemd's PrivateMounts= and `unshare -m` make): pins last.
    if is_bpffs(pin_dir) && same_file(pin_dir, &host) {
        return Ok(PinDir { path: pin_dir.into(), note: None });
    }
    let parent_is_bpffs = host.parent().is_some_and(is_bpffs);
    if is_bpffs(&host) || parent_is_bpffs {
        if !host.exists() {
            std::fs::create_dir_all(&host).with_context(|| format!("creating the pin directory {}", host.display()))?;
        }
        if is_bpffs(&host) {
            return Ok(PinDir {
                note: Some(format!(
                    "this process has a private mount namespace (started with `ip netns exec`?) whose /sys has no lasting bpffs; \
                     pinning in the host's bpffs at {} so enforcement outlives the process",
                    host.display()
                )),
                path: host,
            });
        }
    }
    bail!(
        "the pin directory {} would be on a bpffs that dies with this process's private mount namespace \
         (started with `ip netns exec`?), and the host's {} is not a bpffs to pin in instead: enforcement would stop \
         when the daemon exits. Mount a bpffs on the host (`mount -t bpf bpf /sys/fs/bpf`), or start the daemon in the \
         namespace with `nsenter --net=/run/netns/NAME ampguard run ...`, which keeps the host's mounts",
        pin_dir.display(),
        host.display()
    )
}

/// Where a running or earlier daemon put its pins for `pin_dir`, without
/// creating or mounting anything (for `ampguard detach`).
pub fn locate(pin_dir: &Path) -> PathBuf {
    if in_init_mount_ns() == Some(false) && !is_bpffs(pin_dir) {
        let host = Path::new("/proc/1/root").join(pin_dir.strip_prefix("/").unwrap_or(pin_dir));
        if is_bpffs(&host) {
            return host;
        }
    }
    pin_dir.into()
}
