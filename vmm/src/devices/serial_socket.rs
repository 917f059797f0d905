//! The guest console on a Unix stream socket (`--serial socket=PATH`, as Cloud Hypervisor has
//! it): owns the listening socket, the 64 KiB backlog of recent output, the connected clients
//! and their threads.
//!
//! The UART writes into `SocketWriter` from a vCPU thread with the serial lock held, so a write
//! must never wait for a client: each client gets a byte-bounded queue drained by its own
//! thread, and a client whose queue overflows (it stopped reading) or whose socket fails is
//! dropped. A new client first receives the backlog, so boot output printed before anyone
//! connected is not lost. Bytes a client sends go to the input sink (`Vm::serial_input`).

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use super::serial::SerialOut;

/// Recent output replayed to a client when it connects.
pub const BACKLOG_BYTES: usize = 64 * 1024;
/// Output queued for one client before it counts as stuck and is dropped.
pub const CLIENT_QUEUE_BYTES: usize = 1024 * 1024;

/// Takes console input; returns how many bytes it accepted (0: full, try again later), or
/// None once the guest is gone (the client is then dropped).
pub type InputSink = Box<dyn Fn(&[u8]) -> Option<usize> + Send + Sync>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicked client thread must not take the console down with it.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

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

    /// The next chunk to send, or None once the client is closed.
    fn next_chunk(&self) -> Option<Vec<u8>> {
        let mut q = lock(&self.state);
        while q.buf.is_empty() && !q.closed {
            q = self.ready.wait(q).unwrap_or_else(|p| p.into_inner());
        }
        if q.closed {
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

/// A bound console socket: hand `writer()` to the UART, then `serve()` once input has a home.
pub struct SerialSocket {
    listener: UnixListener,
    path: PathBuf,
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
        Ok(SerialSocket {
            listener: UnixListener::bind(path)?,
            path: path.to_path_buf(),
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

    /// Starts the accept thread; clients' bytes go to `input`.
    pub fn serve(self, input: InputSink) -> io::Result<()> {
        let input: Arc<InputSink> = Arc::new(input);
        std::thread::Builder::new()
            .name("serial-socket".into())
            .spawn(move || {
                for conn in self.listener.incoming() {
                    match conn {
                        Ok(stream) => {
                            if let Err(e) = add_client(&self.hub, stream, input.clone()) {
                                log::warn!("serial socket {}: client: {e}", self.path.display());
                            }
                        }
                        Err(e) => {
                            log::warn!("serial socket {}: accept: {e}", self.path.display());
                            // Out of descriptors and the like: do not spin.
                            std::thread::sleep(Duration::from_millis(100));
                        }
                    }
                }
            })?;
        Ok(())
    }
}

fn add_client(hub: &Mutex<Hub>, stream: UnixStream, input: Arc<InputSink>) -> io::Result<()> {
    let queue = Arc::new(ClientQueue {
        state: Mutex::new(QueueState {
            buf: VecDeque::new(),
            closed: false,
        }),
        ready: Condvar::new(),
        stream: stream.try_clone()?,
    });
    let mut sender = stream.try_clone()?;
    let mut reader = stream;
    {
        // Backlog and registration under one lock: no output is missed or sent twice.
        let mut h = lock(hub);
        lock(&queue.state).buf.extend(h.backlog.iter());
        h.clients.push(queue.clone());
    }
    log::info!("serial socket: client connected");
    let q = queue.clone();
    std::thread::Builder::new()
        .name("serial-sock-tx".into())
        .spawn(move || {
            while let Some(chunk) = q.next_chunk() {
                if sender.write_all(&chunk).is_err() {
                    break;
                }
            }
            q.close();
        })?;
    std::thread::Builder::new()
        .name("serial-sock-rx".into())
        .spawn(move || {
            let mut buf = [0u8; 256];
            loop {
                let n = match reader.read(&mut buf) {
                    // Half-closed (`echo cmd | socat`): the client may still read output.
                    Ok(0) => return,
                    Ok(n) => n,
                    Err(_) => break,
                };
                let mut rest = &buf[..n];
                while !rest.is_empty() && !queue.is_closed() {
                    let Some(took) = input(rest) else {
                        queue.close();
                        return;
                    };
                    rest = &rest[took..];
                    if took == 0 {
                        // The UART FIFO is full until the guest reads it.
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
            }
            queue.close();
            log::info!("serial socket: client gone");
        })?;
    Ok(())
}

#[cfg(test)]
#[path = "serial_socket_tests.rs"]
mod tests;
