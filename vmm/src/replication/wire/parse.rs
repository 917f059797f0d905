//! Frame parsing with nom: the header's fixed fields, then each kind's payload field by field,
//! every failure an error naming the field or its byte offset within the frame.

use std::borrow::Cow;

use nom::bytes::complete::take;
use nom::number::complete::{le_u16, le_u32, le_u64, le_u8};
use nom::sequence::tuple;
use nom::IResult;
use sha2::{Digest, Sha256};

use super::*;

type Raw<'a> = (&'a [u8], u16, u8, u8, u64, u64, u32, u32, &'a [u8]);

fn header_fields(i: &[u8]) -> IResult<&[u8], Raw<'_>> {
    tuple((
        take(4usize),
        le_u16,
        le_u8,
        le_u8,
        le_u64,
        le_u64,
        le_u32,
        le_u32,
        take(32usize),
    ))(i)
}

/// Parses and checks a header: magic, version, kind, flags, reserved, the payload size cap.
pub fn parse_header(bytes: &[u8; HEADER_LEN]) -> Result<Header, WireError> {
    let (_, (magic, version, kind, flags, vm_id, epoch, payload_len, reserved, sha)) =
        header_fields(bytes).map_err(|_| WireError::Truncated {
            part: "header",
            got: bytes.len(),
            needed: HEADER_LEN,
        })?;
    let mut m = [0u8; 4];
    m.copy_from_slice(magic);
    if m != MAGIC {
        return Err(WireError::BadMagic { found: m });
    }
    if version != VERSION {
        return Err(WireError::UnsupportedVersion { found: version });
    }
    let kind = Kind::from_u8(kind).ok_or(WireError::UnknownKind { found: kind })?;
    if flags != 0 {
        return Err(WireError::NonzeroFlags { found: flags });
    }
    if reserved != 0 {
        return Err(WireError::NonzeroReserved { found: reserved });
    }
    if payload_len as usize > MAX_PAYLOAD {
        return Err(WireError::Oversized {
            kind,
            len: payload_len.into(),
            max: MAX_PAYLOAD,
        });
    }
    let mut sha256 = [0u8; 32];
    sha256.copy_from_slice(sha);
    Ok(Header {
        kind,
        vm_id,
        epoch,
        payload_len,
        sha256,
    })
}

/// Checks that `payload` is the one `header` announces: its length, then its sha256.
pub fn verify_payload(header: &Header, payload: &[u8]) -> Result<(), WireError> {
    if payload.len() != header.payload_len as usize {
        return Err(WireError::LengthMismatch {
            kind: header.kind,
            field: "payload_len",
            expected: header.payload_len.into(),
            actual: payload.len() as u64,
        });
    }
    let actual: [u8; 32] = Sha256::digest(payload).into();
    if actual != header.sha256 {
        return Err(WireError::ShaMismatch {
            kind: header.kind,
            expected: hex(&header.sha256),
            actual: hex(&actual),
        });
    }
    Ok(())
}

/// Parses one whole frame from the start of `bytes` (header, sha check, payload); returns it
/// and the bytes it took. Short input is `Truncated`.
pub fn parse_frame(bytes: &[u8]) -> Result<(Header, Frame<'_>, usize), WireError> {
    let Some(head) = bytes.first_chunk::<HEADER_LEN>() else {
        return Err(WireError::Truncated {
            part: "header",
            got: bytes.len(),
            needed: HEADER_LEN,
        });
    };
    let header = parse_header(head)?;
    let end = HEADER_LEN + header.payload_len as usize;
    let Some(payload) = bytes.get(HEADER_LEN..end) else {
        return Err(WireError::Truncated {
            part: "payload",
            got: bytes.len(),
            needed: end,
        });
    };
    verify_payload(&header, payload)?;
    Ok((header, parse_payload(header.kind, payload)?, end))
}

/// Walks a payload field by field with nom parsers, turning a failure into an error that names
/// the field and its offset within the frame.
struct Fields<'a> {
    kind: Kind,
    whole: &'a [u8],
    rest: &'a [u8],
}

impl<'a> Fields<'a> {
    fn offset(&self) -> usize {
        HEADER_LEN + self.whole.len() - self.rest.len()
    }

