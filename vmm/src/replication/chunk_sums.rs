//! Chunk hashes of the disks, so a stream's first copy sends only what the secondary lacks.
//!
//! Right after its HelloAck the secondary hashes each of its images in `SUM_CHUNK`s and sends
//! the hashes (DiskSums frames, every chunk of every disk, in order); the primary reads them
//! before its first copy and skips each chunk whose sha256 is the same on its side (rsync's
//! and DRBD's checksum-based resync). A returning node's old copy, a replica of an earlier
//! stream, or two nodes given the same image then cost their differences on the link, not
//! their size; a blank image costs what it did before. The comparison is as sound as the
//! secondary's image is still: nothing writes a replica's images but its own stream's commits,
//! which come after the first copy.

use sha2::{Digest, Sha256};

use super::wire::{DiskSums, MAX_SUMS_PER_FRAME, SUM_CHUNK};
use crate::virtio::block::RawFile;

/// The sha256 of a chunk (all-zero chunks of the full size, the common case of a sparse
/// image, are recognised without hashing).
pub fn chunk_sum(data: &[u8]) -> [u8; 32] {
    if data.len() as u64 == SUM_CHUNK && crate::memory::is_zero(data) {
        return *zero_sum();
    }
    Sha256::digest(data).into()
}

/// The hash sent for a chunk the secondary could not read: no chunk's sha256 is it (as sure
/// as sha256 is), so the primary sends that chunk.
pub const UNREADABLE: [u8; 32] = [0xff; 32];

fn zero_sum() -> &'static [u8; 32] {
    static ZERO: std::sync::OnceLock<[u8; 32]> = std::sync::OnceLock::new();
    ZERO.get_or_init(|| Sha256::digest(vec![0u8; SUM_CHUNK as usize]).into())
}

/// How many chunks a disk of `size` bytes has.
pub fn chunks(size: u64) -> u64 {
    size.div_ceil(SUM_CHUNK)
}

/// The DiskSums frames for disk number `disk` (`file`'s contents now), in order. Reading the
/// image is the cost: `go_on` hears each chunk's bytes and stops the work by answering false
/// (an `Interrupted` error).
pub fn disk_sums(
    disk: u32,
    file: &RawFile,
    mut go_on: impl FnMut(u64) -> bool,
) -> std::io::Result<Vec<DiskSums>> {
    let mut frames = Vec::new();
    let mut sums = Vec::new();
    let mut first_chunk = 0u64;
    let mut buf = vec![0u8; SUM_CHUNK as usize];
    let mut off = 0u64;
    while off < file.size() {
        let len = SUM_CHUNK.min(file.size() - off) as usize;
        // A chunk this side cannot read is one the primary must send (its write may well
        // succeed where the read failed: a remapped sector).
        match file.read_at(&mut buf[..len], off) {
            Ok(()) => sums.push(chunk_sum(&buf[..len])),
            Err(e) => {
                log::warn!(
                    "replica: {}: reading {len} bytes at {off} to hash them: {e} (the primary \
                     sends that chunk)",
                    file.path().display()
                );
                sums.push(UNREADABLE);
            }
        }
        if !go_on(len as u64) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::Interrupted,
                "stopped while hashing",
            ));
        }
        off += len as u64;
        if sums.len() == MAX_SUMS_PER_FRAME {
            let n = sums.len() as u64;
            frames.push(DiskSums {
                disk,
                first_chunk,
                sums: std::mem::take(&mut sums),
            });
            first_chunk += n;
        }
    }
    if !sums.is_empty() {
        frames.push(DiskSums {
            disk,
            first_chunk,
            sums,
        });
    }
    Ok(frames)
}

/// The secondary's hashes as the primary collects them: every chunk of every disk, disk by
/// disk, each frame continuing where the one before stopped.
#[derive(Debug, Clone)]
pub struct PeerSums {
    expected: Vec<u64>,
    disks: Vec<Vec<[u8; 32]>>,
}

impl PeerSums {
    /// Expects the chunks of disks of these sizes (this side's, which the Hello told the
    /// secondary and it checked its own against).
    pub fn expect(disk_sizes: &[u64]) -> PeerSums {
        PeerSums {
            expected: disk_sizes.iter().map(|&s| chunks(s)).collect(),
            disks: disk_sizes.iter().map(|_| Vec::new()).collect(),
        }
    }

    /// The disk whose chunks come next, None when all came.
    fn next_disk(&self) -> Option<usize> {
        (0..self.expected.len()).find(|&d| (self.disks[d].len() as u64) < self.expected[d])
    }

    /// True once every chunk's hash came.
    pub fn complete(&self) -> bool {
        self.next_disk().is_none()
    }

    /// Adds one frame; an error names what is out of order or too many.
    pub fn add(&mut self, frame: DiskSums) -> Result<(), String> {
        let Some(d) = self.next_disk() else {
            return Err(format!(
                "DiskSums for disk {} after every disk's chunks came",
                frame.disk
            ));
        };
        let have = self.disks[d].len() as u64;
        if frame.disk as usize != d || frame.first_chunk != have {
            return Err(format!(
                "DiskSums for disk {} from chunk {}, expected disk {d} from chunk {have}",
                frame.disk, frame.first_chunk
            ));
        }
        if have + frame.sums.len() as u64 > self.expected[d] {
            return Err(format!(
                "DiskSums for disk {d} run to chunk {}, the disk has {}",
                have + frame.sums.len() as u64,
                self.expected[d]
            ));
        }
        self.disks[d].extend(frame.sums);
        Ok(())
    }

