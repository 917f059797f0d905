//! The secondary's copy of a protected VM: guest memory kept in this process, the vCPU/device
//! state and the disk images as of the last committed epoch, and the epoch being received.
//!
//! An epoch is staged whole (pages, disk changes, state) and applied only at its commit, so a
//! replica is always at a committed epoch: a stream that breaks mid-epoch leaves it where it
//! was (`abort_epoch`). The first epoch is the exception: until something is committed there is
//! nothing to protect, so the full copy's pages go straight into memory instead of doubling it
//! in a staging buffer. `start` turns the replica into a running `Vm` (failover); when that
//! fails the replica is handed back, untouched, so a later attempt (or an operator) still has
//! it.
//!
//! The disks and NICs of the copy are this node's (`LocalDevices`, from its own config): the
//! primary's state is rewritten with them when it is staged, and a state that does not fit them
//! is refused there, long before a takeover would need them.
//!
//! What one epoch may stage is bounded, since a peer decides how many frames it sends: at most
//! the VM's memory plus its disks' sizes (a real epoch holds each dirty page once and the disk
//! ranges written in it), each disk change costing `DISK_OP_COST` besides its data, so a flood
//! of discards is bounded too. The check comes before the bytes are copied.

use std::path::{Path, PathBuf};

use kvm_bindings::kvm_cpuid_entry2;

use super::compat::{self, LocalDevices};
use crate::console::Console;
use crate::memory::{self, GuestMem, PAGE_SIZE};
use crate::state::increment::{self, PageDiff};
use crate::state::snapshot::Snapshot;
use crate::virtio::block::{DiskChangeKind, RawFile, SECTOR_SIZE};
use crate::vm::{Vm, VmError};

#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    #[error(transparent)]
    Memory(#[from] memory::MemoryError),
    #[error(transparent)]
    Increment(#[from] increment::IncrementError),
    #[error("epoch {epoch}: {msg}")]
    Epoch { epoch: u64, msg: String },
    #[error("disk {index} ({path}): {what}: {source}")]
    Disk {
        index: u32,
        path: PathBuf,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("epoch {epoch}: staging {adding} more bytes would hold {} in all, over the limit of {limit} (the VM's memory plus its disks' sizes)", staged + adding)]
    StagingLimit {
        epoch: u64,
        staged: u64,
        adding: u64,
        limit: u64,
    },
    #[error("nothing committed yet: no state to start from")]
    NothingCommitted,
    #[error("the copy is stale: the primary stopped protecting it and ran on ({0}); take over with force to run it anyway")]
    Stale(String),
    #[error(
        "the replica is broken (an epoch was half applied to its disks: {0}); it needs a full resync"
    )]
    Broken(String),
    #[error("this node cannot run the VM: {0}")]
    Incompatible(String),
    #[error("starting the replica: {0}")]
    Start(#[from] VmError),
}

/// One change to a disk image, with its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskOp {
    pub disk: u32,
    pub kind: DiskChangeKind,
    /// In 512-byte sectors.
    pub sector: u64,
    /// Bytes: `data.len()` for a write; the length for a discard.
    pub len: u64,
    pub data: Vec<u8>,
}

/// What one staged disk change costs against the staging limit besides its data: about its
/// size in memory (and more than its frame's header), so a discard is not free.
pub const DISK_OP_COST: u64 = 64;

#[derive(Default)]
struct Staging {
    epoch: u64,
    pages: PageDiff,
    disk: Vec<DiskOp>,
    state: Option<Snapshot>,
    /// Bytes charged against the limit in this epoch.
    bytes: u64,
}

/// A VM kept ready to take over.
pub struct Replica {
    memory_mib: u64,
    total_pages: u64,
    /// The disks' sizes as the Hello announced them (checked against this node's images);
    /// None until known.
    disk_sizes: Option<Vec<u64>>,
    mem: GuestMem,
    committed: Option<(u64, Snapshot)>,
    staging: Staging,
    /// Opened at the first commit, from this node's disk paths.
    disks: Vec<RawFile>,
    /// This node's disks and NICs for the VM.
    local: LocalDevices,
    /// This node's CPUID (as the engine gives it to a vCPU), to check a state against; None:
    /// not checked (host tests that never start the replica).
    host_cpuid: Option<Vec<kvm_cpuid_entry2>>,
    broken: Option<String>,
}