    fn get<O>(
        &mut self,
        field: &'static str,
        mut parser: impl FnMut(&'a [u8]) -> IResult<&'a [u8], O>,
    ) -> Result<O, WireError> {
        let offset = self.offset();
        let (rest, out) = parser(self.rest).map_err(|_| WireError::ShortPayload {
            kind: self.kind,
            field,
            offset,
        })?;
        self.rest = rest;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], WireError> {
        let b = self.get(field, take(N))?;
        let mut out = [0u8; N];
        out.copy_from_slice(b);
        Ok(out)
    }

    /// A u16 length then that many bytes of UTF-8, at most `max`.
    fn string(&mut self, field: &'static str, max: usize) -> Result<String, WireError> {
        let offset = self.offset();
        let len = self.get(field, le_u16)? as usize;
        if len > max {
            return Err(WireError::TooLong {
                kind: self.kind,
                field,
                offset,
                len,
                max,
            });
        }
        let bytes = self.get(field, take(len))?;
        let s = std::str::from_utf8(bytes).map_err(|e| WireError::NotUtf8 {
            kind: self.kind,
            field,
            offset: offset + 2 + e.valid_up_to(),
        })?;
        Ok(s.to_owned())
    }

    fn end(self) -> Result<(), WireError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(WireError::TrailingBytes {
                kind: self.kind,
                offset: self.offset(),
                extra: self.rest.len(),
            })
        }
    }
}

