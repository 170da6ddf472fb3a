//! The API over TLS: the `[tls]` config section, loading the certificate,
//! key and client CA (rustls, ring provider, TLS 1.2 and 1.3), and the
//! acceptor the accept loop asks for each new connection, swapped on SIGHUP.
//!
//! A reload builds a complete new rustls config from the files; only when
//! every file reads, parses and the key matches the certificate does it
//! replace the old one. Connections already open keep the config they were
//! accepted with; new handshakes use the new one. A bad file leaves the old
//! config serving and says which file is wrong.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
};

use rustls::{
    crypto::CryptoProvider,
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
    server::WebPkiClientVerifier,
    RootCertStore, ServerConfig,
};
use serde::Deserialize;

/// `[tls]` in the config.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// The server's certificate chain (PEM, leaf first). With `key_file`, the API speaks HTTPS only.
    pub cert_file: Option<PathBuf>,
    /// The certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<PathBuf>,
    /// CA certificates (PEM) for client certificates: when set, every
    /// connection must present a certificate signed by one of them, and
    /// requests still need their bearer token (mTLS adds to the token).
    pub client_ca_file: Option<PathBuf>,
    /// Serve plain HTTP on a `listen` address that is not loopback (the
    /// token then crosses the network in the clear). Off by default: the
    /// daemon refuses to start so.
    pub allow_plaintext_off_loopback: bool,
}

impl TlsConfig {
    /// Whether the API speaks TLS.
    pub fn enabled(&self) -> bool {
        self.cert_file.is_some()
    }

    /// The checks that need no file: both halves of the key pair, a client
    /// CA only with TLS, and no plain HTTP off loopback unless allowed.
    pub fn validate(&self, listen: SocketAddr) -> Result<(), String> {
        match (&self.cert_file, &self.key_file) {
            (Some(_), None) => return Err("tls.cert_file is set but tls.key_file is not: give the certificate's private key too".into()),
            (None, Some(_)) => return Err("tls.key_file is set but tls.cert_file is not: give the certificate too".into()),
            _ => {}
        }
        if self.client_ca_file.is_some() && !self.enabled() {
            return Err(
                "tls.client_ca_file needs tls.cert_file and tls.key_file: client certificates are checked in a TLS handshake".into()
            );
        }
        if !self.enabled() && !is_loopback(listen) && !self.allow_plaintext_off_loopback {
            return Err(format!(
                "listen = \"{listen}\" is not a loopback address and the API has no TLS: the bearer token would cross the network \
                 in the clear. Set tls.cert_file and tls.key_file (README: \"The API over TLS\"), or listen on 127.0.0.1, \
                 or set tls.allow_plaintext_off_loopback = true if the network path is protected otherwise"
            ));
        }
        Ok(())
    }
}

/// 127.0.0.0/8, ::1, and IPv4-mapped loopback.
pub fn is_loopback(addr: SocketAddr) -> bool {
    addr.ip().to_canonical().is_loopback()
}

/// Which file of `[tls]` is wrong, and how.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read tls.{key} {}: {source}", path.display())]
    Read { key: &'static str, path: PathBuf, source: std::io::Error },
    #[error("tls.{key} {} is not valid: {message}", path.display())]
    Invalid { key: &'static str, path: PathBuf, message: String },
    #[error("tls.key_file {} does not belong to the certificate in tls.cert_file {}: {message}", key.display(), cert.display())]
    Mismatch { cert: PathBuf, key: PathBuf, message: String },
}

/// The provider every TLS config of the daemon and the CLI uses (ring:
/// builds with gcc alone; aws-lc-rs would need cmake).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Every certificate in a PEM file (at least one).
pub fn read_certs(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = std::fs::read(path).map_err(|source| TlsError::Read { key, path: path.into(), source })?;
    let invalid = |message: String| TlsError::Invalid { key, path: path.into(), message };
    let certs = CertificateDer::pem_slice_iter(&pem).collect::<Result<Vec<_>, _>>().map_err(|e| invalid(format!("{e}")))?;
    if certs.is_empty() {
        return Err(invalid("no PEM certificate (-----BEGIN CERTIFICATE-----) in it".into()));
    }
    Ok(certs)
}

/// The private key of a PEM file.
pub fn read_key(key: &'static str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = std::fs::read(path).map_err(|source| TlsError::Read { key, path: path.into(), source })?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError::Invalid {
        key,
        path: path.into(),
        message: match e {
            rustls::pki_types::pem::Error::NoItemsFound => "no PEM private key (-----BEGIN PRIVATE KEY-----, RSA or EC) in it".into(),
            e => e.to_string(),
        },
    })
}

/// What a loaded config serves: the leaf's SHA-256 fingerprint (as
/// `openssl x509 -noout -fingerprint -sha256` prints it) and whether client
/// certificates are required.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Loaded {
    pub fingerprint: String,
    pub client_auth: bool,
}

pub fn fingerprint(der: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, der);
    d.as_ref().iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":")
}

