//! Signs of life on a replication stream, so that a long checkpoint is not mistaken for a
//! dead peer.
//!
//! Epochs alone are a poor pulse: a primary pausing a busy guest, a secondary applying and
//! syncing a big epoch, or a full copy with nothing committed yet can each leave one
//! direction silent for longer than `dead_after`, and while a supervisor is restarting the
//! stream is the only path the peer is heard on. So:
//! - each side writes its frames through a [`FrameOut`], whose keepalive thread
//!   ([`spawn_keepalive`]) sends a Keepalive frame when that side has written nothing for
//!   [`KEEPALIVE_EVERY`] (never inside another frame: each frame is written whole under the
//!   lock);
//! - each side tells its supervisor when it last heard the peer (`Event::Heard`), which the
//!   supervisor counts as a sign of life beside the heartbeats. The secondary counts the
//!   bytes arriving ([`Stamped`]) and the time it is busy applying what came ([`HeardClock`]):
//!   the primary is not silent while the secondary is the one not reading, but only for
//!   [`BUSY_LIMIT`] (an apply that hangs must not hide a dead primary forever).
//!
//! A keepalive says "this side's stream is alive", so it is held back when that is not so
//! or would add nothing: while the side's own stream thread is stuck (the primary's sender
//! has not shown progress, [`FrameOut::working`], or the secondary has been busy with one
//! frame, for [`BUSY_LIMIT`]), after the side's last word (a terminal frame,
//! [`FrameOut::close`]: the peer closes on it, and bytes it never reads could reset the
//! connection before it read that word), and while the socket still holds bytes the peer
//! has not acknowledged ([`unacked_bytes`]: the peer hears those, and a keepalive could only
//! wait behind them).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::replication::wire::{self, Frame, WireError};
use crate::sync::lock;

/// How long a side may write nothing before its keepalive thread sends a Keepalive, and how
/// often each side tells its supervisor it heard the peer.
pub const KEEPALIVE_EVERY: Duration = Duration::from_millis(100);

/// How long one frame's work on the secondary (staging, applying, syncing an epoch's commit)
/// counts as hearing the primary, and how long a side's stream thread may show no progress
/// before its keepalives stop.
pub const BUSY_LIMIT: Duration = Duration::from_secs(10);

/// A frame writer shared by a stream's thread and its keepalive thread.
pub struct FrameOut<W> {
    w: Mutex<W>,
    last_write: Mutex<Instant>,
    /// When the stream's own thread last wrote a frame or said it is `working`.
    worked: Mutex<Instant>,
    /// The side's last frame went out (`close`): nothing follows it.
    closed: AtomicBool,
    /// A frame's write failed, perhaps half-way: nothing more goes out (it would follow a
    /// torn frame, and the peer would read it as part of that one).
    broken: AtomicBool,
}

impl<W: Write> FrameOut<W> {
    pub fn new(w: W) -> FrameOut<W> {
        FrameOut {
            w: Mutex::new(w),
            last_write: Mutex::new(Instant::now()),
            worked: Mutex::new(Instant::now()),
            closed: AtomicBool::new(false),
            broken: AtomicBool::new(false),
        }
    }

    /// Writes one whole frame (buffered until `flush`); its payload sha256.
    pub fn frame(&self, vm_id: u64, epoch: u64, frame: &Frame<'_>) -> Result<[u8; 32], WireError> {
        let mut w = lock(&self.w);
        if self.broken.load(Ordering::SeqCst) {
            return Err(torn());
        }
        let sha = wire::write_frame(&mut *w, vm_id, epoch, frame)
            .inspect_err(|_| self.broken.store(true, Ordering::SeqCst))?;
        let now = Instant::now();
        *lock(&self.last_write) = now;
        *lock(&self.worked) = now;
        Ok(sha)
    }

    pub fn flush(&self) -> Result<(), WireError> {
        lock(&self.w).flush()?;
        Ok(())
    }

