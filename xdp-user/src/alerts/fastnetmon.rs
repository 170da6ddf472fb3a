//! FastNetMon alerts: the notify-script call (community edition and Advanced
//! with `notify_script_format = text`) and the JSON callback (Advanced, with
//! `notify_script_format = json` or `web_callback_url`).
//!
//! Sources for the formats (read 2026-11; public reference, not copied):
//! - What Debian's fastnetmon 1.2.4 passed here: `tests/fixtures/fastnetmon/`
//!   and `/work/shared/docs/FASTNETMON.md` (argv `IP DIRECTION PPS ACTION`,
//!   actions `ban`, `attack_details`, `unban`; summary then one line per
//!   sampled packet on stdin; nothing on stdin for `unban`).
//! - pavel-odintsov/fastnetmon `src/fast_library.cpp` `print_simple_packet()`:
//!   the packet line, `DATE TIME SRC:SPORT > DST:DPORT protocol: P
//!   [flags: F (tcp only)] frag: 0|1  packets: N size: N bytes ttl: N
//!   sample ratio: N`. IPv6 addresses come from `print_ipv6_address()`, with
//!   no brackets (`2001:db8::1:53`); `frag:` is the C++ bool
//!   `ip_fragmented`, set for any fragment (MF set or offset != 0). Older
//!   releases print no `frag:`.
//! - pavel-odintsov/fastnetmon `src/fastnetmon_logic.cpp`
//!   (`call_blackhole_actions_per_host`, `call_attack_details_handlers`):
//!   `ban` passes the summary (some releases add `Attack traffic dump` and
//!   `Flow dump` sections), `attack_details` passes the summary and packets.
//! - FastNetMon Advanced JSON: <https://fastnetmon.com/docs-fnm-advanced/fastnetmon-json-formats/>
//!   and the official Go client's `CallbackDetails` (github.com/fastnetmon/fastnetmon-go
//!   `main.go`, vendored in FastNetMon/fastnetmon_flow_spec_fragmentation),
//!   plus that repository's `partial_block_udp_fragment.json` sample:
//!   top level `ip`, `action` (`ban`, `unban`, `attack_status`,
//!   `partial_block`, `partial_unblock`), `alert_scope` (`host`, `hostgroup`),
//!   `attack_details` {`attack_type`, `attack_protocol`, `attack_direction`,
//!   `attack_detection_threshold_direction`, `initial_attack_power`,
//!   `peak_attack_power`, `total_incoming_pps`, ...}, `packet_dump` (array
//!   of packet lines in the text format above, with an extra
//!   `ip size: N bytes`) and `packet_dump_detailed` (array of objects:
//!   `ip_version`, `source_ip`, `destination_ip`, `source_port`,
//!   `destination_port`, `tcp_flags`, `fragmentation`, `packets`, `length`,
//!   `ip_length`, `ttl`, `sample_ratio`, `protocol`, `agent_address`).
//!
//! Vector inference: each sampled packet towards the victim counts with
//! weight `packets × sample ratio`. A UDP packet's SOURCE port goes through
//! `port_vector`; a packet marked as a fragment also counts for the
//! `fragment` vector (a non-first fragment has no ports, FastNetMon prints
//! port 0; a first fragment carries the ports and announces non-first
//! fragments that the data plane can only match as `fragment`). Vector names
//! come out most packets first. No packets (the `ban` summary alone) means no
//! vectors: the default profile.

use std::collections::BTreeMap;
use std::io::Read;
use std::net::IpAddr;

use serde::de::{self, Deserializer, IgnoredAny, Visitor};
use serde::Deserialize;
use std::fmt;

use super::generic::{MAX_COMMENT_BYTES, MAX_VECTORS};
use super::{clean_text, json_kind, parse_victim, snippet, Alert, AlertAction, AlertError, AlertSource, MAX_ATTACK_TYPE_BYTES};

/// Most packet lines (or JSON packet entries) looked at.
pub const MAX_DUMP_LINES: usize = 10_000;
/// Lines longer than this (bytes) are skipped.
pub const MAX_LINE_BYTES: usize = 4096;
/// Most stdin lines looked at in all.
pub const MAX_STDIN_LINES: usize = 100_000;
/// Most bytes of the notify script's stdin kept (4 MiB: tens of thousands of
/// packet lines); the rest is read and discarded, since FastNetMon waits for
/// the script to read all it writes. deploy/fastnetmon-notify.sh uses the same bound.
pub const MAX_STDIN_BYTES: usize = 4 << 20;

