//! `cargo xtask install`: build the release binary and install ampguard as a
//! systemd service.
//!
//! Installs (paths under `--dest-dir`, a staging root, when given):
//! - `PREFIX/bin/ampguard` (0755) and `PREFIX/bin/ampguard-fastnetmon-notify`
//!   (0755, deploy/fastnetmon-notify.sh pointing at that binary);
//! - `/etc/systemd/system/ampguard.service` (0644, deploy/ampguard.service);
//! - `PREFIX/share/ampguard/`: the Prometheus config, alert rules, Grafana
//!   dashboard and the FastNetMon note, for the operator to copy from;
//! - `/etc/ampguard/` (0700) with `ampguard.toml` (0600, deploy/ampguard.toml)
//!   and `token` (0600, 32 random bytes in hex): each only if absent, an
//!   operator's config and token are never overwritten;
//! - `/var/lib/ampguard/` (0700), the state directory;
//! - shell completions (`PREFIX/share/bash-completion/completions/ampguard`,
//!   `PREFIX/share/zsh/site-functions/_ampguard`,
//!   `PREFIX/share/fish/vendor_completions.d/ampguard.fish`) and man pages
//!   (`PREFIX/share/man/man1/ampguard.1`, `ampguard-SUBCOMMAND.1`), 0644, made
//!   by the installed binary itself (`ampguard completions SHELL`, `ampguard man`).
//!
//! Binaries are replaced by rename, so installing over a running daemon is safe
//! (the running process keeps its old file). PREFIX defaults to /usr/local; the
//! unit and the notify wrapper name `PREFIX/bin/ampguard` (without the staging
//! root). `--bin FILE` installs a given binary instead of building one.

use anyhow::{bail, Context, Result};
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

pub struct Options {
    pub prefix: PathBuf,
    pub dest_dir: Option<PathBuf>,
    pub bin: Option<PathBuf>,
}

/// The binary deploy/ names (the unit, the notify wrapper); install and deb replace it.
pub const DEFAULT_BIN: &str = "/usr/local/bin/ampguard";

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask/ is inside the workspace").to_path_buf()
}

/// `path` (absolute) under the staging root, if any.
fn staged(dest: &Option<PathBuf>, path: &Path) -> PathBuf {
    match dest {
        Some(d) => d.join(path.strip_prefix("/").unwrap_or(path)),
        None => path.to_path_buf(),
    }
}

fn mkdir(path: &Path, mode: u32, log: &mut Vec<String>) -> Result<()> {
    if path.is_dir() {
        log.push(format!("kept      {} (exists)", path.display()));
        return Ok(());
    }
    fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    log.push(format!("created   {} ({mode:o})", path.display()));
    Ok(())
}

/// Write `contents` to `path` with `mode`, replacing it atomically (temp file + rename).
fn replace(path: &Path, contents: &[u8], mode: u32, log: &mut Vec<String>) -> Result<()> {
    let dir = path.parent().context("no parent directory")?;
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir.join(format!(".{}.xtask-install", path.file_name().unwrap().to_string_lossy()));
    let _ = fs::remove_file(&tmp);
    let mut f =
        fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(contents)?;
    f.set_permissions(fs::Permissions::from_mode(mode))?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    log.push(format!("installed {} ({mode:o})", path.display()));
    Ok(())
}

/// Create `path` with `mode` only if it does not exist (O_EXCL: never overwrites).
fn create_if_absent(path: &Path, contents: &[u8], mode: u32, log: &mut Vec<String>) -> Result<bool> {
    match fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(path) {
        Ok(mut f) => {
            f.set_permissions(fs::Permissions::from_mode(mode))?;
            f.write_all(contents)?;
            f.sync_all()?;
            log.push(format!("created   {} ({mode:o})", path.display()));
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            log.push(format!("kept      {} (exists; not overwritten)", path.display()));
            Ok(false)
        }
        Err(e) => Err(e).with_context(|| format!("creating {}", path.display())),
    }
}

/// The output of `binary ARGS`.
pub fn generated(binary: &Path, args: &[&str]) -> Result<Vec<u8>> {
    let o = std::process::Command::new(binary).args(args).output().with_context(|| format!("running {}", binary.display()))?;
    if !o.status.success() || o.stdout.is_empty() {
        bail!("`{} {}` failed: {}", binary.display(), args.join(" "), String::from_utf8_lossy(&o.stderr).trim());
    }
    Ok(o.stdout)
}

