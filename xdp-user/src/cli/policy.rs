//! `ampguard policy add|set|list|show|del`.
//!
//! `show`, `set` and `del` take a policy id (`p-1`) or a victim. A victim
//! prefix, or an address (its /32 or /128), names the policy for exactly that
//! victim. When there is none, `show` shows the policy that covers the address
//! (the longest victim prefix holding it: what XDP applies to its traffic),
//! and says so; `set` and `del` refuse and name that policy instead, so that a
//! change meant for one host never lands on its customer's whole /24.

use std::collections::BTreeMap;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use ipnet::IpNet;
use serde_json::{json, Value};

use super::{
    client::{clean, print_json, print_table, query_value, s, ApiFailure, Client},
    ApiArgs,
};

/// Rules given on the command line (add and set).
#[derive(Args, Debug, Default)]
pub struct RuleArgs {
    /// Vectors to drop, comma separated (e.g. memcached,ssdp).
    #[arg(long, value_delimiter = ',')]
    drop: Vec<String>,
    /// Vectors to pass, comma separated.
    #[arg(long, value_delimiter = ',')]
    pass: Vec<String>,
    /// Rate-limit a vector: VECTOR=PPS[/BITRATE], e.g. ntp=1000 or dns=2000/20mbit.
    #[arg(long)]
    limit: Vec<String>,
}

