//! Diagnostics: where the per-packet time of ampguard's paths goes, measured
//! from outside the program (the kernel side is not ours to instrument).
//!
//! - Clock: the same paths with the test clock set (`set_time_override`): the
//!   program's `now_ns()` then returns the AG_CONFIG value it reads first
//!   anyway, skipping `bpf_jiffies64` and the per-CPU clock cache (which calls
//!   `bpf_ktime_get_coarse_ns` once per tick); the difference is the real
//!   clock's cost, on the paths that read it (an expiring policy, a limit).
//! - Tables: the same paths through a second ampguard instance whose maps hold
//!   only the bench's own victims and 1 allowlist entry (default capacity).
//!
//! Rounds interleave: in each round, the bare program, the full-table
//! instance with the real clock, the same with the test clock, and the small
//! instance, so all columns see the same machine.

use ampguard::{clock, dataplane::DataPlane};
use anyhow::{bail, Result};
use aya::programs::Xdp;

use super::cost::{median, run, Path};

pub struct DiagRow {
    pub label: &'static str,
    /// Medians, ns: full tables + real clock, full tables + test clock, small tables + real clock.
    pub full: f64,
    pub test_clock: f64,
    pub small: f64,
}

pub struct Diag {
    pub bare: f64,
    pub rows: Vec<DiagRow>,
    pub rounds: usize,
}

/// `labels`: which of `paths` to diagnose.
pub fn measure(
    full: &mut DataPlane,
    small: &DataPlane,
    bare: &Xdp,
    paths: &[Path],
    labels: &[&'static str],
    rounds: usize,
    repeat: u32,
) -> Result<Diag> {
    let chosen: Vec<&Path> =
        labels.iter().map(|l| paths.iter().find(|p| p.label == *l).ok_or_else(|| anyhow::anyhow!("no path {l}"))).collect::<Result<_>>()?;
    let pkt = &chosen[0].pkt;
    let mut bare_s = Vec::new();
    let mut s: Vec<[Vec<f64>; 3]> = vec![Default::default(); chosen.len()];
    let check = |p: &Path, ret: u32| -> Result<()> {
        if ret != p.expect {
            bail!("diagnostics: path {:?} returned {ret}, expected {}", p.label, p.expect);
        }
        Ok(())
    };
    let result = (|| -> Result<()> {
        for _ in 0..rounds {
            bare_s.push(run(bare, pkt, repeat)?.1);
            full.set_time_override(0)?;
            for (i, p) in chosen.iter().enumerate() {
                let (ret, ns) = run(full.program(), &p.pkt, repeat)?;
                check(p, ret)?;
                s[i][0].push(ns);
            }
            full.set_time_override(clock::monotonic_ns())?;
            for (i, p) in chosen.iter().enumerate() {
                let (ret, ns) = run(full.program(), &p.pkt, repeat)?;
                check(p, ret)?;
                s[i][1].push(ns);
            }
            full.set_time_override(0)?;
            for (i, p) in chosen.iter().enumerate() {
                let (ret, ns) = run(small.program(), &p.pkt, repeat)?;
                check(p, ret)?;
                s[i][2].push(ns);
            }
            eprint!(".");
        }
        Ok(())
    })();
    eprintln!();
    // Always back to the real clock, also after an error.
    full.set_time_override(0)?;
    result?;
    Ok(Diag {
        bare: median(&bare_s),
        rows: chosen
            .iter()
            .zip(s.iter())
            .map(|(p, [a, b, c])| DiagRow { label: p.label, full: median(a), test_clock: median(b), small: median(c) })
            .collect(),
        rounds,
    })
}
