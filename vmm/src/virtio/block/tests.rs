//! Host tests of virtio-blk through the mmio transport: real descriptor chains in guest memory,
//! a real image file in a temp dir, and the write observer.

use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK,
    VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID,
    VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::bitmap::AtomicBitmap;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::tempfile::TempFile;

use super::*;
use crate::virtio::mmio::MmioTransport;
use crate::virtio::test_utils::*;
use crate::virtio::VirtioMem;

const QSIZE: u16 = 16;
const DISK: u64 = 1 << 20;
const HDR: u64 = 0x10_0000;
const DATA: u64 = 0x20_0000;
const STATUS: u64 = 0x30_0000;

struct Rig {
    mem: VirtioMem,
    image: TempFile,
    changes: Arc<Mutex<Vec<DiskChange>>>,
}

impl Rig {
    fn new() -> Rig {
        let image = TempFile::new_with_prefix("/tmp/havms-virtio-blk").unwrap();
        image.as_file().set_len(DISK).unwrap();
        Rig {
            mem: mem(),
            image,
            changes: Arc::new(Mutex::new(Vec::new())),
        }
    }

    fn transport(&self, read_only: bool, discard: bool) -> MmioTransport {
        let mut blk = Block::new(&BlockConfig {
            path: self.image.as_path().to_path_buf(),
            read_only,
            discard,
        })
        .unwrap();
        let changes = self.changes.clone();
        blk.set_observer(Arc::new(move |c: DiskChange| {
            changes.lock().unwrap().push(c)
        }));
        MmioTransport::new(Box::new(blk), self.mem.clone()).unwrap()
    }

    fn header(&self, kind: u32, sector: u64) {
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(&kind.to_le_bytes());
        h[8..].copy_from_slice(&sector.to_le_bytes());
        put(&self.mem, HDR, &h);
        put(&self.mem, STATUS, &[0xff]);
    }

    fn status(&self) -> u32 {
        u32::from(get(&self.mem, STATUS, 1)[0])
    }
}

fn bitmap(region: &vm_memory::GuestRegionMmap<AtomicBitmap>) -> &AtomicBitmap {
    let mapping: &vm_memory::MmapRegion<AtomicBitmap> = region;
    mapping.bitmap()
}

fn is_dirty(mem: &VirtioMem, addr: u64) -> bool {
    let region = mem.find_region(GuestAddress(addr)).unwrap();
    bitmap(region).is_addr_set((addr - region.start_addr().0) as usize)
}

#[test]
fn write_then_read_back() {
    let rig = Rig::new();
    let mut t = rig.transport(false, false);
    let vq = MockSplitQueue::create(&rig.mem, GuestAddress(0x1_0000), QSIZE);
    assert_eq!(bring_up(&mut t, &[&vq], QSIZE), 0xf);

    let pattern: Vec<u8> = (0..4096u32).map(|i| (i * 7 % 251) as u8).collect();
    put(&rig.mem, DATA, &pattern);
    rig.header(VIRTIO_BLK_T_OUT, 8);
    add_chain(
        &vq,
        0,
        &[
            Buf(HDR, 16, false),
            Buf(DATA, 4096, false),
            Buf(STATUS, 1, true),
        ],
    );
    write32(&mut t, 0x50, 0);
    assert_eq!(used_idx(&vq), 1);
    assert_eq!(
        used(&vq, 0),
        (0, 1),
        "a write hands back only the status byte"
    );
    assert_eq!(rig.status(), VIRTIO_BLK_S_OK);
    let mut on_disk = vec![0u8; 4096];
    rig.image
        .as_file()
        .read_exact_at(&mut on_disk, 8 * 512)
        .unwrap();
    assert_eq!(on_disk, pattern);
    assert_eq!(
        *rig.changes.lock().unwrap(),
        vec![DiskChange {
            kind: DiskChangeKind::Write,
            sector: 8,
            len: 4096
        }]
    );

    // Read it back into another buffer, split over three descriptors of odd sizes.
    let out = 0x40_0000;
    put(&rig.mem, out, &[0u8; 4096]);
    // Clear the dirty bitmap so the check below sees this read's writes only.
    for r in rig.mem.iter() {
        bitmap(r).reset();
    }
    rig.header(VIRTIO_BLK_T_IN, 8);
    add_chain(
        &vq,
        3,
        &[
            Buf(HDR, 16, false),
            Buf(out, 1000, true),
            Buf(out + 1000, 3000, true),
            Buf(out + 4000, 96, true),
            Buf(STATUS, 1, true),
        ],
    );
    write32(&mut t, 0x50, 0);
    assert_eq!(used_idx(&vq), 2);
    assert_eq!(used(&vq, 1), (3, 4097));
    assert_eq!(rig.status(), VIRTIO_BLK_S_OK);
    assert_eq!(get(&rig.mem, out, 4096), pattern);
    assert!(
        is_dirty(&rig.mem, out),
        "device writes mark guest pages dirty"
    );
    assert!(!is_dirty(&rig.mem, 0x80_0000), "untouched pages stay clean");
    assert_eq!(read32(&t, 0x60), 1);
}

