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

use serde_json::{Map, Value};

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
/// fields are ignored; packet entries that cannot be read are skipped.
pub fn parse_json(body: &[u8], port_vector: &dyn Fn(u16) -> Option<String>) -> Result<Alert, AlertError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| AlertError::InvalidJson(e.to_string()))?;
    let Value::Object(top) = value else {
        return Err(AlertError::NotAnObject(json_kind(&value)));
    };

    let victim = match top.get("ip") {
        None | Some(Value::Null) => return Err(AlertError::MissingField("ip")),
        Some(Value::String(s)) => parse_victim("ip", s)?,
        Some(other) => return Err(wrong("ip", "an IP address string", other)),
    };
    let action_name = match top.get("action") {
        None | Some(Value::Null) => return Err(AlertError::MissingField("action")),
        Some(Value::String(s)) => s.as_str(),
        Some(other) => return Err(wrong("action", "an action string", other)),
    };
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
    match top.get("alert_scope") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if s == "host" => {}
        Some(Value::String(s)) => return Err(AlertError::UnsupportedScope(snippet(s))),
        Some(other) => return Err(wrong("alert_scope", "a string", other)),
    }

    let empty = Map::new();
    let details = match top.get("attack_details") {
        None | Some(Value::Null) => &empty,
        Some(Value::Object(m)) => m,
        Some(other) => return Err(wrong("attack_details", "an object", other)),
    };
    let threshold_direction =
        opt_str(details, "attack_details.attack_detection_threshold_direction", "attack_detection_threshold_direction")?;
    let old_direction = opt_str(details, "attack_details.attack_direction", "attack_direction")?;
    let direction = match threshold_direction {
        Some(d) if !d.is_empty() && d != "unknown" => Some(d),
        _ => old_direction,
    };
    if let Some(d @ ("outgoing" | "internal")) = direction {
        return Err(AlertError::NotIncoming { direction: d.to_string() });
    }
    let attack_type = opt_str(details, "attack_details.attack_type", "attack_type")?.and_then(|s| clean_text(s, MAX_ATTACK_TYPE_BYTES));
    let protocol = opt_str(details, "attack_details.attack_protocol", "attack_protocol")?.and_then(|s| clean_text(s, 16));
    let pps = opt_u64(details, "attack_details.initial_attack_power", "initial_attack_power")?
        .or(opt_u64(details, "attack_details.peak_attack_power", "peak_attack_power")?)
        .or(opt_u64(details, "attack_details.total_incoming_pps", "total_incoming_pps")?);

    let detailed = opt_array(&top, "packet_dump_detailed")?;
    let lines = opt_array(&top, "packet_dump")?;
    let entries = match (detailed, lines) {
        (Some(d), _) if !d.is_empty() => d,
        (_, Some(l)) => l,
        (Some(d), None) => d,
        (None, None) => &[][..],
    };
    let mut tally = Tally::default();
    if action == AlertAction::Ban {
        for entry in entries.iter().take(MAX_DUMP_LINES) {
            let packet = match entry {
                Value::String(line) if line.len() <= MAX_LINE_BYTES => parse_packet_line(line),
                Value::Object(m) => packet_from_detailed(m),
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

/// A `packet_dump_detailed` entry; `None` when a needed field is missing or
/// of the wrong type.
fn packet_from_detailed(m: &Map<String, Value>) -> Option<Packet> {
    let destination: IpAddr = m.get("destination_ip")?.as_str()?.parse().ok()?;
    let source_port = match m.get("source_port") {
        None | Some(Value::Null) => 0,
        Some(v) => u16::try_from(v.as_u64()?).ok()?,
    };
    let udp = match m.get("protocol")? {
        Value::String(s) => s.eq_ignore_ascii_case("udp"),
        Value::Number(n) => n.as_u64() == Some(17),
        _ => return None,
    };
    let fragment = match m.get("fragmentation") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(Value::Number(n)) => n.as_u64() == Some(1),
        Some(_) => return None,
    };
    let count = |k: &str| m.get(k).and_then(Value::as_u64).unwrap_or(1).max(1);
    Some(Packet {
        destination: destination.to_canonical(),
        source_port,
        udp,
        fragment,
        weight: count("packets").saturating_mul(count("sample_ratio")),
    })
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

fn wrong(field: &'static str, expected: &'static str, got: &Value) -> AlertError {
    AlertError::WrongType { field, expected, got: json_kind(got).to_string() }
}

fn opt_str<'a>(m: &'a Map<String, Value>, field: &'static str, key: &str) -> Result<Option<&'a str>, AlertError> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(other) => Err(wrong(field, "a string", other)),
    }
}

fn opt_u64(m: &Map<String, Value>, field: &'static str, key: &str) -> Result<Option<u64>, AlertError> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) if n.is_u64() => Ok(n.as_u64()),
        Some(other) => Err(wrong(field, "a non-negative integer", other)),
    }
}

