//! The 16550 UART on COM1 (ports 0x3f8-0x3ff, IRQ 4), vm-superio's model, with its output going
//! to stdout, a file, a caller-supplied writer or nowhere, and its state as plain data.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};
use vm_superio::serial::{NoEvents, SerialState};
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

pub const COM1_PORT: u16 = 0x3f8;
pub const COM1_IRQ: u32 = 4;

/// Raises an interrupt line through a KVM irqfd.
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

impl crate::state::Snapshottable for SerialDevice {
    type State = SerialSnapshot;
    type Error = std::convert::Infallible;
    fn snapshot(&self) -> Result<SerialSnapshot, Self::Error> {
        Ok(SerialSnapshot::from(&self.state()))
    }
}

/// Where the UART's bytes go.
pub type SerialOut = Box<dyn Write + Send>;

pub type SerialDevice = Serial<IrqTrigger, NoEvents, SerialOut>;

/// Stdout, flushed after each write so the console is live.
struct Stdout;
impl Write for Stdout {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        let mut o = io::stdout().lock();
        let n = o.write(b)?;
        o.flush()?;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        io::stdout().flush()
    }
}

pub fn stdout_writer() -> SerialOut {
    Box::new(Stdout)
}

pub fn null_writer() -> SerialOut {
    Box::new(io::sink())
}

/// Appends to `path` (created if missing): a restored VM continues the same log.
pub fn file_writer(path: &Path) -> io::Result<SerialOut> {
    Ok(Box::new(
        OpenOptions::new().create(true).append(true).open(path)?,
    ))
}

/// Plain-data copy of vm-superio's `SerialState`, which has no serde.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialSnapshot {
    pub baud_divisor_low: u8,
    pub baud_divisor_high: u8,
    pub interrupt_enable: u8,
    pub interrupt_identification: u8,
    pub line_control: u8,
    pub line_status: u8,
    pub modem_control: u8,
    pub modem_status: u8,
    pub scratch: u8,
    pub in_buffer: Vec<u8>,
}

impl From<&SerialState> for SerialSnapshot {
    fn from(s: &SerialState) -> Self {
        SerialSnapshot {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer.clone(),
        }
    }
}

impl From<&SerialSnapshot> for SerialState {
    fn from(s: &SerialSnapshot) -> Self {
        SerialState {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer.clone(),
        }
    }
}

/// Builds the UART, fresh or from a snapshot.
pub fn create(
    irq: EventFd,
    out: SerialOut,
    state: Option<&SerialSnapshot>,
) -> Result<SerialDevice, String> {
    match state {
        None => Ok(Serial::new(IrqTrigger(irq), out)),
        Some(s) => Serial::from_state(&SerialState::from(s), IrqTrigger(irq), NoEvents, out)
            .map_err(|e| format!("restoring the serial port: {e:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);
    impl Write for Capture {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn output_and_state_round_trip() {
        let cap = Capture::default();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut s = create(irq.try_clone().unwrap(), Box::new(cap.clone()), None).unwrap();
        s.write(3, 0x03).unwrap(); // LCR: 8 data bits
        s.write(7, 0x5a).unwrap(); // scratch
        for b in b"hi" {
            s.write(0, *b).unwrap();
        }
        assert_eq!(&*cap.0.lock().unwrap(), b"hi");
        s.enqueue_raw_bytes(b"in").unwrap();
        let snap = SerialSnapshot::from(&s.state());
        let json = serde_json::to_string(&snap).unwrap();
        let back: SerialSnapshot = serde_json::from_str(&json).unwrap();
        assert_eq!(back, snap);
        let mut r = create(irq, null_writer(), Some(&back)).unwrap();
        assert_eq!(r.read(7), 0x5a);
        assert_eq!(r.read(0), b'i');
    }
}
