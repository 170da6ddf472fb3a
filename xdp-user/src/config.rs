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

use crate::{
    dataplane::Capacity,
    profiles::{self, LenientRuleSpec, Profile},
    vectors::VectorTable,
};

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
    /// File holding the API bearer token (absent: /etc/ampguard/token). The
    /// daemon does not start without a readable token of at least 16
    /// characters, whatever `listen` is: loopback is no boundary between the
    /// users of one host.
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
    /// Acting policies (drop or limit, `force` or not) together cover at most
    /// as many IPv4 addresses as one prefix of this length (8: 16,777,216).
    pub policy_coverage_v4: u8,
    /// Same for IPv6 (32: as many addresses as one /32).
    pub policy_coverage_v6: u8,
    /// No allowlist entry may be broader than this (IPv4).
    pub allow_min_prefix_len_v4: u8,
    /// Same for IPv6.
    pub allow_min_prefix_len_v6: u8,
    /// The allowlist (config and API entries) covers at most as many IPv4
    /// addresses as one prefix of this length.
    pub allow_coverage_v4: u8,
    /// Same for IPv6.
    pub allow_coverage_v6: u8,
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
    /// The daemon's log lines: "text" or "json" (`--log-format` overrides).
    pub log_format: crate::logging::LogFormat,
    /// Sizes of the data plane's tables.
    pub capacity: Capacity,
    /// Extra vectors, or different ports for built-in ones.
    pub vectors: Vec<VectorConfig>,
    /// Named rule sets; `default` here replaces the built-in default profile.
    pub profiles: BTreeMap<String, BTreeMap<String, LenientRuleSpec>>,
    /// Source prefixes no policy ever touches.
    pub allowlist: Vec<IpNet>,
    /// Built-in detection (crate::detection).
    pub detection: crate::detection::config::DetectionConfig,
    /// Flowspec routes from a BGP speaker (flowspec/config.rs).
    pub flowspec: crate::flowspec::config::FlowspecConfig,
    /// The API over HTTPS, client certificates, plain HTTP off loopback (daemon/tls.rs).
    pub tls: crate::daemon::tls::TlsConfig,
    /// `[xdp_dispatcher]`: run as one program of libxdp's dispatcher (opt-in).
    pub xdp_dispatcher: crate::dataplane::dispatcher::DispatcherConfig,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VectorConfig {
    pub name: String,
    pub ports: Vec<u16>,
    #[serde(default)]
    pub amplification: Option<String>,
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
            policy_coverage_v4: 8,
            policy_coverage_v6: 32,
            allow_min_prefix_len_v4: 8,
            allow_min_prefix_len_v6: 32,
            allow_coverage_v4: 8,
            allow_coverage_v6: 32,
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
            log_format: Default::default(),
            capacity: Capacity::default(),
            vectors: Vec::new(),
            profiles: BTreeMap::new(),
            allowlist: Vec::new(),
            detection: Default::default(),
            flowspec: Default::default(),
            tls: Default::default(),
            xdp_dispatcher: Default::default(),
        }
    }
}

/// Longest TTL that may be configured (10 years). A policy meant to last
/// uses `ttl_secs` 0 (no expiry); the bound keeps every expiry a timestamp
/// that the state files and the API can write (RFC 3339 ends at year 9999).
pub const MAX_TTL_SECS: u64 = 10 * 365 * 24 * 3600;
/// Largest `max_body_bytes` (16 MiB): a policy or an alert is a few KiB.
pub const MAX_BODY_BYTES: usize = 16 << 20;

/// A warning if a token file can be read by anyone but its owner (the
/// token grants the whole API): None when its mode is 0600 or tighter.
pub fn token_file_warning(path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
    (mode & 0o077 != 0).then(|| {
        format!(
            "the token file {} has mode {mode:04o}: other users can read it and use the API; `chmod 600 {}`",
            path.display(),
            path.display()
        )
    })
}