/// `binary man --out-dir` into a scratch directory, then each page into `dir`.
pub fn man_pages(binary: &Path, dir: &Path, log: &mut Vec<String>) -> Result<()> {
    let scratch = std::env::temp_dir().join(format!("ampguard-man-{}", std::process::id()));
    let _ = fs::remove_dir_all(&scratch);
    fs::create_dir_all(&scratch)?;
    let made = std::process::Command::new(binary).arg("man").arg("--out-dir").arg(&scratch).output();
    let result = (|| -> Result<()> {
        let o = made.with_context(|| format!("running {}", binary.display()))?;
        if !o.status.success() {
            bail!("`{} man --out-dir` failed: {}", binary.display(), String::from_utf8_lossy(&o.stderr).trim());
        }
        let mut pages: Vec<PathBuf> = fs::read_dir(&scratch)?.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>()?;
        pages.sort();
        if !pages.iter().any(|p| p.file_name().is_some_and(|n| n == "ampguard.1")) {
            bail!("`{} man --out-dir` wrote no ampguard.1", binary.display());
        }
        for p in pages {
            replace(&dir.join(p.file_name().expect("a file")), &fs::read(&p)?, 0o644, log)?;
        }
        Ok(())
    })();
    let _ = fs::remove_dir_all(&scratch);
    result
}

fn random_token() -> Result<String> {
    let mut b = [0u8; 32];
    fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect::<String>() + "\n")
}

pub fn run(o: Options) -> Result<()> {
    if !o.prefix.is_absolute() {
        bail!("--prefix must be an absolute path, got {}", o.prefix.display());
    }
    if o.dest_dir.is_none() && !crate::preflight::is_root() {
        bail!("installing into / needs root: run `sudo cargo xtask install` (or stage it with --dest-dir DIR)");
    }
    let root = workspace_root();
    let deploy = root.join("deploy");
    let binary = match &o.bin {
        Some(b) => b.clone(),
        None => {
            crate::cargo::build_release_binary()?;
            root.join("target/release/ampguard")
        }
    };
    let bin_bytes = fs::read(&binary).with_context(|| format!("reading {}", binary.display()))?;
    let read = |name: &str| fs::read_to_string(deploy.join(name)).with_context(|| format!("reading deploy/{name}"));

    // The paths as the running system sees them (no staging root).
    let bin_path = o.prefix.join("bin/ampguard");
    let bin_str = bin_path.to_str().context("prefix is not UTF-8")?;
    let d = &o.dest_dir;
    let mut log = Vec::new();

    if let Some(dd) = d {
        fs::create_dir_all(dd).with_context(|| format!("creating {}", dd.display()))?;
    }
    replace(&staged(d, &bin_path), &bin_bytes, 0o755, &mut log)?;
    let notify = read("fastnetmon-notify.sh")?.replace(DEFAULT_BIN, bin_str);
    replace(&staged(d, &o.prefix.join("bin/ampguard-fastnetmon-notify")), notify.as_bytes(), 0o755, &mut log)?;
    let unit = read("ampguard.service")?.replace(DEFAULT_BIN, bin_str);
    replace(&staged(d, Path::new("/etc/systemd/system/ampguard.service")), unit.as_bytes(), 0o644, &mut log)?;
    let share = o.prefix.join("share/ampguard");
    for f in ["prometheus.yml", "ampguard-alerts.yml", "grafana-dashboard.json", "FASTNETMON.md"] {
        replace(&staged(d, &share.join(f)), read(f)?.as_bytes(), 0o644, &mut log)?;
    }

    for (shell, path) in [
        ("bash", "share/bash-completion/completions/ampguard"),
        ("zsh", "share/zsh/site-functions/_ampguard"),
        ("fish", "share/fish/vendor_completions.d/ampguard.fish"),
    ] {
        let script = generated(&binary, &["completions", shell])?;
        replace(&staged(d, &o.prefix.join(path)), &script, 0o644, &mut log)?;
    }
    man_pages(&binary, &staged(d, &o.prefix.join("share/man/man1")), &mut log)?;

    let etc = staged(d, Path::new("/etc/ampguard"));
    mkdir(&etc, 0o700, &mut log)?;
    let new_config = create_if_absent(&etc.join("ampguard.toml"), read("ampguard.toml")?.as_bytes(), 0o600, &mut log)?;
    create_if_absent(&etc.join("token"), random_token()?.as_bytes(), 0o600, &mut log)?;
    mkdir(&staged(d, Path::new("/var/lib/ampguard")), 0o700, &mut log)?;

    for l in &log {
        println!("{l}");
    }
    println!();
    if let Some(dd) = d {
        println!("staged under {}; copy that tree to the target's / to install it.", dd.display());
    }
    if new_config {
        println!("next: edit /etc/ampguard/ampguard.toml (`interfaces`, `allowlist`, profiles), then:");
    } else {
        println!("next:");
    }
    println!("  systemctl daemon-reload");
    println!("  systemctl enable --now ampguard      # or `systemctl restart ampguard` after an upgrade (no gap)");
    println!("  {bin_str} status                      # as root: reads /etc/ampguard/token");
    println!("  man ampguard                          # and completions for bash, zsh and fish (new shells)");
    println!("Prometheus, alert rules and Grafana dashboard: {}/; FastNetMon: {}/FASTNETMON.md", share.display(), share.display());
    Ok(())
}
