//! The secondary's replication server: listens on the link, takes one primary's stream at a
//! time, checks every frame (`SequenceChecker`), stages each epoch into the `Replica` and
//! applies it at its Commit, then acks it. A stream that breaks or lies leaves the replica at
//! its last committed epoch. `takeover` ends the serving and hands the replica over to be
//! started (failover).
//!
//! A new connection whose Hello introduces the VM starts a fresh replica (a full copy follows);
//! the previous one is kept until the new one has committed its first epoch, so a primary that
//! connects and dies at once does not cost the secondary its copy.

use std::io::{BufWriter, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serde::Serialize;

use super::replica::{DiskOp, Replica, ReplicaError};
use super::sequence::{SequenceChecker, SequenceError, Step};
use super::wire::{self, DiskAction, Frame, FrameReader, HelloAck, WireError};
use crate::state::snapshot::Snapshot;
use crate::sync::lock;
use crate::virtio::block::DiskChangeKind;

/// Where the replica is.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct ReplicaStatus {
    pub listen: String,
    /// waiting (no primary connected), receiving, taken-over.
    pub state: String,
    pub name: String,
    pub peer: String,
    pub memory_mib: u64,
    pub committed_epoch: u64,
    pub connections: u64,
    /// Why the last connection ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Set when the primary said it stopped protecting (an Abort): it runs on, unprotected, so
    /// this copy is behind what the world has seen and a takeover needs `force`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stale: Option<String>,
}

/// A primary sends at least a Commit every epoch; this long without a byte means it is gone
/// (or the link is), and the server is free for the next stream.
const STREAM_IDLE: Duration = Duration::from_secs(30);

/// Epochs between flushes of the replica's disk images (a takeover reads them through the
/// page cache; the flush bounds what a power loss of this node would cost).
const FLUSH_EVERY: u64 = 50;

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
    #[error("{0}")]
    Refused(String),
}

struct Shared {
    /// The committed copy (None until the first stream committed its first epoch).
    replica: Mutex<Option<Replica>>,
    status: Mutex<ReplicaStatus>,
    stop: AtomicBool,
    /// The connection being served, to cut it on takeover.
    conn: Mutex<Option<TcpStream>>,
    /// Only streams for this VM name are accepted (None: any).
    expect_name: Option<String>,
    /// This node's copies of the VM's disks, when not at the primary's paths.
    disk_paths: Vec<PathBuf>,
}

/// A listening replica server.
pub struct ReplicaServer {
    shared: Arc<Shared>,
    listener: Option<TcpListener>,
    thread: Option<JoinHandle<()>>,
}

impl ReplicaServer {
    /// Listens on `addr` (`host:port`) and serves primaries one at a time. With `expect_name`,
    /// streams for another VM are refused; `disk_paths` (device order) put the VM's disks at
    /// other paths on this node than on the primary (empty: the same paths).
    pub fn listen(
        addr: &str,
        expect_name: Option<String>,
        disk_paths: Vec<PathBuf>,
    ) -> std::io::Result<ReplicaServer> {
        let listener = TcpListener::bind(addr)?;
        let local = listener.local_addr()?.to_string();
        let shared = Arc::new(Shared {
            replica: Mutex::new(None),
            status: Mutex::new(ReplicaStatus {
                listen: local,
                state: "waiting".into(),
                ..Default::default()
            }),
            stop: AtomicBool::new(false),
            conn: Mutex::new(None),
            expect_name,
            disk_paths,
        });
        let s = Arc::clone(&shared);
        let l = listener.try_clone()?;
        let thread = std::thread::Builder::new()
            .name("replica-server".into())
            .spawn(move || accept_loop(&l, &s))?;
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
        if let Some(r) = lock(&self.shared.replica).as_ref() {
            st.committed_epoch = r.committed_epoch().unwrap_or(0);
            st.memory_mib = r.memory_mib();
        }
        st
    }

    /// Stops serving (the current stream is cut, its unfinished epoch dropped) and hands over
    /// the replica as of its last committed epoch. Refused, and the server keeps serving, when
    /// nothing is committed yet, or when the copy is stale (the primary stopped protecting and
    /// ran on) unless `force`.
    pub fn takeover(mut self, force: bool) -> Result<Replica, (ReplicaError, ReplicaServer)> {
        if lock(&self.shared.replica).is_none() {
            return Err((ReplicaError::NothingCommitted, self));
        }
        let stale = lock(&self.shared.status).stale.clone();
        if let Some(why) = stale {
            if !force {
                return Err((ReplicaError::Stale(why), self));
            }
            log::warn!("replica: taking over a stale copy on request ({why})");
        }
        self.halt();
        let Some(mut replica) = lock(&self.shared.replica).take() else {
            return Err((ReplicaError::NothingCommitted, self));
        };
        replica.abort_epoch();
        lock(&self.shared.status).state = "taken-over".into();
        Ok(replica)
    }

    /// Writes the committed copy as a snapshot directory (`havms-vm --restore` can run it).
    pub fn save(&self, dir: &Path) -> Result<(), ReplicaError> {
        lock(&self.shared.replica)
            .as_ref()
            .ok_or(ReplicaError::NothingCommitted)?
            .save(dir)
    }

