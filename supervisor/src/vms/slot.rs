//! What havmsd knows about one VM on this node: its config, its engine (none, starting,
//! running as primary or replica, crashed, failed) as the engine's events and `info` tell it,
//! and the bookkeeping of the decisions about it. It turns into the facts `decide` reads, the
//! report the peer reads and the status the operator reads.

use std::time::Instant;

use havms_config::VmConfig;
use havms_vmm::events::{Event, ReplicaState, StreamState};
use havms_vmm::replication::primary::ProtectStatus;
use havms_vmm::replication::secondary::ReplicaStatus;
use havms_vmm::VmInfo;

use crate::failover::{Engine, Stream};
use crate::peer::report::{Intent, PrimaryState, VmReport, VmRole};

/// How long an operator's `havms switchover` stays a request to move the VM at once (the
/// peer's replica may still be syncing); after it the placement is followed by `failback`.
pub const SWITCHOVER_ASKED: std::time::Duration = std::time::Duration::from_secs(120);

/// The role an engine runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Primary,
    Replica,
}

/// A running engine.
#[derive(Debug, Clone)]
pub struct Running {
    pub role: Role,
    pub pid: Option<u32>,
    /// Its watcher is subscribed.
    pub connected: bool,
    pub since: Instant,
    pub stream: Stream,
    pub stream_since: Instant,
    pub last_ack: Option<Instant>,
    /// When the peer was last heard on the stream (an ack, a commit, a keepalive: the
    /// engine's `Heard` events).
    pub last_heard: Option<Instant>,
    pub acked: u64,
    pub stream_id: u64,
    pub copy: ReplicaState,
    pub replica_connected: bool,
    pub last_commit: Option<Instant>,
    pub committed: u64,
    pub port: Option<u16>,
    pub info: Option<VmInfo>,
    /// The stream's own status from the last `info` (figures for status and metrics).
    pub protect: Option<ProtectStatus>,
    pub replica: Option<ReplicaStatus>,
    pub boots: u32,
    /// Found running after a havmsd restart: its role is known only once its info came.
    pub adopted: bool,
    /// The next `info` sets role and state (the first one, and the first after the watcher
    /// subscribed again: events may have been missed meanwhile).
    pub resync: bool,
}

impl Running {
    pub fn new(role: Role, pid: Option<u32>, now: Instant) -> Running {
        Running {
            role,
            pid,
            connected: false,
            since: now,
            stream: Stream::Unprotected,
            stream_since: now,
            last_ack: None,
            last_heard: None,
            acked: 0,
            stream_id: 0,
            copy: ReplicaState::Empty,
            replica_connected: false,
            last_commit: None,
            committed: 0,
            port: None,
            info: None,
            protect: None,
            replica: None,
            boots: 1,
            adopted: false,
            resync: true,
        }
    }

    fn set_stream(&mut self, s: Stream, now: Instant) {
        if s != self.stream {
            self.stream = s;
            self.stream_since = now;
            if !matches!(s, Stream::Protected | Stream::Syncing) {
                self.last_ack = None;
                self.last_heard = None;
            }
        }
    }

    /// The engine answered a takeover: it runs the VM now, whatever events are still on
    /// their way (a copy still read as ready or handed over would be taken over twice).
    pub fn took_over(&mut self, now: Instant) {
        self.role = Role::Primary;
        self.copy = ReplicaState::TakenOver;
        self.set_stream(Stream::Unprotected, now);
    }

