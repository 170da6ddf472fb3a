//! The CLI as an operator uses it, run as the real binary against the real
//! daemon in the lab: `policy set` and lookups by victim, conflicting flags,
//! messages in the CLI's words, `--json` everywhere, closed pipes, escaped
//! control characters, and `alert fastnetmon` with options anywhere.

use std::{
    os::fd::{FromRawFd, OwnedFd},
    os::unix::process::ExitStatusExt,
    process::{Command, Output, Stdio},
    time::{Duration, SystemTime},
};

use ampguard_tests::{
    daemon::{ampguard_bin, lab_with_daemon, Daemon},
    lab::{deliver, Lab},
};
use serde_json::{json, Value};

fn start(tag: &str) -> (Lab, Daemon) {
    lab_with_daemon(tag, "")
}

/// `ampguard ARGS` in the edge namespace, with the harness's AMPGUARD_API and
/// AMPGUARD_TOKEN_FILE unless `bare`, plus `env`.
fn run(d: &Daemon, args: &[&str], env: &[(&str, &str)], bare: bool, stdin: Option<&str>, stdout: Stdio) -> Output {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/var/run/netns/{}", d.ns.name)).arg(ampguard_bin()).args(args);
    cmd.env_remove("AMPGUARD_API").env_remove("AMPGUARD_TOKEN_FILE").env_remove("RUST_BACKTRACE");
    if !bare {
        cmd.env("AMPGUARD_API", format!("http://127.0.0.1:{}", d.port)).env("AMPGUARD_TOKEN_FILE", &d.token_file);
    }
    cmd.envs(env.iter().copied()).stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() }).stdout(stdout).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn ampguard");
    if let Some(s) = stdin {
        use std::io::Write;
        child.stdin.take().expect("stdin").write_all(s.as_bytes()).expect("write stdin");
    }
    child.wait_with_output().expect("ampguard output")
}

