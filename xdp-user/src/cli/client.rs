//! A small blocking client for the daemon's API, used by the subcommands, and
//! the helpers they print with. API errors are reworded here for a CLI user
//! (flags instead of JSON fields, the token file instead of a header); the
//! API's own messages stay as they are for API users.

use std::path::PathBuf;

use anyhow::Context;
use serde_json::Value;

use super::ApiArgs;

pub struct Client {
    base: String,
    token: String,
    token_file: PathBuf,
    agent: ureq::Agent,
    /// Whether a client certificate is offered (--cert).
    client_cert: bool,
}

/// An error answer of the API, its message reworded for the command line.
#[derive(Debug, thiserror::Error)]
#[error("{message} (HTTP {status} {code})")]
pub struct ApiFailure {
    pub status: u16,
    pub code: String,
    pub message: String,
}

impl Client {
    pub fn new(args: &ApiArgs) -> anyhow::Result<Self> {
        let token = std::fs::read_to_string(&args.token_file)
            .with_context(|| {
                format!("cannot read the API token from {} (set --token-file or AMPGUARD_TOKEN_FILE)", args.token_file.display())
            })?
            .trim()
            .to_string();
        let mut config = ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(std::time::Duration::from_secs(10)));
        if let Some(tls) = tls_config(args)? {
            config = config.tls_config(tls);
        }
        Ok(Self {
            base: args.api.trim_end_matches('/').to_string(),
            token,
            token_file: args.token_file.clone(),
            agent: config.build().into(),
            client_cert: args.cert.is_some(),
        })
    }

    /// Why the API could not be reached, in the CLI's words: TLS failures say
    /// which side's certificate is wrong and which flag fixes it.
    fn unreachable(&self, e: ureq::Error) -> anyhow::Error {
        if let Some(t) = rustls_error(&e) {
            if let Some(why) = explain_tls(t, &self.base, self.client_cert) {
                return anyhow::anyhow!("TLS with the ampguard API at {} failed: {why} ({t})", self.base);
            }
        }
        let refused = matches!(&e, ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused)
            || matches!(&e, ureq::Error::ConnectionFailed);
        let hint = if self.base.starts_with("http://") && !refused {
            "; if the daemon has [tls] in its config, use --api https://..."
        } else {
            ""
        };
        anyhow::Error::new(e)
            .context(format!("cannot reach the ampguard API at {} (is the daemon running? --api / AMPGUARD_API){hint}", self.base))
    }

    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> anyhow::Result<(u16, Value)> {
        let url = format!("{}{}", self.base, path);
        let auth = format!("Bearer {}", self.token);
        let res = match (method, body) {
            ("GET", _) => self.agent.get(&url).header("Authorization", &auth).call(),
            ("DELETE", _) => self.agent.delete(&url).header("Authorization", &auth).call(),
            ("POST", Some(b)) => self.agent.post(&url).header("Authorization", &auth).send_json(b),
            ("PUT", Some(b)) => self.agent.put(&url).header("Authorization", &auth).send_json(b),
            ("PATCH", Some(b)) => self.agent.patch(&url).header("Authorization", &auth).send_json(b),
            _ => unreachable!("client method"),
        };
        let mut res = res.map_err(|e| self.unreachable(e))?;
        let status = res.status().as_u16();
        let text = res.body_mut().read_to_string().unwrap_or_default();
        let json = if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) };
        Ok((status, json))
    }

    /// GET raw bytes (e.g. a pcap); an API error becomes a readable error.
    pub fn get_bytes(&self, path: &str) -> anyhow::Result<(Vec<u8>, Option<String>)> {
        let url = format!("{}{}", self.base, path);
        let mut res = self
            .agent
            .get(&url)
            .header("Authorization", &format!("Bearer {}", self.token))
            .config()
            .timeout_global(Some(std::time::Duration::from_secs(330)))
            .build()
            .call()
            .map_err(|e| self.unreachable(e))?;
        let status = res.status().as_u16();
        let samples = res.headers().get("x-ampguard-samples").and_then(|v| v.to_str().ok()).map(String::from);
        let body = res.body_mut().with_config().limit(64 * 1024 * 1024).read_to_vec()?;
        if status >= 400 {
            let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            return Err(self.failure(status, &json).into());
        }
        Ok((body, samples))
    }

    /// Call and turn an API error into a readable error (an `ApiFailure`).
    pub fn request(&self, method: &str, path: &str, body: Option<&Value>) -> anyhow::Result<Value> {
        let (status, json) = self.call(method, path, body)?;
        if status >= 400 {
            return Err(self.failure(status, &json).into());
        }
        Ok(json)
    }

    fn failure(&self, status: u16, json: &Value) -> ApiFailure {
        let code = json["error"]["code"].as_str().unwrap_or("error").to_string();
        let msg = json["error"]["message"].as_str().map(String::from).unwrap_or_else(|| json.to_string());
        let message = clean(&reword(status, &code, &msg, &self.token_file));
        ApiFailure { status, code, message }
    }
}

