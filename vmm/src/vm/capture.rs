//! State capture of a paused `Vm`: full snapshots, dirty-page increments and the memory of a
//! capture chain for restore.

use std::path::Path;

use super::{CaptureBase, Control, RunState, Vm, VmError, VCPU_ACK_TIMEOUT};
use crate::devices::serial::SerialSnapshot;
use crate::kvm::vcpu::VcpuCmd;
use crate::memory::{self, GuestMem};
use crate::spec::DiskSpec;
use crate::state::increment::{self, PageDiff};
use crate::state::snapshot::{Snapshot, VmStateBox, FORMAT_VERSION, MEMORY_FILE};
use crate::state::vm as vmstate;
use crate::virtio::manager::DisksObserver;
use std::sync::mpsc::channel;

impl Vm {
    /// Captures the full state (vCPUs, VM, devices, memory) into `dir`. The VM must be paused.
    pub fn snapshot(&self, dir: &Path) -> Result<(), VmError> {
        self.refuse_ended()?;
        let mut c = self.ctl();
        if c.last_capture == Some(CaptureBase::Stream) {
            // A capture clears the dirty log the replication stream depends on.
            return Err(VmError::WrongState("protected (unprotect it first)"));
        }
        if c.state != RunState::Paused {
            return Err(VmError::WrongState("not paused (pause it first)"));
        }
        let snap = self.capture_state(&c)?;
        snap.write(dir)?;
        memory::save(&self.inner.mem, &dir.join(MEMORY_FILE))?;
        if c.dirty_log {
            // This capture is the base the next increment is relative to.
            memory::take_dirty_bitmaps(&self.inner.kvm.fd, &self.inner.mem)?;
        }
        let _ = std::fs::remove_file(dir.join(increment::DIFF_FILE));
        let _ = std::fs::remove_file(dir.join(increment::PARENT_FILE));
        c.last_capture = Some(CaptureBase::Dir(dir.to_path_buf()));
        Ok(())
    }

    /// Starts a capture stream (replication): dirty tracking on, both logs cleared, so the next
    /// `capture_increment` holds every page written from this moment. The caller then copies
    /// all of guest memory while the guest runs (`memory()`); a page the guest changes during
    /// that copy is dirty again and comes with the first increment, so base + increments is
    /// consistent with the state each increment captures. Works paused or running.
    pub fn start_stream(&self) -> Result<(), VmError> {
        self.refuse_ended()?;
        let mut c = self.ctl();
        if matches!(c.state, RunState::Ended) {
            return Err(VmError::WrongState("ended"));
        }
        if !c.dirty_log {
            memory::register(&self.inner.kvm.fd, &self.inner.mem, true)?;
            c.dirty_log = true;
        }
        memory::take_dirty_bitmaps(&self.inner.kvm.fd, &self.inner.mem)?;
        c.last_capture = Some(CaptureBase::Stream);
        Ok(())
    }

    /// Turns KVM dirty logging on or off (re-registers the memory slots). Turning it on clears
    /// both logs; take a full snapshot next, then increments.
    pub fn set_dirty_log(&self, on: bool) -> Result<(), VmError> {
        let mut c = self.ctl();
        if c.last_capture == Some(CaptureBase::Stream) {
            return Err(VmError::WrongState("protected (unprotect it first)"));
        }
        memory::register(&self.inner.kvm.fd, &self.inner.mem, on)?;
        if on {
            memory::take_dirty_bitmaps(&self.inner.kvm.fd, &self.inner.mem)?;
        }
        c.dirty_log = on;
        c.last_capture = None;
        Ok(())
    }

    /// Captures vCPU/VM/device state and the pages written since the previous capture, into
    /// memory. The VM must be paused; resume it right after, and write the result with
    /// `write_increment` while the guest runs.
    pub fn capture_increment(&self) -> Result<(Snapshot, PageDiff), VmError> {
        self.refuse_ended()?;
        let c = self.ctl();
        if c.state != RunState::Paused {
            return Err(VmError::WrongState("not paused (pause it first)"));
        }
        if !c.dirty_log || c.last_capture.is_none() {
            return Err(VmError::WrongState(
                "not tracking dirty pages from a previous capture (enable the dirty log, then take a full snapshot)",
            ));
        }
        let snap = self.capture_state(&c)?;
        let diff = increment::collect(&self.inner.kvm.fd, &self.inner.mem)?;
        Ok((snap, diff))
    }

