//! Alert intake: detection alerts (FastNetMon and others) turned into
//! [`Alert`]s, the per-victim ban/unban requests the store acts on.
//!
//! Everything here is pure: no I/O, no clock, no async. The parsers take the
//! raw bytes or arguments a detector hands over and either return an
//! [`Alert`] or an [`AlertError`] that names the field and what was expected.
//! They must never panic on any input (they are fuzzed) and bound their work.
//!
//! - [`fastnetmon::parse_script`]: FastNetMon's notify-script call
//!   (`IP DIRECTION PPS ACTION` plus the attack details on stdin).
//! - [`fastnetmon::parse_json`]: FastNetMon Advanced's JSON callback
//!   (`notify_script_format = json` or `web_callback_url`).
//! - [`generic::parse_generic`]: the body of ampguard's own `POST /v1/alerts`.
//! - [`to_generic_json`]: an [`Alert`] as a `/v1/alerts` body (what the
//!   `ampguard alert fastnetmon` CLI posts), accepted back by `parse_generic`.

use std::net::{IpAddr, Ipv4Addr};

use serde::{Deserialize, Serialize};

pub mod fastnetmon;
pub mod generic;

/// What the detector asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertAction {
    /// Create or refresh the victim's ban policy.
    Ban,
    /// Lift the victim's ban policy.
    Unban,
}

impl AlertAction {
    /// The wire name: `"ban"` or `"unban"`.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertAction::Ban => "ban",
            AlertAction::Unban => "unban",
        }
    }
}

/// Where an alert came from (a metrics label and an audit field).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertSource {
    /// FastNetMon's text notify script (`IP DIRECTION PPS ACTION` + stdin).
    FastnetmonScript,
    /// FastNetMon Advanced's JSON callback.
    FastnetmonJson,
    /// ampguard's own `/v1/alerts` body.
    Generic,
}

impl AlertSource {
    /// The metrics label: `"fastnetmon_script"`, `"fastnetmon_json"` or `"generic"`.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertSource::FastnetmonScript => "fastnetmon_script",
            AlertSource::FastnetmonJson => "fastnetmon_json",
            AlertSource::Generic => "generic",
        }
    }

    /// The inverse of [`AlertSource::as_str`].
    pub fn from_label(label: &str) -> Option<AlertSource> {
        match label {
            "fastnetmon_script" => Some(AlertSource::FastnetmonScript),
            "fastnetmon_json" => Some(AlertSource::FastnetmonJson),
            "generic" => Some(AlertSource::Generic),
            _ => None,
        }
    }
}

/// One detection alert about one victim host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Alert {
    pub source: AlertSource,
    /// A host address (a ban creates a /32 or /128 policy). Always canonical:
    /// an IPv4-mapped IPv6 address is turned into the IPv4 address.
    pub victim: IpAddr,
    pub action: AlertAction,
    /// Vector names, inferred or given, most significant first; empty means
    /// "use the default profile".
    pub vectors: Vec<String>,
    pub ttl_secs: Option<u64>,
    pub pps: Option<u64>,
    pub attack_type: Option<String>,
    pub comment: Option<String>,
}

