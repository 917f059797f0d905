//! What virtio-net needs from the host side of the link: whole frames in and out, each starting
//! with the 12-byte virtio_net_hdr_v1, and an fd to poll. The tap is the production backend; a
//! datagram socket pair is a real, kernel-backed backend for host tests (one datagram = one frame,
//! like a tap with IFF_VNET_HDR).

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixDatagram;

/// A frame source and sink. Both sides take `&self`: the device receives while the output gate
/// (on the supervisor's thread) sends.
pub trait NetBackend: Send + Sync {
    /// Reads one frame into `buf`; `ErrorKind::WouldBlock` when none is waiting.
    fn recv(&self, buf: &mut [u8]) -> io::Result<usize>;
    /// Sends one frame; `WouldBlock` when the host queue is full (the frame is then dropped, as
    /// a full NIC queue would).
    fn send(&self, frame: &[u8]) -> io::Result<()>;
    /// The fd that becomes readable when frames wait (watch it edge-triggered).
    fn raw_fd(&self) -> RawFd;
}

impl NetBackend for UnixDatagram {
    fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        UnixDatagram::recv(self, buf)
    }

    fn send(&self, frame: &[u8]) -> io::Result<()> {
        let n = UnixDatagram::send(self, frame)?;
        if n != frame.len() {
            return Err(io::Error::other(format!(
                "short send: {n} of {} bytes",
                frame.len()
            )));
        }
        Ok(())
    }

    fn raw_fd(&self) -> RawFd {
        self.as_raw_fd()
    }
}
