//! The heartbeat service: one thread, one UDP socket. It sends a heartbeat to every path of the peer
//! each `heartbeat_ms`, receives the peer's, checks them, feeds the tracker and logs its transitions.
//! The config in force is re-read each round, so a reload takes effect without a restart.

use crate::daemon::liveness::Progress;
use crate::daemon::state::{PeerPlan, Shared};
use crate::peer::heartbeat::{DecodeError, Heartbeat, HEARTBEAT_VERSION, MAX_DATAGRAM};
use crate::peer::ratelimit::RateLimit;
use crate::peer::tracker::Path as NetPath;
use crate::probe;
use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Pause while unconfigured or while the port cannot be bound.
const IDLE: Duration = Duration::from_millis(200);
/// Repeated warnings of one kind are logged this often.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Longest a round blocks in recv, so `progress` is beaten often even with a slow heartbeat.
const MAX_WAIT: Duration = Duration::from_millis(500);

/// Runs forever; start it on its own thread. Beats `progress` every round (and while retrying the
/// bind: restarting havmsd would not free the port).
pub fn run(shared: Arc<Shared>, bind: SocketAddr, progress: Arc<Progress>) {
    let mut warn = RateLimit::new(WARN_EVERY);
    let socket = loop {
        progress.beat();
        match UdpSocket::bind(bind) {
            Ok(s) => break s,
            Err(e) => {
                if warn.allow(None, "bind", Instant::now()) {
                    log::error!("heartbeat: cannot bind udp {bind}: {e}; retrying");
                }
                std::thread::sleep(IDLE);
            }
        }
    };
    log::info!("heartbeat: listening on udp {bind}");
    let mut svc = Service {
        shared,
        socket,
        warn,
        next_send: Instant::now(),
        buf: vec![0; MAX_DATAGRAM],
    };
    loop {
        progress.beat();
        svc.round();
    }
}

struct Service {
    shared: Arc<Shared>,
    socket: UdpSocket,
    warn: RateLimit,
    next_send: Instant,
    /// Where datagrams are received: room for the largest heartbeat (see `MAX_DATAGRAM`).
    buf: Vec<u8>,
}

