//! Sequence checker tests: real frames (encoded, then read back with `FrameReader`) through the
//! checker; a good stream passes, each rule broken is its own error.

use std::borrow::Cow;

use super::*;
use crate::replication::wire::{
    encode, write_frame, Commit, Disk, DiskAction, EpochDigest, FrameReader, Hello, HelloAck,
    Pages, HEADER_LEN,
};

const VM: u64 = 77;
const MEMORY_PAGES: u64 = 1024;

fn hello() -> Frame<'static> {
    Frame::Hello(Hello {
        name: "vm-a".into(),
        generation: [3; 16],
        stream_id: 0,
        memory_bytes: MEMORY_PAGES * PAGE_SIZE as u64,
        disk_sizes: Vec::new(),
    })
}

fn pages(numbers: &[u64]) -> Frame<'static> {
    Frame::Pages(Pages {
        pages: Cow::Owned(numbers.to_vec()),
        data: Cow::Owned(vec![0x11; numbers.len() * PAGE_SIZE]),
    })
}

fn state(tag: u8) -> Frame<'static> {
    Frame::State(Cow::Owned(vec![tag; 40]))
}

fn disk_write() -> Frame<'static> {
    Frame::Disk(Disk {
        disk: 0,
        sector: 16,
        action: DiskAction::Write(Cow::Owned(vec![5; 1024])),
    })
}

/// The primary's side, as the stream loop will write it: each epoch's frames through one
/// `EpochDigest`, then its Commit.
#[derive(Default)]
struct Primary {
    out: Vec<u8>,
    digest: EpochDigest,
}

impl Primary {
    fn send(&mut self, vm: u64, epoch: u64, f: &Frame<'_>) -> &mut Self {
        let sha = write_frame(&mut self.out, vm, epoch, f).unwrap();
        if !matches!(
            f,
            Frame::Hello(_)
                | Frame::Commit(_)
                | Frame::Abort { .. }
                | Frame::Handover { .. }
                | Frame::Keepalive
        ) {
            assert!(self.digest.add(&sha));
        }
        self
    }

    fn frame(&mut self, epoch: u64, f: Frame<'_>) -> &mut Self {
        self.send(VM, epoch, &f)
    }

    fn commit(&mut self, epoch: u64) -> &mut Self {
        let c = std::mem::take(&mut self.digest).commit();
        self.send(VM, epoch, &Frame::Commit(c))
    }
}

/// Runs a stream through a checker (started at `start` after the Hello); the steps, or the
/// first error and the steps before it.
fn run(
    bytes: &[u8],
    expected_vm: Option<u64>,
    start: u64,
) -> (Vec<Step>, Result<(), SequenceError>) {
    let mut r = FrameReader::new(bytes);
    let mut c = SequenceChecker::new(expected_vm);
    let mut steps = Vec::new();
    while let Some((h, f)) = r.next_frame().unwrap() {
        match c.check(&h, &f) {
            Ok(step) => {
                if step == Step::Hello {
                    c.start_at(start).unwrap();
                }
                steps.push(step);
            }
            Err(e) => {
                assert!(c.is_closed());
                return (steps, Err(e));
            }
        }
    }
    (steps, Ok(()))
}

fn good_stream() -> Primary {
    let mut p = Primary::default();
    p.frame(0, hello())
        // Epoch 1: the full copy in two batches, a disk write, the state.
        .frame(1, pages(&[0, 1, 2]))
        .frame(1, pages(&[3, 1023]))
        .frame(1, disk_write())
        .frame(1, state(1))
        .commit(1)
        // Epoch 2: nothing dirty but the state and a discard.
        .frame(2, state(2))
        .frame(
            2,
            Frame::Disk(Disk {
                disk: 1,
                sector: 0,
                action: DiskAction::Discard(4096),
            }),
        )
        .commit(2)
        // Epoch 3.
        .frame(3, pages(&[9]))
        .frame(3, state(3))
        .commit(3);
    p
}

