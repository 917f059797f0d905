//! The output gate (Remus's "output commit"): in Gated mode every frame the guest sends during
//! epoch N is held, and released only when the supervisor says epoch N is committed (the
//! secondary holds a checkpoint that includes the sending of the frame). The world therefore
//! never sees output from a guest state that a failover could lose. In Off mode (no peer, or
//! replication not started) frames pass at once.
//!
//! This file is the pure bookkeeping (which frames, which epoch, counters); `output.rs` couples
//! it to the backend that actually transmits.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// Whether guest output waits for epoch commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GateMode {
    Off,
    Gated,
}

/// A frame sent by the guest during `epoch`, not yet released.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldFrame {
    pub epoch: u64,
    pub frame: Vec<u8>,
}

/// Counters since the device was created (not saved: they describe this process).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct GateStats {
    /// Passed at once (Off mode).
    pub passed_frames: u64,
    pub passed_bytes: u64,
    /// Held at some point (Gated mode).
    pub held_frames: u64,
    pub held_bytes: u64,
    /// Released by a commit or by switching the gate off.
    pub released_frames: u64,
    pub released_bytes: u64,
    /// Dropped by `discard_uncommitted`.
    pub discarded_frames: u64,
    pub discarded_bytes: u64,
    /// Dropped on arrival because `MAX_HELD_BYTES` were already waiting (a long hold: the
    /// world sees nothing either way, and TCP in the guest sends them again).
    #[serde(default)]
    pub dropped_frames: u64,
    #[serde(default)]
    pub dropped_bytes: u64,
    /// Waiting now.
    pub waiting_frames: u64,
    pub waiting_bytes: u64,
    /// Current epoch.
    pub epoch: u64,
}

/// Saved gate: the mode, the current epoch and every frame still held. A replica restored from
/// checkpoint N holds the frames of epochs <= N the primary had not released yet; its supervisor
/// commits N once it takes over, so nothing the guest believes it sent is lost (the world may see
/// a frame twice, which networks tolerate, but never a frame from a lost state).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateState {
    pub mode: GateMode,
    pub epoch: u64,
    pub held: Vec<HeldFrame>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GateError {
    #[error("epoch {asked} is older than the current epoch {current}")]
    EpochBackwards { asked: u64, current: u64 },
}

/// The most guest output held at once. A hold lasts until the peer acks or the supervisor
/// decides (at most a few seconds); beyond this much, new frames are dropped, as a congested
/// wire would, instead of growing without bound.
pub const MAX_HELD_BYTES: u64 = 16 << 20;

/// Frames held per epoch, in send order.
#[derive(Debug)]
pub struct OutputGate {
    mode: GateMode,
    epoch: u64,
    held: VecDeque<HeldFrame>,
    stats: GateStats,
}

impl OutputGate {
    pub fn new(mode: GateMode) -> Self {
        OutputGate {
            mode,
            epoch: 0,
            held: VecDeque::new(),
            stats: GateStats::default(),
        }
    }

