//! Target `api_request`: the engine's API socket (vmm api::server), request lines read as the
//! server reads them (bounded, blank lines skipped, bad UTF-8 answered) and dispatched to a
//! target that refuses every action, so nothing but parsing and dispatch runs.

use std::io::Cursor;

use havms_vmm::api::server::{read_request, Line};
use havms_vmm::api::{handle, ApiTarget, Request, MAX_LINE};
use havms_vmm::vm::{Vm, VmError, VmInfo};

/// An engine with no VM: every verb answers with an error.
struct NoVm;

impl ApiTarget for NoVm {
    fn current_vm(&self) -> Result<Vm, VmError> {
        Err(VmError::WrongState("no VM (fuzzing)"))
    }
    fn info(&self) -> VmInfo {
        VmInfo {
            state: "fuzzing".into(),
            cpus: 1,
            memory_mib: 1,
            cmdline: String::new(),
            dirty_log: false,
            boots: 0,
            nets: Vec::new(),
            replication: None,
        }
    }
    fn shutdown(&self) {}
}

pub fn api_request(data: &[u8]) {
    let mut r = Cursor::new(data);
    // Each call consumes at least one byte or ends: the loop is bounded by the input.
    loop {
        let before = r.position();
        let line = read_request(&mut r).expect("reading from memory cannot fail");
        match line {
            Line::Eof => break,
            Line::TooLong => {
                assert!(
                    data.len() > MAX_LINE,
                    "TooLong for a {}-byte input",
                    data.len()
                );
                break;
            }
            Line::Bad(e) => assert!(e.len() < 1024, "a {}-byte error answer", e.len()),
            Line::Request(req) => {
                // What the client library sends for it parses back to the same request.
                let text = serde_json::to_string(&req).expect("requests encode");
                let back: Request = serde_json::from_str(&text).expect("encoded requests parse");
                assert_eq!(back, req, "request does not survive encode/parse");
                if !matches!(req, Request::Subscribe) {
                    let answer = handle(&NoVm, &req);
                    serde_json::to_string(&answer).expect("answers encode");
                }
            }
        }
        assert!(r.position() > before, "read_request consumed nothing");
    }
}
