//! The client side of the control socket, used by `havms` and the console menu.

use crate::protocol::{self, Line, Request, Response};
use crate::status::Status;
use std::io::{self, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ClientError {
    /// havmsd is not there (no socket, refused): the caller falls back to local facts.
    #[error("{0}")]
    Connect(io::Error),
    #[error("talking to havmsd: {0}")]
    Io(#[from] io::Error),
    #[error("havmsd closed the connection")]
    Closed,
    #[error("havmsd answered something unreadable: {0}")]
    BadAnswer(String),
    #[error("havmsd: {0}")]
    Daemon(String),
}

/// One connection to havmsd; requests can be repeated on it (`status --watch`).
pub struct Client {
    path: PathBuf,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Client {
    /// Connects to `path`; every later read and write gives up after `timeout`.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Client, ClientError> {
        let stream = UnixStream::connect(path).map_err(ClientError::Connect)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let writer = stream.try_clone()?;
        Ok(Client {
            path: path.to_path_buf(),
            reader: BufReader::new(stream),
            writer,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sends `req` and waits for its answer; `{"error":...}` answers become [`ClientError::Daemon`].
    pub fn request(&mut self, req: &Request) -> Result<Response, ClientError> {
        let mut line = protocol::to_line(req);
        line.push('\n');
        self.writer.write_all(line.as_bytes())?;
        match protocol::read_line(&mut self.reader)? {
            Line::Eof => Err(ClientError::Closed),
            Line::TooLong => Err(ClientError::BadAnswer("answer too long".into())),
            Line::Text(text) => match serde_json::from_str::<Response>(&text) {
                Ok(Response::Error(e)) => Err(ClientError::Daemon(e)),
                Ok(r) => Ok(r),
                Err(e) => Err(ClientError::BadAnswer(format!("{e}: {text}"))),
            },
        }
    }

    pub fn status(&mut self) -> Result<Status, ClientError> {
        match self.request(&Request::Status)? {
            Response::Status(s) => Ok(*s),
            other => Err(ClientError::BadAnswer(format!(
                "expected a status, got {other:?}"
            ))),
        }
    }
}
