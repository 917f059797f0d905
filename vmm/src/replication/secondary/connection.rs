//! One primary's connection to the replica server: the Hello and its checks, then the
//! frames of each epoch staged into the replica, the Commit applied (disks synced first when
//! the guest flushed) and acked; Abort, End and Handover answered with a CloseAck.

use crate::events::Event;
use crate::replication::liveness::{
    spawn_keepalive, FrameOut, HeardClock, HeardTeller, Stamped, BUSY_LIMIT,
};
use crate::replication::replica::{DiskOp, Replica, ReplicaError};
use crate::replication::sequence::{SequenceChecker, Step};
use crate::replication::wire::{
    self, DiskAction, Frame, FrameReader, HelloAck, WireError, COMMIT_FLUSH,
};
use crate::replication::{chunk_sums, compat};
use crate::state::snapshot::Snapshot;
use crate::sync::lock;
use crate::virtio::block::{DiskChangeKind, RawFile};
use std::io::{BufWriter, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;

pub(super) fn accept_loop(listener: &TcpListener, s: &Arc<Shared>) {
    for conn in listener.incoming() {
        if s.stop.load(Ordering::SeqCst) {
            return;
        }
        let conn = match conn {
            Ok(c) => c,
            Err(e) => {
                log::warn!("replica: accept: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let peer = conn.peer_addr().map(|a| a.to_string()).unwrap_or_default();
        let refusal = {
            let c = lock(&s.copy);
            if s.taking_over.load(Ordering::SeqCst) || c.taken_over {
                Some("this replica was taken over")
            } else if c.handed_over.is_some() {
                // A new stream would mark the handed-over copy stale: the VM is this copy.
                Some("this replica was handed the VM and takes it over")
            } else {
                None
            }
        };
        if let Some(reason) = refusal {
            log::warn!("replica: {peer} connected: refused: {reason}");
            let _ = wire::write_frame(
                &mut &conn,
                0,
                0,
                &Frame::Abort {
                    reason: reason.into(),
                },
            );
            continue;
        }
        // Each connection on its own thread: one that sends garbage, or nothing, never holds
        // up the stream being served, and only a valid Hello takes its place (a primary that
        // starts a new stream while its old connection is still half open).
        let s2 = Arc::clone(s);
        let spawned = std::thread::Builder::new()
            .name("replica-conn".into())
            .spawn(move || connection(conn, peer, &s2));
        if let Err(e) = spawned {
            log::error!("replica: no thread for a connection: {e}");
        }
    }
}

/// One connection: its Hello first (within `HELLO_TIMEOUT`), then it becomes the stream
/// served, cutting the one before.
fn connection(conn: TcpStream, peer: String, s: &Shared) {
    let end = serve(conn, &peer, s);
    let mut st = lock(&s.status);
    match end {
        Ok(Served::Stream) => log::info!("replica: {peer} closed the stream"),
        Ok(Served::Preempted) => log::info!("replica: the stream from {peer} was replaced"),
        Err(Refusal::BeforeHello(e)) => {
            log::warn!("replica: connection from {peer} refused before any stream: {e}");
            return;
        }
        Err(Refusal::Stream(e)) => {
            let e = crate::error_chain(&e);
            log::warn!("replica: stream from {peer} ended: {e}");
            st.last_error = Some(e);
        }
    }
    drop(st);
    s.announce();
}

/// How long a new connection may take to send its Hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// How a connection ended without error.
enum Served {
    Stream,
    /// A newer stream took its place.
    Preempted,
}

/// How a connection ended with one.
enum Refusal {
    /// Before it had introduced a stream: nothing of the served stream or the copy changed.
    BeforeHello(ConnError),
    Stream(ConnError),
}

/// The stream's reader: every byte arriving is a sign of the primary's life.
type Reader = FrameReader<Stamped<TcpStream>>;
/// The stream's writer, shared with its keepalive thread.
type Out = FrameOut<BufWriter<TcpStream>>;

/// Hashes this node's images and sends the hashes (chunk_sums.rs), right after the HelloAck,
/// so the primary's first copy sends only the chunks this copy lacks. The keepalive thread
/// tells the primary this side is still there meanwhile: each chunk read counts as progress
/// on the clock (not stuck), so a disk that takes minutes to read keeps the stream, and a
/// read that hangs stops the keepalives as a hung apply does. A newer connection (this one's
/// primary gave up and came back) stops it, so the new one is not kept waiting for the lock.
fn send_disk_sums(s: &Shared, out: &Out, clock: &HeardClock, vm_id: u64) -> Result<(), ConnError> {
    let t0 = Instant::now();
    // This stream's, as it holds the serving lock (a newer connection counts it up first).
    let generation = s.generation.load(Ordering::SeqCst);
    let mut read = 0u64;
    let mut frames = 0usize;
    for (i, path) in s.cfg.local.disks.iter().enumerate() {
        // Told to the primary too, which would otherwise only see the connection close.
        let failed = |e: &dyn std::fmt::Display| {
            let reason = format!("hashing disk {i} ({}): {e}", path.display());
            let _ = out.frame(
                vm_id,
                0,
                &Frame::Abort {
                    reason: reason.clone(),
                },
            );
            let _ = out.flush();
            ConnError::Refused(reason)
        };
        let file = RawFile::open(path, true).map_err(|e| failed(&e))?;
        let go_on = |n| {
            read += n;
            clock.progress(Instant::now());
            !s.stop.load(Ordering::SeqCst)
                && !s.taking_over.load(Ordering::SeqCst)
                && s.generation.load(Ordering::SeqCst) == generation
        };
        for f in chunk_sums::disk_sums(i as u32, &file, go_on).map_err(|e| failed(&e))? {
            out.frame(vm_id, 0, &Frame::DiskSums(f))?;
            frames += 1;
        }
    }
    out.flush()?;
    log::info!(
        "replica: sent the chunk hashes of {} MiB of disks ({frames} frames) in {} ms",
        read >> 20,
        t0.elapsed().as_millis()
    );
    Ok(())
}

/// Reads the first frame, which must be a Hello this node accepts.
fn read_hello(
    reader: &mut Reader,
    out: &mut BufWriter<TcpStream>,
    checker: &mut SequenceChecker,
    s: &Shared,
) -> Result<(u64, wire::Hello), ConnError> {
    let Some((header, frame)) = reader.next_frame()? else {
        return Err(ConnError::Refused("closed before its Hello".into()));
    };
    if checker.check(&header, &frame)? != Step::Hello {
        return Err(ConnError::Refused("the first frame was not a Hello".into()));
    }
    let Frame::Hello(hello) = frame else {
        return Err(ConnError::Refused("Hello step without a Hello".into()));
    };
    if let Err(reason) = accept_hello(s, &hello) {
        let _ = wire::write_frame(
            out,
            header.vm_id,
            0,
            &Frame::Abort {
                reason: reason.clone(),
            },
        );
        let _ = out.flush();
        return Err(ConnError::Refused(reason));
    }
    Ok((header.vm_id, hello.clone()))
}

/// One primary's stream, until it ends. A fresh replica is built for it and replaces the
/// committed one at its first commit.
fn serve(conn: TcpStream, peer: &str, s: &Shared) -> Result<Served, Refusal> {
    let before = |e: WireError| Refusal::BeforeHello(e.into());
    let _ = conn.set_nodelay(true);
    conn.set_read_timeout(Some(HELLO_TIMEOUT))
        .map_err(|e| before(e.into()))?;
    // A primary that stops reading must not block this side's acks and keepalives (and the
    // end of the stream, which joins the keepalive thread) for TCP's quarter of an hour.
    conn.set_write_timeout(Some(BUSY_LIMIT))
        .map_err(|e| before(e.into()))?;
    let mut out = BufWriter::new(conn.try_clone().map_err(|e| before(e.into()))?);
    let clock = Arc::new(HeardClock::new());
    let mut reader = FrameReader::new(Stamped::new(
        conn.try_clone().map_err(|e| before(e.into()))?,
        Arc::clone(&clock),
    ));
    let mut checker = SequenceChecker::new(None);
    let (vm_id, hello) =
        read_hello(&mut reader, &mut out, &mut checker, s).map_err(Refusal::BeforeHello)?;
    let out = Arc::new(FrameOut::new(out));
    *lock(&s.last_frame) = Some(Instant::now());
    // This connection is the stream now: the one before (if any) is cut, and served no more
    // once we hold the serving lock.
    let generation = {
        let mut cur = lock(&s.conn);
        if let Some((_, old)) = cur.take() {
            let _ = old.shutdown(Shutdown::Both);
        }
        let g = s.generation.fetch_add(1, Ordering::SeqCst) + 1;
        *cur = conn.try_clone().ok().map(|c| (g, c));
        g
    };
    let _serving = lock(&s.serving);
    if s.generation.load(Ordering::SeqCst) != generation {
        return Ok(Served::Preempted);
    }
    conn.set_read_timeout(Some(STREAM_IDLE))
        .map_err(|e| Refusal::Stream(WireError::from(e).into()))?;
    {
        let mut st = lock(&s.status);
        st.connected = true;
        st.peer = peer.to_string();
        st.connections += 1;
    }
    log::info!(
        "replica: primary {peer} connected (stream {:x})",
        hello.stream_id
    );
    let result = stream(s, &mut reader, &out, &clock, &mut checker, vm_id, &hello);
    {
        let mut cur = lock(&s.conn);
        if cur.as_ref().is_some_and(|(g, _)| *g == generation) {
            *cur = None;
            let mut st = lock(&s.status);
            st.connected = false;
            st.receiving_stream_id = 0;
        }
    }
    // Whatever ended the stream, an unfinished epoch is dropped.
    if let Some(r) = lock(&s.copy).replica.as_mut() {
        r.abort_epoch();
    }
    let preempted = s.generation.load(Ordering::SeqCst) != generation;
    match result {
        _ if preempted => Ok(Served::Preempted),
        Ok(()) => Ok(Served::Stream),
        Err(e) => Err(Refusal::Stream(e)),
    }
}

/// The stream after its Hello was accepted: the fresh replica, HelloAck, then epochs.
fn stream(
    s: &Shared,
    reader: &mut Reader,
    out: &Arc<Out>,
    clock: &Arc<HeardClock>,
    checker: &mut SequenceChecker,
    vm_id: u64,
    hello: &wire::Hello,
) -> Result<(), ConnError> {
    let cpuid = if s.cfg.check_cpu {
        // The vCPU count is known only from the state: the feature bits compared do not
        // depend on it.
        Some(compat::host_cpuid(1).map_err(ConnError::Refused)?)
    } else {
        None
    };
    // The replica this stream builds, until its first commit makes it the one.
    let mut fresh = Some(
        Replica::new(hello.memory_bytes >> 20)?
            .with_local(s.cfg.local.clone())
            .with_disk_sizes(&hello.disk_sizes)
            .with_host_cpuid(cpuid),
    );
    let stream_id = hello.stream_id;
    // A connection accepted just before a Handover on the served stream: the handed-over copy
    // is the VM, never made stale by a newer stream.
    if lock(&s.copy).handed_over.is_some() {
        return Err(ConnError::Refused(
            "this replica was handed the VM and takes it over".into(),
        ));
    }
    // From now on the primary's output belongs to this stream.
    s.mark_stale("a new replication stream started", false);
    {
        let mut st = lock(&s.status);
        st.name = hello.name.clone();
        st.memory_mib = hello.memory_bytes >> 20;
        st.receiving_stream_id = stream_id;
    }
    s.announce();
    out.frame(
        vm_id,
        0,
        &Frame::HelloAck(HelloAck {
            last_committed_epoch: 0,
            generation: [0; 16],
            resume_ok: false,
        }),
    )?;
    out.flush()?;
    checker.start_at(0)?;
    // Keepalives to the primary while this side applies a big epoch, and the supervisor told
    // when the primary was last heard (busy with its frames counts: the silence is ours).
    // Not while this side has been busy with one frame too long (hung: the primary must see
    // it).
    let _keepalive = {
        let (clock, events, mut teller) = (
            Arc::clone(clock),
            s.cfg.events.clone(),
            HeardTeller::default(),
        );
        let hold = {
            let clock = Arc::clone(&clock);
            move |now| clock.stuck(now)
        };
        let conn = reader.get_ref().get_ref().try_clone().ok();
        let tick = move || {
            let now = Instant::now();
            if let Some(ago) = teller.tell(clock.last_heard(now), now) {
                events.publish(Event::Heard {
                    stream_id,
                    ms_ago: ago.as_millis() as u64,
                });
            }
        };
        match spawn_keepalive(Arc::clone(out), vm_id, conn, hold, tick) {
            Ok(k) => Some(k),
            Err(e) => {
                // Served all the same, as before keepalives (the primary does the same).
                log::warn!("replica: no keepalive thread: {e}");
                None
            }
        }
    };
    send_disk_sums(s, out, clock, vm_id)?;
    loop {
        if s.stop.load(Ordering::SeqCst) || s.taking_over.load(Ordering::SeqCst) {
            return Ok(());
        }
        clock.reading();
        let next = reader.next_frame();
        clock.busy(Instant::now());
        let Some((header, frame)) = next? else {
            return Ok(());
        };
        *lock(&s.last_frame) = Some(Instant::now());
        match checker.check(&header, &frame)? {
            Step::Hello => return Err(ConnError::Refused("a second Hello".into())),
            Step::Keepalive => {}
            Step::Stage(epoch) => {
                // Decompressed before the copy is locked (status and takeover wait on it).
                let plain;
                let frame = match &frame {
                    Frame::PagesLz4(p) => {
                        plain = Frame::Pages(p.to_pages()?);
                        &plain
                    }
                    other => other,
                };
                let mut c = lock(&s.copy);
                let r = match fresh.as_mut() {
                    Some(r) => r,
                    None => c
                        .replica
                        .as_mut()
                        .ok_or_else(|| ConnError::Refused("no replica".into()))?,
                };
                stage(r, epoch, frame)?;
            }
            Step::Commit(epoch) => {
                let started = Instant::now();
                let flush = matches!(&frame, Frame::Commit(c) if c.flags & COMMIT_FLUSH != 0);
                commit(s, &mut fresh, stream_id, epoch, flush)?;
                out.frame(header.vm_id, epoch, &Frame::Ack)?;
                out.flush()?;
                lock(&s.commits).push(started.elapsed());
                s.cfg.events.publish(Event::Committed { stream_id, epoch });
            }
            Step::Abort(reason) => {
                if fresh.is_none() {
                    s.mark_stale(&format!("the primary stopped protecting: {reason}"), false);
                }
                s.announce();
                close_ack(out, header.vm_id, "the copy is marked stale");
                return Err(ConnError::Abort(reason));
            }
            Step::End(reason) => {
                {
                    let mut c = lock(&s.copy);
                    c.replica = None;
                    c.stale = None;
                    c.stream_id = 0;
                }
                log::info!("replica: the VM ended on the primary ({reason}); copy discarded");
                s.announce();
                close_ack(out, header.vm_id, "the copy is discarded");
                return Err(ConnError::End(reason));
            }
            Step::Handover(reason) => {
                let taken = {
                    let mut c = lock(&s.copy);
                    // The checker lets a Handover come only after a commit of this stream,
                    // which made its replica the copy (and cleared any stale mark).
                    let ours = fresh.is_none() && c.stream_id == stream_id && c.stale.is_none();
                    if ours && c.replica.is_some() {
                        c.handed_over = Some(reason.clone());
                        true
                    } else {
                        false
                    }
                };
                if !taken {
                    return Err(ConnError::Refused(
                        "a Handover for a copy this stream does not hold".into(),
                    ));
                }
                log::info!(
                    "replica: the primary handed the VM over at epoch {} ({reason})",
                    checker.last_committed()
                );
                s.announce();
                close_ack(out, header.vm_id, "the copy takes the VM over");
                return Err(ConnError::Handover(reason));
            }
        }
    }
}

fn close_ack(out: &Out, vm_id: u64, what: &str) {
    let _ = out.close(
        vm_id,
        0,
        &Frame::CloseAck {
            reason: what.into(),
        },
    );
}

/// Whether this node takes the stream the Hello announces; the reason when not.
fn accept_hello(s: &Shared, hello: &wire::Hello) -> Result<(), String> {
    if let Some(want) = &s.cfg.expect_name {
        if &hello.name != want {
            return Err(format!("this replica is for VM {want}, not {}", hello.name));
        }
    }
    if !hello.memory_bytes.is_multiple_of(1 << 20) {
        return Err(format!(
            "{} bytes of memory: not whole MiB",
            hello.memory_bytes
        ));
    }
    let host = host_memory_bytes();
    if hello.memory_bytes > host {
        return Err(format!(
            "a {} MiB VM does not fit this node's {} MiB",
            hello.memory_bytes >> 20,
            host >> 20
        ));
    }
    s.cfg.local.check_disks(&hello.disk_sizes)
}

/// Applies a verified epoch: the stream's fresh replica (its first commit replaces the copy
/// held so far) or the copy itself. Disks are synced first when the guest flushed.
fn commit(
    s: &Shared,
    fresh: &mut Option<Replica>,
    stream_id: u64,
    epoch: u64,
    flush: bool,
) -> Result<(), ConnError> {
    let mut c = lock(&s.copy);
    // A (forced) takeover of the old copy runs the VM on these disks now, or is about to: a
    // new stream's first commit must not write under it.
    if c.taken_over || s.taking_over.load(Ordering::SeqCst) {
        return Err(ConnError::Refused(
            "the copy was taken over: this stream cannot commit".into(),
        ));
    }
    if let Some(mut r) = fresh.take() {
        if let Err(e) = r.commit(epoch).and_then(|_| r.flush_disks()) {
            // It may have written part of its disk copy over the files the old replica uses:
            // that one cannot be trusted any more.
            if matches!(e, ReplicaError::Broken(_) | ReplicaError::Disk { .. }) {
                if let Some(old) = c.replica.as_mut() {
                    old.mark_broken(format!("a new stream's first commit failed half way: {e}"));
                }
            }
            return Err(e.into());
        }
        c.replica = Some(r);
        c.stream_id = stream_id;
        c.stale = None;
        drop(c);
        s.announce();
    } else {
        if c.stale.is_some() {
            return Err(ConnError::Refused(
                "the copy was marked stale: this stream cannot go on".into(),
            ));
        }
        let Some(r) = c.replica.as_mut() else {
            return Err(ConnError::Refused("no replica to commit to".into()));
        };
        r.commit(epoch)?;
        if flush {
            r.flush_disks()?;
        }
        if lock(&s.verify_at).is_some_and(|v| v == epoch) {
            *lock(&s.verify_at) = None;
            let paths: Vec<std::path::PathBuf> = s.cfg.local.disks.clone();
            let refs: Vec<&Path> = paths.iter().map(PathBuf::as_path).collect();
            match crate::replication::verify::capture(epoch, r.memory(), &refs) {
                Ok(c) => {
                    let status = Arc::clone(&s.status);
                    c.finish_in_background(move |h| lock(&status).verify = Some(h));
                }
                Err(e) => log::error!("replica: verify: {e}"),
            }
        }
    }
    Ok(())
}

fn stage(r: &mut Replica, epoch: u64, frame: &Frame<'_>) -> Result<(), ConnError> {
    match frame {
        Frame::Pages(p) => r.stage_pages(epoch, &p.pages, &p.data)?,
        // The stream decompresses before it locks the copy; kept for any other caller.
        Frame::PagesLz4(p) => stage(r, epoch, &Frame::Pages(p.to_pages()?))?,
        Frame::Disk(d) => {
            let (kind, len, data) = match &d.action {
                DiskAction::Write(data) => {
                    (DiskChangeKind::Write, data.len() as u64, data.to_vec())
                }
                DiskAction::Discard(n) => (DiskChangeKind::Discard, u64::from(*n), Vec::new()),
            };
            r.stage_disk(
                epoch,
                DiskOp {
                    disk: d.disk,
                    kind,
                    sector: d.sector,
                    len,
                    data,
                },
            )?
        }
        Frame::State(bytes) => {
            let origin = format!("replication stream, epoch {epoch}");
            let snap =
                Snapshot::from_bytes(bytes, Path::new(&origin)).map_err(|e| ConnError::State {
                    epoch,
                    msg: e.to_string(),
                })?;
            r.stage_state(epoch, snap)?
        }
        other => {
            return Err(ConnError::Refused(format!(
                "a {} frame to stage",
                other.kind()
            )))
        }
    }
    Ok(())
}
