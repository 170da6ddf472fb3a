//! libxdp (xdp-tools, `libxdp.so.1`), opened at run time with dlopen: only
//! the dispatcher mode needs it, so the default build and attach path do not
//! depend on it. The functions are those of libxdp 1.3's public API
//! (headers/xdp/libxdp.h); libxdp does the dispatcher protocol (building a
//! new dispatcher, re-linking the other programs, the bpffs pins under
//! /sys/fs/bpf/xdp and their lock), so ampguard and xdp-loader/xdp-filter
//! share one implementation of it.

use std::{
    ffi::{c_char, c_int, c_long, c_uint, c_void, CStr},
    os::fd::{AsRawFd, BorrowedFd},
    sync::OnceLock,
};

/// enum xdp_attach_mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub enum AttachMode {
    Unspec = 0,
    Native = 1,
    Skb = 2,
    Hw = 3,
}

impl AttachMode {
    pub fn name(self) -> &'static str {
        match self {
            AttachMode::Unspec => "unspec",
            AttachMode::Native => "native",
            AttachMode::Skb => "generic",
            AttachMode::Hw => "offload",
        }
    }
}

#[repr(C)]
struct RawProgram {
    _p: [u8; 0],
}
#[repr(C)]
struct RawMultiprog {
    _p: [u8; 0],
}

type PrintFn = Option<unsafe extern "C" fn(c_int, *const c_char, *mut c_void) -> c_int>;

struct Api {
    get_error: unsafe extern "C" fn(*const c_void) -> c_long,
    strerror: unsafe extern "C" fn(c_int, *mut c_char, usize) -> c_int,
    set_print: unsafe extern "C" fn(PrintFn) -> PrintFn,
    from_fd: unsafe extern "C" fn(c_int) -> *mut RawProgram,
    from_id: unsafe extern "C" fn(u32) -> *mut RawProgram,
    close: unsafe extern "C" fn(*mut RawProgram),
    name: unsafe extern "C" fn(*const RawProgram) -> *const c_char,
    id: unsafe extern "C" fn(*const RawProgram) -> u32,
    run_prio: unsafe extern "C" fn(*const RawProgram) -> c_uint,
    chain_call_enabled: unsafe extern "C" fn(*const RawProgram, c_uint) -> bool,
    attach: unsafe extern "C" fn(*mut RawProgram, c_int, AttachMode, c_uint) -> c_int,
    detach: unsafe extern "C" fn(*mut RawProgram, c_int, AttachMode, c_uint) -> c_int,
    mp_get_from_ifindex: unsafe extern "C" fn(c_int) -> *mut RawMultiprog,
    mp_next_prog: unsafe extern "C" fn(*const RawProgram, *const RawMultiprog) -> *mut RawProgram,
    mp_close: unsafe extern "C" fn(*mut RawMultiprog),
    mp_attach_mode: unsafe extern "C" fn(*const RawMultiprog) -> AttachMode,
    mp_main_prog: unsafe extern "C" fn(*const RawMultiprog) -> *mut RawProgram,
    mp_is_legacy: unsafe extern "C" fn(*const RawMultiprog) -> bool,
    _lib: libloading::Library,
}

#[derive(Debug, thiserror::Error)]
pub enum LibxdpError {
    #[error(
        "cannot open libxdp ({0}); the dispatcher mode (`[xdp_dispatcher] enabled = true`) needs libxdp 1.3 or later \
         (`apt install libxdp1`, or xdp-tools)"
    )]
    Open(String),
    #[error("libxdp: {what} failed: {message} (errno {errno})")]
    Call { what: String, errno: i32, message: String },
}

impl LibxdpError {
    pub fn errno(&self) -> Option<i32> {
        match self {
            LibxdpError::Call { errno, .. } => Some(*errno),
            LibxdpError::Open(_) => None,
        }
    }
}

static API: OnceLock<Result<Api, String>> = OnceLock::new();

fn api() -> Result<&'static Api, LibxdpError> {
    API.get_or_init(|| open().map_err(|e| e.to_string())).as_ref().map_err(|e| LibxdpError::Open(e.clone()))
}

