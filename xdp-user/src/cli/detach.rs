//! `ampguard detach` and `ampguard attach`.
//!
//! With a daemon running (it holds the pin directory's lock), removing the
//! pins behind its back would only last until its watchdog put them back, so
//! the detach goes through the API: the daemon detaches, records it, and
//! stays detached until `ampguard attach`. With no daemon, detach removes the
//! pinned links and maps itself (holding the lock, so none starts meanwhile).

use serde_json::json;

use super::{client::Client, ApiArgs};
use crate::daemon::{self, lock, pins, DetachArgs};

pub fn detach(args: DetachArgs, api: &ApiArgs) -> anyhow::Result<()> {
    let cfg = daemon::load_config(args.config.as_deref())?;
    let pin_dir = pins::locate(&args.pin_dir.unwrap_or(cfg.pin_dir));
    if !pin_dir.exists() {
        return report(
            api,
            json!({"detached": [], "pin_dir": pin_dir}),
            &format!("nothing was attached (no pin directory {})", pin_dir.display()),
        );
    }
    match lock::lock_pin_dir(&pin_dir)? {
        Some(_held) => {
            let ifaces = daemon::remove_pins(&pin_dir)?;
            let text = if ifaces.is_empty() {
                format!("nothing was attached (no pinned links in {})", pin_dir.display())
            } else {
                format!("detached from {} and removed the pins in {} (no daemon was running)", ifaces.join(", "), pin_dir.display())
            };
            report(api, json!({"detached": ifaces, "pin_dir": pin_dir, "daemon": null}), &text)
        }
        None => {
            let pid = lock::holder_of(&pin_dir).map_or_else(|| "?".into(), |p| p.to_string());
            let who = format!("ampguard detach (uid {})", unsafe { libc::getuid() });
            let client = Client::new(api).map_err(|e| {
                anyhow::anyhow!("{e:#}\nthe daemon (pid {pid}) runs; detach goes through its API so that it stays detached")
            })?;
            let v = client.request("POST", "/v1/detach", Some(&json!({"reason": who})))?;
            let ifaces: Vec<String> = v["detached"].as_array().into_iter().flatten().filter_map(|i| i.as_str().map(String::from)).collect();
            let text = format!(
                "the running daemon (pid {pid}) detached from {}: NOT enforcing, and it stays so through restarts until `ampguard attach`",
                if ifaces.is_empty() { "nothing more (already detached)".to_string() } else { ifaces.join(", ") }
            );
            report(api, v, &text)
        }
    }
}

pub fn attach(api: &ApiArgs) -> anyhow::Result<()> {
    let v = Client::new(api)?.request("POST", "/v1/attach", Some(&json!({})))?;
    let ifaces: Vec<String> = v["attached"].as_array().into_iter().flatten().filter_map(|i| i.as_str().map(String::from)).collect();
    let text = if ifaces.is_empty() {
        "already enforcing on every interface".to_string()
    } else {
        format!("enforcing again on {}", ifaces.join(", "))
    };
    report(api, v, &text)
}

fn report(api: &ApiArgs, v: serde_json::Value, text: &str) -> anyhow::Result<()> {
    if api.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("{text}");
    }
    Ok(())
}
