//! Alerts into policies: a ban creates a policy for the victim host (or
//! extends the one it has), an unban removes a policy an alert made; at most
//! `max_alerts_per_minute` changes a minute, all sources together.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use ipnet::IpNet;
use serde::Serialize;

use super::{invalid, record::Origin, time, PolicyRecord, PolicyRequest, Store, StoreError};
use crate::{
    alerts::{Alert, AlertAction},
    dataplane::rules::{Mode, Verb},
    profiles::RuleSpec,
    text::{self, MAX_COMMENT_BYTES},
};

/// What an alert did.
#[derive(Clone, Debug, Serialize)]
pub struct AlertOutcome {
    /// "created", "extended", "removed", "ignored"
    pub result: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<Arc<PolicyRecord>>,
    pub message: String,
}

impl Store {
    /// Alerts may change at most `max_alerts_per_minute` policies a minute, all
    /// sources together: the `source` of an alert is whatever its sender says,
    /// so a budget per claimed source would multiply for a lying sender.
    pub(super) fn alert_budget(&mut self) -> Result<(), StoreError> {
        let limit = self.cfg.max_alerts_per_minute;
        if !self.alert_window.take(self.clock.instant(), limit) {
            return Err(StoreError::RateLimited(format!(
                "alerts changed {limit} policies this minute (max_alerts_per_minute); ignoring alerts until the minute is over"
            )));
        }
        Ok(())
    }

    /// Ban: create a policy for the victim host with the default profile (and a
    /// drop for any reported vector the profile lets pass), or extend the one it
    /// has. Unban: remove a policy that an alert created (operators' policies stay).
    pub fn apply_alert(&mut self, alert: &Alert) -> Result<AlertOutcome, StoreError> {
        let origin = Origin::Alert(alert.source);
        let victim = IpNet::from(alert.victim);
        for v in &alert.vectors {
            if self.vectors.id_of(v).is_none() {
                return Err(invalid(format!("unknown vector {v:?} in alert")));
            }
        }
        match alert.action {
            AlertAction::Unban => self.unban(&victim, "an alert", Origin::is_alerts_own),
            AlertAction::Ban => {
                let ttl = alert.ttl_secs.unwrap_or(self.cfg.alert_ttl_secs);
                self.ban(victim, origin, &alert.vectors, ttl, alert.comment.as_deref())
            }
        }
    }

    /// Remove the policy of `victim` if `removable` says its origin may be
    /// removed by `by` (operators' policies stay).
    pub(crate) fn unban(&mut self, victim: &IpNet, by: &str, removable: impl Fn(&Origin) -> bool) -> Result<AlertOutcome, StoreError> {
        let Some(p) = self.state.policies.by_victim(victim).cloned() else {
            return Ok(AlertOutcome { result: "ignored", policy: None, message: format!("{victim} has no policy") });
        };
        if !removable(&p.source) {
            return Ok(AlertOutcome {
                result: "ignored",
                policy: Some(p.clone()),
                message: format!("policy {} for {victim} was made by {}; {by} does not remove it", p.id, made_by(&p.source)),
            });
        }
        let id = p.id.clone();
        self.alert_budget()?;
        let rec = self.delete_policy(&id)?;
        Ok(AlertOutcome { result: "removed", policy: Some(rec), message: format!("removed policy {id} for {victim}") })
    }

    /// A ban by an alert or the detector: create a policy for `victim` with
    /// the default profile (and a drop for any of `vectors` the profile lets
    /// pass), or extend the one it has, within the alerts' quota and budget.
    pub(crate) fn ban(
        &mut self,
        victim: IpNet,
        origin: Origin,
        vectors: &[String],
        ttl: u64,
        comment: Option<&str>,
    ) -> Result<AlertOutcome, StoreError> {
        let max = self.cfg.max_alert_ttl_secs.min(self.cfg.max_ttl_secs);
        if ttl == 0 || ttl > max {
            return Err(invalid(format!("alert ttl_secs {ttl} must be in 1..={max} (max_alert_ttl_secs)")));
        }
        let existing = self.state.policies.by_victim(&victim).cloned();
        if let Some(p) = existing.as_ref().filter(|p| matches!(p.source, Origin::Flowspec { .. })) {
            // The route owns it: its withdraw must leave exactly what was announced.
            return Ok(AlertOutcome {
                result: "ignored",
                policy: Some(p.clone()),
                message: format!("policy {} for {victim} comes from {}; a ban does not change it", p.id, made_by(&p.source)),
            });
        }
        let by_alerts = self.state.policies.by_alerts();
        if existing.is_none() && by_alerts >= self.cfg.alert_policy_limit() {
            return Err(StoreError::Full(format!(
                "alerts already hold {by_alerts} policies, the most max_alert_policies allows; the rest of the table is kept for operators"
            )));
        }
        self.check_allowlist_overlap(&victim)?;
        self.alert_budget()?;
        let now = self.clock.now();
        let until = now + Duration::from_secs(ttl);
        if let Some(p) = existing {
            let mut rec = (*p).clone();
            let later = time::ban_extension(&rec, until);
            let extended = later.is_some();
            rec.expires_at = later.or(rec.expires_at);
            let mut rules = (*rec.rules).clone();
            let added = self.add_alert_vectors(&mut rules, vectors);
            rec.rules = self.intern(rules);
            if !extended && !added {
                return Ok(AlertOutcome {
                    result: "ignored",
                    policy: Some(p),
                    message: format!("policy {} already covers {victim} for longer", rec.id),
                });
            }
            rec.updated_at = now;
            let id = rec.id.clone();
            let rec = self.commit(rec)?;
            return Ok(AlertOutcome { result: "extended", policy: Some(rec), message: format!("extended policy {id} for {victim}") });
        }
        let default = self.profiles["default"].clone();
        let mut rules = default.clone();
        self.add_alert_vectors(&mut rules, vectors);
        rules.retain(|v, r| default.get(v) != Some(r));
        // Detector text never blocks a ban: cut to the bound, on a character boundary.
        let comment = comment.map(|c| text::fit(c, MAX_COMMENT_BYTES).to_string());
        let req = PolicyRequest {
            victim: victim.to_string(),
            profile: Some("default".into()),
            rules: (!rules.is_empty()).then_some(rules),
            mode: Some(Mode::Enforce),
            ttl_secs: Some(ttl),
            comment,
            force: false,
        };
        let rec = self.create_policy(req, origin)?;
        Ok(AlertOutcome { result: "created", message: format!("created policy {} for {victim}", rec.id), policy: Some(rec) })
    }

    /// Make sure every vector an alert reports is dropped or limited.
    fn add_alert_vectors(&self, rules: &mut BTreeMap<String, RuleSpec>, vectors: &[String]) -> bool {
        let mut added = false;
        for v in vectors {
            let covered = rules.get(v).is_some_and(|r| r.action != Verb::Pass);
            if !covered {
                rules.insert(v.clone(), RuleSpec::simple(Verb::Drop));
                added = true;
            }
        }
        added
    }
}

/// "the API", "an alert (generic)", "the detector": who made a policy, for messages.
fn made_by(o: &Origin) -> String {
    match o {
        Origin::Api => "the API".into(),
        Origin::Detector => "the detector".into(),
        Origin::Flowspec { peer } => format!("a Flowspec route (from {peer})"),
        o => format!("an alert ({o})"),
    }
}