    /// Writes and flushes this side's last frame (Abort, End, Handover, CloseAck): no
    /// keepalive follows it.
    pub fn close(&self, vm_id: u64, epoch: u64, frame: &Frame<'_>) -> Result<(), WireError> {
        let mut w = lock(&self.w);
        // Closed before the write: a write that fails half-way ends the stream as well.
        self.closed.store(true, Ordering::SeqCst);
        if self.broken.load(Ordering::SeqCst) {
            return Err(torn());
        }
        wire::write_frame(&mut *w, vm_id, epoch, frame)?;
        w.flush()?;
        Ok(())
    }

    /// The stream's thread is alive and working (waiting for acks, say) without writing.
    pub fn working(&self) {
        *lock(&self.worked) = Instant::now();
    }

    /// Whether the stream's thread has shown no progress for `BUSY_LIMIT` as of `now`.
    pub fn stalled(&self, now: Instant) -> bool {
        now.saturating_duration_since(*lock(&self.worked)) > BUSY_LIMIT
    }

    /// Sends a Keepalive when nothing was written for `idle`, no frame is being written now
    /// (a frame being written is a sign of life already) and the side has not closed. True
    /// when one went out.
    pub fn keepalive_if_idle(&self, vm_id: u64, idle: Duration) -> Result<bool, WireError> {
        let Ok(mut w) = self.w.try_lock() else {
            return Ok(false);
        };
        let done = self.closed.load(Ordering::SeqCst) || self.broken.load(Ordering::SeqCst);
        if done || lock(&self.last_write).elapsed() < idle {
            return Ok(false);
        }
        // One write of a header into the buffered writer: whole or not at all. Once buffered
        // it is written: a flush that times out leaves it for the next flush, and no second
        // keepalive joins it meanwhile.
        wire::write_frame(&mut *w, vm_id, 0, &Frame::Keepalive)?;
        *lock(&self.last_write) = Instant::now();
        w.flush()?;
        Ok(true)
    }
}

fn torn() -> WireError {
    WireError::Io(std::io::Error::other(
        "an earlier frame was cut off: nothing more can be sent on this stream",
    ))
}

/// Bytes in `conn`'s send queue that the peer's kernel has not acknowledged (SIOCOUTQ).
pub fn unacked_bytes(conn: &TcpStream) -> Option<u32> {
    let mut n: libc::c_int = 0;
    // SAFETY: SIOCOUTQ writes one int through the pointer, which points at `n`, alive for the
    // call; the fd is the open socket `conn` owns.
    let r = unsafe { libc::ioctl(conn.as_raw_fd(), libc::TIOCOUTQ, &mut n as *mut libc::c_int) };
    (r == 0).then(|| n.max(0) as u32)
}

