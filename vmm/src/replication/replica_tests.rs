//! Replica bookkeeping on the host (no KVM needed: nothing runs, memory and disks are real).

use super::*;
use vm_memory::GuestMemoryBackend;

const MIB: u64 = 2;
const PAGES: u64 = (MIB << 20) / PAGE_SIZE as u64;

fn state(disk: &Path) -> Snapshot {
    super::super::test_support::state(MIB, disk)
}

fn page(fill: u8) -> Vec<u8> {
    vec![fill; PAGE_SIZE]
}

/// Guest memory as one buffer, memory.bin layout.
fn mem_bytes(r: &Replica) -> Vec<u8> {
    let mut out = Vec::new();
    for region in r.memory().iter() {
        out.extend_from_slice(memory::region_bytes(region));
    }
    out
}

fn page_of(r: &Replica, p: u64) -> Vec<u8> {
    let all = mem_bytes(r);
    all[p as usize * PAGE_SIZE..(p as usize + 1) * PAGE_SIZE].to_vec()
}

use super::super::test_support::Scratch;

struct Fixture {
    _dir: Scratch,
    disk: PathBuf,
}

fn fixture() -> Fixture {
    let dir = Scratch::new();
    let disk = dir.0.join("disk.img");
    std::fs::write(&disk, vec![0u8; 64 * 1024]).unwrap();
    Fixture { _dir: dir, disk }
}

/// A replica whose disk on this node is the fixture's.
fn replica(f: &Fixture) -> Replica {
    Replica::new(MIB).unwrap().with_local(LocalDevices {
        disks: vec![f.disk.clone()],
        nets: Vec::new(),
    })
}

fn write_op(sector: u64, fill: u8, sectors: usize) -> DiskOp {
    DiskOp {
        disk: 0,
        kind: DiskChangeKind::Write,
        sector,
        len: (sectors * 512) as u64,
        data: vec![fill; sectors * 512],
    }
}

/// Epoch 1 (the full copy) then epoch 2 (an increment), both committed.
fn two_epochs(f: &Fixture) -> Replica {
    let mut r = replica(f);
    let mut data = page(1);
    data.extend(page(2));
    r.stage_pages(1, &[0, PAGES - 1], &data).unwrap();
    r.stage_state(1, state(&f.disk)).unwrap();
    r.commit(1).unwrap();
    r.stage_pages(2, &[5], &page(9)).unwrap();
    r.stage_disk(2, write_op(8, 0xab, 2)).unwrap();
    r.stage_state(2, state(&f.disk)).unwrap();
    r.commit(2).unwrap();
    r
}

#[test]
fn committed_epochs_reach_memory_and_disk() {
    let f = fixture();
    let r = two_epochs(&f);
    assert_eq!(r.committed_epoch(), Some(2));
    assert_eq!(page_of(&r, 0), page(1));
    assert_eq!(page_of(&r, PAGES - 1), page(2));
    assert_eq!(page_of(&r, 5), page(9));
    assert_eq!(page_of(&r, 6), page(0));
    let disk = std::fs::read(&f.disk).unwrap();
    assert!(disk[8 * 512..10 * 512].iter().all(|&b| b == 0xab));
    assert!(disk[..8 * 512].iter().all(|&b| b == 0));
    assert!(disk[10 * 512..].iter().all(|&b| b == 0));
}

#[test]
fn an_aborted_epoch_changes_nothing() {
    let f = fixture();
    let mut r = two_epochs(&f);
    let mem_before = mem_bytes(&r);
    let disk_before = std::fs::read(&f.disk).unwrap();
    r.stage_pages(3, &[0, 5], &[page(7), page(7)].concat())
        .unwrap();
    r.stage_disk(3, write_op(0, 0x77, 4)).unwrap();
    r.stage_state(3, state(&f.disk)).unwrap();
    r.abort_epoch();
    assert_eq!(mem_bytes(&r), mem_before);
    assert_eq!(std::fs::read(&f.disk).unwrap(), disk_before);
    assert_eq!(r.committed_epoch(), Some(2));
    // The same epoch number can come again, from a new stream.
    r.stage_pages(3, &[1], &page(3)).unwrap();
    r.stage_state(3, state(&f.disk)).unwrap();
    r.commit(3).unwrap();
    assert_eq!(page_of(&r, 1), page(3));
    assert_eq!(page_of(&r, 0), page(1));
}

#[test]
fn staged_pages_stay_out_of_memory_until_the_commit() {
    let f = fixture();
    let mut r = two_epochs(&f);
    r.stage_pages(3, &[5], &page(4)).unwrap();
    assert_eq!(page_of(&r, 5), page(9), "staged page visible before commit");
    r.stage_state(3, state(&f.disk)).unwrap();
    r.commit(3).unwrap();
    assert_eq!(page_of(&r, 5), page(4));
}

