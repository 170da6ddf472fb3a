//! Kernel memory of ampguard's maps, for any CPU count.
//!
//! Generic over whatever maps the program has: each map's real type, key and
//! value size, max_entries and flags come from the kernel
//! (BPF_OBJ_GET_INFO_BY_FD), its `memlock` from /proc/self/fdinfo (what the
//! kernel charges: the map type's `map_mem_usage`), and the entries of maps
//! that allocate per element (LPM tries, hashes without preallocation) are
//! counted with BPF_MAP_GET_NEXT_KEY. A formula per map type, after the
//! kernel's `*_map_mem_usage` functions (kernel/bpf/arraymap.c, hashtab.c,
//! lpm_trie.c, ringbuf.c), gives the size for N CPUs; it is checked against
//! the measured memlock at this machine's CPU count. Per-CPU maps are sized
//! by *possible* CPUs (/sys/devices/system/cpu/possible), not online ones.

use std::os::fd::{AsFd, AsRawFd};

use anyhow::{Context, Result};
use aya::{
    maps::{MapInfo, MapType},
    programs::Xdp,
};

/// x86-64 kernel struct sizes the formulas use (6.x).
/// `struct bpf_array` up to its values (deduced from the fdinfo of per-CPU arrays).
const BPF_ARRAY: u64 = 312;
/// `struct htab_elem` before the key; a hash bucket; `struct lpm_trie_node` before its data
/// (24 B since tries allocate from bpf_mem_alloc: deduced from the fdinfo of tries, 44 B an entry
/// of a 16-byte key and 4-byte value).
const HTAB_ELEM: u64 = 48;
const HTAB_BUCKET: u64 = 16;
const LPM_NODE: u64 = 24;
const PAGE: u64 = 4096;
const BPF_F_NO_PREALLOC: u32 = 1;
const BPF_F_MMAPABLE: u32 = 1 << 10;

pub struct MapMem {
    pub name: String,
    pub kind: String,
    map_type: Option<MapType>,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub flags: u32,
    /// Elements the kernel holds: counted for maps that allocate per element, else None.
    pub entries: Option<u64>,
    /// Measured: `memlock` in /proc/self/fdinfo.
    pub memlock: Option<u64>,
}

fn r8(v: u32) -> u64 {
    (v as u64).div_ceil(8) * 8
}

/// Possible CPUs (/sys/devices/system/cpu/possible, e.g. "0-1" or "0-3,8-11").
pub fn possible_cpus() -> Result<u64> {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/possible").context("reading /sys/devices/system/cpu/possible")?;
    let mut n = 0;
    for part in text.trim().split(',') {
        n += match part.split_once('-') {
            Some((a, b)) => b.parse::<u64>()? - a.parse::<u64>()? + 1,
            None => {
                part.parse::<u64>()?;
                1
            }
        };
    }
    Ok(n)
}

impl MapMem {
    fn percpu(&self) -> bool {
        matches!(self.map_type, Some(MapType::PerCpuArray | MapType::PerCpuHash | MapType::LruPerCpuHash))
    }

    /// Whether `bytes` depends on the CPU count.
    pub fn per_cpu(&self) -> bool {
        self.percpu() || matches!(self.map_type, Some(MapType::Hash | MapType::LruHash))
    }

    /// The formula, with this map's figures in it (E entries, N possible CPUs).
    pub fn formula(&self) -> String {
        let (e, v) = (self.max_entries, r8(self.value_size));
        match self.map_type {
            Some(MapType::Array) if self.flags & BPF_F_MMAPABLE != 0 => format!("{BPF_ARRAY} + page_align({v}·{e})"),
            Some(MapType::Array) => format!("{BPF_ARRAY} + {v}·{e}"),
            Some(MapType::PerCpuArray) => format!("{BPF_ARRAY} + 8·{e} + {v}·{e}·N"),
            Some(MapType::LpmTrie) => {
                format!("({LPM_NODE} + {} + {}) · {} entries", self.key_size - 4, self.value_size, self.entries.unwrap_or(0))
            }
            Some(MapType::RingBuf) => format!("{e} + 3·{PAGE} + 8·(3 + 2·{e}/{PAGE})"),
            Some(MapType::Hash | MapType::PerCpuHash | MapType::LruHash | MapType::LruPerCpuHash) => {
                let elem = HTAB_ELEM + r8(self.key_size) + if self.percpu() { 8 } else { v };
                let buckets = (e as u64).next_power_of_two();
                let lru = matches!(self.map_type, Some(MapType::LruHash | MapType::LruPerCpuHash));
                if self.flags & BPF_F_NO_PREALLOC != 0 {
                    let n = self.entries.unwrap_or(0);
                    if self.percpu() {
                        format!("{HTAB_BUCKET}·{buckets} + 32·N + ({elem} + 8 + 16 + {v}·N)·{n} entries")
                    } else {
                        format!("{HTAB_BUCKET}·{buckets} + 32·N + ({elem} + 8)·{n} entries")
                    }
                } else if self.percpu() {
                    format!("{HTAB_BUCKET}·{buckets} + 32·N + ({elem} + {v}·N)·{e}")
                } else if lru {
                    format!("{HTAB_BUCKET}·{buckets} + 32·N + {elem}·{e}")
                } else {
                    format!("{HTAB_BUCKET}·{buckets} + 32·N + {elem}·({e} + N) + 8·N")
                }
            }
            _ => "measured memlock (no model for this type; taken as independent of N)".into(),
        }
    }

