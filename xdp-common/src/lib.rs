//! Types shared by the XDP program (`xdp-ebpf`) and the controller (`xdp-user`).
//!
//! Everything that crosses the kernel/user boundary lives here once: map names,
//! map value layouts (`#[repr(C)]`, plain old data), vector ids, rule actions,
//! the wire contract (`wire`: EtherTypes, parsing limits), and the pure logic
//! the program and the controller must agree on (the token bucket, the
//! victim-table encoding, the reflection signatures over fixed-size byte
//! arrays). Each is unit-tested here, on the host.
//!
//! The reference model in `xdp-user` reuses the token bucket and the limits but
//! has its own parser and signatures, written from the RFCs: the differential
//! test compares two independent readings, so a disagreement is a real bug in
//! one of them.
#![no_std]

pub mod bucket;
pub mod counters;
pub mod maps;
pub mod meter;
pub mod policy;
pub mod signature;
pub mod v6;
pub mod vector;
pub mod wire;

#[cfg(feature = "user")]
mod user;
