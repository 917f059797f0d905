//! The wires between nodes: one hub per network segment, in the harness, on 127.0.0.1 only.
//!
//! QEMU's `-netdev socket,udp=HUB,localaddr=PORT` sends each Ethernet frame as one UDP datagram
//! to HUB and receives frames on PORT. A hub thread forwards every datagram it receives to every
//! other attached port, like an Ethernet hub, unless the segment or one of the two ports is cut.
//! The LAN hub also plays the LAN's gateway (ARP and ping at 192.168.77.1, the witness).
//! Keeping the wire in the harness is what lets a scenario cut and restore it at will.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::error::{HarnessError, Result};

/// Largest frame QEMU sends (jumbo frames plus headers), with room to spare.
const MAX_DATAGRAM: usize = 65536;
/// How often the hub thread looks at its stop flag while idle.
const POLL: Duration = Duration::from_millis(100);

/// How many ports one process may reserve from `HAVMS_QEMU_PORT_BASE` (xtask/src/lanes.rs
/// spaces the lanes' bases by as many).
pub const PORT_SPAN: u16 = 5000;

/// The next port to try from `HAVMS_QEMU_PORT_BASE` (0: not read yet).
static NEXT_PORT: AtomicU32 = AtomicU32::new(0);

/// A free loopback UDP port for a node's NIC, which QEMU binds a moment later.
///
/// Alone, the kernel picks it (bind port 0, release). With `HAVMS_QEMU_PORT_BASE=N` (set by
/// `cargo xtask test` per lane) it comes from N..N+PORT_SPAN, counted up: below Linux's
/// ephemeral range (32768 up), so another lane's bind to port 0 cannot take it between the
/// release and QEMU's bind, and the lanes' ranges do not overlap.
fn free_port() -> Result<SocketAddr> {
    let base = std::env::var("HAVMS_QEMU_PORT_BASE")
        .ok()
        .and_then(|v| v.parse::<u16>().ok())
        .filter(|&b| b >= 1024 && b.checked_add(PORT_SPAN).is_some());
    let Some(base) = base else {
        let probe = UdpSocket::bind("127.0.0.1:0")
            .map_err(|e| HarnessError::io("finding a free UDP port", e))?;
        return probe
            .local_addr()
            .map_err(|e| HarnessError::io("reading a free UDP port", e));
    };
    port_from(base, &NEXT_PORT)
}

/// The next port of `base..base + PORT_SPAN` that binds, counted on in `next`.
fn port_from(base: u16, next: &AtomicU32) -> Result<SocketAddr> {
    let _ = next.compare_exchange(0, u32::from(base), Ordering::SeqCst, Ordering::SeqCst);
    loop {
        let port = next.fetch_add(1, Ordering::SeqCst);
        let port = u16::try_from(port)
            .ok()
            .filter(|&p| p < base + PORT_SPAN)
            .ok_or_else(|| {
                HarnessError::Check(format!(
                    "no free UDP port left in {base}..{} (HAVMS_QEMU_PORT_BASE)",
                    base + PORT_SPAN
                ))
            })?;
        // A port something else holds is skipped, not an error.
        if let Ok(probe) = UdpSocket::bind(("127.0.0.1", port)) {
            return probe
                .local_addr()
                .map_err(|e| HarnessError::io("reading a free UDP port", e));
        }
    }
}

/// Where one NIC attaches: QEMU sends to `hub` and listens on `local`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Attachment {
    pub hub: SocketAddr,
    pub local: SocketAddr,
}

struct Port {
    node: String,
    cut: bool,
}

struct Shared {
    name: String,
    /// An address the hub itself answers ARP and ping for (the LAN's gateway), if any.
    gateway: Option<Ipv4Addr>,
    gateway_cut: AtomicBool,
    ports: Mutex<HashMap<SocketAddr, Port>>,
    cut: AtomicBool,
    /// Two nodes whose frames to each other are dropped (a partition between them that
    /// leaves both on the segment, and the gateway answering both).
    split: Mutex<Option<(String, String)>>,
    stop: AtomicBool,
    forwarded: AtomicU64,
    dropped: AtomicU64,
}

/// One network segment (the LAN, or the link between the two nodes).
pub struct Hub {
    shared: Arc<Shared>,
    addr: SocketAddr,
    thread: Option<JoinHandle<()>>,
}

impl Hub {
    /// Binds the hub's socket on a free loopback port and starts forwarding.
    pub fn new(name: &str) -> Result<Hub> {
        Self::start(name, None)
    }

