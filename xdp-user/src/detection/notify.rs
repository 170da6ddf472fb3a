//! Telling others what detection did: a JSON POST to each configured webhook
//! (the body of ampguard's own generic alert, so a second ampguard can take
//! it at `/v1/alerts`), and a command run with FastNetMon's notify-script
//! contract (`COMMAND IP DIRECTION PPS ACTION`, details on stdin), so
//! automation written for FastNetMon works unchanged.
//!
//! Notifications go through a bounded queue to a task of their own: a slow
//! or dead receiver never delays detection or a ban. What cannot be queued
//! or delivered is counted and logged.

use std::{
    io::Write,
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use prometheus::IntCounterVec;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

/// `[detection.notify]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotifyConfig {
    /// URLs that get a JSON POST for every ban and unban (and report-mode detection).
    pub webhooks: Vec<String>,
    /// A bearer token for the webhooks (e.g. another ampguard's alert token).
    pub webhook_token_file: Option<PathBuf>,
    /// Per attempt (default 2,000 ms), and attempts after the first (default 2).
    pub webhook_timeout_ms: Option<u64>,
    pub webhook_retries: Option<u32>,
    /// A program run as FastNetMon runs its notify script.
    pub command: Option<PathBuf>,
    /// How long the command may run (default 10 s) before it is killed.
    pub command_timeout_secs: Option<u64>,
}

impl NotifyConfig {
    pub fn validate(&self) -> Result<(), String> {
        for u in &self.webhooks {
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                return Err(format!("detection.notify.webhooks: {u:?} is not an http:// or https:// URL"));
            }
        }
        if self.webhook_timeout_ms.is_some_and(|t| !(100..=60_000).contains(&t)) {
            return Err("detection.notify.webhook_timeout_ms must be in 100..=60000".into());
        }
        if self.webhook_retries.is_some_and(|r| r > 10) {
            return Err("detection.notify.webhook_retries must be at most 10".into());
        }
        if self.command_timeout_secs.is_some_and(|t| !(1..=600).contains(&t)) {
            return Err("detection.notify.command_timeout_secs must be in 1..=600".into());
        }
        if let Some(c) = &self.command {
            if !c.is_absolute() {
                return Err(format!("detection.notify.command {} must be an absolute path", c.display()));
            }
        }
        Ok(())
    }

    fn enabled(&self) -> bool {
        !self.webhooks.is_empty() || self.command.is_some()
    }
}

/// One notification: what the generic alert body says, and FastNetMon's argv.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Notice {
    /// The host address (an IPv6 /64: its first address; see the README).
    pub victim: String,
    /// "ban" or "unban".
    pub action: &'static str,
    pub vectors: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl_secs: Option<u64>,
    pub pps: u64,
    pub attack_type: String,
    pub comment: String,
    #[serde(skip)]
    pub bps: u64,
}

impl Notice {
    /// The details a FastNetMon notify script reads on stdin, in its format.
    fn fastnetmon_stdin(&self) -> String {
        if self.action == "unban" {
            return String::new();
        }
        let mbps = self.bps / 1_000_000;
        format!(
            "IP: {}\nAttack type: {}\nInitial attack power: {} packets per second\nPeak attack power: {} packets per second\n\
             Attack direction: incoming\nAttack protocol: udp\nTotal incoming traffic: {mbps} mbps\n\
             Total incoming pps: {} packets per second\nIncoming udp traffic: {mbps} mbps\nIncoming udp pps: {} packets per second\n\
             Detected by: ampguard ({})\n",
            self.victim, self.attack_type, self.pps, self.pps, self.pps, self.pps, self.comment
        )
    }
}

/// The sending side, kept by the detector.
#[derive(Clone)]
pub struct Notifier {
    tx: Option<mpsc::Sender<Notice>>,
    counts: IntCounterVec,
}

/// Notifications waiting at most; more are dropped (and counted).
const QUEUE: usize = 256;

impl Notifier {
    /// Start the notification task (none when nothing is configured).
    pub fn start(cfg: &NotifyConfig, counts: IntCounterVec) -> anyhow::Result<Self> {
        for kind in ["webhook", "command"] {
            for result in ["sent", "failed", "dropped"] {
                counts.with_label_values(&[kind, result]);
            }
        }
        if !cfg.enabled() {
            return Ok(Self { tx: None, counts });
        }
        let token = match &cfg.webhook_token_file {
            Some(p) => Some(
                std::fs::read_to_string(p)
                    .map_err(|e| anyhow::anyhow!("cannot read detection.notify.webhook_token_file {}: {e}", p.display()))?
                    .trim()
                    .to_string(),
            ),
            None => None,
        };
        let (tx, mut rx) = mpsc::channel::<Notice>(QUEUE);
        let cfg = cfg.clone();
        let c = counts.clone();
        tokio::spawn(async move {
            while let Some(n) = rx.recv().await {
                let (cfg, token, c) = (cfg.clone(), token.clone(), c.clone());
                // ureq and the child process block: off the runtime's workers.
                let _ = tokio::task::spawn_blocking(move || deliver(&cfg, token.as_deref(), &n, &c)).await;
            }
        });
        Ok(Self { tx: Some(tx), counts })
    }

