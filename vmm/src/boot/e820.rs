//! The e820 RAM map handed to the kernel in the zero page.

use crate::layout::{EBDA_START, FIRST_ADDR_PAST_32BITS, HIMEM_START, MMIO_GAP_START};

pub const E820_RAM: u32 = 1;
pub const E820_RESERVED: u32 = 2;

/// One e820 entry: start, length, type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

/// RAM below the EBDA, RAM from 1 MiB to the end of low memory (or the MMIO gap) and RAM above
/// 4 GiB when the VM is larger than the gap allows. The legacy hole (EBDA, VGA, BIOS) and the
/// MMIO gap are left out so the kernel never allocates there.
pub fn build(mem_size: u64) -> Vec<E820Entry> {
    let mut v = vec![E820Entry {
        addr: 0,
        size: EBDA_START,
        kind: E820_RAM,
    }];
    let low_end = mem_size.min(MMIO_GAP_START);
    v.push(E820Entry {
        addr: HIMEM_START,
        size: low_end - HIMEM_START,
        kind: E820_RAM,
    });
    if mem_size > MMIO_GAP_START {
        v.push(E820Entry {
            addr: FIRST_ADDR_PAST_32BITS,
            size: mem_size - MMIO_GAP_START,
            kind: E820_RAM,
        });
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_vm_has_two_ram_ranges() {
        let m = build(256 << 20);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].size, EBDA_START);
        assert_eq!(m[1].addr + m[1].size, 256 << 20);
    }

    #[test]
    fn big_vm_skips_the_mmio_gap() {
        let m = build(4 << 30);
        assert_eq!(m.len(), 3);
        assert_eq!(m[1].addr + m[1].size, MMIO_GAP_START);
        assert_eq!(m[2].addr, FIRST_ADDR_PAST_32BITS);
        let total: u64 = m.iter().map(|e| e.size).sum();
        assert_eq!(total, (4 << 30) - (HIMEM_START - EBDA_START));
    }
}
