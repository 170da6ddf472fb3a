//! The daemon's TOML configuration (`ampguard run --config FILE`); every field
//! has a default, so an empty file is a valid config. Example with comments:
//! deploy/ampguard.toml.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use ipnet::IpNet;
use serde::Deserialize;

use crate::{dataplane::Capacity, profiles::LenientRuleSpec};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum XdpModeSetting {
    /// Native (driver) mode where the driver supports it, else generic.
    #[default]
    Auto,
    Native,
    Generic,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Interfaces to attach the XDP program to.
    pub interfaces: Vec<String>,
    pub xdp_mode: XdpModeSetting,
    /// API listen address; loopback by default.
    pub listen: SocketAddr,
    /// File holding the API bearer token. Without one the API refuses to start
    /// on a non-loopback address.
    pub token_file: Option<PathBuf>,
    /// Where the policy state file lives.
    pub state_dir: PathBuf,
    /// bpffs directory for the pinned link and maps (mounted if needed).
    pub pin_dir: PathBuf,
    /// TTL of a policy when the request names none (seconds; 0 = no expiry).
    pub default_ttl_secs: u64,
    /// Longest TTL accepted (seconds).
    pub max_ttl_secs: u64,
    /// TTL of a policy created by a ban alert (seconds).
    pub alert_ttl_secs: u64,
    /// Drop or limit rules on IPv4 prefixes shorter than this need `force`.
    pub min_prefix_len_v4: u8,
    /// Same for IPv6.
    pub min_prefix_len_v6: u8,
    /// Largest request body accepted by the API, in bytes.
    pub max_body_bytes: usize,
    /// Most API connections open at once; more wait in the kernel's backlog
    /// (they hold no file descriptor of the daemon's until accepted).
    pub max_connections: usize,
    /// Seconds a connection may take to send a request's headers, and may
    /// stay idle between requests, before it is closed.
    pub header_timeout_secs: u64,
    /// Seconds a request may take to send its body.
    pub body_timeout_secs: u64,
    /// Most policy changes per minute made by alerts, all sources together.
    pub max_alerts_per_minute: u32,
    /// Most policies alerts may hold at once (the rest of the table stays
    /// free for operators); default half of `capacity.max_policies`.
    pub max_alert_policies: Option<usize>,
    /// Longest TTL an alert may ask for (seconds).
    pub max_alert_ttl_secs: u64,
    /// Optional second token that may only post alerts (give it to detectors,
    /// keep `token_file` for operators and automation).
    pub alert_token_file: Option<PathBuf>,
    /// Per-policy metric series for at most this many policies (the rest are
    /// summed under policy="_other").
    pub metrics_max_policies: usize,
    /// DNS reflection signature: a response larger than this (UDP payload bytes).
    pub dns_large_bytes: u16,
    /// DNS reflection signature: a response with at least this many answers.
    pub dns_many_answers: u16,
    /// Packets sampled per second and CPU while a capture runs.
    pub capture_samples_per_sec: u32,
    /// Sizes of the data plane's tables.
    pub capacity: Capacity,
    /// Extra vectors, or different ports for built-in ones.
    pub vectors: Vec<VectorConfig>,
    /// Named rule sets; `default` here replaces the built-in default profile.
    pub profiles: BTreeMap<String, BTreeMap<String, LenientRuleSpec>>,
    /// Source prefixes no policy ever touches.
    pub allowlist: Vec<IpNet>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VectorConfig {
    pub name: String,
    pub ports: Vec<u16>,
    #[serde(default)]
    pub amplification: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            interfaces: Vec::new(),
            xdp_mode: XdpModeSetting::Auto,
            listen: "127.0.0.1:9470".parse().unwrap(),
            token_file: None,
            state_dir: "/var/lib/ampguard".into(),
            pin_dir: "/sys/fs/bpf/ampguard".into(),
            default_ttl_secs: 3600,
            max_ttl_secs: 7 * 24 * 3600,
            alert_ttl_secs: 900,
            min_prefix_len_v4: 16,
            min_prefix_len_v6: 48,
            max_body_bytes: 64 * 1024,
            max_connections: 256,
            header_timeout_secs: 10,
            body_timeout_secs: 10,
            max_alerts_per_minute: 600,
            max_alert_policies: None,
            max_alert_ttl_secs: 24 * 3600,
            alert_token_file: None,
            metrics_max_policies: 200,
            dns_large_bytes: 512,
            dns_many_answers: 10,
            capture_samples_per_sec: 1000,
            capacity: Capacity::default(),
            vectors: Vec::new(),
            profiles: BTreeMap::new(),
            allowlist: Vec::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config: {0}")]
    Invalid(String),
}

impl Config {
    /// `max_alert_policies`, or half the policy table.
    pub fn alert_policy_limit(&self) -> usize {
        self.max_alert_policies.unwrap_or(self.capacity.max_policies as usize / 2)
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        Self::parse(&text).map_err(|e| match e {
            ConfigError::Invalid(message) => ConfigError::Parse { path: path.into(), message },
            other => other,
        })
    }

    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let c: Config = toml::from_str(text).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        c.validate()?;
        Ok(c)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.max_connections == 0 || self.max_connections > 65536 {
            return bad(format!("max_connections = {} must be in 1..=65536", self.max_connections));
        }
        for (name, v) in [("header_timeout_secs", self.header_timeout_secs), ("body_timeout_secs", self.body_timeout_secs)] {
            if !(1..=3600).contains(&v) {
                return bad(format!("{name} = {v} must be in 1..=3600"));
            }
        }
        if self.min_prefix_len_v4 > 32 || self.min_prefix_len_v6 > 128 {
            return bad("min_prefix_len_v4 must be <= 32 and min_prefix_len_v6 <= 128".into());
        }
        if self.max_ttl_secs == 0 || self.default_ttl_secs > self.max_ttl_secs || self.alert_ttl_secs > self.max_ttl_secs {
            return bad("default_ttl_secs and alert_ttl_secs must not exceed max_ttl_secs (> 0)".into());
        }
        let c = &self.capacity;
        if c.max_policies < 2 || c.max_policies > 1 << 20 {
            return bad(format!("capacity.max_policies {} must be in 2..=1048576", c.max_policies));
        }
        if c.v4_chunks == 0 || c.v4_chunks > 4096 {
            return bad(format!("capacity.v4_chunks {} must be in 1..=4096 (256 KiB each)", c.v4_chunks));
        }
        if c.max_limiters < 2 || c.max_v6_victims == 0 || c.max_allow == 0 {
            return bad("capacity.max_limiters, max_v6_victims and max_allow must be positive".into());
        }
        if self.alert_ttl_secs > self.max_alert_ttl_secs {
            return bad("alert_ttl_secs must not exceed max_alert_ttl_secs".into());
        }
        if self.max_body_bytes < 1024 {
            return bad("max_body_bytes must be at least 1024".into());
        }
        for p in &self.allowlist {
            if *p != p.trunc() {
                return bad(format!("allowlist entry {p} has host bits set; did you mean {}?", p.trunc()));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_is_the_defaults() {
        let c = Config::parse("").unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:9470");
        assert_eq!(c.capacity.max_policies, 8192);
    }

    #[test]
    fn capacity_keeps_the_defaults_it_does_not_name() {
        let c = Config::parse("[capacity]\nmax_policies = 3").unwrap();
        assert_eq!(c.capacity, Capacity { max_policies: 3, ..Capacity::default() });
        let e = Config::parse("[capacity]\nmax_polices = 3").unwrap_err().to_string();
        assert!(e.contains("max_polices"), "{e}");
    }

    #[test]
    fn full_example_parses() {
        let c = Config::parse(include_str!("../../deploy/ampguard.toml")).unwrap();
        assert!(!c.interfaces.is_empty());
        assert!(c.profiles.contains_key("default"));
    }

    #[test]
    fn mistakes_are_named() {
        let e = Config::parse("listn = \"127.0.0.1:1\"").unwrap_err().to_string();
        assert!(e.contains("listn"), "{e}");
        let e = Config::parse("allowlist = [\"192.0.2.1/24\"]").unwrap_err().to_string();
        assert!(e.contains("192.0.2.0/24"), "{e}");
        let e = Config::parse("[capacity]\nv4_chunks = 0").unwrap_err().to_string();
        assert!(e.contains("v4_chunks"), "{e}");
        assert!(Config::parse("default_ttl_secs = 10\nmax_ttl_secs = 5").is_err());
    }
}
