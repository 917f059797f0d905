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
//!
//!  protected --hand_over--> handing over: the last checkpoint leaves the guest paused,
//!   |                        its Ack releases its output, then Handover
//!   +-- CloseAck --> handed over (the engine ends; the peer resumes the VM)
//!   +-- no Ack or no CloseAck --> held, guest paused (`release` resumes it)
//! ```
//!
//! A switchover that fails after the Handover went out is ambiguous: the peer may have taken
//! it (then it refuses to mark its copy stale, and runs the VM) or not. The guest stays paused
//! and held, and the supervisor settles it as for any held stream.
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
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::checkpoint::{self, CheckpointError};
use super::timings::Timings;
use super::wire::WireError;
use crate::events::{Event, Events, StreamState};
use crate::sync::lock;
use crate::vm::Vm;

mod compress;
mod sender;
use compress::{PageCompressor, PageTally};
use sender::run;

/// Pages per Pages frame of an epoch (1 MiB of data).
const PAGES_PER_FRAME: usize = 256;
/// The socket's send buffer in user space.
const SEND_BUFFER: usize = 1 << 20;

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
    /// Over the last `timings::WINDOW` checkpoints.
    pub pause_p50_us: u64,
    pub pause_p99_us: u64,
    /// From a Commit leaving to its Ack (the peer's apply and fdatasync, and the link), over
    /// the last `timings::WINDOW` acks: with the wait for the epoch's end, what each piece of
    /// the guest's output waits before it is released.
    #[serde(default)]
    pub ack_p50_us: u64,
    #[serde(default)]
    pub ack_p99_us: u64,
    pub full_copy_pages: u64,
    pub full_copy_ms: u64,
    /// The first copy's disk data: bytes sent, and bytes skipped because the peer's chunk
    /// hashes said it held them already (replication/chunk_sums.rs); and how long the peer
    /// took to hash its disks before the copy began.
    #[serde(default)]
    pub full_copy_disk_bytes: u64,
    #[serde(default)]
    pub full_copy_disk_same_bytes: u64,
    #[serde(default)]
    pub peer_hash_ms: u64,
    /// The stream waits for the peer's chunk hashes (state `syncing`, nothing copied yet).
    #[serde(default)]
    pub peer_hashing: bool,
    /// The first copy's progress: bytes of memory and disks read so far, of all.
    pub sync_scanned_bytes: u64,
    pub sync_total_bytes: u64,
    pub bytes_sent: u64,
    /// Page data given to the stream, and what it took on the wire (LZ4 where it paid).
    #[serde(default)]
    pub page_bytes: u64,
    #[serde(default)]
    pub page_wire_bytes: u64,
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
    #[error("the peer's chunk hashes of its disks: {0}")]
    BadDiskSums(String),
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
    /// A planned switchover: a last checkpoint with the guest left paused, its Ack, then
    /// Handover and the peer's CloseAck.
    Handover(String),
}

#[derive(Default)]
struct Counters {
    pauses: Timings,
    /// Commit sent -> Ack received.
    acks: Timings,
    epoch_bytes: u64,
    /// When each unacked Commit went out.
    unacked: VecDeque<(u64, Instant)>,
    last_ack: Option<Instant>,
}

struct Shared {
    status: Mutex<ProtectStatus>,
    counters: Mutex<Counters>,
    /// The stream thread's (only it locks it, also while a send blocks: the status reads
    /// the two counters below instead).
    compressor: Mutex<PageCompressor>,
    pages: PageTally,
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
    /// A switchover paused the guest and did not complete: `release` resumes it.
    handover_paused: AtomicBool,
    events: Events,
}

impl Shared {
    fn new(state: StreamState, peer: &str, stream_id: u64, events: Events) -> Shared {
        Shared {
            status: Mutex::new(ProtectStatus {
                state,
                peer: peer.to_string(),
                stream_id,
                epoch: 0,
                acked: 0,
                lag_epochs: 0,
                lag_ms: 0,
                last_ack_ms_ago: None,
                last_pause_us: 0,
                max_pause_us: 0,
                pause_p50_us: 0,
                pause_p99_us: 0,
                ack_p50_us: 0,
                ack_p99_us: 0,
                full_copy_pages: 0,
                full_copy_ms: 0,
                full_copy_disk_bytes: 0,
                full_copy_disk_same_bytes: 0,
                peer_hash_ms: 0,
                peer_hashing: false,
                sync_scanned_bytes: 0,
                sync_total_bytes: 0,
                bytes_sent: 0,
                page_bytes: 0,
                page_wire_bytes: 0,
                epochs_sent: 0,
                bytes_per_epoch: 0,
                error: None,
                verify: None,
            }),
            counters: Mutex::default(),
            compressor: Mutex::default(),
            pages: PageTally::default(),
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
            handover_paused: AtomicBool::new(false),
            events,
        }
    }

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
        let shared = Arc::new(Shared::new(
            StreamState::Connecting,
            peer,
            cfg.stream_id,
            cfg.events.clone(),
        ));
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
            shared: Arc::new(Shared::new(StreamState::Held, peer, 0, events)),
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
        st.pause_p50_us = c.pauses.percentile_us(50);
        st.pause_p99_us = c.pauses.percentile_us(99);
        st.ack_p50_us = c.acks.percentile_us(50);
        st.ack_p99_us = c.acks.percentile_us(99);
        st.bytes_per_epoch = c.epoch_bytes.checked_div(st.epochs_sent).unwrap_or(0);
        st.sync_scanned_bytes = self.shared.scanned.load(Ordering::Relaxed);
        st.page_bytes = self.shared.pages.raw.load(Ordering::Relaxed);
        st.page_wire_bytes = self.shared.pages.wire.load(Ordering::Relaxed);
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

    /// Starts a planned switchover (only from `Protected`): the stream thread takes the last
    /// checkpoint with the guest left paused, waits for its ack and sends Handover; `state()`
    /// then becomes `HandedOver` (end the VM) or `Held` (the guest paused until `release`).
    /// Returns at once; the Protection stays where it is meanwhile (its status says
    /// `HandingOver`, a new `protect` is refused). A stream in another state is left alone and
    /// Err says which.
    pub fn begin_handover(&self, reason: &str) -> Result<(), String> {
        let state = self.state();
        if state != StreamState::Protected || !self.is_active() {
            return Err(format!(
                "the stream is {state:?}, not protected: a switchover needs the peer in sync"
            ));
        }
        {
            let mut stop = lock(&self.shared.stop);
            if stop.is_some() {
                return Err("the stream is being stopped".into());
            }
            *stop = Some(StopKind::Handover(reason.to_string()));
        }
        self.shared.stopping.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Whether the stream thread has ended (after `begin_handover`: the switchover is over,
    /// one way or the other).
    pub fn thread_done(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    /// The supervisor's decision: the output may flow (the peer confirmed its copy is stale,
    /// or it is dead). A stream still running is cut first, without telling the peer. A guest
    /// a failed switchover left paused runs again.
    pub fn release(mut self) -> ProtectStatus {
        self.finish(StopKind::Cut);
        checkpoint::release(&self.vm);
        if self.shared.handover_paused.swap(false, Ordering::SeqCst) {
            if let Err(e) = self.vm.resume() {
                log::error!("replication: resuming the guest a switchover paused: {e}");
            }
        }
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
