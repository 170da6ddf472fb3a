//! UDP payloads built byte by byte to the protocols' formats: the amplified
//! replies reflection attacks are made of, and the ordinary replies a victim
//! must keep receiving. Used by the signature tests, the differential test,
//! the demo and the benchmarks.

/// A DNS name in wire format.
fn qname(name: &str) -> Vec<u8> {
    let mut v = Vec::new();
    for label in name.split('.').filter(|l| !l.is_empty()) {
        v.push(label.len() as u8);
        v.extend_from_slice(label.as_bytes());
    }
    v.push(0);
    v
}

/// A DNS response (RFC 1035 4.1): one question, `answers` A records of the
/// name (compressed pointer to the question), QR and RA set.
pub fn dns_response(name: &str, qtype: u16, answers: u16, extra_rdata: usize) -> Vec<u8> {
    let mut v = vec![0x4a, 0x21, 0x81, 0x80];
    v.extend_from_slice(&1u16.to_be_bytes()); // QDCOUNT
    v.extend_from_slice(&answers.to_be_bytes()); // ANCOUNT
    v.extend_from_slice(&[0, 0, 0, 0]); // NSCOUNT, ARCOUNT
    v.extend(qname(name));
    v.extend_from_slice(&qtype.to_be_bytes());
    v.extend_from_slice(&1u16.to_be_bytes()); // IN
    for i in 0..answers {
        let (t, rdata): (u16, Vec<u8>) = if extra_rdata > 0 && i == 0 {
            (16, {
                let mut r = vec![extra_rdata.min(255) as u8];
                r.extend(std::iter::repeat_n(b'x', extra_rdata.min(255)));
                r
            })
        } else {
            (1, vec![192, 0, 2, (i % 250) as u8 + 1])
        };
        v.extend_from_slice(&[0xc0, 0x0c]); // pointer to the question name
        v.extend_from_slice(&t.to_be_bytes());
        v.extend_from_slice(&1u16.to_be_bytes());
        v.extend_from_slice(&300u32.to_be_bytes());
        v.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        v.extend(rdata);
    }
    v
}

/// An ordinary answer: one A record (~45 bytes).
pub fn dns_a_answer() -> Vec<u8> {
    dns_response("www.example.com", 1, 1, 0)
}

/// An ANY answer padded with TXT data to over 1,000 bytes: the classic DNS amplification reply.
pub fn dns_any_answer() -> Vec<u8> {
    let mut v = dns_response("example.com", 255, 5, 255);
    // More TXT records until it is large.
    let mut extra = 0u16;
    while v.len() < 1100 {
        v.extend_from_slice(&[0xc0, 0x0c, 0, 16, 0, 1, 0, 0, 1, 44, 0, 201, 200]);
        v.extend(std::iter::repeat_n(b'y', 200));
        extra += 1;
    }
    let an = u16::from_be_bytes([v[6], v[7]]) + extra;
    v[6..8].copy_from_slice(&an.to_be_bytes());
    v
}

/// A DNS query (QR clear).
pub fn dns_query() -> Vec<u8> {
    let mut v = dns_response("www.example.com", 1, 0, 0);
    v[2] = 0x01;
    v[3] = 0x00;
    v
}

/// An NTP mode 4 server reply, 48 bytes (RFC 5905 7.3): LI 0, VN 4, mode 4.
pub fn ntp_mode4_reply() -> Vec<u8> {
    let mut v = vec![0u8; 48];
    v[0] = 0x24;
    v[1] = 2; // stratum
    v[2] = 6; // poll
    v[3] = 0xec; // precision
    v[12..16].copy_from_slice(b"GPS\0");
    v
}

/// An NTP mode 7 MON_GETLIST_1 response (ntpd's monlist): the 8-byte header
/// (response bit, implementation 3 = XNTPD, request 42), then 6 entries of
/// 72 bytes: 440 bytes, the figure published for monlist replies.
pub fn ntp_monlist_reply() -> Vec<u8> {
    let mut v = vec![0xd7, 0x00, 0x03, 0x2a, 0x00, 0x06, 0x00, 0x48];
    for i in 0..6u8 {
        let mut e = vec![0u8; 72];
        e[16..20].copy_from_slice(&[198, 51, 100, i + 1]);
        v.extend(e);
    }
    v
}

/// An NTP mode 6 (control) READVAR response.
pub fn ntp_mode6_reply() -> Vec<u8> {
    let mut v = vec![0x16, 0x82, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00];
    let text = b"version=\"ntpd 4.2.6p5\", processor=\"x86_64\", system=\"Linux\", leap=00, stratum=2";
    v.extend_from_slice(&(text.len() as u16).to_be_bytes());
    v.extend_from_slice(text);
    v
}

/// memcached binary-safe UDP frame header (request id, sequence 0, 1 datagram, reserved).
fn memcached_frame(body: &[u8]) -> Vec<u8> {
    let mut v = vec![0x12, 0x34, 0, 0, 0, 1, 0, 0];
    v.extend_from_slice(body);
    v
}

