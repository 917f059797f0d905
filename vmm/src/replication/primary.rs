//! The primary's replication stream: one thread per protected VM that connects to the peer,
//! introduces the VM, sends epoch 1 (a full copy of memory and disks, then the first
//! checkpoint) and then one checkpoint every `epoch`, and a second thread that reads the
//! peer's acks and releases each committed epoch's network output.
//!
//! ```text
//!  connecting --HelloAck--> syncing --first checkpoint--> (output held per epoch)
//!      |                      |            --first ack--> protected
//!      v                      v                               |
//!    failed  <---- a failure before any output was held       |
//!                                                             |
//!  held  <---- a failure after output started being held -----+  (ack timeout, write error,
//!   |                                                         |   peer closed or aborted)
//!   +-- release() (the supervisor decided) --> stopped         |
//!                                                             |
//!  ending <---- end(Abort | End) (unprotect, guest reset, VM ended)
//!   +-- CloseAck --> stopped (output released)    +-- no CloseAck --> held
//! ```
//!
//! The engine never releases held output by itself after a failure: the peer may hold a
//! committed copy it is about to take over, and output beyond it would be seen by the world
//! twice over, from two guests. The supervisor says `release` when the peer confirmed its copy
//! is stale, or is dead (docs/design.md, "Split-brain never"), or kills the VM. A deliberate
//! end is confirmed by the peer (CloseAck) before anything is released.
//!
//! At most `max_unacked` epochs are in flight: when the peer falls behind, the next checkpoint
//! waits (the guest keeps running, its output keeps waiting).

use std::collections::VecDeque;
use std::io::{BufWriter, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::checkpoint::{self, CheckpointError, Checkpointer, CopyItem, EpochCapture};
use super::replica::DiskOp;
use super::wire::{
    self, Commit, Disk, DiskAction, EpochDigest, Frame, FrameReader, Hello, Pages, WireError,
    COMMIT_FLUSH,
};
use crate::events::{Event, Events, StreamState};
use crate::sync::lock;
use crate::virtio::block::DiskChangeKind;
use crate::vm::Vm;

/// Pages per Pages frame of an epoch (1 MiB of data).
const PAGES_PER_FRAME: usize = 256;
/// The socket's send buffer in user space.
const SEND_BUFFER: usize = 1 << 20;
/// Pauses remembered for the percentiles in the status.
const PAUSE_WINDOW: usize = 1024;

/// How a VM is protected.
#[derive(Debug, Clone)]
pub struct ProtectConfig {
    /// The VM's name (the peer checks it) and its id on the wire.
    pub name: String,
    pub vm_id: u64,
    /// Names this stream in the peer's reports (random per `protect` unless given).
    pub stream_id: u64,
    /// Time from the end of one checkpoint to the start of the next.
    pub epoch: Duration,
    /// Checkpoints sent and not yet acked before the next one waits.
    pub max_unacked: u64,
    /// No ack for this long after a Commit, while TCP made no progress delivering what was
    /// sent either (a slow link that still drains its queue is alive): the stream failed.
    pub ack_timeout: Duration,
    /// The same for epoch 1, whose commit writes the whole first copy on the peer.
    pub first_ack_timeout: Duration,
    pub connect_timeout: Duration,
    /// How long a deliberate end waits for the peer's CloseAck before it counts as failed.
    pub end_timeout: Duration,
    pub events: Events,
}

impl ProtectConfig {
    pub fn new(name: &str, vm_id: u64) -> ProtectConfig {
        ProtectConfig {
            name: name.to_string(),
            vm_id,
            stream_id: random_u64(),
            epoch: Duration::from_millis(50),
            max_unacked: 4,
            ack_timeout: Duration::from_secs(5),
            first_ack_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(5),
            end_timeout: Duration::from_secs(3),
            events: Events::new(),
        }
    }
}

/// A random number from the OS's source (std's RandomState is seeded from it).
pub fn random_u64() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one((std::process::id(), Instant::now()))
}

