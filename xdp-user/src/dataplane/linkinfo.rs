//! What a pinned bpf link is attached to, read with raw bpf(2) calls
//! (BPF_OBJ_GET, BPF_OBJ_GET_INFO_BY_FD, and BPF_OBJ_PIN to pin a held fd): aya 0.14's `LinkInfo` does not expose
//! an XDP link's ifindex, and that is what tells a live link from one that
//! was detached by hand (`bpftool link detach` leaves the link and its program
//! but sets the ifindex to 0).

use std::{
    ffi::CString,
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
    path::Path,
};

const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET: libc::c_long = 7;
/// enum bpf_link_type: BPF_LINK_TYPE_XDP.
const BPF_LINK_TYPE_XDP: u32 = 6;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

#[repr(C)]
#[derive(Default)]
struct ObjGetAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

#[repr(C)]
#[derive(Default)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// struct bpf_link_info, as far as the XDP member (include/uapi/linux/bpf.h):
/// type, id, prog_id, then the union (8-byte aligned) whose `xdp.ifindex` is first.
#[repr(C, align(8))]
struct LinkInfoRaw {
    type_: u32,
    id: u32,
    prog_id: u32,
    _pad: u32,
    union: [u64; 24],
}

/// An fd of the bpf object pinned at `path` (BPF_OBJ_GET).
pub fn open_pinned(path: &Path) -> std::io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_encoded_bytes()).map_err(std::io::Error::other)?;
    let attr = ObjGetAttr { pathname: c.as_ptr() as u64, ..Default::default() };
    // Safety: a valid attr of the size passed; the kernel reads pathname.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_GET, &attr as *const _, std::mem::size_of::<ObjGetAttr>()) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // Safety: the kernel just gave us this fd.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Pin the bpf object behind `fd` at `path` (BPF_OBJ_PIN).
pub fn pin_fd(fd: BorrowedFd<'_>, path: &Path) -> std::io::Result<()> {
    let c = CString::new(path.as_os_str().as_encoded_bytes()).map_err(std::io::Error::other)?;
    let attr = ObjGetAttr { pathname: c.as_ptr() as u64, bpf_fd: fd.as_raw_fd() as u32, file_flags: 0 };
    // Safety: as above; the kernel reads pathname and bpf_fd.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_PIN, &attr as *const _, std::mem::size_of::<ObjGetAttr>()) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// (program id, ifindex) of the XDP link behind `fd`. Opens nothing, so it
/// answers even when the process is out of file descriptors.
pub fn link_target(fd: BorrowedFd<'_>) -> std::io::Result<(u32, u32)> {
    let mut info = LinkInfoRaw { type_: 0, id: 0, prog_id: 0, _pad: 0, union: [0; 24] };
    let attr =
        InfoAttr { bpf_fd: fd.as_raw_fd() as u32, info_len: std::mem::size_of::<LinkInfoRaw>() as u32, info: &mut info as *mut _ as u64 };
    // Safety: info points to a zeroed buffer of info_len bytes.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_GET_INFO_BY_FD, &attr as *const _, std::mem::size_of::<InfoAttr>()) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if info.type_ != BPF_LINK_TYPE_XDP {
        return Err(std::io::Error::other(format!("a bpf link of type {}, not XDP", info.type_)));
    }
    Ok((info.prog_id, info.union[0] as u32))
}
