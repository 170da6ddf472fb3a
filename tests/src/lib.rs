//! Test support for ampguard: a network-namespace lab (`lab`) that the
//! integration tests and the demo share.

pub mod daemon;
pub mod lab;

/// Panics with a clear message unless running as root. Every privileged test
/// (namespaces, XDP attach, BPF maps) calls this first.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        panic!("needs root (or CAP_BPF+CAP_NET_ADMIN): run `sudo cargo xtask test`");
    }
}
