//! `Machine`: one guest across reboots, as Cloud Hypervisor and QEMU (without `-no-reboot`)
//! run it. A guest reset (`reboot`, the i8042 reset line, a triple fault, `panic=-1`) ends the
//! current `Vm`; the machine then builds a new one from the same spec (fresh memory, devices
//! reset, taps and disk files opened again) on the same `Console` and boots it. It owns the
//! spec, the console, the current `Vm` and the boot counter; the API server and the supervisor
//! hold clones and always act on the current VM.
//!
//! A restored machine reboots from the spec its snapshot recorded (kernel, initramfs, command
//! line, shape, devices). With `OnReset::Exit` (`havms-vm --no-reboot`) a reset ends the machine
//! like a power off. A VM that cannot be rebuilt (a tap gone, the kernel file removed) ends the
//! machine with `ExitReason::Error` saying what failed.
//!
//! It also owns the VM's replication stream (`protect`, `unprotect`, `release`) and keeps it
//! right across the machine's events: a guest reset ends the stream deliberately (the peer
//! confirms its copy is stale before the new boot's output may flow; without that word the new
//! boot's output is held until the supervisor releases it), and the end of the machine tells
//! the peer the VM ended (End), so its copy is discarded, never taken over.

use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::console::Console;
use crate::events::{Event, Events, StreamState};
use crate::exit::ExitReason;
use crate::replication::primary::{ProtectConfig, ProtectStatus, Protection};
use crate::spec::{SerialSpec, VmSpec};
use crate::state::snapshot::Snapshot;
use crate::sync::lock;
use crate::vm::{Vm, VmError, VmInfo};

/// How long a reboot waits for other holders of the old VM (an API request in flight) to let
/// go, so its taps and memory are released before the new VM opens them.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(10);

/// What a guest reset does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnReset {
    /// Build the VM again and boot it (the default, like Cloud Hypervisor and QEMU).
    #[default]
    Reboot,
    /// End the machine with `ExitReason::Reset` (QEMU's `-no-reboot`).
    Exit,
}

struct Current {
    /// None only while a reboot replaces it.
    vm: Option<Vm>,
    /// `shutdown` was asked: a reset in progress must not boot again.
    stopping: bool,
}

struct Shared {
    /// What each reboot builds; None for a machine restored from a snapshot that names no
    /// kernel (then a reset cannot reboot).
    spec: Mutex<Option<VmSpec>>,
    console: Mutex<Console>,
    on_reset: OnReset,
    current: Mutex<Current>,
    boots: AtomicU32,
    /// The replication stream of the current VM, when it is protected (or held).
    protection: Mutex<Option<Protection>>,
    events: Events,
}

/// A guest that survives its own reboots. Clones share it.
#[derive(Clone)]
pub struct Machine {
    shared: Arc<Shared>,
}

impl Machine {
    /// Builds the first VM from `spec` on the console `spec.serial` names.
    pub fn boot(spec: VmSpec, on_reset: OnReset) -> Result<Machine, VmError> {
        spec.validate()?;
        let console = Console::open(&spec.serial)?;
        Self::boot_on(spec, console, on_reset)
    }

    /// `boot` on a console the caller made (e.g. `Console::from_writer` for a tee).
    pub fn boot_on(spec: VmSpec, console: Console, on_reset: OnReset) -> Result<Machine, VmError> {
        let vm = Vm::create_on(&spec, &console)?;
        Ok(Self::assemble(
            vm,
            Some(spec),
            console,
            on_reset,
            Events::new(),
        ))
    }

    /// Restores the VM saved in `dir` on the console `serial` names; a reset reboots it from
    /// the spec the snapshot recorded.
    pub fn restore(dir: &Path, serial: &SerialSpec, on_reset: OnReset) -> Result<Machine, VmError> {
        let console = Console::open(serial)?;
        Self::restore_on(dir, console, on_reset)
    }

    /// `restore` on a console the caller made.
    pub fn restore_on(dir: &Path, console: Console, on_reset: OnReset) -> Result<Machine, VmError> {
        let spec = Snapshot::read(dir)?.boot_spec();
        if spec.is_none() {
            log::warn!(
                "{}: the snapshot names no kernel; a guest reset will end the VM",
                dir.display()
            );
        }
        let vm = Vm::restore_on(dir, &console)?;
        Ok(Self::assemble(vm, spec, console, on_reset, Events::new()))
    }

