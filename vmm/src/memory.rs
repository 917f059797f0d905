//! Guest RAM: the mmap'd regions (with vm-memory's dirty bitmap, which records writes made by our
//! own devices), their registration as KVM memory slots (optionally with
//! KVM_MEM_LOG_DIRTY_PAGES, which records the guest's own writes), and saving / loading the
//! contents to a file.

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

use kvm_bindings::{kvm_userspace_memory_region, KVM_MEM_LOG_DIRTY_PAGES};
use kvm_ioctls::VmFd;
use vm_memory::bitmap::AtomicBitmap;
use vm_memory::bitmap::NewBitmap;
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{
    Address, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryRegion,
    GuestRegionCollection, GuestRegionMmap, GuestUsize, MmapRegion,
};

use crate::layout::{FIRST_ADDR_PAST_32BITS, MMIO_GAP_START};

/// Guest memory as every part of the engine sees it.
pub type GuestMem = GuestRegionCollection<GuestRegionMmap<AtomicBitmap>>;

pub const PAGE_SIZE: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("allocating {mib} MiB of guest memory: {source}")]
    Allocate {
        mib: u64,
        source: vm_memory::mmap::FromRangesError,
    },
    #[error("registering memory slot {slot} with KVM: {source}")]
    Register {
        slot: u32,
        source: kvm_ioctls::Error,
    },
    #[error("reading KVM dirty log of slot {slot}: {source}")]
    DirtyLog {
        slot: u32,
        source: kvm_ioctls::Error,
    },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("memory file {path} has {got} bytes, the VM has {want}")]
    SizeMismatch { path: String, got: u64, want: u64 },
    #[error("{mib} MiB of guest memory: must be 1 to {MAX_MIB} MiB")]
    BadSize { mib: u64 },
}

/// The most guest memory this engine maps, in MiB (the engine's own limit, `spec.rs`; the
/// memory sizes in a snapshot or a replication Hello come from outside and are checked
/// against it before anything is computed from them).
pub const MAX_MIB: u64 = crate::spec::MAX_MEMORY_MIB;

/// `mib` MiB in bytes, checked: 1 to [`MAX_MIB`] MiB. Every size computed from a memory size
/// that came from a file or the wire goes through here first (`mib << 20` alone wraps: a
/// state.json with 2^44 + 2 MiB would otherwise pass for a 2 MiB VM).
pub fn bytes_of(mib: u64) -> Result<u64, MemoryError> {
    if !(1..=MAX_MIB).contains(&mib) {
        return Err(MemoryError::BadSize { mib });
    }
    Ok(mib << 20)
}

/// The (start, length) RAM ranges for `mib` MiB: one below the 32-bit MMIO gap, the rest above
/// 4 GiB.
pub fn ram_ranges(mib: u64) -> Result<Vec<(GuestAddress, usize)>, MemoryError> {
    let size = bytes_of(mib)?;
    Ok(if size <= MMIO_GAP_START {
        vec![(GuestAddress(0), size as usize)]
    } else {
        vec![
            (GuestAddress(0), MMIO_GAP_START as usize),
            (
                GuestAddress(FIRST_ADDR_PAST_32BITS),
                (size - MMIO_GAP_START) as usize,
            ),
        ]
    })
}

/// Allocates anonymous guest memory of `mib` MiB with a dirty bitmap per region.
pub fn create(mib: u64) -> Result<GuestMem, MemoryError> {
    GuestRegionCollection::from_ranges(&ram_ranges(mib)?)
        .map_err(|source| MemoryError::Allocate { mib, source })
}

/// Registers (or re-registers, to flip dirty logging) every region as a KVM slot.
pub fn register(vm: &VmFd, mem: &GuestMem, dirty_log: bool) -> Result<(), MemoryError> {
    for (slot, region) in mem.iter().enumerate() {
        let host = region
            .get_host_address(vm_memory::MemoryRegionAddress(0))
            .map_err(|_| MemoryError::Register {
                slot: slot as u32,
                source: kvm_ioctls::Error::new(libc::EFAULT),
            })?;
        let r = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: if dirty_log {
                KVM_MEM_LOG_DIRTY_PAGES
            } else {
                0
            },
            guest_phys_addr: region.start_addr().raw_value(),
            memory_size: region.len(),
            userspace_addr: host as u64,
        };
        // SAFETY: the mapping behind `host` lives as long as `mem`, which the VM keeps until its
        // fd is closed, and the slots do not overlap (ram_ranges builds disjoint ranges).
        unsafe { vm.set_user_memory_region(r) }.map_err(|source| MemoryError::Register {
            slot: slot as u32,
            source,
        })?;
    }
    Ok(())
}

/// Total guest RAM in bytes.
pub fn total_size(mem: &GuestMem) -> u64 {
    mem.iter().map(|r| r.len()).sum()
}