#[test]
fn a_good_three_epoch_stream_passes() {
    let p = good_stream();
    let (steps, res) = run(&p.out, Some(VM), 0);
    res.unwrap();
    use Step::*;
    assert_eq!(
        steps,
        [
            Hello,
            Stage(1),
            Stage(1),
            Stage(1),
            Stage(1),
            Commit(1),
            Stage(2),
            Stage(2),
            Commit(2),
            Stage(3),
            Stage(3),
            Commit(3)
        ]
    );
    // The VM id comes from the Hello when the receiver did not know it.
    assert!(run(&p.out, None, 0).1.is_ok());
}

#[test]
fn checker_accessors_follow_the_stream() {
    let p = good_stream();
    let mut r = FrameReader::new(&p.out[..]);
    let mut c = SequenceChecker::new(None);
    assert_eq!(c.vm_id(), None);
    let (h, f) = r.next_frame().unwrap().unwrap();
    assert_eq!(c.check(&h, &f).unwrap(), Step::Hello);
    assert_eq!((c.vm_id(), c.memory_pages()), (Some(VM), MEMORY_PAGES));
    c.start_at(0).unwrap();
    for _ in 0..2 {
        let (h, f) = r.next_frame().unwrap().unwrap();
        c.check(&h, &f).unwrap();
    }
    assert_eq!((c.current_epoch(), c.frames_in_epoch()), (1, 2));
    for _ in 0..3 {
        let (h, f) = r.next_frame().unwrap().unwrap();
        c.check(&h, &f).unwrap();
    }
    assert_eq!(
        (c.last_committed(), c.current_epoch(), c.frames_in_epoch()),
        (1, 2, 0)
    );
}

#[test]
fn keepalives_pass_anywhere_in_a_stream_and_count_in_no_digest() {
    let mut p = Primary::default();
    p.frame(0, hello())
        .frame(0, Frame::Keepalive)
        .frame(1, pages(&[0, 1]))
        // Mid-epoch (the primary paused a long time, or waits for acks).
        .frame(0, Frame::Keepalive)
        .frame(1, state(1))
        .frame(0, Frame::Keepalive)
        .commit(1)
        .frame(0, Frame::Keepalive)
        .frame(1, handover());
    let (steps, res) = run(&p.out, Some(VM), 0);
    res.unwrap();
    use Step::*;
    assert_eq!(
        steps,
        [
            Hello,
            Keepalive,
            Stage(1),
            Keepalive,
            Stage(1),
            Keepalive,
            Commit(1),
            Keepalive,
            Handover("failback".into())
        ]
    );
}

#[test]
fn a_keepalive_before_the_stream_or_at_an_epoch_is_refused() {
    let mut p = Primary::default();
    p.frame(0, Frame::Keepalive);
    fails(
        &p,
        0,
        SequenceError::ExpectedHello {
            kind: Kind::Keepalive,
        },
    );
    let mut p = Primary::default();
    p.frame(0, hello()).frame(1, Frame::Keepalive);
    fails(
        &p,
        0,
        SequenceError::WrongEpoch {
            kind: Kind::Keepalive,
            expected: 0,
            got: 1,
        },
    );
}

/// Feeds `p`'s stream; asserts it fails with `want`.
fn fails(p: &Primary, start: u64, want: SequenceError) {
    let (_, res) = run(&p.out, Some(VM), start);
    assert_eq!(res, Err(want));
}

#[test]
fn hello_must_come_first() {
    let mut p = Primary::default();
    p.frame(1, pages(&[1]));
    fails(&p, 0, SequenceError::ExpectedHello { kind: Kind::Pages });
}

#[test]
fn a_second_hello() {
    let mut p = Primary::default();
    p.frame(0, hello()).frame(0, hello());
    fails(&p, 0, SequenceError::SecondHello);
}

#[test]
fn hello_at_a_nonzero_epoch() {
    let mut p = Primary::default();
    p.frame(5, hello());
    fails(
        &p,
        0,
        SequenceError::WrongEpoch {
            kind: Kind::Hello,
            expected: 0,
            got: 5,
        },
    );
}

