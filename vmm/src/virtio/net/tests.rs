//! Host tests of virtio-net through the mmio transport with a real kernel backend: a
//! SOCK_DGRAM socket pair stands in for the tap (one datagram = one frame with its vnet header),
//! so RX, TX and the output gate run exactly the production code paths. `tap_*` tests use a real
//! tap when /dev/net/tun can be opened (root).

use std::os::unix::net::UnixDatagram;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use virtio_queue::mock::MockSplitQueue;
use vm_memory::GuestAddress;

use super::*;
use crate::virtio::event_loop::EventLoop;
use crate::virtio::mmio::MmioTransport;
use crate::virtio::test_utils::*;
use crate::virtio::VirtioMem;

const QSIZE: u16 = 16;
const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
const RXBUF: u64 = 0x20_0000;
const TXBUF: u64 = 0x30_0000;

/// A frame as the guest / tap see it: 12 zero header bytes then `payload`.
fn frame(payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; VNET_HDR_LEN];
    f.extend_from_slice(payload);
    f
}

struct Rig {
    mem: VirtioMem,
    peer: UnixDatagram,
    output: NetOutput,
    t: MmioTransport,
}

fn rig(gate: GateMode) -> Rig {
    let mem = mem();
    let (ours, peer) = UnixDatagram::pair().unwrap();
    ours.set_nonblocking(true).unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let net = Net::new(Arc::new(ours), MAC, gate);
    let output = net.output();
    let t = MmioTransport::new(Box::new(net), mem.clone()).unwrap();
    Rig {
        mem,
        peer,
        output,
        t,
    }
}

fn queues(mem: &VirtioMem) -> (MockSplitQueue<'_, VirtioMem>, MockSplitQueue<'_, VirtioMem>) {
    (
        MockSplitQueue::create(mem, GuestAddress(0x1_0000), QSIZE),
        MockSplitQueue::create(mem, GuestAddress(0x2_0000), QSIZE),
    )
}

fn recv(peer: &UnixDatagram) -> Vec<u8> {
    let mut b = vec![0u8; 70000];
    let n = peer.recv(&mut b).unwrap();
    b.truncate(n);
    b
}

