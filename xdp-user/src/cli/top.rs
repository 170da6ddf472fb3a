//! `ampguard top`: victims under attack, live, refreshed every second, with
//! the dropped, limited and passed rates per vector (what iftop is to
//! bandwidth); with built-in detection on, also the destinations it measures,
//! whether or not a policy covers them.

use std::{collections::HashMap, io::IsTerminal, time::Duration};

use clap::Args;
use serde_json::{json, Value};

use super::{
    client::{print_table, Client},
    ApiArgs,
};

#[derive(Args, Debug)]
pub struct TopArgs {
    /// Seconds between refreshes.
    #[arg(long, default_value_t = 1.0)]
    pub interval: f64,
    /// Stop after this many refreshes (0 = until Ctrl-C).
    #[arg(long, default_value_t = 0)]
    pub iterations: u64,
    /// Rows to show.
    #[arg(long, default_value_t = 20)]
    pub rows: usize,
}

type Key = (String, String, String); // policy id, victim, vector
type Counts = [u64; 5]; // dropped, rate_limited, passed, monitored packets; dropped bytes

fn snapshot(v: &Value) -> HashMap<Key, Counts> {
    let mut out = HashMap::new();
    for p in v["policies"].as_array().cloned().unwrap_or_default() {
        let (id, victim) = (p["id"].as_str().unwrap_or("").to_string(), p["victim"].as_str().unwrap_or("").to_string());
        for (vector, c) in p["counters"].as_object().cloned().unwrap_or_default() {
            let n = |k: &str| c[k]["packets"].as_u64().unwrap_or(0);
            out.insert(
                (id.clone(), victim.clone(), vector),
                [n("dropped"), n("rate_limited"), n("passed"), n("monitored"), c["dropped"]["bytes"].as_u64().unwrap_or(0)],
            );
        }
    }
    out
}

pub fn run(args: TopArgs, api: &ApiArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.interval >= 0.1, "--interval must be at least 0.1 s");
    let c = Client::new(api)?;
    let tty = std::io::stdout().is_terminal();
    let mut prev = c.request("GET", "/v1/counters", None)?;
    let mut n = 0;
    loop {
        std::thread::sleep(Duration::from_secs_f64(args.interval));
        let cur = c.request("GET", "/v1/counters", None)?;
        // An older daemon has no /v1/detection: then there is no such section.
        let detected = c.request("GET", "/v1/detection", None).ok().filter(|d| d["enabled"] == true);
        let dt = (cur["uptime_ms"].as_u64().unwrap_or(0).saturating_sub(prev["uptime_ms"].as_u64().unwrap_or(0))) as f64 / 1000.0;
        let (a, b) = (snapshot(&prev), snapshot(&cur));
        // Per (policy, victim, vector): dropped, limited, passed, monitored pps, dropped bit/s.
        let mut rows: Vec<(&Key, [f64; 5])> = b
            .iter()
            .map(|(k, now)| {
                let before = a.get(k).copied().unwrap_or_default();
                let rate = |i: usize| now[i].saturating_sub(before[i]) as f64 / dt.max(0.001);
                (k, [rate(0), rate(1), rate(2), rate(3), rate(4) * 8.0])
            })
            .filter(|(_, r)| r.iter().any(|x| *x > 0.0))
            .collect();
        rows.sort_by(|x, y| (y.1[0] + y.1[1]).total_cmp(&(x.1[0] + x.1[1])));
        rows.truncate(args.rows);
        if api.json {
            // One JSON document a line per refresh, for `jq` or a collector.
            let victims: Vec<Value> = rows
                .iter()
                .map(|(k, r)| {
                    json!({
                        "victim": k.1, "vector": k.2, "policy": k.0, "dropped_pps": r[0], "dropped_bps": r[4],
                        "rate_limited_pps": r[1], "passed_pps": r[2], "monitored_pps": r[3],
                    })
                })
                .collect();
            let mut line = json!({"interval_secs": dt, "victims": victims});
            if let Some(d) = &detected {
                line["detected"] = d["destinations"].clone();
            }
            println!("{line}");
        } else {
            table(&rows, dt, tty);
            if let Some(d) = &detected {
                detection_table(d, args.rows);
            }
        }
        prev = cur;
        n += 1;
        if args.iterations != 0 && n >= args.iterations {
            return Ok(());
        }
    }
}

fn table(rows: &[(&Key, [f64; 5])], dt: f64, tty: bool) {
    if tty {
        print!("\x1b[2J\x1b[H");
    }
    println!("ampguard top: victims under attack, rates over the last {dt:.1} s (Ctrl-C to quit)");
    if rows.is_empty() {
        println!("(no policy is dropping, limiting or passing anything right now)");
        return;
    }
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|(k, r)| {
            let pps = |x: f64| format!("{x:.0}");
            vec![k.1.clone(), k.2.clone(), pps(r[0]), format!("{:.1}", r[4] / 1e6), pps(r[1]), pps(r[3]), pps(r[2]), k.0.clone()]
        })
        .collect();
    print_table(&["VICTIM", "VECTOR", "DROP PPS", "DROP MBIT/S", "LIMITED PPS", "MONITORED PPS", "PASSED PPS", "POLICY"], &rows);
}

/// The destinations built-in detection measures, busiest first.
fn detection_table(d: &Value, max: usize) {
    println!();
    println!(
        "built-in detection ({}): destinations by measured amplification traffic, {} tracked, {} under attack",
        d["mode"].as_str().unwrap_or("?"),
        d["tracked"],
        d["under_attack"]
    );
    let list = d["destinations"].as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        println!("(no protected destination receives amplification traffic right now)");
        return;
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .take(max)
        .map(|x| {
            let vectors: Vec<String> = x["vectors"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|v| format!("{} {:.0}", super::client::clean(v[0].as_str().unwrap_or("?")), v[1].as_f64().unwrap_or(0.0)))
                .collect();
            let state = match (x["under_attack"] == true, x["below_secs"].as_f64()) {
                (true, Some(b)) => format!("ending ({b:.0}/{} s below)", x["hold_secs"]),
                (true, None) => "ATTACK".into(),
                _ => "-".into(),
            };
            vec![
                super::client::clean(x["destination"].as_str().unwrap_or("?")),
                format!("{:.0}", x["pps"].as_f64().unwrap_or(0.0)),
                format!("{:.1}", x["bps"].as_f64().unwrap_or(0.0) / 1e6),
                vectors.join(", "),
                state,
                super::client::clean(x["measured_by"].as_str().unwrap_or("?")),
            ]
        })
        .collect();
    print_table(&["DESTINATION", "PPS", "MBIT/S", "TOP VECTORS (PPS)", "STATE", "MEASURED BY"], &rows);
}
