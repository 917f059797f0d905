//! A secondary waiting to take over: the replica server plus the console the VM will use, and,
//! after `takeover`, the running `Machine`. It is the API target of `havms-vm
//! --replica-listen`: `info` shows the replica (committed epoch, connection), `takeover` starts
//! the VM from the last committed epoch (failover), and from then on every request acts on the
//! machine as for any VM.
//!
//! Who decides to take over is not this module's business: the supervisor does, when the peer
//! is dead and the witness answers (docs/design.md); tests do it by hand with `havms-remote
//! takeover`. Taking over while the primary still runs would make two copies of the guest.

use std::sync::{Arc, Condvar, Mutex};

use crate::api::socket::ApiTarget;
use crate::console::Console;
use crate::machine::{Machine, OnReset};
use crate::vm::{Vm, VmError, VmInfo};

use super::secondary::ReplicaServer;
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
}

impl Standby {
    pub fn new(server: ReplicaServer, console: Console, on_reset: OnReset) -> Arc<Standby> {
        Arc::new(Standby {
            phase: Mutex::new(Phase::Replica { server, console }),
            changed: Condvar::new(),
            on_reset,
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
    /// takeover (nothing committed, a stale copy without `force`) leaves the replica serving.
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
        let replica = match server.takeover(force) {
            Ok(r) => r,
            Err((e, server)) => {
                *p = Phase::Replica { server, console };
                return Err(VmError::Control(format!("takeover refused: {e}")));
            }
        };
        let result = Machine::from_replica(replica, console, self.on_reset);
        match result {
            Ok(m) => {
                log::info!(
                    "takeover: VM {} runs from epoch {}",
                    status.name,
                    status.committed_epoch
                );
                *p = Phase::Running(m);
                self.changed.notify_all();
                Ok(())
            }
            Err(e) => {
                // The replica is consumed either way; what is left is to say so and end.
                *p = Phase::Ended;
                self.changed.notify_all();
                Err(VmError::Control(format!(
                    "takeover failed: {}",
                    crate::error_chain(&e)
                )))
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

    fn protect(&self, to: &str, cfg: super::primary::ProtectConfig) -> Result<(), VmError> {
        match &*lock(&self.phase) {
            Phase::Running(m) => m.protect(to, cfg),
            _ => Err(VmError::WrongState("a replica (take over first)")),
        }
    }

    fn unprotect(&self) -> Result<(), VmError> {
        match &*lock(&self.phase) {
            Phase::Running(m) => m
                .unprotect()
                .map(|_| ())
                .ok_or(VmError::Control("this VM is not protected".into())),
            _ => Err(VmError::WrongState("a replica")),
        }
    }

    fn takeover(&self, force: bool) -> Result<(), VmError> {
        Standby::takeover(self, force)
    }
}
