//! The interrupt line of one virtio-mmio device: the InterruptStatus bits the guest reads and
//! acknowledges, and the EventFd that raises the line. The core registers that EventFd with KVM
//! (`register_irqfd(evt, irq)`), so raising an interrupt is one eventfd write from any thread and
//! never a VM exit.

use std::io;
use std::sync::atomic::{AtomicU32, Ordering};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Why the device interrupts (the InterruptStatus bits of virtio-mmio).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InterruptKind {
    /// A used ring changed (VIRTIO_MMIO_INT_VRING).
    Vring,
    /// The configuration space changed (VIRTIO_MMIO_INT_CONFIG).
    Config,
}

impl InterruptKind {
    fn bit(self) -> u32 {
        match self {
            InterruptKind::Vring => 1,
            InterruptKind::Config => 2,
        }
    }
}

/// Interrupt status plus the eventfd wired to the guest's IRQ line.
#[derive(Debug)]
pub struct Interrupt {
    status: AtomicU32,
    evt: EventFd,
}

impl Interrupt {
    /// A fresh line with a non-blocking eventfd (nothing pending).
    pub fn new() -> io::Result<Self> {
        Ok(Interrupt {
            status: AtomicU32::new(0),
            evt: EventFd::new(EFD_NONBLOCK)?,
        })
    }

    /// The eventfd to hand to `VmFd::register_irqfd` with the device's IRQ number.
    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }

    /// Sets the status bit and raises the line.
    pub fn trigger(&self, kind: InterruptKind) {
        self.status.fetch_or(kind.bit(), Ordering::SeqCst);
        self.raise();
    }

    /// Current InterruptStatus register value.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// InterruptACK: the driver clears the bits it has handled.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// Device reset: nothing pending any more.
    pub fn clear(&self) {
        self.status.store(0, Ordering::SeqCst);
    }

    /// Restores a saved status and, when something was pending, raises the line again: the
    /// restored guest may not have seen the edge that the saved VM was about to deliver, and a
    /// spurious virtio interrupt is harmless (the driver checks the rings).
    pub fn restore(&self, status: u32) {
        self.status.store(status & 3, Ordering::SeqCst);
        if status & 3 != 0 {
            self.raise();
        }
    }

    fn raise(&self) {
        // EAGAIN means the counter is saturated: an interrupt is pending anyway.
        if let Err(e) = self.evt.write(1) {
            if e.kind() != io::ErrorKind::WouldBlock {
                log::error!("virtio: raising interrupt: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trigger_sets_bits_and_signals_the_eventfd() {
        let irq = Interrupt::new().unwrap();
        assert!(irq.eventfd().read().is_err(), "nothing pending at start");
        irq.trigger(InterruptKind::Vring);
        irq.trigger(InterruptKind::Config);
        assert_eq!(irq.status(), 3);
        assert_eq!(irq.eventfd().read().unwrap(), 2);
        irq.ack(1);
        assert_eq!(irq.status(), 2);
        irq.clear();
        assert_eq!(irq.status(), 0);
    }

    #[test]
    fn restore_reraises_only_when_pending() {
        let irq = Interrupt::new().unwrap();
        irq.restore(0);
        assert!(irq.eventfd().read().is_err());
        irq.restore(1);
        assert_eq!(irq.status(), 1);
        assert_eq!(irq.eventfd().read().unwrap(), 1);
    }
}
