//! The register state of a vCPU at the 64-bit Linux entry: flat GDT, empty IDT, identity page
//! tables for the first GiB, long mode on, `rip` at the kernel entry and `rsi` at the zero page.
//! Also the LAPIC LINT0/LINT1 wiring (ExtINT / NMI) firmware would leave behind.

use kvm_bindings::{kvm_fpu, kvm_lapic_state, kvm_regs, kvm_segment, kvm_sregs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress};

use crate::layout::{
    BOOT_GDT_START, BOOT_IDT_START, BOOT_STACK_POINTER, PDE_START, PDPTE_START, PML4_START,
};
use crate::memory::GuestMem;

#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    #[error("writing boot {what} to guest memory: {source}")]
    Memory {
        what: &'static str,
        source: vm_memory::GuestMemoryError,
    },
    #[error("KVM_{op}: {source}")]
    Ioctl {
        op: &'static str,
        source: kvm_ioctls::Error,
    },
}

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;

/// A segment descriptor from flags (access byte + flags nibble), base and limit.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let (flags, base, limit) = (flags as u64, base as u64, limit as u64);
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0x000f_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0xffff)
}

/// The KVM view of descriptor `entry` loaded into a segment register with selector index `idx`.
pub fn segment_from_gdt(entry: u64, idx: u8) -> kvm_segment {
    let bit = |n: u32| ((entry >> n) & 1) as u8;
    let g = bit(55);
    let raw_limit = (((entry >> 32) & 0x000f_0000) | (entry & 0xffff)) as u32;
    let present = bit(47);
    kvm_segment {
        base: ((entry >> 32) & 0xff00_0000) | ((entry >> 16) & 0x00ff_ffff),
        limit: if g == 1 {
            (raw_limit << 12) | 0xfff
        } else {
            raw_limit
        },
        selector: u16::from(idx) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present,
        dpl: ((entry >> 45) & 0x3) as u8,
        db: bit(54),
        s: bit(44),
        l: bit(53),
        g,
        avl: bit(52),
        unusable: u8::from(present == 0),
        padding: 0,
    }
}

/// The boot GDT: null, 64-bit code, data, TSS.
pub const BOOT_GDT: [u64; 4] = [
    gdt_entry(0, 0, 0),
    gdt_entry(0xa09b, 0, 0xfffff),
    gdt_entry(0xc093, 0, 0xfffff),
    gdt_entry(0x808b, 0, 0xfffff),
];

/// Writes GDT, IDT and page tables, and switches `sregs` to 64-bit paged mode.
pub fn setup_long_mode(mem: &GuestMem, sregs: &mut kvm_sregs) -> Result<(), RegsError> {
    let w = |what, r: Result<(), vm_memory::GuestMemoryError>| {
        r.map_err(|source| RegsError::Memory { what, source })
    };
    for (i, e) in BOOT_GDT.iter().enumerate() {
        w(
            "GDT",
            mem.write_obj(*e, GuestAddress(BOOT_GDT_START + 8 * i as u64)),
        )?;
    }
    w("IDT", mem.write_obj(0u64, GuestAddress(BOOT_IDT_START)))?;

    let code = segment_from_gdt(BOOT_GDT[1], 1);
    let data = segment_from_gdt(BOOT_GDT[2], 2);
    let tss = segment_from_gdt(BOOT_GDT[3], 3);
    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = (8 * BOOT_GDT.len() - 1) as u16;
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = 7;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;

    // PML4[0] -> PDPT, PDPT[0] -> PD, PD maps 512 x 2 MiB = the first GiB, present + writable.
    w(
        "PML4",
        mem.write_obj(PDPTE_START | 0x03, GuestAddress(PML4_START)),
    )?;
    w(
        "PDPT",
        mem.write_obj(PDE_START | 0x03, GuestAddress(PDPTE_START)),
    )?;
    for i in 0..512u64 {
        w(
            "PD",
            mem.write_obj((i << 21) | 0x83, GuestAddress(PDE_START + i * 8)),
        )?;
    }
    sregs.cr3 = PML4_START;
    sregs.cr4 |= X86_CR4_PAE;
    sregs.cr0 |= X86_CR0_PE | X86_CR0_PG;
    sregs.efer |= EFER_LME | EFER_LMA;
    Ok(())
}