    fn halt(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(c) = lock(&self.shared.conn).as_ref() {
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
        self.halt();
    }
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
        if let Ok(c) = conn.try_clone() {
            *lock(&s.conn) = Some(c);
        }
        {
            let mut st = lock(&s.status);
            st.state = "receiving".into();
            st.peer = peer.clone();
            st.connections += 1;
        }
        log::info!("replica: primary {peer} connected");
        let end = serve(conn, s);
        *lock(&s.conn) = None;
        let mut st = lock(&s.status);
        st.state = "waiting".into();
        match end {
            Ok(()) => log::info!("replica: {peer} closed the stream"),
            Err(e) => {
                let e = crate::error_chain(&e);
                log::warn!("replica: stream from {peer} ended: {e}");
                st.last_error = Some(e);
            }
        }
        if s.stop.load(Ordering::SeqCst) {
            return;
        }
    }
}

/// One primary's stream, until it ends. A fresh replica is built for it and replaces the
/// committed one at its first commit.
fn serve(conn: TcpStream, s: &Shared) -> Result<(), ConnError> {
    let _ = conn.set_nodelay(true);
    conn.set_read_timeout(Some(STREAM_IDLE))
        .map_err(WireError::from)?;
    let mut out = BufWriter::new(conn.try_clone().map_err(WireError::from)?);
    let mut reader = FrameReader::new(conn);
    let mut checker = SequenceChecker::new(None);
    // The replica this stream builds, until its first commit makes it the one.
    let mut fresh: Option<Replica> = None;
    let result = (|| -> Result<(), ConnError> {
        loop {
            if s.stop.load(Ordering::SeqCst) {
                return Ok(());
            }
            let Some((header, frame)) = reader.next_frame()? else {
                return Ok(());
            };
            match checker.check(&header, &frame)? {
                Step::Hello => {
                    let Frame::Hello(hello) = &frame else {
                        return Err(ConnError::Refused("Hello step without a Hello".into()));
                    };
                    if let Some(want) = &s.expect_name {
                        if &hello.name != want {
                            let reason =
                                format!("this replica is for VM {want}, not {}", hello.name);
                            let _ = wire::write_frame(
                                &mut out,
                                header.vm_id,
                                0,
                                &Frame::Abort {
                                    reason: reason.clone(),
                                },
                            );
                            let _ = out.flush();
                            return Err(ConnError::Refused(reason));
                        }
                    }
                    if hello.memory_bytes % (1 << 20) != 0 {
                        return Err(ConnError::Refused(format!(
                            "{} bytes of memory: not whole MiB",
                            hello.memory_bytes
                        )));
                    }
                    let host = host_memory_bytes();
                    if hello.memory_bytes > host {
                        return Err(ConnError::Refused(format!(
                            "a {} MiB VM does not fit this node's {} MiB",
                            hello.memory_bytes >> 20,
                            host >> 20
                        )));
                    }
                    fresh = Some(
                        Replica::new(hello.memory_bytes >> 20)?
                            .with_disk_paths(s.disk_paths.clone()),
                    );
                    {
                        let mut st = lock(&s.status);
                        st.name = hello.name.clone();
                        st.memory_mib = hello.memory_bytes >> 20;
                    }
                    wire::write_frame(
                        &mut out,
                        header.vm_id,
                        0,
                        &Frame::HelloAck(HelloAck {
                            last_committed_epoch: 0,
                            generation: [0; 16],
                            resume_ok: false,
                        }),
                    )?;
                    out.flush().map_err(WireError::from)?;
                    checker.start_at(0)?;
                }
                Step::Stage(epoch) => {
                    let mut committed = lock(&s.replica);
                    let r = match fresh.as_mut() {
                        Some(r) => r,
                        None => committed
                            .as_mut()
                            .ok_or_else(|| ConnError::Refused("no replica".into()))?,
                    };
                    stage(r, epoch, &frame)?;
                }
                Step::Commit(epoch) => {
                    {
                        let mut committed = lock(&s.replica);
                        if let Some(mut r) = fresh.take() {
                            if let Err(e) = r.commit(epoch) {
                                // It may have written part of its disk copy over the files the
                                // old replica uses: that one cannot be trusted any more.
                                if matches!(e, ReplicaError::Broken(_) | ReplicaError::Disk { .. })
                                {
                                    if let Some(old) = committed.as_mut() {
                                        old.mark_broken(format!(
                                            "a new stream's first commit failed half way: {e}"
                                        ));
                                    }
                                }
                                return Err(e.into());
                            }
                            *committed = Some(r);
                            lock(&s.status).stale = None;
                        } else if let Some(r) = committed.as_mut() {
                            r.commit(epoch)?;
                            if epoch % FLUSH_EVERY == 0 {
                                r.flush_disks()?;
                            }
                        }
                    }
                    lock(&s.status).committed_epoch = epoch;
                    wire::write_frame(&mut out, header.vm_id, epoch, &Frame::Ack)?;
                    out.flush().map_err(WireError::from)?;
                }
                Step::Abort(reason) => {
                    lock(&s.status).stale = Some(reason.clone());
                    return Err(ConnError::Abort(reason));
                }
            }
        }
    })();
    // Whatever ended the stream, an unfinished epoch is dropped.
    if let Some(r) = lock(&s.replica).as_mut() {
        r.abort_epoch();
    }
    result
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