/// Build a rustls server config from the files `cfg` names (which must have
/// TLS enabled).
pub fn load(cfg: &TlsConfig) -> Result<(Arc<ServerConfig>, Loaded), TlsError> {
    let (cert_path, key_path) = match (&cfg.cert_file, &cfg.key_file) {
        (Some(c), Some(k)) => (c, k),
        _ => unreachable!("load() is called with TLS configured (validate checks both files are given)"),
    };
    let chain = read_certs("cert_file", cert_path)?;
    let key = read_key("key_file", key_path)?;
    let provider = provider();
    let builder =
        ServerConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions().expect("ring supports TLS 1.2 and 1.3");
    let builder = match &cfg.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(ca_path) => {
            let mut roots = RootCertStore::empty();
            for c in read_certs("client_ca_file", ca_path)? {
                roots.add(c).map_err(|e| TlsError::Invalid { key: "client_ca_file", path: ca_path.clone(), message: e.to_string() })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsError::Invalid { key: "client_ca_file", path: ca_path.clone(), message: e.to_string() })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let fingerprint = fingerprint(&chain[0]);
    let mut config = builder.with_single_cert(chain, key).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => {
            TlsError::Mismatch { cert: cert_path.clone(), key: key_path.clone(), message: "its public key is not the certificate's".into() }
        }
        e => TlsError::Invalid { key: "key_file", path: key_path.clone(), message: e.to_string() },
    })?;
    // The API speaks HTTP/1.1 only (daemon/server.rs).
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((Arc::new(config), Loaded { fingerprint, client_auth: cfg.client_ca_file.is_some() }))
}

/// The TLS config new connections are accepted with, replaced by `reload`.
pub struct Acceptor {
    cfg: TlsConfig,
    current: RwLock<(tokio_rustls::TlsAcceptor, Loaded)>,
}

impl Acceptor {
    pub fn new(cfg: TlsConfig) -> Result<Self, TlsError> {
        let (config, loaded) = load(&cfg)?;
        Ok(Self { cfg, current: RwLock::new((config.into(), loaded)) })
    }

    /// The acceptor for a connection accepted now.
    pub fn current(&self) -> tokio_rustls::TlsAcceptor {
        self.current.read().expect("not poisoned").0.clone()
    }

    pub fn loaded(&self) -> Loaded {
        self.current.read().expect("not poisoned").1.clone()
    }

    /// Read the files again; on success new handshakes use them, on failure
    /// nothing changes.
    pub fn reload(&self) -> Result<Loaded, TlsError> {
        let (config, loaded) = load(&self.cfg)?;
        *self.current.write().expect("not poisoned") = (config.into(), loaded.clone());
        Ok(loaded)
    }

