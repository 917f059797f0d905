//! `FrameReader`: reads one frame at a time off a blocking stream (the direct link's TCP
//! socket), into one payload buffer reused from frame to frame.
//!
//! The header is read and checked (size cap included) before anything is read or allocated for
//! the payload, and the payload buffer grows only as bytes actually arrive, so a peer that
//! announces 64 MiB and sends nothing costs nothing. End of stream at a frame boundary is a
//! clean `Ok(None)`; anywhere inside a frame it is `WireError::Truncated`. After any error the
//! stream position is unknown: the caller drops the connection.

use std::io::{ErrorKind, Read};

use super::*;

pub struct FrameReader<R> {
    inner: R,
    payload: Vec<u8>,
    frames: u64,
    bytes: u64,
}

impl<R: Read> FrameReader<R> {
    pub fn new(inner: R) -> FrameReader<R> {
        FrameReader {
            inner,
            payload: Vec::new(),
            frames: 0,
            bytes: 0,
        }
    }

    /// The next frame, its bulk data borrowed from the reader's buffer (valid until the next
    /// call); `None` at a clean end of stream.
    pub fn next_frame(&mut self) -> Result<Option<(Header, Frame<'_>)>, WireError> {
        let mut head = [0u8; HEADER_LEN];
        let got = read_full(&mut self.inner, &mut head)?;
        self.bytes += got as u64;
        if got == 0 {
            return Ok(None);
        }
        if got < HEADER_LEN {
            return Err(WireError::Truncated {
                part: "header",
                got,
                needed: HEADER_LEN,
            });
        }
        let header = parse_header(&head)?;
        let len = header.payload_len as usize;
        self.payload.clear();
        // `take` + `read_to_end` grows the buffer with what arrives, not with what was promised.
        let got = (&mut self.inner)
            .take(len as u64)
            .read_to_end(&mut self.payload)?;
        self.bytes += got as u64;
        if got < len {
            return Err(WireError::Truncated {
                part: "payload",
                got: HEADER_LEN + got,
                needed: HEADER_LEN + len,
            });
        }
        verify_payload(&header, &self.payload)?;
        let frame = parse_payload(header.kind, &self.payload)?;
        self.frames += 1;
        Ok(Some((header, frame)))
    }

    /// `next_frame`, detached from the reader's buffer.
    pub fn next_owned(&mut self) -> Result<Option<(Header, Frame<'static>)>, WireError> {
        Ok(self.next_frame()?.map(|(h, f)| (h, f.into_owned())))
    }

    /// Frames read whole so far (for log messages).
    pub fn frames_read(&self) -> u64 {
        self.frames
    }

    /// Bytes consumed from the stream so far (for log messages).
    pub fn bytes_read(&self) -> u64 {
        self.bytes
    }

    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    pub fn into_inner(self) -> R {
        self.inner
    }
}

/// Fills `buf` unless the stream ends first; returns how much it got.
fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}