    /// A hub that also answers ARP and ping for `gateway` (see `gateway.rs`).
    pub fn with_gateway(name: &str, gateway: Ipv4Addr) -> Result<Hub> {
        Self::start(name, Some(gateway))
    }

    fn start(name: &str, gateway: Option<Ipv4Addr>) -> Result<Hub> {
        let socket = UdpSocket::bind("127.0.0.1:0")
            .map_err(|e| HarnessError::io(format!("binding the {name} hub socket"), e))?;
        socket
            .set_read_timeout(Some(POLL))
            .map_err(|e| HarnessError::io(format!("setting the {name} hub timeout"), e))?;
        let addr = socket
            .local_addr()
            .map_err(|e| HarnessError::io(format!("reading the {name} hub address"), e))?;
        let shared = Arc::new(Shared {
            name: name.to_string(),
            gateway,
            gateway_cut: AtomicBool::new(false),
            ports: Mutex::new(HashMap::new()),
            cut: AtomicBool::new(false),
            split: Mutex::new(None),
            stop: AtomicBool::new(false),
            forwarded: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        });
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name(format!("hub-{name}"))
            .spawn(move || forward(socket, &thread_shared))
            .map_err(|e| HarnessError::io(format!("starting the {name} hub thread"), e))?;
        Ok(Hub {
            shared,
            addr,
            thread: Some(thread),
        })
    }

    /// The hub's own address (QEMU's `udp=`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Reserves a free loopback port for `node`'s NIC on this segment.
    ///
    /// The port is found by binding it and releasing it ([`free_port`]); QEMU binds it right
    /// after.
    pub fn attach(&self, node: &str) -> Result<Attachment> {
        let local = free_port()?;
        self.ports().insert(
            local,
            Port {
                node: node.to_string(),
                cut: false,
            },
        );
        Ok(Attachment {
            hub: self.addr,
            local,
        })
    }

    /// Drops every frame on the segment (pull the cable out of the switch).
    pub fn cut(&self) {
        log::info!("{}: cut", self.shared.name);
        self.shared.cut.store(true, Ordering::SeqCst);
    }

    /// Forwards frames on the segment again.
    pub fn restore(&self) {
        log::info!("{}: restored", self.shared.name);
        self.shared.cut.store(false, Ordering::SeqCst);
    }

    /// Drops every frame from and to `node` (pull that node's cable).
    pub fn cut_node(&self, node: &str) -> Result<()> {
        self.set_node_cut(node, true)
    }

    /// Forwards `node`'s frames again.
    pub fn restore_node(&self, node: &str) -> Result<()> {
        self.set_node_cut(node, false)
    }

    /// Drops the frames between nodes `a` and `b` both ways, while each still reaches every
    /// other port and the gateway: the partition a ping witness cannot settle.
    pub fn split(&self, a: &str, b: &str) {
        log::info!("{}: {a} and {b} split from each other", self.shared.name);
        *lock(&self.shared.split) = Some((a.to_string(), b.to_string()));
    }

    /// Ends a [`split`](Self::split).
    pub fn heal(&self) {
        log::info!("{}: split healed", self.shared.name);
        *lock(&self.shared.split) = None;
    }

    /// Silences (true) or revives (false) the gateway the hub plays, the witness.
    pub fn set_gateway_cut(&self, cut: bool) {
        log::info!(
            "{}: gateway {}",
            self.shared.name,
            if cut { "cut" } else { "restored" }
        );
        self.shared.gateway_cut.store(cut, Ordering::SeqCst);
    }

    /// Frames forwarded (one per receiving port) and dropped so far.
    pub fn counters(&self) -> (u64, u64) {
        (
            self.shared.forwarded.load(Ordering::SeqCst),
            self.shared.dropped.load(Ordering::SeqCst),
        )
    }

    fn set_node_cut(&self, node: &str, cut: bool) -> Result<()> {
        let mut ports = self.ports();
        let mut found = false;
        for port in ports.values_mut().filter(|p| p.node == node) {
            port.cut = cut;
            found = true;
        }
        if !found {
            return Err(HarnessError::NoSuchNode {
                node: node.to_string(),
            });
        }
        log::info!(
            "{}: node {node} {}",
            self.shared.name,
            if cut { "cut" } else { "restored" }
        );
        Ok(())
    }

