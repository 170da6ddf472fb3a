//! The opt-in dispatcher mode (`[xdp_dispatcher] enabled = true`): ampguard
//! runs as one program of libxdp's multi-prog dispatcher, the chain that
//! xdp-loader, xdp-filter and other libxdp users share, at a configured
//! priority, continuing the chain after XDP_PASS.
//!
//! How: ampguard's program is loaded a second time, as a freplace
//! (BPF_PROG_TYPE_EXT) program on the very maps of the daemon's data plane
//! (aya reuses them from pins made for the load, and the map ids are
//! checked); libxdp (dlopened, `libxdp`) takes that program by fd and does
//! the dispatcher protocol: a new dispatcher with every program of the
//! chain, swapped in atomically, pinned under /sys/fs/bpf/xdp, under its
//! lock. libbpf (and so libxdp) cannot open aya's ELF itself: its maps are
//! legacy `maps`-section definitions, which libbpf 1.x refuses.
//!
//! ampguard's program stays in the chain through libxdp's pins while the
//! daemon is down. The daemon also pins its program as
//! `pin_dir/dispatched_<iface>`, which is how a new daemon (or an offline
//! `ampguard detach`) finds the program of the previous run to remove.

use std::{
    os::fd::{AsFd, OwnedFd},
    path::{Path, PathBuf},
};

use aya::{
    programs::{Extension, Xdp},
    EbpfLoader,
};
use serde::Deserialize;
use xdp_common::maps as names;

use super::{
    attach,
    libxdp::{self, AttachMode, LibxdpError},
    linkinfo, DataPlane, DpError, BASELINE_OBJECT, XDP_OBJECT,
};
use crate::config::XdpModeSetting;

/// `[xdp_dispatcher]` in the config.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DispatcherConfig {
    /// Run as one program of libxdp's dispatcher instead of owning the XDP hook through a bpf link.
    pub enabled: bool,
    /// libxdp run priority: lower runs first (xdp-loader's `--prio`; libxdp's default is 50).
    pub priority: u32,
}

impl DispatcherConfig {
    /// The priority is encoded as the length of a BTF array (libxdp's
    /// format), which the kernel bounds; no real chain needs more.
    pub const MAX_PRIORITY: u32 = 100_000;

    pub fn validate(&self) -> Result<(), String> {
        if self.priority > Self::MAX_PRIORITY {
            return Err(format!("xdp_dispatcher.priority = {} must be in 0..={}", self.priority, Self::MAX_PRIORITY));
        }
        Ok(())
    }
}

impl Default for DispatcherConfig {
    fn default() -> Self {
        // Before most others by default: dropping a flood early spares the programs after it.
        Self { enabled: false, priority: 10 }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error(transparent)]
    Libxdp(#[from] LibxdpError),
    #[error("loading ampguard's program as a dispatcher component failed: {0}")]
    Load(String),
    #[error("interface {0} does not exist in this network namespace")]
    NoInterface(String),
    #[error("cannot look up interface {iface}: {source}")]
    Lookup { iface: String, source: std::io::Error },
    #[error(
        "interface {iface} runs XDP program id {id} ({name}) without libxdp's dispatcher; the dispatcher mode can only join \
         a dispatcher or create one on a free hook: unload it (`ampguard detach` for a direct-mode ampguard, \
         `xdp-loader unload {iface} --all`, `ip link set dev {iface} xdp off`), or set `[xdp_dispatcher] enabled = false`"
    )]
    NotDispatcher { iface: String, id: u32, name: String },
    #[error(
        "{iface} has ampguard's direct (bpf link) attachment pinned at {pin}; detach it first (`ampguard detach`, \
         with the daemon stopped) to move {iface} to the dispatcher mode"
    )]
    DirectPinned { iface: String, pin: PathBuf },
    #[error(
        "ampguard's program pinned at {pin} is in the dispatcher of {iface}, which is not in this network namespace: run \
         `nsenter --net=/var/run/netns/NAME ampguard detach` there (if {iface} was deleted, its dispatcher went with it: `rm {pin}`)"
    )]
    NotHere { iface: String, pin: PathBuf },
    #[error("cannot pin ampguard's dispatcher component of {iface} at {path}: {source}")]
    Pin { iface: String, path: PathBuf, source: std::io::Error },
}