/// Read a notify script's stdin: at most `max` bytes kept (lossy UTF-8, a
/// character cut at the bound is replaced), the rest read to the end and
/// dropped in small pieces, so that memory stays bounded whatever is sent.
pub fn read_details(r: &mut impl Read, max: usize) -> std::io::Result<String> {
    let mut kept = Vec::new();
    r.by_ref().take(max as u64).read_to_end(&mut kept)?;
    let mut sink = [0u8; 64 * 1024];
    loop {
        match r.read(&mut sink) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(String::from_utf8_lossy(&kept).into_owned())
}
/// The vector the data plane gives non-first fragments
/// (`xdp_common::vector::FRAGMENT`).
pub const FRAGMENT_VECTOR: &str = "fragment";

/// Parse a notify-script call: `argv` is the 4 arguments after the script
/// name (`IP DIRECTION PPS ACTION`), `stdin` what FastNetMon wrote to the
/// script's standard input (possibly empty).
///
/// - ACTION `ban` gives a Ban; `attack_details` also gives a Ban (it refreshes
///   the ban and is when the attack's source ports are known); `unban` gives
///   an Unban (never with vectors); anything else is an error.
/// - DIRECTION `incoming` is acted on. `outgoing`, `internal` and `other`
///   give `Ok(None)`: ampguard protects hosts from inbound floods, and an
///   outgoing attack's IP is the attacker, not a victim. Any other direction
///   is an error.
/// - IP must be a host address (IPv4 or IPv6), PPS a whole number.
///
/// All four arguments are checked before the direction decides.
pub fn parse_script(argv: &[String], stdin: &str, port_vector: &dyn Fn(u16) -> Option<String>) -> Result<Option<Alert>, AlertError> {
    let [ip, direction, pps, action] = argv else {
        return Err(AlertError::WrongArgCount(argv.len()));
    };
    let victim = parse_victim("IP (argument 1)", ip)?;
    let act = match direction.as_str() {
        "incoming" => true,
        "outgoing" | "internal" | "other" => false,
        _ => return Err(AlertError::UnknownDirection { field: "DIRECTION (argument 2)", value: snippet(direction) }),
    };
    let pps = pps.parse::<u64>().map_err(|_| AlertError::BadPps { field: "PPS (argument 3)", value: snippet(pps) })?;
    let action = match action.as_str() {
        "ban" | "attack_details" => AlertAction::Ban,
        "unban" => AlertAction::Unban,
        _ => {
            return Err(AlertError::UnknownAction {
                field: "ACTION (argument 4)",
                value: snippet(action),
                expected: "ban, attack_details or unban",
            })
        }
    };
    if !act {
        return Ok(None);
    }

    let mut summary = Summary::default();
    let mut tally = Tally::default();
    let mut dump_lines = 0usize;
    for line in stdin.lines().take(MAX_STDIN_LINES) {
        if line.len() > MAX_LINE_BYTES {
            continue;
        }
        if let Some(packet) = parse_packet_line(line) {
            dump_lines += 1;
            if dump_lines > MAX_DUMP_LINES {
                break;
            }
            tally.add(victim, &packet, port_vector);
        } else {
            summary.take(line);
        }
    }

    let vectors = match action {
        AlertAction::Ban => tally.into_vectors(),
        AlertAction::Unban => Vec::new(),
    };
    let comment = make_comment(summary.attack_type.as_deref(), summary.protocol.as_deref(), Some(pps), Some(direction));
    Ok(Some(Alert {
        source: AlertSource::FastnetmonScript,
        victim,
        action,
        vectors,
        ttl_secs: None,
        pps: Some(pps),
        attack_type: summary.attack_type,
        comment: clean_text(&comment, MAX_COMMENT_BYTES),
    }))
}

/// Parse a FastNetMon Advanced JSON callback body.
///
/// `action`: `ban`, `attack_status` (periodic refresh of an active ban) and
/// `partial_block` (FastNetMon chose a per-traffic-pattern block, which is what
/// a per-vector ban is) give a Ban; `unban` and `partial_unblock` an Unban.
/// Only `alert_scope` `host` (or absent) is accepted: hostgroup alerts name no
/// host. An attack whose direction (`attack_detection_threshold_direction`,
/// else the older `attack_direction`) is `outgoing` or `internal` is refused
/// with [`AlertError::NotIncoming`] (see [`AlertError::is_ignored`]);
/// `incoming`, `other` and `unknown` are acted on (Advanced reports manual
/// and Flow Spec blocks as `other`). `pps` is `initial_attack_power` (the
/// script's PPS argument), else `peak_attack_power`, else `total_incoming_pps`.
/// Vectors come from `packet_dump_detailed`, else `packet_dump`. Unknown
/// fields are ignored, null is the same as absent; a field of the wrong type
/// is an [`AlertError::Json`] naming its path; packet entries that cannot be
/// read are skipped. A key given twice is refused (which one would count?).
pub fn parse_json(body: &[u8], port_vector: &dyn Fn(u16) -> Option<String>) -> Result<Alert, AlertError> {
    // A derived struct would also read an array as its fields in order: say
    // what the body is instead.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| AlertError::InvalidJson(e.to_string()))?;
        return Err(AlertError::NotAnObject(json_kind(&value)));
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let top: Callback = serde_path_to_error::deserialize(&mut de).map_err(json_error)?;
    de.end().map_err(|e| AlertError::InvalidJson(e.to_string()))?;

    let victim = parse_victim("ip", top.ip.as_deref().ok_or(AlertError::MissingField("ip"))?)?;
    let action_name = top.action.as_deref().ok_or(AlertError::MissingField("action"))?;
    let action = match action_name {
        "ban" | "attack_status" | "partial_block" => AlertAction::Ban,
        "unban" | "partial_unblock" => AlertAction::Unban,
        _ => {
            return Err(AlertError::UnknownAction {
                field: "action",
                value: snippet(action_name),
                expected: "ban, unban, attack_status, partial_block or partial_unblock",
            })
        }
    };
    match top.alert_scope.as_deref() {
        None | Some("host") => {}
        Some(s) => return Err(AlertError::UnsupportedScope(snippet(s))),
    }

    let details = top.attack_details.unwrap_or_default();
    let direction = match details.attack_detection_threshold_direction.as_deref() {
        Some(d) if !d.is_empty() && d != "unknown" => Some(d),
        _ => details.attack_direction.as_deref(),
    };
    if let Some(d @ ("outgoing" | "internal")) = direction {
        return Err(AlertError::NotIncoming { direction: d.to_string() });
    }
    let attack_type = details.attack_type.as_deref().and_then(|s| clean_text(s, MAX_ATTACK_TYPE_BYTES));
    let protocol = details.attack_protocol.as_deref().and_then(|s| clean_text(s, 16));
    let pps = details.initial_attack_power.or(details.peak_attack_power).or(details.total_incoming_pps);

    let entries = match (top.packet_dump_detailed, top.packet_dump) {
        (Some(d), _) if !d.is_empty() => d,
        (_, Some(l)) => l,
        (Some(d), None) => d,
        (None, None) => Vec::new(),
    };
    let mut tally = Tally::default();
    if action == AlertAction::Ban {
        for entry in &entries {
            let packet = match entry {
                Entry::Line(line) if line.len() <= MAX_LINE_BYTES => parse_packet_line(line),
                Entry::Detailed(d) => d.packet(),
                _ => None,
            };
            if let Some(packet) = packet {
                tally.add(victim, &packet, port_vector);
            }
        }
    }

    let what = direction.filter(|d| !d.is_empty() && *d != "unknown");
    let mut comment = make_comment(attack_type.as_deref(), protocol.as_deref(), pps, what);
    if !matches!(action_name, "ban" | "unban") {
        comment.push_str(&format!(" ({action_name})"));
    }
    Ok(Alert {
        source: AlertSource::FastnetmonJson,
        victim,
        action,
        vectors: tally.into_vectors(),
        ttl_secs: None,
        pps,
        attack_type,
        comment: clean_text(&comment, MAX_COMMENT_BYTES),
    })
}

/// The callback body, as far as ampguard reads it (unknown fields ignored).
/// Every field is optional and null means absent; the checks that need more
/// than a type (a missing `ip`, an unknown `action`) are in [`parse_json`].
#[derive(Deserialize)]
struct Callback {
    #[serde(default, deserialize_with = "ip_string")]
    ip: Option<String>,
    #[serde(default, deserialize_with = "action_string")]
    action: Option<String>,
    #[serde(default, deserialize_with = "string")]
    alert_scope: Option<String>,
    #[serde(default, deserialize_with = "object")]
    attack_details: Option<Details>,
    #[serde(default, deserialize_with = "dump")]
    packet_dump: Option<Vec<Entry>>,
    #[serde(default, deserialize_with = "dump")]
    packet_dump_detailed: Option<Vec<Entry>>,
}

/// `attack_details`, the fields ampguard uses.
#[derive(Default, Deserialize)]
struct Details {
    #[serde(default, deserialize_with = "string")]
    attack_type: Option<String>,
    #[serde(default, deserialize_with = "string")]
    attack_protocol: Option<String>,
    #[serde(default, deserialize_with = "string")]
    attack_direction: Option<String>,
    #[serde(default, deserialize_with = "string")]
    attack_detection_threshold_direction: Option<String>,
    #[serde(default, deserialize_with = "count")]
    initial_attack_power: Option<u64>,
    #[serde(default, deserialize_with = "count")]
    peak_attack_power: Option<u64>,
    #[serde(default, deserialize_with = "count")]
    total_incoming_pps: Option<u64>,
}

/// One entry of `packet_dump` or `packet_dump_detailed`: a text packet line,
/// a detailed object (either array may hold either), or anything else
/// (skipped, as is an entry whose fields cannot be read).
#[derive(Deserialize)]
#[serde(untagged)]
enum Entry {
    Line(String),
    Detailed(#[serde(deserialize_with = "object_only")] DetailedEntry),
    Other(IgnoredAny),
}

/// A `packet_dump_detailed` object. Each field is read loosely: one of the
/// wrong type makes [`DetailedEntry::packet`] skip the entry (or, for the
/// counts, count 1), never fails the alert.
#[derive(Deserialize)]
struct DetailedEntry {
    destination_ip: Option<Loose<String>>,
    source_port: Option<Loose<u64>>,
    protocol: Option<Loose<NameOrNumber<String>>>,
    fragmentation: Option<Loose<NameOrNumber<bool>>>,
    packets: Option<Loose<u64>>,
    sample_ratio: Option<Loose<u64>>,
}

/// A `T`, or any other JSON value.
#[derive(Deserialize)]
#[serde(untagged)]
enum Loose<T> {
    Is(T),
    Other(IgnoredAny),
}

impl<T> Loose<T> {
    fn ok(&self) -> Option<&T> {
        match self {
            Loose::Is(t) => Some(t),
            Loose::Other(_) => None,
        }
    }
}

/// `"udp"` or `17`; `true` or `1`.
#[derive(Deserialize)]
#[serde(untagged)]
enum NameOrNumber<T> {
    Name(T),
    Number(serde_json::Number),
}

impl DetailedEntry {
    /// `None` when a needed field is missing or of the wrong type.
    fn packet(&self) -> Option<Packet> {
        let destination: IpAddr = self.destination_ip.as_ref()?.ok()?.parse().ok()?;
        let source_port = match &self.source_port {
            None => 0,
            Some(p) => u16::try_from(*p.ok()?).ok()?,
        };
        let udp = match self.protocol.as_ref()?.ok()? {
            NameOrNumber::Name(s) => s.eq_ignore_ascii_case("udp"),
            NameOrNumber::Number(n) => n.as_u64() == Some(17),
        };
        let fragment = match &self.fragmentation {
            None => false,
            Some(f) => match f.ok()? {
                NameOrNumber::Name(b) => *b,
                NameOrNumber::Number(n) => n.as_u64() == Some(1),
            },
        };
        let count = |c: &Option<Loose<u64>>| c.as_ref().and_then(Loose::ok).copied().unwrap_or(1).max(1);
        Some(Packet {
            destination: destination.to_canonical(),
            source_port,
            udp,
            fragment,
            weight: count(&self.packets).saturating_mul(count(&self.sample_ratio)),
        })
    }
}

/// Longest serde message kept in an [`AlertError::Json`] (it quotes the
/// offending value, which the sender chose).
const MAX_JSON_MESSAGE_CHARS: usize = 200;

/// A serde error as an [`AlertError`]: syntax errors are invalid JSON, the
/// others name the field's path (`attack_details.initial_attack_power`).
fn json_error(e: serde_path_to_error::Error<serde_json::Error>) -> AlertError {
    let path = e.path().to_string();
    let inner = e.into_inner();
    if inner.classify() != serde_json::error::Category::Data {
        return AlertError::InvalidJson(inner.to_string());
    }
    let full = inner.to_string();
    let message = full.strip_suffix(&format!(" at line {} column {}", inner.line(), inner.column())).unwrap_or(&full);
    let message = cut_middle(message, MAX_JSON_MESSAGE_CHARS);
    if path == "." {
        // Not one field's fault: a key given twice.
        return AlertError::UnknownField(message);
    }
    AlertError::Json { path, message }
}

/// At most `max` characters: the start and the end, `…` between.
fn cut_middle(s: &str, max: usize) -> String {
    let n = s.chars().count();
    if n <= max {
        return s.to_string();
    }
    let head: String = s.chars().take(max / 2).collect();
    let tail: String = s.chars().skip(n - (max - max / 2 - 1)).collect();
    format!("{head}…{tail}")
}

/// `Option<String>` (null = absent) whose type error says `expected`.
fn opt_string<'de, D: Deserializer<'de>>(d: D, expected: &'static str) -> Result<Option<String>, D::Error> {
    struct V(&'static str);
    impl<'de> Visitor<'de> for V {
        type Value = Option<String>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str(self.0)
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_string(self)
        }
        fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
            Ok(Some(s.to_string()))
        }
    }
    d.deserialize_option(V(expected))
}

fn ip_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    opt_string(d, "an IP address string")
}

