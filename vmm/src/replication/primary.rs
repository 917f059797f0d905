//! The primary's replication stream: one thread per protected VM that connects to the peer,
//! introduces the VM, sends epoch 1 (a full copy of memory and disks, then the first
//! checkpoint) and then one checkpoint every `epoch`, and a second thread that reads the
//! peer's acks and releases each committed epoch's network output.
//!
//! At most `max_unacked` epochs are in flight: when the peer falls behind, the next checkpoint
//! waits (the guest keeps running, its output keeps waiting). No ack for `ack_timeout` means
//! the peer is gone: the stream stops and the VM runs unprotected (output flows again). Any
//! error does the same, and says why in `status()`; the VM itself never stops because its
//! replication did.

use std::io::{BufWriter, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::checkpoint::{CheckpointError, Checkpointer, CopyItem, EpochCapture};
use super::replica::DiskOp;
use super::wire::{
    self, Commit, Disk, DiskAction, EpochDigest, Frame, FrameReader, Hello, Pages, WireError,
};
use crate::sync::lock;
use crate::virtio::block::DiskChangeKind;
use crate::vm::Vm;

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
    /// Time from the end of one checkpoint to the start of the next.
    pub epoch: Duration,
    /// Checkpoints sent and not yet acked before the next one waits.
    pub max_unacked: u64,
    /// No ack for this long (with epochs outstanding): the peer is gone.
    pub ack_timeout: Duration,
    pub connect_timeout: Duration,
}