/// Boot vCPU: general registers for the 64-bit entry.
pub fn boot_regs(entry: u64, zero_page: u64) -> kvm_regs {
    kvm_regs {
        rflags: 0x2, // bit 1 is reserved-as-one
        rip: entry,
        rsp: BOOT_STACK_POINTER,
        rbp: BOOT_STACK_POINTER,
        rsi: zero_page,
        ..Default::default()
    }
}

/// x87 control word and MXCSR as after FNINIT / reset.
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

fn lapic_reg(l: &kvm_lapic_state, off: usize) -> u32 {
    let b: Vec<u8> = l.regs[off..off + 4].iter().map(|&c| c as u8).collect();
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

fn set_lapic_reg(l: &mut kvm_lapic_state, off: usize, v: u32) {
    for (i, b) in v.to_le_bytes().iter().enumerate() {
        l.regs[off + i] = *b as _;
    }
}

/// LINT0 delivers the PIC's interrupts (ExtINT), LINT1 delivers NMIs, as a PC BIOS sets them.
pub fn setup_lint(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let mut l = vcpu.get_lapic().map_err(|source| RegsError::Ioctl {
        op: "GET_LAPIC",
        source,
    })?;
    let lvt0 = lapic_reg(&l, APIC_LVT0);
    set_lapic_reg(&mut l, APIC_LVT0, (lvt0 & !0x700) | (APIC_MODE_EXTINT << 8));
    let lvt1 = lapic_reg(&l, APIC_LVT1);
    set_lapic_reg(&mut l, APIC_LVT1, (lvt1 & !0x700) | (APIC_MODE_NMI << 8));
    vcpu.set_lapic(&l).map_err(|source| RegsError::Ioctl {
        op: "SET_LAPIC",
        source,
    })
}

/// Full boot register setup of one vCPU (the boot vCPU gets entry state, the others only the
/// LAPIC wiring: they wait for INIT/SIPI in KVM).
pub fn setup_vcpu(
    vcpu: &VcpuFd,
    mem: &GuestMem,
    boot: Option<(u64, u64)>,
) -> Result<(), RegsError> {
    let io = |op| move |source| RegsError::Ioctl { op, source };
    setup_lint(vcpu)?;
    vcpu.set_fpu(&boot_fpu()).map_err(io("SET_FPU"))?;
    if let Some((entry, zero_page)) = boot {
        let mut sregs = vcpu.get_sregs().map_err(io("GET_SREGS"))?;
        setup_long_mode(mem, &mut sregs)?;
        vcpu.set_sregs(&sregs).map_err(io("SET_SREGS"))?;
        vcpu.set_regs(&boot_regs(entry, zero_page))
            .map_err(io("SET_REGS"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_round_trip() {
        let code = segment_from_gdt(BOOT_GDT[1], 1);
        assert_eq!(code.selector, 8);
        assert_eq!(code.l, 1, "64-bit code segment");
        assert_eq!(code.db, 0);
        assert_eq!(code.present, 1);
        assert_eq!(code.type_, 0xb);
        assert_eq!(code.limit, 0xffff_ffff);
        assert_eq!(code.base, 0);
        let data = segment_from_gdt(BOOT_GDT[2], 2);
        assert_eq!(data.type_, 0x3);
        assert_eq!(data.db, 1);
        assert_eq!(data.s, 1);
        let null = segment_from_gdt(BOOT_GDT[0], 0);
        assert_eq!(null.unusable, 1);
        assert_eq!(gdt_entry(0xa09b, 0x1234_5678, 0xfffff) >> 56, 0x12);
    }

    #[test]
    fn page_tables_identity_map_the_first_gib() {
        let mem = crate::memory::create(64).unwrap();
        let mut s = kvm_sregs::default();
        setup_long_mode(&mem, &mut s).unwrap();
        assert_eq!(s.cr3, PML4_START);
        assert_ne!(s.efer & EFER_LMA, 0);
        let pd511: u64 = mem.read_obj(GuestAddress(PDE_START + 511 * 8)).unwrap();
        assert_eq!(pd511, (511 << 21) | 0x83);
    }

    #[test]
    fn lapic_register_access() {
        let mut l = kvm_lapic_state::default();
        set_lapic_reg(&mut l, APIC_LVT0, 0x0001_0700);
        assert_eq!(lapic_reg(&l, APIC_LVT0), 0x0001_0700);
    }
}
