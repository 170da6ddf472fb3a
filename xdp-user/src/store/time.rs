//! The store's clock, injected (as rakelimit passes `now`), and the rules
//! that depend on it as functions of `now`: expiry from a TTL, what the
//! sweeper removes, extending an expiry, and the alerts' one-minute window.
//! The daemon uses [`SystemClock`]; tests drive a [`ManualClock`] instead of
//! sleeping.
//!
//! Only the store's own decisions follow this clock: the data plane's expiry
//! is converted to the kernel's clock at the boundary (`crate::clock`).

use std::{
    sync::Mutex,
    time::{Duration, Instant, SystemTime},
};

use super::{record::PolicyRecord, table::PolicyTable};

/// Where the store reads the time.
pub trait Clock: Send + Sync {
    /// Wall-clock time: expiries, `created_at`, `updated_at`.
    fn now(&self) -> SystemTime;
    /// Monotonic time: the alerts' rate window (a wall-clock step must not reset it).
    fn instant(&self) -> Instant;
}

/// The system's clocks.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }

    fn instant(&self) -> Instant {
        Instant::now()
    }
}

/// A clock that moves only when told (tests).
#[derive(Debug)]
pub struct ManualClock {
    at: Mutex<(SystemTime, Instant)>,
}

impl ManualClock {
    /// Starting at wall-clock `wall` (and the monotonic clock's present).
    pub fn new(wall: SystemTime) -> Self {
        Self { at: Mutex::new((wall, Instant::now())) }
    }

    /// Move both clocks forward.
    pub fn advance(&self, by: Duration) {
        let mut at = self.at.lock().expect("not poisoned");
        at.0 += by;
        at.1 += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        self.at.lock().expect("not poisoned").0
    }

    fn instant(&self) -> Instant {
        self.at.lock().expect("not poisoned").1
    }
}

/// The expiry of a policy made now with this TTL (0 = never).
pub(crate) fn expiry(ttl_secs: u64, now: SystemTime) -> Option<SystemTime> {
    (ttl_secs != 0).then(|| now + Duration::from_secs(ttl_secs))
}

/// Whether a policy with this expiry has expired at `now` (at its expiry it has).
pub(crate) fn is_expired(expires_at: Option<SystemTime>, now: SystemTime) -> bool {
    expires_at.is_some_and(|e| e <= now)
}

/// The ids the sweeper removes at `now`, in creation order.
pub(crate) fn expired(policies: &PolicyTable, now: SystemTime) -> Vec<String> {
    policies.iter().filter(|p| is_expired(p.expires_at, now)).map(|p| p.id.clone()).collect()
}

/// PATCH `extend_secs`: added to the current expiry, or to now if it has
/// passed. None for a policy that never expires (it cannot be extended).
pub(crate) fn extend(expires_at: Option<SystemTime>, now: SystemTime, by_secs: u64) -> Option<SystemTime> {
    expires_at.map(|e| e.max(now) + Duration::from_secs(by_secs))
}

/// A ban on a victim that has a policy: its new expiry `until`, if that is
/// later than the one it has (a policy that never expires keeps never
/// expiring, a later expiry is kept); None when the expiry does not change.
pub(crate) fn ban_extension(p: &PolicyRecord, until: SystemTime) -> Option<SystemTime> {
    match p.expires_at {
        Some(e) if e < until => Some(until),
        _ => None,
    }
}

/// The alerts' budget: at most `limit` changes in a minute that starts with
/// the first change after the previous minute ended.
#[derive(Clone, Debug, Default)]
pub(crate) struct AlertWindow {
    /// The start of the current minute, and the changes made in it.
    window: Option<(Instant, u32)>,
}

