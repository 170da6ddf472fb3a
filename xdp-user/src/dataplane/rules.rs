//! Rules as the controller states them, and their translation to the
//! kernel's `Policy` + `Limiter` values.

use serde::{Deserialize, Serialize};
use xdp_common::{
    bucket::{self, LimitCfg, Rate},
    policy::{action, mode},
};

/// A token-bucket limit; at least one of `pps` and `bytes_per_sec` is set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Limit {
    /// Packets per second (0 = no packet limit).
    pub pps: u64,
    /// Bytes per second (0 = no byte limit).
    pub bytes_per_sec: u64,
    /// Bucket depth in packets (for `pps`).
    pub burst_packets: u64,
    /// Bucket depth in bytes (for `bytes_per_sec`).
    pub burst_bytes: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LimitError {
    #[error("a limit needs pps or bps (or both) above 0")]
    NoRate,
    #[error("rate {0} is above the maximum of {max}", max = bucket::MAX_RATE)]
    RateTooHigh(u64),
    #[error("burst {0} must be between 1 and {max}", max = bucket::MAX_BURST)]
    BadBurst(u64),
    #[error("a byte burst of {0} is below one full-size packet (65,535 bytes would be safe; at least 1,518 needed)")]
    ByteBurstTooSmall(u64),
}

impl Limit {
    pub fn validate(&self) -> Result<(), LimitError> {
        if self.pps == 0 && self.bytes_per_sec == 0 {
            return Err(LimitError::NoRate);
        }
        for (rate, burst) in [(self.pps, self.burst_packets), (self.bytes_per_sec, self.burst_bytes)] {
            if rate == 0 {
                continue;
            }
            if rate > bucket::MAX_RATE {
                return Err(LimitError::RateTooHigh(rate));
            }
            if burst == 0 || burst > bucket::MAX_BURST {
                return Err(LimitError::BadBurst(burst));
            }
        }
        if self.bytes_per_sec != 0 && self.burst_bytes < 1518 {
            return Err(LimitError::ByteBurstTooSmall(self.burst_bytes));
        }
        Ok(())
    }

    pub fn to_cfg(&self) -> LimitCfg {
        LimitCfg {
            packets: Rate::new(self.pps, self.burst_packets),
            bytes: Rate::new(self.bytes_per_sec, self.burst_bytes),
        }
    }
}

/// What a policy does with one vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Rule {
    Pass,
    Drop,
    Limit(Limit),
}

impl Rule {
    pub fn action(&self) -> u8 {
        match self {
            Rule::Pass => action::PASS,
            Rule::Drop => action::DROP,
            Rule::Limit(_) => action::LIMIT,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Enforce,
    Monitor,
}

impl Mode {
    pub fn raw(self) -> u8 {
        match self {
            Mode::Enforce => mode::ENFORCE,
            Mode::Monitor => mode::MONITOR,
        }
    }
}

/// A policy as the data plane applies it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DpPolicy {
    pub mode: Mode,
    /// Expiry on CLOCK_MONOTONIC in ns (see `crate::clock`); 0 = never.
    pub expires_ns: u64,
    /// Rule per vector id; vectors not listed pass.
    pub rules: Vec<(u8, Rule)>,
}
