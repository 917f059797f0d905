//! The secondary's replication server: listens on the link, takes one primary's stream at a
//! time, checks every frame (`SequenceChecker`), stages each epoch into the `Replica` and
//! applies it at its Commit (syncing the disks first when the guest flushed in that epoch),
//! then acks it. A stream that breaks or lies leaves the replica at its last committed epoch.
//!
//! The copy's life:
//!
//! ```text
//!   empty --first commit of a stream--> ready --Abort / new Hello / mark_stale--> stale
//!     ^                                   |  \                                       |
//!     +---------- End (the VM ended) -----+   +-- takeover --> taken over            |
//!     +-------------------------------------- first commit of a new stream <---------+
//! ```
//!
//! A new connection's Hello starts a fresh replica (a full copy follows) and marks the copy
//! held so far stale: from then on the primary shows the world output of a new stream that
//! copy does not hold. The old copy is still kept until the new one has committed its first
//! epoch (a primary that connects and dies at once must not cost the secondary its disks
//! twice), but it is never taken over without force. Abort (the primary stops protecting) is
//! answered with CloseAck once the copy is marked stale; End (the VM ended) with CloseAck once
//! the copy is discarded: the primary releases its held output only after that answer.
//!
//! `takeover` cuts the stream and hands the replica over to be started (failover); a failed
//! start gives it back and the server serves on.

use std::io::{BufWriter, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::compat::{self, LocalDevices};
use super::replica::{DiskOp, Replica, ReplicaError};
use super::sequence::{SequenceChecker, SequenceError, Step};
use super::wire::{self, DiskAction, Frame, FrameReader, HelloAck, WireError, COMMIT_FLUSH};
use crate::events::{Event, Events, ReplicaState};
use crate::state::snapshot::Snapshot;
use crate::sync::lock;
use crate::virtio::block::DiskChangeKind;

/// Where the replica is.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ReplicaStatus {
    pub listen: String,
    /// The copy: empty, ready, stale, broken, taken_over.
    pub state: ReplicaState,
    /// A primary's stream is being received.
    pub connected: bool,
    pub name: String,
    pub peer: String,
    pub memory_mib: u64,
    pub committed_epoch: u64,
    /// The stream the committed copy came from (0: none).
    pub stream_id: u64,
    /// The stream being received now (0: none).
    pub receiving_stream_id: u64,
    pub connections: u64,
    /// Since the last frame of any stream (None before the first).
    pub last_frame_ms_ago: Option<u64>,
    /// Why the last connection ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Why the copy is stale (behind what the primary went on to show the world): a takeover
    /// needs `force`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stale: Option<String>,
    /// The hashes of memory and disks right after the epoch `verify` asked for was applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<super::verify::EpochHashes>,
}

/// How the server is set up.
#[derive(Clone, Default)]
pub struct ReplicaConfig {
    /// Only streams for this VM name are accepted (None: any).
    pub expect_name: Option<String>,
    /// This node's disks and NICs for the VM (from its own config; never the wire's).
    pub local: LocalDevices,
    /// Check the primary's CPU features against this node's KVM at the first State.
    pub check_cpu: bool,
    pub events: Events,
}

/// A primary sends at least a Commit every epoch; this long without a byte means it is gone
/// (or the link is), and the server is free for the next stream.
const STREAM_IDLE: Duration = Duration::from_secs(30);

/// This node's memory: no replica may be larger (a peer announcing more is refused).
fn host_memory_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(u64::MAX, |kib| kib * 1024)
}

