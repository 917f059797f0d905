//! Frame encoding: the header, the small fields, and the bulk data written straight from the
//! caller's slices (no copy of pages, disk data or state into a frame buffer).

use std::io::Write;

use sha2::{Digest, Sha256};

use super::*;

/// Writes one frame and returns its payload sha256 (for `EpochDigest::add`). Bulk data (pages,
/// disk writes, state) goes straight from the caller's slices to `w`: one write for header and
/// the small fields, one for the bulk. Frames the parser would refuse are refused here too.
pub fn write_frame<W: Write>(
    w: &mut W,
    vm_id: u64,
    epoch: u64,
    frame: &Frame<'_>,
) -> Result<[u8; 32], WireError> {
    let kind = frame.kind();
    let mut head = vec![0u8; HEADER_LEN];
    let bulk = encode_payload(frame, &mut head)?;
    let payload_len = head.len() - HEADER_LEN + bulk.len();
    if payload_len > MAX_PAYLOAD {
        return Err(WireError::Oversized {
            kind,
            len: payload_len as u64,
            max: MAX_PAYLOAD,
        });
    }
    let sha256: [u8; 32] = Sha256::new()
        .chain_update(&head[HEADER_LEN..])
        .chain_update(bulk)
        .finalize()
        .into();
    let header = Header {
        kind,
        vm_id,
        epoch,
        payload_len: payload_len as u32,
        sha256,
    };
    head[..HEADER_LEN].copy_from_slice(&header.to_bytes());
    w.write_all(&head)?;
    if !bulk.is_empty() {
        w.write_all(bulk)?;
    }
    Ok(sha256)
}

/// One frame as bytes (tests, small frames).
pub fn encode(frame: &Frame<'_>, vm_id: u64, epoch: u64) -> Result<Vec<u8>, WireError> {
    let mut out = Vec::new();
    write_frame(&mut out, vm_id, epoch, frame)?;
    Ok(out)
}

/// Appends the payload's small fields to `out` and returns its bulk tail (possibly empty).
fn encode_payload<'f>(frame: &'f Frame<'_>, out: &mut Vec<u8>) -> Result<&'f [u8], WireError> {
    let kind = frame.kind();
    let bad = |what: String| WireError::Unencodable { kind, what };
    match frame {
        Frame::Hello(h) => {
            check_name(&h.name)?;
            if h.disk_sizes.len() > MAX_DISKS {
                return Err(bad(format!(
                    "{} disks (at most {MAX_DISKS})",
                    h.disk_sizes.len()
                )));
            }
            put_str(out, &h.name);
            out.extend_from_slice(&h.generation);
            out.extend_from_slice(&h.stream_id.to_le_bytes());
            out.extend_from_slice(&h.memory_bytes.to_le_bytes());
            out.extend_from_slice(&(PAGE_SIZE as u32).to_le_bytes());
            // At most MAX_DISKS (checked above): fits the u16.
            out.extend_from_slice(&(h.disk_sizes.len() as u16).to_le_bytes());
            for size in &h.disk_sizes {
                out.extend_from_slice(&size.to_le_bytes());
            }
            Ok(&[])
        }
        Frame::HelloAck(a) => {
            out.extend_from_slice(&a.last_committed_epoch.to_le_bytes());
            out.extend_from_slice(&a.generation);
            out.push(a.resume_ok as u8);
            Ok(&[])
        }
        Frame::DiskSums(d) => {
            if d.sums.is_empty() || d.sums.len() > MAX_SUMS_PER_FRAME {
                return Err(bad(format!(
                    "{} chunk sums (1 to {MAX_SUMS_PER_FRAME} a frame)",
                    d.sums.len()
                )));
            }
            out.extend_from_slice(&d.disk.to_le_bytes());
            out.extend_from_slice(&d.first_chunk.to_le_bytes());
            out.extend_from_slice(&(d.sums.len() as u32).to_le_bytes());
            for sum in &d.sums {
                out.extend_from_slice(sum);
            }
            Ok(&[])
        }
        Frame::Pages(p) => {
            if p.pages.len() > MAX_PAGES_PER_FRAME {
                return Err(bad(format!(
                    "{} pages, over the {MAX_PAGES_PER_FRAME} a frame can carry",
                    p.pages.len()
                )));
            }
            if p.data.len() != p.pages.len() * PAGE_SIZE {
                return Err(bad(format!(
                    "{} page numbers with {} bytes of data",
                    p.pages.len(),
                    p.data.len()
                )));
            }
            out.extend_from_slice(&(p.pages.len() as u32).to_le_bytes());
            for n in p.pages.iter() {
                out.extend_from_slice(&n.to_le_bytes());
            }
            Ok(&p.data)
        }
        Frame::PagesLz4(p) => {
            if p.pages.is_empty() || p.pages.len() > MAX_LZ4_PAGES {
                return Err(bad(format!(
                    "{} pages (1 to {MAX_LZ4_PAGES} a frame)",
                    p.pages.len()
                )));
            }
            if p.block.is_empty() || p.block.len() > PagesLz4::max_block(p.pages.len()) {
                return Err(bad(format!(
                    "a {}-byte LZ4 block for {} pages",
                    p.block.len(),
                    p.pages.len()
                )));
            }
            out.extend_from_slice(&(p.pages.len() as u32).to_le_bytes());
            for n in p.pages.iter() {
                out.extend_from_slice(&n.to_le_bytes());
            }
            Ok(&p.block)
        }
        Frame::Disk(d) => {
            let (op, len, data): (u8, usize, &[u8]) = match &d.action {
                DiskAction::Write(data) => (1, data.len(), data),
                DiskAction::Discard(n) => (2, *n as usize, &[]),
            };
            if len == 0 || len % SECTOR_SIZE as usize != 0 || len > u32::MAX as usize {
                return Err(bad(format!(
                    "{len} bytes is not a positive multiple of {SECTOR_SIZE} under 4 GiB"
                )));
            }
            out.extend_from_slice(&d.disk.to_le_bytes());
            out.push(op);
            out.extend_from_slice(&d.sector.to_le_bytes());
            out.extend_from_slice(&(len as u32).to_le_bytes());
            Ok(data)
        }
        Frame::State(s) => {
            if s.is_empty() {
                return Err(WireError::EmptyState);
            }
            Ok(s)
        }
        Frame::Commit(c) => {
            if c.flags & !COMMIT_FLUSH != 0 {
                return Err(bad(format!("flags {:#04x}", c.flags)));
            }
            out.extend_from_slice(&c.frames.to_le_bytes());
            out.extend_from_slice(&c.digest);
            out.push(c.flags);
            Ok(&[])
        }
        Frame::Ack | Frame::Keepalive => Ok(&[]),
        Frame::Abort { reason }
        | Frame::CloseAck { reason }
        | Frame::End { reason }
        | Frame::Handover { reason } => {
            if reason.len() > MAX_REASON {
                return Err(bad(format!(
                    "a {}-byte reason (at most {MAX_REASON})",
                    reason.len()
                )));
            }
            put_str(out, reason);
            Ok(&[])
        }
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    // Callers checked the length against MAX_NAME / MAX_REASON, both under u16::MAX.
    out.extend_from_slice(&(s.len() as u16).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}