    pub fn mode(&self) -> GateMode {
        self.mode
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Switches mode. Turning the gate off releases everything held (returned in order): with
    /// no peer to fail over to, nothing can contradict those frames any more.
    pub fn set_mode(&mut self, mode: GateMode) -> Vec<Vec<u8>> {
        self.mode = mode;
        match mode {
            GateMode::Off => self.release_while(|_| true),
            GateMode::Gated => Vec::new(),
        }
    }

    /// A new replication stream starts: what is held goes out (returned in order; the stream
    /// it belonged to is over), and frames from now on are held as epoch `n`, which may be lower
    /// than the last stream's epochs.
    pub fn start_gating(&mut self, n: u64) -> Vec<Vec<u8>> {
        let released = self.release_while(|_| true);
        self.mode = GateMode::Gated;
        self.epoch = n;
        released
    }

    /// Frames sent from now on belong to epoch `n` (n never goes back).
    pub fn begin_epoch(&mut self, n: u64) -> Result<(), GateError> {
        if n < self.epoch {
            return Err(GateError::EpochBackwards {
                asked: n,
                current: self.epoch,
            });
        }
        self.epoch = n;
        Ok(())
    }

    /// A frame from the guest: returned to be sent now (Off), or held (Gated, `None`).
    pub fn submit(&mut self, frame: Vec<u8>) -> Option<Vec<u8>> {
        let len = frame.len() as u64;
        match self.mode {
            GateMode::Off => {
                self.stats.passed_frames += 1;
                self.stats.passed_bytes += len;
                Some(frame)
            }
            GateMode::Gated if self.stats.waiting_bytes + len > MAX_HELD_BYTES => {
                self.stats.dropped_frames += 1;
                self.stats.dropped_bytes += len;
                None
            }
            GateMode::Gated => {
                self.stats.held_frames += 1;
                self.stats.held_bytes += len;
                self.stats.waiting_frames += 1;
                self.stats.waiting_bytes += len;
                self.held.push_back(HeldFrame {
                    epoch: self.epoch,
                    frame,
                });
                None
            }
        }
    }

    /// Epoch `n` is committed: returns every held frame of epochs <= n, in send order.
    pub fn commit(&mut self, n: u64) -> Vec<Vec<u8>> {
        self.release_while(|f| f.epoch <= n)
    }

    /// Drops every held frame (the epochs they belong to will never commit). Returns how many.
    pub fn discard_uncommitted(&mut self) -> usize {
        let n = self.held.len();
        for f in self.held.drain(..) {
            self.stats.discarded_frames += 1;
            self.stats.discarded_bytes += f.frame.len() as u64;
        }
        self.stats.waiting_frames = 0;
        self.stats.waiting_bytes = 0;
        n
    }

    pub fn held(&self) -> impl Iterator<Item = &HeldFrame> {
        self.held.iter()
    }

    pub fn stats(&self) -> GateStats {
        GateStats {
            epoch: self.epoch,
            ..self.stats
        }
    }

    pub fn save(&self) -> GateState {
        GateState {
            mode: self.mode,
            epoch: self.epoch,
            held: self.held.iter().cloned().collect(),
        }
    }

    /// Replaces mode, epoch and held frames with a saved state (counters keep counting).
    pub fn restore(&mut self, s: &GateState) {
        self.mode = s.mode;
        self.epoch = s.epoch;
        self.held = s.held.iter().cloned().collect();
        self.stats.waiting_frames = self.held.len() as u64;
        self.stats.waiting_bytes = self.held.iter().map(|f| f.frame.len() as u64).sum();
    }

    fn release_while(&mut self, pred: impl Fn(&HeldFrame) -> bool) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while self.held.front().is_some_and(&pred) {
            let Some(f) = self.held.pop_front() else {
                break;
            };
            let len = f.frame.len() as u64;
            self.stats.released_frames += 1;
            self.stats.released_bytes += len;
            self.stats.waiting_frames -= 1;
            self.stats.waiting_bytes -= len;
            out.push(f.frame);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(tag: u8, len: usize) -> Vec<u8> {
        vec![tag; len]
    }

    #[test]
    fn off_passes_at_once() {
        let mut g = OutputGate::new(GateMode::Off);
        assert_eq!(g.submit(f(1, 60)), Some(f(1, 60)));
        let s = g.stats();
        assert_eq!(
            (s.passed_frames, s.passed_bytes, s.waiting_frames),
            (1, 60, 0)
        );
    }

    #[test]
    fn gated_frames_wait_for_their_epoch_and_leave_in_order() {
        let mut g = OutputGate::new(GateMode::Gated);
        g.begin_epoch(1).unwrap();
        assert_eq!(g.submit(f(1, 10)), None);
        assert_eq!(g.submit(f(2, 20)), None);
        g.begin_epoch(2).unwrap();
        assert_eq!(g.submit(f(3, 30)), None);
        g.begin_epoch(3).unwrap();
        assert_eq!(g.submit(f(4, 40)), None);
        assert_eq!(g.stats().waiting_frames, 4);
        assert_eq!(g.stats().waiting_bytes, 100);

        assert!(g.commit(0).is_empty(), "nothing of epoch 0");
        assert_eq!(g.commit(1), vec![f(1, 10), f(2, 20)]);
        assert!(g.commit(1).is_empty(), "commit is idempotent");
        // Committing a later epoch releases every older one too.
        assert_eq!(g.commit(3), vec![f(3, 30), f(4, 40)]);
        let s = g.stats();
        assert_eq!(
            (s.held_frames, s.released_frames, s.released_bytes),
            (4, 4, 100)
        );
        assert_eq!((s.waiting_frames, s.waiting_bytes), (0, 0));
    }

    #[test]
    fn discard_drops_only_held_frames() {
        let mut g = OutputGate::new(GateMode::Gated);
        g.begin_epoch(7).unwrap();
        g.submit(f(1, 5));
        g.submit(f(2, 5));
        assert_eq!(g.discard_uncommitted(), 2);
        assert!(g.commit(7).is_empty());
        let s = g.stats();
        assert_eq!(
            (s.discarded_frames, s.discarded_bytes, s.waiting_frames),
            (2, 10, 0)
        );
        g.submit(f(3, 5));
        assert_eq!(g.commit(7), vec![f(3, 5)]);
    }

    #[test]
    fn epochs_never_go_back() {
        let mut g = OutputGate::new(GateMode::Gated);
        g.begin_epoch(5).unwrap();
        g.begin_epoch(5).unwrap();
        assert_eq!(
            g.begin_epoch(4),
            Err(GateError::EpochBackwards {
                asked: 4,
                current: 5
            })
        );
        assert_eq!(g.epoch(), 5);
    }

    #[test]
    fn turning_the_gate_off_releases_everything() {
        let mut g = OutputGate::new(GateMode::Gated);
        g.begin_epoch(1).unwrap();
        g.submit(f(1, 1));
        g.begin_epoch(2).unwrap();
        g.submit(f(2, 1));
        assert_eq!(g.set_mode(GateMode::Off), vec![f(1, 1), f(2, 1)]);
        assert_eq!(g.submit(f(3, 1)), Some(f(3, 1)));
    }

    #[test]
    fn a_new_stream_restarts_the_epochs() {
        let mut g = OutputGate::new(GateMode::Gated);
        g.begin_epoch(40).unwrap();
        g.submit(f(1, 3));
        g.set_mode(GateMode::Off);
        assert!(g.begin_epoch(1).is_err());
        assert!(g.start_gating(1).is_empty());
        assert_eq!(g.mode(), GateMode::Gated);
        assert_eq!(g.epoch(), 1);
        assert_eq!(g.submit(f(2, 3)), None);
        g.begin_epoch(2).unwrap();
        assert_eq!(g.commit(1), vec![f(2, 3)]);
    }

    #[test]
    fn a_long_hold_drops_frames_beyond_the_limit() {
        let mut g = OutputGate::new(GateMode::Gated);
        g.begin_epoch(1).unwrap();
        let big = (MAX_HELD_BYTES / 4) as usize;
        for i in 0..4 {
            assert_eq!(g.submit(f(i, big)), None);
        }
        assert_eq!(g.submit(f(9, 1)), None);
        let s = g.stats();
        assert_eq!(
            (s.waiting_frames, s.dropped_frames, s.dropped_bytes),
            (4, 1, 1)
        );
        assert_eq!(g.commit(1).len(), 4);
        assert_eq!(g.submit(f(10, 1)), None);
        assert_eq!(g.stats().waiting_frames, 1);
    }

    #[test]
    fn save_restore_keeps_held_frames_and_epoch() {
        let mut g = OutputGate::new(GateMode::Gated);
        g.begin_epoch(9).unwrap();
        g.submit(f(1, 3));
        let saved = g.save();
        let json = serde_json::to_string(&saved).unwrap();
        let mut r = OutputGate::new(GateMode::Off);
        r.restore(&serde_json::from_str(&json).unwrap());
        assert_eq!(r.mode(), GateMode::Gated);
        assert_eq!(r.epoch(), 9);
        assert_eq!(r.stats().waiting_frames, 1);
        assert_eq!(r.commit(9), vec![f(1, 3)]);
    }
}