/// bpffs names cannot hold a dot (see attach.rs).
fn pin_name(iface: &str) -> String {
    iface.replace('%', "%25").replace('.', "%2e")
}

pub fn program_pin_path(pin_dir: &Path, iface: &str) -> PathBuf {
    pin_dir.join(format!("dispatched_{}", pin_name(iface)))
}

/// Every interface with a dispatcher component pinned under `pin_dir`.
pub fn pinned_interfaces(pin_dir: &Path) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(pin_dir) else { return Vec::new() };
    let mut v: Vec<String> = rd
        .filter_map(|e| e.ok()?.file_name().to_str()?.strip_prefix("dispatched_").map(|n| n.replace("%2e", ".").replace("%25", "%")))
        .collect();
    v.sort();
    v
}

/// Whether this kernel loads freplace (BPF_PROG_TYPE_EXT) programs, which
/// libxdp's dispatcher is made of: a small extension of the baseline
/// objects is loaded against `xdp_pass`, and both are unloaded. Some kernels
/// refuse the type (a sandbox's policy, or no BPF trampoline); there libxdp
/// falls back to one program per interface for every tool.
pub fn freplace_supported() -> Result<(), String> {
    let mut base = aya::Ebpf::load(BASELINE_OBJECT).map_err(|e| format!("loading the baseline object: {e}"))?;
    let target: &mut Xdp = base.program_mut("xdp_pass").ok_or("no xdp_pass")?.try_into().map_err(|e| format!("{e}"))?;
    target.load().map_err(|e| format!("loading xdp_pass: {e}"))?;
    let target_fd = target.fd().map_err(|e| e.to_string())?.try_clone().map_err(|e| e.to_string())?;
    let mut probe = EbpfLoader::new().extension("xdp_count_drop").load(BASELINE_OBJECT).map_err(|e| format!("{e}"))?;
    let ext: &mut Extension = probe.program_mut("xdp_count_drop").ok_or("no xdp_count_drop")?.try_into().map_err(|e| format!("{e}"))?;
    ext.load(target_fd, "xdp_pass").map_err(|e| format!("the kernel refuses freplace (BPF_PROG_TYPE_EXT) programs: {e}"))
}

/// ampguard's program loaded as a freplace program on the data plane's maps.
pub struct Component {
    /// Holds the program (and its map fds) while the daemon runs.
    ebpf: aya::Ebpf,
    pub id: u32,
    pub priority: u32,
}

fn ext(ebpf: &aya::Ebpf) -> &Extension {
    ebpf.program(names::PROGRAM).expect("loaded").try_into().expect("extension")
}

impl Component {
    /// Load ampguard's program as an extension that uses `dp`'s maps. `scratch`
    /// (a new directory on a bpffs) holds pins of the maps for the load, and is
    /// removed after.
    pub fn load(dp: &DataPlane, scratch: &Path, priority: u32) -> Result<Self, DispatchError> {
        let load_err = |e: String| DispatchError::Load(e);
        let _ = std::fs::remove_dir_all(scratch);
        dp.pin_maps(scratch).map_err(|e| load_err(format!("pinning the maps in {}: {e}", scratch.display())))?;
        let r = Self::load_on_pins(dp, scratch, priority);
        let _ = std::fs::remove_dir_all(scratch);
        r
    }

