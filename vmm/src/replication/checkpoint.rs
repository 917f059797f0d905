//! The primary's side of an epoch: what is captured, in what order, while the guest is paused.
//!
//! `Checkpointer::start` turns dirty tracking and disk-change reporting on. `full_copy` reads
//! all of memory and every disk while the guest runs (epoch 1's bulk: pages it changes
//! meanwhile are dirty again). `checkpoint` then ends each epoch: pause, take the dirty pages,
//! the disk ranges written (read back from the images now, while nothing can write them),
//! whether the guest flushed, the vCPU/device state; open the next epoch of the output gates;
//! resume. The pause holds the copies of the dirty pages and the read-back of the disk ranges
//! written in the epoch.
//!
//! Output is gated from epoch 2: what the guest sends during epoch 1 (the full copy) goes out at
//! once, because until epoch 1 commits the peer has nothing it could take over (its older
//! copy, if any, became stale at this stream's Hello), and epoch 1's state includes having sent
//! it. `committed(N)` releases the output of epochs up to N once the peer holds them.
//! `stop_capture` ends the epochs and leaves the gates as they are: after a failure the output
//! stays held until the supervisor decides; `release` lets it flow.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress};

use super::chunk_sums::PeerSums;
use super::replica::DiskOp;
use super::wire;
use crate::memory::{self, PAGE_SIZE};
use crate::state::increment::PageDiff;
use crate::virtio::block::{DiskChange, DiskChangeKind, RawFile, SECTOR_SIZE};
use crate::virtio::net::GateMode;
use crate::vm::{Vm, VmError};

/// Pages per batch of the full copy (one Pages frame each): 1 MiB.
pub const COPY_BATCH_PAGES: usize = 256;
/// Bytes per disk chunk of the full copy.
pub const DISK_CHUNK: u64 = wire::SUM_CHUNK;

/// What a first copy sent: pages, disk bytes, and disk bytes the peer held already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FullCopy {
    pub pages: u64,
    pub disk_bytes: u64,
    /// All-zero chunks the peer did not hold as such, sent as discards.
    pub disk_zero_bytes: u64,
    pub disk_same_bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error("disk {index} ({path}): {what}: {source}")]
    Disk {
        index: usize,
        path: String,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("output gate: {0}")]
    Gate(String),
    #[error("{0}")]
    Sink(String),
}

/// A piece of epoch 1's full copy.
pub enum CopyItem<'a> {
    /// Page numbers (memory.bin numbering, increasing) and their data.
    Pages(&'a [u64], &'a [u8]),
    Disk(DiskOp),
    /// A disk chunk the peer holds already: nothing to send.
    Same,
}

/// One finished epoch, ready to send.
#[derive(Debug, Default)]
pub struct EpochCapture {
    pub epoch: u64,
    pub pages: PageDiff,
    pub disk: Vec<DiskOp>,
    /// The guest flushed a disk during the epoch: the peer syncs before acking it.
    pub flush: bool,
    /// `Snapshot::to_bytes` of the vCPU/VM/device state at the end of the epoch.
    pub state: Vec<u8>,
    /// How long the guest was paused for it.
    pub pause: Duration,
    /// Memory copied and disks hashed inside the pause, when asked (`checkpoint(true)`).
    pub hashes: Option<Result<super::verify::Captured, String>>,
}

/// Drives the epochs of one protected VM.
pub struct Checkpointer {
    vm: Vm,
    /// The epoch being run now (its output is held until it commits).
    epoch: u64,
    changes: Arc<Mutex<Vec<(usize, DiskChange)>>>,
    disks: Vec<RawFile>,
}

impl Checkpointer {
    /// Starts protecting `vm`: dirty tracking from now, disk changes recorded (output is gated
    /// from the first checkpoint on).
    pub fn start(vm: Vm) -> Result<Checkpointer, CheckpointError> {
        let mut disks = Vec::new();
        for (i, d) in vm.disks().iter().enumerate() {
            disks.push(
                RawFile::open(&d.path, true).map_err(|e| CheckpointError::Disk {
                    index: i,
                    path: d.path.display().to_string(),
                    what: "opening for read-back",
                    source: std::io::Error::other(e.to_string()),
                })?,
            );
        }
        let changes: Arc<Mutex<Vec<(usize, DiskChange)>>> = Arc::default();
        let sink = Arc::clone(&changes);
        vm.set_disk_observer(Some(Arc::new(move |disk, change| {
            sink.lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((disk, change));
        })));
        if let Err(e) = vm.start_stream() {
            vm.set_disk_observer(None);
            return Err(e.into());
        }
        Ok(Checkpointer {
            vm,
            epoch: 1,
            changes,
            disks,
        })
    }

