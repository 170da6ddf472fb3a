//! A small blocking client for the daemon's API, used by the subcommands.

use anyhow::{bail, Context};
use serde_json::Value;

use super::ApiArgs;

pub struct Client {
    base: String,
    token: String,
    agent: ureq::Agent,
}

impl Client {
    pub fn new(args: &ApiArgs) -> anyhow::Result<Self> {
        let token = std::fs::read_to_string(&args.token_file)
            .with_context(|| {
                format!("cannot read the API token from {} (set --token-file or AMPGUARD_TOKEN_FILE)", args.token_file.display())
            })?
            .trim()
            .to_string();
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(std::time::Duration::from_secs(10)))
            .build()
            .into();
        Ok(Self { base: args.api.trim_end_matches('/').to_string(), token, agent })
    }

    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> anyhow::Result<(u16, Value)> {
        let url = format!("{}{}", self.base, path);
        let auth = format!("Bearer {}", self.token);
        let res = match (method, body) {
            ("GET", _) => self.agent.get(&url).header("Authorization", &auth).call(),
            ("DELETE", _) => self.agent.delete(&url).header("Authorization", &auth).call(),
            ("POST", Some(b)) => self.agent.post(&url).header("Authorization", &auth).send_json(b),
            ("PUT", Some(b)) => self.agent.put(&url).header("Authorization", &auth).send_json(b),
            _ => unreachable!("client method"),
        };
        let mut res =
            res.with_context(|| format!("cannot reach the ampguard API at {} (is the daemon running? --api / AMPGUARD_API)", self.base))?;
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
            .with_context(|| format!("cannot reach the ampguard API at {}", self.base))?;
        let status = res.status().as_u16();
        let samples = res.headers().get("x-ampguard-samples").and_then(|v| v.to_str().ok()).map(String::from);
        let body = res.body_mut().with_config().limit(64 * 1024 * 1024).read_to_vec()?;
        if status >= 400 {
            let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            bail!("GET {path}: {status}: {}", json["error"]["message"].as_str().unwrap_or("error"));
        }
        Ok((body, samples))
    }

    /// Call and turn an API error into a readable error.
    pub fn request(&self, method: &str, path: &str, body: Option<&Value>) -> anyhow::Result<Value> {
        let (status, json) = self.call(method, path, body)?;
        if status >= 400 {
            let msg = json["error"]["message"].as_str().map(String::from).unwrap_or_else(|| json.to_string());
            let code = json["error"]["code"].as_str().unwrap_or("error");
            bail!("{method} {path}: {status} {code}: {msg}");
        }
        Ok(json)
    }
}

/// Print rows as aligned columns.
pub fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut w: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
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
        line(r.clone());
    }
}

pub fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}
