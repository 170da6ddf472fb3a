//! A two-namespace network lab: a "wan" side (reflectors, clients) and an
//! "edge" side (the appliance's interface and the victims behind it), joined
//! by one veth pair created directly inside the namespaces (`wan0` <-> `edge0`).
//!
//! ```text
//!   ns ag-<tag>-wan-<pid>                       ns ag-<tag>-edge-<pid>
//!   wan0 198.51.100.1/24                        edge0 203.0.113.1/24
//!        reflectors 198.51.100.7/.53/.123 /32         victims 203.0.113.10/.20 /32
//!        client 192.0.2.10/24                         2001:db8:2::1/64, 2001:db8:2::10/64
//!        2001:db8:1::1/64, 2001:db8:1::7/64
//!   routes: 203.0.113.0/24, 2001:db8:2::/64     routes: 198.51.100.0/24, 192.0.2.0/24,
//!           dev wan0                                    2001:db8:1::/64 dev edge0
//! ```
//!
//! Only documentation prefixes (RFC 5737, RFC 3849) are used, no namespace has
//! a default route, and the host's own interfaces are never touched: every
//! `ip` command runs with `-n <lab namespace>`. The veths have fixed MACs and
//! every address above has a permanent neighbour entry on the other side, so
//! the first packet of a burst is never queued behind ARP/ND resolution.
//!
//! Cleanup: `Lab`'s `Drop` deletes both namespaces; namespaces are also kept in
//! a process-wide registry that a SIGINT/SIGTERM/SIGHUP handler deletes before
//! exiting with status 130; and `Lab::new` first calls [`cleanup_stale`], which
//! deletes "ag-*" namespaces left by processes that no longer exist.

use anyhow::{anyhow, bail, Context, Result};
use socket2::{Domain, Protocol, Socket, Type};
use std::collections::BTreeSet;
use std::fs::File;
use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

/// Where `ip netns add` puts its namespace handles.
const NETNS_DIR: &str = "/var/run/netns";
/// Prefix of every namespace this lab creates (and [`cleanup_stale`] removes).
pub const NS_PREFIX: &str = "ag-";

/// Interface names (identical in every lab: each lives in its own namespace).
pub const WAN_IF: &str = "wan0";
pub const EDGE_IF: &str = "edge0";
/// Fixed, locally administered MACs of the veth pair.
pub const WAN_MAC: &str = "02:a9:00:00:00:01";
pub const EDGE_MAC: &str = "02:a9:00:00:00:02";

/// wan side: the "internet" router address on wan0.
pub const WAN_GW_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
/// wan side: reflector addresses (memcached/NTP/DNS-style sources), /32 each.
pub const REFLECTOR_V4: [Ipv4Addr; 3] = [Ipv4Addr::new(198, 51, 100, 7), Ipv4Addr::new(198, 51, 100, 53), Ipv4Addr::new(198, 51, 100, 123)];
/// wan side: a legitimate client.
pub const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
pub const WAN_GW_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1);
pub const REFLECTOR_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 7);
/// edge side: the appliance's own address on edge0.
pub const EDGE_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
/// edge side: protected victims, /32 each on edge0.
pub const VICTIM_V4: [Ipv4Addr; 2] = [Ipv4Addr::new(203, 0, 113, 10), Ipv4Addr::new(203, 0, 113, 20)];
pub const EDGE_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 1);
pub const VICTIM_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 0x10);

/// A named network namespace (a handle under /var/run/netns).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Netns {
    pub name: String,
}

/// The two-namespace lab; see the module docs for the layout.
#[derive(Debug)]
pub struct Lab {
    pub wan: Netns,
    pub edge: Netns,
    /// "edge0", inside the edge namespace (where XDP is attached).
    pub edge_if: String,
    /// "wan0", inside the wan namespace.
    pub wan_if: String,
    /// The tag actually used in the names (the requested one, plus a number
    /// if a lab with that tag already exists in this process).
    pub tag: String,
}

// ---------------------------------------------------------------------------
// Commands

