//! BPF_MAP_UPDATE_BATCH, which aya 0.14 does not wrap: one bpf(2) call writes
//! many elements of an array map (Linux 5.6, commit aa2e93b8e58e "bpf: Add
//! generic support for update and delete batch ops").
//!
//! A fresh policy writes its rule entries and their counters (20 each with the
//! default profile); one element at a time that was 40 syscalls, most of a
//! policy add's cost (BENCHMARKS.md).

use std::os::fd::{AsFd, AsRawFd};

use aya::maps::MapData;

use super::DpError;

const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;

/// The `batch` member of union bpf_attr (include/uapi/linux/bpf.h).
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Write `values` (each `value_size` bytes; for a per-CPU map, one value
/// per possible CPU, each rounded up to 8 bytes, back to back) at `keys`.
/// The caller passes an array map (its typed handle says so).
pub fn update(map: &MapData, keys: &[u32], values: &[u8], value_size: usize) -> Result<(), DpError> {
    assert_eq!(values.len(), keys.len() * value_size, "one value per key");
    let fd = map.fd().as_fd().as_raw_fd();
    let mut attr = BatchAttr {
        keys: keys.as_ptr() as u64,
        values: values.as_ptr() as u64,
        count: keys.len() as u32,
        map_fd: fd as u32,
        ..Default::default()
    };
    // Safety: keys and values are valid for `count` elements of the map's key
    // and value sizes; the kernel writes back only `count`.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, BPF_MAP_UPDATE_BATCH, &mut attr as *mut BatchAttr, std::mem::size_of::<BatchAttr>()) };
    if rc < 0 {
        return Err(DpError::Io(std::io::Error::last_os_error()));
    }
    if attr.count as usize != keys.len() {
        return Err(DpError::Io(std::io::Error::other(format!("batch update wrote {} of {} elements", attr.count, keys.len()))));
    }
    Ok(())
}

/// Write `(key, value)` pairs of a plain (not per-CPU) array map in one call.
pub fn update_all<T: aya::Pod>(map: &MapData, entries: &[(u32, T)]) -> Result<(), DpError> {
    if entries.is_empty() {
        return Ok(());
    }
    let size = std::mem::size_of::<T>();
    let keys: Vec<u32> = entries.iter().map(|(k, _)| *k).collect();
    let mut values = Vec::with_capacity(entries.len() * size);
    for (_, v) in entries {
        // Safety: T is Pod (plain integers, explicit padding), so its bytes are initialised.
        values.extend_from_slice(unsafe { std::slice::from_raw_parts(v as *const T as *const u8, size) });
    }
    update(map, &keys, &values, size)
}