impl AlertWindow {
    /// Take one change from the budget at `now`; false (nothing taken) when
    /// this minute's is spent.
    pub(crate) fn take(&mut self, now: Instant, limit: u32) -> bool {
        let (start, used) = self.window.get_or_insert((now, 0));
        if now.duration_since(*start) >= Duration::from_secs(60) {
            (*start, *used) = (now, 0);
        }
        if *used >= limit {
            return false;
        }
        *used += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn t0() -> SystemTime {
        humantime::parse_rfc3339("2026-12-01T12:00:00Z").unwrap()
    }

    fn rec(id: &str, victim: &str, expires_at: Option<SystemTime>) -> Arc<PolicyRecord> {
        Arc::new(PolicyRecord { expires_at, ..PolicyRecord::for_test(id, victim, t0()) })
    }

    #[test]
    fn a_ttl_gives_an_expiry_and_zero_none() {
        assert_eq!(expiry(60, t0()), Some(t0() + Duration::from_secs(60)));
        assert_eq!(expiry(0, t0()), None, "0 = no expiry");
        let e = expiry(60, t0());
        assert!(!is_expired(e, t0() + Duration::from_secs(59)));
        assert!(is_expired(e, t0() + Duration::from_secs(60)), "at its expiry it has expired");
        assert!(!is_expired(None, t0() + Duration::from_secs(1 << 40)), "never");
    }

    #[test]
    fn the_sweeper_removes_what_has_expired_and_only_that() {
        let mut t = PolicyTable::default();
        let s = Duration::from_secs;
        t.put(rec("p-1", "203.0.113.1/32", Some(t0() + s(30)))).unwrap();
        t.put(rec("p-2", "203.0.113.2/32", None)).unwrap();
        t.put(rec("p-3", "203.0.113.3/32", Some(t0() + s(10)))).unwrap();
        t.put(rec("p-4", "203.0.113.4/32", Some(t0() + s(31)))).unwrap();
        assert!(expired(&t, t0()).is_empty());
        assert_eq!(expired(&t, t0() + s(10)), ["p-3"]);
        assert_eq!(expired(&t, t0() + s(30)), ["p-1", "p-3"], "in creation order");
        assert_eq!(expired(&t, t0() + s(1 << 30)), ["p-1", "p-3", "p-4"], "one without expiry stays");
    }

    #[test]
    fn extending_counts_from_the_expiry_or_from_now_if_it_passed() {
        let s = Duration::from_secs;
        assert_eq!(extend(Some(t0() + s(100)), t0(), 50), Some(t0() + s(150)));
        assert_eq!(extend(Some(t0() - s(100)), t0(), 50), Some(t0() + s(50)), "already past: from now");
        assert_eq!(extend(None, t0(), 50), None);
    }

    #[test]
    fn a_ban_extends_only_to_a_later_expiry() {
        let s = Duration::from_secs;
        let until = t0() + s(300);
        assert_eq!(ban_extension(&rec("p-1", "203.0.113.1/32", Some(t0() + s(60))), until), Some(until));
        assert_eq!(ban_extension(&rec("p-1", "203.0.113.1/32", Some(t0() + s(600))), until), None, "a later expiry stays");
        assert_eq!(ban_extension(&rec("p-1", "203.0.113.1/32", Some(until)), until), None, "the same: no change");
        assert_eq!(ban_extension(&rec("p-1", "203.0.113.1/32", None), until), None, "never expiring stays so");
    }

    #[test]
    fn the_alert_window_allows_limit_a_minute() {
        let start = Instant::now();
        let mut w = AlertWindow::default();
        for n in 0..3 {
            assert!(w.take(start + Duration::from_secs(n * 10), 3), "change {n}");
        }
        assert!(!w.take(start + Duration::from_secs(59), 3), "the fourth in the minute is refused");
        assert!(!w.take(start + Duration::from_millis(59_999), 3));
        assert!(w.take(start + Duration::from_secs(60), 3), "a new minute from 60 s on");
        assert!(w.take(start + Duration::from_secs(61), 3));
        assert!(w.take(start + Duration::from_secs(62), 3));
        assert!(!w.take(start + Duration::from_secs(119), 3), "the new minute started at 60 s");
        let mut none = AlertWindow::default();
        assert!(!none.take(start, 0), "max_alerts_per_minute 0: no alert changes anything");
    }

    #[test]
    fn the_manual_clock_moves_both_clocks() {
        let c = ManualClock::new(t0());
        let (w, m) = (c.now(), c.instant());
        c.advance(Duration::from_secs(61));
        assert_eq!(c.now(), w + Duration::from_secs(61));
        assert_eq!(c.instant(), m + Duration::from_secs(61));
    }
}