fn action_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    opt_string(d, "an action string")
}

fn string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    opt_string(d, "a string")
}

/// `Option<u64>` (null = absent): "expected a non-negative integer".
fn count<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Option<u64>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a non-negative integer")
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_u64(self)
        }
        fn visit_u64<E: de::Error>(self, n: u64) -> Result<Self::Value, E> {
            Ok(Some(n))
        }
    }
    d.deserialize_option(V)
}

/// A struct read from a JSON object only (a derived one also takes an array).
fn object_only<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<T, D::Error> {
    struct V<T>(std::marker::PhantomData<T>);
    impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an object")
        }
        fn visit_map<A: de::MapAccess<'de>>(self, m: A) -> Result<T, A::Error> {
            T::deserialize(de::value::MapAccessDeserializer::new(m))
        }
    }
    d.deserialize_map(V(std::marker::PhantomData))
}

/// `object_only`, null = absent.
fn object<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    struct V<T>(std::marker::PhantomData<T>);
    impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
        type Value = Option<T>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an object")
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            object_only(d).map(Some)
        }
    }
    d.deserialize_option(V(std::marker::PhantomData))
}

/// A packet dump (null = absent): its first [`MAX_DUMP_LINES`] entries, the
/// rest read and dropped.
fn dump<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<Entry>>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Option<Vec<Entry>>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an array")
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_seq(self)
        }
        fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while out.len() < MAX_DUMP_LINES {
                match seq.next_element()? {
                    Some(e) => out.push(e),
                    None => return Ok(Some(out)),
                }
            }
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok(Some(out))
        }
    }
    d.deserialize_option(V)
}