#[test]
fn epochs_must_follow_each_other() {
    let f = fixture();
    let mut r = replica(&f);
    let err = r.stage_pages(2, &[0], &page(1)).unwrap_err().to_string();
    assert!(err.contains("expected epoch 1"), "{err}");
    let mut r = two_epochs(&f);
    for e in [1, 2, 4] {
        let err = r.stage_state(e, state(&f.disk)).unwrap_err().to_string();
        assert!(err.contains("expected epoch 3"), "epoch {e}: {err}");
    }
}

#[test]
fn bad_epoch_contents_are_refused() {
    let f = fixture();
    let mut r = two_epochs(&f);
    let err = r
        .stage_pages(3, &[PAGES], &page(1))
        .unwrap_err()
        .to_string();
    assert!(err.contains("outside"), "{err}");
    let err = r.stage_pages(3, &[1, 2], &page(1)).unwrap_err().to_string();
    assert!(err.contains("2 pages with 4096 bytes"), "{err}");
    let mut op = write_op(0, 1, 1);
    op.len = 100;
    op.data.truncate(100);
    assert!(r.stage_disk(3, op).is_err());
    let mut op = write_op(0, 1, 2);
    op.data.truncate(512);
    assert!(r.stage_disk(3, op).is_err());
    let op = DiskOp {
        disk: 0,
        kind: DiskChangeKind::Discard,
        sector: 0,
        len: 512,
        data: vec![1],
    };
    assert!(r.stage_disk(3, op).is_err());
    let mut other = state(&f.disk);
    other.memory_mib = 4;
    assert!(r.stage_state(3, other).is_err());
    let err = r.commit(3).unwrap_err().to_string();
    assert!(err.contains("without the epoch's state"), "{err}");
    assert_eq!(r.committed_epoch(), Some(2));
}

#[test]
fn a_disk_change_outside_the_image_is_refused_before_it_is_staged() {
    let f = fixture();
    let mut r = two_epochs(&f);
    let err = r
        .stage_disk(3, write_op(1000, 1, 1))
        .unwrap_err()
        .to_string();
    assert!(err.contains("the image has 65536"), "{err}");
    let huge = DiskOp {
        sector: u64::MAX / 256,
        ..write_op(0, 1, 1)
    };
    let err = r.stage_disk(3, huge).unwrap_err().to_string();
    assert!(err.contains("beyond any disk"), "{err}");
    assert_eq!(r.committed_epoch(), Some(2));
    r.stage_state(3, state(&f.disk)).unwrap();
    r.commit(3).unwrap();
}

#[test]
fn a_disk_change_outside_an_image_opened_at_the_commit_breaks_the_replica_loudly() {
    let f = fixture();
    let mut r = replica(&f);
    r.stage_disk(1, write_op(1000, 1, 1)).unwrap();
    r.stage_state(1, state(&f.disk)).unwrap();
    let err = r.commit(1).unwrap_err().to_string();
    assert!(err.contains("beyond the end"), "{err}");
    let err = r.stage_pages(1, &[1], &page(1)).unwrap_err().to_string();
    assert!(err.contains("full resync"), "{err}");
}

#[test]
fn discards_read_back_as_zeros() {
    let f = fixture();
    let mut r = two_epochs(&f);
    r.stage_disk(
        3,
        DiskOp {
            disk: 0,
            kind: DiskChangeKind::Discard,
            sector: 8,
            len: 1024,
            data: Vec::new(),
        },
    )
    .unwrap();
    r.stage_state(3, state(&f.disk)).unwrap();
    r.commit(3).unwrap();
    let disk = std::fs::read(&f.disk).unwrap();
    assert!(disk[8 * 512..10 * 512].iter().all(|&b| b == 0));
}

#[test]
fn save_writes_a_restorable_directory() {
    let f = fixture();
    let r = two_epochs(&f);
    let out = Scratch::new();
    r.save(&out.0).unwrap();
    let snap = Snapshot::read(&out.0).unwrap();
    assert_eq!(snap.memory_mib, MIB);
    let mem = crate::vm::restore_memory(&out.0, MIB).unwrap();
    assert_eq!(memory::sha256(&mem), memory::sha256(r.memory()));
}

#[test]
fn nothing_committed_nothing_to_start() {
    let r = Replica::new(MIB).unwrap();
    assert!(matches!(
        r.save(Path::new("/nonexistent")),
        Err(ReplicaError::NothingCommitted)
    ));
}

#[test]
fn disk_paths_of_this_node_replace_the_primarys() {
    let f = fixture();
    let other = f._dir.0.join("here.img");
    std::fs::write(&other, vec![0u8; 64 * 1024]).unwrap();
    let mut r = Replica::new(MIB).unwrap().with_local(LocalDevices {
        disks: vec![other.clone()],
        nets: Vec::new(),
    });
    r.stage_disk(1, write_op(0, 0x42, 1)).unwrap();
    r.stage_state(1, state(&f.disk)).unwrap();
    r.commit(1).unwrap();
    assert_eq!(std::fs::read(&other).unwrap()[0], 0x42);
    assert_eq!(
        std::fs::read(&f.disk).unwrap()[0],
        0,
        "wrote the primary's path"
    );
    assert_eq!(r.committed_state().unwrap().disks[0].path, other);
    let mut two = Replica::new(MIB).unwrap().with_local(LocalDevices {
        disks: vec![other.clone(), other],
        nets: Vec::new(),
    });
    let err = two.stage_state(1, state(&f.disk)).unwrap_err().to_string();
    assert!(err.contains("1 disks, this node has 2"), "{err}");
    // Without paths of its own the replica refuses the state: it never writes where the wire
    // says.
    let mut none = Replica::new(MIB).unwrap();
    let err = none.stage_state(1, state(&f.disk)).unwrap_err().to_string();
    assert!(err.contains("this node has 0 configured"), "{err}");
}

