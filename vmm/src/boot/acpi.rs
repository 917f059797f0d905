//! Minimal ACPI tables so a guest can power itself off: a FADT whose PM1a blocks are our
//! `devices::acpi_pm` ports (full, not hardware-reduced, ACPI: see that module for why), a FACS,
//! a DSDT that only declares the S5 (soft off) sleep type, and a MADT with the vCPUs' LAPICs and the IOAPIC (with ACPI present Linux takes
//! the CPU list from here rather than from the MP table). Tables live in the legacy BIOS area
//! (0xe0000), which the e820 map leaves out of RAM, and the zero page points at the RSDP.

use vm_memory::{Bytes, GuestAddress};

use crate::devices::acpi_pm::{PM1A_CNT_LEN, PM1A_CNT_PORT, PM1A_EVT_LEN, PM1A_EVT_PORT};
use crate::layout::{APIC_DEFAULT_PHYS_BASE, IO_APIC_DEFAULT_PHYS_BASE};
use crate::memory::GuestMem;

/// Where the RSDP goes; the other tables follow it.
pub const RSDP_START: u64 = 0xe0000;
/// End of the area the tables may use (the BIOS ROM window ends at 1 MiB).
const TABLES_END: u64 = 0x10_0000;

/// The sleep type the DSDT's `_S5_` announces and the guest writes back when powering off.
pub const S5_SLEEP_TYPE: u8 = 5;

#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    #[error("ACPI tables for {0} vCPUs do not fit below 1 MiB")]
    TooBig(u8),
    #[error("writing ACPI tables: {0}")]
    Write(vm_memory::GuestMemoryError),
}

fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |a, b| a.wrapping_add(*b))
        .wrapping_neg()
}

/// A system description table: 36-byte header, then `body`, length and checksum filled in.
fn sdt(signature: &[u8; 4], revision: u8, body: &[u8]) -> Vec<u8> {
    let mut t = Vec::with_capacity(36 + body.len());
    t.extend_from_slice(signature);
    t.extend_from_slice(&((36 + body.len()) as u32).to_le_bytes());
    t.push(revision);
    t.push(0); // checksum
    t.extend_from_slice(b"HAVMS ");
    t.extend_from_slice(b"HAVMSVMM");
    t.extend_from_slice(&1u32.to_le_bytes()); // OEM revision
    t.extend_from_slice(b"HAVM"); // creator id
    t.extend_from_slice(&1u32.to_le_bytes()); // creator revision
    t.extend_from_slice(body);
    t[9] = checksum(&t);
    t
}

/// The Firmware ACPI Control Structure: no checksum, nothing in it we use, but full ACPI
/// expects one (global lock, waking vector).
fn facs() -> Vec<u8> {
    let mut f = vec![0u8; 64];
    f[0..4].copy_from_slice(b"FACS");
    f[4..8].copy_from_slice(&64u32.to_le_bytes());
    f[32] = 2; // version
    f
}

/// `extra` is appended to the DSDT body (the virtio-mmio device declarations).
fn dsdt(extra: &[u8]) -> Vec<u8> {
    // Name (_S5_, Package (2) { S5_SLEEP_TYPE, 0 })
    let mut aml = vec![
        0x08,
        b'_',
        b'S',
        b'5',
        b'_',
        0x12,
        0x06,
        0x02,
        0x0a,
        S5_SLEEP_TYPE,
        0x0a,
        0x00,
    ];
    aml.extend_from_slice(extra);
    sdt(b"DSDT", 2, &aml)
}

const FADT_LEN: usize = 276;
const FADT_WBINVD: u32 = 1;
const IAPC_BOOT_ARCH_8042: u16 = 1 << 1;
const IAPC_BOOT_ARCH_NO_VGA: u16 = 1 << 2;

fn fadt(dsdt_addr: u64, facs_addr: u64) -> Vec<u8> {
    let mut b = vec![0u8; FADT_LEN - 36];
    let at = |off: usize| off - 36;
    b[at(36)..at(40)].copy_from_slice(&(facs_addr as u32).to_le_bytes());
    b[at(40)..at(44)].copy_from_slice(&(dsdt_addr as u32).to_le_bytes());
    // SCI on ISA IRQ 9 (never raised: we have no events). SMI_CMD stays 0: always ACPI mode.
    b[at(46)..at(48)].copy_from_slice(&9u16.to_le_bytes());
    b[at(56)..at(60)].copy_from_slice(&u32::from(PM1A_EVT_PORT).to_le_bytes());
    b[at(64)..at(68)].copy_from_slice(&u32::from(PM1A_CNT_PORT).to_le_bytes());
    b[at(88)] = PM1A_EVT_LEN;
    b[at(89)] = PM1A_CNT_LEN;
    b[at(109)..at(111)]
        .copy_from_slice(&(IAPC_BOOT_ARCH_8042 | IAPC_BOOT_ARCH_NO_VGA).to_le_bytes());
    b[at(112)..at(116)].copy_from_slice(&FADT_WBINVD.to_le_bytes());
    b[at(131)] = 0; // FADT minor version (6.0)
    b[at(132)..at(140)].copy_from_slice(&facs_addr.to_le_bytes());
    b[at(140)..at(148)].copy_from_slice(&dsdt_addr.to_le_bytes());
    // The X_PM1a blocks stay zero: ACPICA derives them from the 32-bit fields.
    b[at(268)..at(276)].copy_from_slice(b"HAVMSVMM");
    sdt(b"FACP", 6, &b)
}

