//! The life of a built `Vm`: start the vCPU threads, pause and resume them (devices around
//! them), console input, `info`, asking it to end and waiting until it has.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{RunState, Vm, VmError, VmInfo, VCPU_ACK_TIMEOUT};
use crate::devices::serial_socket::InputSink;
use crate::exit::ExitReason;
use crate::kvm::vcpu::{broadcast, VcpuAck, VcpuCmd};
use crate::memory::GuestMem;
use crate::virtio::net::NetOutput;

impl Vm {
    /// Starts the vCPU threads.
    pub fn start(&self) -> Result<(), VmError> {
        let mut c = self.ctl();
        if c.state != RunState::Created {
            return Err(VmError::WrongState("already started"));
        }
        let runners = std::mem::take(&mut c.runners);
        for r in runners {
            let h = r.spawn(c.ack_tx.clone(), false).map_err(VmError::Control)?;
            c.handles.push(h);
        }
        c.state = RunState::Running;
        Ok(())
    }

    /// Whether `start` has not run yet.
    pub fn is_created(&self) -> bool {
        self.ctl().state == RunState::Created
    }

    /// Parks every vCPU between two KVM_RUNs. Returns how long that took.
    pub fn pause(&self) -> Result<Duration, VmError> {
        if self.inner.exit.get().is_some() {
            return Err(VmError::WrongState("ended"));
        }
        let mut c = self.ctl();
        match c.state {
            RunState::Running => {}
            RunState::Paused => return Ok(Duration::ZERO),
            RunState::Created => return Err(VmError::WrongState("not started")),
            RunState::Ended => return Err(VmError::WrongState("ended")),
        }
        let t = Instant::now();
        if let Err(e) = broadcast(
            &c.handles,
            &c.acks,
            || VcpuCmd::Pause,
            VcpuAck::Paused,
            VCPU_ACK_TIMEOUT,
        ) {
            // Some vCPUs parked, some did not (one busy in a long disk flush, say): the ones
            // that parked must run again, or the guest freezes while `info` says running. A
            // late one finds Pause then Resume queued and goes on too.
            for h in &c.handles {
                h.send(VcpuCmd::Resume);
            }
            log::warn!("pause failed ({e}); the vCPUs were told to run on");
            return Err(VmError::Control(format!("pause: {e}")));
        }
        // Devices stop touching guest memory only after no vCPU can kick them any more.
        self.inner.devices.virtio.pause();
        c.state = RunState::Paused;
        Ok(t.elapsed())
    }

    pub fn resume(&self) -> Result<(), VmError> {
        let mut c = self.ctl();
        match c.state {
            RunState::Paused => {}
            RunState::Running => return Ok(()),
            RunState::Created => return Err(VmError::WrongState("not started")),
            RunState::Ended => return Err(VmError::WrongState("ended")),
        }
        self.inner.devices.virtio.resume();
        broadcast(
            &c.handles,
            &c.acks,
            || VcpuCmd::Resume,
            VcpuAck::Resumed,
            VCPU_ACK_TIMEOUT,
        )
        .map_err(VmError::Control)?;
        c.state = RunState::Running;
        Ok(())
    }

    /// Feeds bytes to the guest's serial console (as if typed); bytes beyond the UART's FIFO
    /// are dropped, so callers pace long input.
    pub fn serial_input(&self, bytes: &[u8]) -> usize {
        let mut s = self
            .inner
            .devices
            .serial
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        s.enqueue_raw_bytes(bytes).unwrap_or(0)
    }

    /// A console input sink feeding this VM. Weak: a console that outlives the guest must not
    /// keep its memory alive; once the VM is gone the sink says so (None).
    pub fn input_sink(&self) -> InputSink {
        let weak = Arc::downgrade(&self.inner);
        Box::new(move |b: &[u8]| weak.upgrade().map(|inner| Vm { inner }.serial_input(b)))
    }

    /// The output gates of the NICs, in `VmSpec::nets` order (replication releases packets
    /// per committed epoch through them).
    pub fn net_outputs(&self) -> &[NetOutput] {
        self.inner.devices.virtio.net_outputs()
    }

    pub fn info(&self) -> VmInfo {
        let c = self.ctl();
        let state = match (c.state, self.inner.exit.get()) {
            (_, Some(r)) => format!("ended ({r})"),
            (RunState::Created, _) => "created".into(),
            (RunState::Running, _) => "running".into(),
            (RunState::Paused, _) => "paused".into(),
            (RunState::Ended, _) => "ended".into(),
        };
        VmInfo {
            state,
            cpus: self.inner.shape.cpus,
            memory_mib: self.inner.shape.memory_mib,
            cmdline: self.inner.shape.cmdline.clone(),
            dirty_log: c.dirty_log,
            boots: 1,
            nets: self
                .net_outputs()
                .iter()
                .map(|o| serde_json::to_value(o.stats()).unwrap_or_default())
                .collect(),
            replication: None,
        }
    }

    /// Asks the VM to end; `wait` returns `ExitReason::Shutdown`.
    pub fn shutdown(&self) {
        self.inner.exit.request(ExitReason::Shutdown);
    }

    /// Ends the VM after a planned switchover (`to`: "to PEER at epoch N"): the peer resumes
    /// it; `wait` returns `ExitReason::HandedOver`.
    pub fn end_handed_over(&self, to: String) {
        self.inner.exit.request(ExitReason::HandedOver(to));
    }

    /// The guest memory (for increments and checks by the caller).
    pub fn memory(&self) -> &GuestMem {
        &self.inner.mem
    }

    /// Blocks until the VM ends, stops the vCPU threads and returns why it ended.
    pub fn wait(&self) -> ExitReason {
        let reason = self
            .inner
            .exit
            .wait(None)
            .unwrap_or_else(|| ExitReason::Error("exit latch returned nothing".into()));
        let mut c = self.ctl();
        for h in &c.handles {
            h.send(VcpuCmd::Stop);
            h.kick();
        }
        for h in c.handles.iter_mut() {
            h.join();
        }
        c.state = RunState::Ended;
        reason
    }

    /// Drops this handle once it is the last one (other holders, e.g. an API request in
    /// flight or a replication stream, finish within `timeout`), so the guest's memory, KVM VM
    /// and device backends (taps, disk files) are released before a reboot opens them again.
    /// Gives the handle back when others still hold the VM at the deadline.
    pub fn release(self, timeout: Duration) -> Result<(), Vm> {
        let t0 = Instant::now();
        while Arc::strong_count(&self.inner) > 1 {
            if t0.elapsed() > timeout {
                return Err(self);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(())
    }

    /// Whether the VM has ended (or is ending: the guest reset or powered off, or shutdown
    /// was asked) even if `wait` has not collected it yet. Captures of such a VM are refused:
    /// they would save a guest that is no longer there.
    pub fn has_ended(&self) -> bool {
        self.inner.exit.get().is_some() || self.ctl().state == RunState::Ended
    }
}

impl crate::state::Pausable for Vm {
    type Error = VmError;
    fn pause(&self) -> Result<(), VmError> {
        Vm::pause(self).map(|_| ())
    }
    fn resume(&self) -> Result<(), VmError> {
        Vm::resume(self)
    }
}