    /// SIGHUP's TLS part, logged: what is served afterwards, and why a refused reload was refused.
    pub fn reload_and_log(&self) {
        match self.reload() {
            Ok(l) => tracing::info!(
                fingerprint = %l.fingerprint,
                client_auth = l.client_auth,
                "SIGHUP: TLS certificate, key and client CA reloaded; new connections use them, open ones keep theirs"
            ),
            Err(e) => tracing::error!(
                fingerprint = %self.loaded().fingerprint,
                "SIGHUP: TLS reload refused, still serving the previous certificate: {e}"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls(cert: bool, key: bool, ca: bool, allow: bool) -> TlsConfig {
        TlsConfig {
            cert_file: cert.then(|| "/c.pem".into()),
            key_file: key.then(|| "/k.pem".into()),
            client_ca_file: ca.then(|| "/ca.pem".into()),
            allow_plaintext_off_loopback: allow,
        }
    }

    #[test]
    fn plain_http_off_loopback_needs_the_explicit_flag() {
        let off: SocketAddr = "203.0.113.1:9470".parse().unwrap();
        let e = tls(false, false, false, false).validate(off).unwrap_err();
        assert!(e.contains("203.0.113.1:9470") && e.contains("tls.cert_file") && e.contains("allow_plaintext_off_loopback"), "{e}");
        let any: SocketAddr = "0.0.0.0:9470".parse().unwrap();
        assert!(tls(false, false, false, false).validate(any).is_err(), "0.0.0.0 includes every interface");
        assert!(tls(false, false, false, false).validate("[::]:9470".parse().unwrap()).is_err());
        assert!(tls(false, false, false, true).validate(off).is_ok());
        assert!(tls(true, true, false, false).validate(off).is_ok());
        for lo in ["127.0.0.1:9470", "127.0.0.2:9470", "[::1]:9470", "[::ffff:127.0.0.1]:9470"] {
            assert!(tls(false, false, false, false).validate(lo.parse().unwrap()).is_ok(), "{lo} is loopback");
        }
    }

    #[test]
    fn half_a_key_pair_or_a_client_ca_without_tls_is_refused() {
        let lo: SocketAddr = "127.0.0.1:9470".parse().unwrap();
        assert!(tls(true, false, false, false).validate(lo).unwrap_err().contains("tls.key_file is not"));
        assert!(tls(false, true, false, false).validate(lo).unwrap_err().contains("tls.cert_file is not"));
        assert!(tls(false, false, true, false).validate(lo).unwrap_err().contains("client_ca_file needs"));
        assert!(tls(true, true, true, false).validate(lo).is_ok());
    }

    #[test]
    fn bad_files_are_named() {
        let dir = std::env::temp_dir().join(format!("ag-tls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let junk = dir.join("junk.pem");
        std::fs::write(&junk, "not a certificate\n").unwrap();
        let cfg = TlsConfig { cert_file: Some(junk.clone()), key_file: Some(dir.join("absent.key")), ..Default::default() };
        let e = load(&cfg).unwrap_err().to_string();
        assert!(e.contains("tls.cert_file") && e.contains("junk.pem") && e.contains("no PEM certificate"), "{e}");
        let e = read_key("key_file", &dir.join("absent.key")).unwrap_err().to_string();
        assert!(e.starts_with("cannot read tls.key_file") && e.contains("absent.key"), "{e}");
        let e = read_key("key_file", &junk).unwrap_err().to_string();
        assert!(e.contains("no PEM private key"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A self-signed certificate for 127.0.0.1 and its key, written as PEM files under `dir` as `name`.crt/.key.
    fn write_pair(dir: &Path, name: &str) -> (PathBuf, PathBuf, Vec<u8>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap().self_signed(&key).unwrap();
        let (c, k) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k, cert.der().to_vec())
    }

    #[test]
    fn a_reload_takes_good_files_and_keeps_the_old_config_on_bad_ones() {
        let dir = std::env::temp_dir().join(format!("ag-tls-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (c1, k1, der1) = write_pair(&dir, "one");
        let (c2, k2, der2) = write_pair(&dir, "two");
        let live = TlsConfig { cert_file: Some(dir.join("live.crt")), key_file: Some(dir.join("live.key")), ..Default::default() };
        let install = |c: &Path, k: &Path| {
            std::fs::copy(c, dir.join("live.crt")).unwrap();
            std::fs::copy(k, dir.join("live.key")).unwrap();
        };
        install(&c1, &k1);
        let a = Acceptor::new(live.clone()).unwrap();
        assert_eq!(a.loaded(), Loaded { fingerprint: fingerprint(&der1), client_auth: false });

        // The second certificate with the first one's key: refused naming both files, the first one stays.
        install(&c2, &k1);
        let e = a.reload().unwrap_err().to_string();
        assert!(e.contains("live.key") && e.contains("live.crt") && e.contains("does not belong"), "{e}");
        assert_eq!(a.loaded().fingerprint, fingerprint(&der1));
        assert!(matches!(Acceptor::new(live.clone()), Err(TlsError::Mismatch { .. })), "the same check at start");
        // A key file that is not PEM, an unreadable certificate: refused, the first one stays.
        std::fs::write(dir.join("live.key"), "garbage").unwrap();
        assert!(a.reload().unwrap_err().to_string().contains("tls.key_file"));
        std::fs::remove_file(dir.join("live.crt")).unwrap();
        assert!(a.reload().unwrap_err().to_string().starts_with("cannot read tls.cert_file"));
        assert_eq!(a.loaded().fingerprint, fingerprint(&der1));

        // A matching pair: taken.
        install(&c2, &k2);
        assert_eq!(a.reload().unwrap().fingerprint, fingerprint(&der2));
        assert_eq!(a.loaded().fingerprint, fingerprint(&der2));

        // A client CA that is not a certificate.
        let with_ca = TlsConfig { client_ca_file: Some(k2.clone()), ..live.clone() };
        let e = Acceptor::new(with_ca).err().unwrap().to_string();
        assert!(e.contains("tls.client_ca_file") && e.contains("two.key"), "{e}");
        let with_ca = TlsConfig { client_ca_file: Some(c1.clone()), ..live };
        assert!(Acceptor::new(with_ca).unwrap().loaded().client_auth);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_config_section_is_checked_at_load() {
        let e = crate::config::Config::parse("listen = \"203.0.113.1:9470\"").unwrap_err().to_string();
        assert!(e.contains("not a loopback address") && e.contains("allow_plaintext_off_loopback"), "{e}");
        let c = crate::config::Config::parse("listen = \"203.0.113.1:9470\"\n[tls]\nallow_plaintext_off_loopback = true").unwrap();
        assert!(!c.tls.enabled());
        let c = crate::config::Config::parse("[tls]\ncert_file = \"/etc/ampguard/tls/api.crt\"\nkey_file = \"/etc/ampguard/tls/api.key\"")
            .unwrap();
        assert!(c.tls.enabled() && c.tls.client_ca_file.is_none());
        let e = crate::config::Config::parse("[tls]\ncert_fil = \"/x\"").unwrap_err().to_string();
        assert!(e.contains("cert_fil"), "{e}");
        assert_eq!(crate::config::Config::parse("").unwrap().tls, TlsConfig::default());
    }

    #[test]
    fn fingerprints_read_like_openssls() {
        // `printf abc | openssl dgst -sha256`
        assert_eq!(fingerprint(b"abc"), "BA:78:16:BF:8F:01:CF:EA:41:41:40:DE:5D:AE:22:23:B0:03:61:A3:96:17:7A:9C:B4:10:FF:61:F2:00:15:AD");
    }
}
