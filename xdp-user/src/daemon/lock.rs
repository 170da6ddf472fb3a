//! One daemon per state directory and per pin directory.
//!
//! Two daemons on one pin directory swap programs into each other's links,
//! and the loser keeps answering "healthy" for policies that do nothing. So
//! before it touches any link the daemon takes an exclusive flock(2) on both
//! directories (a lock file in the state directory, the pin directory itself:
//! a bpffs holds no regular files), and a second daemon refuses at once,
//! naming the first. The kernel drops the locks when the process dies, even
//! by SIGKILL, so there is no stale lock to clean up.

use std::{
    fs::File,
    io::Write,
    os::{
        fd::AsRawFd,
        unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt},
    },
    path::{Path, PathBuf},
};

use anyhow::Context;

/// Held for the daemon's life.
pub struct Locks {
    _state: File,
    _pins: File,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("another ampguard (pid {pid}) is running with {what} {}; stop it first (`systemctl stop ampguard`, or kill {pid}) — two daemons would take each other's XDP links", path.display())]
    Held { what: &'static str, path: PathBuf, pid: String },
    #[error("cannot lock {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
}

fn try_flock(f: &File) -> std::io::Result<bool> {
    // Safety: a valid open fd.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}

/// The pid holding a flock on `path`, from /proc/locks ("1: FLOCK ADVISORY
/// WRITE `<pid>` `<major>:<minor>:<inode>` 0 EOF", major and minor in hex).
pub fn holder_of(path: &Path) -> Option<u32> {
    let md = std::fs::metadata(path).ok()?;
    let (major, minor) = (libc::major(md.dev()), libc::minor(md.dev()));
    let want = format!("{major:02x}:{minor:02x}:{}", md.ino());
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    locks.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(1) == Some(&"FLOCK") && f.get(5) == Some(&want.as_str())).then(|| f.get(4)?.parse().ok()).flatten()
    })
}

fn pid_text(path: &Path) -> String {
    holder_of(path).map_or_else(|| "unknown".into(), |p| p.to_string())
}

/// Lock the pin directory alone (for `ampguard detach`): None when a
/// daemon holds it.
pub fn lock_pin_dir(pin_dir: &Path) -> Result<Option<File>, LockError> {
    let io = |source| LockError::Io { path: pin_dir.into(), source };
    let f = File::open(pin_dir).map_err(io)?;
    Ok(if try_flock(&f).map_err(io)? { Some(f) } else { None })
}

/// Take both locks, or say who has them.
pub fn acquire(state_dir: &Path, pin_dir: &Path) -> anyhow::Result<Locks> {
    if !state_dir.exists() {
        // Policies and victims are not for other users to read.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(state_dir)
            .with_context(|| format!("creating the state directory {}", state_dir.display()))?;
    }
    let lock_path = state_dir.join("lock");
    let io = |source| LockError::Io { path: lock_path.clone(), source };
    let mut state =
        std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).mode(0o600).open(&lock_path).map_err(io)?;
    if !try_flock(&state).map_err(io)? {
        return Err(LockError::Held { what: "the state directory", path: state_dir.into(), pid: pid_text(&lock_path) }.into());
    }
    let pins = File::open(pin_dir).map_err(|source| LockError::Io { path: pin_dir.into(), source })?;
    if !try_flock(&pins).map_err(|source| LockError::Io { path: pin_dir.into(), source })? {
        return Err(LockError::Held { what: "the pin directory", path: pin_dir.into(), pid: pid_text(pin_dir) }.into());
    }
    // Who holds it, for people reading the file; /proc/locks is the truth.
    // A full disk must not stop the daemon here, so a failed write is ignored.
    let _ = state.set_len(0).and_then(|()| writeln!(state, "pid {}\npin_dir {}", std::process::id(), pin_dir.display()));
    Ok(Locks { _state: state, _pins: pins })
}