    fn load_on_pins(dp: &DataPlane, scratch: &Path, priority: u32) -> Result<Self, DispatchError> {
        let load_err = |e: String| DispatchError::Load(e);
        // An extension is verified against a target function of the same
        // signature; the baseline `xdp_pass` is one. libxdp re-attaches it to
        // the dispatcher's slot, after which the target is no longer referenced.
        let mut base = aya::Ebpf::load(BASELINE_OBJECT).map_err(|e| load_err(format!("the load target: {e}")))?;
        let target: &mut Xdp =
            base.program_mut("xdp_pass").ok_or_else(|| load_err("no xdp_pass".into()))?.try_into().map_err(|e| load_err(format!("{e}")))?;
        target.load().map_err(|e| load_err(format!("the load target: {e}")))?;
        let target_fd = target.fd().map_err(|e| load_err(e.to_string()))?.try_clone().map_err(|e| load_err(e.to_string()))?;

        let object = run_config::with_run_config(XDP_OBJECT, names::PROGRAM, priority).map_err(load_err)?;
        let paths: Vec<(&str, PathBuf)> = names::ALL.iter().map(|n| (*n, scratch.join(n))).collect();
        let mut loader = EbpfLoader::new();
        loader.extension(names::PROGRAM);
        for (n, p) in &paths {
            loader.map_pin_path(n, p.as_path());
        }
        let mut ebpf = loader.load(object.bytes()).map_err(|e| load_err(e.to_string()))?;
        let prog: &mut Extension = ebpf
            .program_mut(names::PROGRAM)
            .ok_or_else(|| load_err("no program".into()))?
            .try_into()
            .map_err(|e| load_err(format!("{e}")))?;
        prog.load(target_fd, "xdp_pass").map_err(|e| load_err(format!("{e} (the kernel needs BTF and freplace support)")))?;
        let info = prog.info().map_err(|e| load_err(e.to_string()))?;
        let id = info.id();

        // The extension must write and read the daemon's maps, not copies.
        let mut ours: Vec<u32> = info.map_ids().map_err(|e| load_err(e.to_string()))?.unwrap_or_default();
        let mut theirs: Vec<u32> = dp.program().info().and_then(|i| i.map_ids()).map_err(|e| load_err(e.to_string()))?.unwrap_or_default();
        ours.sort_unstable();
        theirs.sort_unstable();
        if ours != theirs {
            return Err(load_err(format!(
                "the extension uses maps {ours:?}, not the data plane's {theirs:?} (a map the loader did not pin?); refusing to run on copies"
            )));
        }
        Ok(Self { ebpf, id, priority })
    }

    fn fd(&self) -> Result<std::os::fd::BorrowedFd<'_>, DispatchError> {
        Ok(ext(&self.ebpf).fd().map_err(|e| DispatchError::Load(e.to_string()))?.as_fd())
    }

    /// libxdp reads the priority and chain-call actions of a program given by
    /// fd from its BTF (`run_config` put them there): its setters refuse loaded programs.
    fn libxdp_program(&self) -> Result<libxdp::Program, DispatchError> {
        let p = libxdp::Program::from_fd(self.fd()?)?;
        if p.priority() != self.priority || p.chain_call_actions() != ["XDP_PASS"] {
            return Err(DispatchError::Load(format!(
                "libxdp reads priority {} and chain-call actions {:?} from the program's BTF, not {} and [XDP_PASS]",
                p.priority(),
                p.chain_call_actions(),
                self.priority
            )));
        }
        Ok(p)
    }
}

/// ampguard's component in one interface's dispatcher.
#[derive(Debug)]
pub struct Slot {
    pub iface: String,
    pub ifindex: u32,
    pub mode: &'static str,
    /// The program of a previous run that this one took over from.
    pub replaced: Option<u32>,
    prog_id: u32,
    pin: PathBuf,
}

fn ifindex_of(iface: &str) -> Result<u32, DispatchError> {
    attach::ifindex(iface)
        .map_err(|source| DispatchError::Lookup { iface: iface.into(), source })?
        .ok_or_else(|| DispatchError::NoInterface(iface.into()))
}

/// The id of the program pinned at `path`, if one is.
fn pinned_prog_id(path: &Path) -> Option<u32> {
    let fd: OwnedFd = linkinfo::open_pinned(path).ok()?;
    Some(libxdp::Program::from_fd(fd.as_fd()).ok()?.id())
}

fn modes(setting: XdpModeSetting) -> &'static [AttachMode] {
    match setting {
        XdpModeSetting::Native => &[AttachMode::Native],
        XdpModeSetting::Generic => &[AttachMode::Skb],
        XdpModeSetting::Auto => &[AttachMode::Native, AttachMode::Skb],
    }
}