#[derive(Subcommand)]
pub enum PolicyCmd {
    /// Protect a victim prefix.
    Add {
        /// Victim address or prefix, e.g. 203.0.113.10 or 2001:db8::/64.
        prefix: String,
        /// Start from this profile (default: "default" when no rules are given).
        #[arg(long)]
        profile: Option<String>,
        #[command(flatten)]
        rules: RuleArgs,
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
    /// Change a policy (by id or victim): only what is given changes.
    #[command(alias = "change")]
    Set {
        /// Policy id (p-1), or victim prefix or address.
        target: String,
        #[command(flatten)]
        rules: RuleArgs,
        /// Vectors whose rule to remove, comma separated (they then pass).
        #[arg(long, value_delimiter = ',')]
        remove: Vec<String>,
        /// Only count what would be dropped.
        #[arg(long, conflicts_with = "enforce")]
        monitor: bool,
        /// Drop and limit (leave monitor mode).
        #[arg(long)]
        enforce: bool,
        /// A new lifetime from now, e.g. 30m, 2h, 7d; 0 = no expiry.
        #[arg(long, conflicts_with = "extend")]
        ttl: Option<String>,
        /// Add to the current expiry, e.g. 1h.
        #[arg(long)]
        extend: Option<String>,
        /// A new comment ("" removes it).
        #[arg(long)]
        comment: Option<String>,
        /// Accept a prefix broader than the configured limit.
        #[arg(long)]
        force: bool,
    },
    /// List policies.
    List,
    /// Show one policy (by id or victim) with its counters.
    Show {
        /// Policy id (p-1), or victim prefix or address.
        target: String,
    },
    /// Delete a policy (by id or victim).
    #[command(alias = "rm", alias = "delete")]
    Del {
        /// Policy id (p-1), or victim prefix or address.
        target: String,
    },
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

/// The rules the flags give, by vector (`None`: remove the rule). A vector
/// given two different actions is refused rather than the last one winning.
fn rules_of(r: RuleArgs, remove: Vec<String>) -> anyhow::Result<BTreeMap<String, Option<Value>>> {
    let mut given: Vec<(&str, String, Option<Value>)> = Vec::new();
    given.extend(r.drop.into_iter().map(|v| ("--drop", v, Some(json!({"action": "drop"})))));
    given.extend(r.pass.into_iter().map(|v| ("--pass", v, Some(json!({"action": "pass"})))));
    for l in r.limit {
        let (v, rule) = parse_limit(&l)?;
        given.push(("--limit", v, Some(rule)));
    }
    given.extend(remove.into_iter().map(|v| ("--remove", v, None)));
    let mut out: BTreeMap<String, (&str, Option<Value>)> = BTreeMap::new();
    for (flag, vector, rule) in given {
        let vector = vector.trim().to_string();
        if vector.is_empty() {
            bail!("{flag} takes vector names (see `ampguard vectors`), not an empty one");
        }
        match out.get(&vector) {
            Some((f, r)) if *f == flag && *r == rule => {}
            Some((f, _)) if *f == flag => bail!("{vector} is given to {flag} twice, with different rates; give it once"),
            Some((f, _)) => bail!("{vector} is given to both {f} and {flag}; give each vector one action"),
            None => {
                out.insert(vector, (flag, rule));
            }
        }
    }
    Ok(out.into_iter().map(|(v, (_, r))| (v, r)).collect())
}

/// Which policy a target names; see the module comment.
enum Found {
    /// By id, or exactly this victim.
    Exact(Value),
    /// No policy of its own; this one covers it.
    Covered(Value),
}

fn find(c: &Client, target: &str) -> anyhow::Result<Found> {
    let t = target.trim();
    // An IPv4-mapped IPv6 address is the IPv4 address it maps (as the daemon reads it).
    let as_net: Option<IpNet> = t.parse::<std::net::IpAddr>().map(|a| IpNet::from(a.to_canonical())).ok().or_else(|| t.parse().ok());
    let Some(net) = as_net else {
        return Ok(Found::Exact(c.request("GET", &format!("/v1/policies/{}", query_value(t)), None)?));
    };
    let first = |v: Value| v["policies"].as_array().and_then(|a| a.first().cloned());
    // The daemon parses the victim (and says "did you mean ..." for host bits set).
    if let Some(p) = first(c.request("GET", &format!("/v1/policies?victim={}", query_value(t)), None)?) {
        return Ok(Found::Exact(p));
    }
    let covering = first(c.request("GET", &format!("/v1/policies?covering={}", query_value(&net.network().to_string())), None)?);
    match covering {
        Some(p) if p["victim"].as_str().and_then(|v| v.parse::<IpNet>().ok()).is_some_and(|v| v.contains(&net)) => Ok(Found::Covered(p)),
        _ => bail!("no policy for {t} (none covers it either; `ampguard policy list` shows them all)"),
    }
}

/// The policy a change or a delete names: exactly, never one that merely covers it.
fn find_exact(c: &Client, target: &str, verb: &str) -> anyhow::Result<Value> {
    match find(c, target)? {
        Found::Exact(p) => Ok(p),
        Found::Covered(p) => bail!(
            "no policy for {} itself; it is covered by {} for {}: to {verb} that one, name it (`ampguard policy {verb} {}`)",
            target.trim(),
            s(&p["id"]),
            s(&p["victim"]),
            s(&p["id"])
        ),
    }
}

/// Words for an API error that only this subcommand knows.
fn not_found_by_id(e: anyhow::Error, target: &str) -> anyhow::Error {
    match e.downcast_ref::<ApiFailure>() {
        Some(f) if f.status == 404 => anyhow::anyhow!("no policy {} (`ampguard policy list` shows them all)", clean(target)),
        _ => e,
    }
}

pub fn run(cmd: PolicyCmd, api: &ApiArgs) -> anyhow::Result<()> {
    let c = Client::new(api)?;
    match cmd {
        PolicyCmd::Add { prefix, profile, rules, monitor, ttl, comment, force } => {
            let rules = rules_of(rules, Vec::new())?;
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
                return print_json(&p);
            }
            println!("created {} for {} ({}, expires {})", s(&p["id"]), s(&p["victim"]), s(&p["mode"]), s(&p["expires_at"]));
        }
        PolicyCmd::Set { target, rules, remove, monitor, enforce, ttl, extend, comment, force } => {
            let rules = rules_of(rules, remove)?;
            let mut body = json!({"force": force});
            if !rules.is_empty() {
                body["rules"] = json!(rules);
            }
            if monitor || enforce {
                body["mode"] = json!(if monitor { "monitor" } else { "enforce" });
            }
            if let Some(t) = ttl {
                body["ttl_secs"] = json!(parse_ttl(&t)?);
            }
            if let Some(t) = extend {
                body["extend_secs"] = json!(parse_ttl(&t)?);
            }
            if let Some(cm) = comment {
                body["comment"] = json!(cm);
            }
            if body.as_object().is_some_and(|o| o.len() == 1) {
                bail!("nothing to change: give --drop, --pass, --limit, --remove, --monitor or --enforce, --ttl or --extend, or --comment");
            }
            let id = s(&find_exact(&c, &target, "set").map_err(|e| not_found_by_id(e, &target))?["id"]);
            let p = c.request("PATCH", &format!("/v1/policies/{id}"), Some(&body))?;
            if api.json {
                return print_json(&p);
            }
            println!("changed {} for {} ({}, expires {})", s(&p["id"]), s(&p["victim"]), s(&p["mode"]), s(&p["expires_at"]));
        }
        PolicyCmd::List => {
            let r = c.request("GET", "/v1/policies", None)?;
            if api.json {
                return print_json(&r);
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
        PolicyCmd::Show { target } => {
            let (found, covered) = match find(&c, &target).map_err(|e| not_found_by_id(e, &target))? {
                Found::Exact(p) => (p, false),
                Found::Covered(p) => (p, true),
            };
            // The counters come with the policy's own route.
            let p = c.request("GET", &format!("/v1/policies/{}", s(&found["id"])), None)?;
            if covered {
                eprintln!(
                    "{} has no policy of its own; showing {} for {}, which covers it",
                    clean(target.trim()),
                    s(&p["id"]),
                    s(&p["victim"])
                );
            }
            if api.json {
                return print_json(&p);
            }
            println!("{} {} ({}, expires {}, from {})", s(&p["id"]), s(&p["victim"]), s(&p["mode"]), s(&p["expires_at"]), s(&p["source"]));
            println!("profile: {}, comment: {}", s(&p["profile"]), s(&p["comment"]));
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
        PolicyCmd::Del { target } => {
            let p = find_exact(&c, &target, "del").map_err(|e| not_found_by_id(e, &target))?;
            let id = s(&p["id"]);
            c.request("DELETE", &format!("/v1/policies/{id}"), None)?;
            if api.json {
                return print_json(&json!({"deleted": p}));
            }
            println!("deleted {id} for {}", s(&p["victim"]));
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

    fn args(drop: &[&str], pass: &[&str], limit: &[&str]) -> RuleArgs {
        let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect();
        RuleArgs { drop: v(drop), pass: v(pass), limit: v(limit) }
    }

    #[test]
    fn a_vector_with_two_actions_is_refused() {
        let e = rules_of(args(&["ntp"], &[], &["ntp=1000"]), vec![]).unwrap_err().to_string();
        assert_eq!(e, "ntp is given to both --drop and --limit; give each vector one action");
        let e = rules_of(args(&["memcached"], &["memcached"], &[]), vec![]).unwrap_err().to_string();
        assert!(e.contains("--drop and --pass"), "{e}");
        let e = rules_of(args(&[], &[], &["ntp=10", "ntp=20"]), vec![]).unwrap_err().to_string();
        assert!(e.contains("twice"), "{e}");
        let e = rules_of(args(&["dns"], &[], &[]), vec!["dns".into()]).unwrap_err().to_string();
        assert!(e.contains("--drop and --remove"), "{e}");
        let ok = rules_of(args(&["memcached", "memcached"], &["dns"], &["ntp=1000"]), vec!["ssdp".into()]).unwrap();
        assert_eq!(ok.len(), 4);
        assert_eq!(ok["ssdp"], None);
        assert_eq!(ok["ntp"], Some(json!({"action": "limit", "pps": 1000})));
    }
}