/// The TLS settings of --ca-file, --cert and --key (None: ureq's defaults,
/// the built-in public roots and no client certificate).
fn tls_config(args: &ApiArgs) -> anyhow::Result<Option<ureq::tls::TlsConfig>> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    if args.ca_file.is_none() && args.cert.is_none() {
        return Ok(None);
    }
    let read = |flag: &str, path: &std::path::Path| std::fs::read(path).with_context(|| format!("cannot read {flag} {}", path.display()));
    let certs = |flag: &str, path: &std::path::Path| -> anyhow::Result<Vec<ureq::tls::Certificate<'static>>> {
        let pem = read(flag, path)?;
        let ders = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("{flag} {} is not a PEM certificate file", path.display()))?;
        anyhow::ensure!(!ders.is_empty(), "{flag} {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)", path.display());
        Ok(ders.iter().map(|d| ureq::tls::Certificate::from_der(d.as_ref()).to_owned()).collect())
    };
    let mut tls = ureq::tls::TlsConfig::builder();
    if let Some(ca) = &args.ca_file {
        tls = tls.root_certs(ureq::tls::RootCerts::new_with_certs(&certs("--ca-file", ca)?));
    }
    if let (Some(cert), Some(key)) = (&args.cert, &args.key) {
        let chain = certs("--cert", cert)?;
        let key = ureq::tls::PrivateKey::from_pem(&read("--key", key)?)
            .map_err(|e| anyhow::anyhow!("--key {} holds no PEM private key: {e}", key.display()))?;
        tls = tls.client_cert(Some(ureq::tls::ClientCert::new_with_certs(&chain, key)));
    }
    Ok(Some(tls.build()))
}

/// The rustls error inside a failed call, if TLS is what failed.
fn rustls_error(e: &ureq::Error) -> Option<&rustls::Error> {
    match e {
        ureq::Error::Rustls(r) => Some(r),
        ureq::Error::Io(io) => io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()),
        _ => None,
    }
}

