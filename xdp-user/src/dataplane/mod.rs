//! The data-plane handle: the only code that touches the XDP program's maps.
//!
//! One file per concern, each owning its maps (typed handles taken once at
//! load) and its userspace mirror:
//! - `loader`: load the program, take the maps, pin them; the table sizes (`Capacity`);
//! - `settings`: the program's `Config` entry and the UDP source port -> vector table;
//! - `slots`: policy slots, rule entries and limiter indexes, and
//!   `upsert_policy`/`remove_policy`, whose reservation rolls back on error;
//! - `victims`: victim prefix -> slot (IPv4 direct table painted from `victims4`,
//!   IPv6 hash table at pivot lengths painted from `victims6`, IPv6 LPM trie for
//!   other lengths);
//! - `allowlist`: allowlisted source prefixes (LPM tries behind the `allowbits` bitmap);
//! - `dispatcher` (with `libxdp`): the opt-in mode that runs the program as one
//!   of libxdp's dispatcher chain;
//! - `counters`: per-rule-entry (shared totals behind a per-CPU cache),
//!   per-vector and no-policy counters;
//! - `meters`: built-in detection's protected networks, sketch settings and
//!   tracked destinations (xdp_common::meter).

pub(crate) mod allowbits;
mod allowlist;
pub(crate) mod attach;
mod batch;
mod counters;
pub mod dispatcher;
pub mod libxdp;
mod linkinfo;
mod loader;
pub(crate) mod meters;
pub(crate) mod netdev;
pub mod rules;
mod settings;
mod slots;
mod victims;
pub mod victims4;
pub mod victims6;

use aya::Ebpf;
use xdp_common::vector::MAX_VECTORS;

use self::{allowlist::Allowlist, counters::Counters, meters::Meters, settings::Settings, slots::Slots, victims::Victims};
pub use self::{counters::PolicyCounts, loader::Capacity};

/// The XDP object built by build.rs.
pub(crate) static XDP_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdp-ebpf"));

/// Baseline programs (`xdp_pass`, `xdp_count_drop`) for benchmarks.
pub static BASELINE_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdp-baseline"));

#[derive(Debug, thiserror::Error)]
pub enum DpError {
    #[error("loading the XDP program failed: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("map operation failed: {0}")]
    Map(#[from] aya::maps::MapError),
    #[error("program operation failed: {0}")]
    Program(#[from] aya::programs::ProgramError),
    #[error("the XDP object has no map {0} (built from another version?)")]
    MissingMap(&'static str),
    #[error("{what} is full ({capacity} entries); raise `{knob}` in the config")]
    Full { what: &'static str, capacity: u32, knob: &'static str },
    #[error(transparent)]
    Chunks(#[from] victims4::ChunksExhausted),
    #[error("vector id {0} is out of range (0..{max})", max = MAX_VECTORS)]
    BadVector(u8),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

pub struct DataPlane {
    /// The program, and the maps no concern owns: the program-private clock
    /// and sampler, and the sample ring buffer until `take_samples`.
    ebpf: Ebpf,
    capacity: Capacity,
    settings: Settings,
    slots: Slots,
    victims: Victims,
    allow: Allowlist,
    counters: Counters,
    meters: Meters,
    faults: Faults,
}

/// Fault injection: the map write this many writes from now fails.
#[derive(Default)]
struct Faults {
    fail_write_in: Option<u32>,
}

impl Faults {
    /// Called before each map write of a change that promises "on error
    /// nothing changes".
    fn point(&mut self) -> Result<(), DpError> {
        match self.fail_write_in {
            Some(0) => {
                self.fail_write_in = None;
                Err(DpError::Io(std::io::Error::other("injected map write failure")))
            }
            Some(n) => {
                self.fail_write_in = Some(n - 1);
                Ok(())
            }
            None => Ok(()),
        }
    }
}

impl DataPlane {
    /// Make the `n`th map write from now fail (0 = the next one), once. For
    /// fault-injection tests of "on error nothing changes".
    #[doc(hidden)]
    pub fn inject_write_failure(&mut self, n: u32) {
        self.faults.fail_write_in = Some(n);
    }
}
