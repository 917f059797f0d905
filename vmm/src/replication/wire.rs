//! The replication wire format: one frame = a 64-byte header + a payload, all little endian.
//!
//! ```text
//! 0  magic "HVRP"   4  version u16 = 6   6  kind u8   7  flags u8 = 0
//! 8  vm_id u64      16 epoch u64         24 payload_len u32 (<= MAX_PAYLOAD)
//! 28 reserved u32 = 0                    32 sha256 of the payload [u8; 32]
//! ```
//!
//! This file owns the frame types and the epoch digest; wire/encode.rs writes frames, wire/parse.rs
//! parses them (nom combinators), wire/reader.rs (`FrameReader`) reads one frame at a time off a
//! stream; `SequenceChecker` (sequence.rs) judges the order of frames. Every
//! malformed input is a `WireError` naming the field or the byte offset within the frame
//! (header included): the caller logs it and drops the connection.

use std::borrow::Cow;
use std::fmt;

use sha2::{Digest, Sha256};

mod encode;
mod parse;
mod reader;
pub use encode::{encode, write_frame};
pub use parse::{parse_frame, parse_header, parse_payload, verify_payload};
pub use reader::FrameReader;

pub const MAGIC: [u8; 4] = *b"HVRP";
/// 2: Hello carries the stream id and the disk sizes, Commit a flags byte, CloseAck and End.
/// 3: Handover (a planned switchover). 4: Keepalive. 5: PagesLz4. 6: DiskSums.
pub const VERSION: u16 = 6;
pub const HEADER_LEN: usize = 64;
/// The largest payload accepted, checked before anything is allocated for it.
pub const MAX_PAYLOAD: usize = 64 << 20;
/// The only page size spoken (guest memory is numbered in 4 KiB pages, memory.bin layout).
pub const PAGE_SIZE: usize = 4096;
/// Disk changes are whole sectors.
pub const SECTOR_SIZE: u32 = 512;
pub const MAX_NAME: usize = 64;
pub const MAX_REASON: usize = 1024;
/// The most disks a Hello may announce (a VM has at most 17 virtio devices).
pub const MAX_DISKS: usize = 16;
/// Commit flag: the guest flushed a disk during the epoch; the secondary makes the epoch's disk
/// writes durable (fdatasync) before it acks.
pub const COMMIT_FLUSH: u8 = 1;
/// The most pages one Pages frame can carry within MAX_PAYLOAD.
pub const MAX_PAGES_PER_FRAME: usize = (MAX_PAYLOAD - 4) / (8 + PAGE_SIZE);
/// The most pages one PagesLz4 frame may carry (the sender puts 256 in one): what a few bytes
/// of block can make the receiver allocate is bounded by it, 4 MiB.
pub const MAX_LZ4_PAGES: usize = 1024;
/// The chunk a DiskSums hash covers: bytes `i * SUM_CHUNK ..` of the disk, the last chunk
/// shorter when the disk is not a whole number of them. The primary's first copy reads its
/// disks in chunks of the same size (checkpoint.rs `DISK_CHUNK`).
pub const SUM_CHUNK: u64 = 1 << 20;
/// The most chunk hashes one DiskSums frame carries (2 MiB of hashes, 64 GiB of disk).
pub const MAX_SUMS_PER_FRAME: usize = 65536;

/// What a frame carries; the header's `kind` byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    Hello = 1,
    HelloAck = 2,
    Pages = 3,
    Disk = 4,
    State = 5,
    Commit = 6,
    Ack = 7,
    Abort = 8,
    /// Secondary -> primary: the Abort or End was carried out (the copy is marked stale, or
    /// discarded); the connection closes after it.
    CloseAck = 9,
    /// Primary -> secondary: the VM ended (powered off, stopped): discard the copy, it must
    /// never be taken over.
    End = 10,
    /// Primary -> secondary, right after the Ack of an epoch whose checkpoint left the guest
    /// paused for good: "resume the VM from this epoch". The secondary answers CloseAck; its
    /// copy is then the VM (it is never marked stale by a later reconnect).
    Handover = 11,
    /// Either way, epoch 0, no payload: "still here". Sent when a side has written nothing
    /// for a while (replication/liveness.rs), so a long checkpoint or apply is not silence.
    Keepalive = 12,
    /// Pages whose data is one LZ4 block (`PagesLz4`).
    PagesLz4 = 13,
    /// Secondary -> primary, epoch 0, right after the HelloAck: the sha256 of every chunk of
    /// its disks (`DiskSums`), so the first copy sends only the chunks that differ.
    DiskSums = 14,
}

