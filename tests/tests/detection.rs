//! Built-in detection in the lab: real-format replies from the wan side to
//! protected victims, the daemon's own detector deciding (no alert is sent).
//! Root only (namespaces, XDP); every flood is bounded in count and time.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Mutex,
    },
    time::{Duration, Instant},
};

use ampguard_test_support::payloads;
use ampguard_tests::{
    daemon::{lab_with_daemon, Daemon},
    lab::{sa, send_udp_payload, Lab, UdpSink},
};
use serde_json::Value;

/// Lab tests share the machine's two CPUs: one at a time, so floods keep their rates.
static SERIAL: Mutex<()> = Mutex::new(());

const VICTIM: &str = "203.0.113.10:40000";

fn detection(mode: &str, hold_secs: u64) -> String {
    format!("[detection]\nenabled = true\nnetworks = [\"203.0.113.0/24\", \"2001:db8:2::/48\"]\nmode = \"{mode}\"\nhold_secs = {hold_secs}\nmax_hold_secs = {}\n", hold_secs * 4)
}

fn detector_policies(d: &Daemon) -> Vec<Value> {
    let (code, v) = d.call("GET", "/v1/policies", None).unwrap();
    assert_eq!(code, 200, "{v}");
    v["policies"].as_array().unwrap().iter().filter(|p| p["source"] == "detector").cloned().collect()
}

/// What arrived at a sink: (arrival time, payload length).
fn arrivals(sink: &UdpSink, stop: &AtomicBool, max: Duration) -> Vec<(Instant, usize)> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 65536];
    sink.socket().set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let start = Instant::now();
    let mut stopped_at = None;
    while start.elapsed() < max {
        if let Ok((n, _)) = sink.socket().recv_from(&mut buf) {
            out.push((Instant::now(), n));
            continue;
        }
        if stop.load(Ordering::Relaxed) {
            let t = *stopped_at.get_or_insert_with(Instant::now);
            if t.elapsed() > Duration::from_millis(500) {
                break;
            }
        }
    }
    out
}

/// Send `payload` from `src` in bursts of `burst` every `gap` for `dur`; returns (first send, sent).
fn flood(lab: &Lab, src: &str, payload: &[u8], burst: usize, gap: Duration, dur: Duration) -> (Instant, usize) {
    let t0 = Instant::now();
    let mut sent = 0;
    while t0.elapsed() < dur {
        sent += send_udp_payload(&lab.wan, sa(src), sa(VICTIM), burst, payload).unwrap();
        std::thread::sleep(gap);
    }
    (t0, sent)
}

struct Run {
    flood_start: Instant,
    /// When the flood's last packet was sent.
    flood_end: Instant,
    flood_sent: usize,
    /// Memcached replies that arrived, by time.
    memcached: Vec<Instant>,
    /// Small DNS answers and NTP mode 4 replies: (sent, arrived).
    dns: (usize, usize),
    ntp: (usize, usize),
}

/// A memcached flood of `pps` for `dur` to the victim, with small DNS answers
/// and NTP mode 4 replies (10 a second each) to the same victim meanwhile.
fn attack(lab: &Lab, pps: usize, dur: Duration) -> Run {
    let sink = UdpSink::bind(&lab.edge, sa(VICTIM)).unwrap();
    let stop = AtomicBool::new(false);
    let mc = payloads::memcached_value_reply();
    let (dns, ntp) = (payloads::dns_a_answer(), payloads::ntp_mode4_reply());
    let (mc_len, dns_len, ntp_len) = (mc.len(), dns.len(), ntp.len());
    assert!(mc_len != dns_len && mc_len != ntp_len && dns_len != ntp_len, "told apart by length");
    let burst = (pps / 200).max(1);
    std::thread::scope(|s| {
        let rx = s.spawn(|| arrivals(&sink, &stop, dur + Duration::from_secs(10)));
        let small = s.spawn(|| {
            let (mut d, mut n) = (0, 0);
            let t = Instant::now();
            while t.elapsed() < dur {
                d += send_udp_payload(&lab.wan, sa("198.51.100.53:53"), sa(VICTIM), 1, &dns).unwrap();
                n += send_udp_payload(&lab.wan, sa("198.51.100.123:123"), sa(VICTIM), 1, &ntp).unwrap();
                std::thread::sleep(Duration::from_millis(100));
            }
            (d, n)
        });
        let (flood_start, flood_sent) = flood(lab, "198.51.100.7:11211", &mc, burst, Duration::from_millis(5), dur);
        let flood_end = Instant::now();
        let (dns_sent, ntp_sent) = small.join().unwrap();
        stop.store(true, Ordering::Relaxed);
        let got = rx.join().unwrap();
        let count = |len| got.iter().filter(|(_, n)| *n == len).count();
        Run {
            flood_start,
            flood_end,
            flood_sent,
            memcached: got.iter().filter(|(_, n)| *n == mc_len).map(|(t, _)| *t).collect(),
            dns: (dns_sent, count(dns_len)),
            ntp: (ntp_sent, count(ntp_len)),
        }
    })
}

