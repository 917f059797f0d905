//! The virtio-blk device model: features and configuration space of a raw image, and the request
//! loop run on each QueueNotify.

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX,
};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_INDIRECT_DESC;
use virtio_queue::{Queue, QueueT};

use super::backend::{DiskError, RawFile};
use super::observer::{DiskChange, DiskWriteObserver};
use super::request::{self, RequestContext, SECTOR_SHIFT};
use crate::virtio::device::{
    read_config_bytes, signal_used, ActivateError, Activation, DeviceState, StateError,
    VirtioDevice,
};
use crate::virtio::interrupt::Interrupt;
use crate::virtio::VirtioMem;

/// One request queue of 256 entries (Firecracker's size).
pub const BLOCK_QUEUE_SIZE: u16 = 256;
/// Largest discard we advertise per segment, in sectors (4 GiB - 512).
const MAX_DISCARD_SECTORS: u32 = u32::MAX >> SECTOR_SHIFT;
/// Segments per discard request we advertise.
const MAX_DISCARD_SEG: u32 = 32;

/// What a virtio-blk device is built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockConfig {
    pub path: PathBuf,
    pub read_only: bool,
    /// Offer VIRTIO_BLK_F_DISCARD (holes punched in the image).
    pub discard: bool,
}

/// Device-specific saved state: what must match between the saved and the restored disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockState {
    pub capacity_bytes: u64,
    pub read_only: bool,
    pub discard: bool,
}

/// A virtio-blk device.
pub struct Block {
    disk: RawFile,
    /// Discard offered to the driver / in force (offered and acked).
    discard_offered: bool,
    discard: bool,
    config: Vec<u8>,
    queues: Vec<Queue>,
    active: Option<Activation>,
    observer: Option<Arc<dyn DiskWriteObserver>>,
    changes: Vec<DiskChange>,
}

impl Block {
    /// Opens the image and builds the device.
    pub fn new(cfg: &BlockConfig) -> Result<Self, DiskError> {
        Ok(Self::with_disk(
            RawFile::open(&cfg.path, cfg.read_only)?,
            cfg.discard,
        ))
    }

    pub fn with_disk(disk: RawFile, discard: bool) -> Self {
        // Discarding changes the disk: never offered on a read-only one.
        let discard = discard && !disk.read_only();
        let config = config_space(disk.size(), discard);
        Block {
            disk,
            discard_offered: discard,
            discard: false,
            config,
            // A power of two is always a valid queue size.
            queues: vec![Queue::new(BLOCK_QUEUE_SIZE).unwrap_or_default()],
            active: None,
            observer: None,
            changes: Vec::new(),
        }
    }

    /// Every completed write / discard is reported to `observer` (replication).
    pub fn set_observer(&mut self, observer: Arc<dyn DiskWriteObserver>) {
        self.observer = Some(observer);
    }

    pub fn disk(&self) -> &RawFile {
        &self.disk
    }
}

/// The virtio_blk_config fields we fill (little endian, 60 bytes up to write_zeroes_may_unmap).
fn config_space(size: u64, discard: bool) -> Vec<u8> {
    let mut c = vec![0u8; 60];
    c[0..8].copy_from_slice(&(size >> SECTOR_SHIFT).to_le_bytes());
    // seg_max: data segments per request besides header and status.
    c[12..16].copy_from_slice(&u32::from(BLOCK_QUEUE_SIZE - 2).to_le_bytes());
    if discard {
        c[36..40].copy_from_slice(&MAX_DISCARD_SECTORS.to_le_bytes());
        c[40..44].copy_from_slice(&MAX_DISCARD_SEG.to_le_bytes());
        c[44..48].copy_from_slice(&1u32.to_le_bytes());
    }
    c
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn kind(&self) -> &'static str {
        "blk"
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[BLOCK_QUEUE_SIZE]
    }

    fn queues(&self) -> &[Queue] {
        &self.queues
    }

    fn queues_mut(&mut self) -> &mut [Queue] {
        &mut self.queues
    }

    fn avail_features(&self) -> u64 {
        let mut f = (1u64 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_RING_F_INDIRECT_DESC)
            | (1 << VIRTIO_BLK_F_FLUSH)
            | (1 << VIRTIO_BLK_F_SEG_MAX);
        if self.disk.read_only() {
            f |= 1 << VIRTIO_BLK_F_RO;
        }
        if self.discard_offered {
            f |= 1 << VIRTIO_BLK_F_DISCARD;
        }
        f
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn activate(
        &mut self,
        mem: VirtioMem,
        interrupt: Arc<Interrupt>,
        acked_features: u64,
    ) -> Result<(), ActivateError> {
        if !self.queues[0].ready() {
            return Err(ActivateError::BadQueue {
                index: 0,
                reason: "the request queue is not ready".into(),
            });
        }
        // Discard requests are only honoured when the driver took the feature.
        self.discard = self.discard_offered && acked_features & (1 << VIRTIO_BLK_F_DISCARD) != 0;
        self.active = Some(Activation { mem, interrupt });
        Ok(())
    }

    fn is_activated(&self) -> bool {
        self.active.is_some()
    }

    fn reset(&mut self) {
        self.active = None;
        self.discard = false;
    }

    fn process_queue(&mut self, index: usize) {
        let Some(active) = &self.active else { return };
        if index != 0 {
            return;
        }
        let mem = &active.mem;
        let queue = &mut self.queues[0];
        let mut used_any = false;
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            let mut ctx = RequestContext {
                disk: &self.disk,
                discard: self.discard,
                changes: &mut self.changes,
            };
            let len = request::handle(chain, mem, &mut ctx);
            // Replication sees the change before the guest can observe its completion.
            if let Some(obs) = &self.observer {
                for c in self.changes.drain(..) {
                    obs.disk_changed(c);
                }
            } else {
                self.changes.clear();
            }
            if let Err(e) = queue.add_used(mem, head, len) {
                log::error!("virtio-blk: completing request {head}: {e}");
                break;
            }
            used_any = true;
        }
        if used_any {
            signal_used(queue, mem, &active.interrupt);
        }
    }

    fn save_state(&self) -> DeviceState {
        DeviceState::Block(BlockState {
            capacity_bytes: self.disk.size(),
            read_only: self.disk.read_only(),
            discard: self.discard,
        })
    }

    fn restore_state(&mut self, state: &DeviceState) -> Result<(), StateError> {
        let DeviceState::Block(s) = state else {
            return Err(StateError::WrongDevice {
                saved: state.kind(),
                this: "block",
            });
        };
        if s.capacity_bytes != self.disk.size() || s.read_only != self.disk.read_only() {
            return Err(StateError::Mismatch(format!(
                "disk {} is {} bytes{}, the saved VM had {} bytes{}",
                self.disk.path().display(),
                self.disk.size(),
                if self.disk.read_only() {
                    " read-only"
                } else {
                    ""
                },
                s.capacity_bytes,
                if s.read_only { " read-only" } else { "" },
            )));
        }
        if s.discard && !self.discard_offered {
            return Err(StateError::Mismatch(format!(
                "the saved VM used discard on {}, this disk does not offer it",
                self.disk.path().display()
            )));
        }
        self.discard = s.discard;
        Ok(())
    }
}