    /// Bytes for `n` possible CPUs.
    pub fn bytes(&self, n: u64) -> u64 {
        let (e, v) = (self.max_entries as u64, r8(self.value_size));
        match self.map_type {
            Some(MapType::Array) if self.flags & BPF_F_MMAPABLE != 0 => BPF_ARRAY + (v * e).div_ceil(PAGE) * PAGE,
            Some(MapType::Array) => BPF_ARRAY + v * e,
            Some(MapType::PerCpuArray) => BPF_ARRAY + 8 * e + v * e * n,
            Some(MapType::LpmTrie) => (LPM_NODE + self.key_size as u64 - 4 + self.value_size as u64) * self.entries.unwrap_or(0),
            Some(MapType::RingBuf) => e + 3 * PAGE + 8 * (3 + 2 * e / PAGE),
            Some(MapType::Hash | MapType::PerCpuHash | MapType::LruHash | MapType::LruPerCpuHash) => {
                let elem = HTAB_ELEM + r8(self.key_size) + if self.percpu() { 8 } else { v };
                let base = HTAB_BUCKET * e.next_power_of_two() + 32 * n;
                let lru = matches!(self.map_type, Some(MapType::LruHash | MapType::LruPerCpuHash));
                if self.flags & BPF_F_NO_PREALLOC != 0 {
                    let c = self.entries.unwrap_or(0);
                    base + if self.percpu() { (elem + 24 + v * n) * c } else { (elem + 8) * c }
                } else if self.percpu() {
                    base + (elem + v * n) * e
                } else if lru {
                    base + elem * e
                } else {
                    base + elem * (e + n) + 8 * n
                }
            }
            _ => self.memlock.unwrap_or(0),
        }
    }
}

/// Counts a map's keys with BPF_MAP_GET_NEXT_KEY.
fn count_keys(fd: i32, key_size: u32) -> Result<u64> {
    #[repr(C)]
    struct Attr {
        map_fd: u32,
        _pad: u32,
        key: u64,
        next_key: u64,
    }
    const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
    let mut key = vec![0u8; key_size as usize];
    let mut next = vec![0u8; key_size as usize];
    let mut n = 0u64;
    let mut first = true;
    loop {
        let attr =
            Attr { map_fd: fd as u32, _pad: 0, key: if first { 0 } else { key.as_ptr() as u64 }, next_key: next.as_mut_ptr() as u64 };
        // SAFETY: attr points at buffers of the map's key size that outlive the call.
        let rc = unsafe { libc::syscall(libc::SYS_bpf, BPF_MAP_GET_NEXT_KEY, &attr as *const Attr, std::mem::size_of::<Attr>()) };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENOENT) {
                return Ok(n);
            }
            return Err(e).context("BPF_MAP_GET_NEXT_KEY");
        }
        n += 1;
        first = false;
        std::mem::swap(&mut key, &mut next);
    }
}

/// Every map the program uses, read from the kernel; largest first.
pub fn read(prog: &Xdp) -> Result<Vec<MapMem>> {
    let info = prog.info().context("program info")?;
    let ids = info.map_ids().context("map ids")?.unwrap_or_default();
    let mut out = Vec::new();
    for id in ids {
        let m = MapInfo::from_id(id).with_context(|| format!("map {id}"))?;
        let fd = m.fd().with_context(|| format!("fd of map {id}"))?;
        let raw = fd.as_fd().as_raw_fd();
        let map_type = m.map_type().ok();
        let counted = matches!(map_type, Some(MapType::LpmTrie))
            || (matches!(map_type, Some(MapType::Hash | MapType::PerCpuHash)) && m.map_flags() & BPF_F_NO_PREALLOC != 0);
        out.push(MapMem {
            name: m.name_as_str().unwrap_or("?").to_string(),
            kind: map_type
                .map(|t| format!("{t:?}"))
                .unwrap_or_else(|| format!("type {}", m.map_type().err().map(|e| e.to_string()).unwrap_or_default())),
            map_type,
            key_size: m.key_size(),
            value_size: m.value_size(),
            max_entries: m.max_entries(),
            flags: m.map_flags(),
            entries: if counted {
                Some(count_keys(raw, m.key_size()).with_context(|| format!("counting the entries of map {id}"))?)
            } else {
                None
            },
            memlock: super::sys::fdinfo_memlock(raw),
        });
    }
    out.sort_by_key(|b| std::cmp::Reverse(b.memlock));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(t: MapType, k: u32, v: u32, e: u32) -> MapMem {
        MapMem {
            name: "m".into(),
            kind: format!("{t:?}"),
            map_type: Some(t),
            key_size: k,
            value_size: v,
            max_entries: e,
            flags: 0,
            entries: None,
            memlock: None,
        }
    }

    #[test]
    fn per_cpu_array_scales_with_cpus_and_rounds_values_to_8() {
        // xdp-filter's filter_ports (65,536 x 8 B) measured 1,573,176 B on 2 CPUs.
        let m = map(MapType::PerCpuArray, 4, 8, 65_536);
        assert_eq!(m.bytes(2), 1_573_176);
        let odd = map(MapType::PerCpuArray, 4, 12, 10);
        assert_eq!(odd.bytes(64) - odd.bytes(32), 16 * 10 * 32);
        assert!(m.per_cpu());
        assert!(!map(MapType::Array, 4, 8, 10).per_cpu());
    }

    #[test]
    fn lpm_trie_counts_entries_not_capacity() {
        let mut m = map(MapType::LpmTrie, 20, 4, 16_384);
        m.entries = Some(1000);
        assert_eq!(m.bytes(2), (24 + 16 + 4) * 1000);
        assert_eq!(m.bytes(2), m.bytes(128));
    }
}