/// One sampled packet, as far as vector inference needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Packet {
    destination: IpAddr,
    source_port: u16,
    udp: bool,
    fragment: bool,
    /// packets × sample ratio, at least 1.
    weight: u64,
}

/// Parse one packet line of FastNetMon's text dump; `None` for anything else
/// (summary lines, flow dump lines, truncated or garbled lines).
///
/// Needs `SRC:PORT > DST:PORT protocol: P`; `frag:`, `packets:` and
/// `sample ratio:` are optional (default 0, 1, 1).
fn parse_packet_line(line: &str) -> Option<Packet> {
    let mut tokens = line.split_whitespace();
    // Find "SRC > DST protocol: P" anywhere (the date and time come first).
    let mut prev: Option<&str> = None;
    let (src, dst, proto) = loop {
        let t = tokens.next()?;
        if t == ">" {
            let src = prev?;
            let dst = tokens.next()?;
            if tokens.next()? != "protocol:" {
                return None;
            }
            break (src, dst, tokens.next()?);
        }
        prev = Some(t);
    };
    let (_, source_port) = split_endpoint(src)?;
    let (destination, _) = split_endpoint(dst)?;
    let mut fragment = false;
    let mut packets: u64 = 1;
    let mut ratio: u64 = 1;
    let mut prev = "";
    while let Some(t) = tokens.next() {
        match t {
            "frag:" => {
                fragment = matches!(tokens.next(), Some("1" | "true"));
            }
            "packets:" => {
                packets = tokens.next().and_then(|v| v.parse().ok()).unwrap_or(1);
            }
            "ratio:" if prev == "sample" => {
                ratio = tokens.next().and_then(|v| v.parse().ok()).unwrap_or(1);
            }
            _ => {}
        }
        prev = t;
    }
    Some(Packet {
        destination,
        source_port,
        udp: proto.eq_ignore_ascii_case("udp"),
        fragment,
        weight: packets.max(1).saturating_mul(ratio.max(1)),
    })
}