/// Parses a payload of `kind` (already length- and sha-checked by the caller, or not: it never
/// trusts a length field beyond `payload.len()`).
pub fn parse_payload(kind: Kind, payload: &[u8]) -> Result<Frame<'_>, WireError> {
    let mut f = Fields {
        kind,
        whole: payload,
        rest: payload,
    };
    let frame = match kind {
        Kind::Hello => {
            let name = f.string("name", MAX_NAME)?;
            check_name(&name)?;
            let generation = f.array::<16>("generation")?;
            let stream_id = f.get("stream_id", le_u64)?;
            let memory_bytes = f.get("memory_bytes", le_u64)?;
            let offset = f.offset();
            let page_size = f.get("page_size", le_u32)?;
            if page_size as usize != PAGE_SIZE {
                return Err(WireError::BadPageSize {
                    found: page_size,
                    offset,
                });
            }
            let offset = f.offset();
            let count = f.get("disk_count", le_u16)? as usize;
            // Checked before anything is allocated from `count`.
            if count > MAX_DISKS {
                return Err(WireError::TooManyDisks { count, offset });
            }
            let disk_sizes = f.get("disk sizes", nom::multi::count(le_u64, count))?;
            Frame::Hello(Hello {
                name,
                generation,
                stream_id,
                memory_bytes,
                disk_sizes,
            })
        }
        Kind::HelloAck => {
            let last_committed_epoch = f.get("last_committed_epoch", le_u64)?;
            let generation = f.array::<16>("generation")?;
            let offset = f.offset();
            let resume_ok = match f.get("resume_ok", le_u8)? {
                0 => false,
                1 => true,
                found => {
                    return Err(WireError::BadBool {
                        kind,
                        field: "resume_ok",
                        found,
                        offset,
                    })
                }
            };
            Frame::HelloAck(HelloAck {
                last_committed_epoch,
                generation,
                resume_ok,
            })
        }
        Kind::DiskSums => {
            let disk = f.get("disk", le_u32)?;
            let first_chunk = f.get("first_chunk", le_u64)?;
            let offset = f.offset();
            let count = f.get("count", le_u32)?;
            // Checked before anything is allocated from `count`.
            if count == 0 || count as usize > MAX_SUMS_PER_FRAME {
                return Err(WireError::BadSumCount {
                    found: count,
                    offset,
                });
            }
            let expected = 16 + u64::from(count) * 32;
            if payload.len() as u64 != expected {
                return Err(WireError::LengthMismatch {
                    kind,
                    field: "count",
                    expected: (HEADER_LEN as u64) + expected,
                    actual: (HEADER_LEN + payload.len()) as u64,
                });
            }
            let mut sums = Vec::with_capacity(count as usize);
            for _ in 0..count {
                sums.push(f.array::<32>("sums")?);
            }
            Frame::DiskSums(DiskSums {
                disk,
                first_chunk,
                sums,
            })
        }
        Kind::Pages => {
            let count = f.get("count", le_u32)? as u64;
            // Checked before anything is allocated from `count`.
            let expected = 4 + count * (8 + PAGE_SIZE as u64);
            if payload.len() as u64 != expected {
                return Err(WireError::LengthMismatch {
                    kind,
                    field: "page count",
                    expected: (HEADER_LEN as u64) + expected,
                    actual: (HEADER_LEN + payload.len()) as u64,
                });
            }
            let pages = f.get("page numbers", nom::multi::count(le_u64, count as usize))?;
            let data = f.get("page data", take(count as usize * PAGE_SIZE))?;
            Frame::Pages(Pages {
                pages: Cow::Owned(pages),
                data: Cow::Borrowed(data),
            })
        }
        Kind::PagesLz4 => {
            let count_at = f.offset();
            let count = f.get("count", le_u32)? as u64;
            if count == 0 || count > MAX_LZ4_PAGES as u64 {
                return Err(WireError::Compressed(format!(
                    "{count} pages at byte {count_at} of the frame (1 to {MAX_LZ4_PAGES})"
                )));
            }
            // The numbers, then 1 to max_block bytes of block; checked before allocating.
            let numbers = 4 + count * 8;
            let block_len = (payload.len() as u64).saturating_sub(numbers);
            let max = PagesLz4::max_block(count as usize) as u64;
            if block_len == 0 || block_len > max {
                return Err(WireError::LengthMismatch {
                    kind,
                    field: "page count",
                    expected: (HEADER_LEN as u64) + numbers + block_len.clamp(1, max),
                    actual: (HEADER_LEN + payload.len()) as u64,
                });
            }
            let pages = f.get("page numbers", nom::multi::count(le_u64, count as usize))?;
            let block = f.get("LZ4 block", take(payload.len() - numbers as usize))?;
            Frame::PagesLz4(PagesLz4 {
                pages: Cow::Owned(pages),
                block: Cow::Borrowed(block),
            })
        }
        Kind::Disk => {
            let disk = f.get("disk", le_u32)?;
            let op_at = f.offset();
            let op = f.get("op", le_u8)?;
            if !matches!(op, 1 | 2) {
                return Err(WireError::BadDiskOp {
                    found: op,
                    offset: op_at,
                });
            }
            let sector = f.get("sector", le_u64)?;
            let len_at = f.offset();
            let len = f.get("byte_len", le_u32)?;
            if len == 0 || len % SECTOR_SIZE != 0 {
                return Err(WireError::BadDiskLength {
                    len: len.into(),
                    offset: len_at,
                });
            }
            let action = if op == 1 {
                if f.rest.len() != len as usize {
                    return Err(WireError::LengthMismatch {
                        kind,
                        field: "byte_len",
                        expected: (f.offset() + len as usize) as u64,
                        actual: (HEADER_LEN + payload.len()) as u64,
                    });
                }
                DiskAction::Write(Cow::Borrowed(f.get("data", take(len as usize))?))
            } else {
                DiskAction::Discard(len)
            };
            Frame::Disk(Disk {
                disk,
                sector,
                action,
            })
        }
        Kind::State => {
            if payload.is_empty() {
                return Err(WireError::EmptyState);
            }
            f.rest = &[];
            Frame::State(Cow::Borrowed(payload))
        }
        Kind::Commit => {
            let frames = f.get("frames", le_u32)?;
            let digest = f.array::<32>("digest")?;
            let offset = f.offset();
            let flags = f.get("flags", le_u8)?;
            if flags & !COMMIT_FLUSH != 0 {
                return Err(WireError::BadCommitFlags {
                    found: flags,
                    offset,
                });
            }
            Frame::Commit(Commit {
                frames,
                digest,
                flags,
            })
        }
        Kind::Ack => Frame::Ack,
        Kind::Keepalive => Frame::Keepalive,
        Kind::Abort => Frame::Abort {
            reason: f.string("reason", MAX_REASON)?,
        },
        Kind::CloseAck => Frame::CloseAck {
            reason: f.string("reason", MAX_REASON)?,
        },
        Kind::End => Frame::End {
            reason: f.string("reason", MAX_REASON)?,
        },
        Kind::Handover => Frame::Handover {
            reason: f.string("reason", MAX_REASON)?,
        },
    };
    f.end()?;
    Ok(frame)
}
