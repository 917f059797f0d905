//! What the API server drives: one `Vm` (tests), a `Machine` (`havms-vm`), or a replica's
//! `Standby` (`havms-vm --replica-listen`). Verbs a target cannot do answer with why.

use crate::events::Events;
use crate::machine::Machine;
use crate::replication::primary::{ProtectConfig, ProtectStatus};
use crate::vm::{Vm, VmError, VmInfo};

pub trait ApiTarget: Send + Sync + 'static {
    /// The VM that pause, resume, snapshot and the gates act on now.
    fn current_vm(&self) -> Result<Vm, VmError>;
    fn info(&self) -> VmInfo;
    fn shutdown(&self);
    /// The events `subscribe` streams (None: this target publishes none).
    fn events(&self) -> Option<Events> {
        None
    }
    /// Starts replicating to a replica server at `to`; returns once the peer took the
    /// stream or refused it.
    fn protect(&self, _to: &str, _cfg: ProtectConfig) -> Result<ProtectStatus, VmError> {
        Err(VmError::Control(
            "replication needs a machine (havms-vm), not a bare VM".into(),
        ))
    }
    /// Ends replication deliberately.
    fn unprotect(&self) -> Result<ProtectStatus, VmError> {
        Err(VmError::Control("this VM is not protected".into()))
    }
    /// Lets held output flow after a failed stream.
    fn release(&self) -> Result<ProtectStatus, VmError> {
        Err(VmError::Control("this VM is not protected".into()))
    }
    /// A planned switchover to the peer (see `Machine::handover`).
    fn handover(&self, _reason: &str) -> Result<ProtectStatus, VmError> {
        Err(VmError::Control("this VM is not protected".into()))
    }
    /// Failover: a replica starts its VM from the last committed epoch (`force`: even a copy
    /// its primary said it stopped protecting).
    fn takeover(&self, _force: bool) -> Result<(), VmError> {
        Err(VmError::Control(
            "not a replica (havms-vm --replica-listen)".into(),
        ))
    }
    /// Hash memory and disks at `epoch` (see `Request::Verify`); the epoch that will be hashed.
    fn verify(&self, _epoch: u64) -> Result<u64, VmError> {
        Err(VmError::Control("not replicating".into()))
    }
    /// A replica's copy must not be taken over (`force`: even one its primary handed over).
    fn mark_stale(&self, _reason: &str, _force: bool) -> Result<(), VmError> {
        Err(VmError::Control(
            "not a replica (havms-vm --replica-listen)".into(),
        ))
    }
}

impl ApiTarget for Vm {
    fn current_vm(&self) -> Result<Vm, VmError> {
        Ok(self.clone())
    }
    fn info(&self) -> VmInfo {
        Vm::info(self)
    }
    fn shutdown(&self) {
        Vm::shutdown(self)
    }
}

impl ApiTarget for Machine {
    fn current_vm(&self) -> Result<Vm, VmError> {
        self.vm()
    }
    fn info(&self) -> VmInfo {
        Machine::info(self)
    }
    fn shutdown(&self) {
        Machine::shutdown(self)
    }
    fn events(&self) -> Option<Events> {
        Some(Machine::events(self))
    }
    fn protect(&self, to: &str, cfg: ProtectConfig) -> Result<ProtectStatus, VmError> {
        Machine::protect_and_wait(self, to, cfg)
    }
    fn unprotect(&self) -> Result<ProtectStatus, VmError> {
        Machine::unprotect(self)
    }
    fn release(&self) -> Result<ProtectStatus, VmError> {
        Machine::release(self)
    }
    fn handover(&self, reason: &str) -> Result<ProtectStatus, VmError> {
        Machine::handover(self, reason)
    }
    fn verify(&self, epoch: u64) -> Result<u64, VmError> {
        Machine::verify_at(self, epoch)
    }
}