fn output_to_result(what: &str, out: Output) -> Result<Output> {
    if out.status.success() {
        Ok(out)
    } else {
        bail!(
            "`{what}` failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        )
    }
}

/// Runs `program args`, capturing output; error (with stderr) on a non-zero exit.
fn run(program: &str, args: &[&str]) -> Result<Output> {
    let what = format!("{program} {}", args.join(" "));
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("could not start `{what}` (is iproute2 installed? run `sudo cargo xtask setup`)"))?;
    output_to_result(&what, out)
}

impl Netns {
    /// Runs a command inside the namespace (`ip netns exec NAME args...`) and
    /// returns its output; error with stderr on failure. Note that `ip netns
    /// exec` mounts a fresh /sys for the command (a bpffs at /sys/fs/bpf is not
    /// visible inside it).
    pub fn exec(&self, args: &[&str]) -> Result<Output> {
        let mut full = vec!["netns", "exec", self.name.as_str()];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// Runs `ip -n NAME args...` (iproute2 configuring this namespace only).
    pub fn ip(&self, args: &[&str]) -> Result<Output> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// Runs `f` with the current thread moved into this namespace, moving it
    /// back afterwards, also when `f` panics. Sockets created inside `f` stay
    /// in this namespace after the thread moves back.
    pub fn enter<T>(&self, f: impl FnOnce() -> T) -> Result<T> {
        let original = File::open("/proc/thread-self/ns/net").context("opening /proc/thread-self/ns/net")?;
        let path = Path::new(NETNS_DIR).join(&self.name);
        let target = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        setns_net(target.as_raw_fd()).with_context(|| format!("setns into {}", self.name))?;
        let _restore = RestoreNetns(original);
        Ok(f())
    }

    /// Sets a sysctl under /proc/sys/net in this namespace, e.g.
    /// `("ipv4/conf/all/rp_filter", "0")`.
    pub fn sysctl_net(&self, key: &str, value: &str) -> Result<()> {
        let path = format!("/proc/sys/net/{key}");
        self.enter(|| std::fs::write(&path, value))?.with_context(|| format!("writing {value} to {path} in {}", self.name))
    }

    /// Whether the namespace handle exists.
    pub fn exists(&self) -> bool {
        Path::new(NETNS_DIR).join(&self.name).exists()
    }
}

fn setns_net(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: fd is an open namespace file descriptor; setns only affects the calling thread.
    if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Moves the thread back to its original network namespace on drop.
struct RestoreNetns(File);

impl Drop for RestoreNetns {
    fn drop(&mut self) {
        if let Err(e) = setns_net(self.0.as_raw_fd()) {
            // Carrying on would run later code (maybe the host's) in the wrong namespace.
            eprintln!("ampguard lab: cannot return the thread to its network namespace: {e}; aborting");
            std::process::abort();
        }
    }
}

// ---------------------------------------------------------------------------
// Registry, signal handler, stale cleanup

static REGISTRY: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());
static SIGNALS: Once = Once::new();

fn registry() -> std::sync::MutexGuard<'static, BTreeSet<String>> {
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

fn delete_netns(name: &str) {
    match Command::new("ip").args(["netns", "del", name]).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).output() {
        Ok(o) if o.status.success() => {}
        Ok(o) if !Path::new(NETNS_DIR).join(name).exists() => drop(o),
        Ok(o) => eprintln!("ampguard lab: ip netns del {name}: {}", String::from_utf8_lossy(&o.stderr).trim()),
        Err(e) => eprintln!("ampguard lab: ip netns del {name}: {e}"),
    }
}

/// Installs (once per process) a SIGINT/SIGTERM/SIGHUP handler that deletes
/// every registered lab namespace and exits with status 130. If the process
/// already has a handler (ctrlc allows one), that one is kept and a note printed.
pub fn install_signal_handler() {
    SIGNALS.call_once(|| {
        let r = ctrlc::set_handler(|| {
            let names: Vec<String> = registry().iter().cloned().collect();
            for name in &names {
                delete_netns(name);
            }
            eprintln!("ampguard lab: interrupted; deleted {} lab namespace(s)", names.len());
            std::process::exit(130);
        });
        if let Err(e) = r {
            eprintln!(
                "ampguard lab: not installing the cleanup signal handler ({e}); lab namespaces are removed on drop or by the next run"
            );
        }
    });
}