/// Where a protection stream is.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ProtectStatus {
    pub state: StreamState,
    pub peer: String,
    pub stream_id: u64,
    /// The epoch running now on this side.
    pub epoch: u64,
    /// The last epoch the peer holds.
    pub acked: u64,
    /// Epochs sent and not acked yet, and how long the oldest of them has waited.
    pub lag_epochs: u64,
    pub lag_ms: u64,
    /// Since the last ack (None before the first).
    pub last_ack_ms_ago: Option<u64>,
    pub last_pause_us: u64,
    pub max_pause_us: u64,
    /// Over the last `PAUSE_WINDOW` checkpoints.
    pub pause_p50_us: u64,
    pub pause_p99_us: u64,
    pub full_copy_pages: u64,
    pub full_copy_ms: u64,
    /// The first copy's progress: bytes of memory and disks read so far, of all.
    pub sync_scanned_bytes: u64,
    pub sync_total_bytes: u64,
    pub bytes_sent: u64,
    /// Checkpoints sent after the full copy, and their mean size.
    pub epochs_sent: u64,
    pub bytes_per_epoch: u64,
    /// Why it failed or ended, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The hashes of memory and disks at the epoch `verify` asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<super::verify::EpochHashes>,
}

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("connecting to {peer}: {source}")]
    Connect {
        peer: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("the peer answered the Hello with a {0} frame")]
    BadHelloAnswer(String),
    #[error("the peer closed the connection")]
    Closed,
    #[error("the peer refused the stream: {0}")]
    Refused(String),
    #[error("{0}")]
    Peer(String),
    #[error("no ack from the peer for {0:?}")]
    AckTimeout(Duration),
    #[error("ended: {0}")]
    Ended(String),
}

/// How the stream is asked to stop.
#[derive(Debug, Clone, PartialEq, Eq)]
enum StopKind {
    /// Tell the peer its copy is stale (Abort), wait for its CloseAck, then release.
    Abort(String),
    /// Tell the peer the VM ended (End): it discards its copy.
    End(String),
    /// Just cut the connection (the supervisor releases: the peer is dead).
    Cut,
}

#[derive(Default)]
struct Counters {
    pauses: VecDeque<u32>,
    epoch_bytes: u64,
    /// When each unacked Commit went out.
    unacked: VecDeque<(u64, Instant)>,
    last_ack: Option<Instant>,
}

struct Shared {
    status: Mutex<ProtectStatus>,
    counters: Mutex<Counters>,
    acked: AtomicU64,
    /// Bytes the full copy has read so far.
    scanned: AtomicU64,
    /// The last epoch whose Commit is being (or was) sent: an ack beyond it is a lie.
    committed_sent: AtomicU64,
    /// The connection, to cut it when stopping (a write blocked on a stuck peer ends).
    conn: Mutex<Option<TcpStream>>,
    stop: Mutex<Option<StopKind>>,
    stopping: AtomicBool,
    /// What the ack reader saw go wrong.
    ack_error: Mutex<Option<String>>,
    /// Hash memory and disks at this epoch's checkpoint (a check: `verify`).
    verify_at: Mutex<Option<u64>>,
    /// The peer's CloseAck (after our Abort or End).
    close_acked: Mutex<bool>,
    close_cv: Condvar,
    events: Events,
}

impl Shared {
    fn set_state(&self, state: StreamState, error: Option<String>) {
        let ev = {
            let mut st = lock(&self.status);
            st.state = state;
            if error.is_some() {
                st.error = error.clone();
            }
            Event::Stream {
                state,
                stream_id: st.stream_id,
                epoch: st.epoch,
                acked: st.acked,
                error,
            }
        };
        self.events.publish(ev);
    }

    fn stop_requested(&self) -> Option<StopKind> {
        lock(&self.stop).clone()
    }
}

/// A running (or held, or ended) protection stream.
pub struct Protection {
    shared: Arc<Shared>,
    vm: Vm,
    thread: Option<JoinHandle<()>>,
}