#[test]
fn header_split_across_descriptors() {
    let rig = Rig::new();
    let mut t = rig.transport(false, false);
    let vq = MockSplitQueue::create(&rig.mem, GuestAddress(0x1_0000), QSIZE);
    bring_up(&mut t, &[&vq], QSIZE);
    // Header and data in one readable buffer, then the status.
    let mut req = vec![0u8; 16 + 512];
    req[..4].copy_from_slice(&VIRTIO_BLK_T_OUT.to_le_bytes());
    req[8..16].copy_from_slice(&3u64.to_le_bytes());
    req[16..].fill(0xab);
    put(&rig.mem, HDR, &req);
    add_chain(
        &vq,
        0,
        &[
            Buf(HDR, 8, false),
            Buf(HDR + 8, 520, false),
            Buf(STATUS, 1, true),
        ],
    );
    write32(&mut t, 0x50, 0);
    assert_eq!(rig.status(), VIRTIO_BLK_S_OK);
    let mut b = [0u8; 512];
    rig.image.as_file().read_exact_at(&mut b, 3 * 512).unwrap();
    assert_eq!(b, [0xab; 512]);
}

#[test]
fn flush_and_get_id() {
    let rig = Rig::new();
    let mut t = rig.transport(false, false);
    assert_ne!(offered(&mut t) & (1 << VIRTIO_BLK_F_FLUSH), 0);
    let vq = MockSplitQueue::create(&rig.mem, GuestAddress(0x1_0000), QSIZE);
    bring_up(&mut t, &[&vq], QSIZE);
    rig.header(VIRTIO_BLK_T_FLUSH, 0);
    add_chain(&vq, 0, &[Buf(HDR, 16, false), Buf(STATUS, 1, true)]);
    write32(&mut t, 0x50, 0);
    assert_eq!(rig.status(), VIRTIO_BLK_S_OK);
    // Replication hears of the flush (the secondary syncs that epoch before acking it).
    assert_eq!(
        *rig.changes.lock().unwrap(),
        vec![DiskChange {
            kind: DiskChangeKind::Flush,
            sector: 0,
            len: 0
        }]
    );

    rig.header(VIRTIO_BLK_T_GET_ID, 0);
    put(&rig.mem, DATA, &[0u8; 20]);
    add_chain(
        &vq,
        2,
        &[
            Buf(HDR, 16, false),
            Buf(DATA, 20, true),
            Buf(STATUS, 1, true),
        ],
    );
    write32(&mut t, 0x50, 0);
    assert_eq!(rig.status(), VIRTIO_BLK_S_OK);
    assert_eq!(used(&vq, 1), (2, 21));
    assert!(get(&rig.mem, DATA, 20).starts_with(b"havms"));
}

