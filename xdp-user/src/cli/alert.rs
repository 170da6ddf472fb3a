//! `ampguard alert fastnetmon IP DIRECTION PPS ACTION`: a drop-in FastNetMon
//! notify script (through the wrapper in deploy/, since FastNetMon passes only
//! its four arguments). It reads all of stdin for `ban` and `attack_details`
//! (FastNetMon writes the attack details there and expects them read), infers
//! the vectors from the packet dump, and posts the alert to the daemon.

use anyhow::Context;
use clap::Subcommand;

use super::{
    client::{clean, print_json, Client},
    ApiArgs,
};
use crate::{alerts, vectors::VectorTable};

#[derive(Subcommand)]
pub enum AlertCmd {
    /// FastNetMon notify script: IP DIRECTION PPS ACTION, details on stdin.
    /// Options may come anywhere; after `--` everything is one of the four.
    Fastnetmon {
        /// The attacked address, as FastNetMon passes it.
        ip: String,
        /// "incoming" or "outgoing".
        direction: String,
        /// The attack's packets per second.
        #[arg(allow_negative_numbers = true)]
        pps: String,
        /// "ban", "attack_details" or "unban".
        action: String,
    },
}

pub fn run(cmd: AlertCmd, api: &ApiArgs) -> anyhow::Result<()> {
    match cmd {
        AlertCmd::Fastnetmon { ip, direction, pps, action } => {
            let args = vec![ip, direction, pps, action];
            let action = args.get(3).map(String::as_str).unwrap_or("");
            let mut stdin = String::new();
            if matches!(action, "ban" | "attack_details") {
                // Read it all, even past what we parse (FastNetMon waits for the
                // pipe to drain), but keep only the first MAX_STDIN_BYTES.
                stdin = alerts::fastnetmon::read_details(&mut std::io::stdin().lock(), alerts::fastnetmon::MAX_STDIN_BYTES)
                    .context("reading the attack details from stdin")?;
            }
            // The daemon's vector table may have custom ports; the built-in
            // table is what the script can know without a round trip.
            let table = VectorTable::default();
            let alert = match alerts::fastnetmon::parse_script(&args, &stdin, &|p| table.name_of_port(p)) {
                Ok(Some(a)) => a,
                Ok(None) => {
                    if api.json {
                        return print_json(
                            &serde_json::json!({"result": "ignored", "message": format!("FastNetMon call {args:?}: nothing to do")}),
                        );
                    }
                    eprintln!("ampguard: ignoring FastNetMon call {args:?} (nothing to do)");
                    return Ok(());
                }
                Err(e) => anyhow::bail!("FastNetMon call {args:?}: {e}"),
            };
            let r = Client::new(api)?.request("POST", "/v1/alerts", Some(&alerts::to_generic_json(&alert)))?;
            if api.json {
                return print_json(&r);
            }
            println!("{}", clean(r["message"].as_str().unwrap_or("done")));
            Ok(())
        }
    }
}
