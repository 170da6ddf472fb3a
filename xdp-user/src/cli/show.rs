//! `ampguard vectors` and `ampguard status`.

use super::{
    client::{print_table, s, Client},
    ApiArgs,
};

pub fn vectors(api: &ApiArgs) -> anyhow::Result<()> {
    let r = Client::new(api)?.request("GET", "/v1/vectors", None)?;
    if api.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
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
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    println!(
        "ampguard {} up {}s, {}",
        s(&r["version"]),
        s(&r["uptime_secs"]),
        if r["healthy"] == true { "healthy" } else { "NOT HEALTHY" }
    );
    let rows: Vec<Vec<String>> = r["interfaces"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|i| {
            vec![
                s(&i["name"]),
                s(&i["ifindex"]),
                s(&i["mode"]),
                if i["attached"] == true { "yes".into() } else { format!("NO: {}", s(&i["problem"])) },
            ]
        })
        .collect();
    print_table(&["INTERFACE", "IFINDEX", "XDP MODE", "ATTACHED"], &rows);
    let p = &r["policies"];
    println!("policies: {} ({} enforce, {} monitor) of {}", s(&p["total"]), s(&p["enforce"]), s(&p["monitor"]), s(&p["capacity"]));
    println!("allowlist: {} entries", s(&r["allowlist"]["entries"]));
    println!("state file: {}, pins: {}", s(&r["state_file"]), s(&r["pin_dir"]));
    Ok(())
}
