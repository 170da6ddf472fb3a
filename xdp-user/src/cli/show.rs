//! `ampguard vectors` and `ampguard status`.

use serde_json::json;

use super::{
    client::{print_json, print_table, s, Client},
    ApiArgs,
};

pub fn vectors(api: &ApiArgs) -> anyhow::Result<()> {
    let r = Client::new(api)?.request("GET", "/v1/vectors", None)?;
    if api.json {
        return print_json(&r);
    }
    let rows: Vec<Vec<String>> = r["vectors"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|v| {
            let ports: Vec<String> = v["ports"].as_array().cloned().unwrap_or_default().iter().map(s).collect();
            let rule = &v["default_rule"];
            let verb = |a: &str| match a {
                "limit" => format!("limit {} pps / {} bit/s", s(&rule["pps"]), s(&rule["bps"])),
                a => a.to_string(),
            };
            let mut text = rule["action"].as_str().map(verb).unwrap_or_else(|| "-".into());
            if rule["signature"] == true {
                let size = rule["min_bytes"].as_u64().map(|m| format!(" >= {m} B")).unwrap_or_default();
                text = format!("{text} on signature{size}, else {}", verb(rule["otherwise"].as_str().unwrap_or("pass")));
            }
            let sig =
                v["signature"].as_str().map(|d| d.split_once(": ").map(|x| x.1).unwrap_or(d).to_string()).unwrap_or_else(|| "-".into());
            vec![s(&v["name"]), if ports.is_empty() { "(fragments)".into() } else { ports.join(",") }, s(&v["amplification"]), text, sig]
        })
        .collect();
    print_table(&["VECTOR", "UDP SOURCE PORTS", "AMPLIFICATION", "DEFAULT RULE", "SIGNATURE MATCHES"], &rows);
    Ok(())
}

pub fn status(api: &ApiArgs) -> anyhow::Result<()> {
    let r = Client::new(api)?.request("GET", "/v1/status", None)?;
    if api.json {
        return print_json(&r);
    }
    let health = if r["healthy"] == true { "healthy" } else { "NOT HEALTHY" };
    println!("ampguard {} up {}s, {health}", s(&r["version"]), s(&r["uptime_secs"]));
    match r["enforcement"].as_str() {
        Some("detached_by_operator") => {
            let d = &r["detached_by_operator"];
            println!(
                "enforcement: DETACHED BY OPERATOR since {} ({}): nothing is dropped until `ampguard attach`",
                s(&d["since"]),
                s(&d["by"])
            );
        }
        Some("degraded") => println!("enforcement: DEGRADED: an interface does not enforce (see below)"),
        Some(e) => println!("enforcement: {}", super::client::clean(e)),
        None => {}
    }
    if let Some(e) = r["state_writer"]["error"].as_str() {
        println!("state files: NOT SAVED: {} (changes are in force, retried every second)", super::client::clean(e));
    } else if r["state_writer"]["snapshot_due"] == true {
        println!("state files: a snapshot is due (retried every second)");
    }
    let rows: Vec<Vec<String>> = r["interfaces"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|i| {
            let state = match i["state"].as_str() {
                Some(st) => s(&json!(st)),
                None if i["attached"] == true => "enforcing".into(),
                None => "not_enforcing".into(),
            };
            vec![s(&i["name"]), s(&i["ifindex"]), s(&i["mode"]), state, s(&i["problem"])]
        })
        .collect();
    print_table(&["INTERFACE", "IFINDEX", "XDP MODE", "STATE", "PROBLEM"], &rows);
    // Dispatcher mode: every program of each interface's libxdp chain, in run order.
    let mut rows: Vec<Vec<String>> = Vec::new();
    for i in r["interfaces"].as_array().into_iter().flatten() {
        let d = &i["dispatcher"];
        for p in d["programs"].as_array().into_iter().flatten() {
            let ours = if p["id"] == i["program_id"] { " (this daemon)" } else { "" };
            let chain: Vec<String> = p["chain_call_actions"].as_array().into_iter().flatten().map(s).collect();
            rows.push(vec![
                s(&i["name"]),
                s(&d["id"]),
                s(&p["priority"]),
                format!("{}{ours}", s(&p["name"])),
                s(&p["id"]),
                chain.join(","),
            ]);
        }
    }
    if !rows.is_empty() {
        println!("libxdp dispatcher chains:");
        print_table(&["INTERFACE", "DISPATCHER ID", "PRIORITY", "PROGRAM", "PROGRAM ID", "CHAIN CALL ACTIONS"], &rows);
    }
    let p = &r["policies"];
    println!(
        "policies: {} ({} enforce, {} monitor) of {} (capacity.max_policies)",
        s(&p["total"]),
        s(&p["enforce"]),
        s(&p["monitor"]),
        s(&p["capacity"])
    );
    println!("allowlist: {} entries of {}", s(&r["allowlist"]["entries"]), s(&r["allowlist"]["capacity"]));
    let d = &r["detection"];
    if d["enabled"] == true {
        let nets: Vec<String> = d["networks"].as_array().cloned().unwrap_or_default().iter().map(s).collect();
        println!(
            "built-in detection: {} on {}; {} destinations tracked, {} under attack (`ampguard top` shows them)",
            s(&d["mode"]),
            nets.join(", "),
            s(&d["tracked"]),
            s(&d["under_attack"])
        );
    } else if d.is_object() {
        println!("built-in detection: off ([detection] enabled = false)");
    }
    println!("state file: {}, pins: {}", s(&r["state_file"]), s(&r["pin_dir"]));
    let fs = &r["flowspec"];
    if fs["enabled"] == true {
        println!(
            "flowspec: speaker {} {}{}, {} routes installed, {} refused (validate {}, grace {}s)",
            s(&fs["speaker"]),
            s(&fs["session"]),
            fs["error"].as_str().map(|e| format!(" ({})", super::client::clean(e))).unwrap_or_default(),
            s(&fs["installed"]),
            s(&fs["refused"]),
            s(&fs["validate"]),
            s(&fs["grace_secs"])
        );
        let rows: Vec<Vec<String>> = fs["routes"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|rt| {
                let what = match rt["state"].as_str() {
                    Some("installed") => s(&rt["policy"]),
                    _ => format!("{}: {}", s(&rt["reason"]), s(&rt["message"])),
                };
                vec![s(&rt["route"]), s(&rt["peer"]), s(&rt["state"]), what]
            })
            .collect();
        print_table(&["FLOWSPEC ROUTE", "PEER", "STATE", "POLICY OR WHY"], &rows);
    }
    println!("traffic that met no policy, by reason (packets since the daemon started):");
    let rows: Vec<Vec<String>> = r["unmatched_packets"]
        .as_object()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|(reason, c)| vec![reason.clone(), s(&c["packets"]), s(&c["bytes"])])
        .collect();
    print_table(&["REASON", "PACKETS", "BYTES"], &rows);
    Ok(())
}
