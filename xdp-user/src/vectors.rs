//! The vector catalogue the controller works with: the built-in vectors of
//! `xdp_common::vector`, with ports overridden or new vectors added by the
//! configuration.

use serde::Serialize;
use xdp_common::vector::{self, BUILTIN, FIRST_CUSTOM, FRAGMENT};

use crate::config::VectorConfig;

#[derive(Clone, Debug, Serialize)]
pub struct VectorInfo {
    pub id: u8,
    pub name: String,
    pub ports: Vec<u16>,
    pub amplification: String,
    pub builtin: bool,
}

#[derive(Clone, Debug)]
pub struct VectorTable {
    vectors: Vec<VectorInfo>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VectorError {
    #[error("vector name {0:?} must be {NAME_RULE}")]
    BadName(String),
    #[error("vector {0} has no ports")]
    NoPorts(String),
    #[error("port {port} is claimed by both {a} and {b}")]
    PortClash { port: u16, a: String, b: String },
    #[error("too many custom vectors (at most {0})")]
    TooMany(usize),
    #[error("the fragment vector has no ports to configure")]
    Fragment,
}

/// What per-policy counters call the vectors a policy does not name (they
/// all pass, and share one count). Vector names start with a letter or digit,
/// so no vector can be called this.
pub const UNLISTED: &str = "_unlisted";

/// Longest vector name, in bytes.
pub const MAX_NAME_LEN: usize = 32;
/// What [`valid_name`] accepts, for error messages.
pub const NAME_RULE: &str = "1 to 32 characters of a-z, 0-9, '_' and '-', starting with a letter or digit";

/// A well-formed vector name: 1..=[`MAX_NAME_LEN`] bytes of `[a-z0-9_-]`,
/// the first a letter or digit. The one check for every name that comes in:
/// the config's `[[vectors]]`, an alert's `vectors` (API and CLI), the names
/// FastNetMon's ports map to.
pub fn valid_name(name: &str) -> bool {
    let first_ok = name.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    first_ok && name.len() <= MAX_NAME_LEN && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

impl Default for VectorTable {
    fn default() -> Self {
        Self::new(&[]).expect("built-in table is valid")
    }
}

impl VectorTable {
    pub fn new(overrides: &[VectorConfig]) -> Result<Self, VectorError> {
        let mut vectors: Vec<VectorInfo> = BUILTIN
            .iter()
            .map(|b| VectorInfo {
                id: b.id,
                name: b.name.into(),
                ports: b.ports.to_vec(),
                amplification: b.amplification.into(),
                builtin: true,
            })
            .collect();
        let mut next = FIRST_CUSTOM;
        for o in overrides {
            if !valid_name(&o.name) {
                return Err(VectorError::BadName(o.name.clone()));
            }
            if o.name == "fragment" {
                return Err(VectorError::Fragment);
            }
            if o.ports.is_empty() {
                return Err(VectorError::NoPorts(o.name.clone()));
            }
            match vectors.iter_mut().find(|v| v.name == o.name) {
                Some(v) => {
                    v.ports = o.ports.clone();
                    if let Some(a) = &o.amplification {
                        v.amplification = a.clone();
                    }
                }
                None => {
                    if next >= FRAGMENT {
                        return Err(VectorError::TooMany((FRAGMENT - FIRST_CUSTOM) as usize));
                    }
                    vectors.push(VectorInfo {
                        id: next,
                        name: o.name.clone(),
                        ports: o.ports.clone(),
                        amplification: o.amplification.clone().unwrap_or_else(|| "unknown".into()),
                        builtin: false,
                    });
                    next += 1;
                }
            }
        }
        let mut owner: std::collections::HashMap<u16, &str> = Default::default();
        for v in &vectors {
            for p in &v.ports {
                if let Some(a) = owner.insert(*p, &v.name) {
                    return Err(VectorError::PortClash { port: *p, a: a.into(), b: v.name.clone() });
                }
            }
        }
        Ok(Self { vectors })
    }

    /// UDP source port -> vector id, for the data plane.
    pub fn port_table(&self) -> Vec<(u16, u8)> {
        self.vectors.iter().flat_map(|v| v.ports.iter().map(move |p| (*p, v.id))).collect()
    }

    pub fn all(&self) -> &[VectorInfo] {
        &self.vectors
    }

    pub fn id_of(&self, name: &str) -> Option<u8> {
        self.vectors.iter().find(|v| v.name == name).map(|v| v.id)
    }

    pub fn name_of(&self, id: u8) -> Option<&str> {
        self.vectors.iter().find(|v| v.id == id).map(|v| v.name.as_str())
    }

    pub fn name_of_port(&self, port: u16) -> Option<String> {
        self.vectors.iter().find(|v| v.ports.contains(&port)).map(|v| v.name.clone())
    }
}

/// The built-in UDP source port -> vector id table.
pub fn default_port_table() -> Vec<(u16, u8)> {
    VectorTable::default().port_table()
}

/// Built-in vector id by name.
pub fn id_of(name: &str) -> Option<u8> {
    vector::builtin_by_name(name).map(|v| v.id)
}

/// Built-in vector name by id.
pub fn name_of(id: u8) -> Option<&'static str> {
    vector::builtin_by_id(id).map(|v| v.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vc(name: &str, ports: &[u16]) -> VectorConfig {
        VectorConfig { name: name.into(), ports: ports.to_vec(), amplification: None }
    }

    #[test]
    fn overrides_and_custom_vectors() {
        let t = VectorTable::new(&[vc("dns", &[53, 5053]), vc("openvpn", &[1194])]).unwrap();
        assert_eq!(t.name_of_port(5053).as_deref(), Some("dns"));
        assert_eq!(t.id_of("openvpn"), Some(FIRST_CUSTOM));
        assert!(t.port_table().contains(&(1194, FIRST_CUSTOM)));
    }

    #[test]
    fn clashes_and_bad_names_are_refused() {
        assert!(matches!(VectorTable::new(&[vc("other", &[11211])]), Err(VectorError::PortClash { port: 11211, .. })));
        assert_eq!(VectorTable::new(&[vc("Bad Name", &[1])]).unwrap_err(), VectorError::BadName("Bad Name".into()));
        assert_eq!(VectorTable::new(&[vc("x", &[])]).unwrap_err(), VectorError::NoPorts("x".into()));
        assert_eq!(
            VectorTable::new(&[vc("Bad Name", &[1])]).unwrap_err().to_string(),
            "vector name \"Bad Name\" must be 1 to 32 characters of a-z, 0-9, '_' and '-', starting with a letter or digit"
        );
    }

    #[test]
    fn one_name_rule() {
        assert!(NAME_RULE.contains(&MAX_NAME_LEN.to_string()));
        let longest = "x".repeat(MAX_NAME_LEN);
        assert!(valid_name(&longest) && valid_name("a") && valid_name("ntp-v2_x9"));
        for bad in ["", "Memcached", "mem cached", "dns;rm", "é", "_x", "-x", UNLISTED, &format!("{longest}x")] {
            assert!(!valid_name(bad), "{bad:?}");
        }
        assert!(VectorTable::new(&[vc(&longest, &[1])]).is_ok());
        assert_eq!(VectorTable::new(&[vc(&format!("{longest}x"), &[1])]).unwrap_err(), VectorError::BadName(format!("{longest}x")));
        // Every built-in name passes the rule alerts are held to.
        assert!(BUILTIN.iter().all(|v| valid_name(v.name)));
    }
}
