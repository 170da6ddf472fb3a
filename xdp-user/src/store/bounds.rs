//! What policies and the allowlist cover, and what alerts hold, counted as
//! the store changes, so that every bound is a comparison, whatever the
//! size of the table:
//! - the addresses covered by acting policies (a drop or limit in either
//!   branch of a rule), per family: bounded in total (`policy_coverage_v4` /
//!   `_v6`) beside each prefix's own bound (`min_prefix_len_v4` / `_v6`), so
//!   that `force` on two halves (0.0.0.0/1 + 128.0.0.0/1) cannot cover
//!   everything;
//! - the data-plane resources alert policies hold: IPv4 level-2 chunks (one
//!   per /16 holding an alert victim), limiters and IPv6 victim entries, each
//!   bounded by the alerts' share of its table (the share `max_alert_policies`
//!   is of the policy table), so that a runaway detector cannot take what
//!   operators need.
//!
//! Coverage is the sum of the prefixes' sizes: a prefix inside another one
//! counts again, so the sum bounds the union from above.

use std::collections::HashMap;

use ipnet::IpNet;

use crate::config::Config;

use super::record::{PolicyRecord, RuleSet};

/// Addresses in a prefix (`::/0`, 2^128, saturates at `u128::MAX`).
pub fn addresses(net: &IpNet) -> u128 {
    let bits: u32 = match net {
        IpNet::V4(_) => 32,
        IpNet::V6(_) => 128,
    };
    prefix_size(bits, net.prefix_len())
}

/// Addresses in one prefix of length `len` in a family of `bits` bits.
pub fn prefix_size(bits: u32, len: u8) -> u128 {
    1u128.checked_shl(bits.saturating_sub(len as u32)).unwrap_or(u128::MAX)
}

/// "as many addresses as one /8", for messages.
pub fn describe(bits: u32, len: u8) -> String {
    format!("as many addresses as one /{len} ({})", prefix_size(bits, len))
}

/// Total addresses of a set of prefixes, per family (v4, v6).
pub fn coverage<'a>(nets: impl Iterator<Item = &'a IpNet>) -> (u128, u128) {
    let (mut v4, mut v6) = (0u128, 0u128);
    for n in nets {
        match n {
            IpNet::V4(_) => v4 = v4.saturating_add(addresses(n)),
            IpNet::V6(_) => v6 = v6.saturating_add(addresses(n)),
        }
    }
    (v4, v6)
}

/// What a policy's rules ask of the data plane.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Footprint {
    /// Some rule drops or limits (in either branch).
    pub acting: bool,
    /// Token buckets: one per rule that limits.
    pub limiters: usize,
    /// Rule entries: one per vector named, and the policy's shared `pass`.
    pub rules: usize,
}

pub fn footprint(rules: &RuleSet) -> Footprint {
    let mut f = Footprint { rules: rules.len() + 1, ..Footprint::default() };
    for r in rules.values().filter_map(|spec| spec.resolve().ok()) {
        f.acting |= r.acts();
        f.limiters += usize::from(r.limit().is_some());
    }
    f
}

/// A policy made by an alert (not through the API).
pub fn by_alert(p: &PolicyRecord) -> bool {
    p.source.is_alert()
}

/// The running totals.
#[derive(Clone, Debug, Default)]
pub struct Usage {
    /// Addresses covered by acting policies: IPv4, IPv6.
    pub acting_v4: u128,
    pub acting_v6: u128,
    /// /16 (top 16 bits) -> alert victims longer than /16 inside it: the
    /// level-2 chunks alerts hold (shared with operators or not).
    pub alert_chunks: HashMap<u32, u32>,
    pub alert_limiters: usize,
    pub alert_rules: usize,
    pub alert_v6: usize,
}

fn sixteen(victim: &IpNet) -> Option<u32> {
    match victim {
        IpNet::V4(n) if n.prefix_len() > 16 => Some(u32::from(n.network()) >> 16),
        _ => None,
    }
}

