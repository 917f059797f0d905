//! The stream thread of a protected VM: connect, introduce the VM (Hello), the full copy,
//! then one checkpoint after another (`send_epoch`), the ack reader that releases each
//! committed epoch's output, the deliberate end (Abort or End, then the CloseAck), and the
//! planned switchover (`hand_over`).

use crate::events::{Event, StreamState};
use crate::replication::checkpoint::{self, CheckpointError, Checkpointer, CopyItem, EpochCapture};
use crate::replication::chunk_sums::PeerSums;
use crate::replication::liveness::{spawn_keepalive, unacked_bytes, FrameOut, HeardTeller};
use crate::replication::replica::DiskOp;
use crate::replication::wire::{
    self, Commit, Disk, DiskAction, EpochDigest, Frame, FrameReader, Hello, WireError, COMMIT_FLUSH,
};
use crate::sync::lock;
use crate::virtio::block::DiskChangeKind;
use crate::vm::Vm;
use std::io::{BufWriter, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::*;

/// The epoch sender. Returns the final state and why.
pub(super) fn run(
    vm: &Vm,
    peer: &str,
    cfg: &ProtectConfig,
    s: &Arc<Shared>,
) -> (StreamState, Option<String>) {
    let (stream, reader, peer_sums) = match introduce(vm, peer, cfg, s) {
        Ok(x) => x,
        // Asked to stop before the copy began: nothing was held, nothing fails.
        Err(StreamError::Ended(_)) if s.stop_requested().is_some() => {
            return (StreamState::Stopped, None)
        }
        Err(e) => return (StreamState::Failed, Some(crate::error_chain(&e))),
    };
    let out = match stream.try_clone() {
        Ok(c) => Arc::new(FrameOut::new(BufWriter::with_capacity(SEND_BUFFER, c))),
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
    // The peer hears from this side while a checkpoint pauses a busy guest, or the stream
    // waits for acks: it would otherwise count the silence against this node. Not while this
    // stream's thread is stuck.
    let hold = {
        let (out, s) = (Arc::clone(&out), Arc::clone(s));
        let mut scanned = 0;
        move |now| {
            // A full copy scanning a long run of zero pages sends nothing, yet it works.
            let n = s.scanned.load(Ordering::Relaxed);
            if n != scanned {
                scanned = n;
                out.working();
            }
            out.stalled(now)
        }
    };
    let conn = stream.try_clone().ok();
    let keepalive = match spawn_keepalive(Arc::clone(&out), cfg.vm_id, conn, hold, || {}) {
        Ok(k) => Some(k),
        Err(e) => {
            // Protected all the same, as before keepalives: only a long silence may now read
            // as a dead node.
            log::warn!("replication: no keepalive thread: {e}");
            None
        }
    };
    let out = &*out;
    let result = stream_epochs(&mut ckpt, out, cfg, s, &peer_sums);
    if let Some(StopKind::Handover(reason)) = s.stop_requested() {
        let outcome = hand_over(&mut ckpt, out, cfg, s, reason);
        ckpt.stop_capture();
        // Shut first: a keepalive blocked in a write returns, and its thread can be joined.
        let _ = stream.shutdown(Shutdown::Both);
        drop(keepalive);
        let _ = acks.join();
        return outcome;
    }
    ckpt.stop_capture();
    let gating = ckpt.gating();
    let outcome = match (result, s.stop_requested()) {
        // A deliberate end: tell the peer and wait for its word.
        (_, Some(StopKind::Abort(reason))) => {
            deliberate_end(out, cfg, ckpt.epoch(), s, Frame::Abort { reason })
        }
        (_, Some(StopKind::End(reason))) => {
            deliberate_end(out, cfg, ckpt.epoch(), s, Frame::End { reason })
        }
        (_, Some(StopKind::Cut)) => (StreamState::Stopped, None),
        // Taken care of above.
        (_, Some(StopKind::Handover(_))) => (StreamState::Held, None),
        (Ok(()), None) => (StreamState::Stopped, None),
        (Err(e), None) => {
            let e = crate::error_chain(&e);
            // The peer may be fine (a transient fault): tell it, so it can mark its copy
            // stale and its supervisor can say so, but keep holding whatever it answers.
            let reason = format!("primary stops: {e}");
            let _ = out.close(cfg.vm_id, ckpt.epoch(), &Frame::Abort { reason });
            if gating {
                (StreamState::Held, Some(e))
            } else {
                // Nothing was held yet: the output already flows.
                (StreamState::Failed, Some(e))
            }
        }
    };
    let _ = stream.shutdown(Shutdown::Both);
    drop(keepalive);
    let _ = acks.join();
    if outcome.0 == StreamState::Stopped && !matches!(s.stop_requested(), Some(StopKind::Cut)) {
        checkpoint::release(vm);
    }
    outcome
}

/// Connects, sends the Hello, reads the HelloAck and then the peer's chunk hashes of its disks
/// (each read bounded by the ack timeout; the peer's keepalives show it is still hashing).
fn introduce(
    vm: &Vm,
    peer: &str,
    cfg: &ProtectConfig,
    s: &Shared,
) -> Result<(TcpStream, FrameReader<TcpStream>, PeerSums), StreamError> {
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
    let mut sums = PeerSums::expect(&disk_sizes);
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
    // The peer hashes its disks now: the stream is under way (output flows, as in the copy).
    let t0 = Instant::now();
    lock(&s.status).peer_hashing = true;
    s.set_state(StreamState::Syncing, None);
    while !sums.complete() {
        if let Some(kind) = s.stop_requested() {
            // Told, so the peer's copy is stale (or discarded) at once; no answer awaited:
            // nothing was held here. A cut tells nothing (its connection is shut already).
            let frame = match kind {
                StopKind::End(reason) => Some(Frame::End { reason }),
                StopKind::Abort(reason) | StopKind::Handover(reason) => {
                    Some(Frame::Abort { reason })
                }
                StopKind::Cut => None,
            };
            if let Some(frame) = frame {
                let _ = wire::write_frame(&mut out, cfg.vm_id, 0, &frame);
                let _ = out.flush();
            }
            return Err(StreamError::Ended(
                "stopped while the peer hashed its disks".into(),
            ));
        }
        match reader.next_owned()? {
            Some((_, Frame::Keepalive)) => {}
            Some((_, Frame::DiskSums(d))) => sums.add(d).map_err(StreamError::BadDiskSums)?,
            Some((_, Frame::Abort { reason })) => return Err(StreamError::Refused(reason)),
            Some((h, _)) => {
                return Err(StreamError::BadDiskSums(format!(
                    "a {} frame while they came",
                    h.kind
                )))
            }
            None => return Err(StreamError::Closed),
        }
    }
    {
        let mut st = lock(&s.status);
        st.peer_hashing = false;
        st.peer_hash_ms = t0.elapsed().as_millis() as u64;
    }
    // From here reads wait as long as they must (the ack reader); writes stay bounded.
    stream.set_read_timeout(None).map_err(WireError::from)?;
    Ok((stream, reader, sums))
}

/// The planned switchover, after `stream_epochs` stopped between checkpoints: the last
/// checkpoint with the guest left paused, its Ack (which releases its output as any epoch's),
/// then Handover and the peer's CloseAck: `HandedOver`. Any failure leaves the stream `Held`
/// with the guest paused (`handover_paused`): the peer may hold the VM or not, and the
/// supervisor finds out (a peer that took the Handover refuses to mark its copy stale).
fn hand_over<W: Write>(
    ckpt: &mut Checkpointer,
    out: &FrameOut<W>,
    cfg: &ProtectConfig,
    s: &Arc<Shared>,
    reason: String,
) -> (StreamState, Option<String>) {
    s.set_state(StreamState::HandingOver, None);
    let held = |why: String| (StreamState::Held, Some(format!("switchover failed: {why}")));
    if let Some(e) = lock(&s.ack_error).clone() {
        return held(format!("the stream had failed: {e}"));
    }
    if ckpt.vm().has_ended() {
        return held("the guest reset or powered off".into());
    }
    let cap = match ckpt.final_checkpoint() {
        Ok(cap) => cap,
        Err(e) => return held(format!("the last checkpoint: {e}")),
    };
    s.handover_paused.store(true, Ordering::SeqCst);
    let epoch = cap.epoch;
    lock(&s.status).epoch = ckpt.epoch();
    let mut sent = 0u64;
    if let Err(e) = send_epoch(out, cfg.vm_id, cap, EpochDigest::new(), &mut sent, s) {
        return held(format!("sending the last epoch {epoch}: {e}"));
    }
    // Its Ack: the peer holds the guest as it is now, paused.
    let deadline = Instant::now() + cfg.ack_timeout;
    while s.acked.load(Ordering::SeqCst) < epoch {
        out.working();
        if let Some(e) = lock(&s.ack_error).clone() {
            return held(format!(
                "waiting for the ack of the last epoch {epoch}: {e}"
            ));
        }
        if Instant::now() >= deadline {
            return held(format!(
                "no ack of the last epoch {epoch} within {:?}",
                cfg.ack_timeout
            ));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    log::info!(
        "replication: the last epoch {epoch} of {} is acked; handing the VM over",
        cfg.name
    );
    match deliberate_end(out, cfg, epoch, s, Frame::Handover { reason }) {
        (StreamState::Stopped, _) => (StreamState::HandedOver, None),
        (state, why) => (state, why.map(|w| format!("switchover failed: {w}"))),
    }
}

/// Sends `frame` (Abort or End) and waits for the peer's CloseAck. Stopped (and the caller
/// releases) when it came; Held when not.
fn deliberate_end<W: Write>(
    out: &FrameOut<W>,
    cfg: &ProtectConfig,
    epoch: u64,
    s: &Shared,
    frame: Frame<'_>,
) -> (StreamState, Option<String>) {
    let what = frame.kind();
    if what != wire::Kind::Handover {
        s.set_state(StreamState::Ending, None);
    }
    if let Err(e) = out.close(cfg.vm_id, epoch, &frame) {
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
    let mut teller = HeardTeller::default();
    std::thread::spawn(move || loop {
        let why = match reader.next_frame() {
            Ok(Some((_, Frame::Keepalive))) => {
                // The peer is there (applying a big epoch, say): its supervisor-visible
                // sign of life between acks.
                let now = Instant::now();
                if let Some(ago) = teller.tell(Some(now), now) {
                    let stream_id = lock(&s.status).stream_id;
                    s.events.publish(Event::Heard {
                        stream_id,
                        ms_ago: ago.as_millis() as u64,
                    });
                }
                continue;
            }
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
                        while let Some(&(e, sent_at)) = c.unacked.front() {
                            if e > h.epoch {
                                break;
                            }
                            c.unacked.pop_front();
                            c.acks.push(sent_at.elapsed());
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
    out: &FrameOut<W>,
    cfg: &ProtectConfig,
    s: &Arc<Shared>,
    peer_sums: &PeerSums,
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
    if lock(&s.status).state != StreamState::Syncing {
        s.set_state(StreamState::Syncing, None);
    }
    let t0 = Instant::now();
    lock(&s.status).sync_total_bytes = ckpt.full_copy_bytes();
    let mut digest = EpochDigest::new();
    let mut sent = 0u64;
    let copied = ckpt.full_copy(&s.scanned, peer_sums, |item| {
        check(s).map_err(|e| CheckpointError::Sink(e.to_string()))?;
        let mut z = lock(&s.compressor);
        let frame = match &item {
            // Nothing to send: the peer holds that chunk (the stop check above still ran).
            CopyItem::Same => return Ok(()),
            CopyItem::Pages(numbers, data) => z.frame(numbers, data, &s.pages),
            CopyItem::Disk(op) => disk_frame(op),
        };
        send(out, cfg.vm_id, 1, &mut digest, &mut sent, &frame)
            .map_err(|e| CheckpointError::Sink(e.to_string()))
    })?;
    {
        let mut st = lock(&s.status);
        st.full_copy_pages = copied.pages;
        st.full_copy_ms = t0.elapsed().as_millis() as u64;
        st.full_copy_disk_bytes = copied.disk_bytes;
        st.full_copy_disk_same_bytes = copied.disk_same_bytes;
        st.bytes_sent += copied.pages * crate::memory::PAGE_SIZE as u64 + copied.disk_bytes;
    }
    log::info!(
        "replication: first copy: {} pages, {} MiB of disk data sent, {} MiB of zeros \
         (discards), {} MiB already on the peer (its chunk hashes took {} ms), in {} ms",
        copied.pages,
        copied.disk_bytes >> 20,
        copied.disk_zero_bytes >> 20,
        copied.disk_same_bytes >> 20,
        lock(&s.status).peer_hash_ms,
        t0.elapsed().as_millis()
    );
    let mut tcp = TcpProgress::new(lock(&s.conn).as_ref().and_then(|c| c.try_clone().ok()));
    loop {
        out.working();
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
            out.working();
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
        if let Some(q) = self.conn.as_ref().and_then(unacked_bytes) {
            let moved = self.last_outq.is_some_and(|last| q < last);
            if moved || q == 0 {
                self.last_progress = Some(Instant::now());
            }
            self.last_outq = Some(q);
        }
        self.last_progress.map_or(since, |p| p.max(since))
    }
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
    out: &FrameOut<W>,
    vm_id: u64,
    epoch: u64,
    digest: &mut EpochDigest,
    sent: &mut u64,
    frame: &Frame<'_>,
) -> Result<(), StreamError> {
    let sha = out.frame(vm_id, epoch, frame)?;
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
    out: &FrameOut<W>,
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
        let mut z = lock(&s.compressor);
        let frame = z.frame(numbers, data, &s.pages);
        send(out, vm_id, e, &mut digest, sent, &frame)?;
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
    out.frame(
        vm_id,
        e,
        &Frame::Commit(Commit {
            frames,
            digest,
            flags,
        }),
    )?;
    out.flush()?;
    let bytes = cap.pages.data.len() as u64 + disk_bytes + cap.state.len() as u64;
    let (last, max) = {
        let mut c = lock(&s.counters);
        c.pauses.push(cap.pause);
        c.epoch_bytes += bytes;
        (c.pauses.last_us(), c.pauses.max_us())
    };
    let mut st = lock(&s.status);
    st.last_pause_us = last;
    st.max_pause_us = max;
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
