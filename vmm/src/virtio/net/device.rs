//! The virtio-net device model: queue 0 receives (host -> guest), queue 1 transmits (guest ->
//! host through the output gate). Frames carry the 12-byte virtio_net_hdr_v1 on both sides, so
//! they are copied between the backend and guest buffers unchanged (only `num_buffers` is set on
//! receive, as virtio 1.x requires). No offload features are offered: with MTU-sized frames and
//! indirect descriptors, a Linux guest needs nothing more.

use std::io::{self, Read, Write};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
use virtio_bindings::virtio_net::VIRTIO_NET_F_MAC;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_INDIRECT_DESC;
use virtio_queue::{Queue, QueueT};

use super::backend::NetBackend;
use super::gate::{GateMode, GateState};
use super::output::NetOutput;
use super::tap::{Tap, TapError};
use crate::virtio::device::{
    read_config_bytes, signal_used, ActivateError, Activation, DeviceState, StateError,
    VirtioDevice,
};
use crate::virtio::interrupt::Interrupt;
use crate::virtio::VirtioMem;

pub const NET_QUEUE_SIZE: u16 = 256;
/// sizeof(struct virtio_net_hdr_v1): the header in front of every frame.
pub const VNET_HDR_LEN: usize = 12;
/// Header plus the largest frame a tap can hand over (64 KiB).
const MAX_FRAME: usize = VNET_HDR_LEN + 65550;
const RX: usize = 0;
const TX: usize = 1;

/// What a virtio-net device is built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    /// Tap interface name (the supervisor has put it on the LAN bridge).
    pub tap: String,
    pub mac: [u8; 6],
    /// Initial gate mode: Off until replication starts.
    pub gate: GateMode,
}

/// Device-specific saved state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetState {
    pub mac: [u8; 6],
    /// A frame read from the tap that found no guest buffer yet.
    pub rx_pending: Option<Vec<u8>>,
    pub gate: GateState,
}

/// Per-device counters (this process only).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetCounters {
    pub rx_frames: u64,
    pub rx_bytes: u64,
    pub rx_dropped: u64,
    pub tx_frames: u64,
    pub tx_bytes: u64,
    pub tx_dropped: u64,
}

enum Delivery {
    Delivered(usize),
    NoBuffer,
    Dropped,
}

/// A virtio-net device.
pub struct Net {
    backend: Arc<dyn NetBackend>,
    output: NetOutput,
    mac: [u8; 6],
    queues: Vec<Queue>,
    active: Option<Activation>,
    rx_pending: Option<Vec<u8>>,
    rx_buf: Vec<u8>,
    counters: NetCounters,
}

impl Net {
    /// Attaches to the tap named in `cfg`.
    pub fn with_tap(cfg: &NetConfig) -> Result<Self, TapError> {
        let tap = Tap::open(&cfg.tap)?;
        Ok(Self::new(Arc::new(tap), cfg.mac, cfg.gate))
    }

    /// A device on any backend (tests use a socket pair).
    pub fn new(backend: Arc<dyn NetBackend>, mac: [u8; 6], gate: GateMode) -> Self {
        let output = NetOutput::new(backend.clone(), gate);
        Net {
            backend,
            output,
            mac,
            // A power of two is always a valid queue size.
            queues: vec![
                Queue::new(NET_QUEUE_SIZE).unwrap_or_default(),
                Queue::new(NET_QUEUE_SIZE).unwrap_or_default(),
            ],
            active: None,
            rx_pending: None,
            rx_buf: vec![0; MAX_FRAME],
            counters: NetCounters::default(),
        }
    }

    /// The output gate handle for the supervisor (clone it; all clones share the gate).
    pub fn output(&self) -> NetOutput {
        self.output.clone()
    }

    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    pub fn counters(&self) -> NetCounters {
        self.counters
    }

    /// Moves frames from the backend into the guest's receive buffers until the backend is
    /// empty or the guest has no buffer left (then the frame in hand waits in `rx_pending` for
    /// the guest's next RX notify).
    pub fn process_rx(&mut self) {
        let Some(active) = &self.active else { return };
        let mut delivered = false;
        loop {
            let frame = match self.rx_pending.take() {
                Some(f) => f,
                None => match self.backend.recv(&mut self.rx_buf) {
                    Ok(n) if n < VNET_HDR_LEN => {
                        log::warn!(
                            "virtio-net: dropped a {n}-byte frame from the host (no header)"
                        );
                        self.counters.rx_dropped += 1;
                        continue;
                    }
                    Ok(n) => self.rx_buf[..n].to_vec(),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        log::warn!("virtio-net: reading from the host side: {e}");
                        break;
                    }
                },
            };
            match deliver(
                &mut self.queues[RX],
                &active.mem,
                frame,
                &mut self.rx_pending,
            ) {
                Delivery::Delivered(len) => {
                    delivered = true;
                    self.counters.rx_frames += 1;
                    self.counters.rx_bytes += len as u64;
                }
                Delivery::NoBuffer => break,
                Delivery::Dropped => self.counters.rx_dropped += 1,
            }
        }
        if delivered {
            signal_used(&mut self.queues[RX], &active.mem, &active.interrupt);
        }
    }

    fn process_tx(&mut self) {
        let Some(active) = &self.active else { return };
        let mem = &active.mem;
        let queue = &mut self.queues[TX];
        let mut used_any = false;
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            match read_frame(chain, mem) {
                Ok(frame) => {
                    self.counters.tx_frames += 1;
                    self.counters.tx_bytes += frame.len() as u64;
                    self.output.send(frame);
                }
                Err(e) => {
                    self.counters.tx_dropped += 1;
                    log::warn!("virtio-net: TX request {head} dropped: {e}");
                }
            }
            if let Err(e) = queue.add_used(mem, head, 0) {
                log::error!("virtio-net: completing TX request {head}: {e}");
                break;
            }
            used_any = true;
        }
        if used_any {
            signal_used(queue, mem, &active.interrupt);
        }
    }
}