/// Deletes namespaces named "ag-*" whose trailing pid is not a live process
/// (left behind by a killed earlier run). Returns the names deleted.
pub fn cleanup_stale() -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else {
        return Vec::new();
    };
    let mut deleted = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with(NS_PREFIX) {
            continue;
        }
        let Some(pid) = name.rsplit('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        delete_netns(&name);
        deleted.push(name);
    }
    deleted
}

// ---------------------------------------------------------------------------
// The lab

impl Lab {
    /// Creates the namespaces "`ag-<tag>-wan-<pid>`" and "`ag-<tag>-edge-<pid>`"
    /// and configures them as in the module docs. `tag` is letters, digits,
    /// '_', '.' or '-'. Two labs of the same tag in one process get "`<tag>2`", ...
    pub fn new(tag: &str) -> Result<Lab> {
        if tag.is_empty() || !tag.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)) {
            bail!("lab tag {tag:?} must be non-empty ASCII letters, digits, '_', '.' or '-'");
        }
        install_signal_handler();
        cleanup_stale();
        let pid = std::process::id();
        let lab = {
            let mut reg = registry();
            let mut n = 1u32;
            let (tag, wan, edge) = loop {
                let t = if n == 1 { tag.to_string() } else { format!("{tag}{n}") };
                let wan = format!("{NS_PREFIX}{t}-wan-{pid}");
                let edge = format!("{NS_PREFIX}{t}-edge-{pid}");
                let taken = |s: &String| reg.contains(s) || Path::new(NETNS_DIR).join(s).exists();
                if !taken(&wan) && !taken(&edge) {
                    break (t, wan, edge);
                }
                n += 1;
            };
            // Registered before creation so an interrupt half way still cleans up.
            reg.insert(wan.clone());
            reg.insert(edge.clone());
            Lab { wan: Netns { name: wan }, edge: Netns { name: edge }, edge_if: EDGE_IF.to_string(), wan_if: WAN_IF.to_string(), tag }
        };
        // On error `lab` is dropped here, deleting whatever was created.
        lab.configure().with_context(|| format!("setting up lab {:?}", lab.tag))?;
        Ok(lab)
    }

    fn configure(&self) -> Result<()> {
        let (w, e) = (&self.wan, &self.edge);
        run("ip", &["netns", "add", &w.name])?;
        run("ip", &["netns", "add", &e.name])?;

        // The pair is created inside the wan namespace, its peer directly in the
        // edge namespace: nothing ever appears in the host's namespace.
        w.ip(&["link", "add", WAN_IF, "address", WAN_MAC, "type", "veth", "peer", "name", EDGE_IF, "address", EDGE_MAC, "netns", &e.name])?;

        // Before any address exists: no DAD, so IPv6 addresses are usable at once;
        // no reverse-path filter on the edge, so spoof-looking sources are accepted.
        for ns in [w, e] {
            for key in ["ipv6/conf/all/accept_dad", "ipv6/conf/default/accept_dad"] {
                ns.sysctl_net(key, "0")?;
            }
        }
        w.sysctl_net(&format!("ipv6/conf/{WAN_IF}/accept_dad"), "0")?;
        e.sysctl_net(&format!("ipv6/conf/{EDGE_IF}/accept_dad"), "0")?;
        for key in ["all", "default", EDGE_IF] {
            e.sysctl_net(&format!("ipv4/conf/{key}/rp_filter"), "0")?;
        }

        // wan side
        w.ip(&["addr", "add", "198.51.100.1/24", "dev", WAN_IF])?;
        for a in REFLECTOR_V4 {
            w.ip(&["addr", "add", &format!("{a}/32"), "dev", WAN_IF])?;
        }
        w.ip(&["addr", "add", "192.0.2.10/24", "dev", WAN_IF])?;
        w.ip(&["-6", "addr", "add", "2001:db8:1::1/64", "dev", WAN_IF, "nodad"])?;
        w.ip(&["-6", "addr", "add", "2001:db8:1::7/64", "dev", WAN_IF, "nodad"])?;
        w.ip(&["link", "set", "lo", "up"])?;
        w.ip(&["link", "set", WAN_IF, "up"])?;
        w.ip(&["route", "add", "203.0.113.0/24", "dev", WAN_IF])?;
        w.ip(&["-6", "route", "add", "2001:db8:2::/64", "dev", WAN_IF])?;

        // edge side
        e.ip(&["addr", "add", "203.0.113.1/24", "dev", EDGE_IF])?;
        for a in VICTIM_V4 {
            e.ip(&["addr", "add", &format!("{a}/32"), "dev", EDGE_IF])?;
        }
        e.ip(&["-6", "addr", "add", "2001:db8:2::1/64", "dev", EDGE_IF, "nodad"])?;
        e.ip(&["-6", "addr", "add", "2001:db8:2::10/64", "dev", EDGE_IF, "nodad"])?;
        e.ip(&["link", "set", "lo", "up"])?;
        e.ip(&["link", "set", EDGE_IF, "up"])?;
        e.ip(&["route", "add", "198.51.100.0/24", "dev", EDGE_IF])?;
        e.ip(&["route", "add", "192.0.2.0/24", "dev", EDGE_IF])?;
        e.ip(&["-6", "route", "add", "2001:db8:1::/64", "dev", EDGE_IF])?;

        // Permanent neighbours: no packet waits for (or is dropped behind) ARP/ND.
        let wan_side: Vec<IpAddr> = [WAN_GW_V4, CLIENT_V4]
            .into_iter()
            .chain(REFLECTOR_V4)
            .map(IpAddr::V4)
            .chain([WAN_GW_V6, REFLECTOR_V6].map(IpAddr::V6))
            .collect();
        let edge_side: Vec<IpAddr> =
            [EDGE_V4].into_iter().chain(VICTIM_V4).map(IpAddr::V4).chain([EDGE_V6, VICTIM_V6].map(IpAddr::V6)).collect();
        for a in &edge_side {
            w.ip(&["neigh", "replace", &a.to_string(), "lladdr", EDGE_MAC, "dev", WAN_IF, "nud", "permanent"])?;
        }
        for a in &wan_side {
            e.ip(&["neigh", "replace", &a.to_string(), "lladdr", WAN_MAC, "dev", EDGE_IF, "nud", "permanent"])?;
        }
        Ok(())
    }

    /// `ns.exec(args)`: runs a command inside `ns` (`ip netns exec`).
    pub fn exec(ns: &Netns, args: &[&str]) -> Result<Output> {
        ns.exec(args)
    }

    /// `ns.enter(f)`: runs `f` on this thread inside `ns`, restoring the namespace after.
    pub fn in_ns<T>(ns: &Netns, f: impl FnOnce() -> T) -> Result<T> {
        ns.enter(f)
    }

    /// The ifindex of edge0 inside the edge namespace (for attaching XDP).
    pub fn edge_ifindex(&self) -> Result<u32> {
        ifindex(&self.edge, &self.edge_if)
    }

    /// The ifindex of wan0 inside the wan namespace.
    pub fn wan_ifindex(&self) -> Result<u32> {
        ifindex(&self.wan, &self.wan_if)
    }
}

