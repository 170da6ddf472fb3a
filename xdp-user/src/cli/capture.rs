//! `ampguard capture`: write sampled dropped/limited/monitored packets as a
//! pcap that tcpdump and Wireshark open.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use super::{client::Client, ApiArgs};

#[derive(Args, Debug)]
pub struct CaptureArgs {
    /// Where to write the pcap.
    #[arg(long)]
    pub out: PathBuf,
    /// Stop after this many packets (1-10000).
    #[arg(long, default_value_t = 100)]
    pub count: usize,
    /// Only packets to addresses in this prefix.
    #[arg(long)]
    pub victim: Option<String>,
    /// Stop after this many seconds (1-300).
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
}

pub fn run(args: CaptureArgs, api: &ApiArgs) -> anyhow::Result<()> {
    let mut path = format!("/v1/capture?count={}&seconds={}", args.count, args.seconds);
    if let Some(v) = &args.victim {
        path.push_str(&format!("&victim={}", v.replace('/', "%2F").replace(':', "%3A")));
    }
    eprintln!("capturing up to {} dropped/limited/monitored packets for at most {} s ...", args.count, args.seconds);
    let (pcap, samples) = Client::new(api)?.get_bytes(&path)?;
    std::fs::write(&args.out, &pcap).with_context(|| format!("writing {}", args.out.display()))?;
    if api.json {
        let packets = samples.as_deref().and_then(|n| n.parse::<u64>().ok());
        return super::client::print_json(&serde_json::json!({
            "file": args.out, "packets": packets, "bytes": pcap.len(),
            "max_count": args.count, "max_seconds": args.seconds, "victim": args.victim,
        }));
    }
    println!(
        "wrote {} packets to {} (first 128 bytes of each; open with tcpdump -r or Wireshark)",
        samples.unwrap_or_else(|| "?".into()),
        args.out.display()
    );
    Ok(())
}
