//! The policy table in memory: records in the order they were created, with
//! indexes by id and by victim, so that every change and every alert costs the
//! same with 10 policies as with 100,000 (a linear search of 100,000 records
//! was most of a ban's latency at that size).
//!
//! Records are `Arc`s: a snapshot for the state file is a copy of pointers,
//! taken under the store's lock in a few milliseconds and written outside it.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use ipnet::IpNet;

use super::record::PolicyRecord;

#[derive(Clone, Debug, Default)]
pub struct PolicyTable {
    /// Creation order -> record (a replacement keeps its place).
    by_order: BTreeMap<u64, Arc<PolicyRecord>>,
    by_id: HashMap<String, u64>,
    by_victim: HashMap<IpNet, u64>,
    next_order: u64,
    /// Records made by alerts (`Origin::is_alert`).
    by_alerts: usize,
}

/// Why a record cannot go into the table.
#[derive(Debug, PartialEq, Eq)]
pub enum Clash {
    /// Another record (this id) already protects the victim.
    Victim(String),
}

impl PolicyTable {
    pub fn len(&self) -> usize {
        self.by_order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_order.is_empty()
    }

    /// Policies made by alerts (not through the API).
    pub fn by_alerts(&self) -> usize {
        self.by_alerts
    }

    /// Every record, in creation order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &Arc<PolicyRecord>> + Clone + '_ {
        self.by_order.values()
    }

    /// Up to `limit` records from creation-order position `from` on, and the
    /// position to continue from if there are more (a cursor that stays valid
    /// while records are added and removed).
    pub fn page(&self, from: u64, limit: usize) -> (Vec<&Arc<PolicyRecord>>, Option<u64>) {
        let mut it = self.by_order.range(from..);
        let page: Vec<_> = it.by_ref().take(limit).map(|(_, r)| r).collect();
        (page, it.next().map(|(o, _)| *o))
    }

    pub fn get(&self, id: &str) -> Option<&Arc<PolicyRecord>> {
        self.by_id.get(id).and_then(|o| self.by_order.get(o))
    }

    pub fn by_victim(&self, victim: &IpNet) -> Option<&Arc<PolicyRecord>> {
        self.by_victim.get(victim).and_then(|o| self.by_order.get(o))
    }

    /// Insert a record, or replace the one with its id (keeping its place).
    /// Refused, with nothing changed, if another record has the same victim.
    pub fn put(&mut self, rec: Arc<PolicyRecord>) -> Result<Option<Arc<PolicyRecord>>, Clash> {
        if let Some(o) = self.by_victim.get(&rec.victim) {
            let other = &self.by_order[o];
            if other.id != rec.id {
                return Err(Clash::Victim(other.id.clone()));
            }
        }
        let order = match self.by_id.get(&rec.id) {
            Some(o) => *o,
            None => {
                let o = self.next_order;
                self.next_order += 1;
                self.by_id.insert(rec.id.clone(), o);
                o
            }
        };
        if rec.source.is_alert() {
            self.by_alerts += 1;
        }
        let old = self.by_order.insert(order, rec.clone());
        if let Some(old) = &old {
            self.unindex(old);
        }
        self.by_victim.insert(rec.victim, order);
        Ok(old)
    }

    pub fn remove(&mut self, id: &str) -> Option<Arc<PolicyRecord>> {
        let order = self.by_id.remove(id)?;
        let rec = self.by_order.remove(&order).expect("indexes agree");
        self.unindex(&rec);
        Some(rec)
    }

    /// Take a record that left `by_order` out of the alert count and the victim index.
    fn unindex(&mut self, rec: &PolicyRecord) {
        if rec.source.is_alert() {
            self.by_alerts -= 1;
        }
        if self.by_victim.get(&rec.victim).is_some_and(|o| self.by_order.get(o).is_none_or(|r| r.id == rec.id)) {
            self.by_victim.remove(&rec.victim);
        }
    }

    /// Keep only the records `keep` says yes to; returns the others.
    pub fn drain_unless(&mut self, keep: impl Fn(&PolicyRecord) -> bool) -> Vec<Arc<PolicyRecord>> {
        let gone: Vec<String> = self.iter().filter(|r| !keep(r)).map(|r| r.id.clone()).collect();
        gone.iter().filter_map(|id| self.remove(id)).collect()
    }
}

impl PartialEq for PolicyTable {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().zip(other.iter()).all(|(a, b)| a == b)
    }
}

impl Eq for PolicyTable {}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::{super::record::Origin, *};

    fn rec(id: &str, victim: &str, source: &str) -> Arc<PolicyRecord> {
        Arc::new(PolicyRecord { source: Origin::from(source.to_string()), ..PolicyRecord::for_test(id, victim, SystemTime::UNIX_EPOCH) })
    }

    #[test]
    fn indexes_follow_puts_replacements_and_removals() {
        let mut t = PolicyTable::default();
        t.put(rec("p-1", "203.0.113.10/32", "api")).unwrap();
        t.put(rec("p-2", "203.0.113.11/32", "fastnetmon_script")).unwrap();
        t.put(rec("p-3", "2001:db8::1/128", "generic")).unwrap();
        assert_eq!((t.len(), t.by_alerts()), (3, 2));
        assert_eq!(t.put(rec("p-4", "203.0.113.10/32", "api")), Err(Clash::Victim("p-1".into())), "one policy a victim");
        assert_eq!(t.len(), 3, "a clash changes nothing");

        // A replacement keeps its place in the order, and may change source.
        let old = t.put(rec("p-2", "203.0.113.11/32", "api")).unwrap().unwrap();
        assert_eq!(old.source.as_str(), "fastnetmon_script");
        assert_eq!(t.by_alerts(), 1);
        assert_eq!(t.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ["p-1", "p-2", "p-3"]);

        assert_eq!(t.remove("p-1").unwrap().id, "p-1");
        assert!(t.by_victim(&"203.0.113.10/32".parse().unwrap()).is_none());
        assert!(t.get("p-1").is_none() && t.remove("p-1").is_none());
        t.put(rec("p-5", "203.0.113.10/32", "api")).unwrap();
        assert_eq!(t.by_victim(&"203.0.113.10/32".parse().unwrap()).unwrap().id, "p-5");
        assert_eq!(t.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ["p-2", "p-3", "p-5"], "new records go last");

        let (page, next) = t.page(0, 2);
        assert_eq!(page.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ["p-2", "p-3"]);
        t.remove("p-2");
        let (page, end) = t.page(next.expect("one more"), 2);
        assert_eq!((page.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), end), (vec!["p-5"], None), "the cursor survives removals");

        let gone = t.drain_unless(|r| !r.source.is_alert());
        assert_eq!(gone.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ["p-3"]);
        assert_eq!((t.len(), t.by_alerts()), (1, 0));
    }
}
