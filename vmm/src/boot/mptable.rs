//! The Intel MultiProcessor Specification 1.4 table: how an ACPI-less Linux guest learns its
//! vCPUs (one processor entry per LAPIC id), the IOAPIC and the ISA interrupt routing. Written at
//! the start of the EBDA, which Linux scans ("last KiB of base memory").

use vm_memory::{Bytes, GuestAddress};

use crate::layout::{APIC_DEFAULT_PHYS_BASE, EBDA_START, IOAPIC_PINS, IO_APIC_DEFAULT_PHYS_BASE};
use crate::memory::GuestMem;

#[derive(Debug, thiserror::Error)]
pub enum MpTableError {
    #[error("MP table for {0} vCPUs does not fit below the end of the EBDA area")]
    TooBig(u8),
    #[error("writing the MP table: {0}")]
    Write(vm_memory::GuestMemoryError),
}

const APIC_VERSION: u8 = 0x14;
const CPU_ENABLED: u8 = 1;
const CPU_BOOTPROCESSOR: u8 = 2;
const MP_PROCESSOR: u8 = 0;
const MP_BUS: u8 = 1;
const MP_IOAPIC: u8 = 2;
const MP_INTSRC: u8 = 3;
const MP_LINTSRC: u8 = 4;
const MP_INT: u8 = 0;
const MP_NMI: u8 = 1;
const MP_EXTINT: u8 = 3;
/// Room for the table: 1 KiB of EBDA plus the 63 KiB hole that is not RAM in our e820 map.
const MAX_TABLE_SIZE: usize = 0xa0000 - EBDA_START as usize;

/// Bytes of the whole structure (floating pointer + config table) for `cpus` vCPUs.
pub fn build(cpus: u8) -> Vec<u8> {
    let ioapic_id = cpus + 1;
    let mut entries: Vec<u8> = Vec::new();
    let mut count: u16 = 0;
    // Processor entries: LAPIC id == vCPU index, vCPU 0 boots.
    for id in 0..cpus {
        let flags = CPU_ENABLED | if id == 0 { CPU_BOOTPROCESSOR } else { 0 };
        entries.extend_from_slice(&[MP_PROCESSOR, id, APIC_VERSION, flags]);
        // CPU signature (family 6) and feature flags (FPU, APIC): informative only.
        entries.extend_from_slice(&0x600u32.to_le_bytes());
        entries.extend_from_slice(&0x201u32.to_le_bytes());
        entries.extend_from_slice(&[0u8; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[MP_BUS, 0]);
    entries.extend_from_slice(b"ISA   ");
    count += 1;
    entries.extend_from_slice(&[MP_IOAPIC, ioapic_id, APIC_VERSION, 1]);
    entries.extend_from_slice(&IO_APIC_DEFAULT_PHYS_BASE.to_le_bytes());
    count += 1;
    // Every ISA IRQ goes to the IOAPIC pin of the same number, default polarity and trigger,
    // except the PIT's IRQ 0, which KVM's default routing (like a PC) wires to pin 2.
    for irq in 0..IOAPIC_PINS {
        let pin = if irq == 0 { 2 } else { irq };
        entries.extend_from_slice(&[MP_INTSRC, MP_INT, 0, 0, 0, irq, ioapic_id, pin]);
        count += 1;
    }
    // LINT0 of every LAPIC is ExtINT (the PIC), LINT1 is NMI.
    entries.extend_from_slice(&[MP_LINTSRC, MP_EXTINT, 0, 0, 0, 0, 0xff, 0]);
    entries.extend_from_slice(&[MP_LINTSRC, MP_NMI, 0, 0, 0, 0, 0xff, 1]);
    count += 2;

    let table_addr = EBDA_START as u32 + 16;
    let mut table = Vec::with_capacity(44 + entries.len());
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&((44 + entries.len()) as u16).to_le_bytes());
    table.push(4); // spec revision 1.4
    table.push(0); // checksum, below
    table.extend_from_slice(b"HAVMS   ");
    table.extend_from_slice(b"HAVMS-VMM   ");
    table.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    table.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    table.extend_from_slice(&count.to_le_bytes());
    table.extend_from_slice(&APIC_DEFAULT_PHYS_BASE.to_le_bytes());
    table.extend_from_slice(&[0, 0, 0, 0]); // extended table length, checksum, reserved
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut fp = Vec::with_capacity(16);
    fp.extend_from_slice(b"_MP_");
    fp.extend_from_slice(&table_addr.to_le_bytes());
    fp.push(1); // length in 16-byte paragraphs
    fp.push(4); // spec revision
    fp.push(0); // checksum, below
    fp.extend_from_slice(&[0u8; 5]); // features: 0 = config table present
    fp[10] = checksum(&fp);

    fp.extend_from_slice(&table);
    fp
}

/// The byte that makes the sum of `bytes` zero (the byte at its own slot must be 0 when called).
fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |a, b| a.wrapping_add(*b))
        .wrapping_neg()
}

/// Writes the table for `cpus` vCPUs at the start of the EBDA.
pub fn setup(mem: &GuestMem, cpus: u8) -> Result<(), MpTableError> {
    let t = build(cpus);
    if t.len() > MAX_TABLE_SIZE {
        return Err(MpTableError::TooBig(cpus));
    }
    mem.write_slice(&t, GuestAddress(EBDA_START))
        .map_err(MpTableError::Write)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    #[test]
    fn checksums_and_counts() {
        for cpus in [1u8, 2, 4, 32] {
            let t = build(cpus);
            assert_eq!(&t[0..4], b"_MP_");
            assert_eq!(sum(&t[0..16]), 0, "floating pointer checksum");
            let table = &t[16..];
            assert_eq!(&table[0..4], b"PCMP");
            let len = u16::from_le_bytes([table[4], table[5]]) as usize;
            assert_eq!(len, table.len());
            assert_eq!(sum(table), 0, "config table checksum");
            let count = u16::from_le_bytes([table[34], table[35]]);
            assert_eq!(count, u16::from(cpus) + 2 + u16::from(IOAPIC_PINS) + 2);
            // Exactly one boot processor.
            let procs: Vec<&[u8]> = table[44..].chunks(20).take(cpus as usize).collect();
            assert!(procs.iter().all(|p| p[0] == MP_PROCESSOR));
            assert_eq!(
                procs
                    .iter()
                    .filter(|p| p[3] & CPU_BOOTPROCESSOR != 0)
                    .count(),
                1
            );
            assert!(t.len() <= MAX_TABLE_SIZE);
        }
    }
}