/// A successful CLI call: its stdout.
fn ok(d: &Daemon, args: &[&str]) -> String {
    let out = run(d, args, &[], false, None, Stdio::piped());
    assert!(
        out.status.success(),
        "ampguard {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// A refused CLI call: its stderr, checked to be one line.
fn refused(d: &Daemon, args: &[&str]) -> String {
    let out = run(d, args, &[], false, None, Stdio::piped());
    let err = String::from_utf8(out.stderr).expect("UTF-8 stderr");
    assert_eq!(out.status.code(), Some(1), "ampguard {args:?} should fail with 1: {err}{}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(err.lines().count(), 1, "ampguard {args:?}: one line of error: {err}");
    assert!(err.starts_with("Error: "), "{err}");
    err
}

fn json_of(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn policies(d: &Daemon) -> Value {
    d.call("GET", "/v1/policies", None).unwrap().1["policies"].clone()
}

fn expiry(p: &Value) -> SystemTime {
    humantime::parse_rfc3339_weak(p["expires_at"].as_str().unwrap_or_else(|| panic!("no expiry: {p}"))).unwrap()
}

#[test]
fn policy_set_merges_a_change_and_victims_name_policies() {
    let (lab, mut d) = start("cliset");
    let made =
        json_of(&ok(&d, &["policy", "add", "203.0.113.10", "--drop", "memcached", "--ttl", "10m", "--comment", "ticket 1", "--json"]));
    let id = made["id"].as_str().unwrap().to_string();
    assert_eq!(deliver(&lab, "198.51.100.7:11211", "203.0.113.10:40001", 100), 0, "memcached dropped");
    assert_eq!(deliver(&lab, "198.51.100.7:123", "203.0.113.10:40002", 100), 100, "ntp not named: passes");

    // By victim address; only what is given changes (memcached stays dropped).
    let set = json_of(&ok(&d, &["policy", "set", "203.0.113.10", "--drop", "ntp", "--extend", "1h", "--comment", "ticket 2", "--json"]));
    assert_eq!(
        (set["id"].as_str(), set["comment"].as_str(), set["mode"].as_str()),
        (Some(id.as_str()), Some("ticket 2"), Some("enforce")),
        "{set}"
    );
    assert_eq!(set["rules"]["memcached"]["action"], "drop", "{set}");
    assert_eq!(set["rules"]["ntp"]["action"], "drop", "{set}");
    let gained = expiry(&set).duration_since(expiry(&made)).unwrap().as_secs();
    assert!((3599..=3601).contains(&gained), "--extend 1h added {gained} s");
    assert_eq!(deliver(&lab, "198.51.100.7:123", "203.0.113.10:40002", 100), 0, "ntp now dropped");
    assert_eq!(deliver(&lab, "198.51.100.7:11211", "203.0.113.10:40001", 100), 0, "memcached still dropped");

    // By victim prefix: remove a rule, switch to monitor, no expiry, clear the comment.
    let text = ok(&d, &["policy", "set", "203.0.113.10/32", "--remove", "memcached", "--monitor", "--ttl", "0", "--comment", ""]);
    assert!(text.starts_with(&format!("changed {id} for 203.0.113.10/32 (monitor, expires -)")), "{text}");
    let p = &policies(&d)[0];
    assert!(p["rules"].get("memcached").is_none() && p["expires_at"].is_null() && p["comment"].is_null(), "{p}");
    assert_eq!(deliver(&lab, "198.51.100.7:123", "203.0.113.10:40002", 100), 100, "monitor: counted, not dropped");
    ok(&d, &["policy", "set", &id, "--enforce", "--limit", "ntp=5"]);
    let ntp = deliver(&lab, "198.51.100.7:123", "203.0.113.10:40002", 100);
    assert!((1..=20).contains(&ntp), "ntp limited to 5 pps (burst 5): {ntp} arrived");

    // Journaled like a replace: a restart keeps the merged policy.
    d.kill9_and_restart(Duration::ZERO).expect("the change survived a SIGKILL and restart");

    // A /24 covering other addresses of the customer.
    let wide = json_of(&ok(&d, &["policy", "add", "203.0.113.0/24", "--drop", "ssdp", "--comment", "customer", "--json"]));
    let wide_id = wide["id"].as_str().unwrap().to_string();
    // show: the exact victim first; else the covering policy, with a note.
    let shown = ok(&d, &["policy", "show", "203.0.113.10"]);
    assert!(shown.starts_with(&format!("{id} 203.0.113.10/32")), "{shown}");
    let out = run(&d, &["policy", "show", "203.0.113.77"], &[], false, None, Stdio::piped());
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && stdout.starts_with(&format!("{wide_id} 203.0.113.0/24")), "{stdout}{stderr}");
    assert!(stdout.contains("comment: customer"), "show prints the comment: {stdout}");
    assert!(stderr.contains("203.0.113.77 has no policy of its own") && stderr.contains(&wide_id), "{stderr}");
    assert_eq!(json_of(&ok(&d, &["policy", "show", "203.0.113.77", "--json"]))["id"], wide_id.as_str());
    // set and del never reach from an address to its covering prefix.
    let e = refused(&d, &["policy", "del", "203.0.113.77"]);
    assert!(e.contains(&format!("covered by {wide_id} for 203.0.113.0/24")), "{e}");
    let e = refused(&d, &["policy", "set", "203.0.113.77", "--drop", "ntp"]);
    assert!(e.contains(&format!("ampguard policy set {wide_id}")), "{e}");
    assert_eq!(policies(&d).as_array().unwrap().len(), 2, "nothing deleted");
    let e = refused(&d, &["policy", "show", "203.0.113.1/24"]);
    assert!(e.contains("did you mean 203.0.113.0/24?"), "{e}");
    let e = refused(&d, &["policy", "show", "198.51.100.1"]);
    assert!(e.contains("no policy for 198.51.100.1"), "{e}");
    let e = refused(&d, &["policy", "del", "p-999"]);
    assert!(e.contains("no policy p-999"), "{e}");
    let del = json_of(&ok(&d, &["policy", "del", "203.0.113.0/24", "--json"]));
    assert_eq!(
        (del["deleted"]["id"].as_str(), del["deleted"]["victim"].as_str()),
        (Some(wide_id.as_str()), Some("203.0.113.0/24")),
        "{del}"
    );
    assert_eq!(ok(&d, &["policy", "del", "203.0.113.10"]), format!("deleted {id} for 203.0.113.10/32\n"));
    assert_eq!(policies(&d), json!([]));
}

#[test]
fn patch_is_validated_like_a_create_and_refusals_change_nothing() {
    let (_lab, d) = start("clipatch");
    let (st, p) = d
        .call(
            "POST",
            "/v1/policies",
            Some(r#"{"victim": "203.0.0.0/12", "rules": {"memcached": {"action": "drop"}}, "force": true, "ttl_secs": 600}"#),
        )
        .unwrap();
    assert_eq!(st, 201, "{p}");
    let id = p["id"].as_str().unwrap().to_string();
    let (st, q) = d.call("POST", "/v1/policies", Some(r#"{"victim": "203.0.113.10", "ttl_secs": 0}"#)).unwrap();
    assert_eq!(st, 201, "{q}");
    let host = q["id"].as_str().unwrap().to_string();
    let before = policies(&d);
    let journal = std::fs::read(d.dir.join("state/state.journal")).unwrap_or_default();
    let path = format!("/v1/policies/{id}");
    for (body, status, code) in [
        (r#"{"comment": "x"}"#, 422, "too_broad"), // breadth needs force again, as on a create
        (r#"{"rules": {"memcache": {"action": "drop"}}, "force": true}"#, 400, "invalid"),
        (r#"{"rules": {"ntp": {"action": "limit"}}, "force": true}"#, 400, "invalid"), // a limit without a rate
        (r#"{"rules": {"memcached": null, "tftp": {"action": "drop", "signature": true}}, "force": true}"#, 400, "invalid"),
        (r#"{"ttl_secs": 99999999, "force": true}"#, 400, "invalid"),
        (r#"{"extend_secs": 700000, "force": true}"#, 400, "invalid"),
        (r#"{"ttl_secs": 60, "extend_secs": 60, "force": true}"#, 400, "invalid"),
        (r#"{"victim": "203.0.113.11", "force": true}"#, 400, "bad_request"), // unknown field: the victim never changes
        (r#"{"mode": "sometimes", "force": true}"#, 400, "bad_request"),
        ("not json", 400, "bad_request"),
    ] {
        let (st, e) = d.call("PATCH", &path, Some(body)).unwrap();
        assert_eq!((st, e["error"]["code"].as_str()), (status, Some(code)), "{body}: {e}");
    }
    let (st, e) = d.call("PATCH", &format!("/v1/policies/{host}"), Some(r#"{"extend_secs": 60}"#)).unwrap();
    assert_eq!(st, 400, "a policy that never expires cannot be extended: {e}");
    assert_eq!(d.call("PATCH", "/v1/policies/p-999", Some("{}")).unwrap().0, 404);
    assert_eq!(policies(&d), before, "no refusal changed anything");
    assert_eq!(std::fs::read(d.dir.join("state/state.journal")).unwrap_or_default(), journal, "nor wrote a journal line");

    let (st, p) =
        d.call("PATCH", &path, Some(r#"{"comment": "x", "force": true, "rules": {"ntp": {"action": "limit", "pps": 100}}}"#)).unwrap();
    assert_eq!(st, 200, "{p}");
    assert_eq!(
        (p["comment"].as_str(), p["rules"]["ntp"]["burst"].as_u64()),
        (Some("x"), Some(100)),
        "defaults filled in as on a create: {p}"
    );
    let journal = std::fs::read_to_string(d.dir.join("state/state.journal")).unwrap();
    let last: Value = serde_json::from_str(journal.lines().last().unwrap()).unwrap();
    assert_eq!(last["put_policy"]["comment"], "x", "journaled as a put, like a replace: {last}");
    // The lookups the CLI uses.
    let (st, l) = d.call("GET", "/v1/policies?covering=203.0.113.99", None).unwrap();
    assert_eq!((st, l["policies"][0]["id"].as_str()), (200, Some(id.as_str())), "{l}");
    let (_, l) = d.call("GET", "/v1/policies?covering=203.0.113.10", None).unwrap();
    assert_eq!(l["policies"][0]["id"], host.as_str(), "the longest prefix: {l}");
    let (_, l) = d.call("GET", "/v1/policies?victim=203.0.113.99", None).unwrap();
    assert_eq!(l["policies"], json!([]), "victim is an exact match: {l}");
    for bad in [
        "victim=203.0.113.1/24",
        "covering=203.0.113.0/24",
        "victim=x",
        "victim=203.0.113.10&covering=203.0.113.10",
        "victim=203.0.113.10&limit=1",
    ] {
        assert_eq!(d.call("GET", &format!("/v1/policies?{bad}"), None).unwrap().0, 400, "{bad}");
    }
}

#[test]
fn cli_errors_speak_cli_in_one_line() {
    let (_lab, d) = start("climsg");
    let e = refused(&d, &["policy", "add", "203.0.0.0/12", "--drop", "memcached"]);
    assert!(e.contains("add --force") && !e.contains("\"force\""), "{e}");
    let e = refused(&d, &["policy", "add", "203.0.113.10", "--ttl", "30d"]);
    assert!(e.contains("30d") && e.contains("maximum of 7d") && e.contains("max_ttl_secs"), "{e}");
    let e = refused(&d, &["policy", "add", "203.0.113.10", "--drop", "memcache"]);
    assert!(e.contains("did you mean memcached?"), "{e}");
    let e = refused(&d, &["policy", "add", "203.0.113.10", "--drop", "ntp", "--limit", "ntp=1000"]);
    assert!(e.contains("ntp is given to both --drop and --limit"), "{e}");
    let e = refused(&d, &["policy", "add", "203.0.113.10", "--drop", "dns", "--pass", "dns"]);
    assert!(e.contains("--drop and --pass"), "{e}");
    assert_eq!(policies(&d), json!([]), "nothing was created");

    let id = json_of(&ok(&d, &["policy", "add", "203.0.113.10", "--json"]))["id"].as_str().unwrap().to_string();
    let e = refused(&d, &["policy", "add", "203.0.113.10"]);
    assert!(e.contains(&format!("ampguard policy set {id}")) && !e.contains("PUT"), "{e}");
    let e = refused(&d, &["policy", "set", &id, "--drop", "memcahced"]);
    assert!(e.contains("did you mean memcached?"), "{e}");
    let e = refused(&d, &["policy", "set", &id, "--extend", "7d"]);
    assert!(e.contains("after --extend") && e.contains("max_ttl_secs"), "{e}");
    let e = refused(&d, &["policy", "set", &id, "--limit", "ntp=1000", "--remove", "ntp"]);
    assert!(e.contains("--limit and --remove"), "{e}");
    let e = refused(&d, &["policy", "set", &id]);
    assert!(e.contains("nothing to change"), "{e}");

    // A 401 names the token file that was read.
    let wrong = d.dir.join("wrong-token");
    std::fs::write(&wrong, "not-the-token-0123456789").unwrap();
    let wrong = wrong.to_str().unwrap();
    let out = run(&d, &["status"], &[("AMPGUARD_TOKEN_FILE", wrong)], false, None, Stdio::piped());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && e.contains(wrong) && e.contains("--token-file"), "{e}");

    // RUST_BACKTRACE does not turn an error into a backtrace.
    let out = run(&d, &["policy", "show", "p-999"], &[("RUST_BACKTRACE", "1")], false, None, Stdio::piped());
    let e = String::from_utf8_lossy(&out.stderr);
    assert_eq!((out.status.code(), e.lines().count()), (Some(1), 1), "{e}");
}

/// A pipe whose reader has gone: `ampguard ... | head -1` once head exits.
fn closed_pipe() -> Stdio {
    let mut fds = [0; 2];
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    unsafe { libc::close(fds[0]) };
    Stdio::from(unsafe { OwnedFd::from_raw_fd(fds[1]) })
}

#[test]
fn json_everywhere_closed_pipes_and_control_characters() {
    let (lab, d) = start("clijson");
    // Text status: capacity as configured (default 8192) and unmatched traffic by reason.
    assert_eq!(deliver(&lab, "198.51.100.7:40000", "203.0.113.10:40001", 10), 10);
    let st = ok(&d, &["status"]);
    assert!(st.contains("of 8192 (capacity.max_policies)"), "{st}");
    let no_vector = st.lines().find(|l| l.starts_with("no_vector")).unwrap_or_else(|| panic!("no reasons: {st}"));
    assert!(no_vector.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() >= 10, "{st}");
    assert_eq!(json_of(&ok(&d, &["status", "--json"]))["policies"]["capacity"], 8192);
    assert!(st.contains("enforcement: enforcing") && st.lines().any(|l| l.starts_with("edge0") && l.contains("enforcing")), "{st}");
    // An operator's detach is what the text says first.
    let pin_dir = d.pin_dir.display().to_string();
    ok(&d, &["detach", "--pin-dir", &pin_dir]);
    let st = ok(&d, &["status"]);
    assert!(st.contains("NOT HEALTHY") && st.contains("enforcement: DETACHED BY OPERATOR") && st.contains("ampguard attach"), "{st}");
    assert!(st.lines().any(|l| l.starts_with("edge0") && l.contains("detached_by_operator")), "{st}");
    ok(&d, &["attach"]);
    assert!(ok(&d, &["status"]).contains("enforcement: enforcing"));

    // Closed pipes: a quiet exit (no panic, no message), for text and JSON.
    for args in [&["status"][..], &["policy", "list", "--json"], &["vectors"]] {
        let out = run(&d, args, &[("RUST_BACKTRACE", "1")], false, None, closed_pipe());
        let quiet = out.status.success() || out.status.signal() == Some(libc::SIGPIPE);
        assert!(quiet && out.stderr.is_empty(), "{args:?}: {:?} {}", out.status, String::from_utf8_lossy(&out.stderr));
    }

    // Control characters from the daemon are escaped in text output.
    let evil = "ticket \u{1b}[2J\u{7}4711\nFAKE 203.0.113.99/32";
    let (st, p) = d.call("POST", "/v1/policies", Some(&json!({"victim": "203.0.113.10", "comment": evil}).to_string())).unwrap();
    assert_eq!(st, 201, "{p}");
    for args in [&["policy", "list"][..], &["policy", "show", "203.0.113.10"]] {
        let text = ok(&d, args);
        assert!(!text.chars().any(|c| c.is_control() && c != '\n'), "{args:?} printed a control character: {text:?}");
        assert!(text.contains("ticket \\u{1b}[2J\\u{7}4711\\nFAKE"), "{args:?}: {text}");
        assert!(!text.lines().any(|l| l.starts_with("FAKE")), "no forged line: {text}");
    }
    assert_eq!(json_of(&ok(&d, &["policy", "list", "--json"]))["policies"][0]["comment"], evil, "JSON carries the text as it is");

    // --json on the subcommands that printed only text.
    let a = json_of(&ok(&d, &["allow", "add", "192.0.2.53/32", "--comment", "resolver", "--json"]));
    assert_eq!((a["prefix"].as_str(), a["comment"].as_str()), (Some("192.0.2.53/32"), Some("resolver")), "{a}");
    let r = json_of(&ok(&d, &["allow", "del", "192.0.2.53/32", "--json"]));
    assert_eq!(r["removed"]["id"], a["id"], "{r}");
    let top = ok(&d, &["top", "--json", "--iterations", "2", "--interval", "0.2"]);
    let docs: Vec<Value> = top.lines().map(json_of).collect();
    assert_eq!(docs.len(), 2, "one JSON document a line per refresh: {top}");
    assert!(docs.iter().all(|v| v["victims"].is_array() && v["interval_secs"].as_f64().is_some()), "{top}");
    let pcap = d.dir.join("c.pcap");
    let cap = json_of(&ok(&d, &["capture", "--out", pcap.to_str().unwrap(), "--count", "5", "--seconds", "1", "--json"]));
    assert_eq!((cap["packets"].as_u64(), cap["file"].as_str()), (Some(0), pcap.to_str()), "nothing dropped meanwhile: {cap}");
    assert_eq!(cap["bytes"].as_u64(), Some(std::fs::metadata(&pcap).unwrap().len()), "{cap}");
    let del = json_of(&ok(&d, &["policy", "del", "203.0.113.10", "--json"]));
    assert_eq!(del["deleted"]["victim"], "203.0.113.10/32", "{del}");
}

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!("{}/../xdp-user/tests/fixtures/fastnetmon/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

#[test]
fn alert_fastnetmon_takes_options_anywhere_and_after_a_double_dash() {
    let (lab, d) = start("clifnm");
    let api = format!("http://127.0.0.1:{}", d.port);
    let token = d.token_file.to_str().unwrap().to_string();
    // Options after FastNetMon's four arguments (no AMPGUARD_* in the environment).
    let ban = ["alert", "fastnetmon", "203.0.113.10", "incoming", "3209", "ban", "--api", &api, "--token-file", &token, "--json"];
    let out = run(&d, &ban, &[], true, Some(&fixture("ban-stdin.txt")), Stdio::piped());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r = json_of(&String::from_utf8_lossy(&out.stdout));
    assert_eq!((r["result"].as_str(), r["policy"]["victim"].as_str()), (Some("created"), Some("203.0.113.10/32")), "{r}");
    assert_eq!(deliver(&lab, "198.51.100.7:11211", "203.0.113.10:40001", 100), 0, "banned");
    // Options first, then `--` and the four arguments (what the notify wrapper passes).
    let api_opt = format!("--api={api}");
    let unban = ["alert", "fastnetmon", &api_opt, "--token-file", &token, "--", "203.0.113.10", "incoming", "3209", "unban"];
    let out = run(&d, &unban, &[], true, None, Stdio::piped());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("removed"), "{}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(policies(&d), json!([]));
    // FastNetMon's own call, four arguments and nothing else, still works.
    let out = run(
        &d,
        &["alert", "fastnetmon", "203.0.113.10", "incoming", "3209", "ban"],
        &[],
        false,
        Some(&fixture("ban-stdin.txt")),
        Stdio::piped(),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(policies(&d).as_array().unwrap().len(), 1);
    // A fifth argument is an error, not silently dropped.
    let out = run(&d, &["alert", "fastnetmon", "203.0.113.10", "incoming", "3209", "ban", "extra"], &[], false, Some(""), Stdio::piped());
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
}
