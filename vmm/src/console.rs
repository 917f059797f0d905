//! The guest console backend: where a VM's UART writes and where typed input comes from. It
//! outlives any one `Vm`, so a rebooted guest (a new `Vm`, see `machine`) keeps the same
//! console: a writer shared by every boot (stdout, a file kept open in append mode, nothing, or
//! the caller's tee) or the socket server (`devices::serial_socket`) with its listening socket,
//! backlog and connected clients. Dropping it closes the socket server.

use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use crate::devices::serial::{self, SerialOut};
use crate::devices::serial_socket::{SerialSocket, SerialSocketServer};
use crate::spec::SerialSpec;
use crate::vm::{Vm, VmError};

/// Opens the writer a `SerialSpec` names (not a socket: that needs a `Console`).
pub fn serial_output(spec: &SerialSpec) -> Result<SerialOut, VmError> {
    Ok(match spec {
        SerialSpec::Null => serial::null_writer(),
        SerialSpec::Tty => serial::stdout_writer(),
        SerialSpec::File(p) => serial::file_writer(p).map_err(|source| VmError::SerialOut {
            path: p.display().to_string(),
            source,
        })?,
        // Its input must reach the VM, which does not exist yet.
        SerialSpec::Socket(p) => {
            return Err(VmError::SerialOut {
                path: p.display().to_string(),
                source: io::Error::new(
                    io::ErrorKind::Unsupported,
                    "a socket console is opened by Console::open (Vm::create, Machine::boot)",
                ),
            })
        }
    })
}

/// One writer behind every boot's UART.
struct SharedWriter(Arc<Mutex<SerialOut>>);

impl Write for SharedWriter {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).write(b)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).flush()
    }
}

enum Backend {
    Writer(Arc<Mutex<SerialOut>>),
    Socket(SerialSocketServer),
}

/// A console that VMs are built on, one after the other.
pub struct Console {
    backend: Backend,
}

impl Console {
    /// Opens the backend `spec` names. A socket is bound and served at once: output before a
    /// VM exists lands in its backlog, input is held until `attach`.
    pub fn open(spec: &SerialSpec) -> Result<Console, VmError> {
        let SerialSpec::Socket(path) = spec else {
            return Ok(Self::from_writer(serial_output(spec)?));
        };
        let err = |source| VmError::SerialOut {
            path: path.display().to_string(),
            source,
        };
        let server = SerialSocket::bind(path)
            .map_err(err)?
            .serve(hold_input())
            .map_err(err)?;
        Ok(Console {
            backend: Backend::Socket(server),
        })
    }

    /// A console writing to `out` (the supervisor's tee); input comes through
    /// `Vm::serial_input` / `Machine::serial_input` only.
    pub fn from_writer(out: SerialOut) -> Console {
        Console {
            backend: Backend::Writer(Arc::new(Mutex::new(out))),
        }
    }

    /// The output end for the next VM's UART.
    pub fn writer(&self) -> SerialOut {
        match &self.backend {
            Backend::Writer(w) => Box::new(SharedWriter(w.clone())),
            Backend::Socket(s) => s.writer(),
        }
    }

    /// Sends what the console's clients type to `vm` from now on.
    pub fn attach(&self, vm: &Vm) {
        if let Backend::Socket(s) = &self.backend {
            s.set_input(vm.input_sink());
        }
    }

    /// Holds what clients type (they stay connected) until the next `attach`: between the
    /// VMs of a reboot.
    pub fn detach(&self) {
        if let Backend::Socket(s) = &self.backend {
            s.set_input(hold_input());
        }
    }

    /// Closes a socket console (accept thread stopped, clients disconnected, file removed).
    pub fn close(&mut self) {
        if let Backend::Socket(s) = &mut self.backend {
            s.close();
        }
    }
}

/// Accepts nothing yet: the client's reader retries until a VM is attached.
fn hold_input() -> crate::devices::serial_socket::InputSink {
    Box::new(|_: &[u8]| Some(0))
}