impl Replica {
    /// An empty replica of a VM with `memory_mib` MiB of memory (zeroed, not yet touched).
    pub fn new(memory_mib: u64) -> Result<Replica, ReplicaError> {
        let bytes = memory::bytes_of(memory_mib)?;
        let mem = memory::create(memory_mib)?;
        Ok(Replica {
            memory_mib,
            total_pages: bytes / PAGE_SIZE as u64,
            disk_sizes: None,
            mem,
            committed: None,
            staging: Staging::default(),
            disks: Vec::new(),
            local: LocalDevices::default(),
            host_cpuid: None,
            broken: None,
        })
    }

    /// The VM's disks and NICs on this node (device order); the VM started from the replica
    /// uses them. A state naming other counts of devices is refused.
    pub fn with_local(mut self, local: LocalDevices) -> Replica {
        self.local = local;
        self
    }

    /// The size of each disk in bytes (the Hello's, which the server checked against this
    /// node's images): the staging limit counts them, and disk changes are checked against them
    /// as they are staged, before the images are opened at the first commit.
    pub fn with_disk_sizes(mut self, sizes: &[u64]) -> Replica {
        self.disk_sizes = Some(sizes.to_vec());
        self
    }

    /// The most bytes one epoch may stage: the VM's memory plus its disks' sizes.
    pub fn staging_limit(&self) -> u64 {
        let disks = self.disk_sizes.iter().flatten();
        disks.fold(self.total_pages * PAGE_SIZE as u64, |sum, &d| {
            sum.saturating_add(d)
        })
    }

    /// Bytes staged in the epoch being received.
    pub fn staged_bytes(&self) -> u64 {
        self.staging.bytes
    }

    /// Charges `adding` bytes to the epoch, or refuses them (nothing is staged then).
    fn charge(&mut self, epoch: u64, adding: u64) -> Result<(), ReplicaError> {
        let limit = self.staging_limit();
        let staged = self.staging.bytes;
        match staged.checked_add(adding) {
            Some(total) if total <= limit => {
                self.staging.bytes = total;
                Ok(())
            }
            _ => Err(ReplicaError::StagingLimit {
                epoch,
                staged,
                adding,
                limit,
            }),
        }
    }

    /// Checks every staged state's CPU features against `cpuid` (this node's).
    pub fn with_host_cpuid(mut self, cpuid: Option<Vec<kvm_cpuid_entry2>>) -> Replica {
        self.host_cpuid = cpuid;
        self
    }

    pub fn memory_mib(&self) -> u64 {
        self.memory_mib
    }

    /// The last committed epoch, if any.
    pub fn committed_epoch(&self) -> Option<u64> {
        self.committed.as_ref().map(|(e, _)| *e)
    }

    /// The epoch being received (0 before the first frame of one).
    pub fn staging_epoch(&self) -> u64 {
        self.staging.epoch
    }

    /// Guest memory as of the last commit (plus, before the first commit, the copy so far).
    pub fn memory(&self) -> &GuestMem {
        &self.mem
    }

    fn check_epoch(&mut self, epoch: u64) -> Result<(), ReplicaError> {
        if let Some(why) = &self.broken {
            return Err(ReplicaError::Broken(why.clone()));
        }
        let next = self.committed_epoch().map_or(1, |e| e + 1);
        if epoch != next {
            return Err(ReplicaError::Epoch {
                epoch,
                msg: format!("expected epoch {next}"),
            });
        }
        self.staging.epoch = epoch;
        Ok(())
    }

    /// Pages of `epoch`: `pages[i]` is the page number (memory.bin layout) of
    /// `data[i * 4096..][..4096]`.
    pub fn stage_pages(
        &mut self,
        epoch: u64,
        pages: &[u64],
        data: &[u8],
    ) -> Result<(), ReplicaError> {
        self.check_epoch(epoch)?;
        if data.len() != pages.len() * PAGE_SIZE {
            return Err(ReplicaError::Epoch {
                epoch,
                msg: format!("{} pages with {} bytes of data", pages.len(), data.len()),
            });
        }
        if let Some(&p) = pages.iter().find(|&&p| p >= self.total_pages) {
            return Err(ReplicaError::Epoch {
                epoch,
                msg: format!("page {p} is outside a {}-page VM", self.total_pages),
            });
        }
        if self.committed.is_none() {
            // The first copy: nothing to protect yet, straight into memory (nothing staged).
            increment::apply_pages(&self.mem, pages, data)?;
        } else {
            self.charge(epoch, data.len() as u64)?;
            self.staging.pages.pages.extend_from_slice(pages);
            self.staging.pages.data.extend_from_slice(data);
        }
        Ok(())
    }

