//! The heartbeat service: one thread, one UDP socket. It sends a heartbeat to every path of the peer
//! each `heartbeat_ms`, receives the peer's, checks them, feeds the tracker and logs its transitions.
//! The config in force is re-read each round, so a reload takes effect without a restart.

use crate::daemon::state::{PeerPlan, Shared};
use crate::peer::heartbeat::Heartbeat;
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

/// Runs forever; start it on its own thread.
pub fn run(shared: Arc<Shared>, bind: SocketAddr) {
    let mut warn = RateLimit::new(WARN_EVERY);
    let socket = loop {
        match UdpSocket::bind(bind) {
            Ok(s) => break s,
            Err(e) => {
                if warn.allow("bind", Instant::now()) {
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
        seq: 0,
        next_send: Instant::now(),
    };
    loop {
        svc.round();
    }
}

struct Service {
    shared: Arc<Shared>,
    socket: UdpSocket,
    warn: RateLimit,
    seq: u64,
    next_send: Instant,
}

impl Service {
    /// Sends when due, then receives until the next send is due.
    fn round(&mut self) {
        let Some(plan) = self.shared.plan() else {
            std::thread::sleep(IDLE);
            // Drain what arrives meanwhile so a reconfigured node does not act on stale datagrams.
            let _ = self.socket.set_nonblocking(true);
            let mut buf = [0u8; 512];
            while self.socket.recv_from(&mut buf).is_ok() {}
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
            .max(Duration::from_millis(1));
        if let Err(e) = self.socket.set_read_timeout(Some(wait)) {
            log::error!("heartbeat: set_read_timeout: {e}");
        }
        let mut buf = [0u8; 512];
        match self.socket.recv_from(&mut buf) {
            Ok((n, from)) => self.receive(&plan, &buf[..n], from),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => {
                // ICMP port unreachable from the last send surfaces here as ECONNREFUSED; harmless.
                if e.kind() != ErrorKind::ConnectionRefused
                    && self.warn.allow("recv", Instant::now())
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
        let hb = Heartbeat {
            cluster: plan.cluster.clone(),
            node: plan.node.clone(),
            boot_id: self.shared.settings.boot_id,
            seq: self.seq,
            uptime_ms: probe::uptime::uptime_ms(),
        };
        self.seq += 1;
        let bytes = match hb.encode() {
            Ok(b) => b,
            Err(e) => {
                if self.warn.allow("encode", Instant::now()) {
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
                if self.warn.allow(&format!("send {addr}"), Instant::now()) {
                    log::warn!("heartbeat: sending to {} via {path} {addr}: {e}", plan.peer);
                }
            }
        }
    }

    fn receive(&mut self, plan: &PeerPlan, datagram: &[u8], from: SocketAddr) {
        let now = Instant::now();
        let hb = match Heartbeat::decode(datagram) {
            Ok(hb) => hb,
            Err(e) => {
                if self.warn.allow(&format!("{from} decode"), now) {
                    log::warn!("heartbeat from {from} rejected: {e}");
                }
                return;
            }
        };
        if let Err(reason) = check(plan, &hb) {
            if self.warn.allow(&format!("{from} check"), now) {
                log::warn!("heartbeat from {from} rejected: {reason}");
            }
            return;
        }
        let path = classify(plan, from);
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
/// subnet means the link and anything else the LAN (a DHCP peer).
pub fn classify(plan: &PeerPlan, from: SocketAddr) -> NetPath {
    if let Some((path, _)) = plan.targets.iter().find(|(_, a)| a.ip() == from.ip()) {
        return *path;
    }
    match from {
        SocketAddr::V4(v4) if plan.link_net.contains(*v4.ip()) => NetPath::Link,
        _ => NetPath::Lan,
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
        }
    }

    fn hb(cluster: &str, node: &str) -> Heartbeat {
        Heartbeat {
            cluster: cluster.into(),
            node: node.into(),
            boot_id: 1,
            seq: 0,
            uptime_ms: 0,
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
        assert_eq!(
            classify(&p, "10.99.0.2:7400".parse().unwrap()),
            NetPath::Link
        );
        assert_eq!(
            classify(&p, "10.99.0.9:7400".parse().unwrap()),
            NetPath::Link
        );
        assert_eq!(
            classify(&p, "192.168.77.50:7400".parse().unwrap()),
            NetPath::Lan
        );
        let lan: SocketAddr = "192.168.77.50:7400".parse().unwrap();
        assert_eq!(targets(&p, Some(lan)).last(), Some(&(NetPath::Lan, lan)));
        assert_eq!(targets(&p, None).len(), 1);
    }
}