/// Writes all of guest RAM, regions in address order, to `path`. All-zero pages are skipped
/// (the file is sparse), which is most of a freshly booted guest. The file is written under a
/// temporary name and renamed: a VM restored from the old file maps it, and must keep seeing the
/// old contents.
pub fn save(mem: &GuestMem, path: &Path) -> Result<(), MemoryError> {
    let io = |what, source| MemoryError::Io {
        what,
        path: path.display().to_string(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp).map_err(|e| io("creating", e))?;
    let mut pos = 0u64;
    for region in mem.iter() {
        for page in region_bytes(region).chunks(PAGE_SIZE) {
            if !is_zero(page) {
                f.seek(SeekFrom::Start(pos)).map_err(|e| io("seeking", e))?;
                f.write_all(page).map_err(|e| io("writing", e))?;
            }
            pos += page.len() as u64;
        }
    }
    f.set_len(pos).map_err(|e| io("sizing", e))?;
    f.flush().map_err(|e| io("writing", e))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| io("renaming", e))?;
    Ok(())
}

/// True when every byte of `page` is zero.
pub fn is_zero(page: &[u8]) -> bool {
    // SAFETY: u64 has no invalid bit patterns; align_to only reinterprets the aligned middle.
    let (head, words, tail) = unsafe { page.align_to::<u64>() };
    head.iter().all(|&b| b == 0) && words.iter().all(|&w| w == 0) && tail.iter().all(|&b| b == 0)
}

/// Guest memory backed by a private (copy-on-write) mapping of a file written by `save` for a
/// VM of `mib` MiB: restore costs no copy, pages are read from the file when first touched, and
/// guest writes never reach the file.
pub fn create_from_file(mib: u64, path: &Path) -> Result<GuestMem, MemoryError> {
    let p = path.display().to_string();
    let io = |what, source| MemoryError::Io {
        what,
        path: p.clone(),
        source,
    };
    let f = File::open(path).map_err(|e| io("opening", e))?;
    let got = f.metadata().map_err(|e| io("reading", e))?.len();
    let want = bytes_of(mib)?;
    if got != want {
        return Err(MemoryError::SizeMismatch {
            path: p.clone(),
            got,
            want,
        });
    }
    let mut regions = Vec::new();
    let mut off = 0u64;
    for (addr, size) in ram_ranges(mib)? {
        let fo = FileOffset::new(f.try_clone().map_err(|e| io("opening", e))?, off);
        let mapping = MmapRegionBuilder::new_with_bitmap(size, AtomicBitmap::with_len(size))
            .with_file_offset(fo)
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE)
            .build()
            .map_err(|e| MemoryError::Allocate {
                mib,
                source: e.into(),
            })?;
        regions.push(
            GuestRegionMmap::new(mapping, addr).ok_or(MemoryError::Allocate {
                mib,
                source: vm_memory::mmap::FromRangesError::InvalidGuestRegion,
            })?,
        );
        off += size as u64;
    }
    GuestRegionCollection::from_regions(regions).map_err(|e| MemoryError::Allocate {
        mib,
        source: e.into(),
    })
}

/// sha256 (hex) of guest RAM in `memory.bin` layout, for comparing captures.
pub fn sha256(mem: &GuestMem) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for region in mem.iter() {
        h.update(region_bytes(region));
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Guest pages written since the last call, per region, as bitmaps (one bit per 4 KiB page):
/// KVM's log for the guest's own writes OR'ed with vm-memory's bitmap for our devices' writes.
/// Both logs are reset by the call.
pub fn take_dirty_bitmaps(vm: &VmFd, mem: &GuestMem) -> Result<Vec<Vec<u64>>, MemoryError> {
    let mut out = Vec::new();
    for (slot, region) in mem.iter().enumerate() {
        let mut kvm = vm
            .get_dirty_log(slot as u32, region.len() as usize)
            .map_err(|source| MemoryError::DirtyLog {
                slot: slot as u32,
                source,
            })?;
        let ours = device_bitmap(region).get_and_reset();
        or_bitmaps(&mut kvm, &ours);
        out.push(kvm);
    }
    Ok(out)
}

/// `a |= b`, word by word; a shorter `b` leaves the rest of `a` alone.
pub fn or_bitmaps(a: &mut [u64], b: &[u64]) {
    for (x, y) in a.iter_mut().zip(b) {
        *x |= *y;
    }
}

/// Indices of the set bits, i.e. the dirty page numbers of a region.
pub fn set_bits(bitmap: &[u64]) -> impl Iterator<Item = usize> + '_ {
    bitmap.iter().enumerate().flat_map(|(w, &word)| {
        (0..64)
            .filter(move |b| word & (1u64 << b) != 0)
            .map(move |b| w * 64 + b)
    })
}