    /// Failover: the machine a replica holds, as of its last committed epoch, on `console`; a
    /// reset reboots it from the spec its state recorded. `run()` starts it. On failure the
    /// replica and the console come back with the reason.
    pub fn from_replica(
        replica: crate::replication::replica::Replica,
        console: Console,
        on_reset: OnReset,
        events: Events,
    ) -> Result<Machine, Box<FromReplicaError>> {
        let spec = replica.committed_state().and_then(Snapshot::boot_spec);
        let macs: Vec<[u8; 6]> = replica
            .committed_state()
            .map(|s| s.nets.iter().map(|n| n.mac).collect())
            .unwrap_or_default();
        let vm = match replica.start(&console) {
            Ok(vm) => vm,
            Err((error, replica)) => {
                return Err(Box::new(FromReplicaError {
                    error,
                    replica,
                    console,
                }))
            }
        };
        // The replica is now the only copy: what its last epoch held back goes out (it is
        // part of the committed state), then the MACs are announced from this node, in
        // rounds as QEMU's announce-self does (a switch that missed one learns from the next).
        for net in vm.net_outputs() {
            net.set_mode(crate::virtio::net::GateMode::Off);
        }
        crate::virtio::net::announce_rounds(vm.net_outputs().to_vec(), macs);
        Ok(Self::assemble(vm, spec, console, on_reset, events))
    }

    /// The machine's event bus (API subscribers read it).
    pub fn events(&self) -> Events {
        self.shared.events.clone()
    }

    fn assemble(
        vm: Vm,
        spec: Option<VmSpec>,
        console: Console,
        on_reset: OnReset,
        events: Events,
    ) -> Machine {
        console.attach(&vm);
        Machine {
            shared: Arc::new(Shared {
                spec: Mutex::new(spec),
                console: Mutex::new(console),
                on_reset,
                current: Mutex::new(Current {
                    vm: Some(vm),
                    stopping: false,
                }),
                boots: AtomicU32::new(1),
                protection: Mutex::new(None),
                events,
            }),
        }
    }

    /// The current VM (what pause, resume, snapshot and the NIC gates act on); an error while
    /// a reboot replaces it.
    pub fn vm(&self) -> Result<Vm, VmError> {
        lock(&self.shared.current)
            .vm
            .clone()
            .ok_or(VmError::WrongState("rebooting"))
    }

    /// How many VMs this machine has booted: 1, plus one per reboot.
    pub fn boots(&self) -> u32 {
        self.shared.boots.load(Ordering::SeqCst)
    }

    /// The current VM's `info`, with the boot count.
    pub fn info(&self) -> VmInfo {
        let boots = self.boots();
        let mut info = match self.vm() {
            Ok(vm) => VmInfo { boots, ..vm.info() },
            Err(_) => {
                let spec = lock(&self.shared.spec).clone();
                VmInfo {
                    state: "rebooting".into(),
                    cpus: spec.as_ref().map_or(0, |s| s.cpus),
                    memory_mib: spec.as_ref().map_or(0, |s| s.memory_mib),
                    cmdline: spec.as_ref().map(|s| s.cmdline.clone()).unwrap_or_default(),
                    dirty_log: spec.as_ref().is_some_and(|s| s.dirty_log),
                    boots,
                    nets: Vec::new(),
                    replication: None,
                }
            }
        };
        info.replication = lock(&self.shared.protection)
            .as_ref()
            .and_then(|p| serde_json::to_value(p.status()).ok());
        info
    }

    /// Starts replicating the current VM to `peer` (`host:port`, a replica server). The
    /// stream runs in its own threads; `info` and the events show how it goes. Refused while
    /// a stream runs or holds the output (`unprotect` or `release` it first). A guest reboot
    /// ends the stream (the new VM needs a new full copy): protect again.
    pub fn protect(&self, peer: &str, mut cfg: ProtectConfig) -> Result<(), VmError> {
        let vm = self.vm()?;
        let mut p = lock(&self.shared.protection);
        // An ended VM (a reset being turned into a reboot) cannot be copied, and a stream
        // holding it would keep the reboot waiting for it forever.
        if vm.has_ended() {
            return Err(VmError::WrongState("ended (rebooting or exiting)"));
        }
        if let Some(old) = p.as_ref() {
            match old.state() {
                StreamState::Held => {
                    return Err(VmError::WrongState(
                        "holding its output after a failed stream (release it first)",
                    ))
                }
                s if s.is_active() => {
                    return Err(VmError::WrongState(
                        "already protected (unprotect it first)",
                    ))
                }
                _ => {}
            }
        }
        // Stopped or failed: the old stream's threads are done.
        cfg.events = self.shared.events.clone();
        *p = Some(Protection::start(vm, peer, cfg));
        Ok(())
    }