#[test]
fn hello_with_a_bad_memory_size() {
    for bytes in [0, 4097] {
        let mut p = Primary::default();
        p.frame(
            0,
            Frame::Hello(Hello {
                name: "x".into(),
                generation: [0; 16],
                stream_id: 0,
                memory_bytes: bytes,
                disk_sizes: Vec::new(),
            }),
        );
        fails(&p, 0, SequenceError::BadMemorySize { bytes });
    }
}

#[test]
fn secondary_kinds_from_the_primary() {
    let ack = Frame::HelloAck(HelloAck {
        last_committed_epoch: 0,
        generation: [0; 16],
        resume_ok: true,
    });
    let close = Frame::CloseAck {
        reason: String::new(),
    };
    for (f, kind) in [
        (ack, Kind::HelloAck),
        (Frame::Ack, Kind::Ack),
        (close, Kind::CloseAck),
    ] {
        let mut p = Primary::default();
        p.frame(0, hello()).send(VM, 1, &f);
        fails(&p, 0, SequenceError::WrongDirection { kind });
    }
}

#[test]
fn wrong_vm_id() {
    // Known up front: the Hello is refused.
    let mut p = Primary::default();
    p.send(VM + 1, 0, &hello());
    fails(
        &p,
        0,
        SequenceError::WrongVm {
            kind: Kind::Hello,
            expected: VM,
            got: VM + 1,
        },
    );
    // Learnt from the Hello: a later frame for another VM is refused.
    let mut p = Primary::default();
    p.frame(0, hello()).send(VM + 1, 1, &pages(&[1]));
    let (_, res) = run(&p.out, None, 0);
    assert_eq!(
        res,
        Err(SequenceError::WrongVm {
            kind: Kind::Pages,
            expected: VM,
            got: VM + 1
        })
    );
}

#[test]
fn epoch_other_than_the_current_one() {
    // Skipping ahead.
    let mut p = Primary::default();
    p.frame(0, hello()).frame(2, pages(&[1]));
    fails(
        &p,
        0,
        SequenceError::WrongEpoch {
            kind: Kind::Pages,
            expected: 1,
            got: 2,
        },
    );
    // A frame of the epoch just committed.
    let mut p = Primary::default();
    p.frame(0, hello())
        .frame(1, state(1))
        .commit(1)
        .frame(1, state(1));
    fails(
        &p,
        0,
        SequenceError::WrongEpoch {
            kind: Kind::State,
            expected: 2,
            got: 1,
        },
    );
    // A commit for another epoch.
    let mut p = Primary::default();
    p.frame(0, hello()).frame(1, state(1)).commit(3);
    fails(
        &p,
        0,
        SequenceError::WrongEpoch {
            kind: Kind::Commit,
            expected: 1,
            got: 3,
        },
    );
}

#[test]
fn resuming_continues_after_the_receivers_last_commit() {
    let mut p = Primary::default();
    p.frame(0, hello()).frame(6, state(6)).commit(6);
    let (steps, res) = run(&p.out, Some(VM), 5);
    res.unwrap();
    assert_eq!(steps, [Step::Hello, Step::Stage(6), Step::Commit(6)]);
    fails(
        &good_stream(),
        5,
        SequenceError::WrongEpoch {
            kind: Kind::Pages,
            expected: 6,
            got: 1,
        },
    );
}

#[test]
fn frames_before_the_hello_is_answered() {
    let mut p = Primary::default();
    p.frame(0, hello()).frame(1, pages(&[1]));
    let mut r = FrameReader::new(&p.out[..]);
    let mut c = SequenceChecker::new(Some(VM));
    let (h, f) = r.next_frame().unwrap().unwrap();
    assert_eq!(c.check(&h, &f).unwrap(), Step::Hello);
    let (h, f) = r.next_frame().unwrap().unwrap();
    assert_eq!(
        c.check(&h, &f),
        Err(SequenceError::NotStarted { kind: Kind::Pages })
    );
}

