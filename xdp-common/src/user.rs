//! `aya::Pod` for the map value types, so the controller can read and write them.
//! Safety: all are `#[repr(C)]`, `Copy`, made of integers, with explicit padding.

use crate::{
    bucket::Limiter,
    counters::{CacheEntry, Counter, RuleCounts, VerdictCounters},
    policy::{Config, Policy, RuleEntry, Sample},
};

unsafe impl aya::Pod for Policy {}
unsafe impl aya::Pod for Config {}
unsafe impl aya::Pod for Limiter {}
unsafe impl aya::Pod for Counter {}
unsafe impl aya::Pod for VerdictCounters {}
unsafe impl aya::Pod for Sample {}
unsafe impl aya::Pod for RuleEntry {}
unsafe impl aya::Pod for RuleCounts {}
unsafe impl aya::Pod for CacheEntry {}
unsafe impl aya::Pod for crate::v6::V6Meta {}
unsafe impl aya::Pod for crate::meter::MeterKey {}
unsafe impl aya::Pod for crate::meter::SketchCell {}
unsafe impl aya::Pod for crate::meter::Tracked {}
unsafe impl aya::Pod for crate::meter::MeterCfg {}
unsafe impl aya::Pod for crate::meter::MeterEvent {}
