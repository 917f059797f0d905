//! Targets `snapshot` and `increment`: the snapshot directory's state.json
//! (`Snapshot::from_bytes`) and memory.diff (`increment::decode`), both read from disk on
//! restore and the state also from the replication stream.

use std::path::Path;

use havms_vmm::memory;
use havms_vmm::state::increment;
use havms_vmm::state::snapshot::Snapshot;

pub fn snapshot(data: &[u8]) {
    let Ok(s) = Snapshot::from_bytes(data, Path::new("fuzz/state.json")) else {
        return;
    };
    // What from_bytes accepts is safe to size things from.
    let bytes = memory::bytes_of(s.memory_mib).expect("from_bytes checks the memory size");
    assert_eq!(bytes >> 20, s.memory_mib);
    assert_eq!(s.vcpus.len(), usize::from(s.cpus));
    // Writing it again gives a state that reads back, and writes the same.
    let once = s.to_bytes().expect("a decoded state encodes");
    let back = Snapshot::from_bytes(&once, Path::new("fuzz/again.json"))
        .expect("an encoded state decodes");
    assert_eq!(
        back.to_bytes().expect("encodes"),
        once,
        "state re-encodes differently"
    );
}

/// The memory sizes the increment target decodes against (pages): a small VM, and the engine's
/// largest, where only the file's own size bounds what is allocated.
const TOTAL_PAGES: [u64; 2] = [256, (memory::MAX_MIB << 20) / memory::PAGE_SIZE as u64];

pub fn increment(data: &[u8]) {
    for total in TOTAL_PAGES {
        if let Ok(diff) = increment::decode(data, total) {
            assert!(diff.pages.iter().all(|&p| p < total), "page beyond the VM");
            assert_eq!(diff.data.len(), diff.pages.len() * memory::PAGE_SIZE);
            assert_eq!(
                increment::encode(&diff),
                data,
                "memory.diff re-encodes differently"
            );
        }
    }
}