/// A TLS failure as the operator fixes it.
fn explain_tls(e: &rustls::Error, base: &str, sent_cert: bool) -> Option<String> {
    use rustls::{AlertDescription as A, CertificateError as C, Error as E};
    Some(match e {
        E::InvalidCertificate(C::UnknownIssuer | C::BadSignature) => {
            "the server's certificate is not trusted: pass --ca-file (or AMPGUARD_CA_FILE) with the CA that signed the daemon's tls.cert_file".into()
        }
        E::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => {
            "the server's certificate has expired: renew the daemon's tls.cert_file and reload it (systemctl reload ampguard, or SIGHUP)".into()
        }
        E::InvalidCertificate(C::NotValidYet | C::NotValidYetContext { .. }) => {
            "the server's certificate is not valid yet: check the clocks of both machines".into()
        }
        E::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => {
            format!("the server's certificate is not valid for the host in --api {base}: use a name or address its subjectAltName lists")
        }
        E::InvalidCertificate(_) => "the server's certificate is refused".into(),
        E::AlertReceived(A::CertificateRequired) => {
            "the daemon requires a client certificate (its tls.client_ca_file is set): pass --cert and --key (or AMPGUARD_CERT_FILE and AMPGUARD_KEY_FILE)".into()
        }
        E::AlertReceived(A::UnknownCA | A::BadCertificate | A::CertificateUnknown | A::CertificateExpired | A::DecryptError)
            if sent_cert =>
        {
            "the daemon refused the client certificate given with --cert: it is not signed by a CA in the daemon's tls.client_ca_file, or it has expired".into()
        }
        E::InvalidMessage(_) => {
            format!("the API at {base} does not speak TLS: if the daemon has no [tls] in its config, use http://")
        }
        _ => return None,
    })
}

/// An API message in the words of the command line.
fn reword(status: u16, code: &str, msg: &str, token_file: &std::path::Path) -> String {
    let file = token_file.display();
    match status {
        401 => {
            return format!(
                "the daemon refused the token read from {file}: it is not the daemon's token_file \
                 (give the right one with --token-file or AMPGUARD_TOKEN_FILE)"
            )
        }
        403 => {
            return format!(
                "the token read from {file} is the alert-only token (alert_token_file): it may only post alerts; \
                 use the operator token (the daemon's token_file) with --token-file or AMPGUARD_TOKEN_FILE"
            )
        }
        _ => {}
    }
    for what in ["vector", "profile"] {
        if let Some(text) = unknown_name(msg, what) {
            return text;
        }
    }
    if code == "invalid" {
        if let Some(text) = ttl_too_long(msg) {
            return text;
        }
    }
    let mut out = msg.replace("send \"force\": true", "add --force");
    // "p-1 already has ...; replace it with PUT /v1/policies/p-1"
    if let Some((head, id)) = out.split_once("replace it with PUT /v1/policies/") {
        let id = id.trim().to_string();
        out = format!("{head}change it with `ampguard policy set {id} ...`, or delete it with `ampguard policy del {id}`");
    }
    out
}

/// `unknown vector "memcache"; known: a, b, c` -> a suggestion from the known names.
fn unknown_name(msg: &str, what: &str) -> Option<String> {
    let rest = msg.strip_prefix(&format!("unknown {what} \""))?;
    let (name, rest) = rest.split_once('"')?;
    let known: Vec<&str> = rest.split_once("known: ")?.1.split(", ").map(str::trim).collect();
    let list = if what == "vector" { "`ampguard vectors` lists them" } else { "the daemon's config lists them" };
    Some(match did_you_mean(name, &known) {
        Some(k) => format!("unknown {what} {name:?}; did you mean {k}? ({list})"),
        None => format!("unknown {what} {name:?}; known: {}", known.join(", ")),
    })
}

/// The closest known name, if it is close enough to be the intended one.
pub fn did_you_mean<'a>(word: &str, known: &[&'a str]) -> Option<&'a str> {
    let word = word.to_ascii_lowercase();
    known
        .iter()
        .map(|k| (strsim::jaro_winkler(&word, k), *k))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, k)| k)
}

/// `ttl_secs 864000 ... above the maximum of 604800` -> durations and the config knob.
fn ttl_too_long(msg: &str) -> Option<String> {
    let number_after = |tag: &str| -> Option<u64> {
        let rest = &msg[msg.find(tag)? + tag.len()..];
        rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
    };
    let (ttl, max) = (number_after("ttl_secs ")?, number_after("above the maximum of ")?);
    let extended = if msg.contains("after extending") { " after --extend" } else { "" };
    Some(format!(
        "a lifetime of {}{extended} is above the daemon's maximum of {} (max_ttl_secs = {max} in its config); give a shorter --ttl",
        duration(ttl),
        duration(max)
    ))
}

