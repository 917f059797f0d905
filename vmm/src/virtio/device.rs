//! The contract between the virtio-mmio transport and a device model (block, net, rng): what the
//! transport asks of a device, and the serde state every device saves and restores.
//!
//! Ownership follows Firecracker: a device owns its virtqueues from construction; the transport
//! programs them through `queues_mut()` while the driver sets them up, and hands the device its
//! guest memory and interrupt line on activation (DRIVER_OK).

use std::os::fd::RawFd;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use virtio_queue::Queue;

use super::block::BlockState;
use super::interrupt::Interrupt;
use super::net::NetState;
use super::VirtioMem;

/// Why a device could not start when the driver set DRIVER_OK.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("virtqueue {index} is not usable: {reason}")]
    BadQueue { index: usize, reason: String },
    #[error("{0}")]
    Backend(String),
}

/// A device-specific saved state that does not fit the device it is restored into.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("saved state is for a {saved} device, this is a {this} device")]
    WrongDevice {
        saved: &'static str,
        this: &'static str,
    },
    #[error("saved state does not match this device: {0}")]
    Mismatch(String),
    #[error(transparent)]
    Queue(#[from] super::queue_state::QueueStateError),
    #[error("activating the restored device: {0}")]
    Activate(#[from] ActivateError),
}

/// The device-specific part of a saved virtio device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceState {
    Block(BlockState),
    Net(NetState),
    Rng,
}

impl DeviceState {
    pub fn kind(&self) -> &'static str {
        match self {
            DeviceState::Block(_) => "block",
            DeviceState::Net(_) => "net",
            DeviceState::Rng => "rng",
        }
    }
}

/// What an activated device holds on to.
#[derive(Debug)]
pub struct Activation {
    pub mem: VirtioMem,
    pub interrupt: Arc<Interrupt>,
}

/// A virtio device model behind the virtio-mmio transport.
pub trait VirtioDevice: Send {
    /// VIRTIO_ID_* of the device.
    fn device_type(&self) -> u32;
    /// Short name for logs and state files ("block", "net", "rng").
    fn kind(&self) -> &'static str;
    /// Maximum size of each virtqueue, in queue-index order.
    fn queue_max_sizes(&self) -> &[u16];
    fn queues(&self) -> &[Queue];
    fn queues_mut(&mut self) -> &mut [Queue];
    /// Feature bits the device offers (VIRTIO_F_VERSION_1 included).
    fn avail_features(&self) -> u64;
    /// Reads the device configuration space; bytes past its end read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes to the configuration space; the devices here have no writable fields.
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        log::warn!(
            "virtio-{}: ignored write of {} bytes to config offset {offset:#x}",
            self.kind(),
            data.len()
        );
    }
    /// Starts the device: the queues are set up and `acked_features` negotiated.
    fn activate(
        &mut self,
        mem: VirtioMem,
        interrupt: Arc<Interrupt>,
        acked_features: u64,
    ) -> Result<(), ActivateError>;
    fn is_activated(&self) -> bool;
    /// Driver reset: drop memory and interrupt, forget in-flight work. Queues are reset by the
    /// transport.
    fn reset(&mut self);
    /// The driver notified queue `index` (QueueNotify).
    fn process_queue(&mut self, index: usize);
    /// A host-side fd whose readability means work for the device (the tap for net): the core's
    /// event loop watches it, edge-triggered, and calls `process_backend`.
    fn backend_fd(&self) -> Option<RawFd> {
        None
    }
    /// The backend fd became readable.
    fn process_backend(&mut self) {}
    fn save_state(&self) -> DeviceState;
    /// Applies a saved device-specific state to a freshly built (not yet activated) device.
    fn restore_state(&mut self, state: &DeviceState) -> Result<(), StateError>;
}

/// Copies `data.len()` bytes of `config` from `offset`; anything past the end reads as zero.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if start >= config.len() {
        return;
    }
    let n = data.len().min(config.len() - start);
    data[..n].copy_from_slice(&config[start..start + n]);
}

/// After a batch of used buffers: interrupts the guest unless the driver asked not to be
/// (VRING_AVAIL_F_NO_INTERRUPT). When the ring cannot be read, interrupting is the safe choice.
pub fn signal_used(queue: &mut Queue, mem: &VirtioMem, interrupt: &Interrupt) {
    use virtio_queue::QueueT;
    use vm_memory::{Bytes, GuestAddress};
    // needs_notification orders our used-ring writes before the flag read below; virtio-queue
    // itself ignores the flag (it only implements EVENT_IDX, which we do not offer).
    if !queue.needs_notification(mem).unwrap_or(true) {
        return;
    }
    let flags: u16 = mem
        .read_obj::<u16>(GuestAddress(queue.avail_ring()))
        .map(u16::from_le)
        .unwrap_or(0);
    if flags & VRING_AVAIL_F_NO_INTERRUPT == 0 {
        interrupt.trigger(super::interrupt::InterruptKind::Vring);
    }
}

/// virtq_avail.flags bit by which the driver asks for no interrupts.
const VRING_AVAIL_F_NO_INTERRUPT: u16 = 1;

/// Checks that every ready queue lies in guest memory with the ring alignment virtio requires.
pub fn check_queues(queues: &[Queue], mem: &VirtioMem) -> Result<(), ActivateError> {
    use virtio_queue::QueueT;
    for (index, q) in queues.iter().enumerate() {
        if q.ready() && !q.is_valid(mem) {
            return Err(ActivateError::BadQueue {
                index,
                reason: format!(
                    "size {} desc {:#x} avail {:#x} used {:#x} outside guest memory or misaligned",
                    q.size(),
                    q.desc_table(),
                    q.avail_ring(),
                    q.used_ring()
                ),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_reads_past_the_end_are_zero() {
        let cfg = [1u8, 2, 3, 4];
        let mut d = [0xffu8; 4];
        read_config_bytes(&cfg, 2, &mut d);
        assert_eq!(d, [3, 4, 0, 0]);
        read_config_bytes(&cfg, 100, &mut d);
        assert_eq!(d, [0; 4]);
        read_config_bytes(&cfg, u64::MAX, &mut d);
        assert_eq!(d, [0; 4]);
    }
}