    /// `protect`, then waits until the peer took the stream (syncing) or refused it (the
    /// error says why), at most the connect and Hello timeouts.
    pub fn protect_and_wait(
        &self,
        peer: &str,
        cfg: ProtectConfig,
    ) -> Result<ProtectStatus, VmError> {
        let limit = cfg.connect_timeout
            + cfg.ack_timeout.max(Duration::from_secs(10))
            + Duration::from_secs(1);
        self.protect(peer, cfg)?;
        let t0 = std::time::Instant::now();
        loop {
            let st = lock(&self.shared.protection)
                .as_ref()
                .map(Protection::status);
            let Some(st) = st else {
                return Err(VmError::Control("the stream went away".into()));
            };
            match st.state {
                StreamState::Connecting if t0.elapsed() < limit => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                StreamState::Connecting => {
                    return Err(VmError::Control(format!(
                        "protect: {peer} did not take the stream within {limit:?}"
                    )))
                }
                StreamState::Failed => {
                    return Err(VmError::Control(format!(
                        "protect: {}",
                        st.error.unwrap_or_else(|| "failed".into())
                    )))
                }
                _ => return Ok(st),
            }
        }
    }

    /// Ends replication deliberately: the peer is told its copy is stale and the output flows
    /// once it confirms; without its confirmation the output stays held (the supervisor then
    /// decides). The stream's last status.
    pub fn unprotect(&self) -> Result<ProtectStatus, VmError> {
        let p = lock(&self.shared.protection).take();
        let Some(p) = p else {
            return Err(VmError::Control("this VM is not protected".into()));
        };
        if p.state() == StreamState::Held {
            let st = p.status();
            *lock(&self.shared.protection) = Some(p);
            return Err(VmError::Control(format!(
                "the stream failed and holds the output ({}); only `release` lets it flow",
                st.error.unwrap_or_default()
            )));
        }
        let st = p.end("unprotected on request");
        if st.state == StreamState::Held {
            // Kept so `release` can find it.
            *lock(&self.shared.protection) = Some(Protection::held(
                self.vm()?,
                &st.peer,
                st.error.clone().unwrap_or_default(),
                self.shared.events.clone(),
            ));
        }
        Ok(st)
    }

