//! Machine facts, CPU pinning, and what the kernel reports about programs and
//! maps (the same BPF_OBJ_GET_INFO_BY_FD and /proc/self/fdinfo fields that
//! `bpftool prog show` / `bpftool map show` print).

use std::process::Command;

use anyhow::{Context, Result};
use aya::{maps::MapInfo, programs::Xdp};

/// Pins the calling thread to one CPU.
pub fn pin_to_cpu(cpu: usize) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is valid; sched_setaffinity(0) affects this thread.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("pinning to CPU {cpu}"));
    }
    Ok(())
}

/// Lets the calling thread (and what it spawns from now on) run on every CPU.
pub fn unpin() -> Result<()> {
    // Not available_parallelism(): that is the affinity mask, i.e. 1 once pinned.
    // SAFETY: sysconf has no preconditions.
    let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as usize;
    // SAFETY: as in pin_to_cpu.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for c in 0..cpus {
            libc::CPU_SET(c, &mut set);
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("unpinning");
    }
    Ok(())
}

pub struct Machine {
    pub kernel: String,
    pub cpu_model: String,
    pub cpus: usize,
    pub date: String,
    pub loadavg: String,
    pub mem_total: String,
}

fn first_line_with(path: &str, key: &str) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    Some(line.split_once(':')?.1.trim().to_string())
}

fn command_out(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

impl Machine {
    pub fn probe() -> Self {
        Self {
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| "unknown".into()),
            cpu_model: first_line_with("/proc/cpuinfo", "model name").unwrap_or_else(|| "unknown".into()),
            cpus: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            date: command_out("date", &["-u", "+%Y-%m-%d %H:%M UTC"]).unwrap_or_else(|| "unknown".into()),
            loadavg: std::fs::read_to_string("/proc/loadavg")
                .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
                .unwrap_or_default(),
            mem_total: first_line_with("/proc/meminfo", "MemTotal").unwrap_or_default(),
        }
    }
}

/// The source revision: `--rev` if given, else `git describe` of the workspace.
pub fn source_rev(explicit: Option<&str>) -> String {
    if let Some(r) = explicit {
        return r.to_string();
    }
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let Some(head) = command_out("git", &["-C", root, "rev-parse", "--short=12", "HEAD"]) else {
        return "unknown (not a git checkout)".into();
    };
    let dirty = command_out("git", &["-C", root, "status", "--porcelain", "--untracked-files=no"]).map(|s| !s.is_empty()).unwrap_or(false);
    if dirty {
        format!("{head} + uncommitted changes")
    } else {
        head
    }
}

/// `memlock` of a BPF object fd, from /proc/self/fdinfo (what bpftool prints).
pub(crate) fn fdinfo_memlock(fd: i32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
    text.lines().find_map(|l| l.strip_prefix("memlock:").and_then(|v| v.trim().parse().ok()))
}

pub struct ProgFacts {
    pub name: String,
    pub verified_insns: Option<u32>,
    pub xlated_bytes: Option<u32>,
    pub jited_bytes: u32,
}

pub struct MapFacts {
    pub name: String,
    pub kind: String,
    pub max_entries: u32,
    pub value_size: u32,
    pub memlock: Option<u64>,
}

pub fn prog_facts(label: &str, prog: &Xdp) -> Result<ProgFacts> {
    let info = prog.info().context("program info")?;
    Ok(ProgFacts {
        name: label.to_string(),
        verified_insns: info.verified_instruction_count(),
        xlated_bytes: info.size_translated(),
        jited_bytes: info.size_jitted(),
    })
}

/// Every map the program uses, with its kernel memory.
pub fn map_facts(prog: &Xdp) -> Result<Vec<MapFacts>> {
    use std::os::fd::{AsFd, AsRawFd};
    let info = prog.info().context("program info")?;
    let ids = info.map_ids().context("map ids")?.unwrap_or_default();
    let mut out = Vec::new();
    for id in ids {
        let m = MapInfo::from_id(id).with_context(|| format!("map {id}"))?;
        let fd = m.fd().with_context(|| format!("fd of map {id}"))?;
        out.push(MapFacts {
            name: m.name_as_str().unwrap_or("?").to_string(),
            kind: m.map_type().map(|t| format!("{t:?}")).unwrap_or_else(|_| "?".into()),
            max_entries: m.max_entries(),
            value_size: m.value_size(),
            memlock: fdinfo_memlock(fd.as_fd().as_raw_fd()),
        });
    }
    out.sort_by_key(|b| std::cmp::Reverse(b.memlock));
    Ok(out)
}
