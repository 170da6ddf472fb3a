//! Flowspec routes as policies (the reconcile in flowspec/sync.rs calls
//! these): the alert path's limits (breadth, coverage, the allowlist, the
//! alerts' share of every table and their rate), and policies of any other
//! origin are never touched.

use std::{collections::BTreeMap, sync::Arc};

use ipnet::IpNet;

use super::{invalid, record::Origin, record::PolicyRecord, PolicyRequest, Store, StoreError};
use crate::{dataplane::rules::Mode, profiles::RuleSpec, text};

impl Store {
    /// Create or replace the Flowspec policy for `victim`. Refused (nothing
    /// changes) when the victim has a policy of another origin, or the
    /// policy would break a bound alerts are held to.
    pub fn put_flowspec(
        &mut self,
        victim: IpNet,
        rules: BTreeMap<String, RuleSpec>,
        peer: &str,
        comment: &str,
    ) -> Result<Arc<PolicyRecord>, StoreError> {
        let origin = Origin::Flowspec { peer: peer.to_string() };
        let req = PolicyRequest {
            victim: victim.to_string(),
            profile: None,
            rules: Some(rules),
            mode: Some(Mode::Enforce),
            // Lives as long as the route: withdraws and session loss remove it.
            ttl_secs: Some(0),
            comment: Some(text::fit(comment, crate::text::MAX_COMMENT_BYTES).to_string()),
            force: false,
        };
        match self.state.policies.by_victim(&victim).cloned() {
            Some(p) if !matches!(p.source, Origin::Flowspec { .. }) => Err(StoreError::Conflict(format!(
                "{victim} already has policy {} (source {}); Flowspec does not change policies of other origins",
                p.id, p.source
            ))),
            Some(p) => {
                let (victim, rules, _) = self.resolve(&req)?;
                let rules = self.intern(rules);
                if *p.rules == *rules && p.source == origin && p.comment == req.comment {
                    return Ok(p);
                }
                self.alert_budget()?;
                let rec =
                    PolicyRecord { victim, rules, source: origin, comment: req.comment, updated_at: self.clock.now(), ..(*p).clone() };
                self.commit(rec)
            }
            None => {
                let held = self.state.policies.by_alerts();
                if held >= self.cfg.alert_policy_limit() {
                    return Err(StoreError::Full(format!(
                        "alerts and Flowspec routes already hold {held} policies, the most max_alert_policies allows"
                    )));
                }
                // Validate before taking from the budget: a refused route costs none.
                self.resolve(&req)?;
                self.alert_budget()?;
                self.create_policy(req, origin)
            }
        }
    }

    /// Remove a Flowspec policy (never one of another origin).
    pub fn remove_flowspec(&mut self, id: &str) -> Result<Arc<PolicyRecord>, StoreError> {
        let p = self.policy(id)?;
        if !matches!(p.source, Origin::Flowspec { .. }) {
            return Err(invalid(format!("policy {id} was not made by Flowspec")));
        }
        self.delete_policy(id)
    }

    /// Every Flowspec policy.
    pub fn flowspec_policies(&self) -> Vec<Arc<PolicyRecord>> {
        self.state.policies.iter().filter(|p| matches!(p.source, Origin::Flowspec { .. })).cloned().collect()
    }
}