    pub fn send(&self, n: Notice) {
        let Some(tx) = &self.tx else { return };
        if tx.try_send(n).is_err() {
            self.counts.with_label_values(&["webhook", "dropped"]).inc();
            tracing::warn!("detection: the notification queue is full ({QUEUE}); a notification was dropped");
        }
    }
}

fn deliver(cfg: &NotifyConfig, token: Option<&str>, n: &Notice, counts: &IntCounterVec) {
    let body = serde_json::to_vec(n).expect("serializable");
    let timeout = Duration::from_millis(cfg.webhook_timeout_ms.unwrap_or(2_000));
    let agent = ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(timeout)).build().new_agent();
    for url in &cfg.webhooks {
        let tries = 1 + cfg.webhook_retries.unwrap_or(2);
        let mut last = String::new();
        let mut ok = false;
        for attempt in 0..tries {
            if attempt > 0 {
                std::thread::sleep(Duration::from_millis(200 << attempt.min(5)));
            }
            let mut req = agent.post(url).header("Content-Type", "application/json");
            if let Some(t) = token {
                req = req.header("Authorization", &format!("Bearer {t}"));
            }
            match req.send(&body[..]) {
                Ok(r) if r.status().is_success() => {
                    ok = true;
                    break;
                }
                Ok(r) => last = format!("HTTP {}", r.status()),
                Err(e) => last = e.to_string(),
            }
        }
        if ok {
            counts.with_label_values(&["webhook", "sent"]).inc();
        } else {
            counts.with_label_values(&["webhook", "failed"]).inc();
            tracing::warn!(url = %url, "detection: webhook {} for {} failed after {tries} attempts: {last}", n.action, n.victim);
        }
    }
    if let Some(cmd) = &cfg.command {
        let timeout = Duration::from_secs(cfg.command_timeout_secs.unwrap_or(10));
        match run_command(cmd, n, timeout) {
            Ok(()) => counts.with_label_values(&["command", "sent"]).inc(),
            Err(e) => {
                counts.with_label_values(&["command", "failed"]).inc();
                tracing::warn!(command = %cmd.display(), "detection: notify command for {} {}: {e}", n.action, n.victim);
            }
        }
    }
}

/// `COMMAND IP incoming PPS ACTION`, the details on stdin; killed after `timeout`.
fn run_command(cmd: &std::path::Path, n: &Notice, timeout: Duration) -> Result<(), String> {
    let mut child = Command::new(cmd)
        .args([n.victim.as_str(), "incoming", &n.pps.to_string(), n.action])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start it: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A script that does not read its stdin is not an error.
        let _ = stdin.write_all(n.fastnetmon_stdin().as_bytes());
    }
    let start = std::time::Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(s)) if s.success() => return Ok(()),
            Ok(Some(s)) => return Err(format!("exited with {s}")),
            Ok(None) if start.elapsed() >= timeout => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("still running after {}s; killed", timeout.as_secs()));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::{fastnetmon, generic, AlertAction};

    fn notice(action: &'static str) -> Notice {
        Notice {
            victim: "203.0.113.10".into(),
            action,
            vectors: vec!["memcached".into()],
            ttl_secs: Some(600),
            pps: 5_000,
            bps: 56_000_000,
            attack_type: "memcached".into(),
            comment: "detector: 5000 pps".into(),
        }
    }

    #[test]
    fn the_webhook_body_is_a_generic_alert_ampguard_takes() {
        let body = serde_json::to_vec(&notice("ban")).unwrap();
        let a = generic::parse_generic(&body).unwrap();
        assert_eq!(a.victim.to_string(), "203.0.113.10");
        assert_eq!(
            (a.action, a.vectors.clone(), a.ttl_secs, a.pps),
            (AlertAction::Ban, vec!["memcached".to_string()], Some(600), Some(5_000))
        );
        let a = generic::parse_generic(&serde_json::to_vec(&notice("unban")).unwrap()).unwrap();
        assert_eq!(a.action, AlertAction::Unban);
    }

    #[test]
    fn the_command_gets_what_fastnetmon_gives_its_script() {
        // Our own FastNetMon parser reads the argv and stdin back.
        let n = notice("ban");
        let argv: Vec<String> = [n.victim.as_str(), "incoming", "5000", "ban"].iter().map(|s| s.to_string()).collect();
        let a = fastnetmon::parse_script(&argv, &n.fastnetmon_stdin(), &|_| None).unwrap().expect("incoming is acted on");
        assert_eq!(a.victim.to_string(), "203.0.113.10");
        assert_eq!((a.action, a.pps), (AlertAction::Ban, Some(5_000)));
        assert!(notice("unban").fastnetmon_stdin().is_empty(), "FastNetMon sends nothing on stdin with an unban");
    }

    #[test]
    fn bad_settings_are_named() {
        let c = NotifyConfig { webhooks: vec!["ftp://x".into()], ..Default::default() };
        assert!(c.validate().unwrap_err().contains("ftp://x"));
        let c = NotifyConfig { command: Some("notify.sh".into()), ..Default::default() };
        assert!(c.validate().unwrap_err().contains("absolute"));
    }
}