fn opt_array<'a>(m: &'a Map<String, Value>, key: &'static str) -> Result<Option<&'a [Value]>, AlertError> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(a)) => Ok(Some(a.as_slice())),
        Some(other) => Err(wrong(key, "an array", other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const BAN_STDIN: &str = include_str!("../../tests/fixtures/fastnetmon/ban-stdin.txt");
    const DETAILS_STDIN: &str = include_str!("../../tests/fixtures/fastnetmon/attack_details-stdin.txt");
    const ARGV_LOG: &str = include_str!("../../tests/fixtures/fastnetmon/argv.log");

    /// The built-in port table, as the controller will pass it.
    fn builtin(port: u16) -> Option<String> {
        xdp_common::vector::BUILTIN.iter().find(|v| v.ports.contains(&port)).map(|v| v.name.to_string())
    }

    fn args(s: &str) -> Vec<String> {
        s.split(' ').map(String::from).collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// The argv of fixture line `n` (0-based): what follows "args: ".
    fn fixture_argv(n: usize) -> Vec<String> {
        let line = ARGV_LOG.lines().nth(n).unwrap();
        args(line.split_once("args: ").unwrap().1)
    }

    fn line(src: &str, dst: &str, proto: &str, frag: &str, packets: u64, ratio: u64) -> String {
        format!(
            "2026-11-25 17:06:36.123723 {src} > {dst} protocol: {proto} {frag} packets: {packets} size: 1232 bytes ttl: 52 sample ratio: {ratio}  "
        )
    }

    #[test]
    fn fragment_name_matches_the_data_plane() {
        let frag = xdp_common::vector::builtin_by_id(xdp_common::vector::FRAGMENT).unwrap();
        assert_eq!(frag.name, FRAGMENT_VECTOR);
    }

    #[test]
    fn fixture_ban() {
        let a = parse_script(&fixture_argv(0), BAN_STDIN, &builtin).unwrap().unwrap();
        assert_eq!(
            a,
            Alert {
                source: AlertSource::FastnetmonScript,
                victim: ip("203.0.113.10"),
                action: AlertAction::Ban,
                vectors: vec![],
                ttl_secs: None,
                pps: Some(3209),
                attack_type: Some("udp_flood".into()),
                comment: Some("fastnetmon: udp_flood 3209 pps, incoming".into()),
            }
        );
    }

    #[test]
    fn fixture_attack_details() {
        let a = parse_script(&fixture_argv(1), DETAILS_STDIN, &builtin).unwrap().unwrap();
        assert_eq!(a.action, AlertAction::Ban);
        assert_eq!(a.victim, ip("203.0.113.10"));
        assert_eq!(a.vectors, vec!["memcached".to_string()]);
        assert_eq!(a.pps, Some(3209));
        assert_eq!(a.attack_type.as_deref(), Some("udp_flood"));
        assert_eq!(a.comment.as_deref(), Some("fastnetmon: udp_flood 3209 pps, incoming"));
    }

    #[test]
    fn fixture_unban() {
        let a = parse_script(&fixture_argv(2), "", &builtin).unwrap().unwrap();
        assert_eq!(
            a,
            Alert {
                source: AlertSource::FastnetmonScript,
                victim: ip("203.0.113.10"),
                action: AlertAction::Unban,
                vectors: vec![],
                ttl_secs: None,
                pps: Some(3209),
                attack_type: None,
                comment: Some("fastnetmon: attack 3209 pps, incoming".into()),
            }
        );
        // An unban never carries vectors, even if a dump is passed.
        let a = parse_script(&args("203.0.113.10 incoming 3209 unban"), DETAILS_STDIN, &builtin).unwrap().unwrap();
        assert_eq!(a.vectors, Vec::<String>::new());
    }

    #[test]
    fn crlf_stdin() {
        let crlf = DETAILS_STDIN.replace('\n', "\r\n");
        let a = parse_script(&fixture_argv(1), &crlf, &builtin).unwrap().unwrap();
        assert_eq!(a.vectors, vec!["memcached".to_string()]);
        assert_eq!(a.attack_type.as_deref(), Some("udp_flood"));
    }

    #[test]
    fn directions() {
        for d in ["outgoing", "internal", "other"] {
            let argv = args(&format!("203.0.113.10 {d} 3209 ban"));
            assert_eq!(parse_script(&argv, BAN_STDIN, &builtin), Ok(None), "{d}");
        }
        assert_eq!(
            parse_script(&args("203.0.113.10 inbound 3209 ban"), "", &builtin),
            Err(AlertError::UnknownDirection { field: "DIRECTION (argument 2)", value: "inbound".into() })
        );
        // Arguments are checked even when the direction is ignored.
        assert!(matches!(parse_script(&args("203.0.113.999 outgoing 3209 ban"), "", &builtin), Err(AlertError::BadAddress { .. })));
    }

    #[test]
    fn malformed_argv() {
        assert_eq!(parse_script(&[], "", &builtin), Err(AlertError::WrongArgCount(0)));
        assert_eq!(parse_script(&args("203.0.113.10 incoming 3209"), "", &builtin), Err(AlertError::WrongArgCount(3)));
        // The script name must not be included.
        assert_eq!(
            parse_script(&args("/usr/local/bin/notify 203.0.113.10 incoming 3209 ban"), "", &builtin),
            Err(AlertError::WrongArgCount(5))
        );
        assert_eq!(
            parse_script(&args("203.0.113 incoming 3209 ban"), "", &builtin),
            Err(AlertError::BadAddress { field: "IP (argument 1)", value: "203.0.113".into() })
        );
        assert!(matches!(parse_script(&args("203.0.113.0/24 incoming 3209 ban"), "", &builtin), Err(AlertError::PrefixNotAllowed { .. })));
        assert!(matches!(
            parse_script(&args("0.0.0.0 incoming 3209 ban"), "", &builtin),
            Err(AlertError::UnusableAddress { reason: "unspecified address", .. })
        ));
        assert!(matches!(
            parse_script(&args("255.255.255.255 incoming 3209 ban"), "", &builtin),
            Err(AlertError::UnusableAddress { reason: "broadcast address", .. })
        ));
        assert!(matches!(
            parse_script(&args("ff05::2 incoming 3209 ban"), "", &builtin),
            Err(AlertError::UnusableAddress { reason: "multicast address", .. })
        ));
        for bad in ["-1", "3209.5", "", "lots", "0x10", "18446744073709551616"] {
            let argv = vec!["203.0.113.10".into(), "incoming".into(), bad.to_string(), "ban".into()];
            assert_eq!(
                parse_script(&argv, "", &builtin),
                Err(AlertError::BadPps { field: "PPS (argument 3)", value: bad.into() }),
                "{bad:?}"
            );
        }
        assert_eq!(
            parse_script(&args("203.0.113.10 incoming 3209 block"), "", &builtin),
            Err(AlertError::UnknownAction {
                field: "ACTION (argument 4)",
                value: "block".into(),
                expected: "ban, attack_details or unban"
            })
        );
    }

    #[test]
    fn huge_pps() {
        let a = parse_script(&args("203.0.113.10 incoming 18446744073709551615 ban"), "", &builtin).unwrap().unwrap();
        assert_eq!(a.pps, Some(u64::MAX));
        assert_eq!(a.comment.as_deref(), Some("fastnetmon: attack 18446744073709551615 pps, incoming"));
    }

    #[test]
    fn ipv6_victim_and_dump() {
        // FastNetMon prints IPv6 without brackets; accept both forms.
        let stdin = [
            "Attack type: unknown",
            "Attack protocol: udp",
            &line("2001:db8:1::7:123", "2001:db8::10:40001", "udp", "frag: 0", 1, 1),
            &line("[2001:db8:1::7]:123", "[2001:db8::10]:40001", "udp", "frag: 0", 1, 1),
            &line("[2001:db8:1::8]:53", "2001:db8::10:40002", "udp", "frag: 0", 1, 1),
        ]
        .join("\n");
        let a = parse_script(&args("2001:db8::10 incoming 500 attack_details"), &stdin, &builtin).unwrap().unwrap();
        assert_eq!(a.victim, ip("2001:db8::10"));
        assert_eq!(a.vectors, vec!["ntp".to_string(), "dns".to_string()]);
        assert_eq!(a.attack_type.as_deref(), Some("unknown"));
        assert_eq!(a.comment.as_deref(), Some("fastnetmon: udp attack 500 pps, incoming"));
    }

    #[test]
    fn vectors_by_weight_and_fragments() {
        let v = "203.0.113.10";
        let stdin = [
            // 3 ntp packets sampled 1:1.
            line("198.51.100.1:123", &format!("{v}:1"), "udp", "frag: 0", 3, 1),
            // 1 dns packet sampled 1:10 outweighs them.
            line("198.51.100.2:53", &format!("{v}:1"), "udp", "frag: 0", 1, 10),
            // Non-first fragments: no ports.
            line("198.51.100.3:0", &format!("{v}:0"), "udp", "frag: 1", 2, 1),
            // A first fragment of a memcached reply: memcached and fragment.
            line("198.51.100.4:11211", &format!("{v}:1"), "udp", "frag: 1", 1, 1),
            // TCP from port 53 is not DNS amplification.
            line("198.51.100.5:53", &format!("{v}:1"), "tcp flags: syn", "frag: 0", 100, 1),
            // Not towards the victim (its own replies): ignored.
            line(&format!("{v}:53"), "198.51.100.6:5000", "udp", "frag: 0", 100, 1),
            // Unknown port: no vector.
            line("198.51.100.7:40000", &format!("{v}:1"), "udp", "frag: 0", 100, 1),
        ]
        .join("\n");
        let a = parse_script(&args("203.0.113.10 incoming 1000 attack_details"), &stdin, &builtin).unwrap().unwrap();
        assert_eq!(a.vectors, vec!["dns".to_string(), "fragment".into(), "ntp".into(), "memcached".into()]);
    }

    #[test]
    fn old_format_without_frag_and_ip_size_variant() {
        let stdin = [
            "2015-06-01 10:00:00.000001 198.51.100.1:1900 > 203.0.113.10:1 protocol: udp packets: 1 size: 300 bytes sample ratio: 1".to_string(),
            "2018-12-15 19:16:39.376373 198.51.100.2:1900 > 203.0.113.10:8842 protocol: udp frag: 0  packets: 1 size: 54 bytes ip size: 40 bytes ttl: 64 sample ratio: 1 ".to_string(),
            // No counts at all: weight 1.
            "198.51.100.3:19 > 203.0.113.10:1 protocol: udp".to_string(),
        ]
        .join("\n");
        let a = parse_script(&args("203.0.113.10 incoming 10 ban"), &stdin, &builtin).unwrap().unwrap();
        assert_eq!(a.vectors, vec!["ssdp".to_string(), "chargen".into()]);
    }

    #[test]
    fn truncated_and_garbage_lines() {
        let good = line("198.51.100.1:11211", "203.0.113.10:1", "udp", "frag: 0", 1, 1);
        let mut stdin = String::new();
        // Every prefix of a packet line must parse or be skipped, never panic;
        // prefixes missing the protocol are skipped.
        for cut in 0..good.len() {
            if good.is_char_boundary(cut) {
                stdin.push_str(&good[..cut]);
                stdin.push('\n');
            }
        }
        stdin.push_str("198.51.100.1:11211 > 203.0.113.10:1 protocol:\n");
        stdin.push_str("> 203.0.113.10:1 protocol: udp\n");
        stdin.push_str("198.51.100.1:99999 > 203.0.113.10:1 protocol: udp\n");
        stdin.push_str("198.51.100.1 > 203.0.113.10:1 protocol: udp\n");
        stdin.push_str("nonsense:123 > 203.0.113.10:1 protocol: udp\n");
        stdin.push_str("\u{0}\u{ff}\u{1b}[2J ünïcödé > > > protocol: protocol:\n");
        stdin.push_str("Attack type: \u{1b}[31mevil\n");
        let a = parse_script(&args("203.0.113.10 incoming 10 ban"), &stdin, &builtin).unwrap().unwrap();
        // Only the complete prefixes (from "protocol: udp" on) count.
        assert_eq!(a.vectors, vec!["memcached".to_string()]);
        assert_eq!(a.attack_type.as_deref(), Some("[31mevil"));

        let garbage: String = (0..5000u32).map(|i| char::from_u32(i * 7 % 0x2FFF).unwrap_or('x')).collect();
        let a = parse_script(&args("203.0.113.10 incoming 10 ban"), &garbage, &builtin).unwrap().unwrap();
        assert_eq!(a.vectors, Vec::<String>::new());
        assert_eq!(a.attack_type, None);
    }

    #[test]
    fn caps() {
        let l = line("198.51.100.1:123", "203.0.113.10:1", "udp", "frag: 0", 1, 1);
        let m = line("198.51.100.1:53", "203.0.113.10:1", "udp", "frag: 0", 1, 1);
        // 10,000 ntp lines, then dns lines that are past the cap.
        let mut stdin = format!("{l}\n").repeat(MAX_DUMP_LINES);
        stdin.push_str(&format!("{m}\n").repeat(20_000));
        let a = parse_script(&args("203.0.113.10 incoming 10 ban"), &stdin, &builtin).unwrap().unwrap();
        assert_eq!(a.vectors, vec!["ntp".to_string()]);
        // An over-long line is skipped, even if it is a packet line.
        let long = format!("{}{}", " ".repeat(MAX_LINE_BYTES), m);
        let a = parse_script(&args("203.0.113.10 incoming 10 ban"), &long, &builtin).unwrap().unwrap();
        assert_eq!(a.vectors, Vec::<String>::new());
        // A long attack type is cut; a line over 4 KiB is not read at all.
        let t = format!("Attack type: {}", "x".repeat(4000));
        let a = parse_script(&args("203.0.113.10 incoming 10 ban"), &t, &builtin).unwrap().unwrap();
        assert_eq!(a.attack_type.map(|t| t.len()), Some(MAX_ATTACK_TYPE_BYTES));
        let t = format!("Attack type: {}", "x".repeat(10_000));
        let a = parse_script(&args("203.0.113.10 incoming 10 ban"), &t, &builtin).unwrap().unwrap();
        assert_eq!(a.attack_type, None);
        // 64 emoji (256 bytes) are cut to whole emoji, and the comment fits
        // the store's bound: detector text never blocks a ban.
        let t = format!("Attack type: {}", "😀".repeat(64));
        let a = parse_script(&args("203.0.113.10 incoming 18446744073709551615 ban"), &t, &builtin).unwrap().unwrap();
        assert_eq!(a.attack_type.as_deref(), Some("😀".repeat(16).as_str()));
        assert!(a.comment.as_ref().is_some_and(|c| c.len() <= MAX_COMMENT_BYTES && c.contains("😀")), "{:?}", a.comment);
        // Packet counts saturate.
        let big = line("198.51.100.1:123", "203.0.113.10:1", "udp", "frag: 1", u64::MAX, u64::MAX);
        let a = parse_script(&args("203.0.113.10 incoming 10 ban"), &format!("{big}\n{big}"), &builtin).unwrap().unwrap();
        assert_eq!(a.vectors, vec!["fragment".to_string(), "ntp".into()]);
    }

    #[test]
    fn bad_vector_names_from_the_table_are_dropped() {
        let weird = |p: u16| {
            if p == 123 {
                Some("NTP v2!".to_string())
            } else {
                Some("ok_name".to_string())
            }
        };
        let stdin = [
            line("198.51.100.1:123", "203.0.113.10:1", "udp", "frag: 0", 5, 1),
            line("198.51.100.1:124", "203.0.113.10:1", "udp", "frag: 0", 1, 1),
        ]
        .join("\n");
        let a = parse_script(&args("203.0.113.10 incoming 10 ban"), &stdin, &weird).unwrap().unwrap();
        assert_eq!(a.vectors, vec!["ok_name".to_string()]);
    }

    // ---- JSON ----

    fn advanced_ban() -> serde_json::Value {
        json!({
            "ip": "203.0.113.10",
            "action": "ban",
            "alert_scope": "host",
            "attack_details": {
                "attack_uuid": "041eb504-2b33-4ff7-a6b7-8235408d5062",
                "attack_severity": "middle",
                "attack_type": "udp_flood",
                "initial_attack_power": 282473,
                "peak_attack_power": 300000,
                "attack_direction": "incoming",
                "attack_protocol": "udp",
                "attack_detection_source": "automatic",
                "total_incoming_pps": 282472,
                "total_outgoing_pps": 0,
                "incoming_udp_pps": 282472,
                "protocol_version": "IPv4"
            },
            "packet_dump": [
                "2018-12-15 19:16:39.376373 198.51.100.7:11211 > 203.0.113.10:8842 protocol: udp frag: 0  packets: 1 size: 1232 bytes ip size: 1218 bytes ttl: 64 sample ratio: 1 "
            ],
            "packet_dump_detailed": [
                {"ip_version": "ipv4", "source_ip": "198.51.100.7", "destination_ip": "203.0.113.10",
                 "source_port": 123, "destination_port": 8842, "tcp_flags": "", "fragmentation": false,
                 "packets": 1, "length": 482, "ip_length": 468, "ttl": 64, "sample_ratio": 1000,
                 "protocol": "udp", "agent_address": "192.0.2.1"},
                {"ip_version": "ipv4", "source_ip": "198.51.100.8", "destination_ip": "203.0.113.10",
                 "source_port": 0, "destination_port": 0, "fragmentation": true,
                 "packets": 1, "sample_ratio": 10, "protocol": "udp"}
            ]
        })
    }

    fn pj(v: &serde_json::Value) -> Result<Alert, AlertError> {
        parse_json(v.to_string().as_bytes(), &builtin)
    }

    #[test]
    fn json_good() {
        let a = pj(&advanced_ban()).unwrap();
        assert_eq!(
            a,
            Alert {
                source: AlertSource::FastnetmonJson,
                victim: ip("203.0.113.10"),
                action: AlertAction::Ban,
                // packet_dump_detailed wins over packet_dump.
                vectors: vec!["ntp".into(), "fragment".into()],
                ttl_secs: None,
                pps: Some(282473),
                attack_type: Some("udp_flood".into()),
                comment: Some("fastnetmon: udp_flood 282473 pps, incoming".into()),
            }
        );
    }

    #[test]
    fn json_text_packet_dump_only() {
        let mut v = advanced_ban();
        v.as_object_mut().unwrap().remove("packet_dump_detailed");
        assert_eq!(pj(&v).unwrap().vectors, vec!["memcached".to_string()]);
        // An empty detailed dump falls back to the text lines.
        v["packet_dump_detailed"] = json!([]);
        assert_eq!(pj(&v).unwrap().vectors, vec!["memcached".to_string()]);
        // Entries of packet_dump given as objects are read as detailed entries.
        v["packet_dump"] = json!([{"destination_ip": "203.0.113.10", "source_port": 389, "protocol": "udp"}, 7, null]);
        assert_eq!(pj(&v).unwrap().vectors, vec!["cldap".to_string()]);
    }

    #[test]
    fn json_minimal_and_actions() {
        let a = pj(&json!({"ip": "2001:db8::10", "action": "unban"})).unwrap();
        assert_eq!(
            a,
            Alert {
                source: AlertSource::FastnetmonJson,
                victim: ip("2001:db8::10"),
                action: AlertAction::Unban,
                vectors: vec![],
                ttl_secs: None,
                pps: None,
                attack_type: None,
                comment: Some("fastnetmon: attack".into()),
            }
        );
        for (name, action) in [
            ("ban", AlertAction::Ban),
            ("attack_status", AlertAction::Ban),
            ("partial_block", AlertAction::Ban),
            ("unban", AlertAction::Unban),
            ("partial_unblock", AlertAction::Unban),
        ] {
            let mut v = advanced_ban();
            v["action"] = json!(name);
            let a = pj(&v).unwrap();
            assert_eq!(a.action, action, "{name}");
            if action == AlertAction::Unban {
                assert_eq!(a.vectors, Vec::<String>::new());
            }
        }
        let mut v = advanced_ban();
        v["action"] = json!("partial_block");
        assert_eq!(pj(&v).unwrap().comment.as_deref(), Some("fastnetmon: udp_flood 282473 pps, incoming (partial_block)"));
    }

    #[test]
    fn stdin_is_read_to_the_end_and_kept_to_the_bound() {
        struct Endless {
            left: u64,
            read: u64,
        }
        impl Read for Endless {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let n = (buf.len() as u64).min(self.left) as usize;
                buf[..n].fill(b'x');
                self.left -= n as u64;
                self.read += n as u64;
                Ok(n)
            }
        }
        let mut r = Endless { left: 100 << 20, read: 0 };
        let kept = read_details(&mut r, MAX_STDIN_BYTES).unwrap();
        assert_eq!(kept.len(), MAX_STDIN_BYTES);
        assert_eq!((r.left, r.read), (0, 100 << 20), "all of it read (FastNetMon waits for that)");
        let text = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/fastnetmon/attack_details-stdin.txt")).unwrap();
        assert_eq!(read_details(&mut text.as_slice(), MAX_STDIN_BYTES).unwrap().as_bytes(), text.as_slice());
        // A character cut at the bound is replaced, not an error.
        assert_eq!(read_details(&mut "aé".as_bytes(), 2).unwrap(), "a\u{fffd}");
    }

    #[test]
    fn json_long_attack_type_is_cut_and_the_comment_fits() {
        let mut v = advanced_ban();
        v["action"] = json!("partial_block");
        v["attack_details"]["attack_type"] = json!("😀".repeat(64));
        v["attack_details"]["attack_protocol"] = json!("😀".repeat(64));
        v["attack_details"]["initial_attack_power"] = json!(u64::MAX);
        let a = pj(&v).unwrap();
        assert_eq!(a.attack_type.as_deref(), Some("😀".repeat(16).as_str()));
        let c = a.comment.unwrap();
        assert!(c.len() <= MAX_COMMENT_BYTES && c.starts_with("fastnetmon: 😀"), "{c}");
    }

    #[test]
    fn json_bad_action() {
        let mut v = advanced_ban();
        v["action"] = json!("blackhole");
        assert_eq!(
            pj(&v),
            Err(AlertError::UnknownAction {
                field: "action",
                value: "blackhole".into(),
                expected: "ban, unban, attack_status, partial_block or partial_unblock"
            })
        );
        v["action"] = json!(1);
        assert_eq!(pj(&v), Err(AlertError::WrongType { field: "action", expected: "an action string", got: "an integer".into() }));
        v.as_object_mut().unwrap().remove("action");
        assert_eq!(pj(&v), Err(AlertError::MissingField("action")));
    }

    #[test]
    fn json_missing_or_bad_ip() {
        let mut v = advanced_ban();
        v.as_object_mut().unwrap().remove("ip");
        assert_eq!(pj(&v), Err(AlertError::MissingField("ip")));
        v["ip"] = json!(null);
        assert_eq!(pj(&v), Err(AlertError::MissingField("ip")));
        v["ip"] = json!(["203.0.113.10"]);
        assert_eq!(pj(&v), Err(AlertError::WrongType { field: "ip", expected: "an IP address string", got: "an array".into() }));
        v["ip"] = json!("203.0.113.10/32");
        assert!(matches!(pj(&v), Err(AlertError::PrefixNotAllowed { field: "ip", .. })));
        v["ip"] = json!("0.0.0.0");
        assert!(matches!(pj(&v), Err(AlertError::UnusableAddress { field: "ip", .. })));
    }

    #[test]
    fn json_invalid() {
        assert!(matches!(parse_json(b"", &builtin), Err(AlertError::InvalidJson(_))));
        assert!(matches!(parse_json(b"{\"ip\": \"203.0.113.10\",", &builtin), Err(AlertError::InvalidJson(_))));
        assert!(matches!(parse_json(b"203.0.113.10 incoming 3209 ban", &builtin), Err(AlertError::InvalidJson(_))));
        assert_eq!(parse_json(b"[]", &builtin), Err(AlertError::NotAnObject("an array")));
        assert_eq!(parse_json(b"42", &builtin), Err(AlertError::NotAnObject("an integer")));
        // Deep nesting hits serde_json's recursion limit, not the stack.
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(matches!(parse_json(deep.as_bytes(), &builtin), Err(AlertError::InvalidJson(_))));
    }

    #[test]
    fn json_wrong_types() {
        let mut v = advanced_ban();
        v["attack_details"] = json!("udp_flood");
        assert_eq!(pj(&v), Err(AlertError::WrongType { field: "attack_details", expected: "an object", got: "a string".into() }));
        let mut v = advanced_ban();
        v["attack_details"]["initial_attack_power"] = json!("282473");
        assert_eq!(
            pj(&v),
            Err(AlertError::WrongType {
                field: "attack_details.initial_attack_power",
                expected: "a non-negative integer",
                got: "a string".into()
            })
        );
        let mut v = advanced_ban();
        v["attack_details"]["peak_attack_power"] = json!(-5);
        assert!(matches!(pj(&v), Err(AlertError::WrongType { field: "attack_details.peak_attack_power", .. })));
        let mut v = advanced_ban();
        v["attack_details"]["attack_type"] = json!(7);
        assert!(matches!(pj(&v), Err(AlertError::WrongType { field: "attack_details.attack_type", .. })));
        let mut v = advanced_ban();
        v["packet_dump_detailed"] = json!({"source_port": 123});
        assert!(matches!(pj(&v), Err(AlertError::WrongType { field: "packet_dump_detailed", .. })));
        let mut v = advanced_ban();
        v["alert_scope"] = json!(false);
        assert!(matches!(pj(&v), Err(AlertError::WrongType { field: "alert_scope", .. })));
    }

    #[test]
    fn json_pps_fallbacks() {
        let mut v = advanced_ban();
        v["attack_details"].as_object_mut().unwrap().remove("initial_attack_power");
        assert_eq!(pj(&v).unwrap().pps, Some(300000));
        v["attack_details"].as_object_mut().unwrap().remove("peak_attack_power");
        assert_eq!(pj(&v).unwrap().pps, Some(282472));
        v["attack_details"]["initial_attack_power"] = json!(u64::MAX);
        assert_eq!(pj(&v).unwrap().pps, Some(u64::MAX));
    }

    #[test]
    fn json_scope_and_direction() {
        let mut v = advanced_ban();
        v["alert_scope"] = json!("hostgroup");
        assert_eq!(pj(&v), Err(AlertError::UnsupportedScope("hostgroup".into())));

        let mut v = advanced_ban();
        v["attack_details"]["attack_direction"] = json!("outgoing");
        let e = pj(&v).unwrap_err();
        assert_eq!(e, AlertError::NotIncoming { direction: "outgoing".into() });
        assert!(e.is_ignored());
        // The newer field wins over the deprecated one.
        v["attack_details"]["attack_detection_threshold_direction"] = json!("incoming");
        assert_eq!(pj(&v).unwrap().action, AlertAction::Ban);
        v["attack_details"]["attack_detection_threshold_direction"] = json!("internal");
        assert_eq!(pj(&v), Err(AlertError::NotIncoming { direction: "internal".into() }));
        // "unknown" falls back to attack_direction.
        v["attack_details"]["attack_detection_threshold_direction"] = json!("unknown");
        assert_eq!(pj(&v), Err(AlertError::NotIncoming { direction: "outgoing".into() }));
        // Manual and Flow Spec blocks say "other": acted on.
        v["attack_details"]["attack_direction"] = json!("other");
        let a = pj(&v).unwrap();
        assert_eq!(a.comment.as_deref(), Some("fastnetmon: udp_flood 282473 pps, other"));
    }

    #[test]
    fn json_unknown_fields_and_bad_entries_ignored() {
        let mut v = advanced_ban();
        v["flow_spec_rules"] = json!([{"action_type": "discard"}]);
        v["something_new"] = json!({"nested": [1, 2, 3]});
        v["packet_dump_detailed"] = json!([
            {"destination_ip": "203.0.113.10", "source_port": 70000, "protocol": "udp"},
            {"destination_ip": "203.0.113.10", "source_port": "123", "protocol": "udp"},
            {"destination_ip": "not an ip", "source_port": 123, "protocol": "udp"},
            {"destination_ip": "198.51.100.1", "source_port": 123, "protocol": "udp"},
            {"destination_ip": "203.0.113.10", "source_port": 123},
            {"destination_ip": "203.0.113.10", "source_port": 123, "protocol": "udp", "fragmentation": "yes"},
            "not an object",
            {"destination_ip": "203.0.113.10", "source_port": 161, "protocol": 17, "packets": 0},
            {"destination_ip": "::ffff:203.0.113.10", "source_port": 161, "protocol": "UDP", "fragmentation": 0}
        ]);
        let a = pj(&v).unwrap();
        assert_eq!(a.vectors, vec!["snmp".to_string()]);
    }

    #[test]
    fn json_to_generic_round_trip() {
        let a = pj(&advanced_ban()).unwrap();
        let back = crate::alerts::generic::parse_generic(crate::alerts::to_generic_json(&a).to_string().as_bytes()).unwrap();
        assert_eq!(back, a);
        let s = parse_script(&fixture_argv(1), DETAILS_STDIN, &builtin).unwrap().unwrap();
        let back = crate::alerts::generic::parse_generic(crate::alerts::to_generic_json(&s).to_string().as_bytes()).unwrap();
        assert_eq!(back, s);
    }
}