#[test]
fn start_at_only_right_after_a_hello() {
    let mut c = SequenceChecker::new(None);
    assert!(matches!(c.start_at(0), Err(SequenceError::BadStart(_))));
    let bytes = encode(&hello(), VM, 0).unwrap();
    let (h, f) = FrameReader::new(&bytes[..]).next_owned().unwrap().unwrap();
    c.check(&h, &f).unwrap();
    assert_eq!(c.start_at(u64::MAX), Err(SequenceError::EpochOverflow));
    c.start_at(3).unwrap();
    assert!(matches!(c.start_at(3), Err(SequenceError::BadStart(_))));
}

#[test]
fn page_beyond_memory() {
    let mut p = Primary::default();
    p.frame(0, hello()).frame(1, pages(&[5, MEMORY_PAGES]));
    fails(
        &p,
        0,
        SequenceError::PageBeyondMemory {
            epoch: 1,
            index: 1,
            page: MEMORY_PAGES,
            pages: MEMORY_PAGES,
        },
    );
}

#[test]
fn pages_not_increasing_within_a_frame() {
    for (numbers, index, prev, page) in [(vec![1, 3, 2], 2, 3, 2), (vec![4, 4], 1, 4, 4)] {
        let mut p = Primary::default();
        p.frame(0, hello()).frame(1, pages(&numbers));
        fails(
            &p,
            0,
            SequenceError::PagesNotIncreasing {
                epoch: 1,
                index,
                prev,
                page,
            },
        );
    }
}

#[test]
fn a_second_state_in_an_epoch() {
    let mut p = Primary::default();
    p.frame(0, hello()).frame(1, state(1)).frame(1, state(1));
    fails(&p, 0, SequenceError::SecondState { epoch: 1 });
}

#[test]
fn commit_without_state() {
    let mut p = Primary::default();
    p.frame(0, hello()).frame(1, pages(&[1])).commit(1);
    fails(&p, 0, SequenceError::CommitWithoutState { epoch: 1 });
}

#[test]
fn commit_frame_count_mismatch() {
    let mut p = Primary::default();
    p.frame(0, hello()).frame(1, pages(&[1])).frame(1, state(1));
    let c = p.digest.commit();
    p.send(
        VM,
        1,
        &Frame::Commit(Commit {
            frames: c.frames + 1,
            ..c
        }),
    );
    fails(
        &p,
        0,
        SequenceError::CommitFrames {
            epoch: 1,
            announced: 3,
            seen: 2,
        },
    );
}

#[test]
fn commit_digest_mismatch_when_frames_are_reordered() {
    // The primary hashed pages then state; the stream carries state then pages.
    let mut p = Primary::default();
    p.frame(0, hello());
    let hello_len = p.out.len();
    p.frame(1, pages(&[1])).frame(1, state(1));
    let pages_end = hello_len + HEADER_LEN + 4 + 8 + PAGE_SIZE;
    let mut out = p.out[..hello_len].to_vec();
    out.extend_from_slice(&p.out[pages_end..]);
    out.extend_from_slice(&p.out[hello_len..pages_end]);
    let c = p.digest.commit();
    write_frame(&mut out, VM, 1, &Frame::Commit(c)).unwrap();
    let (_, res) = run(&out, Some(VM), 0);
    assert!(
        matches!(res, Err(SequenceError::CommitDigest { epoch: 1, .. })),
        "{res:?}"
    );
}

#[test]
fn abort_closes_the_checker() {
    let mut p = Primary::default();
    p.frame(0, hello())
        .frame(1, pages(&[1]))
        .frame(
            1,
            Frame::Abort {
                reason: "primary stopping".into(),
            },
        )
        .frame(1, state(1));
    fails(&p, 0, SequenceError::Closed);
    let (steps, _) = run(&p.out, Some(VM), 0);
    assert_eq!(steps.last(), Some(&Step::Abort("primary stopping".into())));
}

#[test]
fn abort_or_end_before_any_hello_is_refused() {
    for f in [
        Frame::Abort { reason: "x".into() },
        Frame::End { reason: "x".into() },
        Frame::Handover { reason: "x".into() },
    ] {
        let kind = f.kind();
        let mut p = Primary::default();
        p.frame(0, f);
        fails(&p, 0, SequenceError::ExpectedHello { kind });
    }
}