/// `198.51.100.7:11211`, `[2001:db8::1]:53` or `2001:db8::1:53` (FastNetMon
/// prints IPv6 without brackets: the port follows the last colon).
fn split_endpoint(s: &str) -> Option<(IpAddr, u16)> {
    let (addr, port) = if let Some(rest) = s.strip_prefix('[') { rest.split_once("]:")? } else { s.rsplit_once(':')? };
    let addr: IpAddr = addr.parse().ok()?;
    Some((addr.to_canonical(), port.parse().ok()?))
}

/// Packets per vector name.
#[derive(Default)]
struct Tally(BTreeMap<String, u64>);

impl Tally {
    /// Count a packet if it went to the victim.
    fn add(&mut self, victim: IpAddr, p: &Packet, port_vector: &dyn Fn(u16) -> Option<String>) {
        if p.destination != victim {
            return;
        }
        if p.fragment {
            self.bump(FRAGMENT_VECTOR, p.weight);
        }
        if p.udp && p.source_port != 0 {
            if let Some(name) = port_vector(p.source_port) {
                // A name that the generic endpoint would refuse is dropped:
                // the alert must survive `to_generic_json` + `parse_generic`.
                if crate::vectors::valid_name(&name) {
                    self.bump(&name, p.weight);
                }
            }
        }
    }

