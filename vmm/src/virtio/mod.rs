//! virtio devices for HAVmS guests, on the virtio-mmio transport (virtio 1.x, "modern" only):
//! virtio-blk on a raw image, virtio-net on a tap with an output gate for replication, and
//! virtio-rng. Modelled on Firecracker's `devices/virtio` and Cloud Hypervisor's
//! `virtio-devices`, built on virtio-queue's split queues.
//!
//! - `mmio`: the register window and device status state machine (`MmioTransport`).
//! - `device`: the `VirtioDevice` trait the transport drives, and the device state enum.
//! - `interrupt`: InterruptStatus bits plus the irqfd EventFd of one device.
//! - `layout`: where device `i` lives (window, IRQ) and its kernel command line argument.
//! - `acpi`: the DSDT entries (`LNRO0005`) through which distribution kernels find the devices.
//! - `queue_state`: serde mirror of virtio-queue's `QueueState`.
//! - `event_loop`: a small epoll thread for backend fds (the tap).
//! - `manager`: all devices of a VM (`VirtioDevices`): the one type the core wires in.
//! - `block`, `net`, `rng`: the devices.

pub mod acpi;
pub mod block;
pub mod device;
pub mod event_loop;
pub mod interrupt;
pub mod layout;
pub mod manager;
pub mod mmio;
pub mod net;
pub mod queue_state;
pub mod rng;

#[cfg(test)]
mod test_utils;

pub use device::{DeviceState, StateError, VirtioDevice};
pub use interrupt::Interrupt;
pub use layout::DeviceSlot;
pub use manager::{VirtioConfig, VirtioDevices, VirtioError};
pub use mmio::{MmioState, MmioTransport};

/// Guest memory as the devices see it: the same type as `crate::memory::GuestMem` (mmap'd
/// regions with vm-memory's dirty bitmap, so every byte a device writes marks its page dirty).
/// Cloning it is cheap (the regions are shared).
pub type VirtioMem = vm_memory::GuestMemoryMmap<vm_memory::bitmap::AtomicBitmap>;
