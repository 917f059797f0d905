//! The guest console on a Unix stream socket (`--serial socket=PATH`, as Cloud Hypervisor has
//! it): owns the listening socket, the 64 KiB backlog of recent output, the connected clients
//! and their threads.
//!
//! The UART writes into `SocketWriter` from a vCPU thread with the serial lock held, so a write
//! must never wait for a client: each client gets a byte-bounded queue drained by its own
//! thread, and a client whose queue overflows (it stopped reading) or whose socket fails is
//! dropped. A new client first receives the backlog, so boot output printed before anyone
//! connected is not lost. Bytes a client sends go to the input sink (`Vm::serial_input`), which
//! can be switched while clients stay connected (a rebooted guest is a new `Vm`).
//!
//! A client that half-closes (`echo cmd | havms attach`) keeps receiving output; one that goes
//! away entirely is dropped at once, threads, descriptors and all, even on a silent console.
//!
//! `SerialSocketServer` is the owner: dropping it stops the accept thread (woken through an
//! eventfd it polls beside the listener), disconnects the clients and removes the socket file
//! (only its own: a newer server may have replaced it at the same path since).

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::serial::SerialOut;
use crate::sync::lock;

/// Recent output replayed to a client when it connects.
pub const BACKLOG_BYTES: usize = 64 * 1024;
/// Output queued for one client before it counts as stuck and is dropped.
pub const CLIENT_QUEUE_BYTES: usize = 1024 * 1024;
/// How long a closing console keeps sending queued output to a client that does not read.
const FINISH_TIMEOUT: Duration = Duration::from_secs(1);

/// Takes console input; returns how many bytes it accepted (0: full, try again later), or
/// None once the guest is gone (the client is then dropped).
pub type InputSink = Box<dyn Fn(&[u8]) -> Option<usize> + Send + Sync>;

/// One client's pending output.
struct ClientQueue {
    state: Mutex<QueueState>,
    ready: Condvar,
    /// A clone of the client's socket, to unblock its threads when the client is dropped.
    stream: UnixStream,
}

struct QueueState {
    buf: VecDeque<u8>,
    closed: bool,
    /// The console is closing: send what is queued, then disconnect.
    finishing: bool,
}

impl ClientQueue {
    /// Queues `bytes`; false (and the client closed) when it is gone or too far behind.
    fn push(&self, bytes: &[u8]) -> bool {
        let mut q = lock(&self.state);
        if !q.closed && q.buf.len() + bytes.len() > CLIENT_QUEUE_BYTES {
            log::warn!("serial socket: dropping a client that stopped reading");
            q.closed = true;
        }
        if q.closed {
            drop(q);
            self.close();
            return false;
        }
        q.buf.extend(bytes);
        self.ready.notify_one();
        true
    }

    fn is_closed(&self) -> bool {
        lock(&self.state).closed
    }

    fn close(&self) {
        lock(&self.state).closed = true;
        self.ready.notify_all();
        // Wakes a sender blocked in write() and the reader blocked in read().
        let _ = self.stream.shutdown(Shutdown::Both);
    }

    /// Lets the sender disconnect the client once what is queued is sent.
    fn finish(&self) {
        lock(&self.state).finishing = true;
        self.ready.notify_all();
    }

    /// The next chunk to send, or None once the client is closed (or finished and drained).
    fn next_chunk(&self) -> Option<Vec<u8>> {
        let mut q = lock(&self.state);
        while q.buf.is_empty() && !q.closed && !q.finishing {
            q = self.ready.wait(q).unwrap_or_else(|p| p.into_inner());
        }
        if q.closed || q.buf.is_empty() {
            return None;
        }
        let n = q.buf.len().min(64 * 1024);
        Some(q.buf.drain(..n).collect())
    }
}

/// What the writer and the accept thread share.
#[derive(Default)]
struct Hub {
    backlog: VecDeque<u8>,
    clients: Vec<Arc<ClientQueue>>,
}

impl Hub {
    fn write(&mut self, bytes: &[u8]) {
        let keep = bytes.len().min(BACKLOG_BYTES);
        let excess = (self.backlog.len() + keep).saturating_sub(BACKLOG_BYTES);
        self.backlog.drain(..excess);
        self.backlog.extend(&bytes[bytes.len() - keep..]);
        self.clients.retain(|c| c.push(bytes));
    }
}

/// The UART's output end: backlog plus every connected client. Never blocks on a client.
pub struct SocketWriter {
    hub: Arc<Mutex<Hub>>,
}

