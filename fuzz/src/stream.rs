//! Target `replica_stream`: a frame stream, as a primary would send it (a `script` played
//! through the engine's encoder), read by `FrameReader`, judged by `SequenceChecker` and staged
//! into and committed by a real `Replica` (guest memory, disk image files), the way the replica
//! server's connection does it (vmm replication/secondary/connection.rs). Beside it a model
//! that applies an epoch's pages and disk changes only when the replica says the epoch
//! committed: after every commit and at the end of the stream, the replica's memory and disk
//! images must equal the model's (before the first commit, the full copy's pages are in memory
//! at once), and an epoch must never stage more than the replica's limit.

use std::borrow::Cow;
use std::io::Cursor;
use std::path::{Path, PathBuf};

use havms_vmm::memory::{self, PAGE_SIZE};
use havms_vmm::replication::compat::LocalDevices;
use havms_vmm::replication::replica::{DiskOp, Replica};
use havms_vmm::replication::sequence::{SequenceChecker, Step};
use havms_vmm::replication::wire::{self, DiskAction, Frame, FrameReader, Hello};
use havms_vmm::spec::{DiskSpec, NetSpec};
use havms_vmm::state::snapshot::{Snapshot, VmStateBox, FORMAT_VERSION};
use havms_vmm::state::vm::VmState;
use havms_vmm::virtio::block::DiskChangeKind;
use vm_memory::GuestMemoryBackend;

use crate::script::{self, Op, EPOCH_MAX, EPOCH_MINUS, EPOCH_PLUS, EPOCH_ZERO, WRONG_VM};

/// Every disk image of the harness: 128 sectors.
pub const DISK_SIZE: u64 = 64 * 1024;
/// The most disks a script can give this node for the VM.
const MAX_LOCAL_DISKS: usize = 2;
/// The harness's node has this much memory: larger Hellos are refused as the server refuses
/// a VM larger than the node (and each run maps the replica's memory).
const NODE_MIB: u64 = 2;
const VM_ID: u64 = 1;

pub fn replica_stream(data: &[u8]) {
    run(data);
}

/// Plays the script; the epochs the replica committed.
pub fn run(data: &[u8]) -> u64 {
    let stream = primary(&script::parse(data));
    let dir = scratch();
    let local: Vec<PathBuf> = (0..MAX_LOCAL_DISKS)
        .map(|i| dir.join(format!("disk{i}.img")))
        .collect();
    for path in &local {
        // Emptied and made sparse again: reads as zeros, as the model starts.
        let f = std::fs::File::create(path).expect("scratch disk image");
        f.set_len(DISK_SIZE).expect("scratch disk image size");
    }
    secondary(&stream.bytes, &local[..stream.local_disks])
}

/// What the primary sent, and how many disks the receiving node has for the VM.
pub struct Sent {
    pub bytes: Vec<u8>,
    pub local_disks: usize,
}