/// A keepalive thread; stops (and is joined) when dropped.
pub struct Keepalive {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Keepalive {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Every `KEEPALIVE_EVERY`: a Keepalive on `out` if it was idle, unless `hold(now)` holds it
/// back (the side's stream is stuck) or `conn`'s send queue holds bytes the peer has not
/// acknowledged; then `tick` (which tells the supervisor what was heard). Ends when dropped
/// or when a write fails other than by timing out (the stream's own thread finds the broken
/// connection by itself). Whoever drops it shuts the socket down first: a keepalive blocked
/// in a write then returns at once.
pub fn spawn_keepalive<W: Write + Send + 'static>(
    out: Arc<FrameOut<W>>,
    vm_id: u64,
    conn: Option<TcpStream>,
    mut hold: impl FnMut(Instant) -> bool + Send + 'static,
    mut tick: impl FnMut() + Send + 'static,
) -> std::io::Result<Keepalive> {
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = Arc::clone(&stop);
    let thread = std::thread::Builder::new()
        .name("keepalive".into())
        .spawn(move || {
            while !stop2.load(Ordering::SeqCst) {
                std::thread::sleep(KEEPALIVE_EVERY / 4);
                if stop2.load(Ordering::SeqCst) {
                    return;
                }
                let queued = conn.as_ref().and_then(unacked_bytes).is_some_and(|q| q > 0);
                let held = hold(Instant::now());
                if !held && !queued {
                    match out.keepalive_if_idle(vm_id, KEEPALIVE_EVERY) {
                        Ok(_) => {}
                        // A keepalive is one write of its header into the buffered writer,
                        // whole or not at all; what a timed-out flush left stays buffered, and
                        // the next flush goes on with it: the stream is whole.
                        Err(WireError::Io(e))
                            if matches!(
                                e.kind(),
                                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                            ) =>
                        {
                            log::debug!("replication: keepalive write timed out: {e}")
                        }
                        Err(e) => {
                            log::debug!("replication: keepalive not sent: {e}");
                            return;
                        }
                    }
                }
                tick();
            }
        })?;
    Ok(Keepalive {
        stop,
        thread: Some(thread),
    })
}

/// When the peer was last heard, as the receiving side sees it.
#[derive(Debug)]
pub struct HeardClock {
    base: Instant,
    /// Milliseconds after `base` plus one (0: never).
    heard: AtomicU64,
    /// The receiving thread is waiting for bytes (not busy with what came).
    reading: AtomicBool,
    /// When it last stopped reading (ms after `base`).
    busy_since: AtomicU64,
    /// When this side last made progress on work of its own that reads nothing from the
    /// peer (the chunk hashes before any frame; ms after `base`, 0: none under way).
    progress_at: AtomicU64,
}

impl Default for HeardClock {
    fn default() -> Self {
        HeardClock::new()
    }
}

impl HeardClock {
    pub fn new() -> HeardClock {
        HeardClock {
            base: Instant::now(),
            heard: AtomicU64::new(0),
            reading: AtomicBool::new(false),
            busy_since: AtomicU64::new(0),
            progress_at: AtomicU64::new(0),
        }
    }

    fn ms(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.base).as_millis() as u64 + 1
    }

    /// Bytes from the peer arrived at `now`.
    pub fn heard(&self, now: Instant) {
        self.heard.fetch_max(self.ms(now), Ordering::SeqCst);
    }

    /// The receiving thread waits for the next frame.
    pub fn reading(&self) {
        self.reading.store(true, Ordering::SeqCst);
    }

    /// The receiving thread has a frame and works on it from `now`.
    pub fn busy(&self, now: Instant) {
        self.heard(now);
        self.busy_since.store(self.ms(now), Ordering::SeqCst);
        self.reading.store(false, Ordering::SeqCst);
        self.progress_at.store(0, Ordering::SeqCst);
    }

    /// The receiving thread moved on with work of its own at `now` (it hears nothing from
    /// the peer meanwhile, and claims nothing about it): stuck once it moves no more for
    /// `BUSY_LIMIT`.
    pub fn progress(&self, now: Instant) {
        self.progress_at.store(self.ms(now), Ordering::SeqCst);
    }

    /// Whether the receiving thread has been busy with one frame, or stopped moving on with
    /// its own work, for longer than `BUSY_LIMIT` as of `now` (hung, or far too slow: its
    /// keepalives stop).
    pub fn stuck(&self, now: Instant) -> bool {
        if self.reading.load(Ordering::SeqCst) {
            return false;
        }
        let at = self.progress_at.load(Ordering::SeqCst);
        if at > 0 {
            return now.saturating_duration_since(self.base + Duration::from_millis(at - 1))
                > BUSY_LIMIT;
        }
        let since = self.busy_since.load(Ordering::SeqCst);
        since > 0
            && now.saturating_duration_since(self.base + Duration::from_millis(since - 1))
                > BUSY_LIMIT
    }