/// Why an alert was refused. Every message names the field and what was
/// expected; values echoed back are shortened (see [`snippet`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AlertError {
    #[error("invalid JSON: {0}")]
    InvalidJson(String),
    #[error("the alert body must be a JSON object, got {0}")]
    NotAnObject(&'static str),
    #[error("alert body: {0}")]
    UnknownField(String),
    #[error("missing field `{0}`")]
    MissingField(&'static str),
    #[error("field `{field}`: expected {expected}, got {got}")]
    WrongType { field: &'static str, expected: &'static str, got: String },
    /// A field of the wrong type, as serde found it: `path` is where
    /// (`attack_details.initial_attack_power`), `message` what it holds and
    /// what was expected.
    #[error("field `{path}`: {message}")]
    Json { path: String, message: String },
    #[error("expected 4 arguments after the script name (IP DIRECTION PPS ACTION), got {0}")]
    WrongArgCount(usize),
    #[error("field `{field}`: {value:?} is not an IPv4 or IPv6 address")]
    BadAddress { field: &'static str, value: String },
    #[error("field `{field}`: {value:?} is a prefix; an alert names a single host address (use a policy for prefixes)")]
    PrefixNotAllowed { field: &'static str, value: String },
    #[error("field `{field}`: {addr} cannot be a victim ({reason})")]
    UnusableAddress { field: &'static str, addr: IpAddr, reason: &'static str },
    #[error("field `{field}`: unknown action {value:?}, expected {expected}")]
    UnknownAction { field: &'static str, value: String, expected: &'static str },
    #[error("field `{field}`: unknown direction {value:?}, expected incoming, outgoing, internal or other")]
    UnknownDirection { field: &'static str, value: String },
    #[error(
        "field `{field}`: {value:?} is not a packet rate (expected a whole number of packets per second, at most 18446744073709551615)"
    )]
    BadPps { field: &'static str, value: String },
    #[error("field `{field}`: {reason}")]
    BadValue { field: &'static str, reason: String },
    #[error("attack direction is {direction:?}: ampguard acts only on attacks towards a protected host (incoming)")]
    NotIncoming { direction: String },
    #[error("field `alert_scope`: {0:?} is not supported; only per-host alerts (\"host\") name a victim")]
    UnsupportedScope(String),
}

impl AlertError {
    /// True for alerts that are well formed but deliberately not acted on
    /// (an outgoing attack): an API can answer "ignored" rather than "bad request".
    pub fn is_ignored(&self) -> bool {
        matches!(self, AlertError::NotIncoming { .. })
    }
}

/// Most characters of an offending value echoed in an error message.
pub const SNIPPET_CHARS: usize = 64;

/// A value shortened for an error message: at most [`SNIPPET_CHARS`]
/// characters, with `…` when cut.
pub fn snippet(s: &str) -> String {
    let mut out: String = s.chars().take(SNIPPET_CHARS).collect();
    if s.chars().nth(SNIPPET_CHARS).is_some() {
        out.push('…');
    }
    out
}

/// A JSON value's kind, for "expected X, got Y" messages.
pub(crate) fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(n) if n.is_u64() => "an integer",
        serde_json::Value::Number(n) if n.is_i64() => "a negative integer",
        serde_json::Value::Number(_) => "a fractional number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// Parse a victim host address: IPv4 or IPv6, no prefix length, no zone;
/// refuses unspecified, multicast and broadcast addresses. IPv4-mapped IPv6
/// addresses (`::ffff:192.0.2.1`) are returned as IPv4, as the data plane
/// sees those packets as IPv4.
pub fn parse_victim(field: &'static str, value: &str) -> Result<IpAddr, AlertError> {
    let addr: IpAddr = match value.parse() {
        Ok(a) => a,
        Err(_) => {
            if value.contains('/') && value.parse::<ipnet::IpNet>().is_ok() {
                return Err(AlertError::PrefixNotAllowed { field, value: snippet(value) });
            }
            return Err(AlertError::BadAddress { field, value: snippet(value) });
        }
    };
    let addr = addr.to_canonical();
    let reason = if addr.is_unspecified() {
        Some("unspecified address")
    } else if addr.is_multicast() {
        Some("multicast address")
    } else if addr == IpAddr::V4(Ipv4Addr::BROADCAST) {
        Some("broadcast address")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(AlertError::UnusableAddress { field, addr, reason }),
        None => Ok(addr),
    }
}

/// Most bytes kept of a detector-supplied attack type.
pub const MAX_ATTACK_TYPE_BYTES: usize = 64;

/// A detector-supplied free text (attack type, protocol, comment) made safe
/// for logs and comments: trimmed, control characters dropped, cut to at most
/// `max_bytes` on a character boundary ([`crate::text::fit`]). Never an
/// error: a detector's text must not block its ban. `None` when nothing is left.
pub(crate) fn clean_text(s: &str, max_bytes: usize) -> Option<String> {
    let out: String = s.trim().chars().filter(|c| !c.is_control()).collect();
    let out = crate::text::fit(&out, max_bytes).trim().to_string();
    if out.is_empty() {
        None
    } else {
        Some(out)
    }
}

/// The `/v1/alerts` body for an alert: what `ampguard alert fastnetmon`
/// posts, so the script form reuses the generic endpoint.
/// [`generic::parse_generic`] accepts it and gives the same [`Alert`] back.
/// Absent optional fields are left out; `vectors` is always present (an
/// empty array means "use the default profile").
pub fn to_generic_json(alert: &Alert) -> serde_json::Value {
    let mut body = serde_json::Map::new();
    body.insert("victim".into(), alert.victim.to_string().into());
    body.insert("action".into(), alert.action.as_str().into());
    body.insert("vectors".into(), alert.vectors.clone().into());
    if let Some(ttl) = alert.ttl_secs {
        body.insert("ttl_secs".into(), ttl.into());
    }
    if let Some(pps) = alert.pps {
        body.insert("pps".into(), pps.into());
    }
    if let Some(t) = &alert.attack_type {
        body.insert("attack_type".into(), t.clone().into());
    }
    if let Some(c) = &alert.comment {
        body.insert("comment".into(), c.clone().into());
    }
    body.insert("source".into(), alert.source.as_str().into());
    serde_json::Value::Object(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn labels() {
        assert_eq!(AlertSource::FastnetmonScript.as_str(), "fastnetmon_script");
        assert_eq!(AlertSource::FastnetmonJson.as_str(), "fastnetmon_json");
        assert_eq!(AlertSource::Generic.as_str(), "generic");
        for s in [AlertSource::FastnetmonScript, AlertSource::FastnetmonJson, AlertSource::Generic] {
            assert_eq!(AlertSource::from_label(s.as_str()), Some(s));
            assert_eq!(serde_json::to_value(s).unwrap(), json!(s.as_str()));
        }
        assert_eq!(AlertSource::from_label("FastNetMon"), None);
        assert_eq!(serde_json::to_value(AlertAction::Ban).unwrap(), json!("ban"));
        assert_eq!(serde_json::to_value(AlertAction::Unban).unwrap(), json!("unban"));
        assert_eq!(serde_json::from_value::<AlertAction>(json!("unban")).unwrap(), AlertAction::Unban);
    }

    #[test]
    fn victims() {
        assert_eq!(parse_victim("ip", "203.0.113.10").unwrap(), "203.0.113.10".parse::<IpAddr>().unwrap());
        assert_eq!(parse_victim("ip", "2001:db8::10").unwrap(), "2001:db8::10".parse::<IpAddr>().unwrap());
        // IPv4-mapped IPv6 becomes IPv4.
        assert_eq!(parse_victim("ip", "::ffff:203.0.113.10").unwrap(), "203.0.113.10".parse::<IpAddr>().unwrap());
        assert!(matches!(parse_victim("ip", "203.0.113.0/24"), Err(AlertError::PrefixNotAllowed { field: "ip", .. })));
        assert!(matches!(parse_victim("ip", "2001:db8::/64"), Err(AlertError::PrefixNotAllowed { .. })));
        assert!(matches!(parse_victim("ip", "203.0.113.0/99"), Err(AlertError::BadAddress { .. })));
        assert!(matches!(parse_victim("ip", "fe80::1%eth0"), Err(AlertError::BadAddress { .. })));
        assert!(matches!(parse_victim("ip", ""), Err(AlertError::BadAddress { .. })));
        assert!(matches!(parse_victim("ip", " 203.0.113.10"), Err(AlertError::BadAddress { .. })));
        assert!(matches!(parse_victim("ip", "0.0.0.0"), Err(AlertError::UnusableAddress { reason: "unspecified address", .. })));
        assert!(matches!(parse_victim("ip", "::"), Err(AlertError::UnusableAddress { reason: "unspecified address", .. })));
        assert!(matches!(parse_victim("ip", "224.0.0.1"), Err(AlertError::UnusableAddress { reason: "multicast address", .. })));
        assert!(matches!(parse_victim("ip", "ff02::1"), Err(AlertError::UnusableAddress { reason: "multicast address", .. })));
        assert!(matches!(parse_victim("ip", "255.255.255.255"), Err(AlertError::UnusableAddress { reason: "broadcast address", .. })));
    }

    #[test]
    fn snippets_are_short() {
        assert_eq!(snippet("abc"), "abc");
        let long = "é".repeat(1000);
        let s = snippet(&long);
        assert_eq!(s.chars().count(), SNIPPET_CHARS + 1);
        assert!(s.ends_with('…'));
        let e = parse_victim("ip", &"x".repeat(100_000)).unwrap_err();
        assert!(e.to_string().len() < 200, "{e}");
    }

    #[test]
    fn error_messages_name_the_field() {
        let e = parse_victim("victim", "nope").unwrap_err();
        assert_eq!(e.to_string(), "field `victim`: \"nope\" is not an IPv4 or IPv6 address");
        let e = parse_victim("victim", "203.0.113.0/24").unwrap_err();
        assert!(e.to_string().starts_with("field `victim`: \"203.0.113.0/24\" is a prefix"), "{e}");
        assert!(AlertError::NotIncoming { direction: "outgoing".into() }.is_ignored());
        assert!(!AlertError::MissingField("victim").is_ignored());
    }

    #[test]
    fn generic_json_shape() {
        let alert = Alert {
            source: AlertSource::FastnetmonScript,
            victim: "203.0.113.10".parse().unwrap(),
            action: AlertAction::Ban,
            vectors: vec!["memcached".into()],
            ttl_secs: None,
            pps: Some(3209),
            attack_type: Some("udp_flood".into()),
            comment: Some("fastnetmon: udp_flood 3209 pps, incoming".into()),
        };
        assert_eq!(
            to_generic_json(&alert),
            json!({
                "victim": "203.0.113.10",
                "action": "ban",
                "vectors": ["memcached"],
                "pps": 3209,
                "attack_type": "udp_flood",
                "comment": "fastnetmon: udp_flood 3209 pps, incoming",
                "source": "fastnetmon_script",
            })
        );
        let unban = Alert {
            source: AlertSource::Generic,
            victim: "2001:db8::10".parse().unwrap(),
            action: AlertAction::Unban,
            vectors: vec![],
            ttl_secs: Some(60),
            pps: None,
            attack_type: None,
            comment: None,
        };
        assert_eq!(
            to_generic_json(&unban),
            json!({"victim": "2001:db8::10", "action": "unban", "vectors": [], "ttl_secs": 60, "source": "generic"})
        );
    }

    #[test]
    fn clean_text_drops_controls_and_caps() {
        assert_eq!(clean_text("  udp_flood\r\n", 64).as_deref(), Some("udp_flood"));
        assert_eq!(clean_text("a\u{1b}[31mb", 64).as_deref(), Some("a[31mb"));
        assert_eq!(clean_text(" \t ", 64), None);
        assert_eq!(clean_text(&"x".repeat(500), 64).unwrap().len(), 64);
        // Bytes, not characters, and never inside one: 64 emoji are 256 bytes.
        assert_eq!(clean_text(&"😀".repeat(64), 64).as_deref(), Some("😀".repeat(16).as_str()));
        assert_eq!(clean_text(&"é".repeat(200), 255).unwrap(), "é".repeat(127));
    }
}
