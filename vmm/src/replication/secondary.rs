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
//!     |                                   |                      ^                   |
//!     |                                   +-- Handover --> handed over               |
//!     +-------------------------------------- first commit of a new stream <---------+
//! ```
//!
//! Handover (a planned switchover) comes right after an acked Commit: the primary paused the
//! guest for good, so the copy is the VM now. It is answered with CloseAck, new connections
//! are refused, and `mark_stale` is refused unless forced (the old primary's supervisor may
//! not have heard the CloseAck and asks "did you mark it stale?": the answer must be no, or
//! both would give the VM up).
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

use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::compat::LocalDevices;
use super::replica::{Replica, ReplicaError};
use super::sequence::SequenceError;
use super::timings::Timings;
use super::wire::WireError;
use crate::events::{Event, Events, ReplicaState};
use crate::sync::lock;

mod connection;
use connection::accept_loop;

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
    /// From a Commit frame read to its Ack written (apply, fdatasync when the guest flushed),
    /// over the last `timings::WINDOW` commits, and the longest of this server's life.
    #[serde(default)]
    pub commit_p50_us: u64,
    #[serde(default)]
    pub commit_p99_us: u64,
    #[serde(default)]
    pub commit_max_us: u64,
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
    #[error("the primary handed the VM over: {0}")]
    Handover(String),
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
    /// Why the primary handed the VM over (Handover): the copy is the VM until taken over.
    handed_over: Option<String>,
}

struct Shared {
    copy: Mutex<Copy>,
    status: Arc<Mutex<ReplicaStatus>>,
    last_frame: Mutex<Option<Instant>>,
    stop: AtomicBool,
    /// Hash the copy right after applying this epoch (a check: `verify`).
    verify_at: Mutex<Option<u64>>,
    commits: Mutex<Timings>,
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
            Some(_) if c.handed_over.is_some() => ReplicaState::HandedOver,
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

    /// Marks the copy stale; false if it was already, or holds nothing, or was handed over
    /// and `force` is not set (see `ReplicaServer::mark_stale`).
    fn mark_stale(&self, why: &str, force: bool) -> bool {
        let mut c = lock(&self.copy);
        if let Some(handed) = &c.handed_over {
            if !force {
                log::warn!("replica: not marking the handed-over copy stale ({why}): {handed}");
                return false;
            }
            log::warn!("replica: giving up the handed-over copy on request: {why}");
            c.handed_over = None;
        }
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
            commits: Mutex::new(Timings::default()),
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
        let t = lock(&self.shared.commits);
        st.commit_p50_us = t.percentile_us(50);
        st.commit_p99_us = t.percentile_us(99);
        st.commit_max_us = t.max_us();
        st
    }

    /// Hashes the copy right after epoch `epoch` is applied; `status().verify` shows it.
    pub fn verify_at(&self, epoch: u64) {
        *lock(&self.shared.verify_at) = Some(epoch);
    }

    /// The supervisor's word that this copy must not be taken over (its primary, reachable
    /// only over the LAN, stopped protecting): the copy becomes stale and the stream being
    /// received, if any, is cut, so no later epoch of it can make the copy current again.
    ///
    /// A handed-over copy is the VM (its primary paused for good): that is refused (Err with
    /// the reason) unless `force`, so the old primary keeps its guest paused and the VM is
    /// taken over here.
    pub fn mark_stale(&self, why: &str, force: bool) -> Result<(), String> {
        if !force {
            let c = lock(&self.shared.copy);
            if let Some(handed) = &c.handed_over {
                let epoch = c
                    .replica
                    .as_ref()
                    .and_then(|r| r.committed_epoch())
                    .unwrap_or(0);
                return Err(format!(
                    "the copy was handed over at epoch {epoch} ({handed}): it is the VM now and \
                     is being taken over here (force gives it up)"
                ));
            }
        }
        self.shared.mark_stale(why, force);
        // The stream of this copy is cut; a new stream being received (its Hello made the
        // copy stale already) is left alone.
        let copy_stream = lock(&self.shared.copy).stream_id;
        let receiving = lock(&self.shared.status).receiving_stream_id;
        if receiving == 0 || receiving == copy_stream {
            if let Some((_, c)) = lock(&self.shared.conn).as_ref() {
                let _ = c.shutdown(Shutdown::Both);
            }
        }
        self.shared.announce();
        Ok(())
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
                {
                    let mut c = lock(&self.shared.copy);
                    c.taken_over = true;
                    c.handed_over = None;
                }
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

#[cfg(test)]
#[path = "secondary_tests.rs"]
mod tests;