    /// A planned switchover of a protected VM: the last checkpoint leaves the guest paused, the
    /// peer acks it and takes the Handover, and the machine ends (`ExitReason::HandedOver`;
    /// the peer resumes the VM). A failure leaves the stream held with the guest paused: the
    /// supervisor settles it (`release` resumes the guest). Refused unless protected.
    pub fn handover(&self, reason: &str) -> Result<ProtectStatus, VmError> {
        // The stream stays in its slot throughout: `info` shows it handing over, a `protect`
        // (a restarted havmsd adopting this engine) is refused, a guest reset finds it.
        {
            let p = lock(&self.shared.protection);
            let Some(p) = p.as_ref() else {
                return Err(VmError::Control("this VM is not protected".into()));
            };
            p.begin_handover(reason).map_err(VmError::Control)?;
        }
        let deadline = Instant::now() + HANDOVER_WAIT;
        let st = loop {
            let done = {
                let p = lock(&self.shared.protection);
                match p.as_ref() {
                    Some(p) if p.thread_done() => Some(p.status()),
                    Some(_) => None,
                    // Taken by a guest reset or the machine's end meanwhile.
                    None => {
                        return Err(VmError::Control(
                            "the switchover was overtaken by the guest's reset or end".into(),
                        ))
                    }
                }
            };
            if let Some(st) = done {
                break st;
            }
            if Instant::now() >= deadline {
                return Err(VmError::Control(format!(
                    "the switchover did not finish within {HANDOVER_WAIT:?}"
                )));
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        if st.state == StreamState::HandedOver {
            let to = format!("to {} at epoch {}", st.peer, st.acked);
            log::info!("switchover: the VM is handed over {to}; this engine ends");
            drop(lock(&self.shared.protection).take());
            let mut cur = lock(&self.shared.current);
            cur.stopping = true;
            if let Some(vm) = &cur.vm {
                vm.end_handed_over(to);
            }
        } else {
            log::error!(
                "switchover: {}; the guest stays paused and its output held until the \
                 supervisor decides",
                st.error.clone().unwrap_or_default()
            );
        }
        Ok(st)
    }

    /// Hashes memory and disks in the checkpoint of `epoch` (a check of the replication; see
    /// `replication::verify`). The epoch that will be hashed.
    pub fn verify_at(&self, epoch: u64) -> Result<u64, VmError> {
        match lock(&self.shared.protection).as_ref() {
            Some(p) if p.is_active() => Ok(p.verify_at(epoch)),
            _ => Err(VmError::Control("this VM is not protected".into())),
        }
    }

    /// The supervisor's decision after a failed stream: the output may flow (the peer
    /// confirmed its copy is stale, or it is dead). A running stream is cut first.
    pub fn release(&self) -> Result<ProtectStatus, VmError> {
        let p = lock(&self.shared.protection).take();
        match p {
            Some(p) => Ok(p.release()),
            None => Err(VmError::Control("this VM is not protected".into())),
        }
    }

    /// Ends the machine: the current VM stops and no reset reboots it any more; `run`
    /// returns `ExitReason::Shutdown`.
    pub fn shutdown(&self) {
        let mut cur = lock(&self.shared.current);
        cur.stopping = true;
        if let Some(vm) = &cur.vm {
            vm.shutdown();
        }
    }

    /// Types `bytes` into the current guest's console; 0 while it reboots (try again).
    pub fn serial_input(&self, bytes: &[u8]) -> usize {
        self.vm().map_or(0, |vm| vm.serial_input(bytes))
    }

    /// Turns KVM dirty logging on or off for the current VM and every later boot. After a
    /// reboot the new VM has no previous capture: take a full snapshot before increments.
    pub fn set_dirty_log(&self, on: bool) -> Result<(), VmError> {
        if let Some(spec) = lock(&self.shared.spec).as_mut() {
            spec.dirty_log = on;
        }
        self.vm()?.set_dirty_log(on)
    }

    /// Starts the current VM (if not started yet) and runs the machine until it ends: a power
    /// off, `shutdown`, an error, or a reset with `OnReset::Exit`. Every other reset reboots.
    /// The console is closed when it returns (socket clients get the last output first).
    pub fn run(&self) -> ExitReason {
        let reason = self.run_boots();
        // The guest ended (powered off, stopped on request, reset with `--no-reboot`): its
        // replica must be discarded, never taken over. An engine that failed under a running
        // guest is another matter: the guest did not end, and its last committed checkpoint on
        // the peer is the best copy there is. The stream is only cut (the Protection's drop);
        // the output of the open epoch dies with the VM, and the peer may take it over.
        let p = lock(&self.shared.protection).take();
        if let Some(p) = p {
            if let ExitReason::Error(e) = &reason {
                log::warn!(
                    "replication: the engine failed ({e}); the stream to {} is cut, the peer's \
                     copy stays current",
                    p.status().peer
                );
                drop(p);
            } else if p.state().is_active() {
                let st = p.end_vm(&reason.to_string());
                log::info!(
                    "replication: told {} the VM ended ({:?})",
                    st.peer,
                    st.state
                );
            }
        }
        lock(&self.shared.console).close();
        self.shared.events.publish(Event::Exited {
            reason: reason.to_string(),
            code: reason.exit_code(),
        });
        reason
    }

    fn run_boots(&self) -> ExitReason {
        let mut vm = match self.vm() {
            Ok(vm) => vm,
            Err(e) => return ExitReason::Error(e.to_string()),
        };
        loop {
            if vm.is_created() {
                if let Err(e) = vm.start() {
                    return ExitReason::Error(format!("starting the vCPUs: {e}"));
                }
            }
            let reason = vm.wait();
            if reason != ExitReason::Reset || self.shared.on_reset == OnReset::Exit {
                return reason;
            }
            if lock(&self.shared.current).stopping {
                return ExitReason::Shutdown;
            }
            vm = match self.reboot(vm) {
                Ok(vm) => vm,
                Err(r) => return r,
            };
        }
    }

    /// Replaces the ended `old` VM by a freshly built one, returned not started.
    fn reboot(&self, old: Vm) -> Result<Vm, ExitReason> {
        let n = self.boots() + 1;
        log::info!("guest reset: rebooting (boot {n})");
        self.shared.events.publish(Event::GuestReset { boot: n });
        // The stream of the old VM ends here (the new one needs a new full copy: protect
        // again); it holds the old VM, which must be released before the next is built. Unless
        // the peer confirms its copy is stale, the new boot must not be seen (the peer may
        // still take over the old guest).
        let protection = lock(&self.shared.protection).take();
        let mut hold_next: Option<(String, String)> = None;
        if let Some(p) = protection {
            let st = if p.state().is_active() {
                p.end("guest reset")
            } else {
                let st = p.status();
                drop(p);
                st
            };
            if st.state == StreamState::Held {
                log::warn!(
                    "guest reset: {} did not confirm the end of the stream; the next boot's \
                     output is held until the supervisor releases it",
                    st.peer
                );
                hold_next = Some((st.peer.clone(), st.error.unwrap_or_default()));
            } else {
                log::info!(
                    "guest reset: replication to {} ended (protect the VM again)",
                    st.peer
                );
            }
        }
        let console = lock(&self.shared.console);
        console.detach();
        lock(&self.shared.current).vm = None;
        // Wait for every other holder: building the next VM while the old one still has the
        // taps open fails (EBUSY on a persistent tap) and would hold two guests' memory.
        let mut old = old;
        while let Err(still) = old.release(RELEASE_TIMEOUT) {
            log::warn!(
                "the reset VM is still in use after {RELEASE_TIMEOUT:?} (an API request or a \
                 replication stream holds it); waiting"
            );
            old = still;
        }
        let spec = lock(&self.shared.spec).clone().ok_or_else(|| {
            ExitReason::Error(
                "guest reset: cannot reboot: the snapshot this VM was restored from names no kernel"
                    .into(),
            )
        })?;
        let vm = Vm::create_on(&spec, &console).map_err(|e| {
            ExitReason::Error(format!(
                "guest reset: rebuilding the VM for boot {n}: {}",
                crate::error_chain(&e)
            ))
        })?;
        console.attach(&vm);
        drop(console);
        let mut cur = lock(&self.shared.current);
        cur.vm = Some(vm.clone());
        if cur.stopping {
            // Shut down while it was being built: it never runs, `info` shows it ended.
            vm.shutdown();
            return Err(ExitReason::Shutdown);
        }
        self.shared.boots.store(n, Ordering::SeqCst);
        if let Some((peer, why)) = hold_next {
            *lock(&self.shared.protection) = Some(Protection::held(
                vm.clone(),
                &peer,
                format!("after a guest reset the peer did not confirm: {why}"),
                self.shared.events.clone(),
            ));
        }
        Ok(vm)
    }
}

/// The longest a switchover may take: the last epoch's ack and the Handover's answer, each
/// bounded by the stream's own timeouts, with room to spare.
const HANDOVER_WAIT: Duration = Duration::from_secs(60);

/// `Machine::from_replica` failed: the replica and the console are handed back.
pub struct FromReplicaError {
    pub error: crate::replication::replica::ReplicaError,
    pub replica: Box<crate::replication::replica::Replica>,
    pub console: Console,
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::tempdir::TempDir;

    #[test]
    fn a_machine_that_cannot_boot_names_the_kernel_and_closes_its_console() {
        let dir = TempDir::new_with_prefix("/tmp/havms-machine-").unwrap();
        let sock = dir.as_path().join("console.sock");
        let mut spec = VmSpec::new(dir.as_path().join("no-such-vmlinuz"));
        spec.serial = SerialSpec::Socket(sock.clone());
        let e = Machine::boot(spec, OnReset::Reboot)
            .err()
            .expect("booting a missing kernel");
        assert!(
            crate::error_chain(&e).contains("no-such-vmlinuz"),
            "{}",
            crate::error_chain(&e)
        );
        assert!(
            !sock.exists(),
            "the console socket outlived the failed boot"
        );
    }

    #[test]
    fn info_without_boots_reads_as_one_boot() {
        let old =
            r#"{"state":"running","cpus":1,"memory_mib":256,"cmdline":"c","dirty_log":false}"#;
        let info: VmInfo = serde_json::from_str(old).unwrap();
        assert_eq!(info.boots, 1);
    }
}