impl Service {
    /// Sends when due, then receives until the next send is due.
    fn round(&mut self) {
        let Some(plan) = self.shared.plan() else {
            std::thread::sleep(IDLE);
            // Drain what arrives meanwhile so a reconfigured node does not act on stale datagrams.
            let _ = self.socket.set_nonblocking(true);
            while self.socket.recv_from(&mut self.buf).is_ok() {}
            let _ = self.socket.set_nonblocking(false);
            return;
        };
        let now = Instant::now();
        if now >= self.next_send {
            self.send(&plan);
            // Catch up without bursts if we fell behind (a stalled host).
            self.next_send = (self.next_send + plan.heartbeat).max(now);
        }
        let wait = self
            .next_send
            .saturating_duration_since(Instant::now())
            .clamp(Duration::from_millis(1), MAX_WAIT);
        if let Err(e) = self.socket.set_read_timeout(Some(wait)) {
            log::error!("heartbeat: set_read_timeout: {e}");
        }
        match self.socket.recv_from(&mut self.buf) {
            Ok((n, from)) => {
                let datagram = std::mem::take(&mut self.buf);
                self.receive(&plan, &datagram[..n], from);
                self.buf = datagram;
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => {
                // ICMP port unreachable from the last send surfaces here as ECONNREFUSED; harmless.
                if e.kind() != ErrorKind::ConnectionRefused
                    && self.warn.allow(None, "recv", Instant::now())
                {
                    log::warn!("heartbeat: recv: {e}");
                }
            }
        }
        let peer = plan.peer.clone();
        if let Some(events) = self.shared.with_tracker(|t| t.tick(Instant::now())) {
            for ev in events {
                log::log!(ev.level(), "{}", ev.message(&peer));
            }
        }
    }

    fn send(&mut self, plan: &PeerPlan) {
        // Nothing is said before the VM service knows which engines run here (it adopts them
        // first): a heartbeat listing no VM would read as "nothing runs here".
        let Some(said) = self.shared.reports() else {
            return;
        };
        let (echo_boot_id, echo_seq) = said.echo;
        let hb = Heartbeat {
            cluster: plan.cluster.clone(),
            node: plan.node.clone(),
            boot_id: self.shared.settings.boot_id,
            seq: self.shared.next_seq(),
            uptime_ms: probe::uptime::uptime_ms(),
            echo_boot_id,
            echo_seq,
            maintenance: said.maintenance,
            vms: said.vms,
        };
        let bytes = match hb.encode() {
            Ok(b) => b,
            Err(e) => {
                if self.warn.allow(None, "encode", Instant::now()) {
                    log::error!("heartbeat: {e}");
                }
                return;
            }
        };
        for (path, addr) in targets(
            plan,
            self.shared
                .with_tracker(|t| t.last_address(NetPath::Lan))
                .flatten(),
        ) {
            if let Err(e) = self.socket.send_to(&bytes, addr) {
                if self.warn.allow(Some(addr.ip()), "send", Instant::now()) {
                    log::warn!("heartbeat: sending to {} via {path} {addr}: {e}", plan.peer);
                }
            }
        }
    }

    fn receive(&mut self, plan: &PeerPlan, datagram: &[u8], from: SocketAddr) {
        let now = Instant::now();
        let hb = match Heartbeat::decode(datagram) {
            Ok(hb) => hb,
            // The peer's address speaking another version: it runs another release. Alive,
            // unreadable: the VM service decides nothing while this lasts.
            Err(DecodeError::BadVersion(v)) if classify(plan, from).is_ok() => {
                self.shared.with_tracker(|t| t.on_incompatible(v, now));
                if self.warn.allow(Some(from.ip()), "version", now) {
                    log::error!(
                        "heartbeat from {from} in version {v}, this node speaks \
                         {HEARTBEAT_VERSION}: {} runs another release; no VM is started, taken \
                         over or released until both run the same",
                        plan.peer
                    );
                }
                return;
            }
            Err(e) => {
                if self.warn.allow(Some(from.ip()), "decode", now) {
                    log::warn!("heartbeat from {from} rejected: {e}");
                }
                return;
            }
        };
        if let Err(reason) = check(plan, &hb) {
            if self.warn.allow(Some(from.ip()), "check", now) {
                log::warn!("heartbeat from {from} rejected: {reason}");
            }
            return;
        }
        let path = match classify(plan, from) {
            Ok(path) => path,
            Err(reason) => {
                if self.warn.allow(Some(from.ip()), "source", now) {
                    log::warn!("heartbeat from {from} rejected: {reason}");
                }
                return;
            }
        };
        if let Some(events) = self
            .shared
            .with_tracker(|t| t.on_heartbeat(&hb, path, from, now))
        {
            for ev in events {
                log::log!(ev.level(), "{}", ev.message(&plan.peer));
            }
        }
    }
}

/// Whether a well-formed heartbeat is our peer's.
pub fn check(plan: &PeerPlan, hb: &Heartbeat) -> Result<(), String> {
    if hb.cluster != plan.cluster {
        return Err(format!(
            "foreign cluster `{}` (ours is `{}`)",
            hb.cluster, plan.cluster
        ));
    }
    if hb.node == plan.node {
        return Err(format!(
            "sender claims to be this node `{}` (two nodes with one name?)",
            hb.node
        ));
    }
    if hb.node != plan.peer {
        return Err(format!(
            "unknown node `{}` (our peer is `{}`)",
            hb.node, plan.peer
        ));
    }
    Ok(())
}

/// The path a heartbeat came over: a configured target's address names its path; otherwise the link
/// subnet means the link and anything else the LAN. A LAN source is accepted only if it is the peer's
/// static LAN address, or from anywhere when the peer's LAN address comes from DHCP.
pub fn classify(plan: &PeerPlan, from: SocketAddr) -> Result<NetPath, String> {
    if let Some((path, _)) = plan.targets.iter().find(|(_, a)| a.ip() == from.ip()) {
        return Ok(*path);
    }
    match (from, plan.peer_lan) {
        (SocketAddr::V4(v4), _) if plan.link_net.contains(*v4.ip()) => Ok(NetPath::Link),
        (_, None) => Ok(NetPath::Lan),
        (_, Some(lan)) if lan == from.ip() => Ok(NetPath::Lan),
        (_, Some(lan)) => Err(format!(
            "not from {}'s link subnet {} or its static LAN address {lan}",
            plan.peer, plan.link_net
        )),
    }
}

/// Where to send: the configured targets, plus the LAN address the peer's heartbeats came from when
/// the config has none for it (the peer takes its LAN address by DHCP).
pub fn targets(plan: &PeerPlan, learned_lan: Option<SocketAddr>) -> Vec<(NetPath, SocketAddr)> {
    let mut t = plan.targets.clone();
    if let Some(a) = learned_lan {
        if !t.iter().any(|(p, _)| *p == NetPath::Lan) && !t.iter().any(|(_, x)| *x == a) {
            t.push((NetPath::Lan, a));
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> PeerPlan {
        PeerPlan {
            cluster: "demo".into(),
            node: "a".into(),
            peer: "b".into(),
            heartbeat: Duration::from_millis(100),
            dead_after: Duration::from_millis(500),
            targets: vec![(NetPath::Link, "10.99.0.2:7400".parse().unwrap())],
            link_net: "10.99.0.1/24".parse().unwrap(),
            peer_lan: None,
        }
    }

    fn hb(cluster: &str, node: &str) -> Heartbeat {
        Heartbeat {
            cluster: cluster.into(),
            node: node.into(),
            boot_id: 1,
            seq: 0,
            uptime_ms: 0,
            echo_boot_id: 0,
            echo_seq: 0,
            maintenance: Default::default(),
            vms: Vec::new(),
        }
    }

    #[test]
    fn checks_cluster_and_sender() {
        assert!(check(&plan(), &hb("demo", "b")).is_ok());
        assert!(check(&plan(), &hb("other", "b"))
            .unwrap_err()
            .contains("foreign cluster `other`"));
        assert!(check(&plan(), &hb("demo", "a"))
            .unwrap_err()
            .contains("claims to be this node"));
        assert!(check(&plan(), &hb("demo", "c"))
            .unwrap_err()
            .contains("unknown node `c`"));
    }

    #[test]
    fn classifies_paths_and_learns_dhcp_lan() {
        let p = plan();
        let at = |p: &PeerPlan, a: &str| classify(p, a.parse().unwrap());
        assert_eq!(at(&p, "10.99.0.2:7400"), Ok(NetPath::Link));
        assert_eq!(at(&p, "10.99.0.9:7400"), Ok(NetPath::Link));
        // A DHCP peer may send from anywhere on the LAN.
        assert_eq!(at(&p, "192.168.77.50:7400"), Ok(NetPath::Lan));
        assert_eq!(at(&p, "172.16.0.1:9"), Ok(NetPath::Lan));
        let lan: SocketAddr = "192.168.77.50:7400".parse().unwrap();
        assert_eq!(targets(&p, Some(lan)).last(), Some(&(NetPath::Lan, lan)));
        assert_eq!(targets(&p, None).len(), 1);
    }

    #[test]
    fn static_lan_peer_is_heard_only_from_its_address() {
        let mut p = plan();
        p.peer_lan = Some("192.168.77.12".parse().unwrap());
        p.targets
            .push((NetPath::Lan, "192.168.77.12:7400".parse().unwrap()));
        let at = |p: &PeerPlan, a: &str| classify(p, a.parse().unwrap());
        assert_eq!(at(&p, "192.168.77.12:7400"), Ok(NetPath::Lan));
        // Another port of the same host is still the peer (NAT, a restarted socket).
        assert_eq!(at(&p, "192.168.77.12:40000"), Ok(NetPath::Lan));
        assert_eq!(at(&p, "10.99.0.2:7400"), Ok(NetPath::Link));
        let err = at(&p, "192.168.77.50:7400").unwrap_err();
        assert!(err.contains("static LAN address 192.168.77.12"), "{err}");
        // Even without the LAN target (host tests override the targets), the static address rules.
        p.targets.truncate(1);
        assert!(at(&p, "192.168.77.50:7400").is_err());
        assert_eq!(at(&p, "192.168.77.12:7400"), Ok(NetPath::Lan));
    }
}
