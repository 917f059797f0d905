//! A secondary waiting to take over: the replica server plus the console the VM will use, and,
//! after `takeover`, the running `Machine`. It is the API target of `havms-vm
//! --replica-listen`: `info` shows the replica (its copy, committed epoch, connection),
//! `mark_stale` keeps it from ever being taken over, `takeover` starts the VM from the last
//! committed epoch (failover), and from then on every request acts on the machine as for any
//! VM. One event bus serves the whole life: the replica's events, then the machine's.
//!
//! ```text
//!   replica --takeover--> busy --started--> running (a Machine)
//!      ^                   |
//!      +---- start failed: the replica is kept, serving goes on
//! ```
//!
//! Who decides to take over is not this module's business: the supervisor does, when the peer
//! is dead and the witness answers (docs/design.md); tests do it by hand with `havms-remote
//! takeover`. Taking over while the primary still runs would make two copies of the guest.

use std::sync::{Arc, Condvar, Mutex};

use crate::api::ApiTarget;
use crate::console::Console;
use crate::events::Events;
use crate::machine::{Machine, OnReset};
use crate::vm::{Vm, VmError, VmInfo};

use super::primary::{ProtectConfig, ProtectStatus};
use super::secondary::{ReplicaServer, TakeoverError};
use crate::sync::lock;

enum Phase {
    /// Receiving; the console waits for the VM.
    Replica {
        server: ReplicaServer,
        console: Console,
    },
    Running(Machine),
    /// Shut down before any takeover.
    Ended,
    /// In between (a takeover in progress).
    Busy,
}

/// A replica and, once taken over, its machine.
pub struct Standby {
    phase: Mutex<Phase>,
    changed: Condvar,
    on_reset: OnReset,
    events: Events,
}

impl Standby {
    /// `events` must be the bus `server` publishes to (the machine will publish there too).
    pub fn new(
        server: ReplicaServer,
        console: Console,
        on_reset: OnReset,
        events: Events,
    ) -> Arc<Standby> {
        Arc::new(Standby {
            phase: Mutex::new(Phase::Replica { server, console }),
            changed: Condvar::new(),
            on_reset,
            events,
        })
    }

    /// Blocks until the VM was taken over (its machine, to `run`) or the standby was shut
    /// down (None).
    pub fn wait(&self) -> Option<Machine> {
        let mut p = lock(&self.phase);
        loop {
            match &*p {
                Phase::Running(m) => return Some(m.clone()),
                Phase::Ended => return None,
                _ => p = self.changed.wait(p).unwrap_or_else(|e| e.into_inner()),
            }
        }
    }

    /// Failover: stops receiving and builds the VM from the last committed epoch. A refused
    /// takeover (nothing committed, a stale copy without `force`) or a failed start leaves the
    /// replica serving, its copy intact.
    pub fn takeover(&self, force: bool) -> Result<(), VmError> {
        let mut p = lock(&self.phase);
        let (server, console) = match std::mem::replace(&mut *p, Phase::Busy) {
            Phase::Replica { server, console } => (server, console),
            other => {
                *p = other;
                return Err(VmError::WrongState("not a replica any more"));
            }
        };
        let status = server.status();
        let mut console = Some(console);
        let result = server.takeover(force, |replica| {
            let Some(c) = console.take() else {
                return Err(("no console".to_string(), Box::new(replica)));
            };
            Machine::from_replica(replica, c, self.on_reset, self.events.clone()).map_err(|e| {
                let why = crate::error_chain(&e.error);
                console = Some(e.console);
                (why, e.replica)
            })
        });
        match result {
            Ok(m) => {
                log::info!(
                    "takeover: VM {} runs from epoch {}",
                    status.name,
                    status.committed_epoch
                );
                // The server has nothing left to serve; it goes with this phase.
                drop(server);
                *p = Phase::Running(m);
                self.changed.notify_all();
                Ok(())
            }
            Err(e) => {
                let msg = match &e {
                    TakeoverError::Refused(r) => format!("takeover refused: {r}"),
                    TakeoverError::Start(s) => {
                        format!("takeover failed (the replica is kept): {s}")
                    }
                };
                match console {
                    Some(console) => *p = Phase::Replica { server, console },
                    None => {
                        *p = Phase::Ended;
                        self.changed.notify_all();
                    }
                }
                Err(VmError::Control(msg))
            }
        }
    }

