//! The generic alert body of ampguard's own API:
//!
//! ```text
//! POST /v1/alerts
//! {"victim": "203.0.113.10", "action": "ban" | "unban",
//!  "vectors": ["memcached", "ntp"]?, "ttl_secs": 600?, "comment": "..."?,
//!  "pps": 3209?, "attack_type": "udp_flood"?,
//!  "source": "generic" | "fastnetmon_script" | "fastnetmon_json"?}
//! ```
//!
//! Unknown fields are refused. `pps`, `attack_type` and `source` exist so that
//! [`super::to_generic_json`] (what `ampguard alert fastnetmon` posts) round-trips;
//! `source` defaults to `generic`. Vector names are only checked for shape
//! here ([`crate::vectors::valid_name`], at most [`MAX_VECTORS`]); the store checks
//! them against the live vector table.

use serde::Deserialize;
use serde_json::Value;

use super::{clean_text, json_kind, parse_victim, snippet, Alert, AlertAction, AlertError, AlertSource, MAX_ATTACK_TYPE_BYTES};
use crate::vectors;

/// Most vector names in one alert.
pub const MAX_VECTORS: usize = 32;
/// Longest comment kept (bytes; longer ones are cut on a character boundary).
pub use crate::text::MAX_COMMENT_BYTES;

/// The body as sent: every field kept as raw JSON so that type errors can be
/// reported per field; `deny_unknown_fields` refuses typos such as `"victm"`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GenericBody {
    victim: Option<Value>,
    action: Option<Value>,
    vectors: Option<Value>,
    ttl_secs: Option<Value>,
    comment: Option<Value>,
    pps: Option<Value>,
    attack_type: Option<Value>,
    source: Option<Value>,
}

/// Parse a `/v1/alerts` body.
pub fn parse_generic(body: &[u8]) -> Result<Alert, AlertError> {
    // First as plain JSON: syntax errors, and the kind of the top-level value
    // (a derived struct would also accept an array of 8 values).
    let value: Value = serde_json::from_slice(body).map_err(|e| AlertError::InvalidJson(e.to_string()))?;
    if !value.is_object() {
        return Err(AlertError::NotAnObject(json_kind(&value)));
    }
    // Then field by field from the bytes: a `Value` would silently keep the
    // last of two `"victim"` keys, the struct refuses repeats and unknowns.
    let raw: GenericBody = serde_json::from_slice(body).map_err(|e| AlertError::UnknownField(e.to_string()))?;

    let victim = match raw.victim {
        None | Some(Value::Null) => return Err(AlertError::MissingField("victim")),
        Some(Value::String(s)) => parse_victim("victim", &s)?,
        Some(other) => return Err(wrong("victim", "a host address string", &other)),
    };
    let action = match raw.action {
        None | Some(Value::Null) => return Err(AlertError::MissingField("action")),
        Some(Value::String(s)) => match s.as_str() {
            "ban" => AlertAction::Ban,
            "unban" => AlertAction::Unban,
            _ => return Err(AlertError::UnknownAction { field: "action", value: snippet(&s), expected: "\"ban\" or \"unban\"" }),
        },
        Some(other) => return Err(wrong("action", "\"ban\" or \"unban\"", &other)),
    };
    let vectors = match raw.vectors {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => parse_vectors(&items)?,
        Some(other) => return Err(wrong("vectors", "an array of vector names", &other)),
    };
    let ttl_secs = match opt_u64("ttl_secs", raw.ttl_secs)? {
        Some(0) => {
            return Err(AlertError::BadValue {
                field: "ttl_secs",
                reason: "must be at least 1 second (leave it out to use the default)".into(),
            })
        }
        t => t,
    };
    let pps = opt_u64("pps", raw.pps)?;
    // Free text is cut to size and cleaned, never refused: a detector's text
    // must not block its ban.
    let attack_type = match raw.attack_type {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => clean_text(&s, MAX_ATTACK_TYPE_BYTES),
        Some(other) => return Err(wrong("attack_type", "a string", &other)),
    };
    let comment = match raw.comment {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => clean_text(&s, MAX_COMMENT_BYTES),
        Some(other) => return Err(wrong("comment", "a string", &other)),
    };
    let source = match raw.source {
        None | Some(Value::Null) => AlertSource::Generic,
        Some(Value::String(s)) => AlertSource::from_label(&s).ok_or_else(|| AlertError::BadValue {
            field: "source",
            reason: format!("unknown source {:?}, expected \"generic\", \"fastnetmon_script\" or \"fastnetmon_json\"", snippet(&s)),
        })?,
        Some(other) => return Err(wrong("source", "a string", &other)),
    };

    Ok(Alert { source, victim, action, vectors, ttl_secs, pps, attack_type, comment })
}

