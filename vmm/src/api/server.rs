//! The API socket: a Unix stream socket served by an accept thread and one thread per client
//! (at most `MAX_CONNECTIONS`), so a slow or idle client never blocks another: the supervisor's
//! event subscription, its status polls and an operator's `havms-remote` all get through.
//!
//! Each request is one line of at most `MAX_LINE` bytes; a longer line is answered with an
//! error and the connection closed (the rest cannot be trusted to be in step). A line that is
//! not UTF-8 or not a request is answered with an error and the connection stays. A client
//! silent for `IDLE` is closed; answers and events that cannot be written for `WRITE_TIMEOUT`
//! close it too. `subscribe` turns the connection into the engine's event stream.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::sync::Arc;
use std::time::Duration;

use super::dispatch::handle;
use super::target::ApiTarget;
use super::types::{Request, Response};

/// Clients served at once; more are told so and closed.
pub const MAX_CONNECTIONS: usize = 16;
/// The longest request line accepted (requests are a few hundred bytes).
pub const MAX_LINE: usize = 64 * 1024;
/// A client that sends nothing for this long is closed (a subscriber only listens: exempt).
pub const IDLE: Duration = Duration::from_secs(120);
/// A client that does not read its answers (or events) for this long is closed.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds `path` and serves requests for `target` on background threads. A stale socket file
/// (nobody answering) is replaced; a live one is an error: two engines must never share one.
pub fn spawn_server<T: ApiTarget>(target: T, path: &Path) -> io::Result<()> {
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("{}: another engine answers there", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    let target = Arc::new(target);
    let active = Arc::new(AtomicUsize::new(0));
    std::thread::Builder::new()
        .name("api".into())
        .spawn(move || {
            for conn in listener.incoming() {
                match conn {
                    Ok(s) => accept(s, &target, &active),
                    Err(e) => {
                        log::warn!("API accept: {e}");
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            }
        })?;
    Ok(())
}

fn accept<T: ApiTarget>(mut s: UnixStream, target: &Arc<T>, active: &Arc<AtomicUsize>) {
    if active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
        active.fetch_sub(1, Ordering::SeqCst);
        let _ = s.set_write_timeout(Some(Duration::from_secs(1)));
        let _ = write_line(
            &mut s,
            &Response::err(format!("too many API clients (at most {MAX_CONNECTIONS})")),
        );
        return;
    }
    let (target, active_conn) = (Arc::clone(target), Arc::clone(active));
    let spawned = std::thread::Builder::new()
        .name("api-conn".into())
        .spawn(move || {
            if let Err(e) = serve_conn(&*target, s) {
                log::debug!("API connection ended: {e}");
            }
            active_conn.fetch_sub(1, Ordering::SeqCst);
        });
    if let Err(e) = spawned {
        active.fetch_sub(1, Ordering::SeqCst);
        log::error!("API: cannot start a thread for a client: {e}");
    }
}

fn write_line<W: Write, V: serde::Serialize>(w: &mut W, v: &V) -> io::Result<()> {
    let mut out = serde_json::to_vec(v).map_err(io::Error::other)?;
    out.push(b'\n');
    w.write_all(&out)?;
    w.flush()
}

/// What `read_request` found.
#[derive(Debug, PartialEq)]
pub enum Line {
    Request(Request),
    /// Answer this error; the connection goes on.
    Bad(String),
    /// Answer this error and close.
    TooLong,
    Eof,
}

/// Reads one request line of at most `MAX_LINE` bytes (blank lines are skipped).
pub fn read_request<R: BufRead>(r: &mut R) -> io::Result<Line> {
    loop {
        let mut buf = Vec::new();
        let n = io::Read::take(&mut *r, MAX_LINE as u64 + 1).read_until(b'\n', &mut buf)?;
        if n == 0 {
            return Ok(Line::Eof);
        }
        if buf.last() == Some(&b'\n') {
            buf.pop();
        } else if buf.len() > MAX_LINE {
            return Ok(Line::TooLong);
        }
        let text = match std::str::from_utf8(&buf) {
            Ok(t) => t.trim(),
            Err(e) => {
                return Ok(Line::Bad(format!(
                    "the request is not UTF-8 (byte {})",
                    e.valid_up_to()
                )))
            }
        };
        if text.is_empty() {
            continue;
        }
        return Ok(match serde_json::from_str::<Request>(text) {
            Ok(req) => Line::Request(req),
            // serde echoes unknown variant and field names: clipped too.
            Err(e) => Line::Bad(format!(
                "bad request '{}': {}",
                shorten(text, 200),
                shorten(&e.to_string(), 200)
            )),
        });
    }
}

/// `s` cut to `max` bytes at a character boundary, with "..." when cut: what a client sent, or
/// a parser's error that echoes it, put in an answer (havmsd's control socket uses it too).
pub fn shorten(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

fn serve_conn<T: ApiTarget + ?Sized>(target: &T, stream: UnixStream) -> io::Result<()> {
    stream.set_read_timeout(Some(IDLE))?;
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let mut w = stream.try_clone()?;
    let mut r = BufReader::new(stream);
    loop {
        let answer = match read_request(&mut r)? {
            Line::Eof => return Ok(()),
            Line::TooLong => {
                write_line(
                    &mut w,
                    &Response::err(format!("request longer than {MAX_LINE} bytes")),
                )?;
                return Ok(());
            }
            Line::Bad(e) => Response::err(e),
            Line::Request(Request::Subscribe) => return subscribe(target, w),
            Line::Request(req) => {
                if !matches!(req, Request::Info) {
                    log::info!("API request {req:?}");
                }
                handle(target, &req)
            }
        };
        write_line(&mut w, &answer)?;
    }
}

/// Streams every event from now on, until the client goes away or falls behind.
fn subscribe<T: ApiTarget + ?Sized>(target: &T, mut w: UnixStream) -> io::Result<()> {
    let Some(events) = target.events() else {
        return write_line(&mut w, &Response::err("this target publishes no events"));
    };
    let rx = events.subscribe();
    write_line(&mut w, &Response::ok())?;
    loop {
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(ev) => write_line(&mut w, &ev)?,
            // A client that closed its end is noticed by the next write; probe with nothing.
            Err(RecvTimeoutError::Timeout) => w.write_all(b"")?,
            Err(RecvTimeoutError::Disconnected) => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{Event, Events};
    use crate::vm::{VmError, VmInfo};

    struct Fake {
        events: Events,
    }

    impl ApiTarget for Fake {
        fn current_vm(&self) -> Result<crate::vm::Vm, VmError> {
            Err(VmError::WrongState("a fake"))
        }
        fn info(&self) -> VmInfo {
            VmInfo {
                state: "running".into(),
                cpus: 1,
                memory_mib: 64,
                cmdline: String::new(),
                dirty_log: false,
                boots: 1,
                nets: Vec::new(),
                replication: None,
            }
        }
        fn shutdown(&self) {}
        fn events(&self) -> Option<Events> {
            Some(self.events.clone())
        }
    }

    fn sock(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("havms-api-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("api.sock")
    }

    #[test]
    fn lines_are_bounded_and_bad_ones_answered() {
        let mut input = b"{\"cmd\":\"info\"}\n\n\xff\xfe\nnonsense\n".to_vec();
        input.extend(vec![b'x'; MAX_LINE + 1]);
        let mut r = io::Cursor::new(input);
        assert_eq!(read_request(&mut r).unwrap(), Line::Request(Request::Info));
        match read_request(&mut r).unwrap() {
            Line::Bad(e) => assert!(e.contains("not UTF-8 (byte 0)"), "{e}"),
            other => panic!("{other:?}"),
        }
        match read_request(&mut r).unwrap() {
            Line::Bad(e) => assert!(e.starts_with("bad request 'nonsense'"), "{e}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(read_request(&mut r).unwrap(), Line::TooLong);
    }

    #[test]
    fn errors_do_not_echo_long_names() {
        // Found by the api_request fuzz target: serde's "unknown field" echoed a 1,000-byte name.
        let name = "é".repeat(3000);
        let line = format!(
            "{{\"cmd\":\"protect\",\"to\":\"x:1\",\"epoch_ms\":\"{name}\"}}\n{{\"cmd\":\"{name}\"}}\n"
        );
        let mut r = io::Cursor::new(line.into_bytes());
        for _ in 0..2 {
            match read_request(&mut r).unwrap() {
                Line::Bad(e) => assert!(e.len() < 1024, "a {}-byte error: {e}", e.len()),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn an_idle_client_does_not_block_others_and_subscribers_get_events() {
        let path = sock("multi");
        let events = Events::new();
        spawn_server(
            Fake {
                events: events.clone(),
            },
            &path,
        )
        .unwrap();
        // A second engine on the same socket is refused.
        let again = spawn_server(
            Fake {
                events: Events::new(),
            },
            &path,
        );
        assert!(again.unwrap_err().to_string().contains("another engine"));
        // One client connects and says nothing.
        let _idle = UnixStream::connect(&path).unwrap();
        // Another is answered at once.
        let r = super::super::call(&path, &Request::Info).unwrap();
        assert!(r.ok && r.info.is_some());
        // A subscriber sees what is published after it subscribed.
        let mut sub = super::super::Subscription::open(&path).unwrap();
        events.publish(Event::GuestReset { boot: 2 });
        let ev = sub.next_event(Duration::from_secs(5)).unwrap();
        assert_eq!(ev, Some(Event::GuestReset { boot: 2 }));
        // Invalid UTF-8 is answered, the connection goes on.
        let mut s = UnixStream::connect(&path).unwrap();
        s.write_all(b"\xff\n{\"cmd\":\"info\"}\n").unwrap();
        let mut lines = BufReader::new(s).lines();
        assert!(lines.next().unwrap().unwrap().contains("not UTF-8"));
        assert!(lines.next().unwrap().unwrap().contains("\"ok\":true"));
    }
}