    /// One event of the engine.
    pub fn on_event(&mut self, ev: &Event, now: Instant) {
        match ev {
            Event::Stream {
                state,
                stream_id,
                acked,
                ..
            } => {
                self.role = Role::Primary;
                self.stream_id = *stream_id;
                self.acked = *acked;
                if *state == StreamState::Syncing {
                    // A fresh stream: acks count from now.
                    self.last_ack = Some(now);
                }
                self.set_stream(stream_of(*state), now);
            }
            Event::Acked { epoch, stream_id } => {
                self.acked = *epoch;
                self.stream_id = *stream_id;
                self.last_ack = Some(now);
            }
            Event::Committed { epoch, stream_id } => {
                self.committed = *epoch;
                self.stream_id = *stream_id;
                self.last_commit = Some(now);
            }
            Event::Replica {
                state,
                connected,
                stream_id,
                committed_epoch,
                ..
            } => {
                if *state == ReplicaState::TakenOver {
                    self.role = Role::Primary;
                    self.set_stream(Stream::Unprotected, now);
                } else {
                    self.role = Role::Replica;
                }
                self.copy = *state;
                self.replica_connected = *connected;
                self.stream_id = *stream_id;
                self.committed = *committed_epoch;
            }
            Event::Heard { ms_ago, .. } => {
                // The peer's engine is alive, whichever stream it came on (a replica hears
                // a new stream's full copy before its first commit names the stream).
                let at = now
                    .checked_sub(std::time::Duration::from_millis(*ms_ago))
                    .unwrap_or(now);
                self.last_heard = self.last_heard.max(Some(at));
            }
            Event::GuestReset { boot } => self.boots = *boot,
            Event::Exited { .. } => {}
        }
    }

    /// The engine's `info`: the role and the state before any event, and the figures.
    pub fn on_info(&mut self, info: VmInfo, now: Instant) {
        self.adopted = false;
        // Events carry every change of role and state, in order; an `info` read in between
        // may be older than the last of them. Only the first one (before any event) sets them;
        // later ones bring the figures.
        let first = std::mem::take(&mut self.resync);
        let replica = info.state == "replica";
        self.boots = info.boots;
        if replica {
            self.role = Role::Replica;
            self.protect = None;
            self.replica = info
                .replication
                .clone()
                .and_then(|v| serde_json::from_value::<ReplicaStatus>(v).ok());
            if let Some(r) = self.replica.as_ref().filter(|_| first) {
                self.copy = r.state;
                self.replica_connected = r.connected;
                self.committed = r.committed_epoch;
            }
            if let Some(r) = &self.replica {
                self.port = r
                    .listen
                    .rsplit_once(':')
                    .and_then(|(_, p)| p.parse().ok())
                    .filter(|p| *p != 0);
            }
        } else {
            self.role = Role::Primary;
            self.replica = None;
            self.protect = info
                .replication
                .clone()
                .and_then(|v| serde_json::from_value::<ProtectStatus>(v).ok());
            match &self.protect {
                // A machine rebuilding itself after a guest reset shows no stream for a
                // moment; its events say how the stream ended.
                _ if info.state == "rebooting" => {}
                Some(p) if first => {
                    self.stream_id = p.stream_id;
                    self.acked = p.acked;
                    self.set_stream(stream_of(p.state), now);
                }
                None if first => self.set_stream(Stream::Unprotected, now),
                _ => {}
            }
        }
        self.info = Some(info);
    }
}

fn stream_of(s: StreamState) -> Stream {
    match s {
        StreamState::Connecting => Stream::Connecting,
        StreamState::Syncing => Stream::Syncing,
        StreamState::Protected => Stream::Protected,
        StreamState::Ending => Stream::Ending,
        StreamState::Held => Stream::Held,
        StreamState::HandingOver => Stream::HandingOver,
        StreamState::HandedOver => Stream::HandedOver,
        StreamState::Stopped | StreamState::Failed => Stream::Unprotected,
    }
}

/// This node's engine for the VM.
#[derive(Debug, Clone)]
pub enum Local {
    None,
    Starting { role: Role, since: Instant },
    Running(Box<Running>),
    Crashed { at: Instant, why: String },
    Failed { at: Instant, why: String },
}

