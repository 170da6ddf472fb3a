//! `ampguard allow add|del|list`.

use anyhow::Context;
use clap::Subcommand;
use serde_json::json;

use super::{
    client::{clean, print_json, print_table, s, Client},
    ApiArgs,
};

#[derive(Subcommand)]
pub enum AllowCmd {
    /// Allowlist a source prefix (e.g. the victim's own resolvers).
    Add {
        prefix: String,
        #[arg(long)]
        comment: Option<String>,
    },
    /// Remove an allowlist entry, by id or prefix.
    #[command(alias = "rm", alias = "delete")]
    Del { id_or_prefix: String },
    /// List the allowlist.
    List,
}

pub fn run(cmd: AllowCmd, api: &ApiArgs) -> anyhow::Result<()> {
    let c = Client::new(api)?;
    match cmd {
        AllowCmd::Add { prefix, comment } => {
            let r = c.request("POST", "/v1/allowlist", Some(&json!({"prefix": prefix, "comment": comment})))?;
            if api.json {
                return print_json(&r);
            }
            println!("allowlisted {} as {}", s(&r["prefix"]), s(&r["id"]));
        }
        AllowCmd::Del { id_or_prefix } => {
            let list = c.request("GET", "/v1/allowlist", None)?;
            let entries = list["allowlist"].as_array().cloned().unwrap_or_default();
            let entry =
                entries.iter().find(|e| e["id"] == id_or_prefix.as_str() || e["prefix"] == id_or_prefix.as_str()).cloned().with_context(
                    || format!("no allowlist entry {} (entries from the config file are changed there)", clean(&id_or_prefix)),
                )?;
            let id = s(&entry["id"]);
            c.request("DELETE", &format!("/v1/allowlist/{id}"), None)?;
            if api.json {
                return print_json(&json!({"removed": entry}));
            }
            println!("removed {id} ({})", s(&entry["prefix"]));
        }
        AllowCmd::List => {
            let r = c.request("GET", "/v1/allowlist", None)?;
            if api.json {
                return print_json(&r);
            }
            let mut rows: Vec<Vec<String>> = r["allowlist"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|e| vec![s(&e["id"]), s(&e["prefix"]), s(&e["comment"])])
                .collect();
            for p in r["from_config"].as_array().cloned().unwrap_or_default() {
                rows.push(vec!["(config)".into(), s(&p), "-".into()]);
            }
            print_table(&["ID", "PREFIX", "COMMENT"], &rows);
        }
    }
    Ok(())
}
