//! One virtio-blk request: parsing the descriptor chain (16-byte header in the driver-readable
//! part, data, one status byte at the very end of the device-writable part) and running it
//! against the image. The chain is read through virtio-queue's Reader/Writer, so requests may be
//! split over descriptors any way the driver likes (virtio 1.x forbids assuming a layout), and
//! every byte written into the guest goes through vm-memory, which marks the pages dirty.
//!
//! Nothing the guest puts in a chain can make this panic: a bad header, a misaligned length, an
//! out-of-range sector or a write to a read-only disk ends as VIRTIO_BLK_S_IOERR or
//! VIRTIO_BLK_S_UNSUPP with a log line saying which.

use std::io::{Read, Write};

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD,
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_queue::{DescriptorChain, Reader, Writer};

use super::backend::RawFile;
use super::observer::{DiskChange, DiskChangeKind};
use crate::virtio::VirtioMem;

pub const SECTOR_SHIFT: u32 = 9;
pub const SECTOR_SIZE: u64 = 1 << SECTOR_SHIFT;
/// Header: type (le32), reserved/ioprio (le32), sector (le64).
const HEADER_LEN: usize = 16;
/// One discard segment: sector (le64), num_sectors (le32), flags (le32).
const DISCARD_SEGMENT_LEN: usize = 16;
/// Bounce buffer size: data moves between the file and guest memory in pieces this big.
const CHUNK: usize = 128 * 1024;

/// Why a request failed; the status byte says IOERR or UNSUPP, the log says this.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    #[error("descriptor chain points outside guest memory")]
    BadChain,
    #[error("no device-writable byte for the status")]
    NoStatus,
    #[error("request header is {0} bytes, 16 needed")]
    ShortHeader(usize),
    #[error("data length {0} is not a multiple of 512")]
    Unaligned(u64),
    #[error("sectors {sector}+{len} bytes past the end of the {capacity}-byte disk")]
    OutOfRange {
        sector: u64,
        len: u64,
        capacity: u64,
    },
    #[error("write to a read-only disk")]
    ReadOnly,
    #[error("discard not enabled on this disk")]
    DiscardDisabled,
    #[error("discard segment list of {0} bytes is not whole 16-byte segments")]
    BadDiscardList(usize),
    #[error("request type {0} not supported")]
    Unsupported(u32),
    #[error("guest memory access: {0}")]
    Memory(String),
    #[error("image I/O: {0}")]
    Io(String),
}

impl RequestError {
    fn status(&self) -> u8 {
        match self {
            RequestError::Unsupported(_) | RequestError::DiscardDisabled => {
                VIRTIO_BLK_S_UNSUPP as u8
            }
            _ => VIRTIO_BLK_S_IOERR as u8,
        }
    }
}

/// What executing a request needs besides the chain.
pub(super) struct RequestContext<'a> {
    pub disk: &'a RawFile,
    pub discard: bool,
    pub changes: &'a mut Vec<DiskChange>,
}

/// Runs the request in `chain` and writes its status; returns the used length (bytes written
/// into the guest's buffers, status included).
pub(super) fn handle(
    chain: DescriptorChain<&VirtioMem>,
    mem: &VirtioMem,
    ctx: &mut RequestContext<'_>,
) -> u32 {
    let head = chain.head_index();
    let (reader, writer) = match (chain.clone().reader(mem), chain.writer(mem)) {
        (Ok(r), Ok(w)) => (r, w),
        _ => {
            log::warn!("virtio-blk: request {head}: {}", RequestError::BadChain);
            return 0;
        }
    };
    let mut data_w = writer;
    let status_at = match data_w.available_bytes().checked_sub(1) {
        Some(n) => n,
        None => {
            log::warn!("virtio-blk: request {head}: {}", RequestError::NoStatus);
            return 0;
        }
    };
    let mut status_w = match data_w.split_at(status_at) {
        Ok(w) => w,
        Err(_) => {
            log::warn!("virtio-blk: request {head}: {}", RequestError::NoStatus);
            return 0;
        }
    };
    let status = match execute(reader, &mut data_w, ctx) {
        Ok(()) => VIRTIO_BLK_S_OK as u8,
        Err(e) => {
            log::warn!("virtio-blk: request {head}: {e}");
            e.status()
        }
    };
    if let Err(e) = status_w.write_all(&[status]) {
        log::warn!("virtio-blk: request {head}: writing status: {e}");
        return data_w.bytes_written() as u32;
    }
    (data_w.bytes_written() + 1) as u32
}