/// A recorded failover, for the status.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FailoverRecord {
    /// When the VM ran on this node, ms since the epoch.
    pub at_ms: u64,
    /// The rule that decided it, with its evidence.
    pub rule: String,
    /// From the peer's last heartbeat to the VM running here.
    pub took_ms: Option<u64>,
    pub from_epoch: u64,
    /// A planned switchover (the primary handed it over), not a failover.
    #[serde(default)]
    pub planned: bool,
}

/// One VM on this node.
#[derive(Debug, Clone)]
pub struct Slot {
    pub cfg: VmConfig,
    pub local: Local,
    /// Counts the engines started or adopted for this VM (a watcher's report names one).
    pub generation: u64,
    /// An action is being carried out.
    pub busy: bool,
    /// The engine is expected to end (a stop, a fence): not a crash when it does.
    pub expect_exit: Option<String>,
    pub want_stale_from: Option<u64>,
    pub last_protect_failure: Option<Instant>,
    /// What went wrong last (a failed start, protect, takeover), for the status.
    pub last_error: Option<String>,
    pub last_failover: Option<FailoverRecord>,
    /// A config change that waits for the VM's next start, and the config it brings.
    pub pending_change: Option<String>,
    pub pending_cfg: Option<VmConfig>,
    pub last_takeover_failure: Option<Instant>,
    pub takeover_failures: u32,
    /// The VM left the config but still runs here.
    pub orphan: bool,
    /// When this node last killed the engine as a fence: until its end is seen, deciding
    /// again must not kill (and log) it again.
    pub fenced_at: Option<Instant>,
    /// When the operator last asked for a switchover (here, or on the peer and merged).
    pub switchover_asked_at: Option<Instant>,
    /// The last switchover that failed.
    pub last_handover_failure: Option<Instant>,
    /// It failed half way (the stream held, the guest paused): see `VmFacts::handover_unsure`.
    pub handover_unsure: bool,
}

impl Slot {
    pub fn new(cfg: VmConfig) -> Slot {
        Slot {
            cfg,
            local: Local::None,
            generation: 0,
            busy: false,
            expect_exit: None,
            want_stale_from: None,
            last_protect_failure: None,
            last_error: None,
            last_failover: None,
            pending_change: None,
            pending_cfg: None,
            last_takeover_failure: None,
            takeover_failures: 0,
            orphan: false,
            fenced_at: None,
            switchover_asked_at: None,
            last_handover_failure: None,
            handover_unsure: false,
        }
    }

    pub fn name(&self) -> &str {
        self.cfg.name.as_str()
    }

    pub fn running(&self) -> Option<&Running> {
        match &self.local {
            Local::Running(r) => Some(r),
            _ => None,
        }
    }

    pub fn running_mut(&mut self) -> Option<&mut Running> {
        match &mut self.local {
            Local::Running(r) => Some(r),
            _ => None,
        }
    }

    /// The engine as `decide` sees it.
    pub fn engine(&self) -> Engine {
        match &self.local {
            Local::None => Engine::None,
            Local::Starting { .. } => Engine::Starting,
            Local::Crashed { at, .. } => Engine::Crashed { at: *at },
            Local::Failed { why, .. } => Engine::Failed { why: why.clone() },
            // Until its watcher has read its state, an engine is still starting.
            Local::Running(r) if r.info.is_none() => Engine::Starting,
            Local::Running(r) => match r.role {
                Role::Primary => Engine::Primary {
                    stream: r.stream,
                    since: r.stream_since,
                    last_ack: r.last_ack,
                    last_heard: r.last_heard,
                    stream_id: r.stream_id,
                    acked: r.acked,
                },
                Role::Replica => Engine::Replica {
                    copy: r.copy,
                    connected: r.replica_connected,
                    last_commit: r.last_commit,
                    last_heard: r.last_heard,
                    watched_since: r.since,
                    port: r.port,
                    stream_id: r.stream_id,
                    committed: r.committed,
                },
            },
        }
    }