#[test]
fn end_closes_the_checker_too() {
    let mut p = Primary::default();
    p.frame(0, hello())
        .frame(1, pages(&[1]))
        .frame(
            1,
            Frame::End {
                reason: "guest powered off".into(),
            },
        )
        .frame(1, state(1));
    fails(&p, 0, SequenceError::Closed);
    let (steps, _) = run(&p.out, Some(VM), 0);
    assert_eq!(steps.last(), Some(&Step::End("guest powered off".into())));
}

#[test]
fn an_error_closes_the_checker() {
    let mut p = Primary::default();
    p.frame(0, hello()).frame(1, pages(&[2, 1]));
    let mut r = FrameReader::new(&p.out[..]);
    let mut c = SequenceChecker::new(Some(VM));
    let (h, f) = r.next_owned().unwrap().unwrap();
    c.check(&h, &f).unwrap();
    c.start_at(0).unwrap();
    let (h2, f2) = r.next_owned().unwrap().unwrap();
    assert!(c.check(&h2, &f2).is_err());
    // A good frame afterwards is still refused.
    let good = encode(&state(1), VM, 1).unwrap();
    let (h3, f3) = FrameReader::new(&good[..]).next_owned().unwrap().unwrap();
    assert_eq!(c.check(&h3, &f3), Err(SequenceError::Closed));
}

#[test]
fn a_bit_flip_anywhere_in_a_stream_is_caught_by_the_reader_or_the_checker() {
    // Header fields the payload sha does not cover (vm_id, epoch) are the checker's job.
    let mut p = Primary::default();
    p.frame(0, hello())
        .frame(1, pages(&[1]))
        .frame(1, state(1))
        .commit(1);
    let good = p.out.clone();
    assert!(run(&good, Some(VM), 0).1.is_ok());
    for bit in 0..good.len() * 8 {
        let mut b = good.clone();
        b[bit / 8] ^= 1 << (bit % 8);
        let mut r = FrameReader::new(&b[..]);
        let mut c = SequenceChecker::new(Some(VM));
        let caught = loop {
            match r.next_frame() {
                Err(_) => break true,
                Ok(None) => break false,
                Ok(Some((h, f))) => match c.check(&h, &f) {
                    Err(_) => break true,
                    Ok(Step::Hello) => c.start_at(0).unwrap(),
                    Ok(_) => {}
                },
            }
        };
        assert!(caught, "flip of bit {bit} went through");
    }
}

fn handover() -> Frame<'static> {
    Frame::Handover {
        reason: "failback".into(),
    }
}

#[test]
fn a_handover_right_after_a_commit_closes_the_checker() {
    let mut p = good_stream();
    p.frame(3, handover()).frame(4, state(4));
    fails(&p, 0, SequenceError::Closed);
    let (steps, _) = run(&p.out, Some(VM), 0);
    assert_eq!(steps.last(), Some(&Step::Handover("failback".into())));
}

#[test]
fn a_handover_anywhere_but_at_the_last_commit_is_refused() {
    // Inside epoch 4 (one of its frames came).
    let mut p = good_stream();
    p.frame(4, pages(&[1])).frame(3, handover());
    fails(
        &p,
        0,
        SequenceError::HandoverNotAtCommit {
            got: 3,
            committed: 3,
            frames: 1,
        },
    );
    // Naming an epoch other than the last committed one.
    let mut p = good_stream();
    p.frame(4, handover());
    fails(
        &p,
        0,
        SequenceError::HandoverNotAtCommit {
            got: 4,
            committed: 3,
            frames: 0,
        },
    );
    // Before anything was committed: nothing to resume from.
    let mut p = Primary::default();
    p.frame(0, hello()).frame(0, handover());
    fails(
        &p,
        0,
        SequenceError::HandoverNotAtCommit {
            got: 0,
            committed: 0,
            frames: 0,
        },
    );
}
