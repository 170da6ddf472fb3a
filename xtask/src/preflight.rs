//! Refuse at once, with a clear message, on machines that can never work.

use anyhow::{bail, Result};
use std::path::Path;

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Files whose absence means the kernel cannot run ampguard.
const KERNEL_PROBES: &[(&str, &str)] = &[
    ("/sys/kernel/btf/vmlinux", "kernel BTF (CONFIG_DEBUG_INFO_BTF)"),
    ("/proc/sys/kernel/bpf_stats_enabled", "the bpf() syscall (CONFIG_BPF_SYSCALL)"),
];

pub fn check_kernel() -> Result<()> {
    let missing: Vec<String> =
        KERNEL_PROBES.iter().filter(|(p, _)| !Path::new(p).exists()).map(|(p, what)| format!("{p} is missing: no {what}")).collect();
    if !missing.is_empty() {
        bail!(
            "this kernel cannot run eBPF/XDP programs:\n  {}\n\
             ampguard needs Linux >= 5.18 with BPF syscall, BPF JIT and BTF enabled",
            missing.join("\n  ")
        );
    }
    Ok(())
}

/// Checks for `setup` in install mode: root, apt-get, a BPF-capable kernel.
pub fn check_for_install() -> Result<()> {
    if !is_root() {
        bail!(
            "setup needs root (it installs packages with apt-get and mounts bpffs): \
             run `sudo cargo xtask setup`.\n\
             (Running ampguard itself needs root, or CAP_BPF + CAP_NET_ADMIN.)"
        );
    }
    if !crate::cmd::on_path("apt-get") {
        bail!(
            "apt-get not found: setup supports Debian 12 (bookworm) machines only; \
             install the equivalent of the packages listed in xtask/src/setup.rs by hand"
        );
    }
    check_kernel()
}