    fn ports(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Port>> {
        lock(&self.shared.ports)
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A poisoned lock only means another harness thread panicked; the port table is still valid.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn forward(socket: UdpSocket, shared: &Shared) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut capture = crate::pcap::Capture::from_env(&shared.name);
    while !shared.stop.load(Ordering::SeqCst) {
        let (len, from) = match socket.recv_from(&mut buf) {
            Ok(x) => x,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                if let Some(c) = capture.as_mut() {
                    c.flush();
                }
                continue;
            }
            Err(e) => {
                // ICMP port-unreachable from a stopped QEMU shows up here on Linux; not fatal.
                log::debug!("{}: recv: {e}", shared.name);
                continue;
            }
        };
        if let Some(c) = capture.as_mut() {
            if !c.record(&buf[..len]) {
                capture = None;
            }
        }
        let targets: Vec<SocketAddr> = {
            let ports = lock(&shared.ports);
            let split = lock(&shared.split).clone();
            let from_node = ports.get(&from).map(|p| p.node.clone()).unwrap_or_default();
            let apart = |to: &str| {
                split.as_ref().is_some_and(|(x, y)| {
                    (from_node == *x && to == y) || (from_node == *y && to == x)
                })
            };
            match ports.get(&from) {
                None => {
                    log::debug!("{}: frame from unknown port {from}", shared.name);
                    shared.dropped.fetch_add(1, Ordering::SeqCst);
                    continue;
                }
                Some(p) if p.cut || shared.cut.load(Ordering::SeqCst) => {
                    shared.dropped.fetch_add(1, Ordering::SeqCst);
                    continue;
                }
                Some(_) => {}
            }
            let mut targets = Vec::new();
            for (addr, port) in ports.iter().filter(|(a, _)| **a != from) {
                if port.cut || apart(&port.node) {
                    shared.dropped.fetch_add(1, Ordering::SeqCst);
                } else {
                    targets.push(*addr);
                }
            }
            targets
        };
        for to in targets {
            shared.forwarded.fetch_add(1, Ordering::SeqCst);
            // A port whose QEMU is down refuses the datagram; a real hub would not care either.
            let _ = socket.send_to(&buf[..len], to);
        }
        if let Some(ip) = shared.gateway {
            if !shared.gateway_cut.load(Ordering::SeqCst) {
                if let Some(answer) =
                    crate::gateway::reply(&buf[..len], ip, crate::gateway::GATEWAY_MAC)
                {
                    let _ = socket.send_to(&answer, from);
                }
            }
        }
    }
}

/// The two segments of a cluster: the LAN (hub) and the link (node to node).
pub struct Network {
    pub lan: Hub,
    pub link: Hub,
}

impl Network {
    /// Starts both hubs.
    pub fn new() -> Result<Network> {
        Ok(Network {
            lan: Hub::with_gateway("lan", crate::gateway::GATEWAY_IP)?,
            link: Hub::new("link")?,
        })
    }

    /// Cuts the link between the nodes.
    pub fn cut_link(&self) {
        self.link.cut();
    }

    /// Restores the link between the nodes.
    pub fn restore_link(&self) {
        self.link.restore();
    }

    /// Cuts `node` off the LAN.
    pub fn cut_lan(&self, node: &str) -> Result<()> {
        self.lan.cut_node(node)
    }

    /// Silences the LAN gateway (the witness) until `restore_witness`.
    pub fn cut_witness(&self) {
        self.lan.set_gateway_cut(true);
    }

    /// Lets the LAN gateway answer again.
    pub fn restore_witness(&self) {
        self.lan.set_gateway_cut(false);
    }

