//! The snapshot directory: `state.json` (format version, VM shape, vCPU / VM / device state) and
//! `memory.bin` (guest RAM, regions in address order). JSON keeps it inspectable; the byte arrays
//! of KVM structs are a few KiB per vCPU.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::vcpu::VcpuState;
use super::vm::VmState;
use crate::devices::serial::SerialSnapshot;
use crate::spec::{DiskSpec, NetSpec, VmSpec};
use crate::virtio::MmioState;

pub const STATE_FILE: &str = "state.json";
pub const MEMORY_FILE: &str = "memory.bin";
/// Bumped whenever `Snapshot` changes incompatibly.
pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Decode {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path}: format version {got}, this engine reads {FORMAT_VERSION}")]
    Version { path: PathBuf, got: u32 },
    #[error("{path}: {msg}")]
    Inconsistent { path: PathBuf, msg: String },
}

/// Everything but memory.
#[derive(Debug, Serialize, Deserialize)]
pub struct Snapshot {
    pub version: u32,
    pub cpus: u8,
    pub memory_mib: u64,
    pub cmdline: String,
    pub vcpus: Vec<VcpuState>,
    pub vm: VmStateBox,
    pub serial: SerialSnapshot,
    /// The virtio devices (rebuilt from these on restore, in this order), and their state.
    #[serde(default)]
    pub disks: Vec<DiskSpec>,
    #[serde(default)]
    pub nets: Vec<NetSpec>,
    #[serde(default)]
    pub rng: bool,
    #[serde(default)]
    pub virtio: Vec<MmioState>,
    /// The boot files: a restored VM that the guest resets boots again from them (with the
    /// command line, shape and devices above). Absent in snapshots of older engines.
    #[serde(default)]
    pub kernel: Option<PathBuf>,
    #[serde(default)]
    pub initramfs: Option<PathBuf>,
}

/// `VmState` without Debug (KVM structs) wrapped so `Snapshot` can derive it.
#[derive(Clone, Serialize, Deserialize)]
pub struct VmStateBox(pub VmState);

impl std::fmt::Debug for VmStateBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "VmState {{ clock: {} }}", self.0.clock.clock)
    }
}

impl Snapshot {
    /// The spec a reboot of the restored VM boots from (serial: the spec's default, the
    /// caller keeps its own console), or None when the snapshot names no kernel.
    pub fn boot_spec(&self) -> Option<VmSpec> {
        let mut spec = VmSpec::new(self.kernel.clone()?);
        spec.initramfs = self.initramfs.clone();
        spec.cmdline = self.cmdline.clone();
        spec.cpus = self.cpus;
        spec.memory_mib = self.memory_mib;
        spec.disks = self.disks.clone();
        spec.nets = self.nets.clone();
        spec.rng = self.rng;
        Some(spec)
    }

    pub fn write(&self, dir: &Path) -> Result<(), SnapshotError> {
        let io = |what, path: &Path| {
            let path = path.to_path_buf();
            move |source| SnapshotError::Io { what, path, source }
        };
        fs::create_dir_all(dir).map_err(io("creating", dir))?;
        let p = dir.join(STATE_FILE);
        let tmp = dir.join(format!("{STATE_FILE}.tmp"));
        let json = serde_json::to_vec(self).map_err(|source| SnapshotError::Decode {
            path: p.clone(),
            source,
        })?;
        fs::write(&tmp, json).map_err(io("writing", &tmp))?;
        fs::rename(&tmp, &p).map_err(io("renaming", &tmp))?;
        Ok(())
    }

    pub fn read(dir: &Path) -> Result<Snapshot, SnapshotError> {
        let p = dir.join(STATE_FILE);
        let bytes = fs::read(&p).map_err(|source| SnapshotError::Io {
            what: "reading",
            path: p.clone(),
            source,
        })?;
        Self::from_bytes(&bytes, &p)
    }

    /// The state as `state.json` holds it (and a replication stream's State frame carries it).
    pub fn to_bytes(&self) -> Result<Vec<u8>, SnapshotError> {
        serde_json::to_vec(self).map_err(|source| SnapshotError::Decode {
            path: PathBuf::from("(state being encoded)"),
            source,
        })
    }

    /// Decodes and checks state bytes; `origin` names where they came from in errors (a file,
    /// or a stream and epoch).
    pub fn from_bytes(bytes: &[u8], origin: &Path) -> Result<Snapshot, SnapshotError> {
        let p = origin.to_path_buf();
        let s: Snapshot =
            serde_json::from_slice(bytes).map_err(|source| SnapshotError::Decode {
                path: p.clone(),
                source,
            })?;
        if s.version != FORMAT_VERSION {
            return Err(SnapshotError::Version {
                path: p,
                got: s.version,
            });
        }
        // Sizes computed from it later (memory.bin's, a replica's pages) must not wrap.
        if let Err(e) = crate::memory::bytes_of(s.memory_mib) {
            return Err(SnapshotError::Inconsistent {
                path: p,
                msg: format!("memory_mib: {e}"),
            });
        }
        if s.vcpus.len() != usize::from(s.cpus)
            || s.vcpus
                .iter()
                .enumerate()
                .any(|(i, v)| usize::from(v.id) != i)
        {
            return Err(SnapshotError::Inconsistent {
                path: p,
                msg: format!("{} vCPU states for cpus={}", s.vcpus.len(), s.cpus),
            });
        }
        Ok(s)
    }
}
