//! The `--api-socket` server and its client. Requests are `{"cmd":"pause"}`, `{"cmd":"resume"}`,
//! `{"cmd":"info"}`, `{"cmd":"shutdown"}`, `{"cmd":"snapshot","dir":"/path"}`; answers are
//! `{"ok":true,...}` or `{"ok":false,"error":"..."}`.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::machine::Machine;
use crate::replication::primary::ProtectConfig;
use crate::virtio::net::GateMode;
use crate::vm::{Vm, VmError, VmInfo};

/// What the server drives: one `Vm`, or a `Machine`, whose current VM each request acts on
/// (so the socket keeps working across guest reboots).
pub trait ApiTarget: Send + Sync + 'static {
    /// The VM that pause, resume, snapshot and the gates act on now.
    fn current_vm(&self) -> Result<Vm, VmError>;
    fn info(&self) -> VmInfo;
    fn shutdown(&self);
    /// Starts replicating to a replica server at `to`.
    fn protect(&self, _to: &str, _cfg: ProtectConfig) -> Result<(), VmError> {
        Err(VmError::Control(
            "replication needs a machine (havms-vm), not a bare VM".into(),
        ))
    }
    /// Stops replicating.
    fn unprotect(&self) -> Result<(), VmError> {
        Err(VmError::Control("this VM is not protected".into()))
    }
    /// Failover: a replica starts its VM from the last committed epoch (`force`: even a copy
    /// its primary said it stopped protecting).
    fn takeover(&self, _force: bool) -> Result<(), VmError> {
        Err(VmError::Control(
            "not a replica (havms-vm --replica-listen)".into(),
        ))
    }
}

impl ApiTarget for Vm {
    fn current_vm(&self) -> Result<Vm, VmError> {
        Ok(self.clone())
    }
    fn info(&self) -> VmInfo {
        Vm::info(self)
    }
    fn shutdown(&self) {
        Vm::shutdown(self)
    }
}

impl ApiTarget for Machine {
    fn current_vm(&self) -> Result<Vm, VmError> {
        self.vm()
    }
    fn info(&self) -> VmInfo {
        Machine::info(self)
    }
    fn shutdown(&self) {
        Machine::shutdown(self)
    }
    fn protect(&self, to: &str, cfg: ProtectConfig) -> Result<(), VmError> {
        Machine::protect(self, to, cfg)
    }
    fn unprotect(&self) -> Result<(), VmError> {
        Machine::unprotect(self)
            .map(|_| ())
            .ok_or(VmError::Control("this VM is not protected".into()))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "cmd", rename_all = "lowercase")]
