//! The daemon end to end in a lab: policies through the API, FastNetMon
//! alerts, restart under attack without a gap, and bad requests refused.

use std::time::Duration;

use ampguard_tests::{
    daemon::{flood_while, lab_with_daemon, Daemon, Flood},
    lab::{deliver, Lab},
    require_root,
};
use serde_json::{json, Value};

fn start(tag: &str) -> (Lab, Daemon) {
    lab_with_daemon(tag, "")
}

#[test]
fn api_policy_drops_the_attack_passes_the_rest_and_delete_restores() {
    let (lab, d) = start("api");
    assert_eq!(deliver(&lab, "198.51.100.7:11211", "203.0.113.10:40001", 100), 100, "no policy yet");

    let (st, p) = d
        .call("POST", "/v1/policies", Some(r#"{"victim": "203.0.113.10/32", "rules": {"memcached": {"action": "drop"}, "ntp": {"action": "limit", "pps": 10, "burst": 5}}, "ttl_secs": 600, "comment": "ticket 4711"}"#))
        .unwrap();
    assert_eq!(st, 201, "{p}");
    let id = p["id"].as_str().unwrap().to_string();
    assert_eq!(p["rules"]["ntp"], json!({"action": "limit", "pps": 10, "burst": 5}));
    assert!(p["expires_at"].is_string());

    assert_eq!(deliver(&lab, "198.51.100.7:11211", "203.0.113.10:40001", 200), 0, "memcached dropped");
    let ntp = deliver(&lab, "198.51.100.123:123", "203.0.113.10:40002", 200);
    assert!((5..=10).contains(&ntp), "ntp limited to its burst of 5 (+ refill), got {ntp}");
    assert_eq!(deliver(&lab, "198.51.100.7:40000", "203.0.113.10:40003", 200), 200, "ordinary UDP arrives");
    assert_eq!(deliver(&lab, "198.51.100.7:11211", "203.0.113.20:40001", 200), 200, "other victim untouched");

    let (st, shown) = d.call("GET", &format!("/v1/policies/{id}"), None).unwrap();
    assert_eq!(st, 200);
    assert_eq!(shown["counters"]["memcached"]["dropped"]["packets"], 200, "{shown}");
    assert!(shown["counters"]["ntp"]["rate_limited"]["packets"].as_u64().unwrap() >= 190);

    // Prometheus metrics, read from the maps at scrape time (no token needed).
    let (st, m) = d.call_with("GET", "/metrics", None, None).unwrap();
    let m = m.as_str().unwrap().to_string();
    assert_eq!(st, 200);
    for line in [
        r#"ampguard_packets_total{vector="memcached",verdict="dropped"} 200"#,
        &format!(r#"ampguard_policy_packets_total{{policy="{id}",vector="memcached",verdict="dropped",victim="203.0.113.10/32"}} 200"#),
        r#"ampguard_policies{mode="enforce"} 1"#,
        r#"ampguard_interface_attached{interface="edge0",mode="native"} 1"#,
        r#"ampguard_api_requests_total{method="POST",route="/v1/policies",status="201"} 1"#,
        // The one change is one journal line, one fdatasync, and no failure.
        r#"ampguard_state_writes_total{kind="journal"} 1"#,
        r#"ampguard_state_write_failures_total 0"#,
    ] {
        assert!(m.lines().any(|l| l == line), "metrics lack {line}:\n{m}");
    }
    assert!(m.contains(r#"ampguard_xdp_packets_total{reason="no_vector"}"#));

    let out = d.cli(&["policy", "list"], None).unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && table.contains("203.0.113.10/32") && table.contains("ticket 4711"), "{table}");

    let (st, _) = d.call("DELETE", &format!("/v1/policies/{id}"), None).unwrap();
    assert_eq!(st, 204);
    assert_eq!(deliver(&lab, "198.51.100.7:11211", "203.0.113.10:40001", 100), 100, "deleted: traffic restored");
    let (_, list) = d.call("GET", "/v1/policies", None).unwrap();
    assert_eq!(list["policies"], json!([]));
}

#[test]
fn cli_adds_a_policy_with_the_default_profile() {
    let (lab, d) = start("cli");
    let out = d.cli(&["policy", "add", "203.0.113.10", "--ttl", "10m", "--comment", "from cli"], None).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(deliver(&lab, "198.51.100.7:19", "203.0.113.10:40001", 100), 0, "chargen dropped by the default profile");
    let out = d.cli(&["policy", "list", "--json"], None).unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["policies"][0]["profile"], "default");
    assert_eq!(v["policies"][0]["rules"]["memcached"]["action"], "drop");
    let dns = &v["policies"][0]["rules"]["dns"];
    assert_eq!((dns["action"].as_str(), dns["signature"].as_bool(), dns["otherwise"].as_str()), (Some("drop"), Some(true), Some("limit")));
    let out = d.cli(&["status"], None).unwrap();
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(s.contains("healthy") && s.contains("edge0"), "{s}");
}

#[test]
fn policy_list_pages_with_a_cursor_that_survives_deletes() {
    let (_lab, d) = start("page");
    let mut ids = Vec::new();
    for v in ["203.0.113.10", "203.0.113.11", "203.0.113.12", "2001:db8:2::10", "203.0.113.13"] {
        let (st, p) = d.call("POST", "/v1/policies", Some(&json!({"victim": v}).to_string())).unwrap();
        assert_eq!(st, 201, "{p}");
        ids.push(p["id"].as_str().unwrap().to_string());
    }
    let page = |q: &str| d.call("GET", &format!("/v1/policies?{q}"), None).unwrap().1;
    let ids_of = |v: &Value| v["policies"].as_array().unwrap().iter().map(|p| p["id"].as_str().unwrap().to_string()).collect::<Vec<_>>();
    let first = page("limit=2");
    assert_eq!(ids_of(&first), ids[..2], "{first}");
    let cursor = first["next_cursor"].as_str().expect("more follow").to_string();
    // A policy on the next page is deleted meanwhile: the cursor still holds.
    assert_eq!(d.call("DELETE", &format!("/v1/policies/{}", ids[2]), None).unwrap().0, 204);
    let second = page(&format!("limit=2&cursor={cursor}"));
    assert_eq!(ids_of(&second), ids[3..5], "{second}");
    assert!(second.get("next_cursor").is_none(), "the last page has no cursor: {second}");
    assert_eq!(ids_of(&d.call("GET", "/v1/policies", None).unwrap().1).len(), 4, "no limit: every policy");
    for bad in ["limit=0", "limit=many", "cursor=-1"] {
        let (st, e) = d.call("GET", &format!("/v1/policies?{bad}"), None).unwrap();
        assert_eq!(st, 400, "{bad}: {e}");
    }
}

#[test]
fn sigkill_under_attack_lets_nothing_through_and_restart_keeps_policies() {
    let (lab, mut d) = start("kill");
    let (st, p) = d.call("POST", "/v1/policies", Some(r#"{"victim": "203.0.113.10", "ttl_secs": 600}"#)).unwrap();
    assert_eq!(st, 201, "{p}");

    // Attack and ordinary traffic flow the whole time (bounded: 6 s).
    let flows = [("198.51.100.7:11211", "203.0.113.10:40001"), ("198.51.100.7:40000", "203.0.113.10:40002")];
    let flood = Flood { burst: 50, gap: Duration::from_millis(5), max: Duration::from_secs(6) };
    let (flowed, ()) = flood_while(&lab, &flows, flood, || {
        std::thread::sleep(Duration::from_millis(500));
        // The restarted daemon has the same policies.
        d.kill9_and_restart(Duration::from_millis(500)).expect("restart");
        std::thread::sleep(Duration::from_millis(500));
    });
    let [attack, normal] = flowed[..] else { unreachable!() };
    assert!(attack.sent > 1000, "the attack flowed ({} sent)", attack.sent);
    assert_eq!(attack.arrived, 0, "attack packets leaked while the daemon was dead or restarting ({} sent)", attack.sent);
    assert_eq!(normal.arrived, normal.sent, "ordinary traffic arrived throughout");
    assert!(d.log().contains("no gap"), "the restart swapped the program into the pinned link:\n{}", d.log());
}

#[test]
fn sigterm_keeps_enforcing_and_detach_stops() {
    let (lab, mut d) = start("term");
    assert_eq!(d.call("POST", "/v1/policies", Some(r#"{"victim": "203.0.113.10"}"#)).unwrap().0, 201);
    assert!(d.stop().unwrap().success());
    assert_eq!(deliver(&lab, "198.51.100.7:11211", "203.0.113.10:40001", 100), 0, "daemon stopped, still enforcing");
    let out =
        std::process::Command::new(ampguard_tests::daemon::ampguard_bin()).args(["detach", "--pin-dir"]).arg(&d.pin_dir).output().unwrap();
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("edge0"));
    assert_eq!(deliver(&lab, "198.51.100.7:11211", "203.0.113.10:40001", 100), 100, "detached: traffic passes");
}

#[test]
fn corrupt_state_file_refuses_to_start_and_the_data_plane_keeps_enforcing() {
    let (lab, mut d) = start("corrupt");
    assert_eq!(d.call("POST", "/v1/policies", Some(r#"{"victim": "203.0.113.10"}"#)).unwrap().0, 201);
    d.kill9();
    let state = d.dir.join("state/state.json");
    let good = std::fs::read(&state).unwrap();
    std::fs::write(&state, &good[..good.len() / 2]).unwrap();
    let err = d.spawn().unwrap_err().to_string();
    assert!(err.contains("corrupt") && err.contains("state.json.bak"), "{err}");
    assert_eq!(std::fs::read(&state).unwrap(), &good[..good.len() / 2], "the corrupt file is kept for inspection");
    assert_eq!(deliver(&lab, "198.51.100.7:11211", "203.0.113.10:40001", 100), 0, "old program still enforcing");
    std::fs::write(&state, &good).unwrap();
    d.spawn().expect("starts once the file is restored");
}

#[test]
fn bad_requests_get_the_right_4xx_and_change_nothing() {
    let (_lab, d) = start("bad");
    assert_eq!(d.call("POST", "/v1/policies", Some(r#"{"victim": "203.0.113.10"}"#)).unwrap().0, 201);
    let (_, before) = d.call("GET", "/v1/policies", None).unwrap();
    let big = format!(r#"{{"victim": "203.0.113.11", "comment": "{}"}}"#, "x".repeat(100_000));
    let cases: Vec<(&str, &str, Option<&str>, Option<&str>, u16, &str)> = vec![
        ("no token", "/v1/policies", Some(r#"{"victim": "203.0.113.12"}"#), None, 401, "bearer token"),
        ("wrong token", "/v1/policies", Some(r#"{"victim": "203.0.113.12"}"#), Some("nope"), 401, "bearer token"),
        ("malformed JSON", "/v1/policies", Some(r#"{"victim": "#), Some("ok"), 400, "invalid JSON"),
        ("not an object", "/v1/policies", Some("[1,2]"), Some("ok"), 400, "invalid JSON"),
        ("unknown field", "/v1/policies", Some(r#"{"victim": "203.0.113.12", "ruls": {}}"#), Some("ok"), 400, "ruls"),
        ("bad prefix", "/v1/policies", Some(r#"{"victim": "203.0.113.300/32"}"#), Some("ok"), 400, "not an IPv4/IPv6"),
        ("host bits", "/v1/policies", Some(r#"{"victim": "203.0.113.12/24"}"#), Some("ok"), 400, "203.0.113.0/24"),
        (
            "unknown vector",
            "/v1/policies",
            Some(r#"{"victim": "203.0.113.12", "rules": {"quake": {"action": "drop"}}}"#),
            Some("ok"),
            400,
            "unknown vector",
        ),
        (
            "unknown action",
            "/v1/policies",
            Some(r#"{"victim": "203.0.113.12", "rules": {"ntp": {"action": "nuke"}}}"#),
            Some("ok"),
            400,
            "nuke",
        ),
        (
            "limit without rate",
            "/v1/policies",
            Some(r#"{"victim": "203.0.113.12", "rules": {"ntp": {"action": "limit"}}}"#),
            Some("ok"),
            400,
            "pps or bps",
        ),
        (
            "drop on 0.0.0.0/0",
            "/v1/policies",
            Some(r#"{"victim": "0.0.0.0/0", "rules": {"ntp": {"action": "drop"}}, "force": true}"#),
            Some("ok"),
            422,
            "every address",
        ),
        ("drop on ::/0", "/v1/policies", Some(r#"{"victim": "::/0"}"#), Some("ok"), 422, "every address"),
        ("too broad", "/v1/policies", Some(r#"{"victim": "198.18.0.0/15"}"#), Some("ok"), 422, "force"),
        ("ttl too long", "/v1/policies", Some(r#"{"victim": "203.0.113.12", "ttl_secs": 99999999}"#), Some("ok"), 400, "maximum"),
        ("duplicate victim", "/v1/policies", Some(r#"{"victim": "203.0.113.10/32"}"#), Some("ok"), 409, "already has policy"),
        ("oversized body", "/v1/policies", Some(big.as_str()), Some("ok"), 413, "max_body_bytes"),
        (
            "alert for a prefix",
            "/v1/alerts",
            Some(r#"{"victim": "203.0.113.0/24", "action": "ban"}"#),
            Some("ok"),
            400,
            r#"field `victim`: "203.0.113.0/24" is a prefix; an alert names a single host address"#,
        ),
        (
            "alert bad action",
            "/v1/alerts",
            Some(r#"{"victim": "203.0.113.12", "action": "nuke"}"#),
            Some("ok"),
            400,
            r#"field `action`: unknown action "nuke", expected "ban" or "unban""#,
        ),
        ("allowlist /4", "/v1/allowlist", Some(r#"{"prefix": "0.0.0.0/4"}"#), Some("ok"), 422, "too much"),
    ];
    for (what, path, body, token, status, needle) in cases {
        let token = token.map(|t| if t == "ok" { d.token.clone() } else { t.to_string() });
        let (st, v) = d.call_with("POST", path, body, token.as_deref()).unwrap();
        assert_eq!(st, status, "{what}: {v}");
        let msg = v["error"]["message"].as_str().unwrap_or_default();
        assert!(v["error"]["code"].is_string() && msg.contains(needle), "{what}: {v}");
    }
    assert_eq!(d.call("GET", "/v1/policies/p-999", None).unwrap().0, 404);
    assert_eq!(d.call("DELETE", "/v1/policies/p-999", None).unwrap().0, 404);
    let (_, after) = d.call("GET", "/v1/policies", None).unwrap();
    assert_eq!(after, before, "nothing changed");
}

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!("{}/../xdp-user/tests/fixtures/fastnetmon/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

#[test]
fn fastnetmon_script_bans_and_unbans_end_to_end() {
    let (lab, d) = start("fnms");
    // Exactly what FastNetMon 1.2.4 runs (shared/fixtures/fastnetmon): ban, then
    // attack_details with the packet dump, then unban with empty stdin.
    let ban = d.cli(&["alert", "fastnetmon", "203.0.113.10", "incoming", "3209", "ban"], Some(&fixture("ban-stdin.txt"))).unwrap();
    assert!(ban.status.success(), "{}", String::from_utf8_lossy(&ban.stderr));
    assert!(String::from_utf8_lossy(&ban.stdout).contains("created"));
    let details = d
        .cli(&["alert", "fastnetmon", "203.0.113.10", "incoming", "3209", "attack_details"], Some(&fixture("attack_details-stdin.txt")))
        .unwrap();
    assert!(details.status.success(), "{}", String::from_utf8_lossy(&details.stderr));
    let (_, list) = d.call("GET", "/v1/policies", None).unwrap();
    let p = &list["policies"][0];
    assert_eq!(p["victim"], "203.0.113.10/32");
    assert_eq!(p["source"], "fastnetmon_script");
    assert_eq!(p["rules"]["memcached"]["action"], "drop");
    assert!(p["comment"].as_str().unwrap().contains("udp_flood"), "{p}");
    assert_eq!(deliver(&lab, "198.51.100.7:11211", "203.0.113.10:40001", 200), 0, "banned: memcached dropped");

    let unban = d.cli(&["alert", "fastnetmon", "203.0.113.10", "incoming", "3209", "unban"], None).unwrap();
    assert!(unban.status.success(), "{}", String::from_utf8_lossy(&unban.stderr));
    assert_eq!(d.call("GET", "/v1/policies", None).unwrap().1["policies"], json!([]));
    assert_eq!(deliver(&lab, "198.51.100.7:11211", "203.0.113.10:40001", 100), 100, "unbanned");
}

#[test]
fn fastnetmon_json_and_generic_alerts_ban_and_unban() {
    let (lab, d) = start("fnmj");
    let ban = json!({
        "ip": "203.0.113.10", "action": "ban", "alert_scope": "host",
        "attack_details": {"attack_type": "udp_flood", "attack_direction": "incoming", "attack_protocol": "udp", "initial_attack_power": 5000},
        "packet_dump_detailed": [{"destination_ip": "203.0.113.10", "source_port": 1900, "protocol": "udp", "packets": 1, "sample_ratio": 1, "fragmentation": false}]
    });
    let (st, r) = d.call("POST", "/v1/alerts/fastnetmon", Some(&ban.to_string())).unwrap();
    assert_eq!((st, r["result"].as_str()), (200, Some("created")), "{r}");
    assert_eq!(r["policy"]["source"], "fastnetmon_json");
    assert_eq!(deliver(&lab, "198.51.100.7:1900", "203.0.113.10:40001", 100), 0, "ssdp dropped");
    let first_expiry = r["policy"]["expires_at"].as_str().expect("an alert policy expires").to_string();
    // A repeated ban extends the policy rather than duplicating it (README:
    // "a repeated ban extends it"): a new alert_ttl_secs from now. The API
    // shows expiries to the second, so a ban in the same second reads equal.
    let (st, r) = d.call("POST", "/v1/alerts/fastnetmon", Some(&ban.to_string())).unwrap();
    assert_eq!((st, r["result"].as_str()), (200, Some("extended")), "{r}");
    assert_eq!(r["policy"]["id"], "p-1", "{r}");
    let expiry = |s: &str| humantime::parse_rfc3339(s).unwrap_or_else(|e| panic!("{s}: {e}"));
    assert!(expiry(r["policy"]["expires_at"].as_str().unwrap()) >= expiry(&first_expiry), "{r} vs {first_expiry}");
    assert_eq!(d.call("GET", "/v1/policies", None).unwrap().1["policies"].as_array().unwrap().len(), 1);
    let unban = json!({"ip": "203.0.113.10", "action": "unban", "alert_scope": "host", "attack_details": {"attack_direction": "incoming"}});
    let (st, r) = d.call("POST", "/v1/alerts/fastnetmon", Some(&unban.to_string())).unwrap();
    assert_eq!((st, r["result"].as_str()), (200, Some("removed")), "{r}");
    assert_eq!(deliver(&lab, "198.51.100.7:1900", "203.0.113.10:40001", 100), 100);

    // The generic form, for any other detector.
    let (st, r) = d
        .call("POST", "/v1/alerts", Some(r#"{"victim": "2001:db8:2::10", "action": "ban", "vectors": ["memcached"], "ttl_secs": 60}"#))
        .unwrap();
    assert_eq!((st, r["result"].as_str()), (200, Some("created")), "{r}");
    assert_eq!(deliver(&lab, "[2001:db8:1::7]:11211", "[2001:db8:2::10]:40001", 100), 0);
    // An unban never removes a policy an operator made through the API.
    assert_eq!(d.call("POST", "/v1/policies", Some(r#"{"victim": "203.0.113.20"}"#)).unwrap().0, 201);
    let (_, r) = d.call("POST", "/v1/alerts", Some(r#"{"victim": "203.0.113.20", "action": "unban"}"#)).unwrap();
    assert_eq!(r["result"], "ignored", "{r}");
    let (_, r) = d.call("POST", "/v1/alerts", Some(r#"{"victim": "2001:db8:2::10", "action": "unban"}"#)).unwrap();
    assert_eq!(r["result"], "removed", "{r}");
}

#[test]
fn an_alert_token_may_only_post_alerts_and_alerts_keep_room_for_operators() {
    require_root();
    let lab = Lab::new("atok").expect("lab");
    let dir = std::env::temp_dir().join(format!("ag-alert-token-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let alert_token = "alert-only-token-0123456789abcdef";
    std::fs::write(dir.join("alert-token"), alert_token).unwrap();
    let extra = format!("alert_token_file = \"{}\"\nmax_alert_policies = 2\n", dir.join("alert-token").display());
    let d = Daemon::start(&lab, &extra).expect("daemon");
    let ban = |v: &str| format!(r#"{{"victim": "{v}", "action": "ban"}}"#);
    let (st, r) = d.call_with("POST", "/v1/alerts", Some(&ban("203.0.113.10")), Some(alert_token)).unwrap();
    assert_eq!((st, r["result"].as_str()), (200, Some("created")), "{r}");
    for (method, path, body) in [
        ("GET", "/v1/policies", None),
        ("POST", "/v1/policies", Some(r#"{"victim": "203.0.113.30"}"#)),
        ("DELETE", "/v1/policies/p-1", None),
    ] {
        let (st, e) = d.call_with(method, path, body, Some(alert_token)).unwrap();
        assert_eq!((st, e["error"]["code"].as_str()), (403, Some("forbidden")), "{method} {path}: {e}");
    }
    // Alerts may hold 2 policies; the next ban is refused, operators still have room.
    assert_eq!(d.call_with("POST", "/v1/alerts", Some(&ban("203.0.113.11")), Some(alert_token)).unwrap().0, 200);
    let (st, e) = d.call_with("POST", "/v1/alerts", Some(&ban("203.0.113.12")), Some(alert_token)).unwrap();
    assert_eq!((st, e["error"]["code"].as_str()), (507, Some("table_full")), "{e}");
    assert!(e["error"]["message"].as_str().unwrap().contains("max_alert_policies"));
    assert_eq!(d.call("POST", "/v1/policies", Some(r#"{"victim": "203.0.113.20"}"#)).unwrap().0, 201);
    // Even a ban that claims another source shares the one budget.
    let (st, _) = d
        .call_with(
            "POST",
            "/v1/alerts",
            Some(r#"{"victim": "203.0.113.13", "action": "ban", "source": "fastnetmon_script"}"#),
            Some(alert_token),
        )
        .unwrap();
    assert_eq!(st, 507);
    let _ = std::fs::remove_dir_all(&dir);
}