impl Protection {
    /// Starts protecting `vm` towards `peer` (`host:port`).
    pub fn start(vm: Vm, peer: &str, cfg: ProtectConfig) -> Protection {
        let shared = Arc::new(Shared {
            status: Mutex::new(ProtectStatus {
                state: StreamState::Connecting,
                peer: peer.to_string(),
                stream_id: cfg.stream_id,
                epoch: 0,
                acked: 0,
                lag_epochs: 0,
                lag_ms: 0,
                last_ack_ms_ago: None,
                last_pause_us: 0,
                max_pause_us: 0,
                pause_p50_us: 0,
                pause_p99_us: 0,
                full_copy_pages: 0,
                full_copy_ms: 0,
                sync_scanned_bytes: 0,
                sync_total_bytes: 0,
                bytes_sent: 0,
                epochs_sent: 0,
                bytes_per_epoch: 0,
                error: None,
                verify: None,
            }),
            counters: Mutex::default(),
            acked: AtomicU64::new(0),
            scanned: AtomicU64::new(0),
            committed_sent: AtomicU64::new(0),
            conn: Mutex::new(None),
            stop: Mutex::new(None),
            stopping: AtomicBool::new(false),
            ack_error: Mutex::new(None),
            verify_at: Mutex::new(None),
            close_acked: Mutex::new(false),
            close_cv: Condvar::new(),
            events: cfg.events.clone(),
        });
        shared.set_state(StreamState::Connecting, None);
        let s = Arc::clone(&shared);
        let peer = peer.to_string();
        let stream_vm = vm.clone();
        let thread = std::thread::Builder::new()
            .name(format!("protect-{}", cfg.name))
            .spawn(move || {
                let (state, error) = run(&stream_vm, &peer, &cfg, &s);
                match &error {
                    Some(e) if state == StreamState::Held => log::error!(
                        "replication of {} to {peer} failed: {e}; its output is held until \
                         the supervisor decides",
                        cfg.name
                    ),
                    Some(e) => log::warn!("replication of {} to {peer}: {e}", cfg.name),
                    None => log::info!("replication of {} to {peer} stopped", cfg.name),
                }
                s.set_state(state, error);
            });
        let thread = match thread {
            Ok(t) => Some(t),
            Err(e) => {
                shared.set_state(
                    StreamState::Failed,
                    Some(format!("spawning the stream thread: {e}")),
                );
                None
            }
        };
        Protection { shared, vm, thread }
    }

    /// A protection that is held from the start: the next VM after a guest reset whose
    /// stream's end the peer did not confirm (the peer may still take over the old guest, so
    /// nothing of the new one may be seen until the supervisor releases it).
    pub fn held(vm: Vm, peer: &str, reason: String, events: Events) -> Protection {
        for net in vm.net_outputs() {
            net.start_gating(1);
        }
        let p = Protection {
            shared: Arc::new(Shared {
                status: Mutex::new(ProtectStatus {
                    state: StreamState::Held,
                    peer: peer.to_string(),
                    stream_id: 0,
                    epoch: 0,
                    acked: 0,
                    lag_epochs: 0,
                    lag_ms: 0,
                    last_ack_ms_ago: None,
                    last_pause_us: 0,
                    max_pause_us: 0,
                    pause_p50_us: 0,
                    pause_p99_us: 0,
                    full_copy_pages: 0,
                    full_copy_ms: 0,
                    sync_scanned_bytes: 0,
                    sync_total_bytes: 0,
                    bytes_sent: 0,
                    epochs_sent: 0,
                    bytes_per_epoch: 0,
                    error: None,
                    verify: None,
                }),
                counters: Mutex::default(),
                acked: AtomicU64::new(0),
                scanned: AtomicU64::new(0),
                committed_sent: AtomicU64::new(0),
                conn: Mutex::new(None),
                stop: Mutex::new(None),
                stopping: AtomicBool::new(false),
                ack_error: Mutex::new(None),
                verify_at: Mutex::new(None),
                close_acked: Mutex::new(false),
                close_cv: Condvar::new(),
                events,
            }),
            vm,
            thread: None,
        };
        p.shared.set_state(StreamState::Held, Some(reason));
        p
    }

    pub fn status(&self) -> ProtectStatus {
        let mut st = lock(&self.shared.status).clone();
        let c = lock(&self.shared.counters);
        let now = Instant::now();
        st.lag_epochs = c.unacked.len() as u64;
        st.lag_ms = c.unacked.front().map_or(0, |(_, t)| {
            now.saturating_duration_since(*t).as_millis() as u64
        });
        st.last_ack_ms_ago = c
            .last_ack
            .map(|t| now.saturating_duration_since(t).as_millis() as u64);
        let mut sorted: Vec<u32> = c.pauses.iter().copied().collect();
        sorted.sort_unstable();
        let pct = |p: usize| {
            if sorted.is_empty() {
                0
            } else {
                u64::from(sorted[(sorted.len() - 1) * p / 100])
            }
        };
        st.pause_p50_us = pct(50);
        st.pause_p99_us = pct(99);
        st.bytes_per_epoch = c.epoch_bytes.checked_div(st.epochs_sent).unwrap_or(0);
        st.sync_scanned_bytes = self.shared.scanned.load(Ordering::Relaxed);
        st
    }

