//! `cargo xtask deb`: build release and package `target/debian/ampguard_<version>_amd64.deb`
//! with cargo-deb (pinned in setup.rs).
//!
//! cargo-deb's metadata is `[package.metadata.deb]` in xdp-user/Cargo.toml; the
//! maintainer scripts, changelog and copyright are deploy/debian/. What the
//! package needs that is not a file of the repository is generated here into
//! `deploy/debian/generated/` (git-ignored; cargo-deb would strip and not
//! gzip files under target/release/) first, from deploy/ and the built binary:
//! - the unit and the FastNetMon wrapper, naming `/usr/sbin/ampguard`;
//! - the conffile `/etc/ampguard/ampguard.toml`: deploy/ampguard.toml with its
//!   example `interfaces = ["eth1"]` replaced by `interfaces = []` (a fresh
//!   install attaches to nothing; `ampguard run` refuses to start until the
//!   operator names an interface), so deploy/ stays the one source;
//! - the completions and man pages, made by the built binary itself with
//!   install.rs's code (`ampguard completions SHELL`, `ampguard man --out-dir`).
//!
//! Then `cargo deb -p xdp-user --no-build`: the build already ran, and cargo-deb
//! strips the binary, adds the shared-library dependencies (dpkg-shlibdeps) and
//! gzips the man pages; the changelog is gzipped here, as a native package's
//! `changelog.gz`.

use crate::cmd;
use crate::install::{self, DEFAULT_BIN};
use anyhow::{bail, Context, Result};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where the package installs the binary: everything ampguard does needs root
/// (the daemon loads XDP; the CLI reads the root-only token), so it is a system
/// administration command (FHS: /usr/sbin).
pub const PACKAGED_BIN: &str = "/usr/sbin/ampguard";

/// The line of deploy/ampguard.toml that the package replaces.
const EXAMPLE_INTERFACES: &str = "interfaces = [\"eth1\"]\n";
/// What replaces it; every added line starts with `# Packaged:`.
const PACKAGED_INTERFACES: &str = "# Packaged: none, so a fresh install attaches to nothing; `ampguard run`\n\
# Packaged: refuses to start until interfaces are named here, e.g. [\"eth1\"].\n\
interfaces = []\n";

/// deploy/ampguard.toml as the package ships it.
pub fn packaged_config(deploy_toml: &str) -> Result<String> {
    let n = deploy_toml.matches(EXAMPLE_INTERFACES).count();
    if n != 1 {
        bail!(
            "deploy/ampguard.toml should have the line {:?} exactly once (found {n}): update xtask/src/deb.rs",
            EXAMPLE_INTERFACES.trim()
        );
    }
    Ok(deploy_toml.replace(EXAMPLE_INTERFACES, PACKAGED_INTERFACES))
}

/// The version of the first deploy/debian/changelog entry: `ampguard (0.1.0) unstable; ...`.
fn changelog_version(changelog: &str) -> Option<&str> {
    let first = changelog.lines().next()?;
    first.strip_prefix("ampguard (")?.split(')').next()
}

fn package_version(root: &Path) -> Result<String> {
    let manifest = fs::read_to_string(root.join("xdp-user/Cargo.toml"))?;
    manifest
        .lines()
        .find_map(|l| l.strip_prefix("version = \"").and_then(|v| v.strip_suffix('"')))
        .map(str::to_owned)
        .context("no version in xdp-user/Cargo.toml")
}

fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|t| if t.is_absolute() { t } else { root.join(t) })
        .unwrap_or_else(|| root.join("target"))
}

