//! Test helpers shared by the replication tests: a plausible `Snapshot` without KVM, and a
//! scratch directory.

use std::path::{Path, PathBuf};

use crate::spec::DiskSpec;
use crate::state::snapshot::{Snapshot, VmStateBox, FORMAT_VERSION};
use crate::state::vm::VmState;

/// The state of a `mib` MiB VM with no vCPU and one disk at `disk` (enough for the replica's
/// bookkeeping; nothing is started from it).
pub fn state(mib: u64, disk: &Path) -> Snapshot {
    Snapshot {
        version: FORMAT_VERSION,
        cpus: 0,
        memory_mib: mib,
        cmdline: "console=ttyS0".into(),
        vcpus: Vec::new(),
        vm: VmStateBox(VmState {
            pit: Default::default(),
            clock: Default::default(),
            pic_master: Default::default(),
            pic_slave: Default::default(),
            ioapic: Default::default(),
        }),
        serial: Default::default(),
        disks: vec![DiskSpec {
            path: disk.to_path_buf(),
            readonly: false,
        }],
        nets: Vec::new(),
        rng: false,
        virtio: Vec::new(),
        kernel: None,
        initramfs: None,
    }
}

/// A scratch directory removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new() -> Scratch {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("havms-repl-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