/// The guest-readable part of a TX chain: one frame with its header.
fn read_frame(
    chain: virtio_queue::DescriptorChain<&VirtioMem>,
    mem: &VirtioMem,
) -> Result<Vec<u8>, String> {
    let mut reader = chain
        .reader(mem)
        .map_err(|e| format!("descriptor chain: {e}"))?;
    let len = reader.available_bytes();
    if len < VNET_HDR_LEN {
        return Err(format!("{len} bytes is shorter than the virtio-net header"));
    }
    if len > MAX_FRAME {
        return Err(format!("{len} bytes is longer than {MAX_FRAME}"));
    }
    let mut frame = vec![0u8; len];
    reader
        .read_exact(&mut frame)
        .map_err(|e| format!("reading guest memory: {e}"))?;
    Ok(frame)
}

/// Puts one frame into the next receive buffer.
fn deliver(
    queue: &mut Queue,
    mem: &VirtioMem,
    mut frame: Vec<u8>,
    pending: &mut Option<Vec<u8>>,
) -> Delivery {
    let Some(chain) = queue.pop_descriptor_chain(mem) else {
        *pending = Some(frame);
        return Delivery::NoBuffer;
    };
    let head = chain.head_index();
    let mut writer = match chain.writer(mem) {
        Ok(w) => w,
        Err(e) => {
            log::warn!("virtio-net: RX buffer {head} unusable ({e}); frame dropped");
            let _ = queue.add_used(mem, head, 0);
            return Delivery::Dropped;
        }
    };
    if writer.available_bytes() < frame.len() {
        log::warn!(
            "virtio-net: RX buffer {head} has {} bytes, frame needs {}; frame dropped",
            writer.available_bytes(),
            frame.len()
        );
        // Give the buffer back untouched: the next (smaller) frame may fit.
        queue.set_next_avail(queue.next_avail().wrapping_sub(1));
        return Delivery::Dropped;
    }
    // num_buffers: always one buffer per frame without VIRTIO_NET_F_MRG_RXBUF.
    frame[10..12].copy_from_slice(&1u16.to_le_bytes());
    if let Err(e) = writer.write_all(&frame) {
        log::warn!("virtio-net: writing RX buffer {head}: {e}; frame dropped");
        let _ = queue.add_used(mem, head, 0);
        return Delivery::Dropped;
    }
    if let Err(e) = queue.add_used(mem, head, frame.len() as u32) {
        log::error!("virtio-net: completing RX buffer {head}: {e}");
        return Delivery::Dropped;
    }
    Delivery::Delivered(frame.len())
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn kind(&self) -> &'static str {
        "net"
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[NET_QUEUE_SIZE, NET_QUEUE_SIZE]
    }

    fn queues(&self) -> &[Queue] {
        &self.queues
    }

    fn queues_mut(&mut self) -> &mut [Queue] {
        &mut self.queues
    }

    fn avail_features(&self) -> u64 {
        (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_RING_F_INDIRECT_DESC) | (1 << VIRTIO_NET_F_MAC)
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.mac, offset, data);
    }

    fn activate(
        &mut self,
        mem: VirtioMem,
        interrupt: Arc<Interrupt>,
        _acked_features: u64,
    ) -> Result<(), ActivateError> {
        for (index, q) in self.queues.iter().enumerate() {
            if !q.ready() {
                return Err(ActivateError::BadQueue {
                    index,
                    reason: "receive and transmit queues must both be ready".into(),
                });
            }
        }
        self.active = Some(Activation { mem, interrupt });
        // Frames may have queued in the tap before the driver came up: the edge-triggered
        // event loop will not report them again.
        self.process_rx();
        Ok(())
    }

    fn is_activated(&self) -> bool {
        self.active.is_some()
    }

    fn reset(&mut self) {
        self.active = None;
        self.rx_pending = None;
    }

    fn process_queue(&mut self, index: usize) {
        match index {
            RX => self.process_rx(),
            TX => self.process_tx(),
            _ => {}
        }
    }

    fn backend_fd(&self) -> Option<std::os::fd::RawFd> {
        Some(self.backend.raw_fd())
    }

    fn process_backend(&mut self) {
        self.process_rx();
    }

    fn save_state(&self) -> DeviceState {
        DeviceState::Net(NetState {
            mac: self.mac,
            rx_pending: self.rx_pending.clone(),
            gate: self.output.save(),
        })
    }

    fn restore_state(&mut self, state: &DeviceState) -> Result<(), StateError> {
        let DeviceState::Net(s) = state else {
            return Err(StateError::WrongDevice {
                saved: state.kind(),
                this: "net",
            });
        };
        if s.mac != self.mac {
            return Err(StateError::Mismatch(format!(
                "MAC {} saved, {} configured",
                fmt_mac(&s.mac),
                fmt_mac(&self.mac)
            )));
        }
        if let Some(f) = &s.rx_pending {
            if f.len() < VNET_HDR_LEN || f.len() > MAX_FRAME {
                return Err(StateError::Mismatch(format!(
                    "pending receive frame of {} bytes",
                    f.len()
                )));
            }
        }
        self.rx_pending = s.rx_pending.clone();
        self.output.restore(&s.gate);
        Ok(())
    }
}

fn fmt_mac(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}