    /// Hashes memory and disks inside the checkpoint of `epoch` (at least the next one);
    /// `status().verify` shows them. Returns the epoch that will be hashed.
    pub fn verify_at(&self, epoch: u64) -> u64 {
        let e = epoch.max(lock(&self.shared.status).epoch + 1);
        *lock(&self.shared.verify_at) = Some(e);
        e
    }

    pub fn state(&self) -> StreamState {
        lock(&self.shared.status).state
    }

    /// Whether the stream still runs (connecting, syncing, protected, ending).
    pub fn is_active(&self) -> bool {
        self.state().is_active() && self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// A deliberate end (unprotect, guest reset): the peer is told its copy is stale and the
    /// output is released once it confirms; without its confirmation the stream ends held.
    /// Returns the final status.
    pub fn end(mut self, reason: &str) -> ProtectStatus {
        self.finish(StopKind::Abort(reason.to_string()));
        self.status()
    }

    /// The VM ended (powered off, stopped): the peer discards its copy.
    pub fn end_vm(mut self, reason: &str) -> ProtectStatus {
        self.finish(StopKind::End(reason.to_string()));
        self.status()
    }

    /// The supervisor's decision: the output may flow (the peer confirmed its copy is stale,
    /// or it is dead). A stream still running is cut first, without telling the peer.
    pub fn release(mut self) -> ProtectStatus {
        self.finish(StopKind::Cut);
        checkpoint::release(&self.vm);
        let held = lock(&self.shared.status).state == StreamState::Held;
        if held || self.state().is_active() {
            self.shared.set_state(StreamState::Stopped, None);
        }
        log::info!("replication: output released on the supervisor's decision");
        self.status()
    }

    fn finish(&mut self, kind: StopKind) {
        {
            let mut stop = lock(&self.shared.stop);
            if stop.is_none() {
                *stop = Some(kind.clone());
            }
        }
        self.shared.stopping.store(true, Ordering::SeqCst);
        if kind == StopKind::Cut {
            if let Some(c) = lock(&self.shared.conn).as_ref() {
                let _ = c.shutdown(Shutdown::Both);
            }
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Protection {
    fn drop(&mut self) {
        // Dropped without a decision (the machine ends): the connection is cut; the gates go
        // with the VM.
        if self.thread.is_some() {
            self.finish(StopKind::Cut);
        }
    }
}

/// The epoch sender. Returns the final state and why.
fn run(vm: &Vm, peer: &str, cfg: &ProtectConfig, s: &Arc<Shared>) -> (StreamState, Option<String>) {
    let (stream, reader) = match introduce(vm, peer, cfg, s) {
        Ok(x) => x,
        Err(e) => return (StreamState::Failed, Some(crate::error_chain(&e))),
    };
    let mut out = match stream.try_clone() {
        Ok(c) => BufWriter::with_capacity(SEND_BUFFER, c),
        Err(e) => {
            return (
                StreamState::Failed,
                Some(format!("cloning the socket: {e}")),
            )
        }
    };
    let mut ckpt = match Checkpointer::start(vm.clone()) {
        Ok(c) => c,
        Err(e) => return (StreamState::Failed, Some(crate::error_chain(&e))),
    };
    let acks = spawn_ack_reader(reader, vm.clone(), Arc::clone(s));
    let result = stream_epochs(&mut ckpt, &mut out, cfg, s);
    ckpt.stop_capture();
    let gating = ckpt.gating();
    let outcome = match (result, s.stop_requested()) {
        // A deliberate end: tell the peer and wait for its word.
        (_, Some(StopKind::Abort(reason))) => {
            deliberate_end(&mut out, cfg, ckpt.epoch(), s, Frame::Abort { reason })
        }
        (_, Some(StopKind::End(reason))) => {
            deliberate_end(&mut out, cfg, ckpt.epoch(), s, Frame::End { reason })
        }
        (_, Some(StopKind::Cut)) => (StreamState::Stopped, None),
        (Ok(()), None) => (StreamState::Stopped, None),
        (Err(e), None) => {
            let e = crate::error_chain(&e);
            // The peer may be fine (a transient fault): tell it, so it can mark its copy
            // stale and its supervisor can say so, but keep holding whatever it answers.
            let reason = format!("primary stops: {e}");
            let _ = wire::write_frame(&mut out, cfg.vm_id, ckpt.epoch(), &Frame::Abort { reason });
            let _ = out.flush();
            if gating {
                (StreamState::Held, Some(e))
            } else {
                // Nothing was held yet: the output already flows.
                (StreamState::Failed, Some(e))
            }
        }
    };
    let _ = stream.shutdown(Shutdown::Both);
    let _ = acks.join();
    if outcome.0 == StreamState::Stopped && !matches!(s.stop_requested(), Some(StopKind::Cut)) {
        checkpoint::release(vm);
    }
    outcome
}

/// Connects, sends the Hello and reads the HelloAck (bounded by the ack timeout).
fn introduce(
    vm: &Vm,
    peer: &str,
    cfg: &ProtectConfig,
    s: &Shared,
) -> Result<(TcpStream, FrameReader<TcpStream>), StreamError> {
    let stream = connect(peer, cfg.connect_timeout)?;
    let _ = stream.set_nodelay(true);
    // A peer that stops reading must not block the sender (and the guest's output) for TCP's
    // own quarter of an hour: a write stuck this long fails the stream. The HelloAck must come
    // within the same time (the peer checks its disks first).
    stream
        .set_write_timeout(Some(cfg.ack_timeout))
        .map_err(WireError::from)?;
    stream
        .set_read_timeout(Some(cfg.ack_timeout.max(Duration::from_secs(10))))
        .map_err(WireError::from)?;
    *lock(&s.conn) = stream.try_clone().ok();
    if s.stop_requested().is_some() {
        return Err(StreamError::Ended("stopped before the Hello".into()));
    }
    let mut out = BufWriter::new(stream.try_clone().map_err(WireError::from)?);
    let mut reader = FrameReader::new(stream.try_clone().map_err(WireError::from)?);
    let memory_bytes = crate::memory::total_size(vm.memory());
    let mut disk_sizes = Vec::new();
    for d in vm.disks() {
        let size = std::fs::metadata(&d.path)
            .map_err(|e| {
                WireError::Io(std::io::Error::other(format!("{}: {e}", d.path.display())))
            })?
            .len();
        disk_sizes.push(size);
    }
    wire::write_frame(
        &mut out,
        cfg.vm_id,
        0,
        &Frame::Hello(Hello {
            name: cfg.name.clone(),
            generation: [0; 16],
            stream_id: cfg.stream_id,
            memory_bytes,
            disk_sizes,
        }),
    )?;
    out.flush().map_err(WireError::from)?;
    match reader.next_owned()? {
        Some((_, Frame::HelloAck(_))) => {}
        Some((_, Frame::Abort { reason })) => return Err(StreamError::Refused(reason)),
        Some((h, _)) => return Err(StreamError::BadHelloAnswer(h.kind.to_string())),
        None => return Err(StreamError::Closed),
    }
    // From here reads wait as long as they must (the ack reader); writes stay bounded.
    stream.set_read_timeout(None).map_err(WireError::from)?;
    Ok((stream, reader))
}

/// Sends `frame` (Abort or End) and waits for the peer's CloseAck. Stopped (and the caller
/// releases) when it came; Held when not.
fn deliberate_end<W: Write>(
    out: &mut W,
    cfg: &ProtectConfig,
    epoch: u64,
    s: &Shared,
    frame: Frame<'_>,
) -> (StreamState, Option<String>) {
    let what = frame.kind();
    s.set_state(StreamState::Ending, None);
    let sent = wire::write_frame(out, cfg.vm_id, epoch, &frame)
        .and_then(|_| out.flush().map_err(WireError::from));
    if let Err(e) = sent {
        return (
            StreamState::Held,
            Some(format!("sending {what} to the peer: {e}")),
        );
    }
    let deadline = Instant::now() + cfg.end_timeout;
    let mut acked = lock(&s.close_acked);
    while !*acked {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || lock(&s.ack_error).is_some() {
            break;
        }
        acked = s
            .close_cv
            .wait_timeout(acked, left.min(Duration::from_millis(50)))
            .unwrap_or_else(|p| p.into_inner())
            .0;
    }
    if *acked {
        (StreamState::Stopped, None)
    } else {
        let why = lock(&s.ack_error)
            .clone()
            .unwrap_or_else(|| format!("no answer within {:?}", cfg.end_timeout));
        (
            StreamState::Held,
            Some(format!("the peer did not confirm the {what}: {why}")),
        )
    }
}

fn connect(peer: &str, timeout: Duration) -> Result<TcpStream, StreamError> {
    let err = |source| StreamError::Connect {
        peer: peer.to_string(),
        source,
    };
    let mut last = std::io::Error::other("no address");
    for addr in peer.to_socket_addrs().map_err(err)? {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    Err(err(last))
}

/// Reads acks until the stream ends; each releases its epoch's output.
fn spawn_ack_reader(mut reader: FrameReader<TcpStream>, vm: Vm, s: Arc<Shared>) -> JoinHandle<()> {
    std::thread::spawn(move || loop {
        let why = match reader.next_frame() {
            Ok(Some((h, Frame::Ack))) if h.epoch > s.committed_sent.load(Ordering::SeqCst) => {
                format!("the peer acked epoch {}, which was not sent", h.epoch)
            }
            Ok(Some((h, Frame::Ack))) => {
                let released: usize = vm.net_outputs().iter().map(|n| n.commit(h.epoch)).sum();
                let prev = s.acked.fetch_max(h.epoch, Ordering::SeqCst);
                if h.epoch > prev {
                    let stream_id = {
                        let mut st = lock(&s.status);
                        st.acked = h.epoch;
                        st.stream_id
                    };
                    {
                        let mut c = lock(&s.counters);
                        c.last_ack = Some(Instant::now());
                        while c.unacked.front().is_some_and(|(e, _)| *e <= h.epoch) {
                            c.unacked.pop_front();
                        }
                    }
                    s.events.publish(Event::Acked {
                        stream_id,
                        epoch: h.epoch,
                    });
                }
                log::trace!("epoch {} acked, {released} frames released", h.epoch);
                continue;
            }
            Ok(Some((_, Frame::CloseAck { reason }))) => {
                log::info!("replication: the peer confirmed the end ({reason})");
                *lock(&s.close_acked) = true;
                s.close_cv.notify_all();
                return;
            }
            Ok(Some((_, Frame::Abort { reason }))) => format!("the peer gave up: {reason}"),
            Ok(Some((h, _))) => format!("unexpected {} frame from the peer", h.kind),
            Ok(None) => "the peer closed the connection".to_string(),
            Err(e) => e.to_string(),
        };
        *lock(&s.ack_error) = Some(why);
        s.close_cv.notify_all();
        return;
    })
}

fn stream_epochs<W: Write>(
    ckpt: &mut Checkpointer,
    out: &mut W,
    cfg: &ProtectConfig,
    s: &Arc<Shared>,
) -> Result<(), StreamError> {
    let check = |s: &Shared| -> Result<(), StreamError> {
        if s.stopping.load(Ordering::SeqCst) {
            return Err(StreamError::Ended("stop requested".into()));
        }
        if let Some(e) = lock(&s.ack_error).clone() {
            return Err(StreamError::Peer(e));
        }
        Ok(())
    };
    // Epoch 1: the full copy while the guest runs, then its checkpoint.
    lock(&s.status).epoch = 1;
    s.set_state(StreamState::Syncing, None);
    let t0 = Instant::now();
    lock(&s.status).sync_total_bytes = ckpt.full_copy_bytes();
    let mut digest = EpochDigest::new();
    let mut sent = 0u64;
    let (pages, disk_bytes) = ckpt.full_copy(&s.scanned, |item| {
        check(s).map_err(|e| CheckpointError::Sink(e.to_string()))?;
        let frame = match &item {
            CopyItem::Pages(numbers, data) => pages_frame(numbers, data),
            CopyItem::Disk(op) => disk_frame(op),
        };
        send(out, cfg.vm_id, 1, &mut digest, &mut sent, &frame)
            .map_err(|e| CheckpointError::Sink(e.to_string()))
    })?;
    {
        let mut st = lock(&s.status);
        st.full_copy_pages = pages;
        st.full_copy_ms = t0.elapsed().as_millis() as u64;
        st.bytes_sent += pages * crate::memory::PAGE_SIZE as u64 + disk_bytes;
    }
    let mut tcp = TcpProgress::new(lock(&s.conn).as_ref().and_then(|c| c.try_clone().ok()));
    loop {
        check(s)?;
        if ckpt.vm().has_ended() {
            // The guest reset or powered off: the machine says how the stream ends (Abort or
            // End); until then no checkpoint of a guest that is gone.
            std::thread::sleep(Duration::from_millis(2));
            continue;
        }
        let hash = lock(&s.verify_at).is_some_and(|v| v == ckpt.epoch());
        let mut cap = ckpt.checkpoint(hash)?;
        if let Some(h) = cap.hashes.take() {
            *lock(&s.verify_at) = None;
            match h {
                Ok(c) => {
                    let shared = Arc::clone(s);
                    c.finish_in_background(move |h| lock(&shared.status).verify = Some(h));
                }
                Err(e) => log::error!("replication: verify: {e}"),
            }
        }
        let e = cap.epoch;
        send_epoch(out, cfg.vm_id, cap, digest, &mut sent, s)?;
        digest = EpochDigest::new();
        let deadline = Instant::now() + cfg.epoch;
        // Wait out the epoch, and longer while too many epochs wait for their ack.
        loop {
            check(s)?;
            let acked = s.acked.load(Ordering::SeqCst);
            if acked >= 1 && lock(&s.status).state == StreamState::Syncing {
                s.set_state(StreamState::Protected, None);
            }
            let (outstanding, oldest) = {
                let c = lock(&s.counters);
                (c.unacked.len() as u64, c.unacked.front().copied())
            };
            if let Some((oldest_epoch, sent_at)) = oldest {
                let limit = if oldest_epoch == 1 {
                    cfg.first_ack_timeout
                } else {
                    cfg.ack_timeout
                };
                // Silent: no ack, and TCP delivered nothing of what waits in its queue, for
                // `limit`. A peer that has taken every byte and acks nothing is given ten times
                // as long (it may be applying a big epoch), then counts as hung.
                let progress = tcp.last_progress(sent_at);
                if progress.elapsed() > limit || sent_at.elapsed() > limit * 10 {
                    return Err(StreamError::AckTimeout(limit));
                }
            }
            if Instant::now() >= deadline && outstanding < cfg.max_unacked {
                break;
            }
            std::thread::sleep(Duration::from_millis(2).min(cfg.epoch));
        }
        lock(&s.status).epoch = ckpt.epoch();
        log::trace!("epoch {e} sent");
    }
}

/// Whether TCP is still delivering what the stream queued: the bytes waiting in the socket's
/// send queue (not yet acknowledged by the peer's kernel) going down, or none left.
struct TcpProgress {
    conn: Option<TcpStream>,
    last_outq: Option<u32>,
    last_progress: Option<Instant>,
}

impl TcpProgress {
    fn new(conn: Option<TcpStream>) -> TcpProgress {
        TcpProgress {
            conn,
            last_outq: None,
            last_progress: None,
        }
    }

    /// When TCP last made progress (at least `since`).
    fn last_progress(&mut self, since: Instant) -> Instant {
        if let Some(q) = self.conn.as_ref().and_then(outq) {
            let moved = self.last_outq.is_some_and(|last| q < last);
            if moved || q == 0 {
                self.last_progress = Some(Instant::now());
            }
            self.last_outq = Some(q);
        }
        self.last_progress.map_or(since, |p| p.max(since))
    }
}

/// Bytes in `conn`'s send queue that the peer has not acknowledged (SIOCOUTQ).
fn outq(conn: &TcpStream) -> Option<u32> {
    use std::os::fd::AsRawFd;
    let mut n: libc::c_int = 0;
    // SAFETY: SIOCOUTQ writes one int through the pointer, which points at `n`, alive for the
    // call; the fd is the open socket `conn` owns.
    let r = unsafe { libc::ioctl(conn.as_raw_fd(), libc::TIOCOUTQ, &mut n as *mut libc::c_int) };
    (r == 0).then(|| n.max(0) as u32)
}

fn pages_frame<'a>(numbers: &'a [u64], data: &'a [u8]) -> Frame<'a> {
    Frame::Pages(Pages {
        pages: numbers.into(),
        data: data.into(),
    })
}

fn disk_frame(op: &DiskOp) -> Frame<'_> {
    Frame::Disk(Disk {
        disk: op.disk,
        sector: op.sector,
        action: match op.kind {
            DiskChangeKind::Write => DiskAction::Write(op.data.as_slice().into()),
            // A flush is no disk op on the wire (it is the Commit's flag); never staged.
            DiskChangeKind::Discard | DiskChangeKind::Flush => DiskAction::Discard(op.len as u32),
        },
    })
}

fn send<W: Write>(
    out: &mut W,
    vm_id: u64,
    epoch: u64,
    digest: &mut EpochDigest,
    sent: &mut u64,
    frame: &Frame<'_>,
) -> Result<(), StreamError> {
    let sha = wire::write_frame(out, vm_id, epoch, frame)?;
    if !digest.add(&sha) {
        return Err(WireError::Io(std::io::Error::other(
            "more than u32::MAX frames in an epoch",
        ))
        .into());
    }
    *sent += 1;
    Ok(())
}

/// The rest of an epoch after its checkpoint: pages, disk changes, state, commit.
fn send_epoch<W: Write>(
    out: &mut W,
    vm_id: u64,
    cap: EpochCapture,
    mut digest: EpochDigest,
    sent: &mut u64,
    s: &Shared,
) -> Result<(), StreamError> {
    let e = cap.epoch;
    for (i, numbers) in cap.pages.pages.chunks(PAGES_PER_FRAME).enumerate() {
        let start = i * PAGES_PER_FRAME * crate::memory::PAGE_SIZE;
        let data = &cap.pages.data[start..start + numbers.len() * crate::memory::PAGE_SIZE];
        send(
            out,
            vm_id,
            e,
            &mut digest,
            sent,
            &pages_frame(numbers, data),
        )?;
    }
    let mut disk_bytes = 0u64;
    for op in &cap.disk {
        // Large writes go in pieces a frame can hold.
        for piece in split_disk_op(op) {
            disk_bytes += piece.data.len() as u64;
            send(out, vm_id, e, &mut digest, sent, &disk_frame(&piece))?;
        }
    }
    send(
        out,
        vm_id,
        e,
        &mut digest,
        sent,
        &Frame::State(cap.state.as_slice().into()),
    )?;
    let Commit { frames, digest, .. } = digest.commit();
    let flags = if cap.flush { COMMIT_FLUSH } else { 0 };
    // Recorded before the Commit leaves: a fast peer's Ack must find it sent.
    s.committed_sent.store(e, Ordering::SeqCst);
    lock(&s.counters).unacked.push_back((e, Instant::now()));
    wire::write_frame(
        out,
        vm_id,
        e,
        &Frame::Commit(Commit {
            frames,
            digest,
            flags,
        }),
    )?;
    out.flush().map_err(WireError::from)?;
    let bytes = cap.pages.data.len() as u64 + disk_bytes + cap.state.len() as u64;
    let pause_us = cap.pause.as_micros().min(u128::from(u32::MAX)) as u32;
    {
        let mut c = lock(&s.counters);
        if c.pauses.len() == PAUSE_WINDOW {
            c.pauses.pop_front();
        }
        c.pauses.push_back(pause_us);
        c.epoch_bytes += bytes;
    }
    let mut st = lock(&s.status);
    st.last_pause_us = u64::from(pause_us);
    st.max_pause_us = st.max_pause_us.max(st.last_pause_us);
    st.bytes_sent += bytes;
    st.epochs_sent += 1;
    Ok(())
}

/// A disk change cut into pieces of at most 16 MiB (a frame holds 64 MiB).
fn split_disk_op(op: &DiskOp) -> Vec<DiskOp> {
    const PIECE: u64 = 16 << 20;
    if op.len <= PIECE {
        return vec![op.clone()];
    }
    let mut out = Vec::new();
    let mut off = 0u64;
    while off < op.len {
        let len = PIECE.min(op.len - off);
        out.push(DiskOp {
            disk: op.disk,
            kind: op.kind,
            sector: op.sector + off / 512,
            len,
            data: match op.kind {
                DiskChangeKind::Write => op.data[off as usize..(off + len) as usize].to_vec(),
                DiskChangeKind::Discard | DiskChangeKind::Flush => Vec::new(),
            },
        });
        off += len;
    }
    out
}