#[derive(Debug, thiserror::Error)]
enum ConnError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error(transparent)]
    Sequence(#[from] SequenceError),
    #[error(transparent)]
    Replica(#[from] ReplicaError),
    #[error("epoch {epoch}: its state: {msg}")]
    State { epoch: u64, msg: String },
    #[error("the primary gave up: {0}")]
    Abort(String),
    #[error("the VM ended on the primary: {0}")]
    End(String),
    #[error("{0}")]
    Refused(String),
}

#[derive(Default)]
struct Copy {
    /// The committed copy (None until a stream committed its first epoch, or after End).
    replica: Option<Replica>,
    stream_id: u64,
    stale: Option<String>,
    taken_over: bool,
}

struct Shared {
    copy: Mutex<Copy>,
    status: Arc<Mutex<ReplicaStatus>>,
    last_frame: Mutex<Option<Instant>>,
    stop: AtomicBool,
    /// Hash the copy right after applying this epoch (a check: `verify`).
    verify_at: Mutex<Option<u64>>,
    /// Set while a takeover has the replica out: new streams are refused.
    taking_over: AtomicBool,
    /// The connection being served (with its generation), to cut it on takeover, on
    /// mark_stale, or when a newer stream takes its place.
    conn: Mutex<Option<(u64, TcpStream)>>,
    /// Counts the streams that took the served slot.
    generation: std::sync::atomic::AtomicU64,
    /// Held by the stream being served: a newer one waits for it to wind down.
    serving: Mutex<()>,
    cfg: ReplicaConfig,
}

impl Shared {
    fn replica_state(&self, c: &Copy) -> ReplicaState {
        match &c.replica {
            _ if c.taken_over => ReplicaState::TakenOver,
            None => ReplicaState::Empty,
            Some(r) if r.is_broken() => ReplicaState::Broken,
            Some(_) if c.stale.is_some() => ReplicaState::Stale,
            Some(_) => ReplicaState::Ready,
        }
    }

    /// Publishes the copy's state (after any change of it or of the connection).
    fn announce(&self) {
        let ev = {
            let c = lock(&self.copy);
            let st = lock(&self.status);
            Event::Replica {
                state: self.replica_state(&c),
                connected: st.connected,
                stream_id: c.stream_id,
                committed_epoch: c
                    .replica
                    .as_ref()
                    .and_then(|r| r.committed_epoch())
                    .unwrap_or(0),
                reason: c.stale.clone(),
            }
        };
        self.cfg.events.publish(ev);
    }

    fn mark_stale(&self, why: &str) -> bool {
        let mut c = lock(&self.copy);
        if c.replica.is_some() && c.stale.is_none() {
            log::warn!("replica: the copy is stale from now on: {why}");
            c.stale = Some(why.to_string());
            true
        } else {
            false
        }
    }
}

/// A listening replica server.
pub struct ReplicaServer {
    shared: Arc<Shared>,
    listener: Option<TcpListener>,
    thread: Option<JoinHandle<()>>,
}

impl ReplicaServer {
    /// Listens on `addr` (`host:port`) and serves primaries one at a time.
    pub fn listen(addr: &str, cfg: ReplicaConfig) -> std::io::Result<ReplicaServer> {
        let listener = TcpListener::bind(addr)?;
        let local = listener.local_addr()?.to_string();
        let shared = Arc::new(Shared {
            copy: Mutex::default(),
            status: Arc::new(Mutex::new(ReplicaStatus {
                listen: local,
                ..Default::default()
            })),
            last_frame: Mutex::new(None),
            verify_at: Mutex::new(None),
            stop: AtomicBool::new(false),
            taking_over: AtomicBool::new(false),
            conn: Mutex::new(None),
            generation: std::sync::atomic::AtomicU64::new(0),
            serving: Mutex::new(()),
            cfg,
        });
        let s = Arc::clone(&shared);
        let l = listener.try_clone()?;
        let thread = std::thread::Builder::new()
            .name("replica-server".into())
            .spawn(move || accept_loop(&l, &s))?;
        shared.announce();
        Ok(ReplicaServer {
            shared,
            listener: Some(listener),
            thread: Some(thread),
        })
    }

    /// The address it listens on (with the port the system chose for port 0).
    pub fn local_addr(&self) -> String {
        lock(&self.shared.status).listen.clone()
    }

    pub fn status(&self) -> ReplicaStatus {
        let mut st = lock(&self.shared.status).clone();
        let c = lock(&self.shared.copy);
        st.state = self.shared.replica_state(&c);
        st.stale = c.stale.clone();
        st.stream_id = c.stream_id;
        st.committed_epoch = 0;
        if let Some(r) = c.replica.as_ref() {
            st.committed_epoch = r.committed_epoch().unwrap_or(0);
            st.memory_mib = r.memory_mib();
        }
        st.last_frame_ms_ago =
            lock(&self.shared.last_frame).map(|t| t.elapsed().as_millis() as u64);
        st
    }

    /// Hashes the copy right after epoch `epoch` is applied; `status().verify` shows it.
    pub fn verify_at(&self, epoch: u64) {
        *lock(&self.shared.verify_at) = Some(epoch);
    }

    /// The supervisor's word that this copy must not be taken over (its primary, reachable
    /// only over the LAN, stopped protecting): the copy becomes stale and the stream being
    /// received, if any, is cut, so no later epoch of it can make the copy current again.
    pub fn mark_stale(&self, why: &str) {
        self.shared.mark_stale(why);
        if let Some((_, c)) = lock(&self.shared.conn).as_ref() {
            let _ = c.shutdown(Shutdown::Both);
        }
        self.shared.announce();
    }

    /// Stops receiving (the current stream is cut, its unfinished epoch dropped) and hands
    /// the replica, as of its last committed epoch, to `start`. Refused, and the server keeps
    /// serving, when nothing is committed, when the copy is stale (unless `force`) or broken.
    /// When `start` fails it gives the replica back: the server keeps it and serves on.
    pub fn takeover<T, E>(
        &self,
        force: bool,
        start: impl FnOnce(Replica) -> Result<T, (E, Box<Replica>)>,
    ) -> Result<T, TakeoverError<E>> {
        let replica = {
            let mut c = lock(&self.shared.copy);
            match &c.replica {
                None => return Err(TakeoverError::Refused(ReplicaError::NothingCommitted)),
                Some(r) if r.is_broken() => {
                    return Err(TakeoverError::Refused(ReplicaError::Broken(
                        r.broken_reason().unwrap_or_default(),
                    )))
                }
                Some(_) => {}
            }
            if let Some(why) = &c.stale {
                if !force {
                    return Err(TakeoverError::Refused(ReplicaError::Stale(why.clone())));
                }
                log::warn!("replica: taking over a stale copy on request ({why})");
            }
            self.shared.taking_over.store(true, Ordering::SeqCst);
            if let Some((_, conn)) = lock(&self.shared.conn).as_ref() {
                let _ = conn.shutdown(Shutdown::Both);
            }
            match c.replica.take() {
                Some(r) => r,
                None => return Err(TakeoverError::Refused(ReplicaError::NothingCommitted)),
            }
        };
        // The stream thread must be out of the replica before it starts (it only touches the
        // copy under the lock, which it no longer finds).
        let mut replica = replica;
        replica.abort_epoch();
        match start(replica) {
            Ok(t) => {
                lock(&self.shared.copy).taken_over = true;
                lock(&self.shared.status).connected = false;
                self.shared.announce();
                Ok(t)
            }
            Err((e, back)) => {
                lock(&self.shared.copy).replica = Some(*back);
                self.shared.taking_over.store(false, Ordering::SeqCst);
                self.shared.announce();
                Err(TakeoverError::Start(e))
            }
        }
    }

    /// Writes the committed copy as a snapshot directory (`havms-vm --restore` can run it).
    pub fn save(&self, dir: &Path) -> Result<(), ReplicaError> {
        lock(&self.shared.copy)
            .replica
            .as_ref()
            .ok_or(ReplicaError::NothingCommitted)?
            .save(dir)
    }

    /// Stops serving; the copy goes with the server.
    pub fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some((_, c)) = lock(&self.shared.conn).as_ref() {
            let _ = c.shutdown(Shutdown::Both);
        }
        // Wake the accept() with a connection of our own.
        if let Some(l) = self.listener.take() {
            if let Ok(a) = l.local_addr() {
                let _ = TcpStream::connect_timeout(&a, Duration::from_secs(1));
            }
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for ReplicaServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Why a takeover did not happen.
#[derive(Debug, thiserror::Error)]
pub enum TakeoverError<E> {
    #[error("takeover refused: {0}")]
    Refused(ReplicaError),
    #[error("the replica could not be started (it is kept): {0}")]
    Start(E),
}

fn accept_loop(listener: &TcpListener, s: &Arc<Shared>) {
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
        if s.taking_over.load(Ordering::SeqCst) || lock(&s.copy).taken_over {
            log::warn!("replica: {peer} connected after the takeover; refused");
            let _ = wire::write_frame(
                &mut &conn,
                0,
                0,
                &Frame::Abort {
                    reason: "this replica was taken over".into(),
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

/// Reads the first frame, which must be a Hello this node accepts.
fn read_hello(
    reader: &mut FrameReader<TcpStream>,
    out: &mut BufWriter<TcpStream>,
    checker: &mut SequenceChecker,
    s: &Shared,
) -> Result<(u64, super::wire::Hello), ConnError> {
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
    let mut out = BufWriter::new(conn.try_clone().map_err(|e| before(e.into()))?);
    let mut reader = FrameReader::new(conn.try_clone().map_err(|e| before(e.into()))?);
    let mut checker = SequenceChecker::new(None);
    let (vm_id, hello) =
        read_hello(&mut reader, &mut out, &mut checker, s).map_err(Refusal::BeforeHello)?;
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
    let result = stream(s, &mut reader, &mut out, &mut checker, vm_id, &hello);
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
    reader: &mut FrameReader<TcpStream>,
    out: &mut BufWriter<TcpStream>,
    checker: &mut SequenceChecker,
    vm_id: u64,
    hello: &super::wire::Hello,
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
            .with_host_cpuid(cpuid),
    );
    let stream_id = hello.stream_id;
    // From now on the primary's output belongs to this stream.
    s.mark_stale("a new replication stream started");
    {
        let mut st = lock(&s.status);
        st.name = hello.name.clone();
        st.memory_mib = hello.memory_bytes >> 20;
        st.receiving_stream_id = stream_id;
    }
    s.announce();
    wire::write_frame(
        out,
        vm_id,
        0,
        &Frame::HelloAck(HelloAck {
            last_committed_epoch: 0,
            generation: [0; 16],
            resume_ok: false,
        }),
    )?;
    out.flush().map_err(WireError::from)?;
    checker.start_at(0)?;
    loop {
        if s.stop.load(Ordering::SeqCst) || s.taking_over.load(Ordering::SeqCst) {
            return Ok(());
        }
        let Some((header, frame)) = reader.next_frame()? else {
            return Ok(());
        };
        *lock(&s.last_frame) = Some(Instant::now());
        match checker.check(&header, &frame)? {
            Step::Hello => return Err(ConnError::Refused("a second Hello".into())),
            Step::Stage(epoch) => {
                let mut c = lock(&s.copy);
                let r = match fresh.as_mut() {
                    Some(r) => r,
                    None => c
                        .replica
                        .as_mut()
                        .ok_or_else(|| ConnError::Refused("no replica".into()))?,
                };
                stage(r, epoch, &frame)?;
            }
            Step::Commit(epoch) => {
                let flush = matches!(&frame, Frame::Commit(c) if c.flags & COMMIT_FLUSH != 0);
                commit(s, &mut fresh, stream_id, epoch, flush)?;
                wire::write_frame(out, header.vm_id, epoch, &Frame::Ack)?;
                out.flush().map_err(WireError::from)?;
                s.cfg.events.publish(Event::Committed { stream_id, epoch });
            }
            Step::Abort(reason) => {
                if fresh.is_none() {
                    s.mark_stale(&format!("the primary stopped protecting: {reason}"));
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
        }
    }
}

fn close_ack<W: Write>(out: &mut W, vm_id: u64, what: &str) {
    let _ = wire::write_frame(
        out,
        vm_id,
        0,
        &Frame::CloseAck {
            reason: what.into(),
        },
    );
    let _ = out.flush();
}

/// Whether this node takes the stream the Hello announces; the reason when not.
fn accept_hello(s: &Shared, hello: &super::wire::Hello) -> Result<(), String> {
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
            match super::verify::capture(epoch, r.memory(), &refs) {
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

#[cfg(test)]
#[path = "secondary_tests.rs"]
mod tests;
