//! The virtio-mmio version 2 ("modern") transport: the 4 KiB register window the guest driver
//! talks to, with the device status state machine, feature negotiation, virtqueue setup,
//! QueueNotify dispatch and InterruptStatus/ACK, in front of one `VirtioDevice`.
//!
//! The core maps the window at `base` and forwards MMIO exits as `read(addr - base, data)` /
//! `write(addr - base, data)`. QueueNotify is handled synchronously in the calling vCPU thread,
//! so when every vCPU is paused no request is half done: the queue positions in the saved state
//! are all there is to "in flight".

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE as ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER as DRIVER,
    VIRTIO_CONFIG_S_DRIVER_OK as DRIVER_OK, VIRTIO_CONFIG_S_FAILED as FAILED,
    VIRTIO_CONFIG_S_FEATURES_OK as FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET as NEEDS_RESET,
    VIRTIO_F_VERSION_1,
};
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::EventFd;

use super::device::{check_queues, DeviceState, StateError, VirtioDevice};
use super::interrupt::{Interrupt, InterruptKind};
use super::queue_state::{max_size_matches, restore_queue, save_queues, QueueStateSer};
use super::VirtioMem;

/// "virt" in little endian.
pub const MMIO_MAGIC: u32 = 0x7472_6976;
/// The modern (virtio 1.0+) register layout.
pub const MMIO_VERSION: u32 = 2;
/// No PCI-style vendor for mmio devices; Linux ignores the value.
pub const VENDOR_ID: u32 = 0;
/// Offset of QueueNotify, for a core that wants a KVM ioeventfd there (datamatch = queue index).
pub const QUEUE_NOTIFY_OFFSET: u64 = 0x50;
/// Start of the device configuration space.
pub const CONFIG_SPACE_OFFSET: u64 = 0x100;

const VERSION_1: u64 = 1 << VIRTIO_F_VERSION_1;

/// Transport registers plus the device's own state: everything needed to rebuild the device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MmioState {
    pub device_type: u32,
    pub status: u32,
    pub features_select: u32,
    pub acked_features_select: u32,
    pub queue_select: u32,
    pub acked_features: u64,
    pub interrupt_status: u32,
    pub config_generation: u32,
    pub queues: Vec<QueueStateSer>,
    pub device: DeviceState,
}

/// One virtio-mmio device window.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: VirtioMem,
    interrupt: Arc<Interrupt>,
    status: u32,
    features_select: u32,
    acked_features_select: u32,
    queue_select: u32,
    acked_features: u64,
    config_generation: u32,
    paused: bool,
    /// Work that arrived while paused: queue notifications (bit per queue) and backend events.
    missed_queues: u64,
    missed_backend: bool,
}

impl MmioTransport {
    /// Wraps `device`; `mem` is the guest memory its queues and buffers live in.
    pub fn new(device: Box<dyn VirtioDevice>, mem: VirtioMem) -> std::io::Result<Self> {
        Ok(MmioTransport {
            device,
            mem,
            interrupt: Arc::new(Interrupt::new()?),
            status: 0,
            features_select: 0,
            acked_features_select: 0,
            queue_select: 0,
            acked_features: 0,
            config_generation: 0,
            paused: false,
            missed_queues: 0,
            missed_backend: false,
        })
    }

    /// The kernel argument announcing a device window:
    /// `virtio_mmio.device=4K@0xd0000000:5`.
    pub fn cmdline_arg(base: u64, size: u64, irq: u32) -> String {
        let size = if size.is_multiple_of(1 << 20) {
            format!("{}M", size >> 20)
        } else if size.is_multiple_of(1024) {
            format!("{}K", size >> 10)
        } else {
            size.to_string()
        };
        format!("virtio_mmio.device={size}@{base:#x}:{irq}")
    }

    /// The eventfd to register with KVM as the irqfd of this device's IRQ line.
    pub fn interrupt_eventfd(&self) -> &EventFd {
        self.interrupt.eventfd()
    }

    pub fn interrupt(&self) -> &Arc<Interrupt> {
        &self.interrupt
    }

    pub fn device(&self) -> &dyn VirtioDevice {
        self.device.as_ref()
    }

    pub fn device_mut(&mut self) -> &mut dyn VirtioDevice {
        self.device.as_mut()
    }

