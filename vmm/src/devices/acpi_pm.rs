//! The ACPI fixed-hardware power management block our FADT announces (at 0x600, where QEMU's
//! PIIX4 has it): PM1a event registers (status + enable, read as zero) and the PM1a control
//! register. Writing SLP_EN there is the guest powering off (we only announce S5), which ends
//! the VM with `ExitReason::PowerOff`. Full (not hardware-reduced) ACPI keeps Linux's legacy PIC,
//! PIT and ISA IRQ identity mappings, which our serial port and the virtio-mmio devices given on
//! the command line rely on.

use std::sync::atomic::{AtomicU16, Ordering};

use crate::exit::{ExitReason, ExitState};

pub const PM1A_EVT_PORT: u16 = 0x600;
pub const PM1A_EVT_LEN: u8 = 4;
pub const PM1A_CNT_PORT: u16 = 0x604;
pub const PM1A_CNT_LEN: u8 = 2;
/// Last port of the block.
pub const PM_LAST_PORT: u16 = PM1A_CNT_PORT + PM1A_CNT_LEN as u16 - 1;

const SCI_EN: u16 = 1;
const SLP_TYP_SHIFT: u16 = 10;
const SLP_TYP_MASK: u16 = 0x7;
const SLP_EN: u16 = 1 << 13;

const PM1A_EN_PORT: u16 = PM1A_EVT_PORT + 2;

/// The registers: only PM1a enable keeps what is written (ACPICA checks that GBL_EN sticks).
#[derive(Default)]
pub struct AcpiPm {
    enable: AtomicU16,
}

impl AcpiPm {
    /// A read in the block: SCI_EN reads as set (we are always in ACPI mode), enable reads
    /// back, status reads as zero (no events).
    pub fn read(&self, port: u16, data: &mut [u8]) {
        data.fill(0);
        let v = match port {
            PM1A_CNT_PORT => SCI_EN,
            PM1A_EN_PORT => self.enable.load(Ordering::Relaxed),
            _ => 0,
        };
        for (d, b) in data.iter_mut().zip(v.to_le_bytes()) {
            *d = b;
        }
    }

    /// A write in the block: enable bits are kept, SLP_EN in PM1a control powers off.
    pub fn write(&self, exit: &ExitState, port: u16, data: &[u8]) {
        if port == PM1A_EN_PORT && data.len() >= 2 {
            self.enable
                .store(u16::from_le_bytes([data[0], data[1]]), Ordering::Relaxed);
        }
        write_control(exit, port, data);
    }
}

fn write_control(exit: &ExitState, port: u16, data: &[u8]) {
    if port != PM1A_CNT_PORT || data.len() < 2 {
        return;
    }
    let v = u16::from_le_bytes([data[0], data[1]]);
    if v & SLP_EN != 0 {
        let typ = (v >> SLP_TYP_SHIFT) & SLP_TYP_MASK;
        log::info!("guest entered ACPI sleep type {typ} (S5 = power off)");
        exit.request(ExitReason::PowerOff);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slp_en_powers_off() {
        let e = ExitState::default();
        let pm = AcpiPm::default();
        pm.write(&e, PM1A_CNT_PORT, &(5u16 << SLP_TYP_SHIFT).to_le_bytes());
        assert_eq!(e.get(), None, "no SLP_EN, nothing happens");
        pm.write(&e, PM1A_EVT_PORT, &0xffffu16.to_le_bytes());
        assert_eq!(e.get(), None, "status writes do nothing");
        pm.write(&e, PM1A_EN_PORT, &0x20u16.to_le_bytes());
        let mut en = [0u8; 2];
        pm.read(PM1A_EN_PORT, &mut en);
        assert_eq!(en, [0x20, 0], "GBL_EN sticks");
        pm.write(
            &e,
            PM1A_CNT_PORT,
            &((5u16 << SLP_TYP_SHIFT) | SLP_EN).to_le_bytes(),
        );
        assert_eq!(e.get(), Some(ExitReason::PowerOff));
        let mut d = [0xffu8; 2];
        pm.read(PM1A_CNT_PORT, &mut d);
        assert_eq!(d, [1, 0]);
    }
}