#[test]
fn a_replica_marked_broken_refuses_epochs() {
    let f = fixture();
    let mut r = two_epochs(&f);
    r.mark_broken("its disks were overwritten".into());
    let err = r.stage_pages(3, &[1], &page(1)).unwrap_err().to_string();
    assert!(
        err.contains("its disks were overwritten") && err.contains("full resync"),
        "{err}"
    );
    assert!(r.commit(3).is_err());
}

#[test]
fn an_epoch_stages_at_most_memory_plus_disks() {
    // Issue 10, defect 3: a peer could stage any number of Pages and Disk frames in one epoch.
    let f = fixture();
    let disk_size = 64 * 1024;
    let mut r = two_epochs(&f).with_disk_sizes(&[disk_size]);
    let limit = (MIB << 20) + disk_size;
    assert_eq!(r.staging_limit(), limit);
    // The whole of memory, page by page, then the whole disk, fits.
    for p in 0..PAGES {
        r.stage_pages(3, &[p], &page(1)).unwrap();
    }
    r.stage_disk(3, write_op(0, 1, 64)).unwrap();
    assert_eq!(r.staged_bytes(), (MIB << 20) + 64 * 512 + DISK_OP_COST);
    // The same pages again, once more than that, do not; nothing more is staged.
    let mut refused = None;
    for p in 0..PAGES {
        if let Err(e) = r.stage_pages(3, &[p], &page(2)) {
            refused = Some((p, e));
            break;
        }
    }
    let (at, e) = refused.expect("the limit never struck");
    assert!(at < PAGES, "{at}");
    let staged = r.staged_bytes();
    assert!(
        staged <= limit && staged + PAGE_SIZE as u64 > limit,
        "{staged}"
    );
    let e = e.to_string();
    assert!(
        e.contains(&format!(
            "over the limit of {limit} (the VM's memory plus its disks' sizes)"
        )),
        "{e}"
    );
    // An aborted epoch gives the budget back.
    r.abort_epoch();
    assert_eq!(r.staged_bytes(), 0);
    r.stage_pages(3, &[1], &page(3)).unwrap();
    r.stage_state(3, state(&f.disk)).unwrap();
    r.commit(3).unwrap();
    assert_eq!(page_of(&r, 1), page(3));
}

#[test]
fn a_flood_of_discards_is_bounded_too() {
    let f = fixture();
    let mut r = two_epochs(&f).with_disk_sizes(&[64 * 1024]);
    let discard = DiskOp {
        disk: 0,
        kind: DiskChangeKind::Discard,
        sector: 0,
        len: 512,
        data: Vec::new(),
    };
    let most = r.staging_limit() / DISK_OP_COST;
    for _ in 0..most {
        r.stage_disk(3, discard.clone()).unwrap();
    }
    let e = r.stage_disk(3, discard).unwrap_err();
    assert!(matches!(e, ReplicaError::StagingLimit { .. }), "{e}");
}

#[test]
fn disk_changes_are_checked_against_the_hellos_sizes_before_the_images_open() {
    let f = fixture();
    // The full copy's epoch, before any image is open.
    let mut r = replica(&f).with_disk_sizes(&[64 * 1024]);
    let e = r
        .stage_disk(1, write_op(128, 1, 1))
        .unwrap_err()
        .to_string();
    assert!(e.contains("ends at byte 66048, the image has 65536"), "{e}");
    let other = DiskOp {
        disk: 1,
        ..write_op(0, 1, 1)
    };
    let e = r.stage_disk(1, other).unwrap_err().to_string();
    assert!(e.contains("a change of disk 1, the VM has 1 disks"), "{e}");
    r.stage_disk(1, write_op(127, 1, 1)).unwrap();
}

#[test]
fn a_state_whose_memory_size_wraps_is_refused_when_decoded() {
    // Issue 10, defect 5: memory_mib = 2^44 + 2 is 2 MiB once shifted by 20.
    let f = fixture();
    let mut s = state(&f.disk);
    s.memory_mib = (1 << 44) + 2;
    let bytes = s.to_bytes().unwrap();
    let e = Snapshot::from_bytes(&bytes, Path::new("state.json"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("memory_mib") && e.contains("must be 1 to"),
        "{e}"
    );
    s.memory_mib = MIB;
    Snapshot::from_bytes(&s.to_bytes().unwrap(), Path::new("state.json")).unwrap();
}
