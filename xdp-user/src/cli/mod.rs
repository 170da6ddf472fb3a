//! The command line: `ampguard run` (the daemon) and the client subcommands
//! that talk to its API. One file per subcommand.

mod alert;
mod allow;
mod capture;
pub(crate) mod client;
mod detach;
mod policy;
mod show;
mod top;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::daemon;

#[derive(Parser)]
#[command(name = "ampguard", version = crate::LONG_VERSION, about = "Stops reflection/amplification DDoS floods at the edge with XDP")]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Where the daemon's API is and how to authenticate.
#[derive(Args, Clone, Debug)]
pub(crate) struct ApiArgs {
    /// Base URL of the daemon's API: http://... or https://... (a daemon serving TLS).
    #[arg(long, env = "AMPGUARD_API", default_value = "http://127.0.0.1:9470", global = true)]
    pub api: String,
    /// File holding the bearer token (the daemon's token_file).
    #[arg(long, env = "AMPGUARD_TOKEN_FILE", default_value = "/etc/ampguard/token", global = true)]
    pub token_file: PathBuf,
    /// With an https:// --api: trust the CA certificates (PEM) in this file instead of the built-in public roots.
    #[arg(long, env = "AMPGUARD_CA_FILE", global = true, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM chain, leaf first) for a daemon with tls.client_ca_file; needs --key.
    #[arg(long, env = "AMPGUARD_CERT_FILE", global = true, value_name = "FILE", requires = "key")]
    pub cert: Option<PathBuf>,
    /// The client certificate's private key (PEM); needs --cert.
    #[arg(long, env = "AMPGUARD_KEY_FILE", global = true, value_name = "FILE", requires = "cert")]
    pub key: Option<PathBuf>,
    /// Print JSON instead of text (every client subcommand; `top`: one document a line per refresh).
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Subcommand)]
pub(crate) enum Command {
    /// Run the daemon: attach XDP, serve the API, enforce policies.
    Run(daemon::RunArgs),
    /// Stop enforcing: detach XDP from every interface. With a daemon running
    /// it goes through the API and stays detached (through restarts) until
    /// `ampguard attach`; with none, it removes the pinned links and maps.
    Detach {
        #[command(flatten)]
        args: daemon::DetachArgs,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Enforce again after `ampguard detach` (the daemon attaches XDP to its interfaces).
    Attach {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Add, change, list, show or delete victim policies.
    Policy {
        #[command(subcommand)]
        cmd: policy::PolicyCmd,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Manage the allowlist of source prefixes no policy touches.
    Allow {
        #[command(subcommand)]
        cmd: allow::AllowCmd,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Feed a detector's alert to the daemon.
    Alert {
        #[command(subcommand)]
        cmd: alert::AlertCmd,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// List the amplification vectors and their default rules.
    Vectors {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Show the daemon's state: interfaces, policies, unmatched traffic.
    Status {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Live view of the victims under attack: dropped/limited/passed rates per vector.
    Top {
        #[command(flatten)]
        args: top::TopArgs,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Write sampled dropped/limited/monitored packets to a pcap file.
    Capture {
        #[command(flatten)]
        args: capture::CaptureArgs,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Print a shell completion script (cargo xtask install puts them where the shells look).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), e.g. `ampguard man | man -l -`; or write one per subcommand.
    Man {
        /// Write ampguard.1 and ampguard-SUBCOMMAND.1 pages into this directory instead.
        #[arg(long)]
        out_dir: Option<PathBuf>,
    },
}

/// Run the command line. An error is printed as one line (its causes joined,
/// never a backtrace, whatever RUST_BACKTRACE says) and exits 1.
pub fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Run(_)) {
        // Client commands die quietly of SIGPIPE when their reader goes away
        // (`ampguard policy list | head -1`), as `ls` or `cat` do, instead of
        // panicking on EPIPE. Not the daemon: it keeps Rust's SIG_IGN, and its
        // sockets see EPIPE as an error. (std's TCP writes use MSG_NOSIGNAL,
        // so the client's API connection is not affected either.)
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    if let Err(e) = dispatch(cli) {
        // "Error: " as Rust's own report of main's error says it (scripts and
        // tests match it), but one line: the causes joined, no backtrace.
        eprintln!("Error: {e:#}");
        std::process::exit(1);
    }
    Ok(())
}

fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run(args) => daemon::run(args),
        Command::Detach { args, api } => detach::detach(args, &api),
        Command::Attach { api } => detach::attach(&api),
        Command::Policy { cmd, api } => policy::run(cmd, &api),
        Command::Allow { cmd, api } => allow::run(cmd, &api),
        Command::Alert { cmd, api } => alert::run(cmd, &api),
        Command::Vectors { api } => show::vectors(&api),
        Command::Status { api } => show::status(&api),
        Command::Top { args, api } => top::run(args, &api),
        Command::Capture { args, api } => capture::run(args, &api),
        Command::Completions { shell } => {
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut <Cli as clap::CommandFactory>::command(), "ampguard", &mut out);
            write_stdout(&out)
        }
        Command::Man { out_dir: None } => write_stdout(&man_page()?),
        Command::Man { out_dir: Some(dir) } => {
            clap_mangen::generate_to(<Cli as clap::CommandFactory>::command(), &dir)
                .map_err(|e| anyhow::anyhow!("writing the man pages into {}: {e}", dir.display()))?;
            Ok(())
        }
    }
}

/// The man page of `ampguard` and its subcommands, in roff.
pub(crate) fn man_page() -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    clap_mangen::Man::new(<Cli as clap::CommandFactory>::command()).render(&mut out)?;
    Ok(out)
}

fn write_stdout(bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|_| out.flush()) {
        // `ampguard man | head`: the reader had enough.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => Ok(r?),
    }
}
