//! The control socket server: a Unix stream socket, a thread per connection, one JSON request per line
//! answered by one JSON line (see [`crate::protocol`]). A bad request gets `{"error":...}` and the
//! connection stays open; only an over-long line or [`IO_TIMEOUT`] of silence closes it, so idle
//! clients cannot hold the [`MAX_CONNECTIONS`] slots for ever.

use crate::daemon::liveness::Progress;
use crate::protocol::{self, Line, Request, Response};
use anyhow::{bail, Context, Result};
use nix::poll::{PollFd, PollFlags, PollTimeout};
use std::io::{self, BufRead, BufReader, ErrorKind, Write};
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Connections served at once; more are told so and closed (a stuck client must not eat threads).
pub const MAX_CONNECTIONS: usize = 32;
/// A connection silent (or not reading its answers) this long is closed.
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// The accept loop wakes at least this often to show the watchdog it is alive.
const ACCEPT_WAKE_MS: u16 = 500;

/// Answers one request; the daemon's implementation lives in `daemon::mod`.
pub type Handler = dyn Fn(Request) -> Response + Send + Sync;

/// Binds the socket at `path`, creating its directory. A stale socket left by a dead havmsd is
/// replaced; a live one (another havmsd answering) is an error.
pub fn bind(path: &Path) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            bail!(
                "{}: another havmsd is already listening there",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing stale socket {}", path.display()))?;
    }
    UnixListener::bind(path).with_context(|| format!("binding control socket {}", path.display()))
}

/// Accepts connections forever, each served on its own thread with `io_timeout` on reads and writes.
/// Beats `progress` on every turn of the accept loop.
pub fn serve(
    listener: UnixListener,
    handler: Arc<Handler>,
    io_timeout: Duration,
    progress: Arc<Progress>,
) {
    // Non-blocking so a connection that vanishes between poll and accept cannot block the loop.
    if let Err(e) = listener.set_nonblocking(true) {
        log::error!("control socket: set_nonblocking: {e}");
    }
    let active = Arc::new(AtomicUsize::new(0));
    loop {
        progress.beat();
        let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
        match nix::poll::poll(&mut fds, PollTimeout::from(ACCEPT_WAKE_MS)) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Ok(_) => {}
            Err(e) => {
                log::warn!("control socket: poll: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        }
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == ErrorKind::WouldBlock => continue,
            Err(e) => {
                log::warn!("control socket: accept: {e}");
                continue;
            }
        };
        if let Err(e) = limit_io(&stream, io_timeout) {
            log::warn!("control socket: setting timeouts: {e}");
            continue;
        }
        accept_one(stream, &handler, &active);
    }
}

/// Blocking I/O on the accepted stream, each read and write bounded by `timeout`.
fn limit_io(stream: &UnixStream, timeout: Duration) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))
}

fn accept_one(mut stream: UnixStream, handler: &Arc<Handler>, active: &Arc<AtomicUsize>) {
    if active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
        active.fetch_sub(1, Ordering::SeqCst);
        let busy = Response::Error(format!("too many connections (limit {MAX_CONNECTIONS})"));
        let _ = writeln!(stream, "{}", protocol::to_line(&busy));
        return;
    }
    let handler = Arc::clone(handler);
    let active_conn = Arc::clone(active);
    let spawned = std::thread::Builder::new()
        .name("control-conn".into())
        .spawn(move || {
            // A timeout shows up here as WouldBlock/TimedOut and ends the connection.
            if let Err(e) = connection(stream, &*handler) {
                log::debug!("control connection ended: {e}");
            }
            active_conn.fetch_sub(1, Ordering::SeqCst);
        });
    if let Err(e) = spawned {
        active.fetch_sub(1, Ordering::SeqCst);
        log::error!("control socket: cannot start a thread: {e}");
    }
}

fn connection(stream: UnixStream, handler: &Handler) -> io::Result<()> {
    let reader = BufReader::new(stream.try_clone()?);
    serve_lines(reader, stream, handler)
}