impl ProtectConfig {
    pub fn new(name: &str, vm_id: u64) -> ProtectConfig {
        ProtectConfig {
            name: name.to_string(),
            vm_id,
            epoch: Duration::from_millis(50),
            max_unacked: 4,
            ack_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// Where a protection stream is.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct ProtectStatus {
    /// connecting, full-copy, protected, stopped, failed.
    pub state: String,
    pub peer: String,
    /// The epoch running now on this side.
    pub epoch: u64,
    /// The last epoch the peer holds.
    pub acked: u64,
    pub last_pause_us: u64,
    pub max_pause_us: u64,
    pub full_copy_pages: u64,
    pub full_copy_ms: u64,
    pub bytes_sent: u64,
    /// Why it stopped, when it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
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
    #[error("the peer gave up: {0}")]
    PeerAbort(String),
    #[error("no ack from the peer for {0:?}")]
    AckTimeout(Duration),
    #[error("stopped")]
    Stopped,
}

struct Shared {
    status: Mutex<ProtectStatus>,
    acked: AtomicU64,
    /// The last epoch whose Commit was sent: an ack beyond it is a lie.
    committed_sent: AtomicU64,
    /// The connection, to cut it when stopping (a write blocked on a stuck peer ends).
    conn: Mutex<Option<TcpStream>>,
    stop: AtomicBool,
    /// What the ack reader saw go wrong.
    ack_error: Mutex<Option<String>>,
}

/// A running protection stream; dropping it stops the stream (the VM goes on unprotected).
pub struct Protection {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Protection {
    /// Starts protecting `vm` towards `peer` (`host:port`).
    pub fn start(vm: Vm, peer: &str, cfg: ProtectConfig) -> Protection {
        let shared = Arc::new(Shared {
            status: Mutex::new(ProtectStatus {
                state: "connecting".into(),
                peer: peer.to_string(),
                ..Default::default()
            }),
            acked: AtomicU64::new(0),
            committed_sent: AtomicU64::new(0),
            conn: Mutex::new(None),
            stop: AtomicBool::new(false),
            ack_error: Mutex::new(None),
        });
        let s = Arc::clone(&shared);
        let peer = peer.to_string();
        let thread = std::thread::Builder::new()
            .name(format!("protect-{}", cfg.name))
            .spawn(move || {
                let result = run(&vm, &peer, &cfg, &s);
                let mut st = lock(&s.status);
                match result {
                    Err(StreamError::Stopped) => {
                        log::info!("replication of {} to {peer} stopped", cfg.name);
                        st.state = "stopped".into();
                    }
                    Err(e) => {
                        let e = crate::error_chain(&e);
                        log::error!(
                            "replication of {} to {peer} failed: {e}; running unprotected",
                            cfg.name
                        );
                        st.state = "failed".into();
                        st.error = Some(e);
                    }
                    Ok(()) => st.state = "stopped".into(),
                }
            });
        let thread = match thread {
            Ok(t) => Some(t),
            Err(e) => {
                let mut st = lock(&shared.status);
                st.state = "failed".into();
                st.error = Some(format!("spawning the stream thread: {e}"));
                None
            }
        };
        Protection { shared, thread }
    }

    pub fn status(&self) -> ProtectStatus {
        lock(&self.shared.status).clone()
    }

    /// Whether the stream still runs (connecting, copying or protected).
    pub fn is_active(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Stops the stream and waits for it.
    pub fn stop(mut self) -> ProtectStatus {
        self.halt();
        self.status()
    }

    fn halt(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(c) = lock(&self.shared.conn).as_ref() {
            let _ = c.shutdown(Shutdown::Both);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Protection {
    fn drop(&mut self) {
        self.halt();
    }
}

/// The epoch sender: everything in one function so that every way out unprotects the VM.
fn run(vm: &Vm, peer: &str, cfg: &ProtectConfig, s: &Arc<Shared>) -> Result<(), StreamError> {
    let stream = connect(peer, cfg.connect_timeout)?;
    let _ = stream.set_nodelay(true);
    // A peer that stops reading must not block the sender (and the guest's output) for TCP's
    // own quarter of an hour: a write stuck this long fails the stream.
    stream
        .set_write_timeout(Some(cfg.ack_timeout))
        .map_err(WireError::from)?;
    *lock(&s.conn) = stream.try_clone().ok();
    if s.stop.load(Ordering::SeqCst) {
        return Err(StreamError::Stopped);
    }
    let mut out =
        BufWriter::with_capacity(SEND_BUFFER, stream.try_clone().map_err(WireError::from)?);
    let mut reader = FrameReader::new(stream.try_clone().map_err(WireError::from)?);
    let memory_bytes = crate::memory::total_size(vm.memory());
    wire::write_frame(
        &mut out,
        cfg.vm_id,
        0,
        &Frame::Hello(Hello {
            name: cfg.name.clone(),
            generation: [0; 16],
            memory_bytes,
        }),
    )?;
    out.flush().map_err(WireError::from)?;
    match reader.next_owned()? {
        Some((_, Frame::HelloAck(_))) => {}
        Some((_, Frame::Abort { reason })) => return Err(StreamError::PeerAbort(reason)),
        Some((h, _)) => return Err(StreamError::BadHelloAnswer(h.kind.to_string())),
        None => return Err(StreamError::Closed),
    }

    let mut ckpt = Checkpointer::start(vm.clone())?;
    let acks = spawn_ack_reader(reader, vm.clone(), Arc::clone(s));
    let result = stream_epochs(&mut ckpt, &mut out, cfg, s);
    // Every way out: output flows again and disk changes are no longer recorded.
    ckpt.unprotect();
    if let Err(e) = &result {
        let reason = format!("primary stops: {e}");
        let _ = wire::write_frame(&mut out, cfg.vm_id, ckpt.epoch(), &Frame::Abort { reason });
        let _ = out.flush();
    }
    let _ = stream.shutdown(Shutdown::Both);
    let _ = acks.join();
    result
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
                s.acked.fetch_max(h.epoch, Ordering::SeqCst);
                log::trace!("epoch {} acked, {released} frames released", h.epoch);
                continue;
            }
            Ok(Some((_, Frame::Abort { reason }))) => format!("the peer gave up: {reason}"),
            Ok(Some((h, _))) => format!("unexpected {} frame from the peer", h.kind),
            Ok(None) => "the peer closed the connection".to_string(),
            Err(e) => e.to_string(),
        };
        *lock(&s.ack_error) = Some(why);
        return;
    })
}

fn stream_epochs<W: Write>(
    ckpt: &mut Checkpointer,
    out: &mut W,
    cfg: &ProtectConfig,
    s: &Shared,
) -> Result<(), StreamError> {
    let check = |s: &Shared| -> Result<(), StreamError> {
        if s.stop.load(Ordering::SeqCst) {
            return Err(StreamError::Stopped);
        }
        if let Some(e) = lock(&s.ack_error).clone() {
            return Err(StreamError::PeerAbort(e));
        }
        Ok(())
    };
    // Epoch 1: the full copy while the guest runs, then its checkpoint.
    {
        let mut st = lock(&s.status);
        st.state = "full-copy".into();
        st.epoch = 1;
    }
    let t0 = Instant::now();
    let mut digest = EpochDigest::new();
    let mut sent = 0u64;
    let (pages, _) = ckpt.full_copy(|item| {
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
    }
    // When each Commit went out: the ack timeout counts from the oldest one not acked.
    let mut unacked: std::collections::VecDeque<(u64, Instant)> = Default::default();
    loop {
        check(s)?;
        if ckpt.vm().has_ended() {
            return Err(StreamError::Checkpoint(CheckpointError::Vm(
                crate::vm::VmError::WrongState("ended (the guest reset or powered off)"),
            )));
        }
        let cap = ckpt.checkpoint()?;
        let e = cap.epoch;
        send_epoch(out, cfg.vm_id, cap, digest, &mut sent, s)?;
        s.committed_sent.store(e, Ordering::SeqCst);
        unacked.push_back((e, Instant::now()));
        digest = EpochDigest::new();
        lock(&s.status).state = "protected".into();
        let deadline = Instant::now() + cfg.epoch;
        // Wait out the epoch, and longer while too many epochs wait for their ack.
        loop {
            check(s)?;
            let acked = s.acked.load(Ordering::SeqCst);
            lock(&s.status).acked = acked;
            while unacked.front().is_some_and(|(e, _)| *e <= acked) {
                unacked.pop_front();
            }
            if unacked
                .front()
                .is_some_and(|(_, t)| t.elapsed() > cfg.ack_timeout)
            {
                return Err(StreamError::AckTimeout(cfg.ack_timeout));
            }
            let outstanding = unacked.len() as u64;
            if Instant::now() >= deadline && outstanding < cfg.max_unacked {
                break;
            }
            std::thread::sleep(Duration::from_millis(2).min(cfg.epoch));
        }
        lock(&s.status).epoch = ckpt.epoch();
    }
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
            DiskChangeKind::Discard => DiskAction::Discard(op.len as u32),
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
    for op in &cap.disk {
        // Large writes go in pieces a frame can hold.
        for piece in split_disk_op(op) {
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
    let Commit { frames, digest } = digest.commit();
    wire::write_frame(out, vm_id, e, &Frame::Commit(Commit { frames, digest }))?;
    out.flush().map_err(WireError::from)?;
    let mut st = lock(&s.status);
    st.last_pause_us = cap.pause.as_micros() as u64;
    st.max_pause_us = st.max_pause_us.max(st.last_pause_us);
    st.bytes_sent += cap.pages.data.len() as u64;
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
                DiskChangeKind::Discard => Vec::new(),
            },
        });
        off += len;
    }
    out
}