    /// When the peer was last heard as of `now`: now while this side is busy with the frame
    /// it last read (for at most `BUSY_LIMIT` from when it was read), else when its last
    /// bytes came.
    pub fn last_heard(&self, now: Instant) -> Option<Instant> {
        let at = |ms: u64| (ms > 0).then(|| self.base + Duration::from_millis(ms - 1));
        let mut heard = at(self.heard.load(Ordering::SeqCst));
        if !self.reading.load(Ordering::SeqCst) {
            if let Some(busy) = at(self.busy_since.load(Ordering::SeqCst)) {
                heard = heard.max(Some(now.min(busy + BUSY_LIMIT)));
            }
        }
        heard
    }
}

/// A reader that stamps a `HeardClock` whenever bytes arrive (a big frame coming slowly is
/// a sign of life before it is whole).
pub struct Stamped<R> {
    inner: R,
    clock: Arc<HeardClock>,
}

impl<R> Stamped<R> {
    pub fn new(inner: R, clock: Arc<HeardClock>) -> Stamped<R> {
        Stamped { inner, clock }
    }

    pub fn get_ref(&self) -> &R {
        &self.inner
    }
}

impl<R: Read> Read for Stamped<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n > 0 {
            self.clock.heard(Instant::now());
        }
        Ok(n)
    }
}

/// Rate-limits the `Event::Heard` a side publishes: at most one per `KEEPALIVE_EVERY`, and
/// only for something newer than what was told.
#[derive(Debug, Default)]
pub struct HeardTeller {
    told: Option<Instant>,
    said_at: Option<Instant>,
}

