//! Host tests of the virtio-mmio transport, driven through its registers like a guest driver,
//! with virtio-rng behind it (the simplest real device) and real rings in guest memory.

use virtio_queue::mock::MockSplitQueue;
use vm_memory::GuestAddress;

use super::{MmioTransport, VirtioMem, VERSION_1};
use crate::virtio::rng::Rng;
use crate::virtio::test_utils::*;

const QSIZE: u16 = 16;

fn rng_transport(mem: &VirtioMem) -> MmioTransport {
    MmioTransport::new(Box::new(Rng::new()), mem.clone()).unwrap()
}

#[test]
fn identification_registers() {
    let mem = mem();
    let t = rng_transport(&mem);
    assert_eq!(read32(&t, 0x00), 0x7472_6976);
    assert_eq!(read32(&t, 0x04), 2);
    assert_eq!(read32(&t, 0x08), 4, "virtio-rng device id");
    assert_eq!(read32(&t, 0x70), 0);
    // Sub-word register reads are refused as zeros, not garbage.
    let mut b = [0xffu8; 2];
    t.read(0, &mut b);
    assert_eq!(b, [0, 0]);
}

#[test]
fn feature_negotiation() {
    let mem = mem();
    let mut t = rng_transport(&mem);
    let f = offered(&mut t);
    assert_ne!(f & VERSION_1, 0, "modern devices offer VIRTIO_F_VERSION_1");
    // Acking before DRIVER is ignored.
    ack_features(&mut t, f);
    assert_eq!(t.acked_features(), 0);
    write32(&mut t, 0x70, ACKNOWLEDGE);
    write32(&mut t, 0x70, ACKNOWLEDGE | DRIVER);
    // Bits the device never offered are dropped.
    ack_features(&mut t, f | (1 << 5));
    assert_eq!(t.acked_features(), f);
    write32(&mut t, 0x70, ACKNOWLEDGE | DRIVER | FEATURES_OK);
    assert_eq!(read32(&t, 0x70), ACKNOWLEDGE | DRIVER | FEATURES_OK);
    // Features are frozen after FEATURES_OK.
    ack_features(&mut t, 0);
    assert_eq!(t.acked_features(), f);
}

#[test]
fn legacy_driver_is_refused_features_ok() {
    let mem = mem();
    let mut t = rng_transport(&mem);
    write32(&mut t, 0x70, ACKNOWLEDGE);
    write32(&mut t, 0x70, ACKNOWLEDGE | DRIVER);
    ack_features(&mut t, 0);
    write32(&mut t, 0x70, ACKNOWLEDGE | DRIVER | FEATURES_OK);
    assert_eq!(read32(&t, 0x70) & FEATURES_OK, 0);
}

#[test]
fn queue_setup_registers() {
    let mem = mem();
    let mut t = rng_transport(&mem);
    write32(&mut t, 0x30, 0);
    assert_eq!(read32(&t, 0x34), 256, "QueueNumMax");
    assert_eq!(read32(&t, 0x44), 0);
    // Queue writes before FEATURES_OK are ignored.
    write32(&mut t, 0x38, 8);
    assert_eq!(read32(&t, 0x38), 256);
    write32(&mut t, 0x70, ACKNOWLEDGE);
    write32(&mut t, 0x70, ACKNOWLEDGE | DRIVER);
    ack_features(&mut t, VERSION_1);
    write32(&mut t, 0x70, ACKNOWLEDGE | DRIVER | FEATURES_OK);
    let vq = MockSplitQueue::create(&mem, GuestAddress(0x1_0000), QSIZE);
    setup_queue(&mut t, 0, &vq, QSIZE);
    assert_eq!(read32(&t, 0x38), u32::from(QSIZE));
    assert_eq!(read32(&t, 0x44), 1);
    assert_eq!(u64::from(read32(&t, 0x80)), vq.desc_table_addr().0);
    assert_eq!(u64::from(read32(&t, 0xa0)), vq.used_addr().0);
    // A queue that does not exist reads as absent (max 0).
    write32(&mut t, 0x30, 3);
    assert_eq!(read32(&t, 0x34), 0);
}

#[test]
fn status_sequence_must_go_in_order() {
    let mem = mem();
    let mut t = rng_transport(&mem);
    write32(&mut t, 0x70, ACKNOWLEDGE | DRIVER);
    assert_eq!(read32(&t, 0x70), 0, "two steps at once");
    write32(&mut t, 0x70, ACKNOWLEDGE);
    write32(&mut t, 0x70, ACKNOWLEDGE | DRIVER_OK);
    assert_eq!(read32(&t, 0x70), ACKNOWLEDGE, "DRIVER_OK before DRIVER");
    write32(&mut t, 0x70, 0x80);
    assert_eq!(
        read32(&t, 0x70),
        ACKNOWLEDGE | 0x80,
        "FAILED is always accepted"
    );
}

#[test]
fn notify_processes_the_queue_and_interrupts() {
    let mem = mem();
    let mut t = rng_transport(&mem);
    let vq = MockSplitQueue::create(&mem, GuestAddress(0x1_0000), QSIZE);
    assert_eq!(bring_up(&mut t, &[&vq], QSIZE), 0xf);
    assert!(t.device().is_activated());

    put(&mem, 0x20_0000, &[0u8; 64]);
    add_chain(&vq, 0, &[Buf(0x20_0000, 64, true)]);
    write32(&mut t, 0x50, 0);
    assert_eq!(used_idx(&vq), 1);
    assert_eq!(used(&vq, 0), (0, 64));
    assert_ne!(get(&mem, 0x20_0000, 64), vec![0u8; 64], "entropy written");
    assert_eq!(read32(&t, 0x60), 1, "used-ring interrupt pending");
    assert_eq!(t.interrupt_eventfd().read().unwrap(), 1);
    write32(&mut t, 0x64, 1);
    assert_eq!(read32(&t, 0x60), 0, "acknowledged");
    // A notify for a queue that does not exist changes nothing.
    write32(&mut t, 0x50, 7);
    assert_eq!(used_idx(&vq), 1);
}

