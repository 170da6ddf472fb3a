//! The API over TLS, off the box: the daemon in the lab's edge namespace
//! listens on 203.0.113.1 (not loopback) with `[tls]`, and curl, openssl and
//! the CLI reach it from the wan namespace. Certificates are made here with
//! rcgen: a CA, server certificates for 203.0.113.1 (two, for the reload),
//! an expired one, a client certificate from the CA and one from another CA.

use std::{
    io::{Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::Arc,
    time::{Duration, Instant},
};

use ampguard_tests::{
    daemon::{ampguard_bin, flood_while, Daemon, Flood},
    lab::{Lab, Netns},
    require_root,
};
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose};

const ADDR: &str = "203.0.113.1:9470";
const API: &str = "https://203.0.113.1:9470";

/// A certificate and its key, as PEM files.
struct Pem {
    cert: PathBuf,
    key: PathBuf,
    der: Vec<u8>,
}

struct Ca {
    params: CertificateParams,
    key: KeyPair,
    pem: Pem,
}

fn write(dir: &Path, name: &str, cert: &rcgen::Certificate, key: &KeyPair) -> Pem {
    let (c, k) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    Pem { cert: c, key: k, der: cert.der().to_vec() }
}

fn make_ca(dir: &Path, name: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, format!("ampguard test {name}"));
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let cert = params.self_signed(&key).unwrap();
    let pem = write(dir, name, &cert, &key);
    Ca { params, key, pem }
}

/// A leaf signed by `ca`: a server certificate for the lab's edge address and
/// 127.0.0.1/localhost, or a client certificate; `expired` makes it 2020's.
fn leaf(dir: &Path, name: &str, ca: &Ca, client: bool, expired: bool) -> Pem {
    let key = KeyPair::generate().unwrap();
    let sans = if client { vec![] } else { vec!["203.0.113.1".to_string(), "127.0.0.1".to_string(), "localhost".to_string()] };
    let mut params = CertificateParams::new(sans).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = vec![if client { ExtendedKeyUsagePurpose::ClientAuth } else { ExtendedKeyUsagePurpose::ServerAuth }];
    if expired {
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    }
    let cert = params.signed_by(&key, &Issuer::from_params(&ca.params, &ca.key)).unwrap();
    write(dir, name, &cert, &key)
}

struct Pki {
    dir: PathBuf,
    ca: Ca,
    other_ca: Ca,
    server: Pem,
    server2: Pem,
    expired: Pem,
    client: Pem,
    other_client: Pem,
}