fn ifindex(ns: &Netns, ifname: &str) -> Result<u32> {
    let c = std::ffi::CString::new(ifname)?;
    // SAFETY: c is a valid NUL-terminated string.
    let idx = ns.enter(|| unsafe { libc::if_nametoindex(c.as_ptr()) })?;
    if idx == 0 {
        bail!("no interface {ifname} in {}: {}", ns.name, std::io::Error::last_os_error());
    }
    Ok(idx)
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Deleting a namespace removes the veth pair with it (once no socket
        // still holds the namespace).
        for ns in [&self.edge, &self.wan] {
            delete_netns(&ns.name);
            registry().remove(&ns.name);
        }
    }
}

// ---------------------------------------------------------------------------
// UDP traffic

/// A UDP socket created inside `ns`, bound to `addr` with IP(V6)_FREEBIND (any
/// address works, configured or not).
fn udp_socket_in(ns: &Netns, addr: SocketAddr, reuse: bool) -> Result<UdpSocket> {
    let sock = ns
        .enter(|| -> std::io::Result<Socket> {
            let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
            if addr.is_ipv6() {
                s.set_only_v6(true)?;
                s.set_freebind_v6(true)?;
            } else {
                s.set_freebind_v4(true)?;
            }
            s.set_reuse_address(reuse)?;
            s.bind(&addr.into())?;
            Ok(s)
        })?
        .with_context(|| format!("binding UDP {addr} in {}", ns.name))?;
    Ok(sock.into())
}

