//! Peer membership from heartbeats: whether the peer is up, on which path, since when, and whether it
//! restarted. Pure state machine: the caller passes the clock (`now`) in, so timing is testable.

use crate::peer::heartbeat::Heartbeat;
use crate::peer::report::{Maintenance, VmReport};
use crate::status::{PathStatus, PeerStatus};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Boot ids of the peer's earlier runs remembered to drop their late datagrams (a restart loop adds one
/// per restart; the oldest is forgotten first).
pub const MAX_OLD_BOOT_IDS: usize = 16;

/// The two networks heartbeats travel on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Path {
    /// The back-to-back cable between the two nodes.
    Link,
    /// The LAN, through the switch.
    Lan,
}

impl Path {
    pub const ALL: [Path; 2] = [Path::Link, Path::Lan];

    fn index(self) -> usize {
        match self {
            Path::Link => 0,
            Path::Lan => 1,
        }
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Path::Link => "link",
            Path::Lan => "lan",
        })
    }
}

/// A change worth logging (and, later, acting on: failover listens to `Down`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The peer was down (or never seen) and a heartbeat arrived on `path`.
    Up { path: Path, from: SocketAddr },
    /// The peer was already up on another path and is now reachable on `path` too.
    PathUp { path: Path, from: SocketAddr },
    /// `path` went silent but another path still carries heartbeats.
    PathDown { path: Path },
    /// No heartbeat on any path for `dead_after`.
    Down { silent_for: Duration },
    /// The peer's havmsd started anew (a new boot id).
    Restarted { old: u64, new: u64 },
}

impl Event {
    /// Losing the peer (or a path to it) is a warning; finding it is news.
    pub fn level(&self) -> log::Level {
        match self {
            Event::Up { .. } | Event::PathUp { .. } => log::Level::Info,
            _ => log::Level::Warn,
        }
    }

    /// The log line for this event about peer `peer`.
    pub fn message(&self, peer: &str) -> String {
        match self {
            Event::Up { path, from } => format!("peer {peer} up via {path} {from}"),
            Event::PathUp { path, from } => format!("peer {peer} also reachable via {path} {from}"),
            Event::PathDown { path } => format!("peer {peer} no longer reachable via {path}"),
            Event::Down { silent_for } => {
                format!(
                    "peer {peer} down (no heartbeat for {} ms)",
                    silent_for.as_millis()
                )
            }
            Event::Restarted { old, new } => {
                format!("peer {peer} restarted (boot id {old:016x} -> {new:016x})")
            }
        }
    }
}

#[derive(Debug, Clone, Default)]
struct PathState {
    up: bool,
    last_seen: Option<Instant>,
    from: Option<SocketAddr>,
}

/// The peer's latest word on its VMs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerReport {
    /// When the heartbeat carrying it arrived.
    pub received_at: Instant,
    /// The heartbeat of ours the peer had seen last when it wrote this (boot id, seq).
    pub echo_boot_id: u64,
    pub echo_seq: u64,
    /// The peer's maintenance register.
    pub maintenance: Maintenance,
    pub vms: Vec<VmReport>,
}

impl PeerReport {
    pub fn vm(&self, name: &str) -> Option<&VmReport> {
        self.vms.iter().find(|r| r.name == name)
    }

    /// Whether the peer wrote this after seeing our heartbeat `seq` of our run `boot_id`.
    pub fn has_seen(&self, boot_id: u64, seq: u64) -> bool {
        self.echo_boot_id == boot_id && self.echo_seq >= seq
    }
}

/// What we know about the one peer.
#[derive(Debug, Clone)]
pub struct Tracker {
    peer: String,
    dead_after: Duration,
    paths: [PathState; 2],
    boot_id: Option<u64>,
    /// Boot ids the peer had before, newest last: a datagram carrying one is a straggler of a run
    /// that is over and must neither count as a restart nor refresh the peer's liveness.
    old_boot_ids: VecDeque<u64>,
    restarts: u32,
    last_seq: Option<u64>,
    peer_uptime_ms: Option<u64>,
    report: Option<PeerReport>,
    /// The last heartbeat from the peer's address in another version of the format (it runs
    /// another release), and that version.
    incompatible: Option<(Instant, u8)>,
}