impl Pki {
    fn new(tag: &str) -> Pki {
        let dir = std::env::temp_dir().join(format!("ag-tls-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let ca = make_ca(&dir, "ca");
        let other_ca = make_ca(&dir, "other-ca");
        let server = leaf(&dir, "server", &ca, false, false);
        let server2 = leaf(&dir, "server2", &ca, false, false);
        let expired = leaf(&dir, "expired", &ca, false, true);
        let client = leaf(&dir, "client", &ca, true, false);
        let other_client = leaf(&dir, "other-client", &other_ca, true, false);
        Pki { dir, ca, other_ca, server, server2, expired, client, other_client }
    }

    /// The files the daemon's config names; `install` copies a pair there.
    fn live(&self) -> (PathBuf, PathBuf) {
        (self.dir.join("live.crt"), self.dir.join("live.key"))
    }

    fn install(&self, p: &Pem) {
        let (c, k) = self.live();
        std::fs::copy(&p.cert, c).unwrap();
        std::fs::copy(&p.key, k).unwrap();
    }

    fn tls_section(&self, client_ca: bool) -> String {
        let (c, k) = self.live();
        let mut s = format!("[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n", c.display(), k.display());
        if client_ca {
            s.push_str(&format!("client_ca_file = \"{}\"\n", self.ca.pem.cert.display()));
        }
        s
    }

    /// The tests' own client (Daemon::call): trusting the CA, with the client certificate if `client`.
    fn agent_tls(&self, client: bool) -> ureq::tls::TlsConfig {
        let ca = ureq::tls::Certificate::from_der(&self.ca.pem.der).to_owned();
        let mut b = ureq::tls::TlsConfig::builder().root_certs(ureq::tls::RootCerts::new_with_certs(&[ca]));
        if client {
            let cert = ureq::tls::Certificate::from_der(&self.client.der).to_owned();
            let key = ureq::tls::PrivateKey::from_pem(&std::fs::read(&self.client.key).unwrap()).unwrap();
            b = b.client_cert(Some(ureq::tls::ClientCert::new_with_certs(&[cert], key)));
        }
        b.build()
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start(lab: &Lab, pki: &Pki, extra: &str, client_ca: bool) -> Daemon {
    let extra = format!("{extra}\n{}", pki.tls_section(client_ca));
    // Failed handshakes are DEBUG lines of the accept loop.
    let env = [("RUST_LOG", "info,ampguard::daemon::server=debug")];
    Daemon::start_at(lab, &extra, &["--listen", ADDR], &env, API, Some(pki.agent_tls(client_ca))).expect("daemon with TLS")
}

fn in_ns(ns: &Netns, prog: &str, args: &[&str]) -> Output {
    Command::new("nsenter").arg(format!("--net=/var/run/netns/{}", ns.name)).arg(prog).args(args).output().expect("nsenter")
}

/// curl from the wan namespace: (HTTP status, 0 when no answer; curl's exit code; stderr).
fn curl(lab: &Lab, path: &str, opts: &[&str]) -> (u16, i32, String) {
    let url = format!("{API}{path}");
    let mut args = vec!["-sS", "--max-time", "10", "-o", "/dev/null", "-w", "%{http_code}"];
    args.extend_from_slice(opts);
    args.push(&url);
    let out = in_ns(&lab.wan, "curl", &args);
    let code = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0);
    (code, out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// `ampguard ARGS` from the wan namespace against the daemon's HTTPS API.
fn cli(lab: &Lab, d: &Daemon, args: &[&str]) -> Output {
    Command::new("nsenter")
        .arg(format!("--net=/var/run/netns/{}", lab.wan.name))
        .arg(ampguard_bin())
        .args(args)
        .env("AMPGUARD_API", API)
        .env("AMPGUARD_TOKEN_FILE", &d.token_file)
        .env_remove("AMPGUARD_CA_FILE")
        .env_remove("AMPGUARD_CERT_FILE")
        .env_remove("AMPGUARD_KEY_FILE")
        .output()
        .expect("ampguard")
}

fn stderr(o: &Output) -> String {
    let e = String::from_utf8_lossy(&o.stderr).into_owned();
    // Shown with --nocapture: what an operator reads.
    eprintln!("cli stderr: {}", e.trim());
    e
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn https_with_the_right_ca_only_and_the_token_still_required() {
    require_root();
    let lab = Lab::new("tls-ca").expect("lab");
    let pki = Pki::new("ca");
    pki.install(&pki.server);
    let d = start(&lab, &pki, "", false);
    assert!(d.log().contains("API listening on https://203.0.113.1:9470"), "{}", d.log());
    let auth = format!("Authorization: Bearer {}", d.token);
    let ca = s(&pki.ca.pem.cert);

    // curl, from the other namespace: the right CA works, with the token.
    assert_eq!(curl(&lab, "/v1/status", &["--cacert", ca, "-H", &auth]).0, 200);
    assert_eq!(curl(&lab, "/v1/status", &["--cacert", ca]).0, 401, "TLS does not replace the token");
    // A wrong CA, or the system's roots: refused (curl's 60: the peer's certificate cannot be authenticated).
    let (code, exit, err) = curl(&lab, "/healthz", &["--cacert", s(&pki.other_ca.pem.cert)]);
    assert_eq!((code, exit), (0, 60), "{err}");
    assert_eq!(curl(&lab, "/healthz", &[]).1, 60);
    // Plain HTTP to the TLS port gets no HTTP answer.
    let out =
        in_ns(&lab.wan, "curl", &["-sS", "--max-time", "5", "-o", "/dev/null", "-w", "%{http_code}", "http://203.0.113.1:9470/healthz"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "000");

    // The CLI: --ca-file works; without it, or with the other CA, a one-line error that names the flag.
    let ok = cli(&lab, &d, &["status", "--ca-file", ca]);
    assert!(ok.status.success(), "{}", stderr(&ok));
    assert!(String::from_utf8_lossy(&ok.stdout).contains("edge0"));
    let ok = Command::new("nsenter")
        .arg(format!("--net=/var/run/netns/{}", lab.wan.name))
        .arg(ampguard_bin())
        .args(["policy", "add", "203.0.113.10", "--drop", "memcached"])
        .env("AMPGUARD_API", API)
        .env("AMPGUARD_TOKEN_FILE", &d.token_file)
        .env("AMPGUARD_CA_FILE", ca)
        .output()
        .unwrap();
    assert!(ok.status.success(), "AMPGUARD_CA_FILE: {}", stderr(&ok));
    for args in [&["status"][..], &["status", "--ca-file", s(&pki.other_ca.pem.cert)]] {
        let o = cli(&lab, &d, args);
        assert!(!o.status.success());
        let e = stderr(&o);
        assert!(e.contains("the server's certificate is not trusted: pass --ca-file"), "{args:?}: {e}");
        assert_eq!(e.trim().lines().count(), 1, "{e}");
    }
    let o = cli(&lab, &d, &["status", "--api", "http://203.0.113.1:9470"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("use --api https://"), "{}", stderr(&o));
}

#[test]
fn an_expired_server_certificate_is_refused() {
    require_root();
    let lab = Lab::new("tls-exp").expect("lab");
    let pki = Pki::new("exp");
    pki.install(&pki.expired);
    // The daemon serves what it is given (it does not judge dates); clients refuse it.
    let insecure = ureq::tls::TlsConfig::builder().disable_verification(true).build();
    let extra = pki.tls_section(false);
    let d = Daemon::start_at(&lab, &extra, &["--listen", ADDR], &[], API, Some(insecure)).expect("daemon");
    let (code, exit, err) = curl(&lab, "/healthz", &["--cacert", s(&pki.ca.pem.cert)]);
    assert_eq!((code, exit), (0, 60), "{err}");
    assert!(err.contains("expired"), "{err}");
    let o = cli(&lab, &d, &["status", "--ca-file", s(&pki.ca.pem.cert)]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("the server's certificate has expired"), "{}", stderr(&o));
}

#[test]
fn client_certificates_from_the_client_ca_only_and_beside_the_token() {
    require_root();
    let lab = Lab::new("tls-mtls").expect("lab");
    let pki = Pki::new("mtls");
    pki.install(&pki.server);
    let d = start(&lab, &pki, "", true);
    let auth = format!("Authorization: Bearer {}", d.token);
    let ca = s(&pki.ca.pem.cert);
    let (cert, key) = (s(&pki.client.cert), s(&pki.client.key));
    let (other_cert, other_key) = (s(&pki.other_client.cert), s(&pki.other_client.key));

    assert_eq!(curl(&lab, "/v1/status", &["--cacert", ca, "--cert", cert, "--key", key, "-H", &auth]).0, 200);
    assert_eq!(curl(&lab, "/v1/status", &["--cacert", ca, "--cert", cert, "--key", key]).0, 401, "mTLS adds to the token");
    let (code, _, err) = curl(&lab, "/healthz", &["--cacert", ca, "-H", &auth]);
    assert_eq!(code, 0, "no client certificate: no HTTP answer at all ({err})");
    let (code, _, err) = curl(&lab, "/healthz", &["--cacert", ca, "--cert", other_cert, "--key", other_key, "-H", &auth]);
    assert_eq!(code, 0, "a client certificate of another CA: no HTTP answer ({err})");
    let failed = d.log().lines().filter(|l| l.contains("TLS handshake failed") && l.contains("peer=198.51.100.1:")).count();
    assert!(failed >= 2, "both refused handshakes are DEBUG lines naming the client:\n{}", d.log());

    let ok = cli(&lab, &d, &["status", "--ca-file", ca, "--cert", cert, "--key", key]);
    assert!(ok.status.success(), "{}", stderr(&ok));
    let o = cli(&lab, &d, &["status", "--ca-file", ca]);
    assert!(stderr(&o).contains("the daemon requires a client certificate") && stderr(&o).contains("--cert and --key"), "{}", stderr(&o));
    let o = cli(&lab, &d, &["status", "--ca-file", ca, "--cert", other_cert, "--key", other_key]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("the daemon refused the client certificate given with --cert"), "{}", stderr(&o));
    let o = cli(&lab, &d, &["status", "--ca-file", ca, "--cert", cert]);
    assert!(!o.status.success() && stderr(&o).contains("--key"), "--cert needs --key: {}", stderr(&o));
}

/// A TLS connection of our own, kept open across a reload.
struct KeptConnection(rustls::StreamOwned<rustls::ClientConnection, TcpStream>);

impl KeptConnection {
    fn open(ns: &Netns, ca_der: &[u8]) -> KeptConnection {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(rustls::pki_types::CertificateDer::from(ca_der.to_vec())).unwrap();
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from("203.0.113.1").unwrap();
        let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let tcp = ns.enter(|| TcpStream::connect(ADDR)).unwrap().unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        KeptConnection(rustls::StreamOwned::new(conn, tcp))
    }

    /// GET /healthz on this connection (keep-alive): the status line.
    fn healthz(&mut self) -> String {
        self.0.write_all(b"GET /healthz HTTP/1.1\r\nHost: 203.0.113.1\r\n\r\n").unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        // Headers, then Content-Length bytes of body.
        loop {
            let n = self.0.read(&mut buf).expect("a response on the kept connection");
            assert!(n > 0, "the kept connection was closed");
            got.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&got).into_owned();
            if let Some(end) = text.find("\r\n\r\n") {
                let len: usize = text[..end]
                    .lines()
                    .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
                    .unwrap_or(0);
                if got.len() >= end + 4 + len {
                    return text.lines().next().unwrap().to_string();
                }
            }
        }
    }

    fn peer(&self) -> Vec<u8> {
        self.0.conn.peer_certificates().unwrap()[0].to_vec()
    }
}

/// The SHA-256 fingerprint of the certificate a new connection from `ns` gets, read by openssl.
fn served_fingerprint(lab: &Lab, ca: &Path) -> String {
    let script = format!(
        "openssl s_client -connect {ADDR} -CAfile {} -verify_return_error </dev/null 2>/dev/null | openssl x509 -noout -fingerprint -sha256",
        ca.display()
    );
    let out = in_ns(&lab.wan, "sh", &["-c", &script]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn file_fingerprint(cert: &Path) -> String {
    let out = Command::new("openssl").args(["x509", "-noout", "-fingerprint", "-sha256", "-in", s(cert)]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn wait_for_log(d: &Daemon, text: &str, count: usize) {
    let t = Instant::now();
    while d.log().matches(text).count() < count {
        assert!(t.elapsed() < Duration::from_secs(15), "no {count} x {text:?} in the log:\n{}", d.log());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sighup_reloads_the_certificate_keeps_open_connections_and_enforcement_and_refuses_a_broken_key() {
    require_root();
    let lab = Lab::new("tls-hup").expect("lab");
    let pki = Pki::new("hup");
    pki.install(&pki.server);
    // The kept connection idles between its requests while openssl and curl run: room for a loaded machine.
    let d = start(&lab, &pki, "header_timeout_secs = 30", false);
    let (st, v) =
        d.call("POST", "/v1/policies", Some(r#"{"victim": "203.0.113.10/32", "rules": {"memcached": {"action": "drop"}}}"#)).unwrap();
    assert_eq!(st, 201, "{v}");
    let pid = d.pid().unwrap() as i32;
    let before = file_fingerprint(&pki.server.cert);
    assert!(before.contains("Fingerprint="), "{before}");
    assert_eq!(served_fingerprint(&lab, &pki.ca.pem.cert), before);

    let flood = Flood { burst: 20, gap: Duration::from_millis(5), max: Duration::from_secs(20) };
    let (flowed, ()) = flood_while(&lab, &[("198.51.100.7:11211", "203.0.113.10:40000")], flood, || {
        let mut kept = KeptConnection::open(&lab.wan, &pki.ca.pem.der);
        assert!(kept.healthz().contains(" 200 "));
        assert_eq!(kept.peer(), pki.server.der);

        // A new certificate and key, SIGHUP: new connections get it.
        pki.install(&pki.server2);
        unsafe { libc::kill(pid, libc::SIGHUP) };
        wait_for_log(&d, "TLS certificate, key and client CA reloaded", 1);
        let after = file_fingerprint(&pki.server2.cert);
        assert_ne!(after, before);
        assert_eq!(served_fingerprint(&lab, &pki.ca.pem.cert), after);
        assert!(d.log().contains(after.split('=').nth(1).unwrap()), "the log names the new fingerprint:\n{}", d.log());
        // The connection opened before still works, on its old certificate.
        assert!(kept.healthz().contains(" 200 "));
        assert_eq!(kept.peer(), pki.server.der);

        // A key that is not the certificate's, then one that is not PEM: refused, the log names the file, server2 stays.
        std::fs::copy(&pki.server.key, pki.live().1).unwrap();
        unsafe { libc::kill(pid, libc::SIGHUP) };
        wait_for_log(&d, "TLS reload refused", 1);
        assert!(d.log().contains(&format!("tls.key_file {} does not belong", pki.live().1.display())), "{}", d.log());
        std::fs::write(pki.live().1, "not a key\n").unwrap();
        unsafe { libc::kill(pid, libc::SIGHUP) };
        wait_for_log(&d, "TLS reload refused", 2);
        assert_eq!(served_fingerprint(&lab, &pki.ca.pem.cert), after);
        assert_eq!(curl(&lab, "/healthz", &["--cacert", s(&pki.ca.pem.cert)]).0, 200);
        assert!(kept.healthz().contains(" 200 "));
    });
    assert!(flowed[0].sent >= 200, "the flood ran through the reloads: {flowed:?}");
    assert_eq!(flowed[0].arrived, 0, "memcached from the reflector is dropped through every reload: {flowed:?}");
    assert_eq!(d.call("GET", "/v1/policies", None).unwrap().1["policies"].as_array().unwrap().len(), 1);
}

#[test]
fn a_connection_that_never_finishes_its_handshake_holds_its_permit_only_until_header_timeout() {
    require_root();
    let lab = Lab::new("tls-hs").expect("lab");
    let pki = Pki::new("hs");
    pki.install(&pki.server);
    let d = start(&lab, &pki, "max_connections = 2\nheader_timeout_secs = 3", false);
    // Both permits held by connections that send nothing.
    let idle: Vec<TcpStream> = (0..2).map(|_| lab.wan.enter(|| TcpStream::connect(ADDR)).unwrap().unwrap()).collect();
    let t = Instant::now();
    let (code, _, err) = curl(&lab, "/healthz", &["--cacert", s(&pki.ca.pem.cert)]);
    let waited = t.elapsed();
    assert_eq!(code, 200, "{err}");
    assert!(waited >= Duration::from_millis(2000), "a third connection waited for a permit ({waited:?})");
    assert!(waited < Duration::from_secs(8), "the stalled handshakes were closed at header_timeout_secs ({waited:?})");
    for mut c in idle {
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut b = [0u8; 16];
        assert!(matches!(c.read(&mut b), Ok(0) | Err(_)), "the daemon closed it");
    }
    drop(d);
}

#[test]
fn plain_http_off_loopback_only_with_the_explicit_flag() {
    require_root();
    let lab = Lab::new("tls-plain").expect("lab");
    let e = Daemon::start_with_args(&lab, "", &["--listen", ADDR], &[]).err().expect("refused").to_string();
    assert!(e.contains("listen = \"203.0.113.1:9470\" is not a loopback address"), "{e}");
    assert!(e.contains("tls.cert_file") && e.contains("allow_plaintext_off_loopback"), "{e}");
    let d = Daemon::start_at(&lab, "[tls]\nallow_plaintext_off_loopback = true", &["--listen", ADDR], &[], "http://203.0.113.1:9470", None)
        .expect("starts with the flag");
    assert!(d.log().contains("plain HTTP off loopback"), "{}", d.log());
    let out =
        in_ns(&lab.wan, "curl", &["-sS", "--max-time", "5", "-o", "/dev/null", "-w", "%{http_code}", "http://203.0.113.1:9470/healthz"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "200");
    // SIGHUP without [tls]: logged, and it no longer ends the daemon (its default action).
    unsafe { libc::kill(d.pid().unwrap() as i32, libc::SIGHUP) };
    wait_for_log(&d, "SIGHUP: nothing to reload", 1);
    assert_eq!(d.call("GET", "/healthz", None).unwrap().0, 200);
    // https:// against it: the CLI says the daemon speaks no TLS.
    let o = cli(&lab, &d, &["status"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("does not speak TLS"), "{}", stderr(&o));
}
