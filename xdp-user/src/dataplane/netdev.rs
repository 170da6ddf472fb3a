//! Which XDP program an interface runs, asked of the kernel over rtnetlink
//! (RTM_GETLINK, IFLA_XDP): the one view that also shows programs attached
//! without a bpf link (netlink attach, as libxdp and older tools do), so a
//! start can name someone else's program instead of failing on EEXIST.

use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_REQUEST};
use netlink_packet_route::{
    link::{LinkAttribute, LinkMessage, LinkXdp, XdpAttached},
    RouteNetlinkMessage,
};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// An XDP program attached to an interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XdpOnInterface {
    pub prog_id: u32,
    /// "native", "generic", "offload" or "multi".
    pub mode: &'static str,
    /// The program's name, when it could be read.
    pub name: Option<String>,
}

impl std::fmt::Display for XdpOnInterface {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "XDP program id {}", self.prog_id)?;
        if let Some(n) = &self.name {
            write!(f, " ({n})")?;
        }
        write!(f, " in {} mode", self.mode)
    }
}

/// The XDP program on `ifindex`, if any.
pub fn xdp_program(ifindex: u32) -> std::io::Result<Option<XdpOnInterface>> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut msg = LinkMessage::default();
    msg.header.index = ifindex;
    let mut packet = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::from(RouteNetlinkMessage::GetLink(msg)));
    packet.header.flags = NLM_F_REQUEST;
    packet.header.sequence_number = 1;
    packet.finalize();
    let mut buf = vec![0; packet.buffer_len()];
    packet.serialize(&mut buf[..]);
    socket.send(&buf, 0)?;

    let mut rx = vec![0u8; 64 * 1024];
    let n = socket.recv(&mut &mut rx[..], 0)?;
    let reply: NetlinkMessage<RouteNetlinkMessage> =
        NetlinkMessage::deserialize(&rx[..n]).map_err(|e| std::io::Error::other(format!("rtnetlink reply: {e}")))?;
    let link = match reply.payload {
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => link,
        NetlinkPayload::Error(e) => return Err(e.to_io()),
        other => return Err(std::io::Error::other(format!("unexpected rtnetlink reply {other:?}"))),
    };
    let mut attached = XdpAttached::None;
    let mut prog_id = 0;
    for attr in &link.attributes {
        if let LinkAttribute::Xdp(xdp) = attr {
            for x in xdp {
                match x {
                    LinkXdp::Attached(a) => attached = *a,
                    LinkXdp::ProgId(id) => prog_id = *id,
                    _ => {}
                }
            }
        }
    }
    let mode = match attached {
        XdpAttached::None => return Ok(None),
        XdpAttached::Driver => "native",
        XdpAttached::SocketBuffer => "generic",
        XdpAttached::Hardware => "offload",
        _ => "multi",
    };
    Ok(Some(XdpOnInterface { prog_id, mode, name: program_name(prog_id) }))
}

/// The name of a loaded program, by id.
pub fn program_name(id: u32) -> Option<String> {
    aya::programs::loaded_programs().filter_map(Result::ok).find(|p| p.id() == id).and_then(|p| p.name_as_str().map(str::to_string))
}