/// Add `c` to the dispatcher of `iface` (creating one on a free hook, or
/// joining the one another tool made). A program of a previous run (found
/// through its pin) is removed only after the new one is in the chain: in
/// between both run, so no packet meets a chain without ampguard.
pub fn attach(c: &Component, iface: &str, setting: XdpModeSetting, pin_dir: &Path) -> Result<Slot, DispatchError> {
    let ifindex = ifindex_of(iface)?;
    let direct = attach::link_pin_path(pin_dir, iface);
    if direct.exists() {
        return Err(DispatchError::DirectPinned { iface: iface.into(), pin: direct });
    }
    let pin = program_pin_path(pin_dir, iface);
    let previous = pinned_prog_id(&pin).filter(|id| *id != c.id);
    let current = libxdp::dispatcher(ifindex)?;
    let tries: Vec<AttachMode> = match &current {
        Some(d) if d.legacy => {
            let name = d.programs.first().map(|p| p.name.clone()).unwrap_or_default();
            return Err(DispatchError::NotDispatcher { iface: iface.into(), id: d.id, name });
        }
        // Joining a dispatcher: in its mode.
        Some(d) if d.programs.iter().any(|p| p.id == c.id) => Vec::new(),
        Some(_) => vec![AttachMode::Unspec],
        None => modes(setting).to_vec(),
    };
    let mut last = None;
    for m in tries {
        match c.libxdp_program()?.attach(ifindex, m) {
            Ok(()) => {
                last = None;
                break;
            }
            Err(e) => last = Some(e),
        }
    }
    if let Some(e) = last {
        return Err(e.into());
    }
    let mode = libxdp::dispatcher(ifindex).ok().flatten().map_or("kept", |d| d.mode);
    // Pin (replacing the previous run's pin in one rename).
    let tmp = pin_dir.join(format!("new_dispatched_{}", pin_name(iface)));
    let _ = std::fs::remove_file(&tmp);
    let pinned = linkinfo::pin_fd(c.fd()?, &tmp).and_then(|()| std::fs::rename(&tmp, &pin));
    if let Err(source) = pinned {
        let _ = std::fs::remove_file(&tmp);
        // The chain holds the program through libxdp's pins; say so rather than undo.
        return Err(DispatchError::Pin { iface: iface.into(), path: pin, source });
    }
    let mut replaced = None;
    if let Some(old) = previous {
        let in_chain = libxdp::dispatcher(ifindex).ok().flatten().is_some_and(|d| d.programs.iter().any(|p| p.id == old));
        if in_chain {
            match libxdp::Program::from_id(old).and_then(|mut p| p.detach(ifindex)) {
                Ok(()) => replaced = Some(old),
                Err(e) => tracing::error!(
                    iface,
                    "cannot remove the previous run's program id {old} from the dispatcher: {e}; it runs beside this one"
                ),
            }
        }
    }
    Ok(Slot { iface: iface.into(), ifindex, mode, replaced, prog_id: c.id, pin })
}

/// What the watchdog sees of a slot.
#[derive(Debug)]
pub enum SlotHealth {
    Enforcing,
    /// Not in the interface's chain (unloaded with xdp-loader, the hook cleared).
    Removed,
    PinMissing,
    Unknown(String),
}

impl Slot {
    pub fn health(&self) -> SlotHealth {
        match libxdp::dispatcher(self.ifindex) {
            Err(e) => SlotHealth::Unknown(e.to_string()),
            Ok(Some(d)) if d.programs.iter().any(|p| p.id == self.prog_id) => match std::fs::symlink_metadata(&self.pin) {
                Ok(_) => SlotHealth::Enforcing,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => SlotHealth::PinMissing,
                Err(e) => SlotHealth::Unknown(e.to_string()),
            },
            Ok(_) => SlotHealth::Removed,
        }
    }

    pub fn repin(&self, c: &Component) -> Result<(), DispatchError> {
        linkinfo::pin_fd(c.fd()?, &self.pin).map_err(|source| DispatchError::Pin {
            iface: self.iface.clone(),
            path: self.pin.clone(),
            source,
        })
    }

    /// Remove ampguard's program from the chain (the others stay) and its pin.
    pub fn detach(self) -> Result<(), DispatchError> {
        let _ = std::fs::remove_file(&self.pin);
        remove_from_chain(self.ifindex, self.prog_id)
    }
}

fn remove_from_chain(ifindex: u32, id: u32) -> Result<(), DispatchError> {
    let in_chain = libxdp::dispatcher(ifindex)?.is_some_and(|d| !d.legacy && d.programs.iter().any(|p| p.id == id));
    if in_chain {
        libxdp::Program::from_id(id)?.detach(ifindex)?;
    }
    Ok(())
}