impl HeardTeller {
    /// How long ago the peer was heard, if the supervisor should be told now.
    pub fn tell(&mut self, heard: Option<Instant>, now: Instant) -> Option<Duration> {
        let heard = heard?;
        let newer = self.told.is_none_or(|t| heard > t);
        let due = self
            .said_at
            .is_none_or(|t| now.saturating_duration_since(t) >= KEEPALIVE_EVERY);
        if !(newer && due) {
            return None;
        }
        self.told = Some(heard);
        self.said_at = Some(now);
        Some(now.saturating_duration_since(heard))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_counts_as_heard_for_at_most_the_busy_limit() {
        let c = HeardClock::new();
        let t0 = c.base + Duration::from_secs(1);
        assert_eq!(c.last_heard(t0), None);
        c.busy(t0);
        // Busy with what came: heard now, up to the limit.
        let t1 = t0 + Duration::from_secs(3);
        assert_eq!(c.last_heard(t1), Some(t1));
        assert_eq!(
            c.last_heard(t0 + Duration::from_secs(60)),
            Some(t0 + BUSY_LIMIT)
        );
        // Waiting for bytes: heard when they last came.
        c.reading();
        assert_eq!(c.last_heard(t1), Some(t0));
        let t2 = t0 + Duration::from_millis(1500);
        c.heard(t2);
        assert_eq!(c.last_heard(t1 + Duration::from_secs(5)), Some(t2));
    }

    #[test]
    fn stamped_reads_stamp_the_clock() {
        let c = Arc::new(HeardClock::new());
        c.reading();
        let mut r = Stamped::new(&b"abc"[..], Arc::clone(&c));
        let mut buf = [0u8; 2];
        assert_eq!(r.read(&mut buf).unwrap(), 2);
        assert!(c.last_heard(Instant::now()).is_some());
    }

    #[test]
    fn the_teller_says_each_new_hearing_once_per_interval() {
        let mut t = HeardTeller::default();
        let t0 = Instant::now();
        assert_eq!(t.tell(None, t0), None);
        assert_eq!(t.tell(Some(t0), t0), Some(Duration::ZERO));
        // Too soon, and nothing newer.
        assert_eq!(t.tell(Some(t0), t0 + KEEPALIVE_EVERY), None);
        let t1 = t0 + Duration::from_millis(30);
        assert_eq!(t.tell(Some(t1), t0 + Duration::from_millis(50)), None);
        assert_eq!(
            t.tell(Some(t1), t0 + KEEPALIVE_EVERY),
            Some(KEEPALIVE_EVERY - Duration::from_millis(30))
        );
    }

    #[test]
    fn a_keepalive_goes_out_only_after_the_idle_time_and_between_frames() {
        let out = FrameOut::new(Vec::new());
        assert!(!out.keepalive_if_idle(7, Duration::from_secs(60)).unwrap());
        out.frame(7, 0, &Frame::Ack).unwrap();
        assert!(out.keepalive_if_idle(7, Duration::ZERO).unwrap());
        let bytes = lock(&out.w).clone();
        let mut r = wire::FrameReader::new(&bytes[..]);
        assert!(matches!(r.next_frame().unwrap(), Some((_, Frame::Ack))));
        let (h, f) = r.next_owned().unwrap().unwrap();
        assert_eq!((h.vm_id, h.epoch, f), (7, 0, Frame::Keepalive));
        // While another frame is being written, none.
        let held = lock(&out.w);
        assert!(!out.keepalive_if_idle(7, Duration::ZERO).unwrap());
        drop(held);
    }

    #[test]
    fn nothing_follows_the_last_frame() {
        let out = FrameOut::new(Vec::new());
        out.close(7, 3, &Frame::CloseAck { reason: "x".into() })
            .unwrap();
        assert!(!out.keepalive_if_idle(7, Duration::ZERO).unwrap());
        let bytes = lock(&out.w).clone();
        let mut r = wire::FrameReader::new(&bytes[..]);
        assert!(matches!(
            r.next_frame().unwrap(),
            Some((_, Frame::CloseAck { .. }))
        ));
        assert!(r.next_frame().unwrap().is_none());
    }

    #[test]
    fn a_stream_thread_without_progress_for_the_busy_limit_is_stalled() {
        let out = FrameOut::new(Vec::new());
        let t0 = *lock(&out.worked);
        assert!(!out.stalled(t0 + BUSY_LIMIT));
        assert!(out.stalled(t0 + BUSY_LIMIT + Duration::from_millis(1)));
        std::thread::sleep(Duration::from_millis(5));
        out.working();
        assert!(!out.stalled(t0 + BUSY_LIMIT + Duration::from_millis(1)));
    }

    #[test]
    fn a_receiver_busy_with_one_frame_past_the_busy_limit_is_stuck() {
        let c = HeardClock::new();
        let t0 = c.base + Duration::from_secs(1);
        assert!(!c.stuck(t0 + BUSY_LIMIT * 2), "never busy");
        c.busy(t0);
        assert!(!c.stuck(t0 + BUSY_LIMIT));
        assert!(c.stuck(t0 + BUSY_LIMIT + Duration::from_millis(1)));
        // Waiting for the primary is not being stuck, however long.
        c.reading();
        assert!(!c.stuck(t0 + BUSY_LIMIT * 2));
    }

    #[test]
    fn work_of_its_own_keeps_a_receiver_alive_while_it_moves_and_claims_nothing_heard() {
        let c = HeardClock::new();
        let t0 = c.base + Duration::from_secs(1);
        c.progress(t0);
        c.progress(t0 + BUSY_LIMIT);
        assert!(!c.stuck(t0 + BUSY_LIMIT * 2), "moving on");
        assert_eq!(
            c.last_heard(t0 + BUSY_LIMIT),
            None,
            "the peer was not heard"
        );
        assert!(
            c.stuck(t0 + BUSY_LIMIT * 2 + Duration::from_millis(1)),
            "no move"
        );
        // A frame read ends that work: the busy rule again.
        c.busy(t0 + BUSY_LIMIT * 3);
        assert!(!c.stuck(t0 + BUSY_LIMIT * 4));
    }

    /// A writer that takes at most `chunk` bytes a call and times out every other call
    /// while `fails` lasts (a socket whose peer reads slowly), then every call once `take`
    /// bytes went through.
    struct Flaky {
        fails: usize,
        chunk: usize,
        take: usize,
        calls: usize,
        got: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for Flaky {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.calls += 1;
            let mut got = lock(&self.got);
            let timed_out = self.fails > 0 && self.calls.is_multiple_of(2);
            if timed_out || got.len() >= self.take {
                self.fails = self.fails.saturating_sub(1);
                return Err(std::io::ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(self.chunk).min(self.take - got.len());
            got.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A write that times out (a peer not reading for a while) does not end the keepalives,
    /// and leaves no torn frame.
    #[test]
    fn keepalives_go_on_whole_after_a_timed_out_write() {
        let got = Arc::new(Mutex::new(Vec::new()));
        let w = std::io::BufWriter::new(Flaky {
            fails: 6,
            chunk: 10,
            take: usize::MAX,
            calls: 0,
            got: Arc::clone(&got),
        });
        let out = Arc::new(FrameOut::new(w));
        let k = spawn_keepalive(Arc::clone(&out), 7, None, |_| false, || {}).unwrap();
        let until = Instant::now() + Duration::from_secs(10);
        let whole = 2 * wire::HEADER_LEN;
        while Instant::now() < until && lock(&got).len() < whole {
            std::thread::sleep(Duration::from_millis(5));
        }
        drop(k);
        let bytes = lock(&got).clone();
        assert!(bytes.len() >= whole, "{} bytes", bytes.len());
        // Whole frames up to the last byte that went out (the thread may have been stopped
        // inside a flush).
        let whole_len = bytes.len() - bytes.len() % wire::HEADER_LEN;
        let mut r = wire::FrameReader::new(&bytes[..whole_len]);
        let mut n = 0;
        while let Some((h, f)) = r.next_owned().unwrap() {
            assert_eq!((h.vm_id, h.epoch, f), (7, 0, Frame::Keepalive));
            n += 1;
        }
        assert!(n >= 2, "{n} keepalives");
    }

    /// A frame cut off half-way (a write that timed out inside it): nothing follows it, not a
    /// keepalive, not the side's last word.
    #[test]
    fn nothing_follows_a_torn_frame() {
        let got = Arc::new(Mutex::new(Vec::new()));
        let out = FrameOut::new(Flaky {
            fails: 0,
            chunk: usize::MAX,
            take: 10,
            calls: 0,
            got: Arc::clone(&got),
        });
        assert!(out.frame(7, 1, &Frame::Ack).is_err());
        assert!(!out.keepalive_if_idle(7, Duration::ZERO).unwrap());
        let closing = out.close(7, 1, &Frame::CloseAck { reason: "x".into() });
        assert!(closing.unwrap_err().to_string().contains("cut off"));
        assert!(out.frame(7, 1, &Frame::Ack).is_err());
        assert_eq!(
            lock(&got).len(),
            10,
            "only the torn frame's first bytes went out"
        );
    }

    /// The keepalive thread, for real: a Keepalive within a few intervals when nothing holds
    /// it back, none at all while `hold` does.
    #[test]
    fn the_keepalive_thread_sends_unless_held_back() {
        let run = |hold: bool| {
            let out = Arc::new(FrameOut::new(Vec::new()));
            let k = spawn_keepalive(Arc::clone(&out), 7, None, move |_| hold, || {}).unwrap();
            // Held back: five intervals of silence; else the first within five seconds.
            let wait = if hold {
                KEEPALIVE_EVERY * 5
            } else {
                Duration::from_secs(5)
            };
            let until = Instant::now() + wait;
            while Instant::now() < until && lock(&out.w).is_empty() {
                std::thread::sleep(Duration::from_millis(5));
            }
            drop(k);
            let bytes = lock(&out.w).clone();
            bytes
        };
        let sent = run(false);
        let mut r = wire::FrameReader::new(&sent[..]);
        assert!(matches!(
            r.next_frame().unwrap(),
            Some((_, Frame::Keepalive))
        ));
        assert!(run(true).is_empty(), "held back, yet sent");
    }
}
