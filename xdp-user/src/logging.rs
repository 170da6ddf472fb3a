//! The daemon's log output on stderr: text for people (without its own
//! timestamp under systemd, whose journal adds one), or one JSON object per
//! line for a SIEM (`--log-format json`, or `log_format = "json"` in the
//! config). Audit events (target `ampguard::audit`, see api/audit.rs) carry
//! their details as fields in both.

use std::io::IsTerminal;

use serde::Deserialize;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line: timestamp, level, target, message and the fields.
    Json,
}

/// Is stderr the journal stream systemd connected? systemd sets
/// `JOURNAL_STREAM=<device>:<inode>` of that stream (systemd.exec(5)); a child
/// whose stderr was redirected elsewhere inherits the variable, so it counts
/// only if stderr is still that very file.
pub fn stderr_is_journal() -> bool {
    let Some(v) = std::env::var_os("JOURNAL_STREAM") else { return false };
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // Safety: fd 2 and a valid out pointer.
    if unsafe { libc::fstat(2, &mut st) } != 0 {
        return false;
    }
    journal_stream_matches(&v.to_string_lossy(), st.st_dev, st.st_ino)
}

/// `JOURNAL_STREAM`'s value names the file with this device and inode.
pub fn journal_stream_matches(value: &str, dev: u64, ino: u64) -> bool {
    let Some((d, i)) = value.split_once(':') else { return false };
    d.trim().parse::<u64>().is_ok_and(|d| d == dev) && i.trim().parse::<u64>().is_ok_and(|i| i == ino)
}

/// Install the daemon's subscriber (RUST_LOG filters, default `info`). A
/// second call does nothing.
pub fn init_daemon(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        // Fields at the top level (`jq .victim`), with the event's target
        // (`ampguard::audit` for audit lines).
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).with_span_list(false).try_init(),
        LogFormat::Text if stderr_is_journal() => builder.with_target(false).with_ansi(false).without_time().try_init(),
        LogFormat::Text => builder.with_target(false).with_ansi(std::io::stderr().is_terminal()).try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_stream_must_name_stderrs_own_device_and_inode() {
        assert!(journal_stream_matches("64769:1234567", 64769, 1234567));
        assert!(!journal_stream_matches("64769:1234567", 64769, 1234568), "another file (stderr redirected by a child)");
        assert!(!journal_stream_matches("64768:1234567", 64769, 1234567));
        assert!(!journal_stream_matches("", 0, 0));
        assert!(!journal_stream_matches("garbage", 0, 0));
        assert!(!journal_stream_matches("1:x", 1, 0));
    }
}
