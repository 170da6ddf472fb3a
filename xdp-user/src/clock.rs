//! The kernel clock the XDP program reads (`bpf_ktime_get_coarse_ns` =
//! CLOCK_MONOTONIC, coarse) and conversion from wall-clock expiry times.

use std::time::{Duration, SystemTime};

/// CLOCK_MONOTONIC now, in ns.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // Safety: valid pointer to a timespec; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The monotonic ns at which a wall-clock instant falls (saturating at "now"
/// for instants in the past, so a past expiry is already expired).
pub(crate) fn wall_to_monotonic(at: SystemTime) -> u64 {
    let now_wall = SystemTime::now();
    let now_mono = monotonic_ns();
    match at.duration_since(now_wall) {
        Ok(ahead) => now_mono.saturating_add(ahead.as_nanos().min(u64::MAX as u128) as u64),
        Err(_) => now_mono.max(1),
    }
}

/// Wall-clock time of a monotonic instant.
pub(crate) fn monotonic_to_wall(mono: u64) -> SystemTime {
    let now_mono = monotonic_ns();
    let now_wall = SystemTime::now();
    if mono >= now_mono {
        now_wall + Duration::from_nanos(mono - now_mono)
    } else {
        now_wall - Duration::from_nanos(now_mono - mono)
    }
}