fn wrong(field: &'static str, expected: &'static str, got: &Value) -> AlertError {
    AlertError::WrongType { field, expected, got: json_kind(got).to_string() }
}

fn opt_u64(field: &'static str, v: Option<Value>) -> Result<Option<u64>, AlertError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) if n.is_u64() => Ok(n.as_u64()),
        Some(other) => Err(wrong(field, "a non-negative integer", &other)),
    }
}

/// Vector names: each [`vectors::valid_name`], at most [`MAX_VECTORS`] of
/// them; repeats are dropped, order kept.
fn parse_vectors(items: &[Value]) -> Result<Vec<String>, AlertError> {
    if items.len() > MAX_VECTORS {
        return Err(AlertError::BadValue {
            field: "vectors",
            reason: format!("{} names given, at most {MAX_VECTORS} allowed", items.len()),
        });
    }
    let mut out: Vec<String> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let name = match item {
            Value::String(s) => s,
            other => {
                return Err(AlertError::BadValue {
                    field: "vectors",
                    reason: format!("item {i}: expected a vector name string, got {}", json_kind(other)),
                })
            }
        };
        if !vectors::valid_name(name) {
            return Err(AlertError::BadValue {
                field: "vectors",
                reason: format!("item {i}: {:?} is not a vector name ({})", snippet(name), vectors::NAME_RULE),
            });
        }
        if !out.iter().any(|n| n == name) {
            out.push(name.clone());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::to_generic_json;
    use serde_json::json;
    use std::net::IpAddr;

    fn parse(v: serde_json::Value) -> Result<Alert, AlertError> {
        parse_generic(v.to_string().as_bytes())
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn minimal_ban() {
        let a = parse(json!({"victim": "203.0.113.10", "action": "ban"})).unwrap();
        assert_eq!(
            a,
            Alert {
                source: AlertSource::Generic,
                victim: ip("203.0.113.10"),
                action: AlertAction::Ban,
                vectors: vec![],
                ttl_secs: None,
                pps: None,
                attack_type: None,
                comment: None,
            }
        );
    }

    #[test]
    fn full_body() {
        let a = parse(json!({
            "victim": "2001:db8::10", "action": "unban", "vectors": ["memcached", "ntp", "memcached"],
            "ttl_secs": 600, "comment": "manual", "pps": 10, "attack_type": "udp_flood",
            "source": "fastnetmon_json"
        }))
        .unwrap();
        assert_eq!(a.victim, ip("2001:db8::10"));
        assert_eq!(a.action, AlertAction::Unban);
        assert_eq!(a.vectors, vec!["memcached".to_string(), "ntp".to_string()]);
        assert_eq!(a.ttl_secs, Some(600));
        assert_eq!(a.comment.as_deref(), Some("manual"));
        assert_eq!(a.pps, Some(10));
        assert_eq!(a.attack_type.as_deref(), Some("udp_flood"));
        assert_eq!(a.source, AlertSource::FastnetmonJson);
    }

    #[test]
    fn nulls_are_absent() {
        let a = parse(json!({"victim": "203.0.113.10", "action": "ban", "vectors": null, "ttl_secs": null,
            "comment": null, "source": null}))
        .unwrap();
        assert_eq!(a.vectors, Vec::<String>::new());
        assert_eq!(a.ttl_secs, None);
        assert_eq!(a.source, AlertSource::Generic);
    }

    #[test]
    fn bad_json() {
        assert!(matches!(parse_generic(b"{\"victim\": "), Err(AlertError::InvalidJson(_))));
        assert!(matches!(parse_generic(b""), Err(AlertError::InvalidJson(_))));
        assert!(matches!(parse_generic(b"victim=203.0.113.10"), Err(AlertError::InvalidJson(_))));
        assert!(matches!(parse_generic(b"\xff\xfe"), Err(AlertError::InvalidJson(_))));
        assert_eq!(parse_generic(b"[1,2]"), Err(AlertError::NotAnObject("an array")));
        assert_eq!(parse_generic(b"\"203.0.113.10\""), Err(AlertError::NotAnObject("a string")));
        assert_eq!(parse_generic(b"null"), Err(AlertError::NotAnObject("null")));
    }

    #[test]
    fn unknown_and_repeated_fields() {
        let e = parse(json!({"victim": "203.0.113.10", "action": "ban", "victm": "x"})).unwrap_err();
        match &e {
            AlertError::UnknownField(m) => assert!(m.contains("unknown field `victm`"), "{m}"),
            other => panic!("{other:?}"),
        }
        let e = parse_generic(br#"{"victim":"203.0.113.10","victim":"198.51.100.1","action":"ban"}"#).unwrap_err();
        match &e {
            AlertError::UnknownField(m) => assert!(m.contains("duplicate field `victim`"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn missing_fields() {
        assert_eq!(parse(json!({"action": "ban"})), Err(AlertError::MissingField("victim")));
        assert_eq!(parse(json!({"victim": null, "action": "ban"})), Err(AlertError::MissingField("victim")));
        assert_eq!(parse(json!({"victim": "203.0.113.10"})), Err(AlertError::MissingField("action")));
        assert_eq!(parse(json!({})), Err(AlertError::MissingField("victim")));
    }

    #[test]
    fn bad_victims() {
        assert!(matches!(
            parse(json!({"victim": "203.0.113.0/24", "action": "ban"})),
            Err(AlertError::PrefixNotAllowed { field: "victim", .. })
        ));
        assert!(matches!(parse(json!({"victim": "example.com", "action": "ban"})), Err(AlertError::BadAddress { field: "victim", .. })));
        assert!(matches!(parse(json!({"victim": "239.1.1.1", "action": "ban"})), Err(AlertError::UnusableAddress { field: "victim", .. })));
        assert_eq!(
            parse(json!({"victim": 3405803786u64, "action": "ban"})),
            Err(AlertError::WrongType { field: "victim", expected: "a host address string", got: "an integer".into() })
        );
    }

    #[test]
    fn bad_actions() {
        assert_eq!(
            parse(json!({"victim": "203.0.113.10", "action": "block"})),
            Err(AlertError::UnknownAction { field: "action", value: "block".into(), expected: "\"ban\" or \"unban\"" })
        );
        // Case matters: the wire names are lowercase.
        assert!(matches!(parse(json!({"victim": "203.0.113.10", "action": "BAN"})), Err(AlertError::UnknownAction { .. })));
        assert_eq!(
            parse(json!({"victim": "203.0.113.10", "action": true})),
            Err(AlertError::WrongType { field: "action", expected: "\"ban\" or \"unban\"", got: "a boolean".into() })
        );
    }

    #[test]
    fn bad_vectors() {
        let base = |v: serde_json::Value| parse(json!({"victim": "203.0.113.10", "action": "ban", "vectors": v}));
        assert!(matches!(base(json!("memcached")), Err(AlertError::WrongType { field: "vectors", .. })));
        for bad in [json!([""]), json!(["Memcached"]), json!(["mem cached"]), json!(["ntp", "dns;rm"]), json!([1])] {
            assert!(matches!(base(bad.clone()), Err(AlertError::BadValue { field: "vectors", .. })), "{bad}");
        }
        assert!(matches!(base(json!(["x".repeat(65)])), Err(AlertError::BadValue { field: "vectors", .. })));
        // The vector table's own limit: no name longer than a configurable one.
        assert_eq!(
            base(json!(["x".repeat(33)])),
            Err(AlertError::BadValue {
                field: "vectors",
                reason: format!(
                    "item 0: {:?} is not a vector name (1 to 32 characters of a-z, 0-9, '_' and '-', starting with a letter or digit)",
                    "x".repeat(33)
                )
            })
        );
        assert_eq!(base(json!(["x".repeat(32)])).unwrap().vectors, vec!["x".repeat(32)]);
        let many: Vec<String> = (0..33).map(|i| format!("v{i}")).collect();
        assert!(matches!(base(json!(many)), Err(AlertError::BadValue { field: "vectors", .. })));
        let ok: Vec<String> = (0..32).map(|i| format!("v-{i}_x")).collect();
        assert_eq!(base(json!(ok.clone())).unwrap().vectors, ok);
        // Names are not checked against the vector table here.
        assert_eq!(base(json!(["no-such-vector"])).unwrap().vectors, vec!["no-such-vector".to_string()]);
    }

    #[test]
    fn bad_numbers() {
        let base = |k: &str, v: serde_json::Value| {
            let mut b = json!({"victim": "203.0.113.10", "action": "ban"});
            b[k] = v;
            parse(b)
        };
        assert_eq!(
            base("ttl_secs", json!(-1)),
            Err(AlertError::WrongType { field: "ttl_secs", expected: "a non-negative integer", got: "a negative integer".into() })
        );
        assert_eq!(
            base("ttl_secs", json!("600")),
            Err(AlertError::WrongType { field: "ttl_secs", expected: "a non-negative integer", got: "a string".into() })
        );
        assert_eq!(
            base("ttl_secs", json!(1.5)),
            Err(AlertError::WrongType { field: "ttl_secs", expected: "a non-negative integer", got: "a fractional number".into() })
        );
        assert!(matches!(base("ttl_secs", json!(0)), Err(AlertError::BadValue { field: "ttl_secs", .. })));
        assert_eq!(base("pps", json!(u64::MAX)).unwrap().pps, Some(u64::MAX));
        // Larger than u64: serde_json reads it as a float.
        assert!(matches!(
            parse_generic(br#"{"victim":"203.0.113.10","action":"ban","pps":18446744073709551616}"#),
            Err(AlertError::WrongType { field: "pps", .. })
        ));
    }

    #[test]
    fn bad_texts() {
        let base = |k: &str, v: serde_json::Value| {
            let mut b = json!({"victim": "203.0.113.10", "action": "ban"});
            b[k] = v;
            parse(b)
        };
        // Detector text is cleaned and cut, never a reason to refuse the alert.
        assert_eq!(base("comment", json!("line\nforged\u{1b}[2J")).unwrap().comment.as_deref(), Some("lineforged[2J"));
        assert_eq!(base("comment", json!("x".repeat(100_000))).unwrap().comment.map(|c| c.len()), Some(MAX_COMMENT_BYTES));
        assert_eq!(base("comment", json!("é".repeat(200))).unwrap().comment, Some("é".repeat(128)));
        assert_eq!(base("attack_type", json!("😀".repeat(64))).unwrap().attack_type, Some("😀".repeat(16)));
        assert_eq!(base("comment", json!("")).unwrap().comment, None);
        assert!(matches!(base("comment", json!(["a"])), Err(AlertError::WrongType { field: "comment", .. })));
        assert_eq!(base("attack_type", json!("x".repeat(65))).unwrap().attack_type.map(|t| t.len()), Some(MAX_ATTACK_TYPE_BYTES));
        assert!(matches!(base("source", json!("snmp")), Err(AlertError::BadValue { field: "source", .. })));
        assert!(matches!(base("source", json!(1)), Err(AlertError::WrongType { field: "source", .. })));
    }

    #[test]
    fn round_trip_through_generic_json() {
        let alert = Alert {
            source: AlertSource::FastnetmonScript,
            victim: ip("2001:db8::10"),
            action: AlertAction::Ban,
            vectors: vec!["memcached".into(), "fragment".into()],
            ttl_secs: Some(900),
            pps: Some(u64::MAX),
            attack_type: Some("udp_flood".into()),
            comment: Some("fastnetmon: udp_flood 3209 pps, incoming".into()),
        };
        assert_eq!(parse(to_generic_json(&alert)).unwrap(), alert);
    }
}
