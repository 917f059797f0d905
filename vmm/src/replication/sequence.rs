//! The secondary's receive-side state machine: which frame may come next, and what it means.
//!
//! It does no I/O and touches no memory: the stream loop reads a frame (`FrameReader`), asks
//! `SequenceChecker::check`, and does what the returned `Step` says (stage into the replica,
//! apply and ack a commit, answer a Hello). The order it enforces:
//!
//! 1. a Hello (header epoch 0), naming the VM and its memory size; the receiver answers with
//!    HelloAck and tells the checker where the stream continues (`start_at`);
//! 2. for each epoch N = last committed + 1, in turn: Pages, Disk and State frames (one State,
//!    required), then a Commit whose frame count and digest match the frames seen since the
//!    previous commit.
//!
//! Handover (a planned switchover: the primary paused the guest for good after the last
//! commit, the copy is now the VM) may come only at a commit boundary: no frame of the next
//! epoch yet, and at least one epoch committed on this connection or before it.
//!
//! Keepalive (a sign of life while the primary checkpoints, no part of any epoch) may come at
//! any time once streaming, with header epoch 0; it counts in no digest.
//!
//! Abort (the primary stops protecting: the copy becomes stale) and End (the VM ended: the copy
//! is discarded) may come at any time after the Hello (before it they are refused: nobody
//! who did not introduce a stream can end one); the receiver answers both with CloseAck. Any error,
//! Abort and End close the checker: the receiver drops the connection and the staged epoch,
//! and the replica stays at its last committed epoch (or is discarded, after End).

use super::wire::{hex, EpochDigest, Frame, Header, Kind, PAGE_SIZE};

/// What the receiver does with the frame it just checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// A Hello: answer with HelloAck, then call `start_at`.
    Hello,
    /// Stage the frame's content (Pages, Disk or State) into this epoch.
    Stage(u64),
    /// This epoch is whole and verified: apply it, then send Ack with this epoch.
    Commit(u64),
    /// The primary gave up the connection: drop the staged epoch, mark the copy stale, answer
    /// CloseAck and close.
    Abort(String),
    /// The VM ended on the primary: discard the copy, answer CloseAck and close.
    End(String),
    /// The primary handed the VM over at the last committed epoch: keep the copy as the VM
    /// (take it over), answer CloseAck and close.
    Handover(String),
    /// A sign of life: nothing to do (the receiver has noted when it was heard).
    Keepalive,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SequenceError {
    #[error("expected a Hello first, got a {kind} frame")]
    ExpectedHello { kind: Kind },
    #[error("a second Hello on the same connection")]
    SecondHello,
    #[error("a {kind} frame from the primary (those go from the secondary to the primary)")]
    WrongDirection { kind: Kind },
    #[error("a {kind} frame for VM id {got} on the connection of VM id {expected}")]
    WrongVm { kind: Kind, expected: u64, got: u64 },
    #[error("a {kind} frame of epoch {got} where epoch {expected} was expected")]
    WrongEpoch { kind: Kind, expected: u64, got: u64 },
    #[error("Hello announces {bytes} bytes of memory: not a positive multiple of {PAGE_SIZE}")]
    BadMemorySize { bytes: u64 },
    #[error("a {kind} frame before the receiver answered the Hello")]
    NotStarted { kind: Kind },
    #[error("start_at called {0}")]
    BadStart(&'static str),
    #[error("epoch {epoch}: page number {page} (entry {index} of its frame) is beyond the VM's {pages} pages")]
    PageBeyondMemory {
        epoch: u64,
        index: usize,
        page: u64,
        pages: u64,
    },
    #[error("epoch {epoch}: page number {page} (entry {index} of its frame) does not follow {prev}: page numbers must increase")]
    PagesNotIncreasing {
        epoch: u64,
        index: usize,
        prev: u64,
        page: u64,
    },
    #[error("epoch {epoch}: a second State frame")]
    SecondState { epoch: u64 },
    #[error("epoch {epoch}: Commit without a State frame")]
    CommitWithoutState { epoch: u64 },
    #[error("epoch {epoch}: Commit announces {announced} frames, {seen} arrived")]
    CommitFrames {
        epoch: u64,
        announced: u32,
        seen: u32,
    },
    #[error(
        "epoch {epoch}: Commit digest {announced} does not match the frames received ({computed})"
    )]
    CommitDigest {
        epoch: u64,
        announced: String,
        computed: String,
    },
    #[error("epoch {epoch}: more than u32::MAX frames")]
    TooManyFrames { epoch: u64 },
    #[error("epoch numbers exhausted")]
    EpochOverflow,
    #[error("a Handover of epoch {got} where only one at the last committed epoch {committed} (with no frame of the next one; {frames} came) may come")]
    HandoverNotAtCommit {
        got: u64,
        committed: u64,
        frames: u32,
    },
    #[error("the connection is closed (after an Abort or an error)")]
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    AwaitHello,
    /// Hello seen; waiting for the receiver's `start_at`.
    Answering,
    Streaming,
    Closed,
}