impl Kind {
    pub fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Hello,
            2 => Kind::HelloAck,
            3 => Kind::Pages,
            4 => Kind::Disk,
            5 => Kind::State,
            6 => Kind::Commit,
            7 => Kind::Ack,
            8 => Kind::Abort,
            9 => Kind::CloseAck,
            10 => Kind::End,
            11 => Kind::Handover,
            12 => Kind::Keepalive,
            13 => Kind::PagesLz4,
            14 => Kind::DiskSums,
            _ => return None,
        })
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("replication stream: {0}")]
    Io(#[from] std::io::Error),
    #[error("stream ends inside a frame: {got} of its {needed} bytes arrived ({part})")]
    Truncated {
        part: &'static str,
        got: usize,
        needed: usize,
    },
    #[error("bad magic {found:02x?} at byte 0 of the frame (expected \"HVRP\")")]
    BadMagic { found: [u8; 4] },
    #[error("unsupported protocol version {found} at byte 4 of the frame (we speak {VERSION})")]
    UnsupportedVersion { found: u16 },
    #[error("unknown frame kind {found} at byte 6 of the frame")]
    UnknownKind { found: u8 },
    #[error("nonzero flags {found:#04x} at byte 7 of the frame")]
    NonzeroFlags { found: u8 },
    #[error("nonzero reserved field {found:#x} at byte 28 of the frame")]
    NonzeroReserved { found: u32 },
    #[error("{kind} frame announces a {len}-byte payload at byte 24, over the {max}-byte limit")]
    Oversized { kind: Kind, len: u64, max: usize },
    #[error("{kind} payload sha256 mismatch: the header says {expected}, the payload hashes to {actual}")]
    ShaMismatch {
        kind: Kind,
        expected: String,
        actual: String,
    },
    #[error("{kind} frame is {actual} bytes long but its {field} needs {expected}")]
    LengthMismatch {
        kind: Kind,
        field: &'static str,
        expected: u64,
        actual: u64,
    },
    #[error("{kind} payload ends inside {field} at byte {offset} of the frame")]
    ShortPayload {
        kind: Kind,
        field: &'static str,
        offset: usize,
    },
    #[error("{kind} payload has {extra} unexpected bytes at byte {offset} of the frame")]
    TrailingBytes {
        kind: Kind,
        offset: usize,
        extra: usize,
    },
    #[error(
        "{kind} {field} is {len} bytes at byte {offset} of the frame, over the {max}-byte limit"
    )]
    TooLong {
        kind: Kind,
        field: &'static str,
        offset: usize,
        len: usize,
        max: usize,
    },
    #[error("{kind} {field} is not UTF-8 (byte {offset} of the frame)")]
    NotUtf8 {
        kind: Kind,
        field: &'static str,
        offset: usize,
    },
    #[error("Hello name {name:?} is empty or has a character other than [A-Za-z0-9._-]")]
    BadName { name: String },
    #[error("Hello page_size {found} at byte {offset} of the frame (only {PAGE_SIZE} is spoken)")]
    BadPageSize { found: u32, offset: usize },
    #[error("{kind} {field} is {found} at byte {offset} of the frame (must be 0 or 1)")]
    BadBool {
        kind: Kind,
        field: &'static str,
        found: u8,
        offset: usize,
    },
    #[error("Disk op {found} at byte {offset} of the frame (1 = write, 2 = discard)")]
    BadDiskOp { found: u8, offset: usize },
    #[error("Disk byte_len {len} at byte {offset} of the frame is not a positive multiple of {SECTOR_SIZE}")]
    BadDiskLength { len: u64, offset: usize },
    #[error("empty State payload")]
    EmptyState,
    #[error("Hello announces {count} disks at byte {offset} of the frame (at most {MAX_DISKS})")]
    TooManyDisks { count: usize, offset: usize },
    #[error("Commit flags {found:#04x} at byte {offset} of the frame (only {COMMIT_FLUSH:#04x} is defined)")]
    BadCommitFlags { found: u8, offset: usize },
    #[error("cannot encode this {kind} frame: {what}")]
    Unencodable { kind: Kind, what: String },
    #[error("PagesLz4 frame: {0}")]
    Compressed(String),
    #[error("DiskSums count {found} at byte {offset} of the frame (1 to {MAX_SUMS_PER_FRAME})")]
    BadSumCount { found: u32, offset: usize },
}

/// A parsed, checked header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub kind: Kind,
    pub vm_id: u64,
    pub epoch: u64,
    pub payload_len: u32,
    pub sha256: [u8; 32],
}

