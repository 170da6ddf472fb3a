//! The parsers' spec as tables: each case an input and what it must give.

use super::*;
use serde_json::{json, Value};

const BAN_STDIN: &str = include_str!("../../../tests/fixtures/fastnetmon/ban-stdin.txt");
const DETAILS_STDIN: &str = include_str!("../../../tests/fixtures/fastnetmon/attack_details-stdin.txt");
const ARGV_LOG: &str = include_str!("../../../tests/fixtures/fastnetmon/argv.log");

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

fn names(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// The argv of fixture line `n` (0-based): what follows "args: ".
fn fixture_argv(n: usize) -> Vec<String> {
    let line = ARGV_LOG.lines().nth(n).unwrap();
    args(line.split_once("args: ").unwrap().1)
}

fn line(src: &str, dst: &str, proto: &str, frag: &str, packets: u64, ratio: u64) -> String {
    format!("2026-11-25 17:06:36.123723 {src} > {dst} protocol: {proto} {frag} packets: {packets} size: 1232 bytes ttl: 52 sample ratio: {ratio}  ")
}

/// What a case must give.
enum Want {
    /// Exactly this alert.
    Alert(Alert),
    /// `Ok(None)`: well formed, deliberately not acted on.
    Ignored,
    /// Exactly this error.
    Error(AlertError),
    /// An error of this kind (the predicate says which fields matter).
    ErrorLike(fn(&AlertError) -> bool),
    /// An alert on which these assertions hold.
    Check(fn(&Alert)),
}

fn judge(case: &str, got: Result<Option<Alert>, AlertError>, want: &Want) {
    match (want, got) {
        (Want::Alert(w), Ok(Some(a))) => assert_eq!(&a, w, "{case}"),
        (Want::Ignored, Ok(None)) => {}
        (Want::Error(w), Err(e)) => assert_eq!(&e, w, "{case}"),
        (Want::ErrorLike(f), Err(e)) => assert!(f(&e), "{case}: {e:?}"),
        (Want::Check(f), Ok(Some(a))) => {
            let r = std::panic::catch_unwind(|| f(&a));
            assert!(r.is_ok(), "{case}: the check above failed on {a:?}");
        }
        (_, got) => panic!("{case}: got {got:?}"),
    }
}

// ---- the notify script: IP DIRECTION PPS ACTION + stdin ----

struct Script {
    name: &'static str,
    argv: Vec<String>,
    stdin: String,
    ports: fn(u16) -> Option<String>,
    want: Want,
}

fn script(name: &'static str, argv: Vec<String>, stdin: impl Into<String>, want: Want) -> Script {
    Script { name, argv, stdin: stdin.into(), ports: builtin, want }
}

fn run_script(cases: Vec<Script>) {
    for c in cases {
        judge(c.name, parse_script(&c.argv, &c.stdin, &c.ports), &c.want);
    }
}

#[test]
fn fragment_name_matches_the_data_plane() {
    let frag = xdp_common::vector::builtin_by_id(xdp_common::vector::FRAGMENT).unwrap();
    assert_eq!(frag.name, FRAGMENT_VECTOR);
}

#[test]
fn script_fixtures() {
    run_script(vec![
        script(
            "fixture ban",
            fixture_argv(0),
            BAN_STDIN,
            Want::Alert(Alert {
                source: AlertSource::FastnetmonScript,
                victim: ip("203.0.113.10"),
                action: AlertAction::Ban,
                vectors: vec![],
                ttl_secs: None,
                pps: Some(3209),
                attack_type: Some("udp_flood".into()),
                comment: Some("fastnetmon: udp_flood 3209 pps, incoming".into()),
            }),
        ),
        script(
            "fixture attack_details",
            fixture_argv(1),
            DETAILS_STDIN,
            Want::Check(|a| {
                assert_eq!(a.action, AlertAction::Ban);
                assert_eq!(a.victim, ip("203.0.113.10"));
                assert_eq!(a.vectors, names(&["memcached"]));
                assert_eq!(a.pps, Some(3209));
                assert_eq!(a.attack_type.as_deref(), Some("udp_flood"));
                assert_eq!(a.comment.as_deref(), Some("fastnetmon: udp_flood 3209 pps, incoming"));
            }),
        ),
        script(
            "fixture unban",
            fixture_argv(2),
            "",
            Want::Alert(Alert {
                source: AlertSource::FastnetmonScript,
                victim: ip("203.0.113.10"),
                action: AlertAction::Unban,
                vectors: vec![],
                ttl_secs: None,
                pps: Some(3209),
                attack_type: None,
                comment: Some("fastnetmon: attack 3209 pps, incoming".into()),
            }),
        ),
        // An unban never carries vectors, even if a dump is passed.
        script(
            "unban with a dump",
            args("203.0.113.10 incoming 3209 unban"),
            DETAILS_STDIN,
            Want::Check(|a| assert_eq!(a.vectors, Vec::<String>::new())),
        ),
        script(
            "CRLF stdin",
            fixture_argv(1),
            DETAILS_STDIN.replace('\n', "\r\n"),
            Want::Check(|a| {
                assert_eq!(a.vectors, names(&["memcached"]));
                assert_eq!(a.attack_type.as_deref(), Some("udp_flood"));
            }),
        ),
    ]);
}

#[test]
fn script_arguments() {
    let mut cases = vec![
        script("outgoing", args("203.0.113.10 outgoing 3209 ban"), BAN_STDIN, Want::Ignored),
        script("internal", args("203.0.113.10 internal 3209 ban"), BAN_STDIN, Want::Ignored),
        script("other", args("203.0.113.10 other 3209 ban"), BAN_STDIN, Want::Ignored),
        script(
            "unknown direction",
            args("203.0.113.10 inbound 3209 ban"),
            "",
            Want::Error(AlertError::UnknownDirection { field: "DIRECTION (argument 2)", value: "inbound".into() }),
        ),
        // Arguments are checked even when the direction is ignored.
        script(
            "bad IP, ignored direction",
            args("203.0.113.999 outgoing 3209 ban"),
            "",
            Want::ErrorLike(|e| matches!(e, AlertError::BadAddress { .. })),
        ),
        script("no arguments", vec![], "", Want::Error(AlertError::WrongArgCount(0))),
        script("3 arguments", args("203.0.113.10 incoming 3209"), "", Want::Error(AlertError::WrongArgCount(3))),
        // The script name must not be included.
        script(
            "script name included",
            args("/usr/local/bin/notify 203.0.113.10 incoming 3209 ban"),
            "",
            Want::Error(AlertError::WrongArgCount(5)),
        ),
        script(
            "short IPv4",
            args("203.0.113 incoming 3209 ban"),
            "",
            Want::Error(AlertError::BadAddress { field: "IP (argument 1)", value: "203.0.113".into() }),
        ),
        script(
            "prefix",
            args("203.0.113.0/24 incoming 3209 ban"),
            "",
            Want::ErrorLike(|e| matches!(e, AlertError::PrefixNotAllowed { .. })),
        ),
        script(
            "unspecified",
            args("0.0.0.0 incoming 3209 ban"),
            "",
            Want::ErrorLike(|e| matches!(e, AlertError::UnusableAddress { reason: "unspecified address", .. })),
        ),
        script(
            "broadcast",
            args("255.255.255.255 incoming 3209 ban"),
            "",
            Want::ErrorLike(|e| matches!(e, AlertError::UnusableAddress { reason: "broadcast address", .. })),
        ),
        script(
            "multicast",
            args("ff05::2 incoming 3209 ban"),
            "",
            Want::ErrorLike(|e| matches!(e, AlertError::UnusableAddress { reason: "multicast address", .. })),
        ),
        script(
            "unknown action",
            args("203.0.113.10 incoming 3209 block"),
            "",
            Want::Error(AlertError::UnknownAction {
                field: "ACTION (argument 4)",
                value: "block".into(),
                expected: "ban, attack_details or unban",
            }),
        ),
        script(
            "largest PPS",
            args("203.0.113.10 incoming 18446744073709551615 ban"),
            "",
            Want::Check(|a| {
                assert_eq!(a.pps, Some(u64::MAX));
                assert_eq!(a.comment.as_deref(), Some("fastnetmon: attack 18446744073709551615 pps, incoming"));
            }),
        ),
    ];
    for bad in ["-1", "3209.5", "", "lots", "0x10", "18446744073709551616"] {
        cases.push(script(
            "bad PPS",
            vec!["203.0.113.10".into(), "incoming".into(), bad.to_string(), "ban".into()],
            "",
            Want::Error(AlertError::BadPps { field: "PPS (argument 3)", value: bad.into() }),
        ));
    }
    run_script(cases);
}

#[test]
fn script_packet_dumps() {
    let v = "203.0.113.10";
    let mut truncated = String::new();
    // Every prefix of a packet line must parse or be skipped, never panic;
    // prefixes missing the protocol are skipped.
    let good = line("198.51.100.1:11211", "203.0.113.10:1", "udp", "frag: 0", 1, 1);
    for cut in 0..good.len() {
        if good.is_char_boundary(cut) {
            truncated.push_str(&good[..cut]);
            truncated.push('\n');
        }
    }
    truncated.push_str("198.51.100.1:11211 > 203.0.113.10:1 protocol:\n");
    truncated.push_str("> 203.0.113.10:1 protocol: udp\n");
    truncated.push_str("198.51.100.1:99999 > 203.0.113.10:1 protocol: udp\n");
    truncated.push_str("198.51.100.1 > 203.0.113.10:1 protocol: udp\n");
    truncated.push_str("nonsense:123 > 203.0.113.10:1 protocol: udp\n");
    truncated.push_str("\u{0}\u{ff}\u{1b}[2J ünïcödé > > > protocol: protocol:\n");
    truncated.push_str("Attack type: \u{1b}[31mevil\n");
    let garbage: String = (0..5000u32).map(|i| char::from_u32(i * 7 % 0x2FFF).unwrap_or('x')).collect();

    let mut cases = vec![
        // FastNetMon prints IPv6 without brackets; accept both forms.
        script(
            "IPv6 victim and dump",
            args("2001:db8::10 incoming 500 attack_details"),
            [
                "Attack type: unknown",
                "Attack protocol: udp",
                &line("2001:db8:1::7:123", "2001:db8::10:40001", "udp", "frag: 0", 1, 1),
                &line("[2001:db8:1::7]:123", "[2001:db8::10]:40001", "udp", "frag: 0", 1, 1),
                &line("[2001:db8:1::8]:53", "2001:db8::10:40002", "udp", "frag: 0", 1, 1),
            ]
            .join("\n"),
            Want::Check(|a| {
                assert_eq!(a.victim, ip("2001:db8::10"));
                assert_eq!(a.vectors, names(&["ntp", "dns"]));
                assert_eq!(a.attack_type.as_deref(), Some("unknown"));
                assert_eq!(a.comment.as_deref(), Some("fastnetmon: udp attack 500 pps, incoming"));
            }),
        ),
        script(
            "vectors by weight, fragments",
            args("203.0.113.10 incoming 1000 attack_details"),
            [
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
            .join("\n"),
            Want::Check(|a| assert_eq!(a.vectors, names(&["dns", "fragment", "ntp", "memcached"]))),
        ),
        script(
            "old format without frag:, and the ip size: variant",
            args("203.0.113.10 incoming 10 ban"),
            [
                "2015-06-01 10:00:00.000001 198.51.100.1:1900 > 203.0.113.10:1 protocol: udp packets: 1 size: 300 bytes sample ratio: 1",
                "2018-12-15 19:16:39.376373 198.51.100.2:1900 > 203.0.113.10:8842 protocol: udp frag: 0  packets: 1 size: 54 bytes ip size: 40 bytes ttl: 64 sample ratio: 1 ",
                // No counts at all: weight 1.
                "198.51.100.3:19 > 203.0.113.10:1 protocol: udp",
            ]
            .join("\n"),
            Want::Check(|a| assert_eq!(a.vectors, names(&["ssdp", "chargen"]))),
        ),
        script(
            "truncated and garbled lines",
            args("203.0.113.10 incoming 10 ban"),
            truncated,
            Want::Check(|a| {
                // Only the complete prefixes (from "protocol: udp" on) count.
                assert_eq!(a.vectors, names(&["memcached"]));
                assert_eq!(a.attack_type.as_deref(), Some("[31mevil"));
            }),
        ),
        script(
            "garbage",
            args("203.0.113.10 incoming 10 ban"),
            garbage,
            Want::Check(|a| {
                assert_eq!(a.vectors, Vec::<String>::new());
                assert_eq!(a.attack_type, None);
            }),
        ),
    ];
    let weird = Script {
        name: "names the generic endpoint would refuse are dropped",
        argv: args("203.0.113.10 incoming 10 ban"),
        stdin: [
            line("198.51.100.1:123", "203.0.113.10:1", "udp", "frag: 0", 5, 1),
            line("198.51.100.1:124", "203.0.113.10:1", "udp", "frag: 0", 1, 1),
        ]
        .join("\n"),
        ports: |p| Some(if p == 123 { "NTP v2!" } else { "ok_name" }.to_string()),
        want: Want::Check(|a| assert_eq!(a.vectors, names(&["ok_name"]))),
    };
    cases.push(weird);
    run_script(cases);
}

#[test]
fn script_bounds() {
    let l = line("198.51.100.1:123", "203.0.113.10:1", "udp", "frag: 0", 1, 1);
    let m = line("198.51.100.1:53", "203.0.113.10:1", "udp", "frag: 0", 1, 1);
    // 10,000 ntp lines, then dns lines that are past the cap.
    let mut capped = format!("{l}\n").repeat(MAX_DUMP_LINES);
    capped.push_str(&format!("{m}\n").repeat(20_000));
    let big = line("198.51.100.1:123", "203.0.113.10:1", "udp", "frag: 1", u64::MAX, u64::MAX);
    let ban = || args("203.0.113.10 incoming 10 ban");
    run_script(vec![
        script("packet lines past the cap", ban(), capped, Want::Check(|a| assert_eq!(a.vectors, names(&["ntp"])))),
        // An over-long line is skipped, even if it is a packet line.
        script(
            "over-long packet line",
            ban(),
            format!("{}{}", " ".repeat(MAX_LINE_BYTES), m),
            Want::Check(|a| assert_eq!(a.vectors, Vec::<String>::new())),
        ),
        // A long attack type is cut; a line over 4 KiB is not read at all.
        script(
            "long attack type",
            ban(),
            format!("Attack type: {}", "x".repeat(4000)),
            Want::Check(|a| assert_eq!(a.attack_type.as_ref().map(|t| t.len()), Some(MAX_ATTACK_TYPE_BYTES))),
        ),
        script(
            "attack type line over 4 KiB",
            ban(),
            format!("Attack type: {}", "x".repeat(10_000)),
            Want::Check(|a| assert_eq!(a.attack_type, None)),
        ),
        // 64 emoji (256 bytes) are cut to whole emoji, and the comment fits
        // the store's bound: detector text never blocks a ban.
        script(
            "emoji attack type",
            args("203.0.113.10 incoming 18446744073709551615 ban"),
            format!("Attack type: {}", "😀".repeat(64)),
            Want::Check(|a| {
                assert_eq!(a.attack_type.as_deref(), Some("😀".repeat(16).as_str()));
                assert!(a.comment.as_ref().is_some_and(|c| c.len() <= MAX_COMMENT_BYTES && c.contains("😀")), "{:?}", a.comment);
            }),
        ),
        script(
            "packet counts saturate",
            ban(),
            format!("{big}\n{big}"),
            Want::Check(|a| assert_eq!(a.vectors, names(&["fragment", "ntp"]))),
        ),
    ]);
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

// ---- the JSON callback ----

fn advanced_ban() -> Value {
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

/// [`advanced_ban`] changed by `f`.
fn ban_with(f: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut v = advanced_ban();
    f(&mut v);
    v.to_string().into_bytes()
}

fn remove(v: &mut Value, key: &str) {
    v.as_object_mut().unwrap().remove(key);
}

fn json_error(path: &str, message: &str) -> Want {
    Want::Error(AlertError::Json { path: path.into(), message: message.into() })
}

fn run_json(cases: Vec<(&'static str, Vec<u8>, Want)>) {
    for (name, body, want) in cases {
        judge(name, parse_json(&body, &builtin).map(Some), &want);
    }
}

#[test]
fn json_good_and_actions() {
    run_json(vec![
        (
            "Advanced's ban",
            ban_with(|_| {}),
            Want::Alert(Alert {
                source: AlertSource::FastnetmonJson,
                victim: ip("203.0.113.10"),
                action: AlertAction::Ban,
                // packet_dump_detailed wins over packet_dump.
                vectors: names(&["ntp", "fragment"]),
                ttl_secs: None,
                pps: Some(282473),
                attack_type: Some("udp_flood".into()),
                comment: Some("fastnetmon: udp_flood 282473 pps, incoming".into()),
            }),
        ),
        (
            "minimal unban",
            json!({"ip": "2001:db8::10", "action": "unban"}).to_string().into_bytes(),
            Want::Alert(Alert {
                source: AlertSource::FastnetmonJson,
                victim: ip("2001:db8::10"),
                action: AlertAction::Unban,
                vectors: vec![],
                ttl_secs: None,
                pps: None,
                attack_type: None,
                comment: Some("fastnetmon: attack".into()),
            }),
        ),
        ("ban", ban_with(|v| v["action"] = json!("ban")), Want::Check(|a| assert_eq!(a.action, AlertAction::Ban))),
        ("attack_status", ban_with(|v| v["action"] = json!("attack_status")), Want::Check(|a| assert_eq!(a.action, AlertAction::Ban))),
        ("partial_block", ban_with(|v| v["action"] = json!("partial_block")), Want::Check(|a| assert_eq!(a.action, AlertAction::Ban))),
        (
            "unban",
            ban_with(|v| v["action"] = json!("unban")),
            Want::Check(|a| assert_eq!((a.action, a.vectors.as_slice()), (AlertAction::Unban, &[][..]))),
        ),
        (
            "partial_unblock",
            ban_with(|v| v["action"] = json!("partial_unblock")),
            Want::Check(|a| assert_eq!((a.action, a.vectors.as_slice()), (AlertAction::Unban, &[][..]))),
        ),
        (
            "partial_block says so in the comment",
            ban_with(|v| v["action"] = json!("partial_block")),
            Want::Check(|a| assert_eq!(a.comment.as_deref(), Some("fastnetmon: udp_flood 282473 pps, incoming (partial_block)"))),
        ),
        (
            "long attack type is cut and the comment fits",
            ban_with(|v| {
                v["action"] = json!("partial_block");
                v["attack_details"]["attack_type"] = json!("😀".repeat(64));
                v["attack_details"]["attack_protocol"] = json!("😀".repeat(64));
                v["attack_details"]["initial_attack_power"] = json!(u64::MAX);
            }),
            Want::Check(|a| {
                assert_eq!(a.attack_type.as_deref(), Some("😀".repeat(16).as_str()));
                let c = a.comment.as_deref().unwrap();
                assert!(c.len() <= MAX_COMMENT_BYTES && c.starts_with("fastnetmon: 😀"), "{c}");
            }),
        ),
        // Null is the same as absent, everywhere.
        (
            "nulls",
            json!({"ip": "203.0.113.10", "action": "ban", "alert_scope": null, "attack_details": null,
                   "packet_dump": null, "packet_dump_detailed": null})
            .to_string()
            .into_bytes(),
            Want::Check(|a| assert_eq!((a.pps, a.vectors.len(), a.comment.as_deref()), (None, 0, Some("fastnetmon: attack")))),
        ),
    ]);
}

#[test]
fn json_packet_dumps() {
    run_json(vec![
        (
            "text packet_dump only",
            ban_with(|v| remove(v, "packet_dump_detailed")),
            Want::Check(|a| assert_eq!(a.vectors, names(&["memcached"]))),
        ),
        // An empty detailed dump falls back to the text lines.
        (
            "empty detailed dump",
            ban_with(|v| v["packet_dump_detailed"] = json!([])),
            Want::Check(|a| assert_eq!(a.vectors, names(&["memcached"]))),
        ),
        // Entries of packet_dump given as objects are read as detailed entries.
        (
            "objects in packet_dump",
            ban_with(|v| {
                v["packet_dump_detailed"] = json!([]);
                v["packet_dump"] = json!([{"destination_ip": "203.0.113.10", "source_port": 389, "protocol": "udp"}, 7, null]);
            }),
            Want::Check(|a| assert_eq!(a.vectors, names(&["cldap"]))),
        ),
        (
            "unknown fields and entries that cannot be read",
            ban_with(|v| {
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
            }),
            Want::Check(|a| assert_eq!(a.vectors, names(&["snmp"]))),
        ),
        // An array is not an entry (a derived struct would read it field by
        // field); an entry with a key twice is skipped, not the alert.
        (
            "an array as an entry",
            ban_with(|v| {
                v["packet_dump_detailed"] =
                    json!([["203.0.113.10", 123, "udp"], {"destination_ip": "203.0.113.10", "source_port": 1900, "protocol": "udp"}]);
            }),
            Want::Check(|a| assert_eq!(a.vectors, names(&["ssdp"]))),
        ),
        (
            "a repeated key in an entry",
            br#"{"ip": "203.0.113.10", "action": "ban", "packet_dump_detailed": [
                {"destination_ip": "203.0.113.10", "source_port": 123, "source_port": 53, "protocol": "udp"},
                {"destination_ip": "203.0.113.10", "source_port": 1900, "protocol": "udp"}]}"#
                .to_vec(),
            Want::Check(|a| assert_eq!(a.vectors, names(&["ssdp"]))),
        ),
        (
            "counts of the wrong type count 1",
            ban_with(|v| {
                v["packet_dump_detailed"] = json!([
                    {"destination_ip": "203.0.113.10", "source_port": 123, "protocol": "udp", "packets": "many", "sample_ratio": -1},
                    {"destination_ip": "203.0.113.10", "source_port": 53, "protocol": "udp", "packets": 2}
                ]);
            }),
            Want::Check(|a| assert_eq!(a.vectors, names(&["dns", "ntp"]))),
        ),
    ]);
}

#[test]
fn json_refusals() {
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let deep_field = format!(r#"{{"ip": "203.0.113.10", "action": "ban", "x": {}{}}}"#, "[".repeat(100_000), "]".repeat(100_000));
    let invalid = || Want::ErrorLike(|e| matches!(e, AlertError::InvalidJson(_)));
    run_json(vec![
        (
            "unknown action",
            ban_with(|v| v["action"] = json!("blackhole")),
            Want::Error(AlertError::UnknownAction {
                field: "action",
                value: "blackhole".into(),
                expected: "ban, unban, attack_status, partial_block or partial_unblock",
            }),
        ),
        (
            "action of the wrong type",
            ban_with(|v| v["action"] = json!(1)),
            json_error("action", "invalid type: integer `1`, expected an action string"),
        ),
        ("no action", ban_with(|v| remove(v, "action")), Want::Error(AlertError::MissingField("action"))),
        ("no ip", ban_with(|v| remove(v, "ip")), Want::Error(AlertError::MissingField("ip"))),
        ("null ip", ban_with(|v| v["ip"] = json!(null)), Want::Error(AlertError::MissingField("ip"))),
        (
            "ip of the wrong type",
            ban_with(|v| v["ip"] = json!(["203.0.113.10"])),
            json_error("ip", "invalid type: sequence, expected an IP address string"),
        ),
        (
            "ip a prefix",
            ban_with(|v| v["ip"] = json!("203.0.113.10/32")),
            Want::ErrorLike(|e| matches!(e, AlertError::PrefixNotAllowed { field: "ip", .. })),
        ),
        (
            "ip unspecified",
            ban_with(|v| v["ip"] = json!("0.0.0.0")),
            Want::ErrorLike(|e| matches!(e, AlertError::UnusableAddress { field: "ip", .. })),
        ),
        ("empty body", b"".to_vec(), invalid()),
        ("cut short", b"{\"ip\": \"203.0.113.10\",".to_vec(), invalid()),
        ("the script's text", b"203.0.113.10 incoming 3209 ban".to_vec(), invalid()),
        ("trailing text", ban_with(|_| {}).into_iter().chain(*b" ban").collect(), invalid()),
        ("an array", b"[]".to_vec(), Want::Error(AlertError::NotAnObject("an array"))),
        ("a number", b"42".to_vec(), Want::Error(AlertError::NotAnObject("an integer"))),
        // Deep nesting hits serde_json's recursion limit, not the stack.
        ("deep nesting", deep.into_bytes(), invalid()),
        // Inside a field ampguard does not read, serde_json skips it without
        // recursing: read, ignored.
        ("deep nesting in an ignored field", deep_field.into_bytes(), Want::Check(|a| assert_eq!(a.victim, ip("203.0.113.10")))),
        // Which "ip" would count? Neither.
        (
            "a key twice",
            br#"{"ip": "203.0.113.10", "action": "ban", "ip": "203.0.113.11"}"#.to_vec(),
            Want::Error(AlertError::UnknownField("duplicate field `ip`".into())),
        ),
        (
            "attack_details not an object",
            ban_with(|v| v["attack_details"] = json!("udp_flood")),
            json_error("attack_details", "invalid type: string \"udp_flood\", expected an object"),
        ),
        (
            "attack_details an array",
            ban_with(|v| v["attack_details"] = json!(["udp_flood", "udp"])),
            json_error("attack_details", "invalid type: sequence, expected an object"),
        ),
        (
            "power as a string",
            ban_with(|v| v["attack_details"]["initial_attack_power"] = json!("282473")),
            json_error("attack_details.initial_attack_power", "invalid type: string \"282473\", expected a non-negative integer"),
        ),
        (
            "negative power",
            ban_with(|v| v["attack_details"]["peak_attack_power"] = json!(-5)),
            json_error("attack_details.peak_attack_power", "invalid type: integer `-5`, expected a non-negative integer"),
        ),
        (
            "attack type a number",
            ban_with(|v| v["attack_details"]["attack_type"] = json!(7)),
            json_error("attack_details.attack_type", "invalid type: integer `7`, expected a string"),
        ),
        (
            "attack protocol a number",
            ban_with(|v| v["attack_details"]["attack_protocol"] = json!(17)),
            json_error("attack_details.attack_protocol", "invalid type: integer `17`, expected a string"),
        ),
        (
            "detailed dump an object",
            ban_with(|v| v["packet_dump_detailed"] = json!({"source_port": 123})),
            json_error("packet_dump_detailed", "invalid type: map, expected an array"),
        ),
        (
            "alert_scope a boolean",
            ban_with(|v| v["alert_scope"] = json!(false)),
            json_error("alert_scope", "invalid type: boolean `false`, expected a string"),
        ),
        // The offending value is quoted, but not all of a huge one.
        (
            "a huge value of the wrong type",
            ban_with(|v| v["attack_details"] = json!("x".repeat(100_000))),
            Want::ErrorLike(|e| {
                let m = e.to_string();
                m.starts_with("field `attack_details`: invalid type: string \"xxx")
                    && m.ends_with("xxx\", expected an object")
                    && m.len() < 300
            }),
        ),
        ("hostgroup", ban_with(|v| v["alert_scope"] = json!("hostgroup")), Want::Error(AlertError::UnsupportedScope("hostgroup".into()))),
    ]);
}

#[test]
fn json_pps_and_direction() {
    let outgoing = |v: &mut Value| v["attack_details"]["attack_direction"] = json!("outgoing");
    run_json(vec![
        (
            "peak power when no initial power",
            ban_with(|v| remove(&mut v["attack_details"], "initial_attack_power")),
            Want::Check(|a| assert_eq!(a.pps, Some(300000))),
        ),
        (
            "total pps when neither",
            ban_with(|v| {
                remove(&mut v["attack_details"], "initial_attack_power");
                remove(&mut v["attack_details"], "peak_attack_power");
            }),
            Want::Check(|a| assert_eq!(a.pps, Some(282472))),
        ),
        (
            "largest power",
            ban_with(|v| {
                remove(&mut v["attack_details"], "peak_attack_power");
                v["attack_details"]["initial_attack_power"] = json!(u64::MAX);
            }),
            Want::Check(|a| assert_eq!(a.pps, Some(u64::MAX))),
        ),
        ("outgoing", ban_with(outgoing), Want::Error(AlertError::NotIncoming { direction: "outgoing".into() })),
        // The newer field wins over the deprecated one.
        (
            "threshold direction incoming wins",
            ban_with(|v| {
                outgoing(v);
                v["attack_details"]["attack_detection_threshold_direction"] = json!("incoming");
            }),
            Want::Check(|a| assert_eq!(a.action, AlertAction::Ban)),
        ),
        (
            "threshold direction internal",
            ban_with(|v| {
                outgoing(v);
                v["attack_details"]["attack_detection_threshold_direction"] = json!("internal");
            }),
            Want::Error(AlertError::NotIncoming { direction: "internal".into() }),
        ),
        // "unknown" falls back to attack_direction.
        (
            "threshold direction unknown",
            ban_with(|v| {
                outgoing(v);
                v["attack_details"]["attack_detection_threshold_direction"] = json!("unknown");
            }),
            Want::Error(AlertError::NotIncoming { direction: "outgoing".into() }),
        ),
        // Manual and Flow Spec blocks say "other": acted on.
        (
            "other",
            ban_with(|v| {
                v["attack_details"]["attack_detection_threshold_direction"] = json!("unknown");
                v["attack_details"]["attack_direction"] = json!("other");
            }),
            Want::Check(|a| assert_eq!(a.comment.as_deref(), Some("fastnetmon: udp_flood 282473 pps, other"))),
        ),
    ]);
    // An outgoing attack is ignored (the API answers "ignored", not 400).
    assert!(parse_json(&ban_with(outgoing), &builtin).unwrap_err().is_ignored());
}

#[test]
fn json_to_generic_round_trip() {
    let a = parse_json(&ban_with(|_| {}), &builtin).unwrap();
    let back = crate::alerts::generic::parse_generic(crate::alerts::to_generic_json(&a).to_string().as_bytes()).unwrap();
    assert_eq!(back, a);
    let s = parse_script(&fixture_argv(1), DETAILS_STDIN, &builtin).unwrap().unwrap();
    let back = crate::alerts::generic::parse_generic(crate::alerts::to_generic_json(&s).to_string().as_bytes()).unwrap();
    assert_eq!(back, s);
}
