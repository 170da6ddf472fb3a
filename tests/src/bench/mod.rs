//! The benchmark of `cargo xtask bench` (binary `bench`): per-packet cost
//! through BPF_PROG_TEST_RUN (`cost`), live traffic across the lab's veth pair
//! against nftables and a count-and-drop program (`live`), with realistic
//! tables (`tables`), where the time goes (`diag`), the control plane
//! (`control`: policy adds, ban latency, daemon memory), built-in detection's
//! reaction time beside FastNetMon's (`reaction`), machine facts (`sys`),
//! written to BENCHMARKS.md (`report`).

pub mod control;
pub mod cost;
pub mod diag;
pub mod live;
pub mod memory;
pub mod peer;
pub mod reaction;
pub mod report;
pub mod sys;
pub mod tables;