/// A `stats` reply: many STAT lines (~1,200 bytes).
pub fn memcached_stat_reply() -> Vec<u8> {
    let mut body = Vec::new();
    for (k, val) in [("pid", "2812"), ("uptime", "2534911"), ("time", "1764090000"), ("version", "1.4.25"), ("curr_connections", "10")] {
        body.extend_from_slice(format!("STAT {k} {val}\r\n").as_bytes());
    }
    while body.len() < 1200 {
        body.extend_from_slice(b"STAT evictions 0\r\n");
    }
    body.extend_from_slice(b"END\r\n");
    memcached_frame(&body)
}

/// A `get` reply with a large value (the 10,000x-51,000x case).
pub fn memcached_value_reply() -> Vec<u8> {
    let mut body = b"VALUE injected 0 1000\r\n".to_vec();
    body.extend(std::iter::repeat_n(b'A', 1000));
    body.extend_from_slice(b"\r\nEND\r\n");
    memcached_frame(&body)
}

/// An SSDP M-SEARCH reply.
pub fn ssdp_ok_reply() -> Vec<u8> {
    b"HTTP/1.1 200 OK\r\nCACHE-CONTROL: max-age=1800\r\nEXT:\r\nLOCATION: http://192.0.2.1:1900/rootDesc.xml\r\nSERVER: Linux/3.14 UPnP/1.0 IpBridge/1.26.0\r\nST: upnp:rootdevice\r\nUSN: uuid:2f402f80-da50-11e1-9b23-001788255acc::upnp:rootdevice\r\n\r\n".to_vec()
}

/// A CLDAP searchResEntry for the rootDSE (BER, long-form length).
pub fn cldap_search_res_entry() -> Vec<u8> {
    // protocolOp [APPLICATION 4] with an empty objectName and one attribute list.
    let mut attrs = Vec::new();
    for (name, val) in
        [("currentTime", "20261125170000.0Z"), ("dnsHostName", "dc1.example.com"), ("defaultNamingContext", "DC=example,DC=com")]
    {
        let mut a = vec![0x04, name.len() as u8];
        a.extend_from_slice(name.as_bytes());
        a.extend_from_slice(&[0x31, (val.len() + 2) as u8, 0x04, val.len() as u8]);
        a.extend_from_slice(val.as_bytes());
        attrs.push(0x30);
        attrs.push(a.len() as u8);
        attrs.extend(a);
    }
    while attrs.len() < 2500 {
        attrs.extend_from_slice(&[0x30, 0x0a, 0x04, 0x03, b'x', b'y', b'z', 0x31, 0x03, 0x04, 0x01, b'1']);
    }
    let mut op = vec![0x04, 0x00, 0x30, 0x82];
    op.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
    op.extend(attrs);
    let mut msg = vec![0x02, 0x01, 0x01, 0x64, 0x82];
    msg.extend_from_slice(&(op.len() as u16).to_be_bytes());
    msg.extend(op);
    let mut v = vec![0x30, 0x82];
    v.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    v.extend(msg);
    v
}

/// An SNMPv2c GetResponse (PDU tag 0xa2) with `varbinds` OCTET STRING values.
pub fn snmp_get_response(varbinds: usize) -> Vec<u8> {
    let mut vbs = Vec::new();
    for i in 0..varbinds {
        let oid = [0x06, 0x08, 0x2b, 6, 1, 2, 1, 1, 1, (i % 100) as u8];
        let val = [0x04, 0x20].iter().copied().chain(std::iter::repeat_n(b'v', 32));
        let mut vb = oid.to_vec();
        vb.extend(val);
        vbs.push(0x30);
        vbs.push(vb.len() as u8);
        vbs.extend(vb);
    }
    let mut pdu_body = vec![0x02, 0x01, 0x07, 0x02, 0x01, 0x00, 0x02, 0x01, 0x00, 0x30, 0x82];
    pdu_body.extend_from_slice(&(vbs.len() as u16).to_be_bytes());
    pdu_body.extend(vbs);
    let mut pdu = vec![0xa2, 0x82];
    pdu.extend_from_slice(&(pdu_body.len() as u16).to_be_bytes());
    pdu.extend(pdu_body);
    let mut msg = vec![0x02, 0x01, 0x01, 0x04, 0x06];
    msg.extend_from_slice(b"public");
    msg.extend(pdu);
    let mut v = vec![0x30, 0x82];
    v.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    v.extend(msg);
    v
}

/// chargen: a line of the rotating character pattern (RFC 864), repeated.
pub fn chargen_reply() -> Vec<u8> {
    (0..1000u32).map(|i| b' ' + (i % 95) as u8).collect()
}

/// qotd (RFC 865).
pub fn qotd_reply() -> Vec<u8> {
    b"\"The only way to do great work is to love what you do.\" Steve Jobs\r\n".to_vec()
}