#[test]
fn reset_returns_to_the_initial_state() {
    let mem = mem();
    let mut t = rng_transport(&mem);
    let vq = MockSplitQueue::create(&mem, GuestAddress(0x1_0000), QSIZE);
    bring_up(&mut t, &[&vq], QSIZE);
    write32(&mut t, 0x70, 0);
    assert_eq!(read32(&t, 0x70), 0);
    assert!(!t.device().is_activated());
    assert_eq!(t.acked_features(), 0);
    write32(&mut t, 0x30, 0);
    assert_eq!(read32(&t, 0x44), 0, "queue no longer ready");
    assert_eq!(read32(&t, 0x38), 256, "queue size back to max");
    // Notifies after reset are not processed.
    add_chain(&vq, 0, &[Buf(0x20_0000, 16, true)]);
    write32(&mut t, 0x50, 0);
    assert_eq!(used_idx(&vq), 0);
    // And the device can be brought up again.
    let vq2 = MockSplitQueue::create(&mem, GuestAddress(0x4_0000), QSIZE);
    assert_eq!(bring_up(&mut t, &[&vq2], QSIZE), 0xf);
    add_chain(&vq2, 0, &[Buf(0x20_0000, 16, true)]);
    write32(&mut t, 0x50, 0);
    assert_eq!(used_idx(&vq2), 1);
}

#[test]
fn bad_queue_address_sets_needs_reset() {
    let mem = mem();
    let mut t = rng_transport(&mem);
    write32(&mut t, 0x70, ACKNOWLEDGE);
    write32(&mut t, 0x70, ACKNOWLEDGE | DRIVER);
    ack_features(&mut t, VERSION_1);
    write32(&mut t, 0x70, ACKNOWLEDGE | DRIVER | FEATURES_OK);
    write32(&mut t, 0x30, 0);
    write32(&mut t, 0x38, 16);
    write32(&mut t, 0x80, 0); // descriptor table beyond the 16 MiB of RAM:
    write32(&mut t, 0x84, 1);
    write32(&mut t, 0x44, 1);
    write32(&mut t, 0x70, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
    assert_ne!(read32(&t, 0x70) & NEEDS_RESET, 0);
    assert!(!t.device().is_activated());
    assert_eq!(read32(&t, 0x60), 2, "configuration-change interrupt");
}

#[test]
fn pause_defers_work_until_resume() {
    let mem = mem();
    let mut t = rng_transport(&mem);
    let vq = MockSplitQueue::create(&mem, GuestAddress(0x1_0000), QSIZE);
    bring_up(&mut t, &[&vq], QSIZE);
    t.pause();
    add_chain(&vq, 0, &[Buf(0x20_0000, 16, true)]);
    write32(&mut t, 0x50, 0);
    assert_eq!(used_idx(&vq), 0, "nothing touched while paused");
    t.resume();
    assert_eq!(used_idx(&vq), 1);
}

#[test]
fn state_round_trip_continues_the_rings() {
    let mem = mem();
    let mut t = rng_transport(&mem);
    let vq = MockSplitQueue::create(&mem, GuestAddress(0x1_0000), QSIZE);
    bring_up(&mut t, &[&vq], QSIZE);
    add_chain(&vq, 0, &[Buf(0x20_0000, 8, true)]);
    write32(&mut t, 0x50, 0);
    assert_eq!(used_idx(&vq), 1);
    let state = t.save_state();
    let json = serde_json::to_string(&state).unwrap();

    let mut r = rng_transport(&mem);
    r.restore_state(&serde_json::from_str(&json).unwrap())
        .unwrap();
    assert_eq!(read32(&r, 0x70), 0xf);
    assert!(r.device().is_activated());
    assert_eq!(r.save_state(), state);
    add_chain(&vq, 1, &[Buf(0x20_1000, 8, true)]);
    write32(&mut r, 0x50, 0);
    assert_eq!(
        used_idx(&vq),
        2,
        "the restored device continued at the saved position"
    );
    assert_eq!(used(&vq, 1), (1, 8));
}

#[test]
fn restore_rejects_state_of_another_device() {
    let mem = mem();
    let t = rng_transport(&mem);
    let mut s = t.save_state();
    s.device_type = 2;
    let mut r = rng_transport(&mem);
    assert!(r
        .restore_state(&s)
        .unwrap_err()
        .to_string()
        .contains("device id 2"));
    let mut s = t.save_state();
    s.queues.push(s.queues[0]);
    assert!(r.restore_state(&s).is_err());
}

#[test]
fn driver_can_suppress_interrupts() {
    let mem = mem();
    let mut t = rng_transport(&mem);
    let vq = MockSplitQueue::create(&mem, GuestAddress(0x1_0000), QSIZE);
    bring_up(&mut t, &[&vq], QSIZE);
    // VRING_AVAIL_F_NO_INTERRUPT in the available ring's flags.
    put(&mem, vq.avail_addr().0, &1u16.to_le_bytes());
    add_chain(&vq, 0, &[Buf(0x20_0000, 8, true)]);
    write32(&mut t, 0x50, 0);
    assert_eq!(used_idx(&vq), 1);
    assert_eq!(read32(&t, 0x60), 0);
    assert!(t.interrupt_eventfd().read().is_err(), "no interrupt raised");
}
