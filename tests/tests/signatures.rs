//! Reflection signatures end to end: with the default profile, real-format
//! attack replies (built byte by byte) are dropped at the edge while the
//! victim's legitimate replies of the same protocol arrive.

use std::{net::SocketAddr, time::Duration};

use ampguard_test_support::payloads::*;
use ampguard_tests::{
    daemon::Daemon,
    lab::{send_udp_payload, Lab, UdpSink},
    require_root,
};

fn deliver(lab: &Lab, src: &str, port: u16, payload: &[u8], count: usize) -> usize {
    let dst: SocketAddr = format!("203.0.113.10:{port}").parse().unwrap();
    let sink = UdpSink::bind(&lab.edge, dst).expect("bind sink");
    assert_eq!(send_udp_payload(&lab.wan, src.parse().unwrap(), dst, count, payload).expect("send"), count);
    sink.drain(Duration::from_millis(300), Duration::from_secs(5))
}

#[test]
fn default_profile_drops_attack_replies_and_passes_legitimate_ones() {
    require_root();
    let lab = Lab::new("sig").expect("lab");
    let d = Daemon::start(&lab, "").expect("daemon");
    let (st, p) = d.call("POST", "/v1/policies", Some(r#"{"victim": "203.0.113.10", "ttl_secs": 600}"#)).unwrap();
    assert_eq!(st, 201, "{p}");

    // (what, reflector source, attack reply, legitimate reply of the same protocol)
    let cases: Vec<(&str, &str, Vec<u8>, Option<Vec<u8>>)> = vec![
        ("ntp monlist (440 B) vs mode 4 (48 B)", "198.51.100.123:123", ntp_monlist_reply(), Some(ntp_mode4_reply())),
        ("ntp mode 6 vs mode 4", "198.51.100.123:123", ntp_mode6_reply(), Some(ntp_mode4_reply())),
        ("dns ANY (> 1,000 B) vs small A answer", "198.51.100.53:53", dns_any_answer(), Some(dns_a_answer())),
        ("snmp large GetResponse vs small one", "198.51.100.7:161", snmp_get_response(40), Some(snmp_get_response(2))),
        ("memcached STAT", "198.51.100.7:11211", memcached_stat_reply(), None),
        ("memcached VALUE", "198.51.100.7:11211", memcached_value_reply(), None),
        ("ssdp 200 OK", "198.51.100.7:1900", ssdp_ok_reply(), None),
        ("cldap searchResEntry", "198.51.100.7:389", cldap_search_res_entry(), None),
        ("chargen", "198.51.100.7:19", chargen_reply(), None),
        ("qotd", "198.51.100.7:17", qotd_reply(), None),
    ];
    let mut port = 42000;
    for (what, src, attack, legit) in &cases {
        port += 2;
        assert_eq!(deliver(&lab, src, port, attack, 50), 0, "{what}: attack replies must be dropped");
        if let Some(legit) = legit {
            assert_eq!(deliver(&lab, src, port + 1, legit, 20), 20, "{what}: legitimate replies must arrive");
        }
    }

    // The vectors and their signatures are listed by the API and the CLI.
    let (_, v) = d.call("GET", "/v1/vectors", None).unwrap();
    let ntp = v["vectors"].as_array().unwrap().iter().find(|x| x["name"] == "ntp").unwrap().clone();
    assert!(ntp["signature"].as_str().unwrap().contains("mode 7"), "{ntp}");
    assert_eq!(ntp["default_rule"]["signature"], true);
    assert_eq!(ntp["amplification"], "556.9");
    let out = d.cli(&["vectors"], None).unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("SIGNATURE MATCHES") && table.contains("HTTP/1.1 200 OK"), "{table}");

    // A signature on a vector that has none is refused.
    let (st, e) = d
        .call("POST", "/v1/policies", Some(r#"{"victim": "203.0.113.20", "rules": {"tftp": {"action": "drop", "signature": true}}}"#))
        .unwrap();
    assert_eq!(st, 400, "{e}");
    assert!(e["error"]["message"].as_str().unwrap().contains("no reflection signature"));
}
