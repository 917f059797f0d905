//! The replication hook of virtio-blk: every completed write or discard is reported as
//! (sector, length) right after it reached the image file and before the guest sees it complete,
//! and so is every completed FLUSH (the guest asked for durability of what it wrote before).
//!
//! Requests run in the vCPU thread that notified the queue, so once the vCPUs are paused every
//! change of the epoch has been reported; the supervisor can then read those ranges back from the
//! image and ship them with the epoch (a range written twice in one epoch reads back its last
//! contents, which is what the epoch holds).

use std::sync::mpsc::Sender;

/// What happened to a range of the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskChangeKind {
    /// Data written by the guest.
    Write,
    /// Range discarded (hole punched): reads back as zeros.
    Discard,
    /// The guest flushed the disk (sector and length are 0): what it wrote so far is durable.
    Flush,
}

/// One completed change, in 512-byte sectors and bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskChange {
    pub kind: DiskChangeKind,
    pub sector: u64,
    pub len: u64,
}

/// Receives every completed disk change. Called in the vCPU thread: keep it quick.
pub trait DiskWriteObserver: Send + Sync {
    fn disk_changed(&self, change: DiskChange);
}

impl<F: Fn(DiskChange) + Send + Sync> DiskWriteObserver for F {
    fn disk_changed(&self, change: DiskChange) {
        self(change)
    }
}

/// A channel observer; a closed receiver is logged once per change and otherwise ignored (the
/// guest's I/O must not fail because replication went away).
pub struct ChannelObserver(pub std::sync::Mutex<Sender<DiskChange>>);

impl DiskWriteObserver for ChannelObserver {
    fn disk_changed(&self, change: DiskChange) {
        let tx = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if tx.send(change).is_err() {
            log::warn!("virtio-blk: disk change observer is gone; {change:?} not reported");
        }
    }
}
