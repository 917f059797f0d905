//! The client side of the API socket: `call` (one request, one answer, bounded waits) and
//! `Subscription` (the engine's event stream).

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use super::types::{Request, Response};
use crate::events::Event;

/// How long `call` waits for an answer: full snapshots of big guests take seconds.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Sends one request and reads the answer, waiting at most `CALL_TIMEOUT`.
pub fn call(path: &Path, req: &Request) -> io::Result<Response> {
    call_timeout(path, req, CALL_TIMEOUT)
}

/// `call` with its own bound on every read and write (a wedged engine must not hang its
/// caller).
pub fn call_timeout(path: &Path, req: &Request, timeout: Duration) -> io::Result<Response> {
    let mut s = UnixStream::connect(path)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let mut line = serde_json::to_vec(req).map_err(io::Error::other)?;
    line.push(b'\n');
    s.write_all(&line)?;
    let mut answer = String::new();
    BufReader::new(s).read_line(&mut answer)?;
    if answer.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the engine closed the connection without answering",
        ));
    }
    serde_json::from_str(&answer).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("bad answer '{}': {e}", answer.trim()),
        )
    })
}

/// An open event stream from one engine.
pub struct Subscription {
    reader: BufReader<UnixStream>,
    /// A line that a timeout cut in two, kept for the next call.
    partial: Vec<u8>,
}

impl Subscription {
    /// Connects and subscribes; the engine's events from now on follow.
    pub fn open(path: &Path) -> io::Result<Subscription> {
        let mut s = UnixStream::connect(path)?;
        s.set_write_timeout(Some(Duration::from_secs(5)))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(b"{\"cmd\":\"subscribe\"}\n")?;
        let mut reader = BufReader::new(s);
        let mut first = String::new();
        reader.read_line(&mut first)?;
        let answer: Response = serde_json::from_str(&first).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad answer to subscribe '{}': {e}", first.trim()),
            )
        })?;
        if !answer.ok {
            return Err(io::Error::other(
                answer.error.unwrap_or_else(|| "subscribe refused".into()),
            ));
        }
        Ok(Subscription {
            reader,
            partial: Vec::new(),
        })
    }

    /// The next event, waiting at most `timeout` (`Ok(None)`: none came meanwhile). An error
    /// means the stream is over (the engine ended, or dropped us for falling behind).
    pub fn next_event(&mut self, timeout: Duration) -> io::Result<Option<Event>> {
        self.reader
            .get_ref()
            .set_read_timeout(Some(timeout.max(Duration::from_millis(1))))?;
        match self.reader.read_until(b'\n', &mut self.partial) {
            Ok(0) => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the engine closed its event stream",
            )),
            Ok(_) if self.partial.last() != Some(&b'\n') => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the engine closed its event stream inside an event",
            )),
            Ok(_) => {
                let line = std::mem::take(&mut self.partial);
                serde_json::from_slice(&line).map(Some).map_err(|e| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("bad event '{}': {e}", String::from_utf8_lossy(&line).trim()),
                    )
                })
            }
            // What arrived of a line stays in `partial` for the next call.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }
}