impl Header {
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&MAGIC);
        b[4..6].copy_from_slice(&VERSION.to_le_bytes());
        b[6] = self.kind as u8;
        // b[7] flags and b[28..32] reserved stay 0.
        b[8..16].copy_from_slice(&self.vm_id.to_le_bytes());
        b[16..24].copy_from_slice(&self.epoch.to_le_bytes());
        b[24..28].copy_from_slice(&self.payload_len.to_le_bytes());
        b[32..64].copy_from_slice(&self.sha256);
        b
    }
}

/// The primary introduces a VM (header epoch 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// 1..=64 bytes of [A-Za-z0-9._-].
    pub name: String,
    /// Reserved for the generation history (all zero today).
    pub generation: [u8; 16],
    /// Random per stream: the secondary reports which stream its copy came from, so the
    /// supervisors can tell a copy of this stream from one of an earlier stream.
    pub stream_id: u64,
    pub memory_bytes: u64,
    /// The size in bytes of each disk, in device order: the secondary checks its own images
    /// against them before anything is sent (a takeover needs disks of the same size).
    pub disk_sizes: Vec<u64>,
}

/// The secondary's answer to Hello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelloAck {
    pub last_committed_epoch: u64,
    /// All zero: the secondary holds no copy.
    pub generation: [u8; 16],
    /// The secondary can continue from `last_committed_epoch`; false: it needs a full sync.
    pub resume_ok: bool,
}

/// The secondary's sha256 of `sums.len()` consecutive `SUM_CHUNK`s of disk `disk`, the first
/// being chunk `first_chunk`. The secondary sends every chunk of every disk, in order, in one
/// or more of these; the primary checks that order (`chunk_sums::PeerSums`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskSums {
    pub disk: u32,
    pub first_chunk: u64,
    /// 1 to `MAX_SUMS_PER_FRAME`.
    pub sums: Vec<[u8; 32]>,
}

/// Guest pages: `data[i * PAGE_SIZE..][..PAGE_SIZE]` is page `pages[i]` (memory.bin numbering).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pages<'a> {
    pub pages: Cow<'a, [u64]>,
    pub data: Cow<'a, [u8]>,
}

/// Pages as `Pages`, their data (`pages.len() * PAGE_SIZE` bytes) compressed into one LZ4 block
/// (no size prefix: the page count gives it). The sender picks this form only when it is
/// smaller; the receiver decompresses into exactly that many bytes or refuses the frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PagesLz4<'a> {
    pub pages: Cow<'a, [u64]>,
    pub block: Cow<'a, [u8]>,
}

impl PagesLz4<'_> {
    /// The LZ4 block of `data` (no size prefix), as this frame carries it.
    pub fn block_of(data: &[u8]) -> Vec<u8> {
        lz4_flex::block::compress(data)
    }

    /// The longest block `count` pages can need (LZ4's worst case for incompressible data):
    /// the parser refuses a longer one, which also keeps the decoder's length fields small.
    pub fn max_block(count: usize) -> usize {
        lz4_flex::block::get_maximum_output_size(count * PAGE_SIZE)
    }

    /// The same pages as a plain [`Pages`] (the page list borrowed, the data decompressed).
    pub fn to_pages(&self) -> Result<Pages<'_>, WireError> {
        Ok(Pages {
            pages: Cow::Borrowed(&self.pages),
            data: Cow::Owned(self.decompress()?),
        })
    }

    /// The pages' data: exactly `pages.len() * PAGE_SIZE` bytes, or an error saying why not.
    pub fn decompress(&self) -> Result<Vec<u8>, WireError> {
        let want = self.pages.len() * PAGE_SIZE;
        if self.pages.len() > MAX_LZ4_PAGES || self.block.len() > Self::max_block(self.pages.len())
        {
            return Err(WireError::Compressed(format!(
                "{} pages in a {}-byte block: over the limits",
                self.pages.len(),
                self.block.len()
            )));
        }
        let mut out = vec![0u8; want];
        match lz4_flex::block::decompress_into(&self.block, &mut out) {
            Ok(n) if n == want => Ok(out),
            Ok(n) => Err(WireError::Compressed(format!(
                "the LZ4 block of {} pages holds {n} bytes, not {want}",
                self.pages.len()
            ))),
            Err(e) => Err(WireError::Compressed(format!(
                "the LZ4 block of {} pages: {e}",
                self.pages.len()
            ))),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskAction<'a> {
    /// The data written (a positive multiple of SECTOR_SIZE bytes).
    Write(Cow<'a, [u8]>),
    /// The number of bytes discarded (a positive multiple of SECTOR_SIZE).
    Discard(u32),
}

/// One change to a disk image of the epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk<'a> {
    pub disk: u32,
    /// In SECTOR_SIZE sectors.
    pub sector: u64,
    pub action: DiskAction<'a>,
}

/// The end of an epoch: how many frames it carried and a digest over their payload hashes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Commit {
    pub frames: u32,
    pub digest: [u8; 32],
    /// `COMMIT_FLUSH` or 0.
    pub flags: u8,
}

