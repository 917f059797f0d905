//! The API's requests and answers as they travel: `{"cmd":"pause"}`, `{"cmd":"snapshot",
//! "dir":"file:///x","incremental":true}`, ... answered by `{"ok":true,...}` or
//! `{"ok":false,"error":"..."}`. `subscribe` is answered `{"ok":true}` and then the connection
//! carries one `crate::events::Event` per line until it is closed.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::replication::primary::ProtectStatus;
use crate::vm::VmInfo;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    Pause,
    Resume,
    Info,
    Shutdown,
    Snapshot {
        /// An absolute path or a `file:///` URL (Cloud Hypervisor's form).
        dir: PathBuf,
        /// Only the pages written since the previous capture (needs `--dirty-log`).
        #[serde(default)]
        incremental: bool,
    },
    /// Output gating of every NIC: on (hold frames per epoch) or off (pass, releasing held).
    Gate {
        on: bool,
    },
    /// Frames sent from now on belong to epoch `n`.
    Epoch {
        n: u64,
    },
    /// Epoch `n` is committed: release the held frames of epochs <= n.
    Commit {
        n: u64,
    },
    /// Replicate the VM continuously to the replica server at `to` (`host:port`). Answered
    /// once the peer took the stream (HelloAck) or refused it.
    Protect {
        to: String,
        /// Time between checkpoints (default 50).
        #[serde(default)]
        epoch_ms: Option<u64>,
        /// The VM's name on the wire (default "vm"; a replica may insist on its name).
        #[serde(default)]
        name: Option<String>,
        /// No ack for this long fails the stream (default 5000).
        #[serde(default)]
        ack_timeout_ms: Option<u64>,
        /// Names the stream in the peer's reports (default: random).
        #[serde(default)]
        stream_id: Option<u64>,
    },
    /// End replication deliberately: the peer marks its copy stale, then output flows.
    Unprotect,
    /// After a failed stream (its output held): let the output flow. The supervisor's call
    /// once the peer cannot take over (it confirmed its copy is stale, or it is dead).
    Release,
    /// On a protected primary: a planned switchover (the last checkpoint leaves the guest
    /// paused; once the peer acked it and took the Handover this engine ends and the peer
    /// resumes the VM). Answered when it is done or failed (`stream.state`: handed_over, or
    /// held with the guest paused).
    Handover {
        #[serde(default)]
        reason: String,
    },
    /// On a replica: start the VM from its last committed epoch (failover).
    Takeover {
        /// Even when the primary said it stopped protecting (the copy is behind).
        #[serde(default)]
        force: bool,
    },
    /// On a replica: the copy must not be taken over (its primary, reachable another way,
    /// stopped protecting); the stream being received is cut.
    MarkStale {
        #[serde(default)]
        reason: String,
        /// Even a copy its primary handed over (refused otherwise: that copy is the VM).
        #[serde(default)]
        force: bool,
    },
    /// Turn this connection into a stream of events (one JSON line each).
    Subscribe,
    /// A check of the replication: hash memory and disks at epoch `epoch` (the primary inside
    /// that checkpoint's pause, the replica right after applying it); `info` shows the result
    /// under `replication.verify`.
    Verify {
        epoch: u64,
    },
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Response {
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub info: Option<VmInfo>,
    /// Protect, unprotect, release: where the stream is now.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub stream: Option<ProtectStatus>,
    /// Time the operation took, in microseconds (pause: until every vCPU was parked).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub micros: Option<u64>,
    /// Incremental snapshot of a running VM: how long the guest was paused, in microseconds.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub pause_micros: Option<u64>,
    /// Incremental snapshot: number of 4 KiB pages in the increment.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub pages: Option<u64>,
    /// Commit: frames released.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub released: Option<u64>,
    /// Verify: the epoch that will be hashed.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub epoch: Option<u64>,
}

impl Response {
    pub fn ok() -> Self {
        Response {
            ok: true,
            ..Default::default()
        }
    }

    pub fn err(e: impl ToString) -> Self {
        Response {
            ok: false,
            error: Some(e.to_string()),
            ..Default::default()
        }
    }
}

/// A snapshot or restore location as the API and the CLI take it: an absolute path, or a
/// `file:///ABSOLUTE` URL as Cloud Hypervisor writes them. Anything else (a relative path,
/// another scheme) is an error naming the accepted forms.
pub fn parse_location(s: &str) -> Result<PathBuf, String> {
    let path = match s.split_once("://") {
        Some(("file", rest)) => rest,
        Some((scheme, _)) => {
            return Err(format!(
                "`{s}`: only file:///ABSOLUTE/PATH URLs are supported, not {scheme}://"
            ))
        }
        None => s,
    };
    if !path.starts_with('/') {
        return Err(format!(
            "`{s}` is not absolute: give /ABSOLUTE/PATH or file:///ABSOLUTE/PATH"
        ));
    }
    Ok(PathBuf::from(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_encoding() {
        let r: Request = serde_json::from_str(r#"{"cmd":"snapshot","dir":"/x"}"#).unwrap();
        assert_eq!(
            r,
            Request::Snapshot {
                dir: "/x".into(),
                incremental: false
            }
        );
        assert_eq!(
            serde_json::to_string(&Request::Pause).unwrap(),
            r#"{"cmd":"pause"}"#
        );
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"explode"}"#).is_err());
        let g: Request = serde_json::from_str(r#"{"cmd":"commit","n":7}"#).unwrap();
        assert_eq!(g, Request::Commit { n: 7 });
        let m: Request = serde_json::from_str(r#"{"cmd":"mark_stale"}"#).unwrap();
        assert_eq!(
            m,
            Request::MarkStale {
                reason: String::new(),
                force: false,
            }
        );
        let e = Response::err("nope");
        let s = serde_json::to_string(&e).unwrap();
        assert_eq!(s, r#"{"ok":false,"error":"nope"}"#);
    }

    #[test]
    fn locations_are_absolute_paths_or_file_urls() {
        assert_eq!(parse_location("/tmp/x").unwrap(), PathBuf::from("/tmp/x"));
        assert_eq!(
            parse_location("file:///tmp/x").unwrap(),
            PathBuf::from("/tmp/x")
        );
        assert!(parse_location("tmp/x")
            .unwrap_err()
            .contains("not absolute"));
        assert!(parse_location("file://tmp/x")
            .unwrap_err()
            .contains("not absolute"));
        assert!(parse_location("http://h/x")
            .unwrap_err()
            .contains("not http://"));
    }
}
