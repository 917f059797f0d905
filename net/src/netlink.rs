//! The few rtnetlink requests a node needs (link up, address, bridge, enslave, default route,
//! delete a link), on a blocking NETLINK_ROUTE socket: neither init nor havmsd has an async
//! runtime, and neither wants one.

use std::io;
use std::net::{IpAddr, Ipv4Addr};

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL,
    NLM_F_REPLACE, NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use havms_config::Cidr;

pub struct Rtnl {
    socket: Socket,
    seq: u32,
}

fn errno_of(e: &io::Error) -> Option<i32> {
    e.raw_os_error()
}

/// The interface index for a name, or an error naming the interface.
pub fn index_of(name: &str) -> io::Result<u32> {
    nix::net::if_::if_nametoindex(name)
        .map_err(|e| io::Error::new(io::ErrorKind::NotFound, format!("interface {name}: {e}")))
}

impl Rtnl {
    pub fn open() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(Self { socket, seq: 0 })
    }

    /// Sends one request and waits for the kernel's acknowledgement.
    fn request(&mut self, msg: RouteNetlinkMessage, extra_flags: u16) -> io::Result<()> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_ACK | extra_flags;
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        packet.finalize();
        let mut buf = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut buf);
        self.socket.send(&buf, 0)?;
        let mut rx = vec![0u8; 16 * 1024];
        loop {
            let n = self.socket.recv(&mut &mut rx[..], 0)?;
            let mut offset = 0;
            while offset < n {
                let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&rx[offset..n])
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                let len = reply.header.length as usize;
                if reply.header.sequence_number == self.seq {
                    if let NetlinkPayload::Error(err) = reply.payload {
                        return match err.code {
                            None => Ok(()),
                            Some(_) => Err(err.to_io()),
                        };
                    }
                }
                if len == 0 {
                    break;
                }
                offset += len;
            }
        }
    }

    /// Sets IFF_UP.
    pub fn set_up(&mut self, index: u32) -> io::Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
        self.request(RouteNetlinkMessage::SetLink(msg), 0)
    }

    /// Creates a bridge; an existing one is fine.
    pub fn create_bridge(&mut self, name: &str) -> io::Result<()> {
        let mut msg = LinkMessage::default();
        msg.attributes = vec![
            LinkAttribute::IfName(name.to_string()),
            LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Bridge)]),
        ];
        match self.request(RouteNetlinkMessage::NewLink(msg), NLM_F_CREATE | NLM_F_EXCL) {
            Err(e) if errno_of(&e) == Some(libc::EEXIST) => Ok(()),
            other => other,
        }
    }

    /// Makes `port` a port of `bridge`.
    pub fn set_controller(&mut self, port: u32, bridge: u32) -> io::Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = port;
        msg.attributes = vec![LinkAttribute::Controller(bridge)];
        self.request(RouteNetlinkMessage::SetLink(msg), 0)
    }

    /// Deletes a link (a tap of a VM that left the config); a missing one is fine.
    pub fn delete_link(&mut self, index: u32) -> io::Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        match self.request(RouteNetlinkMessage::DelLink(msg), 0) {
            Err(e) if errno_of(&e) == Some(libc::ENODEV) => Ok(()),
            other => other,
        }
    }

    /// Adds an IPv4 address with its broadcast; an existing identical one is fine.
    pub fn add_address(&mut self, index: u32, cidr: &Cidr) -> io::Result<()> {
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.prefix_len = cidr.prefix_len;
        msg.header.index = index;
        let broadcast = Ipv4Addr::from(u32::from(cidr.addr) | !u32::from(cidr.netmask()));
        msg.attributes = vec![
            AddressAttribute::Local(IpAddr::V4(cidr.addr)),
            AddressAttribute::Address(IpAddr::V4(cidr.addr)),
        ];
        if cidr.prefix_len < 31 {
            msg.attributes.push(AddressAttribute::Broadcast(broadcast));
        }
        match self.request(
            RouteNetlinkMessage::NewAddress(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        ) {
            Err(e) if errno_of(&e) == Some(libc::EEXIST) => Ok(()),
            other => other,
        }
    }

    /// Default route via `gateway` out of `index` (replacing any other default).
    pub fn add_default_route(&mut self, gateway: Ipv4Addr, index: u32) -> io::Result<()> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = AddressFamily::Inet;
        msg.header.destination_prefix_length = 0;
        msg.header.table = RouteHeader::RT_TABLE_MAIN;
        msg.header.protocol = RouteProtocol::Boot;
        msg.header.scope = RouteScope::Universe;
        msg.header.kind = RouteType::Unicast;
        msg.attributes = vec![
            RouteAttribute::Gateway(RouteAddress::Inet(gateway)),
            RouteAttribute::Oif(index),
        ];
        self.request(
            RouteNetlinkMessage::NewRoute(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;

    /// The real kernel, in a private network namespace (root only; skipped otherwise): lo comes
    /// up, an address lands (binding to it works), a bridge is created and gets a port-less
    /// address and a default route.
    #[test]
    fn configures_a_private_namespace() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("note: not root; netlink namespace test skipped");
            return;
        }
        // SAFETY: the child unshares its network namespace, runs the requests and _exits.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                let code = (|| -> Result<i32, String> {
                    match nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET) {
                        Ok(()) => {}
                        // A container that forbids namespaces: nothing to test against.
                        Err(nix::errno::Errno::EPERM) => {
                            eprintln!("note: unshare(CLONE_NEWNET) not permitted; skipped");
                            return Ok(0);
                        }
                        Err(e) => return Err(format!("unshare: {e}")),
                    }
                    let mut nl = Rtnl::open().map_err(|e| e.to_string())?;
                    let lo = index_of("lo").map_err(|e| e.to_string())?;
                    nl.set_up(lo).map_err(|e| format!("lo up: {e}"))?;
                    let cidr: Cidr = "10.77.0.1/24".parse().map_err(|e: String| e)?;
                    nl.add_address(lo, &cidr)
                        .map_err(|e| format!("address: {e}"))?;
                    nl.add_address(lo, &cidr)
                        .map_err(|e| format!("address again: {e}"))?;
                    UdpSocket::bind("10.77.0.1:0").map_err(|e| format!("bind: {e}"))?;
                    match nl.create_bridge("br9") {
                        // No bridge module on this host: the part above still counts.
                        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => return Ok(0),
                        Err(e) => return Err(format!("bridge: {e}")),
                        Ok(()) => {}
                    }
                    nl.create_bridge("br9")
                        .map_err(|e| format!("bridge again: {e}"))?;
                    let br = index_of("br9").map_err(|e| e.to_string())?;
                    nl.set_up(br).map_err(|e| format!("br up: {e}"))?;
                    let cidr: Cidr = "192.168.77.11/24".parse().map_err(|e: String| e)?;
                    nl.add_address(br, &cidr)
                        .map_err(|e| format!("br address: {e}"))?;
                    nl.add_default_route("192.168.77.1".parse().unwrap(), br)
                        .map_err(|e| format!("route: {e}"))?;
                    let routes = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
                    // Default route: destination 00000000, gateway 0x014DA8C0 (little endian).
                    if !routes
                        .lines()
                        .any(|l| l.starts_with("br9\t00000000\t014DA8C0"))
                    {
                        return Err(format!("no default route in\n{routes}"));
                    }
                    if index_of("nosuch0").is_ok() {
                        return Err("nosuch0 exists?".into());
                    }
                    Ok(0)
                })();
                if let Err(e) = &code {
                    eprintln!("{e}");
                }
                // SAFETY: _exit is async-signal-safe and skips the harness's atexit handlers.
                unsafe { libc::_exit(code.unwrap_or(1)) }
            }
            nix::unistd::ForkResult::Parent { child } => {
                let status = nix::sys::wait::waitpid(child, None).unwrap();
                assert_eq!(status, nix::sys::wait::WaitStatus::Exited(child, 0));
            }
        }
    }
}