#[test]
fn a_memcached_flood_with_no_alert_is_dropped_within_a_second_and_the_ban_lifts_after_the_hold() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (lab, d) = lab_with_daemon("det", &detection("mitigate", 2));
    assert!(detector_policies(&d).is_empty());
    let run = attack(&lab, 5_000, Duration::from_secs(3));
    let last = run.memcached.last().copied();
    let leaked_after_1s = run.memcached.iter().filter(|t| t.duration_since(run.flood_start) > Duration::from_secs(1)).count();
    eprintln!(
        "flood: {} sent, {} arrived, the last {:?} after the first send",
        run.flood_sent,
        run.memcached.len(),
        last.map(|t| t.duration_since(run.flood_start))
    );
    assert!(run.flood_sent > 8_000, "the flood ran: {}", run.flood_sent);
    assert!(!run.memcached.is_empty(), "the first packets arrive: nothing was banned before the attack");
    assert_eq!(leaked_after_1s, 0, "memcached replies still arrived 1 s into the flood; log:\n{}", d.log());
    // The victim's own DNS and NTP replies kept arriving (below every threshold, not reflection signatures).
    assert_eq!(run.dns.1, run.dns.0, "DNS answers: {:?}", run.dns);
    assert_eq!(run.ntp.1, run.ntp.0, "NTP mode 4 replies: {:?}", run.ntp);
    let p = detector_policies(&d);
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(p[0]["victim"], "203.0.113.10/32");
    let comment = p[0]["comment"].as_str().unwrap();
    assert!(comment.contains("memcached") && comment.contains("pps"), "{comment}");
    assert!(d.log().contains("detection: attack on 203.0.113.10/32"), "{}", d.log());
    // The flood is over: the ban goes 2 s (hold_secs) after the rates fall, not before.
    let mut lifted = None;
    while run.flood_end.elapsed() < Duration::from_secs(10) {
        if detector_policies(&d).is_empty() {
            lifted = Some(run.flood_end.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let lifted = lifted.unwrap_or_else(|| panic!("the ban was not lifted 10 s after the flood; log:\n{}", d.log()));
    // (50 ms: the polling's own resolution.)
    assert!(lifted >= Duration::from_millis(1_950), "lifted {lifted:?} after the flood's last packet: before the 2 s hold");
    assert!(d.log().contains("attack on 203.0.113.10/32 over"), "{}", d.log());
    let (_, m) = d.call_with("GET", "/metrics", None, None).unwrap();
    let m = m.as_str().unwrap().to_string();
    assert!(m.contains("ampguard_detections_total{mode=\"mitigate\",vector=\"memcached\"} 1"), "{m}");
    assert!(m.contains("ampguard_detection_policy_changes_total{result=\"removed\"} 1"), "{m}");
}

#[test]
fn a_flood_below_the_threshold_changes_nothing_but_is_shown_with_its_rate() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (lab, d) = lab_with_daemon("detlow", &detection("mitigate", 2));
    // 400 pps: above the sketch's trigger (a quarter of memcached's 1,000), below the threshold.
    let sink = UdpSink::bind(&lab.edge, sa(VICTIM)).unwrap();
    let mc = payloads::memcached_value_reply();
    // Meanwhile, 2 s in: what the API, `top` and `status` show.
    let (sent, (seen, top)) = std::thread::scope(|s| {
        let look = s.spawn(|| {
            std::thread::sleep(Duration::from_secs(2));
            let seen = d.call("GET", "/v1/detection", None).unwrap().1;
            let out = d.cli(&["top", "--iterations", "1", "--interval", "0.2"], None).unwrap();
            let status = d.cli(&["status"], None).unwrap();
            (seen, (String::from_utf8_lossy(&out.stdout).to_string(), String::from_utf8_lossy(&status.stdout).to_string()))
        });
        let t0 = Instant::now();
        let mut sent = 0;
        while t0.elapsed() < Duration::from_secs(3) {
            sent += send_udp_payload(&lab.wan, sa("198.51.100.7:11211"), sa(VICTIM), 2, &mc).unwrap();
            std::thread::sleep(Duration::from_millis(5));
        }
        (sent, look.join().unwrap())
    });
    let arrived = sink.drain(Duration::from_millis(300), Duration::from_secs(10));
    assert_eq!(arrived, sent, "nothing dropped");
    assert!(detector_policies(&d).is_empty());
    let dest = &seen["destinations"][0];
    assert_eq!(dest["destination"], "203.0.113.10/32", "{seen}");
    let pps = dest["pps"].as_f64().unwrap();
    assert!((150.0..=500.0).contains(&pps), "measured {pps} pps of ~{} sent a second: {seen}", sent / 3);
    assert_eq!(dest["under_attack"], false);
    assert_eq!(dest["vectors"][0][0], "memcached");
    // The operator sees it too, though no policy covers it.
    let (top, status) = top;
    assert!(top.contains("built-in detection (mitigate)") && top.contains("203.0.113.10/32") && top.contains("memcached"), "{top}");
    assert!(status.contains("built-in detection: mitigate on 203.0.113.0/24, 2001:db8:2::/48"), "{status}");
}

#[test]
fn report_mode_detects_logs_and_notifies_but_changes_nothing() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = std::env::temp_dir().join(format!("ag-det-report-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (log, script) = (dir.join("calls.log"), dir.join("notify.sh"));
    std::fs::write(&script, format!("#!/bin/sh\necho \"ARGV $*\" >> {0}\ncat > /dev/null\n", log.display())).unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let extra = format!("{}[detection.notify]\ncommand = \"{}\"\n", detection("report", 1), script.display());
    let (lab, d) = lab_with_daemon("detrep", &extra);
    let run = attack(&lab, 5_000, Duration::from_secs(2));
    assert_eq!(run.memcached.len(), run.flood_sent, "report mode drops nothing");
    assert!(detector_policies(&d).is_empty());
    assert!(d.log().contains("would ban it"), "{}", d.log());
    let (_, m) = d.call_with("GET", "/metrics", None, None).unwrap();
    assert!(m.as_str().unwrap().contains("ampguard_detections_total{mode=\"report\",vector=\"memcached\"} 1"), "{m}");
    let (_, s) = d.call("GET", "/v1/status", None).unwrap();
    assert_eq!(s["detection"]["mode"], "report", "{s}");
    // Told anyway: the attack, then its end (so something downstream can act on it).
    let t = Instant::now();
    let calls = loop {
        let c = std::fs::read_to_string(&log).unwrap_or_default();
        if c.lines().count() >= 2 || t.elapsed() > Duration::from_secs(8) {
            break c;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let actions: Vec<&str> = calls.lines().filter_map(|l| l.split(' ').nth(4)).collect();
    assert_eq!(actions, ["ban", "unban"], "{calls}");
    assert!(calls.starts_with("ARGV 203.0.113.10 incoming "), "{calls}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn detection_off_does_nothing_and_traffic_outside_the_networks_is_never_banned() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // Off (the default): the flood passes, nothing is tracked.
    {
        let (lab, d) = lab_with_daemon("detoff", "");
        let run = attack(&lab, 5_000, Duration::from_secs(2));
        assert_eq!(run.memcached.len(), run.flood_sent);
        assert!(detector_policies(&d).is_empty());
        let (_, s) = d.call("GET", "/v1/status", None).unwrap();
        assert_eq!(s["detection"]["enabled"], false, "{s}");
    }
    // On, but the victim's network is not protected.
    let (lab, d) = lab_with_daemon("detout", "[detection]\nenabled = true\nnetworks = [\"2001:db8:2::/48\"]\n");
    let run = attack(&lab, 5_000, Duration::from_secs(2));
    assert_eq!(run.memcached.len(), run.flood_sent);
    assert!(detector_policies(&d).is_empty());
}

/// A tiny HTTP receiver on the edge namespace's loopback: records each
/// request's body, answers 200. Stops after `max`.
fn webhook_receiver(lab: &Lab, port: u16, max: Duration) -> std::thread::JoinHandle<Vec<Value>> {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = lab.edge.enter(|| std::net::TcpListener::bind(("127.0.0.1", port))).unwrap().unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let (start, mut bodies) = (Instant::now(), Vec::new());
        while start.elapsed() < max {
            let Ok((stream, _)) = listener.accept() else {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            };
            stream.set_nonblocking(false).unwrap();
            stream.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let mut r = BufReader::new(stream);
            let mut len = 0;
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0u8; len];
            if r.read_exact(&mut body).is_ok() {
                bodies.push(serde_json::from_slice(&body).unwrap_or(Value::Null));
            }
            let _ = r.get_mut().write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            if bodies.len() >= 2 {
                break;
            }
        }
        bodies
    })
}

#[test]
fn the_webhook_and_the_notify_command_hear_of_the_ban_and_the_unban() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = std::env::temp_dir().join(format!("ag-det-notify-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("calls.log");
    let script = dir.join("notify.sh");
    // What a FastNetMon notify script does with its call: argv, then stdin.
    std::fs::write(&script, format!("#!/bin/sh\necho \"ARGV $*\" >> {0}\ncat >> {0}\n", log.display())).unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    // A second webhook nobody listens on: its failure is counted, the first still hears.
    let extra = format!(
        "{}[detection.notify]\nwebhooks = [\"http://127.0.0.1:18081/hook\", \"http://127.0.0.1:18089/nobody\"]\nwebhook_timeout_ms = 500\nwebhook_retries = 1\ncommand = \"{}\"\n",
        detection("mitigate", 1),
        script.display()
    );
    let (lab, d) = lab_with_daemon("detnote", &extra);
    let rx = webhook_receiver(&lab, 18081, Duration::from_secs(20));
    let run = attack(&lab, 5_000, Duration::from_secs(2));
    assert!(run.memcached.len() < run.flood_sent / 2, "the flood was banned: {} of {}", run.memcached.len(), run.flood_sent);
    let bodies = rx.join().unwrap();
    assert_eq!(bodies.len(), 2, "ban and unban: {bodies:?}\n{}", d.log());
    assert_eq!((bodies[0]["victim"].as_str(), bodies[0]["action"].as_str()), (Some("203.0.113.10"), Some("ban")), "{bodies:?}");
    assert_eq!(bodies[0]["vectors"], serde_json::json!(["memcached"]));
    assert!(bodies[0]["pps"].as_u64().unwrap() >= 1_000, "{bodies:?}");
    assert_eq!(bodies[1]["action"], "unban");
    // The command ran twice, with FastNetMon's argv; the ban's details on stdin.
    let t = Instant::now();
    let calls = loop {
        let s = std::fs::read_to_string(&log).unwrap_or_default();
        if s.matches("ARGV").count() >= 2 || t.elapsed() > Duration::from_secs(5) {
            break s;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let argv: Vec<&str> = calls.lines().filter(|l| l.starts_with("ARGV")).collect();
    assert_eq!(argv.len(), 2, "{calls}");
    let ban: Vec<&str> = argv[0].split(' ').collect();
    assert_eq!((ban[1], ban[2], ban[4]), ("203.0.113.10", "incoming", "ban"), "{calls}");
    assert!(ban[3].parse::<u64>().unwrap() >= 1_000, "pps: {calls}");
    assert!(argv[1].ends_with("incoming 0 unban") || argv[1].contains("incoming") && argv[1].ends_with("unban"), "{calls}");
    assert!(calls.contains("IP: 203.0.113.10") && calls.contains("Attack type: memcached"), "{calls}");
    // Counted once each delivery is over (the command has exited, the second
    // webhook has run out of retries): a moment after the receivers saw them.
    let want = [
        "ampguard_detection_notifications_total{kind=\"webhook\",result=\"sent\"} 2",
        "ampguard_detection_notifications_total{kind=\"webhook\",result=\"failed\"} 2",
        "ampguard_detection_notifications_total{kind=\"command\",result=\"sent\"} 2",
    ];
    let t = Instant::now();
    let m = loop {
        let (_, m) = d.call_with("GET", "/metrics", None, None).unwrap();
        let m = m.as_str().unwrap().to_string();
        if want.iter().all(|w| m.contains(w)) || t.elapsed() > Duration::from_secs(10) {
            break m;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    for w in want {
        assert!(m.contains(w), "{w} in:\n{m}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_spoofed_storm_across_a_protected_48_neither_grows_the_meters_nor_hides_a_real_victim() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let extra = "[capacity]\nmax_tracked = 64\n[detection]\nenabled = true\nnetworks = [\"2001:db8:2::/48\"]\nhold_secs = 30\n";
    let (lab, d) = lab_with_daemon("detstorm", extra);
    // The wan side reaches the whole /48 through the edge's address.
    lab.wan.ip(&["-6", "route", "add", "2001:db8:2::/48", "via", "2001:db8:2::1", "dev", "wan0"]).unwrap();
    let victim = "[2001:db8:2::10]:40000";
    let sink = UdpSink::bind(&lab.edge, sa(victim)).unwrap();
    let mc = payloads::memcached_value_reply();
    let stop = AtomicBool::new(false);
    let (storm_sent, (flood_start, flood_sent), got) = std::thread::scope(|s| {
        let rx = s.spawn(|| arrivals(&sink, &stop, Duration::from_secs(20)));
        // 60,000 replies, each to a random /64 of the /48 (not the victim's), within 4 s.
        let storm = s.spawn(|| {
            let sock = lab.wan.enter(|| std::net::UdpSocket::bind("[2001:db8:1::1]:11211")).unwrap().unwrap();
            let (mut rng, mut sent, t) = (0x9e37_79b9_7f4a_7c15u64, 0, Instant::now());
            while sent < 60_000 && t.elapsed() < Duration::from_secs(4) {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let dst = format!("[2001:db8:2:{:x}::{:x}]:40000", (rng as u16) | 1, (rng >> 16) as u16);
                if sock.send_to(&mc, sa(&dst)).is_ok() {
                    sent += 1;
                }
                if sent % 64 == 0 {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            sent
        });
        std::thread::sleep(Duration::from_millis(500));
        let flood = {
            let t0 = Instant::now();
            let mut sent = 0;
            while t0.elapsed() < Duration::from_secs(3) {
                sent += send_udp_payload(&lab.wan, sa("[2001:db8:1::7]:11211"), sa(victim), 25, &mc).unwrap();
                std::thread::sleep(Duration::from_millis(5));
            }
            (t0, sent)
        };
        let storm_sent = storm.join().unwrap();
        stop.store(true, Ordering::Relaxed);
        (storm_sent, flood, rx.join().unwrap())
    });
    let leaked = got.iter().filter(|(t, _)| t.duration_since(flood_start) > Duration::from_millis(1_500)).count();
    eprintln!("storm {storm_sent} packets; victim flood {flood_sent} sent, {} arrived, {leaked} after 1.5 s", got.len());
    assert!(storm_sent > 20_000, "the storm ran: {storm_sent}");
    assert_eq!(leaked, 0, "the victim's flood still arrived 1.5 s in, under the storm; log:\n{}", d.log());
    let p = detector_policies(&d);
    assert_eq!(p.len(), 1, "only the victim is banned, no storm destination: {p:?}");
    assert_eq!(p[0]["victim"], "2001:db8:2::/64");
    let (_, det) = d.call("GET", "/v1/detection", None).unwrap();
    assert!(det["tracked"].as_u64().unwrap() <= 64, "within capacity.max_tracked: {det}");
}