    fn bump(&mut self, name: &str, weight: u64) {
        match self.0.get_mut(name) {
            Some(n) => *n = n.saturating_add(weight),
            None => {
                self.0.insert(name.to_string(), weight);
            }
        }
    }

    /// Names, most packets first (ties by name), at most [`MAX_VECTORS`].
    fn into_vectors(self) -> Vec<String> {
        let mut v: Vec<(String, u64)> = self.0.into_iter().collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        v.into_iter().take(MAX_VECTORS).map(|(name, _)| name).collect()
    }
}

/// The summary part of the script's stdin (first occurrence of each key).
#[derive(Default)]
struct Summary {
    attack_type: Option<String>,
    protocol: Option<String>,
}

impl Summary {
    fn take(&mut self, line: &str) {
        let line = line.trim_start();
        if self.attack_type.is_none() {
            if let Some(v) = line.strip_prefix("Attack type:") {
                self.attack_type = clean_text(v, MAX_ATTACK_TYPE_BYTES);
                return;
            }
        }
        if self.protocol.is_none() {
            if let Some(v) = line.strip_prefix("Attack protocol:") {
                self.protocol = clean_text(v, 16);
            }
        }
    }
}

/// `fastnetmon: udp_flood 3209 pps, incoming`. An absent or `unknown` attack
/// type is replaced by the protocol (`udp attack`), else by `attack`.
fn make_comment(attack_type: Option<&str>, protocol: Option<&str>, pps: Option<u64>, direction: Option<&str>) -> String {
    let what = match (attack_type, protocol) {
        (Some(t), _) if t != "unknown" => t.to_string(),
        (_, Some(p)) if p != "unknown" => format!("{p} attack"),
        _ => "attack".to_string(),
    };
    let mut out = format!("fastnetmon: {what}");
    if let Some(pps) = pps {
        out.push_str(&format!(" {pps} pps"));
    }
    if let Some(d) = direction.and_then(|d| clean_text(d, 16)) {
        out.push_str(&format!(", {d}"));
    }
    out
}

#[cfg(test)]
mod tests;
