//! The detector's decisions, as pure logic over readings of cumulative
//! counters (so it is tested without a kernel): rates over a short window per
//! destination, a crossing opens an attack, rates below every threshold for
//! the hold close it, and a destination attacked again soon after gets a
//! longer hold each time, bounded.

use std::{
    collections::{HashMap, VecDeque},
    time::{Duration, Instant},
};

use ipnet::IpNet;
use serde::Serialize;
use xdp_common::{counters::Counter, meter::MeterKey, vector::MAX_VECTORS};

use super::config::{DetectionConfig, DetectionMode, Thresholds};

/// Where a destination's readings come from: its meters (nothing drops its
/// traffic) or the counters of the policy that covers it (which see what it drops).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Basis {
    Meter,
    Policy(u32),
}

/// Packets and bytes per second, per vector id and in total.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Rates {
    pub by_vector: Vec<(u8, f64, f64)>,
    pub pps: f64,
    pub bps: f64,
}

impl Rates {
    /// The vectors by packet rate, highest first.
    pub fn top(&self, n: usize) -> Vec<(u8, f64, f64)> {
        let mut v = self.by_vector.clone();
        v.sort_by(|a, b| b.1.total_cmp(&a.1));
        v.truncate(n);
        v
    }
}

/// What the detector asks its caller to do.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// A destination crossed a threshold: ban it (mitigate mode) or report
    /// it. `over`: the vectors over their thresholds (None: the total).
    Detected { prefix: IpNet, rates: Rates, over: Vec<Option<u8>> },
    /// Still under attack: make sure the ban lasts.
    Extend { prefix: IpNet },
    /// Below every threshold for `held`: lift the ban (or report the end).
    Ended { prefix: IpNet, held: Duration, peak_pps: f64, peak_bps: f64 },
}

#[derive(Clone, Debug)]
struct Attack {
    since: Instant,
    below_since: Option<Instant>,
    peak_pps: f64,
    peak_bps: f64,
    last_extend: Instant,
}

#[derive(Clone, Debug)]
pub struct Dest {
    pub prefix: IpNet,
    basis: Basis,
    /// Cumulative (packets, bytes) per vector, with the time read; at most a window's worth.
    readings: VecDeque<(Instant, Box<[Counter; MAX_VECTORS]>)>,
    rates: Rates,
    attack: Option<Attack>,
    /// Attacks that started soon after the previous one ended.
    strikes: u32,
    last_end: Option<Instant>,
    last_active: Instant,
}

/// One destination as the API and `top` show it.
#[derive(Clone, Debug, Serialize)]
pub struct DestView {
    pub destination: String,
    pub pps: f64,
    pub bps: f64,
    /// The top vectors: (name, pps, bps).
    pub vectors: Vec<(String, f64, f64)>,
    pub under_attack: bool,
    /// Seconds since the attack started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attack_secs: Option<f64>,
    /// Seconds the rates have been below the thresholds, and the hold that lifts the ban.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub below_secs: Option<f64>,
    pub hold_secs: u64,
    /// "meter", or "policy" when a policy's counters are read (it drops some of the traffic).
    pub measured_by: &'static str,
}

pub struct Detector {
    pub mode: DetectionMode,
    thresholds: Thresholds,
    window: Duration,
    hold: Duration,
    max_hold: Duration,
    ban_ttl: Duration,
    dests: HashMap<MeterKey, Dest>,
}

impl Detector {
    pub fn new(c: &DetectionConfig, thresholds: Thresholds) -> Self {
        Self {
            mode: c.mode,
            thresholds,
            window: Duration::from_millis(c.window_ms),
            hold: Duration::from_secs(c.hold_secs),
            max_hold: Duration::from_secs(c.max_hold_secs),
            ban_ttl: Duration::from_secs(c.ban_ttl_secs),
            dests: HashMap::new(),
        }
    }

    pub fn thresholds(&self) -> &Thresholds {
        &self.thresholds
    }

    pub fn len(&self) -> usize {
        self.dests.len()
    }

    pub fn is_empty(&self) -> bool {
        self.dests.is_empty()
    }

    pub fn contains(&self, key: &MeterKey) -> bool {
        self.dests.contains_key(key)
    }

