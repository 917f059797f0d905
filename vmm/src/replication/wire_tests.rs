//! Wire format tests: every kind round trips, every malformed input is its own error (streams,
//! truncation, bit flips and random frames are in wire_stream_tests.rs).

use std::borrow::Cow;
use std::io::Read;

use super::*;

pub(super) const VM: u64 = 0x1122_3344_5566_7788;

pub(super) fn page(fill: u8) -> Vec<u8> {
    vec![fill; PAGE_SIZE]
}

pub(super) fn hello() -> Frame<'static> {
    Frame::Hello(Hello {
        name: "web-1.prod_a".into(),
        generation: [7; 16],
        stream_id: 0x0123_4567_89ab_cdef,
        memory_bytes: 256 << 20,
        disk_sizes: vec![8 << 30, 512],
    })
}

pub(super) fn pages(numbers: &[u64]) -> Frame<'static> {
    let data: Vec<u8> = numbers.iter().flat_map(|&n| page(n as u8)).collect();
    Frame::Pages(Pages {
        pages: Cow::Owned(numbers.to_vec()),
        data: Cow::Owned(data),
    })
}

pub(super) fn pages_lz4(numbers: &[u64]) -> Frame<'static> {
    let data: Vec<u8> = numbers.iter().flat_map(|&n| page(n as u8)).collect();
    Frame::PagesLz4(PagesLz4 {
        pages: Cow::Owned(numbers.to_vec()),
        block: Cow::Owned(lz4_flex::block::compress(&data)),
    })
}

/// One frame of every kind.
fn samples() -> Vec<Frame<'static>> {
    vec![
        hello(),
        Frame::HelloAck(HelloAck {
            last_committed_epoch: 41,
            generation: [9; 16],
            resume_ok: true,
        }),
        Frame::HelloAck(HelloAck {
            last_committed_epoch: 0,
            generation: [0; 16],
            resume_ok: false,
        }),
        Frame::DiskSums(DiskSums {
            disk: 2,
            first_chunk: 65536,
            sums: vec![[7; 32], [0; 32], [255; 32]],
        }),
        pages(&[0, 5, 65535]),
        pages(&[]),
        pages_lz4(&[1, 2]),
        Frame::Disk(Disk {
            disk: 1,
            sector: 2048,
            action: DiskAction::Write(Cow::Owned(vec![0xab; 1024])),
        }),
        Frame::Disk(Disk {
            disk: 0,
            sector: u64::MAX,
            action: DiskAction::Discard(1 << 20),
        }),
        Frame::State(Cow::Owned(b"{\"vcpus\":[]}".to_vec())),
        Frame::Commit(Commit {
            frames: 3,
            digest: [0x5a; 32],
            flags: 0,
        }),
        Frame::Commit(Commit {
            frames: 1,
            digest: [0; 32],
            flags: COMMIT_FLUSH,
        }),
        Frame::Ack,
        Frame::Keepalive,
        Frame::Abort {
            reason: "secondary: disk full ✗".into(),
        },
        Frame::Abort {
            reason: String::new(),
        },
        Frame::CloseAck {
            reason: "the copy is marked stale".into(),
        },
        Frame::End {
            reason: "guest powered off".into(),
        },
        Frame::Handover {
            reason: "failback to a".into(),
        },
        Frame::Hello(Hello {
            name: "d".into(),
            generation: [0; 16],
            stream_id: 0,
            memory_bytes: 4096,
            disk_sizes: Vec::new(),
        }),
    ]
}

/// A frame of `kind` around arbitrary payload bytes, with a correct sha256: reaches the payload
/// parser.
pub(super) fn raw_frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let sha: [u8; 32] = Sha256::digest(payload).into();
    let mut b = Header {
        kind: Kind::Hello,
        vm_id: VM,
        epoch: 3,
        payload_len: payload.len() as u32,
        sha256: sha,
    }
    .to_bytes();
    b[6] = kind;
    let mut out = b.to_vec();
    out.extend_from_slice(payload);
    out
}

pub(super) fn parse(bytes: &[u8]) -> Result<Frame<'static>, WireError> {
    parse_frame(bytes).map(|(_, f, _)| f.into_owned())
}