/// Seconds as an operator writes them: 7d, 1d12h, 90m -> 1h30m, 45s.
pub fn duration(secs: u64) -> String {
    if secs == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    let mut left = secs;
    for (unit, n) in [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)] {
        if left >= n {
            out.push_str(&format!("{}{unit}", left / n));
            left %= n;
        }
    }
    out
}

/// Text from the daemon (comments, alert sources, messages) with control
/// characters escaped, so that an ESC or a newline in a comment cannot
/// rewrite the operator's terminal or forge a table row.
pub fn clean(text: &str) -> String {
    if !text.chars().any(char::is_control) {
        return text.to_string();
    }
    text.chars().map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() }).collect()
}

/// Print rows as aligned columns (cells cleaned of control characters).
pub fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let rows: Vec<Vec<String>> = rows.iter().map(|r| r.iter().map(|c| clean(c)).collect()).collect();
    let mut w: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let s: Vec<String> = cells.iter().enumerate().map(|(i, c)| format!("{c:<width$}", width = w[i])).collect();
        println!("{}", s.join("  ").trim_end());
    };
    line(header.iter().map(|s| s.to_string()).collect());
    for r in rows {
        line(r);
    }
}

/// A JSON value as a table cell or in a sentence ("-" for none), cleaned.
pub fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => clean(s),
        other => other.to_string(),
    }
}

/// Print a JSON document (the --json output of every subcommand).
pub fn print_json(v: &Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// A value for a URL query: the characters of addresses and prefixes that
/// are not plain in one.
pub fn query_value(v: &str) -> String {
    v.replace('%', "%25")
        .replace('/', "%2F")
        .replace(':', "%3A")
        .replace('&', "%26")
        .replace('+', "%2B")
        .replace(' ', "%20")
        .replace('#', "%23")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_messages_are_reworded_for_the_command_line() {
        let f = std::path::Path::new("/etc/ampguard/token");
        let m = reword(
            422,
            "too_broad",
            "203.0.0.0/8 is broader than /16, the configured limit; narrow it, or send \"force\": true if you mean it",
            f,
        );
        assert!(m.ends_with("narrow it, or add --force if you mean it"), "{m}");
        let m = reword(400, "invalid", "ttl_secs 864000 is above the maximum of 604800", f);
        assert!(m.contains("10d") && m.contains("7d") && m.contains("max_ttl_secs"), "{m}");
        let m = reword(401, "unauthorized", "missing or wrong bearer token: send `Authorization: Bearer <token from the token file>`", f);
        assert!(m.contains("/etc/ampguard/token") && !m.contains("Authorization"), "{m}");
        let m = reword(400, "invalid", "unknown vector \"memcache\"; known: chargen, memcached, ntp", f);
        assert_eq!(m, "unknown vector \"memcache\"; did you mean memcached? (`ampguard vectors` lists them)");
        let m = reword(400, "invalid", "unknown vector \"zzz\"; known: chargen, memcached, ntp", f);
        assert!(m.contains("known: chargen, memcached, ntp"), "nothing close: the list: {m}");
        let m = reword(409, "conflict", "203.0.113.10/32 already has policy p-1; replace it with PUT /v1/policies/p-1", f);
        assert!(m.contains("ampguard policy set p-1") && !m.contains("PUT"), "{m}");
    }

    #[test]
    fn durations_and_escapes() {
        assert_eq!(duration(604_800), "7d");
        assert_eq!(duration(5_400), "1h30m");
        assert_eq!(duration(45), "45s");
        assert_eq!(clean("ok \u{1b}[2Jx\u{7}\nrow"), "ok \\u{1b}[2Jx\\u{7}\\nrow");
        assert_eq!(clean("café ticket 4711"), "café ticket 4711");
        assert_eq!(did_you_mean("memcahced", &["memcached", "mdns"]), Some("memcached"));
    }
}