/// The vm-memory bitmap of a region (writes made through `GuestMemory` accessors, i.e. devices).
pub fn device_bitmap(region: &GuestRegionMmap<AtomicBitmap>) -> &AtomicBitmap {
    let mapping: &MmapRegion<AtomicBitmap> = region;
    mapping.bitmap()
}

/// Start address and length of a region, for callers that compute page offsets.
pub fn region_span(region: &GuestRegionMmap<AtomicBitmap>) -> (GuestAddress, GuestUsize) {
    (region.start_addr(), region.len())
}

/// The bytes of a region. Reading guest memory while vCPUs run races with the guest by nature;
/// callers that need a consistent image pause the vCPUs first.
pub fn region_bytes(region: &GuestRegionMmap<AtomicBitmap>) -> &[u8] {
    // SAFETY: the region is a live mapping of `size()` bytes owned by `region`; u8 has no
    // invalid values, and the slice cannot outlive the region.
    unsafe { std::slice::from_raw_parts(region.as_ptr(), region.size()) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn ranges_split_around_the_mmio_gap() {
        assert_eq!(ram_ranges(256).unwrap(), vec![(GuestAddress(0), 256 << 20)]);
        let r = ram_ranges(4096).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0], (GuestAddress(0), MMIO_GAP_START as usize));
        assert_eq!(r[1].0, GuestAddress(FIRST_ADDR_PAST_32BITS));
        assert_eq!(r[0].1 + r[1].1, 4096 << 20);
    }

    #[test]
    fn sizes_from_outside_are_checked_before_any_arithmetic() {
        // Issue 10, defect 5: 2^44 + 2 MiB shifted by 20 wraps to 2 MiB.
        let wraps = (1u64 << 44) + 2;
        assert_eq!(wraps.wrapping_shl(20), 2 << 20);
        for mib in [0, wraps, MAX_MIB + 1, u64::MAX] {
            let e = bytes_of(mib).unwrap_err().to_string();
            assert!(e.contains(&format!("must be 1 to {MAX_MIB} MiB")), "{e}");
            assert!(ram_ranges(mib).is_err());
            assert!(create(mib).is_err());
        }
        assert_eq!(bytes_of(MAX_MIB).unwrap(), MAX_MIB << 20);
        // A 2 MiB memory.bin is not a (2^44 + 2) MiB VM's.
        let dir = std::env::temp_dir().join(format!("havms-mem-wrap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("memory.bin");
        std::fs::write(&p, vec![0u8; 2 << 20]).unwrap();
        assert!(matches!(
            create_from_file(wraps, &p),
            Err(MemoryError::BadSize { .. })
        ));
        create_from_file(2, &p).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bitmap_helpers() {
        let mut a = vec![0b1u64, 0];
        or_bitmaps(&mut a, &[0b100, 1 << 63]);
        assert_eq!(a, vec![0b101, 1 << 63]);
        assert_eq!(set_bits(&a).collect::<Vec<_>>(), vec![0, 2, 127]);
    }

    #[test]
    fn device_writes_land_in_the_vm_memory_bitmap() {
        let mem = create(64).unwrap();
        mem.write_obj(0xabu8, GuestAddress(5 * 4096 + 7)).unwrap();
        let region = mem.iter().next().unwrap();
        let bits = device_bitmap(region).get_and_reset();
        assert_eq!(set_bits(&bits).collect::<Vec<_>>(), vec![5]);
        assert!(set_bits(&device_bitmap(region).get_and_reset())
            .next()
            .is_none());
    }

    #[test]
    fn save_and_load_round_trip() {
        let dir = std::env::temp_dir().join(format!("havms-mem-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("mem");
        let a = create(64).unwrap();
        a.write_obj(0x1234_5678u32, GuestAddress(0x10_0000))
            .unwrap();
        save(&a, &p).unwrap();
        // Sparse: one non-zero page on disk.
        use std::os::unix::fs::MetadataExt;
        assert!(std::fs::metadata(&p).unwrap().blocks() * 512 < 1 << 20);
        let b = create_from_file(64, &p).unwrap();
        assert_eq!(
            b.read_obj::<u32>(GuestAddress(0x10_0000)).unwrap(),
            0x1234_5678
        );
        assert_eq!(b.read_obj::<u32>(GuestAddress(0x20_0000)).unwrap(), 0);
        // Guest writes stay private to the VM.
        b.write_obj(0xdead_beefu32, GuestAddress(0x10_0000))
            .unwrap();
        let c = create_from_file(64, &p).unwrap();
        assert_eq!(
            c.read_obj::<u32>(GuestAddress(0x10_0000)).unwrap(),
            0x1234_5678
        );
        assert!(matches!(
            create_from_file(128, &p),
            Err(MemoryError::SizeMismatch { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