#[test]
fn every_kind_round_trips() {
    for (i, frame) in samples().into_iter().enumerate() {
        let bytes = encode(&frame, VM, i as u64).unwrap();
        let (h, back, used) = parse_frame(&bytes).unwrap();
        assert_eq!(used, bytes.len());
        assert_eq!((h.kind, h.vm_id, h.epoch), (frame.kind(), VM, i as u64));
        assert_eq!(h.payload_len as usize, bytes.len() - HEADER_LEN);
        assert_eq!(back, frame);
        // And through a stream reader.
        let mut r = FrameReader::new(&bytes[..]);
        let (h2, f2) = r.next_owned().unwrap().unwrap();
        assert_eq!((h2, f2), (h, frame));
        assert!(r.next_frame().unwrap().is_none());
    }
}

#[test]
fn pages_are_written_from_borrowed_slices() {
    let numbers = [3u64, 4, 9];
    let data: Vec<u8> = [1u8, 2, 3].iter().flat_map(|&f| page(f)).collect();
    let frame = Frame::Pages(Pages {
        pages: Cow::Borrowed(&numbers),
        data: Cow::Borrowed(&data),
    });
    let mut out = Vec::new();
    let sha = write_frame(&mut out, VM, 1, &frame).unwrap();
    assert_eq!(out.len(), HEADER_LEN + 4 + 3 * 8 + 3 * PAGE_SIZE);
    // Layout as specified: count, numbers, data; the header's sha is the returned one.
    assert_eq!(&out[64..68], &3u32.to_le_bytes());
    assert_eq!(&out[68..76], &3u64.to_le_bytes());
    assert_eq!(&out[92..92 + PAGE_SIZE], &page(1)[..]);
    assert_eq!(&out[32..64], &sha);
    assert_eq!(sha, <[u8; 32]>::from(Sha256::digest(&out[HEADER_LEN..])));
    let (_, back, _) = parse_frame(&out).unwrap();
    match back {
        Frame::Pages(p) => {
            assert_eq!(&*p.pages, &numbers);
            assert!(matches!(p.data, Cow::Borrowed(_)), "parsed data borrows");
            assert_eq!(&*p.data, &data[..]);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn header_layout_is_the_documented_one() {
    let bytes = encode(&Frame::Ack, 0x0102, 0x0304).unwrap();
    let empty_sha: [u8; 32] = Sha256::digest([]).into();
    let mut want = Vec::new();
    want.extend_from_slice(b"HVRP");
    want.extend_from_slice(&[6, 0, 7, 0]);
    want.extend_from_slice(&0x0102u64.to_le_bytes());
    want.extend_from_slice(&0x0304u64.to_le_bytes());
    want.extend_from_slice(&[0; 8]);
    want.extend_from_slice(&empty_sha);
    assert_eq!(bytes, want);
}

#[test]
fn epoch_digest_covers_payload_shas_in_order() {
    let mut d = EpochDigest::new();
    let a = [1u8; 32];
    let b = [2u8; 32];
    assert!(d.add(&a) && d.add(&b));
    let c = d.commit();
    assert_eq!(c.frames, 2);
    let want: [u8; 32] = Sha256::new()
        .chain_update(a)
        .chain_update(b)
        .finalize()
        .into();
    assert_eq!(c.digest, want);
    let mut swapped = EpochDigest::new();
    assert!(swapped.add(&b) && swapped.add(&a));
    assert_ne!(swapped.commit().digest, c.digest);
}

// ---- header errors, one each ----

fn valid() -> Vec<u8> {
    encode(&hello(), VM, 0).unwrap()
}

#[test]
fn bad_magic() {
    let mut b = valid();
    b[0] = b'X';
    assert!(matches!(parse(&b), Err(WireError::BadMagic { found }) if &found == b"XVRP"));
}

#[test]
fn unsupported_version() {
    let mut b = valid();
    b[4] = 1;
    assert!(matches!(
        parse(&b),
        Err(WireError::UnsupportedVersion { found: 1 })
    ));
}

#[test]
fn unknown_kinds() {
    for k in [0u8, 15, 255] {
        let b = raw_frame(k, &[]);
        assert!(matches!(parse(&b), Err(WireError::UnknownKind { found }) if found == k));
    }
}

#[test]
fn nonzero_flags() {
    let mut b = valid();
    b[7] = 0x80;
    assert!(matches!(
        parse(&b),
        Err(WireError::NonzeroFlags { found: 0x80 })
    ));
}

#[test]
fn nonzero_reserved() {
    let mut b = valid();
    b[30] = 1;
    let e = parse(&b).unwrap_err();
    assert!(
        matches!(e, WireError::NonzeroReserved { found: 0x10000 }),
        "{e}"
    );
    assert!(e.to_string().contains("byte 28"), "{e}");
}

#[test]
fn oversized_payload_in_header() {
    let mut b = raw_frame(5, b"x");
    b[24..28].copy_from_slice(&(MAX_PAYLOAD as u32 + 1).to_le_bytes());
    let e = parse_header(b.first_chunk().unwrap()).unwrap_err();
    assert!(
        matches!(e, WireError::Oversized { kind: Kind::State, len, .. } if len == MAX_PAYLOAD as u64 + 1)
    );
}

/// Counts what the reader consumes.
struct Counting<R> {
    inner: R,
    read: usize,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n;
        Ok(n)
    }
}

#[test]
fn oversize_is_rejected_before_reading_or_allocating_the_payload() {
    let mut b = raw_frame(5, b"x");
    b[24..28].copy_from_slice(&u32::MAX.to_le_bytes());
    let endless = std::io::Cursor::new(b).chain(std::io::repeat(0));
    let mut r = FrameReader::new(Counting {
        inner: endless,
        read: 0,
    });
    assert!(matches!(r.next_frame(), Err(WireError::Oversized { .. })));
    assert_eq!(r.get_ref().read, HEADER_LEN);
}

#[test]
fn a_promised_but_missing_payload_is_truncation() {
    let mut b = raw_frame(5, b"x");
    b[24..28].copy_from_slice(&(MAX_PAYLOAD as u32).to_le_bytes());
    b.extend_from_slice(&[0; 10]);
    let mut r = FrameReader::new(&b[..]);
    let e = r.next_frame().unwrap_err();
    assert!(
        matches!(e, WireError::Truncated { part: "payload", got, needed } if got == HEADER_LEN + 11 && needed == HEADER_LEN + MAX_PAYLOAD),
        "{e}"
    );
}

#[test]
fn sha_mismatch() {
    let mut b = encode(&pages(&[1]), VM, 1).unwrap();
    let last = b.len() - 1;
    b[last] ^= 1;
    assert!(matches!(
        parse(&b),
        Err(WireError::ShaMismatch {
            kind: Kind::Pages,
            ..
        })
    ));
}

#[test]
fn payload_len_mismatch() {
    let b = encode(&Frame::State(Cow::Borrowed(b"abc")), VM, 1).unwrap();
    let h = parse_header(b.first_chunk().unwrap()).unwrap();
    let e = verify_payload(&h, b"ab").unwrap_err();
    assert!(matches!(
        e,
        WireError::LengthMismatch {
            field: "payload_len",
            expected: 3,
            actual: 2,
            ..
        }
    ));
}

// ---- payload errors, one each ----

fn pages_payload(count: u32, numbers: &[u64], data_len: usize) -> Vec<u8> {
    let mut p = count.to_le_bytes().to_vec();
    for n in numbers {
        p.extend_from_slice(&n.to_le_bytes());
    }
    p.resize(p.len() + data_len, 0xcc);
    p
}

#[test]
fn pages_count_length_mismatch() {
    // Claims 2 pages, carries 1; and a count so large it must not be allocated.
    for (count, numbers) in [(2u32, vec![1u64]), (u32::MAX, vec![1u64])] {
        let b = raw_frame(3, &pages_payload(count, &numbers, PAGE_SIZE));
        let e = parse(&b).unwrap_err();
        assert!(
            matches!(
                e,
                WireError::LengthMismatch {
                    kind: Kind::Pages,
                    field: "page count",
                    ..
                }
            ),
            "{e}"
        );
    }
    let b = raw_frame(3, &pages_payload(1, &[1], PAGE_SIZE + 1));
    assert!(matches!(parse(&b), Err(WireError::LengthMismatch { .. })));
}

#[test]
fn short_payload_names_the_field() {
    let b = raw_frame(6, &[1, 0, 0, 0, 9, 9]);
    let e = parse(&b).unwrap_err();
    assert!(
        matches!(
            e,
            WireError::ShortPayload {
                kind: Kind::Commit,
                field: "digest",
                offset: 68
            }
        ),
        "{e}"
    );
    let b = raw_frame(3, &[1, 0]);
    assert!(matches!(
        parse(&b),
        Err(WireError::ShortPayload {
            field: "count",
            offset: 64,
            ..
        })
    ));
}

#[test]
fn trailing_bytes() {
    let b = raw_frame(7, &[0]);
    assert!(matches!(
        parse(&b),
        Err(WireError::TrailingBytes {
            kind: Kind::Ack,
            offset: 64,
            extra: 1
        })
    ));
}

fn hello_payload(name: &[u8], page_size: u32) -> Vec<u8> {
    let mut p = (name.len() as u16).to_le_bytes().to_vec();
    p.extend_from_slice(name);
    p.extend_from_slice(&[1; 16]);
    p.extend_from_slice(&9u64.to_le_bytes());
    p.extend_from_slice(&(64u64 << 20).to_le_bytes());
    p.extend_from_slice(&page_size.to_le_bytes());
    p.extend_from_slice(&1u16.to_le_bytes());
    p.extend_from_slice(&(1u64 << 30).to_le_bytes());
    p
}

#[test]
fn hello_payload_helper_is_valid() {
    assert_eq!(
        parse(&raw_frame(1, &hello_payload(b"vm", 4096))).unwrap(),
        Frame::Hello(Hello {
            name: "vm".into(),
            generation: [1; 16],
            stream_id: 9,
            memory_bytes: 64 << 20,
            disk_sizes: vec![1 << 30],
        })
    );
}

#[test]
fn name_too_long() {
    let e = parse(&raw_frame(1, &hello_payload(&[b'a'; 65], 4096))).unwrap_err();
    assert!(matches!(
        e,
        WireError::TooLong {
            field: "name",
            len: 65,
            max: 64,
            offset: 64,
            ..
        }
    ));
}

#[test]
fn name_not_utf8() {
    let e = parse(&raw_frame(1, &hello_payload(b"ab\xff", 4096))).unwrap_err();
    assert!(
        matches!(
            e,
            WireError::NotUtf8 {
                kind: Kind::Hello,
                field: "name",
                offset: 68
            }
        ),
        "{e}"
    );
}

#[test]
fn name_with_bad_characters_or_empty() {
    for name in [&b"a b"[..], b"a/b", b"", "é".as_bytes()] {
        let e = parse(&raw_frame(1, &hello_payload(name, 4096))).unwrap_err();
        assert!(matches!(e, WireError::BadName { .. }), "{name:?}: {e}");
    }
}

#[test]
fn too_many_disks_and_unknown_commit_flags() {
    let mut p = hello_payload(b"vm", 4096);
    let at = p.len() - 10;
    p.truncate(at);
    p.extend_from_slice(&((MAX_DISKS + 1) as u16).to_le_bytes());
    let e = parse(&raw_frame(1, &p)).unwrap_err();
    assert!(
        matches!(
            e,
            WireError::TooManyDisks {
                count: 17,
                offset: 104
            }
        ),
        "{e}"
    );
    let mut c = vec![0u8; 36];
    c.push(0x02);
    let e = parse(&raw_frame(6, &c)).unwrap_err();
    assert!(
        matches!(
            e,
            WireError::BadCommitFlags {
                found: 2,
                offset: 100
            }
        ),
        "{e}"
    );
}

#[test]
fn bad_page_size() {
    let e = parse(&raw_frame(1, &hello_payload(b"vm", 8192))).unwrap_err();
    assert!(matches!(
        e,
        WireError::BadPageSize {
            found: 8192,
            offset: 100
        }
    ));
}

#[test]
fn disk_sums_counts_and_lengths_are_checked_before_allocating() {
    let payload = |count: u32, sums: usize| {
        let mut p = 1u32.to_le_bytes().to_vec();
        p.extend_from_slice(&0u64.to_le_bytes());
        p.extend_from_slice(&count.to_le_bytes());
        p.extend(std::iter::repeat_n(9u8, sums * 32));
        p
    };
    let ok = parse(&raw_frame(14, &payload(2, 2))).unwrap();
    assert!(matches!(ok, Frame::DiskSums(d) if d.sums == vec![[9; 32]; 2] && d.disk == 1));
    for count in [0, MAX_SUMS_PER_FRAME as u32 + 1, u32::MAX] {
        let e = parse(&raw_frame(14, &payload(count, 1))).unwrap_err();
        assert!(
            matches!(e, WireError::BadSumCount { found, offset: 76 } if found == count),
            "{e}"
        );
    }
    for (count, sums) in [(2, 1), (1, 2)] {
        let e = parse(&raw_frame(14, &payload(count, sums))).unwrap_err();
        assert!(
            matches!(e, WireError::LengthMismatch { field: "count", .. }),
            "{e}"
        );
    }
    let empty = Frame::DiskSums(DiskSums {
        disk: 0,
        first_chunk: 0,
        sums: Vec::new(),
    });
    assert!(matches!(
        encode(&empty, 1, 0),
        Err(WireError::Unencodable { .. })
    ));
}

#[test]
fn bad_resume_ok() {
    let mut p = 5u64.to_le_bytes().to_vec();
    p.extend_from_slice(&[0; 16]);
    p.push(2);
    let e = parse(&raw_frame(2, &p)).unwrap_err();
    assert!(matches!(
        e,
        WireError::BadBool {
            field: "resume_ok",
            found: 2,
            offset: 88,
            ..
        }
    ));
}

fn disk_payload(op: u8, len: u32, data: usize) -> Vec<u8> {
    let mut p = 0u32.to_le_bytes().to_vec();
    p.push(op);
    p.extend_from_slice(&8u64.to_le_bytes());
    p.extend_from_slice(&len.to_le_bytes());
    p.resize(p.len() + data, 0xee);
    p
}

#[test]
fn bad_disk_op() {
    let e = parse(&raw_frame(4, &disk_payload(3, 512, 512))).unwrap_err();
    assert!(matches!(
        e,
        WireError::BadDiskOp {
            found: 3,
            offset: 68
        }
    ));
}

#[test]
fn bad_disk_length() {
    for len in [0u32, 100, 513] {
        let e = parse(&raw_frame(4, &disk_payload(2, len, 0))).unwrap_err();
        assert!(
            matches!(e, WireError::BadDiskLength { len: l, offset: 77 } if l == len as u64),
            "{e}"
        );
    }
}

#[test]
fn disk_write_data_length_mismatch() {
    for data in [511, 513, 0] {
        let e = parse(&raw_frame(4, &disk_payload(1, 512, data))).unwrap_err();
        assert!(
            matches!(
                e,
                WireError::LengthMismatch {
                    kind: Kind::Disk,
                    field: "byte_len",
                    ..
                }
            ),
            "{e}"
        );
    }
}

#[test]
fn disk_discard_with_data() {
    let e = parse(&raw_frame(4, &disk_payload(2, 512, 512))).unwrap_err();
    assert!(matches!(
        e,
        WireError::TrailingBytes {
            kind: Kind::Disk,
            offset: 81,
            extra: 512
        }
    ));
}

#[test]
fn empty_state() {
    assert!(matches!(
        parse(&raw_frame(5, &[])),
        Err(WireError::EmptyState)
    ));
}

#[test]
fn abort_reason_too_long_or_not_utf8() {
    let mut p = 1025u16.to_le_bytes().to_vec();
    p.resize(2 + 1025, b'x');
    assert!(matches!(
        parse(&raw_frame(8, &p)),
        Err(WireError::TooLong {
            field: "reason",
            max: 1024,
            ..
        })
    ));
    let p = [2, 0, 0xc3, 0x28];
    assert!(matches!(
        parse(&raw_frame(8, &p)),
        Err(WireError::NotUtf8 {
            field: "reason",
            offset: 66,
            ..
        })
    ));
}

#[test]
fn encoder_refuses_what_the_parser_would() {
    let bad = [
        Frame::Hello(Hello {
            name: "bad name".into(),
            generation: [0; 16],
            stream_id: 0,
            memory_bytes: 4096,
            disk_sizes: Vec::new(),
        }),
        Frame::Hello(Hello {
            name: "many".into(),
            generation: [0; 16],
            stream_id: 0,
            memory_bytes: 4096,
            disk_sizes: vec![1; MAX_DISKS + 1],
        }),
        Frame::Commit(Commit {
            frames: 0,
            digest: [0; 32],
            flags: 0x80,
        }),
        Frame::Pages(Pages {
            pages: Cow::Owned(vec![1, 2]),
            data: Cow::Owned(page(0)),
        }),
        Frame::Pages(Pages {
            pages: Cow::Owned(vec![0; MAX_PAGES_PER_FRAME + 1]),
            data: Cow::Owned(vec![0; (MAX_PAGES_PER_FRAME + 1) * PAGE_SIZE]),
        }),
        Frame::Disk(Disk {
            disk: 0,
            sector: 0,
            action: DiskAction::Write(Cow::Owned(vec![0; 100])),
        }),
        Frame::Disk(Disk {
            disk: 0,
            sector: 0,
            action: DiskAction::Discard(0),
        }),
        Frame::State(Cow::Borrowed(&[])),
        Frame::State(Cow::Owned(vec![1; MAX_PAYLOAD + 1])),
        Frame::Abort {
            reason: "x".repeat(MAX_REASON + 1),
        },
    ];
    for f in bad {
        let mut out = Vec::new();
        let e = write_frame(&mut out, VM, 1, &f).unwrap_err();
        assert!(out.is_empty(), "{e}: nothing written");
    }
    // The largest pages frame fits.
    let n = MAX_PAGES_PER_FRAME;
    let big = Frame::Pages(Pages {
        pages: Cow::Owned((0..n as u64).collect()),
        data: Cow::Owned(vec![0; n * PAGE_SIZE]),
    });
    let bytes = encode(&big, VM, 1).unwrap();
    assert!(bytes.len() - HEADER_LEN <= MAX_PAYLOAD);
    assert_eq!(parse(&bytes).unwrap(), big);
}

#[test]
fn pages_lz4_decompresses_to_its_pages() {
    let Frame::PagesLz4(p) = pages_lz4(&[3, 4]) else {
        unreachable!()
    };
    let data = p.decompress().unwrap();
    assert_eq!(data, [page(3), page(4)].concat());
    let plain = p.to_pages().unwrap();
    assert_eq!(
        (&plain.pages[..], &plain.data[..]),
        (&[3, 4][..], &data[..])
    );
}

#[test]
fn pages_lz4_with_no_pages_too_many_or_no_block_is_refused() {
    // count 0
    let mut payload = 0u32.to_le_bytes().to_vec();
    payload.push(0);
    let b = raw_frame(Kind::PagesLz4 as u8, &payload);
    assert!(matches!(parse(&b), Err(WireError::Compressed(m)) if m.contains("0 pages at byte 64")));
    // over the frame's page limit
    let payload = (MAX_LZ4_PAGES as u32 + 1).to_le_bytes().to_vec();
    let b = raw_frame(Kind::PagesLz4 as u8, &payload);
    assert!(matches!(parse(&b), Err(WireError::Compressed(_))));
    // page numbers but no block
    let mut payload = 1u32.to_le_bytes().to_vec();
    payload.extend_from_slice(&7u64.to_le_bytes());
    let b = raw_frame(Kind::PagesLz4 as u8, &payload);
    assert!(matches!(
        parse(&b),
        Err(WireError::LengthMismatch {
            field: "page count",
            ..
        })
    ));
    // a block longer than the pages can need (LZ4's worst case)
    let mut payload = 1u32.to_le_bytes().to_vec();
    payload.extend_from_slice(&7u64.to_le_bytes());
    payload.extend(vec![0xff; PagesLz4::max_block(1) + 1]);
    let b = raw_frame(Kind::PagesLz4 as u8, &payload);
    assert!(matches!(
        parse(&b),
        Err(WireError::LengthMismatch {
            field: "page count",
            ..
        })
    ));
    // an empty block cannot be encoded either
    let empty = Frame::PagesLz4(PagesLz4 {
        pages: Cow::Owned(vec![1]),
        block: Cow::Owned(Vec::new()),
    });
    assert!(encode(&empty, VM, 1).is_err());
}