    pub fn keys(&self) -> impl Iterator<Item = (&MeterKey, &Dest)> {
        self.dests.iter()
    }

    /// Start following a destination (its meters just started at zero).
    pub fn add(&mut self, key: MeterKey, prefix: IpNet, now: Instant) {
        self.dests.entry(key).or_insert_with(|| Dest {
            prefix,
            basis: Basis::Meter,
            readings: VecDeque::from([(now, Box::new([Counter::default(); MAX_VECTORS]))]),
            rates: Rates::default(),
            attack: None,
            strikes: 0,
            last_end: None,
            last_active: now,
        });
    }

    pub fn remove(&mut self, key: &MeterKey) {
        self.dests.remove(key);
    }

    /// The hold after `strikes` quick returns: hold x 2^strikes, at most max_hold.
    pub fn hold_for(&self, strikes: u32) -> Duration {
        self.hold.saturating_mul(1u32 << strikes.min(16)).min(self.max_hold)
    }

    /// Feed one reading of a destination; returns what to do.
    pub fn observe(&mut self, key: &MeterKey, basis: Basis, counts: [Counter; MAX_VECTORS], now: Instant) -> Option<Action> {
        let window = self.window;
        let thresholds = self.thresholds.clone();
        let d = self.dests.get_mut(key)?;
        if d.basis != basis {
            // Another counter set: rates restart from this reading.
            d.basis = basis;
            d.readings.clear();
        }
        d.readings.push_back((now, Box::new(counts)));
        while d.readings.len() > 2 && now.duration_since(d.readings[1].0) >= window {
            d.readings.pop_front();
        }
        let (t0, first) = d.readings.front().cloned()?;
        // Not before half a window of readings: a burst of a few packets in
        // the first milliseconds is no rate.
        if now.duration_since(t0) < window / 2 {
            return None;
        }
        let dt = now.duration_since(t0).as_secs_f64();
        let mut rates = Rates::default();
        let mut over = Vec::new();
        for v in 0..MAX_VECTORS {
            let (p, b) = (counts[v].packets.saturating_sub(first[v].packets), counts[v].bytes.saturating_sub(first[v].bytes));
            if p == 0 {
                continue;
            }
            let (pps, bps) = (p as f64 / dt, b as f64 * 8.0 / dt);
            rates.pps += pps;
            rates.bps += bps;
            rates.by_vector.push((v as u8, pps, bps));
            let (tp, tb) = thresholds.by_vector[v];
            if (tp != 0 && pps >= tp as f64) || (tb != 0 && bps >= tb as f64) {
                over.push(Some(v as u8));
            }
        }
        if rates.pps >= thresholds.total.0 as f64 || rates.bps >= thresholds.total.1 as f64 {
            over.push(None);
        }
        d.rates = rates.clone();
        if rates.pps > 0.0 {
            d.last_active = now;
        }
        let hold = self.hold.saturating_mul(1u32 << d.strikes.min(16)).min(self.max_hold);
        match &mut d.attack {
            None if !over.is_empty() => {
                // Back soon after the last attack: a longer hold this time.
                if d.last_end.is_some_and(|e| now.duration_since(e) < self.max_hold) {
                    d.strikes = d.strikes.saturating_add(1);
                } else {
                    d.strikes = 0;
                }
                d.attack = Some(Attack { since: now, below_since: None, peak_pps: rates.pps, peak_bps: rates.bps, last_extend: now });
                Some(Action::Detected { prefix: d.prefix, rates, over })
            }
            None => None,
            Some(a) => {
                a.peak_pps = a.peak_pps.max(rates.pps);
                a.peak_bps = a.peak_bps.max(rates.bps);
                if !over.is_empty() {
                    a.below_since = None;
                    // Extend once half the ban's lifetime has passed since the last time.
                    if now.duration_since(a.last_extend) >= self.ban_ttl / 2 {
                        a.last_extend = now;
                        return Some(Action::Extend { prefix: d.prefix });
                    }
                    return None;
                }
                let below = *a.below_since.get_or_insert(now);
                if now.duration_since(below) >= hold {
                    let (peak_pps, peak_bps) = (a.peak_pps, a.peak_bps);
                    d.attack = None;
                    d.last_end = Some(now);
                    return Some(Action::Ended { prefix: d.prefix, held: hold, peak_pps, peak_bps });
                }
                None
            }
        }
    }

