//! The control protocol of havmsd's Unix socket: one JSON request per line, one JSON answer per line.
//!
//! ```text
//! -> {"cmd":"status"}            <- {"status":{...Status...}}
//! -> {"cmd":"reload"}            <- {"reloaded":{"config":"ok (/var/lib/havms/havms.yaml)"}}
//! -> {"cmd":"vm_list"}           <- {"vms":[{...VmStatus...}, ...]}
//! -> {"cmd":"vm_start","name":"web"}  <- {"done":{"message":"vm web: start requested"}}
//! -> {"cmd":"vm_stop","name":"web"}   <- {"done":{"message":"vm web: stop requested"}}
//! -> {"cmd":"switchover","name":"web"}        <- {"done":...} or {"error":"...why not..."}
//! -> {"cmd":"maintenance","node":"a","on":true} <- {"done":...} or {"error":"...why not..."}
//! -> {"cmd":"resolve","name":"web","keep":"a"}  <- {"done":...} or {"error":"...why not..."}
//! -> anything else               <- {"error":"..."}   (the connection stays usable)
//! ```

use crate::status::Status;
use havms_vmm::api::server::shorten;
use serde::{Deserialize, Serialize};
use std::io::{self, BufRead};

/// Longest request line accepted; a request is a few dozen bytes, more is a confused client.
pub const MAX_LINE: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
/// Fields other than `cmd` are ignored for commands that take none.
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    /// The node's [`Status`].
    Status,
    /// Reload the config file, like SIGHUP; answers with the outcome.
    Reload,
    /// The VMs and their state.
    VmList,
    /// Run the VM (on its preferred node, or wherever the rules put it), on both nodes' word.
    /// `force`: boot this node's copy even while the peer is silent and the copy may be older
    /// than the peer's (the operator's word that the peer is gone for good).
    VmStart {
        name: String,
        #[serde(default)]
        force: bool,
    },
    /// Stop the VM wherever it runs (its replica is told it ended, never taken over).
    VmStop { name: String },
    /// Move the protected VM to the other node with nothing lost, and keep it there.
    Switchover { name: String },
    /// Put a node of the pair in maintenance (its VMs move to the other node, it keeps no
    /// copy and starts nothing), or end it.
    Maintenance {
        node: String,
        on: bool,
        /// `off` even with the other node down (this node then boots the VMs from its own,
        /// older disks).
        #[serde(default)]
        force: bool,
    },
    /// Settle a conflict between the two copies of a VM (divergence, unrelated or torn
    /// copies, unusable metadata): keep `keep`'s copy; the other node's is set aside (renamed,
    /// never deleted) and brought up to date from it.
    Resolve { name: String, keep: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    Status(Box<Status>),
    Reloaded { config: String },
    Vms(Vec<crate::vms::status::VmStatus>),
    Done { message: String },
    Error(String),
}

/// Parses one request line (without its newline); the error text is what the client is told.
pub fn parse_request(line: &str) -> Result<Request, String> {
    let line = line.trim();
    if line.is_empty() {
        return Err(
            "empty request: send one JSON object per line, e.g. {\"cmd\":\"status\"}".into(),
        );
    }
    serde_json::from_str(line)
        .map_err(|e| format!("bad request: {}", shorten(&e.to_string(), MAX_ECHO)))
}

/// Longest piece of a serde error the client is told: serde echoes unknown variant and field
/// names, which come from the client and may be up to a whole line long.
const MAX_ECHO: usize = 300;

/// The line (no newline) for `value`; serde_json never emits raw newlines, so one value is one line.
pub fn to_line<T: Serialize>(value: &T) -> String {
    // Serializing these plain structs cannot fail (no maps with non-string keys, no custom errors).
    serde_json::to_string(value)
        .unwrap_or_else(|e| format!("{{\"error\":\"cannot encode answer: {e}\"}}"))
}

/// What [`read_line`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    Text(String),
    /// Longer than [`MAX_LINE`]; the rest of the stream cannot be trusted to be in step.
    TooLong,
    Eof,
}

/// Reads one `\n`-terminated line of at most [`MAX_LINE`] bytes.
pub fn read_line<R: BufRead>(r: &mut R) -> io::Result<Line> {
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
    Ok(Line::Text(String::from_utf8_lossy(&buf).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_do_not_echo_long_names() {
        // Found by the control_line fuzz target: an unknown 1,000-byte variant came back whole.
        let name = "x".repeat(5000);
        let err = parse_request(&format!("{{\"cmd\":\"{name}\"}}")).unwrap_err();
        assert!(err.starts_with("bad request: unknown variant"), "{err}");
        assert!(err.len() < 400, "a {}-byte error", err.len());
        let err = parse_request(&format!("{{\"cmd\":\"vm_start\",\"{name}é\":1}}")).unwrap_err();
        assert!(err.len() < 400, "a {}-byte error", err.len());
    }

    #[test]
    fn requests() {
        assert_eq!(parse_request(r#"{"cmd":"status"}"#), Ok(Request::Status));
        assert_eq!(
            parse_request(" {\"cmd\" : \"reload\"}\r"),
            Ok(Request::Reload)
        );
        for bad in ["", "status", r#"{"cmd":"explode"}"#, "{", "[]"] {
            let err = parse_request(bad).unwrap_err();
            assert!(
                err.starts_with("bad request") || err.starts_with("empty request"),
                "{bad}: {err}"
            );
        }
        assert_eq!(
            parse_request(r#"{"cmd":"status","x":1}"#),
            Ok(Request::Status)
        );
        assert_eq!(
            parse_request(r#"{"cmd":"maintenance","node":"a","on":true}"#),
            Ok(Request::Maintenance {
                node: "a".into(),
                on: true,
                force: false
            })
        );
        assert_eq!(
            parse_request(r#"{"cmd":"vm_start","name":"web"}"#),
            Ok(Request::VmStart {
                name: "web".into(),
                force: false
            })
        );
        assert_eq!(
            parse_request(r#"{"cmd":"resolve","name":"web","keep":"b"}"#),
            Ok(Request::Resolve {
                name: "web".into(),
                keep: "b".into()
            })
        );
        assert!(parse_request(r#"{"cmd":"maintenance","node":"a"}"#)
            .unwrap_err()
            .contains("missing field `on`"));
        assert!(parse_request(r#"{"cmd":"explode"}"#)
            .unwrap_err()
            .contains("unknown variant `explode`"));
    }

    #[test]
    fn answers_are_single_lines() {
        assert_eq!(
            to_line(&Response::Error("a\nb".into())),
            r#"{"error":"a\nb"}"#
        );
        assert_eq!(
            to_line(&Response::Reloaded {
                config: "ok".into()
            }),
            r#"{"reloaded":{"config":"ok"}}"#
        );
        assert_eq!(to_line(&Request::Status), r#"{"cmd":"status"}"#);
    }

    #[test]
    fn line_reader_bounds() {
        let mut r = io::Cursor::new(b"one\ntwo".to_vec());
        assert_eq!(read_line(&mut r).unwrap(), Line::Text("one".into()));
        assert_eq!(read_line(&mut r).unwrap(), Line::Text("two".into()));
        assert_eq!(read_line(&mut r).unwrap(), Line::Eof);
        let mut r = io::Cursor::new(vec![b'x'; MAX_LINE + 10]);
        assert_eq!(read_line(&mut r).unwrap(), Line::TooLong);
    }
}
