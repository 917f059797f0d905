//! Wire format tests on streams: truncation at every offset, bit flips, random frames round
//! tripping, random damage never panicking.

use std::borrow::Cow;

use super::tests::{hello, pages, parse, raw_frame, VM};
use super::*;

// ---- streams: truncation, bit flips ----

fn two_frames() -> (Vec<u8>, usize) {
    let mut s = encode(&hello(), VM, 0).unwrap();
    let first = s.len();
    s.extend(encode(&pages(&[1, 2]), VM, 1).unwrap());
    (s, first)
}

/// Frames read off `bytes` until the end or an error.
fn read_all(bytes: &[u8]) -> (usize, Result<(), WireError>) {
    let mut r = FrameReader::new(bytes);
    let mut n = 0;
    loop {
        match r.next_frame() {
            Ok(Some(_)) => n += 1,
            Ok(None) => return (n, Ok(())),
            Err(e) => return (n, Err(e)),
        }
    }
}

#[test]
fn truncation_at_every_offset_is_an_error_except_at_frame_boundaries() {
    let (stream, first) = two_frames();
    assert_eq!(read_all(&stream).0, 2);
    for cut in 0..=stream.len() {
        let (n, res) = read_all(&stream[..cut]);
        match cut {
            0 => assert!(n == 0 && res.is_ok()),
            c if c == first => assert!(n == 1 && res.is_ok()),
            c if c == stream.len() => assert!(n == 2 && res.is_ok()),
            c => {
                assert_eq!(n, usize::from(c > first), "cut {c}");
                assert!(
                    matches!(res, Err(WireError::Truncated { .. })),
                    "cut {c}: {res:?}"
                );
            }
        }
        // The slice parser agrees.
        if cut < first {
            assert!(matches!(
                parse_frame(&stream[..cut]),
                Err(WireError::Truncated { .. })
            ));
        }
    }
}

#[test]
fn a_bit_flip_in_the_frame_is_caught_by_the_frame_unless_in_vm_id_or_epoch() {
    // vm_id and epoch are not covered by the payload sha; the sequence checker catches those
    // (see sequence_tests.rs). Everything else is an error here.
    let frame = encode(&pages(&[7]), VM, 4).unwrap();
    for bit in 0..frame.len() * 8 {
        let byte = bit / 8;
        if (8..24).contains(&byte) {
            continue;
        }
        let mut b = frame.clone();
        b[byte] ^= 1 << (bit % 8);
        assert!(parse(&b).is_err(), "flip of bit {bit} not detected");
        assert!(
            read_all(&b).1.is_err(),
            "flip of bit {bit} not detected by the reader"
        );
    }
}

// ---- random frames ----

/// xorshift64*: a seeded, dependency-free generator for the property tests.
pub(super) struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn random_frame(r: &mut Rng) -> Frame<'static> {
    const NAME: &[u8] = b"abcXYZ019._-";
    match r.below(9) + 1 {
        1 => Frame::Hello(Hello {
            name: (0..=r.below(64))
                .map(|_| NAME[r.below(NAME.len() as u64) as usize] as char)
                .collect(),
            generation: r.bytes(16).try_into().unwrap(),
            stream_id: r.next(),
            memory_bytes: r.next(),
            disk_sizes: (0..r.below(4)).map(|_| r.next()).collect(),
        }),
        2 => Frame::HelloAck(HelloAck {
            last_committed_epoch: r.next(),
            generation: r.bytes(16).try_into().unwrap(),
            resume_ok: r.below(2) == 1,
        }),
        3 => {
            let n = r.below(5) as usize;
            Frame::Pages(Pages {
                pages: Cow::Owned((0..n).map(|_| r.next()).collect()),
                data: Cow::Owned(r.bytes(n * PAGE_SIZE)),
            })
        }
        4 => Frame::Disk(Disk {
            disk: r.next() as u32,
            sector: r.next(),
            action: if r.below(2) == 0 {
                {
                    let n = 512 * (1 + r.below(8) as usize);
                    DiskAction::Write(Cow::Owned(r.bytes(n)))
                }
            } else {
                DiskAction::Discard(512 * (1 + r.below(1 << 20) as u32))
            },
        }),
        5 => {
            let n = 1 + r.below(3000) as usize;
            Frame::State(Cow::Owned(r.bytes(n)))
        }
        6 => Frame::Commit(Commit {
            frames: r.next() as u32,
            digest: r.bytes(32).try_into().unwrap(),
            flags: (r.below(2) as u8) * COMMIT_FLUSH,
        }),
        7 => Frame::Ack,
        8 => Frame::DiskSums(DiskSums {
            disk: r.next() as u32,
            first_chunk: r.next(),
            sums: (0..1 + r.below(4))
                .map(|_| r.bytes(32).try_into().unwrap())
                .collect(),
        }),
        _ => Frame::Abort {
            reason: (0..r.below(1025))
                .map(|_| char::from(32 + r.below(95) as u8))
                .collect(),
        },
    }
}

#[test]
fn random_frames_round_trip_singly_and_as_a_stream() {
    let mut r = Rng(0x9e37_79b9_7f4a_7c15);
    let mut stream = Vec::new();
    let mut sent = Vec::new();
    for i in 0..300 {
        let f = random_frame(&mut r);
        let (vm, epoch) = (r.next(), r.next());
        let bytes = encode(&f, vm, epoch).unwrap();
        let (h, back, used) = parse_frame(&bytes).unwrap();
        assert_eq!(
            (used, h.vm_id, h.epoch),
            (bytes.len(), vm, epoch),
            "frame {i}"
        );
        assert_eq!(back, f, "frame {i}");
        stream.extend_from_slice(&bytes);
        sent.push(f);
    }
    let mut reader = FrameReader::new(&stream[..]);
    for (i, f) in sent.iter().enumerate() {
        let (_, got) = reader.next_frame().unwrap().unwrap();
        assert_eq!(&got, f, "frame {i}");
    }
    assert!(reader.next_frame().unwrap().is_none());
    assert_eq!(reader.frames_read(), 300);
    assert_eq!(reader.bytes_read(), stream.len() as u64);
}

#[test]
fn random_damage_never_panics() {
    let mut r = Rng(42);
    for _ in 0..3000 {
        let mut b = encode(&random_frame(&mut r), VM, 1).unwrap();
        for _ in 0..=r.below(4) {
            let at = r.below(b.len() as u64) as usize;
            b[at] = r.next() as u8;
        }
        let _ = parse_frame(&b);
        let _ = read_all(&b);
        // The damaged payload re-hashed, so the payload parser sees it.
        let _ = parse_frame(&raw_frame(b[6], &b[HEADER_LEN..]));
        let kind = Kind::from_u8(1 + r.below(8) as u8).unwrap();
        let _ = parse_payload(kind, &b[HEADER_LEN.min(b.len())..]);
        let n = r.below(200) as usize;
        let garbage = r.bytes(n);
        let _ = parse_payload(kind, &garbage);
        let _ = read_all(&garbage);
    }
}