    /// Destinations quiet (no traffic, no attack) for `idle`: their meters can go.
    pub fn idle(&self, now: Instant, idle: Duration) -> Vec<MeterKey> {
        self.dests
            .iter()
            .filter(|(_, d)| {
                d.attack.is_none()
                    && now.duration_since(d.last_active) >= idle
                    && d.last_end.is_none_or(|e| now.duration_since(e) >= self.max_hold)
            })
            .map(|(k, _)| *k)
            .collect()
    }

    /// The tracked destination not under attack with the lowest rate, to
    /// make room for a new one (never one under attack).
    pub fn quietest(&self) -> Option<MeterKey> {
        self.dests.iter().filter(|(_, d)| d.attack.is_none()).min_by(|a, b| a.1.rates.pps.total_cmp(&b.1.rates.pps)).map(|(k, _)| *k)
    }

    pub fn under_attack(&self) -> usize {
        self.dests.values().filter(|d| d.attack.is_some()).count()
    }

    /// The `n` destinations with the highest packet rates.
    pub fn view(&self, n: usize, now: Instant, name_of: impl Fn(u8) -> String) -> Vec<DestView> {
        let mut v: Vec<&Dest> = self.dests.values().filter(|d| d.rates.pps > 0.0 || d.attack.is_some()).collect();
        v.sort_by(|a, b| b.rates.pps.total_cmp(&a.rates.pps));
        v.truncate(n);
        v.into_iter()
            .map(|d| DestView {
                destination: d.prefix.to_string(),
                pps: d.rates.pps.round(),
                bps: d.rates.bps.round(),
                vectors: d.rates.top(3).into_iter().map(|(id, p, b)| (name_of(id), p.round(), b.round())).collect(),
                under_attack: d.attack.is_some(),
                attack_secs: d.attack.as_ref().map(|a| now.duration_since(a.since).as_secs_f64()),
                below_secs: d.attack.as_ref().and_then(|a| a.below_since).map(|b| now.duration_since(b).as_secs_f64()),
                hold_secs: self.hold_for(d.strikes).as_secs(),
                measured_by: match d.basis {
                    Basis::Meter => "meter",
                    Basis::Policy(_) => "policy",
                },
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vectors::VectorTable;

    const MC: usize = 16;

    fn detector(hold: u64, max_hold: u64) -> Detector {
        let c = DetectionConfig { hold_secs: hold, max_hold_secs: max_hold, ..Default::default() };
        Detector::new(&c, c.thresholds(&VectorTable::default()))
    }

    /// Cumulative counts after `pps` packets a second of 1,400 bytes for `secs`.
    fn counts(total: &mut Counter, pps: u64, ms: u64) -> [Counter; MAX_VECTORS] {
        total.packets += pps * ms / 1000;
        total.bytes += pps * ms / 1000 * 1400;
        let mut c = [Counter::default(); MAX_VECTORS];
        c[MC] = *total;
        c
    }

    #[test]
    fn a_flood_is_detected_held_and_ended_with_a_longer_hold_when_it_returns() {
        assert_eq!(VectorTable::default().id_of("memcached"), Some(MC as u8));
        let mut d = detector(2, 8);
        let key = MeterKey::v4(0xcb00_710a);
        let t0 = Instant::now();
        d.add(key, "203.0.113.10/32".parse().unwrap(), t0);
        let mut total = Counter::default();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        // 500 pps: below memcached's 1,000.
        assert_eq!(d.observe(&key, Basis::Meter, counts(&mut total, 500, 50), at(50)), None);
        // 5,000 pps: detected at the next reading.
        let mut actions = Vec::new();
        for i in 2..=4 {
            actions.extend(d.observe(&key, Basis::Meter, counts(&mut total, 5_000, 50), at(50 * i)));
        }
        assert!(matches!(&actions[..], [Action::Detected { over, .. }] if over == &vec![Some(MC as u8)]), "{actions:?}");
        // The ban: readings now come from the policy's counters, restarting.
        let mut ptotal = Counter::default();
        let mut t = 200;
        for _ in 0..20 {
            t += 50;
            assert_eq!(d.observe(&key, Basis::Policy(7), counts(&mut ptotal, 5_000, 50), at(t)), None);
        }
        // The flood stops: ended only after 2 s below.
        let mut ended = None;
        while ended.is_none() && t < 10_000 {
            t += 50;
            ended = d.observe(&key, Basis::Policy(7), counts(&mut ptotal, 0, 50), at(t)).map(|a| (a, t));
        }
        let (a, t_end) = ended.unwrap();
        assert!(matches!(a, Action::Ended { held, .. } if held == Duration::from_secs(2)));
        // The flood stopped at 1,200 ms; the window (200 ms) then shows no
        // traffic, and the hold (2 s) runs from there.
        assert!((2_150..=2_300).contains(&(t_end - 1_200)), "ended at {t_end} ms");
        // It comes back at once: a longer hold (4 s), then 8 s, never more.
        for expect in [4, 8, 8] {
            let mut det = None;
            for _ in 0..6 {
                t += 50;
                det = det.or(d.observe(&key, Basis::Policy(7), counts(&mut ptotal, 5_000, 50), at(t)));
            }
            assert!(matches!(det, Some(Action::Detected { .. })), "{det:?}");
            let mut end = None;
            while end.is_none() {
                t += 50;
                end = d.observe(&key, Basis::Policy(7), counts(&mut ptotal, 0, 50), at(t));
            }
            assert!(matches!(end, Some(Action::Ended { held, .. }) if held == Duration::from_secs(expect)), "{end:?}");
        }
    }

    #[test]
    fn a_short_burst_is_no_rate() {
        let mut d = detector(60, 600);
        let key = MeterKey::v4(1);
        let t0 = Instant::now();
        d.add(key, "203.0.113.1/32".parse().unwrap(), t0);
        let mut c = [Counter::default(); MAX_VECTORS];
        // 50 replies within 5 ms (10,000 pps for 5 ms), then nothing.
        c[MC] = Counter { packets: 50, bytes: 50 * 1400 };
        assert_eq!(d.observe(&key, Basis::Meter, c, t0 + Duration::from_millis(5)), None);
        for ms in [50, 100, 150, 200, 250] {
            assert_eq!(d.observe(&key, Basis::Meter, c, t0 + Duration::from_millis(ms)), None, "at {ms} ms");
        }
    }

    #[test]
    fn an_attack_is_extended_every_half_ban() {
        let mut d = detector(60, 600);
        let key = MeterKey::v4(1);
        let t0 = Instant::now();
        d.add(key, "203.0.113.1/32".parse().unwrap(), t0);
        let mut total = Counter::default();
        let mut extends = 0;
        let mut detected = 0;
        for i in 1..=(700 * 20) {
            match d.observe(&key, Basis::Meter, counts(&mut total, 5_000, 50), t0 + Duration::from_millis(50 * i)) {
                Some(Action::Extend { .. }) => extends += 1,
                Some(Action::Detected { .. }) => detected += 1,
                other => assert_eq!(other, None),
            }
        }
        // 700 s of attack, ban_ttl 600: extended at 300 s and 600 s.
        assert_eq!((detected, extends), (1, 2));
    }

    #[test]
    fn only_quiet_destinations_make_room() {
        let mut d = detector(60, 600);
        let t0 = Instant::now();
        let (a, b) = (MeterKey::v4(1), MeterKey::v4(2));
        d.add(a, "203.0.113.1/32".parse().unwrap(), t0);
        d.add(b, "203.0.113.2/32".parse().unwrap(), t0);
        let (mut ta, mut tb) = (Counter::default(), Counter::default());
        for i in 1..=5 {
            let now = t0 + Duration::from_millis(50 * i);
            d.observe(&a, Basis::Meter, counts(&mut ta, 50_000, 50), now);
            d.observe(&b, Basis::Meter, counts(&mut tb, 10, 50), now);
        }
        assert_eq!(d.under_attack(), 1);
        assert_eq!(d.quietest(), Some(b));
        d.remove(&b);
        assert_eq!(d.quietest(), None, "the destination under attack is never evicted");
        assert!(d.idle(t0 + Duration::from_secs(3600), Duration::from_secs(10)).is_empty());
    }
}
