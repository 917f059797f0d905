//! The guest-physical memory map every VM gets: where the boot structures, the kernel, the
//! command line and the MMIO devices live. One place so the loader, the e820 map and the device
//! manager agree.

/// GDT written for the 64-bit entry (four 8-byte descriptors).
pub const BOOT_GDT_START: u64 = 0x500;
/// An empty IDT right after the GDT: interrupts stay off until the kernel installs its own.
pub const BOOT_IDT_START: u64 = 0x520;
/// The "zero page" (`struct boot_params`) the kernel reads first.
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer of the boot vCPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Identity page tables for the 64-bit entry: PML4, one PDPT and one PD of 2 MiB pages (1 GiB).
pub const PML4_START: u64 = 0x9000;
pub const PDPTE_START: u64 = 0xa000;
pub const PDE_START: u64 = 0xb000;
/// Kernel command line (null-terminated).
pub const CMDLINE_START: u64 = 0x20000;
/// x86 Linux accepts 2048 bytes of command line (COMMAND_LINE_SIZE).
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// Start of the EBDA; low RAM in the e820 map ends here and the MP table sits at its start, where
/// Linux scans for it (the last KiB of base memory).
pub const EBDA_START: u64 = 0x9fc00;
/// First byte above the legacy hole: where bzImage's protected-mode code goes.
pub const HIMEM_START: u64 = 0x10_0000;
/// 32-bit MMIO gap (devices, IOAPIC, LAPIC) from here to 4 GiB; RAM above it moves past 4 GiB.
pub const MMIO_GAP_START: u64 = 0xd000_0000;
pub const FIRST_ADDR_PAST_32BITS: u64 = 1 << 32;
/// virtio-mmio device windows, one 4 KiB page each, from the start of the gap.
pub const VIRTIO_MMIO_BASE: u64 = MMIO_GAP_START;
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// First IRQ line given to virtio-mmio devices (legacy ones use 1..=4, 8, 12).
pub const VIRTIO_FIRST_IRQ: u32 = 5;
/// Where KVM puts the three-page TSS it needs on Intel (below the IOAPIC / BIOS area).
pub const KVM_TSS_ADDRESS: usize = 0xfffb_d000;
/// Local APIC and IOAPIC physical addresses (architectural defaults).
pub const APIC_DEFAULT_PHYS_BASE: u32 = 0xfee0_0000;
pub const IO_APIC_DEFAULT_PHYS_BASE: u32 = 0xfec0_0000;
/// Number of IOAPIC pins KVM emulates.
pub const IOAPIC_PINS: u8 = 24;