    /// Whether the operator asked this node for a switchover within `window` of `now`.
    pub fn switchover_asked(&self, now: Instant, window: std::time::Duration) -> bool {
        self.switchover_asked_at
            .is_some_and(|t| now.saturating_duration_since(t) < window)
    }

    /// What the peer is told.
    pub fn report(&self, intent: Intent) -> VmReport {
        // An engine being started is reported in the role it starts in (the peer must know a
        // primary is coming, or that this node will be its replica); only an adopted one whose
        // role is not known yet is "starting".
        let starting = |role: Role| match role {
            Role::Primary => (VmRole::Primary(PrimaryState::Unprotected), 0, 0, 0),
            Role::Replica => (VmRole::Replica(ReplicaState::Empty), 0, 0, 0),
        };
        let (role, port, stream_id, epoch) = match &self.local {
            Local::None => (VmRole::None, 0, 0, 0),
            Local::Starting { role, .. } => starting(*role),
            Local::Crashed { .. } => (VmRole::Crashed, 0, 0, 0),
            Local::Failed { .. } => (VmRole::Failed, 0, 0, 0),
            Local::Running(r) if r.info.is_none() && r.adopted => (VmRole::Starting, 0, 0, 0),
            Local::Running(r) if r.info.is_none() => starting(r.role),
            Local::Running(r) => match r.role {
                Role::Primary => (
                    VmRole::Primary(match r.stream {
                        Stream::Unprotected => PrimaryState::Unprotected,
                        Stream::Connecting => PrimaryState::Connecting,
                        Stream::Syncing => PrimaryState::Syncing,
                        Stream::Protected => PrimaryState::Protected,
                        Stream::Ending => PrimaryState::Ending,
                        Stream::Held => PrimaryState::Held,
                        Stream::HandingOver => PrimaryState::HandingOver,
                        Stream::HandedOver => PrimaryState::HandedOver,
                    }),
                    0,
                    r.stream_id,
                    r.acked,
                ),
                Role::Replica => (
                    VmRole::Replica(r.copy),
                    r.port.unwrap_or(0),
                    r.stream_id,
                    r.committed,
                ),
            },
        };
        VmReport {
            name: self.name().to_string(),
            role,
            want_stale: self.want_stale_from.is_some()
                && matches!(self.running(), Some(r) if r.stream == Stream::Held),
            switchover: self.switchover_asked(Instant::now(), SWITCHOVER_ASKED),
            port,
            stream_id,
            epoch,
            intent,
            // The VM service adds its copy's record.
            copy: Default::default(),
            set_aside: None,
        }
    }
}