impl Tracker {
    pub fn new(peer: &str, dead_after: Duration) -> Self {
        Tracker {
            peer: peer.to_string(),
            dead_after,
            paths: Default::default(),
            boot_id: None,
            old_boot_ids: VecDeque::new(),
            restarts: 0,
            last_seq: None,
            peer_uptime_ms: None,
            report: None,
            incompatible: None,
        }
    }

    /// A heartbeat from the peer's address in format `version`, which this node cannot read.
    pub fn on_incompatible(&mut self, version: u8, now: Instant) {
        self.incompatible = Some((now, version));
    }

    /// The other format version the peer spoke within `dead_after` of `now`, if it did (and no
    /// readable heartbeat came since).
    pub fn incompatible(&self, now: Instant) -> Option<u8> {
        self.incompatible
            .filter(|(t, _)| now.saturating_duration_since(*t) <= self.dead_after)
            .filter(|(t, _)| self.last_seen().is_none_or(|seen| seen < *t))
            .map(|(_, v)| v)
    }

    /// The peer's latest VM reports (None before its first heartbeat).
    pub fn report(&self) -> Option<&PeerReport> {
        self.report.as_ref()
    }

    /// The peer's current boot id and the seq of its last heartbeat (what our heartbeats echo).
    pub fn echo(&self) -> (u64, u64) {
        (self.boot_id.unwrap_or(0), self.last_seq.unwrap_or(0))
    }

    /// When a heartbeat last arrived on `path`.
    pub fn last_seen_on(&self, path: Path) -> Option<Instant> {
        self.paths[path.index()].last_seen
    }

    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// A reload may change the timing; the peer's state is kept.
    pub fn set_dead_after(&mut self, dead_after: Duration) {
        self.dead_after = dead_after;
    }

    /// Up on at least one path.
    pub fn is_up(&self) -> bool {
        self.paths.iter().any(|p| p.up)
    }

    /// Where the peer's heartbeats last came from on `path` (used to answer a DHCP peer on the LAN).
    pub fn last_address(&self, path: Path) -> Option<SocketAddr> {
        self.paths[path.index()].from
    }

    /// Records a valid heartbeat from the peer (the caller checked cluster and sender name) that arrived
    /// on `path` from `from`. Expiry is applied first, so a long gap shows as down and up again.
    /// A heartbeat from an earlier run of the peer (a boot id it already replaced) is ignored.
    pub fn on_heartbeat(
        &mut self,
        hb: &Heartbeat,
        path: Path,
        from: SocketAddr,
        now: Instant,
    ) -> Vec<Event> {
        if self.old_boot_ids.contains(&hb.boot_id) {
            return self.tick(now);
        }
        let mut events = self.tick(now);
        if let Some(old) = self.boot_id {
            if old != hb.boot_id {
                if self.old_boot_ids.len() == MAX_OLD_BOOT_IDS {
                    self.old_boot_ids.pop_front();
                }
                self.old_boot_ids.push_back(old);
                self.restarts += 1;
                events.push(Event::Restarted {
                    old,
                    new: hb.boot_id,
                });
            }
        }
        // A heartbeat overtaken by a newer one (the other path is faster, a datagram was held
        // up) still shows its path works, but its report is older than the one we hold: the
        // decisions must never step back to it.
        let newest = self.boot_id != Some(hb.boot_id) || self.last_seq.is_none_or(|s| hb.seq >= s);
        if newest {
            self.boot_id = Some(hb.boot_id);
            self.last_seq = Some(hb.seq);
            self.peer_uptime_ms = Some(hb.uptime_ms);
            self.report = Some(PeerReport {
                received_at: now,
                echo_boot_id: hb.echo_boot_id,
                echo_seq: hb.echo_seq,
                maintenance: hb.maintenance.clone(),
                vms: hb.vms.clone(),
            });
        }

        let was_up = self.is_up();
        let state = &mut self.paths[path.index()];
        if !state.up {
            state.up = true;
            events.push(if was_up {
                Event::PathUp { path, from }
            } else {
                Event::Up { path, from }
            });
        }
        state.last_seen = Some(now);
        state.from = Some(from);
        events
    }

