//! Where virtio-mmio devices live in the guest: one 4 KiB window each, packed from the start of
//! the 32-bit MMIO gap (0xd000_0000), and one IOAPIC pin each from IRQ 5. Device `i` (in the
//! order the core creates them: disks, then NICs, then rng) gets window
//! `VIRTIO_MMIO_BASE + i * 4 KiB` and the `i`-th free line of 5..=23, skipping 8 and 12: a Debian
//! guest kernel binds rtc_cmos to IRQ 8 and the i8042 AUX port to IRQ 12 without sharing, so a
//! virtio device there would lose its interrupt. The base values are the core's `crate::layout`
//! constants, so the e820 map, the bus, the DSDT (`acpi`) and the command line agree.

use super::mmio::MmioTransport;
pub use crate::layout::{IOAPIC_PINS, VIRTIO_FIRST_IRQ, VIRTIO_MMIO_BASE, VIRTIO_MMIO_SIZE};

/// Lines a guest kernel may claim for legacy devices: RTC (8) and PS/2 AUX (12).
pub const RESERVED_IRQS: [u32; 2] = [8, 12];

/// IRQ lines left for virtio: IOAPIC pins 5..=23 minus the reserved ones (17).
pub const MAX_VIRTIO_DEVICES: usize =
    (IOAPIC_PINS as u32 - VIRTIO_FIRST_IRQ) as usize - RESERVED_IRQS.len();

/// The IRQ of the `index`-th virtio device.
pub fn irq_for(index: usize) -> Option<u32> {
    (VIRTIO_FIRST_IRQ..u32::from(IOAPIC_PINS))
        .filter(|irq| !RESERVED_IRQS.contains(irq))
        .nth(index)
}

/// The window and IRQ line of the `index`-th virtio device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceSlot {
    pub base: u64,
    pub size: u64,
    pub irq: u32,
}

impl DeviceSlot {
    /// `None` past the last IRQ line.
    pub fn new(index: usize) -> Option<Self> {
        Some(DeviceSlot {
            base: VIRTIO_MMIO_BASE + index as u64 * VIRTIO_MMIO_SIZE,
            size: VIRTIO_MMIO_SIZE,
            irq: irq_for(index)?,
        })
    }

    /// `virtio_mmio.device=4K@0xd0000000:5` for this slot.
    pub fn cmdline_arg(&self) -> String {
        MmioTransport::cmdline_arg(self.base, self.size, self.irq)
    }

    /// Whether guest-physical `addr` falls in this window.
    pub fn contains(&self, addr: u64) -> bool {
        addr >= self.base && addr - self.base < self.size
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_packed_pages_with_consecutive_irqs() {
        let s0 = DeviceSlot::new(0).unwrap();
        assert_eq!(s0.cmdline_arg(), "virtio_mmio.device=4K@0xd0000000:5");
        let s2 = DeviceSlot::new(2).unwrap();
        assert_eq!(s2.base, 0xd000_2000);
        assert_eq!(s2.irq, 7);
        assert_eq!(DeviceSlot::new(3).unwrap().irq, 9, "8 is the RTC's");
        assert_eq!(
            DeviceSlot::new(6).unwrap().irq,
            13,
            "12 is the PS/2 AUX port's"
        );
        assert!(s2.contains(0xd000_2fff) && !s2.contains(0xd000_3000));
        assert_eq!(DeviceSlot::new(MAX_VIRTIO_DEVICES - 1).unwrap().irq, 23);
        assert!(DeviceSlot::new(MAX_VIRTIO_DEVICES).is_none());
    }

    #[test]
    fn cmdline_sizes() {
        assert_eq!(
            MmioTransport::cmdline_arg(0xd000_0000, 0x20_0000, 9),
            "virtio_mmio.device=2M@0xd0000000:9"
        );
    }
}
