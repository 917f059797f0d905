//! `NetOutput`: the guest's transmit path after the virtqueue: the output gate plus the backend
//! that puts frames on the wire. The device sends through it; the supervisor keeps a clone to
//! drive epochs (`begin_epoch`, `commit`, `discard_uncommitted`, `set_mode`) from its own thread.
//! Frames are written to the backend under the gate's lock, so released and passed frames leave
//! in exactly the order the guest sent them.

use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use super::backend::NetBackend;
use super::gate::{GateError, GateMode, GateState, GateStats, OutputGate};

struct Inner {
    gate: OutputGate,
    /// Frames the backend refused (queue full, link down): lost like on a congested wire.
    send_errors: u64,
}

/// Shared handle on one NIC's output gate.
#[derive(Clone)]
pub struct NetOutput {
    inner: Arc<Mutex<Inner>>,
    backend: Arc<dyn NetBackend>,
}

impl NetOutput {
    pub fn new(backend: Arc<dyn NetBackend>, mode: GateMode) -> Self {
        NetOutput {
            inner: Arc::new(Mutex::new(Inner {
                gate: OutputGate::new(mode),
                send_errors: 0,
            })),
            backend,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn transmit(backend: &dyn NetBackend, inner: &mut Inner, frame: &[u8]) {
        if let Err(e) = backend.send(frame) {
            inner.send_errors += 1;
            if e.kind() != io::ErrorKind::WouldBlock {
                log::warn!("virtio-net: sending a {}-byte frame: {e}", frame.len());
            }
        }
    }

    /// A frame from the guest (virtio-net header included): sent now or held.
    pub fn send(&self, frame: Vec<u8>) {
        let mut inner = self.lock();
        if let Some(frame) = inner.gate.submit(frame) {
            Self::transmit(self.backend.as_ref(), &mut inner, &frame);
        }
    }

    /// Sends a frame the host made (e.g. a RARP announcing the MAC after failover), bypassing
    /// the gate.
    pub fn send_ungated(&self, frame: &[u8]) {
        let mut inner = self.lock();
        Self::transmit(self.backend.as_ref(), &mut inner, frame);
    }

    /// Announces `mac` on the wire as QEMU's announce-self does: a broadcast RARP request from
    /// it, so switches (and the node's bridge) learn at once that the guest is now behind
    /// this port (after a failover the guest itself says nothing until it next sends).
    pub fn announce(&self, mac: [u8; 6]) {
        self.send_ungated(&rarp_announce(mac));
    }

    /// Frames the guest sends from now on belong to epoch `n`.
    pub fn begin_epoch(&self, n: u64) -> Result<(), GateError> {
        self.lock().gate.begin_epoch(n)
    }

    /// Epoch `n` is committed on the peer: sends every held frame of epochs <= n. Returns how
    /// many were released.
    pub fn commit(&self, n: u64) -> usize {
        let mut inner = self.lock();
        let frames = inner.gate.commit(n);
        for f in &frames {
            Self::transmit(self.backend.as_ref(), &mut inner, f);
        }
        frames.len()
    }

    /// Drops every held frame (failover on this node's side of an uncommitted epoch).
    pub fn discard_uncommitted(&self) -> usize {
        self.lock().gate.discard_uncommitted()
    }

    /// A replication stream starts at epoch `n` (see `OutputGate::start_gating`).
    pub fn start_gating(&self, n: u64) {
        let mut inner = self.lock();
        let frames = inner.gate.start_gating(n);
        for f in &frames {
            Self::transmit(self.backend.as_ref(), &mut inner, f);
        }
    }

    /// Gated while protected; Off when degraded. Switching off sends whatever was held.
    pub fn set_mode(&self, mode: GateMode) {
        let mut inner = self.lock();
        let frames = inner.gate.set_mode(mode);
        for f in &frames {
            Self::transmit(self.backend.as_ref(), &mut inner, f);
        }
    }

    pub fn mode(&self) -> GateMode {
        self.lock().gate.mode()
    }

    pub fn stats(&self) -> GateStats {
        self.lock().gate.stats()
    }

    /// Frames the backend refused since creation.
    pub fn send_errors(&self) -> u64 {
        self.lock().send_errors
    }

    pub fn save(&self) -> GateState {
        self.lock().gate.save()
    }

    pub fn restore(&self, s: &GateState) {
        self.lock().gate.restore(s)
    }
}

/// Rounds of `announce_rounds` and the gaps between them, as QEMU's announce-self defaults
/// (5 rounds, 50 ms first, 100 ms more each time, at most 550 ms).
pub const ANNOUNCE_ROUNDS: u32 = 5;
const ANNOUNCE_FIRST_GAP_MS: u64 = 50;
const ANNOUNCE_STEP_MS: u64 = 100;
const ANNOUNCE_MAX_GAP_MS: u64 = 550;

/// Announces each NIC's MAC (`macs[i]` on `nets[i]`) `ANNOUNCE_ROUNDS` times, the first at once
/// and the rest from a background thread, as QEMU does after a migration: one RARP can be lost
/// (a bridge port still coming up, a switch busy), five rarely are.
pub fn announce_rounds(nets: Vec<NetOutput>, macs: Vec<[u8; 6]>) {
    let pairs: Vec<(NetOutput, [u8; 6])> = nets.into_iter().zip(macs).collect();
    if pairs.is_empty() {
        return;
    }
    for (n, m) in &pairs {
        n.announce(*m);
    }
    let spawned = std::thread::Builder::new()
        .name("announce".into())
        .spawn(move || {
            let mut gap = ANNOUNCE_FIRST_GAP_MS;
            for _ in 1..ANNOUNCE_ROUNDS {
                std::thread::sleep(std::time::Duration::from_millis(gap));
                for (n, m) in &pairs {
                    n.announce(*m);
                }
                gap = (gap + ANNOUNCE_STEP_MS).min(ANNOUNCE_MAX_GAP_MS);
            }
        });
    if let Err(e) = spawned {
        log::warn!("virtio-net: no thread for the MAC announce rounds: {e}");
    }
}

/// A RARP "request reverse" from `mac` for itself, with the (all-zero) virtio-net header in
/// front and padded to the 60-byte Ethernet minimum.
pub fn rarp_announce(mac: [u8; 6]) -> Vec<u8> {
    let mut f = vec![0u8; super::device::VNET_HDR_LEN];
    f.extend_from_slice(&[0xff; 6]); // broadcast
    f.extend_from_slice(&mac);
    f.extend_from_slice(&[0x80, 0x35]); // RARP
    f.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 3]); // Ethernet/IPv4, op 3
    f.extend_from_slice(&mac); // sender hardware address
    f.extend_from_slice(&[0; 4]); // sender protocol address
    f.extend_from_slice(&mac); // target hardware address
    f.extend_from_slice(&[0; 4]); // target protocol address
    f.resize(super::device::VNET_HDR_LEN + 60, 0);
    f
}

#[cfg(test)]
mod announce_tests {
    #[test]
    fn the_announce_is_a_broadcast_rarp_from_the_mac() {
        let mac = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
        let f = super::rarp_announce(mac);
        let e = &f[12..];
        assert_eq!(e.len(), 60);
        assert_eq!(&e[0..6], &[0xff; 6]);
        assert_eq!(&e[6..12], &mac);
        assert_eq!(&e[12..14], &[0x80, 0x35]);
        assert_eq!(&e[20..22], &[0, 3]);
        assert_eq!(&e[22..28], &mac);
        assert_eq!(&e[32..38], &mac);
    }
}