    /// The device status register (VIRTIO_CONFIG_S_* bits).
    pub fn status(&self) -> u32 {
        self.status
    }

    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }

    /// The host fd the event loop should watch for this device (tap for net), if any.
    pub fn backend_fd(&self) -> Option<std::os::fd::RawFd> {
        self.device.backend_fd()
    }

    /// Called by the event loop when `backend_fd()` became readable.
    pub fn process_backend_event(&mut self) {
        if self.paused {
            self.missed_backend = true;
        } else if self.device.is_activated() {
            self.device.process_backend();
        }
    }

    /// Stops the device from touching guest memory (state capture in progress). Work that
    /// arrives meanwhile is remembered and done on `resume`.
    pub fn pause(&mut self) {
        self.paused = true;
    }

    pub fn resume(&mut self) {
        self.paused = false;
        let missed = std::mem::take(&mut self.missed_queues);
        for index in 0..64 {
            if missed & (1 << index) != 0 {
                self.notify(index);
            }
        }
        if std::mem::take(&mut self.missed_backend) {
            self.process_backend_event();
        }
    }

    fn has(&self, set: u32, clear: u32) -> bool {
        self.status & (set | clear) == set
    }

    fn selected_queue(&self) -> Option<&Queue> {
        self.device.queues().get(self.queue_select as usize)
    }

    /// Applies `f` to the selected queue, only while the driver is setting queues up.
    fn update_queue(&mut self, what: &str, f: impl FnOnce(&mut Queue)) {
        if !self.has(FEATURES_OK, DRIVER_OK | FAILED | NEEDS_RESET) {
            log::warn!(
                "virtio-{}: {what} write in device status {:#x} ignored",
                self.device.kind(),
                self.status
            );
            return;
        }
        let sel = self.queue_select as usize;
        match self.device.queues_mut().get_mut(sel) {
            Some(q) => f(q),
            None => log::warn!(
                "virtio-{}: {what} write for queue {sel} which does not exist",
                self.device.kind()
            ),
        }
    }

    /// Register read at `offset` from the window base.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE_OFFSET {
            self.device.read_config(offset - CONFIG_SPACE_OFFSET, data);
            return;
        }
        if data.len() != 4 {
            log::warn!(
                "virtio-{}: {}-byte register read at {offset:#x} (registers are 32-bit)",
                self.device.kind(),
                data.len()
            );
            data.fill(0);
            return;
        }
        let v = match offset {
            0x00 => MMIO_MAGIC,
            0x04 => MMIO_VERSION,
            0x08 => self.device.device_type(),
            0x0c => VENDOR_ID,
            0x10 => {
                let features = self.device.avail_features() | VERSION_1;
                match self.features_select {
                    0 => features as u32,
                    1 => (features >> 32) as u32,
                    _ => 0,
                }
            }
            0x34 => self.selected_queue().map_or(0, |q| u32::from(q.max_size())),
            0x38 => self.selected_queue().map_or(0, |q| u32::from(q.size())),
            0x44 => self.selected_queue().map_or(0, |q| u32::from(q.ready())),
            0x60 => self.interrupt.status(),
            0x70 => self.status,
            0x80 => self.selected_queue().map_or(0, |q| q.desc_table() as u32),
            0x84 => self
                .selected_queue()
                .map_or(0, |q| (q.desc_table() >> 32) as u32),
            0x90 => self.selected_queue().map_or(0, |q| q.avail_ring() as u32),
            0x94 => self
                .selected_queue()
                .map_or(0, |q| (q.avail_ring() >> 32) as u32),
            0xa0 => self.selected_queue().map_or(0, |q| q.used_ring() as u32),
            0xa4 => self
                .selected_queue()
                .map_or(0, |q| (q.used_ring() >> 32) as u32),
            0xfc => self.config_generation,
            _ => {
                log::warn!(
                    "virtio-{}: read of unknown register {offset:#x}",
                    self.device.kind()
                );
                0
            }
        };
        data.copy_from_slice(&v.to_le_bytes());
    }

    /// Register write at `offset` from the window base.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE_OFFSET {
            if self.has(DRIVER, FAILED | NEEDS_RESET) {
                self.device.write_config(offset - CONFIG_SPACE_OFFSET, data);
            } else {
                log::warn!(
                    "virtio-{}: config write before the driver is ready ignored",
                    self.device.kind()
                );
            }
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            log::warn!(
                "virtio-{}: {}-byte register write at {offset:#x} (registers are 32-bit)",
                self.device.kind(),
                data.len()
            );
            return;
        };
        let v = u32::from_le_bytes(bytes);
        match offset {
            0x14 => self.features_select = v,
            0x20 => self.ack_features(v),
            0x24 => self.acked_features_select = v,
            0x30 => self.queue_select = v,
            0x38 => self.update_queue("QueueNum", |q| q.set_size(v as u16)),
            0x44 => self.update_queue("QueueReady", |q| q.set_ready(v == 1)),
            0x50 => self.notify(v),
            0x64 => self.interrupt.ack(v),
            0x70 => self.set_status(v),
            0x80 => self.update_queue("QueueDescLow", |q| q.set_desc_table_address(Some(v), None)),
            0x84 => self.update_queue("QueueDescHigh", |q| q.set_desc_table_address(None, Some(v))),
            0x90 => self.update_queue("QueueAvailLow", |q| q.set_avail_ring_address(Some(v), None)),
            0x94 => self.update_queue("QueueAvailHigh", |q| {
                q.set_avail_ring_address(None, Some(v))
            }),
            0xa0 => self.update_queue("QueueUsedLow", |q| q.set_used_ring_address(Some(v), None)),
            0xa4 => self.update_queue("QueueUsedHigh", |q| q.set_used_ring_address(None, Some(v))),
            _ => log::warn!(
                "virtio-{}: write of {v:#x} to unknown register {offset:#x}",
                self.device.kind()
            ),
        }
    }

    fn ack_features(&mut self, v: u32) {
        if !self.has(DRIVER, FEATURES_OK | FAILED | NEEDS_RESET) {
            log::warn!(
                "virtio-{}: DriverFeatures write in device status {:#x} ignored",
                self.device.kind(),
                self.status
            );
            return;
        }
        let shift = match self.acked_features_select {
            0 => 0,
            1 => 32,
            page => {
                if v != 0 {
                    log::warn!(
                        "virtio-{}: driver acked {v:#x} in feature page {page}, which offers nothing",
                        self.device.kind()
                    );
                }
                return;
            }
        };
        let offered = self.device.avail_features() | VERSION_1;
        let mut wanted = u64::from(v) << shift;
        if wanted & !offered != 0 {
            log::warn!(
                "virtio-{}: driver acked features {:#x} that were not offered; ignored",
                self.device.kind(),
                wanted & !offered
            );
            wanted &= offered;
        }
        let mask = 0xffff_ffffu64 << shift;
        self.acked_features = (self.acked_features & !mask) | wanted;
    }

    fn notify(&mut self, index: u32) {
        if self.paused {
            if index < 64 {
                self.missed_queues |= 1 << index;
            }
            return;
        }
        if !self.has(DRIVER_OK, NEEDS_RESET | FAILED) || !self.device.is_activated() {
            log::warn!(
                "virtio-{}: QueueNotify({index}) before the device is live (status {:#x})",
                self.device.kind(),
                self.status
            );
            return;
        }
        let index = index as usize;
        if index >= self.device.queues().len() {
            log::warn!(
                "virtio-{}: QueueNotify for queue {index} which does not exist",
                self.device.kind()
            );
            return;
        }
        self.device.process_queue(index);
    }

    /// The device status state machine of virtio 1.x section 3.1.1: the driver sets one more bit
    /// at a time, or writes 0 to reset, or sets FAILED.
    fn set_status(&mut self, v: u32) {
        if v == 0 {
            self.reset();
            return;
        }
        if v & FAILED != 0 {
            self.status |= FAILED;
            return;
        }
        let added = v & !self.status;
        if v & self.status != self.status {
            log::warn!(
                "virtio-{}: driver cleared status bits ({:#x} -> {v:#x}); ignored",
                self.device.kind(),
                self.status
            );
            return;
        }
        match added {
            ACKNOWLEDGE if self.status == 0 => self.status = v,
            DRIVER if self.status == ACKNOWLEDGE => self.status = v,
            FEATURES_OK if self.status == ACKNOWLEDGE | DRIVER => {
                // A driver without VIRTIO_F_VERSION_1 is a legacy driver: refusing FEATURES_OK is
                // how a modern-only device says no (the driver reads the bit back).
                if self.acked_features & VERSION_1 == 0 {
                    log::warn!(
                        "virtio-{}: driver did not accept VIRTIO_F_VERSION_1; FEATURES_OK refused",
                        self.device.kind()
                    );
                } else {
                    self.status = v;
                }
            }
            DRIVER_OK if self.status == ACKNOWLEDGE | DRIVER | FEATURES_OK => {
                self.status = v;
                self.activate();
            }
            0 => {}
            _ => log::warn!(
                "virtio-{}: invalid status transition {:#x} -> {v:#x}",
                self.device.kind(),
                self.status
            ),
        }
    }

    fn activate(&mut self) {
        let result = check_queues(self.device.queues(), &self.mem).and_then(|()| {
            self.device.activate(
                self.mem.clone(),
                self.interrupt.clone(),
                self.acked_features,
            )
        });
        if let Err(e) = result {
            log::error!("virtio-{}: activation failed: {e}", self.device.kind());
            self.status |= NEEDS_RESET;
            self.interrupt.trigger(InterruptKind::Config);
        }
    }

    fn reset(&mut self) {
        if self.device.is_activated() {
            self.device.reset();
        }
        for q in self.device.queues_mut() {
            q.reset();
        }
        self.status = 0;
        self.features_select = 0;
        self.acked_features_select = 0;
        self.queue_select = 0;
        self.acked_features = 0;
        self.interrupt.clear();
        self.missed_queues = 0;
        // config_generation keeps counting so a driver never sees an old value again.
    }

    /// Captures the transport and device. Call it with the vCPUs paused (or `pause()` first) so
    /// the queue positions match guest memory.
    pub fn save_state(&self) -> MmioState {
        MmioState {
            device_type: self.device.device_type(),
            status: self.status,
            features_select: self.features_select,
            acked_features_select: self.acked_features_select,
            queue_select: self.queue_select,
            acked_features: self.acked_features,
            interrupt_status: self.interrupt.status(),
            config_generation: self.config_generation,
            queues: save_queues(self.device.queues()),
            device: self.device.save_state(),
        }
    }

    /// Restores a state saved by `save_state` into a freshly built transport whose device was
    /// constructed from the same VM description (same disk, tap, MAC). A live device is
    /// re-activated without a reset, so the guest driver carries on where it was.
    pub fn restore_state(&mut self, s: &MmioState) -> Result<(), StateError> {
        if s.device_type != self.device.device_type() {
            return Err(StateError::Mismatch(format!(
                "device id {} saved, {} here",
                s.device_type,
                self.device.device_type()
            )));
        }
        let want = self.device.queue_max_sizes().to_vec();
        if s.queues.len() != want.len() {
            return Err(StateError::Mismatch(format!(
                "{} virtqueues saved, the {} device has {}",
                s.queues.len(),
                self.device.kind(),
                want.len()
            )));
        }
        let mut queues = Vec::with_capacity(want.len());
        for (index, qs) in s.queues.iter().enumerate() {
            let q = restore_queue(index, qs)?;
            if !max_size_matches(&q, want[index]) {
                return Err(StateError::Mismatch(format!(
                    "virtqueue {index} max size {} saved, {} here",
                    qs.max_size, want[index]
                )));
            }
            queues.push(q);
        }
        if self.device.is_activated() {
            self.device.reset();
        }
        self.device.restore_state(&s.device)?;
        for (slot, q) in self.device.queues_mut().iter_mut().zip(queues) {
            *slot = q;
        }
        self.status = s.status;
        self.features_select = s.features_select;
        self.acked_features_select = s.acked_features_select;
        self.queue_select = s.queue_select;
        self.acked_features = s.acked_features;
        self.config_generation = s.config_generation;
        if self.has(DRIVER_OK, NEEDS_RESET | FAILED) {
            check_queues(self.device.queues(), &self.mem)?;
            self.device.activate(
                self.mem.clone(),
                self.interrupt.clone(),
                self.acked_features,
            )?;
        }
        self.interrupt.restore(s.interrupt_status);
        Ok(())
    }
}

#[cfg(test)]
#[path = "mmio_tests.rs"]
mod tests;
