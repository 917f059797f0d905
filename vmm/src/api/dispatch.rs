//! What each API request does to its target.

use std::path::Path;
use std::time::{Duration, Instant};

use super::target::ApiTarget;
use super::types::{parse_location, Request, Response};
use crate::replication::primary::ProtectConfig;
use crate::virtio::net::GateMode;
use crate::vm::{Vm, VmError};

/// Executes one request on `target` (`subscribe` is the server's: it answers here only when
/// asked outside a connection).
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
        Request::Protect {
            to,
            epoch_ms,
            name,
            ack_timeout_ms,
            stream_id,
        } => {
            let name = name.clone().unwrap_or_else(|| "vm".into());
            let mut cfg = ProtectConfig::new(&name, vm_id_of(&name));
            if let Some(ms) = epoch_ms {
                cfg.epoch = Duration::from_millis((*ms).max(1));
            }
            if let Some(ms) = ack_timeout_ms {
                cfg.ack_timeout = Duration::from_millis((*ms).max(10));
            }
            if let Some(id) = stream_id {
                cfg.stream_id = *id;
            }
            target.protect(to, cfg).map(stream_answer)
        }
        Request::Unprotect => target.unprotect().map(stream_answer),
        Request::Release => target.release().map(stream_answer),
        Request::Handover { reason } => {
            let reason = if reason.is_empty() {
                "switchover on request"
            } else {
                reason
            };
            target.handover(reason).map(stream_answer)
        }
        Request::Takeover { force } => target.takeover(*force).map(|_| Response::ok()),
        Request::MarkStale { reason, force } => {
            let reason = if reason.is_empty() {
                "marked stale on request"
            } else {
                reason
            };
            target.mark_stale(reason, *force).map(|_| Response::ok())
        }
        Request::Verify { epoch } => target.verify(*epoch).map(|e| Response {
            ok: true,
            epoch: Some(e),
            ..Default::default()
        }),
        Request::Subscribe => Err(VmError::Control(
            "subscribe is only served on a connection of its own".into(),
        )),
        _ => target.current_vm().and_then(|vm| handle_vm(&vm, req)),
    }
    .unwrap_or_else(Response::err);
    r.micros = Some(t.elapsed().as_micros() as u64);
    r
}

fn stream_answer(st: crate::replication::primary::ProtectStatus) -> Response {
    Response {
        ok: true,
        stream: Some(st),
        ..Default::default()
    }
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
    let streaming = vm.is_streaming();
    match req {
        Request::Pause | Request::Resume if streaming => Err(VmError::WrongState(
            "protected: its checkpoints pause and resume it (unprotect it first)",
        )),
        Request::Gate { .. } | Request::Epoch { .. } | Request::Commit { .. } if streaming => {
            Err(VmError::WrongState(
                "protected: its replication stream drives the output gates (unprotect it first)",
            ))
        }
        Request::Pause => vm.pause().map(|_| Response::ok()),
        Request::Resume => vm.resume().map(|_| Response::ok()),
        Request::Snapshot { dir, incremental } => {
            let dir = parse_location(&dir.to_string_lossy()).map_err(VmError::Control)?;
            if *incremental {
                increment(vm, &dir)
            } else {
                vm.snapshot(&dir).map(|_| Response::ok())
            }
        }
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
        other => Err(VmError::Control(format!(
            "{other:?} is handled by the machine, not the VM"
        ))),
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