impl Write for SocketWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        lock(&self.hub).write(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The (st_dev, st_ino) of a socket file: tells our file from a newer one at the same path.
type FileId = (u64, u64);

fn socket_file_id(path: &Path) -> io::Result<Option<FileId>> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => Ok(Some((m.dev(), m.ino()))),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// A bound console socket: hand `writer()` to the UART, then `serve()` once input has a home.
pub struct SerialSocket {
    listener: UnixListener,
    path: PathBuf,
    /// The socket file bind() made; only that file is removed at close.
    file_id: FileId,
    hub: Arc<Mutex<Hub>>,
}

impl SerialSocket {
    /// Listens on `path`, replacing a stale socket file; any other existing file is an error.
    pub fn bind(path: &Path) -> io::Result<SerialSocket> {
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path)?,
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "exists and is not a socket; refusing to replace it",
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let listener = UnixListener::bind(path)?;
        let file_id = socket_file_id(path)?.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                "the socket file vanished right after bind",
            )
        })?;
        Ok(SerialSocket {
            listener,
            path: path.to_path_buf(),
            file_id,
            hub: Arc::default(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The output end for the UART (output written before `serve()` lands in the backlog).
    pub fn writer(&self) -> SerialOut {
        Box::new(SocketWriter {
            hub: self.hub.clone(),
        })
    }

    /// Starts the accept thread; clients' bytes go to `input` until `set_input` replaces it.
    /// The returned server owns the thread, the clients and the socket file.
    pub fn serve(self, input: InputSink) -> io::Result<SerialSocketServer> {
        let input: SharedSink = Arc::new(Mutex::new(Arc::new(input)));
        let stop = EventFd::new(EFD_NONBLOCK)?;
        // Non-blocking: a wakeup whose connection went away again must not block the thread.
        self.listener.set_nonblocking(true)?;
        let ctx = AcceptCtx {
            listener: self.listener,
            stop: stop.try_clone()?,
            hub: self.hub.clone(),
            input: input.clone(),
            path: self.path.clone(),
        };
        let accept = std::thread::Builder::new()
            .name("serial-socket".into())
            .spawn(move || ctx.run())?;
        Ok(SerialSocketServer {
            path: self.path,
            file_id: self.file_id,
            hub: self.hub,
            input,
            stop,
            accept: Some(accept),
        })
    }
}

/// The current input sink, replaceable while clients are connected.
type SharedSink = Arc<Mutex<Arc<InputSink>>>;

/// A serving console socket. Dropping (or `close`) stops the accept thread, disconnects every
/// client and removes the socket file.
pub struct SerialSocketServer {
    path: PathBuf,
    file_id: FileId,
    hub: Arc<Mutex<Hub>>,
    input: SharedSink,
    stop: EventFd,
    accept: Option<JoinHandle<()>>,
}

impl SerialSocketServer {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Another output end on the same backlog and clients (a rebooted guest's new UART).
    pub fn writer(&self) -> SerialOut {
        Box::new(SocketWriter {
            hub: self.hub.clone(),
        })
    }

    /// Sends what clients type from now on to `input`; connected clients stay connected.
    pub fn set_input(&self, input: InputSink) {
        *lock(&self.input) = Arc::new(input);
    }

    /// Stops the accept thread and waits for it, disconnects every client once its queued
    /// output is sent (at most `FINISH_TIMEOUT` later; their threads then end on their own) and
    /// removes the socket file if it is still the one `bind` made. Idempotent.
    pub fn close(&mut self) {
        let Some(t) = self.accept.take() else { return };
        if let Err(e) = self.stop.write(1) {
            // Without the wakeup the thread would block the join forever: leave it.
            log::error!("serial socket {}: stopping: {e}", self.path.display());
        } else if t.join().is_err() {
            log::error!(
                "serial socket {}: accept thread panicked",
                self.path.display()
            );
        }
        let clients = std::mem::take(&mut lock(&self.hub).clients);
        for c in &clients {
            c.finish();
        }
        let t0 = std::time::Instant::now();
        while clients.iter().any(|c| !c.is_closed()) && t0.elapsed() < FINISH_TIMEOUT {
            std::thread::sleep(Duration::from_millis(5));
        }
        // A client that did not read it all in time is cut off (unblocks its sender).
        for c in &clients {
            c.close();
        }
        // A newer server (a restarted havms-vm) may have bound the path since: leave its file.
        // Between this check and the unlink another bind could still slip in; nothing in the
        // kernel interface closes that window, and it needs two binds in microseconds.
        if socket_file_id(&self.path).is_ok_and(|id| id == Some(self.file_id)) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl Drop for SerialSocketServer {
    fn drop(&mut self) {
        self.close();
    }
}

/// What the accept thread owns.
struct AcceptCtx {
    listener: UnixListener,
    stop: EventFd,
    hub: Arc<Mutex<Hub>>,
    input: SharedSink,
    path: PathBuf,
}

impl AcceptCtx {
    fn run(self) {
        loop {
            let mut fds = [
                libc::pollfd {
                    fd: self.listener.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: self.stop.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // SAFETY: `fds` is an array of two initialised pollfd structs that outlives the call,
            // and the count passed is its length; both fds are owned by `self` and open.
            let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    log::warn!("serial socket {}: poll: {e}", self.path.display());
                    std::thread::sleep(Duration::from_millis(100));
                }
                continue;
            }
            if fds[1].revents != 0 {
                return;
            }
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if let Err(e) = add_client(self.hub.clone(), stream, self.input.clone()) {
                        log::warn!("serial socket {}: client: {e}", self.path.display());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    log::warn!("serial socket {}: accept: {e}", self.path.display());
                    // Out of descriptors and the like: do not spin.
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }
}

fn add_client(hub: Arc<Mutex<Hub>>, stream: UnixStream, input: SharedSink) -> io::Result<()> {
    // The listener is non-blocking; the client threads want blocking sockets.
    stream.set_nonblocking(false)?;
    let queue = Arc::new(ClientQueue {
        state: Mutex::new(QueueState {
            buf: VecDeque::new(),
            closed: false,
            finishing: false,
        }),
        ready: Condvar::new(),
        stream: stream.try_clone()?,
    });
    let mut sender = stream.try_clone()?;
    let reader = stream;
    {
        // Backlog and registration under one lock: no output is missed or sent twice.
        let mut h = lock(&hub);
        lock(&queue.state).buf.extend(h.backlog.iter());
        h.clients.push(queue.clone());
    }
    log::info!("serial socket: client connected");
    let q = queue.clone();
    let spawned = std::thread::Builder::new()
        .name("serial-sock-tx".into())
        .spawn(move || {
            while let Some(chunk) = q.next_chunk() {
                if sender.write_all(&chunk).is_err() {
                    break;
                }
            }
            q.close();
        });
    if let Err(e) = spawned {
        queue.close();
        unregister(&hub, &queue);
        return Err(e);
    }
    let q = queue.clone();
    let h = hub.clone();
    let spawned = std::thread::Builder::new()
        .name("serial-sock-rx".into())
        .spawn(move || {
            receive(reader, &q, &input);
            // Ends the sender too; once both threads and the hub's entry are gone, the queue's
            // socket clone is dropped with it.
            q.close();
            unregister(&h, &q);
            log::info!("serial socket: client gone");
        });
    if let Err(e) = spawned {
        queue.close();
        unregister(&hub, &queue);
        return Err(e);
    }
    Ok(())
}

/// Takes the client out of the hub now rather than at the next output, which on a silent
/// console may never come.
fn unregister(hub: &Mutex<Hub>, queue: &Arc<ClientQueue>) {
    lock(hub).clients.retain(|c| !Arc::ptr_eq(c, queue));
}

/// Passes what the client types to the input sink until the client is gone or dropped.
fn receive(mut reader: UnixStream, queue: &ClientQueue, input: &SharedSink) {
    let mut buf = [0u8; 256];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        let mut rest = &buf[..n];
        while !rest.is_empty() && !queue.is_closed() {
            // Not called under the lock: the sink takes the UART's lock.
            let sink = lock(input).clone();
            let Some(took) = sink(rest) else { return };
            rest = &rest[took..];
            if took == 0 {
                // The UART FIFO is full until the guest reads it.
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
    // End of input: a half-close (`echo cmd | havms attach`), after which the client still
    // reads output, or the client is gone. Only the second makes the socket hang up (both
    // directions shut); so does our own shutdown when the queue is closed.
    wait_for_hangup(&reader);
}

/// Blocks until `sock` hangs up or fails. Events 0: POLLHUP and POLLERR are always reported, and
/// a half-closed socket, readable at EOF forever, does not wake the poll.
fn wait_for_hangup(sock: &UnixStream) {
    loop {
        let mut fd = libc::pollfd {
            fd: sock.as_raw_fd(),
            events: 0,
            revents: 0,
        };
        // SAFETY: `fd` is one initialised pollfd that outlives the call, on a socket `sock` keeps
        // open for the whole call.
        let r = unsafe { libc::poll(&mut fd, 1, -1) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            log::warn!("serial socket: poll on a client: {e}");
            return;
        }
        if fd.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0 {
            return;
        }
    }
}

#[cfg(test)]
#[path = "serial_socket_tests.rs"]
mod tests;
