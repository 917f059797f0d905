//! One thread per vCPU. It owns the `VcpuFd`, runs KVM_RUN, hands port/MMIO exits to the devices,
//! and obeys commands (pause, resume, save state, stop) sent over a channel. A command is noticed
//! between two KVM_RUNs; the controller kicks the thread out of KVM_RUN with a real-time signal
//! (whose handler does nothing: the point is the EINTR) until the thread acknowledges.

use std::os::unix::thread::JoinHandleExt;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::{Arc, Once};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_bindings::{
    CpuId, KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{VcpuExit, VcpuFd};
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

use crate::devices::bus::Devices;
use crate::exit::{ExitReason, ExitState};
use crate::state::vcpu::{self as vstate, VcpuState};

pub enum VcpuCmd {
    Pause,
    Resume,
    Save(Sender<Result<VcpuState, String>>),
    Stop,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VcpuAck {
    Paused,
    Resumed,
}

/// A vCPU before its thread starts.
pub struct VcpuRunner {
    pub id: u8,
    pub fd: VcpuFd,
    pub cpuid: CpuId,
    pub msr_list: Arc<Vec<u32>>,
    pub devices: Arc<Devices>,
    pub exit: Arc<ExitState>,
    pub stats: ExitStats,
}

/// Counts of vCPU exits by kind, logged when the vCPU stops (cheap, and the first thing to look
/// at when a guest hangs).
#[derive(Debug, Default, Clone, Copy)]
pub struct ExitStats {
    pub io: u64,
    pub mmio: u64,
    pub intr: u64,
    pub other: u64,
}

/// The controller's end of a running vCPU thread.
pub struct VcpuHandle {
    pub id: u8,
    tx: Sender<VcpuCmd>,
    thread: Option<JoinHandle<()>>,
}

fn kick_signal() -> i32 {
    SIGRTMIN()
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Installs the no-op kick handler once per process (without SA_RESTART, so KVM_RUN returns
/// EINTR).
fn install_kick_handler() -> Result<(), String> {
    static ONCE: Once = Once::new();
    let mut res = Ok(());
    ONCE.call_once(|| {
        res = register_signal_handler(kick_signal(), on_kick)
            .map_err(|e| format!("installing the vCPU kick signal handler: {e}"));
    });
    res
}

impl VcpuHandle {
    pub fn send(&self, cmd: VcpuCmd) -> bool {
        self.tx.send(cmd).is_ok()
    }

    /// Interrupts KVM_RUN on this vCPU's thread.
    pub fn kick(&self) {
        if let Some(t) = &self.thread {
            // SAFETY: the pthread_t belongs to a thread we spawned and have not joined yet (we
            // join only in `join`, which takes the handle), so it is valid.
            unsafe {
                libc::pthread_kill(t.as_pthread_t(), kick_signal());
            }
        }
    }

    pub fn join(&mut self) {
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                log::error!("vCPU {} thread panicked", self.id);
            }
        }
    }
}

impl VcpuRunner {
    /// Starts the thread; it runs the guest at once unless `paused`.
    pub fn spawn(self, acks: Sender<(u8, VcpuAck)>, paused: bool) -> Result<VcpuHandle, String> {
        install_kick_handler()?;
        let (tx, rx) = std::sync::mpsc::channel();
        let id = self.id;
        let thread = std::thread::Builder::new()
            .name(format!("vcpu{id}"))
            .spawn(move || self.run(rx, acks, paused))
            .map_err(|e| format!("spawning vCPU {id} thread: {e}"))?;
        Ok(VcpuHandle {
            id,
            tx,
            thread: Some(thread),
        })
    }

    fn run(mut self, rx: Receiver<VcpuCmd>, acks: Sender<(u8, VcpuAck)>, mut paused: bool) {
        loop {
            // Commands first; block on them while paused or after the VM ended.
            loop {
                let idle = paused || self.exit.get().is_some();
                let cmd = if idle {
                    match rx.recv() {
                        Ok(c) => c,
                        Err(_) => return,
                    }
                } else {
                    match rx.try_recv() {
                        Ok(c) => c,
                        Err(TryRecvError::Empty) => break,
                        Err(TryRecvError::Disconnected) => return,
                    }
                };
                match cmd {
                    VcpuCmd::Pause => {
                        if !paused {
                            self.complete_pending_io();
                            // Tell the guest's kvmclock it was stopped, so its watchdogs do
                            // not report soft lockups after a long pause (fails harmlessly when
                            // the guest does not use kvmclock).
                            let _ = self.fd.kvmclock_ctrl();
                            paused = true;
                        }
                        let _ = acks.send((self.id, VcpuAck::Paused));
                    }
                    VcpuCmd::Resume => {
                        paused = false;
                        let _ = acks.send((self.id, VcpuAck::Resumed));
                    }
                    VcpuCmd::Save(reply) => {
                        let r = vstate::save(self.id, &self.fd, &self.cpuid, &self.msr_list)
                            .map_err(|e| e.to_string());
                        let _ = reply.send(r);
                    }
                    VcpuCmd::Stop => {
                        let rip = self.fd.get_regs().map(|r| r.rip).unwrap_or(0);
                        log::info!(
                            "vCPU {} stopped at rip {rip:#x}, exits {:?}",
                            self.id,
                            self.stats
                        );
                        return;
                    }
                }
            }
            if self.exit.get().is_some() {
                continue;
            }
            self.run_once();
        }
    }

    /// Lets KVM finish an instruction whose I/O we just emulated, without running the guest
    /// further, so the registers we save next include its result.
    fn complete_pending_io(&mut self) {
        self.fd.set_kvm_immediate_exit(1);
        let _ = self.fd.run();
        self.fd.set_kvm_immediate_exit(0);
    }

    fn run_once(&mut self) {
        let id = self.id;
        match self.fd.run() {
            Ok(VcpuExit::IoIn(port, data)) => {
                self.stats.io += 1;
                self.devices.pio_read(port, data)
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                self.stats.io += 1;
                self.devices.pio_write(port, data)
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                self.stats.mmio += 1;
                self.devices.mmio_read(addr, data)
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                self.stats.mmio += 1;
                self.devices.mmio_write(addr, data)
            }
            Ok(VcpuExit::Hlt) => self.stats.other += 1,
            Ok(VcpuExit::Shutdown) => {
                log::info!("vCPU {id}: triple fault / shutdown");
                self.exit.request(ExitReason::Reset);
            }
            Ok(VcpuExit::SystemEvent(kind, _)) => {
                let r = match kind {
                    KVM_SYSTEM_EVENT_SHUTDOWN => ExitReason::PowerOff,
                    KVM_SYSTEM_EVENT_RESET => ExitReason::Reset,
                    KVM_SYSTEM_EVENT_CRASH => ExitReason::Error(format!("vCPU {id}: guest crash")),
                    k => ExitReason::Error(format!("vCPU {id}: system event {k}")),
                };
                self.exit.request(r);
            }
            Ok(VcpuExit::FailEntry(reason, cpu)) => self.exit.request(ExitReason::Error(format!(
                "vCPU {id}: KVM entry failed, hardware reason {reason:#x} on cpu {cpu}"
            ))),
            Ok(VcpuExit::InternalError) => self
                .exit
                .request(ExitReason::Error(format!("vCPU {id}: KVM internal error"))),
            Ok(other) => {
                self.stats.other += 1;
                log::warn!("vCPU {id}: unhandled exit {other:?}");
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => self.stats.intr += 1,
            Err(e) => self
                .exit
                .request(ExitReason::Error(format!("vCPU {id}: KVM_RUN: {e}"))),
        }
    }
}

/// Sends `make()` to every vCPU and kicks them until each acknowledged with `want` or `timeout`
/// passed.
pub fn broadcast(
    vcpus: &[VcpuHandle],
    acks: &Receiver<(u8, VcpuAck)>,
    make: impl Fn() -> VcpuCmd,
    want: VcpuAck,
    timeout: Duration,
) -> Result<(), String> {
    // Stale acks from an earlier, timed-out round must not count for this one.
    while acks.try_recv().is_ok() {}
    let mut pending: Vec<u8> = Vec::new();
    for v in vcpus {
        if v.send(make()) {
            pending.push(v.id);
        }
    }
    let start = Instant::now();
    while !pending.is_empty() {
        if want == VcpuAck::Paused {
            for v in vcpus.iter().filter(|v| pending.contains(&v.id)) {
                v.kick();
            }
        }
        match acks.recv_timeout(Duration::from_millis(1)) {
            Ok((id, a)) if a == want => pending.retain(|p| *p != id),
            Ok(_) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return Err("vCPU threads are gone".into()),
        }
        if start.elapsed() > timeout {
            return Err(format!(
                "vCPUs {pending:?} did not answer within {timeout:?}"
            ));
        }
    }
    Ok(())
}