/// Sends `count` datagrams of `payload_len` zero bytes from `src` (bound in
/// `ns` with FREEBIND, e.g. 198.51.100.7:11211) to `dst`. Returns how many
/// were sent. Bounded: a send that blocks for a second, or keeps failing with
/// ENOBUFS, ends the burst early.
pub fn send_udp(ns: &Netns, src: SocketAddr, dst: SocketAddr, count: usize, payload_len: usize) -> Result<usize> {
    send_udp_payload(ns, src, dst, count, &vec![0u8; payload_len])
}

/// Like [`send_udp`] with a given payload (e.g. a real DNS or memcached response).
pub fn send_udp_payload(ns: &Netns, src: SocketAddr, dst: SocketAddr, count: usize, payload: &[u8]) -> Result<usize> {
    let sock = udp_socket_in(ns, src, true)?;
    sock.set_write_timeout(Some(Duration::from_secs(1)))?;
    let mut sent = 0;
    let mut retries = 0;
    while sent < count {
        match sock.send_to(payload, dst) {
            Ok(_) => {
                sent += 1;
                retries = 0;
            }
            Err(e) if is_transient(&e) && retries < 100 => {
                retries += 1;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) if is_transient(&e) => break,
            Err(e) => return Err(anyhow!(e)).with_context(|| format!("sending UDP {src} -> {dst} after {sent} datagrams")),
        }
    }
    Ok(sent)
}

fn is_transient(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted) || e.raw_os_error() == Some(libc::ENOBUFS)
}

/// A UDP receiver bound inside a namespace; counts what arrives.
#[derive(Debug)]
pub struct UdpSink {
    sock: UdpSocket,
}

impl UdpSink {
    /// Binds a UDP socket at `addr` inside `ns` (FREEBIND; 8 MiB receive buffer
    /// so bursts are not lost to the socket itself).
    pub fn bind(ns: &Netns, addr: SocketAddr) -> Result<Self> {
        let sock = udp_socket_in(ns, addr, false)?;
        let size: libc::c_int = 8 << 20;
        // SAFETY: valid fd and a c_int option value of the right length.
        let rc = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                &size as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            // Not fatal (needs CAP_NET_ADMIN): fall back to what rmem_max allows.
            let _ = socket2::SockRef::from(&sock).set_recv_buffer_size(size as usize);
        }
        Ok(UdpSink { sock })
    }

    /// Receives and counts datagrams until none arrives for `idle`, or `max`
    /// has passed in total. Returns the number received.
    pub fn drain(&self, idle: Duration, max: Duration) -> usize {
        let start = Instant::now();
        let mut buf = vec![0u8; 65536];
        let mut n = 0;
        loop {
            let left = max.saturating_sub(start.elapsed());
            let wait = idle.min(left);
            if wait.is_zero() {
                break;
            }
            if self.sock.set_read_timeout(Some(wait)).is_err() {
                break;
            }
            match self.sock.recv_from(&mut buf) {
                Ok(_) => n += 1,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => break, // timed out (idle) or a real error
            }
        }
        n
    }

    /// The bound address.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.sock.local_addr()?)
    }

    /// The underlying socket (e.g. to read payloads).
    pub fn socket(&self) -> &UdpSocket {
        &self.sock
    }
}

/// A socket address from a test literal, e.g. `sa("198.51.100.7:11211")`.
pub fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap_or_else(|e| panic!("{s:?} is not a socket address: {e}"))
}

/// Send `count` datagrams of 300 bytes from `src` (wan side) to `dst` (edge
/// side) and count how many arrive (bounded: 5 s).
pub fn deliver(lab: &Lab, src: &str, dst: &str, count: usize) -> usize {
    let sink = UdpSink::bind(&lab.edge, sa(dst)).expect("bind sink");
    assert_eq!(send_udp(&lab.wan, sa(src), sa(dst), count, 300).expect("send"), count);
    sink.drain(Duration::from_millis(300), Duration::from_secs(5))
}
