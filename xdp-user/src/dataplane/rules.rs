//! Rules as the controller states them, and their translation to the
//! kernel's `Policy` + `Limiter` values.

use serde::{Deserialize, Serialize};
use xdp_common::{
    bucket::{self, LimitCfg, Rate},
    policy::{action, cond, mode, RuleCfg},
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
        LimitCfg { packets: Rate::new(self.pps, self.burst_packets), bytes: Rate::new(self.bytes_per_sec, self.burst_bytes) }
    }
}

/// What a policy does with one vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Rule {
    Pass,
    Drop,
    Limit(Limit),
    /// `on_match` when the conditions hold, else `otherwise`.
    Cond(CondRule),
}

/// What a rule does with a packet: a plain rule's `action`, or either branch
/// of a conditional rule. On the wire (API JSON, TOML profiles, state files)
/// `"pass"`, `"drop"`, `"limit"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verb {
    Pass,
    Drop,
    Limit,
}

impl Verb {
    pub fn raw(self) -> u8 {
        match self {
            Verb::Pass => action::PASS,
            Verb::Drop => action::DROP,
            Verb::Limit => action::LIMIT,
        }
    }
}

/// Conditions of a rule: all that are set must hold.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Conditions {
    /// The vector's reflection signature matches (`xdp_common::signature`).
    pub signature: bool,
    /// UDP payload length bounds (bytes, from the UDP header).
    pub min_bytes: Option<u16>,
    pub max_bytes: Option<u16>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CondRule {
    pub when: Conditions,
    pub on_match: Verb,
    pub otherwise: Verb,
    /// The bucket of whichever branch limits (both share it).
    pub limit: Option<Limit>,
}

impl Rule {
    /// The kernel form of the rule.
    pub fn cfg(&self) -> RuleCfg {
        match self {
            Rule::Pass => RuleCfg::plain(action::PASS),
            Rule::Drop => RuleCfg::plain(action::DROP),
            Rule::Limit(_) => RuleCfg::plain(action::LIMIT),
            Rule::Cond(c) => {
                let mut flags = 0;
                if c.when.signature {
                    flags |= cond::SIGNATURE;
                }
                if c.when.min_bytes.is_some() || c.when.max_bytes.is_some() {
                    flags |= cond::SIZE;
                }
                RuleCfg {
                    on_match: c.on_match.raw(),
                    otherwise: c.otherwise.raw(),
                    flags,
                    _pad: 0,
                    min_len: c.when.min_bytes.unwrap_or(0),
                    max_len: c.when.max_bytes.unwrap_or(u16::MAX),
                }
            }
        }
    }

    /// Whether any packet can be dropped or limited by this rule: either
    /// branch of a conditional rule counts (`{"action": "pass", "otherwise":
    /// "drop"}` drops). Breadth limits judge rules by this.
    pub fn acts(&self) -> bool {
        match self {
            Rule::Pass => false,
            Rule::Drop | Rule::Limit(_) => true,
            Rule::Cond(c) => c.on_match != Verb::Pass || c.otherwise != Verb::Pass,
        }
    }

    /// The token bucket this rule needs, if any.
    pub fn limit(&self) -> Option<Limit> {
        match self {
            Rule::Limit(l) => Some(*l),
            Rule::Cond(c) => c.limit,
            _ => None,
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