fn open() -> Result<Api, libloading::Error> {
    // Safety: loading libxdp runs its (and libbpf's) initialisers, which only set up their own state.
    let lib = unsafe { libloading::Library::new("libxdp.so.1") }?;
    // Safety: each symbol has the C signature of libxdp 1.3's libxdp.h written beside it.
    unsafe {
        macro_rules! sym {
            ($name:literal) => {
                *lib.get($name)?
            };
        }
        Ok(Api {
            get_error: sym!(b"libxdp_get_error"),
            strerror: sym!(b"libxdp_strerror"),
            set_print: sym!(b"libxdp_set_print"),
            from_fd: sym!(b"xdp_program__from_fd"),
            from_id: sym!(b"xdp_program__from_id"),
            close: sym!(b"xdp_program__close"),
            name: sym!(b"xdp_program__name"),
            id: sym!(b"xdp_program__id"),
            run_prio: sym!(b"xdp_program__run_prio"),
            chain_call_enabled: sym!(b"xdp_program__chain_call_enabled"),
            attach: sym!(b"xdp_program__attach"),
            detach: sym!(b"xdp_program__detach"),
            mp_get_from_ifindex: sym!(b"xdp_multiprog__get_from_ifindex"),
            mp_next_prog: sym!(b"xdp_multiprog__next_prog"),
            mp_close: sym!(b"xdp_multiprog__close"),
            mp_attach_mode: sym!(b"xdp_multiprog__attach_mode"),
            mp_main_prog: sym!(b"xdp_multiprog__main_prog"),
            mp_is_legacy: sym!(b"xdp_multiprog__is_legacy"),
            _lib: lib,
        })
    }
}

/// Whether libxdp can be opened (for tests and `status`).
pub fn available() -> Result<(), LibxdpError> {
    api().map(|_| ())
}

/// libxdp prints its warnings on stderr by default; the daemon says what
/// failed itself (with the errno), so they are silenced.
pub fn quiet() -> Result<(), LibxdpError> {
    let a = api()?;
    // Safety: NULL turns printing off (libxdp.c: libxdp_print checks for it).
    unsafe { (a.set_print)(None) };
    Ok(())
}

fn err_of(a: &Api, what: &str, rc: c_long) -> LibxdpError {
    let errno = (-rc) as c_int;
    let mut buf = [0 as c_char; 128];
    // Safety: the buffer and its size.
    unsafe { (a.strerror)(-errno, buf.as_mut_ptr(), buf.len()) };
    // Safety: libxdp_strerror NUL-terminates within size.
    let message = unsafe { CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned();
    LibxdpError::Call { what: what.into(), errno, message }
}

fn check_ptr<T>(a: &Api, what: &str, p: *mut T) -> Result<*mut T, LibxdpError> {
    // Safety: libxdp_get_error accepts any pointer a libxdp function returned.
    let rc = unsafe { (a.get_error)(p as *const c_void) };
    if rc != 0 || p.is_null() {
        return Err(err_of(a, what, if rc != 0 { rc } else { -(libc::ENOENT as c_long) }));
    }
    Ok(p)
}

fn check_rc(a: &Api, what: &str, rc: c_int) -> Result<(), LibxdpError> {
    if rc < 0 {
        return Err(err_of(a, what, rc as c_long));
    }
    Ok(())
}

/// A `struct xdp_program` this process owns (closed on drop).
pub struct Program {
    raw: *mut RawProgram,
    api: &'static Api,
}

// Safety: an xdp_program is plain heap state of libxdp with no thread affinity; Program is not Sync.
unsafe impl Send for Program {}

impl Program {
    /// A libxdp handle on a loaded program (libxdp duplicates the fd).
    pub fn from_fd(fd: BorrowedFd<'_>) -> Result<Self, LibxdpError> {
        let a = api()?;
        // Safety: a valid fd; libxdp duplicates it.
        let raw = check_ptr(a, "xdp_program__from_fd", unsafe { (a.from_fd)(fd.as_raw_fd()) })?;
        Ok(Self { raw, api: a })
    }

    pub fn from_id(id: u32) -> Result<Self, LibxdpError> {
        let a = api()?;
        // Safety: plain value argument.
        let raw = check_ptr(a, &format!("xdp_program__from_id({id})"), unsafe { (a.from_id)(id) })?;
        Ok(Self { raw, api: a })
    }

    pub fn id(&self) -> u32 {
        // Safety: a live program.
        unsafe { (self.api.id)(self.raw) }
    }

    pub fn name(&self) -> String {
        // Safety: a live program; the name is a NUL-terminated string it owns.
        let p = unsafe { (self.api.name)(self.raw) };
        if p.is_null() {
            return String::new();
        }
        // Safety: as above.
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }

    pub fn priority(&self) -> u32 {
        // Safety: a live program.
        unsafe { (self.api.run_prio)(self.raw) }
    }

    /// The chain-call actions (the actions after which the next program runs), by name.
    pub fn chain_call_actions(&self) -> Vec<&'static str> {
        const NAMES: [&str; 5] = ["XDP_ABORTED", "XDP_DROP", "XDP_PASS", "XDP_TX", "XDP_REDIRECT"];
        (0..NAMES.len() as c_uint)
            // Safety: a live program; any action value is accepted.
            .filter(|a| unsafe { (self.api.chain_call_enabled)(self.raw, *a) })
            .map(|a| NAMES[a as usize])
            .collect()
    }

    /// Add this program to the dispatcher on `ifindex` (creating one if there
    /// is none): libxdp builds a new dispatcher with every program and swaps
    /// it in atomically.
    pub fn attach(&mut self, ifindex: u32, mode: AttachMode) -> Result<(), LibxdpError> {
        // Safety: a live program.
        let rc = unsafe { (self.api.attach)(self.raw, ifindex as c_int, mode, 0) };
        check_rc(self.api, &format!("attaching to the dispatcher of ifindex {ifindex} in {} mode", mode.name()), rc)
    }

    /// Remove this program (matched by id) from the dispatcher on `ifindex`.
    pub fn detach(&mut self, ifindex: u32) -> Result<(), LibxdpError> {
        // Safety: a live program.
        let rc = unsafe { (self.api.detach)(self.raw, ifindex as c_int, AttachMode::Unspec, 0) };
        check_rc(self.api, &format!("removing program id {} from the dispatcher of ifindex {ifindex}", self.id()), rc)
    }
}