/// With no daemon running: remove ampguard's component (pinned by a previous
/// run) from the dispatcher of `iface`, and its pin. Returns whether there was one.
pub fn detach_pinned(pin_dir: &Path, iface: &str) -> Result<bool, DispatchError> {
    let pin = program_pin_path(pin_dir, iface);
    let Some(id) = pinned_prog_id(&pin) else { return Ok(false) };
    match attach::ifindex(iface) {
        Ok(Some(ifindex)) => remove_from_chain(ifindex, id)?,
        // Another network namespace's interface, or one deleted: nothing here can tell.
        Ok(None) => return Err(DispatchError::NotHere { iface: iface.into(), pin }),
        Err(source) => return Err(DispatchError::Lookup { iface: iface.into(), source }),
    }
    std::fs::remove_file(&pin).map_err(|source| DispatchError::Pin { iface: iface.into(), path: pin, source })?;
    Ok(true)
}

/// The programs on `iface` as libxdp sees them, for status (None: nothing attached).
pub fn programs_on(ifindex: u32) -> Result<Option<libxdp::Dispatcher>, LibxdpError> {
    libxdp::dispatcher(ifindex)
}

impl From<DispatchError> for DpError {
    fn from(e: DispatchError) -> Self {
        DpError::Io(std::io::Error::other(e.to_string()))
    }
}

/// libxdp's run configuration (`.xdp_run_config`, protocol.org "Processing
/// program metadata") written into a copy of an object's BTF: a DATASEC
/// holding `_<program>`, a struct whose `priority` and `XDP_PASS` members
/// point to arrays whose lengths are the values. The kernel keeps the
/// program's BTF, which is where libxdp reads it for a program given by fd.
pub(crate) mod run_config {
    const BTF_KIND_INT: u32 = 1;
    const BTF_KIND_PTR: u32 = 2;
    const BTF_KIND_ARRAY: u32 = 3;
    const BTF_KIND_STRUCT: u32 = 4;
    const BTF_KIND_VAR: u32 = 14;
    const BTF_KIND_DATASEC: u32 = 15;
    pub(crate) const SECTION: &str = ".xdp_run_config";

    /// An object's bytes, 8-byte aligned (the ELF parser wants aligned data).
    pub struct Object {
        words: Vec<u64>,
        len: usize,
    }

    impl Object {
        pub fn bytes(&self) -> &[u8] {
            // Safety: `words` holds at least `len` initialised bytes.
            unsafe { std::slice::from_raw_parts(self.words.as_ptr().cast::<u8>(), self.len) }
        }
    }

    fn u16_at(b: &[u8], o: usize) -> Result<u16, String> {
        b.get(o..o + 2).map(|s| u16::from_le_bytes([s[0], s[1]])).ok_or_else(|| format!("truncated at {o}"))
    }
    fn u32_at(b: &[u8], o: usize) -> Result<u32, String> {
        b.get(o..o + 4).map(|s| u32::from_le_bytes(s.try_into().expect("4 bytes"))).ok_or_else(|| format!("truncated at {o}"))
    }
    fn u64_at(b: &[u8], o: usize) -> Result<u64, String> {
        b.get(o..o + 8).map(|s| u64::from_le_bytes(s.try_into().expect("8 bytes"))).ok_or_else(|| format!("truncated at {o}"))
    }

    /// (offset of the section header, offset, size) of the ELF64 section `name`.
    pub(crate) fn section(elf: &[u8], name: &str) -> Result<(usize, usize, usize), String> {
        if elf.get(..6) != Some(&[0x7f, b'E', b'L', b'F', 2, 1][..]) {
            return Err("not a little-endian ELF64 object".into());
        }
        let shoff = u64_at(elf, 0x28)? as usize;
        let shentsize = u16_at(elf, 0x3a)? as usize;
        let shnum = u16_at(elf, 0x3c)? as usize;
        let strndx = u16_at(elf, 0x3e)? as usize;
        let hdr = |i: usize| shoff + i * shentsize;
        let strtab = u64_at(elf, hdr(strndx) + 24)? as usize;
        for i in 0..shnum {
            let n = u32_at(elf, hdr(i))? as usize;
            let s = elf.get(strtab + n..).ok_or("a section name past the end")?;
            let end = s.iter().position(|c| *c == 0).ok_or("an unterminated section name")?;
            if &s[..end] == name.as_bytes() {
                return Ok((hdr(i), u64_at(elf, hdr(i) + 24)? as usize, u64_at(elf, hdr(i) + 32)? as usize));
            }
        }
        Err(format!("no section {name}"))
    }