    /// Writes an increment captured by `capture_increment` to `dir`, naming the previous
    /// capture as its parent.
    pub fn write_increment(
        &self,
        dir: &Path,
        snap: &Snapshot,
        diff: &PageDiff,
    ) -> Result<(), VmError> {
        let mut c = self.ctl();
        let parent = match c.last_capture.clone() {
            Some(CaptureBase::Dir(d)) => d,
            Some(CaptureBase::Stream) => {
                return Err(VmError::WrongState(
                    "streaming its captures (an increment file needs a snapshot directory as its parent)",
                ))
            }
            None => return Err(VmError::WrongState("without a previous capture")),
        };
        if parent == dir {
            return Err(VmError::Control(format!(
                "increment directory {} is its own parent",
                dir.display()
            )));
        }
        snap.write(dir)?;
        increment::write(diff, &dir.join(increment::DIFF_FILE))?;
        let _ = std::fs::remove_file(dir.join(MEMORY_FILE));
        std::fs::write(
            dir.join(increment::PARENT_FILE),
            parent.display().to_string(),
        )
        .map_err(|e| VmError::Control(format!("writing {}: {e}", dir.display())))?;
        c.last_capture = Some(CaptureBase::Dir(dir.to_path_buf()));
        Ok(())
    }

    /// Reports every completed disk write or discard, as (disk index, change), to `observer`
    /// (replication: the epoch's disk changes); None stops reporting. The report comes after
    /// the change reached the image and before the guest sees it complete, from the vCPU
    /// thread that ran the request, so once the VM is paused every change is reported.
    pub fn set_disk_observer(&self, observer: Option<DisksObserver>) {
        self.inner.devices.virtio.set_disk_observer(observer);
    }

    /// The VM's disks, in device order (what disk index N of a change means).
    pub fn disks(&self) -> &[DiskSpec] {
        &self.inner.shape.virtio.disks
    }

    /// Ends a capture stream (replication stopped): snapshots are allowed again; dirty logging
    /// stays on (a full snapshot is the next base).
    pub fn stop_stream(&self) {
        let mut c = self.ctl();
        if c.last_capture == Some(CaptureBase::Stream) {
            c.last_capture = None;
        }
    }

    /// Whether a replication stream captures this VM (snapshots, dirty-log changes and manual
    /// gate commands are refused meanwhile).
    pub fn is_streaming(&self) -> bool {
        self.ctl().last_capture == Some(CaptureBase::Stream)
    }

    /// The vCPU, VM and device state of the paused VM (no memory): what a replica needs with
    /// each epoch.
    pub fn capture_device_state(&self) -> Result<Snapshot, VmError> {
        self.refuse_ended()?;
        let c = self.ctl();
        if c.state != RunState::Paused {
            return Err(VmError::WrongState("not paused (pause it first)"));
        }
        self.capture_state(&c)
    }

    fn refuse_ended(&self) -> Result<(), VmError> {
        if self.has_ended() {
            return Err(VmError::WrongState("ended"));
        }
        Ok(())
    }

    fn capture_state(&self, c: &Control) -> Result<Snapshot, VmError> {
        let mut vcpus = Vec::new();
        for h in &c.handles {
            let (tx, rx) = channel();
            if !h.send(VcpuCmd::Save(tx)) {
                return Err(VmError::Control(format!("vCPU {} thread is gone", h.id)));
            }
            let st = rx
                .recv_timeout(VCPU_ACK_TIMEOUT)
                .map_err(|e| VmError::Control(format!("vCPU {} state: {e}", h.id)))?
                .map_err(VmError::Control)?;
            vcpus.push(st);
        }
        let vm = vmstate::save(&self.inner.kvm.fd)?;
        let serial = {
            let s = self
                .inner
                .devices
                .serial
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            SerialSnapshot::from(&s.state())
        };
        Ok(Snapshot {
            version: FORMAT_VERSION,
            cpus: self.inner.shape.cpus,
            memory_mib: self.inner.shape.memory_mib,
            cmdline: self.inner.shape.cmdline.clone(),
            vcpus,
            vm: VmStateBox(vm),
            serial,
            disks: self.inner.shape.virtio.disks.clone(),
            nets: self.inner.shape.virtio.nets.clone(),
            rng: self.inner.shape.virtio.rng,
            virtio: self.inner.devices.virtio.save_state(),
            kernel: self.inner.shape.kernel.clone(),
            initramfs: self.inner.shape.initramfs.clone(),
        })
    }
}

/// Guest memory of a capture: the full `memory.bin` at the root of its parent chain, mapped
/// copy-on-write, with every increment's pages applied in order.
pub fn restore_memory(dir: &Path, memory_mib: u64) -> Result<GuestMem, VmError> {
    let chain = increment::chain(dir)?;
    let base = &chain[0];
    let mem = memory::create_from_file(memory_mib, &base.join(MEMORY_FILE))?;
    let pages = memory::bytes_of(memory_mib)? / memory::PAGE_SIZE as u64;
    for d in &chain[1..] {
        let diff = increment::read(&d.join(increment::DIFF_FILE), pages)?;
        increment::apply(&mem, &diff)?;
    }
    Ok(mem)
}
