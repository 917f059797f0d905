//! Everything written into guest memory before the first instruction: the kernel and initramfs
//! (`loader`), the e820 map (`e820`), the MP table that describes the vCPUs and the IOAPIC
//! (`mptable`) and the ACPI tables that let the guest power off (`acpi`).

pub mod acpi;
pub mod e820;
pub mod loader;
pub mod mptable;