impl Drop for Program {
    fn drop(&mut self) {
        // Safety: owned, closed once.
        unsafe { (self.api.close)(self.raw) }
    }
}

/// One program of an interface's dispatcher, as libxdp reads it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Component {
    pub id: u32,
    pub name: String,
    pub priority: u32,
    pub chain_call_actions: Vec<&'static str>,
}

/// What libxdp sees on an interface.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Dispatcher {
    /// The dispatcher program's id (or the single program's, when `legacy`).
    pub id: u32,
    pub mode: &'static str,
    /// A program attached without a dispatcher (not libxdp's multi-prog).
    pub legacy: bool,
    /// In run order.
    pub programs: Vec<Component>,
}

/// The dispatcher on `ifindex`; Ok(None) when no XDP program is attached.
pub fn dispatcher(ifindex: u32) -> Result<Option<Dispatcher>, LibxdpError> {
    let a = api()?;
    // Safety: plain value argument; the result is checked below.
    let mp = unsafe { (a.mp_get_from_ifindex)(ifindex as c_int) };
    // Safety: as in check_ptr.
    let rc = unsafe { (a.get_error)(mp as *const c_void) };
    if rc == -(libc::ENOENT as c_long) || (rc == 0 && mp.is_null()) {
        return Ok(None);
    }
    let mp = check_ptr(a, &format!("reading the XDP programs of ifindex {ifindex}"), mp)?;
    // Safety: a live multiprog, closed once at the end; the programs it hands out belong to it.
    unsafe {
        let legacy = (a.mp_is_legacy)(mp);
        let mode = (a.mp_attach_mode)(mp).name();
        let main = (a.mp_main_prog)(mp);
        let id = if main.is_null() { 0 } else { (a.id)(main) };
        let mut programs = Vec::new();
        if !legacy {
            let mut p = (a.mp_next_prog)(std::ptr::null(), mp);
            while !p.is_null() && (a.get_error)(p as *const c_void) == 0 {
                let borrowed = std::mem::ManuallyDrop::new(Program { raw: p, api: a });
                programs.push(Component {
                    id: borrowed.id(),
                    name: borrowed.name(),
                    priority: borrowed.priority(),
                    chain_call_actions: borrowed.chain_call_actions(),
                });
                p = (a.mp_next_prog)(p, mp);
            }
        } else if !main.is_null() {
            let borrowed = std::mem::ManuallyDrop::new(Program { raw: main, api: a });
            programs.push(Component { id, name: borrowed.name(), priority: 0, chain_call_actions: Vec::new() });
        }
        (a.mp_close)(mp);
        Ok(Some(Dispatcher { id, mode, legacy, programs }))
    }
}
