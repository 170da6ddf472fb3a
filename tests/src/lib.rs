//! Test support for ampguard: a network-namespace lab (`lab`) that the
//! integration tests and the demo share.

pub mod daemon;
pub mod fastnetmon;
pub mod lab;

/// Panics with a clear message unless running as root. Every privileged test
/// (namespaces, XDP attach, BPF maps) calls this first.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        panic!("needs root (or CAP_BPF+CAP_NET_ADMIN): run `sudo cargo xtask test`");
    }
}

/// A scratch directory under the system temp dir, removed on drop (kept when
/// AMPGUARD_KEEP_TEST_DIRS is set, for looking at what a failed test left).
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("ag-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create a temporary directory");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("AMPGUARD_KEEP_TEST_DIRS").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