    /// The epoch running now.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn vm(&self) -> &Vm {
        &self.vm
    }

    /// Epoch 1's bulk, while the guest runs, to `sink`: every non-zero page of memory
    /// (batches of `COPY_BATCH_PAGES`; the replica starts zeroed), and every disk in
    /// `DISK_CHUNK`s but those `peer` holds already (all-zero chunks as discards, which read
    /// back as zeros). A chunk the guest writes during the copy rides with the first
    /// checkpoint like any write, skipped or not.
    pub fn full_copy(
        &self,
        scanned: &std::sync::atomic::AtomicU64,
        peer: &PeerSums,
        mut sink: impl FnMut(CopyItem<'_>) -> Result<(), CheckpointError>,
    ) -> Result<FullCopy, CheckpointError> {
        use std::sync::atomic::Ordering;
        let mut sent_pages = 0u64;
        let mut numbers = Vec::with_capacity(COPY_BATCH_PAGES);
        let mut data = Vec::with_capacity(COPY_BATCH_PAGES * PAGE_SIZE);
        let mut page_buf = vec![0u8; PAGE_SIZE];
        let mut base = 0u64;
        for region in self.vm.memory().iter() {
            let n = region.len() / PAGE_SIZE as u64;
            for p in 0..n {
                // A volatile copy: the guest may be writing this page right now; a torn copy
                // is fine, the page is dirty again and comes with the first increment.
                region
                    .read_slice(&mut page_buf, MemoryRegionAddress(p * PAGE_SIZE as u64))
                    .map_err(|e| CheckpointError::Sink(format!("reading page {p}: {e}")))?;
                scanned.fetch_add(PAGE_SIZE as u64, Ordering::Relaxed);
                if memory::is_zero(&page_buf) {
                    continue;
                }
                numbers.push(base + p);
                data.extend_from_slice(&page_buf);
                if numbers.len() == COPY_BATCH_PAGES {
                    sink(CopyItem::Pages(&numbers, &data))?;
                    sent_pages += numbers.len() as u64;
                    numbers.clear();
                    data.clear();
                }
            }
            base += n;
        }
        if !numbers.is_empty() {
            sink(CopyItem::Pages(&numbers, &data))?;
            sent_pages += numbers.len() as u64;
        }
        let mut sent_bytes = 0u64;
        let mut same_bytes = 0u64;
        let mut zero_bytes = 0u64;
        for (i, f) in self.disks.iter().enumerate() {
            let mut off = 0u64;
            while off < f.size() {
                let len = DISK_CHUNK.min(f.size() - off);
                let mut buf = vec![0u8; len as usize];
                f.read_at(&mut buf, off)
                    .map_err(|e| self.disk_err(i, "reading", e))?;
                scanned.fetch_add(len, Ordering::Relaxed);
                if peer.same(i, off / DISK_CHUNK, &buf) {
                    // Through the sink all the same: a stop is heard between chunks.
                    sink(CopyItem::Same)?;
                    same_bytes += len;
                    off += len;
                    continue;
                }
                let zero = buf.iter().all(|&b| b == 0);
                sink(CopyItem::Disk(DiskOp {
                    disk: i as u32,
                    kind: if zero {
                        DiskChangeKind::Discard
                    } else {
                        DiskChangeKind::Write
                    },
                    sector: off / SECTOR_SIZE,
                    len,
                    data: if zero { Vec::new() } else { buf },
                }))?;
                if zero {
                    zero_bytes += len;
                } else {
                    sent_bytes += len;
                }
                off += len;
            }
        }
        Ok(FullCopy {
            pages: sent_pages,
            disk_bytes: sent_bytes,
            disk_zero_bytes: zero_bytes,
            disk_same_bytes: same_bytes,
        })
    }

    fn disk_err(&self, i: usize, what: &'static str, source: std::io::Error) -> CheckpointError {
        CheckpointError::Disk {
            index: i,
            path: self.disks[i].path().display().to_string(),
            what,
            source,
        }
    }

    /// Ends the current epoch and starts the next: pause, capture, gate the next epoch,
    /// resume. The guest is paused only for the copies (and, with `hash`, for hashing memory
    /// and disks as of this epoch: a check, slow).
    pub fn checkpoint(&mut self, hash: bool) -> Result<EpochCapture, CheckpointError> {
        let t0 = Instant::now();
        // A VM someone else paused stays paused: the checkpoint only undoes its own pause.
        let was_running = self.vm.info().state == "running";
        if was_running {
            self.vm.pause()?;
        }
        let mut captured = self.capture_paused();
        if hash {
            if let Ok(cap) = captured.as_mut() {
                let paths: Vec<&std::path::Path> = self.disks.iter().map(RawFile::path).collect();
                cap.hashes = Some(super::verify::capture(cap.epoch, self.vm.memory(), &paths));
            }
        }
        let resumed = if was_running {
            self.vm.resume()
        } else {
            Ok(())
        };
        let pause = t0.elapsed();
        let mut cap = captured?;
        resumed?;
        cap.pause = pause;
        Ok(cap)
    }

    /// The last checkpoint of a planned switchover: like `checkpoint`, but the guest stays
    /// paused (the peer resumes it from this epoch). A failed capture resumes it.
    pub fn final_checkpoint(&mut self) -> Result<EpochCapture, CheckpointError> {
        let t0 = Instant::now();
        let was_running = self.vm.info().state == "running";
        if was_running {
            self.vm.pause()?;
        }
        match self.capture_paused() {
            Ok(mut cap) => {
                cap.pause = t0.elapsed();
                Ok(cap)
            }
            Err(e) => {
                if was_running {
                    let _ = self.vm.resume();
                }
                Err(e)
            }
        }
    }

    fn capture_paused(&mut self) -> Result<EpochCapture, CheckpointError> {
        let (mut snap, pages) = self.vm.capture_increment()?;
        // Frames the gates still hold are not replicated: if this node dies they are lost like
        // packets on a wire (TCP resends them; Remus has the same rule), and carrying them would
        // make every State frame as big as the guest's recent output.
        for dev in &mut snap.virtio {
            if let crate::virtio::DeviceState::Net(n) = &mut dev.device {
                n.gate.held.clear();
            }
        }
        let state = snap.to_bytes().map_err(VmError::from)?;
        let changes = std::mem::take(&mut *self.changes.lock().unwrap_or_else(|p| p.into_inner()));
        let mut disk = Vec::with_capacity(changes.len());
        let mut flush = false;
        for (i, c) in changes {
            let Some(f) = self.disks.get(i) else {
                return Err(CheckpointError::Sink(format!(
                    "a change of disk {i}, the VM has {}",
                    self.disks.len()
                )));
            };
            let len = c.len;
            let data = match c.kind {
                DiskChangeKind::Flush => {
                    flush = true;
                    continue;
                }
                DiskChangeKind::Write => {
                    // Read back now: nothing writes while paused, so this is what the epoch
                    // left there (a range written twice holds its last write).
                    let mut buf = vec![0u8; len as usize];
                    f.read_at(&mut buf, c.sector * SECTOR_SIZE)
                        .map_err(|e| self.disk_err(i, "reading back", e))?;
                    buf
                }
                DiskChangeKind::Discard => Vec::new(),
            };
            disk.push(DiskOp {
                disk: i as u32,
                kind: c.kind,
                sector: c.sector,
                len,
                data,
            });
        }
        let epoch = self.epoch;
        self.epoch += 1;
        for net in self.vm.net_outputs() {
            if epoch == 1 {
                // Output is held from here on (see the module doc).
                net.start_gating(self.epoch);
            } else {
                net.begin_epoch(self.epoch)
                    .map_err(|e| CheckpointError::Gate(e.to_string()))?;
            }
        }
        Ok(EpochCapture {
            epoch,
            pages,
            disk,
            flush,
            state,
            pause: Duration::ZERO,
            hashes: None,
        })
    }

    /// What `full_copy` reads: all of memory and every disk, in bytes.
    pub fn full_copy_bytes(&self) -> u64 {
        memory::total_size(self.vm.memory()) + self.disks.iter().map(RawFile::size).sum::<u64>()
    }

    /// Whether output is being held (the first checkpoint was taken).
    pub fn gating(&self) -> bool {
        self.epoch > 1
    }

    /// The peer holds epoch `n`: the guest's output of epochs up to `n` goes out.
    pub fn committed(&self, n: u64) -> usize {
        self.vm.net_outputs().iter().map(|net| net.commit(n)).sum()
    }

    /// Ends the epochs: disk changes are no longer recorded, the capture stream ends
    /// (snapshots are allowed again). The output gates are left as they are: held output stays
    /// held until `release`.
    pub fn stop_capture(&self) {
        self.vm.set_disk_observer(None);
        self.vm.stop_stream();
    }
}

/// Lets `vm`'s output flow again, held frames first (in order): this node now holds the only
/// copy that counts, and that copy sent them.
pub fn release(vm: &Vm) {
    for net in vm.net_outputs() {
        net.set_mode(GateMode::Off);
    }
}
