//! A check of the replication itself: the sha256 of guest memory and of each disk image at one
//! epoch, on the primary (inside that epoch's checkpoint pause, when nothing can change them)
//! and on the replica (right after it applied that epoch). Equal hashes prove the copy is the
//! primary, byte for byte, at that epoch. `havms-remote verify EPOCH` asks for it on both
//! sides; `info` shows the result under `replication.verify`.

use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::memory::{self, GuestMem};

/// The hashes of one epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochHashes {
    pub epoch: u64,
    pub memory_sha256: String,
    pub disk_sha256: Vec<String>,
}

/// sha256 of a whole file, hex.
pub fn file_sha256(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// An epoch's memory copied and its disks hashed, while nothing can change them; the memory
/// is hashed later (`finish`, off the guest's pause and the stream's path: hashing a few
/// hundred MiB takes seconds in a nested node, copying them a fraction of that).
pub struct Captured {
    epoch: u64,
    memory: Vec<u8>,
    disk_sha256: Vec<String>,
}

/// Takes epoch `epoch` of `mem` and the images at `disks`.
pub fn capture(epoch: u64, mem: &GuestMem, disks: &[&Path]) -> Result<Captured, String> {
    let mut disk_sha256 = Vec::new();
    for d in disks {
        disk_sha256.push(file_sha256(d).map_err(|e| format!("hashing {}: {e}", d.display()))?);
    }
    let mut memory = Vec::with_capacity(memory::total_size(mem) as usize);
    for region in vm_memory::GuestMemoryBackend::iter(mem) {
        memory.extend_from_slice(memory::region_bytes(region));
    }
    Ok(Captured {
        epoch,
        memory,
        disk_sha256,
    })
}

impl std::fmt::Debug for Captured {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Captured {{ epoch: {}, {} bytes }}",
            self.epoch,
            self.memory.len()
        )
    }
}

impl Captured {
    /// Hashes the copy on a thread of its own and hands the result to `done`.
    pub fn finish_in_background(self, done: impl FnOnce(EpochHashes) + Send + 'static) {
        let spawned = std::thread::Builder::new()
            .name("verify".into())
            .spawn(move || {
                let h: String = Sha256::digest(&self.memory)
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                done(EpochHashes {
                    epoch: self.epoch,
                    memory_sha256: h,
                    disk_sha256: self.disk_sha256,
                })
            });
        if let Err(e) = spawned {
            log::error!("verify: no thread to hash epoch {}: {e}", self.epoch);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_hash_like_sha256sum() {
        let p = std::env::temp_dir().join(format!("havms-verify-{}", std::process::id()));
        std::fs::write(&p, b"abc").unwrap();
        assert_eq!(
            file_sha256(&p).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let _ = std::fs::remove_file(&p);
    }
}