    /// A disk change of `epoch`.
    pub fn stage_disk(&mut self, epoch: u64, op: DiskOp) -> Result<(), ReplicaError> {
        self.check_epoch(epoch)?;
        let bad = |msg: String| ReplicaError::Epoch { epoch, msg };
        if op.len == 0 || !op.len.is_multiple_of(SECTOR_SIZE) {
            return Err(bad(format!("disk change of {} bytes", op.len)));
        }
        // Checked here, not at the commit: a change the images cannot take must not get as
        // far as a half-applied epoch.
        let end = op
            .sector
            .checked_mul(SECTOR_SIZE)
            .and_then(|off| off.checked_add(op.len));
        let Some(end) = end else {
            return Err(bad(format!(
                "disk change at sector {} of {} bytes is beyond any disk",
                op.sector, op.len
            )));
        };
        let size = match (&self.disk_sizes, self.disks.get(op.disk as usize)) {
            (_, Some(d)) => Some(d.size()),
            (Some(sizes), None) => match sizes.get(op.disk as usize) {
                Some(&s) => Some(s),
                None => {
                    return Err(bad(format!(
                        "a change of disk {}, the VM has {} disks",
                        op.disk,
                        sizes.len()
                    )))
                }
            },
            (None, None) => None,
        };
        if let Some(size) = size.filter(|&s| end > s) {
            return Err(bad(format!(
                "disk {} change ends at byte {end}, the image has {size}",
                op.disk
            )));
        }
        match op.kind {
            DiskChangeKind::Write if op.data.len() as u64 != op.len => {
                return Err(bad(format!(
                    "disk write of {} bytes carries {}",
                    op.len,
                    op.data.len()
                )))
            }
            DiskChangeKind::Discard if !op.data.is_empty() => {
                return Err(bad("a discard carries data".into()))
            }
            _ => {}
        }
        self.charge(epoch, op.data.len() as u64 + DISK_OP_COST)?;
        self.staging.disk.push(op);
        Ok(())
    }

    /// The vCPU/VM/device state at the end of `epoch`, rewritten for this node's devices.
    pub fn stage_state(&mut self, epoch: u64, mut state: Snapshot) -> Result<(), ReplicaError> {
        self.check_epoch(epoch)?;
        self.local
            .localize(&mut state)
            .map_err(ReplicaError::Incompatible)?;
        if let Some(host) = &self.host_cpuid {
            compat::check_cpu(&state, host).map_err(ReplicaError::Incompatible)?;
        }
        if state.memory_mib != self.memory_mib {
            return Err(ReplicaError::Epoch {
                epoch,
                msg: format!(
                    "state of a {} MiB VM for a {} MiB replica",
                    state.memory_mib, self.memory_mib
                ),
            });
        }
        self.staging.state = Some(state);
        Ok(())
    }

    /// Applies the staged epoch: memory pages, disk changes, then the state becomes the
    /// committed one. Memory is applied first and cannot fail half way (every page was checked
    /// when staged); a disk write that fails half way leaves the replica broken (say so, and a
    /// full resync is needed), never silently mixed.
    pub fn commit(&mut self, epoch: u64) -> Result<(), ReplicaError> {
        self.check_epoch(epoch)?;
        let Some(state) = self.staging.state.take() else {
            return Err(ReplicaError::Epoch {
                epoch,
                msg: "commit without the epoch's state".into(),
            });
        };
        if self.disks.is_empty() && !state.disks.is_empty() {
            self.open_disks(&state)?;
        }
        let staged = std::mem::take(&mut self.staging);
        for op in &staged.disk {
            if op.disk as usize >= self.disks.len() {
                return Err(ReplicaError::Epoch {
                    epoch,
                    msg: format!("disk {} of a VM with {} disks", op.disk, self.disks.len()),
                });
            }
        }
        increment::apply(&self.mem, &staged.pages)?;
        for op in &staged.disk {
            if let Err(e) = self.apply_disk(op) {
                self.broken = Some(e.to_string());
                return Err(e);
            }
        }
        self.committed = Some((epoch, state));
        Ok(())
    }

    /// Drops what was staged of an unfinished epoch (the stream broke): the replica stays at
    /// its last commit. Before the first commit the memory copy is incomplete; the next stream
    /// starts over with a full copy anyway.
    pub fn abort_epoch(&mut self) {
        if self.staging.epoch != 0 {
            log::warn!(
                "replica: epoch {} dropped uncommitted ({} pages, {} disk changes staged)",
                self.staging.epoch,
                self.staging.pages.len(),
                self.staging.disk.len()
            );
        }
        self.staging = Staging::default();
    }

