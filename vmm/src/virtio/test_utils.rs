//! Shared helpers for the virtio host tests: guest memory, a minimal "driver" that programs a
//! transport through its registers the way Linux's virtio_mmio does, and descriptor chain
//! building on virtio-queue's MockSplitQueue.

use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};

use super::mmio::MmioTransport;
use super::VirtioMem;

pub const ACKNOWLEDGE: u32 = 1;
pub const DRIVER: u32 = 2;
pub const DRIVER_OK: u32 = 4;
pub const FEATURES_OK: u32 = 8;
pub const NEEDS_RESET: u32 = 64;

/// 16 MiB of guest memory at 0 with the dirty bitmap.
pub fn mem() -> VirtioMem {
    VirtioMem::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap()
}

pub fn read32(t: &MmioTransport, off: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(off, &mut b);
    u32::from_le_bytes(b)
}

pub fn write32(t: &mut MmioTransport, off: u64, v: u32) {
    t.write(off, &v.to_le_bytes());
}

/// All 64 offered feature bits.
pub fn offered(t: &mut MmioTransport) -> u64 {
    write32(t, 0x14, 0);
    let lo = read32(t, 0x10);
    write32(t, 0x14, 1);
    let hi = read32(t, 0x10);
    u64::from(lo) | (u64::from(hi) << 32)
}

pub fn ack_features(t: &mut MmioTransport, f: u64) {
    write32(t, 0x24, 0);
    write32(t, 0x20, f as u32);
    write32(t, 0x24, 1);
    write32(t, 0x20, (f >> 32) as u32);
}

/// Programs queue `index` with the rings of `vq`.
pub fn setup_queue(
    t: &mut MmioTransport,
    index: u32,
    vq: &MockSplitQueue<'_, VirtioMem>,
    size: u16,
) {
    write32(t, 0x30, index);
    write32(t, 0x38, u32::from(size));
    let d = vq.desc_table_addr().0;
    let a = vq.avail_addr().0;
    let u = vq.used_addr().0;
    write32(t, 0x80, d as u32);
    write32(t, 0x84, (d >> 32) as u32);
    write32(t, 0x90, a as u32);
    write32(t, 0x94, (a >> 32) as u32);
    write32(t, 0xa0, u as u32);
    write32(t, 0xa4, (u >> 32) as u32);
    write32(t, 0x44, 1);
}

/// The whole Linux init sequence: reset, ACK, DRIVER, all offered features, FEATURES_OK, queues,
/// DRIVER_OK. Returns the final status.
pub fn bring_up(
    t: &mut MmioTransport,
    queues: &[&MockSplitQueue<'_, VirtioMem>],
    size: u16,
) -> u32 {
    write32(t, 0x70, 0);
    write32(t, 0x70, ACKNOWLEDGE);
    write32(t, 0x70, ACKNOWLEDGE | DRIVER);
    let f = offered(t);
    ack_features(t, f);
    write32(t, 0x70, ACKNOWLEDGE | DRIVER | FEATURES_OK);
    for (i, vq) in queues.iter().enumerate() {
        setup_queue(t, i as u32, vq, size);
    }
    write32(t, 0x70, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
    read32(t, 0x70)
}

/// One buffer of a chain: guest address, length, device-writable.
#[derive(Clone, Copy)]
pub struct Buf(pub u64, pub u32, pub bool);

/// Writes a chain into descriptor slots `first..` and makes it available. Returns its head.
pub fn add_chain(vq: &MockSplitQueue<'_, VirtioMem>, first: u16, bufs: &[Buf]) -> u16 {
    let descs: Vec<RawDescriptor> = bufs
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let mut flags = if b.2 { VRING_DESC_F_WRITE as u16 } else { 0 };
            let last = i + 1 == bufs.len();
            if !last {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            let next = if last { 0 } else { first + i as u16 + 1 };
            RawDescriptor::from(SplitDescriptor::new(b.0, b.1, flags, next))
        })
        .collect();
    vq.add_desc_chains(&descs, first).unwrap();
    first
}

/// Number of used-ring entries the device has published.
pub fn used_idx(vq: &MockSplitQueue<'_, VirtioMem>) -> u16 {
    vq.used().idx().load()
}

/// (head, len) of used-ring entry `i`.
pub fn used(vq: &MockSplitQueue<'_, VirtioMem>, i: u16) -> (u32, u32) {
    let e = vq.used().ring().ref_at(i as usize).unwrap().load();
    (e.id(), e.len())
}

pub fn put(mem: &VirtioMem, addr: u64, data: &[u8]) {
    mem.write_slice(data, GuestAddress(addr)).unwrap();
}

pub fn get(mem: &VirtioMem, addr: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
    v
}