/// The primary: the script's frames through `wire::write_frame`, with epochs, frame counts
/// and digests right unless the script says otherwise.
pub fn primary(steps: &[script::Step]) -> Sent {
    let mut out = Vec::new();
    let mut last_frame = 0..0;
    let mut epoch = 0u64;
    let mut digest = wire::EpochDigest::new();
    let (mut mib, mut disks, mut local_disks) = (1u64, 0usize, 0usize);
    for step in steps {
        let vm_id = if step.modifier & WRONG_VM != 0 {
            VM_ID + 1
        } else {
            VM_ID
        };
        let header_epoch = match step.modifier & 7 {
            EPOCH_PLUS => epoch.wrapping_add(1),
            EPOCH_MINUS => epoch.wrapping_sub(1),
            EPOCH_ZERO => 0,
            EPOCH_MAX => u64::MAX,
            _ => epoch,
        };
        let data;
        let state;
        let frame = match &step.op {
            Op::Hello {
                mib: m,
                disks: d,
                local,
                bad_size,
            } => {
                let memory_bytes = match m {
                    0 => 0,
                    255 => (1 << 20) + PAGE_SIZE as u64,
                    m => u64::from(*m % 3 + 1) << 20,
                };
                mib = memory_bytes >> 20;
                disks = usize::from(*d) % (MAX_LOCAL_DISKS + 1);
                local_disks = usize::from(*local) % (MAX_LOCAL_DISKS + 1);
                let mut disk_sizes = vec![DISK_SIZE; disks];
                if let (Some(first), true) = (disk_sizes.first_mut(), *bad_size) {
                    *first += 512;
                }
                epoch = 1;
                Frame::Hello(Hello {
                    name: "fuzz".into(),
                    generation: [0; 16],
                    stream_id: 7,
                    memory_bytes,
                    disk_sizes,
                })
            }
            Op::Pages {
                count,
                first,
                stride,
                fill,
            } => {
                let n = u64::from(*count % 9);
                let pages: Vec<u64> = (0..n)
                    .map(|i| u64::from(*first) + i * u64::from(*stride))
                    .collect();
                let mut bytes = Vec::with_capacity(pages.len() * PAGE_SIZE);
                for &p in &pages {
                    page_bytes(&mut bytes, *fill, p);
                }
                // An odd fill goes as the sender sends compressible pages: one LZ4 block.
                let lz4 = fill % 2 == 1 && !pages.is_empty();
                data = if lz4 {
                    wire::PagesLz4::block_of(&bytes)
                } else {
                    bytes
                };
                if lz4 {
                    Frame::PagesLz4(wire::PagesLz4 {
                        pages: Cow::Owned(pages),
                        block: Cow::Borrowed(&data),
                    })
                } else {
                    Frame::Pages(wire::Pages {
                        pages: Cow::Owned(pages),
                        data: Cow::Borrowed(&data),
                    })
                }
            }
            Op::DiskWrite {
                disk,
                sector,
                sectors,
                fill,
            } => {
                data = vec![*fill; usize::from(*sectors % 9) * 512];
                Frame::Disk(wire::Disk {
                    disk: u32::from(*disk % 4),
                    sector: u64::from(*sector),
                    action: DiskAction::Write(Cow::Borrowed(&data)),
                })
            }
            Op::DiskDiscard {
                disk,
                sector,
                sectors,
            } => Frame::Disk(wire::Disk {
                disk: u32::from(*disk % 4),
                sector: u64::from(*sector),
                action: DiskAction::Discard(u32::from(*sectors) * 512),
            }),
            Op::State {
                mib: m,
                disks: d,
                nics,
            } => {
                let state_mib = match m % 4 {
                    1 => mib + 1,
                    2 => 0,
                    _ => mib,
                };
                let n = if *d == 0 { disks } else { usize::from(*d) % 3 };
                state = state_json(state_mib, n, usize::from(*nics % 2));
                let len = if m % 4 == 3 {
                    state.len() / 2
                } else {
                    state.len()
                };
                Frame::State(Cow::Borrowed(&state[..len]))
            }
            Op::Commit {
                frames,
                bad_digest,
                flush,
            } => {
                let mut c = digest.commit();
                match frames % 3 {
                    1 => c.frames = c.frames.wrapping_add(1),
                    2 => c.frames = c.frames.wrapping_sub(1),
                    _ => {}
                }
                if *bad_digest {
                    c.digest[0] ^= 1;
                }
                c.flags = if *flush { wire::COMMIT_FLUSH } else { 0 };
                Frame::Commit(c)
            }
            Op::Abort { len } => Frame::Abort {
                reason: "x".repeat(usize::from(*len)),
            },
            Op::End => Frame::End {
                reason: "powered off".into(),
            },
            Op::Reply { which } => match which % 4 {
                0 => Frame::HelloAck(wire::HelloAck {
                    last_committed_epoch: 0,
                    generation: [0; 16],
                    resume_ok: false,
                }),
                1 => Frame::Ack,
                2 => Frame::Keepalive,
                _ => Frame::CloseAck {
                    reason: String::new(),
                },
            },
            Op::Raw(raw) => {
                out.extend_from_slice(raw);
                continue;
            }
            Op::Flip { offset, xor } => {
                if !last_frame.is_empty() {
                    let at = last_frame.start + usize::from(*offset) % last_frame.len();
                    out[at] ^= if *xor == 0 { 1 } else { *xor };
                }
                continue;
            }
            Op::Cut { cut } => {
                let keep = out.len().saturating_sub(usize::from(*cut) + 1);
                out.truncate(keep.max(last_frame.start));
                break;
            }
        };
        // A keepalive goes out at epoch 0, as a primary sends it, unless the script says
        // otherwise.
        let header_epoch = match frame {
            Frame::Keepalive if step.modifier & 7 == 0 => 0,
            _ => header_epoch,
        };
        let start = out.len();
        // A frame the encoder refuses (an empty disk change, say) is not sent.
        let Ok(sha) = wire::write_frame(&mut out, vm_id, header_epoch, &frame) else {
            continue;
        };
        last_frame = start..out.len();
        match frame {
            Frame::Commit(_) => {
                digest = wire::EpochDigest::new();
                epoch = epoch.wrapping_add(1);
            }
            Frame::Pages(_) | Frame::PagesLz4(_) | Frame::Disk(_) | Frame::State(_) => {
                let _ = digest.add(&sha);
            }
            _ => {}
        }
    }
    Sent {
        bytes: out,
        local_disks,
    }
}