    /// Every type of a BTF blob: (kind, name offset, offset of the type).
    pub(crate) fn types(btf: &[u8]) -> Result<Vec<(u32, u32, usize)>, String> {
        let hdr_len = u32_at(btf, 4)? as usize;
        let (type_off, type_len) = (u32_at(btf, 8)? as usize, u32_at(btf, 12)? as usize);
        let (mut o, end) = (hdr_len + type_off, hdr_len + type_off + type_len);
        let mut v = Vec::new();
        while o < end {
            let (name, info) = (u32_at(btf, o)?, u32_at(btf, o + 4)?);
            let (kind, vlen) = ((info >> 24) & 0x1f, (info & 0xffff) as usize);
            let extra = match kind {
                1 | 14 | 17 => 4,
                3 => 12,
                4 | 5 | 15 | 19 => 12 * vlen,
                6 | 13 => 8 * vlen,
                2 | 7..=12 | 16 | 18 => 0,
                k => return Err(format!("BTF kind {k} unknown")),
            };
            v.push((kind, name, o));
            o += 12 + extra;
        }
        Ok(v)
    }

    /// `elf` with `_<program>` in `.xdp_run_config`: priority `priority`,
    /// the chain going on after XDP_PASS only.
    pub fn with_run_config(elf: &[u8], program: &str, priority: u32) -> Result<Object, String> {
        let bad = |e: String| format!("writing libxdp's run configuration into the object's BTF: {e}");
        let (shdr, off, size) = section(elf, ".BTF").map_err(bad)?;
        let btf = elf.get(off..off + size).ok_or_else(|| bad("the .BTF section is past the end".into()))?;
        let hdr_len = u32_at(btf, 4).map_err(bad)? as usize;
        let (type_off, type_len) = (u32_at(btf, 8).map_err(bad)? as usize, u32_at(btf, 12).map_err(bad)? as usize);
        let (str_off, str_len) = (u32_at(btf, 16).map_err(bad)? as usize, u32_at(btf, 20).map_err(bad)? as usize);
        let n = types(btf).map_err(bad)?.len() as u32;

        let mut strings = btf[hdr_len + str_off..hdr_len + str_off + str_len].to_vec();
        let mut string = |s: &str| {
            let at = strings.len() as u32;
            strings.extend_from_slice(s.as_bytes());
            strings.push(0);
            at
        };
        let (int, prio, pass) = (string("int"), string("priority"), string("XDP_PASS"));
        let (var, sec) = (string(&format!("_{program}")), string(SECTION));
        let mut t: Vec<u32> = Vec::new();
        let info = |kind: u32, vlen: u32| (kind << 24) | vlen;
        let id = |k: u32| n + k;
        // 1: int; 2: int[priority]; 3: ptr to 2; 4: int[1]; 5: ptr to 4;
        // 6: struct { priority: 3, XDP_PASS: 5 }; 7: var _<program>: 6; 8: the datasec.
        t.extend([int, info(BTF_KIND_INT, 0), 4, (1 << 24) | 32]);
        t.extend([0, info(BTF_KIND_ARRAY, 0), 0, id(1), id(1), priority]);
        t.extend([0, info(BTF_KIND_PTR, 0), id(2)]);
        t.extend([0, info(BTF_KIND_ARRAY, 0), 0, id(1), id(1), 1]);
        t.extend([0, info(BTF_KIND_PTR, 0), id(4)]);
        t.extend([0, info(BTF_KIND_STRUCT, 2), 16, prio, id(3), 0, pass, id(5), 64]);
        t.extend([var, info(BTF_KIND_VAR, 0), id(6), 1]);
        t.extend([sec, info(BTF_KIND_DATASEC, 1), 16, id(7), 0, 16]);

        let mut types_bytes = btf[hdr_len + type_off..hdr_len + type_off + type_len].to_vec();
        types_bytes.extend(t.iter().flat_map(|w| w.to_le_bytes()));
        let mut new = btf[..hdr_len].to_vec();
        new[8..12].copy_from_slice(&0u32.to_le_bytes());
        new[12..16].copy_from_slice(&(types_bytes.len() as u32).to_le_bytes());
        new[16..20].copy_from_slice(&(types_bytes.len() as u32).to_le_bytes());
        new[20..24].copy_from_slice(&(strings.len() as u32).to_le_bytes());
        new.extend(types_bytes);
        new.extend(strings);

        // The new BTF goes at the end; the section header points to it.
        let mut out = elf.to_vec();
        out.resize(out.len().next_multiple_of(8), 0);
        let at = out.len() as u64;
        out.extend(&new);
        out[shdr + 24..shdr + 32].copy_from_slice(&at.to_le_bytes());
        out[shdr + 32..shdr + 40].copy_from_slice(&(new.len() as u64).to_le_bytes());
        let mut words = vec![0u64; out.len().div_ceil(8)];
        // Safety: `words` has room for every byte of `out`.
        unsafe { std::ptr::copy_nonoverlapping(out.as_ptr(), words.as_mut_ptr().cast::<u8>(), out.len()) };
        Ok(Object { words, len: out.len() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn the_mode_is_opt_in_and_its_table_is_checked() {
        let c = Config::parse("").unwrap();
        assert_eq!(c.xdp_dispatcher, DispatcherConfig { enabled: false, priority: 10 });
        let c = Config::parse("[xdp_dispatcher]\nenabled = true\npriority = 35\n").unwrap();
        assert_eq!(c.xdp_dispatcher, DispatcherConfig { enabled: true, priority: 35 });
        let e = Config::parse("[xdp_dispatcher]\nenabled = true\nprio = 35\n").unwrap_err().to_string();
        assert!(e.contains("prio"), "{e}");
        let e = Config::parse("[xdp_dispatcher]\npriority = -1\n").unwrap_err().to_string();
        assert!(e.contains("priority"), "{e}");
        let e = Config::parse("[xdp_dispatcher]\npriority = 100001\n").unwrap_err().to_string();
        assert!(e.contains("xdp_dispatcher.priority = 100001 must be in 0..=100000"), "{e}");
    }

    #[test]
    fn the_run_config_is_in_the_btf_as_libxdp_reads_it() {
        let o = run_config::with_run_config(XDP_OBJECT, names::PROGRAM, 35).unwrap();
        let elf = o.bytes();
        let (_, off, size) = run_config::section(elf, ".BTF").unwrap();
        let btf = &elf[off..off + size];
        let u32_at = |o: usize| u32::from_le_bytes(btf[o..o + 4].try_into().unwrap());
        let (hdr, str_off) = (u32_at(4) as usize, u32_at(16) as usize);
        let name = |n: u32| {
            let s = &btf[hdr + str_off + n as usize..];
            String::from_utf8_lossy(&s[..s.iter().position(|c| *c == 0).unwrap()]).into_owned()
        };
        let types = run_config::types(btf).unwrap();
        let by_id = |id: u32| types[id as usize - 1];
        // The original types are all still there (the program's function among them).
        let original = run_config::types(&XDP_OBJECT[run_config::section(XDP_OBJECT, ".BTF").unwrap().1..]).unwrap();
        assert_eq!(types.len(), original.len() + 8);
        assert!(types.iter().any(|(k, n, _)| *k == 12 && name(*n) == names::PROGRAM));
        // DATASEC .xdp_run_config -> VAR _ampguard -> STRUCT { priority: *[int; 35], XDP_PASS: *[int; 1] }.
        let (kind, n, o) = *types.last().unwrap();
        assert_eq!((kind, name(n).as_str()), (15, run_config::SECTION));
        let (kind, n, o) = by_id(u32_at(o + 12));
        assert_eq!((kind, name(n)), (14, format!("_{}", names::PROGRAM)));
        let (kind, _, s) = by_id(u32_at(o + 8));
        assert_eq!(kind, 4);
        let member = |i: usize| {
            let (ptr, _, p) = by_id(u32_at(s + 12 + 12 * i + 4));
            assert_eq!(ptr, 2);
            let (arr, _, a) = by_id(u32_at(p + 8));
            assert_eq!(arr, 3);
            (name(u32_at(s + 12 + 12 * i)), u32_at(a + 20))
        };
        assert_eq!(member(0), ("priority".to_string(), 35));
        assert_eq!(member(1), ("XDP_PASS".to_string(), 1));
    }

    #[test]
    fn pins_of_vlan_interfaces_round_trip() {
        let dir = Path::new("/sys/fs/bpf/ampguard");
        assert_eq!(program_pin_path(dir, "eth0.100"), Path::new("/sys/fs/bpf/ampguard/dispatched_eth0%2e100"));
        assert_ne!(program_pin_path(dir, "eth0"), attach::link_pin_path(dir, "eth0"));
    }
}
