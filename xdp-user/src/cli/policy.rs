//! `ampguard policy add|list|show|del`.

use std::collections::BTreeMap;

use anyhow::Context;
use clap::Subcommand;
use serde_json::{json, Value};

use super::{
    client::{print_table, s, Client},
    ApiArgs,
};

#[derive(Subcommand)]
pub enum PolicyCmd {
    /// Protect a victim prefix.
    Add {
        /// Victim address or prefix, e.g. 203.0.113.10 or 2001:db8::/64.
        prefix: String,
        /// Start from this profile (default: "default" when no rules are given).
        #[arg(long)]
        profile: Option<String>,
        /// Vectors to drop, comma separated (e.g. memcached,ssdp).
        #[arg(long, value_delimiter = ',')]
        drop: Vec<String>,
        /// Vectors to pass, comma separated.
        #[arg(long, value_delimiter = ',')]
        pass: Vec<String>,
        /// Rate-limit a vector: VECTOR=PPS[/BITRATE], e.g. ntp=1000 or dns=2000/20mbit.
        #[arg(long)]
        limit: Vec<String>,
        /// Count what would be dropped, drop nothing.
        #[arg(long)]
        monitor: bool,
        /// Lifetime, e.g. 30m, 2h, 7d; 0 = no expiry. Default: the daemon's default_ttl_secs.
        #[arg(long)]
        ttl: Option<String>,
        #[arg(long)]
        comment: Option<String>,
        /// Accept a prefix broader than the configured limit.
        #[arg(long)]
        force: bool,
    },
    /// List policies.
    List,
    /// Show one policy with its counters.
    Show { id: String },
    /// Delete a policy.
    #[command(alias = "rm", alias = "delete")]
    Del { id: String },
}

/// "1000" -> pps; "2000/20mbit" -> pps and bits/s.
fn parse_limit(spec: &str) -> anyhow::Result<(String, Value)> {
    let (vector, rate) = spec.split_once('=').context("a limit looks like VECTOR=PPS[/BITRATE], e.g. ntp=1000 or dns=2000/20mbit")?;
    let mut rule = json!({"action": "limit"});
    for part in rate.split('/') {
        let p = part.trim().to_ascii_lowercase();
        let (num, mult) = if let Some(n) = p.strip_suffix("gbit") {
            (n, Some(1_000_000_000))
        } else if let Some(n) = p.strip_suffix("mbit") {
            (n, Some(1_000_000))
        } else if let Some(n) = p.strip_suffix("kbit") {
            (n, Some(1_000))
        } else if let Some(n) = p.strip_suffix("bit") {
            (n, Some(1))
        } else {
            (p.strip_suffix("pps").unwrap_or(&p), None)
        };
        let n: u64 = num.parse().with_context(|| format!("{part:?} is not a rate (1000, 1000pps, 20mbit)"))?;
        match mult {
            Some(m) => rule["bps"] = json!(n * m),
            None => rule["pps"] = json!(n),
        }
    }
    Ok((vector.to_string(), rule))
}

fn parse_ttl(s: &str) -> anyhow::Result<u64> {
    if s == "0" {
        return Ok(0);
    }
    Ok(humantime::parse_duration(s).with_context(|| format!("{s:?} is not a duration (30m, 2h, 7d)"))?.as_secs())
}

