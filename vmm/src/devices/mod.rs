//! Emulated devices and the port/MMIO dispatch from vCPU exits to them (`bus`).

pub mod acpi_pm;
pub mod bus;
pub mod cmos;
pub mod i8042;
pub mod serial;
pub mod serial_socket;