    /// Marks paths silent for longer than `dead_after` as down, and the peer down when none is left.
    pub fn tick(&mut self, now: Instant) -> Vec<Event> {
        let was_up = self.is_up();
        let mut went_down = Vec::new();
        for path in Path::ALL {
            let state = &mut self.paths[path.index()];
            let silent = state.last_seen.map(|t| now.saturating_duration_since(t));
            if state.up && silent.is_some_and(|s| s > self.dead_after) {
                state.up = false;
                went_down.push(path);
            }
        }
        if was_up && !self.is_up() {
            let silent_for = self
                .last_seen()
                .map(|t| now.saturating_duration_since(t))
                .unwrap_or_default();
            vec![Event::Down { silent_for }]
        } else {
            went_down
                .into_iter()
                .map(|path| Event::PathDown { path })
                .collect()
        }
    }

    /// When any heartbeat last arrived.
    pub fn last_seen(&self) -> Option<Instant> {
        self.paths.iter().filter_map(|p| p.last_seen).max()
    }

    /// The peer's part of `havms status`, as of `now`.
    pub fn snapshot(&self, now: Instant) -> PeerStatus {
        let ago = |t: Instant| now.saturating_duration_since(t).as_millis() as u64;
        PeerStatus {
            name: self.peer.clone(),
            up: self.is_up(),
            last_seen_ms_ago: self.last_seen().map(ago),
            paths: Path::ALL
                .iter()
                .map(|&path| {
                    let s = &self.paths[path.index()];
                    PathStatus {
                        path,
                        up: s.up,
                        address: s.from,
                        last_seen_ms_ago: s.last_seen.map(ago),
                    }
                })
                .collect(),
            boot_id: self.boot_id.map(|b| format!("{b:016x}")),
            restarts: self.restarts,
            peer_uptime_ms: self.peer_uptime_ms,
            last_seq: self.last_seq,
            incompatible_version: self.incompatible(now),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEAD: Duration = Duration::from_millis(500);

    fn hb(boot_id: u64, seq: u64) -> Heartbeat {
        Heartbeat {
            cluster: "demo".into(),
            node: "b".into(),
            boot_id,
            seq,
            uptime_ms: 1000 + seq * 100,
            echo_boot_id: 0,
            echo_seq: 0,
            maintenance: Default::default(),
            vms: Vec::new(),
        }
    }

    fn link_addr() -> SocketAddr {
        "10.99.0.2:7400".parse().unwrap()
    }

    fn lan_addr() -> SocketAddr {
        "192.168.77.12:7400".parse().unwrap()
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn another_format_version_counts_until_a_readable_heartbeat_or_dead_after() {
        let mut t = Tracker::new("b", DEAD);
        let t0 = Instant::now();
        assert_eq!(t.incompatible(t0), None);
        t.on_incompatible(3, t0);
        assert_eq!(t.incompatible(t0 + Duration::from_millis(400)), Some(3));
        assert!(!t.is_up(), "unreadable is not up");
        assert_eq!(t.incompatible(t0 + Duration::from_millis(600)), None);
        t.on_incompatible(3, t0 + Duration::from_millis(700));
        t.on_heartbeat(
            &hb(7, 0),
            Path::Link,
            link_addr(),
            t0 + Duration::from_millis(800),
        );
        assert_eq!(t.incompatible(t0 + Duration::from_millis(800)), None);
        assert_eq!(t.snapshot(t0).incompatible_version, None);
    }

    #[test]
    fn never_seen_is_down() {
        let t0 = Instant::now();
        let mut t = Tracker::new("b", DEAD);
        assert!(!t.is_up());
        assert!(t.tick(t0 + ms(10_000)).is_empty());
        let s = t.snapshot(t0);
        assert!(!s.up);
        assert_eq!(s.last_seen_ms_ago, None);
    }

    #[test]
    fn up_on_first_heartbeat_down_after_dead_after() {
        let t0 = Instant::now();
        let mut t = Tracker::new("b", DEAD);
        let ev = t.on_heartbeat(&hb(7, 0), Path::Link, link_addr(), t0);
        assert_eq!(
            ev,
            vec![Event::Up {
                path: Path::Link,
                from: link_addr()
            }]
        );
        assert_eq!(ev[0].message("b"), "peer b up via link 10.99.0.2:7400");

        // Heartbeats every 100 ms keep it up, with no events.
        for i in 1..10 {
            assert!(t
                .on_heartbeat(&hb(7, i), Path::Link, link_addr(), t0 + ms(100 * i))
                .is_empty());
        }
        let last = t0 + ms(900);
        // Exactly dead_after of silence is still up; one millisecond more is down.
        assert!(t.tick(last + DEAD).is_empty());
        assert!(t.is_up());
        let ev = t.tick(last + DEAD + ms(1));
        assert_eq!(
            ev,
            vec![Event::Down {
                silent_for: ms(501)
            }]
        );
        assert!(ev[0].message("b").starts_with("peer b down"));
        assert!(!t.is_up());
        // Down is reported once.
        assert!(t.tick(last + ms(5000)).is_empty());
        let s = t.snapshot(last + ms(2000));
        assert!(!s.up);
        assert_eq!(s.last_seen_ms_ago, Some(2000));
    }

    #[test]
    fn second_path_and_partial_loss() {
        let t0 = Instant::now();
        let mut t = Tracker::new("b", DEAD);
        t.on_heartbeat(&hb(7, 0), Path::Link, link_addr(), t0);
        let ev = t.on_heartbeat(&hb(7, 0), Path::Lan, lan_addr(), t0 + ms(1));
        assert_eq!(
            ev,
            vec![Event::PathUp {
                path: Path::Lan,
                from: lan_addr()
            }]
        );

        // The LAN goes silent, the link keeps going: only the LAN path drops.
        let mut events = Vec::new();
        for i in 1..=8 {
            events.extend(t.on_heartbeat(&hb(7, i), Path::Link, link_addr(), t0 + ms(100 * i)));
        }
        assert_eq!(events, vec![Event::PathDown { path: Path::Lan }]);
        assert!(t.is_up());
        let s = t.snapshot(t0 + ms(800));
        assert!(s.paths.iter().any(|p| p.path == Path::Link && p.up));
        assert!(s.paths.iter().any(|p| p.path == Path::Lan && !p.up));
    }

    #[test]
    fn a_long_gap_shows_as_down_then_up() {
        let t0 = Instant::now();
        let mut t = Tracker::new("b", DEAD);
        t.on_heartbeat(&hb(7, 0), Path::Link, link_addr(), t0);
        let ev = t.on_heartbeat(&hb(7, 1), Path::Link, link_addr(), t0 + ms(2000));
        assert_eq!(
            ev,
            vec![
                Event::Down {
                    silent_for: ms(2000)
                },
                Event::Up {
                    path: Path::Link,
                    from: link_addr()
                }
            ]
        );
    }

    #[test]
    fn restart_shows_as_new_boot_id() {
        let t0 = Instant::now();
        let mut t = Tracker::new("b", DEAD);
        t.on_heartbeat(&hb(7, 5), Path::Link, link_addr(), t0);
        let ev = t.on_heartbeat(&hb(9, 0), Path::Link, link_addr(), t0 + ms(100));
        assert_eq!(ev, vec![Event::Restarted { old: 7, new: 9 }]);
        let s = t.snapshot(t0 + ms(100));
        assert_eq!(s.restarts, 1);
        assert_eq!(s.boot_id.as_deref(), Some("0000000000000009"));
        assert_eq!(s.last_seq, Some(0));
    }

    #[test]
    fn stragglers_of_an_earlier_run_are_ignored() {
        let t0 = Instant::now();
        let mut t = Tracker::new("b", DEAD);
        t.on_heartbeat(&hb(7, 5), Path::Link, link_addr(), t0);
        assert_eq!(
            t.on_heartbeat(&hb(9, 0), Path::Lan, lan_addr(), t0 + ms(10)),
            vec![
                Event::Restarted { old: 7, new: 9 },
                Event::PathUp {
                    path: Path::Lan,
                    from: lan_addr()
                }
            ]
        );
        // A late datagram of run 7 (on the other path): no second restart, boot id stays 9.
        assert!(t
            .on_heartbeat(&hb(7, 6), Path::Link, link_addr(), t0 + ms(20))
            .is_empty());
        let s = t.snapshot(t0 + ms(20));
        assert_eq!(s.restarts, 1);
        assert_eq!(s.boot_id.as_deref(), Some("0000000000000009"));
        assert_eq!(s.last_seq, Some(0));
        // Nor does it keep the peer alive: only run 9 on the LAN counts, and it goes silent.
        let ev = t.tick(t0 + ms(10) + DEAD + ms(1));
        assert_eq!(
            ev,
            vec![Event::Down {
                silent_for: DEAD + ms(1)
            }]
        );
        assert!(t
            .on_heartbeat(&hb(7, 7), Path::Link, link_addr(), t0 + ms(600))
            .is_empty());
        assert!(!t.is_up());
    }

    #[test]
    fn remembered_boot_ids_are_bounded() {
        let t0 = Instant::now();
        let mut t = Tracker::new("b", DEAD);
        for id in 0..(MAX_OLD_BOOT_IDS as u64 + 5) {
            t.on_heartbeat(&hb(id, 0), Path::Link, link_addr(), t0);
        }
        assert_eq!(t.old_boot_ids.len(), MAX_OLD_BOOT_IDS);
        // The oldest were forgotten: boot id 0 is taken as new again, the newest old one is not.
        let newest_old = MAX_OLD_BOOT_IDS as u64 + 3;
        assert!(t
            .on_heartbeat(&hb(newest_old, 1), Path::Link, link_addr(), t0)
            .is_empty());
        assert_eq!(
            t.on_heartbeat(&hb(0, 1), Path::Link, link_addr(), t0).len(),
            1
        );
    }

    #[test]
    fn shorter_dead_after_applies_at_once() {
        let t0 = Instant::now();
        let mut t = Tracker::new("b", DEAD);
        t.on_heartbeat(&hb(7, 0), Path::Link, link_addr(), t0);
        assert!(t.tick(t0 + ms(300)).is_empty());
        t.set_dead_after(ms(200));
        assert_eq!(t.tick(t0 + ms(300)).len(), 1);
    }

    #[test]
    fn an_overtaken_heartbeat_counts_for_its_path_but_not_for_the_report() {
        let now = Instant::now();
        let mut t = Tracker::new("b", DEAD);
        let mut newer = hb(7, 10);
        newer.echo_seq = 5;
        t.on_heartbeat(&newer, Path::Link, link_addr(), now);
        let mut older = hb(7, 9);
        older.echo_seq = 4;
        let ev = t.on_heartbeat(&older, Path::Lan, lan_addr(), now);
        assert!(t.last_seen_on(Path::Lan).is_some(), "{ev:?}");
        assert_eq!(t.report().map(|r| r.echo_seq), Some(5));
        assert_eq!(t.snapshot(now).last_seq, Some(10));
    }
}
