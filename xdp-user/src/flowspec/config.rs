//! `[flowspec]`: where the BGP speaker is, what routes may protect, how they
//! are validated, and how long a lost session's policies stay.

use std::net::SocketAddr;

use ipnet::IpNet;
use serde::Deserialize;

/// RFC 8955 section 6 validation of a route against the unicast table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Validate {
    /// RFC 9117: a route from within the AS (iBGP, an empty AS_PATH, as a
    /// route reflector passes on) skips the originator check; a route
    /// learned over eBGP must come from the neighbor AS of the best unicast
    /// route for its destination, with no more-specific unicast route from
    /// another neighbor AS.
    #[default]
    Rfc9117,
    /// RFC 8955 as first written: every route, iBGP too, must match the best
    /// unicast route's originator (fails behind a route reflector that does
    /// not carry the unicast routes).
    Rfc8955,
    /// No check against the unicast table (the speaker's own policy filters).
    Off,
}

impl Validate {
    pub fn as_str(self) -> &'static str {
        match self {
            Validate::Rfc9117 => "rfc9117",
            Validate::Rfc8955 => "rfc8955",
            Validate::Off => "off",
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FlowspecConfig {
    pub enabled: bool,
    /// The local BGP speaker's gRPC API (gobgpd `--api-hosts`).
    pub gobgp: SocketAddr,
    /// Routes must fall inside one of these (the protected networks); empty
    /// means no route is accepted.
    pub networks: Vec<IpNet>,
    pub validate: Validate,
    /// Seconds a lost session's (or a lost speaker's) policies stay in force
    /// before they are removed.
    pub grace_secs: u64,
}

impl Default for FlowspecConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            gobgp: "127.0.0.1:50051".parse().unwrap(),
            networks: Vec::new(),
            validate: Validate::default(),
            grace_secs: 30,
        }
    }
}

impl FlowspecConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !self.enabled {
            return Ok(());
        }
        if self.networks.is_empty() {
            return Err("[flowspec] enabled needs `networks`: the protected prefixes routes must fall inside".into());
        }
        for n in &self.networks {
            if *n != n.trunc() {
                return Err(format!("[flowspec] networks: {n} has host bits set; did you mean {}?", n.trunc()));
            }
        }
        if self.grace_secs > 24 * 3600 {
            return Err(format!("[flowspec] grace_secs = {} must be at most 86400 (a day)", self.grace_secs));
        }
        Ok(())
    }

    /// The protected network holding `victim`, if any.
    pub fn network_of(&self, victim: &IpNet) -> Option<&IpNet> {
        self.networks.iter().find(|n| n.contains(victim))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_checks() {
        let c = FlowspecConfig::default();
        assert!(!c.enabled && c.validate().is_ok());
        assert_eq!(c.validate, Validate::Rfc9117);
        let on = FlowspecConfig { enabled: true, ..c.clone() };
        assert!(on.validate().unwrap_err().contains("networks"));
        let host_bits = FlowspecConfig { networks: vec!["203.0.113.1/24".parse().unwrap()], ..on.clone() };
        assert!(host_bits.validate().unwrap_err().contains("203.0.113.0/24"));
        let ok = FlowspecConfig { networks: vec!["203.0.113.0/24".parse().unwrap()], ..on };
        assert!(ok.validate().is_ok());
        assert!(ok.network_of(&"203.0.113.10/32".parse().unwrap()).is_some());
        assert!(ok.network_of(&"198.51.100.10/32".parse().unwrap()).is_none());
        assert!(ok.network_of(&"203.0.112.0/23".parse().unwrap()).is_none());
    }
}