#[test]
fn capacity_in_config_space() {
    let rig = Rig::new();
    let t = rig.transport(false, false);
    let mut cap = [0u8; 8];
    t.read(0x100, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), DISK / 512);
}

#[test]
fn read_only_disk_rejects_writes() {
    let rig = Rig::new();
    rig.image.as_file().write_all_at(&[0x11; 512], 0).unwrap();
    let mut t = rig.transport(true, true);
    assert_ne!(offered(&mut t) & (1 << VIRTIO_BLK_F_RO), 0);
    assert_eq!(
        offered(&mut t) & (1 << VIRTIO_BLK_F_DISCARD),
        0,
        "no discard on a read-only disk"
    );
    let vq = MockSplitQueue::create(&rig.mem, GuestAddress(0x1_0000), QSIZE);
    bring_up(&mut t, &[&vq], QSIZE);
    put(&rig.mem, DATA, &[0x22; 512]);
    rig.header(VIRTIO_BLK_T_OUT, 0);
    add_chain(
        &vq,
        0,
        &[
            Buf(HDR, 16, false),
            Buf(DATA, 512, false),
            Buf(STATUS, 1, true),
        ],
    );
    write32(&mut t, 0x50, 0);
    assert_eq!(rig.status(), VIRTIO_BLK_S_IOERR);
    let mut b = [0u8; 512];
    rig.image.as_file().read_exact_at(&mut b, 0).unwrap();
    assert_eq!(b, [0x11; 512], "image untouched");
    assert!(rig.changes.lock().unwrap().is_empty());
    // Reads still work.
    rig.header(VIRTIO_BLK_T_IN, 0);
    add_chain(
        &vq,
        3,
        &[
            Buf(HDR, 16, false),
            Buf(DATA, 512, true),
            Buf(STATUS, 1, true),
        ],
    );
    write32(&mut t, 0x50, 0);
    assert_eq!(rig.status(), VIRTIO_BLK_S_OK);
    assert_eq!(get(&rig.mem, DATA, 512), vec![0x11; 512]);
}

/// Runs one malformed request and returns (status byte, used length).
fn run_bad(
    rig: &Rig,
    t: &mut MmioTransport,
    vq: &MockSplitQueue<'_, VirtioMem>,
    slot: u16,
    bufs: &[Buf],
) -> (u32, u32) {
    put(&rig.mem, STATUS, &[0xff]);
    let before = used_idx(vq);
    add_chain(vq, slot, bufs);
    write32(t, 0x50, 0);
    assert_eq!(used_idx(vq), before + 1, "every request is completed");
    (rig.status(), used(vq, before).1)
}