impl Usage {
    /// Count a policy in (`add`) or out.
    pub fn account(&mut self, p: &PolicyRecord, add: bool) {
        let f = footprint(&p.rules);
        let n = addresses(&p.victim);
        if f.acting {
            let total = match p.victim {
                IpNet::V4(_) => &mut self.acting_v4,
                IpNet::V6(_) => &mut self.acting_v6,
            };
            *total = if add { total.saturating_add(n) } else { total.saturating_sub(n) };
        }
        if !by_alert(p) {
            return;
        }
        if add {
            self.alert_limiters += f.limiters;
            self.alert_rules += f.rules;
        } else {
            self.alert_limiters = self.alert_limiters.saturating_sub(f.limiters);
            self.alert_rules = self.alert_rules.saturating_sub(f.rules);
        }
        if let IpNet::V6(_) = p.victim {
            if add {
                self.alert_v6 += 1;
            } else {
                self.alert_v6 = self.alert_v6.saturating_sub(1);
            }
        }
        if let Some(hi) = sixteen(&p.victim) {
            if add {
                *self.alert_chunks.entry(hi).or_default() += 1;
            } else if let Some(c) = self.alert_chunks.get_mut(&hi) {
                *c -= 1;
                if *c == 0 {
                    self.alert_chunks.remove(&hi);
                }
            }
        }
    }

    /// Whether `new` may replace `old` (None: a new policy) under the total
    /// coverage bound. A change that does not grow the total is always
    /// allowed (so lowering the bound in the config never blocks a delete or
    /// a narrowing).
    pub fn check_coverage(&self, cfg: &Config, old: Option<&PolicyRecord>, new: &PolicyRecord) -> Result<(), String> {
        if !footprint(&new.rules).acting {
            return Ok(());
        }
        let (bits, limit_len, now) = match new.victim {
            IpNet::V4(_) => (32, cfg.policy_coverage_v4, self.acting_v4),
            IpNet::V6(_) => (128, cfg.policy_coverage_v6, self.acting_v6),
        };
        let freed = old.filter(|o| footprint(&o.rules).acting && o.victim == new.victim).map_or(0, |o| addresses(&o.victim));
        let after = now.saturating_sub(freed).saturating_add(addresses(&new.victim));
        if after > now && after > prefix_size(bits, limit_len) {
            return Err(format!(
                "acting policies would cover {after} {} addresses, more than `policy_coverage_v{}` allows ({}), with force or without; \
                 narrow the victims, remove policies, or raise the bound in the config",
                if bits == 32 { "IPv4" } else { "IPv6" },
                if bits == 32 { 4 } else { 6 },
                describe(bits, limit_len),
            ));
        }
        Ok(())
    }

    /// Whether an alert may make `new` (replacing `old`, None: a new policy)
    /// within the alerts' share of the chunk, limiter, rule and IPv6 victim tables.
    pub fn check_alert_share(&self, cfg: &Config, old: Option<&PolicyRecord>, new: &PolicyRecord) -> Result<(), String> {
        if !by_alert(new) {
            return Ok(());
        }
        let c = &cfg.capacity;
        let share = |total: u32| cfg.alert_share(total as usize);
        let refuse = |what: &str, held: usize, allowed: usize, knob: &str| {
            Err(format!(
                "alerts already hold {held} of the {allowed} {what} they may use (their max_alert_policies share of `{knob}`); \
                 the rest is kept for operators"
            ))
        };
        let fresh = old.is_none();
        if fresh && matches!(new.victim, IpNet::V6(_)) && self.alert_v6 + 1 > share(c.max_v6_victims) {
            return refuse("IPv6 victim entries", self.alert_v6, share(c.max_v6_victims), "max_v6_victims");
        }
        let new_chunk = sixteen(&new.victim).is_some_and(|hi| fresh && !self.alert_chunks.contains_key(&hi));
        if new_chunk && self.alert_chunks.len() + 1 > share(c.v4_chunks) {
            return refuse("IPv4 level-2 chunks", self.alert_chunks.len(), share(c.v4_chunks), "v4_chunks");
        }
        let before = old.filter(|o| by_alert(o)).map_or(0, |o| footprint(&o.rules).limiters);
        let after = self.alert_limiters.saturating_sub(before) + footprint(&new.rules).limiters;
        if after > self.alert_limiters && after > share(c.max_limiters) {
            return refuse("limiters", self.alert_limiters, share(c.max_limiters), "max_limiters");
        }
        let before = old.filter(|o| by_alert(o)).map_or(0, |o| footprint(&o.rules).rules);
        let after = self.alert_rules.saturating_sub(before) + footprint(&new.rules).rules;
        if after > self.alert_rules && after > share(c.max_rules()) {
            return refuse("rule entries", self.alert_rules, share(c.max_rules()), "max_rules");
        }
        Ok(())
    }
}