    /// Puts `node` back on the LAN.
    pub fn restore_lan(&self, node: &str) -> Result<()> {
        self.lan.restore_node(node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plays QEMU's part for one NIC: binds the attachment's port and talks to the hub.
    struct FakeNic {
        sock: UdpSocket,
        hub: SocketAddr,
    }

    impl FakeNic {
        fn new(a: Attachment) -> FakeNic {
            let sock = UdpSocket::bind(a.local).unwrap();
            sock.set_read_timeout(Some(Duration::from_millis(300)))
                .unwrap();
            FakeNic { sock, hub: a.hub }
        }
        fn send(&self, frame: &[u8]) {
            self.sock.send_to(frame, self.hub).unwrap();
        }
        fn recv(&self) -> Option<Vec<u8>> {
            let mut buf = [0u8; 2048];
            match self.sock.recv_from(&mut buf) {
                Ok((n, from)) => {
                    assert_eq!(from, self.hub, "frames come from the hub only");
                    Some(buf[..n].to_vec())
                }
                Err(_) => None,
            }
        }
    }

    fn three() -> (Hub, FakeNic, FakeNic, FakeNic) {
        let hub = Hub::new("test").unwrap();
        let a = FakeNic::new(hub.attach("a").unwrap());
        let b = FakeNic::new(hub.attach("b").unwrap());
        let c = FakeNic::new(hub.attach("c").unwrap());
        (hub, a, b, c)
    }

    #[test]
    fn hub_forwards_each_frame_to_every_other_port_only() {
        let (hub, a, b, c) = three();
        assert!(hub.addr().ip().is_loopback());
        a.send(b"frame-from-a");
        assert_eq!(b.recv().as_deref(), Some(&b"frame-from-a"[..]));
        assert_eq!(c.recv().as_deref(), Some(&b"frame-from-a"[..]));
        assert_eq!(a.recv(), None, "no echo to the sender");
        let big = vec![0x5a; 1514];
        c.send(&big);
        assert_eq!(a.recv(), Some(big.clone()));
        assert_eq!(b.recv(), Some(big));
        assert_eq!(hub.counters(), (4, 0));
    }

    #[test]
    fn cutting_a_node_isolates_it_both_ways_until_restored() {
        let (hub, a, b, c) = three();
        hub.cut_node("b").unwrap();
        a.send(b"1");
        assert_eq!(c.recv().as_deref(), Some(&b"1"[..]));
        assert_eq!(b.recv(), None, "cut node receives nothing");
        b.send(b"2");
        assert_eq!(a.recv(), None, "cut node's frames go nowhere");
        assert_eq!(c.recv(), None);
        hub.restore_node("b").unwrap();
        b.send(b"3");
        assert_eq!(a.recv().as_deref(), Some(&b"3"[..]));
        assert_eq!(c.recv().as_deref(), Some(&b"3"[..]));
        assert!(matches!(
            hub.cut_node("z"),
            Err(HarnessError::NoSuchNode { .. })
        ));
    }

    #[test]
    fn a_split_parts_two_nodes_and_keeps_both_on_the_segment() {
        let (hub, a, b, c) = three();
        hub.split("a", "b");
        a.send(b"1");
        assert_eq!(c.recv().as_deref(), Some(&b"1"[..]));
        assert_eq!(b.recv(), None, "b does not hear a");
        b.send(b"2");
        assert_eq!(c.recv().as_deref(), Some(&b"2"[..]));
        assert_eq!(a.recv(), None, "a does not hear b");
        c.send(b"3");
        assert_eq!(a.recv().as_deref(), Some(&b"3"[..]));
        assert_eq!(b.recv().as_deref(), Some(&b"3"[..]));
        hub.heal();
        a.send(b"4");
        assert_eq!(b.recv().as_deref(), Some(&b"4"[..]));
        assert_eq!(c.recv().as_deref(), Some(&b"4"[..]));
    }

    #[test]
    fn cutting_the_segment_drops_everything_until_restored() {
        let hub = Hub::new("link").unwrap();
        let a = FakeNic::new(hub.attach("a").unwrap());
        let b = FakeNic::new(hub.attach("b").unwrap());
        hub.cut();
        a.send(b"x");
        b.send(b"y");
        assert_eq!(b.recv(), None);
        assert_eq!(a.recv(), None);
        assert_eq!(hub.counters(), (0, 2));
        hub.restore();
        a.send(b"z");
        assert_eq!(b.recv().as_deref(), Some(&b"z"[..]));
    }

    #[test]
    fn strangers_are_ignored() {
        let (hub, a, _b, _c) = three();
        let stranger = UdpSocket::bind("127.0.0.1:0").unwrap();
        stranger.send_to(b"spoof", hub.addr()).unwrap();
        assert_eq!(a.recv(), None);
        assert_eq!(hub.counters().1, 1);
    }

    #[test]
    fn ports_from_a_base_count_up_and_skip_taken_ones() {
        let next = AtomicU32::new(0);
        let first = port_from(21000, &next).unwrap().port();
        assert!((21000..21000 + PORT_SPAN).contains(&first), "{first}");
        let _held = UdpSocket::bind(("127.0.0.1", first + 1));
        let second = port_from(21000, &next).unwrap().port();
        assert!(second > first, "{first} then {second}");
        if _held.is_ok() {
            assert!(second > first + 1, "a held port was handed out: {second}");
        }
        let last = AtomicU32::new(u32::from(21000 + PORT_SPAN));
        let err = port_from(21000, &last).unwrap_err().to_string();
        assert!(err.contains("HAVMS_QEMU_PORT_BASE"), "{err}");
    }
}