    fn open_disks(&mut self, state: &Snapshot) -> Result<(), ReplicaError> {
        let mut disks = Vec::with_capacity(state.disks.len());
        for (i, d) in state.disks.iter().enumerate() {
            let f = RawFile::open(&d.path, false).map_err(|e| ReplicaError::Disk {
                index: i as u32,
                path: d.path.clone(),
                what: "opening",
                source: std::io::Error::other(e.to_string()),
            })?;
            disks.push(f);
        }
        self.disks = disks;
        Ok(())
    }

    fn apply_disk(&self, op: &DiskOp) -> Result<(), ReplicaError> {
        let disk = &self.disks[op.disk as usize];
        // Both checked in stage_disk (no overflow); the size again here for disks opened at
        // this commit.
        let offset = op.sector.saturating_mul(SECTOR_SIZE);
        let err = |what, source| ReplicaError::Disk {
            index: op.disk,
            path: disk.path().to_path_buf(),
            what,
            source,
        };
        if offset.saturating_add(op.len) > disk.size() {
            return Err(err(
                "change beyond the end of the image",
                std::io::Error::from(std::io::ErrorKind::InvalidInput),
            ));
        }
        match op.kind {
            DiskChangeKind::Write => disk
                .write_at(&op.data, offset)
                .map_err(|e| err("writing", e)),
            DiskChangeKind::Discard => disk
                .discard(offset, op.len)
                .map_err(|e| err("discarding", e)),
            DiskChangeKind::Flush => disk.flush().map_err(|e| err("flushing", e)),
        }
    }

    /// Whether an epoch was half applied to the disks (only a new full copy repairs it).
    pub fn is_broken(&self) -> bool {
        self.broken.is_some()
    }

    pub fn broken_reason(&self) -> Option<String> {
        self.broken.clone()
    }

    /// Marks the replica unusable (its disks were changed behind it); every later epoch and the
    /// takeover are refused until a new full copy replaces it.
    pub fn mark_broken(&mut self, why: String) {
        self.broken = Some(why);
    }

    /// Makes the applied disk writes durable (fdatasync): before acking an epoch in which the
    /// guest flushed, and before a takeover runs the VM.
    pub fn flush_disks(&self) -> Result<(), ReplicaError> {
        for (i, d) in self.disks.iter().enumerate() {
            d.flush().map_err(|source| ReplicaError::Disk {
                index: i as u32,
                path: d.path().to_path_buf(),
                what: "flushing",
                source,
            })?;
        }
        Ok(())
    }

    /// The committed state (for inspection and tests).
    pub fn committed_state(&self) -> Option<&Snapshot> {
        self.committed.as_ref().map(|(_, s)| s)
    }

    /// Failover: the VM as of the last committed epoch, built on `console`; `start()` it.
    /// The disk images are synced first (a power cut right after the takeover must not lose
    /// what the guest had flushed on the primary). On failure the replica comes back as it
    /// was, with the reason.
    pub fn start(self, console: &Console) -> Result<Vm, (ReplicaError, Box<Replica>)> {
        if let Some(why) = &self.broken {
            return Err((ReplicaError::Broken(why.clone()), Box::new(self)));
        }
        let Some((epoch, state)) = &self.committed else {
            return Err((ReplicaError::NothingCommitted, Box::new(self)));
        };
        if let Err(e) = self.flush_disks() {
            return Err((e, Box::new(self)));
        }
        log::info!("replica: starting from epoch {epoch}");
        match Vm::restore_from(state, self.mem.clone(), console) {
            Ok(vm) => Ok(vm),
            Err(e) => Err((e.into(), Box::new(self))),
        }
    }

    /// Writes the committed state and memory as a snapshot directory (for `havms-vm --restore`
    /// and inspection).
    pub fn save(&self, dir: &Path) -> Result<(), ReplicaError> {
        let Some((_, state)) = &self.committed else {
            return Err(ReplicaError::NothingCommitted);
        };
        state
            .write(dir)
            .map_err(|e| ReplicaError::Start(e.into()))?;
        memory::save(&self.mem, &dir.join(crate::state::snapshot::MEMORY_FILE))?;
        Ok(())
    }
}

#[cfg(test)]
#[path = "replica_tests.rs"]
mod tests;