/// Appends page `p` filled with `fill`, its number in its first bytes (so pages differ).
fn page_bytes(out: &mut Vec<u8>, fill: u8, p: u64) {
    let start = out.len();
    out.resize(start + PAGE_SIZE, fill);
    out[start..start + 8].copy_from_slice(&p.to_le_bytes());
}

/// A state.json of a VM with no vCPU (nothing runs from it), as the primary encodes it.
pub fn state_json(mib: u64, disks: usize, nics: usize) -> Vec<u8> {
    let snap = Snapshot {
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
        disks: (0..disks)
            .map(|i| DiskSpec {
                path: PathBuf::from(format!("/primary/disk{i}.img")),
                readonly: false,
            })
            .collect(),
        nets: (0..nics)
            .map(|_| NetSpec {
                tap: "tap0".into(),
                mac: [2, 0, 0, 0, 0, 1],
            })
            .collect(),
        rng: false,
        virtio: Vec::new(),
        kernel: None,
        initramfs: None,
    };
    snap.to_bytes().expect("a plain state encodes")
}

/// This thread's scratch directory for the disk images (the unit tests run harnesses on
/// several threads at once).
fn scratch() -> PathBuf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    thread_local! {
        static DIR: PathBuf = {
            let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let dir = std::env::temp_dir().join(format!("havms-fuzz-{}-{n}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("scratch directory");
            dir
        };
    }
    DIR.with(PathBuf::clone)
}

/// What the replica must hold: memory and disks as of the last commit.
struct Model {
    mem: Vec<u8>,
    disks: Vec<Vec<u8>>,
    committed: bool,
    pages: Vec<(u64, Vec<u8>)>,
    disk_ops: Vec<DiskOp>,
}

impl Model {
    fn commit(&mut self) {
        for (p, data) in std::mem::take(&mut self.pages) {
            let at = p as usize * PAGE_SIZE;
            self.mem[at..at + PAGE_SIZE].copy_from_slice(&data);
        }
        for op in std::mem::take(&mut self.disk_ops) {
            let disk = &mut self.disks[op.disk as usize];
            let range = op.sector as usize * 512..(op.sector + op.len / 512) as usize * 512;
            match op.kind {
                DiskChangeKind::Write => disk[range].copy_from_slice(&op.data),
                _ => disk[range].fill(0),
            }
        }
        self.committed = true;
    }

    /// The replica holds what the model says.
    fn check(&self, r: &Replica, local: &[PathBuf], when: &str) {
        // A replica broken by a half-applied epoch holds nothing to compare (it says so, and
        // needs a full copy).
        if r.is_broken() {
            return;
        }
        let mut mem = Vec::with_capacity(self.mem.len());
        for region in r.memory().iter() {
            mem.extend_from_slice(memory::region_bytes(region));
        }
        if mem != self.mem {
            let page = mem
                .chunks(PAGE_SIZE)
                .zip(self.mem.chunks(PAGE_SIZE))
                .position(|(a, b)| a != b);
            panic!("{when}: replica memory differs from the model at page {page:?}");
        }
        if !self.committed {
            return;
        }
        for (i, (path, want)) in local.iter().zip(&self.disks).enumerate() {
            let got = std::fs::read(path).expect("reading a scratch disk image");
            assert!(got == *want, "{when}: disk {i} differs from the model");
        }
    }
}

/// The replica server's side of one connection (connection.rs `serve` and `stream`); the
/// epochs committed.
pub fn secondary(bytes: &[u8], local: &[PathBuf]) -> u64 {
    let mut reader = FrameReader::new(Cursor::new(bytes));
    let mut checker = SequenceChecker::new(None);
    let Ok(Some((header, frame))) = reader.next_frame() else {
        return 0;
    };
    if checker.check(&header, &frame) != Ok(Step::Hello) {
        return 0;
    }
    let Frame::Hello(hello) = frame else {
        panic!("a Hello step for a {} frame", frame.kind());
    };
    // accept_hello: whole MiB, fits this node, the disks match this node's.
    let devices = LocalDevices {
        disks: local.to_vec(),
        nets: Vec::new(),
    };
    let mib = hello.memory_bytes >> 20;
    if !hello.memory_bytes.is_multiple_of(1 << 20)
        || mib > NODE_MIB
        || devices.check_disks(&hello.disk_sizes).is_err()
    {
        return 0;
    }
    let Ok(r) = Replica::new(mib) else {
        return 0;
    };
    let mut r = r.with_local(devices).with_disk_sizes(&hello.disk_sizes);
    let mut model = Model {
        mem: vec![0; (mib << 20) as usize],
        disks: vec![vec![0; DISK_SIZE as usize]; local.len()],
        committed: false,
        pages: Vec::new(),
        disk_ops: Vec::new(),
    };
    checker.start_at(0).expect("start_at right after the Hello");
    let limit = r.staging_limit();
    while let Ok(Some((header, frame))) = reader.next_frame() {
        let Ok(step) = checker.check(&header, &frame) else {
            break;
        };
        match step {
            Step::Stage(epoch) => {
                if stage(&mut r, &mut model, epoch, &frame).is_err() {
                    break;
                }
                assert!(
                    r.staged_bytes() <= limit,
                    "epoch {epoch} staged over the limit"
                );
            }
            Step::Commit(epoch) => {
                if r.commit(epoch).is_err() {
                    break;
                }
                model.commit();
                assert_eq!(r.committed_epoch(), Some(epoch));
                let flush = matches!(&frame, Frame::Commit(c) if c.flags & wire::COMMIT_FLUSH != 0);
                if flush && r.flush_disks().is_err() {
                    break;
                }
                model.check(&r, local, &format!("after the commit of epoch {epoch}"));
            }
            Step::Keepalive => {}
            // A Handover ends the stream like Abort and End (the copy is then taken over).
            Step::Hello | Step::Abort(_) | Step::End(_) | Step::Handover(_) => break,
        }
    }
    // Whatever ended the stream, an unfinished epoch is dropped.
    r.abort_epoch();
    model.pages.clear();
    model.disk_ops.clear();
    model.check(&r, local, "at the end of the stream");
    r.committed_epoch().unwrap_or(0)
}

/// connection.rs `stage`, recording in the model what the replica accepted.
fn stage(r: &mut Replica, model: &mut Model, epoch: u64, frame: &Frame<'_>) -> Result<(), ()> {
    match frame {
        Frame::PagesLz4(p) => {
            let plain = Frame::Pages(p.to_pages().map_err(drop)?);
            stage(r, model, epoch, &plain)?;
        }
        Frame::Pages(p) => {
            r.stage_pages(epoch, &p.pages, &p.data).map_err(drop)?;
            for (i, &page) in p.pages.iter().enumerate() {
                let data = p.data[i * PAGE_SIZE..][..PAGE_SIZE].to_vec();
                if model.committed {
                    model.pages.push((page, data));
                } else {
                    let at = page as usize * PAGE_SIZE;
                    model.mem[at..at + PAGE_SIZE].copy_from_slice(&data);
                }
            }
        }
        Frame::Disk(d) => {
            let (kind, len, data) = match &d.action {
                DiskAction::Write(data) => {
                    (DiskChangeKind::Write, data.len() as u64, data.to_vec())
                }
                DiskAction::Discard(n) => (DiskChangeKind::Discard, u64::from(*n), Vec::new()),
            };
            let op = DiskOp {
                disk: d.disk,
                kind,
                sector: d.sector,
                len,
                data,
            };
            r.stage_disk(epoch, op.clone()).map_err(drop)?;
            assert!(
                (op.disk as usize) < model.disks.len() && op.sector * 512 + op.len <= DISK_SIZE,
                "the replica staged a change outside the disks: {op:?}"
            );
            model.disk_ops.push(op);
        }
        Frame::State(bytes) => {
            let origin = format!("replication stream, epoch {epoch}");
            let snap = Snapshot::from_bytes(bytes, Path::new(&origin)).map_err(drop)?;
            r.stage_state(epoch, snap).map_err(drop)?;
        }
        other => panic!("a Stage step for a {} frame", other.kind()),
    }
    Ok(())
}