/// What differs between the config a VM runs with and a new one, in words (None: nothing
/// that needs a restart).
pub fn config_change(old: &VmConfig, new: &VmConfig) -> Option<String> {
    let mut d = Vec::new();
    if old.vcpus != new.vcpus {
        d.push(format!("vcpus {} -> {}", old.vcpus, new.vcpus));
    }
    if old.memory_mib != new.memory_mib {
        d.push(format!(
            "memory_mib {} -> {}",
            old.memory_mib, new.memory_mib
        ));
    }
    if old.kernel != new.kernel || old.initramfs != new.initramfs || old.cmdline != new.cmdline {
        d.push("kernel, initramfs or cmdline".into());
    }
    if old.disks != new.disks {
        d.push("disks".into());
    }
    if old.nics != new.nics {
        d.push("nics".into());
    }
    (!d.is_empty()).then(|| format!("{}: takes effect when the VM next starts", d.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm() -> VmConfig {
        serde_yaml::from_str(
            "{ name: web, memory_mib: 256, kernel: /k, preferred_node: a, nics: [{ mac: '52:54:00:00:00:01' }] }",
        )
        .unwrap()
    }

    #[test]
    fn events_move_the_engine_and_its_report() {
        let t0 = Instant::now();
        let mut s = Slot::new(vm());
        s.local = Local::Running(Box::new(Running::new(Role::Primary, Some(9), t0)));
        assert_eq!(s.engine(), Engine::Starting, "no info yet");
        let run = Intent {
            run: true,
            version: 0,
            pin: None,
        };
        assert_eq!(
            s.report(run.clone()).role,
            VmRole::Primary(PrimaryState::Unprotected),
            "a primary being started says so"
        );
        s.running_mut().unwrap().adopted = true;
        assert_eq!(
            s.report(run.clone()).role,
            VmRole::Starting,
            "an adopted engine's role is not known before its info"
        );
        let info: VmInfo = serde_json::from_str(
            r#"{"state":"running","cpus":1,"memory_mib":256,"cmdline":"","dirty_log":false}"#,
        )
        .unwrap();
        s.running_mut().unwrap().on_info(info, t0);
        assert!(matches!(
            s.engine(),
            Engine::Primary {
                stream: Stream::Unprotected,
                ..
            }
        ));
        let r = s.running_mut().unwrap();
        r.on_event(
            &Event::Stream {
                state: StreamState::Syncing,
                stream_id: 7,
                epoch: 1,
                acked: 0,
                error: None,
            },
            t0,
        );
        r.on_event(
            &Event::Acked {
                stream_id: 7,
                epoch: 3,
            },
            t0,
        );
        // A keepalive heard 30 ms before the event came.
        let t1 = t0 + std::time::Duration::from_millis(500);
        r.on_event(
            &Event::Heard {
                stream_id: 7,
                ms_ago: 30,
            },
            t1,
        );
        let heard = t1 - std::time::Duration::from_millis(30);
        assert!(
            matches!(s.engine(), Engine::Primary { last_heard: Some(h), last_ack: Some(a), .. } if h == heard && a == t0)
        );
        let r = s.running_mut().unwrap();
        r.on_event(
            &Event::Stream {
                state: StreamState::Held,
                stream_id: 7,
                epoch: 9,
                acked: 3,
                error: Some("no ack".into()),
            },
            t0,
        );
        s.want_stale_from = Some(12);
        let rep = s.report(Intent {
            run: true,
            version: 0,
            pin: None,
        });
        assert_eq!(rep.role, VmRole::Primary(PrimaryState::Held));
        assert!(rep.want_stale);
        assert_eq!((rep.stream_id, rep.epoch), (7, 3));
        // A replica taken over becomes an unprotected primary.
        let r = s.running_mut().unwrap();
        r.on_event(
            &Event::Replica {
                state: ReplicaState::TakenOver,
                connected: false,
                stream_id: 7,
                committed_epoch: 40,
                reason: None,
            },
            t0,
        );
        assert!(matches!(
            s.engine(),
            Engine::Primary {
                stream: Stream::Unprotected,
                ..
            }
        ));
        assert!(
            !s.report(Intent {
                run: true,
                version: 0,
                pin: None,
            })
            .want_stale
        );
    }

    #[test]
    fn a_takeover_answered_is_a_primary_before_its_events_come() {
        let t0 = Instant::now();
        let mut s = Slot::new(vm());
        let mut r = Running::new(Role::Replica, Some(9), t0);
        r.copy = ReplicaState::HandedOver;
        r.info = Some(
            serde_json::from_str(
                r#"{"state":"replica","cpus":1,"memory_mib":256,"cmdline":"","dirty_log":false}"#,
            )
            .unwrap(),
        );
        r.took_over(t0);
        s.local = Local::Running(Box::new(r));
        assert!(matches!(
            s.engine(),
            Engine::Primary {
                stream: Stream::Unprotected,
                ..
            }
        ));
    }

    #[test]
    fn config_changes_are_named() {
        let a = vm();
        let mut b = vm();
        assert_eq!(config_change(&a, &b), None);
        b.memory_mib = 512;
        b.nics.clear();
        assert_eq!(
            config_change(&a, &b).unwrap(),
            "memory_mib 256 -> 512, nics: takes effect when the VM next starts"
        );
    }
}