/// Builds (unless `no_build`) and packages; returns the .deb's path.
pub fn run(no_build: bool) -> Result<PathBuf> {
    let root = install::workspace_root();
    let version = package_version(&root)?;
    let changelog = fs::read_to_string(root.join("deploy/debian/changelog"))?;
    if changelog_version(&changelog) != Some(version.as_str()) {
        bail!(
            "deploy/debian/changelog's first entry is {:?} but xdp-user is {version}: add an entry for {version} (`dch -v {version}`, or by hand)",
            changelog_version(&changelog).unwrap_or("unreadable")
        );
    }
    let cargo_deb = crate::setup::find_tool("cargo-deb")
        .context(format!("cargo-deb {} is not installed: run `sudo cargo xtask setup`", crate::setup::CARGO_DEB_VERSION))?;
    if !no_build {
        crate::cargo::build_release_binary()?;
    }
    let release = target_dir(&root).join("release");
    let binary = release.join("ampguard");
    if !binary.is_file() {
        bail!("{} is missing: run `cargo build --release -p xdp-user --bins` (or drop --no-build)", binary.display());
    }

    let stage = root.join("deploy/debian/generated");
    let _ = fs::remove_dir_all(&stage);
    fs::create_dir_all(stage.join("completions"))?;
    let read = |name: &str| fs::read_to_string(root.join("deploy").join(name)).with_context(|| format!("reading deploy/{name}"));
    let write = |name: &str, contents: &[u8]| {
        fs::write(stage.join(name), contents).with_context(|| format!("writing {}", stage.join(name).display()))
    };
    let with_bin = |name: &str| -> Result<String> {
        let s = read(name)?;
        if !s.contains(DEFAULT_BIN) {
            bail!("deploy/{name} no longer names {DEFAULT_BIN}: update xtask/src/deb.rs");
        }
        Ok(s.replace(DEFAULT_BIN, PACKAGED_BIN))
    };
    write("ampguard.service", with_bin("ampguard.service")?.as_bytes())?;
    write("ampguard-fastnetmon-notify", with_bin("fastnetmon-notify.sh")?.as_bytes())?;
    write("ampguard.toml", packaged_config(&read("ampguard.toml")?)?.as_bytes())?;
    for (shell, file) in [("bash", "ampguard"), ("zsh", "_ampguard"), ("fish", "ampguard.fish")] {
        write(&format!("completions/{file}"), &install::generated(&binary, &["completions", shell])?)?;
    }
    let mut log = Vec::new();
    install::man_pages(&binary, &stage.join("man"), &mut log)?;
    // gzip -9n: no name or timestamp in the header, so the same changelog makes the same bytes.
    let gz = Command::new("gzip").args(["-9n", "-c"]).arg(root.join("deploy/debian/changelog")).output().context("running gzip")?;
    if !gz.status.success() {
        bail!("gzip deploy/debian/changelog: {}", String::from_utf8_lossy(&gz.stderr));
    }
    write("changelog.gz", &gz.stdout)?;

    let deb = target_dir(&root).join("debian").join(format!("ampguard_{version}_amd64.deb"));
    let _ = fs::remove_file(&deb);
    cmd::run(Command::new(cargo_deb).current_dir(&root).args(["deb", "-p", "xdp-user", "--no-build", "--output"]).arg(&deb))?;
    if !deb.is_file() {
        bail!("cargo deb did not write {}", deb.display());
    }
    println!("built {}", deb.display());
    println!("install: dpkg -i {}   (then edit /etc/ampguard/ampguard.toml and `systemctl enable --now ampguard`)", deb.display());
    Ok(deb)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_packaged_config_is_deploys_with_no_interface_and_nothing_else_changed() {
        let root = install::workspace_root();
        let deploy = fs::read_to_string(root.join("deploy/ampguard.toml")).unwrap();
        let packaged = packaged_config(&deploy).unwrap();
        assert!(packaged.lines().any(|l| l == "interfaces = []"), "{packaged}");
        assert!(!packaged.contains("interfaces = [\"eth1\"]"));
        let kept: Vec<&str> = packaged.lines().filter(|l| !l.starts_with("# Packaged:") && !l.starts_with("interfaces =")).collect();
        let orig: Vec<&str> = deploy.lines().filter(|l| !l.starts_with("interfaces =")).collect();
        assert_eq!(kept, orig);
        assert!(packaged_config("interfaces = [\"eth0\"]\n").is_err(), "a changed example is noticed, not shipped");
    }

    #[test]
    fn the_changelog_names_the_package_version() {
        let root = install::workspace_root();
        let changelog = fs::read_to_string(root.join("deploy/debian/changelog")).unwrap();
        assert_eq!(changelog_version(&changelog), Some(package_version(&root).unwrap().as_str()));
        assert_eq!(changelog_version("ampguard (1.2.3) unstable; urgency=medium\n"), Some("1.2.3"));
        assert_eq!(changelog_version("other (1.2.3) unstable\n"), None);
    }
}