#[test]
fn malformed_requests_get_error_statuses() {
    let rig = Rig::new();
    let mut t = rig.transport(false, false);
    let vq = MockSplitQueue::create(&rig.mem, GuestAddress(0x1_0000), QSIZE);
    bring_up(&mut t, &[&vq], QSIZE);

    // Header too short.
    rig.header(VIRTIO_BLK_T_IN, 0);
    let r = run_bad(
        &rig,
        &mut t,
        &vq,
        0,
        &[Buf(HDR, 8, false), Buf(STATUS, 1, true)],
    );
    assert_eq!(r, (VIRTIO_BLK_S_IOERR, 1));
    // Past the end of the disk.
    rig.header(VIRTIO_BLK_T_IN, DISK / 512);
    let r = run_bad(
        &rig,
        &mut t,
        &vq,
        2,
        &[
            Buf(HDR, 16, false),
            Buf(DATA, 512, true),
            Buf(STATUS, 1, true),
        ],
    );
    assert_eq!(r.0, VIRTIO_BLK_S_IOERR);
    // A sector number that overflows when turned into bytes.
    rig.header(VIRTIO_BLK_T_OUT, u64::MAX);
    let r = run_bad(
        &rig,
        &mut t,
        &vq,
        5,
        &[
            Buf(HDR, 16, false),
            Buf(DATA, 512, false),
            Buf(STATUS, 1, true),
        ],
    );
    assert_eq!(r.0, VIRTIO_BLK_S_IOERR);
    // Length not whole sectors.
    rig.header(VIRTIO_BLK_T_OUT, 0);
    let r = run_bad(
        &rig,
        &mut t,
        &vq,
        8,
        &[
            Buf(HDR, 16, false),
            Buf(DATA, 100, false),
            Buf(STATUS, 1, true),
        ],
    );
    assert_eq!(r.0, VIRTIO_BLK_S_IOERR);
    // Unknown request type.
    rig.header(99, 0);
    let r = run_bad(
        &rig,
        &mut t,
        &vq,
        11,
        &[Buf(HDR, 16, false), Buf(STATUS, 1, true)],
    );
    assert_eq!(r, (VIRTIO_BLK_S_UNSUPP, 1));
    // Discard on a disk that does not offer it.
    rig.header(VIRTIO_BLK_T_DISCARD, 0);
    put(&rig.mem, DATA, &[0u8; 16]);
    let r = run_bad(
        &rig,
        &mut t,
        &vq,
        13,
        &[
            Buf(HDR, 16, false),
            Buf(DATA, 16, false),
            Buf(STATUS, 1, true),
        ],
    );
    assert_eq!(r.0, VIRTIO_BLK_S_UNSUPP);
    // No writable byte for the status: completed with nothing written.
    rig.header(VIRTIO_BLK_T_FLUSH, 0);
    let r = run_bad(&rig, &mut t, &vq, 0, &[Buf(HDR, 16, false)]);
    assert_eq!(r, (0xff, 0));
    // A buffer outside guest memory.
    let r = run_bad(
        &rig,
        &mut t,
        &vq,
        1,
        &[
            Buf(HDR, 16, false),
            Buf(1 << 40, 512, true),
            Buf(STATUS, 1, true),
        ],
    );
    assert_eq!(r, (0xff, 0));
    assert!(
        rig.changes.lock().unwrap().is_empty(),
        "nothing was written"
    );
    // The device still works afterwards.
    rig.header(VIRTIO_BLK_T_FLUSH, 0);
    let r = run_bad(
        &rig,
        &mut t,
        &vq,
        4,
        &[Buf(HDR, 16, false), Buf(STATUS, 1, true)],
    );
    assert_eq!(r, (VIRTIO_BLK_S_OK, 1));
}

#[test]
fn discard_punches_a_hole() {
    let rig = Rig::new();
    rig.image.as_file().write_all_at(&[0x5a; 8192], 0).unwrap();
    let mut t = rig.transport(false, true);
    assert_ne!(offered(&mut t) & (1 << VIRTIO_BLK_F_DISCARD), 0);
    let vq = MockSplitQueue::create(&rig.mem, GuestAddress(0x1_0000), QSIZE);
    bring_up(&mut t, &[&vq], QSIZE);
    let mut seg = [0u8; 16];
    seg[..8].copy_from_slice(&8u64.to_le_bytes());
    seg[8..12].copy_from_slice(&8u32.to_le_bytes());
    put(&rig.mem, DATA, &seg);
    rig.header(VIRTIO_BLK_T_DISCARD, 0);
    add_chain(
        &vq,
        0,
        &[
            Buf(HDR, 16, false),
            Buf(DATA, 16, false),
            Buf(STATUS, 1, true),
        ],
    );
    write32(&mut t, 0x50, 0);
    assert_eq!(rig.status(), VIRTIO_BLK_S_OK);
    let mut b = vec![0u8; 8192];
    rig.image.as_file().read_exact_at(&mut b, 0).unwrap();
    assert_eq!(&b[..4096], &[0x5a; 4096][..]);
    assert_eq!(
        &b[4096..],
        &[0u8; 4096][..],
        "discarded range reads as zeros"
    );
    assert_eq!(
        *rig.changes.lock().unwrap(),
        vec![DiskChange {
            kind: DiskChangeKind::Discard,
            sector: 8,
            len: 4096
        }]
    );
    // A segment past the end changes nothing.
    seg[..8].copy_from_slice(&(DISK / 512).to_le_bytes());
    put(&rig.mem, DATA, &seg);
    rig.header(VIRTIO_BLK_T_DISCARD, 0);
    add_chain(
        &vq,
        3,
        &[
            Buf(HDR, 16, false),
            Buf(DATA, 16, false),
            Buf(STATUS, 1, true),
        ],
    );
    write32(&mut t, 0x50, 0);
    assert_eq!(rig.status(), VIRTIO_BLK_S_IOERR);
    assert_eq!(rig.changes.lock().unwrap().len(), 1);
}