fn nothing_waiting(peer: &UnixDatagram) -> bool {
    peer.set_nonblocking(true).unwrap();
    let mut b = [0u8; 16];
    let r = peer.recv(&mut b);
    peer.set_nonblocking(false).unwrap();
    matches!(r, Err(ref e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// Guest sends `payload` as TX chain `slot` (header and frame in separate descriptors).
fn guest_send(r: &mut Rig, tx: &MockSplitQueue<'_, VirtioMem>, slot: u16, payload: &[u8]) {
    let addr = TXBUF + u64::from(slot) * 0x1000;
    put(&r.mem, addr, &frame(payload));
    add_chain(
        tx,
        slot,
        &[
            Buf(addr, VNET_HDR_LEN as u32, false),
            Buf(addr + VNET_HDR_LEN as u64, payload.len() as u32, false),
        ],
    );
    write32(&mut r.t, 0x50, 1);
}

#[test]
fn mac_is_in_config_space() {
    let r = rig(GateMode::Off);
    let mut m = [0u8; 6];
    r.t.read(0x100, &mut m);
    assert_eq!(m, MAC);
    assert_ne!(
        r.t.device().avail_features() & (1 << 5),
        0,
        "VIRTIO_NET_F_MAC"
    );
}

#[test]
fn tx_passes_at_once_when_the_gate_is_off() {
    let mut r = rig(GateMode::Off);
    let mem = r.mem.clone();
    let (rx, tx) = queues(&mem);
    assert_eq!(bring_up(&mut r.t, &[&rx, &tx], QSIZE), 0xf);
    guest_send(&mut r, &tx, 0, b"hello wire");
    assert_eq!(used_idx(&tx), 1);
    assert_eq!(used(&tx, 0), (0, 0));
    assert_eq!(recv(&r.peer), frame(b"hello wire"));
    assert_eq!(read32(&r.t, 0x60), 1);
    assert_eq!(r.output.stats().passed_frames, 1);
}

#[test]
fn tx_is_held_until_its_epoch_commits() {
    let mut r = rig(GateMode::Gated);
    let mem = r.mem.clone();
    let (rx, tx) = queues(&mem);
    bring_up(&mut r.t, &[&rx, &tx], QSIZE);
    r.output.begin_epoch(1).unwrap();
    guest_send(&mut r, &tx, 0, b"one");
    guest_send(&mut r, &tx, 1, b"two");
    r.output.begin_epoch(2).unwrap();
    guest_send(&mut r, &tx, 2, b"three");
    // The guest got its buffers back at once: gating is invisible to it.
    assert_eq!(used_idx(&tx), 3);
    assert!(nothing_waiting(&r.peer), "nothing leaves before a commit");
    assert_eq!(r.output.commit(1), 2);
    assert_eq!(recv(&r.peer), frame(b"one"));
    assert_eq!(recv(&r.peer), frame(b"two"));
    assert!(nothing_waiting(&r.peer), "epoch 2 still held");
    assert_eq!(r.output.discard_uncommitted(), 1);
    assert_eq!(r.output.commit(2), 0);
    assert!(nothing_waiting(&r.peer));
    let s = r.output.stats();
    assert_eq!(
        (s.held_frames, s.released_frames, s.discarded_frames),
        (3, 2, 1)
    );
}

#[test]
fn malformed_tx_is_dropped_and_completed() {
    let mut r = rig(GateMode::Off);
    let mem = r.mem.clone();
    let (rx, tx) = queues(&mem);
    bring_up(&mut r.t, &[&rx, &tx], QSIZE);
    // Shorter than the virtio-net header.
    add_chain(&tx, 0, &[Buf(TXBUF, 4, false)]);
    write32(&mut r.t, 0x50, 1);
    // Outside guest memory.
    add_chain(&tx, 1, &[Buf(1 << 40, 64, false)]);
    write32(&mut r.t, 0x50, 1);
    assert_eq!(used_idx(&tx), 2);
    assert!(nothing_waiting(&r.peer));
    guest_send(&mut r, &tx, 2, b"still fine");
    assert_eq!(recv(&r.peer), frame(b"still fine"));
}

#[test]
fn rx_fills_guest_buffers_and_waits_when_there_are_none() {
    let mut r = rig(GateMode::Off);
    let mem = r.mem.clone();
    let (rx, tx) = queues(&mem);
    bring_up(&mut r.t, &[&rx, &tx], QSIZE);
    add_chain(&rx, 0, &[Buf(RXBUF, 1526, true)]);
    r.peer.send(&frame(b"first")).unwrap();
    r.peer.send(&frame(b"second")).unwrap();
    r.t.process_backend_event();
    assert_eq!(used_idx(&rx), 1);
    let len = frame(b"first").len();
    assert_eq!(used(&rx, 0), (0, len as u32));
    let got = get(&mem, RXBUF, len);
    assert_eq!(&got[10..12], &1u16.to_le_bytes(), "num_buffers set to 1");
    assert_eq!(&got[12..], b"first");
    assert_eq!(read32(&r.t, 0x60), 1);

    // "second" waits in the device until the guest posts a buffer and notifies RX.
    add_chain(&rx, 1, &[Buf(RXBUF + 0x1000, 1526, true)]);
    write32(&mut r.t, 0x50, 0);
    assert_eq!(used_idx(&rx), 2);
    assert_eq!(&get(&mem, RXBUF + 0x1000 + 12, 6), b"second");
}

#[test]
fn rx_frame_too_big_for_the_buffer_is_dropped() {
    let mut r = rig(GateMode::Off);
    let mem = r.mem.clone();
    let (rx, tx) = queues(&mem);
    bring_up(&mut r.t, &[&rx, &tx], QSIZE);
    add_chain(&rx, 0, &[Buf(RXBUF, 64, true)]);
    r.peer.send(&frame(&[7u8; 200])).unwrap();
    r.peer.send(&frame(b"small")).unwrap();
    r.t.process_backend_event();
    assert_eq!(used_idx(&rx), 1, "the buffer went to the frame that fits");
    assert_eq!(&get(&mem, RXBUF + 12, 5), b"small");
}

#[test]
fn rx_before_activation_is_delivered_on_activation() {
    let mut r = rig(GateMode::Off);
    let mem = r.mem.clone();
    let (rx, tx) = queues(&mem);
    r.peer.send(&frame(b"early")).unwrap();
    r.t.process_backend_event(); // not active: ignored
    add_chain(&rx, 0, &[Buf(RXBUF, 1526, true)]);
    bring_up(&mut r.t, &[&rx, &tx], QSIZE);
    assert_eq!(used_idx(&rx), 1);
    assert_eq!(&get(&mem, RXBUF + 12, 5), b"early");
}

#[test]
fn held_frames_survive_save_and_restore() {
    let mut r = rig(GateMode::Gated);
    let mem = r.mem.clone();
    let (rx, tx) = queues(&mem);
    bring_up(&mut r.t, &[&rx, &tx], QSIZE);
    r.output.begin_epoch(4).unwrap();
    guest_send(&mut r, &tx, 0, b"in flight");
    let state = serde_json::to_string(&r.t.save_state()).unwrap();

    // The replica: a new device on another backend, restored from the checkpoint.
    let (ours, peer2) = UnixDatagram::pair().unwrap();
    ours.set_nonblocking(true).unwrap();
    peer2
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let net = Net::new(Arc::new(ours), MAC, GateMode::Off);
    let out2 = net.output();
    let mut t2 = MmioTransport::new(Box::new(net), mem.clone()).unwrap();
    t2.restore_state(&serde_json::from_str(&state).unwrap())
        .unwrap();
    assert_eq!(out2.mode(), GateMode::Gated);
    assert_eq!(out2.commit(4), 1, "takeover commits the checkpoint's epoch");
    assert_eq!(recv(&peer2), frame(b"in flight"));
    // The restored device continues the TX ring.
    let mut r2 = Rig {
        mem: mem.clone(),
        peer: peer2,
        output: out2,
        t: t2,
    };
    r2.output.set_mode(GateMode::Off);
    guest_send(&mut r2, &tx, 1, b"after");
    assert_eq!(used_idx(&tx), 2);
    assert_eq!(recv(&r2.peer), frame(b"after"));

    // A state with another MAC is refused.
    let (ours, _p) = UnixDatagram::pair().unwrap();
    let mut t3 = MmioTransport::new(
        Box::new(Net::new(Arc::new(ours), [2, 0, 0, 0, 0, 1], GateMode::Off)),
        mem.clone(),
    )
    .unwrap();
    let e = t3
        .restore_state(&serde_json::from_str(&state).unwrap())
        .unwrap_err();
    assert!(e.to_string().contains("MAC"), "{e}");
}

#[test]
fn event_loop_drives_rx() {
    let r = rig(GateMode::Off);
    let mem = r.mem.clone();
    let (rx, tx) = queues(&mem);
    let peer = r.peer;
    let t = Arc::new(Mutex::new(r.t));
    bring_up(&mut t.lock().unwrap(), &[&rx, &tx], QSIZE);
    add_chain(&rx, 0, &[Buf(RXBUF, 1526, true)]);
    let mut el = EventLoop::new().unwrap();
    assert!(el.add_transport(&t).unwrap());
    let _handle = el.spawn("test-virtio-net").unwrap();
    peer.send(&frame(b"via epoll")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while used_idx(&rx) == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(used_idx(&rx), 1);
    assert_eq!(&get(&mem, RXBUF + 12, 9), b"via epoll");
}

/// Opens a real tap, or says why the host cannot (then the test is a no-op with a message).
fn real_tap(name: &str) -> Option<Tap> {
    match Tap::open(name) {
        Ok(t) => Some(t),
        Err(e) => {
            eprintln!("skipping real tap test: {e}");
            None
        }
    }
}

fn ip(args: &[&str]) {
    let st = std::process::Command::new("ip")
        .args(args)
        .status()
        .unwrap();
    assert!(st.success(), "ip {args:?}");
}

#[test]
fn tap_carries_frames_both_ways() {
    let name = "hvtest-vnet0";
    let Some(tap) = real_tap(name) else { return };
    assert_eq!(tap.name(), name);
    ip(&["link", "set", name, "up"]);
    ip(&["addr", "add", "10.253.77.1/24", "dev", name]);

    let mut r = rig(GateMode::Off);
    let tap = Arc::new(tap);
    let net = Net::new(tap.clone(), MAC, GateMode::Gated);
    let output = net.output();
    r.t = MmioTransport::new(Box::new(net), r.mem.clone()).unwrap();
    let mem = r.mem.clone();
    let (rx, tx) = queues(&mem);
    bring_up(&mut r.t, &[&rx, &tx], QSIZE);
    for i in 0..8 {
        add_chain(&rx, i, &[Buf(RXBUF + u64::from(i) * 0x1000, 1526, true)]);
    }

    // The guest (10.253.77.2, MAC) asks who has 10.253.77.1: the host kernel answers through
    // the tap, but only once the gate lets the request out.
    let mut arp = Vec::new();
    arp.extend_from_slice(&[0xff; 6]);
    arp.extend_from_slice(&MAC);
    arp.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    arp.extend_from_slice(&MAC);
    arp.extend_from_slice(&[10, 253, 77, 2]);
    arp.extend_from_slice(&[0; 6]);
    arp.extend_from_slice(&[10, 253, 77, 1]);
    output.begin_epoch(1).unwrap();
    guest_send(&mut r, &tx, 0, &arp);
    assert_eq!(output.stats().waiting_frames, 1);
    assert_eq!(output.commit(1), 1);
    assert_eq!(output.send_errors(), 0);

    // Wait for the ARP reply (the kernel may also send IPv6 chatter; look for ours).
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut found = false;
    while !found && Instant::now() < deadline {
        r.t.process_backend_event();
        for i in 0..used_idx(&rx) {
            let (head, len) = used(&rx, i);
            let f = get(&mem, RXBUF + u64::from(head) * 0x1000, len as usize);
            let eth = &f[VNET_HDR_LEN..];
            if eth.len() >= 42 && eth[12..14] == [0x08, 0x06] && eth[20..22] == [0, 2] {
                assert_eq!(&eth[0..6], &MAC, "reply addressed to the guest");
                assert_eq!(&eth[28..32], &[10, 253, 77, 1]);
                found = true;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(found, "no ARP reply came back through the tap");
}

#[test]
fn tap_name_is_checked() {
    assert!(matches!(Tap::open(""), Err(TapError::BadName(_))));
    assert!(matches!(
        Tap::open("a-name-longer-than-15"),
        Err(TapError::BadName(_))
    ));
}