pub enum Request {
    Pause,
    Resume,
    Info,
    Shutdown,
    Snapshot {
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
    /// Replicate the VM continuously to the replica server at `to` (`host:port`).
    Protect {
        to: String,
        /// Time between checkpoints (default 50).
        #[serde(default)]
        epoch_ms: Option<u64>,
        /// The VM's name on the wire (default "vm"; a replica may insist on its name).
        #[serde(default)]
        name: Option<String>,
    },
    /// Stop replicating: output flows at once.
    Unprotect,
    /// On a replica: start the VM from its last committed epoch (failover).
    Takeover {
        /// Even when the primary said it stopped protecting (the copy is behind).
        #[serde(default)]
        force: bool,
    },
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Response {
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub info: Option<VmInfo>,
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
}

impl Response {
    fn ok() -> Self {
        Response {
            ok: true,
            ..Default::default()
        }
    }
    fn err(e: impl ToString) -> Self {
        Response {
            ok: false,
            error: Some(e.to_string()),
            ..Default::default()
        }
    }
}

/// Executes one request on `target`.
pub fn handle<T: ApiTarget + ?Sized>(target: &T, req: &Request) -> Response {
    let t = Instant::now();
    let mut r = match req {
        Request::Info => Ok(Response {
            ok: true,
            info: Some(target.info()),
            ..Default::default()
        }),
        Request::Shutdown => {
            target.shutdown();
            Ok(Response::ok())
        }
        Request::Protect { to, epoch_ms, name } => {
            let name = name.clone().unwrap_or_else(|| "vm".into());
            let mut cfg = ProtectConfig::new(&name, vm_id_of(&name));
            if let Some(ms) = epoch_ms {
                cfg.epoch = std::time::Duration::from_millis((*ms).max(1));
            }
            target.protect(to, cfg).map(|_| Response::ok())
        }
        Request::Unprotect => target.unprotect().map(|_| Response::ok()),
        Request::Takeover { force } => target.takeover(*force).map(|_| Response::ok()),
        _ => target.current_vm().and_then(|vm| handle_vm(&vm, req)),
    }
    .unwrap_or_else(Response::err);
    r.micros = Some(t.elapsed().as_micros() as u64);
    r
}

/// A VM's id on the replication wire: a hash of its name (both sides know the name).
pub fn vm_id_of(name: &str) -> u64 {
    use sha2::{Digest, Sha256};
    let h = Sha256::digest(name.as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&h[..8]);
    u64::from_le_bytes(b)
}

/// The requests that act on the current VM (the others are the target's, see `handle`).
fn handle_vm(vm: &Vm, req: &Request) -> Result<Response, VmError> {
    match req {
        Request::Info
        | Request::Shutdown
        | Request::Protect { .. }
        | Request::Unprotect
        | Request::Takeover { .. } => Err(VmError::Control(format!(
            "{req:?} is handled by the machine, not the VM"
        ))),
        Request::Pause => vm.pause().map(|_| Response::ok()),
        Request::Resume => vm.resume().map(|_| Response::ok()),
        Request::Gate { .. } | Request::Epoch { .. } | Request::Commit { .. }
            if vm.is_streaming() =>
        {
            Err(VmError::WrongState(
                "protected: its replication stream drives the output gates (unprotect it first)",
            ))
        }
        Request::Snapshot {
            dir,
            incremental: false,
        } => vm.snapshot(dir).map(|_| Response::ok()),
        Request::Snapshot {
            dir,
            incremental: true,
        } => increment(vm, dir),
        Request::Gate { on } => {
            let mode = if *on { GateMode::Gated } else { GateMode::Off };
            vm.net_outputs().iter().for_each(|o| o.set_mode(mode));
            Ok(Response::ok())
        }
        Request::Epoch { n } => vm
            .net_outputs()
            .iter()
            .try_for_each(|o| o.begin_epoch(*n))
            .map(|_| Response::ok())
            .map_err(|e| VmError::Control(format!("epoch {n}: {e}"))),
        Request::Commit { n } => {
            let released: usize = vm.net_outputs().iter().map(|o| o.commit(*n)).sum();
            Ok(Response {
                ok: true,
                released: Some(released as u64),
                ..Default::default()
            })
        }
    }
}

/// An increment: if the VM runs, it is paused only for the capture into memory, and the files
/// are written after it resumed.
fn increment(vm: &Vm, dir: &Path) -> Result<Response, VmError> {
    if vm.is_streaming() {
        return Err(VmError::WrongState("protected (unprotect it first)"));
    }
    let was_running = vm.info().state == "running";
    let t = Instant::now();
    if was_running {
        vm.pause()?;
    }
    let captured = vm.capture_increment();
    if was_running {
        vm.resume()?;
    }
    let pause = t.elapsed();
    let (snap, diff) = captured?;
    vm.write_increment(dir, &snap, &diff)?;
    Ok(Response {
        ok: true,
        pause_micros: Some(pause.as_micros() as u64),
        pages: Some(diff.len() as u64),
        ..Default::default()
    })
}

fn serve_conn<T: ApiTarget>(target: &T, stream: UnixStream) -> std::io::Result<()> {
    let mut w = stream.try_clone()?;
    for line in BufReader::new(stream).lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let resp = match serde_json::from_str::<Request>(&line) {
            Ok(req) => {
                log::info!("API request {req:?}");
                handle(target, &req)
            }
            Err(e) => Response::err(format!("bad request '{line}': {e}")),
        };
        let mut out = serde_json::to_vec(&resp).unwrap_or_else(|_| b"{\"ok\":false}".to_vec());
        out.push(b'\n');
        w.write_all(&out)?;
    }
    Ok(())
}

/// Binds `path` (replacing a stale socket) and serves requests for `target` (a `Vm` or a
/// `Machine`) on a background thread.
pub fn spawn_server<T: ApiTarget>(target: T, path: &Path) -> std::io::Result<()> {
    if path.exists() {
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    std::thread::Builder::new()
        .name("api".into())
        .spawn(move || {
            for conn in listener.incoming() {
                match conn {
                    Ok(s) => {
                        if let Err(e) = serve_conn(&target, s) {
                            log::warn!("API connection: {e}");
                        }
                    }
                    Err(e) => log::warn!("API accept: {e}"),
                }
            }
        })?;
    Ok(())
}

/// How long the client waits for an answer.
pub const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Client side: sends one request and reads the answer.
pub fn call(path: &Path, req: &Request) -> std::io::Result<Response> {
    let mut s = UnixStream::connect(path)?;
    // A wedged VMM must not hang its caller forever; full snapshots of big guests take seconds.
    s.set_read_timeout(Some(CALL_TIMEOUT))?;
    s.set_write_timeout(Some(CALL_TIMEOUT))?;
    let mut line = serde_json::to_vec(req).map_err(std::io::Error::other)?;
    line.push(b'\n');
    s.write_all(&line)?;
    let mut answer = String::new();
    BufReader::new(s).read_line(&mut answer)?;
    serde_json::from_str(&answer).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("bad answer '{}': {e}", answer.trim()),
        )
    })
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
        let e = Response::err("nope");
        let s = serde_json::to_string(&e).unwrap();
        assert_eq!(s, r#"{"ok":false,"error":"nope"}"#);
    }
}
