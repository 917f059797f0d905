//! The control socket server: a Unix stream socket, a thread per connection, one JSON request per line
//! answered by one JSON line (see [`crate::protocol`]). A bad request gets `{"error":...}` and the
//! connection stays open; only an over-long line closes it.

use crate::protocol::{self, Line, Request, Response};
use anyhow::{bail, Context, Result};
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Connections served at once; more are told so and closed (a stuck client must not eat threads).
const MAX_CONNECTIONS: usize = 32;

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

/// Accepts connections forever, each served on its own thread.
pub fn serve(listener: UnixListener, handler: Arc<Handler>) {
    let active = Arc::new(AtomicUsize::new(0));
    for conn in listener.incoming() {
        let mut stream = match conn {
            Ok(s) => s,
            Err(e) => {
                log::warn!("control socket: accept: {e}");
                continue;
            }
        };
        if active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            active.fetch_sub(1, Ordering::SeqCst);
            let busy = Response::Error(format!("too many connections (limit {MAX_CONNECTIONS})"));
            let _ = writeln!(stream, "{}", protocol::to_line(&busy));
            continue;
        }
        let handler = Arc::clone(&handler);
        let active = Arc::clone(&active);
        let spawned = std::thread::Builder::new()
            .name("control-conn".into())
            .spawn(move || {
                if let Err(e) = connection(stream, &*handler) {
                    log::debug!("control connection ended: {e}");
                }
                active.fetch_sub(1, Ordering::SeqCst);
            });
        if let Err(e) = spawned {
            log::error!("control socket: cannot start a thread: {e}");
        }
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
        std::thread::spawn(move || serve(listener, Arc::new(handler)));
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
}
