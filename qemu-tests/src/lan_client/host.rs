//! One host on the test LAN made of a user-space TCP/IP stack (smoltcp): it owns its port on the
//! LAN hub (`net.rs`: a UDP socket the hub forwards every frame to, like QEMU's
//! `-netdev socket,udp=`), its MAC and IP, a thread polling the stack, and the TCP connections
//! opened from it ([`TcpConn`]).
//!
//! The stack is shared behind one lock: the poll thread feeds it received frames and runs its
//! timers (retransmission, delayed ACKs) every few milliseconds and wakes the waiting callers;
//! a caller that sends polls at once so its data leaves without waiting for the thread. TCP is
//! set up to outlast a failover: no keepalive, no user timeout, so smoltcp retransmits (RTO from
//! 1 s doubling to 60 s) for as long as the caller is willing to wait for an answer; the only
//! ways a connection ends are a reset or a FIN from the other end, or the caller dropping it.

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpCidr};

use super::{LanError, Result};
use crate::net::Hub;

/// Largest Ethernet frame (without FCS) the host sends: a 1500-byte IP MTU.
const FRAME_MTU: usize = 1514;
/// Longest wait of the poll thread for a frame before it runs the stack's timers anyway.
const TICK: Duration = Duration::from_millis(5);
/// Longest wait of a caller between looks at its socket (it is woken sooner by the poll thread).
const WAKE: Duration = Duration::from_millis(50);
/// Each TCP socket's receive and send buffers.
const TCP_BUFFER: usize = 64 * 1024;
/// A line longer than this is not a line of a line protocol.
const MAX_LINE: usize = 64 * 1024;
/// Prefix of the LAN (192.168.77.0/24).
const PREFIX_LEN: u8 = 24;

/// The hub port as smoltcp's network device: frames received by the poll thread wait in `rx`,
/// frames sent go straight to the hub.
struct HubDevice {
    sock: UdpSocket,
    hub: SocketAddr,
    rx: VecDeque<Vec<u8>>,
    sent: u64,
    received: u64,
    send_errors: u64,
}

struct RxFrame(Vec<u8>);

impl phy::RxToken for RxFrame {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

struct TxFrame<'a> {
    sock: &'a UdpSocket,
    hub: SocketAddr,
    sent: &'a mut u64,
    errors: &'a mut u64,
}

impl phy::TxToken for TxFrame<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut frame = vec![0u8; len];
        let r = f(&mut frame);
        // A lost frame is what a LAN does; TCP sends it again.
        match self.sock.send_to(&frame, self.hub) {
            Ok(_) => *self.sent += 1,
            Err(_) => *self.errors += 1,
        }
        r
    }
}

impl Device for HubDevice {
    type RxToken<'a> = RxFrame;
    type TxToken<'a> = TxFrame<'a>;

    fn receive(&mut self, _: smoltcp::time::Instant) -> Option<(RxFrame, TxFrame<'_>)> {
        let frame = self.rx.pop_front()?;
        let tx = TxFrame {
            sock: &self.sock,
            hub: self.hub,
            sent: &mut self.sent,
            errors: &mut self.send_errors,
        };
        Some((RxFrame(frame), tx))
    }

    fn transmit(&mut self, _: smoltcp::time::Instant) -> Option<TxFrame<'_>> {
        Some(TxFrame {
            sock: &self.sock,
            hub: self.hub,
            sent: &mut self.sent,
            errors: &mut self.send_errors,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = FRAME_MTU;
        caps
    }
}

/// What the poll thread saw of one connection's state.
struct Watch {
    handle: SocketHandle,
    last: tcp::State,
    established_at: Option<Instant>,
}

/// The stack: interface, device, sockets.
struct Net {
    iface: Interface,
    dev: HubDevice,
    sockets: SocketSet<'static>,
    watches: Vec<Watch>,
    next_port: u16,
}

impl Net {
    fn poll(&mut self) {
        let now = smoltcp::time::Instant::now();
        self.iface.poll(now, &mut self.dev, &mut self.sockets);
        for w in &mut self.watches {
            let state = self.sockets.get::<tcp::Socket>(w.handle).state();
            if state != w.last {
                log::debug!("lan host: connection {:?}: {} -> {state}", w.handle, w.last);
                if state == tcp::State::Established && w.established_at.is_none() {
                    w.established_at = Some(Instant::now());
                }
                w.last = state;
            }
        }
    }