fn execute(
    mut reader: Reader<'_, vm_memory::bitmap::BS<'_, vm_memory::bitmap::AtomicBitmap>>,
    data: &mut Writer<'_, vm_memory::bitmap::BS<'_, vm_memory::bitmap::AtomicBitmap>>,
    ctx: &mut RequestContext<'_>,
) -> Result<(), RequestError> {
    let mut header = [0u8; HEADER_LEN];
    let avail = reader.available_bytes();
    if avail < HEADER_LEN {
        return Err(RequestError::ShortHeader(avail));
    }
    reader
        .read_exact(&mut header)
        .map_err(|e| RequestError::Memory(e.to_string()))?;
    let kind = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let mut sector_bytes = [0u8; 8];
    sector_bytes.copy_from_slice(&header[8..16]);
    let sector = u64::from_le_bytes(sector_bytes);
    let capacity = ctx.disk.size();

    match kind {
        VIRTIO_BLK_T_IN => {
            let len = data.available_bytes() as u64;
            let offset = check_range(sector, len, capacity)?;
            let mut buf = vec![0u8; CHUNK.min(len as usize)];
            let mut done = 0u64;
            while done < len {
                let n = (len - done).min(CHUNK as u64) as usize;
                ctx.disk
                    .read_at(&mut buf[..n], offset + done)
                    .map_err(|e| RequestError::Io(e.to_string()))?;
                data.write_all(&buf[..n])
                    .map_err(|e| RequestError::Memory(e.to_string()))?;
                done += n as u64;
            }
            Ok(())
        }
        VIRTIO_BLK_T_OUT => {
            if ctx.disk.read_only() {
                return Err(RequestError::ReadOnly);
            }
            let len = reader.available_bytes() as u64;
            let offset = check_range(sector, len, capacity)?;
            let mut buf = vec![0u8; CHUNK.min(len as usize)];
            let mut done = 0u64;
            while done < len {
                let n = (len - done).min(CHUNK as u64) as usize;
                reader
                    .read_exact(&mut buf[..n])
                    .map_err(|e| RequestError::Memory(e.to_string()))?;
                ctx.disk
                    .write_at(&buf[..n], offset + done)
                    .map_err(|e| RequestError::Io(e.to_string()))?;
                done += n as u64;
            }
            if len > 0 {
                ctx.changes.push(DiskChange {
                    kind: DiskChangeKind::Write,
                    sector,
                    len,
                });
            }
            Ok(())
        }
        VIRTIO_BLK_T_FLUSH => {
            ctx.disk
                .flush()
                .map_err(|e| RequestError::Io(e.to_string()))?;
            // Replication makes the secondary's copy durable before it acks this epoch.
            ctx.changes.push(DiskChange {
                kind: DiskChangeKind::Flush,
                sector: 0,
                len: 0,
            });
            Ok(())
        }
        VIRTIO_BLK_T_GET_ID => {
            let id = ctx.disk.id();
            let n = data.available_bytes().min(id.len());
            data.write_all(&id[..n])
                .map_err(|e| RequestError::Memory(e.to_string()))
        }
        VIRTIO_BLK_T_DISCARD => {
            if !ctx.discard {
                return Err(RequestError::DiscardDisabled);
            }
            if ctx.disk.read_only() {
                return Err(RequestError::ReadOnly);
            }
            let list_len = reader.available_bytes();
            if list_len == 0 || !list_len.is_multiple_of(DISCARD_SEGMENT_LEN) {
                return Err(RequestError::BadDiscardList(list_len));
            }
            // Check every segment before touching the disk: a bad list changes nothing.
            let mut segments = Vec::with_capacity(list_len / DISCARD_SEGMENT_LEN);
            for _ in 0..list_len / DISCARD_SEGMENT_LEN {
                let mut seg = [0u8; DISCARD_SEGMENT_LEN];
                reader
                    .read_exact(&mut seg)
                    .map_err(|e| RequestError::Memory(e.to_string()))?;
                let mut s = [0u8; 8];
                s.copy_from_slice(&seg[..8]);
                let start = u64::from_le_bytes(s);
                let sectors = u32::from_le_bytes([seg[8], seg[9], seg[10], seg[11]]);
                let len = u64::from(sectors) << SECTOR_SHIFT;
                let offset = check_range(start, len, capacity)?;
                segments.push((start, offset, len));
            }
            for (start, offset, len) in segments {
                ctx.disk
                    .discard(offset, len)
                    .map_err(|e| RequestError::Io(e.to_string()))?;
                ctx.changes.push(DiskChange {
                    kind: DiskChangeKind::Discard,
                    sector: start,
                    len,
                });
            }
            Ok(())
        }
        other => Err(RequestError::Unsupported(other)),
    }
}

/// Byte offset of `sector` after checking that `len` bytes from there are whole sectors inside
/// the disk.
fn check_range(sector: u64, len: u64, capacity: u64) -> Result<u64, RequestError> {
    if !len.is_multiple_of(SECTOR_SIZE) {
        return Err(RequestError::Unaligned(len));
    }
    let out = || RequestError::OutOfRange {
        sector,
        len,
        capacity,
    };
    let offset = sector.checked_mul(SECTOR_SIZE).ok_or_else(out)?;
    let end = offset.checked_add(len).ok_or_else(out)?;
    if end > capacity {
        return Err(out());
    }
    Ok(offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_checks() {
        assert_eq!(check_range(0, 512, 1024), Ok(0));
        assert_eq!(check_range(1, 512, 1024), Ok(512));
        assert!(matches!(
            check_range(1, 1024, 1024),
            Err(RequestError::OutOfRange { .. })
        ));
        assert!(matches!(
            check_range(0, 100, 1024),
            Err(RequestError::Unaligned(100))
        ));
        assert!(matches!(
            check_range(u64::MAX / 2, 512, 1024),
            Err(RequestError::OutOfRange { .. })
        ));
        assert!(matches!(
            check_range(1, u64::MAX - 511, u64::MAX),
            Err(RequestError::OutOfRange { .. })
        ));
    }
}
