//! Types shared by the XDP program (`xdp-ebpf`) and the controller (`xdp-user`).
//!
//! Everything that crosses the kernel/user boundary lives here once: map names,
//! map value layouts (`#[repr(C)]`, plain old data), vector ids, rule actions,
//! and the pure logic both sides must agree on (the token bucket, the
//! victim-table encoding). The reference model in `xdp-user` reuses the same
//! functions, so a disagreement between model and program is a real bug in one
//! of them, not a copy that drifted.
#![no_std]

pub mod bucket;
pub mod counters;
pub mod maps;
pub mod policy;
pub mod signature;
pub mod vector;
pub mod wire;

#[cfg(feature = "user")]
mod user;