/// Answers request lines from `r` on `w` until EOF (or an over-long line).
pub fn serve_lines<R: BufRead, W: Write>(mut r: R, mut w: W, handler: &Handler) -> io::Result<()> {
    loop {
        let answer = match protocol::read_line(&mut r)? {
            Line::Eof => return Ok(()),
            Line::TooLong => {
                let err =
                    Response::Error(format!("request longer than {} bytes", protocol::MAX_LINE));
                writeln!(w, "{}", protocol::to_line(&err))?;
                return Ok(());
            }
            Line::Text(text) => match protocol::parse_request(&text) {
                Ok(req) => handler(req),
                Err(e) => Response::Error(e),
            },
        };
        writeln!(w, "{}", protocol::to_line(&answer))?;
        w.flush()?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handler(req: Request) -> Response {
        match req {
            Request::Status => Response::Error("status is not in this test".into()),
            Request::Reload => Response::Reloaded {
                config: "ok (x)".into(),
            },
            _ => Response::Error("not in this test".into()),
        }
    }

    fn run(input: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        serve_lines(io::Cursor::new(input.to_vec()), &mut out, &handler).unwrap();
        String::from_utf8(out)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn bad_requests_do_not_end_the_connection() {
        let answers =
            run(b"{\"cmd\":\"reload\"}\nnonsense\n\n{\"cmd\":\"nope\"}\n{\"cmd\":\"reload\"}");
        assert_eq!(answers.len(), 5, "{answers:?}");
        assert_eq!(answers[0], r#"{"reloaded":{"config":"ok (x)"}}"#);
        assert!(
            answers[1].starts_with(r#"{"error":"bad request"#),
            "{}",
            answers[1]
        );
        assert!(
            answers[2].starts_with(r#"{"error":"empty request"#),
            "{}",
            answers[2]
        );
        assert!(answers[3].contains("unknown variant"), "{}", answers[3]);
        assert_eq!(answers[4], answers[0]);
    }

    #[test]
    fn overlong_line_closes_with_an_error() {
        let mut input = vec![b'x'; protocol::MAX_LINE + 1];
        input.extend_from_slice(b"\n{\"cmd\":\"reload\"}\n");
        let answers = run(&input);
        assert_eq!(answers.len(), 1);
        assert!(answers[0].contains("longer than"));
    }

    #[test]
    fn real_socket_round_trip() {
        let dir = std::env::temp_dir().join(format!("havms-control-test-{}", std::process::id()));
        let path = dir.join("s.sock");
        let listener = bind(&path).unwrap();
        // A second bind while the first is served is refused.
        std::thread::spawn(move || serve(listener, Arc::new(handler), IO_TIMEOUT, Progress::new()));
        assert!(bind(&path)
            .unwrap_err()
            .to_string()
            .contains("already listening"));
        let mut c =
            crate::client::Client::connect(&path, std::time::Duration::from_secs(5)).unwrap();
        assert_eq!(
            c.request(&Request::Reload).unwrap(),
            Response::Reloaded {
                config: "ok (x)".into()
            }
        );
        assert!(matches!(
            c.status(),
            Err(crate::client::ClientError::Daemon(_))
        ));
        assert_eq!(
            c.request(&Request::Reload).unwrap(),
            Response::Reloaded {
                config: "ok (x)".into()
            }
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn idle_clients_time_out_and_free_their_slots() {
        use std::io::Read;
        let dir = std::env::temp_dir().join(format!("havms-control-idle-{}", std::process::id()));
        let path = dir.join("s.sock");
        let listener = bind(&path).unwrap();
        let timeout = std::time::Duration::from_millis(300);
        let progress = Progress::new();
        let p = Arc::clone(&progress);
        std::thread::spawn(move || serve(listener, Arc::new(handler), timeout, p));

        // Fill every slot with a client that says nothing.
        let mut idle: Vec<UnixStream> = (0..MAX_CONNECTIONS)
            .map(|_| UnixStream::connect(&path).unwrap())
            .collect();
        let read_all = |s: &mut UnixStream| {
            s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .unwrap();
            let mut text = String::new();
            s.read_to_string(&mut text).map(|_| text)
        };
        // Give the server time to accept them all, then one more is turned away.
        std::thread::sleep(std::time::Duration::from_millis(100));
        let mut extra = UnixStream::connect(&path).unwrap();
        assert!(read_all(&mut extra)
            .unwrap()
            .contains("too many connections"));

        // Each idle client is closed by the server (EOF, no answer) after the timeout...
        let start = std::time::Instant::now();
        for s in &mut idle {
            assert_eq!(read_all(s).unwrap(), "");
        }
        assert!(start.elapsed() < std::time::Duration::from_secs(3));
        // ...and a new client is served again.
        std::thread::sleep(std::time::Duration::from_millis(50));
        let mut c =
            crate::client::Client::connect(&path, std::time::Duration::from_secs(5)).unwrap();
        assert_eq!(
            c.request(&Request::Reload).unwrap(),
            Response::Reloaded {
                config: "ok (x)".into()
            }
        );
        // The accept loop kept beating while idle.
        std::thread::sleep(std::time::Duration::from_millis(700));
        assert!(progress_age(&progress) < std::time::Duration::from_millis(700));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn progress_age(p: &Progress) -> std::time::Duration {
        p.age(std::time::Instant::now())
    }
}