fn madt(cpus: u8) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&APIC_DEFAULT_PHYS_BASE.to_le_bytes());
    b.extend_from_slice(&1u32.to_le_bytes()); // PCAT_COMPAT: there are 8259s too
    for id in 0..cpus {
        b.extend_from_slice(&[0, 8, id, id]);
        b.extend_from_slice(&1u32.to_le_bytes()); // enabled
    }
    b.extend_from_slice(&[1, 12, cpus + 1, 0]);
    b.extend_from_slice(&IO_APIC_DEFAULT_PHYS_BASE.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes()); // GSI base
                                              // ISA IRQ 0 (the PIT) arrives on GSI 2, as KVM routes it.
    b.extend_from_slice(&[2, 10, 0, 0]);
    b.extend_from_slice(&2u32.to_le_bytes());
    b.extend_from_slice(&0u16.to_le_bytes());
    // LINT1 of every processor is NMI.
    b.extend_from_slice(&[4, 6, 0xff, 0, 0, 1]);
    sdt(b"APIC", 5, &b)
}

fn align8(x: u64) -> u64 {
    (x + 7) & !7
}

/// All tables as (address, bytes), RSDP first; `device_aml` goes into the DSDT.
pub fn build(cpus: u8, device_aml: &[u8]) -> Vec<(u64, Vec<u8>)> {
    let xsdt_addr = RSDP_START + 64;
    // XSDT has two 8-byte entries.
    let fadt_addr = align8(xsdt_addr + 36 + 16);
    let madt_addr = align8(fadt_addr + FADT_LEN as u64);
    let madt = madt(cpus);
    let dsdt_addr = align8(madt_addr + madt.len() as u64);
    let dsdt = dsdt(device_aml);
    // The FACS must be 64-byte aligned.
    let facs_addr = (dsdt_addr + dsdt.len() as u64 + 63) & !63;

    let mut entries = Vec::new();
    entries.extend_from_slice(&fadt_addr.to_le_bytes());
    entries.extend_from_slice(&madt_addr.to_le_bytes());
    let xsdt = sdt(b"XSDT", 1, &entries);

    let mut rsdp = Vec::with_capacity(36);
    rsdp.extend_from_slice(b"RSD PTR ");
    rsdp.push(0); // checksum over the first 20 bytes
    rsdp.extend_from_slice(b"HAVMS ");
    rsdp.push(2); // ACPI 2.0+
    rsdp.extend_from_slice(&0u32.to_le_bytes()); // no RSDT
    rsdp.extend_from_slice(&36u32.to_le_bytes());
    rsdp.extend_from_slice(&xsdt_addr.to_le_bytes());
    rsdp.push(0); // extended checksum
    rsdp.extend_from_slice(&[0, 0, 0]);
    rsdp[8] = checksum(&rsdp[..20]);
    rsdp[32] = checksum(&rsdp);

    vec![
        (RSDP_START, rsdp),
        (xsdt_addr, xsdt),
        (fadt_addr, fadt(dsdt_addr, facs_addr)),
        (madt_addr, madt),
        (dsdt_addr, dsdt),
        (facs_addr, facs()),
    ]
}

/// Writes the tables; returns the RSDP address for the zero page.
pub fn setup(mem: &GuestMem, cpus: u8, device_aml: &[u8]) -> Result<u64, AcpiError> {
    let tables = build(cpus, device_aml);
    if let Some((a, t)) = tables.last() {
        if a + t.len() as u64 > TABLES_END {
            return Err(AcpiError::TooBig(cpus));
        }
    }
    for (addr, bytes) in &tables {
        mem.write_slice(bytes, GuestAddress(*addr))
            .map_err(AcpiError::Write)?;
    }
    Ok(RSDP_START)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    #[test]
    fn tables_are_consistent() {
        let t = build(4, &[0x10, 0x01]);
        let (rsdp_addr, rsdp) = &t[0];
        assert_eq!(*rsdp_addr, RSDP_START);
        assert_eq!(sum(&rsdp[..20]), 0);
        assert_eq!(sum(rsdp), 0);
        let xsdt_addr = u64::from_le_bytes(rsdp[24..32].try_into().unwrap());
        assert_eq!(xsdt_addr, t[1].0);
        for (addr, tab) in &t[1..5] {
            assert_eq!(addr % 8, 0);
            assert_eq!(sum(tab), 0, "{}", String::from_utf8_lossy(&tab[..4]));
            let len = u32::from_le_bytes(tab[4..8].try_into().unwrap()) as usize;
            assert_eq!(len, tab.len());
        }
        // No overlaps.
        for w in t.windows(2) {
            assert!(w[0].0 + w[0].1.len() as u64 <= w[1].0);
        }
        let fadt = &t[2].1;
        assert_eq!(&fadt[..4], b"FACP");
        assert_eq!(fadt.len(), FADT_LEN);
        let x_dsdt = u64::from_le_bytes(fadt[140..148].try_into().unwrap());
        assert_eq!(x_dsdt, t[4].0);
        assert_eq!(
            u32::from_le_bytes(fadt[64..68].try_into().unwrap()),
            u32::from(PM1A_CNT_PORT)
        );
        assert_eq!(fadt[89], 2);
        let facs = u64::from_le_bytes(fadt[132..140].try_into().unwrap());
        assert_eq!(facs, t[5].0);
        assert_eq!(facs % 64, 0);
        assert_eq!(&t[5].1[..4], b"FACS");
        let dsdt = &t[4].1;
        assert_eq!(
            &dsdt[dsdt.len() - 2..],
            &[0x10, 0x01],
            "device AML appended"
        );
        // MADT: 4 LAPICs.
        let madt = &t[3].1;
        let lapics = madt[44..].chunks(1).count();
        assert!(lapics > 0);
        assert_eq!(madt[44], 0);
        assert_eq!(madt[44 + 3 * 8 + 3], 3, "APIC id of vCPU 3");
        assert!(t.last().unwrap().0 + t.last().unwrap().1.len() as u64 <= TABLES_END);
    }
}