    /// Whether chunk `chunk` of disk `disk`, whose contents here are `data`, is the same on
    /// the secondary. False for anything the secondary did not hash.
    pub fn same(&self, disk: usize, chunk: u64, data: &[u8]) -> bool {
        let Some(theirs) = self
            .disks
            .get(disk)
            .and_then(|sums| sums.get(chunk as usize))
        else {
            return false;
        };
        // A zero chunk there (a blank or sparse peer): compared without hashing here.
        if data.len() as u64 == SUM_CHUNK && theirs == zero_sum() {
            return crate::memory::is_zero(data);
        }
        *theirs == chunk_sum(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(name: &str, bytes: &[u8]) -> RawFile {
        let path = std::env::temp_dir().join(format!("havms-sums-{}-{name}", std::process::id()));
        std::fs::write(&path, bytes).unwrap();
        let f = RawFile::open(&path, true).unwrap();
        std::fs::remove_file(&path).unwrap();
        f
    }

    #[test]
    fn the_zero_shortcut_is_the_real_hash() {
        let zero = vec![0u8; SUM_CHUNK as usize];
        let real: [u8; 32] = Sha256::digest(&zero).into();
        assert_eq!(chunk_sum(&zero), real);
        // A short zero chunk (a disk's last) is hashed as it is.
        let short: [u8; 32] = Sha256::digest([0u8; 512]).into();
        assert_eq!(chunk_sum(&[0u8; 512]), short);
    }

    #[test]
    fn sums_cover_every_chunk_and_the_short_last_one() {
        let mut bytes = vec![0u8; (2 * SUM_CHUNK + 4096) as usize];
        bytes[SUM_CHUNK as usize + 7] = 1;
        let f = image("three", &bytes);
        let mut read = 0;
        let frames = disk_sums(2, &f, |n| {
            read += n;
            true
        })
        .unwrap();
        assert_eq!(read, bytes.len() as u64);
        assert_eq!(frames.len(), 1);
        assert_eq!((frames[0].disk, frames[0].first_chunk), (2, 0));
        assert_eq!(frames[0].sums.len(), 3);
        let chunk = |i: usize| &bytes[i * SUM_CHUNK as usize..bytes.len().min((i + 1) << 20)];
        for (i, sum) in frames[0].sums.iter().enumerate() {
            let want: [u8; 32] = Sha256::digest(chunk(i)).into();
            assert_eq!(*sum, want, "chunk {i}");
        }
        assert!(disk_sums(0, &image("empty", &[]), |_| true)
            .unwrap()
            .is_empty());
        let stopped = disk_sums(2, &f, |_| false).unwrap_err();
        assert_eq!(stopped.kind(), std::io::ErrorKind::Interrupted);
    }

    #[test]
    fn the_primary_skips_exactly_the_chunks_the_peer_holds() {
        let ours = vec![5u8; (2 * SUM_CHUNK) as usize];
        let mut theirs = ours.clone();
        theirs[SUM_CHUNK as usize] = 6; // the second chunk differs
        let mut peer = PeerSums::expect(&[0, theirs.len() as u64]);
        assert!(!peer.complete());
        for frame in disk_sums(1, &image("theirs", &theirs), |_| true).unwrap() {
            peer.add(frame).unwrap();
        }
        assert!(peer.complete());
        let (a, b) = ours.split_at(SUM_CHUNK as usize);
        assert!(peer.same(1, 0, a));
        assert!(!peer.same(1, 1, b));
        // A blank peer: zero chunks match without hashing, others do not.
        let mut blank = PeerSums::expect(&[2 * SUM_CHUNK]);
        for frame in disk_sums(0, &image("blank", &vec![0u8; ours.len()]), |_| true).unwrap() {
            blank.add(frame).unwrap();
        }
        assert!(blank.same(0, 0, &vec![0u8; SUM_CHUNK as usize]));
        assert!(!blank.same(0, 1, b));
        // Nothing hashed there: never the same.
        assert!(!peer.same(1, 2, a));
        assert!(!peer.same(0, 0, a));
        assert!(!peer.same(7, 0, a));
    }

    #[test]
    fn out_of_order_missing_or_extra_sums_are_refused_by_name() {
        let sum = [0u8; 32];
        let frame = |disk, first_chunk, n| DiskSums {
            disk,
            first_chunk,
            sums: vec![sum; n],
        };
        let mut peer = PeerSums::expect(&[3 * SUM_CHUNK, SUM_CHUNK]);
        let e = peer.add(frame(1, 0, 1)).unwrap_err();
        assert!(e.contains("expected disk 0 from chunk 0"), "{e}");
        peer.add(frame(0, 0, 2)).unwrap();
        let e = peer.add(frame(0, 1, 1)).unwrap_err();
        assert!(e.contains("expected disk 0 from chunk 2"), "{e}");
        let e = peer.add(frame(0, 2, 2)).unwrap_err();
        assert!(e.contains("the disk has 3"), "{e}");
        peer.add(frame(0, 2, 1)).unwrap();
        assert!(!peer.complete());
        peer.add(frame(1, 0, 1)).unwrap();
        assert!(peer.complete());
        let e = peer.add(frame(1, 1, 1)).unwrap_err();
        assert!(e.contains("after every disk's chunks came"), "{e}");
        // No disks, or only empty ones: complete at once.
        assert!(PeerSums::expect(&[]).complete());
        assert!(PeerSums::expect(&[0, 0]).complete());
    }
}
