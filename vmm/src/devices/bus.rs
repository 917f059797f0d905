//! Dispatch of port I/O and MMIO exits to the devices. Unclaimed ports read as all-ones (an empty
//! ISA bus) and unclaimed MMIO as zero; writes to them are dropped.

use std::sync::{Arc, Mutex};

use super::acpi_pm::{AcpiPm, PM1A_EVT_PORT, PM_LAST_PORT};
use super::cmos::{Cmos, CMOS_DATA_PORT, CMOS_INDEX_PORT};
use super::i8042::{I8042, I8042_COMMAND_PORT, I8042_DATA_PORT};
use super::serial::{SerialDevice, COM1_PORT};
use crate::exit::ExitState;
use crate::sync::lock;
use crate::virtio::manager::VirtioDevices;

/// The devices a vCPU can reach by I/O exits.
pub struct Devices {
    pub serial: Mutex<SerialDevice>,
    pub i8042: Mutex<I8042>,
    pub acpi_pm: AcpiPm,
    pub cmos: Mutex<Cmos>,
    /// The virtio-mmio windows in the 32-bit MMIO gap.
    pub virtio: VirtioDevices,
    pub exit: Arc<ExitState>,
}

impl Devices {
    pub fn pio_read(&self, port: u16, data: &mut [u8]) {
        match port {
            COM1_PORT..=0x3ff if data.len() == 1 => {
                data[0] = lock(&self.serial).read((port - COM1_PORT) as u8);
            }
            I8042_DATA_PORT | I8042_COMMAND_PORT if data.len() == 1 => {
                data[0] = lock(&self.i8042).read((port - I8042_DATA_PORT) as u8);
            }
            PM1A_EVT_PORT..=PM_LAST_PORT => self.acpi_pm.read(port, data),
            CMOS_INDEX_PORT | CMOS_DATA_PORT if data.len() == 1 => {
                data[0] = lock(&self.cmos).read(port);
            }
            _ => data.fill(0xff),
        }
    }

    pub fn pio_write(&self, port: u16, data: &[u8]) {
        match port {
            COM1_PORT..=0x3ff if data.len() == 1 => {
                if let Err(e) = lock(&self.serial).write((port - COM1_PORT) as u8, data[0]) {
                    log::warn!("serial write: {e:?}");
                }
            }
            I8042_DATA_PORT | I8042_COMMAND_PORT if data.len() == 1 => {
                let _ = lock(&self.i8042).write((port - I8042_DATA_PORT) as u8, data[0]);
            }
            PM1A_EVT_PORT..=PM_LAST_PORT => self.acpi_pm.write(&self.exit, port, data),
            CMOS_INDEX_PORT | CMOS_DATA_PORT if data.len() == 1 => {
                lock(&self.cmos).write(port, data[0]);
            }
            _ => {}
        }
    }

    pub fn mmio_read(&self, addr: u64, data: &mut [u8]) {
        if self.virtio.mmio_read(addr, data) {
            return;
        }
        log::trace!("unclaimed MMIO read at {addr:#x}");
        data.fill(0);
    }

    pub fn mmio_write(&self, addr: u64, data: &[u8]) {
        if self.virtio.mmio_write(addr, data) {
            return;
        }
        log::trace!("unclaimed MMIO write at {addr:#x}");
    }
}
