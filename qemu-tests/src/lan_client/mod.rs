//! A third host on the test LAN, outside both nodes: the witness a failover scenario needs to say
//! "the client noticed nothing". [`host`] owns the host itself (a smoltcp TCP/IP stack attached as
//! one more port of the harness's LAN hub, with its own MAC and IP, a thread running its poll
//! loop) and its TCP connections; [`ledger`] owns the client of the test guest's ledger server
//! (`qemu-tests/ledger`): appending over one connection in the background, then verifying that
//! every acknowledged entry is still there, on the same connection, in the same guest boot;
//! [`metrics`] scrapes a node's `/metrics` as a Prometheus server would.
//!
//! ```text
//! let host = LanHost::attach(&cluster.net.lan, "client", Ipv4Addr::new(192, 168, 77, 99))?;
//! let mut c = LedgerClient::connect(&host, Ipv4Addr::new(192, 168, 77, 50), 7000, timeout)?;
//! c.start_appending(Duration::from_millis(20))?;
//! // ... break something ...
//! let report = c.verify()?; // stops appending, reads everything back
//! ```

pub mod host;
pub mod ledger;
pub mod metrics;
#[cfg(test)]
mod testnet;

use std::net::SocketAddrV4;
use std::time::Duration;

pub use host::{LanHost, TcpConn};
pub use ledger::{Acked, LedgerClient, Report, Stat};

/// Seconds with one decimal, for messages.
fn secs(d: &Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

/// Everything the LAN host and the ledger client can report. Each says what was going on.
#[derive(Debug, thiserror::Error)]
pub enum LanError {
    /// A host socket or thread could not be set up.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },

    /// The TCP/IP stack refused an operation (no free port, bad address, ...).
    #[error("LAN host: {0}")]
    Stack(String),

    /// No connection within the time given.
    #[error("connecting to {server}: not established within {} (last state {state})", secs(.waited))]
    ConnectTimeout {
        server: SocketAddrV4,
        waited: Duration,
        state: String,
    },

    /// The server answered the SYN with a reset: nothing listens there.
    #[error("connecting to {server}: refused (reset), nothing listens there")]
    Refused { server: SocketAddrV4 },

    /// The established connection was reset by the other end.
    #[error(
        "the connection to {server} was reset (RST) {during}, {} after it was established",
        secs(.after)
    )]
    Reset {
        server: SocketAddrV4,
        during: String,
        after: Duration,
    },

    /// The other end closed the connection (FIN) or it is otherwise not open any more.
    #[error("the connection to {server} was closed by the server (state {state}) {during}")]
    Closed {
        server: SocketAddrV4,
        during: String,
        state: String,
    },

    /// No answer in time: the connection is still open, the server says nothing.
    #[error("no answer from {server} {during} within {} (connection state {state})", secs(.waited))]
    AnswerTimeout {
        server: SocketAddrV4,
        during: String,
        waited: Duration,
        state: String,
    },

    /// The server said something the protocol does not allow here.
    #[error("unexpected answer from {server} {during}: {answer:?}")]
    Protocol {
        server: SocketAddrV4,
        during: String,
        answer: String,
    },

    /// An acknowledged entry is not in the ledger any more.
    #[error("entry {n} was acknowledged ({value:?}) but the ledger now answers {answer:?}: lost")]
    EntryMissing {
        n: u64,
        value: String,
        answer: String,
    },

    /// An acknowledged entry reads back different.
    #[error("entry {n} was acknowledged as {value:?} but now reads {now:?}")]
    EntryChanged { n: u64, value: String, now: String },

    /// The ledger numbered an append other than the next one.
    #[error(
        "APPEND {value:?} was acknowledged as entry {got}, expected {expected}: entries were \
         skipped or duplicated"
    )]
    OutOfOrder {
        value: String,
        expected: u64,
        got: u64,
    },

    /// The guest's kernel booted again since the first STAT.
    #[error("the guest rebooted: boot id {before} at the first STAT, {after} now")]
    BootIdChanged { before: String, after: String },

    /// The guest's uptime did not grow since the first STAT.
    #[error("the guest's uptime went from {before} s at the first STAT to {after} s: not growing")]
    UptimeNotGrowing { before: f64, after: f64 },

    /// The ledger holds more entries than were acknowledged to this, its only writer.
    #[error(
        "the ledger holds {entries} entries but the last acknowledged is {last}: it appended \
         something its client was never told about"
    )]
    ExtraEntries { entries: u64, last: u64 },

    /// An operation that the client's state does not allow (appending twice, ...).
    #[error("ledger client: {0}")]
    Usage(String),
}

/// The LAN client's result type.
pub type Result<T> = std::result::Result<T, LanError>;
