//! The harness's error type: every failure says which node, which pattern or which file.

use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong while booting, driving or checking nodes.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// A boot artifact is missing from the artifacts directory.
    #[error("{path} is missing: run `cargo xtask image` first (or pass --artifacts DIR)")]
    MissingArtifact { path: PathBuf },

    /// A host tool or firmware file the harness needs is not installed.
    #[error("{what} not found ({hint})")]
    MissingTool { what: String, hint: String },

    /// An I/O operation on a host file, socket or process failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },

    /// A host command (mkfs.ext4, ...) ran and failed.
    #[error("{command} failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },

    /// A console pattern did not compile.
    #[error("bad console pattern {pattern:?}: {source}")]
    Pattern {
        pattern: String,
        #[source]
        source: regex::Error,
    },

    /// A console pattern did not appear in time.
    #[error(
        "node {node}: no {pattern:?} on the console within {}s; last console lines:\n{tail}",
        waited.as_secs_f64()
    )]
    Timeout {
        node: String,
        pattern: String,
        waited: Duration,
        tail: String,
    },

    /// The node's QEMU ended while the harness was waiting for a pattern.
    #[error("node {node}: QEMU ended ({status}) before {pattern:?} appeared; last console lines:\n{tail}")]
    Exited {
        node: String,
        status: String,
        pattern: String,
        tail: String,
    },

    /// An operation needs a running node and it is not running.
    #[error("node {node} is not running")]
    NotRunning { node: String },

    /// A node name that the cluster does not have.
    #[error("no node named {node:?} in this cluster")]
    NoSuchNode { node: String },

    /// Fetching a Debian package or writing a guest initramfs failed.
    #[error("{what}: {source}")]
    Image {
        what: String,
        #[source]
        source: havms_image::Error,
    },

    /// The LAN client (a host outside the nodes) saw something wrong or could not work.
    #[error("LAN client: {0}")]
    Lan(#[from] crate::lan_client::LanError),

    /// What a scenario checks is not so.
    #[error("{0}")]
    Check(String),
}

impl HarnessError {
    /// Wraps an I/O error with what was being done.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        HarnessError::Io {
            what: what.into(),
            source,
        }
    }
}

/// The harness's result type.
pub type Result<T> = std::result::Result<T, HarnessError>;

/// Fails a scenario with a formatted reason unless the condition holds.
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $($arg:tt)+) => {
        let holds: bool = $cond;
        if !holds {
            return Err($crate::HarnessError::Check(format!($($arg)+)));
        }
    };
}
