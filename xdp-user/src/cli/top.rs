//! `ampguard top`: victims under attack, live, refreshed every second, with
//! the dropped, limited and passed rates per vector (what iftop is to bandwidth).

use std::{collections::HashMap, io::IsTerminal, time::Duration};

use clap::Args;
use serde_json::Value;

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
        let dt = (cur["uptime_ms"].as_u64().unwrap_or(0).saturating_sub(prev["uptime_ms"].as_u64().unwrap_or(0))) as f64 / 1000.0;
        let (a, b) = (snapshot(&prev), snapshot(&cur));
        let mut rows: Vec<(f64, Vec<String>)> = b
            .iter()
            .map(|(k, now)| {
                let before = a.get(k).copied().unwrap_or_default();
                let rate = |i: usize| now[i].saturating_sub(before[i]) as f64 / dt.max(0.001);
                (
                    rate(0) + rate(1),
                    vec![
                        k.1.clone(),
                        k.2.clone(),
                        format!("{:.0}", rate(0)),
                        format!("{:.1}", rate(4) * 8.0 / 1e6),
                        format!("{:.0}", rate(1)),
                        format!("{:.0}", rate(3)),
                        format!("{:.0}", rate(2)),
                        k.0.clone(),
                    ],
                )
            })
            .filter(|(_, r)| r[2..7].iter().any(|x| x != "0" && x != "0.0"))
            .collect();
        rows.sort_by(|x, y| y.0.total_cmp(&x.0));
        if tty {
            print!("\x1b[2J\x1b[H");
        }
        println!("ampguard top: victims under attack, rates over the last {dt:.1} s (Ctrl-C to quit)");
        let rows: Vec<Vec<String>> = rows.into_iter().take(args.rows).map(|r| r.1).collect();
        if rows.is_empty() {
            println!("(no policy is dropping, limiting or passing anything right now)");
        } else {
            print_table(&["VICTIM", "VECTOR", "DROP PPS", "DROP MBIT/S", "LIMITED PPS", "MONITORED PPS", "PASSED PPS", "POLICY"], &rows);
        }
        prev = cur;
        n += 1;
        if args.iterations != 0 && n >= args.iterations {
            return Ok(());
        }
    }
}
