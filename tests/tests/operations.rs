//! What an operator and a SIEM read: the daemon's logs (JSON lines, text
//! without a timestamp of its own under systemd), the audit trail of every
//! change and refusal (rate-limited), `--version` and `ampguard_build_info`
//! naming the commit, and metric families that exist from the first scrape.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use ampguard_tests::{
    daemon::{ampguard_bin, Daemon},
    lab::Lab,
    require_root, TempDir,
};
use serde_json::Value;

/// The daemon's log lines, each parsed as JSON (panics on a line that is not).
fn json_lines(d: &Daemon) -> Vec<Value> {
    d.log().lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l:?}\n{}", d.log()))).collect()
}

fn audit_lines(d: &Daemon) -> Vec<Value> {
    json_lines(d).into_iter().filter(|l| l["target"] == "ampguard::audit").collect()
}

/// Wait (bounded) until the log has an audit line matching `f`.
fn wait_for_audit(d: &Daemon, f: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(l) = audit_lines(d).into_iter().find(|l| f(l)) {
            return l;
        }
        if Instant::now() > deadline {
            panic!("no such audit line in:\n{}", d.log());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn json_logs_carry_an_audit_line_for_every_change_and_refusal() {
    require_root();
    let lab = Lab::new("audit").expect("lab");
    let tokens = TempDir::new("audit-tokens");
    let alert_token = "alert-token-for-the-audit-test-0123456789";
    std::fs::write(tokens.0.join("alert-token"), alert_token).unwrap();
    let d = Daemon::start(&lab, &format!("log_format = \"json\"\nalert_token_file = \"{}\"\n", tokens.0.join("alert-token").display()))
        .expect("daemon");

    // Every line is a JSON object with a timestamp, a level and a message.
    for l in json_lines(&d) {
        assert!(l["timestamp"].is_string() && l["level"].is_string() && l["message"].is_string(), "{l}");
    }

    let body = r#"{"victim": "203.0.113.10", "rules": {"memcached": {"action": "drop"}}, "mode": "monitor", "ttl_secs": 600, "comment": "ticket 4711"}"#;
    let (s, rec) = d.call("POST", "/v1/policies", Some(body)).unwrap();
    assert_eq!(s, 201, "{rec}");
    let id = rec["id"].as_str().unwrap().to_string();
    let created = wait_for_audit(&d, |l| l["event"] == "change" && l["method"] == "POST" && l["path"] == "/v1/policies");
    assert_eq!(created["level"], "INFO");
    assert_eq!(created["who"], "operator");
    assert!(created["client"].as_str().is_some_and(|c| c.starts_with("127.0.0.1:")), "{created}");
    assert_eq!(created["status"], 201);
    assert_eq!(created["id"], id.as_str());
    assert_eq!(created["victim"], "203.0.113.10/32");
    assert_eq!(created["rules"], "memcached=drop");
    assert_eq!(created["mode"], "monitor");
    assert_eq!(created["comment"], "ticket 4711");
    assert!(created["ttl_secs"].as_u64().is_some_and(|t| (590..=600).contains(&t)), "{created}");
    assert!(created["expires_at"].is_string(), "{created}");

    // PATCH (policy set) is audited like every other change, with the merged result.
    let patch = r#"{"mode": "enforce", "comment": "ticket 4712", "rules": {"ntp": {"action": "limit", "pps": 1000}}}"#;
    assert_eq!(d.call("PATCH", &format!("/v1/policies/{id}"), Some(patch)).unwrap().0, 200);
    let patched = wait_for_audit(&d, |l| l["event"] == "change" && l["method"] == "PATCH");
    assert_eq!(
        (patched["id"].as_str(), patched["mode"].as_str(), patched["comment"].as_str()),
        (Some(id.as_str()), Some("enforce"), Some("ticket 4712"))
    );
    assert!(patched["rules"].as_str().is_some_and(|r| r.contains("memcached=drop") && r.contains("ntp=limit(1000pps")), "{patched}");

    let (s, _) =
        d.call("PUT", &format!("/v1/policies/{id}"), Some(r#"{"victim": "203.0.113.10", "profile": "default", "ttl_secs": 0}"#)).unwrap();
    assert_eq!(s, 200);
    let replaced = wait_for_audit(&d, |l| l["event"] == "change" && l["method"] == "PUT");
    assert_eq!(
        (replaced["id"].as_str(), replaced["profile"].as_str(), replaced["mode"].as_str()),
        (Some(id.as_str()), Some("default"), Some("enforce"))
    );
    assert!(replaced["rules"].as_str().unwrap().contains("ntp=drop[signature]/limit(100pps"), "{replaced}");
    assert!(replaced.get("ttl_secs").is_none() && replaced.get("expires_at").is_none(), "no expiry: {replaced}");

    assert_eq!(d.call("DELETE", &format!("/v1/policies/{id}"), None).unwrap().0, 204);
    let deleted = wait_for_audit(&d, |l| l["event"] == "change" && l["method"] == "DELETE");
    assert_eq!(
        (deleted["status"].as_u64(), deleted["id"].as_str(), deleted["victim"].as_str()),
        (Some(204), Some(id.as_str()), Some("203.0.113.10/32"))
    );

    let (s, a) = d.call("POST", "/v1/allowlist", Some(r#"{"prefix": "192.0.2.53/32", "comment": "customer resolver"}"#)).unwrap();
    assert_eq!(s, 201);
    assert_eq!(d.call("DELETE", &format!("/v1/allowlist/{}", a["id"].as_str().unwrap()), None).unwrap().0, 204);
    let unallowed = wait_for_audit(&d, |l| {
        l["event"] == "change" && l["method"] == "DELETE" && l["path"].as_str().unwrap().starts_with("/v1/allowlist/")
    });
    assert_eq!((unallowed["prefix"].as_str(), unallowed["comment"].as_str()), (Some("192.0.2.53/32"), Some("customer resolver")));

    // An alert, with the alert-only token.
    let (s, out) = d.call_with("POST", "/v1/alerts", Some(r#"{"victim": "203.0.113.20", "action": "ban"}"#), Some(alert_token)).unwrap();
    assert_eq!(s, 200, "{out}");
    let ban = wait_for_audit(&d, |l| l["event"] == "change" && l["path"] == "/v1/alerts");
    assert_eq!(
        (ban["who"].as_str(), ban["result"].as_str(), ban["victim"].as_str()),
        (Some("alert_token"), Some("created"), Some("203.0.113.20/32"))
    );
    assert_eq!(ban["source"], "generic");
    assert_eq!(ban["id"], out["policy"]["id"]);

    // Refusals: no token, the alert token on an operator route, a bad request.
    assert_eq!(d.call_with("POST", "/v1/policies", Some(r#"{"victim": "203.0.113.30"}"#), None).unwrap().0, 401);
    let r = wait_for_audit(&d, |l| l["event"] == "refused" && l["status"] == 401);
    assert_eq!((r["who"].as_str(), r["code"].as_str(), r["level"].as_str()), (Some("none"), Some("unauthorized"), Some("WARN")));
    assert_eq!(d.call_with("DELETE", "/v1/policies/p-2", None, Some(alert_token)).unwrap().0, 403);
    let r = wait_for_audit(&d, |l| l["event"] == "refused" && l["status"] == 403);
    assert_eq!((r["who"].as_str(), r["path"].as_str()), (Some("alert_token"), Some("/v1/policies/p-2")));
    assert_eq!(d.call("POST", "/v1/policies", Some(r#"{"victim": "203.0.113.7/24"}"#)).unwrap().0, 400);
    let r = wait_for_audit(&d, |l| l["event"] == "refused" && l["status"] == 400);
    assert_eq!(r["who"], "operator");
    assert!(r["error"].as_str().is_some_and(|e| e.contains("203.0.113.0/24")), "the message names the problem: {r}");
    // Reads are not audited (only their 401/403).
    assert_eq!(d.call("GET", "/v1/policies", None).unwrap().0, 200);
    std::thread::sleep(Duration::from_millis(200));
    assert!(!audit_lines(&d).iter().any(|l| l["method"] == "GET"), "{}", d.log());
}

/// `n` unauthenticated POSTs from inside the lab, as fast as one client goes.
fn flood_unauthenticated(d: &Daemon, n: usize) {
    let url = format!("http://127.0.0.1:{}/v1/policies", d.port);
    d.ns.enter(move || {
        let agent: ureq::Agent =
            ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(Duration::from_secs(5))).build().into();
        for _ in 0..n {
            let r = agent.post(&url).header("Authorization", "Bearer guess").send(r#"{"victim": "203.0.113.10"}"#).unwrap();
            assert_eq!(r.status().as_u16(), 401);
        }
    })
    .unwrap();
}

#[test]
fn a_flood_of_refused_requests_is_rate_limited_with_a_count_of_what_was_left_out() {
    require_root();
    let lab = Lab::new("auditrl").expect("lab");
    let d = Daemon::start(&lab, "").expect("daemon");
    let n = 400;
    let t = Instant::now();
    flood_unauthenticated(&d, n);
    let took = t.elapsed().as_secs_f64();
    let count = |log: &str| -> (usize, usize) {
        let refused = log.lines().filter(|l| l.contains("audit: refused")).count();
        let suppressed: usize = log
            .lines()
            .filter(|l| l.contains("refused requests in the last second not logged"))
            .map(|l| {
                l.split("suppressed=")
                    .nth(1)
                    .and_then(|s| s.split_whitespace().next())
                    .and_then(|s| s.parse::<usize>().ok())
                    .unwrap_or_else(|| panic!("{l}"))
            })
            .sum();
        (refused, suppressed)
    };
    // The last summary comes within a second of the last line left out (5 s allowed on a busy host).
    let deadline = Instant::now() + Duration::from_secs(5);
    while count(&d.log()).0 + count(&d.log()).1 < n && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(200));
    let log = d.log();
    let (refused, suppressed) = count(&log);
    // Text lines: the level, the message, then the fields.
    assert!(log.lines().any(|l| l.contains("WARN audit: refused") && l.contains("who=\"none\"") && l.contains("status=401")), "{log}");
    assert!(refused <= 20 + (10.0 * (took + 1.0)) as usize, "{refused} refusal lines for {n} requests in {took:.1} s:\n{log}");
    assert!(refused >= 20, "the first burst is logged: {refused}");
    assert_eq!(refused + suppressed, n, "every refusal is logged or counted:\n{log}");
}

#[test]
fn text_logs_have_no_timestamp_of_their_own_under_systemd_and_the_flag_picks_json() {
    require_root();
    let lab = Lab::new("logfmt").expect("lab");
    let first = |d: &Daemon| d.log().lines().next().unwrap_or_default().to_string();
    let starts_with_a_date = |l: &str| l.len() > 4 && l[..4].bytes().all(|b| b.is_ascii_digit()) && l.as_bytes()[4] == b'-';

    // stderr is the stream JOURNAL_STREAM names: journald stamps the lines.
    let d = Daemon::start_with_args(&lab, "", &[], &[("JOURNAL_STREAM", "{log_dev_ino}")]).expect("daemon");
    // Every line starts with its level (the first may be a WARN, e.g. about the token file's mode).
    let log = d.log();
    assert!(log.lines().any(|l| l.trim_start().starts_with("INFO ")), "{log}");
    for l in log.lines() {
        let level = l.split_whitespace().next().unwrap_or_default();
        assert!(["ERROR", "WARN", "INFO", "DEBUG", "TRACE"].contains(&level) && !starts_with_a_date(l), "{l:?}");
    }
    drop(d);
    // Inherited but stale (stderr is another file): the line has its own time.
    let d = Daemon::start_with_args(&lab, "", &[], &[("JOURNAL_STREAM", "1:2")]).expect("daemon");
    assert!(starts_with_a_date(&first(&d)), "{:?}", first(&d));
    drop(d);
    // --log-format overrides the config.
    let d = Daemon::start_with_args(&lab, "log_format = \"text\"\n", &["--log-format", "json"], &[]).expect("daemon");
    let l: Value = serde_json::from_str(&first(&d)).unwrap_or_else(|e| panic!("{e}: {:?}", first(&d)));
    assert!(starts_with_a_date(l["timestamp"].as_str().unwrap()), "{l}");
}

fn workspace_commit() -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let o = std::process::Command::new("git").arg("-C").arg(root).args(["rev-parse", "--short=12", "HEAD"]).output().expect("git");
    assert!(o.status.success(), "this test runs in a git checkout");
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

#[test]
fn version_and_build_info_name_the_commit_and_the_build_date() {
    let out = std::process::Command::new(ampguard_bin()).arg("--version").output().unwrap();
    let v = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let commit = workspace_commit();
    // "ampguard 0.1.0 (commit 0123456789ab[-dirty], built 2026-12-01T17:00:00Z)"
    assert!(v.starts_with(&format!("ampguard {} (commit {commit}", env!("CARGO_PKG_VERSION"))), "{v:?} (HEAD is {commit})");
    let date = v.split("built ").nth(1).and_then(|s| s.strip_suffix(')')).unwrap_or_else(|| panic!("{v:?}"));
    assert!(humantime::parse_rfc3339(date).is_ok(), "{date:?}");

    require_root();
    let lab = Lab::new("buildinfo").expect("lab");
    let d = Daemon::start(&lab, "").expect("daemon");
    let (_, m) = d.call("GET", "/metrics", None).unwrap();
    let m = m.as_str().unwrap().to_string();
    let line = m.lines().find(|l| l.starts_with("ampguard_build_info{")).unwrap_or_else(|| panic!("{m}"));
    assert!(
        line.contains(&format!("commit=\"{commit}")) && line.contains(&format!("build_date=\"{date}\"")) && line.ends_with(" 1"),
        "{line}"
    );
}

#[test]
fn every_metric_family_exists_from_the_first_scrape() {
    require_root();
    let lab = Lab::new("families").expect("lab");
    let d = Daemon::start(&lab, "").expect("daemon");
    let (_, m) = d.call("GET", "/metrics", None).unwrap();
    let m = m.as_str().unwrap().to_string();
    let value = |series: &str| -> f64 {
        let l = m
            .lines()
            .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
            .unwrap_or_else(|| panic!("no {series} in:\n{m}"));
        l.rsplit(' ').next().unwrap().parse().unwrap()
    };
    // Every family of the README's table but the per-policy ones, at zero
    // where nothing has happened.
    for s in [
        r#"ampguard_packets_total{vector="memcached",verdict="dropped"}"#,
        r#"ampguard_bytes_total{vector="ntp",verdict="rate_limited"}"#,
        r#"ampguard_xdp_packets_total{reason="no_policy"}"#,
        r#"ampguard_xdp_bytes_total{reason="allowlisted"}"#,
        r#"ampguard_policies{mode="enforce"}"#,
        r#"ampguard_policies{mode="monitor"}"#,
        r#"ampguard_allowlist_entries"#,
        r#"ampguard_alerts_total{action="ban",result="created",source="fastnetmon_script"}"#,
        r#"ampguard_alerts_total{action="unban",result="removed",source="fastnetmon_json"}"#,
        r#"ampguard_alerts_total{action="ban",result="extended",source="generic"}"#,
        r#"ampguard_api_requests_total{method="GET",route="/metrics",status="200"}"#,
        r#"ampguard_state_writes_total{kind="journal"}"#,
        r#"ampguard_state_write_failures_total"#,
    ] {
        assert_eq!(value(s), 0.0, "{s}");
    }
    let iface = format!("interface=\"{}\"", lab.edge_if);
    assert_eq!(value(&format!("ampguard_xdp_reattachments_total{{{iface}}}")), 0.0);
    assert_eq!(value(&format!("ampguard_xdp_repins_total{{{iface}}}")), 0.0);
    assert_eq!(value("ampguard_detached_by_operator"), 0.0);
    assert!(m.lines().any(|l| l.starts_with("ampguard_interface_attached{") && l.contains(&iface) && l.ends_with(" 1")), "{m}");
    assert!(value("ampguard_policy_capacity") > 0.0);
    value(r#"ampguard_state_file_bytes{file="journal"}"#);
    // 1 until the start's own snapshot is written, which may be just after the
    // first scrape (seen on a loaded machine): until then the file is empty.
    let due = value("ampguard_state_snapshot_due");
    assert!([0.0, 1.0].contains(&due));
    let snapshot = value(r#"ampguard_state_file_bytes{file="snapshot"}"#);
    assert!(snapshot > 0.0 || due == 1.0, "snapshot {snapshot} bytes with no snapshot due");
    assert!(m.lines().any(|l| l.starts_with("ampguard_uptime_seconds ")), "{m}");
    assert!(m.lines().any(|l| l.starts_with("ampguard_build_info{")), "{m}");
}