/// A frame's payload. Bulk data borrows (from the caller when encoding, from the reader's
/// buffer when parsing); `into_owned` detaches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame<'a> {
    Hello(Hello),
    HelloAck(HelloAck),
    DiskSums(DiskSums),
    Pages(Pages<'a>),
    PagesLz4(PagesLz4<'a>),
    Disk(Disk<'a>),
    /// The engine's serialized vCPU/VM/device state, non-empty.
    State(Cow<'a, [u8]>),
    Commit(Commit),
    Ack,
    Abort {
        reason: String,
    },
    CloseAck {
        reason: String,
    },
    End {
        reason: String,
    },
    Handover {
        reason: String,
    },
    Keepalive,
}

impl Frame<'_> {
    pub fn kind(&self) -> Kind {
        match self {
            Frame::Hello(_) => Kind::Hello,
            Frame::HelloAck(_) => Kind::HelloAck,
            Frame::DiskSums(_) => Kind::DiskSums,
            Frame::Pages(_) => Kind::Pages,
            Frame::PagesLz4(_) => Kind::PagesLz4,
            Frame::Disk(_) => Kind::Disk,
            Frame::State(_) => Kind::State,
            Frame::Commit(_) => Kind::Commit,
            Frame::Ack => Kind::Ack,
            Frame::Abort { .. } => Kind::Abort,
            Frame::CloseAck { .. } => Kind::CloseAck,
            Frame::End { .. } => Kind::End,
            Frame::Handover { .. } => Kind::Handover,
            Frame::Keepalive => Kind::Keepalive,
        }
    }

    pub fn into_owned(self) -> Frame<'static> {
        let own = |c: Cow<'_, [u8]>| Cow::Owned(c.into_owned());
        match self {
            Frame::Hello(h) => Frame::Hello(h),
            Frame::HelloAck(h) => Frame::HelloAck(h),
            Frame::DiskSums(d) => Frame::DiskSums(d),
            Frame::Pages(p) => Frame::Pages(Pages {
                pages: Cow::Owned(p.pages.into_owned()),
                data: own(p.data),
            }),
            Frame::PagesLz4(p) => Frame::PagesLz4(PagesLz4 {
                pages: Cow::Owned(p.pages.into_owned()),
                block: own(p.block),
            }),
            Frame::Disk(d) => Frame::Disk(Disk {
                disk: d.disk,
                sector: d.sector,
                action: match d.action {
                    DiskAction::Write(data) => DiskAction::Write(own(data)),
                    DiskAction::Discard(n) => DiskAction::Discard(n),
                },
            }),
            Frame::State(s) => Frame::State(own(s)),
            Frame::Commit(c) => Frame::Commit(c),
            Frame::Ack => Frame::Ack,
            Frame::Abort { reason } => Frame::Abort { reason },
            Frame::CloseAck { reason } => Frame::CloseAck { reason },
            Frame::End { reason } => Frame::End { reason },
            Frame::Handover { reason } => Frame::Handover { reason },
            Frame::Keepalive => Frame::Keepalive,
        }
    }
}

/// The digest a Commit carries, built by the sender as it writes an epoch's frames and by the
/// receiver as it reads them: sha256 over the concatenated payload sha256s of the epoch's
/// frames (everything between the previous Commit and this one), in order.
#[derive(Debug, Clone, Default)]
pub struct EpochDigest {
    frames: u32,
    hasher: Sha256,
}

impl EpochDigest {
    pub fn new() -> EpochDigest {
        EpochDigest::default()
    }

    /// Adds one frame; false if the epoch already holds u32::MAX frames (not added).
    #[must_use]
    pub fn add(&mut self, payload_sha256: &[u8; 32]) -> bool {
        let Some(n) = self.frames.checked_add(1) else {
            return false;
        };
        self.frames = n;
        self.hasher.update(payload_sha256);
        true
    }

    pub fn frames(&self) -> u32 {
        self.frames
    }

    /// The Commit for the frames added so far (flags 0).
    pub fn commit(&self) -> Commit {
        Commit {
            frames: self.frames,
            digest: self.hasher.clone().finalize().into(),
            flags: 0,
        }
    }
}

/// VM names as the config allows them: 1..=64 bytes of [A-Za-z0-9._-].
pub fn check_name(name: &str) -> Result<(), WireError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(WireError::BadName { name: name.into() })
    }
}

pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
#[path = "wire_stream_tests.rs"]
mod stream_tests;
#[cfg(test)]
#[path = "wire_tests.rs"]
mod tests;