    fn replica_info(&self, server: &ReplicaServer) -> VmInfo {
        let st = server.status();
        VmInfo {
            state: "replica".into(),
            cpus: 0,
            memory_mib: st.memory_mib,
            cmdline: String::new(),
            dirty_log: false,
            boots: 0,
            nets: Vec::new(),
            replication: serde_json::to_value(st).ok(),
        }
    }
}

impl ApiTarget for Arc<Standby> {
    fn current_vm(&self) -> Result<Vm, VmError> {
        match &*lock(&self.phase) {
            Phase::Running(m) => m.vm(),
            _ => Err(VmError::WrongState("a replica (no VM runs until takeover)")),
        }
    }

    fn info(&self) -> VmInfo {
        match &*lock(&self.phase) {
            Phase::Running(m) => m.info(),
            Phase::Replica { server, .. } => self.replica_info(server),
            Phase::Ended | Phase::Busy => VmInfo {
                state: "ended".into(),
                cpus: 0,
                memory_mib: 0,
                cmdline: String::new(),
                dirty_log: false,
                boots: 0,
                nets: Vec::new(),
                replication: None,
            },
        }
    }

    fn shutdown(&self) {
        let mut p = lock(&self.phase);
        match &*p {
            Phase::Running(m) => m.shutdown(),
            Phase::Replica { .. } => {
                *p = Phase::Ended;
                self.changed.notify_all();
            }
            Phase::Ended | Phase::Busy => {}
        }
    }

    fn events(&self) -> Option<Events> {
        Some(self.events.clone())
    }

    fn protect(&self, to: &str, cfg: ProtectConfig) -> Result<ProtectStatus, VmError> {
        let m = match &*lock(&self.phase) {
            Phase::Running(m) => m.clone(),
            _ => return Err(VmError::WrongState("a replica (take over first)")),
        };
        m.protect_and_wait(to, cfg)
    }

    fn unprotect(&self) -> Result<ProtectStatus, VmError> {
        match &*lock(&self.phase) {
            Phase::Running(m) => m.unprotect(),
            _ => Err(VmError::WrongState("a replica")),
        }
    }

    fn release(&self) -> Result<ProtectStatus, VmError> {
        match &*lock(&self.phase) {
            Phase::Running(m) => m.release(),
            _ => Err(VmError::WrongState("a replica")),
        }
    }

    fn handover(&self, reason: &str) -> Result<ProtectStatus, VmError> {
        // Not under the phase lock: a switchover takes up to an ack timeout and more.
        let m = match &*lock(&self.phase) {
            Phase::Running(m) => m.clone(),
            _ => return Err(VmError::WrongState("a replica (take over first)")),
        };
        m.handover(reason)
    }

    fn takeover(&self, force: bool) -> Result<(), VmError> {
        Standby::takeover(self, force)
    }

    fn verify(&self, epoch: u64) -> Result<u64, VmError> {
        match &*lock(&self.phase) {
            Phase::Replica { server, .. } => {
                server.verify_at(epoch);
                Ok(epoch)
            }
            Phase::Running(m) => m.verify_at(epoch),
            _ => Err(VmError::WrongState("neither a replica nor running")),
        }
    }

    fn mark_stale(&self, reason: &str, force: bool) -> Result<(), VmError> {
        match &*lock(&self.phase) {
            Phase::Replica { server, .. } => {
                server.mark_stale(reason, force).map_err(VmError::Control)
            }
            _ => Err(VmError::WrongState("not a replica any more")),
        }
    }
}