#[derive(Debug)]
pub struct SequenceChecker {
    expected_vm: Option<u64>,
    phase: Phase,
    vm_id: u64,
    memory_pages: u64,
    last_committed: u64,
    digest: EpochDigest,
    state_seen: bool,
}

impl SequenceChecker {
    /// A checker for a new connection; `expected_vm` if the receiver already knows which VM
    /// this connection is for (otherwise the Hello's header decides, and later frames must match).
    pub fn new(expected_vm: Option<u64>) -> SequenceChecker {
        SequenceChecker {
            expected_vm,
            phase: Phase::AwaitHello,
            vm_id: 0,
            memory_pages: 0,
            last_committed: 0,
            digest: EpochDigest::new(),
            state_seen: false,
        }
    }

    /// After answering the Hello: the stream continues with epoch `last_committed + 1` (0 for a
    /// full sync from epoch 1).
    pub fn start_at(&mut self, last_committed: u64) -> Result<(), SequenceError> {
        if self.phase != Phase::Answering {
            return Err(SequenceError::BadStart("other than right after a Hello"));
        }
        if last_committed == u64::MAX {
            return Err(SequenceError::EpochOverflow);
        }
        self.last_committed = last_committed;
        self.phase = Phase::Streaming;
        Ok(())
    }

    /// The VM id of this connection (once the Hello is seen).
    pub fn vm_id(&self) -> Option<u64> {
        (self.phase != Phase::AwaitHello).then_some(self.vm_id)
    }

    /// The VM's memory in pages, from the Hello.
    pub fn memory_pages(&self) -> u64 {
        self.memory_pages
    }

    /// The last epoch whose Commit was checked (or `start_at`'s).
    pub fn last_committed(&self) -> u64 {
        self.last_committed
    }

    /// The epoch being received.
    pub fn current_epoch(&self) -> u64 {
        self.last_committed + 1
    }

    /// Frames of the current epoch seen so far.
    pub fn frames_in_epoch(&self) -> u32 {
        self.digest.frames()
    }

    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    /// Judges the next frame. An error closes the checker (every later frame is `Closed`).
    pub fn check(&mut self, header: &Header, frame: &Frame<'_>) -> Result<Step, SequenceError> {
        let step = self.judge(header, frame);
        if matches!(
            step,
            Err(_) | Ok(Step::Abort(_)) | Ok(Step::End(_)) | Ok(Step::Handover(_))
        ) {
            self.phase = Phase::Closed;
        }
        step
    }