    fn watch(&self, handle: SocketHandle) -> Option<&Watch> {
        self.watches.iter().find(|w| w.handle == handle)
    }

    fn port(&mut self) -> u16 {
        let p = self.next_port;
        self.next_port = if p >= 65000 { 49152 } else { p + 1 };
        p
    }
}

struct Shared {
    net: Mutex<Net>,
    /// Notified after every poll of the stack.
    polled: Condvar,
    stop: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Net> {
        // A caller that panicked holding the lock leaves the stack as valid as any poll does.
        self.net.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for the next poll, at most `limit`.
    fn wait<'a>(&self, net: MutexGuard<'a, Net>, limit: Duration) -> MutexGuard<'a, Net> {
        match self.polled.wait_timeout(net, limit.min(WAKE)) {
            Ok((g, _)) => g,
            Err(p) => p.into_inner().0,
        }
    }
}

/// A host on the LAN hub with its own MAC and IP, running a TCP/IP stack on a thread.
pub struct LanHost {
    shared: Arc<Shared>,
    name: String,
    ip: Ipv4Addr,
    mac: [u8; 6],
    thread: Option<JoinHandle<()>>,
}

impl LanHost {
    /// Attaches host `name` with address `ip`/24 to `hub` (the cluster's `net.lan`) and starts
    /// its poll thread. Its MAC is 52:54:00:00:09:XX, XX the last byte of `ip`.
    pub fn attach(hub: &Hub, name: &str, ip: Ipv4Addr) -> Result<LanHost> {
        let port = hub
            .attach(name)
            .map_err(|e| LanError::Stack(e.to_string()))?;
        let io = |what: String| move |source| LanError::Io { what, source };
        let sock = UdpSocket::bind(port.local)
            .map_err(io(format!("binding {name}'s hub port {}", port.local)))?;
        let rx_sock = sock
            .try_clone()
            .map_err(io(format!("cloning {name}'s hub socket")))?;
        rx_sock
            .set_read_timeout(Some(TICK))
            .map_err(io(format!("setting {name}'s hub socket timeout")))?;
        let mac = [0x52, 0x54, 0x00, 0x00, 0x09, ip.octets()[3]];
        let mut dev = HubDevice {
            sock,
            hub: port.hub,
            rx: VecDeque::new(),
            sent: 0,
            received: 0,
            send_errors: 0,
        };
        let seed = seed();
        let mut config = Config::new(HardwareAddress::Ethernet(EthernetAddress(mac)));
        config.random_seed = seed;
        let mut iface = Interface::new(config, &mut dev, smoltcp::time::Instant::now());
        let mut full = false;
        iface.update_ip_addrs(|addrs| {
            full = addrs.push(IpCidr::new(ip.into(), PREFIX_LEN)).is_err();
        });
        if full {
            return Err(LanError::Stack(format!(
                "cannot give {name} the address {ip}"
            )));
        }
        let shared = Arc::new(Shared {
            net: Mutex::new(Net {
                iface,
                dev,
                sockets: SocketSet::new(Vec::new()),
                watches: Vec::new(),
                next_port: 49152 + (seed % 10_000) as u16,
            }),
            polled: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        let thread_shared = Arc::clone(&shared);
        let hub_addr = port.hub;
        let thread = std::thread::Builder::new()
            .name(format!("lan-{name}"))
            .spawn(move || poll_loop(&thread_shared, &rx_sock, hub_addr))
            .map_err(io(format!("starting {name}'s poll thread")))?;
        log::info!(
            "lan host {name}: {ip}/{PREFIX_LEN}, MAC {}, on the hub at {}",
            EthernetAddress(mac),
            port.hub
        );
        Ok(LanHost {
            shared,
            name: name.to_string(),
            ip,
            mac,
            thread: Some(thread),
        })
    }

    /// The host's address.
    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    /// The host's MAC.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// The name it has on the hub (`Hub::cut_node` takes it).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Frames (sent, received) so far.
    pub fn counters(&self) -> (u64, u64) {
        let net = self.shared.lock();
        (net.dev.sent, net.dev.received)
    }
}

impl Drop for LanHost {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A seed for the stack (initial sequence numbers, ports): differs between runs.
pub(super) fn seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    nanos ^ (u64::from(std::process::id()) << 32)
}

fn poll_loop(shared: &Shared, sock: &UdpSocket, hub: SocketAddr) {
    let mut buf = vec![0u8; 65536];
    while !shared.stop.load(Ordering::SeqCst) {
        let frame = match sock.recv_from(&mut buf) {
            Ok((len, from)) if from == hub => Some(buf[..len].to_vec()),
            Ok(_) => None,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                None
            }
            Err(_) => {
                // ICMP errors of earlier sends show up here; do not spin on them.
                std::thread::sleep(TICK);
                None
            }
        };
        let mut net = shared.lock();
        if let Some(f) = frame {
            net.dev.received += 1;
            net.dev.rx.push_back(f);
        }
        net.poll();
        drop(net);
        shared.polled.notify_all();
    }
}

/// One TCP connection from a [`LanHost`], read line by line.
pub struct TcpConn {
    shared: Arc<Shared>,
    handle: SocketHandle,
    server: SocketAddrV4,
    local_port: u16,
    /// Received bytes not yet returned as a line.
    pending: Vec<u8>,
}

impl TcpConn {
    /// Connects to `server`, waiting at most `timeout` for the handshake.
    pub fn connect(host: &LanHost, server: SocketAddrV4, timeout: Duration) -> Result<TcpConn> {
        let shared = Arc::clone(&host.shared);
        let mut guard = shared.lock();
        let net = &mut *guard;
        let mut sock = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; TCP_BUFFER]),
            tcp::SocketBuffer::new(vec![0; TCP_BUFFER]),
        );
        // Outlast a failover: retransmit for ever, never probe, never give up on our own.
        sock.set_keep_alive(None);
        sock.set_timeout(None);
        // One small request at a time: do not hold it back waiting for an ACK.
        sock.set_nagle_enabled(false);
        let handle = net.sockets.add(sock);
        let local_port = net.port();
        let started = net.sockets.get_mut::<tcp::Socket>(handle).connect(
            net.iface.context(),
            server,
            local_port,
        );
        if let Err(e) = started {
            net.sockets.remove(handle);
            return Err(LanError::Stack(format!("connecting to {server}: {e}")));
        }
        net.watches.push(Watch {
            handle,
            last: tcp::State::SynSent,
            established_at: None,
        });
        net.poll();
        drop(guard);
        let conn = TcpConn {
            shared,
            handle,
            server,
            local_port,
            pending: Vec::new(),
        };
        let deadline = Instant::now() + timeout;
        let mut net = conn.shared.lock();
        loop {
            let state = net.sockets.get::<tcp::Socket>(handle).state();
            match state {
                tcp::State::Established => break,
                tcp::State::SynSent | tcp::State::SynReceived => {}
                tcp::State::Closed => return Err(LanError::Refused { server }),
                other => {
                    return Err(LanError::Closed {
                        server,
                        during: "while connecting".into(),
                        state: other.to_string(),
                    })
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(LanError::ConnectTimeout {
                    server,
                    waited: timeout,
                    state: state.to_string(),
                });
            }
            net = conn.shared.wait(net, deadline - now);
        }
        drop(net);
        log::info!("lan host: connected to {server} from port {local_port}");
        Ok(conn)
    }

    /// The server this connects to.
    pub fn server(&self) -> SocketAddrV4 {
        self.server
    }

    /// This end's port.
    pub fn local_port(&self) -> u16 {
        self.local_port
    }

    /// The connection's TCP state now (`Established` while all is well).
    pub fn state(&self) -> String {
        let net = self.shared.lock();
        net.sockets
            .get::<tcp::Socket>(self.handle)
            .state()
            .to_string()
    }

    /// Sends all of `data`, waiting at most `timeout` for room in the send buffer. `during`
    /// says what for, in errors (e.g. "sending APPEND x").
    pub fn send_all(&mut self, data: &[u8], timeout: Duration, during: &str) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut rest = data;
        let mut net = self.shared.lock();
        loop {
            let sock = net.sockets.get_mut::<tcp::Socket>(self.handle);
            if sock.can_send() {
                let n = sock
                    .send_slice(rest)
                    .map_err(|e| LanError::Stack(format!("{during}: {e}")))?;
                rest = &rest[n..];
                if rest.is_empty() {
                    net.poll();
                    return Ok(());
                }
            }
            self.check_open(&net, during)?;
            let now = Instant::now();
            if now >= deadline {
                let state = net.sockets.get::<tcp::Socket>(self.handle).state();
                return Err(LanError::AnswerTimeout {
                    server: self.server,
                    during: format!("{during} (the send buffer stayed full)"),
                    waited: timeout,
                    state: state.to_string(),
                });
            }
            net.poll();
            net = self.shared.wait(net, deadline - now);
        }
    }

    /// The next line received (without `\n` and a trailing `\r`), waiting at most `timeout`.
    pub fn read_line(&mut self, timeout: Duration, during: &str) -> Result<String> {
        let deadline = Instant::now() + timeout;
        let mut net = self.shared.lock();
        loop {
            let sock = net.sockets.get_mut::<tcp::Socket>(self.handle);
            if sock.can_recv() {
                let pending = &mut self.pending;
                sock.recv(|data| {
                    pending.extend_from_slice(data);
                    (data.len(), ())
                })
                .map_err(|e| LanError::Stack(format!("{during}: {e}")))?;
            }
            if let Some(i) = self.pending.iter().position(|&b| b == b'\n') {
                let mut line: Vec<u8> = self.pending.drain(..=i).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(String::from_utf8_lossy(&line).into_owned());
            }
            if self.pending.len() > MAX_LINE {
                return Err(LanError::Protocol {
                    server: self.server,
                    during: during.to_string(),
                    answer: format!("{} bytes without a newline", self.pending.len()),
                });
            }
            self.check_open(&net, during)?;
            let now = Instant::now();
            if now >= deadline {
                let state = net.sockets.get::<tcp::Socket>(self.handle).state();
                return Err(LanError::AnswerTimeout {
                    server: self.server,
                    during: during.to_string(),
                    waited: timeout,
                    state: state.to_string(),
                });
            }
            net = self.shared.wait(net, deadline - now);
        }
    }

    /// Closes the connection gracefully (FIN, as a peer that sent all it had would) and waits
    /// at most `timeout` for the server to see it: our FIN acknowledged, or the server closed
    /// too. Dropping a connection that was not closed resets it (RST).
    pub fn close(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut net = self.shared.lock();
        net.sockets.get_mut::<tcp::Socket>(self.handle).close();
        loop {
            net.poll();
            let state = net.sockets.get::<tcp::Socket>(self.handle).state();
            if matches!(
                state,
                tcp::State::FinWait2 | tcp::State::TimeWait | tcp::State::Closed
            ) {
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(LanError::AnswerTimeout {
                    server: self.server,
                    during: "closing the connection (our FIN not acknowledged)".into(),
                    waited: timeout,
                    state: state.to_string(),
                });
            }
            net = self.shared.wait(net, deadline - now);
        }
    }

    /// Fails unless the connection is still established.
    fn check_open(&self, net: &Net, during: &str) -> Result<()> {
        let sock = net.sockets.get::<tcp::Socket>(self.handle);
        match sock.state() {
            tcp::State::Established => Ok(()),
            tcp::State::Closed => {
                let since = net.watch(self.handle).and_then(|w| w.established_at);
                Err(LanError::Reset {
                    server: self.server,
                    during: during.to_string(),
                    after: since.map(|t| t.elapsed()).unwrap_or_default(),
                })
            }
            other => Err(LanError::Closed {
                server: self.server,
                during: during.to_string(),
                state: other.to_string(),
            }),
        }
    }
}

impl Drop for TcpConn {
    fn drop(&mut self) {
        let mut net = self.shared.lock();
        let sock = net.sockets.get_mut::<tcp::Socket>(self.handle);
        // Closed gracefully already: a RST now could reach the server before it read our FIN.
        if !matches!(
            sock.state(),
            tcp::State::FinWait1
                | tcp::State::FinWait2
                | tcp::State::TimeWait
                | tcp::State::Closing
                | tcp::State::LastAck
        ) {
            sock.abort();
        }
        net.poll();
        net.sockets.remove(self.handle);
        let handle = self.handle;
        net.watches.retain(|w| w.handle != handle);
    }
}

#[cfg(test)]
#[path = "host_tests.rs"]
mod tests;