#[test]
fn state_restore_continues_and_checks_the_disk() {
    let rig = Rig::new();
    let mut t = rig.transport(false, false);
    let vq = MockSplitQueue::create(&rig.mem, GuestAddress(0x1_0000), QSIZE);
    bring_up(&mut t, &[&vq], QSIZE);
    rig.header(VIRTIO_BLK_T_FLUSH, 0);
    add_chain(&vq, 0, &[Buf(HDR, 16, false), Buf(STATUS, 1, true)]);
    write32(&mut t, 0x50, 0);
    let state = serde_json::to_string(&t.save_state()).unwrap();

    let mut r = rig.transport(false, false);
    r.restore_state(&serde_json::from_str(&state).unwrap())
        .unwrap();
    put(&rig.mem, DATA, &[0x77; 512]);
    rig.header(VIRTIO_BLK_T_OUT, 1);
    add_chain(
        &vq,
        2,
        &[
            Buf(HDR, 16, false),
            Buf(DATA, 512, false),
            Buf(STATUS, 1, true),
        ],
    );
    write32(&mut r, 0x50, 0);
    assert_eq!(used_idx(&vq), 2);
    assert_eq!(rig.status(), VIRTIO_BLK_S_OK);

    // The same state on a disk of another size is refused with the reason.
    rig.image.as_file().set_len(2 * DISK).unwrap();
    let mut other = rig.transport(false, false);
    let e = other
        .restore_state(&serde_json::from_str(&state).unwrap())
        .unwrap_err();
    assert!(e.to_string().contains("bytes"), "{e}");
    assert!(!other.device().is_activated());
}

#[test]
fn odd_sized_image_is_refused() {
    let image = TempFile::new_with_prefix("/tmp/havms-virtio-blk").unwrap();
    image.as_file().set_len(1000).unwrap();
    let e = RawFile::open(image.as_path(), false).unwrap_err();
    assert!(e.to_string().contains("not a multiple of 512"), "{e}");
    let e = RawFile::open(std::path::Path::new("/nonexistent/disk.img"), false).unwrap_err();
    assert!(e.to_string().contains("/nonexistent/disk.img"), "{e}");
}

#[test]
fn the_zero_write_fallback_of_discard_zeroes_exactly_the_range() {
    let f = TempFile::new().unwrap();
    let len = 3 * (1 << 20) + 4096;
    f.as_file().write_all_at(&vec![0xabu8; len], 0).unwrap();
    let disk = RawFile::open(f.as_path(), false).unwrap();
    // More than one 1 MiB chunk, not aligned to one.
    disk.write_zeros(512, 2 * (1 << 20) + 1024).unwrap();
    let mut back = vec![0u8; len];
    f.as_file().read_exact_at(&mut back, 0).unwrap();
    assert!(back[..512].iter().all(|&b| b == 0xab));
    assert!(back[512..512 + 2 * (1 << 20) + 1024]
        .iter()
        .all(|&b| b == 0));
    assert!(back[512 + 2 * (1 << 20) + 1024..]
        .iter()
        .all(|&b| b == 0xab));
}