    fn judge(&mut self, header: &Header, frame: &Frame<'_>) -> Result<Step, SequenceError> {
        let kind = frame.kind();
        if self.phase == Phase::Closed {
            return Err(SequenceError::Closed);
        }
        if let Some(expected) = self.expected_vm.or(self.vm_id()) {
            if header.vm_id != expected {
                return Err(SequenceError::WrongVm {
                    kind,
                    expected,
                    got: header.vm_id,
                });
            }
        }
        match frame {
            // Only the primary of this connection's Hello may end what it started.
            Frame::Abort { .. } | Frame::End { .. } | Frame::Handover { .. }
                if self.phase == Phase::AwaitHello =>
            {
                return Err(SequenceError::ExpectedHello { kind })
            }
            Frame::Handover { reason } => {
                let frames = self.digest.frames();
                let at_commit = self.phase == Phase::Streaming
                    && self.last_committed >= 1
                    && header.epoch == self.last_committed
                    && frames == 0
                    && !self.state_seen;
                if !at_commit {
                    return Err(SequenceError::HandoverNotAtCommit {
                        got: header.epoch,
                        committed: self.last_committed,
                        frames,
                    });
                }
                return Ok(Step::Handover(reason.clone()));
            }
            Frame::Keepalive => {
                return match self.phase {
                    Phase::AwaitHello => Err(SequenceError::ExpectedHello { kind }),
                    Phase::Answering => Err(SequenceError::NotStarted { kind }),
                    Phase::Closed => Err(SequenceError::Closed),
                    Phase::Streaming if header.epoch != 0 => Err(SequenceError::WrongEpoch {
                        kind,
                        expected: 0,
                        got: header.epoch,
                    }),
                    Phase::Streaming => Ok(Step::Keepalive),
                };
            }
            Frame::Abort { reason } => return Ok(Step::Abort(reason.clone())),
            Frame::End { reason } => return Ok(Step::End(reason.clone())),
            Frame::HelloAck(_) | Frame::DiskSums(_) | Frame::Ack | Frame::CloseAck { .. } => {
                return Err(SequenceError::WrongDirection { kind })
            }
            Frame::Hello(hello) => {
                if self.phase != Phase::AwaitHello {
                    return Err(SequenceError::SecondHello);
                }
                if header.epoch != 0 {
                    return Err(SequenceError::WrongEpoch {
                        kind,
                        expected: 0,
                        got: header.epoch,
                    });
                }
                let bytes = hello.memory_bytes;
                if bytes == 0 || bytes % PAGE_SIZE as u64 != 0 {
                    return Err(SequenceError::BadMemorySize { bytes });
                }
                self.vm_id = header.vm_id;
                self.memory_pages = bytes / PAGE_SIZE as u64;
                self.phase = Phase::Answering;
                return Ok(Step::Hello);
            }
            _ => {}
        }
        match self.phase {
            Phase::AwaitHello => return Err(SequenceError::ExpectedHello { kind }),
            Phase::Answering => return Err(SequenceError::NotStarted { kind }),
            Phase::Streaming | Phase::Closed => {}
        }
        let epoch = self.current_epoch();
        if header.epoch != epoch {
            return Err(SequenceError::WrongEpoch {
                kind,
                expected: epoch,
                got: header.epoch,
            });
        }
        match frame {
            Frame::Pages(p) => self.check_pages(epoch, &p.pages)?,
            Frame::PagesLz4(p) => self.check_pages(epoch, &p.pages)?,
            Frame::State(_) if self.state_seen => return Err(SequenceError::SecondState { epoch }),
            Frame::State(_) => self.state_seen = true,
            Frame::Commit(c) => {
                if !self.state_seen {
                    return Err(SequenceError::CommitWithoutState { epoch });
                }
                let seen = self.digest.commit();
                if c.frames != seen.frames {
                    return Err(SequenceError::CommitFrames {
                        epoch,
                        announced: c.frames,
                        seen: seen.frames,
                    });
                }
                if c.digest != seen.digest {
                    return Err(SequenceError::CommitDigest {
                        epoch,
                        announced: hex(&c.digest),
                        computed: hex(&seen.digest),
                    });
                }
                if epoch == u64::MAX {
                    return Err(SequenceError::EpochOverflow);
                }
                self.last_committed = epoch;
                self.digest = EpochDigest::new();
                self.state_seen = false;
                return Ok(Step::Commit(epoch));
            }
            _ => {}
        }
        if !self.digest.add(&header.sha256) {
            return Err(SequenceError::TooManyFrames { epoch });
        }
        Ok(Step::Stage(epoch))
    }

    fn check_pages(&self, epoch: u64, pages: &[u64]) -> Result<(), SequenceError> {
        let mut prev: Option<u64> = None;
        for (index, &page) in pages.iter().enumerate() {
            if page >= self.memory_pages {
                return Err(SequenceError::PageBeyondMemory {
                    epoch,
                    index,
                    page,
                    pages: self.memory_pages,
                });
            }
            if let Some(prev) = prev.filter(|&p| p >= page) {
                return Err(SequenceError::PagesNotIncreasing {
                    epoch,
                    index,
                    prev,
                    page,
                });
            }
            prev = Some(page);
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "sequence_tests.rs"]
mod tests;