/// Log [`token_file_warning`]'s warning, if any (the daemon calls this as it reads a token).
pub fn warn_about_token_file(path: &Path) {
    if let Some(w) = token_file_warning(path) {
        tracing::warn!("{w}");
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

    /// The part of a table of `total` entries alerts may hold: the same
    /// fraction of it as `alert_policy_limit()` is of the policy table,
    /// rounded up (a small `max_alert_policies` still leaves alerts a chunk).
    pub fn alert_share(&self, total: usize) -> usize {
        let max = (self.capacity.max_policies as u128).max(1);
        let limit = (self.alert_policy_limit() as u128).min(max);
        (total as u128 * limit).div_ceil(max) as usize
    }

    /// The profiles by name: the built-in `default`, replaced by the config's
    /// if it has one, and the config's others. Every rule must name a vector
    /// of `vectors` (the table this config builds) and be a valid rule.
    pub fn profiles(&self, vectors: &VectorTable) -> Result<BTreeMap<String, Profile>, ConfigError> {
        let mut out: BTreeMap<String, Profile> = BTreeMap::new();
        out.insert("default".into(), profiles::builtin_default());
        for (name, rules) in &self.profiles {
            out.insert(name.clone(), rules.iter().map(|(v, r)| (v.clone(), r.0.clone())).collect());
        }
        for (name, p) in &out {
            for (v, r) in p {
                if vectors.id_of(v).is_none() {
                    return Err(ConfigError::Invalid(format!("profile {name}: unknown vector {v:?}")));
                }
                r.resolve().map_err(|e| ConfigError::Invalid(format!("profile {name}, vector {v}: {e}")))?;
            }
        }
        Ok(out)
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        Self::parse(&text).map_err(|e| match e {
            ConfigError::Invalid(message) => ConfigError::Parse { path: path.into(), message },
            other => other,
        })
    }

    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let mut c: Config = toml::from_str(text).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        // An IPv4-mapped IPv6 entry (::ffff:192.0.2.0/120) means the IPv4
        // prefix: the data plane sees those sources as IPv4.
        for p in &mut c.allowlist {
            *p = crate::store::canonical(*p);
        }
        c.validate()?;
        Ok(c)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        self.flowspec.validate().map_err(ConfigError::Invalid)?;
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
        for (name, v, max) in [
            ("policy_coverage_v4", self.policy_coverage_v4, 32),
            ("policy_coverage_v6", self.policy_coverage_v6, 128),
            ("allow_min_prefix_len_v4", self.allow_min_prefix_len_v4, 32),
            ("allow_min_prefix_len_v6", self.allow_min_prefix_len_v6, 128),
            ("allow_coverage_v4", self.allow_coverage_v4, 32),
            ("allow_coverage_v6", self.allow_coverage_v6, 128),
        ] {
            if v > max {
                return bad(format!("{name} {v} is a prefix length and must be <= {max}"));
            }
        }
        for (name, v) in [("max_ttl_secs", self.max_ttl_secs), ("max_alert_ttl_secs", self.max_alert_ttl_secs)] {
            if v == 0 || v > MAX_TTL_SECS {
                return bad(format!(
                    "{name} {v} must be in 1..={MAX_TTL_SECS} (10 years; a policy that should not expire uses ttl_secs 0)"
                ));
            }
        }
        if self.default_ttl_secs > self.max_ttl_secs {
            return bad("default_ttl_secs must not exceed max_ttl_secs".into());
        }
        let alert_max = self.max_alert_ttl_secs.min(self.max_ttl_secs);
        if self.alert_ttl_secs == 0 || self.alert_ttl_secs > alert_max {
            return bad(format!(
                "alert_ttl_secs {} must be in 1..={alert_max} (at most max_alert_ttl_secs and max_ttl_secs): every alert policy expires",
                self.alert_ttl_secs
            ));
        }
        self.xdp_dispatcher.validate().map_err(ConfigError::Invalid)?;
        let c = &self.capacity;
        if c.max_policies < 2 || c.max_policies > 1 << 20 {
            return bad(format!("capacity.max_policies {} must be in 2..=1048576", c.max_policies));
        }
        if c.v4_chunks == 0 || c.v4_chunks > 4096 {
            return bad(format!("capacity.v4_chunks {} must be in 1..=4096 (256 KiB each)", c.v4_chunks));
        }
        if let Some(r) = c.max_rules {
            if !(2..=1 << 24).contains(&r) {
                return bad(format!("capacity.max_rules {r} must be in 2..=16777216 (80 bytes each; unset: 20 per policy)"));
            }
        }
        if !(1..=1 << 16).contains(&c.max_tracked) {
            return bad(format!("capacity.max_tracked {} must be in 1..=65536 (2.5 KiB each)", c.max_tracked));
        }
        if !c.meter_columns.is_power_of_two() || !(64..=1 << 20).contains(&c.meter_columns) {
            return bad(format!("capacity.meter_columns {} must be a power of two in 64..=1048576", c.meter_columns));
        }
        if c.max_limiters < 2 || c.max_v6_victims == 0 || c.max_allow == 0 {
            return bad("capacity.max_limiters, max_v6_victims and max_allow must be positive".into());
        }
        if self.max_body_bytes < 1024 || self.max_body_bytes > MAX_BODY_BYTES {
            return bad(format!("max_body_bytes {} must be in 1024..={MAX_BODY_BYTES}", self.max_body_bytes));
        }
        for p in &self.allowlist {
            if *p != p.trunc() {
                return bad(format!("allowlist entry {p} has host bits set; did you mean {}?", p.trunc()));
            }
            crate::store::check_allow_breadth(self, p).or_else(|m| bad(format!("allowlist entry {p}: {m}")))?;
        }
        crate::store::check_allow_coverage(self, self.allowlist.iter()).or_else(|m| bad(format!("allowlist: {m}")))?;
        let vectors = VectorTable::new(&self.vectors).map_err(|e| ConfigError::Invalid(format!("vectors: {e}")))?;
        self.detection.validate(&vectors).map_err(ConfigError::Invalid)?;
        if self.detection.enabled && self.detection.ban_ttl_secs > self.max_alert_ttl_secs.min(self.max_ttl_secs) {
            return bad(format!(
                "detection.ban_ttl_secs {} must not exceed max_alert_ttl_secs and max_ttl_secs (the detector's bans are held to the alerts' bounds)",
                self.detection.ban_ttl_secs
            ));
        }
        self.tls.validate(self.listen).map_err(ConfigError::Invalid)?;
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
    fn rule_entries_follow_the_policy_table_unless_set() {
        let c = Config::parse("[capacity]\nmax_policies = 100000").unwrap();
        assert_eq!(c.capacity.max_rules(), 2_000_000, "20 a policy when unset");
        let c = Config::parse("[capacity]\nmax_policies = 100000\nmax_rules = 800000").unwrap();
        assert_eq!(c.capacity.max_rules(), 800_000);
        for bad in ["max_rules = 1", "max_rules = 16777217"] {
            let e = Config::parse(&format!("[capacity]\n{bad}")).unwrap_err().to_string();
            assert!(e.contains("max_rules") && e.contains("20 per policy"), "{bad}: {e}");
        }
    }

    #[test]
    fn full_example_parses() {
        let c = Config::parse(include_str!("../../deploy/ampguard.toml")).unwrap();
        assert!(!c.interfaces.is_empty());
        assert!(c.profiles.contains_key("default"));
        // Its profiles resolve against the vector table it builds, as the
        // daemon's start checks them: custom vectors included.
        let vectors = VectorTable::new(&c.vectors).unwrap();
        let profiles = c.profiles(&vectors).unwrap();
        assert_eq!(profiles.keys().collect::<Vec<_>>(), c.profiles.keys().collect::<Vec<_>>());
        assert_eq!(profiles["default"]["openvpn"].action, crate::dataplane::rules::Verb::Drop);
        assert!(vectors.id_of("openvpn").is_some_and(|id| id >= xdp_common::vector::FIRST_CUSTOM));
        let e = c.profiles(&VectorTable::default()).unwrap_err().to_string();
        assert!(e.contains("profile default: unknown vector \"openvpn\""), "{e}");
    }

    #[test]
    fn profiles_are_checked_against_the_vector_table() {
        let c = Config::parse("[profiles.web]\nquake = \"drop\"").unwrap();
        let e = c.profiles(&VectorTable::new(&c.vectors).unwrap()).unwrap_err().to_string();
        assert_eq!(e, "config: profile web: unknown vector \"quake\"");
        let c = Config::parse("[profiles.web]\nntp = { action = \"drop\", pps = 5 }").unwrap();
        let e = c.profiles(&VectorTable::default()).unwrap_err().to_string();
        assert_eq!(e, "config: profile web, vector ntp: pps applies only to limit rules");
        // Without a `default` in the config, the built-in one.
        let c = Config::parse("").unwrap();
        assert_eq!(c.profiles(&VectorTable::default()).unwrap()["default"], profiles::builtin_default());
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

    #[test]
    fn alerts_get_the_policy_tables_share_of_every_table_rounded_up() {
        let c = Config::parse("").unwrap();
        assert_eq!((c.alert_share(64), c.alert_share(49152), c.alert_share(16384)), (32, 24576, 8192));
        let c = Config::parse("max_alert_policies = 2").unwrap();
        assert_eq!((c.alert_share(64), c.alert_share(49152)), (1, 12));
        let c = Config::parse("max_alert_policies = 100000").unwrap();
        assert_eq!(c.alert_share(64), 64, "never more than the table");
        let c = Config::parse("max_alert_policies = 0").unwrap();
        assert_eq!(c.alert_share(64), 0);
    }

    #[test]
    fn a_token_file_others_can_read_is_warned_about() {
        use std::os::unix::fs::PermissionsExt;
        let path = std::env::temp_dir().join(format!("ag-token-mode-{}", std::process::id()));
        std::fs::write(&path, "0123456789abcdef0123").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let w = token_file_warning(&path).expect("0644 is warned about");
        assert!(w.contains("0644") && w.contains("chmod 600"), "{w}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(token_file_warning(&path), None);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(token_file_warning(&path).is_some(), "group-readable too");
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn values_are_bounded_at_load() {
        // A TTL whose expiry cannot be written as a timestamp (past year 9999).
        let e = Config::parse("max_ttl_secs = 18446744073709551615").unwrap_err().to_string();
        assert!(e.contains("max_ttl_secs") && e.contains("ttl_secs 0"), "{e}");
        assert!(Config::parse(&format!("max_ttl_secs = {MAX_TTL_SECS}")).is_ok());
        assert!(Config::parse(&format!("max_ttl_secs = {}", MAX_TTL_SECS + 1)).is_err());
        assert!(Config::parse("max_alert_ttl_secs = 18446744073709551615").is_err());
        // Every alert policy expires.
        let e = Config::parse("alert_ttl_secs = 0").unwrap_err().to_string();
        assert!(e.contains("alert_ttl_secs"), "{e}");
        assert!(Config::parse("max_body_bytes = 18446744073709551615").is_err());
        assert!(Config::parse("policy_coverage_v4 = 33").is_err());
        assert!(Config::parse("allow_coverage_v6 = 129").is_err());
    }

    #[test]
    fn the_config_allowlist_is_held_to_the_api_bounds() {
        let e = Config::parse("allowlist = [\"2001::/16\"]").unwrap_err().to_string();
        assert!(e.contains("2001::/16") && e.contains("/32"), "{e}");
        let e = Config::parse("allowlist = [\"10.0.0.0/8\", \"172.16.0.0/12\"]").unwrap_err().to_string();
        assert!(e.contains("allow_coverage_v4"), "{e}");
        // Mapped IPv6 is the IPv4 prefix.
        let c = Config::parse("allowlist = [\"::ffff:192.0.2.0/120\"]").unwrap();
        assert_eq!(c.allowlist, vec!["192.0.2.0/24".parse::<IpNet>().unwrap()]);
        assert!(Config::parse("allow_coverage_v4 = 4\nallowlist = [\"10.0.0.0/8\", \"172.16.0.0/12\"]").is_ok());
    }
}
