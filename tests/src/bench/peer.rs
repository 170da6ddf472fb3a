//! The peer: xdp-filter from Debian's xdp-tools, configured as a memcached
//! reflection filter (`xdp-filter load IF -m native -f udp`, then
//! `xdp-filter port 11211 -m src`), measured beside ampguard in the same run.
//!
//! It is only ever loaded on a lab veth inside the bench's namespaces, and
//! unloaded (`xdp-filter unload IF --all`) when its [`XdpFilter`] is dropped,
//! so on error paths too; a lab's namespaces, if the bench is killed, take the
//! attachment with them. libxdp pins its state in a bpffs: `ip netns exec`
//! mounts a fresh /sys for the command, so [`Bpffs`] mounts a private one
//! that `LIBXDP_BPFFS` points at.
//!
//! The program xdp-filter attached is opened by id (BPF_PROG_GET_FD_BY_ID,
//! aya's `Xdp::from_program_info`): part 1 runs it through the same in-process
//! BPF_PROG_TEST_RUN as ampguard's paths, and its own per-action statistics
//! (`xdp_stats_map`, a per-CPU array of {packets, bytes} by XDP action) are
//! what part 2 counts as dropped.

use std::path::PathBuf;

use ampguard_tests::lab::Netns;
use anyhow::{Context, Result};
use aya::{
    maps::{Map, MapData, MapInfo, PerCpuArray},
    programs::{loaded_programs, Xdp},
};
use aya_obj::programs::XdpAttachType;

/// The commands that configure the peer, for the report.
pub const COMMANDS: &str = "xdp-filter load IF -m native -f udp; xdp-filter port 11211 -m src";

/// A bpffs mounted on a private directory for libxdp; unmounted on drop.
pub struct Bpffs {
    pub dir: PathBuf,
}

impl Bpffs {
    pub fn mount() -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("ampguard-bench-bpffs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let c = std::ffi::CString::new(dir.to_string_lossy().as_bytes())?;
        // SAFETY: valid NUL-terminated strings; a bpffs mount has no data argument.
        let rc = unsafe { libc::mount(c"bpf".as_ptr(), c.as_ptr(), c"bpf".as_ptr(), 0, std::ptr::null()) };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            let _ = std::fs::remove_dir(&dir);
            return Err(e).with_context(|| format!("mounting a bpffs on {} for libxdp", dir.display()));
        }
        Ok(Self { dir })
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        if let Ok(c) = std::ffi::CString::new(self.dir.to_string_lossy().as_bytes()) {
            // SAFETY: valid path; MNT_DETACH never blocks.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// xdp-filter loaded on one interface of a lab namespace.
pub struct XdpFilter {
    ns: Netns,
    ifname: String,
    bpffs: PathBuf,
    prog: Option<Xdp>,
    stats: Option<Stats>,
    loaded: bool,
}

/// xdp-filter's per-action statistics map.
pub struct Stats(PerCpuArray<MapData, [u64; 2]>);

const XDP_DROP: u32 = 1;

impl Stats {
    fn open(id: u32) -> Result<Self> {
        Ok(Self(PerCpuArray::try_from(Map::PerCpuArray(MapData::from_id(id).context("opening xdp_stats_map")?))?))
    }

    /// Packets xdp-filter has dropped so far (its XDP_DROP statistics, all CPUs).
    pub fn dropped(&self) -> Result<u64> {
        Ok(self.0.get(&XDP_DROP, 0).context("reading xdp_stats_map")?.iter().map(|v| v[0]).sum())
    }
}

impl XdpFilter {
    fn xdp_filter(ns: &Netns, bpffs: &std::path::Path, args: &[&str]) -> Result<()> {
        let env = format!("LIBXDP_BPFFS={}", bpffs.display());
        let mut full = vec!["env", env.as_str(), "xdp-filter"];
        full.extend_from_slice(args);
        ns.exec(&full).with_context(|| format!("xdp-filter {} (is xdp-tools installed? run `sudo cargo xtask setup`)", args.join(" ")))?;
        Ok(())
    }

    /// Loads and configures xdp-filter on `ifname` in `ns` (native mode).
    pub fn load(ns: &Netns, ifname: &str, bpffs: &Bpffs) -> Result<Self> {
        Self::xdp_filter(ns, &bpffs.dir, &["load", ifname, "-m", "native", "-f", "udp"])?;
        // From here on, Drop unloads it whatever fails next.
        let mut me = Self { ns: ns.clone(), ifname: ifname.to_string(), bpffs: bpffs.dir.clone(), prog: None, stats: None, loaded: true };
        Self::xdp_filter(ns, &bpffs.dir, &["port", "11211", "-m", "src"])?;
        let id = attached_prog_id(ns, ifname)?;
        let info = loaded_programs()
            .filter_map(|p| p.ok())
            .find(|p| p.id() == id)
            .with_context(|| format!("xdp-filter's program {id} is not among the loaded programs"))?;
        let map_ids = info.map_ids().context("xdp-filter's map ids")?.unwrap_or_default();
        let prog =
            Xdp::from_program_info(info, "xdp-filter".into(), XdpAttachType::Interface).context("opening xdp-filter's program by id")?;
        let stats_id = map_ids
            .into_iter()
            .find(|m| MapInfo::from_id(*m).ok().and_then(|i| i.name_as_str().map(|n| n == "xdp_stats_map")).unwrap_or(false))
            .context("xdp-filter's program has no xdp_stats_map")?;
        me.stats = Some(Stats::open(stats_id)?);
        me.prog = Some(prog);
        Ok(me)
    }

    /// Packets xdp-filter has dropped so far.
    pub fn dropped(&self) -> Result<u64> {
        self.stats.as_ref().expect("set by load").dropped()
    }

    /// Unloads xdp-filter from the interface but keeps its program and
    /// statistics open (for BPF_PROG_TEST_RUN): the kernel frees a program
    /// only once no fd and no attachment holds it.
    pub fn detach_keep(mut self) -> Result<(Xdp, Stats)> {
        self.unload()?;
        Ok((self.prog.take().expect("set by load"), self.stats.take().expect("set by load")))
    }

    fn unload(&mut self) -> Result<()> {
        if self.loaded {
            self.loaded = false;
            Self::xdp_filter(&self.ns, &self.bpffs, &["unload", &self.ifname, "--all"])?;
        }
        Ok(())
    }
}

impl Drop for XdpFilter {
    fn drop(&mut self) {
        if let Err(e) = self.unload() {
            eprintln!("bench: unloading xdp-filter from {} in {}: {e:#}", self.ifname, self.ns.name);
        }
    }
}

/// The id of the XDP program attached to `ifname` in `ns` (`ip -j link show`).
fn attached_prog_id(ns: &Netns, ifname: &str) -> Result<u32> {
    let out = ns.ip(&["-j", "link", "show", ifname])?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("parsing `ip -j link show`")?;
    v.get(0)
        .and_then(|l| l.get("xdp"))
        .and_then(|x| x.get("prog"))
        .and_then(|p| p.get("id"))
        .and_then(|id| id.as_u64())
        .map(|id| id as u32)
        .with_context(|| format!("no XDP program on {ifname} after `xdp-filter load`"))
}