pub fn run(cmd: PolicyCmd, api: &ApiArgs) -> anyhow::Result<()> {
    let c = Client::new(api)?;
    match cmd {
        PolicyCmd::Add { prefix, profile, drop, pass, limit, monitor, ttl, comment, force } => {
            let mut rules: BTreeMap<String, Value> = BTreeMap::new();
            for v in drop {
                rules.insert(v, json!({"action": "drop"}));
            }
            for v in pass {
                rules.insert(v, json!({"action": "pass"}));
            }
            for l in limit {
                let (v, r) = parse_limit(&l)?;
                rules.insert(v, r);
            }
            let mut body = json!({"victim": prefix, "mode": if monitor { "monitor" } else { "enforce" }, "force": force});
            if let Some(p) = profile {
                body["profile"] = json!(p);
            }
            if !rules.is_empty() {
                body["rules"] = json!(rules);
            }
            if let Some(t) = ttl {
                body["ttl_secs"] = json!(parse_ttl(&t)?);
            }
            if let Some(cm) = comment {
                body["comment"] = json!(cm);
            }
            let p = c.request("POST", "/v1/policies", Some(&body))?;
            if api.json {
                println!("{}", serde_json::to_string_pretty(&p)?);
            } else {
                println!("created {} for {} ({}, expires {})", s(&p["id"]), s(&p["victim"]), s(&p["mode"]), s(&p["expires_at"]));
            }
        }
        PolicyCmd::List => {
            let r = c.request("GET", "/v1/policies", None)?;
            if api.json {
                println!("{}", serde_json::to_string_pretty(&r)?);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = r["policies"]
                .as_array()
                .map(|a| a.as_slice())
                .unwrap_or_default()
                .iter()
                .map(|p| {
                    let rules = p["rules"].as_object().cloned().unwrap_or_default();
                    let plain = |a: &str| rules.values().filter(|r| r["action"] == a && r["signature"] != true).count();
                    let signed = rules.values().filter(|r| r["signature"] == true).count();
                    vec![
                        s(&p["id"]),
                        s(&p["victim"]),
                        s(&p["mode"]),
                        format!("{} drop, {} by signature, {} limit", plain("drop"), signed, plain("limit")),
                        s(&p["expires_at"]),
                        s(&p["source"]),
                        s(&p["comment"]),
                    ]
                })
                .collect();
            print_table(&["ID", "VICTIM", "MODE", "RULES", "EXPIRES", "SOURCE", "COMMENT"], &rows);
        }
        PolicyCmd::Show { id } => {
            let p = c.request("GET", &format!("/v1/policies/{id}"), None)?;
            if api.json {
                println!("{}", serde_json::to_string_pretty(&p)?);
                return Ok(());
            }
            println!("{} {} ({}, expires {}, from {})", s(&p["id"]), s(&p["victim"]), s(&p["mode"]), s(&p["expires_at"]), s(&p["source"]));
            let mut rows = Vec::new();
            for (v, r) in p["rules"].as_object().cloned().unwrap_or_default() {
                let c = &p["counters"][&v];
                let n = |k: &str| c[k]["packets"].as_u64().unwrap_or(0).to_string();
                let action = if r["signature"] == true {
                    format!("{} on signature, else {}", s(&r["action"]), s(&r["otherwise"]))
                } else {
                    s(&r["action"])
                };
                rows.push(vec![
                    v.clone(),
                    action,
                    s(&r["pps"]),
                    s(&r["bps"]),
                    n("dropped"),
                    n("rate_limited"),
                    n("monitored"),
                    n("passed"),
                ]);
            }
            print_table(&["VECTOR", "ACTION", "PPS", "BPS", "DROPPED", "LIMITED", "MONITORED", "PASSED"], &rows);
            println!("(\"drop on signature, else limit\": the vector's reflection signature decides; see `ampguard vectors`)");
        }
        PolicyCmd::Del { id } => {
            c.request("DELETE", &format!("/v1/policies/{id}"), None)?;
            println!("deleted {id}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_parse() {
        assert_eq!(parse_limit("ntp=1000").unwrap(), ("ntp".into(), json!({"action": "limit", "pps": 1000})));
        assert_eq!(parse_limit("dns=2000/20mbit").unwrap().1, json!({"action": "limit", "pps": 2000, "bps": 20_000_000}));
        assert!(parse_limit("dns").is_err());
        assert!(parse_limit("dns=fast").is_err());
        assert_eq!(parse_ttl("2h").unwrap(), 7200);
        assert!(parse_ttl("soon").is_err());
    }
}
