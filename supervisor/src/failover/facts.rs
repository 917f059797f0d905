//! What `decide` looks at: this node's engines, the peer (its heartbeats on each path and its
//! latest reports), the witness, the timings and the clock. Plain data, filled by the VM
//! service each tick; tests build it by hand.

use std::time::{Duration, Instant};

use crate::copies::compare::Verdict;
use crate::peer::tracker::PeerReport;
use havms_vmm::events::ReplicaState;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timings {
    pub heartbeat: Duration,
    /// Silence on every path after which the peer counts as dead.
    pub dead_after: Duration,
    /// How long a node cut off from its peer and its witness waits before it kills the VMs
    /// its peer could take over.
    pub fence: Duration,
    pub epoch: Duration,
    /// How long a VM away from its home node stays protected there before it fails back
    /// (a node that just returned proves itself first).
    pub failback_delay: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerFacts {
    pub name: String,
    /// Some path carried a heartbeat within `dead_after` (the tracker's view).
    pub up: bool,
    pub link_last: Option<Instant>,
    pub lan_last: Option<Instant>,
    pub report: Option<PeerReport>,
    /// Its heartbeats arrive within `dead_after` but in another version of the format (it
    /// runs another release): alive, unreadable.
    pub incompatible: bool,
}

impl Timings {
    /// How recent a witness answer must be to count as "answers now": three pings, but at
    /// most half of `dead_after` (the config keeps `dead_after` at least three heartbeats).
    pub fn witness_window(&self) -> Duration {
        (self.heartbeat * 3).min(self.dead_after / 2)
    }
}

impl PeerFacts {
    /// The last heartbeat on any path.
    pub fn last_seen(&self) -> Option<Instant> {
        self.link_last.max(self.lan_last)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WitnessFacts {
    /// None: no witness configured (then nothing is ever confirmed by it).
    pub address: Option<std::net::Ipv4Addr>,
    pub last_answer: Option<Instant>,
    /// Since when it has answered without a gap (None: not answering).
    pub answering_since: Option<Instant>,
}

/// A primary's replication, as this node's engine reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Unprotected,
    Connecting,
    Syncing,
    Protected,
    Ending,
    /// The stream failed; the engine holds the output.
    Held,
    /// A planned switchover is under way (the guest paused for good at its last checkpoint).
    HandingOver,
    /// The peer took the VM over at a switchover; the engine here ends.
    HandedOver,
}

/// This node's engine for one VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Engine {
    /// No engine here.
    None,
    /// Being started, or an action on it is under way.
    Starting,
    /// The primary's engine died here (not a power off, not a stop) at `at`.
    Crashed { at: Instant },
    /// It cannot start here (missing kernel or disk, bad spec): `why`.
    Failed { why: String },
    Primary {
        stream: Stream,
        /// When `stream` took its current value.
        since: Instant,
        /// When the peer last acked an epoch (None: not in this stream).
        last_ack: Option<Instant>,
        /// When the peer was last heard on the stream: acks and its keepalives, which keep
        /// coming while it applies a long epoch.
        last_heard: Option<Instant>,
        stream_id: u64,
        acked: u64,
    },
    Replica {
        copy: ReplicaState,
        connected: bool,
        /// When the last epoch was committed (None: none seen since this havmsd watches).
        last_commit: Option<Instant>,
        /// When the primary was last heard on the stream: commits, any bytes of its frames,
        /// its keepalives while it checkpoints, and this engine busy with what it sent.
        last_heard: Option<Instant>,
        /// Since when havmsd watches this engine (the stream's silence counts from here when
        /// no commit was seen).
        watched_since: Instant,
        /// Where it listens on the link (None: not known yet).
        port: Option<u16>,
        stream_id: u64,
        committed: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmFacts {
    pub name: String,
    /// This node is the VM's home: where the operator placed it (`havms switchover`), else its
    /// `preferred_node`.
    pub preferred_here: bool,
    /// `failback: auto`: a VM away from home moves back by itself once protected.
    pub failback_auto: bool,
    /// The operator asked for a switchover just now (`havms switchover`, here or on the peer):
    /// move it at once, whatever `failback` says.
    pub switchover_asked: bool,
    /// The last switchover that failed, to wait a while before the next.
    pub last_handover_failure: Option<Instant>,
    /// A switchover failed half way and the stream is still held: the peer may have taken the
    /// Handover and run the VM (it does so without waiting for any silence), so this copy must
    /// never resume on the peer's silence.
    pub handover_unsure: bool,
    /// The operator's intent, merged with the peer's (newest wins): run it.
    pub run: bool,
    /// An action on this VM is being carried out: decide nothing new for it.
    pub busy: bool,
    pub engine: Engine,
    /// The heartbeat seq from which this node has asked the peer to mark its copy stale (the
    /// VM's stream failed and its output is held).
    pub want_stale_from: Option<u64>,
    /// The last `protect` that failed, to wait a while before the next.
    pub last_protect_failure: Option<Instant>,
    /// The last takeover that failed, likewise.
    pub last_takeover_failure: Option<Instant>,
    /// What this node's and the peer's copies of the VM say on reconnect (None: the peer
    /// does not report the VM, or has not been heard).
    pub copies: Option<Verdict>,
    /// Why this node must not boot its copy while the peer is silent, if it must not (it may
    /// have been outrun: `copies::lifecycle::boot_alone_refused`).
    pub boot_alone_refused: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    pub now: Instant,
    pub timings: Timings,
    /// When this havmsd started (a node that just booted listens before it acts alone).
    pub started_at: Instant,
    /// This havmsd's boot id and the seq of the heartbeat it sends next.
    pub boot_id: u64,
    pub seq: u64,
    pub peer: PeerFacts,
    pub witness: WitnessFacts,
    /// This node is in maintenance (`havms maintenance on`): its VMs move to the peer, it
    /// starts none and keeps no copy. Each VM's `preferred_here` already counts it: the home
    /// of every VM is the node not in maintenance.
    pub maintenance_here: bool,
    /// The peer is in maintenance: nothing is protected onto it.
    pub maintenance_peer: bool,
    pub vms: Vec<VmFacts>,
}

impl Facts {
    pub fn since(&self, t: Instant) -> Duration {
        self.now.saturating_duration_since(t)
    }

    /// The peer has been silent on every path for `dead_after` (or was never heard since this
    /// havmsd started and `dead_after` has passed).
    pub fn peer_silent(&self) -> bool {
        !self.peer.up
            && self.since(self.peer.last_seen().unwrap_or(self.started_at))
                >= self.timings.dead_after
    }

    /// The witness answers now, and has for `dead_after`: this node is not the isolated one.
    ///
    /// "Now" is within `witness_window` (a lost ping is no verdict, but an answer from before a
    /// cut must be stale by the time the peer's silence reaches `dead_after`: a node cut off
    /// everything at T hears its peer last at T and its witness last at about T, so a window
    /// of `dead_after` let it release at T + `dead_after` on an answer from T). "For
    /// `dead_after`" because a node whose network just came back hears its witness before its
    /// peer's next heartbeat: it waits as long as the peer gets to prove itself alive.
    pub fn witness_answers(&self) -> bool {
        let w = &self.witness;
        w.address.is_some()
            && w.last_answer
                .is_some_and(|t| self.since(t) <= self.timings.witness_window())
            && w.answering_since
                .is_some_and(|t| self.since(t) >= self.timings.dead_after)
    }

    /// Since when this node has heard neither its peer nor its witness.
    pub fn alone_since(&self) -> Instant {
        self.peer
            .last_seen()
            .max(self.witness.last_answer)
            .unwrap_or(self.started_at)
    }
}
